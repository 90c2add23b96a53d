"""The checks and the switch behind a daily model release, as a CLI of the main venv.

The daily DAG (`airflow_dags/cain_daily.py`) calls these exactly as a person would:

    python -m airflow_dags.release validate --root ROOT --date 2017-12-03
    python -m airflow_dags.release evaluate --run-dir RUN_DIR
    python -m airflow_dags.release gate --run-dir RUN_DIR --published RUNS/published \
        --tolerance 0.002 --published-scored RUN_DIR/published_scored
    python -m airflow_dags.release publish --run-dir RUN_DIR --published RUNS/published
    python -m airflow_dags.release warm-start --published RUNS/published

Each command prints its result as one JSON line last (Airflow keeps the last line as the task's
XCom) and exits 0 on success, 1 with a message naming the problem, or 99 (`gate` with
`--on-reject skip`) to make Airflow skip the task and so the publish after it.

The gate rule: publish when `new AUC >= published AUC - tolerance` (the first model is always
published), both AUCs on this run's test split: the published model is re-scored on it first.
`published` is a symlink to a run directory, switched atomically with a rename, so a reader sees
either the old or the new run, never a half-written one; every switch is appended to
`published_history.jsonl` next to it and old run directories are kept (rollback = publish an old
run again). Stdlib only plus `etl.feature_spec` (pure Python): it imports in any venv.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

METRICS_FILE = "metrics.json"
CHECKPOINT_DIR = "checkpoints"
REQUIRED_METRICS = ("model", "auc", "gauc", "logloss", "n_test")
SKIP_EXIT_CODE = 99  # BashOperator's default skip_on_exit_code


class ReleaseError(RuntimeError):
    """A check failed; the message says which and why."""


@dataclass(frozen=True)
class GateDecision:
    publish: bool
    reason: str
    candidate_auc: float
    published_auc: float | None
    tolerance: float


# --------------------------------------------------------------------------- validate


def validate_data(
    root: str | Path,
    date: str,
    min_samples: int,
    min_positive_rate: float,
    max_positive_rate: float,
    splits: Sequence[str] = ("train", "test"),
) -> dict:
    """Check the ETL's output before a GPU hour is spent on it.

    Reads `ROOT/feature_spec.json` with `etl.feature_spec.FeatureSpec.read` (so a spec the trainer
    would refuse is refused here too) and requires: the run's `date` among the splits' dates; every
    split in `splits` with at least `min_samples` samples and a positive rate inside
    [min_positive_rate, max_positive_rate]; every table the spec names present as a Delta table.
    """
    from contract.feature_spec import FeatureSpec, FeatureSpecError

    root = Path(root)
    try:
        spec = FeatureSpec.read(root)
    except FeatureSpecError as error:
        raise ReleaseError(f"validate: {error}") from error
    problems = []
    for name in splits:
        stats = spec.splits.get(name)
        if stats is None:
            problems.append(f"split {name!r} missing (spec has {sorted(spec.splits)})")
            continue
        if stats.samples < min_samples:
            problems.append(f"split {name!r}: {stats.samples} samples < min_samples={min_samples}")
        rate = stats.positive_rate
        if not min_positive_rate <= rate <= max_positive_rate:
            problems.append(
                f"split {name!r}: positive rate {rate:.4f} outside "
                f"[{min_positive_rate}, {max_positive_rate}] ({stats.positives}/{stats.samples})"
            )
    all_dates = sorted({day for stats in spec.splits.values() for day in stats.dates})
    if date not in all_dates:
        shown = f"{all_dates[0]}..{all_dates[-1]}" if all_dates else "none"
        problems.append(f"run date {date} has no samples (spec dates: {shown})")
    for table, relative in sorted(spec.tables.items()):
        if not (root / relative / "_delta_log").is_dir():
            problems.append(f"table {table!r}: no Delta table at {root / relative}")
    if problems:
        raise ReleaseError(f"validate {root} for {date}: " + "; ".join(problems))
    return {
        "root": str(root),
        "date": date,
        "protocol": spec.protocol,
        "splits": {
            name: {
                "samples": stats.samples,
                "positives": stats.positives,
                "positive_rate": round(stats.positive_rate, 6),
            }
            for name, stats in spec.splits.items()
        },
    }


# --------------------------------------------------------------------------- evaluate


def read_metrics(run_dir: str | Path) -> dict:
    """`RUN_DIR/metrics.json`, checked: required keys present, AUC in [0, 1], numbers finite."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        raise ReleaseError(f"no {METRICS_FILE} in {run_dir}: did the trainer finish?")
    try:
        metrics = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ReleaseError(f"{path} is not valid JSON: {error}") from error
    missing = [key for key in REQUIRED_METRICS if key not in metrics]
    if missing:
        raise ReleaseError(f"{path}: missing {missing}")
    for key in ("auc", "gauc", "logloss"):
        value = metrics[key]
        if not isinstance(value, int | float) or not math.isfinite(value):
            raise ReleaseError(f"{path}: {key}={value!r} is not a finite number")
    if not 0.0 <= metrics["auc"] <= 1.0:
        raise ReleaseError(f"{path}: auc={metrics['auc']} outside [0, 1]")
    if int(metrics["n_test"]) <= 0:
        raise ReleaseError(f"{path}: n_test={metrics['n_test']}: nothing was evaluated")
    return metrics


def evaluate(run_dir: str | Path) -> dict:
    metrics = read_metrics(run_dir)
    keys = ("model", "auc", "gauc", "logloss", "n_train", "n_test", "train_samples_per_sec")
    return {"run_dir": str(run_dir), **{key: metrics[key] for key in keys if key in metrics}}


# --------------------------------------------------------------------------- gate


def published_run(published: str | Path) -> Path | None:
    """The run directory the `published` link points to, or None before the first publish."""
    published = Path(published)
    if not published.is_symlink() and not published.exists():
        return None
    if not published.is_symlink():
        raise ReleaseError(f"{published} exists but is not a symlink; refusing to guess")
    target = published.resolve()
    if not target.is_dir():
        raise ReleaseError(f"{published} points to {target}, which is not a directory")
    return target


def gate(
    run_dir: str | Path,
    published: str | Path,
    tolerance: float,
    published_scored: str | Path | None = None,
) -> GateDecision:
    """Publish when the new AUC >= the published model's AUC - tolerance; the first model passes.

    Two AUCs only compare on the same samples. `published_scored` is the directory of a
    `train.evaluate_only` run of the published model on this run's data (the DAG's
    `score_published` task): when its metrics.json exists, the published AUC comes from it, and it
    must have scored as many test samples as the candidate. Without it (a cold start after a change
    of model shapes cannot load the old weights into the new model) the published run's own
    metrics.json stands in, measured on an older test day, and the reason says so.
    """
    if tolerance < 0:
        raise ReleaseError(f"gate: tolerance must be >= 0, got {tolerance}")
    candidate_metrics = read_metrics(run_dir)
    candidate = candidate_metrics["auc"]
    current = published_run(published)
    if current is None:
        return GateDecision(True, "no published model yet", candidate, None, tolerance)
    if current == Path(run_dir).resolve():
        return GateDecision(True, "this run is already published", candidate, candidate, tolerance)
    if published_scored is not None and (Path(published_scored) / METRICS_FILE).is_file():
        scored = read_metrics(published_scored)
        if scored["n_test"] != candidate_metrics["n_test"]:
            raise ReleaseError(
                f"gate: the published model scored {scored['n_test']} test samples in "
                f"{published_scored}, the candidate {candidate_metrics['n_test']}: not the same "
                "test set"
            )
        incumbent, basis = scored["auc"], "both on this run's test split"
    else:
        incumbent = read_metrics(current)["auc"]
        basis = "published AUC from its own, older test day: it was not re-scored on this one"
    floor = incumbent - tolerance
    if candidate >= floor:
        reason = f"new AUC {candidate:.6f} >= published AUC {incumbent:.6f} - {tolerance} ({basis})"
        return GateDecision(True, reason, candidate, incumbent, tolerance)
    reason = (
        f"new AUC {candidate:.6f} < published AUC {incumbent:.6f} - tolerance {tolerance} = "
        f"{floor:.6f}; keeping {current} ({basis})"
    )
    return GateDecision(False, reason, candidate, incumbent, tolerance)


# --------------------------------------------------------------------------- publish


def publish(run_dir: str | Path, published: str | Path) -> dict:
    """Point `published` at `run_dir` atomically and append the switch to the history file.

    The new link is made under a temporary name and renamed over the old one (`rename(2)` is atomic
    on POSIX), so readers never see a missing or half-made link. The target is relative when the
    run lives next to the link, so the runs directory can be moved or synced as a whole.
    """
    run_dir = Path(run_dir).resolve()
    published = Path(published)
    metrics = read_metrics(run_dir)
    checkpoints = run_dir / CHECKPOINT_DIR
    # The trainer writes step_N.partial/ and renames it when complete: only finished ones count.
    if not checkpoints.is_dir() or not any(
        not path.name.endswith(".partial") for path in checkpoints.iterdir()
    ):
        raise ReleaseError(
            f"publish: {checkpoints} is missing or empty; nothing to warm-start from"
        )
    previous = published_run(published)
    published.parent.mkdir(parents=True, exist_ok=True)
    link_dir = published.parent.resolve()
    target = (
        os.path.relpath(run_dir, link_dir) if run_dir.is_relative_to(link_dir) else str(run_dir)
    )
    temporary = link_dir / f".{published.name}.{os.getpid()}.tmp"
    if temporary.is_symlink():
        temporary.unlink()
    os.symlink(target, temporary)
    os.replace(temporary, link_dir / published.name)
    record = {
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "run_dir": str(run_dir),
        "previous": str(previous) if previous else None,
        **{key: metrics[key] for key in ("model", "auc", "gauc", "logloss") if key in metrics},
    }
    with open(link_dir / f"{published.name}_history.jsonl", "a") as history:
        history.write(json.dumps(record, sort_keys=True) + "\n")
    return record


def warm_start_checkpoint(published: str | Path) -> str:
    """The published run's checkpoint directory (for `train.warm_start=`), or "" if none yet."""
    current = published_run(published)
    if current is None:
        return ""
    checkpoints = current / CHECKPOINT_DIR
    if not checkpoints.is_dir():
        raise ReleaseError(f"published run {current} has no {CHECKPOINT_DIR}/ to warm-start from")
    return str(checkpoints)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_dags.release", description=__doc__.split("\n")[0]
    )
    commands = parser.add_subparsers(dest="command", required=True)

    command = commands.add_parser("validate", help="check ROOT/feature_spec.json before training")
    command.add_argument("--root", required=True, help="the ETL's --output directory")
    command.add_argument(
        "--date", required=True, help="the run date (yyyy-MM-dd) that must have samples"
    )
    command.add_argument("--min-samples", type=int, default=100, help="per split")
    command.add_argument("--min-positive-rate", type=float, default=0.001)
    command.add_argument("--max-positive-rate", type=float, default=0.9)

    command = commands.add_parser("evaluate", help="read and check RUN_DIR/metrics.json")
    command.add_argument("--run-dir", required=True)

    command = commands.add_parser("gate", help="new AUC >= published AUC - tolerance?")
    command.add_argument("--run-dir", required=True)
    command.add_argument("--published", required=True, help="the published symlink")
    command.add_argument("--tolerance", type=float, default=0.002)
    command.add_argument(
        "--published-scored",
        help="run dir of a train.evaluate_only run of the published model on this run's data",
    )
    command.add_argument(
        "--on-reject",
        choices=("skip", "fail"),
        default="skip",
        help=f"exit {SKIP_EXIT_CODE} (Airflow: task and publish skipped) or 1 (task failed)",
    )

    command = commands.add_parser("publish", help="switch the published symlink to RUN_DIR")
    command.add_argument("--run-dir", required=True)
    command.add_argument("--published", required=True)

    command = commands.add_parser("warm-start", help="print the published checkpoint dir, or ''")
    command.add_argument("--published", required=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "validate":
            result = validate_data(
                args.root,
                args.date,
                args.min_samples,
                args.min_positive_rate,
                args.max_positive_rate,
            )
        elif args.command == "evaluate":
            result = evaluate(args.run_dir)
        elif args.command == "gate":
            decision = gate(args.run_dir, args.published, args.tolerance, args.published_scored)
            verdict = "PASS" if decision.publish else "REJECT"
            print(f"gate {verdict}: {decision.reason}", file=sys.stderr)
            print(json.dumps(decision.__dict__, sort_keys=True))
            if decision.publish:
                return 0
            return SKIP_EXIT_CODE if args.on_reject == "skip" else 1
        elif args.command == "publish":
            result = publish(args.run_dir, args.published)
            print(
                f"published {result['run_dir']} (previous: {result['previous']})", file=sys.stderr
            )
        else:
            print(warm_start_checkpoint(args.published))
            return 0
    except ReleaseError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
