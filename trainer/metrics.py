"""Exact evaluation metrics: AUC, GAUC, logloss over every rank's predictions.

The metric functions are plain NumPy on the full prediction set (float64, ties get average
ranks), so a 2-rank run and a 1-process run on the same predictions give the same numbers.
`gather_predictions` collects the per-rank arrays (variable length) onto every rank first — an
average of per-rank AUCs would not be the AUC.

Letters: N predictions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Metrics:
    """Args:
    auc: area under the ROC curve over all N predictions.
    gauc: per-user AUC weighted by that user's sample count, over users with both classes.
    logloss: mean binary cross-entropy of the predicted probabilities.
    gauc_users: users kept in GAUC (users with a single class are excluded).
    samples: N.
    positive_rate: share of positive labels (NaN without samples).
    nonfinite: predictions that are NaN or infinite (a diverged model): then no metric is
        defined.
    """

    auc: float
    gauc: float
    logloss: float
    gauc_users: int
    samples: int
    positive_rate: float = float("nan")
    nonfinite: int = 0

    def constant_logloss(self, rate: float) -> float:
        """The logloss of predicting `rate` for every sample: what a model must beat."""
        rate = min(max(rate, 1e-7), 1 - 1e-7)
        p = self.positive_rate
        return float(-(p * math.log(rate) + (1 - p) * math.log(1 - rate)))

    def to_json(self) -> dict:
        """JSON-safe values: an undefined metric (NaN) is None, with its reason under
        `undefined` (JSON has no NaN; a reader must not mistake it for a number)."""
        reasons = {
            "auc": "the split holds one class only (AUC needs positives and negatives)",
            "gauc": "no user has both positives and negatives",
            "logloss": "the split holds no samples",
        }
        if self.nonfinite:
            diverged = f"{self.nonfinite} of {self.samples} predictions are NaN or infinite"
            reasons = dict.fromkeys(reasons, f"{diverged} (the model diverged)")
        values: dict = {}
        undefined = {}
        for name in ("auc", "gauc", "logloss"):
            value = getattr(self, name)
            values[name] = None if math.isnan(value) else value
            if values[name] is None:
                undefined[name] = reasons[name]
        values["gauc_users"] = self.gauc_users
        if self.nonfinite:
            values["nonfinite_predictions"] = self.nonfinite
        values["samples"] = self.samples
        values["positive_rate"] = None if math.isnan(self.positive_rate) else self.positive_rate
        if undefined:
            values["undefined"] = undefined
        return values


def _average_ranks(sorted_values: np.ndarray, group_starts: np.ndarray | None = None) -> np.ndarray:
    """1-based ranks of an ascending array, ties sharing their average rank.

    With `group_starts` (a bool mask, True where a new group begins) ranks restart in each group
    and ties never cross a group boundary.
    """
    count = sorted_values.shape[0]
    new_run = np.ones(count, dtype=bool)
    new_run[1:] = sorted_values[1:] != sorted_values[:-1]
    if group_starts is not None:
        new_run |= group_starts
        group_id = np.cumsum(group_starts) - 1
        group_first = np.flatnonzero(group_starts)
        position = np.arange(count) - group_first[group_id] + 1  # rank within the group
    else:
        position = np.arange(1, count + 1)
    run_id = np.cumsum(new_run) - 1
    run_first = np.flatnonzero(new_run)
    run_last = np.append(run_first[1:], count) - 1
    return ((position[run_first] + position[run_last]) / 2.0)[run_id]


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC; NaN when only one class is present. labels, scores: [N]."""
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    positives = labels.sum()
    negatives = labels.shape[0] - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(scores, kind="stable")
    ranks = _average_ranks(scores[order])
    rank_sum = ranks[labels[order] == 1].sum()
    return float((rank_sum - positives * (positives + 1) / 2) / (positives * negatives))


def gauc(labels: np.ndarray, scores: np.ndarray, users: np.ndarray) -> tuple[float, int]:
    """Per-user AUC weighted by the user's sample count; users with one class are excluded.

    Returns (gauc, users kept); (NaN, 0) when no user has both classes. All inputs [N].
    """
    labels = np.asarray(labels, dtype=np.float64)
    scores = np.asarray(scores, dtype=np.float64)
    users = np.asarray(users)
    if labels.shape[0] == 0:
        return float("nan"), 0
    order = np.lexsort((scores, users))  # by user, then score
    sorted_users, sorted_scores, sorted_labels = users[order], scores[order], labels[order]
    group_starts = np.ones(len(order), dtype=bool)
    group_starts[1:] = sorted_users[1:] != sorted_users[:-1]
    ranks = _average_ranks(sorted_scores, group_starts)
    group_id = np.cumsum(group_starts) - 1
    num_groups = int(group_id[-1]) + 1
    samples = np.bincount(group_id, minlength=num_groups).astype(np.float64)
    positives = np.bincount(group_id, weights=sorted_labels, minlength=num_groups)
    negatives = samples - positives
    positive_rank_sum = np.bincount(group_id, weights=ranks * sorted_labels, minlength=num_groups)
    kept = (positives > 0) & (negatives > 0)
    if not kept.any():
        return float("nan"), 0
    user_auc = (positive_rank_sum[kept] - positives[kept] * (positives[kept] + 1) / 2) / (
        positives[kept] * negatives[kept]
    )
    weights = samples[kept]
    return float((user_auc * weights).sum() / weights.sum()), int(kept.sum())


def logloss(labels: np.ndarray, logits: np.ndarray) -> float:
    """Mean binary cross-entropy from logits (stable: softplus(x) - y x). labels, logits: [N]."""
    labels = np.asarray(labels, dtype=np.float64)
    logits = np.asarray(logits, dtype=np.float64)
    if labels.shape[0] == 0:
        return float("nan")
    losses = np.logaddexp(0.0, logits) - labels * logits
    return float(np.sort(losses).sum() / labels.shape[0])  # sorted: independent of arrival order


def compute_metrics(labels: np.ndarray, logits: np.ndarray, users: np.ndarray) -> Metrics:
    """All metrics of one prediction set. AUC/GAUC only need the logits' order; none is defined
    when a prediction is NaN or infinite (NaN has no order: an AUC over it would be a number)."""
    nonfinite = int(np.count_nonzero(~np.isfinite(np.asarray(logits, dtype=np.float64))))
    if nonfinite:
        undefined = float("nan")
        return Metrics(
            undefined,
            undefined,
            undefined,
            0,
            int(np.asarray(labels).shape[0]),
            float(np.mean(labels)),
            nonfinite,
        )
    group_auc, kept = gauc(labels, logits, users)
    return Metrics(
        auc=auc(labels, logits),
        gauc=group_auc,
        logloss=logloss(labels, logits),
        gauc_users=kept,
        samples=int(np.asarray(labels).shape[0]),
        positive_rate=float(np.mean(labels)) if np.asarray(labels).shape[0] else float("nan"),
    )


def gather_predictions(tensors: list[torch.Tensor]) -> list[np.ndarray]:
    """Concatenate every rank's 1-D tensors (lengths may differ per rank), in rank order.

    tensors: the same number of [N_rank] tensors on every rank (e.g. labels, logits, user ids);
    returns [sum N_rank] arrays on every rank. Works with gloo and nccl; a no-op without a group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [tensor.detach().cpu().numpy() for tensor in tensors]
    device = tensors[0].device
    world_size = dist.get_world_size()
    local_count = torch.tensor([tensors[0].shape[0]], dtype=torch.long, device=device)
    counts = [torch.zeros_like(local_count) for _ in range(world_size)]
    dist.all_gather(counts, local_count)
    counts_list = [int(count.item()) for count in counts]
    longest = max(counts_list)
    gathered: list[np.ndarray] = []
    for tensor in tensors:
        # all_gather needs equal shapes: pad to the longest rank, then cut each part back.
        padded = torch.zeros(longest, dtype=tensor.dtype, device=device)
        padded[: tensor.shape[0]] = tensor.detach()
        parts = [torch.empty_like(padded) for _ in range(world_size)]
        dist.all_gather(parts, padded)
        gathered.append(
            np.concatenate(
                [part[:count].cpu().numpy() for part, count in zip(parts, counts_list, strict=True)]
            )
        )
    return gathered
