"""DIN (Zhou et al., KDD 2018): an activation unit attends over the whole history.

The long-term module scores every history item against the candidate with an MLP over
[q, k, q−k, q⊙k] and sums the values with those scores. No retrieval: cost grows with L for every
candidate, which is why the lifelong models exist.

Unpublished or contested details, as switches:
- `din.use_softmax` (default True): the DIN paper leaves the scores unnormalised; its released
  code applies a softmax. Unnormalised sums over 1000+ items grow with L, so the default follows
  the code.
- `din.hidden_dims` (default 80-40, the released code), PReLU activations (the paper's Dice is a
  data-adaptive PReLU).
- `din.fast` (default True): the first layer of the unit is split so only the q⊙k term is computed
  per (candidate, item) pair; equal to the reference (tested).

Letters: R requests, C candidates per request, L history length, Dk key width, Dv value width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.feature_spec import FeatureSpec
from model.layers.attention import ActivationUnitAttention
from model.lifelong_model import BodyConfig, LifelongCTRModel, LongTermOutput, RawHistoryArch


@dataclass(frozen=True)
class DINAttentionConfig:
    """Args: hidden_dims of the activation unit; use_softmax; fast (split first layer)."""

    hidden_dims: tuple[int, ...] = (80, 40)
    use_softmax: bool = True
    fast: bool = True


class DINAttention(nn.Module):
    """(queries [R, C, Dk], keys [R, L, Dk], values [R, L, Dv], mask [R, L], side) -> [R, C, Dv]."""

    def __init__(self, config: DINAttentionConfig, key_dim: int, value_dim: int) -> None:
        super().__init__()
        self.unit = ActivationUnitAttention(
            key_dim, config.hidden_dims, use_softmax=config.use_softmax, fast=config.fast
        )
        self.output_dim = value_dim

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        side: torch.Tensor | None = None,
    ) -> LongTermOutput:
        return LongTermOutput(self.unit(queries, keys, values, mask))  # [R, C, Dv]


@dataclass(frozen=True)
class DINConfig(BodyConfig):
    din: DINAttentionConfig = field(default_factory=DINAttentionConfig)


class DIN(LifelongCTRModel):
    """Shared body + DIN attention over the full history."""

    def __init__(
        self, config: DINConfig, spec: FeatureSpec, sparse_arch: EmbeddingCollection
    ) -> None:
        super().__init__(config, spec, sparse_arch)
        attention = DINAttention(config.din, self.key_dim, self.value_dim)
        self.set_long_term_arch(RawHistoryArch(attention))
