"""The loss lives here, not in the models (torchrec's `DLRMTrain` pattern).

`CTRTrain(model)(batch) -> (loss, (loss, logits, labels))`, always: loss = the weighted mean BCE
with logits over the batch's samples (paper eq. 3) + the model's auxiliary loss (SIM's GSU loss,
already weighted by α; 0 for the others); the second element is detached, what the training loop
logs and evaluation scores (it is also what TorchRec's `TrainPipelineSparseDist.progress`
returns). Wrap this module, not the bare model, in `DistributedModelParallel`: its model's sparse
arch (the one EmbeddingCollection) is found and sharded in place.

Weights: the loss is sum(w · bce) + auxiliary · sum(w) with `batch.weights` [B]; 1/B each (the
batch mean) unless the trainer sets them: per step it sets W/N on every sample of every rank (W
ranks, N samples in the step over all ranks) and 0 on a filler batch, so the step's gradient is
the exact mean over the step's samples after DDP averages the ranks, whatever each rank holds
(trainer/loop.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model.batch import Batch
from model.lifelong_model import LifelongCTRModel


class CTRTrain(nn.Module):
    def __init__(self, model: LifelongCTRModel) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, batch: Batch
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """-> (loss scalar, (loss, logits [B], labels [B]) detached)."""
        logits, auxiliary_loss = self.model.forward_with_losses(batch)
        labels = batch.labels.to(logits.dtype)
        losses = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # [B]
        weights = batch.weights.to(losses.dtype)
        loss = (losses * weights).sum() + auxiliary_loss * weights.sum()
        return loss, (loss.detach(), logits.detach(), labels)
