"""Real `dag.test()` runs of cain_daily against a stand-in checkout whose ETL and trainer CLIs are
stubs (same arguments, same outputs, no Spark or torch work): checks what the DAG itself owns —
params reach the commands, warm start follows `published`, the gate skips publish on a regression,
publish switches the link. The Airflow machinery, torchrun and the release CLI are all real."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from airflow_harness import REPO_ROOT, run_dag_tests

pytestmark = pytest.mark.airflow

STUB_SPARK_SUBMIT = """\
#!/usr/bin/env bash
# Stub of scripts/spark_submit.sh: records its arguments, writes a feature spec covering --date.
set -euo pipefail
python - "$@" <<'PY'
import argparse, json, sys
from pathlib import Path
from contract.feature_spec import FeatureSpec, SplitStats
job, *rest = sys.argv[1:]
parser = argparse.ArgumentParser()
for flag in ("--input", "--output"):
    parser.add_argument(flag, required=True)
parser.add_argument("--date")
parser.add_argument("--through")  # a full-range run: the range's days up to this one
parser.add_argument("--incremental", action="store_true")
args = parser.parse_args(rest)
root = Path(args.output)
(root / "samples" / "_delta_log").mkdir(parents=True, exist_ok=True)
with open(root / "etl_calls.jsonl", "a") as calls:
    calls.write(json.dumps({"job": job, "args": rest}) + "\\n")
FeatureSpec(
    source="taobao", protocol="cain", behaviors=("pv", "cart", "fav", "buy"), num_users=10,
    num_items=100, num_categories=5, max_item_id=100, max_category_id=5, max_len=64, short_len=8,
    top_categories=3, dense_features=("n_pv",),
    splits={"train": SplitStats(("2017-11-25",), 100, 2000, 100),
            "test": SplitStats((args.date or args.through,), 10, 200, 10)},
    tables={"samples": "samples"},
).write(root)
PY
"""

STUB_TRAINER = """\
# Stub of trainer/main.py: same flags and key=value overrides; `stub.auc=` sets the metric.
import argparse, json, os, sys
from pathlib import Path
parser = argparse.ArgumentParser()
for flag in ("--data", "--model", "--output"):
    parser.add_argument(flag, required=True)
parser.add_argument("overrides", nargs="*")
args = parser.parse_args()
overrides = dict(item.split("=", 1) for item in args.overrides)
if os.environ["RANK"] == "0":
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "call.json").write_text(json.dumps({"args": sys.argv[1:], "python": sys.executable}))
    if overrides.get("train.evaluate_only") == "true":  # scoring: the source's `stub.rescored`
        source = json.loads((Path(overrides["train.warm_start"]).parent / "call.json").read_text())
        source_overrides = dict(item.split("=", 1) for item in source["args"] if "=" in item)
        auc = float(source_overrides.get("stub.rescored", source_overrides["stub.auc"]))
    else:
        (out / "checkpoints" / "step_1").mkdir(parents=True, exist_ok=True)
        (out / "checkpoints" / "step_1" / "weights").write_text("stub")
        auc = float(overrides["stub.auc"])
    metrics = {"model": args.model, "auc": auc, "gauc": 0.6,
               "logloss": 0.2, "n_train": 2000, "n_test": 200, "train_samples_per_sec": 1.0}
    (out / "metrics.json").write_text(json.dumps(metrics))
"""


@pytest.fixture
def stub_repo(tmp_path) -> Path:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    (repo / "trainer").mkdir()
    (repo / "scripts" / "spark_submit.sh").write_text(STUB_SPARK_SUBMIT)
    (repo / "trainer" / "main.py").write_text(textwrap.dedent(STUB_TRAINER))
    for package in ("airflow_dags", "contract", "etl"):  # the real release CLI and feature spec
        (repo / package).symlink_to(REPO_ROOT / package)
    return repo


def test_warm_start_gate_and_publish_across_four_days(airflow_python, stub_repo, tmp_path):
    runs_dir = tmp_path / "runs"
    base = {
        "repo_root": str(stub_repo),
        "raw_input": str(tmp_path / "raw.csv"),
        "data_root": str(tmp_path / "delta"),
        "runs_dir": str(runs_dir),
        "nproc": 1,
        "min_samples": 1,
        "auc_tolerance": 0.002,
    }
    days = [("2017-12-01", 0.7), ("2017-12-02", 0.65), ("2017-12-03", 0.699), ("2017-12-04", 0.6)]
    runs = [
        {"logical_date": day, "conf": base | {"trainer_overrides": [f"stub.auc={auc}"]}}
        for day, auc in days
    ]
    runs[0]["conf"]["etl_full_range"] = True  # the first day builds the history
    # Day 1's model scores 0.69 on later test days (its own day: 0.7): the gate must use that.
    runs[0]["conf"]["trainer_overrides"].append("stub.rescored=0.69")
    # Day 4: a model change (new shapes) needs a cold start; its AUC is accepted on purpose.
    runs[3]["conf"] |= {"warm_start": False, "auc_tolerance": 1.0}
    results, log = run_dag_tests(airflow_python, tmp_path / "airflow", runs, timeout=300)

    first, regressed, recovered, cold = results
    assert first["state"] == "success" and set(first["tasks"].values()) == {"success"}
    # A regression is not an outage: the gate and publish are skipped, the run stays green.
    assert regressed["state"] == "success", log[-4000:]
    assert regressed["tasks"]["gate"] == "skipped" and regressed["tasks"]["publish"] == "skipped"
    assert "gate REJECT: new AUC 0.650000 < published AUC 0.690000" in log
    assert "(both on this run's test split)" in log
    assert "from its own, older test day" in log  # day 4: cold start, the model is not re-scored
    assert recovered["tasks"]["publish"] == "success" and cold["tasks"]["publish"] == "success"

    run_dirs = {day: next((runs_dir / day).iterdir()) for day, _ in days}
    published = runs_dir / "published"
    assert published.resolve() == run_dirs["2017-12-04"].resolve()
    history_file = runs_dir / "published_history.jsonl"
    history = [json.loads(line) for line in history_file.read_text().splitlines()]
    published_days = [Path(entry["run_dir"]).parent.name for entry in history]
    assert published_days == ["2017-12-01", "2017-12-03", "2017-12-04"]

    # Warm start follows `published`, resolved when train runs: day 3 starts from day 1, not day 2.
    def warm_start(day: str) -> str:
        args = json.loads((run_dirs[day] / "call.json").read_text())["args"]
        return next(arg for arg in args if arg.startswith("train.warm_start=")).split("=", 1)[1]

    day_1_checkpoints = str(run_dirs["2017-12-01"].resolve() / "checkpoints")
    assert warm_start("2017-12-01") == ""
    assert warm_start("2017-12-02") == day_1_checkpoints
    assert warm_start("2017-12-03") == day_1_checkpoints
    assert warm_start("2017-12-04") == ""

    # score_published: the published model (day 1) on day 2's data, evaluate-only.
    scored = json.loads((run_dirs["2017-12-02"] / "published_scored" / "call.json").read_text())
    assert "train.evaluate_only=true" in scored["args"]
    assert f"train.warm_start={day_1_checkpoints}" in scored["args"]
    assert not (run_dirs["2017-12-01"] / "published_scored").exists()  # nothing published yet
    assert not (run_dirs["2017-12-04"] / "published_scored").exists()  # cold start

    etl_log = (tmp_path / "delta" / "etl_calls.jsonl").read_text().splitlines()
    etl_calls = [json.loads(line) for line in etl_log]
    assert [call["job"] for call in etl_calls] == ["etl/build_sequences.py"] * 4
    # Day 1 builds the history up to its own day (the state as of day 1), the others one day each
    # from the day before's state.
    assert "--date" not in etl_calls[0]["args"] and "--incremental" not in etl_calls[0]["args"]
    assert etl_calls[0]["args"][-2:] == ["--through", "2017-12-01"]
    assert [call["args"][-3:] for call in etl_calls[1:]] == [
        ["--incremental", "--date", day] for day, _ in days[1:]
    ]
    # The trainer ran under the main venv's torchrun/python, not the Airflow venv's.
    trainer_python = Path(json.loads((run_dirs["2017-12-01"] / "call.json").read_text())["python"])
    assert trainer_python.parent == Path(sys.executable).parent
