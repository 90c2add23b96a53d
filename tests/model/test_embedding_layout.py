"""`padded` (jagged rows -> right-padded history, plain torch, no fbgemm kernel): equal to
TorchRec's fbgemm conversion, its three paths against a per-row loop, and a batch of full-length
histories (the view path) against the same batch padded further."""

from __future__ import annotations

import pytest
import torch
from torchrec.sparse.jagged_tensor import JaggedTensor

from model.layers.embedding import padded
from model.registry import build_model
from model.synthetic_batch import synthetic_batch
from model.train_wrapper import CTRTrain


@pytest.mark.parametrize("length", [2, 5, 8])
def test_padded_equals_torchrecs_jagged_to_padded_dense(length):
    torch.manual_seed(0)
    lengths = torch.tensor([3, 0, 5, 1], dtype=torch.int32)
    values = torch.randn(int(lengths.sum()), 4, requires_grad=True)
    ours = padded(values, lengths, length, int(lengths.min()), int(lengths.max()))
    reference = JaggedTensor(values=values, lengths=lengths).to_padded_dense(
        desired_length=length
    )
    torch.testing.assert_close(ours, reference, rtol=0, atol=0)
    upstream = torch.randn_like(ours)
    (ours_grad,) = torch.autograd.grad(ours, values, upstream)
    (reference_grad,) = torch.autograd.grad(reference, values, upstream)
    torch.testing.assert_close(ours_grad, reference_grad, rtol=0, atol=0)


def padded_by_loop(values: torch.Tensor, lengths: torch.Tensor, length: int) -> torch.Tensor:
    rows = []
    start = 0
    for row_length in lengths.tolist():
        row = values[start : start + min(row_length, length)]
        rows.append(torch.cat([row, values.new_zeros(length - row.shape[0], values.shape[-1])]))
        start += row_length
    return torch.stack(rows)


@pytest.mark.parametrize(
    "lengths,length",
    [
        ([4, 4, 4], 4),  # every row full: a view
        ([4, 4, 4], 6),  # full rows padded further
        ([1, 4, 0, 3], 4),  # no row cut
        ([1, 6, 0, 3], 4),  # a row longer than `length` is cut
    ],
)
def test_padded_equals_a_loop_in_outputs_and_gradients(lengths, length):
    lengths = torch.tensor(lengths)
    values = torch.randn(int(lengths.sum()), 3, requires_grad=True)
    shortest, longest = int(lengths.min()), int(lengths.max())
    output = padded(values, lengths, length, shortest, longest)
    expected = padded_by_loop(values, lengths, length)
    torch.testing.assert_close(output, expected, rtol=0, atol=0)
    weights = torch.randn_like(expected)
    (gradient,) = torch.autograd.grad((output * weights).sum(), values)
    (expected_gradient,) = torch.autograd.grad((expected * weights).sum(), values)
    torch.testing.assert_close(gradient, expected_gradient, rtol=0, atol=0)


def test_padded_full_rows_are_a_view_of_the_values():
    values = torch.randn(6, 3)
    output = padded(values, torch.tensor([3, 3]), 3, 3, 3)
    assert output.data_ptr() == values.data_ptr()


@pytest.mark.parametrize("name", ["din", "eta", "sdim", "twin", "cain"])
def test_full_length_histories_as_a_view_equal_padding_them(name, spec):
    """The view path (every history exactly L long) against the padding path (L + 3)."""
    batch = synthetic_batch(spec, num_requests=3, history_length=spec.max_len, seed=4)
    tiny = {"embedding_dim": 4, "mlp_dims": [16, 8], "attention_hidden_dims": [8, 4]}
    results = []
    for pad_to in (None, spec.max_len + 3):
        torch.manual_seed(0)
        model = CTRTrain(build_model(name, spec, tiny))
        model.model.dense_arch.embedding_layout.pad_history_to = pad_to
        loss, (_, logits, _) = model(batch)
        loss.backward()
        gradients = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results.append((logits, gradients))
    (logits, gradients), (logits_padded, gradients_padded) = results
    torch.testing.assert_close(logits, logits_padded, rtol=1e-5, atol=1e-6)
    assert gradients.keys() == gradients_padded.keys()
    for key in gradients:
        torch.testing.assert_close(gradients[key], gradients_padded[key], rtol=1e-4, atol=1e-6)
