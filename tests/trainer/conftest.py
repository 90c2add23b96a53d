"""Shared fixtures: tiny contract-conformant Delta tables written once per session (no Spark)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.synthetic_samples import write_synthetic_samples

REPO_ROOT = Path(__file__).resolve().parents[2]

# Tiny model and batch sizes for every real training run in these tests.
TINY_OVERRIDES = [
    "model.embedding_dim=8",
    "model.mlp_dims=[32,16]",
    "train.batch_size=64",
    "train.eval_batch_size=256",
    "train.progress=false",
    "train.log_every=5",
    "data.shuffle_buffer_rows=32",
    "data.read_rows=16",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """48 users x 4 days (3 train days, 1 test day), 3 uneven files per day."""
    root = tmp_path_factory.mktemp("tiny_samples")
    write_synthetic_samples(root, users=48, days=4, files_per_day=3, max_len=30, seed=11)
    return root


@pytest.fixture(scope="session")
def heavy_rows_data(tmp_path_factory) -> Path:
    """Few, heavy user-days (30 requests x 4 candidates each): rank shares cannot be equal."""
    root = tmp_path_factory.mktemp("heavy_rows")
    write_synthetic_samples(
        root, users=5, days=3, events_per_day=40, requests_per_day=30, max_len=30, seed=13
    )
    return root


@pytest.fixture(scope="session")
def next_day_data(tmp_path_factory) -> Path:
    """Like tiny_data but with more items: the item table grows (new ids since the last spec)."""
    root = tmp_path_factory.mktemp("next_day_samples")
    write_synthetic_samples(root, users=48, days=4, items=700, max_len=30, seed=12)
    return root


@pytest.fixture(scope="session")
def feed_data(tmp_path_factory) -> Path:
    """Feed-like data with two demographic fields and a history cap shorter than the timelines."""
    root = tmp_path_factory.mktemp("feed_samples")
    write_synthetic_samples(
        root, users=12, days=3, max_len=10, demographics={"age": 5, "gender": 3}, seed=5
    )
    return root


def torchrun(
    arguments: list[str],
    *,
    nproc: int = 2,
    extra_env: dict[str, str] | None = None,
    timeout: int = 240,
    launcher: list[str] | None = None,
    script: Path | None = None,
) -> subprocess.CompletedProcess:
    """Run `torchrun ... trainer/main.py ARGS` (or `script`) from the repo root; returns the
    finished process."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    env.update(extra_env or {})
    command = launcher or [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
    ]
    return subprocess.run(
        [*command, str(script or REPO_ROOT / "trainer" / "main.py"), *arguments],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def main_in_process(arguments: list[str], capfd) -> tuple[int, str]:
    """`trainer/main.py ARGS` run in this process as rank 0 of one, for a case that must stop
    before training (a pre-flight error): (its exit code, its stderr). `capfd`: pytest's."""
    from trainer import main

    capfd.readouterr()
    with pytest.MonkeyPatch.context() as patch:
        for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
            patch.delenv(name, raising=False)
        with pytest.raises(SystemExit) as exit_info:
            main.main(arguments)
    return exit_info.value.code, capfd.readouterr().err
