"""The trainer's configuration: dataclasses are the schema, YAML presets hold values, `key=value`
overrides win.

    config = load_config(["conf/train/default.yaml", "conf/model/cain.yaml"],
                         ["train.max_steps=20", "model.embedding_dim=8"])

Sections: `data` (where and how to read the Delta tables), `model` (registry `name` plus the
model's own fields: its config dataclass in model/ is their schema, `model.registry.resolve_config`
checks them), `train` (optimisation, sharding, checkpoints), and `output` (the run directory).
Presets compose: later files win, nested mappings merge key by key, overrides come last. Typing and
checks are the project's one mechanism (`contract.config`): a bad key or value raises `ConfigError`
naming it (`train.max_step: unknown key; known: ...`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from contract.config import (
    ConfigError,
    build,
    load_yaml,
    merge,
    parse_override,
    set_dotted,
    to_plain,
)

__all__ = ["Config", "ConfigError", "load_config", "config_from_dict"]


class ShardingType(enum.StrEnum):
    """How the planner may shard every embedding table (TorchRec `ShardingType` values)."""

    TABLE_WISE = "table_wise"
    ROW_WISE = "row_wise"
    COLUMN_WISE = "column_wise"


class SparseOptimizer(enum.StrEnum):
    """Fused (in-backward) optimizer of the embedding tables: the only kind that runs on CPU."""

    ROWWISE_ADAGRAD = "rowwise_adagrad"
    ROWWISE_ADAM = "rowwise_adam"  # FBGEMM partial row-wise Adam: one second moment per row
    ADAM = "adam"


class Backend(enum.StrEnum):
    AUTO = "auto"  # nccl when CUDA is available, else gloo
    GLOO = "gloo"
    NCCL = "nccl"


@dataclass(frozen=True)
class DataConfig:
    """Args:
    root: directory holding `feature_spec.json` and the Delta tables (the ETL's `--output`).
    train_split / test_split: values of the `split` column.
    version: Delta table version to read (time travel); None reads the latest.
    max_len: cap each request's history at its last max_len events (L of the models); None (or
        a value above it) keeps the feature spec's max_len, the ETL's --max-len.
    read_rows: rows per Arrow record batch read from Parquet (memory per read).
    shuffle_buffer_rows: rows (user-days) shuffled together; memory is bounded by this.
    prefetch_batches: batches a background thread builds ahead of the training loop.
    """

    root: str = ""
    train_split: str = "train"
    test_split: str = "test"
    version: int | None = None
    max_len: int | None = None
    read_rows: int = 256
    shuffle_buffer_rows: int = 1024
    prefetch_batches: int = 4

    def __post_init__(self) -> None:
        _check_positive(self, ("read_rows", "shuffle_buffer_rows", "prefetch_batches"), "data")
        if self.max_len is not None and self.max_len < 1:
            raise ConfigError(f"data.max_len: must be >= 1 or null, got {self.max_len}")


@dataclass(frozen=True)
class ModelConfig:
    """Args:
    name: a key of `model.registry` (cain, lap, twin, ...).
    options: the model's own config fields as nested mappings (`model.embedding_dim=16` and
        `model.lap.k_top=10` land here); `model.registry.resolve_config` types and checks them.
    """

    name: str = "cain"
    options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.name:
            raise ConfigError("model.name: must be set (e.g. --model cain)")


@dataclass(frozen=True)
class TrainConfig:
    """Args:
    batch_size: samples (candidates) per step and rank; a request is never split, so a step holds
        between batch_size and 1.5 x batch_size samples (the tail of a shuffle block is merged).
    eval_batch_size: the same for evaluation.
    max_steps: stop training after this many steps (0: one full epoch). For smoke runs.
    epochs: passes over the train split.
    dense_lr: Adam learning rate of the dense (replicated) parameters (paper: 1e-3).
    sparse_optimizer / sparse_lr: fused optimizer of the embedding tables.
    sharding_type: table_wise, row_wise or column_wise for every table.
    seed: seeds parameters, shuffling and everything random.
    log_every: steps between log lines / TensorBoard points.
    checkpoint_every: steps between checkpoints (0: only at the end).
    keep_checkpoints: how many step checkpoints to keep.
    resume: continue from the newest checkpoint in RUN_DIR/checkpoints when one exists.
    warm_start: a checkpoint directory of a previous run to initialise the weights from (daily
        retraining); the optimizer and data position start fresh. None (or "") for none.
    evaluate_only: no training: score the test split with the warm_start weights (the daily gate
        scores the published model on the new test day, the day the candidate is measured on).
    pipeline: use TorchRec's TrainPipelineSparseDist (overlaps input distribution with compute).
    backend: process-group backend.
    progress: show a tqdm bar on rank 0 (off in tests and Airflow logs).
    """

    batch_size: int = 1536
    eval_batch_size: int = 4096
    max_steps: int = 0
    epochs: int = 1
    dense_lr: float = 1e-3
    sparse_optimizer: SparseOptimizer = SparseOptimizer.ROWWISE_ADAGRAD
    sparse_lr: float = 0.01
    sharding_type: ShardingType = ShardingType.TABLE_WISE
    seed: int = 2024
    log_every: int = 20
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    warm_start: str | None = None
    evaluate_only: bool = False
    pipeline: bool = False
    backend: Backend = Backend.AUTO
    progress: bool = True

    def __post_init__(self) -> None:
        if self.warm_start == "":
            object.__setattr__(self, "warm_start", None)  # "" in YAML or an empty override
        _check_positive(
            self,
            (
                "batch_size",
                "eval_batch_size",
                "epochs",
                "log_every",
                "keep_checkpoints",
                "dense_lr",
                "sparse_lr",
            ),
            "train",
        )
        for name in ("max_steps", "checkpoint_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if self.evaluate_only and not self.warm_start:
            raise ConfigError(
                "train.evaluate_only: needs train.warm_start (the checkpoint to score)"
            )


@dataclass(frozen=True)
class Config:
    """The resolved configuration of one run; `output` is the run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON values in the layout `load_config` reads (model fields flat)."""
        plain = to_plain(self)
        plain["model"] = {"name": self.model.name, **plain["model"]["options"]}
        return plain

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _check_positive(owner: object, names: Sequence[str], section: str) -> None:
    for name in names:
        value = getattr(owner, name)
        if not value > 0:
            raise ConfigError(f"{section}.{name}: must be positive, got {value}")


def config_from_dict(values: dict[str, Any], origin: str = "trainer config") -> Config:
    """A Config from nested plain values (`Config.to_dict()`, a merged preset)."""
    values = dict(values)
    model = dict(values.pop("model", None) or {})
    name = model.pop("name", ModelConfig.name)
    return build(Config, {**values, "model": {"name": name, "options": model}}, origin=origin)


def load_config(
    paths: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] = ()
) -> Config:
    """Defaults <- each YAML preset in order <- `key=value` overrides, typed and checked."""
    if paths is None:
        paths = []
    elif isinstance(paths, str | Path):
        paths = [paths]
    values = merge(*[load_yaml(path) for path in paths])
    for override in overrides:
        key, value = parse_override(override)
        if key != "output" and "." not in key:
            raise ConfigError(
                f"{key}: unknown key; keys look like section.field with section in "
                "data, model, train (or 'output')"
            )
        set_dotted(values, key, value)
    origin = ", ".join(str(path) for path in paths) or "trainer config"
    return config_from_dict(values, origin=origin)
