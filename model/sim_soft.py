"""SIM soft search (Pi et al., CIKM 2020): a learned GSU retrieves, a multi-head ESU attends.

    GSU:  inner product of separately projected candidate and history embeddings; top `top_k`.
          Trained by SIM's auxiliary task: the softmax-weighted sum of the projected history,
          next to the projected candidate, goes through a small MLP to a CTR logit, and its BCE is
          added to the main loss (total = β·L_ctr + α·L_gsu, α = β = 1).
    ESU:  multi-head target attention over the finalists, with the time-gap (side) embedding
          concatenated to each behavior (keys and values are the history values).

`hard_search` switches the GSU to SIM hard: the finalists are the most recent `top_k` items of the
candidate's category (category embeddings compared for equality, i.e. the same table row). It
needs raw history keys (not TCN outputs) and has no auxiliary loss.

Switches: `top_k` (100; the paper uses 50-200), `gsu_dim` (default Dk), `num_heads` (4),
`auxiliary_weight` α (1.0), `auxiliary_hidden_dims` (200-80, unpublished), `hard_search` (False).
Unpublished: the aux head reads the soft-search interest next to a separate projection of the
candidate; the soft-search interest pools the history through its own W_V.

Letters: R requests, C candidates per request, L history length, K top_k, G GSU width,
Dk key width, Dv value width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.feature_spec import FeatureSpec
from model.layers.attention import TargetAttention, masked_softmax
from model.layers.mlp import OverArch
from model.layers.retrieval import masked_top_k
from model.lifelong_model import BodyConfig, LifelongCTRModel, LongTermOutput, RawHistoryArch


@dataclass(frozen=True)
class SIMSoftAttentionConfig:
    top_k: int = 100
    gsu_dim: int | None = None
    num_heads: int = 4
    auxiliary_weight: float = 1.0
    auxiliary_hidden_dims: tuple[int, ...] = (200, 80)
    hard_search: bool = False


class SIMSoftAttention(nn.Module):
    """(queries [R, C, Dk], keys [R, L, Dk], values [R, L, Dv], mask [R, L], side)
    -> LongTermOutput(interest [R, C, H·E], auxiliary_logits [R, C] unless hard search)."""

    def __init__(self, config: SIMSoftAttentionConfig, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.config = config
        gsu_dim = config.gsu_dim or key_dim
        if not config.hard_search:
            # Inner product of projected candidate and history (W_Q, W_K), and the aux task's
            # soft-search interest Σ softmax · W_V k: one single-head attention.
            self.gsu = TargetAttention(key_dim, key_dim, key_dim, num_heads=1, head_dim=gsu_dim)
            self.gsu_query = nn.Linear(key_dim, gsu_dim, bias=False)
            self.auxiliary_head = OverArch(2 * gsu_dim, config.auxiliary_hidden_dims)
        self.esu = TargetAttention(key_dim, value_dim, value_dim, num_heads=config.num_heads)
        self.output_dim = self.esu.output_dim

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        side: torch.Tensor | None = None,
    ) -> LongTermOutput:
        if self.config.hard_search:
            index, valid = self._hard_search(queries, keys, mask)
            auxiliary_logits = None
        else:
            scores = self.gsu.scores(queries, keys)  # [R, C, 1, L]
            index, valid = masked_top_k(scores[:, :, 0], mask, self.config.top_k)
            soft_weights = masked_softmax(scores, mask[:, None, None, :])  # [R, C, 1, L]
            soft_interest = self.gsu.pool(soft_weights, keys)  # [R, C, G]
            auxiliary_input = torch.cat([soft_interest, self.gsu_query(queries)], -1)
            auxiliary_logits = self.auxiliary_head(auxiliary_input)  # [R, C]
        # ESU keys carry the side (time-gap) embedding, as SIM's ESU does.
        interest = self.esu.forward_selected(queries, values, values, index, valid)
        return LongTermOutput(interest, auxiliary_logits, self.config.auxiliary_weight)

    def _hard_search(
        self, queries: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Most recent top_k items whose category embedding equals the candidate's."""
        half = keys.shape[-1] // 2  # keys are item ⊕ category: the second half is the category
        same_category = (queries[:, :, None, half:] == keys[:, None, :, half:]).all(-1)  # [R, C, L]
        recency = torch.arange(
            keys.shape[1], device=keys.device, dtype=keys.dtype
        )  # later = higher
        return masked_top_k(
            recency.expand_as(same_category), same_category & mask[:, None, :], self.config.top_k
        )


@dataclass(frozen=True)
class SIMSoftConfig(BodyConfig):
    sim_soft: SIMSoftAttentionConfig = field(default_factory=SIMSoftAttentionConfig)


class SIMSoft(LifelongCTRModel):
    """Shared body + SIM (soft search by default, hard search by switch)."""

    def __init__(
        self,
        config: SIMSoftConfig,
        spec: FeatureSpec,
        sparse_arch: EmbeddingCollection,
    ) -> None:
        super().__init__(config, spec, sparse_arch)
        attention = SIMSoftAttention(config.sim_soft, self.key_dim, self.value_dim)
        self.set_long_term_arch(RawHistoryArch(attention))
