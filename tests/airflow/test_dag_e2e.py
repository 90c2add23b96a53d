"""End to end: real `dag.test()` runs of cain_daily on a tiny synthetic Taobao log. Run 1 (a first
run on an empty ROOT, `etl_full_range`): Spark ETL through `scripts/spark_submit.sh`, validation,
a 2-process torchrun TorchRec training, evaluation, the gate and the publish switch, all for real.
Run 2 re-trains the same day (its ETL marked done rather than repeated, to keep the suite short),
must warm-start from what run 1 published, and re-scores run 1's model for its gate."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from airflow_harness import REPO_ROOT, run_dag_tests

pytestmark = pytest.mark.airflow

NEEDED = (
    "etl/synthetic.py",
    "etl/build_sequences.py",
    "scripts/spark_submit.sh",
    "trainer/main.py",
)
LAST_DAY = "2017-12-03"  # the Taobao source's last day: the test split
TASKS = ["etl", "validate", "train", "evaluate", "score_published", "gate", "publish"]
TINY_TRAINER = [
    "model.embedding_dim=8",
    "train.batch_size=64",
    "train.eval_batch_size=256",
    "train.max_steps=10",
    "train.log_every=5",
    "data.shuffle_buffer_rows=32",
    "data.read_rows=16",
]


@pytest.fixture(scope="module")
def raw_log(tmp_path_factory) -> Path:
    missing = [path for path in NEEDED if not (REPO_ROOT / path).is_file()]
    if missing:
        pytest.fail(f"the end-to-end DAG run needs {missing}: not in the checkout yet")
    raw = tmp_path_factory.mktemp("raw") / "UserBehavior.csv"
    command = [sys.executable, "-m", "etl.synthetic", "taobao", "--output", str(raw)]
    command += ["--users", "40", "--items", "300", "--categories", "12", "--mean-events", "40"]
    proc = subprocess.run(
        [*command, "--seed", "7"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return raw


def test_daily_dag_trains_publishes_and_warm_starts_for_real(airflow_python, raw_log, tmp_path):
    runs_dir = tmp_path / "runs"
    conf = {
        "raw_input": str(raw_log),
        "data_root": str(tmp_path / "delta"),
        "runs_dir": str(runs_dir),
        "nproc": 2,
        "min_samples": 1,
        "trainer_overrides": TINY_TRAINER,
    }
    first_run = {"logical_date": LAST_DAY, "conf": conf | {"etl_full_range": True}}
    # Accepted whatever its AUC: this run is about the warm start, not the gate.
    retrain = {
        "logical_date": LAST_DAY,
        "conf": conf | {"auc_tolerance": 1.0},
        "mark_success": "etl",
    }
    results, log = run_dag_tests(airflow_python, tmp_path / "airflow", [first_run, retrain], 600)

    for result in results:
        assert result["state"] == "success", f"{result}\n{log[-6000:]}"
        assert result["tasks"] == dict.fromkeys(TASKS, "success")
    assert "warm start: none" in log  # run 1

    spec = json.loads((tmp_path / "delta" / "feature_spec.json").read_text())
    assert spec["splits"]["test"]["dates"] == [LAST_DAY]
    first, second = sorted((runs_dir / LAST_DAY).iterdir(), key=lambda path: path.stat().st_mtime)
    metrics = json.loads((first / "metrics.json").read_text())
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["n_test"] > 0
    assert (runs_dir / "published").resolve() == second.resolve()
    history = (runs_dir / "published_history.jsonl").read_text().splitlines()
    published = [json.loads(line)["run_dir"] for line in history]
    assert published == [str(first.resolve()), str(second.resolve())]

    def warm_start(run_dir: Path) -> str:
        return yaml.safe_load((run_dir / "config.yaml").read_text())["train"]["warm_start"]

    assert warm_start(first) is None  # no warm start on the first run
    assert warm_start(second) == str(first.resolve() / "checkpoints")
    # score_published: run 1's model re-scored on run 2's test split (the same day here) by a real
    # evaluate-only torchrun gives run 1's own numbers back; the gate compared against those.
    rescored = json.loads((second / "published_scored" / "metrics.json").read_text())
    assert rescored["evaluate_only"] and rescored["n_test"] == metrics["n_test"]
    assert rescored["auc"] == pytest.approx(metrics["auc"], abs=1e-6)
    assert "(both on this run's test split)" in log
    assert f"warm start from {first.resolve() / 'checkpoints'}" in log  # the trainer's own line
