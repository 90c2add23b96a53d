"""The training loop and the evaluation pass.

Every rank must run exactly the same number of steps: DMP's all-to-alls and DDP's all-reduces are
collectives, and one rank with one batch fewer kills gloo ("Connection reset by peer"). Ranks'
shares hold about, not exactly, the same samples, so one rank may run out of data a step or two
before another. Nothing is dropped for that:

- training: `SynchronizedBatches` all-reduces (has a batch, samples) before each step; the epoch
  goes on while any rank has data, and a rank that ran out trains on a filler batch whose loss
  weight is 0. Every real sample of the step gets weight W/N (W ranks, N samples in the step over
  all ranks), so after DDP averages the ranks' gradients the step's gradient is the exact mean over
  its N samples (model/train_wrapper.py) — one epoch trains on every sample of the split once;
- evaluation: exhausted ranks feed the filler until every rank is done; its predictions are
  discarded, so no test sample is dropped either.
"""

from __future__ import annotations

import collections
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.batch import Batch
from trainer.config import SelectionMetric, TrainConfig
from trainer.distributed import ProcessGroup, all_reduce_sum, any_rank_true
from trainer.metrics import Metrics, compute_metrics, gather_predictions
from trainer.optimizers import ClippedSteps, LearningRates

logger = logging.getLogger(__name__)
# No tqdm monitor thread: a daemon thread that wakes up while the interpreter shuts down is ended
# by pthread_exit, which can abort a finished run ("terminate called without an active exception").
tqdm.monitor_interval = 0


@dataclass
class TrainState:
    """Where training is (global step, epoch, batches consumed in it: the data position) and what
    validation has shown so far; all of it goes into every checkpoint."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples: int = 0  # samples this rank trained on, over all epochs
    validation_history: list[dict] = field(default_factory=list)
    best_step: int = 0
    best_epoch: int | None = None
    best_score: float | None = None
    epochs_without_improvement: int = 0
    stopped_early: bool = False
    restored_best: bool = False
    lr_scale: float = 1.0  # x every learning rate: plateau_lr_factor per reload of the best

    def finished(self, config: TrainConfig) -> bool:
        if config.max_steps and self.step >= config.max_steps:
            return True
        if self.stopped_early:
            return True
        return self.epoch >= config.epochs

    def record_validation(self, metrics: Metrics, selection: SelectionMetric) -> bool:
        """Adds a validation result; True when it is the best so far."""
        entry = {
            "epoch": self.epoch,
            "step": self.step,
            "lr_scale": self.lr_scale,
            **metrics.to_json(),
        }
        self.validation_history.append(entry)
        score = entry[selection.value]
        if score is None:  # undefined (one class): never the best, never an improvement
            self.epochs_without_improvement += 1
            return False
        better = self.best_score is None or (
            score < self.best_score
            if selection is SelectionMetric.LOGLOSS
            else score > self.best_score
        )
        if better:
            self.best_score, self.best_step, self.best_epoch = score, self.step, self.epoch
            self.epochs_without_improvement = 0
        else:
            self.epochs_without_improvement += 1
        return better

    def validated_now(self) -> bool:
        """Whether the latest validation was taken at the current step."""
        return bool(self.validation_history) and self.validation_history[-1]["step"] == self.step

    def end_epoch(self) -> None:
        """The epoch's data ran out. A validation taken at this very step (validate_every) is the
        epoch's own: it and the best it may be count the completed epoch."""
        self.epoch += 1
        self.batches_in_epoch = 0
        if self.validated_now():
            self.validation_history[-1]["epoch"] = self.epoch
            if self.best_step == self.step:
                self.best_epoch = self.epoch

    def stop_after(self, patience: int) -> None:
        """Early stopping: after `patience` validations in a row without a better one."""
        if patience and self.epochs_without_improvement >= patience:
            self.stopped_early = True

    def reduce_on_plateau(self, factor: float, config: TrainConfig) -> bool:
        """After the latest validation: True when training goes on from the best step's weights
        at `factor` x the rates (the caller reloads them), i.e. the validation was not the best,
        a best exists, factor < 1 and the run is not over."""
        if factor >= 1 or not self.epochs_without_improvement or not self.best_step:
            return False
        if self.finished(config):
            return False
        self.lr_scale *= factor
        return True

    def to_checkpoint(self, global_samples: float, world_size: int) -> dict:
        """The fields a checkpoint stores (samples over all ranks, so any world size resumes)."""
        values = asdict(self)
        values.update(samples=int(global_samples), world_size=world_size)
        return values

    @staticmethod
    def from_checkpoint(saved: dict, world_size: int, rank: int = 0) -> TrainState:
        """Same global progress when the world size changed: each rank skips its share. The
        shares and shuffles are per rank, so the rest of that epoch then differs from an
        uninterrupted run's (some samples twice, others not at all); later epochs do not."""
        known = {name for name in TrainState.__dataclass_fields__}
        state = TrainState(**{key: value for key, value in saved.items() if key in known})
        state.batches_in_epoch = saved["batches_in_epoch"] * saved["world_size"] // world_size
        # Rank 0 carries the remainder, so n_train (the sum over ranks) stays exact.
        state.samples = saved["samples"] // world_size + (saved["samples"] % world_size) * (
            rank == 0
        )
        state.restored_best = False
        return state


@dataclass(frozen=True)
class EpochResult:
    """Wall time and throughput of this process's training (a resumed run: since the resume)."""

    seconds: float
    samples_per_second: float
    resumed_from_step: int


class TrainingDiverged(RuntimeError):
    """A step's training loss was NaN or infinite on some rank."""


class SynchronizedBatches:
    """Yields this rank's batches, weighted for the step, while *any* rank still has one and fewer
    than `limit` steps were taken; a rank out of data yields `filler` with weight 0.

    limit: stop after this many steps (0: no limit). The same object serves the plain loop and
    TrainPipelineSparseDist, which pulls batches ahead: both call next() the same number of times
    on every rank, so the all-reduces line up. The same all-reduce carries whether a rank's last
    recorded loss was not finite: then every rank raises TrainingDiverged at that next().
    """

    def __init__(
        self, batches: Iterator[Batch], group: ProcessGroup, filler: Batch, limit: int = 0
    ) -> None:
        self.batches = batches
        self.group = group
        self.filler = filler.with_weights(torch.zeros_like(filler.weights))
        self.limit = limit
        self.taken = 0
        self.done = False
        self.nonfinite_step = 0  # the step whose loss was not finite on this rank (0: none)
        # (real samples, weight of each) of batches handed out and not yet trained on, oldest
        # first: the pipeline pulls ahead, and the loop credits each step with its own batch.
        self.pending: collections.deque[tuple[int, float]] = collections.deque()

    def __iter__(self) -> SynchronizedBatches:
        return self

    def __next__(self) -> Batch:
        if self.done or (self.limit and self.taken >= self.limit):
            self.done = True
            raise StopIteration
        batch = next(self.batches, None)
        local = batch.num_samples if batch is not None else 0
        ranks_with_data, step_samples, diverged, steps = all_reduce_sum(
            [
                float(batch is not None),
                float(local),
                float(self.nonfinite_step > 0),
                float(self.nonfinite_step),
            ],
            self.group.device,
        )
        if diverged:  # the ranks run in lockstep: every diverged rank saw it at the same step
            raise TrainingDiverged(
                f"the training loss is NaN or infinite at step {int(steps / diverged)} on "
                f"{int(diverged)} of {self.group.world_size} rank(s): "
                "the model diverged; lower the learning rates (train.dense_lr, train.sparse_lr) "
                "or clip the gradients (train.grad_clip_norm)"
            )
        if ranks_with_data == 0:
            self.done = True
            raise StopIteration
        self.taken += 1
        if batch is None:
            self.pending.append((0, 0.0))
            return self.filler
        weight = self.group.world_size / step_samples
        self.pending.append((local, weight))
        return batch.with_weights(torch.full_like(batch.weights, weight))


class ProgressLog:
    """tqdm bar (optional) plus a log line every `every` steps on rank 0; TensorBoard scalars."""

    def __init__(
        self, group: ProcessGroup, every: int, total: int | None, show_bar: bool, writer
    ) -> None:
        self.group = group
        self.every = every
        self.writer = writer
        self.bar = tqdm(
            total=total, desc="train", unit="step", disable=not (show_bar and group.is_main)
        )
        self.window_start = time.perf_counter()
        self.window_samples = 0
        self.window_losses: list[float] = []
        self.window_norms: list[float] = []

    def step(
        self,
        state: TrainState,
        loss: float | None,
        samples: int,
        lr_factor: float = 1.0,
        grad_norm: float = 0.0,
    ) -> None:
        """loss: this rank's mean loss over its samples of the step (None: a filler step);
        grad_norm: the dense gradients' norm before clipping (the same on every rank)."""
        self.bar.update(1)
        self.window_samples += samples
        self.window_norms.append(grad_norm)
        if loss is not None:
            self.window_losses.append(loss)
        if state.step % self.every:
            return
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        # Local numbers only: a collective here would have to run on every rank in lockstep.
        rate = self.window_samples * self.group.world_size / elapsed
        mean_loss = float(np.mean(self.window_losses)) if self.window_losses else float("nan")
        mean_norm = float(np.mean(self.window_norms))  # every step of the window adds one
        if self.group.is_main:
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", samples_per_sec=f"{rate:.0f}")
            logger.info(
                "step %d epoch %d loss %.4f lr x%.3f grad norm %.3g samples/s %.0f",
                state.step,
                state.epoch,
                mean_loss,
                lr_factor,
                mean_norm,
                rate,
            )
            if self.writer is not None:
                self.writer.add_scalar("train/loss", mean_loss, state.step)
                self.writer.add_scalar("train/lr_factor", lr_factor, state.step)
                self.writer.add_scalar("train/grad_norm", mean_norm, state.step)
                self.writer.add_scalar("train/samples_per_sec", rate, state.step)
        self.window_start, self.window_samples = time.perf_counter(), 0
        self.window_losses, self.window_norms = [], []

    def close(self) -> None:
        self.bar.close()


def train_steps(
    model: nn.Module,
    batches: SynchronizedBatches,
    state: TrainState,
    group: ProcessGroup,
    progress: ProgressLog,
    on_step: Callable[[TrainState], None],
    learning_rates: LearningRates,
    clipped: ClippedSteps,
    pipeline=None,
) -> bool:
    """Run steps until `batches` stops (-> True) or `on_step` stopped training early (-> False);
    `on_step` runs after each step (checkpoints, validation).

    Each step: set the step's learning rates, zero the gradients (which also hands the fused
    optimizer its rate), forward, backward (the fused optimizer updates the looked-up rows),
    clip the dense gradients, dense Adam step (`clipped`: the optimizer wrapped in ClippedSteps).
    pipeline: a TorchRec TrainPipelineSparseDist built on `model` and `clipped` (it runs forward,
    backward and the clipped step itself)."""
    model.train()
    while True:
        factor = learning_rates.apply(state.step + 1)
        if pipeline is not None:
            try:
                loss, _, _ = pipeline.progress(batches)  # CTRTrain's detached outputs
            except StopIteration:
                return True
        else:
            try:
                batch = next(batches)
            except StopIteration:
                return True
            clipped.zero_grad()
            loss, _ = model(batch.to(group.device, non_blocking=True))
            loss.backward()
            clipped.step()
        samples, weight = batches.pending.popleft()
        state.step += 1
        state.batches_in_epoch += 1
        state.samples += samples
        # This rank's mean BCE (+ auxiliary) over its samples: loss / (samples x weight).
        local_mean = float(loss.detach()) / (samples * weight) if samples else None
        if local_mean is not None and not math.isfinite(local_mean):
            batches.nonfinite_step = batches.nonfinite_step or state.step
        progress.step(state, local_mean, samples, factor, clipped.norm)
        on_step(state)
        if state.stopped_early:  # decided on every rank alike (gathered validation metrics)
            return False


@dataclass(frozen=True)
class Evaluation:
    """Metrics over every rank's predictions, plus the samples each rank scored."""

    metrics: Metrics
    local_samples: int
    steps: int


@torch.no_grad()
def evaluate(
    model: nn.Module, batches: Iterator[Batch], filler: Batch, group: ProcessGroup, show_bar: bool
) -> Evaluation:
    """Score the test split on every rank, gather all predictions, compute exact metrics.

    model: returns (loss, (loss, logits [B], labels [B])) for a Batch (CTRTrain inside DMP).
    filler: a tiny batch run by ranks that are out of data while others still have some.
    """
    model.eval()
    labels, logits, users = [], [], []
    steps = 0
    bar = tqdm(desc="evaluate", unit="step", disable=not (show_bar and group.is_main))
    while True:
        batch = next(batches, None)
        if not any_rank_true(batch is not None, group.device):
            break
        real = batch is not None
        _, (_, batch_logits, _) = model(
            (batch if real else filler).to(group.device, non_blocking=True)
        )
        if real:
            labels.append(batch.labels)
            logits.append(batch_logits.detach().float().cpu())
            users.append(batch.user_ids)
        steps += 1
        bar.update(1)
    bar.close()
    model.train()
    local_labels = torch.cat(labels) if labels else torch.zeros(0)
    local_logits = torch.cat(logits) if logits else torch.zeros(0)
    local_users = torch.cat(users) if users else torch.zeros(0, dtype=torch.long)
    # Gather on the group's device (nccl needs CUDA tensors), compute on every rank.
    all_labels, all_logits, all_users = gather_predictions(
        [
            local_labels.to(group.device, torch.float32),
            local_logits.to(group.device, torch.float32),
            local_users.to(group.device, torch.long),
        ]
    )
    metrics = compute_metrics(all_labels, all_logits, all_users)
    return Evaluation(metrics=metrics, local_samples=int(local_labels.shape[0]), steps=steps)


def global_sum(value: float, group: ProcessGroup) -> float:
    return all_reduce_sum([value], group.device)[0]
