"""`--date D` runs whose `--input` is the day's delivery alone (docs/etl.md, "Which run owns a
row"): every input row is accepted for D, quarantined under D, or counted as another day's row in
the run's reconciliation; a missing earlier day is refused; an empty day can be built."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import pytest
from deltalake import DeltaTable

from etl import build_sequences, clean

pytestmark = pytest.mark.spark
DAYS = ("2017-11-25", "2017-11-26", "2017-11-27")  # conftest.DAYS
T0 = 1511539200  # 2017-11-25 00:00 China time


def day_lines(index: int) -> list[str]:
    """12 valid pvs of DAYS[index]: 4 users, 3 distinct items each."""
    start = T0 + index * 86400 + 3600
    return [f"{user},{1000 * index + 10 * user + k},{user % 3 + 1},pv,{start + 60 * user + k}"
            for user in range(1, 5) for k in range(3)]


def table(root: Path, name: str) -> list[dict]:
    return DeltaTable(str(root / name)).to_pyarrow_table().to_pylist()


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines))
    return path


def build(build_cli, raw: Path, root: Path, day: str, *extra: str) -> int:
    return build_sequences.main(build_cli(raw, root, "--date", day, *extra))


@pytest.fixture(scope="module")
def day_one(spark, build_cli, tmp_path_factory) -> Path:
    """A ROOT with day 1 built from day 1's file alone."""
    directory = tmp_path_factory.mktemp("day_one")
    raw = write(directory / "day1.csv", day_lines(0))
    assert build(build_cli, raw, directory / "root", DAYS[0]) == 0
    return directory / "root"


def copy_of(root: Path, target: Path) -> Path:
    shutil.copytree(root, target)
    return target


# A day-2 delivery: its own events, rows without a usable day, an early row of day 3, a late
# row of day 1 that day 1's build never had, and a resent copy of a day-1 event already built.
UNDATED = {"1,2,3,pv": "malformed_line", "1,2,3,pv,12x": "non_numeric",
           f"1,2,3,pv,{T0 - 86400}": "timestamp_out_of_range"}
EARLY = f"1,9001,1,pv,{T0 + 2 * 86400 + 100}"
LATE = f"2,9002,1,pv,{T0 + 100}"
RESENT = day_lines(0)[0]


def test_a_day_file_leaves_every_row_accepted_quarantined_or_counted(
    day_one, build_cli, tmp_path, caplog
):
    root = copy_of(day_one, tmp_path / "root")
    lines = [*day_lines(1), *UNDATED, EARLY, LATE, RESENT]
    caplog.set_level(logging.INFO, logger="etl.build_sequences")
    assert build(build_cli, write(tmp_path / "day2.csv", lines), root, DAYS[1]) == 0
    accepted = [e for e in table(root, "events") if e["date"] == DAYS[1]]
    quarantined = {q["raw"]: q["reason"] for q in table(root, "quarantine")
                   if q["run_date"] == DAYS[1]}
    assert len(accepted) == len(day_lines(1))
    assert quarantined == {**UNDATED, LATE: "late_event"}
    # The early row belongs to day 3's run, the resent one to day 1's (which has it): counted.
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("clean "))
    counts = dict(re.findall(r"(\w+)=(\d+)", line))
    assert {key: int(counts[key]) for key in ("input_rows", "accepted", "quarantined",
                                                "other_day")} == {
        "input_rows": len(lines), "accepted": 12, "quarantined": 4, "other_day": 2}


def test_rows_without_a_day_count_in_the_accepted_share(spark, build_cli, tmp_path, caplog):
    """Five malformed lines and four good ones in day 1's file: 44% accepted, below 0.5."""
    raw = write(tmp_path / "day1.csv", day_lines(0)[:4] + ["1,2,3,pv"] * 5)
    code = build(build_cli, raw, tmp_path / "root", DAYS[0])
    assert code == build_sequences.EXIT_INPUT_REJECTED
    assert "malformed_line=5" in caplog.text
    assert not (tmp_path / "root" / "events").exists()


def test_a_missing_earlier_day_is_refused_naming_it(day_one, build_cli, tmp_path, caplog):
    root = copy_of(day_one, tmp_path / "root")
    raw = write(tmp_path / "day3.csv", day_lines(2))
    assert build(build_cli, raw, root, DAYS[2]) == build_sequences.EXIT_BAD_ARGUMENTS
    assert f"lacks 1 day between its first day {DAYS[0]} and {DAYS[1]}: {DAYS[1]}" in caplog.text
    assert f"--date {DAYS[1]}" in caplog.text  # how to build it
    assert {e["date"] for e in table(root, "events")} == {DAYS[0]}  # nothing written


def test_an_empty_day_keeps_the_incremental_chain_going(day_one, build_cli, tmp_path):
    """Day 2 has no event at all: with --min-accepted-share 0 it is built empty, and day 3 builds
    incrementally on it with day 1's events in its timelines."""
    root = copy_of(day_one, tmp_path / "root")
    empty = write(tmp_path / "day2.csv", [])
    assert build(build_cli, empty, root, DAYS[1], "--min-accepted-share", "0") == 0
    raw = write(tmp_path / "day3.csv", day_lines(2))
    assert build(build_cli, raw, root, DAYS[2], "--incremental") == 0
    assert {e["date"] for e in table(root, "events")} == {DAYS[0], DAYS[2]}
    day_one_ts = {int(line.split(",")[4]) for line in day_lines(0)}
    rows = [row for row in table(root, "samples") if row["date"] == DAYS[2]]
    assert rows and all(set(row["timeline_ts"]) & day_one_ts for row in rows)


# -- without Spark: the rules ---------------------------------------------------------------

@pytest.mark.parametrize(("rows_by_day", "owner"), [
    ({DAYS[1]: 12, DAYS[2]: 1, DAYS[0]: 2, None: 3}, DAYS[1]),  # a day's delivery: that day
    ({DAYS[0]: 10, DAYS[1]: 10, DAYS[2]: 9, None: 3}, DAYS[2]),  # a whole log: the range's last
    ({None: 3}, DAYS[0]),  # nothing dated: the run's own day
])
def test_rows_without_a_day_belong_to_the_inputs_main_day(rows_by_day, owner):
    assert clean.undated_run_date(rows_by_day, run_last=DAYS[0], end_date=DAYS[2]) == owner


def test_missing_days_are_the_gaps_between_the_first_built_day_and_the_day_before():
    assert build_sequences.missing_days(["2017-11-25", "2017-11-28"], "2017-11-30") == [
        "2017-11-26", "2017-11-27", "2017-11-29"]
    assert build_sequences.missing_days(["2017-11-25", "2017-11-26"], "2017-11-27") == []
    assert build_sequences.missing_days([], "2017-11-27") == []
    assert build_sequences.missing_days(["2017-11-27"], "2017-11-25") == []  # later days only
