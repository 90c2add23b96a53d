"""TWIN (Chang et al., KDD 2023): a consistency-preserving GSU that *is* the ESU's attention.

    CP-GSU: the ESU's multi-head target attention scores every history item (keys projected once
            per request); cross features (behavior, time gap, watch time) enter as one scalar bias
            per head; each head keeps its top `top_k`, and the heads' picks are merged into a
            unique union.
    ESU:    the same heads, softmax over the finalists' (already computed) scores, weighted sum
            of the projected values                                              -> [R, C, H·E]

Because the two stages share parameters and scores, the ESU re-uses the GSU's scores at the
finalists instead of recomputing them.

Switches: `num_heads` (paper 4), `top_k` (default 100; the paper retrieves 100 of 10⁴),
`head_dim` (default Dk / H). The cross-feature bias is a linear map of the summed side embedding
(the paper compresses cross features per behavior; the exact compression is unpublished) and is
absent when the body runs without side features.

Letters: R requests, C candidates per request, L history length, H heads, E head width,
K = H·top_k merged picks, Dk key width, Dv value width, Ds side width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.feature_spec import FeatureSpec
from model.layers.attention import TargetAttention, normalize_scores
from model.layers.retrieval import masked_top_k, unique_union
from model.lifelong_model import BodyConfig, LifelongCTRModel, LongTermOutput, RawHistoryArch


@dataclass(frozen=True)
class TWINAttentionConfig:
    num_heads: int = 4
    top_k: int = 100
    head_dim: int | None = None


class TWINAttention(nn.Module):
    """(queries [R, C, Dk], keys [R, L, Dk], values [R, L, Dv], mask [R, L], side [R, L, Ds])
    -> LongTermOutput [R, C, H·E]. side_dim = 0 disables the cross-feature bias."""

    def __init__(
        self, config: TWINAttentionConfig, key_dim: int, value_dim: int, side_dim: int = 0
    ) -> None:
        super().__init__()
        self.config = config
        self.attention = TargetAttention(
            key_dim, key_dim, value_dim, num_heads=config.num_heads, head_dim=config.head_dim
        )
        self.cross_bias = nn.Linear(side_dim, config.num_heads) if side_dim else None
        self.output_dim = self.attention.output_dim

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        side: torch.Tensor | None = None,
    ) -> LongTermOutput:
        scores = self.attention.scores(queries, keys)  # [R, C, H, L], keys projected once
        if self.cross_bias is not None and side is not None:
            scores = scores + self.cross_bias(side).permute(0, 2, 1)[:, None]  # bias [R, 1, H, L]
        num_requests, num_candidates, num_heads, length = scores.shape

        # CP-GSU: top-k per head, merged into a unique union of at most H·top_k positions.
        per_head_index, per_head_valid = masked_top_k(
            scores.flatten(1, 2), mask, self.config.top_k
        )  # [R, C·H, k]
        index, valid = unique_union(
            per_head_index.view(num_requests, num_candidates, -1),
            per_head_valid.view(num_requests, num_candidates, -1),
        )  # [R, C, K]

        # ESU: the same scores at the finalists, softmax per head, projected values.
        finalist_scores = torch.gather(
            scores, -1, index[:, :, None, :].expand(-1, -1, num_heads, -1)
        )  # [R, C, H, K]
        weights = normalize_scores(finalist_scores, valid[:, :, None, :], True)
        return LongTermOutput(self.attention.pool_at(weights, values, index))  # [R, C, H·E]


@dataclass(frozen=True)
class TWINConfig(BodyConfig):
    twin: TWINAttentionConfig = field(default_factory=TWINAttentionConfig)


class TWIN(LifelongCTRModel):
    """Shared body + TWIN over the raw history."""

    def __init__(
        self, config: TWINConfig, spec: FeatureSpec, sparse_arch: EmbeddingCollection
    ) -> None:
        super().__init__(config, spec, sparse_arch)
        side_dim = self.side_dim if config.use_side_features else 0
        attention = TWINAttention(config.twin, self.key_dim, self.value_dim, side_dim)
        self.set_long_term_arch(RawHistoryArch(attention))
