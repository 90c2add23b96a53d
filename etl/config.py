"""ETL configuration: the dataclasses are the schema, `conf/data/*.yaml` hold the values.

A build reads one source preset (`conf/data/source/<name>.yaml`) and one protocol preset
(`conf/data/protocol/<name>.yaml`); command-line flags override single values. Values are typed
and checked by the project's one config mechanism (`contract.config`): unknown keys and bad
values fail with a message naming the key.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from enum import Enum
from pathlib import Path

from contract.config import ConfigError, build, load_yaml, set_dotted

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "data"


class SourceFormat(str, Enum):
    TAOBAO = "taobao"  # UserBehavior CSV, no header
    FEED = "feed"  # directory with events.csv + profiles.csv (docs/etl.md)


class RequestRule(str, Enum):
    """Which events become requests (each request's own event is its positive candidate)."""

    POSITIVE = "positive"  # every event whose behavior is `positive_behavior` (cain, dare, ubr4ctr)
    ALL = "all"  # every event, any behavior (eta_sdim: behaviors 1..L-1 predict the L-th)
    LAST = "last"  # only the user's last event in the whole range (mimn_sim)
    LABELED = "labeled"  # every event; label = behavior is positive (feed impressions/clicks)


class Sampling(str, Enum):
    POPULARITY = "popularity"  # the item of a uniformly drawn event of the request's pool
    UNIFORM = "uniform"  # a uniformly drawn distinct item of the request's pool


class SplitRule(str, Enum):
    DATE = "date"  # the last `test_days` days up to the newest built day are test
    USER_RECENCY = "user_recency"  # users whose last activity is latest are test (mimn_sim)


@dataclass(frozen=True)
class SourceConfig:
    """Args:
    format: raw input format.
    start_date / end_date: inclusive range of calendar days (time_zone) that are kept; events
        outside are quarantined.
    time_zone: IANA zone that defines the calendar day.
    behaviors: behavior names; code i + 1 is behaviors[i] (docs/data.md).
    positive_behavior: the behavior that makes a request positive.
    test_days: how many days, up to the newest day built so far, form the test split
        (SplitRule.DATE): a full build's last days; a daily run's own day (the day before goes
        back to train).
    """

    format: SourceFormat
    start_date: str
    end_date: str
    time_zone: str
    behaviors: tuple[str, ...]
    positive_behavior: str
    test_days: int = 1

    def __post_init__(self) -> None:
        for name in ("start_date", "end_date"):
            try:
                date.fromisoformat(getattr(self, name))
            except ValueError as error:
                raise ConfigError(f"source.{name}: {error}") from error
        if self.start_date > self.end_date:
            raise ConfigError("source.start_date is after source.end_date")
        if self.positive_behavior not in self.behaviors:
            raise ConfigError(
                f"source.positive_behavior {self.positive_behavior!r} not in behaviors"
            )
        if self.test_days < 0:
            raise ConfigError("source.test_days must be >= 0")

    def behavior_code(self, name: str) -> int:
        return self.behaviors.index(name) + 1


@dataclass(frozen=True)
class ProtocolConfig:
    """Args:
    name: recorded in the feature spec.
    requests: which events are requests.
    negatives: sampled negatives per positive request (k).
    sampling: how negatives are drawn from the request's pool (the day's events before it).
    exclude_history: drop negatives the user interacted with before the request.
    history_fraction: share of negatives drawn from the user's own earlier history (ubr4ctr).
    replace_probability: chance that the target is replaced by a sampled item labelled 0
        (mimn_sim); then no other negatives are added.
    split: how samples are assigned to train/test.
    test_fraction: share of users in test (SplitRule.USER_RECENCY).
    """

    name: str
    requests: RequestRule
    negatives: int = 19
    sampling: Sampling = Sampling.POPULARITY
    exclude_history: bool = True
    history_fraction: float = 0.0
    replace_probability: float = 0.0
    split: SplitRule = SplitRule.DATE
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        if self.negatives < 0:
            raise ConfigError("protocol.negatives must be >= 0")
        for name in ("history_fraction", "replace_probability", "test_fraction"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"protocol.{name} must be in [0, 1]")

    @property
    def sampled_per_request(self) -> int:
        """Sampled items a request needs: k negatives, or 1 replacement target (mimn_sim)."""
        return max(self.negatives, 1) if self.replace_probability > 0 else self.negatives

    @property
    def draws_per_request(self) -> int:
        """Candidate draws per request: extra draws absorb duplicates and excluded items."""
        wanted = self.sampled_per_request
        return 0 if wanted == 0 else 2 * wanted + 4


@dataclass(frozen=True)
class EtlConfig:
    """Args:
    max_len: longest history a request carries (the timeline keeps this many events before the
        day); short_len: the short-term window recorded in the spec.
    top_categories: k of the profile's most-interacted categories/authors.
    seed: all sampling is a hash of (seed, user, request, draw), so reruns are identical.
    """

    source: SourceConfig
    protocol: ProtocolConfig
    max_len: int = 1024
    short_len: int = 50
    top_categories: int = 5
    seed: int = 2017

    def __post_init__(self) -> None:
        if self.max_len < 1 or self.short_len < 1:
            raise ConfigError("max_len and short_len must be >= 1")
        if self.short_len > self.max_len:
            raise ConfigError("short_len must be <= max_len")

    def train_end_date(self, newest_day: str) -> str:
        """Last training day (SplitRule.DATE) when the tables' newest built day is `newest_day`:
        the days after it are test."""
        end = date.fromisoformat(newest_day) - timedelta(days=self.source.test_days)
        return end.isoformat()


def load_config(
    source: str = "taobao",
    protocol: str = "cain",
    overrides: dict[str, object] | None = None,
) -> EtlConfig:
    """Presets by name (or .yaml path), then `overrides` with keys `source.X`, `protocol.X`, `X`
    (None values are ignored: an unset command-line flag)."""
    values = {"source": _preset("source", source), "protocol": _preset("protocol", protocol)}
    for key, value in (overrides or {}).items():
        if value is not None:
            set_dotted(values, key, value)
    return build(EtlConfig, values, origin="etl config")


def _preset(kind: str, name: str) -> dict:
    path = Path(name) if name.endswith(".yaml") else CONF_DIR / kind / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in (CONF_DIR / kind).glob("*.yaml"))
        raise ConfigError(f"no {kind} preset {name!r} at {path}; available: {available}")
    return load_yaml(path)
