"""The one config mechanism: typing rules, unknown keys named with their full path, merging."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import pytest

from contract.config import ConfigError, build, merge, parse_override, set_dotted, to_plain


class Color(enum.Enum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True)
class Inner:
    size: int = 1
    tags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Outer:
    flag: bool = False
    rate: float = 0.5
    color: Color = Color.RED
    name: str | None = None
    inner: Inner = field(default_factory=Inner)

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError("rate must be >= 0")


def test_values_are_converted_to_the_annotated_types():
    config = build(
        Outer,
        {
            "flag": "yes",
            "rate": 1,
            "color": "BLUE",
            "name": "null",
            "inner": {"size": "1_000", "tags": ["a"]},
        },
    )
    assert config == Outer(True, 1.0, Color.BLUE, None, Inner(1000, ("a",)))
    assert to_plain(config) == {
        "flag": True,
        "rate": 1.0,
        "color": "blue",
        "name": None,
        "inner": {"size": 1000, "tags": ["a"]},
    }
    assert build(Outer, to_plain(config)) == config


@pytest.mark.parametrize(
    "values,message",
    [
        ({"inner": {"sise": 3}}, r"unknown key inner\.sise \(did you mean inner\.size\?\)"),
        ({"extra": {"deep": {"key": 1}}}, r"unknown key extra\.deep\.key"),
        ({"flag": "maybe"}, r"flag: expected true or false"),
        ({"inner": {"size": True}}, r"inner\.size: expected an integer"),
        ({"color": "green"}, r"color: 'green' is not one of red, blue"),
        ({"rate": -1}, r"rate must be >= 0"),
    ],
)
def test_bad_keys_and_values_are_named(values, message):
    with pytest.raises(ConfigError, match=message):
        build(Outer, values, origin="test")


def test_presets_merge_and_overrides_win():
    values = merge({"inner": {"size": 2, "tags": ["x"]}}, {"inner": {"size": 3}})
    set_dotted(values, *parse_override("inner.tags=[a, b]"))
    assert build(Outer, values).inner == Inner(3, ("a", "b"))
    with pytest.raises(ConfigError, match="looks like key=value"):
        parse_override("inner.size")
