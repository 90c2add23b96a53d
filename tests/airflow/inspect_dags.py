"""Run by the Airflow venv's python (see test_dag_integrity.py): parse airflow_dags/ like the DAG
processor does and print one JSON line (after `DAGS_JSON `) describing every DAG.
Needs AIRFLOW_HOME set."""

from __future__ import annotations

import json
import sys
from datetime import timedelta

from airflow.dag_processing.dagbag import DagBag


def _seconds(value: object) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else None


def describe(dag_folder: str) -> dict:
    bag = DagBag(dag_folder=dag_folder)  # examples: off through AIRFLOW__CORE__LOAD_EXAMPLES
    dags = {}
    for dag_id, dag in bag.dags.items():
        dags[dag_id] = {
            "fileloc": dag.fileloc,
            "tags": sorted(dag.tags),
            "catchup": dag.catchup,
            "max_active_runs": dag.max_active_runs,
            "doc_md": dag.doc_md or "",
            "timetable": type(dag.timetable).__name__,
            "params": sorted(dag.params.keys()),
            "tasks": {
                task.task_id: {
                    "operator": type(task).__name__,
                    "retries": task.retries,
                    "retry_delay": _seconds(task.retry_delay),
                    "upstream": sorted(task.upstream_task_ids),
                    "downstream": sorted(task.downstream_task_ids),
                }
                for task in dag.tasks
            },
        }
    return {
        "import_errors": {str(path): str(error) for path, error in bag.import_errors.items()},
        "files": sorted(str(stat.file) for stat in bag.dagbag_stats),
        "dags": dags,
    }


if __name__ == "__main__":
    # Airflow logs to stdout too: the result is the one line after the marker.
    print("DAGS_JSON " + json.dumps(describe(sys.argv[1]), sort_keys=True), flush=True)
