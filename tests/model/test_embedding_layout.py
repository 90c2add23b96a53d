"""The embedding layout's jagged -> padded conversion (plain torch, no fbgemm kernel)."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from model.layers.embedding import padded


@pytest.mark.parametrize("length", [2, 5, 8])
def test_padded_equals_torchrecs_jagged_to_padded_dense(length):
    torch.manual_seed(0)
    lengths = torch.tensor([3, 0, 5, 1], dtype=torch.int32)
    values = torch.randn(int(lengths.sum()), 4, requires_grad=True)
    ours = padded(values, lengths, length)
    reference = JaggedTensor(values=values, lengths=lengths).to_padded_dense(
        desired_length=length
    )
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    upstream = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, values, upstream)
    (reference_grad,) = torch.autograd.grad(reference, values, upstream)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=0, atol=0)
