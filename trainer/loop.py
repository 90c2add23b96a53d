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
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from model.batch import Batch
from trainer.distributed import ProcessGroup, all_reduce_sum, any_rank_true
from trainer.metrics import Metrics, compute_metrics, gather_predictions

logger = logging.getLogger(__name__)
# No tqdm monitor thread: a daemon thread that wakes up while the interpreter shuts down is ended
# by pthread_exit, which can abort a finished run ("terminate called without an active exception").
tqdm.monitor_interval = 0


@dataclass
class TrainState:
    """Where training is: global step, epoch and batches consumed in it (the data position)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    samples: int = 0  # samples this rank trained on, over all epochs


class SynchronizedBatches:
    """Yields this rank's batches, weighted for the step, while *any* rank still has one and fewer
    than `limit` steps were taken; a rank out of data yields `filler` with weight 0.

    limit: stop after this many steps (0: no limit). The same object serves the plain loop and
    TrainPipelineSparseDist, which pulls batches ahead: both call next() the same number of times
    on every rank, so the all-reduces line up.
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
        # Real samples of batches handed out and not yet trained on, oldest first: the pipeline
        # pulls ahead, and the loop credits each step with the batch it actually consumed.
        self.pending_samples: collections.deque[int] = collections.deque()

    def __iter__(self) -> SynchronizedBatches:
        return self

    def __next__(self) -> Batch:
        if self.done or (self.limit and self.taken >= self.limit):
            self.done = True
            raise StopIteration
        batch = next(self.batches, None)
        local = batch.num_samples if batch is not None else 0
        ranks_with_data, step_samples = all_reduce_sum(
            [float(batch is not None), float(local)], self.group.device
        )
        if ranks_with_data == 0:
            self.done = True
            raise StopIteration
        self.taken += 1
        self.pending_samples.append(local)
        if batch is None:
            return self.filler
        weight = self.group.world_size / step_samples
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

    def step(self, state: TrainState, loss: float, samples: int) -> None:
        self.bar.update(1)
        self.window_samples += samples
        self.window_losses.append(loss)
        if state.step % self.every:
            return
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        # Local numbers only: a collective here would have to run on every rank in lockstep.
        rate = self.window_samples * self.group.world_size / elapsed
        mean_loss = float(np.mean(self.window_losses))
        if self.group.is_main:
            self.bar.set_postfix(loss=f"{mean_loss:.4f}", samples_per_sec=f"{rate:.0f}")
            logger.info(
                "step %d epoch %d loss %.4f samples/s %.0f",
                state.step,
                state.epoch,
                mean_loss,
                rate,
            )
            if self.writer is not None:
                self.writer.add_scalar("train/loss", mean_loss, state.step)
                self.writer.add_scalar("train/samples_per_sec", rate, state.step)
        self.window_start, self.window_samples, self.window_losses = time.perf_counter(), 0, []

    def close(self) -> None:
        self.bar.close()


def train_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: SynchronizedBatches,
    state: TrainState,
    group: ProcessGroup,
    progress: ProgressLog,
    on_step: Callable[[TrainState], None],
    pipeline=None,
) -> None:
    """Run steps until `batches` stops; `on_step` runs after each (checkpoints).

    pipeline: a TorchRec TrainPipelineSparseDist built on `model`/`optimizer`, or None for the
    plain loop (forward, backward — which also steps the fused sparse optimizer — dense step).
    """
    model.train()
    while True:
        if pipeline is not None:
            try:
                loss, _, _ = pipeline.progress(batches)  # CTRTrain's detached outputs
            except StopIteration:
                break
        else:
            try:
                batch = next(batches)
            except StopIteration:
                break
            loss, _ = model(batch.to(group.device, non_blocking=True))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        samples = batches.pending_samples.popleft()
        state.step += 1
        state.batches_in_epoch += 1
        state.samples += samples
        progress.step(state, float(loss.detach()), samples)
        on_step(state)


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
