"""The one batch type every model takes.

A batch holds R *requests* (one user at one timestamp) and B >= R *samples* (the candidates scored
for those requests: the positive and its sampled negatives share one request). Everything that
depends only on the request — the lifelong history, the profile — is stored once per request, so
models can run the user-side work (TCN, hashing, projections) once per request, not per candidate.

All sparse ids travel in one KeyedJaggedTensor whose stride is R: per request, `candidate_*` hold
that request's candidates, `history_*` its history (oldest first, at most max_len items, all
strictly before the request timestamp: the request's prefix of its user-day *timeline* in the
samples table, contract/samples.py), `profile_*` its profile ids. Candidate order in the KJT
equals the sample order of `labels`, `user_ids` and `request_index`.

Letters: R requests, B samples (candidates), F dense profile features.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor
from torchrec.streamable import Pipelineable


class Keys:
    """Feature keys of `Batch.sparse_features` (the TorchRec feature names)."""

    CANDIDATE_ITEM = "candidate_item_id"
    CANDIDATE_CATEGORY = "candidate_category_id"
    HISTORY_ITEM = "history_item_id"
    HISTORY_CATEGORY = "history_category_id"
    HISTORY_BEHAVIOR = "history_behavior"
    HISTORY_TIME_GAP = "history_time_gap"  # log2 bucket of (request ts - behavior ts) in seconds
    HISTORY_WATCH_TIME = "history_watch_time"  # log2 bucket of watch seconds (0 when absent)
    PROFILE_TOP_CATEGORY = "profile_top_category"  # most-interacted categories/authors
    # Demographic keys are "profile_<field>" for each field listed in the feature spec.

    CANDIDATE = (CANDIDATE_ITEM, CANDIDATE_CATEGORY)
    HISTORY = (
        HISTORY_ITEM,
        HISTORY_CATEGORY,
        HISTORY_BEHAVIOR,
        HISTORY_TIME_GAP,
        HISTORY_WATCH_TIME,
    )

    @staticmethod
    def demographic(field: str) -> str:
        return f"profile_{field}"


@dataclass
class Batch(Pipelineable):
    """Args:
    sparse_features: KJT of stride R with the keys in `Keys`.
    dense_features: [R, F] float profile statistics (already log-scaled).
    labels: [B] float 0/1.
    request_index: [B] long, the request (row of the KJT) each sample belongs to, non-decreasing.
    user_ids: [B] long raw user ids, for GAUC.
    weights: [B] float loss weight of each sample (`model.train_wrapper.CTRTrain`); 1/B for the
        batch mean (`mean_weights`), set per step by the trainer.
    """

    sparse_features: KeyedJaggedTensor
    dense_features: torch.Tensor
    labels: torch.Tensor
    request_index: torch.Tensor
    user_ids: torch.Tensor
    weights: torch.Tensor

    @property
    def num_requests(self) -> int:
        return self.dense_features.shape[0]

    @property
    def num_samples(self) -> int:
        return self.labels.shape[0]

    def to(self, device: torch.device, non_blocking: bool = False) -> Batch:
        return Batch(
            sparse_features=self.sparse_features.to(device=device, non_blocking=non_blocking),
            dense_features=self.dense_features.to(device=device, non_blocking=non_blocking),
            labels=self.labels.to(device=device, non_blocking=non_blocking),
            request_index=self.request_index.to(device=device, non_blocking=non_blocking),
            user_ids=self.user_ids.to(device=device, non_blocking=non_blocking),
            weights=self.weights.to(device=device, non_blocking=non_blocking),
        )

    def record_stream(self, stream: torch.Stream) -> None:
        self.sparse_features.record_stream(stream)
        for tensor in (
            self.dense_features,
            self.labels,
            self.request_index,
            self.user_ids,
            self.weights,
        ):
            tensor.record_stream(stream)

    def pin_memory(self) -> Batch:
        return Batch(
            sparse_features=self.sparse_features.pin_memory(),
            dense_features=self.dense_features.pin_memory(),
            labels=self.labels.pin_memory(),
            request_index=self.request_index.pin_memory(),
            user_ids=self.user_ids.pin_memory(),
            weights=self.weights.pin_memory(),
        )

    def with_weights(self, weights: torch.Tensor) -> Batch:
        return replace(self, weights=weights)


def mean_weights(num_samples: int) -> torch.Tensor:
    """[B] weights 1/B: the loss is the batch mean."""
    return torch.full((num_samples,), 1.0 / max(num_samples, 1))
