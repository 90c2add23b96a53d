"""Sharded checkpoints with `torch.distributed.checkpoint` (DCP), safe to load and to resume from.

Layout of `RUN_DIR/checkpoints/step_00000042/`:

    .metadata, __<rank>_0.distcp   DCP: {"model": DMP state_dict, "optimizer": fused + dense state}
    trainer_state.json             model name, the model's resolved config (every field, as this
                                   code resolved it), the code version, the run's config, step,
                                   epoch, data position, validation history and best step, world
                                   size, samples, data table version, feature spec
    rng_rank<r>.json               torch / NumPy / Python RNG states of rank r
    manifest.json                  size and SHA-256 of every file above (written last)

A checkpoint is written into `step_X.partial/` and renamed when the manifest is complete, so a
crash mid-save leaves no directory that looks finished. Loading verifies the manifest first, so a
truncated, corrupted or missing shard raises `CheckpointError` naming the file — never a silent
fresh start — and reads DCP's pickled `.metadata` with an allow-list unpickler (the tensor shards
themselves go through `torch.load(weights_only=True)` inside DCP): no arbitrary object is ever
unpickled.

Embedding tables and their optimizer state are sharded tensors, so DCP reshards them when the
world size or sharding type changes on resume.

A checkpoint is rebuilt from its own resolved model config, never from today's defaults: resume,
warm start and scoring refuse a checkpoint whose model or resolved config differs from what the
caller builds (naming the differing keys and the code versions), so a default changed later can
never silently change an old model. `RUN_DIR/checkpoints/SELECTED` names the checkpoint a run
chose (its best epoch by validation, else its last step): scoring and warm starts take it; a
resume continues from the newest one.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import json
import logging
import pickle
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.metadata import Metadata, StorageMeta

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
STATE_FILE = "trainer_state.json"
SELECTED = "SELECTED"
REPLACED = ".replaced"
STEP_NAME = re.compile(rf"(step_\d+)({re.escape(REPLACED)})?")
# 2: trainer_state.json holds model_config (resolved) and code_version.
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupted; the message names the file."""


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata only: its dataclasses, torch.Size, dtypes, paths."""

    _TORCH_NAMES = {"Size", "device", "memory_format", "layout"}
    _OTHER = {
        ("torch.serialization", "_get_layout"),
        ("torch._utils", "_get_layout"),
        ("pathlib", "PosixPath"),
        ("pathlib", "PurePosixPath"),
        ("pathlib", "WindowsPath"),
        ("pathlib", "PureWindowsPath"),
        ("collections", "OrderedDict"),
        ("builtins", "set"),
        ("builtins", "frozenset"),
        ("builtins", "slice"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if module.startswith("torch.distributed.checkpoint.") and not name.startswith("__"):
            return super().find_class(module, name)
        if module == "torch" and (
            name in self._TORCH_NAMES or isinstance(getattr(torch, name, None), torch.dtype)
        ):
            return super().find_class(module, name)
        if (module, name) in self._OTHER:
            return super().find_class(module, name)
        raise CheckpointError(
            f"checkpoint metadata refers to {module}.{name}, which is not allowed"
        )


class SafeFileSystemReader(FileSystemReader):
    """DCP's file reader with the metadata read through the allow-list unpickler."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> Metadata:
        path = Path(self.path) / ".metadata"
        try:
            with open(path, "rb") as handle:
                metadata = _AllowListUnpickler(handle).load()
        except FileNotFoundError:
            raise CheckpointError(f"missing checkpoint file {path}") from None
        except (pickle.UnpicklingError, EOFError, AttributeError, ValueError) as error:
            raise CheckpointError(f"corrupted checkpoint file {path}: {error}") from error
        if not isinstance(metadata, Metadata):
            raise CheckpointError(f"{path} does not hold DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(directory: Path) -> dict[str, Any]:
    """Check every file against the manifest; return trainer_state.json. Raise naming the file."""
    manifest_path = directory / MANIFEST
    if not manifest_path.is_file():
        raise CheckpointError(f"missing checkpoint file {manifest_path} (incomplete checkpoint)")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"corrupted checkpoint file {manifest_path}: {error}") from error
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise CheckpointError(f"missing checkpoint file {path}")
        size = path.stat().st_size
        if size != expected["size"]:
            raise CheckpointError(
                f"truncated or corrupted checkpoint file {path}: {size} bytes, manifest says "
                f"{expected['size']}"
            )
        if _sha256(path) != expected["sha256"]:
            raise CheckpointError(f"corrupted checkpoint file {path}: SHA-256 does not match")
    return read_state(directory)


def code_version() -> str:
    """The checkout's git commit (+ "-dirty" with uncommitted changes), or the package version."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        try:
            return "package " + importlib.metadata.version("cain-lifelong-ctr")
        except importlib.metadata.PackageNotFoundError:
            return "unknown (neither a git checkout nor an installed package)"


@dataclass(frozen=True)
class ModelIdentity:
    """What a checkpoint's weights belong to: the model's name and its resolved config (plain
    values, every field)."""

    name: str
    config: dict[str, Any]

    def check(self, state: dict[str, Any], directory: Path) -> None:
        """Raise CheckpointError unless the checkpoint's model and resolved config are these."""
        stored = ModelIdentity(state["model"], state.get("model_config", {}))
        if stored.name != self.name:
            raise CheckpointError(f"{directory} holds model {stored.name}, not {self.name}")
        differences = sorted(config_differences(stored.config, self.config))
        if differences:
            shown = "; ".join(differences[:5]) + (" ..." if len(differences) > 5 else "")
            raise CheckpointError(
                f"{directory} holds a {stored.name} whose resolved config differs from this one "
                f"({shown}); checkpoint written by code {state.get('code_version', 'unknown')}, "
                f"this is {code_version()}. Use the checkpoint's own config, or a new run "
                "directory / no warm start for a different model"
            )


def config_differences(stored: Any, current: Any, prefix: str = "") -> list[str]:
    """'key: stored -> current' for every leaf that differs (missing keys included)."""
    if isinstance(stored, dict) and isinstance(current, dict):
        found = []
        for key in sorted(set(stored) | set(current)):
            found += config_differences(
                stored.get(key, "<absent>"), current.get(key, "<absent>"), f"{prefix}{key}."
            )
        return found
    return [] if stored == current else [f"{prefix.rstrip('.')}: {stored!r} -> {current!r}"]


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def _step_of(path: Path) -> str:
    return STEP_NAME.fullmatch(path.name)[1]


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    return {
        "torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode(),
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch_state = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
    torch.set_rng_state(torch.from_numpy(torch_state))
    numpy_state = state["numpy"]
    np.random.set_state(
        (numpy_state[0], np.array(numpy_state[1], dtype=np.uint32), *numpy_state[2:])
    )
    python_state = state["python"]
    random.setstate((python_state[0], tuple(python_state[1]), python_state[2]))


@dataclass(frozen=True)
class Restored:
    """What a resume needs besides the weights: trainer_state.json as written."""

    directory: Path
    state: dict[str, Any]


class Checkpoints:
    """Save / find / load the checkpoints of one run directory.

    Args:
        directory: RUN_DIR/checkpoints.
        keep: how many newest step checkpoints to keep (older ones are deleted by rank 0).
    """

    def __init__(self, directory: str | Path, keep: int = 2) -> None:
        self.directory = Path(directory)
        self.keep = keep

    def _is_main(self) -> bool:
        return not dist.is_initialized() or dist.get_rank() == 0

    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def save(
        self,
        step: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
        protect: int = 0,
        selected: int = 0,
    ) -> Path:
        """Collective: every rank calls it at the same step. `protect`: a step whose checkpoint
        pruning keeps (the best epoch); `selected`: the step SELECTED names (else this step)."""
        final = self.directory / step_name(step)
        partial = self.directory / f"{step_name(step)}.partial"
        if self._is_main():
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True, exist_ok=True)
        self._barrier()
        dcp.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict()},
            checkpoint_id=partial,
        )
        rank = dist.get_rank() if dist.is_initialized() else 0
        (partial / f"rng_rank{rank}.json").write_text(json.dumps(_rng_state()))
        self._barrier()
        if self._is_main():
            (partial / STATE_FILE).write_text(
                json.dumps({"format": FORMAT_VERSION, **state}, indent=2)
            )
            files = {
                path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
                for path in sorted(partial.iterdir())
                if path.is_file()
            }
            (partial / MANIFEST).write_text(json.dumps({"files": files}, indent=2))
            # A second save at the same step (an epoch end on a checkpoint_every step) moves the
            # first aside and deletes it only after the rename: a kill in between leaves a
            # complete step_X or a step_X.replaced that complete() counts as step X.
            replaced = self.directory / f"{step_name(step)}{REPLACED}"
            if final.is_dir():
                shutil.rmtree(replaced, ignore_errors=True)
                final.rename(replaced)
            partial.rename(final)
            shutil.rmtree(replaced, ignore_errors=True)
            self._prune(protect)
            self._select(selected or step)
        self._barrier()
        logger.info("checkpoint saved: %s", final)
        return final

    def _prune(self, protect: int) -> None:
        complete = [path for path in self.complete() if _step_of(path) != step_name(protect)]
        for old in complete[: max(len(complete) - self.keep, 0)]:
            shutil.rmtree(old, ignore_errors=True)

    def _select(self, step: int) -> None:
        marker = self.directory / SELECTED
        partial = self.directory / f"{SELECTED}.partial"
        partial.write_text(step_name(step) + "\n")
        partial.replace(marker)  # atomic

    def selected(self) -> Path | None:
        """The checkpoint the run chose (SELECTED), else the newest."""
        marker = self.directory / SELECTED
        if marker.is_file():
            chosen = self.at(marker.read_text().strip())
            if chosen is not None:
                return chosen
        return self.latest()

    def at(self, step: int | str) -> Path | None:
        """The finished checkpoint of this step (a number or its step_X name), if any."""
        name = step_name(step) if isinstance(step, int) else step
        return next((path for path in self.complete() if _step_of(path) == name), None)

    def complete(self) -> list[Path]:
        """Finished checkpoint directories (renamed from .partial), oldest first; a step_X that a
        killed re-save left only as step_X.replaced counts as that step."""
        if not self.directory.is_dir():
            return []
        steps = {}
        for path in self.directory.iterdir():
            match = STEP_NAME.fullmatch(path.name)
            if path.is_dir() and match and (match[2] is None or match[1] not in steps):
                steps[match[1]] = path
        return [steps[name] for name in sorted(steps)]

    def latest(self) -> Path | None:
        complete = self.complete()
        return complete[-1] if complete else None


def read_state(directory: Path) -> dict[str, Any]:
    """trainer_state.json without verifying the weights (a cheap look before a run starts)."""
    try:
        state = json.loads((directory / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot read {directory / STATE_FILE}: {error}") from error
    if state.get("format") != FORMAT_VERSION:
        raise CheckpointError(
            f"{directory / STATE_FILE}: checkpoint format {state.get('format')!r}, this code "
            f"reads {FORMAT_VERSION} (format 1 did not store the resolved model config: retrain)"
        )
    return state


def find(path: str | Path) -> Path:
    """A checkpoint directory from a checkpoint, a run's checkpoints/ or a run directory (its
    SELECTED checkpoint, else its newest). Raises CheckpointError naming what is missing."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"no checkpoint directory {directory}")
    if (directory / MANIFEST).is_file():
        return directory
    for candidate in (directory / "checkpoints", directory):
        chosen = Checkpoints(candidate).selected()
        if chosen is not None:
            return chosen
    raise CheckpointError(f"no complete checkpoint under {directory}")


def load(
    directory: str | Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    expected: ModelIdentity,
    restore_rng: bool,
) -> Restored:
    """Verify, check it holds `expected`, then load weights (and optimizer state when given)
    into the DMP model in place."""
    directory = Path(directory)
    state = verify(directory)
    expected.check(state, directory)
    content: dict[str, Any] = {"model": model.state_dict()}
    if optimizer is not None:
        content["optimizer"] = optimizer.state_dict()
    try:
        dcp.load(content, storage_reader=SafeFileSystemReader(directory))
    except CheckpointError:
        raise
    except Exception as error:  # DCP wraps per-rank failures in CheckpointException
        raise CheckpointError(f"cannot load checkpoint {directory}: {error}") from error
    model.load_state_dict(content["model"])
    if optimizer is not None:
        optimizer.load_state_dict(content["optimizer"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = directory / f"rng_rank{rank}.json"
    if (
        restore_rng
        and rng_file.is_file()
        and state.get("world_size") == (dist.get_world_size() if dist.is_initialized() else 1)
    ):
        _set_rng_state(json.loads(rng_file.read_text()))
    return Restored(directory=directory, state=state)


def warm_start(path: str | Path, model: torch.nn.Module, expected: ModelIdentity) -> dict[str, Any]:
    """Initialise weights from another run's checkpoint (daily retraining); optimizer starts fresh.

    `path`: a checkpoint or a run directory (its SELECTED checkpoint). The checkpoint must hold
    `expected` (same model, same resolved config). Tables whose row count changed (a new day's
    spec with more ids and rows below the cap) get the overlapping rows copied and keep their
    fresh initialisation for the new rows; every other parameter must match in shape. Returns
    the source's trainer_state.json.
    """
    try:
        directory = find(path)
    except CheckpointError as error:
        raise CheckpointError(f"warm start: {error}") from None
    state = verify(directory)
    expected.check(state, directory)
    reader = SafeFileSystemReader(directory)
    metadata = reader.read_metadata()
    target = model.state_dict()
    same, resized = {}, {}
    for key, value in target.items():
        stored = metadata.state_dict_metadata.get(f"model.{key}")
        if stored is None:
            raise CheckpointError(f"warm start: {directory} has no parameter {key}")
        stored_size = tuple(getattr(stored, "size", ()))
        if stored_size == tuple(
            value.shape if not isinstance(value, ShardedTensor) else value.size()
        ):
            same[key] = value
        elif (
            isinstance(value, ShardedTensor)
            and len(stored_size) == 2
            and stored_size[1] == value.size()[1]
        ):
            resized[key] = (value, stored_size)
        else:
            raise CheckpointError(
                f"warm start: {key} has shape {stored_size} in {directory}, "
                f"model expects {tuple(value.shape)}"
            )
    content = {"model": same}
    dcp.load(content, storage_reader=SafeFileSystemReader(directory))
    for key, (sharded, stored_size) in resized.items():
        # The old table is read whole on every rank (tables that change size are the small,
        # uncapped ones), then each rank copies the overlap into its own shards.
        old = {"model": {key: torch.empty(stored_size, dtype=sharded.dtype)}}
        dcp.load(old, storage_reader=SafeFileSystemReader(directory))
        old_table = old["model"][key]
        for shard in sharded.local_shards():
            row, column = shard.metadata.shard_offsets
            rows, columns = shard.metadata.shard_sizes
            overlap = max(0, min(rows, stored_size[0] - row))
            if overlap:
                shard.tensor[:overlap].copy_(
                    old_table[row : row + overlap, column : column + columns]
                )
        logger.info("warm start: %s resized %s -> %s rows", key, stored_size[0], sharded.size()[0])
    model.load_state_dict({**target, **same}, strict=False)
    return state
