"""Real `torchrun` runs of trainer/main.py with DMP on gloo: metrics, checkpoints, resume, nodes.

Each run trains a tiny CAIN for a few steps on the session's tiny Delta tables.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from deltalake import DeltaTable

from contract.feature_spec import FeatureSpec
from tests.trainer.conftest import REPO_ROOT, TINY_OVERRIDES, main_in_process, torchrun
from trainer import main
from trainer.synthetic_samples import write_synthetic_samples

pytestmark = pytest.mark.distributed

METRIC_KEYS = {"model", "auc", "gauc", "logloss", "n_train", "n_test", "train_samples_per_sec"}


def _arguments(data, output, *overrides):
    return [
        "--data",
        str(data),
        "--model",
        "cain",
        "--output",
        str(output),
        *TINY_OVERRIDES,
        *overrides,
    ]


def _ok(process: subprocess.CompletedProcess) -> None:
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-6000:]


def _metrics(run_dir) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


@pytest.fixture(scope="module")
def reference_run(tiny_data, tmp_path_factory):
    """An uninterrupted 2-process run: 12 steps, checkpoints every 4."""
    run_dir = tmp_path_factory.mktemp("reference")
    process = torchrun(
        _arguments(tiny_data, run_dir, "train.max_steps=12", "train.checkpoint_every=4")
    )
    _ok(process)
    return run_dir, process


def test_two_process_run_writes_metrics_config_and_tensorboard(reference_run):
    run_dir, process = reference_run
    metrics = _metrics(run_dir)
    assert METRIC_KEYS <= set(metrics)
    assert metrics["world_size"] == 2 and metrics["steps"] == 12 and metrics["n_test"] > 0
    assert 0.0 <= metrics["auc"] <= 1.0 and metrics["gauc_users"] > 0
    assert "model=cain auc=" in process.stdout and "n_test=" in process.stdout
    assert (run_dir / "config.yaml").is_file()
    assert any((run_dir / "tb").iterdir())
    checkpoints = run_dir / "checkpoints"
    assert sorted(path.name for path in checkpoints.glob("step_*")) == [
        "step_00000008",
        "step_00000012",
    ]
    # No validation split: the run selects its last step (what scoring and warm starts take).
    assert (checkpoints / "SELECTED").read_text().strip() == "step_00000012"


def test_one_epoch_trains_on_every_train_sample(heavy_rows_data, tmp_path):
    """3 ranks get 3, 4 and 3 heavy rows: no rank's tail may be dropped to keep steps equal."""
    _ok(torchrun(_arguments(heavy_rows_data, tmp_path, "train.epochs=1"), nproc=3))
    spec = FeatureSpec.read(heavy_rows_data)
    assert _metrics(tmp_path)["n_train"] == spec.splits["train"].samples


def test_kill_minus_nine_then_relaunch_gives_the_same_metrics(tiny_data, tmp_path, reference_run):
    arguments = _arguments(tiny_data, tmp_path, "train.max_steps=12", "train.checkpoint_every=4")
    killed = torchrun(
        arguments, extra_env={"CAIN_FAULT_KILL_AT_STEP": "6", "CAIN_FAULT_KILL_RANK": "1"}
    )
    assert killed.returncode != 0
    assert not (tmp_path / "metrics.json").exists()
    resumed = torchrun(arguments)  # the same command
    _ok(resumed)
    metrics, reference = _metrics(tmp_path), _metrics(reference_run[0])
    assert metrics["resumed_from_step"] == 4
    for key in ("auc", "gauc", "logloss", "n_train", "n_test", "steps"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-6), key


def test_resume_on_one_process_continues_and_evaluates_like_two(tiny_data, tmp_path, reference_run):
    run_dir = reference_run[0]
    # Mid-run checkpoint, different world size: the sharded tables are resharded on load.
    shutil.copytree(
        run_dir / "checkpoints" / "step_00000008",
        tmp_path / "mid" / "checkpoints" / "step_00000008",
    )
    _ok(torchrun(_arguments(tiny_data, tmp_path / "mid", "train.max_steps=12"), nproc=1))
    assert _metrics(tmp_path / "mid")["resumed_from_step"] == 8
    # Final checkpoint: evaluation only; one process must reproduce the two-process metrics.
    shutil.copytree(
        run_dir / "checkpoints" / "step_00000012",
        tmp_path / "end" / "checkpoints" / "step_00000012",
    )
    _ok(torchrun(_arguments(tiny_data, tmp_path / "end", "train.max_steps=12"), nproc=1))
    single, double = _metrics(tmp_path / "end"), _metrics(run_dir)
    assert single["world_size"] == 1 and single["n_test"] == double["n_test"]
    for key in ("auc", "gauc", "logloss"):
        assert single[key] == pytest.approx(double[key], abs=1e-5), key


def test_corrupted_shard_is_an_error_naming_the_file(tiny_data, tmp_path, reference_run):
    shutil.copytree(reference_run[0] / "checkpoints", tmp_path / "checkpoints")
    for checkpoint in (tmp_path / "checkpoints").glob("step_*"):
        shard = checkpoint / "__1_0.distcp"
        shard.write_bytes(shard.read_bytes()[:-10])  # truncated
    process = torchrun(_arguments(tiny_data, tmp_path, "train.max_steps=16"))
    assert process.returncode != 0
    assert "__1_0.distcp" in process.stderr and "truncated or corrupted" in process.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_a_run_directory_with_checkpoints_refuses_a_fresh_run_and_other_data(
    tiny_data, tmp_path, reference_run, capfd
):
    """train.resume=false there would prune its own checkpoints (the earlier run's steps are
    newer); a resume on another version of the data would continue from a position in other
    files. Both stop before any work (pre-flight: run in this process, tests/trainer/
    test_run_errors.py has the launcher's side), exit code 2, the checkpoints untouched."""
    run_dir = tmp_path / "run"
    shutil.copytree(reference_run[0] / "checkpoints", run_dir / "checkpoints")
    before = sorted(path.name for path in (run_dir / "checkpoints").iterdir())
    changed = tmp_path / "data"
    shutil.copytree(tiny_data, changed)
    test_day = FeatureSpec.read(changed).splits["test"].dates[0]
    DeltaTable(str(changed / "samples")).delete(f"date = '{test_day}' AND user_id % 2 = 0")
    for data, overrides, message in (
        (tiny_data, ["train.resume=false"], "holds an earlier run's checkpoints"),
        (changed, [], "a resume continues from a position in its own data"),
    ):
        code, stderr = main_in_process(
            _arguments(data, run_dir, "train.max_steps=16", *overrides), capfd
        )
        ours = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert len(ours) == 1 and message in ours[0], stderr[-3000:]
        assert code == main.INPUT_ERROR
        assert sorted(path.name for path in (run_dir / "checkpoints").iterdir()) == before
        assert not (run_dir / "metrics.json").exists()


def test_a_diverging_loss_stops_every_rank_with_one_error_each(tiny_data, tmp_path):
    """Adam at 1e30 blows the weights up within a step or two: every rank stops at the same
    step with exit code 3 (none waits in a collective for the others), no metrics.json."""
    process = torchrun(
        _arguments(
            tiny_data, tmp_path, "train.max_steps=8", "train.dense_lr=1e30", "train.sparse_lr=1e30"
        )
    )
    # Both ranks write to the same stderr at once: their lines may interleave, so count the
    # messages, not the lines.
    steps = re.findall(r"error \(rank \d\): the training loss is NaN or infinite at step (\d+)",
                       process.stderr)
    assert len(steps) == 2 and steps[0] == steps[1], process.stderr[-3000:]
    # torchrun reports the first rank's exit code; it may stop the other before its own exit.
    assert "exitcode  : 3" in process.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_warm_start_on_next_day_data_with_new_ids_and_column_wise_sharding(
    next_day_data, tmp_path, reference_run
):
    # The next day's spec has more items, so the item table grows from 501 to 701 rows: the old
    # rows are copied, the new ones keep their fresh initialisation.
    process = torchrun(
        _arguments(
            next_day_data,
            tmp_path,
            "train.max_steps=4",
            f"train.warm_start={reference_run[0]}",
            "train.sharding_type=column_wise",
        )
    )
    _ok(process)
    log = process.stderr + process.stdout
    assert "warm start from" in log and "resized 501 -> 701 rows" in log
    assert _metrics(tmp_path)["steps"] == 4


def test_evaluate_only_scores_the_warm_start_weights_without_training(
    tiny_data, tmp_path, reference_run
):
    """The daily gate scores the published model on the candidate's test day this way."""
    _ok(
        torchrun(
            _arguments(
                tiny_data,
                tmp_path,
                "train.evaluate_only=true",
                f"train.warm_start={reference_run[0]}",
            )
        )
    )
    metrics, reference = _metrics(tmp_path), _metrics(reference_run[0])
    assert metrics["evaluate_only"] and metrics["steps"] == 0 and metrics["n_train"] == 0
    assert metrics["n_test"] == reference["n_test"]
    for key in ("auc", "gauc", "logloss"):
        assert metrics[key] == pytest.approx(reference[key], abs=1e-5), key
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_pipeline_matches_the_plain_loop_with_row_wise_sharding(tiny_data, tmp_path):
    results = {}
    for pipeline in ("false", "true"):
        run_dir = tmp_path / pipeline
        _ok(
            torchrun(
                _arguments(
                    tiny_data,
                    run_dir,
                    "train.max_steps=6",
                    "train.sharding_type=row_wise",
                    f"train.pipeline={pipeline}",
                    "train.grad_clip_norm=0.001",  # clips every step, in both loops
                )
            )
        )
        results[pipeline] = _metrics(run_dir)
    for key in ("auc", "gauc", "logloss", "n_train"):
        assert results["true"][key] == pytest.approx(results["false"][key], abs=1e-5), key


def test_a_model_without_side_features_trains_with_no_side_tables(tiny_data, tmp_path):
    """Its sparse arch has no behavior/time-gap/watch-time tables; the batches still carry those
    keys, which the sharded lookup (row-wise, pipelined) must skip."""
    _ok(
        torchrun(
            _arguments(
                tiny_data,
                tmp_path,
                "train.max_steps=4",
                "train.sharding_type=row_wise",
                "train.pipeline=true",
                "model.use_side_features=false",
            )
        )
    )
    metrics = _metrics(tmp_path)
    assert METRIC_KEYS <= set(metrics) and metrics["n_train"] > 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_nodes_with_one_process_each(tiny_data, tmp_path):
    port = _free_port()
    nodes = []
    for node_rank in (0, 1):
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=1",
            f"--node_rank={node_rank}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint=127.0.0.1:{port}",
            "--rdzv_id=cain-test",
        ]
        command = [
            *launcher,
            str(REPO_ROOT / "trainer" / "main.py"),
            *_arguments(tiny_data, tmp_path, "train.max_steps=4"),
        ]
        nodes.append(
            subprocess.Popen(
                command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
            )
        )
    outputs = [node.communicate(timeout=240) for node in nodes]
    for node, (stdout, stderr) in zip(nodes, outputs, strict=False):
        assert node.returncode == 0, stdout[-2000:] + stderr[-4000:]
    metrics = _metrics(tmp_path)
    assert metrics["world_size"] == 2 and metrics["steps"] == 4


def test_checkpoint_alone_rebuilds_the_model_for_scoring(tiny_data, reference_run):
    from trainer.metrics import compute_metrics
    from trainer.predict import Scorer, score_split

    run_dir = reference_run[0]
    scorer = Scorer.from_checkpoint(run_dir / "checkpoints" / "step_00000012")
    scores = score_split(scorer, str(tiny_data), "test", batch_size=256)
    metrics = compute_metrics(
        scores.column("label").to_numpy(),
        scores.column("logit").to_numpy(),
        scores.column("user_id").to_numpy(),
    )
    reference = _metrics(run_dir)
    assert metrics.samples == reference["n_test"]
    assert metrics.auc == pytest.approx(reference["auc"], abs=1e-5)
    assert metrics.logloss == pytest.approx(reference["logloss"], abs=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_single_gpu_run_with_nccl(tiny_data, tmp_path):
    _ok(
        torchrun(
            _arguments(tiny_data, tmp_path, "train.max_steps=4", "train.backend=nccl"), nproc=1
        )
    )
    assert _metrics(tmp_path)["steps"] == 4


def test_scoring_later_data_reads_that_datas_test_day(tmp_path, reference_run):
    """The checkpoint's spec names the test day it was evaluated on (2017-11-28); a later build's
    test day is 2017-11-29, where 2017-11-28 is a train day: 0 rows if the dates came from the
    checkpoint."""
    from trainer.data import SamplesTable, SplitView, view_samples
    from trainer.predict import Scorer, score_split

    later = tmp_path / "later"
    spec = write_synthetic_samples(later, users=48, days=5, max_len=30, seed=11)
    test_dates = spec.splits["test"].dates
    assert test_dates == ("2017-11-29",)
    scorer = Scorer.from_checkpoint(reference_run[0] / "checkpoints" / "step_00000012")
    assert scorer.builder.spec.splits["test"].dates == ("2017-11-28",)
    scores = score_split(scorer, str(later), "test", batch_size=256)
    files = SamplesTable.open(later, spec).files(test_dates)
    assert scores.num_rows == view_samples(files, SplitView("test", "test", test_dates), spec) > 0


def test_checkpoints_store_the_resolved_model_config_and_code_version(reference_run):
    from contract.config import to_plain
    from model.registry import resolve_config

    state = json.loads(
        (reference_run[0] / "checkpoints" / "step_00000012" / "trainer_state.json").read_text()
    )
    options = {"embedding_dim": 8, "mlp_dims": [32, 16]}  # TINY_OVERRIDES' model fields
    assert state["model_config"] == to_plain(resolve_config("cain", options))
    assert state["code_version"]


def test_warm_start_refuses_a_checkpoint_of_another_model_config(
    tiny_data, tmp_path, reference_run, capfd
):
    code, stderr = main_in_process(
        _arguments(
            tiny_data,
            tmp_path / "run",
            "train.max_steps=2",
            f"train.warm_start={reference_run[0]}",
            "model.context_length=3",  # the reference run used the default 7
        ),
        capfd,
    )
    assert code == main.INPUT_ERROR
    assert "context_length: 7 -> 3" in stderr
    assert not (tmp_path / "run").exists()


def test_validation_split_selects_an_epoch_and_the_report_uses_its_weights(tiny_data, tmp_path):
    from trainer.metrics import compute_metrics
    from trainer.predict import Scorer, score_split

    _ok(
        torchrun(
            _arguments(
                tiny_data,
                tmp_path,
                "data.validation_days=1",
                "data.max_history=5",  # scoring must cut the histories as training did
                "train.epochs=3",
                "train.early_stopping_patience=1",
                "train.dense_lr=0.02",
            )
        )
    )
    metrics = _metrics(tmp_path)
    history = metrics["validation_history"]
    assert 1 <= len(history) <= 3 and [entry["epoch"] for entry in history] == list(
        range(1, len(history) + 1)
    )
    best = min(history, key=lambda entry: entry["logloss"])
    assert (metrics["best_epoch"], metrics["best_step"]) == (best["epoch"], best["step"])
    assert metrics["restored_best"] == (best["step"] != metrics["steps"])
    # The validation day is never trained on: every epoch saw the other train days only.
    spec = FeatureSpec.read(tiny_data)
    assert metrics["data"]["samples"]["validation"] > 0
    assert metrics["data"]["samples"]["train"] + metrics["data"]["samples"]["validation"] == (
        spec.splits["train"].samples
    )
    assert metrics["n_train"] == metrics["data"]["samples"]["train"] * metrics["epochs_completed"]
    # The reported test metrics come from the selected checkpoint, which scoring takes too.
    selected = (tmp_path / "checkpoints" / "SELECTED").read_text().strip()
    assert selected == f"step_{best['step']:08d}"
    scores = score_split(Scorer.from_checkpoint(tmp_path), str(tiny_data), "test", 256)
    rescored = compute_metrics(
        scores.column("label").to_numpy(),
        scores.column("logit").to_numpy(),
        scores.column("user_id").to_numpy(),
    )
    assert rescored.auc == pytest.approx(metrics["auc"], abs=1e-5)


def test_validation_every_few_steps_selects_among_them(tiny_data, tmp_path):
    """train.validate_every: validations inside epochs too (9 steps an epoch here); one at an
    epoch's last step is that epoch's, not a second one; the best of all is selected."""
    _ok(
        torchrun(
            _arguments(
                tiny_data, tmp_path, "data.validation_days=1", "train.epochs=2",
                "train.validate_every=3", "train.keep_checkpoints=8",
            )
        )
    )
    metrics = _metrics(tmp_path)
    history = metrics["validation_history"]
    assert [(entry["step"], entry["epoch"]) for entry in history] == [
        (3, 0), (6, 0), (9, 1), (12, 1), (15, 1), (18, 2)
    ]
    best = min(history, key=lambda entry: entry["logloss"])
    assert (metrics["best_step"], metrics["best_epoch"]) == (best["step"], best["epoch"])
    selected = (tmp_path / "checkpoints" / "SELECTED").read_text().strip()
    assert selected == f"step_{best['step']:08d}"


def test_early_stopping_between_epoch_ends_stops_at_that_validation(tiny_data, tmp_path):
    _ok(
        torchrun(
            _arguments(
                tiny_data, tmp_path, "data.validation_days=1", "train.epochs=2",
                "train.validate_every=2", "train.early_stopping_patience=1",
                "train.dense_lr=0.05", "train.sparse_lr=0.5",
            )
        )
    )
    metrics = _metrics(tmp_path)
    history = metrics["validation_history"]
    assert metrics["stopped_early"], f"no validation without improvement in {history}"
    assert metrics["steps"] == history[-1]["step"] < 18  # stopped right there, inside the run
    assert history[-1]["logloss"] >= min(entry["logloss"] for entry in history[:-1])
    assert metrics["n_train"] < 2 * metrics["data"]["samples"]["train"]


def test_a_validation_plateau_reloads_the_best_weights_and_lowers_the_rates(tiny_data, tmp_path):
    """train.plateau_lr_factor: after an epoch that is not the best, training goes on from the
    best epoch's weights (the checkpoint saved at that epoch's end holds them) at factor x the
    rates; high constant rates on the tiny data overfit, so the validation logloss gets worse.
    (At dense_lr 0.05 with the cosine decay CAIN fell to the constant predictor once PEG's filters
    started from a global filter's init, and its logloss kept creeping down: no plateau.)"""
    from trainer.predict import Scorer, score_split

    settings = [
        "data.validation_days=1",
        "train.epochs=4",
        "train.early_stopping_patience=3",
        "train.plateau_lr_factor=0.5",
        "train.keep_checkpoints=8",
        "train.lr_schedule=constant",
        "train.dense_lr=0.01",
        "train.sparse_lr=0.5",
    ]
    _ok(torchrun(_arguments(tiny_data, tmp_path, *settings)))
    history = _metrics(tmp_path)["validation_history"]
    best, plateaus = None, 0
    for entry, following in zip(history, history[1:], strict=False):
        if best is None or entry["logloss"] < best["logloss"]:
            best = entry
            assert following["lr_scale"] == entry["lr_scale"]
            continue
        plateaus += 1
        assert following["lr_scale"] == entry["lr_scale"] * 0.5
        checkpoints = tmp_path / "checkpoints"
        scores = [
            score_split(Scorer.from_checkpoint(checkpoints / f"step_{step:08d}"), str(tiny_data),
                        "test", 256).column("logit").to_numpy()
            for step in (entry["step"], best["step"])
        ]
        assert (scores[0] == scores[1]).all()  # the plateau epoch's checkpoint: the best weights
    assert plateaus, f"no epoch without improvement to test: {history}"
    # Killed in the epoch after the first reload, the same command resumes from the reloaded
    # weights at the lowered rates and ends where the uninterrupted run did.
    first = next(entry for entry in history if entry["lr_scale"] < 1)
    resumed_dir = tmp_path / "resumed"
    arguments = _arguments(tiny_data, resumed_dir, *settings)
    killed = torchrun(arguments, extra_env={"CAIN_FAULT_KILL_AT_STEP": str(first["step"] - 2)})
    assert killed.returncode != 0
    _ok(torchrun(arguments))
    resumed, reference = _metrics(resumed_dir), _metrics(tmp_path)
    assert resumed["resumed_from_step"] < first["step"]
    for got, expected in zip(
        resumed["validation_history"], reference["validation_history"], strict=True
    ):
        for key in ("step", "lr_scale", "auc", "logloss"):
            assert got[key] == pytest.approx(expected[key], abs=1e-6), key
    for key in ("auc", "gauc", "logloss", "best_step", "steps"):
        assert resumed[key] == pytest.approx(reference[key], abs=1e-6), key


def _rewrite_state(directory, change) -> None:
    """Edit trainer_state.json and re-sign the manifest (as if another code version wrote it)."""
    from trainer import checkpoint

    state_file = directory / checkpoint.STATE_FILE
    state = json.loads(state_file.read_text())
    change(state["model_config"])
    state_file.write_text(json.dumps(state))
    manifest = json.loads((directory / checkpoint.MANIFEST).read_text())
    manifest["files"][checkpoint.STATE_FILE] = {
        "size": state_file.stat().st_size,
        "sha256": checkpoint._sha256(state_file),
    }
    (directory / checkpoint.MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda config: config.update(retired_switch=True), "model.retired_switch"),
        (lambda config: config.pop("later_stride"), "later_stride: '<absent>' -> 4"),
    ],
)
def test_scoring_refuses_a_stored_config_this_code_resolves_differently(
    reference_run, tmp_path, change, message
):
    from trainer.checkpoint import CheckpointError
    from trainer.predict import Scorer

    copy = tmp_path / "step"
    shutil.copytree(reference_run[0] / "checkpoints" / "step_00000012", copy)
    _rewrite_state(copy, change)
    with pytest.raises(CheckpointError, match=message):
        Scorer.from_checkpoint(copy)


SHARD_BOUNDS = """
import sys
from trainer import main as trainer

group = trainer.start(trainer.parse_arguments(sys.argv[1:]))
for init in ("per_table", "shared"):
    config = trainer.parse_arguments([*sys.argv[1:], f"model.embedding_init={init}"])
    model = trainer.build_model(config, trainer.build_data(config, group), group)
    for name, value in model.module.state_dict().items():
        if ".embeddings." in name and name.endswith(".weight"):
            for shard in value.local_shards():
                table = name.split(".")[-2]
                print(f"{init} table {table} rows {shard.tensor.shape[0]} "
                      f"max {shard.tensor.abs().max()}")
"""


def test_the_sharded_tables_start_within_their_embedding_init_bounds(tiny_data, tmp_path):
    """Both inits in one launch (the script builds the sharded model twice)."""
    script = tmp_path / "shard_bounds.py"
    script.write_text(SHARD_BOUNDS)
    process = torchrun(_arguments(tiny_data, tmp_path / "run"), script=script)
    _ok(process)
    for init in ("per_table", "shared"):
        found = re.findall(rf"{init} table (\w+) rows (\d+) max ([\d.e-]+)", process.stdout)
        tables = {table: (int(rows), float(largest)) for table, rows, largest in found}
        assert {"item", "category", "behavior"} <= set(tables), process.stdout
        largest_rows = max(rows for rows, _ in tables.values())
        for table, (rows, largest) in tables.items():
            bound = (1 / (largest_rows if init == "shared" else rows)) ** 0.5
            assert 0.5 * bound < largest <= bound, (init, table, rows, largest, bound)
