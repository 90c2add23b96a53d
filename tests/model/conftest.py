"""Tiny specs and batches shared by the model tests (dims kept small for 2 CPU cores)."""

from __future__ import annotations

import pytest
import torch

from model.synthetic_batch import synthetic_batch, tiny_feature_spec


@pytest.fixture(autouse=True)
def _single_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture
def spec():
    return tiny_feature_spec(max_len=30, short_len=4)


@pytest.fixture
def batch(spec):
    return synthetic_batch(spec, num_requests=5, candidates_per_request=(1, 3), seed=3)
