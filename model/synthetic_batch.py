"""Seeded random batches and a tiny feature spec, for tests, benchmarks and trainer smoke tests.

Like torchrec's `datasets/random.py`, but shaped like our `Batch`: R requests, each with a
history of random length, a profile and some candidates. The labels carry a learnable signal so
a few training steps can show a falling loss: a candidate is positive exactly when it was drawn
from its request's history (with that item's category), negative when drawn at random.

Ids respect the tables `model.tables.table_layout(spec, max_table_rows)` builds, so a batch can
go straight into any registered model built from the same spec.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from contract.feature_spec import FeatureSpec
from model.batch import Batch, Keys, mean_weights
from model.tables import table_layout


def tiny_feature_spec(
    max_len: int = 40,
    short_len: int = 5,
    num_items: int = 500,
    num_categories: int = 20,
    top_categories: int = 3,
    demographics: Mapping[str, int] | None = None,
    dense_features: tuple[str, ...] = ("log_events", "log_clicks", "active_days"),
) -> FeatureSpec:
    """A small feed-like spec (impression/click behaviors, two demographic fields by default)."""
    return FeatureSpec(
        source="synthetic",
        protocol="synthetic",
        behaviors=("impression", "click"),
        num_users=1000,
        num_items=num_items,
        num_categories=num_categories,
        max_item_id=num_items - 1,
        max_category_id=num_categories - 1,
        max_len=max_len,
        short_len=short_len,
        top_categories=top_categories,
        dense_features=dense_features,
        demographics=dict(demographics) if demographics is not None else {"age": 6, "gender": 3},
        time_gap_buckets=16,
        watch_time_buckets=8,
    )


def synthetic_batch(
    spec: FeatureSpec,
    num_requests: int,
    candidates_per_request: int | tuple[int, int] = 2,
    history_length: int | tuple[int, int] | None = None,
    seed: int = 0,
    max_table_rows: int = 1 << 22,
    positive_rate: float = 0.5,
) -> Batch:
    """A random `Batch`.

    Args:
        spec: table sizes, max_len, demographics, dense features.
        num_requests: R.
        candidates_per_request: a count, or an inclusive (low, high) range drawn per request.
        history_length: a length, or an inclusive (low, high) range; None means (1, max_len).
        seed: same seed -> identical batch.
        max_table_rows: must match the model's, so ids stay inside its tables.
        positive_rate: chance that a candidate is drawn from the history (label 1).
    """
    generator = torch.Generator().manual_seed(seed)
    rows = table_layout(spec, max_table_rows).rows

    def integers(low: int, high: int, size: tuple[int, ...]) -> torch.Tensor:
        return torch.randint(low, high, size, generator=generator)

    def lengths_from(setting: int | tuple[int, int] | None, cap: int) -> torch.Tensor:
        if setting is None:
            setting = (1, cap)
        low, high = (setting, setting) if isinstance(setting, int) else setting
        return integers(min(low, cap), min(high, cap) + 1, (num_requests,))

    # Every item has one fixed category, so category-based retrieval (SIM hard) sees structure.
    item_category = integers(0, rows["category"], (rows["item"],))

    history_lengths = lengths_from(history_length, spec.max_len)  # [R]
    candidate_counts = lengths_from(candidates_per_request, 1 << 30).clamp(min=1)  # [R]
    history_items = integers(0, rows["item"], (int(history_lengths.sum()),))

    # Candidates: positives copy a random item of their request's history.
    request_index = torch.repeat_interleave(torch.arange(num_requests), candidate_counts)  # [B]
    num_samples = int(candidate_counts.sum())
    history_starts = torch.cumsum(history_lengths, 0) - history_lengths
    own_length = history_lengths[request_index]
    from_history = (torch.rand(num_samples, generator=generator) < positive_rate) & (own_length > 0)
    offset = (torch.rand(num_samples, generator=generator) * own_length.clamp(min=1)).long()
    if len(history_items):
        positions = (history_starts[request_index] + offset).clamp(max=len(history_items) - 1)
        picked = history_items[positions]
    else:
        picked = torch.zeros(num_samples, dtype=torch.long)
    candidate_items = torch.where(from_history, picked, integers(0, rows["item"], (num_samples,)))
    labels = from_history.float()

    num_history = int(history_lengths.sum())
    top_lengths = integers(0, spec.top_categories + 1, (num_requests,))
    features: dict[str, tuple[torch.Tensor, torch.Tensor]] = {
        Keys.CANDIDATE_ITEM: (candidate_items, candidate_counts),
        Keys.CANDIDATE_CATEGORY: (item_category[candidate_items], candidate_counts),
        Keys.HISTORY_ITEM: (history_items, history_lengths),
        Keys.HISTORY_CATEGORY: (item_category[history_items], history_lengths),
        Keys.HISTORY_BEHAVIOR: (
            integers(1, len(spec.behaviors) + 1, (num_history,)),
            history_lengths,
        ),
        Keys.HISTORY_TIME_GAP: (integers(0, rows["time_gap"], (num_history,)), history_lengths),
        Keys.HISTORY_WATCH_TIME: (integers(0, rows["watch_time"], (num_history,)), history_lengths),
        Keys.PROFILE_TOP_CATEGORY: (
            integers(0, rows["category"], (int(top_lengths.sum()),)),
            top_lengths,
        ),
    }
    for field_name, cardinality in spec.demographics.items():
        features[Keys.demographic(field_name)] = (
            integers(0, cardinality, (num_requests,)),
            torch.ones(num_requests, dtype=torch.long),
        )
    sparse = KeyedJaggedTensor(
        keys=list(features),
        values=torch.cat([values for values, _ in features.values()]),
        lengths=torch.cat([lengths for _, lengths in features.values()]).int(),
    )
    user_of_request = integers(0, spec.num_users, (num_requests,))
    return Batch(
        sparse_features=sparse,
        dense_features=torch.randn(num_requests, len(spec.dense_features), generator=generator),
        labels=labels,
        request_index=request_index,
        user_ids=user_of_request[request_index],
        weights=mean_weights(num_samples),
    )
