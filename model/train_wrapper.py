"""The loss lives here, not in the models (torchrec's `DLRMTrain` pattern).

`CTRTrain(model)(batch) -> (loss, logits)`: loss = mean BCE-with-logits over the batch's samples
(paper eq. 3) + every auxiliary loss the model reports (SIM's GSU loss, already weighted by α).
Wrap this module, not the bare model, in `DistributedModelParallel`: the model's
EmbeddingCollection is found and sharded in place.
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

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (loss scalar, logits [B] detached)."""
        logits, auxiliary_losses = self.model.forward_with_losses(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels.to(logits.dtype))
        for auxiliary in auxiliary_losses.values():
            loss = loss + auxiliary
        return loss, logits.detach()
