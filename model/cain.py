"""CAIN, the Context-Aware Interest Network (Guo et al., the seed paper §4).

    history values [R, L, Dv] ──TCN layer 1 (cl, stride 1, PEG filters)──▶ cr¹ [R, L, Dk]
        cr¹ ──major attention (LAP; or TWIN / SIM soft / ETA / SDIM / DIN)──▶ IR₁
        ReLU ──TCN layer n (stride s, PEG)──▶ crⁿ [R, ceil(L/sⁿ⁻¹), Dk] ──aux attention n──▶ IRₙ
    long-term interest = IR₁ ⊕ IR₂ ⊕ … ⊕ IR_N                                  (MSIA, §4.2)

The TCN's outputs replace the item representations *everywhere* the major attention uses them
(retrieval scores too, §4.1.2): they are passed as both keys and values. They are computed once
per request; only the attentions see candidates.

Switches (paper defaults unless marked "unpublished"):
- `context_length` cl = 7 (Figure 5); 0 = per-item linear layer; -1 = no TCN at all (and no
  MSIA): the major attention runs on the raw history.
- `num_layers` = 4 (Figure 6), `later_stride` = 4 (Figure 7); layer 1 stride is fixed at 1.
- `later_context_length` (unpublished; default None = same cl as layer 1, as in Figure 6).
- `context_extractor`: TCN, or the Table 1 ablations GRU / SELF_ATTENTION in place of layer 1.
- `major_attention` = LAP; any retrieval attention gives the X_TCN (num_layers=1) and X_MSIA
  (Tables 2-3) variants. Their hyperparameters are the nested `lap`, `twin`, ... configs.
- Auxiliary attention (eqs. 8-9): own W_Q, W_K, W_V per layer, `auxiliary_heads` = 1,
  `auxiliary_dim` d (unpublished; default Dk). `auxiliary_softmax` = True: the published eq. 8 has
  no softmax, which over hundreds of positions lets IRₙ grow with L (unpublished; a switch).
- PEG (eqs. 10-12): `peg_placement` ALL (Table 4: first / latter / all / none), `peg_mode`
  REPLACE (Table 6: replace / sum / concat), `peg_inputs` all three groups (Table 5:
  demographics, behavior statistics = the dense profile features, most-interacted categories),
  `peg_hidden_dim` 32 (unpublished), `peg_offset_scale` 1 (unpublished: the personal offset's
  multiplier; 0 gives every user the generator's global filter). The generated filter shares the
  layer's bias b_c.
- Activation between TCN layers: ReLU (unpublished); each layer's linear output feeds its
  attention.
- `tcn_kernel` = AUTO: how the TCN convolves (`TCNKernel`): per-tap GEMMs on CUDA, the fastest
  measured kernel on CPU; REFERENCE runs the unfold reference.
- `tcn_bottleneck_dim` (not in the paper; default None = the paper's full Dv -> Dk filters): b
  makes every TCN layer a rank-b convolution (project to b, convolve b -> b with global / PEG
  filters, project to Dk), about K·Dv·Dk / (K·b² + (Dv + Dk)·b) times cheaper (≈10x at b = 32).
- `peg_cache_size` = 0: in eval mode without grad, keep PEG filters of that many distinct
  profiles and reuse them (exact; a serving cache per user).

Letters: R requests, C candidates per request, L history length, Dk key width (2·D), Dv value
width, N layers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import torch
from torch import nn
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.feature_spec import FeatureSpec
from model.din import DINAttention, DINAttentionConfig
from model.eta import ETAAttention, ETAAttentionConfig
from model.lap import LAPAttention, LAPAttentionConfig
from model.layers.attention import TargetAttention
from model.layers.context import BidirectionalGRUContext, SelfAttentionContext
from model.layers.embedding import EmbeddedBatch
from model.layers.temporal_convolution import PEGMode, TCNKernel, TemporalConvNet
from model.lifelong_model import BodyConfig, LifelongCTRModel, LongTermOutput
from model.sdim import SDIMAttention, SDIMAttentionConfig
from model.sim_soft import SIMSoftAttention, SIMSoftAttentionConfig
from model.twin import TWINAttention, TWINAttentionConfig


class MajorAttention(Enum):
    LAP = "lap"
    TWIN = "twin"
    SIM_SOFT = "sim_soft"
    ETA = "eta"
    SDIM = "sdim"
    DIN = "din"


class ContextExtractor(Enum):
    TCN = "tcn"
    GRU = "gru"
    SELF_ATTENTION = "self_attention"


class PEGPlacement(Enum):
    NONE = "none"
    FIRST = "first"
    LATTER = "latter"
    ALL = "all"


class PEGInput(Enum):
    DEMOGRAPHICS = "demographics"
    BEHAVIOR_STATISTICS = "behavior_statistics"
    TOP_CATEGORIES = "top_categories"


@dataclass(frozen=True)
class CAINConfig(BodyConfig):
    context_length: int = 7
    num_layers: int = 4
    later_stride: int = 4
    later_context_length: int | None = None
    context_extractor: ContextExtractor = ContextExtractor.TCN
    major_attention: MajorAttention = MajorAttention.LAP
    auxiliary_heads: int = 1
    auxiliary_dim: int | None = None
    auxiliary_softmax: bool = True
    peg_placement: PEGPlacement = PEGPlacement.ALL
    peg_mode: PEGMode = PEGMode.REPLACE
    peg_inputs: tuple[PEGInput, ...] = (
        PEGInput.DEMOGRAPHICS,
        PEGInput.BEHAVIOR_STATISTICS,
        PEGInput.TOP_CATEGORIES,
    )
    peg_hidden_dim: int = 32
    peg_offset_scale: float = 1.0
    tcn_kernel: TCNKernel = TCNKernel.AUTO
    tcn_bottleneck_dim: int | None = None
    peg_cache_size: int = 0
    lap: LAPAttentionConfig = field(default_factory=LAPAttentionConfig)
    twin: TWINAttentionConfig = field(default_factory=TWINAttentionConfig)
    sim_soft: SIMSoftAttentionConfig = field(default_factory=SIMSoftAttentionConfig)
    eta: ETAAttentionConfig = field(default_factory=ETAAttentionConfig)
    sdim: SDIMAttentionConfig = field(default_factory=SDIMAttentionConfig)
    din: DINAttentionConfig = field(default_factory=DINAttentionConfig)


# Major attention by name: (config, key width, value width) -> module.
MAJOR_ATTENTIONS: dict[MajorAttention, Callable[[CAINConfig, int, int], nn.Module]] = {
    MajorAttention.LAP: lambda config, keys, values: LAPAttention(config.lap, keys, values),
    MajorAttention.TWIN: lambda config, keys, values: TWINAttention(
        config.twin, keys, values, config.embedding_dim if config.use_side_features else 0
    ),
    MajorAttention.SIM_SOFT: lambda config, keys, values: SIMSoftAttention(
        config.sim_soft, keys, values
    ),
    MajorAttention.ETA: lambda config, keys, values: ETAAttention(config.eta, keys, values),
    MajorAttention.SDIM: lambda config, keys, values: SDIMAttention(config.sdim, keys, values),
    MajorAttention.DIN: lambda config, keys, values: DINAttention(config.din, keys, values),
}


class MultiScopeArch(nn.Module):
    """TCN (+PEG) stack, major attention on layer 1, auxiliary attentions on layers 2..N."""

    def __init__(
        self,
        config: CAINConfig,
        key_dim: int,
        value_dim: int,
        side_dim: int,
        profile_group_dims: dict[str, int],
    ) -> None:
        super().__init__()
        self.config = config
        self.use_context = config.context_length >= 0
        num_layers = config.num_layers if self.use_context else 0
        if config.tcn_bottleneck_dim is not None and config.tcn_bottleneck_dim < 1:
            raise ValueError(f"tcn_bottleneck_dim={config.tcn_bottleneck_dim} must be >= 1 or None")
        if config.peg_offset_scale < 0:
            raise ValueError(f"peg_offset_scale={config.peg_offset_scale} must be >= 0")
        if config.peg_cache_size < 0:
            raise ValueError(f"peg_cache_size={config.peg_cache_size} must be >= 0")
        self.peg_groups = tuple(
            group.value if group is not PEGInput.BEHAVIOR_STATISTICS else "dense"
            for group in config.peg_inputs
        )
        profile_dim = sum(profile_group_dims[name] for name in self.peg_groups)
        if config.peg_placement is not PEGPlacement.NONE and profile_dim == 0:
            raise ValueError(
                f"peg_inputs={[g.value for g in config.peg_inputs]} are empty for this feature "
                "spec (no demographics or dense features?): choose other inputs or "
                "peg_placement=none"
            )
        later_cl = (
            config.context_length
            if config.later_context_length is None
            else config.later_context_length
        )
        peg_layers = [self._peg_mode(index) for index in range(num_layers)]
        tcn_first = config.context_extractor is ContextExtractor.TCN
        self.first_extractor: nn.Module | None = None
        if self.use_context and not tcn_first:
            extractors = {
                ContextExtractor.GRU: BidirectionalGRUContext,
                ContextExtractor.SELF_ATTENTION: SelfAttentionContext,
            }
            self.first_extractor = extractors[config.context_extractor](value_dim, key_dim)
        tcn_layers = range(num_layers) if tcn_first else range(1, num_layers)
        self.tcn = TemporalConvNet(
            in_dim=value_dim if tcn_first else key_dim,
            out_dim=key_dim,
            context_lengths=[config.context_length if i == 0 else later_cl for i in tcn_layers],
            strides=[1 if i == 0 else config.later_stride for i in tcn_layers],
            peg_layers=[peg_layers[i] for i in tcn_layers],
            profile_dim=profile_dim,
            peg_hidden_dim=config.peg_hidden_dim,
            kernel=config.tcn_kernel,
            bottleneck_dim=config.tcn_bottleneck_dim,
            peg_cache_size=config.peg_cache_size,
            peg_offset_scale=config.peg_offset_scale,
        )
        # Without a TCN the major attention reads raw keys and values, as the plain baseline does.
        major_value_dim = key_dim if self.use_context else value_dim
        self.major = MAJOR_ATTENTIONS[config.major_attention](config, key_dim, major_value_dim)
        self.auxiliary = nn.ModuleList(
            TargetAttention(
                key_dim,
                key_dim,
                key_dim,
                num_heads=config.auxiliary_heads,
                head_dim=config.auxiliary_dim,
                use_softmax=config.auxiliary_softmax,
            )
            for _ in range(max(num_layers - 1, 0))
        )
        self.output_dim = self.major.output_dim + sum(a.output_dim for a in self.auxiliary)

    def _peg_mode(self, layer: int) -> PEGMode | None:
        uses_peg = {
            PEGPlacement.NONE: False,
            PEGPlacement.FIRST: layer == 0,
            PEGPlacement.LATTER: layer > 0,
            PEGPlacement.ALL: True,
        }[self.config.peg_placement]
        tcn_layer = layer > 0 or self.config.context_extractor is ContextExtractor.TCN
        return self.config.peg_mode if uses_peg and tcn_layer else None

    def context_layers(
        self, values: torch.Tensor, mask: torch.Tensor, embedded: EmbeddedBatch
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer n: (crⁿ [R, L_n, Dk], mask [R, L_n]); request-only work."""
        profile = torch.cat([getattr(embedded, name) for name in self.peg_groups], dim=-1)
        layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        if self.first_extractor is not None:
            layers.append(self.first_extractor(values, mask, profile))
            values, mask = torch.relu(layers[0][0]), layers[0][1]
        return layers + self.tcn(values, mask, profile)

    def forward(
        self,
        queries: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor,
        side: torch.Tensor | None,
        embedded: EmbeddedBatch,
    ) -> LongTermOutput:
        if not self.use_context:
            return self.major(queries, keys, values, mask, side)
        layers = self.context_layers(values, mask, embedded)
        first, first_mask = layers[0]  # [R, L, Dk]: replaces keys and values (§4.1.2)
        major = self.major(queries, first, first, first_mask, side)
        interests = [major.interest]  # IR₁
        for attention, (scope, scope_mask) in zip(self.auxiliary, layers[1:], strict=True):
            interests.append(attention(queries, scope, scope, scope_mask))  # IRₙ, eqs. 8-9
        return LongTermOutput(
            torch.cat(interests, dim=-1), major.auxiliary_logits, major.auxiliary_weight
        )


class CAINLongTermArch(nn.Module):
    """Feeds the raw history to `MultiScopeArch` (keys, values, side, profile)."""

    def __init__(self, multi_scope: MultiScopeArch) -> None:
        super().__init__()
        self.multi_scope = multi_scope
        self.output_dim = multi_scope.output_dim

    def forward(self, queries: torch.Tensor, embedded: EmbeddedBatch) -> LongTermOutput:
        side = embedded.history_side
        values = embedded.history if side is None else torch.cat([embedded.history, side], -1)
        return self.multi_scope(
            queries, embedded.history, values, embedded.history_mask, side, embedded
        )


class CAIN(LifelongCTRModel):
    """Shared body + TCN/MSIA/PEG long-term module."""

    def __init__(
        self, config: CAINConfig, spec: FeatureSpec, sparse_arch: EmbeddingCollection
    ) -> None:
        super().__init__(config, spec, sparse_arch)
        multi_scope = MultiScopeArch(
            config,
            self.key_dim,
            self.value_dim,
            self.side_dim,
            self.profile_group_dims,
        )
        self.set_long_term_arch(CAINLongTermArch(multi_scope))
