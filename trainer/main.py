"""Train and evaluate one registered model on the ETL's Delta tables with TorchRec.

    torchrun --nproc_per_node=2 trainer/main.py --data ROOT --model cain --output RUN_DIR \
        [--config conf/train/default.yaml [--config conf/model/cain.yaml]] \
        [train.max_steps=20 model.embedding_dim=16 ...]

`train(config)` is a short recipe of named steps, each a function a test can call:

    check_inputs      config and data are usable (run by `main` before any process group)
    start             process group, logging, seeds, numerics, run directory
    build_data        feature spec, table layout, batch builder, one stream per split view
    build_model       sparse arch on meta -> model -> DMP (sharded tables, fused optimizer)
                      -> combined optimizer, learning-rate schedule
    restore           resume this run, or warm start from another one
    fit               epochs: steps, checkpoints, validation, best epoch, early stopping
    report            test metrics over all ranks -> metrics.json, TensorBoard, one line

Rank 0 prints one line `model=cain auc=... gauc=... logloss=... n_train=... n_test=...` and
writes RUN_DIR/metrics.json, RUN_DIR/config.yaml and RUN_DIR/tb/. A bad config or unusable data
stops every rank before any process group starts, with one line on rank 0 and exit code 2; no run
directory is created. An error in the data or a checkpoint during the run, or a training loss that
turns NaN or infinite (the model diverged), prints one line per failing rank and exits with
code 3.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (
    None,
    "",
):  # run as a script (torchrun trainer/main.py): make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import contextlib
import dataclasses
import faulthandler
import json
import logging
import math
import os
import random
import signal
import time
from typing import Any

import numpy as np
import torch

from contract.config import to_plain
from contract.feature_spec import FeatureSpec, FeatureSpecError
from model.registry import build_model as build_registered_model
from model.registry import resolve_config
from model.tables import embedding_collection, table_layout
from model.train_wrapper import CTRTrain
from trainer import checkpoint
from trainer.batching import BatchBuilder, SampleDataError
from trainer.config import Config, ConfigError, Precision, SparseOptimizer, load_config
from trainer.data import (
    Prefetcher,
    SamplesTable,
    SampleStream,
    SplitView,
    rank_share,
    sample_weights,
    split_views,
    view_samples,
)
from trainer.distributed import (
    ProcessGroup,
    distribute,
    init_process_group,
    shutdown_process_group,
    uses_cuda,
)
from trainer.loop import (
    EpochResult,
    ProgressLog,
    SynchronizedBatches,
    TrainingDiverged,
    TrainState,
    evaluate,
    global_sum,
    train_steps,
)
from trainer.optimizers import (
    ClippedSteps,
    LearningRates,
    attach_sparse_optimizer,
    combined_optimizer,
    dense_parameters,
)

logger = logging.getLogger("trainer")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "train" / "default.yaml"
INPUT_ERROR, RUN_ERROR = 2, 3  # exit codes
# torchrun stops every worker as soon as one exits: how long the other ranks wait on a pre-flight
# error, so that rank 0 (which finds the same problem) prints its line before it is stopped.
REPORT_GRACE_S = 30.0
# ... and how long a rank waits after its line on an error during the run, so that the other ranks
# that failed at the same step (a diverged loss stops them all) print theirs too.
RUN_ERROR_GRACE_S = 2.0


class InputError(ValueError):
    """The data or a checkpoint the config names cannot be used; the message says why."""


# ---------------------------------------------------------------------------------------------
# check_inputs: before any process starts work
# ---------------------------------------------------------------------------------------------


def check_inputs(config: Config) -> None:
    """Everything about the inputs that can be checked without a process group: the feature spec,
    the samples table (listed, every file present), non-empty splits, and that the checkpoint to
    resume or warm start from holds this model with this resolved config. Raises InputError /
    FeatureSpecError / SampleDataError / CheckpointError."""
    if config.train.sparse_optimizer is not SparseOptimizer.ROWWISE_ADAGRAD and not uses_cuda(
        config.train.backend
    ):
        raise InputError(
            f"train.sparse_optimizer={config.train.sparse_optimizer.value}: FBGEMM has no CPU "
            "kernel for it (its CPU tables support row-wise Adagrad only); use rowwise_adagrad"
        )
    spec = FeatureSpec.read(config.data.root)
    if config.data.max_history is not None and not 1 <= config.data.max_history <= spec.max_len:
        raise InputError(
            f"data.max_history={config.data.max_history}: must be between 1 and the tables' "
            f"max_len {spec.max_len}"
        )
    table = SamplesTable.open(config.data.root, spec, config.data.version)
    missing = table.missing_files()
    if missing:
        raise InputError(
            f"{len(missing)} file(s) of {table.path} (version {table.version}) are missing, e.g. "
            f"{missing[0]}: the table was changed outside Delta; rebuild it or read another "
            "version (data.version=N)"
        )
    if config.data.validation_days and not table.partitioned_by_date:
        # Views select dates by partition; rows are filtered on `split` only, so without the
        # partitions the validation days would be trained on too.
        raise InputError(
            f"{table.path} has files without a `date` partition value: data.validation_days "
            "needs the table partitioned by date (as the ETL writes it)"
        )
    views = split_views(
        spec, config.data.train_split, config.data.test_split, config.data.validation_days
    )
    needed = ["test"] if config.train.evaluate_only else list(views)
    for name in needed:
        view = views[name]
        if view_samples(table.files(view.dates), view, spec) == 0:
            verb = "train" if name == "train" else "evaluate"
            raise InputError(
                f"the {name} split of {config.data.root} is empty (split {view.split!r}, dates "
                f"{list(view.dates or [])}): nothing to {verb} on; check the ETL's log and "
                "feature_spec.json"
            )
    # The checkpoint `restore` will load must hold this model with this resolved config, and a
    # resume must read the data it started on (its position counts batches of those files).
    own = None
    if not config.train.evaluate_only:
        own = checkpoint.Checkpoints(Path(config.output) / "checkpoints").latest()
    if own is not None and not config.train.resume:
        raise InputError(
            f"{own.parent} holds an earlier run's checkpoints (newest {own.name}) and "
            "train.resume=false: a new run there would mix with them (pruning keeps the newest "
            "steps, which are theirs); resume it (train.resume=true), write to another output "
            "or delete them"
        )
    source = own or (checkpoint.find(config.train.warm_start) if config.train.warm_start else None)
    if source is not None:
        identity = checkpoint.ModelIdentity(
            config.model.name, to_plain(resolve_config(config.model.name, config.model.options))
        )
        state = checkpoint.read_state(source)
        identity.check(state, source)
        resumed_digest = state.get("samples_digest") if source == own else None
        if resumed_digest is not None and resumed_digest != table.digest():
            raise InputError(
                f"{source} was trained on {state['data_root']} (samples table version "
                f"{state['samples_table_version']}), not on this data ({table.path}, version "
                f"{table.version}): a resume continues from a position in its own data; read "
                f"that version (data.version={state['samples_table_version']}) or start a new "
                f"run with train.warm_start={config.output}"
            )


# ---------------------------------------------------------------------------------------------
# start
# ---------------------------------------------------------------------------------------------


def start(config: Config) -> ProcessGroup:
    """Process group, logging, seeds and numerics; creates the run directory (rank 0)."""
    group = init_process_group(config.train.backend)
    logging.basicConfig(  # libraries (fbgemm, torchrec) at WARNING; ours at INFO on rank 0
        level=logging.WARNING,
        format=f"%(asctime)s [rank{group.rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    logging.getLogger("trainer").setLevel(logging.INFO if group.is_main else logging.WARNING)
    random.seed(config.train.seed)
    np.random.seed(config.train.seed)
    torch.manual_seed(config.train.seed)
    # An explicit TF32 policy (PyTorch's defaults differ between matmuls and convolutions).
    torch.backends.cuda.matmul.allow_tf32 = config.train.tf32
    torch.backends.cudnn.allow_tf32 = config.train.tf32
    if group.is_main:
        Path(config.output).mkdir(parents=True, exist_ok=True)
    return group


# ---------------------------------------------------------------------------------------------
# build_data
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Data:
    """The data side of a run: the spec, the samples table, one stream per split view."""

    spec: FeatureSpec
    model_config: Any  # the model's resolved config (sizes the tables)
    builder: BatchBuilder
    table: SamplesTable
    views: dict[str, SplitView]
    streams: dict[str, SampleStream]
    samples: dict[str, int]  # samples per view over all ranks


def build_data(config: Config, group: ProcessGroup) -> Data:
    spec = FeatureSpec.read(config.data.root)
    model_config = resolve_config(config.model.name, config.model.options)
    builder = BatchBuilder(
        spec, table_layout(spec, model_config.max_table_rows), config.data.max_history
    )
    table = SamplesTable.open(config.data.root, spec, config.data.version)
    views = split_views(
        spec, config.data.train_split, config.data.test_split, config.data.validation_days
    )
    streams, samples = {}, {}
    for name, view in views.items():
        files = table.files(view.dates)
        weights = sample_weights(files, view.split, spec)
        samples[name] = int(sum(w.sum() for w in weights))
        training = name == "train"
        streams[name] = SampleStream(
            rank_share(files, group.rank, group.world_size, weights),
            builder,
            split=view.split,
            batch_size=config.train.batch_size if training else config.train.eval_batch_size,
            shuffle_rows=config.data.shuffle_buffer_rows,
            read_rows=config.data.read_rows,
            seed=config.train.shuffle_seed if training else None,
            rank=group.rank,
        )
    logger.info(
        "samples table %s version %d; samples per split: %s; this rank reads %s rows",
        table.path,
        table.version,
        samples,
        {name: stream.rows for name, stream in streams.items()},
    )
    return Data(spec, model_config, builder, table, views, streams, samples)


# ---------------------------------------------------------------------------------------------
# build_model
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Model:
    """The sharded model, its optimizers and the learning-rate schedule."""

    module: torch.nn.Module  # DMP(CTRTrain(model))
    optimizer: torch.optim.Optimizer
    learning_rates: LearningRates
    planned_steps: int


def planned_steps(config: Config, train_samples: int, world_size: int) -> int:
    """Steps of the whole run as planned from the data's size (the schedule's length)."""
    per_epoch = math.ceil(train_samples / (world_size * config.train.batch_size))
    total = per_epoch * config.train.epochs
    return min(total, config.train.max_steps) if config.train.max_steps else total


def build_model(config: Config, data: Data, group: ProcessGroup) -> Model:
    # The sparse arch on the meta device: DMP materialises only this rank's shards. Without side
    # features it has no side tables (batches still carry those keys; the lookup skips them).
    layout = table_layout(
        data.spec, data.model_config.max_table_rows, data.model_config.use_side_features
    )
    sparse_arch = embedding_collection(
        layout,
        data.model_config.embedding_dim,
        torch.device("meta"),
        data.model_config.embedding_init,
    )
    attach_sparse_optimizer(sparse_arch, config.train)
    model = build_registered_model(
        config.model.name, data.spec, data.model_config, sparse_arch=sparse_arch
    )
    if config.train.compile:
        model.dense_arch.compile(dynamic=True)
    sharded, plan = distribute(CTRTrain(model), group, config.train)
    logger.info("sharding plan (%s):\n%s", config.train.sharding_type.value, plan)
    optimizer = combined_optimizer(sharded, config.train.dense_lr)
    steps = planned_steps(config, data.samples.get("train", 0), group.world_size)
    # Built before any restore: it keeps the configured rates, whatever a checkpoint holds.
    return Model(sharded, optimizer, LearningRates(optimizer, config.train, steps), steps)


# ---------------------------------------------------------------------------------------------
# restore
# ---------------------------------------------------------------------------------------------


def restore(config: Config, data: Data, model: Model, group: ProcessGroup) -> TrainState:
    """Resume this run from its newest checkpoint, or warm start from another run's weights."""
    checkpoints = checkpoint.Checkpoints(Path(config.output) / "checkpoints")
    resuming = config.train.resume and not config.train.evaluate_only
    latest = checkpoints.latest() if resuming else None
    expected = checkpoint.ModelIdentity(config.model.name, to_plain(data.model_config))
    if latest is not None:
        saved = checkpoint.load(latest, model.module, model.optimizer, expected, restore_rng=True)
        state = TrainState.from_checkpoint(saved.state, group.world_size, group.rank)
        if saved.state["world_size"] != group.world_size and state.batches_in_epoch:
            logger.warning(
                "resumed on %d processes a run saved on %d in the middle of epoch %d: the rest "
                "of this epoch reads other shares (some samples twice, some not at all)",
                group.world_size,
                saved.state["world_size"],
                state.epoch + 1,
            )
        model.learning_rates.scale = state.lr_scale
        logger.info("resumed from %s at step %d (epoch %d)", latest, state.step, state.epoch)
        return state
    if config.train.warm_start:
        source = checkpoint.warm_start(config.train.warm_start, model.module, expected)
        logger.info(
            "warm start from %s (step %d of %s)",
            config.train.warm_start,
            source["step"],
            source["model"],
        )
    return TrainState()


# ---------------------------------------------------------------------------------------------
# fit
# ---------------------------------------------------------------------------------------------


def _autocast(config: Config, group: ProcessGroup) -> contextlib.AbstractContextManager:
    if config.train.precision is Precision.BF16:
        return torch.autocast(group.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(
    config: Config, data: Data, model: Model, state: TrainState, group: ProcessGroup, writer
) -> None:
    """Epochs of training until `train.epochs`, `train.max_steps` or early stopping; validation
    after each epoch (and every `validate_every` steps) picks the best weights; with
    `restore_best` they end in the model."""
    checkpoints = checkpoint.Checkpoints(
        Path(config.output) / "checkpoints", keep=config.train.keep_checkpoints
    )
    identity = checkpoint.ModelIdentity(config.model.name, to_plain(data.model_config))

    def save(current: TrainState) -> None:
        checkpoints.save(
            current.step,
            model.module,
            model.optimizer,
            {
                "model": config.model.name,
                "model_config": identity.config,
                "code_version": checkpoint.code_version(),
                "config": config.to_dict(),
                **current.to_checkpoint(global_sum(current.samples, group), group.world_size),
                "data_root": str(config.data.root),
                "samples_table_version": data.table.version,
                "samples_digest": data.table.digest(),
                "seed": config.train.seed,
                # Enough to rebuild the model without the data directory (trainer/predict.py).
                "feature_spec": json.loads(data.spec.to_json()),
            },
            protect=current.best_step,
            # SELECTED names the weights the run ends with: the best only if they are restored.
            selected=current.best_step if config.train.restore_best else 0,
        )

    def validate(current: TrainState) -> None:
        """Score the validation split; record it; early stopping and plateau reloads."""
        scores = _evaluate(config, data, model, group, "validation").metrics
        improved = current.record_validation(scores, config.train.selection_metric)
        current.stop_after(config.train.early_stopping_patience)
        logger.info(
            "epoch %d step %d validation auc=%s gauc=%s logloss=%s%s",
            current.epoch,
            current.step,
            *(f"{v:.4f}" for v in (scores.auc, scores.gauc, scores.logloss)),
            " (best so far)" if improved else "",
        )
        if writer is not None:
            for name in ("auc", "gauc", "logloss"):
                writer.add_scalar(f"validation/{name}", getattr(scores, name), current.step)
        if current.reduce_on_plateau(config.train.plateau_lr_factor, config.train):
            # Saved after the reload: a resume continues from the best weights too.
            best = checkpoints.at(current.best_step)
            checkpoint.load(best, model.module, model.optimizer, identity, restore_rng=False)
            model.learning_rates.scale = current.lr_scale
            logger.info(
                "no better validation: continuing from step %d's weights at %.3gx the rates",
                current.best_step,
                current.lr_scale,
            )

    def on_step(current: TrainState) -> None:
        every = config.train.validate_every
        if every and "validation" in data.streams and current.step % every == 0:
            validate(current)
            save(current)  # the validated weights, so that the best can be selected and reloaded
        elif config.train.checkpoint_every and current.step % config.train.checkpoint_every == 0:
            save(current)
        _fault_injection(group, current.step)

    progress = ProgressLog(
        group, config.train.log_every, model.planned_steps, config.train.progress, writer
    )
    progress.bar.update(state.step)
    pin = group.device.type == "cuda"
    clipped = ClippedSteps(
        model.optimizer, list(dense_parameters(model.module).values()), config.train.grad_clip_norm
    )
    while not config.train.evaluate_only and not state.finished(config.train):
        remaining = config.train.max_steps - state.step if config.train.max_steps else 0
        prefetcher = Prefetcher(
            data.streams["train"].batches(state.epoch, skip=state.batches_in_epoch),
            config.data.prefetch_batches,
            pin_memory=pin,
        )
        batches = SynchronizedBatches(prefetcher, group, data.builder.filler(), limit=remaining)
        pipeline = None
        if config.train.pipeline:  # one per epoch: it remembers that its data ran out
            from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

            pipeline = TrainPipelineSparseDist(model.module, clipped, group.device)
        with _autocast(config, group):
            ran_out = train_steps(
                model.module,
                batches,
                state,
                group,
                progress,
                on_step,
                model.learning_rates,
                clipped,
                pipeline,
            )
        if pipeline is not None:  # restore the sharded module's own forward for evaluation
            pipeline.detach()
        prefetcher.close()
        epoch_done = ran_out and not (
            config.train.max_steps and state.step >= config.train.max_steps
        )
        if epoch_done:
            state.end_epoch()
        if "validation" in data.streams and not state.validated_now():
            validate(state)
        if epoch_done or state.step:  # an epoch end (or the max_steps end) is always saved
            save(state)
    progress.close()
    if (
        config.train.restore_best
        and state.best_step
        and state.best_step != state.step
        and not config.train.evaluate_only
    ):
        best = checkpoints.at(state.best_step)
        checkpoint.load(best, model.module, None, identity, restore_rng=False)
        state.restored_best = True
        logger.info("restored the best epoch's weights (step %d) from %s", state.best_step, best)


def _evaluate(config: Config, data: Data, model: Model, group: ProcessGroup, name: str):
    batches = Prefetcher(
        data.streams[name].batches(),
        config.data.prefetch_batches,
        pin_memory=group.device.type == "cuda",
    )
    try:
        with _autocast(config, group):
            return evaluate(
                model.module,
                batches,
                data.builder.filler().to(group.device),
                group,
                config.train.progress,
            )
    finally:
        batches.close()


def _fault_injection(group: ProcessGroup, step: int) -> None:
    """Test hook: CAIN_FAULT_KILL_RANK=r CAIN_FAULT_KILL_AT_STEP=s makes rank r SIGKILL itself
    after step s, exactly like `kill -9` (no cleanup, no final checkpoint)."""
    if os.environ.get("CAIN_FAULT_KILL_AT_STEP") == str(step) and os.environ.get(
        "CAIN_FAULT_KILL_RANK", "0"
    ) == str(group.rank):
        logger.warning("fault injection: SIGKILL rank %d after step %d", group.rank, step)
        os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------


def report(
    config: Config,
    data: Data,
    model: Model,
    state: TrainState,
    group: ProcessGroup,
    writer,
    epoch: EpochResult,
) -> dict[str, Any]:
    """Test metrics over every rank's predictions -> metrics.json (rank 0), one printed line."""
    eval_start = time.perf_counter()
    test = _evaluate(config, data, model, group, "test").metrics
    n_train = int(global_sum(state.samples, group))
    train_stats = data.spec.splits.get(config.data.train_split)
    result = {
        "model": config.model.name,
        **{name: value for name, value in test.to_json().items() if name != "samples"},
        # Predicting the train split's positive rate for every test sample: the bar to clear.
        "logloss_constant": test.constant_logloss(train_stats.positive_rate)
        if train_stats and test.samples
        else None,
        "n_train": n_train,
        "n_test": test.samples,
        "validation": state.validation_history[-1] if state.validation_history else None,
        "validation_history": state.validation_history,
        "best_step": state.best_step or None,
        "best_epoch": state.best_epoch,
        "selection_metric": config.train.selection_metric.value,
        "restored_best": state.restored_best,
        "stopped_early": state.stopped_early,
        "train_samples_per_sec": epoch.samples_per_second,
        "steps": state.step,
        "epochs_completed": state.epoch,
        "resumed_from_step": epoch.resumed_from_step,
        "warm_start": config.train.warm_start,
        "evaluate_only": config.train.evaluate_only,
        "world_size": group.world_size,
        "sharding_type": config.train.sharding_type.value,
        "precision": config.train.precision.value,
        "train_seconds": epoch.seconds,
        "eval_seconds": time.perf_counter() - eval_start,
        "seed": config.train.seed,
        "code_version": checkpoint.code_version(),
        "data": {
            "root": str(config.data.root),
            "samples_table": data.table.path,
            "samples_table_version": data.table.version,
            "samples": data.samples,
        },
    }
    if group.is_main:
        print(
            f"model={config.model.name} auc={_shown(test.auc)} gauc={_shown(test.gauc)} "
            f"logloss={_shown(test.logloss)} n_train={n_train} n_test={test.samples}",
            flush=True,
        )
        # allow_nan=False: an undefined metric is null with its reason, never NaN (invalid JSON).
        (Path(config.output) / "metrics.json").write_text(
            json.dumps(result, indent=2, allow_nan=False)
        )
        if writer is not None:
            for name in ("auc", "gauc", "logloss"):
                if result[name] is not None:
                    writer.add_scalar(f"eval/{name}", result[name], state.step)
            writer.close()
    return result


def _shown(value: float) -> str:
    return "null" if math.isnan(value) else f"{value:.4f}"


# ---------------------------------------------------------------------------------------------
# the recipe
# ---------------------------------------------------------------------------------------------


def train(config: Config) -> dict[str, Any]:
    """Train config.model.name on config.data.root and evaluate; returns the metrics dict."""
    group = start(config)
    if group.is_main:
        (Path(config.output) / "config.yaml").write_text(config.to_yaml())
    data = build_data(config, group)
    model = build_model(config, data, group)
    state = restore(config, data, model, group)
    writer = None
    if group.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(Path(config.output) / "tb"))
    resumed_from, samples_before = state.step, state.samples
    started = time.perf_counter()
    fit(config, data, model, state, group, writer)
    seconds = time.perf_counter() - started
    trained = global_sum(state.samples - samples_before, group)
    epoch = EpochResult(seconds, trained / seconds if seconds > 0 else 0.0, resumed_from)
    return report(config, data, model, state, group, writer, epoch)


def parse_arguments(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", help="ETL output root (feature_spec.json + Delta tables)")
    parser.add_argument("--model", help="registered model name (cain, lap, twin, ...)")
    parser.add_argument("--output", help="run directory (default runs/<model>)")
    parser.add_argument(
        "--config",
        action="append",
        help="YAML preset (conf/train/, conf/model/); repeat to compose, later files win "
        f"(default: {DEFAULT_CONFIG.relative_to(DEFAULT_CONFIG.parents[2])})",
    )
    parser.add_argument("overrides", nargs="*", help="key=value, e.g. train.max_steps=20")
    arguments = parser.parse_intermixed_args(argv)
    flags = []
    if arguments.data:
        flags.append(f"data.root={arguments.data}")
    if arguments.model:
        flags.append(f"model.name={arguments.model}")
    if arguments.output:
        flags.append(f"output={arguments.output}")
    config = load_config(arguments.config or [DEFAULT_CONFIG], [*flags, *arguments.overrides])
    if not config.data.root:
        raise ConfigError("data.root: required (--data ROOT)")
    if not config.output:
        config = dataclasses.replace(config, output=str(Path("runs") / config.model.name))
    resolve_config(config.model.name, config.model.options)  # the model's own fields, typed
    return config


CHECKED_ERRORS = (ConfigError, InputError, FeatureSpecError, SampleDataError, TrainingDiverged)


def main(argv: list[str] | None = None) -> None:
    faulthandler.enable()  # a native crash (SIGSEGV, SIGABRT) prints every thread's Python stack
    first_rank = os.environ.get("RANK", "0") == "0"
    try:
        config = parse_arguments(argv)
        check_inputs(config)
    except (*CHECKED_ERRORS, checkpoint.CheckpointError) as error:
        # Every rank finds the same problem: one line from rank 0, the same exit code everywhere.
        # The other ranks wait first: exiting at once let torchrun stop rank 0 before it printed.
        # One still running after the wait means rank 0 did not find the problem: it says it.
        if first_rank:
            print(f"error: {error}", file=sys.stderr, flush=True)
        else:
            time.sleep(REPORT_GRACE_S)
            sys.stderr.write(f"error (rank {os.environ['RANK']}): {error}\n")
        sys.exit(INPUT_ERROR)
    succeeded = False
    try:
        train(config)
        succeeded = True
    except (*CHECKED_ERRORS, checkpoint.CheckpointError) as error:
        rank = os.environ.get("RANK", "0")
        # One write with its newline: the ranks share stderr, and print's two writes (text,
        # then newline) let another rank's line land in between.
        sys.stderr.write(f"error (rank {rank}): {error}\n")
        sys.stderr.flush()
        time.sleep(RUN_ERROR_GRACE_S)
        sys.exit(RUN_ERROR)
    finally:
        shutdown_process_group(succeeded=succeeded)


if __name__ == "__main__":
    main()
