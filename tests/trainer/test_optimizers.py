"""The fused sparse optimizer's options reach FBGEMM's kernel (one real DMP process on CPU)."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor

from trainer.config import Backend, TrainConfig
from trainer.distributed import distribute, init_process_group, shutdown_process_group
from trainer.optimizers import attach_sparse_optimizer

STEPS = 3


def _row_after_steps(config: TrainConfig, gradient_scale: float) -> tuple[list, list]:
    """Row 1 of a one-table DMP before and after STEPS steps of loss = scale x sum(row 1)."""
    group = init_process_group(Backend.GLOO)
    torch.manual_seed(0)
    tables = EmbeddingCollection(
        tables=[EmbeddingConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"])],
        device=torch.device("meta"),
    )
    attach_sparse_optimizer(tables, config)
    model, _ = distribute(nn.ModuleDict({"tables": tables}), group, config)
    row_one = KeyedJaggedTensor.from_lengths_sync(["f"], torch.tensor([1]), torch.tensor([1]))

    def lookup() -> torch.Tensor:
        return model.module["tables"](row_one)["f"].values()[0]

    before = lookup().detach().clone()
    for _ in range(STEPS):
        (lookup().sum() * gradient_scale).backward()
    after = lookup().detach().clone()
    del model
    shutdown_process_group(succeeded=True)
    return before.tolist(), after.tolist()


# case -> (gradient scale, TrainConfig options)
CASES = {
    "decay": (0.0, {"sparse_lr": 0.05, "sparse_weight_decay": 0.1}),
    "no decay": (0.0, {"sparse_lr": 0.05}),
    "plain": (1e-3, {"sparse_lr": 0.05}),
    "damped": (1e-3, {"sparse_lr": 0.05, "sparse_eps": 1e-2}),
}


def _worker(_rank: int, cases: dict, queue) -> None:
    rows = {}
    for name, (gradient_scale, options) in cases.items():
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
            os.environ.pop(key, None)  # a fresh one-process group per case, on a new port
        rows[name] = _row_after_steps(TrainConfig(**options), gradient_scale)
    queue.put(rows)


@pytest.fixture(scope="module")
def rows() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each case's row before and after, from one spawned process (its imports take ~8 s)."""
    queue = multiprocessing.get_context("spawn").Queue()
    mp.start_processes(_worker, args=(CASES, queue), nprocs=1, start_method="spawn")
    return {name: (torch.tensor(before), torch.tensor(after))
            for name, (before, after) in queue.get(timeout=120).items()}


def test_sparse_weight_decay_shrinks_a_looked_up_row_by_lr_times_decay_per_step(rows):
    before, after = rows["decay"]
    # no loss gradient: only the decoupled decay moves the row, by (1 - lr x decay) per step
    assert torch.allclose(after, before * (1 - 0.05 * 0.1) ** STEPS, rtol=1e-5)
    untouched_before, untouched_after = rows["no decay"]
    assert torch.equal(untouched_before, untouched_after)


def test_a_larger_sparse_eps_damps_the_updates_of_small_gradients(rows):
    plain_before, plain_after = rows["plain"]
    damped_before, damped_after = rows["damped"]
    assert torch.equal(plain_before, damped_before)
    plain_step = (plain_after - plain_before).abs().max()
    damped_step = (damped_after - damped_before).abs().max()
    # row-wise Adagrad's normalised steps: lr / sqrt(k) per element at the k-th equal gradient,
    # however small it is
    assert plain_step == pytest.approx(0.05 * sum(k**-0.5 for k in range(1, STEPS + 1)), rel=1e-3)
    assert damped_step < plain_step / 5
