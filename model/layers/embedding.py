"""Embedding layout: the sparse arch's lookups (one TorchRec `EmbeddingCollection` call per batch,
`LifelongCTRModel.sparse_arch`) as dense tensors the rest of a model works on:

- candidate = item ⊕ category                                   [B, 2D]  (the "candidate space")
- history item = item ⊕ category, right-padded with zeros       [R, L, 2D], mask [R, L]
- history side = behavior + time gap + watch time (summed)       [R, L, D]
- profile = mean of the most-interacted categories ⊕ one vector per demographic field ⊕ the dense
  statistics, kept as named groups so PEG can choose its inputs (paper Table 5).

History keys live in the candidate space so inner-product retrieval, hashing and attention can
compare them with the candidate directly. Side features are summed rather than concatenated so
the value width does not grow with the number of side features (unpublished detail; the papers
only say side information is attached to each behavior).

Padding: histories are right-padded with exact zeros, by plain torch index operations (`padded`),
not fbgemm's jagged kernels: the dense model then runs on any device with any fbgemm build (the
CPU build of fbgemm has no CUDA kernels); a batch whose histories all have the padded length is
a view of the looked-up rows (no copy). A zero vector past the end of the sequence
is what the paper's zero-padding of the TCN means, so the padded layout needs no special casing in
the convolution; every later stage masks padded positions with the mask.

Letters: R requests, B candidates, L history length (longest in the batch), S short-term length,
D embedding dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor

from contract.feature_spec import FeatureSpec
from model.batch import Keys


@dataclass
class EmbeddedBatch:
    """Dense views of one batch's embeddings.

    candidates: [B, 2D]; history: [R, L, 2D]; history_side: [R, L, D] (None without side
    features); history_mask: [R, L] bool; history_lengths: [R]; short_history: [R, S, 2D];
    short_side: [R, S, D] or None; short_mask: [R, S];
    top_categories: [R, D]; demographics: [R, G*D] (G fields, may be width 0);
    dense: [R, F].
    """

    candidates: torch.Tensor
    history: torch.Tensor
    history_side: torch.Tensor | None
    history_mask: torch.Tensor
    history_lengths: torch.Tensor
    short_history: torch.Tensor
    short_side: torch.Tensor | None
    short_mask: torch.Tensor
    top_categories: torch.Tensor
    demographics: torch.Tensor
    dense: torch.Tensor

    def profile(self) -> torch.Tensor:
        """[R, P] with P = D + G*D + F: every profile feature, for the MLP head."""
        return torch.cat([self.top_categories, self.demographics, self.dense], dim=-1)


def _pool_mean(jagged: JaggedTensor, num_rows: int) -> torch.Tensor:
    """Mean of each row's vectors; zeros for empty rows. [N, D] jagged -> [R, D]."""
    values = jagged.values()
    lengths = jagged.lengths()
    segment = torch.repeat_interleave(torch.arange(num_rows, device=values.device), lengths)
    total = values.new_zeros((num_rows, values.shape[-1])).index_add_(0, segment, values)
    return total / lengths.clamp(min=1).to(values.dtype)[:, None]


def padded(
    values: torch.Tensor, lengths: torch.Tensor, length: int, shortest: int, longest: int
) -> torch.Tensor:
    """Jagged rows [N, D] (row r has lengths[r] vectors) -> right-padded [R, length, D], zeros
    past each row's end (rows longer than `length` are cut). Plain torch ops (no fbgemm kernel),
    differentiable in `values`, so it runs on any device and fbgemm build.

    `shortest` and `longest` are min(lengths) and max(lengths), which the caller reads from the
    device once for all the tensors it pads. They choose the cheapest of three equal paths: every
    row full (`shortest == longest == length`): a view of `values`, no copy in either direction;
    no row cut (`longest <= length`): one scatter into zeros; otherwise the rows are cut first.
    """
    num_rows = lengths.shape[0]
    if shortest == longest == length:
        return values.view(num_rows, length, values.shape[-1])
    rows = torch.repeat_interleave(torch.arange(num_rows, device=values.device), lengths)  # [N]
    starts = torch.cumsum(lengths, 0) - lengths  # [R]
    positions = torch.arange(values.shape[0], device=values.device) - starts[rows]  # [N]
    output = values.new_zeros((num_rows, length, values.shape[-1]))
    if longest <= length:
        return output.index_put((rows, positions), values)
    keep = positions < length
    return output.index_put((rows[keep], positions[keep]), values[keep])


class EmbeddingLayout(nn.Module):
    """Args:
    spec: the feature spec (demographics, dense features, short_len).
    embedding_dim: D, shared by all tables (TorchRec's sequence collection requires one dim).
    use_side_features: build the side-feature view (off: those lookups are left unused).
    """

    def __init__(self, spec: FeatureSpec, embedding_dim: int, use_side_features: bool = True):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.use_side_features = use_side_features
        self.short_len = spec.short_len
        self.demographic_keys = tuple(Keys.demographic(name) for name in spec.demographics)
        self.num_dense = len(spec.dense_features)
        # None pads to the longest history in the batch; tests set a larger value to check that
        # extra padding never changes a model's output.
        self.pad_history_to: int | None = None

    @property
    def item_dim(self) -> int:
        return 2 * self.embedding_dim

    @property
    def side_dim(self) -> int:
        return self.embedding_dim

    @property
    def profile_group_dims(self) -> dict[str, int]:
        """Width of each profile group, in the order of `EmbeddedBatch.profile()`."""
        return {
            "top_categories": self.embedding_dim,
            "demographics": self.embedding_dim * len(self.demographic_keys),
            "dense": self.num_dense,
        }

    def forward(self, looked_up: dict[str, JaggedTensor], dense: torch.Tensor) -> EmbeddedBatch:
        """looked_up: the sparse arch's output, feature key -> JaggedTensor of [N, D] vectors."""
        num_requests = dense.shape[0]

        candidates = torch.cat(
            [
                looked_up[Keys.CANDIDATE_ITEM].values(),
                looked_up[Keys.CANDIDATE_CATEGORY].values(),
            ],
            dim=-1,
        )  # [B, 2D]

        history_lengths = looked_up[Keys.HISTORY_ITEM].lengths()  # [R]
        # Shortest and longest history in one read from the device; they pick `padded`'s path.
        shortest, longest = (
            torch.stack(torch.aminmax(history_lengths)).tolist()
            if history_lengths.numel()
            else (0, 0)
        )
        length = max(longest, 1) if self.pad_history_to is None else self.pad_history_to

        # Concatenated before padding: one padded copy instead of two plus a concatenation.
        history = padded(
            torch.cat(
                [looked_up[Keys.HISTORY_ITEM].values(), looked_up[Keys.HISTORY_CATEGORY].values()],
                -1,
            ),
            history_lengths,
            length,
            shortest,
            longest,
        )  # [R, L, 2D]
        history_side = (
            padded(
                looked_up[Keys.HISTORY_BEHAVIOR].values()
                + looked_up[Keys.HISTORY_TIME_GAP].values()
                + looked_up[Keys.HISTORY_WATCH_TIME].values(),
                history_lengths,
                length,
                shortest,
                longest,
            )
            if self.use_side_features
            else None
        )  # [R, L, D]
        positions = torch.arange(length, device=history_lengths.device)
        history_mask = positions[None, :] < history_lengths[:, None]  # [R, L]

        # The short-term window is the last S real items of each history (oldest first).
        short_positions = (
            history_lengths[:, None]
            - self.short_len
            + torch.arange(self.short_len, device=positions.device)
        )  # [R, S]
        short_mask = short_positions >= 0
        gather_index = short_positions.clamp(min=0)
        short_history = (
            torch.gather(history, 1, gather_index[:, :, None].expand(-1, -1, history.shape[-1]))
            * short_mask[:, :, None]
        )  # [R, S, 2D]
        short_side = (
            torch.gather(
                history_side, 1, gather_index[:, :, None].expand(-1, -1, history_side.shape[-1])
            )
            * short_mask[:, :, None]
            if history_side is not None
            else None
        )  # [R, S, D]

        top_categories = _pool_mean(looked_up[Keys.PROFILE_TOP_CATEGORY], num_requests)  # [R, D]
        # Pooled rather than read as one value per row, so a request missing a field gets zeros.
        demographic_vectors = [
            _pool_mean(looked_up[key], num_requests) for key in self.demographic_keys
        ]
        demographics = (
            torch.cat(demographic_vectors, dim=-1)
            if demographic_vectors
            else dense.new_zeros((num_requests, 0))
        )  # [R, G*D]
        return EmbeddedBatch(
            candidates=candidates,
            history=history,
            history_side=history_side,
            history_mask=history_mask,
            history_lengths=history_lengths,
            short_history=short_history,
            short_side=short_side,
            short_mask=short_mask,
            top_categories=top_categories,
            demographics=demographics,
            dense=dense,
        )
