"""DAG integrity: airflow_dags/ parses in the Airflow venv without errors, and cain_daily has the
shape the design promises (task order, retries, one run at a time, no surprise catchup)."""

from __future__ import annotations

import json

import pytest
from airflow_harness import DAGS_FOLDER, HERE, airflow_env, run_airflow

pytestmark = pytest.mark.airflow

TASK_ORDER = ["etl", "validate", "train", "evaluate", "score_published", "gate", "publish"]


@pytest.fixture(scope="module")
def dags(airflow_python, tmp_path_factory) -> dict:
    home = tmp_path_factory.mktemp("airflow_home")
    # Default retries: the file's own, not the tests' CAIN_DAG_RETRIES=0.
    env = airflow_env(home)
    env.pop("CAIN_DAG_RETRIES")
    proc = run_airflow(
        airflow_python, [str(HERE / "inspect_dags.py"), str(DAGS_FOLDER)], env, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("DAGS_JSON ")]
    assert len(lines) == 1, proc.stdout[-4000:]
    return json.loads(lines[0].split(" ", 1)[1])


def test_every_dag_file_imports_without_errors(dags):
    assert dags["import_errors"] == {}
    assert dags["files"] == ["cain_daily.py"]  # release.py and __init__.py are .airflowignore'd


def test_cain_daily_is_documented_tagged_and_runs_one_day_at_a_time(dags):
    dag = dags["dags"]["cain_daily"]
    assert dag["tags"] == ["cain", "ctr", "daily-retraining"]
    assert dag["max_active_runs"] == 1
    assert dag["catchup"] is False  # chosen on purpose: see the DAG's docstring
    assert "catchup=False, on purpose" in dag["doc_md"]
    assert dag["timetable"] == "CronDataIntervalTimetable"  # ds = the day that just closed


def test_tasks_run_in_pipeline_order(dags):
    tasks = dags["dags"]["cain_daily"]["tasks"]
    assert sorted(tasks) == sorted(TASK_ORDER)
    for upstream, downstream in zip(TASK_ORDER, TASK_ORDER[1:], strict=False):
        assert tasks[upstream]["downstream"] == [downstream]
        assert tasks[downstream]["upstream"] == [upstream]
    assert tasks["etl"]["upstream"] == [] and tasks["publish"]["downstream"] == []


def test_retries_where_a_retry_can_help(dags):
    tasks = dags["dags"]["cain_daily"]["tasks"]
    for task_id in ("etl", "train", "score_published", "publish"):  # cluster / IO hiccups
        assert tasks[task_id]["retries"] >= 1 and tasks[task_id]["retry_delay"] >= 60
    for task_id in ("validate", "evaluate", "gate"):  # deterministic: same files, same answer
        assert tasks[task_id]["retries"] == 0


def test_paths_and_knobs_are_params(dags):
    params = set(dags["dags"]["cain_daily"]["params"])
    assert {
        "repo_root",
        "main_venv",
        "raw_input",
        "data_root",
        "runs_dir",
        "model",
        "nproc",
    } <= params
    assert {"spark_master", "spark_submit_args", "etl_full_range", "etl_args"} <= params
    assert {"trainer_overrides", "torchrun_args", "train_launcher", "warm_start"} <= params
    assert {"auc_tolerance", "on_regression", "min_samples"} <= params


def test_dag_file_keeps_heavy_imports_out():
    source = (DAGS_FOLDER / "cain_daily.py").read_text()
    for heavy in (
        "import torch",
        "import pyspark",
        "from pyspark",
        "import deltalake",
        "from etl",
        "from trainer",
    ):
        assert heavy not in source
