"""Typed configuration: dataclasses are the schema; YAML presets and `key=value` overrides are the
values. One mechanism for the ETL (etl/config.py), the trainer (trainer/config.py) and the models
(model/registry.py):

    values = merge(load_yaml("conf/train/default.yaml"), load_yaml("conf/model/cain.yaml"))
    set_dotted(values, *parse_override("train.max_steps=20"))
    config = build(TrainerConfig, values, origin="trainer config")

`build` turns nested mappings into (frozen) dataclasses and converts every value to its field's
annotated type with one set of rules:

- bool: true / false, or the strings true, false, yes, no, 1, 0;
- int: an integer (not a bool), or a string of digits (`1_000` too);
- float: any number, or a numeric string;
- str: a string; a number or a YAML date is written as text;
- Enum: a member's value or name, case-insensitive;
- tuple[X, ...], list[X]: a list or tuple of X;
- dict: a mapping, kept as is;
- X | None: null / None (YAML `null`, the strings null and none), or an X;
- a dataclass: a mapping of its fields.

An unknown key raises `ConfigError` naming it with its full dotted path and the closest known
key (or all known keys when none is close); a bad value names its key; a missing required field
and a dataclass's own `__post_init__` check (ValueError) become `ConfigError` too. Later presets
win over earlier ones, overrides over presets, and nested mappings merge key by key.
"""

from __future__ import annotations

import dataclasses
import datetime
import difflib
import enum
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A preset or override names an unknown key or holds a bad value; the message names it."""


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML preset as a mapping ({} for an empty file)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file {path}")
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML: {error}") from error
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return values


def merge(*mappings: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge: later mappings win; nested mappings merge key by key."""
    merged: dict[str, Any] = {}
    for mapping in mappings:
        for key, value in mapping.items():
            if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
                merged[key] = merge(merged[key], value)
            else:
                merged[key] = dict(value) if isinstance(value, Mapping) else value
    return merged


def parse_override(text: str) -> tuple[str, Any]:
    """`section.key=value` -> (dotted key, value parsed as YAML: 16 is an int, [1, 2] a list)."""
    key, separator, raw = text.partition("=")
    key = key.strip()
    if not separator or not key:
        raise ConfigError(f"{text!r}: an override looks like key=value (train.max_steps=20)")
    try:
        return key, yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as error:
        raise ConfigError(f"{key}: cannot parse {raw!r}: {error}") from error


def set_dotted(values: dict[str, Any], key: str, value: Any) -> None:
    """values["a"]["b"] = value for key "a.b", creating nested mappings on the way."""
    *parents, last = key.split(".")
    node = values
    for index, part in enumerate(parents):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            prefix = ".".join(parents[: index + 1])
            raise ConfigError(f"{key}: {prefix} is a value ({child!r}), not a section")
        node = child
    node[last] = value


def build(cls: type, values: Mapping[str, Any], origin: str = "config", prefix: str = "") -> Any:
    """An instance of dataclass `cls` from `values` (see the module docstring for the rules)."""
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{origin}: {prefix.rstrip('.') or 'config'}: expected a mapping, got {values!r}"
        )
    hints = typing.get_type_hints(cls)
    known = [field.name for field in dataclasses.fields(cls) if field.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        close = difflib.get_close_matches(unknown[0], known, n=1)
        hint = (
            f"did you mean {prefix}{close[0]}?"
            if close
            else "known: " + ", ".join(f"{prefix}{name}" for name in known)
        )
        raise ConfigError(
            f"{origin}: unknown key {prefix}{_leaf(unknown[0], values[unknown[0]])} ({hint})"
        )
    converted = {
        name: coerce(value, hints[name], f"{prefix}{name}", origin)
        for name, value in values.items()
    }
    try:
        return cls(**converted)
    except TypeError as error:  # a required field is missing
        raise ConfigError(f"{origin}: {prefix}{error}") from error
    except ValueError as error:  # the dataclass's own __post_init__ checks
        raise ConfigError(f"{origin}: {error}") from error


def coerce(value: Any, annotation: Any, key: str, origin: str = "config") -> Any:
    """`value` converted to `annotation`, or ConfigError naming `key`."""
    origin_type, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin_type in (typing.Union, types.UnionType):
        if type(None) in arguments and _is_null(value):
            return None
        options = [option for option in arguments if option is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(value, option, key, origin)
            except ConfigError as error:
                errors.append(error)
        raise errors[0]
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            return value
        return build(annotation, value, origin, prefix=f"{key}.")
    if origin_type in (tuple, list):
        if not isinstance(value, list | tuple):
            raise _bad(origin, key, "a list", value)
        items = [coerce(item, arguments[0], key, origin) for item in value]
        return tuple(items) if origin_type is tuple else items
    if origin_type is dict or annotation is dict:
        if not isinstance(value, Mapping):
            raise _bad(origin, key, "a mapping", value)
        return dict(value)
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation):
            return value
        for member in annotation:
            if isinstance(value, str) and value.lower() in (
                str(member.value).lower(),
                member.name.lower(),
            ):
                return member
        choices = ", ".join(str(member.value) for member in annotation)
        raise ConfigError(f"{origin}: {key}: {value!r} is not one of {choices}")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str | int) and str(value).lower() in _BOOLEANS:
            return _BOOLEANS[str(value).lower()]
        raise _bad(origin, key, "true or false", value)
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.replace("_", "").lstrip("-").isdigit():
            return int(value.replace("_", ""))
        raise _bad(origin, key, "an integer", value)
    if annotation is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(origin, key, "a number", value)
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, datetime.date):
            return value.isoformat()
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise _bad(origin, key, "a string", value)
    if annotation is Any:
        return value
    raise ConfigError(f"{origin}: {key}: unsupported annotation {annotation}")


def to_plain(value: Any) -> Any:
    """Dataclasses, enums and tuples as YAML/JSON-ready dicts, values and lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            field.name: to_plain(getattr(value, field.name)) for field in dataclasses.fields(value)
        }
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Mapping):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(item) for item in value]
    return value


_BOOLEANS = {"true": True, "false": False, "yes": True, "no": False, "1": True, "0": False}


def _leaf(key: str, value: Any) -> str:
    """The full dotted path of the first value under `key` (a.b.c for {a: {b: {c: 1}}})."""
    while isinstance(value, Mapping) and value:
        child = next(iter(value))
        key, value = f"{key}.{child}", value[child]
    return key


def _is_null(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.lower() in ("null", "none"))


def _bad(origin: str, key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f"{origin}: {key}: expected {expected}, got {value!r}")
