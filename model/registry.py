"""Model registry: name -> (frozen config dataclass, module class), and building from overrides.

    build_model("cain", spec, {"embedding_dim": 16, "mlp_dims": [64, 32], "context_length": 3})

Overrides are the `model.*` keys of the CLI / YAML without the prefix. Nested configs (a model's
attention settings) are reached with dots: `lap.k_top=10`, `twin.num_heads=1`. Values are checked
against the dataclass field types (lists become tuples, enum fields take their string value);
an unknown model, an unknown key or an ill-typed value raises `ValueError` naming it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any

import torch
from torch import nn

from etl.feature_spec import FeatureSpec
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
from model.sdim import SDIM, SDIMConfig
from model.sim_soft import SIMSoft, SIMSoftConfig
from model.twin import TWIN, TWINConfig

MODELS: dict[str, tuple[type, type[nn.Module]]] = {
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


def resolve_config(name: str, overrides: Mapping[str, object] | None = None) -> Any:
    """The model's config with the overrides applied (the defaults live in the dataclass)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; registered: {', '.join(MODELS)}")
    config = MODELS[name][0]()
    for key, value in (overrides or {}).items():
        config = _override(config, key.split("."), value, key)
    return config


def build_model(
    name: str,
    spec: FeatureSpec,
    overrides: Mapping[str, object] | None = None,
    *,
    embedding_device: torch.device | None = None,
) -> nn.Module:
    """Build a registered model; its EmbeddingCollection is created on `embedding_device`."""
    config = resolve_config(name, overrides)
    return MODELS[name][1](config, spec, embedding_device)


def config_to_dict(config: Any) -> dict[str, object]:
    """Plain JSON/YAML-ready values (enums by value, tuples as lists), for checkpoints."""

    def plain(value: object) -> object:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, Enum):
            return value.value
        if isinstance(value, tuple | list):
            return [plain(item) for item in value]
        return value

    result = plain(config)
    assert isinstance(result, dict)
    return result


def _override(config: Any, path: list[str], value: object, key: str) -> Any:
    known = {f.name for f in dataclasses.fields(config)}
    head = path[0]
    if head not in known:
        raise ValueError(
            f"unknown model override {key!r} for {type(config).__name__}; known: {sorted(known)}"
        )
    if len(path) > 1:
        nested = getattr(config, head)
        if not dataclasses.is_dataclass(nested):
            raise ValueError(f"model override {key!r}: {head!r} has no sub-keys")
        return dataclasses.replace(config, **{head: _override(nested, path[1:], value, key)})
    annotation = typing.get_type_hints(type(config))[head]
    if dataclasses.is_dataclass(getattr(config, head)) and isinstance(value, Mapping):
        nested = getattr(config, head)
        for sub_key, sub_value in value.items():
            nested = _override(nested, [sub_key], sub_value, f"{key}.{sub_key}")
        return dataclasses.replace(config, **{head: nested})
    return dataclasses.replace(config, **{head: _coerce(value, annotation, key)})


def _coerce(value: object, annotation: Any, key: str) -> object:
    """Check `value` against a field annotation, converting only lossless forms."""
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in arguments:
            return None
        errors = []
        for option in arguments:
            if option is type(None):
                continue
            try:
                return _coerce(value, option, key)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if errors else f"model override {key!r}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ValueError(f"model override {key!r}: expected a list, got {value!r}")
        item_type = arguments[0]
        return tuple(_coerce(item, item_type, key) for item in value)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        if isinstance(value, annotation):
            return value
        for member in annotation:
            if isinstance(value, str) and value.lower() in (member.value, member.name.lower()):
                return member
        choices = [member.value for member in annotation]
        raise ValueError(f"model override {key!r}: {value!r} is not one of {choices}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lstrip("-").isdigit():
            return int(value)
    elif annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    raise ValueError(
        f"model override {key!r}: expected {getattr(annotation, '__name__', annotation)}, "
        f"got {value!r}"
    )
