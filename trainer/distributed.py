"""Process group, sharding plan, DistributedModelParallel and optimizers.

The sparse side (the model's `EmbeddingCollection`) is sharded by TorchRec's planner with the
sharding type from the config and always the *fused* compute kernel: the embedding optimizer runs
inside the backward pass (FBGEMM's TBE), which is also the only kernel that works on CPU
(`data_parallel` and `dense` crash there, FBGEMM #4586). The planner is told the real topology:
world size, ranks per host and, on CUDA, each GPU's memory. Dense parameters are replicated (DDP
inside DMP); trainer/optimizers.py holds both optimizers.

Works under `torchrun` on one or many nodes: rank, world size and the rendezvous come from the
environment torchrun sets; without it (a plain `python` call or a test) a 1-process gloo group on
a free localhost port is created.
"""

from __future__ import annotations

import gc
import logging
import os
import socket
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embedding import EmbeddingCollectionSharder
from torchrec.distributed.embedding_types import EmbeddingComputeKernel
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.distributed.planner.types import ParameterConstraints
from torchrec.distributed.types import ShardingPlan
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection

from trainer.config import Backend, TrainConfig

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProcessGroup:
    """Where this process sits: global rank, world size, local rank and its device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def init_process_group(backend: Backend, timeout_minutes: int = 30) -> ProcessGroup:
    """Join (or create, outside torchrun) the default process group; pick this rank's device."""
    if "RANK" not in os.environ:
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(_free_port()))
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and backend != Backend.GLOO
    if backend == Backend.NCCL and not torch.cuda.is_available():
        raise RuntimeError("train.backend=nccl needs CUDA; use gloo (or auto) on CPU")
    if use_cuda:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=timedelta(minutes=timeout_minutes),
            device_id=device if use_cuda else None,
        )
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), local_rank, device)


def shutdown_process_group(*, succeeded: bool) -> None:
    """Tear the default process group down while the interpreter is still fully alive.

    After a successful run every rank first waits at a barrier, so no rank closes its connections
    while a peer still talks to it, and garbage collection frees the modules (DMP, DDP, sharded
    tables) that hold the group. Whatever is left to interpreter finalization runs after Python
    stopped handing out the GIL; a gloo worker thread that needs it then aborts the process
    ("terminate called without an active exception") after a run that did finish. After a
    failure there is no barrier: the peers may be gone, and torchrun stops the others.
    """
    if not dist.is_initialized():
        return
    gc.collect()
    if succeeded:
        dist.barrier()
    dist.destroy_process_group()
    gc.collect()


def embedding_configs(module: nn.Module) -> list[EmbeddingConfig]:
    """Every table of every EmbeddingCollection in `module`."""
    return [
        config
        for child in module.modules()
        if isinstance(child, EmbeddingCollection)
        for config in child.embedding_configs()
    ]


def topology(group: ProcessGroup) -> Topology:
    """This run's hardware for the planner: ranks, ranks per host and, on CUDA, the GPU's memory
    (the planner's default assumes a 32 GB card)."""
    options: dict = {}
    if group.device.type == "cuda":
        options["hbm_cap"] = torch.cuda.get_device_properties(group.device).total_memory
    return Topology(
        world_size=group.world_size,
        compute_device=group.device.type,
        local_world_size=int(os.environ.get("LOCAL_WORLD_SIZE", group.world_size)),
        **options,
    )


def sharding_plan(
    module: nn.Module, group: ProcessGroup, config: TrainConfig, sharders: list
) -> ShardingPlan:
    """The planner's plan with every table restricted to one sharding type and the fused kernel.

    `collective_plan` computes it on rank 0 and broadcasts it, so all ranks agree.
    """
    tables = embedding_configs(module)
    if not tables:
        raise ValueError("the model has no EmbeddingCollection: nothing for DMP to shard")
    constraints = {
        table.name: ParameterConstraints(
            sharding_types=[config.sharding_type.value],
            compute_kernels=[EmbeddingComputeKernel.FUSED.value],
        )
        for table in tables
    }
    planner = EmbeddingShardingPlanner(
        topology=topology(group),
        batch_size=config.batch_size,
        constraints=constraints,
    )
    return planner.collective_plan(module, sharders, dist.GroupMember.WORLD)


def distribute(
    module: nn.Module, group: ProcessGroup, config: TrainConfig
) -> tuple[DistributedModelParallel, ShardingPlan]:
    """Plan and wrap `module` (tables on meta, fused optimizer attached) in DMP."""
    sharders = [EmbeddingCollectionSharder()]
    plan = sharding_plan(module, group, config, sharders)
    model = DistributedModelParallel(module, device=group.device, plan=plan, sharders=sharders)
    return model, plan


def any_rank_true(flag: bool, device: torch.device) -> bool:
    """True when `flag` holds on at least one rank (a MAX all-reduce)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return flag
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()
