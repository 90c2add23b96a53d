"""
# cain_daily: daily retraining of the lifelong-sequence CTR model

`etl → validate → train → evaluate → score_published → gate → publish`, once a day. Every task
runs the same command a person would, with the **main** virtualenv's `python` / `spark-submit` /
`torchrun` first on `PATH` (Airflow lives in a venv of its own; see `docs/airflow.md`):

- `etl`: `bash scripts/spark_submit.sh etl/build_sequences.py --input RAW --output ROOT
  --incremental --date DS` builds day DS from DS's events and the ETL's per-user state as of
  DS - 1 only (docs/etl.md, "Incremental daily builds"; idempotent: a rerun starts from the
  state as of DS - 1 again) and updates the feature spec. With the param `etl_full_range` (first
  run on an empty ROOT) it builds the range's days up to DS (`--through DS`), history included,
  which leaves the state as of DS for the next day's incremental run (the input's rows of later
  days are left to their own days' runs, not quarantined); with `etl_incremental` false it
  rebuilds DS from its users' whole history (`--date DS` alone: also writes the state as of DS).
  The ETL's date split rolls with the newest built day: DS is the test split and the day before
  it returns to train, so every run trains on the days before DS and is tested on DS.
- `validate`: `python -m airflow_dags.release validate --root ROOT --date DS ...` checks the
  feature spec: DS has samples, counts and positive rates are sane, the tables exist.
- `train`: `torchrun --nproc_per_node=N trainer/main.py --data ROOT --model M --output RUN_DIR
  train.warm_start=<published run>/checkpoints ...`.
- `evaluate`: `python -m airflow_dags.release evaluate --run-dir RUN_DIR` checks `metrics.json`.
- `score_published`: the same torchrun with `train.evaluate_only=true
  train.warm_start=<published run>/checkpoints --output RUN_DIR/published_scored`: the published
  model's AUC on *this* run's test split (nothing to do before the first publish).
- `gate`: new AUC >= published AUC - `auc_tolerance`, both on this run's test split, else
  `publish` is skipped (or, with `on_regression=fail`, the run fails), the reason in the log.
- `publish`: atomic switch of the `RUNS/published` symlink to RUN_DIR, appended to
  `RUNS/published_history.jsonl`; old runs are kept.

`DS` is the day whose data just closed: the timetable has daily data intervals starting 02:00 UTC
(after midnight in China time, where the Taobao days are cut, and later than most log shipping),
so the run labelled `DS` starts once `DS` is over. `RUN_DIR = RUNS/DS/<run id>`: a retry of
`train` resumes from its own checkpoints; a new run for the same day never overwrites a published
run.

**catchup=False, on purpose.** Each run retrains from the latest *published* model, so when the
scheduler was down for a week, seven back-to-back retrainings would only delay the model everyone
is waiting for. The ETL is idempotent per `--date`: rebuild missed days deliberately with
`airflow backfill create --dag-id cain_daily --from-date ... --to-date ...` (one day at a time,
`max_active_runs=1`, the gate still protects `published`).

Paths and knobs are DAG params (override per run with `--conf` / "Trigger w/ config"); their
defaults come from environment variables read when the file is parsed: `CAIN_REPO_ROOT`,
`CAIN_VENV`, `CAIN_DAILY_DIR`, `CAIN_RAW_INPUT`, `CAIN_DATA_ROOT`, `CAIN_RUNS_DIR`, `CAIN_NPROC`;
`CAIN_DAG_RETRIES` sets the retries of `etl`, `train`, `publish` (tests use 0).
"""

from __future__ import annotations

import os
import re
import shlex
from datetime import timedelta
from pathlib import Path

import pendulum
from airflow.sdk import CronDataIntervalTimetable, Param, dag, task

REPO_ROOT = os.environ.get("CAIN_REPO_ROOT") or str(Path(__file__).resolve().parents[1])
DAILY_DIR = os.environ.get("CAIN_DAILY_DIR") or str(Path(REPO_ROOT) / "runs" / "daily")
RETRIES = int(os.environ.get("CAIN_DAG_RETRIES", "2"))
RETRY_DELAY = timedelta(minutes=10)
PUBLISHED_SCORED = "published_scored"  # RUN_DIR/<this>: the published model on this run's data

PARAMS = {
    "repo_root": Param(
        REPO_ROOT, type="string", description="checkout with etl/, trainer/, scripts/"
    ),
    "main_venv": Param(
        os.environ.get("CAIN_VENV") or str(Path.home() / ".cache" / "cain" / "venv"),
        type="string",
        description="the main virtualenv (scripts/setup_env.sh): torch, torchrec, pyspark",
    ),
    "raw_input": Param(
        os.environ.get("CAIN_RAW_INPUT") or f"{DAILY_DIR}/raw",
        type="string",
        description="raw behavior log (file or directory) given to the ETL as --input",
    ),
    "data_root": Param(
        os.environ.get("CAIN_DATA_ROOT") or f"{DAILY_DIR}/delta",
        type="string",
        description="the ETL's --output: Delta tables + feature_spec.json",
    ),
    "runs_dir": Param(
        os.environ.get("CAIN_RUNS_DIR") or f"{DAILY_DIR}/runs",
        type="string",
        description="run directories RUNS/DS/RUN_ID, the `published` symlink and its history",
    ),
    "spark_master": Param(
        "",
        type="string",
        description="SPARK_MASTER for scripts/spark_submit.sh (yarn, k8s://..., spark://...); "
        "empty: the worker's SPARK_MASTER or local[2]",
    ),
    "spark_submit_args": Param(
        [],
        type="array",
        items={"type": "string"},
        description="spark-submit options, e.g. --deploy-mode client --num-executors 50",
    ),
    "etl_full_range": Param(
        False,
        type="boolean",
        description="rebuild the whole configured range, not only DS (first run, new config)",
    ),
    "etl_incremental": Param(
        True,
        type="boolean",
        description="build DS from its events and the state as of DS - 1 (--incremental); "
        "needs the state of DS - 1: the day before built, or a full range run on DS - 1; "
        "false: rebuild DS from the whole history of its users (a repair, or no state yet)",
    ),
    "etl_args": Param([], type="array", items={"type": "string"}, description="extra ETL flags"),
    "model": Param("cain", type="string", description="a model.registry name"),
    "nproc": Param(int(os.environ.get("CAIN_NPROC", "2")), type="integer", minimum=1),
    "train_launcher": Param(
        [],
        type="array",
        items={"type": "string"},
        description="starts torchrun on every node, e.g. srun --nodes=2 --ntasks-per-node=1",
    ),
    "torchrun_args": Param(
        ["--standalone"],
        type="array",
        items={"type": "string"},
        description="rendezvous, e.g. --nnodes=2 --rdzv-backend=c10d --rdzv-endpoint=HOST:PORT",
    ),
    "warm_start": Param(
        True,
        type="boolean",
        description="start from the published checkpoint; false after a change of model shapes",
    ),
    "trainer_overrides": Param(
        [], type="array", items={"type": "string"}, description="key=value, e.g. train.max_steps=20"
    ),
    "min_samples": Param(100, type="integer", minimum=1, description="per split, in validate"),
    "min_positive_rate": Param(0.001, type="number", minimum=0, maximum=1),
    "max_positive_rate": Param(0.9, type="number", minimum=0, maximum=1),
    "auc_tolerance": Param(0.002, type="number", minimum=0, description="gate: AUC drop allowed"),
    "on_regression": Param(
        "skip", enum=["skip", "fail"], description="gate rejects: skip publish or fail"
    ),
}


def _run_dir(params: dict, ds: str, run_id: str) -> str:
    # Keyed by run id: retries of one run share (and resume) it, other runs never touch it.
    safe_run_id = re.sub(r"[^A-Za-z0-9._-]+", "-", run_id).strip("-")
    return f"{params['runs_dir']}/{ds}/{safe_run_id}"


def _published(params: dict) -> str:
    return f"{params['runs_dir']}/published"


def _in_main_venv(params: dict, *commands: list[str]) -> str:
    """A bash script that runs `commands` from the repo root with the main venv first on PATH."""
    repo, venv_bin = shlex.quote(params["repo_root"]), shlex.quote(f"{params['main_venv']}/bin")
    lines = [
        "set -euo pipefail",
        f"cd {repo}",
        # The Airflow venv must never shadow the main one for python / spark-submit / torchrun.
        "unset VIRTUAL_ENV PYTHONHOME",
        f'export PATH={venv_bin}:"$PATH" PYTHONPATH={repo}',
        f"export PYSPARK_PYTHON={venv_bin}/python PYSPARK_DRIVER_PYTHON={venv_bin}/python",
        *(shlex.join(command) for command in commands),
    ]
    return "\n".join(lines) + "\n"


def _release(command: str, *args: str) -> list[str]:
    return ["python", "-m", "airflow_dags.release", command, *args]


def _published_checkpoint(params: dict) -> list[str]:
    """Prints the published run's checkpoint directory, or nothing before the first publish."""
    return _release("warm-start", "--published", _published(params))


def _torchrun(params: dict, output: str, extra: str) -> str:
    """The trainer's torchrun line writing to `output`; `extra`: overrides left to the shell."""
    command = [*params["train_launcher"], "torchrun", *params["torchrun_args"]]
    command += [f"--nproc_per_node={params['nproc']}"]
    command += ["trainer/main.py", "--data", params["data_root"], "--model", params["model"]]
    command += ["--output", output, "train.progress=false"]
    overrides = shlex.join(list(params["trainer_overrides"]))
    return f"{shlex.join(command)} {extra} {overrides}\n"


@dag(
    dag_id="cain_daily",
    doc_md=__doc__,
    schedule=CronDataIntervalTimetable("0 2 * * *", timezone="UTC"),
    # Early on purpose: a run's logical date must not precede start_date or it gets no tasks, and
    # the public Taobao log's days (2017-11-25..12-03) must stay runnable; catchup=False keeps the
    # scheduler from walking these years.
    start_date=pendulum.datetime(2017, 11, 25, tz="UTC"),
    catchup=False,  # see the module docstring: runs chain on `published`, backfill on purpose
    max_active_runs=1,  # day D+1 warm-starts from what day D published
    dagrun_timeout=timedelta(hours=20),
    default_args={"owner": "cain", "retries": RETRIES, "retry_delay": RETRY_DELAY},
    params=PARAMS,
    tags=["cain", "ctr", "daily-retraining"],
)
def cain_daily():
    @task.bash(do_xcom_push=False, execution_timeout=timedelta(hours=6))
    def etl(params: dict, ds: str) -> str:
        """Rebuild day DS's partitions (idempotent per date) and the feature spec."""
        command = ["bash", "scripts/spark_submit.sh", *params["spark_submit_args"]]
        command += ["etl/build_sequences.py"]
        command += ["--input", params["raw_input"], "--output", params["data_root"]]
        if params["etl_full_range"]:  # the first run needs the history: the range's days to DS,
            command += ["--through", ds]  # which leaves the per-user state as of DS
        else:
            command += ["--incremental"] if params["etl_incremental"] else []
            command += ["--date", ds]
        if params["spark_master"]:
            command = ["env", f"SPARK_MASTER={params['spark_master']}", *command]
        return _in_main_venv(params, command + list(params["etl_args"]))

    # Deterministic checks: a retry would read the same files and fail the same way.
    @task.bash(retries=0)
    def validate(params: dict, ds: str) -> str:
        """Refuse to train on a broken day: feature spec readable, counts and positive rate sane."""
        return _in_main_venv(
            params,
            _release(
                "validate",
                *("--root", params["data_root"], "--date", ds),
                *("--min-samples", str(params["min_samples"])),
                *("--min-positive-rate", str(params["min_positive_rate"])),
                *("--max-positive-rate", str(params["max_positive_rate"])),
            ),
        )

    @task.bash(do_xcom_push=False, execution_timeout=timedelta(hours=12))
    def train(params: dict, ds: str, run_id: str) -> str:
        """torchrun the trainer, warm-started from the published checkpoint when there is one."""
        script = _in_main_venv(params, ["mkdir", "-p", params["runs_dir"]])
        if params["warm_start"]:
            # Resolved when the task runs, not at parse time: yesterday may have just published.
            script += f'warm_start="$({shlex.join(_published_checkpoint(params))})"\n'
        else:
            script += "warm_start=''\n"
        script += 'echo "warm start: ${warm_start:-none}"\n'
        output = _run_dir(params, ds, run_id)
        return script + _torchrun(params, output, 'train.warm_start="$warm_start"')

    @task.bash(retries=0)
    def evaluate(params: dict, ds: str, run_id: str) -> str:
        """Read RUN_DIR/metrics.json (AUC, GAUC, logloss on the test split) and check it."""
        return _in_main_venv(
            params, _release("evaluate", "--run-dir", _run_dir(params, ds, run_id))
        )

    @task.bash(do_xcom_push=False, execution_timeout=timedelta(hours=6))
    def score_published(params: dict, ds: str, run_id: str) -> str:
        """Score the published model on this run's test split, so the gate compares like with like.

        A `train.evaluate_only` run of the trainer from the published checkpoint, written to
        RUN_DIR/published_scored. Nothing to do before the first publish, and not possible after a
        change of model shapes (`warm_start` false): the gate then says it fell back.
        """
        script = _in_main_venv(params)
        if not params["warm_start"]:
            return script + 'echo "warm_start=false: the published model is not re-scored"\n'
        script += f'checkpoint="$({shlex.join(_published_checkpoint(params))})"\n'
        script += 'if [ -z "$checkpoint" ]; then echo "no published model yet"; exit 0; fi\n'
        output = f"{_run_dir(params, ds, run_id)}/{PUBLISHED_SCORED}"
        overrides = 'train.evaluate_only=true train.warm_start="$checkpoint"'
        return script + _torchrun(params, output, overrides)

    @task.bash(retries=0)
    def gate(params: dict, ds: str, run_id: str) -> str:
        """new AUC >= published AUC - auc_tolerance, else exit 99 (skip publish) or 1 (fail)."""
        run_dir = _run_dir(params, ds, run_id)
        return _in_main_venv(
            params,
            _release(
                "gate",
                *("--run-dir", run_dir, "--published", _published(params)),
                *("--published-scored", f"{run_dir}/{PUBLISHED_SCORED}"),
                *(
                    "--tolerance",
                    str(params["auc_tolerance"]),
                    "--on-reject",
                    params["on_regression"],
                ),
            ),
        )

    @task.bash
    def publish(params: dict, ds: str, run_id: str) -> str:
        """Atomically point RUNS/published at RUN_DIR; history in RUNS/published_history.jsonl."""
        return _in_main_venv(
            params,
            _release(
                "publish",
                *("--run-dir", _run_dir(params, ds, run_id), "--published", _published(params)),
            ),
        )

    etl() >> validate() >> train() >> evaluate() >> score_published() >> gate() >> publish()


cain_daily()
