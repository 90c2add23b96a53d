"""Tune one model's learning rates on the validation split, then write the best config as a preset.

    python -m experiments.tune --data ROOT --model cain --trials 20 [--output DIR]
        [--metric auc|gauc|logloss] [--epochs 3] [--validation-days 1] [--config PRESET ...]
        [--max-len L] [--nproc 2] [key=value ...]
    torchrun --standalone --nproc_per_node=2 trainer/main.py --data ROOT --model cain \
        --config DIR/best.yaml                          # train with the tuned settings

Each trial is one `torchrun trainer/main.py` run (experiments.run.launch) in DIR/trial_NNNN/ with
`data.validation_days` held out of the train split; its score is the validation metric of the
epoch the trainer selected (best_step in metrics.json, by the same metric), **never the test
split**. Optuna's TPE sampler (seeded) proposes the trials; the study lives in DIR/study.db
(SQLite), so rerunning the same command continues it: finished trials are kept, a trial that was
interrupted is run again with the same parameters, and only the missing trials run.

The search space, and why (trainer/config.py, model configs):
- `train.sparse_lr` log-uniform in [0.01, 3]: the fused row-wise Adagrad of the embedding tables,
  the most sensitive setting measured so far (demo data, one epoch: AUC 0.545 at 0.01, 0.787 at
  0.5, 0.627 at 2.0, conf/train/default.yaml) and data dependent (a long-tail catalog updates
  most rows once or twice).
- `train.dense_lr` log-uniform in [1e-4, 1e-2]: Adam on the dense arch (paper: 1e-3).
- `train.lr_schedule` constant or cosine (to 0.1 x): with several epochs the decay matters.
The number of epochs is chosen by the validation split too: up to `--epochs`, with early stopping
after one epoch without improvement and the best epoch restored. Model sizes and the models'
own switches are left out on purpose: the paper's tables compare models at fixed sizes, and a
switch such as CAIN's context length is what an experiment measures, not a nuisance to tune.

DIR/best.yaml: the base presets merged with the best trial's settings and the validation-split
settings (no data root, no output: pass --data and --output as usual); DIR/best.json: its
trial, score and parameters; DIR/trials.md: every finished trial.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml

from contract.config import load_yaml, merge, parse_override, set_dotted
from contract.feature_spec import FeatureSpec
from experiments.run import DEFAULT_CONFIG, SettingsChanged, finished_metrics, launch
from trainer.config import load_config

STUDY_NAME = "tune"
SEARCH_SPACE = ("train.sparse_lr", "train.dense_lr", "train.lr_schedule")


@dataclass(frozen=True)
class TuneSettings:
    """Args:
    data: the ETL's output root.
    model: a registered model name.
    output: the study directory.
    trials: how many finished trials the study should hold.
    metric: the validation metric to optimise (auc and gauc up, logloss down).
    epochs: the most epochs a trial trains (the best one is selected on validation).
    validation_days: last train dates held out as the validation split.
    configs: trainer YAML presets under the tuned settings.
    max_len: L (data.max_history); None keeps the tables' max_len.
    overrides: fixed trainer key=value overrides (sizes, steps).
    nproc: processes per trial.
    seed: seeds the sampler and every trial's train.seed.
    timeout: seconds one trial may take.
    """

    data: Path
    model: str
    output: Path
    trials: int
    metric: str = "auc"
    epochs: int = 3
    validation_days: int = 1
    configs: tuple[Path, ...] = (DEFAULT_CONFIG,)
    max_len: int | None = None
    overrides: tuple[str, ...] = ()
    nproc: int = 2
    seed: int = 1
    timeout: int = 6 * 3600

    @property
    def direction(self) -> str:
        return "minimize" if self.metric == "logloss" else "maximize"


def suggest(trial: optuna.Trial) -> dict[str, Any]:
    """One point of the search space (module docstring), keyed by trainer override."""
    return {
        "train.sparse_lr": trial.suggest_float("train.sparse_lr", 0.01, 3.0, log=True),
        "train.dense_lr": trial.suggest_float("train.dense_lr", 1e-4, 1e-2, log=True),
        "train.lr_schedule": trial.suggest_categorical("train.lr_schedule", ["constant", "cosine"]),
    }


def fixed_settings(settings: TuneSettings) -> dict[str, Any]:
    """Trainer settings every trial shares (and best.yaml keeps): validation and epochs."""
    values: dict[str, Any] = {
        "data.validation_days": settings.validation_days,
        "train.epochs": settings.epochs,
        "train.early_stopping_patience": 1,
        "train.restore_best": True,
        "train.selection_metric": settings.metric,
        "train.seed": settings.seed,
    }
    if settings.max_len is not None:
        tables = FeatureSpec.read(str(settings.data)).max_len
        values["data.max_history"] = min(settings.max_len, tables)
    return values


def validation_score(metrics: dict[str, Any], metric: str) -> float:
    """The selected epoch's validation metric (the epoch whose weights the run keeps)."""
    history = metrics.get("validation_history") or []
    selected = [entry for entry in history if entry.get("step") == metrics.get("best_step")]
    entry = selected[-1] if selected else metrics.get("validation")
    if not entry or entry.get(metric) is None:
        raise ValueError("the run has no validation score (is data.validation_days >= 1?)")
    return float(entry[metric])


def trial_arguments(settings: TuneSettings, params: dict[str, Any], run_dir: Path) -> list[str]:
    arguments = ["--data", str(settings.data), "--model", settings.model, "--output", str(run_dir)]
    for config in settings.configs:
        arguments += ["--config", str(config)]
    values = {**fixed_settings(settings), **params}
    return [
        *arguments,
        *(f"{key}={value}" for key, value in values.items()),
        "train.progress=false",
        *settings.overrides,
    ]


def objective(settings: TuneSettings, log):
    def run_trial(trial: optuna.Trial) -> float:
        params = suggest(trial)
        run_dir = settings.output / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        code = launch(
            trial_arguments(settings, params, run_dir), run_dir, settings.nproc, settings.timeout
        )
        metrics = finished_metrics(run_dir)
        if code != 0 or metrics is None:
            raise RuntimeError(f"trial {trial.number} failed (exit {code}): {run_dir}/train.log")
        score = validation_score(metrics, settings.metric)
        log(
            f"trial {trial.number}: validation {settings.metric}={score:.4f} "
            + " ".join(f"{key}={value}" for key, value in params.items())
        )
        return score

    return run_trial


class StudyMismatch(Exception):
    """The study stored in OUTPUT/study.db optimizes in the other direction."""


def open_study(settings: TuneSettings) -> optuna.Study:
    settings.output.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=STUDY_NAME,
        storage=f"sqlite:///{settings.output / 'study.db'}",
        direction=settings.direction,
        sampler=optuna.samplers.TPESampler(seed=settings.seed),
        load_if_exists=True,
    )
    wanted = optuna.study.StudyDirection[settings.direction.upper()]
    if study.direction != wanted:  # load_if_exists keeps the stored direction
        raise StudyMismatch(
            f"{settings.output / 'study.db'} {study.direction.name.lower()}s its metric, this "
            f"command {settings.direction}s {settings.metric}: tune into another --output"
        )
    # A trial left RUNNING was interrupted: close it as failed and run its parameters again.
    for trial in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        study.enqueue_trial(trial.params, skip_if_exists=False)
    return study


def tune(settings: TuneSettings, log=print) -> optuna.Study:
    """Run the missing trials of the study and write best.yaml / best.json / trials.md."""
    study = open_study(settings)
    done = len(study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)))
    remaining = max(settings.trials - done, 0)
    log(f"[tune] {settings.model}: {done} trials finished, {remaining} to run -> {settings.output}")
    for _ in range(remaining):
        study.optimize(objective(settings, log), n_trials=1, catch=(RuntimeError, ValueError))
    write_best(study, settings)
    return study


def best_preset(study: optuna.Study, settings: TuneSettings) -> dict[str, Any]:
    """The base presets with the best trial's settings on top, in the trainer's YAML layout."""
    values = merge(*[load_yaml(path) for path in settings.configs])
    model = dict(values.get("model") or {})
    model["name"] = settings.model
    values["model"] = model
    overrides = [parse_override(text) for text in settings.overrides]
    for key, value in [
        *fixed_settings(settings).items(),
        *overrides,
        *study.best_trial.params.items(),
    ]:
        if key.split(".")[0] in ("data", "model", "train"):
            set_dotted(values, key, value)
    for key in ("root", "version"):
        values.get("data", {}).pop(key, None)
    values.pop("output", None)
    return values


def write_best(study: optuna.Study, settings: TuneSettings) -> Path | None:
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    lines = [
        f"# tune {settings.model}: validation {settings.metric} ({settings.direction})",
        "",
        "| trial | validation | " + " | ".join(SEARCH_SPACE) + " | run |",
        "|" + "---|" * (len(SEARCH_SPACE) + 3),
    ]
    for trial in finished:
        lines.append(
            f"| {trial.number} | {trial.value:.4f} | "
            + " | ".join(str(trial.params.get(name)) for name in SEARCH_SPACE)
            + f" | {trial.user_attrs.get('run_dir')} |"
        )
    (settings.output / "trials.md").write_text("\n".join(lines) + "\n")
    if not finished:
        return None
    preset = best_preset(study, settings)
    path = settings.output / "best.yaml"
    header = (
        f"# experiments.tune: best of {len(finished)} trials of {settings.model} by "
        f"validation {settings.metric} = {study.best_value:.4f} (trial "
        f"{study.best_trial.number}); data {settings.data}\n"
    )
    path.write_text(header + yaml.safe_dump(preset, sort_keys=False))
    load_config([path], [f"data.root={settings.data}"])  # the trainer must accept it
    (settings.output / "best.json").write_text(
        json.dumps(
            {
                "trial": study.best_trial.number,
                "metric": settings.metric,
                "validation": study.best_value,
                "params": study.best_trial.params,
                "run_dir": study.best_trial.user_attrs.get("run_dir"),
                "preset": str(path),
            },
            indent=1,
        )
    )
    return path


def parse_arguments(argv: list[str] | None = None) -> TuneSettings:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.tune",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--data", required=True, help="ETL output root")
    parser.add_argument("--model", required=True, help="registered model name")
    parser.add_argument("--trials", type=int, required=True, help="finished trials wanted")
    parser.add_argument("--output", help="study directory (default runs/tune/MODEL)")
    parser.add_argument("--metric", choices=("auc", "gauc", "logloss"), default="auc")
    parser.add_argument("--epochs", type=int, default=3, help="most epochs per trial")
    parser.add_argument("--validation-days", type=int, default=1)
    parser.add_argument("--config", action="append", help="base trainer preset(s)")
    parser.add_argument("--max-len", type=int, help="history length L (data.max_history)")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per trial")
    parser.add_argument("overrides", nargs="*", help="fixed trainer key=value overrides")
    arguments = parser.parse_intermixed_args(argv)
    if arguments.trials < 1 or arguments.epochs < 1 or arguments.validation_days < 1:
        parser.error("--trials, --epochs and --validation-days must be >= 1")
    tuned = [text for text in arguments.overrides if text.split("=")[0] in SEARCH_SPACE]
    if tuned:
        parser.error(f"{', '.join(tuned)}: tuned by the study, not a fixed override")
    return TuneSettings(
        data=Path(arguments.data).resolve(),
        model=arguments.model,
        output=Path(arguments.output or Path("runs") / "tune" / arguments.model).resolve(),
        trials=arguments.trials,
        metric=arguments.metric,
        epochs=arguments.epochs,
        validation_days=arguments.validation_days,
        configs=tuple(Path(c).resolve() for c in (arguments.config or [DEFAULT_CONFIG])),
        max_len=arguments.max_len,
        overrides=tuple(arguments.overrides),
        nproc=arguments.nproc,
        seed=arguments.seed,
        timeout=arguments.timeout,
    )


def main(argv: list[str] | None = None) -> int:
    settings = parse_arguments(argv)
    try:
        study = tune(settings, log=lambda line: print(line, flush=True))
    except (SettingsChanged, StudyMismatch) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not study.get_trials(states=(optuna.trial.TrialState.COMPLETE,)):
        print("[tune] no trial finished", file=sys.stderr)
        return 1
    best = study.best_trial
    value = best.value if best.value is not None else math.nan
    print(
        f"[tune] best trial {best.number}: validation {settings.metric}={value:.4f} "
        f"{best.params} -> {settings.output / 'best.yaml'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
