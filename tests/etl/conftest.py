"""One SparkSession (local[2], Delta) for every Spark test in tests/etl, plus shared builds.

Starting Spark costs seconds and building Delta tables tens of seconds, so the session and the
tiny end-to-end builds are session-scoped; tests only read them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import NamedTuple

import pytest

from etl import synthetic

# A 3-day range keeps the builds small: day 1 seeds histories, day 2 is train, day 3 test.
START, END = "2017-11-25", "2017-11-27"
DAYS = ("2017-11-25", "2017-11-26", "2017-11-27")
MAX_LEN = 30  # short, so that some timelines are cut
REPO_ROOT = Path(__file__).resolve().parents[2]


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
def full_build(raw_log, tmp_path_factory) -> Path:
    """`build_sequences` over the whole range, default cain protocol, as users run it: a plain
    `spark-submit etl/build_sequences.py` after `source scripts/setup_env.sh` (no wrapper, and no
    SPARK_CONF_DIR inherited: setup_env.sh's brings the Delta package and confs). The driver's
    TMPDIR is ROOT's sibling `tmp`."""
    directory = tmp_path_factory.mktemp("full")
    root, temporary = directory / "root", directory / "tmp"
    temporary.mkdir()
    command = "source scripts/setup_env.sh >/dev/null && spark-submit " + " ".join(
        ["etl/build_sequences.py", *build_args(raw_log, root)])
    env = {key: value for key, value in os.environ.items() if key != "SPARK_CONF_DIR"}
    env["TMPDIR"] = str(temporary)
    result = subprocess.run(["bash", "-c", command], cwd=REPO_ROOT, env=env, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return root


class DailyBuild(NamedTuple):
    root: Path  # after the whole chain (DAILY_CHAIN)
    first_day: Path  # a copy of ROOT taken after the first day's run
    rerun_by_date: Path  # a copy of ROOT taken after the last day's rerun without --incremental


# A daily pipeline's runs, in order: the first day without state, each next day on the state of
# the day before (Delta MERGE), then the last day rerun twice: from the whole history (no
# --incremental: the state is rebuilt), then incrementally (it starts from the state as of the
# day before, not from its own).
DAILY_CHAIN = ((DAYS[0], False), (DAYS[1], True), (DAYS[2], True), (DAYS[2], False),
               (DAYS[2], True))


@pytest.fixture(scope="session")
def daily_build(spark, raw_log, tmp_path_factory) -> DailyBuild:
    """`build_sequences --date D [--incremental]` for each step of DAILY_CHAIN into one ROOT;
    copies of ROOT after the first and the fourth run."""
    from etl import build_sequences

    directory = tmp_path_factory.mktemp("daily")
    copies = {0: directory / "first_day", 3: directory / "rerun_by_date"}
    root = directory / "root"
    for step, (day, incremental) in enumerate(DAILY_CHAIN):
        extra = ["--date", day, *(["--incremental"] if incremental else [])]
        build_sequences.run(build_sequences.parse_args(build_args(raw_log, root, *extra)))
        if step in copies:
            shutil.copytree(root, copies[step])
    return DailyBuild(root, copies[0], copies[3])
