"""Helpers for the Airflow tests: they run in the MAIN venv and drive the Airflow venv
(scripts/setup_airflow.sh exports CAIN_AIRFLOW_PYTHON) through subprocesses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DAGS_FOLDER = REPO_ROOT / "airflow_dags"
HERE = Path(__file__).resolve().parent


def airflow_env(home: Path, **extra: str) -> dict[str, str]:
    """Environment for an Airflow subprocess: a private AIRFLOW_HOME with a SQLite DB, our DAG
    folder only, and the main venv (this interpreter) for the tasks' CLIs."""
    env = dict(os.environ)
    env.update(
        AIRFLOW_HOME=str(home),
        AIRFLOW__CORE__DAGS_FOLDER=str(DAGS_FOLDER),
        AIRFLOW__CORE__LOAD_EXAMPLES="False",
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{home}/airflow.db",
        AIRFLOW__LOGGING__LOGGING_LEVEL="INFO",
        CAIN_VENV=str(Path(sys.executable).parent.parent),
        CAIN_REPO_ROOT=str(REPO_ROOT),
        CAIN_DAG_RETRIES="0",  # a failing task fails the run now instead of sleeping retry_delay
    )
    env.update(extra)
    return env


def run_airflow(
    python: str, args: list[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, *args], env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def run_dag_tests(
    python: str, home: Path, runs: list[dict], timeout: float
) -> tuple[list[dict], str]:
    """`airflow db migrate`, then real `dag.test()` runs of cain_daily; returns (results, log)."""
    home.mkdir(parents=True, exist_ok=True)
    env = airflow_env(home)
    migrate = run_airflow(python, ["-m", "airflow", "db", "migrate"], env, timeout=180)
    assert migrate.returncode == 0, (
        f"airflow db migrate failed:\n{migrate.stdout[-3000:]}\n{migrate.stderr[-3000:]}"
    )
    proc = run_airflow(
        python, [str(HERE / "run_dag.py"), "cain_daily", json.dumps(runs)], env, timeout
    )
    log = proc.stdout + proc.stderr
    (home / "dag_test.log").write_text(log)
    assert proc.returncode == 0, f"run_dag.py failed (log: {home / 'dag_test.log'}):\n{log[-6000:]}"
    results = [
        json.loads(line.split(" ", 1)[1])
        for line in proc.stdout.splitlines()
        if line.startswith("DAG_RESULT ")
    ]
    assert len(results) == len(runs), log[-6000:]
    return results, log
