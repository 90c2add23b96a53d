"""The trainer's configuration: dataclasses are the schema, YAML holds values, `key=value` wins.

    config = load_config("conf/train/default.yaml", ["train.max_steps=20", "model.embedding_dim=8"])

Sections: `data` (where and how to read the Delta tables), `model` (registry name plus the model's
own fields, forwarded to `model.registry.build_model` as overrides), `train` (optimisation,
sharding, checkpoints). Every key is validated on load; a bad key or value raises `ConfigError`
naming it (`train.max_step: unknown key; known: ...`).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


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


@dataclass
class DataConfig:
    """Args:
    root: directory holding `feature_spec.json` and the Delta tables (the ETL's `--output`).
    train_split / test_split: values of the `split` column.
    version: Delta table version to read (time travel); None reads the latest.
    read_rows: rows per Arrow record batch read from Parquet (memory per read).
    shuffle_buffer_rows: rows (user-days) shuffled together; memory is bounded by this.
    prefetch_batches: batches a background thread builds ahead of the training loop.
    """

    root: str = ""
    train_split: str = "train"
    test_split: str = "test"
    version: int | None = None
    read_rows: int = 256
    shuffle_buffer_rows: int = 1024
    prefetch_batches: int = 4


@dataclass
class ModelConfig:
    """Args:
    name: a key of `model.registry` (cain, lap, twin, ...).
    options: the model's own config fields (`model.embedding_dim=16` lands here); the model's
        config dataclass validates them.
    """

    name: str = "cain"
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
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
        retraining); the optimizer and data position start fresh.
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
    warm_start: str = ""
    evaluate_only: bool = False
    pipeline: bool = False
    backend: Backend = Backend.AUTO
    progress: bool = True


@dataclass
class Config:
    """The resolved configuration of one run; `output` is the run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: str = ""

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-safe values (enums as strings)."""
        return _plain(dataclasses.asdict(self))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


SECTIONS = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}


def _coerce(key: str, raw: Any, annotation: Any) -> Any:
    """Convert a YAML/CLI value to the field's declared type, or raise naming `key`."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = [option for option in typing.get_args(annotation) if option is not type(None)]
        if raw is None or (isinstance(raw, str) and raw.lower() in ("null", "none")):
            return None
        return _coerce(key, raw, options[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        try:
            return annotation(raw)
        except ValueError:
            allowed = ", ".join(member.value for member in annotation)
            raise ConfigError(f"{key}: {raw!r} is not one of {allowed}") from None
    if annotation is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.lower() in ("true", "false", "1", "0", "yes", "no"):
            return raw.lower() in ("true", "1", "yes")
        raise ConfigError(f"{key}: expected true/false, got {raw!r}")
    if annotation is int:
        if isinstance(raw, bool):
            raise ConfigError(f"{key}: expected an integer, got {raw!r}")
        try:
            return int(str(raw).replace("_", "")) if not isinstance(raw, int) else raw
        except ValueError:
            raise ConfigError(f"{key}: expected an integer, got {raw!r}") from None
    if annotation is float:
        try:
            return float(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected a number, got {raw!r}") from None
    if annotation is str:
        if isinstance(raw, dict | list):
            raise ConfigError(f"{key}: expected a string, got {raw!r}")
        return "" if raw is None else str(raw)
    if origin is dict:
        if not isinstance(raw, dict):
            raise ConfigError(f"{key}: expected a mapping, got {raw!r}")
        return dict(raw)
    raise ConfigError(f"{key}: unsupported type {annotation}")


def _set(config: Config, key: str, raw: Any) -> None:
    """Set dotted `key` (section.field) on `config`; model.<anything else> goes to model.options."""
    parts = key.split(".")
    if len(parts) == 1 and parts[0] == "output":
        config.output = _coerce(key, raw, str)
        return
    if len(parts) > 2 and parts[0] == "model":  # nested model settings: model.lap.k_top=10
        parts = ["model", ".".join(parts[1:])]
    if len(parts) != 2 or parts[0] not in SECTIONS:
        raise ConfigError(
            f"{key}: unknown key; keys look like section.field with section in "
            f"{', '.join(SECTIONS)} (or 'output')"
        )
    section_name, field_name = parts
    section = getattr(config, section_name)
    hints = typing.get_type_hints(type(section))
    if section_name == "model" and field_name not in hints:
        # The model's own dataclass validates these in build_model; YAML typing keeps 16 an int.
        section.options[field_name] = yaml.safe_load(raw) if isinstance(raw, str) else raw
        return
    if field_name not in hints:
        known = ", ".join(f"{section_name}.{name}" for name in hints)
        raise ConfigError(f"{key}: unknown key; known: {known}")
    if section_name == "model" and field_name == "options":
        if not isinstance(raw, dict):
            raise ConfigError(f"{key}: expected a mapping, got {raw!r}")
        section.options.update(raw)
        return
    setattr(section, field_name, _coerce(key, raw, hints[field_name]))


def _apply_mapping(config: Config, values: dict[str, Any], origin: str) -> None:
    for section_name, section_values in values.items():
        if section_name == "output":
            _set(config, "output", section_values)
            continue
        if section_name not in SECTIONS:
            raise ConfigError(
                f"{origin}: {section_name}: unknown section; known: data, model, train"
            )
        if not isinstance(section_values, dict):
            raise ConfigError(f"{origin}: {section_name}: expected a mapping")
        for field_name, value in section_values.items():
            _set(config, f"{section_name}.{field_name}", value)


def validate(config: Config) -> Config:
    """Range checks that types cannot express; raise naming the key."""
    positive = {
        "train.batch_size": config.train.batch_size,
        "train.eval_batch_size": config.train.eval_batch_size,
        "train.epochs": config.train.epochs,
        "train.log_every": config.train.log_every,
        "train.keep_checkpoints": config.train.keep_checkpoints,
        "data.read_rows": config.data.read_rows,
        "data.shuffle_buffer_rows": config.data.shuffle_buffer_rows,
        "data.prefetch_batches": config.data.prefetch_batches,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    non_negative = {
        "train.max_steps": config.train.max_steps,
        "train.checkpoint_every": config.train.checkpoint_every,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"{key}: must be >= 0, got {value}")
    for key, value in {
        "train.dense_lr": config.train.dense_lr,
        "train.sparse_lr": config.train.sparse_lr,
    }.items():
        if not value > 0:
            raise ConfigError(f"{key}: must be positive, got {value}")
    if not config.model.name:
        raise ConfigError("model.name: must be set (e.g. --model cain)")
    if config.train.evaluate_only and not config.train.warm_start:
        raise ConfigError("train.evaluate_only: needs train.warm_start (the checkpoint to score)")
    return config


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Defaults <- YAML file <- `key=value` overrides, then validation."""
    config = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config: no such file {path}")
        values = yaml.safe_load(path.read_text()) or {}
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: expected a mapping of sections")
        _apply_mapping(config, values, str(path))
    for override in overrides:
        key, separator, raw = override.partition("=")
        if not separator or not key:
            raise ConfigError(f"{override!r}: overrides look like key=value (train.max_steps=20)")
        _set(config, key.strip(), raw)
    return validate(config)


def config_from_dict(values: dict[str, Any]) -> Config:
    """Rebuild a Config from `Config.to_dict()` output (checkpoints, config.yaml)."""
    config = Config()
    _apply_mapping(config, values, "config")
    return validate(config)
