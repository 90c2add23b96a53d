"""Train and evaluate one registered model on the ETL's Delta tables with TorchRec.

    torchrun --nproc_per_node=2 trainer/main.py --data ROOT --model cain --output RUN_DIR \
        [--config conf/train/default.yaml] [train.max_steps=20 model.embedding_dim=16 ...]

The recipe (`train`): parse config -> process group -> feature spec, model, DMP, optimizers ->
data shares -> resume or warm start -> train loop with checkpoints -> evaluation -> metrics.json.
`train(config)` is a plain function; tests call it (or torchrun on this file) with tiny sizes.
Rank 0 prints one line `model=cain auc=... gauc=... logloss=... n_train=... n_test=...` and writes
RUN_DIR/metrics.json, RUN_DIR/config.yaml and RUN_DIR/tb/.
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
import dataclasses
import faulthandler
import json
import logging
import os
import random
import signal
import time
from typing import Any

import numpy as np
import torch

from contract.feature_spec import FeatureSpec
from model.registry import build_model, resolve_config
from model.tables import embedding_collection, table_layout
from model.train_wrapper import CTRTrain
from trainer import checkpoint
from trainer.batching import BatchBuilder
from trainer.config import Config, ConfigError, load_config
from trainer.data import Prefetcher, SamplesTable, SampleStream, rank_share, sample_weights
from trainer.distributed import (
    ProcessGroup,
    dense_optimizer,
    distribute,
    init_process_group,
    shutdown_process_group,
)
from trainer.loop import (
    ProgressLog,
    SynchronizedBatches,
    TrainState,
    evaluate,
    global_sum,
    train_steps,
)

logger = logging.getLogger("trainer")
DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "train" / "default.yaml"


def configure_logging(group: ProcessGroup) -> None:
    # Libraries (fbgemm, torchrec) log pages of INFO: theirs at WARNING, ours at INFO on rank 0.
    logging.basicConfig(
        level=logging.WARNING,
        format=f"%(asctime)s [rank{group.rank}] %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    logging.getLogger("trainer").setLevel(logging.INFO if group.is_main else logging.WARNING)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fault_injection(group: ProcessGroup, step: int) -> None:
    """Test hook: CAIN_FAULT_KILL_RANK=r CAIN_FAULT_KILL_AT_STEP=s makes rank r SIGKILL itself
    after step s, exactly like `kill -9` (no cleanup, no final checkpoint)."""
    if os.environ.get("CAIN_FAULT_KILL_AT_STEP") == str(step) and os.environ.get(
        "CAIN_FAULT_KILL_RANK", "0"
    ) == str(group.rank):
        logger.warning("fault injection: SIGKILL rank %d after step %d", group.rank, step)
        os.kill(os.getpid(), signal.SIGKILL)


def train(config: Config) -> dict[str, Any]:
    """Train config.model.name on config.data.root and evaluate; returns the metrics dict."""
    group = init_process_group(config.train.backend)
    configure_logging(group)
    seed_everything(config.train.seed)
    run_dir = Path(config.output)
    run_dir.mkdir(parents=True, exist_ok=True)
    if group.is_main:
        (run_dir / "config.yaml").write_text(config.to_yaml())

    # Data contract and model.
    spec = FeatureSpec.read(config.data.root)
    model_config = resolve_config(config.model.name, config.model.options)
    layout = table_layout(spec, model_config.max_table_rows)
    # The sparse arch on the meta device: DMP materialises only this rank's shards. Without side
    # features it has no side tables (batches still carry those keys; the lookup skips them).
    model_tables = table_layout(spec, model_config.max_table_rows, model_config.use_side_features)
    sparse_arch = embedding_collection(
        model_tables, model_config.embedding_dim, torch.device("meta")
    )
    module = CTRTrain(build_model(config.model.name, spec, model_config, sparse_arch=sparse_arch))
    builder = BatchBuilder(spec, layout)
    samples = SamplesTable.open(config.data.root, spec, config.data.version)

    def share(split: str) -> list:
        files = samples.files(split)
        weights = sample_weights(files, split, spec.file_samples)
        return rank_share(files, group.rank, group.world_size, weights)

    streams = {
        split: SampleStream(
            share(split),
            builder,
            split=split,
            batch_size=batch_size,
            shuffle_rows=config.data.shuffle_buffer_rows,
            read_rows=config.data.read_rows,
            seed=seed,
            rank=group.rank,
        )
        for split, batch_size, seed in (
            (config.data.train_split, config.train.batch_size, config.train.seed),
            (config.data.test_split, config.train.eval_batch_size, None),
        )
    }
    logger.info(
        "samples table %s version %d: %d train rows, %d test rows on this rank (world size %d); "
        "shares balanced by sample count",
        samples.path,
        samples.version,
        streams[config.data.train_split].rows,
        streams[config.data.test_split].rows,
        group.world_size,
    )

    # Sharded model and optimizers.
    model, plan = distribute(module, group, config.train)
    logger.info("sharding plan (%s):\n%s", config.train.sharding_type.value, plan)
    optimizer = dense_optimizer(model, config.train.dense_lr)

    # Resume this run, or warm start from another one.
    state = TrainState()
    checkpoints = checkpoint.Checkpoints(
        run_dir / "checkpoints", keep=config.train.keep_checkpoints
    )
    resuming = config.train.resume and not config.train.evaluate_only
    latest = checkpoints.latest() if resuming else None
    resumed_from = 0
    if latest is not None:
        restored = checkpoint.load(latest, model, optimizer, restore_rng=True)
        saved = restored.state
        if saved["model"] != config.model.name:
            raise checkpoint.CheckpointError(
                f"{latest} holds model {saved['model']}, not {config.model.name}"
            )
        state = TrainState(
            step=saved["step"],
            epoch=saved["epoch"],
            # Same global progress when the world size changed: each rank skips its share.
            batches_in_epoch=saved["batches_in_epoch"] * saved["world_size"] // group.world_size,
            samples=saved["samples"] // group.world_size,
        )
        resumed_from = state.step
        logger.info("resumed from %s at step %d (epoch %d)", latest, state.step, state.epoch)
    elif config.train.warm_start:
        source = checkpoint.warm_start(config.train.warm_start, model)
        logger.info(
            "warm start from %s (step %d of %s)",
            config.train.warm_start,
            source["step"],
            source["model"],
        )

    writer = None
    if group.is_main:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))

    def save(current: TrainState) -> None:
        checkpoints.save(
            current.step,
            model,
            optimizer,
            {
                "model": config.model.name,
                "config": config.to_dict(),
                "step": current.step,
                "epoch": current.epoch,
                "batches_in_epoch": current.batches_in_epoch,
                "samples": int(global_sum(current.samples, group)),
                "world_size": group.world_size,
                "data_root": str(config.data.root),
                "samples_table_version": samples.version,
                "seed": config.train.seed,
                # Enough to rebuild the model without the data directory (trainer/predict.py).
                "feature_spec": json.loads(spec.to_json()),
            },
        )

    def on_step(current: TrainState) -> None:
        if config.train.checkpoint_every and current.step % config.train.checkpoint_every == 0:
            save(current)
        _fault_injection(group, current.step)

    # Train.
    split_samples = spec.splits.get(config.data.train_split)
    planned = (
        (split_samples.samples // (group.world_size * config.train.batch_size))
        if split_samples
        else None
    )
    if config.train.max_steps:
        planned = min(planned or config.train.max_steps, config.train.max_steps)
    progress = ProgressLog(group, config.train.log_every, planned, config.train.progress, writer)
    progress.bar.update(state.step)
    samples_before = state.samples
    train_start = time.perf_counter()
    while not config.train.evaluate_only and state.epoch < config.train.epochs:
        remaining = config.train.max_steps - state.step if config.train.max_steps else 0
        if config.train.max_steps and remaining <= 0:
            break
        prefetcher = Prefetcher(
            streams[config.data.train_split].batches(state.epoch, skip=state.batches_in_epoch),
            config.data.prefetch_batches,
        )
        batches = SynchronizedBatches(prefetcher, group, builder.filler(), limit=remaining)
        pipeline = None
        if config.train.pipeline:  # one per epoch: it remembers that its data ran out
            from torchrec.distributed.train_pipeline import TrainPipelineSparseDist

            pipeline = TrainPipelineSparseDist(model, optimizer, group.device)
        train_steps(model, optimizer, batches, state, group, progress, on_step, pipeline)
        if pipeline is not None:  # restore the sharded module's own forward for evaluation
            pipeline.detach()
        prefetcher.close()
        if config.train.max_steps and state.step >= config.train.max_steps:
            break
        state.epoch += 1
        state.batches_in_epoch = 0
    train_seconds = time.perf_counter() - train_start
    progress.close()
    if state.step and (
        checkpoints.latest() is None or checkpoints.latest().name != f"step_{state.step:08d}"
    ):
        save(state)
    n_train = int(global_sum(state.samples, group))
    trained_now = global_sum(state.samples - samples_before, group)

    # Evaluate on the test split: exact metrics over all ranks' predictions.
    eval_start = time.perf_counter()
    test_batches = Prefetcher(
        streams[config.data.test_split].batches(), config.data.prefetch_batches
    )
    evaluation = evaluate(
        model, test_batches, builder.filler().to(group.device), group, config.train.progress
    )
    test_batches.close()
    metrics = evaluation.metrics
    result = {
        "model": config.model.name,
        "auc": metrics.auc,
        "gauc": metrics.gauc,
        "logloss": metrics.logloss,
        "n_train": n_train,
        "n_test": metrics.samples,
        "train_samples_per_sec": trained_now / train_seconds if train_seconds > 0 else 0.0,
        "gauc_users": metrics.gauc_users,
        "steps": state.step,
        "epochs_completed": state.epoch,
        "resumed_from_step": resumed_from,
        "warm_start": config.train.warm_start,
        "evaluate_only": config.train.evaluate_only,
        "world_size": group.world_size,
        "sharding_type": config.train.sharding_type.value,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - eval_start,
        "seed": config.train.seed,
        "data": {
            "root": str(config.data.root),
            "samples_table": samples.path,
            "samples_table_version": samples.version,
        },
    }
    if group.is_main:
        print(
            f"model={config.model.name} auc={metrics.auc:.4f} gauc={metrics.gauc:.4f} "
            f"logloss={metrics.logloss:.4f} n_train={n_train} n_test={metrics.samples}",
            flush=True,
        )
        (run_dir / "metrics.json").write_text(json.dumps(result, indent=2))
        if writer is not None:
            for name in ("auc", "gauc", "logloss"):
                writer.add_scalar(f"eval/{name}", result[name], state.step)
            writer.close()
    return result


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
    arguments = parser.parse_args(argv)
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
    # The model's own dataclass checks model.* now, before any process starts work.
    resolve_config(config.model.name, config.model.options)
    return config


def main(argv: list[str] | None = None) -> None:
    faulthandler.enable()  # a native crash (SIGSEGV, SIGABRT) prints every thread's Python stack
    try:
        config = parse_arguments(argv)
    except ConfigError as error:
        sys.exit(f"config error: {error}")
    succeeded = False
    try:
        train(config)
        succeeded = True
    finally:
        shutdown_process_group(succeeded=succeeded)


if __name__ == "__main__":
    main()
