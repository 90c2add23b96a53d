"""The two optimizers and their learning-rate schedule.

- Sparse: the embedding tables' optimizer is *fused* into the backward pass (FBGEMM's TBE applies
  it to the looked-up rows as their gradients arrive; `attach_sparse_optimizer`, before DMP
  shards the tables). Row-wise Adagrad, partial row-wise Adam or Adam, at `train.sparse_lr`,
  with `train.sparse_eps` and decoupled weight decay `train.sparse_weight_decay` (FBGEMM ignores a
  weight decay whose mode is left at its default NONE, so the mode is always passed with it).
- Dense: Adam at `train.dense_lr` over the replicated parameters, after DDP has averaged their
  gradients, with optional global-norm clipping (`clip_dense_gradients`).
- `CombinedOptimizer` holds both, so a checkpoint saves both states.
- `LearningRates` sets every parameter group's rate each step: a linear warm-up from 0 over
  `train.warmup_steps`, then constant, cosine or linear decay to `min_lr_ratio` x the configured
  rate at the last planned step, times `scale` (lowered by `train.plateau_lr_factor` each time
  validation stops improving). The fused optimizer reads its rate when it is stepped or
  zeroed, so the loop sets the rates before `zero_grad` and the next backward uses them.
"""

from __future__ import annotations

import math

import torch

# the TBE's own module (the mode's home moved between FBGEMM releases; the TBE imports it here)
from fbgemm_gpu.split_table_batched_embeddings_ops_training import WeightDecayMode
from torch import nn
from torchrec.distributed import DistributedModelParallel
from torchrec.optim import PartialRowWiseAdam, RowWiseAdagrad
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.keyed import CombinedOptimizer, KeyedOptimizerWrapper
from torchrec.optim.optimizers import in_backward_optimizer_filter

from trainer.config import LRSchedule, SparseOptimizer, TrainConfig

SPARSE_OPTIMIZERS: dict[SparseOptimizer, type[torch.optim.Optimizer]] = {
    SparseOptimizer.ROWWISE_ADAGRAD: RowWiseAdagrad,
    SparseOptimizer.ROWWISE_ADAM: PartialRowWiseAdam,
    SparseOptimizer.ADAM: torch.optim.Adam,
}


def attach_sparse_optimizer(sparse_arch: nn.Module, config: TrainConfig) -> None:
    """Fuse the configured optimizer into the embedding tables' backward (before DMP)."""
    apply_optimizer_in_backward(
        SPARSE_OPTIMIZERS[config.sparse_optimizer],
        list(sparse_arch.parameters()),
        sparse_optimizer_options(config),
    )


def sparse_optimizer_options(config: TrainConfig) -> dict:
    """The fused optimizer's arguments (TorchRec hands them to FBGEMM's TBE as fused params)."""
    options: dict = {"lr": config.sparse_lr, "eps": config.sparse_eps}
    if config.sparse_weight_decay:
        options["weight_decay"] = config.sparse_weight_decay
        options["weight_decay_mode"] = WeightDecayMode.DECOUPLE
    return options


def dense_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The replicated parameters (everything the fused optimizer does not step)."""
    return dict(in_backward_optimizer_filter(model.named_parameters()))


def combined_optimizer(model: DistributedModelParallel, learning_rate: float) -> CombinedOptimizer:
    """Adam over the replicated parameters combined with DMP's fused sparse optimizer.

    The combined optimizer's state_dict holds both (sharded tensors for the tables), which is what
    the checkpoint saves.
    """
    dense = KeyedOptimizerWrapper(
        dense_parameters(model), lambda parameters: torch.optim.Adam(parameters, lr=learning_rate)
    )
    # Adam's state is lazy: a parameter that has had no gradient yet (a branch some batches skip)
    # has none, so a checkpoint would lack it and a resumed run would take a different first step
    # for it. A zero-gradient step now gives every parameter state in every run, resumed or not.
    dense.init_state()
    for parameter in dense.params.values():
        parameter.grad = None
    return CombinedOptimizer([model.fused_optimizer, dense])


def clip_dense_gradients(parameters: list[nn.Parameter], max_norm: float) -> float:
    """Clip the dense gradients' global norm to max_norm (0: only measure). -> the norm before.

    DDP has already averaged the gradients, so every rank clips by the same factor."""
    gradients = [parameter for parameter in parameters if parameter.grad is not None]
    if not gradients:
        return 0.0
    if max_norm > 0:
        return float(torch.nn.utils.clip_grad_norm_(gradients, max_norm))
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in gradients])))


class ClippedSteps:
    """The optimizer with the dense gradients clipped before each step, as the plain loop and
    TorchRec's TrainPipelineSparseDist call it (zero_grad, step). `norm`: the dense gradients'
    global norm before the last step's clipping (the progress log reports it)."""

    def __init__(
        self, optimizer: torch.optim.Optimizer, parameters: list[nn.Parameter], max_norm: float
    ) -> None:
        self.optimizer, self.parameters, self.max_norm = optimizer, parameters, max_norm
        self.norm = 0.0

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def step(self) -> None:
        self.norm = clip_dense_gradients(self.parameters, self.max_norm)
        self.optimizer.step()


class LearningRates:
    """Sets each parameter group's rate to its configured rate x `factor(step)`.

    Args:
        optimizer: the combined optimizer (its groups' current rates are the configured ones).
        config: warmup_steps, lr_schedule, min_lr_ratio.
        planned_steps: the run's total steps (the decay ends there); steps past it keep the last
            factor.
    """

    def __init__(
        self, optimizer: torch.optim.Optimizer, config: TrainConfig, planned_steps: int
    ) -> None:
        self.optimizer = optimizer
        self.base = [group["lr"] for group in optimizer.param_groups]
        self.warmup = config.warmup_steps
        self.schedule = config.lr_schedule
        self.floor = config.min_lr_ratio
        self.planned = max(planned_steps, 1)
        self.scale = 1.0  # reduced on validation plateaus (TrainState.lr_scale)

    def factor(self, step: int) -> float:
        """The multiplier for the update of step `step` (1-based)."""
        if self.warmup and step <= self.warmup:
            return step / self.warmup
        if self.schedule is LRSchedule.CONSTANT:
            return 1.0
        span = max(self.planned - self.warmup, 1)
        progress = min(max(step - self.warmup, 0) / span, 1.0)
        if self.schedule is LRSchedule.COSINE:
            return self.floor + (1 - self.floor) * 0.5 * (1 + math.cos(math.pi * progress))
        return 1 - (1 - self.floor) * progress

    def apply(self, step: int) -> float:
        """Set the rates for step `step`; returns the factor (the schedule's x `scale`)."""
        factor = self.factor(step) * self.scale
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * factor
        return factor
