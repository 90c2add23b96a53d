"""End to end: raw log -> Delta tables read back with delta-rs (the trainer's reader).

Point-in-time correctness is checked as a property over every request of a generated log,
against an independent pure-Python recomputation from the `events` table.
"""

from __future__ import annotations

import base64
import math
import os
import re
import shutil
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
from tests.etl import reference

pytestmark = pytest.mark.spark
MAX_LEN = 30  # conftest.MAX_LEN
POSITIVE_RATE_BOUND = 0.07
DAYS = ("2017-11-25", "2017-11-26", "2017-11-27")  # conftest.DAYS


def table(root: Path, name: str) -> list[dict]:
    return DeltaTable(str(root / name)).to_pyarrow_table().to_pylist()


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
    # Day 1 has samples too: a request's pool is its own day's earlier events.
    assert spec.splits["train"].dates == DAYS[:2] and spec.splits["test"].dates == (DAYS[2],)
    # 1 positive per 20 candidates, fewer negatives where a day's pool is still small.
    assert 0.05 <= spec.splits["train"].positive_rate < POSITIVE_RATE_BOUND
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
    day_events = {day: [e for e in events if e["date"] == day] for day in DAYS}
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
                # in the request's pool: an event of the same day (any user) before the request
                assert any(e["item_id"] == negative and e["ts"] < ts
                           for e in day_events[row["date"]])
            assert len(set(items)) == size
            offset += size
            checked += 1
        assert offset == len(row["candidate_item_id"])
    assert checked > 50
    # A request's pool is its day's events before it: on this 12-user log (~130 events a day)
    # the day's first requests keep fewer than 19 negatives, the later ones all 19.
    assert full > checked / 4


def test_candidates_match_the_reference_sampler(full_build):
    """Every pv is a request with exactly the reference's candidates (tests/etl/reference.py),
    or dropped exactly when the reference finds no negative for it (an empty pool: a day's first
    events, or a pool of the user's own items only)."""
    events = table(full_build, "events")
    expected = reference.candidates(events, negatives=19, uniform=False, exclude_history=True,
                                    seed=2017)
    kept = {key: value for key, value in expected.items() if value is not None}
    assert reference.table_candidates(table(full_build, "samples")) == kept
    dropped = len(expected) - len(kept)
    # At least each day's first pv has an empty pool; on this 12-user log the first user awake
    # often finds only their own items in the pool (46 of 342 pvs dropped).
    assert 0 < dropped < len(expected) / 5


def test_daily_runs_are_idempotent_and_write_the_full_builds_spec(full_build, daily_build):
    """Day runs (conftest.DAILY_CHAIN: --date D, with and without --incremental, the last day
    rerun both ways) give the full build's spec, after either rerun (their rows:
    test_incremental.test_day_by_day_incremental_builds_equal_the_full_build)."""
    full = FeatureSpec.read(full_build)
    for root in (daily_build.rerun_by_date, daily_build.root):
        daily = FeatureSpec.read(root)
        # File names are random; the per-file sample counts must agree file for file in content.
        assert sorted(map(sorted_items, daily.file_samples.values())) == sorted(
            map(sorted_items, full.file_samples.values())
        )
        assert replace(daily, file_samples={}) == replace(full, file_samples={})
    # Each new day moved the day before from test to train by a Delta UPDATE that rewrote that
    # day's files only: data skipping passed over every other file (no row copied unchanged).
    root = daily_build.root
    rows_per_day = Counter(row["date"] for row in table(root, "samples"))
    updates = [commit["operationMetrics"] for commit in DeltaTable(str(root / "samples"))
               .history() if commit["operation"] == "UPDATE"]
    assert sorted(int(update["numUpdatedRows"]) for update in updates) == sorted(
        rows_per_day[day] for day in DAYS[:-1])
    assert all(int(update["numCopiedRows"]) == 0 for update in updates)


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


def _versions(root: Path) -> dict[str, int]:
    return {name: DeltaTable(str(root / name)).version() for name in build_sequences.TABLES}


@pytest.fixture(scope="module")
def rebuilt_with_binary_lines(spark, full_build, raw_log, build_cli, tmp_path_factory):
    """A copy of full_build, rebuilt in full from raw_log plus lines of random bytes; returns
    (root, the binary lines, the job's log)."""
    import logging
    import random

    root = tmp_path_factory.mktemp("binary") / "root"
    shutil.copytree(full_build, root)
    generator = random.Random(12)
    binary = [bytes(generator.choice(range(14, 256)) for _ in range(40)) + b"\xff"
              for _ in range(20)]
    raw = root.parent / "with-binary.csv"
    raw.write_bytes(raw_log.read_bytes() + b"\n".join(binary) + b"\n")
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("etl.build_sequences")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        build_sequences.run(build_sequences.parse_args(build_cli(raw, root)))
    finally:
        logger.removeHandler(handler)
    return root, binary, "\n".join(records)


def test_binary_lines_leave_a_quarantine_every_reader_can_read(rebuilt_with_binary_lines):
    root, binary, _ = rebuilt_with_binary_lines
    quarantine = table(root, "quarantine")  # pyarrow validates UTF-8: raised before
    stored = [row for row in quarantine if row["reason"] == "invalid_utf8"]
    assert all(row["raw_encoding"] == "base64" for row in stored)
    assert sorted(base64.b64decode(row["raw"]) for row in stored) == sorted(binary)
    assert all(row["raw_encoding"] == "utf8" for row in quarantine if row not in stored)


def test_a_full_rebuild_logs_the_versions_it_replaced(rebuilt_with_binary_lines):
    root, _, messages = rebuilt_with_binary_lines
    for name in build_sequences.TABLES:
        assert f"{name:<10} version 0 replaced by version 1" in messages, messages
    assert _versions(root) == dict.fromkeys(build_sequences.TABLES, 1)


@pytest.mark.parametrize("content", ["random", "empty"])
def test_rejected_input_leaves_every_table_and_the_spec_as_they_were(
    spark, full_build, build_cli, tmp_path, caplog, content
):
    root = tmp_path / "root"
    shutil.copytree(full_build, root)
    before = _versions(root)
    rows = {name: len(table(root, name)) for name in build_sequences.TABLES}
    spec = (root / "feature_spec.json").read_bytes()
    bad = tmp_path / "input.bin"
    bad.write_bytes(random_bytes(100_000) if content == "random" else b"")
    code = build_sequences.main(build_cli(bad, root))
    assert code == build_sequences.EXIT_INPUT_REJECTED
    assert "input rejected" in caplog.text and "accepted=0" in caplog.text
    if content == "random":
        assert "invalid_utf8=" in caplog.text  # the counts by reason
    assert _versions(root) == before
    assert {name: len(table(root, name)) for name in build_sequences.TABLES} == rows
    assert (root / "feature_spec.json").read_bytes() == spec


def test_a_mostly_rejected_input_is_refused_below_the_threshold(
    spark, raw_log, build_cli, tmp_path, caplog
):
    lines = raw_log.read_text().splitlines()
    mixed = tmp_path / "mixed.csv"
    # 30% good lines: refused at the default 0.5, nothing created.
    good = lines[: len(lines) * 3 // 10]
    mixed.write_text("\n".join(good + ["garbage"] * (len(lines) - len(good))) + "\n")
    code = build_sequences.main(build_cli(mixed, tmp_path / "root"))
    assert code == build_sequences.EXIT_INPUT_REJECTED
    assert "malformed_line=" in caplog.text
    assert not (tmp_path / "root" / "events").exists()


def random_bytes(size: int) -> bytes:
    import random

    return random.Random(3).randbytes(size)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--through", "2017-11-26", "--date", "2017-11-26"], "not both"),
        (["--through", "2017-12-09"], "--through 2017-12-09 is outside the configured range"),
        (["--through", "26.11.2017"], "--through '26.11.2017'"),
        (["--through", "2017-11-26", "--incremental"], "--incremental needs --date D"),
    ],
)
def test_a_bad_through_day_is_refused_before_spark_starts(raw_log, tmp_path, extra, message):
    args = build_sequences.parse_args(["--input", str(raw_log), "--output", str(tmp_path),
                                       *extra])
    with pytest.raises(build_sequences.JobError, match=re.escape(message)):
        build_sequences.preflight(args)


def test_through_builds_the_range_up_to_that_day(raw_log, tmp_path):
    args = build_sequences.parse_args(["--input", str(raw_log), "--output", str(tmp_path),
                                       "--through", "2017-11-27"])
    config, first, last, *_ = build_sequences.preflight(args)
    assert (first, last) == (config.source.start_date, "2017-11-27")
    assert config.source.end_date == "2017-12-03"  # the range stays: later rows are other_day


def test_spark_submit_wrapper_checks_arguments_before_starting_spark(tmp_path):
    """A stub spark-submit first on PATH records whether the wrapper got as far as calling it."""
    stub_dir = tmp_path / "bin"
    stub_dir.mkdir()
    marker = tmp_path / "spark-submit-called"
    stub = stub_dir / "spark-submit"
    stub.write_text(f"#!/bin/sh\ntouch {marker}\nexit 0\n")
    stub.chmod(0o755)
    repo = Path(build_sequences.__file__).resolve().parents[1]
    env = {**os.environ, "PATH": f"{stub_dir}:{os.environ['PATH']}",
           "PYSPARK_DRIVER_PYTHON": sys.executable}
    missing = subprocess.run(
        ["bash", "scripts/spark_submit.sh", "--conf", "spark.x=y", "etl/build_sequences.py",
         "--input", str(tmp_path / "nope.csv"), "--output", str(tmp_path / "out")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )
    assert missing.returncode == 2 and "input not found" in missing.stderr
    assert not marker.exists()  # refused before spark-submit (and its JVM) started
    present = tmp_path / "log.csv"
    present.write_text("1,2,3,pv,1511539200\n")
    valid = subprocess.run(
        ["bash", "scripts/spark_submit.sh", "etl/build_sequences.py", "--input", str(present),
         "--output", str(tmp_path / "out")],
        cwd=repo, env=env, capture_output=True, text=True, timeout=120,
    )
    assert valid.returncode == 0 and marker.exists()  # valid arguments reach spark-submit


def test_plain_spark_submit_after_setup_env_builds_the_tables(full_build):
    """full_build ran a plain spark-submit (conftest): setup_env.sh's SPARK_CONF_DIR brings the
    Delta package and confs (conf/spark/spark-defaults.conf, the file etl/spark.py reads for its
    own local session); the tables themselves are checked by the tests above."""
    from etl import spark as etl_spark

    defaults = etl_spark.spark_defaults()
    assert etl_spark.DELTA_CONF.items() <= defaults.items()
    if "CAIN_DELTA_PACKAGE" not in os.environ:
        assert etl_spark.DELTA_PACKAGE == defaults["spark.jars.packages"]
    assert FeatureSpec.read(full_build).splits["train"].requests > 0
    # the project zip shipped to the executors (etl/spark.py) is removed when the driver exits
    temporary = full_build.parent / "tmp"
    assert temporary.is_dir() and not list(temporary.glob("cain-pyfiles-*"))
