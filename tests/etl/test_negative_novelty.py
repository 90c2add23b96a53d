"""No label leak through item novelty (issue 12.4): on a long-tail log (most items occur once or
twice), the share of candidates whose item nobody touched before the request's day is the same
among positives and negatives, within sampling error, for the popularity protocols.

Measured on a real Taobao sample with the old sampler (a pool of the items seen on earlier days,
quantised to 65,536 slots), 79% of `dare` train positives were items first seen that day and no
negative ever was: the model learnt "unseen item => positive". The same statistic computed for
that old rule on this log (`old_rule_negatives`) shows the test's power.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from deltalake import DeltaTable

from etl import build_sequences, synthetic
from tests.etl import reference

pytestmark = pytest.mark.spark
DAYS = ("2017-11-25", "2017-11-26", "2017-11-27")
Z_LIMIT = 4.0


@pytest.fixture(scope="module")
def long_tail_log(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("long_tail") / "UserBehavior.csv"
    synthetic.main(["taobao", "--output", str(path), "--users", "150", "--items", "300000",
                    "--categories", "100", "--days", "3", "--mean-events", "60",
                    "--dirty-rate", "0", "--seed", "11"])
    return path


def _build(log: Path, root: Path, protocol: str) -> tuple[list[dict], list[dict]]:
    build_sequences.run(build_sequences.parse_args(
        ["--input", str(log), "--output", str(root), "--start-date", DAYS[0], "--end-date",
         DAYS[-1], "--protocol", protocol, "--files-per-day", "1", "--max-len", "50"]))
    read = lambda name: DeltaTable(str(root / name)).to_pyarrow_table().to_pylist()  # noqa: E731
    return read("events"), read("samples")


def _first_day(events: list[dict]) -> dict[int, str]:
    first: dict[int, str] = {}
    for event in events:
        first[event["item_id"]] = min(first.get(event["item_id"], "9999"), event["date"])
    return first


def two_proportion_z(hits_a: int, n_a: int, hits_b: int, n_b: int) -> float:
    pooled = (hits_a + hits_b) / (n_a + n_b)
    error = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    return (hits_a / n_a - hits_b / n_b) / error if error else 0.0


def novelty_counts(events: list[dict], samples: list[dict]) -> dict[int, list[int]]:
    """label -> [candidates whose item was first seen on the request's day, candidates]; days
    after the first (on the first day every item is new, for both labels alike)."""
    first = _first_day(events)
    counts = {0: [0, 0], 1: [0, 0]}
    for row in samples:
        if row["date"] == DAYS[0]:
            continue
        for item, label in zip(row["candidate_item_id"], row["candidate_label"], strict=True):
            counts[label][0] += first[item] == row["date"]
            counts[label][1] += 1
    return counts


def old_rule_negatives(events: list[dict], per_request: int) -> list[tuple[int, str]]:
    """The old pool (popularity over the items of the days before the request's day), drawn by
    the same hash: what the earlier sampler's negatives looked like on this log.
    -> (item, request day) per draw."""
    before = {day: [e["item_id"] for e in events if e["date"] < day] for day in DAYS}
    drawn = []
    for event in events:
        pool = before[event["date"]]
        if event["behavior"] != 1 or event["date"] == DAYS[0] or not pool:
            continue
        drawn += [(pool[reference.draw_hash(1, event["user_id"], event["ts"], j) % len(pool)],
                   event["date"]) for j in range(per_request)]
    return drawn


@pytest.mark.parametrize("protocol", ["cain", "dare"])
def test_item_novelty_does_not_separate_positives_from_negatives(
    spark, long_tail_log, tmp_path, protocol
):
    events, samples = _build(long_tail_log, tmp_path / protocol, protocol)
    counts = novelty_counts(events, samples)
    (new_negatives, negatives), (new_positives, positives) = counts[0], counts[1]
    assert positives > 3000 and negatives >= positives
    positive_share = new_positives / positives
    assert positive_share > 0.2  # a long tail: many positives are items new that day
    z = two_proportion_z(new_positives, positives, new_negatives, negatives)
    assert abs(z) < Z_LIMIT, (positive_share, new_negatives / negatives, z)
    # Power: the same statistic for the old rule's negatives fails by far.
    first = _first_day(events)
    old = old_rule_negatives(events, per_request=2)
    old_new = sum(first[item] == day for item, day in old)
    old_z = two_proportion_z(new_positives, positives, old_new, len(old))
    assert old_z > 10 * Z_LIMIT, old_z
