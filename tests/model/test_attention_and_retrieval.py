"""Attention and retrieval blocks: masking, fast paths vs references, top-k, hashing, buckets."""

from __future__ import annotations

import pytest
import torch

from model.layers.attention import (
    ActivationUnitAttention,
    AttentionPath,
    LastDimPReLU,
    SelectionPath,
    TargetAttention,
    masked_softmax,
)
from model.layers.request_groups import RequestGroups
from model.layers.retrieval import (
    SimHash,
    bucket_sums,
    gather_rows,
    masked_top_k,
    matched_sums,
    read_buckets,
    signature_ids,
    unique_union,
)
from model.sdim import SDIMAttention, SDIMAttentionConfig, SumPath


def lengths_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


def test_masked_softmax_gives_padding_no_weight_and_empty_rows_zeros():
    scores = torch.randn(3, 6, requires_grad=True)
    mask = lengths_mask([6, 2, 0], 6)
    weights = masked_softmax(scores, mask)
    assert (weights[~mask] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.tensor([1.0, 1.0, 0.0]))
    weights.sum().backward()
    assert torch.isfinite(scores.grad).all()


# Candidates fewer / more than history rows (C vs L = 7); selected keys (K = 7) fewer / more
# than hidden units: every branch of the fast first layer.
@pytest.mark.parametrize("num_candidates,hidden_dims", [(3, (8, 4)), (9, (8, 4)), (3, (5, 4))])
def test_activation_unit_fast_path_matches_reference(num_candidates, hidden_dims):
    torch.manual_seed(0)
    fast = ActivationUnitAttention(6, hidden_dims, fast=True)
    reference = ActivationUnitAttention(6, hidden_dims, fast=False)
    reference.load_state_dict(fast.state_dict())
    queries = torch.randn(2, num_candidates, 6)
    keys = torch.randn(2, 7, 6)
    values = torch.randn(2, 7, 5)
    mask = lengths_mask([7, 4], 7)
    for shared_keys, shared_values, shared_mask in [
        (keys, values, mask),
        (
            keys[:, None].expand(-1, num_candidates, -1, -1),
            values[:, None].expand(-1, num_candidates, -1, -1),
            mask[:, None].expand(-1, num_candidates, -1),
        ),
    ]:
        fast_out = fast(queries, shared_keys, shared_values, shared_mask)
        reference_out = reference(queries, shared_keys, shared_values, shared_mask)
        torch.testing.assert_close(fast_out, reference_out, rtol=1e-4, atol=1e-5)
    fast(queries, keys, values, mask).sum().backward()
    reference(queries, keys, values, mask).sum().backward()
    for (name, fast_param), reference_param in zip(
        fast.named_parameters(), reference.parameters(), strict=True
    ):
        torch.testing.assert_close(
            fast_param.grad, reference_param.grad, rtol=1e-4, atol=1e-5, msg=name
        )


@pytest.mark.parametrize("num_candidates", [1, 4])
def test_attention_over_a_selection_of_everything_equals_full_attention(num_candidates):
    torch.manual_seed(1)
    attention = TargetAttention(6, 6, 5, num_heads=2)
    queries, keys, values = (
        torch.randn(2, num_candidates, 6),
        torch.randn(2, 8, 6),
        torch.randn(2, 8, 5),
    )
    mask = lengths_mask([8, 5], 8)
    full = attention(queries, keys, values, mask)
    # All positions (projected once, then gathered) ...
    everything = torch.arange(8).expand(2, num_candidates, 8)
    selected = attention.forward_selected(
        queries, keys, values, everything, mask[:, None].expand(-1, num_candidates, -1)
    )
    torch.testing.assert_close(selected, full, rtol=1e-5, atol=1e-5)
    # ... and only the real ones of the short history (gathered, then projected).
    if num_candidates == 1:
        real = torch.tensor([[[0, 1, 2, 3, 4]], [[0, 1, 2, 3, 4]]])
        fewer = attention.forward_selected(
            queries[1:], keys[1:], values[1:], real[1:], torch.ones(1, 1, 5, dtype=torch.bool)
        )
        torch.testing.assert_close(fewer, full[1:], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("num_heads,use_bias", [(1, False), (4, True)])
def test_folding_projections_into_queries_equals_projecting_the_history(num_heads, use_bias):
    torch.manual_seed(4)
    attention = TargetAttention(6, 8, 5, num_heads=num_heads, head_dim=3)
    queries = torch.randn(2, 3, 6, requires_grad=True)
    keys, values = (
        torch.randn(2, 9, 8, requires_grad=True),
        torch.randn(2, 9, 5, requires_grad=True),
    )
    mask = lengths_mask([9, 4], 9)
    bias = torch.randn(2, 9, num_heads) if use_bias else None
    outputs, gradients = [], []
    for path in (AttentionPath.PROJECT_HISTORY, AttentionPath.FOLD_INTO_QUERIES):
        attention.path = path
        output = attention(queries, keys, values, mask, bias)
        outputs.append(output)
        gradients.append(
            torch.autograd.grad(
                output.square().sum(), [queries, keys, values, *attention.parameters()]
            )
        )
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    for first, second in zip(*gradients, strict=True):
        torch.testing.assert_close(first, second, rtol=1e-4, atol=1e-5)


def test_top_k_never_returns_padding():
    torch.manual_seed(2)
    lengths = [10, 3, 0, 7]
    mask = lengths_mask(lengths, 10)
    scores = torch.randn(4, 2, 10)
    scores[~mask[:, None].expand(-1, 2, -1)] = 1e6  # padding scores highest: must still lose
    indices, valid = masked_top_k(scores, mask, k=5)
    assert indices.shape == (4, 2, 5)
    for request, length in enumerate(lengths):
        assert valid[request].sum(-1).tolist() == [min(5, length)] * 2
        assert (indices[request][valid[request]] < length).all()


def test_unique_union_keeps_each_position_once():
    indices = torch.tensor([[[3, 1, 3, 2, 1, 9]]])
    valid = torch.tensor([[[True, True, True, True, True, False]]])
    merged, merged_valid = unique_union(indices, valid)
    assert sorted(merged[merged_valid].tolist()) == [1, 2, 3]


def test_simhash_is_fixed_by_seed_and_not_trained():
    first, second = SimHash(8, 16, seed=3), SimHash(8, 16, seed=3)
    inputs = torch.randn(5, 8, requires_grad=True)
    torch.testing.assert_close(first(inputs), second(inputs))
    assert not list(first.parameters())
    assert not first(inputs).requires_grad
    assert set(first(inputs).unique().tolist()) <= {-1.0, 1.0}


def test_bucket_sums_match_a_loop():
    torch.manual_seed(3)
    codes = torch.where(torch.randn(2, 9, 6) > 0, 1.0, -1.0)
    ids = signature_ids(codes, bits_per_signature=3)  # [2, 9, 2]
    values = torch.randn(2, 9, 4)
    mask = lengths_mask([9, 6], 9)
    sums = bucket_sums(ids, values, mask, num_buckets=8)
    for request in range(2):
        for signature in range(2):
            for bucket in range(8):
                chosen = (ids[request, :, signature] == bucket) & mask[request]
                torch.testing.assert_close(
                    sums[request, signature, bucket], values[request][chosen].sum(0)
                )
    query_ids = torch.tensor([[[1, 2]], [[0, 7]]])
    picked = read_buckets(sums, query_ids)
    torch.testing.assert_close(picked[1, 0, 1], sums[1, 1, 7])


@pytest.mark.parametrize("num_candidates", [1, 5])
def test_matched_sums_equal_reading_the_bucket_sums_in_outputs_and_gradients(num_candidates):
    torch.manual_seed(4)
    history_ids = torch.randint(0, 8, (2, 9, 3))  # 3 signatures of 3 bits
    query_ids = torch.randint(0, 8, (2, num_candidates, 3))
    query_ids[1, 0] = history_ids[1, 8]  # a match on a padded position must not count
    mask = lengths_mask([9, 6], 9)
    values = torch.randn(2, 9, 4, requires_grad=True)
    weights = torch.randn(2, num_candidates, 3, 4)
    direct = matched_sums(history_ids, query_ids, values, mask)
    through_buckets = read_buckets(bucket_sums(history_ids, values, mask, 8), query_ids)
    torch.testing.assert_close(direct, through_buckets)
    (gradient,) = torch.autograd.grad((direct * weights).sum(), values)
    (expected,) = torch.autograd.grad((through_buckets * weights).sum(), values)
    torch.testing.assert_close(gradient, expected)


@pytest.mark.parametrize("num_candidates", [1, 20])
def test_sdim_sum_paths_agree_in_outputs_and_gradients(num_candidates):
    torch.manual_seed(6)
    sdim = SDIMAttention(SDIMAttentionConfig(num_bits=6, bits_per_signature=3), 8, 10)
    queries = torch.randn(2, num_candidates, 8)
    keys = torch.randn(2, 9, 8)
    values = torch.randn(2, 9, 10, requires_grad=True)
    mask = lengths_mask([9, 4], 9)
    results = []
    for path in (SumPath.BUCKET_SUMS, SumPath.CANDIDATE_MATCHES):
        sdim.sum_path = path
        interest = sdim(queries, keys, values, mask).interest  # [R, C, Dv]
        (gradient,) = torch.autograd.grad(interest.square().sum(), values)
        results.append((interest, gradient))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


@pytest.mark.parametrize("features", [(), (3,), (2, 3)])
def test_gather_rows_equals_indexing_in_outputs_and_gradients(features):
    torch.manual_seed(9)
    rows = torch.randn(3, 7, *features, requires_grad=True)
    indices = torch.randint(0, 7, (3, 4, 5))  # repeats included
    picked = gather_rows(rows, indices)
    expected = rows[torch.arange(3)[:, None, None], indices]  # [R, C, K, *F]
    torch.testing.assert_close(picked, expected, rtol=0, atol=0)
    upstream = torch.randn_like(expected)
    (gradient,) = torch.autograd.grad((picked * upstream).sum(), rows)
    (expected_gradient,) = torch.autograd.grad((expected * upstream).sum(), rows)
    torch.testing.assert_close(gradient, expected_gradient)


def test_gather_rows_and_request_groups_round_trip():
    rows = torch.arange(2 * 5 * 3).float().view(2, 5, 3)
    picked = gather_rows(rows, torch.tensor([[[4, 0]], [[2, 2]]]))
    torch.testing.assert_close(picked[1, 0, 0], rows[1, 2])
    groups = RequestGroups(torch.tensor([0, 0, 0, 2, 2]), num_requests=3)
    per_candidate = torch.randn(5, 4)
    laid_out = groups.to_requests(per_candidate)
    assert laid_out.shape == (3, 3, 4)
    assert groups.mask.sum().item() == 5
    torch.testing.assert_close(groups.to_candidates(laid_out), per_candidate)


@pytest.mark.parametrize("use_bias,repeat", [(False, False), (True, True)])
def test_dense_selection_path_equals_gathering_the_selection(use_bias, repeat):
    torch.manual_seed(5)
    attention = TargetAttention(6, 8, 5, num_heads=2, head_dim=3)
    queries = torch.randn(2, 3, 6, requires_grad=True)
    keys = torch.randn(2, 9, 8, requires_grad=True)
    values = torch.randn(2, 9, 5, requires_grad=True)
    indices = torch.randint(0, 9, (2, 3, 4))
    if repeat:  # a repeated position (e.g. an invalid pick on a real row) must not be lost
        indices[:, :, 1] = indices[:, :, 0]
    valid = torch.rand(2, 3, 4) > 0.3
    bias = torch.randn(2, 9, 2) if use_bias else None
    results = []
    for path in (SelectionPath.GATHER, SelectionPath.DENSE):
        attention.selection_path = path
        weights, pooled = attention.attend_selected(queries, keys, values, indices, valid, bias)
        gradients = torch.autograd.grad(
            pooled.square().sum() + weights.sum(),
            [queries, keys, values, *attention.parameters()],
        )
        results.append((weights, pooled, gradients))
    (gather_weights, gather_pooled, gather_grads), (dense_weights, dense_pooled, dense_grads) = (
        results
    )
    torch.testing.assert_close(dense_weights, gather_weights, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense_pooled, gather_pooled, rtol=1e-5, atol=1e-5)
    for dense_grad, gather_grad in zip(dense_grads, gather_grads, strict=True):
        torch.testing.assert_close(dense_grad, gather_grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("num_candidates", [1, 3])
def test_keys_that_are_the_values_are_gathered_once_with_the_same_result(num_candidates):
    """Keys and values as one tensor (gathered once) vs as two equal tensors (gathered twice)."""
    torch.manual_seed(8)
    attention = TargetAttention(6, 6, 6, num_heads=2, head_dim=3)
    attention.selection_path = SelectionPath.GATHER
    queries = torch.randn(2, num_candidates, 6)
    history = torch.randn(2, 9, 6, requires_grad=True)
    indices = torch.randint(0, 9, (2, num_candidates, 2))  # C·K < L: rows gathered, then projected
    valid = torch.rand(2, num_candidates, 2) > 0.2
    upstream = torch.randn(2, num_candidates, 6)
    shared = attention.forward_selected(queries, history, history, indices, valid)
    (shared_gradient,) = torch.autograd.grad((shared * upstream).sum(), history)
    separate = attention.forward_selected(queries, history, history.clone(), indices, valid)
    (separate_gradient,) = torch.autograd.grad((separate * upstream).sum(), history)
    torch.testing.assert_close(shared, separate)
    torch.testing.assert_close(shared_gradient, separate_gradient)


def test_last_dim_prelu_equals_its_definition_in_outputs_and_gradients():
    torch.manual_seed(6)
    prelu = LastDimPReLU(5)
    with torch.no_grad():
        prelu.slope.copy_(torch.randn(5))
    inputs = torch.randn(2, 3, 4, 5, requires_grad=True)
    outputs = prelu(inputs.transpose(1, 2))  # a non-contiguous input too
    expected = torch.where(inputs >= 0, inputs, prelu.slope * inputs).transpose(1, 2)
    torch.testing.assert_close(outputs, expected)
    upstream = torch.randn_like(outputs)
    grads = torch.autograd.grad(outputs, [inputs, prelu.slope], upstream)
    expected_grads = torch.autograd.grad(expected, [inputs, prelu.slope], upstream)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad)
