"""How the suite splits over pytest-xdist workers (`bash scripts/test.sh` runs `-n 2
--dist loadgroup`).

The tests that start JVMs (tests/etl: in-process Spark; tests/airflow: the DAG's spark-submit)
are one work unit, run on one worker in order: one Spark at a time, so concurrent JVMs never
resolve the Delta package into the same ivy cache, and the session-scoped Delta builds of
tests/etl are built once. Every other test goes to whichever worker is free.
Each worker's torch gets its share of the cores (OMP_NUM_THREADS, unless set).

The unit is chosen by path in the scheduler: xdist 3.8's `xdist_group` marks rename node ids,
which pytest 9 no longer lets a plugin do (its marks are ignored there).
"""

from __future__ import annotations

import os

import pytest

SPARK_GROUP = "spark"
SPARK_DIRECTORIES = ("tests/etl/", "tests/airflow/")


def pytest_configure(config: pytest.Config) -> None:
    """On an xdist worker, before anything imports torch: two workers of 2 threads each on 2
    cores spin against each other (test_learnability's in-process training: 24 s alone, 240 s
    so)."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers and "OMP_NUM_THREADS" not in os.environ:
        os.environ["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // int(workers)))


@pytest.hookimpl(optionalhook=True)  # only with xdist (`-n`)
def pytest_xdist_make_scheduler(config: pytest.Config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadGroupScheduling

    class SparkGroupScheduling(LoadGroupScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.startswith(SPARK_DIRECTORIES):
                return SPARK_GROUP
            return super()._split_scope(nodeid)

    return SparkGroupScheduling(config, log)
