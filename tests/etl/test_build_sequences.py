"""End to end: raw log -> Delta tables read back with delta-rs (the trainer's reader).

Point-in-time correctness is checked as a property over every request of a generated log,
against an independent pure-Python recomputation from the `events` table.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest
from deltalake import DeltaTable

from contract import samples as contract_samples
from contract.feature_spec import FeatureSpec, FeatureSpecError
from etl import build_sequences

pytestmark = pytest.mark.spark
MAX_LEN = 30  # conftest.MAX_LEN
DAYS = ("2017-11-25", "2017-11-26", "2017-11-27")  # conftest.DAYS


def table(root: Path, name: str) -> list[dict]:
    return DeltaTable(str(root / name)).to_pyarrow_table().to_pylist()


def canonical(root: Path, name: str) -> list[tuple]:
    return sorted(tuple(repr(v) for v in row.values()) for row in table(root, name))


def test_tables_follow_the_contract(full_build, raw_log):
    samples = DeltaTable(str(full_build / "samples"))
    written = pa.schema(samples.schema().to_arrow())
    assert {f.name: f.type for f in written} == {
        f.name: f.type for f in contract_samples.arrow_schema()
    }
    assert samples.metadata().configuration.get("delta.enableDeletionVectors") == "false"
    events, quarantine = table(full_build, "events"), table(full_build, "quarantine")
    lines = raw_log.read_text().splitlines()
    assert len(events) + len(quarantine) == len(lines)
    spec = FeatureSpec.read(full_build)
    assert spec.protocol == "cain" and spec.num_users == len({e["user_id"] for e in events})
    assert spec.splits["train"].dates == (DAYS[1],) and spec.splits["test"].dates == (DAYS[2],)
    # 1 positive per 20 candidates, fewer negatives only where the tiny catalog runs out.
    assert 0.05 <= spec.splits["train"].positive_rate < 0.07
    rows = table(full_build, "samples")
    assert sum(len(r["request_ts"]) for r in rows) == spec.splits["train"].requests + spec.splits[
        "test"].requests
    profiles = table(full_build, "profiles")
    assert len(profiles) == len(rows)
    # Per-file sample counts name exactly the table's files and add up to the split totals.
    files = pa.table(samples.get_add_actions(flatten=True)).column("path").to_pylist()
    assert set(spec.file_samples) == set(files)
    for split in ("train", "test"):
        recorded = sum(counts.get(split, 0) for counts in spec.file_samples.values())
        assert recorded == spec.splits[split].samples


def test_point_in_time(full_build):
    events = sorted(
        table(full_build, "events"), key=lambda e: (e["ts"], e["item_id"], e["behavior"])
    )
    spec = FeatureSpec.read(full_build)
    by_user: dict[int, list[dict]] = {}
    for event in events:
        by_user.setdefault(event["user_id"], []).append(event)
    items_before_day = {day: {e["item_id"] for e in events if e["date"] < day} for day in DAYS}
    checked = full = 0
    for row in table(full_build, "samples"):
        mine = by_user[row["user_id"]]
        before = [e for e in mine if e["date"] < row["date"]]
        during = [e for e in mine if e["date"] == row["date"]]
        timeline = before[-MAX_LEN:] + during
        assert row["timeline_item_id"] == [e["item_id"] for e in timeline]
        assert row["timeline_ts"] == [e["ts"] for e in timeline]
        # Profile: only events before the day.
        counts = [sum(e["behavior"] == code for e in before) for code in (1, 2, 3, 4)]
        expected_dense = [math.log1p(c) for c in counts] + [
            math.log1p(len(before)),
            math.log1p(len({e["date"] for e in before})),
            math.log1p(len({e["category_id"] for e in before})),
        ]
        assert row["profile_dense"] == pytest.approx(expected_dense, rel=1e-6)
        category_counts = Counter(e["category_id"] for e in before)
        top = sorted(category_counts, key=lambda c: (-category_counts[c], c))
        assert row["profile_top_category"] == top[: spec.top_categories]
        offset = 0
        for ts, end, size in zip(row["request_ts"], row["request_history_end"],
                                 row["request_num_candidates"], strict=True):
            history = row["timeline_ts"][max(0, end - MAX_LEN):end]
            assert all(t < ts for t in history)  # strictly before the request
            # nothing left out
            assert end == len(row["timeline_ts"]) or row["timeline_ts"][end] >= ts
            items = row["candidate_item_id"][offset:offset + size]
            labels = row["candidate_label"][offset:offset + size]
            assert labels == [1] + [0] * (size - 1) and 2 <= size <= 20
            full += size == 20
            target = [e for e in during if e["ts"] == ts and e["item_id"] == items[0]]
            assert target and target[0]["behavior"] == 1  # the positive is the pv at req_ts
            seen = {e["item_id"] for e in mine if e["ts"] < ts} | {items[0]}
            for negative in items[1:]:
                assert negative not in seen  # not something the user interacted with
                assert negative in items_before_day[row["date"]]  # known before the day
            assert len(set(items)) == size
            offset += size
            checked += 1
        assert offset == len(row["candidate_item_id"])
    assert checked > 50
    assert full > checked / 2  # a 300-item catalog: some users have seen much of it


def test_every_pv_after_the_first_day_is_a_request(full_build):
    # Day 1 has no negatives pool (nothing is known before it), so its pvs only seed histories.
    events = table(full_build, "events")
    pvs = Counter(e["date"] for e in events if e["behavior"] == 1 and e["date"] > DAYS[0])
    requests = Counter()
    for row in table(full_build, "samples"):
        requests[row["date"]] += len(row["request_ts"])
    assert requests == pvs


def test_daily_runs_are_idempotent_and_add_up_to_the_full_build(
    spark, full_build, raw_log, build_cli, tmp_path
):
    for day in (*DAYS, DAYS[-1]):  # the last day twice
        args = build_sequences.parse_args(build_cli(raw_log, tmp_path, "--date", day))
        build_sequences.run(args)
    for name in ("events", "quarantine", "samples", "profiles"):
        assert canonical(tmp_path, name) == canonical(full_build, name), name
    daily, full = FeatureSpec.read(tmp_path), FeatureSpec.read(full_build)
    # File names are random; the per-file sample counts must agree file for file in content.
    assert sorted(map(sorted_items, daily.file_samples.values())) == sorted(
        map(sorted_items, full.file_samples.values())
    )
    assert replace(daily, file_samples={}) == replace(full, file_samples={})


def sorted_items(counts: dict[str, int]) -> list:
    return sorted(counts.items())


def test_missing_input_is_a_clear_error(tmp_path):
    script = Path(build_sequences.__file__)
    result = subprocess.run(
        [sys.executable, str(script), "--input", str(tmp_path / "nope.csv"), "--output",
         str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 2
    assert "input not found" in result.stderr


def test_unwritable_output_is_a_clear_error(raw_log, tmp_path, caplog):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    code = build_sequences.main(["--input", str(raw_log), "--output", str(blocker / "root")])
    assert code == 2
    assert "not writable" in caplog.text


def test_spec_goes_through_hadoop_file_systems_and_reads_back_by_uri(spark, full_build, tmp_path):
    """Remote outputs (s3a://, hdfs://) get their spec through Spark's Hadoop FileSystem; the
    trainer reads it by URI with pyarrow. file:// takes both code paths on this machine."""
    from etl.spark import write_text

    spec = FeatureSpec.read(full_build)
    root = f"file://{tmp_path}/remote-root"
    write_text(spark, f"{root}/feature_spec.json", spec.to_json())
    assert FeatureSpec.read(root) == spec
    assert not (tmp_path / "remote-root" / "feature_spec.json.tmp").exists()
    with pytest.raises(FeatureSpecError, match="no feature spec"):
        FeatureSpec.read(f"file://{tmp_path}/elsewhere")


def test_shuffle_partitions_grow_with_a_local_input(tmp_path):
    """A 10M-event log ran a 4 GiB local JVM out of heap at a fixed 8 partitions."""
    small, large = tmp_path / "small.csv", tmp_path / "large"
    small.write_bytes(b"x" * 1000)
    large.mkdir()
    for index in range(3):  # a directory input (feed) counts every file in it
        with (large / f"part-{index}.csv").open("wb") as part:
            part.truncate(100 * 2**20)
    assert build_sequences.sized_shuffle_partitions([str(small), None]) == 8
    assert build_sequences.sized_shuffle_partitions([str(large)]) == 75
    assert build_sequences.sized_shuffle_partitions(["hdfs:///logs/day.csv"]) is None
