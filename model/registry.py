"""Model registry: name -> (frozen config dataclass, module class), and building from overrides.

    config = resolve_config("cain", {"embedding_dim": 16, "mlp_dims": [64, 32], "lap.k_top": 10})
    model = build_model("cain", spec, config, sparse_arch=embedding_collection)

Overrides are the `model.*` keys of the CLI / YAML without the prefix; nested configs (a model's
attention settings) are nested mappings or dotted keys (`lap.k_top`). Typing and checks are the
project's one config mechanism (`contract.config`): an unknown model, an unknown key or an
ill-typed value raises `ConfigError` naming it. `to_plain(config)` (contract.config) gives the
resolved config as plain values: what checkpoints store.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torchrec.modules.embedding_modules import EmbeddingCollection

from contract.config import ConfigError, build, merge, set_dotted
from contract.feature_spec import FeatureSpec
from model.cain import CAIN, CAINConfig
from model.cain_variants import (
    CAINGRUConfig,
    CAINSelfAttentionConfig,
    ETAMSIAConfig,
    ETATCNConfig,
    LAPMSIAConfig,
    LAPTCNConfig,
    SDIMMSIAConfig,
    SDIMTCNConfig,
    SIMSoftMSIAConfig,
    SIMSoftTCNConfig,
    TWINMSIAConfig,
    TWINTCNConfig,
)
from model.din import DIN, DINConfig
from model.eta import ETA, ETAConfig
from model.lap import LAP, LAPConfig
from model.lifelong_model import LifelongCTRModel
from model.sdim import SDIM, SDIMConfig
from model.sim_soft import SIMSoft, SIMSoftConfig
from model.tables import embedding_collection, table_layout
from model.twin import TWIN, TWINConfig

MODELS: dict[str, tuple[type, type[LifelongCTRModel]]] = {
    "cain": (CAINConfig, CAIN),
    "lap": (LAPConfig, LAP),
    "twin": (TWINConfig, TWIN),
    "sim_soft": (SIMSoftConfig, SIMSoft),
    "eta": (ETAConfig, ETA),
    "sdim": (SDIMConfig, SDIM),
    "din": (DINConfig, DIN),
    "cain_gru": (CAINGRUConfig, CAIN),
    "cain_self_attention": (CAINSelfAttentionConfig, CAIN),
    "lap_tcn": (LAPTCNConfig, CAIN),
    "lap_msia": (LAPMSIAConfig, CAIN),
    "twin_tcn": (TWINTCNConfig, CAIN),
    "twin_msia": (TWINMSIAConfig, CAIN),
    "sim_soft_tcn": (SIMSoftTCNConfig, CAIN),
    "sim_soft_msia": (SIMSoftMSIAConfig, CAIN),
    "eta_tcn": (ETATCNConfig, CAIN),
    "eta_msia": (ETAMSIAConfig, CAIN),
    "sdim_tcn": (SDIMTCNConfig, CAIN),
    "sdim_msia": (SDIMMSIAConfig, CAIN),
}


def resolve_config(name: str, values: Mapping[str, object] | None = None) -> Any:
    """The model's config: its dataclass defaults, then `values` (nested mappings, or dotted keys
    such as "lap.k_top"), typed and checked by `contract.config`. Raises ConfigError."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; registered: {', '.join(MODELS)}")
    nested: dict[str, Any] = {}
    for key, value in (values or {}).items():
        single: dict[str, Any] = {}
        set_dotted(single, key, value)
        nested = merge(nested, single)
    return build(MODELS[name][0], nested, origin=f"model {name}", prefix="model.")


def build_model(
    name: str,
    spec: FeatureSpec,
    config: Any = None,
    *,
    sparse_arch: EmbeddingCollection | None = None,
    device: torch.device | None = None,
) -> LifelongCTRModel:
    """A registered model. `config` is its resolved config or a mapping of overrides.

    sparse_arch: the EmbeddingCollection the model looks its ids up in (the trainer builds it,
    on the meta device, for DMP to shard); None builds one on `device` from the spec's tables.
    """
    if config is None or isinstance(config, Mapping):
        config = resolve_config(name, config)
    if sparse_arch is None:
        layout = table_layout(spec, config.max_table_rows, config.use_side_features)
        sparse_arch = embedding_collection(
            layout, config.embedding_dim, device, config.embedding_init
        )
    return MODELS[name][1](config, spec, sparse_arch)
