"""Unit tests of the release CLI (airflow_dags/release.py) the DAG's validate/evaluate/gate/publish
tasks call; pure Python in the main venv, no Airflow needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from airflow_dags import release
from contract.feature_spec import FeatureSpec, SplitStats


def write_spec(
    root: Path, test_date: str = "2017-12-03", positives: int = 50, samples: int = 1000
) -> None:
    (root / "samples" / "_delta_log").mkdir(parents=True, exist_ok=True)
    FeatureSpec(
        source="taobao",
        protocol="cain",
        behaviors=("pv", "cart", "fav", "buy"),
        num_users=10,
        num_items=100,
        num_categories=5,
        max_item_id=100,
        max_category_id=5,
        max_len=64,
        short_len=8,
        top_categories=3,
        dense_features=("n_pv",),
        splits={
            "train": SplitStats(("2017-11-25", "2017-11-26"), 100, samples, positives),
            "test": SplitStats((test_date,), 10, samples // 10, positives // 10),
        },
        tables={"samples": "samples"},
    ).write(root)


def make_run(path: Path, auc: float, checkpoint: str | None = "step_00000010") -> Path:
    path.mkdir(parents=True)
    metrics = {
        "model": "cain",
        "auc": auc,
        "gauc": auc - 0.05,
        "logloss": 0.2,
        "n_train": 10,
        "n_test": 5,
    }
    (path / "metrics.json").write_text(json.dumps(metrics))
    if checkpoint:
        (path / "checkpoints" / checkpoint).mkdir(parents=True)
    return path


def validate(root: Path, date: str = "2017-12-03", **overrides) -> dict:
    limits = {"min_samples": 10, "min_positive_rate": 0.01, "max_positive_rate": 0.5} | overrides
    return release.validate_data(root, date, **limits)


def test_validate_accepts_a_sane_spec(tmp_path):
    write_spec(tmp_path)
    assert validate(tmp_path)["splits"]["train"]["positive_rate"] == pytest.approx(0.05)


@pytest.mark.parametrize(
    ("spec", "limits", "message"),
    [
        ({"samples": 1000}, {"min_samples": 5000}, "samples < min_samples=5000"),
        ({"positives": 0}, {}, "positive rate 0.0000 outside"),
        ({"positives": 900}, {}, "positive rate 0.9000 outside"),
        ({"test_date": "2017-12-02"}, {}, "run date 2017-12-03 has no samples"),
    ],
)
def test_validate_rejects_insane_data_with_the_reason(tmp_path, spec, limits, message):
    write_spec(tmp_path, **spec)
    with pytest.raises(release.ReleaseError, match=message):
        validate(tmp_path, **limits)


def test_validate_reports_a_missing_spec_and_a_missing_table(tmp_path):
    with pytest.raises(release.ReleaseError, match="no feature spec"):
        validate(tmp_path)
    write_spec(tmp_path)
    (tmp_path / "samples" / "_delta_log").rmdir()
    with pytest.raises(release.ReleaseError, match="table 'samples': no Delta table"):
        validate(tmp_path)


def test_evaluate_requires_complete_finite_metrics(tmp_path):
    run = make_run(tmp_path / "run", auc=0.7)
    assert release.evaluate(run)["auc"] == 0.7
    (run / "metrics.json").write_text(json.dumps({"model": "cain", "auc": float("nan")}))
    with pytest.raises(release.ReleaseError, match="missing"):
        release.evaluate(run)
    with pytest.raises(release.ReleaseError, match="no metrics.json"):
        release.evaluate(tmp_path / "absent")


def test_gate_passes_the_first_model_and_applies_the_tolerance(tmp_path):
    published = tmp_path / "published"
    first = make_run(tmp_path / "d1", auc=0.700)
    assert release.gate(first, published, 0.002).reason == "no published model yet"
    release.publish(first, published)
    assert release.gate(make_run(tmp_path / "d2", auc=0.6985), published, 0.002).publish
    rejected = release.gate(make_run(tmp_path / "d3", auc=0.6975), published, 0.002)
    assert not rejected.publish and "< published AUC 0.700000" in rejected.reason


def test_gate_cli_exit_codes_skip_or_fail(tmp_path, capsys):
    published = tmp_path / "published"
    release.publish(make_run(tmp_path / "d1", auc=0.7), published)
    worse = make_run(tmp_path / "d2", auc=0.5)
    args = ["gate", "--run-dir", str(worse), "--published", str(published), "--tolerance", "0.01"]
    assert release.main(args) == release.SKIP_EXIT_CODE
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["publish"] is False
    assert release.main([*args, "--on-reject", "fail"]) == 1


def test_publish_switches_the_link_and_keeps_history(tmp_path):
    published = tmp_path / "published"
    first, second = make_run(tmp_path / "d1", 0.7), make_run(tmp_path / "d2", 0.71)
    release.publish(first, published)
    record = release.publish(second, published)
    assert published.is_symlink() and published.resolve() == second.resolve()
    assert not Path(published.readlink()).is_absolute()  # the runs directory stays relocatable
    assert record["previous"] == str(first.resolve())
    history = [
        json.loads(line) for line in (tmp_path / "published_history.jsonl").read_text().splitlines()
    ]
    assert [entry["run_dir"] for entry in history] == [str(first.resolve()), str(second.resolve())]
    assert first.is_dir()  # old runs are kept: rollback = publish it again
    assert (
        sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    )  # no temp link left


def test_publish_refuses_a_run_without_checkpoints_or_a_non_link(tmp_path):
    with pytest.raises(release.ReleaseError, match="missing or empty"):
        release.publish(make_run(tmp_path / "d1", 0.7, checkpoint=None), tmp_path / "published")
    with pytest.raises(release.ReleaseError, match="missing or empty"):  # an unfinished write
        release.publish(
            make_run(tmp_path / "d0", 0.7, "step_00000010.partial"), tmp_path / "published"
        )
    (tmp_path / "published").mkdir()
    with pytest.raises(release.ReleaseError, match="not a symlink"):
        release.publish(make_run(tmp_path / "d2", 0.7), tmp_path / "published")


def test_warm_start_is_the_published_checkpoint_dir(tmp_path):
    published = tmp_path / "published"
    assert release.warm_start_checkpoint(published) == ""
    run = make_run(tmp_path / "d1", 0.7)
    release.publish(run, published)
    assert release.warm_start_checkpoint(published) == str((run / "checkpoints").resolve())


def test_gate_compares_on_this_runs_test_split_when_the_published_model_was_rescored(tmp_path):
    published = tmp_path / "published"
    release.publish(make_run(tmp_path / "d1", auc=0.70), published)
    candidate = make_run(tmp_path / "d2", auc=0.66)
    # On day 2's data the published model only reaches 0.65: the candidate is better there.
    rescored = make_run(candidate / "published_scored", auc=0.65)
    decision = release.gate(candidate, published, 0.002, rescored)
    assert decision.publish and decision.published_auc == 0.65
    assert "both on this run's test split" in decision.reason
    fallback = release.gate(candidate, published, 0.002, tmp_path / "never_scored")
    assert not fallback.publish and "older test day" in fallback.reason
    other = json.loads((rescored / "metrics.json").read_text()) | {"n_test": 7}
    (rescored / "metrics.json").write_text(json.dumps(other))
    with pytest.raises(release.ReleaseError, match="not the same test set"):
        release.gate(candidate, published, 0.002, rescored)
