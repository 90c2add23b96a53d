"""Run by the Airflow venv's python (see test_dag_e2e.py): execute real `dag.test()` runs of one
DAG, one after the other, and print one JSON line per run with the run's and every task's state.

    python run_dag.py cain_daily '[{"logical_date": "2017-12-03", "conf": {...}}, ...]'

A run may name `"mark_success": "etl"` (a regex of task ids) to mark those tasks successful
instead of executing them.

Needs AIRFLOW_HOME (a migrated SQLite DB) and AIRFLOW__CORE__DAGS_FOLDER set by the caller.
"""

from __future__ import annotations

import json
import sys

import pendulum
from airflow.dag_processing.dagbag import DagBag
from airflow.utils.session import create_session


def _name(state: object) -> str | None:
    return None if state is None else str(getattr(state, "value", state))


def main(dag_id: str, runs: list[dict]) -> None:
    for run in runs:
        # A fresh parse per run: in one process, Airflow 3.3's Param.resolve() stores a run's conf
        # value in the DAG's Param objects, so a later dag.test() would inherit it as a default.
        bag = DagBag()  # the configured DAGS_FOLDER, as the DAG processor reads it
        if bag.import_errors:
            raise SystemExit(f"import errors: {bag.import_errors}")
        dag = bag.dags[dag_id]
        logical_date = pendulum.parse(run["logical_date"], tz="UTC")
        dag_run = dag.test(
            logical_date=logical_date,
            run_conf=run.get("conf", {}),
            mark_success_pattern=run.get("mark_success"),  # regex of task ids not to execute
        )
        with create_session() as session:
            tasks = {
                ti.task_id: _name(ti.state) for ti in dag_run.get_task_instances(session=session)
            }
        result = {
            "logical_date": run["logical_date"],
            "run_id": dag_run.run_id,
            "state": _name(dag_run.state),
            "tasks": tasks,
        }
        print("DAG_RESULT " + json.dumps(result, sort_keys=True), flush=True)


if __name__ == "__main__":
    main(sys.argv[1], json.loads(sys.argv[2]))
