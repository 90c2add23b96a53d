"""The runner end to end on tiny tables: real torchrun trainer runs, results, resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from experiments import run
from experiments.suites import Suite, Variant
from trainer.synthetic_samples import write_synthetic_samples

pytestmark = pytest.mark.distributed

TINY = (
    "model.embedding_dim=8",
    "model.mlp_dims=[16,8]",
    "train.batch_size=64",
    "train.eval_batch_size=256",
    "train.max_steps=3",
    "data.shuffle_buffer_rows=32",
    "data.read_rows=16",
)
SUITE = Suite(
    "tiny",
    "two variants of a figure",
    baseline="no_context",
    variants=(
        Variant("no_context", "lap_tcn", ("model.context_length=-1",), x=-1),
        Variant("context_1", "lap_tcn", ("model.context_length=1",), x=1),
    ),
    overrides=(),
    max_len=12,
    x_label="context length",
)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tiny_samples")
    write_synthetic_samples(root, users=24, days=3, max_len=30, seed=4)
    return root


def settings(data: Path, output: Path) -> run.RunSettings:
    return run.RunSettings(
        data=data, output=output, seeds=(1, 2), overrides=TINY, nproc=1, timeout=300
    )


def test_a_suite_runs_every_variant_and_seed_then_resumes(data, tmp_path, monkeypatch):
    lines: list[str] = []
    runs, failed = run.run_suite(SUITE, settings(data, tmp_path), log=lines.append)
    assert failed == [] and len(runs) == 4
    for variant in SUITE.variants:
        for seed in (1, 2):
            directory = tmp_path / variant.name / f"seed_{seed}"
            metrics = json.loads((directory / "metrics.json").read_text())
            assert metrics["seed"] == seed and metrics["model"] == "lap_tcn"
            assert metrics["steps"] == 3
            config = (directory / "config.yaml").read_text()
            assert "max_history: 12" in config and f"seed: {seed}" in config
    assert all("ETA" in line for line in lines)  # one progress line per run
    results = json.loads((tmp_path / "results.json").read_text())
    assert {(r["variant"], r["seed"]) for r in results["runs"]} == {
        (v.name, s) for v in SUITE.variants for s in (1, 2)
    }
    assert "| context_1 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "tiny.png").exists()
    # Two seeds really are two different runs.
    first, second = (
        json.loads((tmp_path / "context_1" / f"seed_{s}" / "metrics.json").read_text())["logloss"]
        for s in (1, 2)
    )
    assert first != second

    # Resume: nothing runs again; one deleted result is run again, alone.
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*/seed_*/metrics.json")}
    lines.clear()
    runs, failed = run.run_suite(SUITE, settings(data, tmp_path), log=lines.append)
    assert len(runs) == 4 and all("skipped" in line for line in lines)
    assert stamps == {path: path.stat().st_mtime_ns for path in stamps}
    (tmp_path / "context_1" / "seed_2" / "metrics.json").unlink()
    lines.clear()
    runs, failed = run.run_suite(SUITE, settings(data, tmp_path), log=lines.append)
    assert len(runs) == 4 and sum("skipped" in line for line in lines) == 3
    assert (tmp_path / "context_1" / "seed_2" / "metrics.json").exists()

    # A runner killed during a run has already written the table of the runs finished so far,
    # the skipped ones included.
    (tmp_path / "context_1" / "seed_2" / "metrics.json").unlink()
    (tmp_path / "results.json").unlink()

    def killed(*arguments):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "launch", killed)
    with pytest.raises(KeyboardInterrupt):
        run.run_suite(SUITE, settings(data, tmp_path), log=lines.append)
    monkeypatch.undo()
    results = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["variant"], r["seed"]) for r in results["runs"]) == [
        ("context_1", 1), ("no_context", 1), ("no_context", 2)]
    runs, failed = run.run_suite(SUITE, settings(data, tmp_path), log=lines.append)
    assert failed == [] and len(runs) == 4

    # Other settings into the same output: refused before anything runs (a finished run would
    # be skipped, an unfinished one resumed, under the old settings).
    stamps = {path: path.stat().st_mtime_ns for path in tmp_path.glob("*/seed_*/*.json")}
    changed = dataclasses.replace(settings(data, tmp_path), overrides=(*TINY, "train.seed=9"))
    with pytest.raises(run.SettingsChanged, match=r"train.seed=9.*another --output"):
        run.run_suite(SUITE, changed, log=lines.append)
    assert stamps == {path: path.stat().st_mtime_ns for path in stamps}

    # A finished run whose metrics are undefined (null, e.g. a diverged model) is a failed run,
    # not a row of the table.
    path = tmp_path / "context_1" / "seed_1" / "metrics.json"
    metrics = json.loads(path.read_text())
    reason = "4 of 96 predictions are NaN or infinite (the model diverged)"
    metrics.update(auc=None, undefined={"auc": reason})
    path.write_text(json.dumps(metrics))
    lines.clear()
    runs, failed = run.run_suite(SUITE, settings(data, tmp_path), log=lines.append)
    assert failed == [f"context_1/seed_1 (auc null: {reason})"] and len(runs) == 3
    run.write_results(SUITE, settings(data, tmp_path), runs, failed)
    assert "context_1/seed_1" in (tmp_path / "results.md").read_text()


def test_a_failed_run_is_reported_and_the_rest_still_run(data, tmp_path):
    broken = Suite(
        "broken",
        "one bad variant",
        baseline="good",
        variants=(Variant("good", "lap"), Variant("bad", "lap", ("model.no_such_key=1",))),
        overrides=(),
    )
    lines: list[str] = []
    runs, failed = run.run_suite(
        broken,
        run.RunSettings(
            data=data, output=tmp_path, seeds=(1,), overrides=TINY, nproc=1, timeout=300
        ),
        log=lines.append,
    )
    assert failed == ["bad/seed_1"] and [r.variant for r in runs] == ["good"]
    assert "no_such_key" in (tmp_path / "bad" / "seed_1" / "train.log").read_text()


def test_a_suite_run_a_few_variants_at_a_time_gets_one_table(data, tmp_path):
    """--variants context_1, then --variants context_3 into the same DIR: the second table also
    holds context_1's runs (same settings); a run launched with other settings stays out."""
    suite = dataclasses.replace(SUITE, variants=(
        *SUITE.variants, Variant("context_3", "lap_tcn", ("model.context_length=3",), x=3)))
    first = dataclasses.replace(settings(data, tmp_path), seeds=(1,), variants=("context_1",))
    runs, failed = run.run_suite(suite, first, log=[].append)
    assert failed == [] and {r.variant for r in runs} == {"no_context", "context_1"}
    assert not (tmp_path / "context_3").exists()

    second = dataclasses.replace(first, variants=("context_3",))
    lines: list[str] = []
    runs, failed = run.run_suite(suite, second, log=lines.append)
    assert {r.variant for r in runs} == {"no_context", "context_1", "context_3"}
    assert "in the table too: 1 finished runs of context_1" in lines[0]
    run.write_results(suite, second, runs, failed)
    table = (tmp_path / "results.md").read_text()
    assert all(f"| {name} |" in table for name in ("no_context", "context_1", "context_3"))
    assert "also in the table: the runs of context_1" in table

    launched = tmp_path / "context_1" / "seed_1" / "launch.json"
    other = json.loads(launched.read_text())
    other["arguments"].append("train.dense_lr=0.5")
    launched.write_text(json.dumps(other))
    runs, failed = run.run_suite(suite, second, log=[].append)
    assert {r.variant for r in runs} == {"no_context", "context_3"}


def test_cli_arguments_build_the_settings(tmp_path):
    suite, settings_ = run.parse_arguments(
        [
            "fig5",
            "--data",
            str(tmp_path),
            "--seeds",
            "3",
            "--max-len",
            "64",
            "--epochs",
            "2",
            "model.embedding_dim=32",
        ]
    )
    assert suite.name == "fig5" and settings_.seeds == (1, 2, 3) and settings_.max_len == 64
    assert settings_.variants is None
    assert settings_.overrides == ("train.epochs=2", "model.embedding_dim=32")
    arguments = run.trainer_arguments(suite, suite.variants[0], 2, settings_, 1024)
    assert arguments[arguments.index("--model") + 1] == "lap_tcn"
    assert "data.max_history=64" in arguments
    assert (
        "data.max_history=30" in run.trainer_arguments(suite, suite.variants[0], 2, settings_, 30)
        and "train.seed=2" in arguments
    )
    assert arguments[-1] == "model.embedding_dim=32"  # user overrides win


def test_a_run_past_its_timeout_is_stopped_with_every_rank(data, tmp_path):
    import subprocess

    directory = tmp_path / "slow"
    arguments = ["--data", str(data), "--model", "lap", "--output", str(directory), *TINY]
    assert run.launch(arguments, directory, nproc=2, timeout=3) == 124
    assert "stopped after 3 s" in (directory / "train.log").read_text()
    left = subprocess.run(["pgrep", "-f", str(directory)], capture_output=True, text=True)
    assert left.stdout == ""  # neither torchrun nor a rank outlives the runner


def test_planted_metrics_score_exactly_the_target_candidates(data, tmp_path):
    from deltalake import DeltaTable

    from experiments import planted_metrics

    rows = DeltaTable(str(data / "samples")).to_pyarrow_table().to_pylist()
    test_items = [
        (row["user_id"], item, label)
        for row in rows
        if row["split"] == "test"
        for item, label in zip(row["candidate_item_id"], row["candidate_label"], strict=True)
    ]
    positives = sorted({item for _, item, label in test_items if label == 1})
    targets = set(positives[:40])  # "targets": items with a click, so both labels occur
    design = tmp_path / "planted.json"
    design.write_text(
        json.dumps(
            {
                "strength": 0.4,
                "pairs": [{"first": 0, "second": 0, "target": item} for item in sorted(targets)],
                "active_users": list(range(1, 13)),
            }
        )
    )
    directory = tmp_path / "run"
    arguments = ["--data", str(data), "--model", "lap", "--output", str(directory), *TINY]
    assert run.launch(arguments, directory, nproc=1, timeout=300) == 0
    settings_ = run.RunSettings(data=data, output=tmp_path, seeds=(1,), planted_design=design)
    metrics = run.with_planted_metrics(directory, {"auc": 0.5}, settings_)
    result = json.loads((directory / planted_metrics.RESULT_FILE).read_text())
    chosen = [(user, label) for user, item, label in test_items if item in targets]
    assert result["target_auc_samples"] == len(chosen)
    assert result["target_auc_active_samples"] == sum(user <= 12 for user, _ in chosen)
    assert 0.0 <= result["target_auc"] <= 1.0
    assert metrics["target_auc"] == result["target_auc"] and metrics["auc"] == 0.5


def test_planted_metrics_score_the_selected_checkpoint_not_the_newest(data, tmp_path):
    """With `train.restore_best` a run ends on its best epoch's weights, an older checkpoint than
    its newest: SELECTED names them, and the target AUC must come from them, as the run's test
    metrics do."""
    from deltalake import DeltaTable

    from experiments import planted_metrics
    from trainer.checkpoint import SELECTED, Checkpoints

    rows = DeltaTable(str(data / "samples")).to_pyarrow_table().to_pylist()
    targets = {
        item for row in rows if row["split"] == "test" for item in row["candidate_item_id"]
    }
    directory = tmp_path / "run"
    arguments = ["--data", str(data), "--model", "lap", "--output", str(directory), *TINY]
    every_step = ["train.checkpoint_every=1", "train.keep_checkpoints=3"]
    assert run.launch([*arguments, *every_step], directory, nproc=1, timeout=300) == 0
    first, *_, newest = Checkpoints(directory / "checkpoints").complete()

    def scores_with_selected(name: str) -> dict:
        (directory / "checkpoints" / SELECTED).write_text(name + "\n")
        return planted_metrics.target_scores(directory, data, targets)

    at_newest = scores_with_selected(newest.name)
    at_first = scores_with_selected(first.name)
    assert len(at_first["logits"]) > 0
    assert (at_first["users"] == at_newest["users"]).all()  # the same candidates, in order
    assert not np.allclose(at_first["logits"], at_newest["logits"])  # other weights
    again = scores_with_selected(newest.name)["logits"]
    assert np.array_equal(again, at_newest["logits"])  # so the difference is the selection


def test_the_planted_rule_scores_the_test_targets_from_the_events_table(tmp_path):
    import pandas as pd
    from deltalake import write_deltalake

    from contract.feature_spec import FeatureSpec, SplitStats
    from experiments import planted_metrics

    first, second, target = 101, 102, 103
    design = {"strength": 0.4, "window": 1, "lag_min": 3, "lag_max": 6, "rate": 0.1,
              "pairs": [{"first": first, "second": second, "target": target}],
              "active_users": [1, 2]}

    def user(user_id: int, items: list[int], clicked: bool, date: str) -> list[dict]:
        behaviors = [1] * (len(items) - 1) + [2 if clicked else 1]  # the target comes last
        return [{"user_id": user_id, "item_id": item, "behavior": behavior, "ts": 1000 + t,
                 "date": date} for t, (item, behavior) in enumerate(zip(items, behaviors))]

    # Lags from the target: the triggers at lags 5 and 4 (adjacent, in the window 3..6) form the
    # pattern; at lags 6 and 3 they are 3 apart (> window 1); at lags 8 and 7 too far back.
    rows = (user(1, [first, second, 7, 8, 9, target], True, "2024-03-10")
            + user(2, [first, 7, 8, second, 9, 10, target], False, "2024-03-10")
            + user(3, [5, first, second, 7, 8, 9, target], True, "2024-03-10")
            + user(4, [first, second, 1, 2, 3, 4, 5, target], True, "2024-03-10")
            + user(5, [first, second, 7, 8, 9, target], False, "2024-03-09"))  # a train day
    write_deltalake(str(tmp_path / "events"), pd.DataFrame(rows))
    FeatureSpec(
        source="feed", protocol="feed_click", behaviors=("impression", "click"), num_users=5,
        num_items=20, num_categories=1, max_item_id=103, max_category_id=1, max_len=16,
        short_len=4, top_categories=1, dense_features=("n",),
        splits={"train": SplitStats(("2024-03-09",), 1, 1, 0),
                "test": SplitStats(("2024-03-10",), 4, 4, 3)},
        tables={"events": "events"},
    ).write(tmp_path)
    design_path = tmp_path / "planted.json"
    design_path.write_text(json.dumps(design))

    scores = planted_metrics.rule_scores(tmp_path, design)
    assert scores["users"].tolist() == [1, 2, 3, 4]
    assert scores["logits"].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert scores["labels"].tolist() == [1.0, 0.0, 1.0, 1.0]
    result = planted_metrics.rule_metrics(tmp_path, design_path)
    # positives score 1, 1, 0 against the one negative's 0: (1 + 1 + 0.5) / 3
    assert result["rule_target_auc"] == pytest.approx(2.5 / 3)
    assert result["rule_target_auc_active_samples"] == 2
    assert result["rule_target_auc_casual"] != result["rule_target_auc_casual"]  # one label: nan
