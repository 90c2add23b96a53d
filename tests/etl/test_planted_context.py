"""The planted context effect (etl/planted_context.py), checked statistically on a generated log.

Everything is recomputed from events.csv and the design file alone: for every target impression,
whether its two triggers co-occur within the window in the far part of its history. Rates are
compared with binomial standard errors (SE); a check passes within 4 SE, and the planted effect
must also be far (> 6 SE) from zero so that the checks have the power to fail.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import pytest

from etl import synthetic

STRENGTH = 0.4
TOLERANCE_SE = 4.0


def generate(directory: Path, strength: float) -> Path:
    synthetic.main(
        [
            "feed",
            "--output",
            str(directory),
            "--users",
            "200",
            "--mean-events",
            "300",
            "--authors",
            "40",
            "--days",
            "4",
            "--seed",
            "21",
            "--planted-context",
            str(strength),
        ]
    )
    return directory


@pytest.fixture(scope="module")
def planted(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("planted"), STRENGTH)


@pytest.fixture(scope="module")
def control(tmp_path_factory) -> Path:
    return generate(tmp_path_factory.mktemp("control"), 0.0)


def read_events(directory: Path) -> dict[int, list[dict]]:
    """user -> impressions in time order (the ETL's order: timestamp, then item)."""
    users: dict[int, list[dict]] = defaultdict(list)
    with (directory / "events.csv").open() as handle:
        for row in csv.DictReader(handle):
            users[int(row["user_id"])].append(
                {
                    "item": int(row["item_id"]),
                    "click": int(row["click"]),
                    "ts": int(row["timestamp"]),
                    "watch": row["watch_time"],
                }
            )
    for events in users.values():
        events.sort(key=lambda event: (event["ts"], event["item"]))
    return users


def target_impressions(directory: Path) -> list[dict]:
    """Every target impression with its click, user type, pattern and single-trigger features."""
    design = json.loads((directory / "planted.json").read_text())
    lag_min, lag_max, window = design["lag_min"], design["lag_max"], design["window"]
    middle = (lag_min + lag_max) / 2
    pairs = {pair["target"]: (pair["first"], pair["second"]) for pair in design["pairs"]}
    active = set(design["active_users"])
    targets = []
    for user, events in read_events(directory).items():
        timestamps = [event["ts"] for event in events]
        assert timestamps == sorted(set(timestamps))  # distinct: position = place in history
        for position, event in enumerate(events):
            if event["item"] not in pairs:
                continue
            first, second = pairs[event["item"]]
            lags = range(lag_min, min(lag_max, position) + 1)
            first_lags = [lag for lag in lags if events[position - lag]["item"] == first]
            second_lags = [lag for lag in lags if events[position - lag]["item"] == second]
            targets.append(
                {
                    "click": event["click"],
                    "active": user in active,
                    "pattern": any(abs(a - b) <= window for a in first_lags for b in second_lags),
                    "first_far_half": any(lag > middle for lag in first_lags),
                    "second_far_half": any(lag > middle for lag in second_lags),
                }
            )
    return targets


def rate(targets: list[dict]) -> tuple[float, int]:
    return sum(t["click"] for t in targets) / len(targets), len(targets)


def gap(targets: list[dict], feature: str) -> tuple[float, float]:
    """(click rate with the feature - without, its standard error)."""
    (with_rate, n_with), (without_rate, n_without) = (
        rate([t for t in targets if t[feature]]),
        rate([t for t in targets if not t[feature]]),
    )
    se = math.sqrt(
        with_rate * (1 - with_rate) / n_with + without_rate * (1 - without_rate) / n_without
    )
    return with_rate - without_rate, se


@pytest.mark.parametrize("active, susceptibility", [(True, 0.5), (False, 1.5)])
def test_the_pattern_moves_the_click_rate_by_the_planted_amount(planted, active, susceptibility):
    targets = [t for t in target_impressions(planted) if t["active"] == active]
    expected = STRENGTH * susceptibility
    difference, se = gap(targets, "pattern")
    assert expected > 6 * se, f"too few targets ({len(targets)}) to test the effect"
    assert abs(difference - expected) < TOLERANCE_SE * se, (difference, expected, se)
    for pattern, sign in ((True, 0.5), (False, -0.5)):
        observed, count = rate([t for t in targets if t["pattern"] == pattern])
        target_rate = 0.5 + sign * expected
        assert abs(observed - target_rate) < TOLERANCE_SE * math.sqrt(
            target_rate * (1 - target_rate) / count
        ), (pattern, observed, target_rate)


def test_the_pattern_is_drawn_half_of_the_time(planted):
    targets = target_impressions(planted)
    share = sum(t["pattern"] for t in targets) / len(targets)
    assert abs(share - 0.5) < 0.05, share


@pytest.mark.parametrize("feature", ["first_far_half", "second_far_half"])
def test_a_single_trigger_alone_carries_no_signal(planted, feature):
    """Where one trigger sits (near or far half of the window) says nothing about the click."""
    for active in (True, False):
        targets = [t for t in target_impressions(planted) if t["active"] == active]
        difference, se = gap(targets, feature)
        assert abs(difference) < TOLERANCE_SE * se, (feature, active, difference, se)
        pattern_difference, _ = gap(targets, "pattern")
        assert abs(difference) < pattern_difference / 3  # far below the planted effect


def test_strength_zero_shows_no_effect(control):
    for active in (True, False):
        targets = [t for t in target_impressions(control) if t["active"] == active]
        difference, se = gap(targets, "pattern")
        assert abs(difference) < TOLERANCE_SE * se, (active, difference, se)
        assert se < 0.05  # enough targets that a planted effect would show


def test_the_control_is_the_same_log_but_for_the_targets_clicks(planted, control):
    design = json.loads((planted / "planted.json").read_text())
    targets = {pair["target"] for pair in design["pairs"]}
    planted_events, control_events = read_events(planted), read_events(control)
    assert planted_events.keys() == control_events.keys()
    changed = 0
    for user, events in planted_events.items():
        for mine, theirs in zip(events, control_events[user], strict=True):
            assert (mine["item"], mine["ts"]) == (theirs["item"], theirs["ts"])
            if mine["item"] not in targets:
                assert mine == theirs
            changed += mine != theirs
    assert changed > 100


def test_far_window_lies_beyond_the_short_term_window(planted):
    design = json.loads((planted / "planted.json").read_text())
    assert design["lag_min"] > 50  # the ETL's default short_len
