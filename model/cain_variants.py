"""Named CAIN variants the paper reports, as config classes with different defaults.

Every one is the `CAIN` module; only defaults change, so any of them is also reachable from `cain`
by overrides (e.g. `major_attention=twin num_layers=1 peg_placement=none` is `twin_tcn`).

- Table 1, context-extractor ablations (single layer, no MSIA, no PEG):
  `cain_gru`, `cain_self_attention`.
- Table 7 / Tables 2-3 on the LAP backbone: `lap_tcn` ("CAIN w/o MSIA and PEG"),
  `lap_msia` ("CAIN w/o PEG").
- Tables 2-3, backbone substitution: `<x>_tcn` (one TCN layer feeding X) and `<x>_msia` (MSIA with
  X as the major attention), for X in twin, sim_soft, eta, sdim. No PEG in either (as published).
"""

from __future__ import annotations

from dataclasses import dataclass

from model.cain import CAINConfig, ContextExtractor, MajorAttention, PEGPlacement


@dataclass(frozen=True)
class CAINGRUConfig(CAINConfig):
    context_extractor: ContextExtractor = ContextExtractor.GRU
    num_layers: int = 1
    peg_placement: PEGPlacement = PEGPlacement.NONE


@dataclass(frozen=True)
class CAINSelfAttentionConfig(CAINConfig):
    context_extractor: ContextExtractor = ContextExtractor.SELF_ATTENTION
    num_layers: int = 1
    peg_placement: PEGPlacement = PEGPlacement.NONE


@dataclass(frozen=True)
class LAPTCNConfig(CAINConfig):
    num_layers: int = 1
    peg_placement: PEGPlacement = PEGPlacement.NONE


@dataclass(frozen=True)
class LAPMSIAConfig(CAINConfig):
    peg_placement: PEGPlacement = PEGPlacement.NONE


@dataclass(frozen=True)
class TWINTCNConfig(LAPTCNConfig):
    major_attention: MajorAttention = MajorAttention.TWIN


@dataclass(frozen=True)
class TWINMSIAConfig(LAPMSIAConfig):
    major_attention: MajorAttention = MajorAttention.TWIN


@dataclass(frozen=True)
class SIMSoftTCNConfig(LAPTCNConfig):
    major_attention: MajorAttention = MajorAttention.SIM_SOFT


@dataclass(frozen=True)
class SIMSoftMSIAConfig(LAPMSIAConfig):
    major_attention: MajorAttention = MajorAttention.SIM_SOFT


@dataclass(frozen=True)
class ETATCNConfig(LAPTCNConfig):
    major_attention: MajorAttention = MajorAttention.ETA


@dataclass(frozen=True)
class ETAMSIAConfig(LAPMSIAConfig):
    major_attention: MajorAttention = MajorAttention.ETA


@dataclass(frozen=True)
class SDIMTCNConfig(LAPTCNConfig):
    major_attention: MajorAttention = MajorAttention.SDIM


@dataclass(frozen=True)
class SDIMMSIAConfig(LAPMSIAConfig):
    major_attention: MajorAttention = MajorAttention.SDIM
