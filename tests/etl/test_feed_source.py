"""End to end on the feed source: a feed log (events.csv + profiles.csv) with injected defects ->
`build_sequences --source feed` -> Delta tables read back with delta-rs -> a 2-process torchrun.

Every request is checked against an independent pure-Python recomputation from the raw CSV.
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import pytest
from deltalake import DeltaTable

from contract.feature_spec import FeatureSpec
from etl import build_sequences, clean, synthetic
from tests.trainer.conftest import torchrun

pytestmark = pytest.mark.spark
DAYS = ("2024-03-04", "2024-03-05", "2024-03-06")
MAX_LEN = 30
SHANGHAI_OFFSET = 8 * 3600
# Defective lines appended to the generated log, with the reason each must be quarantined for.
DEFECTS = {
    "1,5,3,2,1709600000,4.0": "unknown_behavior",  # click must be 0/1
    "1,5,3,1,1709600000,-1.5": "bad_watch_time",
    "1,5,3,1,1709600000,": "bad_watch_time",
    "1,5,3,1,1609459200,4.0": "timestamp_out_of_range",  # 2021: outside the source's range
    "1,5,3,1": "malformed_line",
}


@pytest.fixture(scope="module")
def feed_log(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("feed_log")
    synthetic.main(
        [
            "feed",
            "--output",
            str(directory),
            "--users",
            "12",
            "--items",
            "200",
            "--authors",
            "15",
            "--days",
            "3",
            "--mean-events",
            "40",
            "--seed",
            "7",
        ]
    )
    with (directory / "events.csv").open("a") as events:
        events.write("\n".join(DEFECTS) + "\n")
    # One user loses its profile row: it must get demographic code 0 everywhere.
    profiles = (directory / "profiles.csv").read_text().splitlines()
    (directory / "profiles.csv").write_text("\n".join(profiles[:1] + profiles[2:]) + "\n")
    return directory


@pytest.fixture(scope="module")
def feed_build(spark, feed_log, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("feed_delta")
    build_sequences.run(
        build_sequences.parse_args(
            [
                "--source",
                "feed",
                "--input",
                str(feed_log),
                "--output",
                str(root),
                "--start-date",
                DAYS[0],
                "--end-date",
                DAYS[-1],
                "--max-len",
                str(MAX_LEN),
                "--short-len",
                "10",
                "--files-per-day",
                "1",
            ]
        )
    )
    return root


def _raw_events(feed_log: Path) -> list[dict]:
    """The generated (valid) impressions, parsed independently of the ETL."""
    lines = (feed_log / "events.csv").read_text().splitlines()
    rows = csv.DictReader(line for line in lines if line not in DEFECTS)
    return [
        {key: float(value) if key == "watch_time" else int(value) for key, value in row.items()}
        for row in rows
    ]


def _table(root: Path, name: str) -> list[dict]:
    return DeltaTable(str(root / name)).to_pyarrow_table().to_pylist()


def test_feed_rows_reconcile_and_defects_are_quarantined(feed_build, feed_log):
    data_lines = (feed_log / "events.csv").read_text().splitlines()[1:]  # minus the header
    events, quarantine = _table(feed_build, "events"), _table(feed_build, "quarantine")
    assert len(events) + len(quarantine) == len(data_lines)
    assert sorted(row["reason"] for row in quarantine) == sorted(DEFECTS.values())
    assert {row["watch_time"] for row in events if row["behavior"] == 1} == {0.0}


def test_feed_spec_records_the_protocol_demographics_and_click_rate(feed_build, feed_log):
    spec = FeatureSpec.read(feed_build)
    assert spec.source == "feed" and spec.protocol == "feed_click"
    assert spec.behaviors == ("impression", "click")
    with (feed_log / "profiles.csv").open() as lines:
        profiles = list(csv.DictReader(lines))
    fields = sorted(name for name in profiles[0] if name != "user_id")
    assert list(spec.demographics) == fields
    assert all(spec.demographics[f] == max(int(p[f]) for p in profiles) + 1 for f in fields)
    assert "log_watch_time" in spec.dense_features
    clicks = Counter()
    impressions = Counter()
    for event in _raw_events(feed_log):
        date = _china_date(event["timestamp"])
        split = "test" if date == DAYS[-1] else "train"
        impressions[split] += 1
        clicks[split] += event["click"]
    for split in ("train", "test"):
        stats = spec.splits[split]
        assert stats.samples == stats.requests == impressions[split]  # one candidate each
        assert stats.positives == clicks[split]
    assert spec.splits["test"].dates == (DAYS[-1],)


def _china_date(timestamp: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(timestamp + SHANGHAI_OFFSET, UTC).strftime("%Y-%m-%d")


def test_every_impression_is_a_request_with_its_point_in_time_history(feed_build, feed_log):
    """A request's history is its timeline's longest prefix of events that *ended* before it
    (timestamp + watch_time < request time): a click's watch time is not known while it runs.
    Before this rule the history held every earlier impression, watches still running included."""
    spec = FeatureSpec.read(feed_build)
    events = sorted(
        _raw_events(feed_log),
        key=lambda e: (e["user_id"], e["timestamp"], e["item_id"], e["click"], e["author_id"]),
    )
    with (feed_log / "profiles.csv").open() as lines:
        profiles = {int(p["user_id"]): p for p in csv.DictReader(lines)}
    fields = list(spec.demographics)
    checked = cut = running = 0
    for row in _table(feed_build, "samples"):
        mine = [e for e in events if e["user_id"] == row["user_id"]]
        day = [e for e in mine if _china_date(e["timestamp"]) == row["date"]]
        assert row["request_ts"] == sorted(e["timestamp"] for e in day)
        assert row["request_num_candidates"] == [1] * len(day)
        profile = profiles.get(row["user_id"])
        expected = [int(profile[f]) if profile else 0 for f in fields]
        assert row["profile_demographic"] == expected
        # Each impression is its own request: (time, item, click) as a multiset.
        requests = zip(
            row["request_ts"], row["candidate_item_id"], row["candidate_label"], strict=True
        )
        assert Counter(requests) == Counter((e["timestamp"], e["item_id"], e["click"]) for e in day)
        timeline = [e for e in mine if _china_date(e["timestamp"]) < row["date"]][-MAX_LEN:] + day
        for ts, end in zip(row["request_ts"], row["request_history_end"], strict=True):
            earlier = [e for e in timeline if e["timestamp"] < ts]
            ended = next(
                (i for i, e in enumerate(earlier) if e["timestamp"] + e["watch_time"] >= ts),
                len(earlier),
            )
            running += ended < len(earlier)
            assert end == ended
            history = earlier[:ended][-MAX_LEN:]
            start = max(0, end - MAX_LEN)
            assert row["timeline_ts"][start:end] == [e["timestamp"] for e in history]
            assert row["timeline_item_id"][start:end] == [e["item_id"] for e in history]
            assert row["timeline_category_id"][start:end] == [e["author_id"] for e in history]
            assert row["timeline_behavior"][start:end] == [e["click"] + 1 for e in history]
            assert row["timeline_watch_time"][start:end] == pytest.approx(
                [e["watch_time"] for e in history]
            )
            checked += 1
            cut += end > MAX_LEN
    assert checked == sum(stats.requests for stats in spec.splits.values())
    assert running > 10  # the log has requests that arrive while an earlier watch runs
    assert checked > 250 and cut > 0  # some histories are longer than max_len


def test_feed_tables_train_a_two_process_cain(feed_build, tmp_path):
    run_dir = tmp_path / "run"
    process = torchrun(
        [
            "--data",
            str(feed_build),
            "--model",
            "cain",
            "--output",
            str(run_dir),
            "model.embedding_dim=8",
            "model.mlp_dims=[32,16]",
            "train.batch_size=32",
            "train.eval_batch_size=64",
            "train.max_steps=4",
            "train.progress=false",
        ],
        timeout=300,
    )
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-4000:]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    spec = FeatureSpec.read(feed_build)
    assert metrics["n_test"] == spec.splits["test"].samples
    assert metrics["steps"] == 4 and math.isfinite(metrics["logloss"])
    assert 0.0 <= metrics["auc"] <= 1.0


def test_a_user_twice_in_the_demographics_is_refused_before_anything_is_written(
    spark, tmp_path, caplog
):
    """A second profile row of user 2 would duplicate every sample of user 2 (the left join)."""
    feed = tmp_path / "feed"
    feed.mkdir()
    start = 1709481600 + 3600  # 2024-03-04 01:00 China time
    events = [f"{user},{10 * user + k},{user},{k % 2},{start + 60 * user + k},{2.0 * (k % 2)}"
              for user in (1, 2, 3) for k in range(4)]
    (feed / "events.csv").write_text("\n".join([clean.FEED_HEADER, *events]) + "\n")
    (feed / "profiles.csv").write_text("user_id,age_bucket,gender\n1,2,1\n2,3,0\n3,1,1\n2,4,1\n")
    code = build_sequences.main(["--source", "feed", "--input", str(feed), "--output",
                                 str(tmp_path / "root"), "--start-date", DAYS[0], "--end-date",
                                 DAYS[-1], "--files-per-day", "1"])
    assert code == build_sequences.EXIT_INPUT_REJECTED
    assert "1 user_id on more than one row of" in caplog.text and "2 (2 rows)" in caplog.text
    assert not (tmp_path / "root" / "events").exists()
