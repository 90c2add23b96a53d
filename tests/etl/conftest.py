"""One SparkSession (local[2], Delta) for every Spark test in tests/etl, plus shared builds.

Starting Spark costs seconds and building Delta tables tens of seconds, so the session and the
tiny end-to-end builds are session-scoped; tests only read them.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import NamedTuple

import pytest

from etl import synthetic

# A 3-day range keeps the builds small: day 1 seeds histories, day 2 is train, day 3 test.
START, END = "2017-11-25", "2017-11-27"
DAYS = ("2017-11-25", "2017-11-26", "2017-11-27")
MAX_LEN = 30  # short, so that some timelines are cut


@pytest.fixture(scope="session")
def spark():
    from etl.spark import session

    spark_session = session("tests-etl", master="local[2]", shuffle_partitions=2)
    yield spark_session
    spark_session.stop()


@pytest.fixture(scope="session")
def raw_log(tmp_path_factory) -> Path:
    """A tiny seeded Taobao-format log with every kind of defect injected.

    The dense catalog (the generator's old default): 300 items all known from day 1, so most
    requests find their 19 unseen negatives (test_point_in_time counts them); the long-tail
    default would leave these 12 users a pool of a few dozen items per day.
    """
    path = tmp_path_factory.mktemp("raw") / "UserBehavior.csv"
    synthetic.main(
        ["taobao", "--output", str(path), "--users", "12", "--items", "300", "--categories", "20",
         "--days", "3", "--mean-events", "40", "--dirty-rate", "0.03", "--seed", "5",
         "--catalog", "dense"]
    )
    return path


def build_args(raw: Path, root: Path, *extra: str) -> list[str]:
    return ["--input", str(raw), "--output", str(root), "--start-date", START, "--end-date", END,
            "--max-len", str(MAX_LEN), "--short-len", "10", "--files-per-day", "1", *extra]


@pytest.fixture(scope="session")
def build_cli():
    """Arguments of build_sequences for the tiny range: build_cli(raw, root, *extra)."""
    return build_args


@pytest.fixture(scope="session")
def full_build(spark, raw_log, tmp_path_factory) -> Path:
    """`build_sequences` over the whole range, default cain protocol."""
    from etl import build_sequences

    root = tmp_path_factory.mktemp("full")
    build_sequences.run(build_sequences.parse_args(build_args(raw_log, root)))
    return root


class DailyBuild(NamedTuple):
    root: Path  # after every day's run, the last day's twice
    first_day: Path  # a copy of ROOT taken after the first day's run


@pytest.fixture(scope="session")
def daily_build(spark, raw_log, tmp_path_factory) -> DailyBuild:
    """`build_sequences --date D` (not incremental) for each day in order, the last day run
    twice, into one ROOT; tests that start from day 1 alone copy `first_day`."""
    from etl import build_sequences

    def build(day: str) -> None:
        build_sequences.run(build_sequences.parse_args(build_args(raw_log, root, "--date", day)))

    directory = tmp_path_factory.mktemp("daily")
    root, first_day = directory / "root", directory / "first_day"
    build(DAYS[0])
    shutil.copytree(root, first_day)
    for day in (*DAYS[1:], DAYS[-1]):
        build(day)
    return DailyBuild(root, first_day)
