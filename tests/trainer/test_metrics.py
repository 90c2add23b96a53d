"""Metric functions against hand-computed values, and gathered metrics equal single-process ones."""

from __future__ import annotations

import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from trainer.metrics import auc, compute_metrics, gather_predictions, gauc, logloss


def test_auc_counts_correctly_ordered_pairs():
    # Positives 0.8, 0.4; negatives 0.6, 0.2: pairs (0.8>0.6, 0.8>0.2, 0.4<0.6, 0.4>0.2) -> 3/4.
    assert auc(np.array([1, 0, 1, 0]), np.array([0.8, 0.6, 0.4, 0.2])) == pytest.approx(0.75)


def test_auc_ties_count_half():
    # One positive tied with one negative (0.5), ahead of another negative: (0.5 + 1) / 2.
    assert auc(np.array([1, 0, 0]), np.array([0.5, 0.5, 0.1])) == pytest.approx(0.75)


def test_auc_single_class_is_nan():
    assert math.isnan(auc(np.array([1, 1]), np.array([0.1, 0.2])))


def test_gauc_weights_users_by_samples_and_excludes_single_class_users():
    labels = np.array([1, 0, 0, 1, 0, 1, 1])
    scores = np.array([0.9, 0.1, 0.2, 0.3, 0.8, 0.5, 0.4])
    users = np.array([7, 7, 7, 8, 8, 9, 9])
    # user 7: 3 samples, positive above both negatives -> 1.0
    # user 8: 2 samples, positive below the negative -> 0.0
    # user 9: only positives -> excluded
    value, kept = gauc(labels, scores, users)
    assert kept == 2
    assert value == pytest.approx((3 * 1.0 + 2 * 0.0) / 5)


def test_gauc_ties_stay_within_a_user():
    # Equal scores across users must not tie with each other: each user is ranked alone.
    labels = np.array([1, 0, 1, 0])
    scores = np.array([0.5, 0.4, 0.5, 0.6])
    users = np.array([1, 1, 2, 2])
    value, kept = gauc(labels, scores, users)
    assert kept == 2 and value == pytest.approx(0.5)


def test_gauc_equals_per_user_auc_loop():
    generator = np.random.default_rng(0)
    labels = generator.integers(0, 2, 300)
    scores = np.round(generator.random(300), 2)  # rounding makes ties
    users = generator.integers(0, 20, 300)
    expected_sum, expected_weight = 0.0, 0
    for user in np.unique(users):
        mask = users == user
        if 0 < labels[mask].sum() < mask.sum():
            expected_sum += auc(labels[mask], scores[mask]) * mask.sum()
            expected_weight += mask.sum()
    value, _ = gauc(labels, scores, users)
    assert value == pytest.approx(expected_sum / expected_weight, abs=1e-12)


def test_logloss_matches_hand_value():
    labels = np.array([1.0, 0.0])
    logits = np.array([0.0, math.log(3.0)])  # p = 0.5 and p = 0.75
    expected = -(math.log(0.5) + math.log(0.25)) / 2
    assert logloss(labels, logits) == pytest.approx(expected)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _gather_worker(rank: int, world_size: int, port: int, parts, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    labels, logits, users = (torch.from_numpy(array) for array in parts[rank])
    gathered = gather_predictions([labels, logits, users])
    if rank == 0:
        queue.put(compute_metrics(*gathered))
    dist.destroy_process_group()


def test_gathered_metrics_equal_single_process_metrics():
    generator = np.random.default_rng(3)
    count = 501
    labels = generator.integers(0, 2, count).astype(np.float32)
    logits = generator.normal(size=count).astype(np.float32)
    users = generator.integers(0, 40, count).astype(np.int64)
    cut = 173  # unequal shares: the gather must handle different lengths per rank
    parts = [
        (labels[:cut], logits[:cut], users[:cut]),
        (labels[cut:], logits[cut:], users[cut:]),
    ]
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(
        _gather_worker, args=(2, _free_port(), parts, queue), nprocs=2, start_method="spawn"
    )
    distributed = queue.get(timeout=60)
    single = compute_metrics(labels, logits, users)
    assert distributed == single


def test_undefined_metrics_are_null_with_a_reason_never_nan():
    import json

    one_class = compute_metrics(np.ones(4), np.array([0.1, 0.2, 0.3, 0.4]), np.arange(4))
    values = one_class.to_json()
    assert values["auc"] is None and values["gauc"] is None
    assert "one class" in values["undefined"]["auc"] and "both" in values["undefined"]["gauc"]
    assert values["logloss"] is not None
    json.dumps(values, allow_nan=False)  # valid JSON: would raise on NaN


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_a_nan_or_infinite_prediction_leaves_every_metric_undefined(bad):
    """NaN has no order: an AUC over it would be a number (0.5625 here before), and a diverged
    model must never look like a scored one, nor be selected as the best epoch."""
    labels = np.array([1.0, 0.0, 1.0, 0.0])
    metrics = compute_metrics(labels, np.array([0.3, bad, 0.2, 0.1]), np.array([1, 1, 2, 2]))
    values = metrics.to_json()
    assert values["auc"] is None and values["gauc"] is None and values["logloss"] is None
    assert values["nonfinite_predictions"] == 1
    assert all("1 of 4 predictions are NaN or infinite" in values["undefined"][name]
               for name in ("auc", "gauc", "logloss"))
    assert values["samples"] == 4 and values["positive_rate"] == 0.5


def test_constant_logloss_is_the_cross_entropy_of_a_constant_prediction():
    labels = np.array([1.0, 0.0, 0.0, 0.0])
    metrics = compute_metrics(labels, np.zeros(4), np.arange(4))
    assert metrics.positive_rate == 0.25
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert metrics.constant_logloss(0.25) == pytest.approx(expected)
    # The model that predicts 0.25 everywhere scores exactly that logloss.
    logit = math.log(0.25 / 0.75)
    assert compute_metrics(labels, np.full(4, logit), np.arange(4)).logloss == pytest.approx(
        expected
    )
