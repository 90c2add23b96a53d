"""From Arrow rows of the `samples` table to `model.batch.Batch`.

A *block* is a set of `samples` rows (user-days, contract/samples.py) converted once to flat NumPy
arrays (`RequestBlock`); any subset of its requests is then gathered into a Batch with a few
vectorised index operations — no per-request Python loop. The request's history is the slice
`timeline[max(0, history_end - max_len) : history_end]` of its row's timeline (docs/data.md),
gathered jagged, never padded on the host.

Feature derivation (the contract with the models, documented in docs/trainer.md):
- ids go through `model.tables.row_ids` (id % rows of the feature's table), so ids unseen when
  the spec was written land in an existing row instead of failing;
- `history_time_gap` = min(time_gap_buckets - 1, floor(log2(1 + (request_ts - timeline_ts)))) in
  seconds;
- `history_watch_time` = min(watch_time_buckets - 1, floor(log2(1 + watch seconds)));
- `profile_<field>` = the field's demographic code (one id per request).

Letters: N rows in a block, Q requests in a block, R requests in a batch, B samples in a batch,
T timeline events, F dense features.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from contract import samples
from contract.feature_spec import FeatureSpec
from model.batch import Batch, Keys, mean_weights
from model.tables import TableLayout


class SampleDataError(ValueError):
    """A samples row breaks the data contract (docs/data.md); the message names the user."""


def log2_bucket(values: np.ndarray, buckets: int) -> np.ndarray:
    """floor(log2(1 + max(v, 0))) capped at buckets - 1. values: [T] numbers -> [T] int64."""
    clipped = np.maximum(np.asarray(values, dtype=np.float64), 0.0)
    return np.minimum(np.floor(np.log2(1.0 + clipped)), buckets - 1).astype(np.int64)


def ranges(begins: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(begin, begin + length) for each pair. [K], [K] -> [sum lengths]."""
    lengths = lengths.astype(np.int64)
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    starts_in_output = np.cumsum(lengths) - lengths
    return np.repeat(begins.astype(np.int64) - starts_in_output, lengths) + np.arange(total)


def _list_column(table: pa.Table, name: str, dtype: type) -> tuple[np.ndarray, np.ndarray]:
    """(values, offsets) of a list column, offsets starting at 0: row i is values[o[i]:o[i+1]]."""
    column = table.column(name)
    column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if isinstance(column, pa.ChunkedArray):  # a table with no chunks
        column = pa.array([], type=column.type)
    offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
    # .values ignores a slice's offset while .offsets honours it: cut the values to match.
    values = column.values.to_numpy(zero_copy_only=False)[offsets[0] : offsets[-1]]
    return values.astype(dtype, copy=False), offsets - offsets[0]


@dataclass
class RequestBlock:
    """Flat arrays of one block of rows, indexed so requests can be gathered in any order.

    Per row [N]: user_ids, profile_dense [N, F], demographic [N, G]; top_category with
    top_offsets [N + 1]. Timeline [T]: timeline_item, timeline_category, timeline_behavior,
    timeline_ts, timeline_watch_time. Candidates [C]: candidate_item, candidate_category,
    candidate_label.
    Per request [Q]: request_row, request_ts, history_begin, history_end (absolute positions in
    the timeline arrays), candidate_begin, candidate_count.
    """

    user_ids: np.ndarray
    profile_dense: np.ndarray
    demographic: np.ndarray
    top_category: np.ndarray
    top_offsets: np.ndarray
    timeline_item: np.ndarray
    timeline_category: np.ndarray
    timeline_behavior: np.ndarray
    timeline_ts: np.ndarray
    timeline_watch_time: np.ndarray
    candidate_item: np.ndarray
    candidate_category: np.ndarray
    candidate_label: np.ndarray
    request_row: np.ndarray
    request_ts: np.ndarray
    history_begin: np.ndarray
    history_end: np.ndarray
    candidate_begin: np.ndarray
    candidate_count: np.ndarray

    @property
    def num_requests(self) -> int:
        return int(self.request_row.shape[0])


def request_block(table: pa.Table, spec: FeatureSpec, max_len: int | None = None) -> RequestBlock:
    """Convert rows of the samples table to a RequestBlock, checking the row invariants.

    max_len: the longest history a request keeps (its most recent events); default the spec's."""
    max_len = spec.max_len if max_len is None else max_len
    num_rows = table.num_rows
    user_ids = table.column("user_id").to_numpy().astype(np.int64)

    def check(condition: np.ndarray, message: str) -> None:
        bad = np.flatnonzero(~np.asarray(condition))
        if bad.size:
            raise SampleDataError(f"samples row of user {int(user_ids[bad[0]])}: {message}")

    def aligned(name: str, dtype: type, reference: np.ndarray, reference_name: str) -> np.ndarray:
        values, offsets = _list_column(table, name, dtype)
        check(
            np.diff(offsets) == np.diff(reference), f"{name} is not aligned with {reference_name}"
        )
        return values

    timeline_item, timeline_offsets = _list_column(table, "timeline_item_id", np.int64)
    timeline_category = aligned(
        "timeline_category_id", np.int64, timeline_offsets, "timeline_item_id"
    )
    timeline_behavior = aligned("timeline_behavior", np.int64, timeline_offsets, "timeline_item_id")
    timeline_ts = aligned("timeline_ts", np.int64, timeline_offsets, "timeline_item_id")
    timeline_watch_time = aligned(
        "timeline_watch_time", np.float64, timeline_offsets, "timeline_item_id"
    )
    request_ts, request_offsets = _list_column(table, "request_ts", np.int64)
    history_end = aligned("request_history_end", np.int64, request_offsets, "request_ts")
    candidate_count = aligned("request_num_candidates", np.int64, request_offsets, "request_ts")
    candidate_item, candidate_offsets = _list_column(table, "candidate_item_id", np.int64)
    candidate_category = aligned(
        "candidate_category_id", np.int64, candidate_offsets, "candidate_item_id"
    )
    candidate_label = aligned("candidate_label", np.float32, candidate_offsets, "candidate_item_id")
    dense_values, dense_offsets = _list_column(table, "profile_dense", np.float32)
    top_category, top_offsets = _list_column(table, "profile_top_category", np.int64)
    demographic_values, demographic_offsets = _list_column(table, "profile_demographic", np.int64)
    num_dense = len(spec.dense_features)
    check(np.diff(dense_offsets) == num_dense, f"profile_dense must have {num_dense} values")
    num_demographics = len(spec.demographics)
    check(
        np.diff(demographic_offsets) == num_demographics,
        f"profile_demographic must have {num_demographics} codes (one per spec demographic)",
    )

    requests_per_row = np.diff(request_offsets)
    request_row = np.repeat(np.arange(num_rows), requests_per_row)  # [Q]
    summed = np.bincount(request_row, weights=candidate_count, minlength=num_rows)
    check(
        summed == np.diff(candidate_offsets),
        "request_num_candidates does not sum to len(candidate_item_id)",
    )
    timeline_length = np.diff(timeline_offsets)[request_row]  # [Q]
    bad = np.flatnonzero((history_end < 0) | (history_end > timeline_length))
    if bad.size:
        request = int(bad[0])
        raise SampleDataError(
            f"samples row of user {int(user_ids[request_row[request]])}: request_history_end "
            f"{int(history_end[request])} outside the timeline of length "
            f"{int(timeline_length[request])}"
        )
    row_start = timeline_offsets[:-1][request_row]
    # Exclusive running count of candidates inside each row: where the request's candidates start.
    running = np.cumsum(candidate_count) - candidate_count
    # (a row without requests points one past the end: the appended 0 keeps the index valid)
    within_row = running - np.append(running, 0)[request_offsets[:-1]][request_row]
    return RequestBlock(
        user_ids=user_ids,
        profile_dense=dense_values.reshape(num_rows, num_dense),
        demographic=demographic_values.reshape(num_rows, num_demographics),
        top_category=top_category,
        top_offsets=top_offsets,
        timeline_item=timeline_item,
        timeline_category=timeline_category,
        timeline_behavior=timeline_behavior,
        timeline_ts=timeline_ts,
        timeline_watch_time=timeline_watch_time,
        candidate_item=candidate_item,
        candidate_category=candidate_category,
        candidate_label=candidate_label,
        request_row=request_row,
        request_ts=request_ts,
        history_begin=row_start + np.maximum(history_end - max_len, 0),
        history_end=row_start + history_end,
        candidate_begin=candidate_offsets[:-1][request_row] + within_row,
        candidate_count=candidate_count,
    )


class BatchBuilder:
    """Gathers requests of a RequestBlock into a Batch with the feature keys of `model.batch.Keys`.

    Args:
        spec: the feature spec (bucket counts, demographics).
        layout: the table layout; each feature's ids are taken modulo its table's rows.
        max_history: keep at most this many of each history's most recent events (None: the
            spec's max_len, everything the ETL stored). Shorter histories make long-sequence
            experiments affordable on small machines.
    """

    def __init__(
        self, spec: FeatureSpec, layout: TableLayout, max_history: int | None = None
    ) -> None:
        if max_history is not None and not 1 <= max_history <= spec.max_len:
            raise SampleDataError(
                f"data.max_history={max_history} must be between 1 and the tables' max_len "
                f"{spec.max_len}"
            )
        self.spec = spec
        self.max_len = spec.max_len if max_history is None else max_history
        self.rows = layout.rows_for_feature()
        self.demographic_keys = [Keys.demographic(name) for name in spec.demographics]
        self.keys = [
            *Keys.CANDIDATE,
            *Keys.HISTORY,
            Keys.PROFILE_TOP_CATEGORY,
            *self.demographic_keys,
        ]
        missing = [key for key in self.keys if key not in self.rows]
        if missing:
            raise SampleDataError(f"table layout has no table for features {missing}")

    def build(self, block: RequestBlock, requests: np.ndarray) -> Batch:
        """requests: [R] indices into the block's requests, in batch order."""
        requests = np.asarray(requests, dtype=np.int64)
        num_requests = requests.shape[0]
        rows = block.request_row[requests]  # [R]
        counts = block.candidate_count[requests]  # [R]
        candidates = ranges(block.candidate_begin[requests], counts)  # [B]
        history_lengths = block.history_end[requests] - block.history_begin[requests]  # [R]
        history = ranges(block.history_begin[requests], history_lengths)  # [sum L]
        request_ts = np.repeat(block.request_ts[requests], history_lengths)
        top_lengths = np.diff(block.top_offsets)[rows]
        top = ranges(block.top_offsets[:-1][rows], top_lengths)

        features: dict[str, tuple[np.ndarray, np.ndarray]] = {
            Keys.CANDIDATE_ITEM: (block.candidate_item[candidates], counts),
            Keys.CANDIDATE_CATEGORY: (block.candidate_category[candidates], counts),
            Keys.HISTORY_ITEM: (block.timeline_item[history], history_lengths),
            Keys.HISTORY_CATEGORY: (block.timeline_category[history], history_lengths),
            Keys.HISTORY_BEHAVIOR: (block.timeline_behavior[history], history_lengths),
            Keys.HISTORY_TIME_GAP: (
                log2_bucket(request_ts - block.timeline_ts[history], self.spec.time_gap_buckets),
                history_lengths,
            ),
            Keys.HISTORY_WATCH_TIME: (
                log2_bucket(block.timeline_watch_time[history], self.spec.watch_time_buckets),
                history_lengths,
            ),
            Keys.PROFILE_TOP_CATEGORY: (
                block.top_category[top],
                top_lengths,
            ),
        }
        ones = np.ones(num_requests, dtype=np.int64)
        for index, key in enumerate(self.demographic_keys):
            features[key] = (block.demographic[rows, index], ones)

        values = np.concatenate(
            [np.remainder(features[key][0].astype(np.int64), self.rows[key]) for key in self.keys]
        )
        lengths = np.concatenate([features[key][1] for key in self.keys])
        sparse = KeyedJaggedTensor(
            keys=list(self.keys),
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths.astype(np.int32)),
            stride=num_requests,
        )
        return Batch(
            sparse_features=sparse,
            dense_features=torch.from_numpy(
                np.ascontiguousarray(block.profile_dense[rows], dtype=np.float32)
            ).reshape(num_requests, len(self.spec.dense_features)),
            labels=torch.from_numpy(block.candidate_label[candidates].astype(np.float32)),
            request_index=torch.from_numpy(np.repeat(np.arange(num_requests), counts)),
            user_ids=torch.from_numpy(np.repeat(block.user_ids[rows], counts)),
            weights=mean_weights(int(counts.sum())),
        )

    def filler(self) -> Batch:
        """A one-request, one-candidate batch with an empty history.

        Ranks that ran out of evaluation data feed it so every rank runs the same number of
        forward passes (DMP's all-to-alls need them); its predictions are discarded.
        """
        num_dense = len(self.spec.dense_features)
        num_demographics = len(self.spec.demographics)
        row = {
            "user_id": [0],
            "split": ["filler"],
            "timeline_item_id": [[]],
            "timeline_category_id": [[]],
            "timeline_behavior": [[]],
            "timeline_ts": [[]],
            "timeline_watch_time": [[]],
            "request_ts": [[1]],
            "request_history_end": [[0]],
            "request_num_candidates": [[1]],
            "candidate_item_id": [[0]],
            "candidate_category_id": [[0]],
            "candidate_label": [[0]],
            "profile_dense": [[0.0] * num_dense],
            "profile_top_category": [[]],
            "profile_demographic": [[0] * num_demographics],
        }
        schema = samples.arrow_schema()
        table = pa.table(row, schema=pa.schema([schema.field(name) for name in row]))
        return self.build(request_block(table, self.spec, self.max_len), np.array([0]))
