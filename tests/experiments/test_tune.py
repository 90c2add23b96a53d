"""The tuning tool on tiny tables: real trainer trials scored on validation, resumable study,
a best preset the trainer accepts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import optuna
import pytest

from experiments import tune
from trainer.config import load_config
from trainer.synthetic_samples import write_synthetic_samples

TINY = (
    "model.embedding_dim=8",
    "model.mlp_dims=[16,8]",
    "train.batch_size=64",
    "train.eval_batch_size=256",
    "data.shuffle_buffer_rows=32",
    "data.read_rows=16",
)


def test_the_score_is_the_selected_epochs_validation_metric():
    metrics = {
        "auc": 0.99,  # test: never used
        "best_step": 10,
        "validation": {"step": 20, "auc": 0.61},
        "validation_history": [{"step": 10, "auc": 0.70}, {"step": 20, "auc": 0.61}],
    }
    assert tune.validation_score(metrics, "auc") == 0.70
    with pytest.raises(ValueError, match="no validation score"):
        tune.validation_score({"auc": 0.9, "validation": None}, "auc")


@pytest.mark.distributed
def test_a_study_runs_scores_on_validation_resumes_and_writes_a_preset(tmp_path):
    data = tmp_path / "data"
    write_synthetic_samples(data, users=24, days=4, max_len=30, seed=6)
    output = tmp_path / "study"

    def settings(trials: int) -> tune.TuneSettings:
        return tune.TuneSettings(
            data=data,
            model="lap",
            output=output,
            trials=trials,
            epochs=2,
            overrides=TINY,
            nproc=1,
            timeout=300,
        )

    lines: list[str] = []
    study = tune.tune(settings(2), log=lines.append)
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(finished) == 2
    for trial in finished:
        metrics = json.loads((Path(trial.user_attrs["run_dir"]) / "metrics.json").read_text())
        assert metrics["validation_history"]  # a validation split was held out
        assert trial.value == tune.validation_score(metrics, "auc")
        config = (Path(trial.user_attrs["run_dir"]) / "config.yaml").read_text()
        assert "validation_days: 1" in config
        assert f"sparse_lr: {trial.params['train.sparse_lr']}" in config

    # An interrupted trial (left RUNNING) is closed and its parameters run again.
    interrupted = study.ask()
    tune.suggest(interrupted)
    lines.clear()
    study = tune.tune(settings(3), log=lines.append)
    complete = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert len(complete) == 3 and "2 trials finished, 1 to run" in lines[0]
    assert complete[-1].params == interrupted.params
    assert study.trials[interrupted.number].state == optuna.trial.TrialState.FAIL

    # Enough trials already: nothing runs.
    lines.clear()
    tune.tune(settings(3), log=lines.append)
    assert lines == [f"[tune] lap: 3 trials finished, 0 to run -> {output}"]

    best = json.loads((output / "best.json").read_text())
    assert best["validation"] == max(t.value for t in complete)
    config = load_config([output / "best.yaml"], [f"data.root={data}"])
    assert config.model.name == "lap" and config.data.validation_days == 1
    assert config.train.sparse_lr == pytest.approx(best["params"]["train.sparse_lr"])
    assert config.train.dense_lr == pytest.approx(best["params"]["train.dense_lr"])
    assert config.model.options["embedding_dim"] == 8  # the fixed overrides are kept

    # The stored study maximizes AUC: minimizing logloss there would mix both scores.
    with pytest.raises(tune.StudyMismatch, match="maximizes its metric, this command minimizes"):
        tune.tune(dataclasses.replace(settings(4), metric="logloss"), log=lines.append)


def test_tuned_settings_cannot_be_fixed_overrides(tmp_path):
    with pytest.raises(SystemExit):
        tune.parse_arguments(
            ["--data", str(tmp_path), "--model", "lap", "--trials", "2", "train.sparse_lr=0.1"]
        )
