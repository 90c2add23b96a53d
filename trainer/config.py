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


class LRSchedule(enum.StrEnum):
    """Learning-rate factor after the warm-up, applied to every optimizer (dense and fused)."""

    CONSTANT = "constant"
    COSINE = "cosine"  # half a cosine from 1 to min_lr_ratio over the planned steps
    LINEAR = "linear"  # a straight line from 1 to min_lr_ratio over the planned steps


class SelectionMetric(enum.StrEnum):
    """The validation metric that picks the best epoch."""

    LOGLOSS = "logloss"  # lower is better
    AUC = "auc"
    GAUC = "gauc"


class Precision(enum.StrEnum):
    FP32 = "fp32"
    BF16 = "bf16"  # torch.autocast around the model's forward; the loss and optimizers in fp32


class Backend(enum.StrEnum):
    AUTO = "auto"  # nccl when CUDA is available, else gloo
    GLOO = "gloo"
    NCCL = "nccl"


@dataclass(frozen=True)
class DataConfig:
    """Args:
    root: directory holding `feature_spec.json` and the Delta tables (the ETL's `--output`).
    train_split / test_split: values of the `split` column.
    validation_days: the last N dates of the train split are held out as the validation split
        (model selection and early stopping; never trained on). 0: no validation split.
    max_history: keep at most this many most recent events of each request's history (None:
        all the tables hold, the ETL's max_len).
    version: Delta table version to read (time travel); None reads the latest.
    read_rows: rows per Arrow record batch read from Parquet (memory per read).
    shuffle_buffer_rows: rows (user-days) shuffled together; memory is bounded by this.
    prefetch_batches: batches a background thread builds ahead of the training loop.
    """

    root: str = ""
    train_split: str = "train"
    test_split: str = "test"
    validation_days: int = 0
    max_history: int | None = None
    version: int | None = None
    read_rows: int = 256
    shuffle_buffer_rows: int = 1024
    prefetch_batches: int = 4

    def __post_init__(self) -> None:
        _check_positive(self, ("read_rows", "shuffle_buffer_rows", "prefetch_batches"), "data")
        if self.validation_days < 0:
            raise ConfigError(f"data.validation_days: must be >= 0, got {self.validation_days}")


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
    max_steps: stop training after this many steps in all (0: `epochs` full epochs). Smoke runs.
    epochs: passes over the train split (at most: early stopping may end sooner).
    early_stopping_patience: stop after this many validations in a row without a better score
        (0: never stop early). Needs data.validation_days.
    validate_every: also validate every this many steps (0: at epoch ends only); each such
        validation is checkpointed, may be the selected best, and counts for early stopping and
        plateaus like an epoch end's. Needs data.validation_days; not with `pipeline`.
    selection_metric: the validation metric that decides which epoch is best.
    restore_best: evaluate the test split with the best epoch's weights (and leave them as the
        run's final checkpoint) rather than the last epoch's. Needs data.validation_days.
    plateau_lr_factor: after a validation whose score is not better than the best (and
        training goes on), load the best validated weights and optimizer state back and multiply
        both optimizers' learning rates by this factor for the rest of the run (1: off; Keras'
        ReduceLROnPlateau and FuxiCTR use 0.1, without the reload). Needs data.validation_days;
        with early_stopping_patience P the run stops at the P-th such validation in a row, so
        P >= 2 to use it.
    dense_lr: Adam learning rate of the dense (replicated) parameters (paper: 1e-3).
    sparse_optimizer / sparse_lr: fused optimizer of the embedding tables.
    sparse_eps: the fused optimizer's epsilon, added to the root of a row's squared-gradient
        accumulator (FBGEMM's default 1e-8). Row-wise Adagrad's first update of a row moves it by
        about sparse_lr per element however small its gradient; an epsilon near the gradients'
        size damps the updates of rarely seen rows (as Adagrad's initial accumulator does).
    sparse_weight_decay: decoupled weight decay of the embedding rows (FBGEMM's DECOUPLE mode, as
        AdamW): each update of a row also shrinks it by sparse_lr x this fraction; rows not looked
        up in a step are not touched. 0: off.
    warmup_steps: the learning rates of both optimizers rise linearly from 0 over these steps.
    lr_schedule / min_lr_ratio: after the warm-up, the rates follow the schedule down to
        min_lr_ratio x the configured rate at the last planned step.
    grad_clip_norm: clip the dense gradients' global norm to this (0: no clipping). The fused
        sparse optimizer updates rows inside the backward pass, out of reach of clipping.
    precision: fp32, or bf16 autocast around the forward (GPUs; slow on most CPUs).
    compile: torch.compile the dense arch (dynamic shapes; the sparse arch is TorchRec's).
    tf32: allow TF32 in CUDA matmuls and convolutions (faster, ~1e-3 relative error); false
        keeps strict fp32. Ignored on CPU.
    sharding_type: table_wise, row_wise or column_wise for every table.
    seed: seeds parameters, shuffling and everything random.
    data_seed: seeds only the shuffling of the training rows (None: `seed`). Holding one of the
        two fixed while the other varies tells initialisation from data order in a seed spread.
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
    early_stopping_patience: int = 0
    validate_every: int = 0
    selection_metric: SelectionMetric = SelectionMetric.LOGLOSS
    restore_best: bool = True
    plateau_lr_factor: float = 1.0
    dense_lr: float = 1e-3
    sparse_optimizer: SparseOptimizer = SparseOptimizer.ROWWISE_ADAGRAD
    sparse_lr: float = 0.01
    sparse_eps: float = 1e-8
    sparse_weight_decay: float = 0.0
    warmup_steps: int = 0
    lr_schedule: LRSchedule = LRSchedule.CONSTANT
    min_lr_ratio: float = 0.1
    grad_clip_norm: float = 0.0
    precision: Precision = Precision.FP32
    compile: bool = False
    tf32: bool = False
    sharding_type: ShardingType = ShardingType.TABLE_WISE
    seed: int = 2024
    data_seed: int | None = None
    log_every: int = 20
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    resume: bool = True
    warm_start: str | None = None
    evaluate_only: bool = False
    pipeline: bool = False
    backend: Backend = Backend.AUTO
    progress: bool = True

    @property
    def shuffle_seed(self) -> int:
        """The seed of the training rows' shuffle."""
        return self.seed if self.data_seed is None else self.data_seed

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
                "sparse_eps",
            ),
            "train",
        )
        for name in (
            "max_steps",
            "checkpoint_every",
            "early_stopping_patience",
            "validate_every",
            "warmup_steps",
            "grad_clip_norm",
            "sparse_weight_decay",
        ):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name}: must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ConfigError(f"train.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 < self.plateau_lr_factor <= 1.0:
            raise ConfigError(
                f"train.plateau_lr_factor: must be in (0, 1] (1: off), got {self.plateau_lr_factor}"
            )
        if self.plateau_lr_factor < 1 and self.early_stopping_patience == 1:
            raise ConfigError(
                "train.plateau_lr_factor: with early_stopping_patience 1 the run stops at the "
                "first validation without a better score, before any reload; use patience >= 2"
            )
        if self.validate_every and self.pipeline:
            raise ConfigError(
                "train.validate_every: not with train.pipeline (the pipeline holds the model's "
                "forward until the epoch ends)"
            )
        if self.sparse_weight_decay and self.sparse_optimizer is SparseOptimizer.ADAM:
            raise ConfigError(
                "train.sparse_weight_decay: not with sparse_optimizer adam (TorchRec builds "
                "torch.optim.Adam, which takes no decay mode); use rowwise_adagrad or rowwise_adam"
            )
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

    def __post_init__(self) -> None:
        if self.train.early_stopping_patience and not self.data.validation_days:
            raise ConfigError(
                "train.early_stopping_patience: needs a validation split (data.validation_days)"
            )
        if self.train.validate_every and not self.data.validation_days:
            raise ConfigError(
                "train.validate_every: needs a validation split (data.validation_days)"
            )
        if self.train.plateau_lr_factor < 1 and not self.data.validation_days:
            raise ConfigError(
                "train.plateau_lr_factor: needs a validation split (data.validation_days)"
            )

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
    return config_from_dict(values, origin="config")
