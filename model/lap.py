"""LAP, the Lifelong Attention Pyramid (Hou et al., KDD 2024): CAIN's baseline and major attention.

Three cascading levels, each narrowing the history for the next, and all three outputs integrated:

    CSA  coarse:  softmax target attention over the full history (every item gets gradient);
                  its scores keep the top `k_mid` items                        -> [R, C, E]
    MSA  medium:  multi-head target attention over those k_mid; the top `k_top` by the highest
                  weight across heads (unique by construction) go on          -> [R, C, H·E]
    FSA  fine:    non-linear attention over the k_top finalists: DIN's activation unit (default)
                  or multi-head attention followed by an FFN                  -> [R, C, Dv]
    integration:  concatenation (default) or the sum of the three projected to Dv.

LAP's method section is not public; this is a reading of it with every choice a switch:
`csa_heads`, `k_mid` (100), `msa_heads` (4), `k_top` (20), `fsa` (activation unit / multi-head +
FFN), `integration` (concat / sum). `level_overlap` (a diagnostic, not a gradient path) holds,
after each training-mode forward (not computed in eval mode: it is off the serving path), the
fraction of MSA's finalists that CSA alone would also have ranked in its top k_top: how much the
middle level changes the selection.

Keys/values are projected once per request over the full history (CSA needs all of them); the
later levels gather from those projections or project their few rows, whichever is cheaper.

Letters: R requests, C candidates per request, L history length, H heads, E head width,
Dk key width, Dv value width.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.feature_spec import FeatureSpec
from model.layers.attention import (
    ActivationUnitAttention,
    TargetAttention,
    normalize_scores,
)
from model.layers.mlp import MLP
from model.layers.retrieval import gather_rows, masked_top_k
from model.lifelong_model import BodyConfig, LifelongCTRModel, LongTermOutput, RawHistoryArch


class FineAttention(Enum):
    ACTIVATION_UNIT = "activation_unit"
    MULTI_HEAD_FFN = "multi_head_ffn"


class Integration(Enum):
    CONCAT = "concat"
    SUM = "sum"


@dataclass(frozen=True)
class LAPAttentionConfig:
    csa_heads: int = 1
    k_mid: int = 100
    msa_heads: int = 4
    k_top: int = 20
    fsa: FineAttention = FineAttention.ACTIVATION_UNIT
    fsa_heads: int = 4
    integration: Integration = Integration.CONCAT
    hidden_dims: tuple[int, ...] = (80, 40)


class LAPAttention(nn.Module):
    """(queries [R, C, Dk], keys [R, L, Dk], values [R, L, Dv], mask [R, L], side)
    -> LongTermOutput [R, C, E + H·E + Dv] (concat) or [R, C, Dv] (sum)."""

    def __init__(self, config: LAPAttentionConfig, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.config = config
        self.coarse = TargetAttention(key_dim, key_dim, value_dim, num_heads=config.csa_heads)
        self.medium = TargetAttention(key_dim, key_dim, value_dim, num_heads=config.msa_heads)
        self.fine: nn.Module
        if config.fsa is FineAttention.ACTIVATION_UNIT:
            self.fine = ActivationUnitAttention(key_dim, config.hidden_dims)
            fine_dim = value_dim
        else:
            self.fine = TargetAttention(key_dim, key_dim, value_dim, num_heads=config.fsa_heads)
            fine_dim = self.fine.output_dim
            self.fine_ffn = MLP(fine_dim, (fine_dim, fine_dim))
        dims = (self.coarse.output_dim, self.medium.output_dim, fine_dim)
        if config.integration is Integration.SUM:
            self.level_projections = nn.ModuleList(nn.Linear(dim, value_dim) for dim in dims)
            self.output_dim = value_dim
        else:
            self.output_dim = sum(dims)
        self.level_overlap = 0.0

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        side: torch.Tensor | None = None,
    ) -> LongTermOutput:
        # CSA: full softmax attention; its (head-averaged) scores pick the k_mid candidates' items.
        coarse_scores = self.coarse.scores(queries, keys)  # [R, C, Hc, L]
        coarse_weights = normalize_scores(coarse_scores, mask[:, None, None, :], True)
        coarse = self.coarse.pool(coarse_weights, values)  # [R, C, Hc·E]
        mid_index, mid_valid = masked_top_k(coarse_scores.mean(2), mask, self.config.k_mid)

        # MSA: multi-head attention over the k_mid; highest weight over heads picks the k_top.
        medium_weights, medium = self.medium.attend_selected(
            queries, keys, values, mid_index, mid_valid
        )  # weights [R, C, H, Km], medium [R, C, H·E]
        top_in_mid, top_valid = masked_top_k(medium_weights.amax(2), mid_valid, self.config.k_top)
        top_index = torch.gather(mid_index, -1, top_in_mid)  # [R, C, Kt] positions in L

        # FSA: non-linear attention over the finalists.
        top_keys, top_values = gather_rows(keys, top_index), gather_rows(values, top_index)
        if self.config.fsa is FineAttention.ACTIVATION_UNIT:
            fine = self.fine(queries, top_keys, top_values, top_valid)  # [R, C, Dv]
        else:
            fine = self.fine.forward_selected(queries, keys, values, top_index, top_valid)
            fine = fine + self.fine_ffn(fine)
        if self.training:  # a training diagnostic: kept off the serving path (≈1.5 ms there)
            self.level_overlap = self._overlap(coarse_scores.mean(2), mask, top_index, top_valid)

        levels = (coarse, medium, fine)
        if self.config.integration is Integration.SUM:
            interest = sum(
                projection(level)
                for projection, level in zip(self.level_projections, levels, strict=True)
            )
            return LongTermOutput(interest)
        return LongTermOutput(torch.cat(levels, dim=-1))  # [R, C, E + H·E + Dv]

    @torch.no_grad()
    def _overlap(
        self,
        coarse_scores: torch.Tensor,
        mask: torch.Tensor,
        top_index: torch.Tensor,
        top_valid: torch.Tensor,
    ) -> float:
        """Share of the finalists that CSA's own top k_top contains (1.0: MSA changed nothing)."""
        coarse_top, coarse_valid = masked_top_k(coarse_scores, mask, top_index.shape[-1])
        same = (top_index[..., :, None] == coarse_top[..., None, :]) & coarse_valid[..., None, :]
        hits = (same.any(-1) & top_valid).sum()
        return float(hits / top_valid.sum().clamp(min=1))


@dataclass(frozen=True)
class LAPConfig(BodyConfig):
    lap: LAPAttentionConfig = field(default_factory=LAPAttentionConfig)


class LAP(LifelongCTRModel):
    """Shared body + the attention pyramid over the raw history."""

    def __init__(
        self, config: LAPConfig, spec: FeatureSpec, sparse_arch: EmbeddingCollection
    ) -> None:
        super().__init__(config, spec, sparse_arch)
        attention = LAPAttention(config.lap, self.key_dim, self.value_dim)
        self.set_long_term_arch(RawHistoryArch(attention))
