"""TCN layers: every kernel matches the reference, receptive fields, strides, padding, PEG."""

from __future__ import annotations

import math

import pytest
import torch

from model.layers.tap_gemm import tap_gemm_convolution
from model.layers.temporal_convolution import (
    PEGMode,
    PersonalizedFilterGenerator,
    TCNKernel,
    TemporalConvNet,
    TemporalConvolution,
    convolve_global,
    convolve_personal,
    grouped_convolution,
    output_length,
    receptive_half_widths,
    resolve_kernel,
)


def lengths_mask(lengths: list[int], total: int) -> torch.Tensor:
    return torch.arange(total)[None, :] < torch.tensor(lengths)[:, None]


KERNELS = [kernel for kernel in TCNKernel if kernel is not TCNKernel.REFERENCE]
CONVOLVE = {"global": convolve_global, "personal": convolve_personal}


def random_filters(filters: str, num_requests: int, out_dim: int, in_dim: int, width: int):
    """[Dout, Din, K] (global) or [R, Dout, Din, K] (personal), scaled like a Xavier init."""
    shape = (
        (out_dim, in_dim, width) if filters == "global" else (num_requests, out_dim, in_dim, width)
    )
    return (torch.randn(shape) / (in_dim * width) ** 0.5).requires_grad_()


def outputs_and_gradients(convolve, inputs, weights, stride, kernel, upstream):
    """The convolution's output and the gradients of <output, upstream> to inputs and filters."""
    output = convolve(inputs, weights, stride, kernel)
    return (output, *torch.autograd.grad(output, (inputs, weights), upstream.to(output.dtype)))


@pytest.mark.parametrize("kernel", KERNELS, ids=[k.value for k in KERNELS])
@pytest.mark.parametrize("filters", ["global", "personal"])
@pytest.mark.parametrize("stride", [1, 2, 4])
@pytest.mark.parametrize("context_length", [0, 1, 3, 7])
def test_every_kernel_matches_reference(kernel, filters, stride, context_length):
    torch.manual_seed(0)
    inputs = torch.randn(3, 19, 5, requires_grad=True)  # 19: not a multiple of any stride
    weights = random_filters(filters, 3, 6, 5, 2 * context_length + 1)
    upstream = torch.randn(3, output_length(19, stride), 6)
    convolve = CONVOLVE[filters]
    result = outputs_and_gradients(convolve, inputs, weights, stride, kernel, upstream)
    reference = outputs_and_gradients(
        convolve, inputs, weights, stride, TCNKernel.REFERENCE, upstream
    )
    for got, expected in zip(result, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("outputs_per_row", [2, 3])
@pytest.mark.parametrize("filters", ["global", "personal"])
@pytest.mark.parametrize("stride,context_length", [(1, 7), (1, 2), (2, 3), (4, 7), (3, 0)])
def test_tap_gemm_with_several_outputs_per_row_matches_reference(
    outputs_per_row, filters, stride, context_length
):
    torch.manual_seed(1)
    inputs = torch.randn(3, 23, 4, requires_grad=True)
    weights = random_filters(filters, 3, 5, 4, 2 * context_length + 1)
    upstream = torch.randn(3, output_length(23, stride), 5)

    def tap_gemm(inputs, weights, stride, kernel):
        return tap_gemm_convolution(inputs, weights, stride, outputs_per_row)

    result = outputs_and_gradients(tap_gemm, inputs, weights, stride, None, upstream)
    reference = outputs_and_gradients(
        CONVOLVE[filters], inputs, weights, stride, TCNKernel.REFERENCE, upstream
    )
    for got, expected in zip(result, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return ((got.double() - expected.double()).norm() / expected.double().norm()).item()


# bf16 keeps 8 significant bits (relative rounding error <= 2^-9 = 0.2 %). Rounding inputs and
# filters gives about that on the outputs and gradients; rounding the output, and with TAP_GEMM
# the running sum once per tap, adds about as much again per rounding that does not average out
# (measured at Din=192, K=15: 0.23 % inputs only, 0.29 % one bf16 GEMM, 0.52 % TAP_GEMM). 2 % is
# well above that and still far below the error of a wrong tap or a missing term (~100 %).
BFLOAT16_RELATIVE_ERROR = 0.02


@pytest.mark.parametrize("kernel", KERNELS, ids=[k.value for k in KERNELS])
@pytest.mark.parametrize("filters", ["global", "personal"])
@pytest.mark.parametrize("stride", [1, 4])
def test_every_kernel_under_bfloat16_autocast_stays_near_the_float32_reference(
    kernel, filters, stride
):
    torch.manual_seed(2)
    inputs = torch.randn(4, 37, 48, requires_grad=True)
    weights = random_filters(filters, 4, 32, 48, 15)
    upstream = torch.randn(4, output_length(37, stride), 32)
    convolve = CONVOLVE[filters]
    reference = outputs_and_gradients(
        convolve, inputs, weights, stride, TCNKernel.REFERENCE, upstream
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = outputs_and_gradients(convolve, inputs, weights, stride, kernel, upstream)
    assert result[0].dtype == torch.bfloat16  # like F.conv1d under autocast
    for got, expected in zip(result, reference, strict=True):
        assert relative_error(got, expected) < BFLOAT16_RELATIVE_ERROR


def test_tap_gemm_float32_sum_keeps_the_error_of_one_bfloat16_gemm():
    """Summing the taps' bf16 products in fp32 rounds once, like the unfold reference's single
    GEMM; TAP_GEMM's running bf16 sum rounds once per tap."""
    torch.manual_seed(3)
    inputs = torch.randn(4, 64, 96)
    weights = random_filters("personal", 4, 64, 96, 15).detach()
    exact = convolve_personal(inputs.double(), weights.double(), 1, TCNKernel.REFERENCE)
    errors = {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        for kernel in (TCNKernel.REFERENCE, TCNKernel.TAP_GEMM_FLOAT32_SUM, TCNKernel.TAP_GEMM):
            errors[kernel] = relative_error(convolve_personal(inputs, weights, 1, kernel), exact)
    assert errors[TCNKernel.TAP_GEMM_FLOAT32_SUM] < 1.2 * errors[TCNKernel.REFERENCE]
    assert errors[TCNKernel.TAP_GEMM] < 3 * errors[TCNKernel.REFERENCE]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kernel", [TCNKernel.TAP_GEMM, TCNKernel.TAP_GEMM_FLOAT32_SUM])
@pytest.mark.parametrize("filters", ["global", "personal"])
@pytest.mark.parametrize("stride,context_length", [(1, 7), (4, 7), (2, 1)])
def test_tap_gemm_on_cuda_matches_cpu_reference(
    kernel, filters, stride, context_length, monkeypatch
):
    monkeypatch.setattr(torch.backends.cuda.matmul, "fp32_precision", "ieee")  # no TF32
    torch.manual_seed(4)
    inputs = torch.randn(5, 101, 24, requires_grad=True)
    weights = random_filters(filters, 5, 16, 24, 2 * context_length + 1)
    upstream = torch.randn(5, output_length(101, stride), 16)
    convolve = CONVOLVE[filters]
    reference = outputs_and_gradients(
        convolve, inputs, weights, stride, TCNKernel.REFERENCE, upstream
    )
    cuda_inputs = inputs.detach().cuda().requires_grad_()
    cuda_weights = weights.detach().cuda().requires_grad_()
    result = outputs_and_gradients(
        convolve, cuda_inputs, cuda_weights, stride, kernel, upstream.cuda()
    )
    for got, expected in zip(result, reference, strict=True):
        torch.testing.assert_close(got.cpu(), expected, rtol=1e-4, atol=1e-4)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        result = outputs_and_gradients(
            convolve, cuda_inputs, cuda_weights, stride, kernel, upstream.cuda()
        )
    for got, expected in zip(result, reference, strict=True):
        assert relative_error(got.cpu(), expected) < BFLOAT16_RELATIVE_ERROR


def test_auto_picks_tap_gemm_on_cuda_and_for_large_global_convolutions_on_cpu():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    for personal in (False, True):
        assert resolve_kernel(TCNKernel.AUTO, cuda, personal, 10) is TCNKernel.TAP_GEMM
        assert resolve_kernel(TCNKernel.CONV, cuda, personal, 10) is TCNKernel.CONV
    assert resolve_kernel(TCNKernel.AUTO, cpu, False, 64_000) is TCNKernel.TAP_GEMM
    assert resolve_kernel(TCNKernel.AUTO, cpu, False, 100) is TCNKernel.CONV
    assert resolve_kernel(TCNKernel.AUTO, cpu, True, 64_000) is TCNKernel.CONV


@pytest.mark.parametrize("context_length,stride", [(0, 1), (2, 1), (3, 4)])
def test_personal_grouped_convolution_matches_unfold_bmm(context_length, stride):
    torch.manual_seed(1)
    inputs = torch.randn(4, 19, 5, requires_grad=True)
    weights = torch.randn(4, 6, 5, 2 * context_length + 1, requires_grad=True)
    fast = grouped_convolution(inputs, weights, stride)  # whatever convolve_personal picks
    reference = convolve_personal(inputs, weights, stride, TCNKernel.REFERENCE)
    torch.testing.assert_close(fast, reference, rtol=1e-4, atol=1e-5)
    upstream = torch.randn_like(fast)
    fast_grads = torch.autograd.grad(fast, (inputs, weights), upstream)
    reference_grads = torch.autograd.grad(reference, (inputs, weights), upstream)
    for fast_grad, reference_grad in zip(fast_grads, reference_grads, strict=True):
        torch.testing.assert_close(fast_grad, reference_grad, rtol=1e-4, atol=1e-4)


def test_personal_filters_equal_global_filter_per_request():
    torch.manual_seed(2)
    inputs = torch.randn(3, 11, 4)
    weights = torch.randn(3, 5, 4, 3)
    personal = convolve_personal(inputs, weights, stride=1)
    for request in range(3):
        alone = convolve_global(inputs[request : request + 1], weights[request], stride=1)
        torch.testing.assert_close(personal[request : request + 1], alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("length,stride", [(1, 4), (7, 4), (8, 4), (9, 4), (10, 1), (13, 3)])
def test_stride_gives_ceil_length_and_mask(length, stride):
    layer = TemporalConvolution(3, 3, context_length=2, stride=stride)
    mask = lengths_mask([length, max(length - 3, 0)], length + 5)
    outputs, out_mask = layer(torch.randn(2, length + 5, 3), mask)
    assert outputs.shape[1] == output_length(length + 5, stride)
    assert out_mask.sum(-1).tolist() == [
        output_length(length, stride),
        output_length(max(length - 3, 0), stride),
    ]
    assert (outputs[~out_mask] == 0).all()


def test_context_length_zero_is_a_per_item_linear_layer():
    layer = TemporalConvolution(4, 6, context_length=0)
    inputs = torch.randn(2, 9, 4)
    outputs, _ = layer(inputs, torch.ones(2, 9, dtype=torch.bool))
    expected = inputs @ layer.weight[:, :, 0].T + layer.bias
    torch.testing.assert_close(outputs, expected, rtol=1e-5, atol=1e-5)


def test_padding_contents_never_contribute():
    torch.manual_seed(3)
    layer = TemporalConvolution(4, 4, context_length=3)
    mask = lengths_mask([6, 9], 12)
    inputs = torch.randn(2, 12, 4)
    garbage = inputs.clone()
    garbage[~mask] = 100.0
    torch.testing.assert_close(layer(garbage, mask)[0], layer(inputs, mask)[0])


def changed_outputs(network, position: int, length: int) -> torch.Tensor:
    """Which outputs of the last layer move when input `position` changes: [L_last] bool."""
    torch.manual_seed(4)
    inputs = torch.randn(1, length, 3)
    mask = torch.ones(1, length, dtype=torch.bool)
    before = network(inputs, mask)[-1][0]
    moved = inputs.clone()
    moved[0, position] += 5.0
    after = network(moved, mask)[-1][0]
    return (after - before).abs().amax(-1)[0] > 1e-6


@pytest.mark.parametrize(
    "context_lengths,strides",
    [([3], [1]), ([2, 1], [1, 1]), ([2, 1, 1], [1, 2, 2]), ([1, 2, 1, 1], [1, 4, 4, 4])],
)
def test_receptive_field_one_and_stacked_layers(context_lengths, strides):
    torch.manual_seed(5)
    network = TemporalConvNet(3, 3, context_lengths, strides, [None] * len(context_lengths))
    half_width = receptive_half_widths(context_lengths, strides)[-1]
    spacing = 1
    for stride in strides:
        spacing *= stride
    output = -(-half_width // spacing) + 1  # an output whose whole field lies inside the input
    center = output * spacing
    length = max(32, center + half_width + 4)
    # Outside the field nothing moves; the center and both edges of the field always reach the
    # output (inside, a stride wider than the filters can leave gaps, so only these are checked).
    for position in range(length):
        moved = changed_outputs(network, position, length)[output].item()
        if abs(position - center) > half_width:
            assert not moved, (position, center, half_width)
    for position in (center - half_width, center, center + half_width):
        assert changed_outputs(network, position, length)[output].item(), position


def test_peg_gives_different_profiles_different_filters():
    torch.manual_seed(6)
    layer = TemporalConvolution(
        3, 4, context_length=2, peg_mode=PEGMode.REPLACE, profile_dim=5, peg_hidden_dim=8
    )
    profiles = torch.randn(2, 5)
    filters = layer.personal_filters(profiles)
    assert filters.shape == (2, 4, 3, 5)
    assert not torch.allclose(filters[0], filters[1])


def test_peg_global_filter_starts_from_a_global_filters_xavier_draw():
    """Both draw Xavier-uniform as a convolution: bound sqrt(6 / ((Din + Dout)·K)). (The filter
    viewed as a Dout x Din·K matrix has a 1.26x wider bound at 32-48-15: CAIN started wider.)"""
    shape = (32, 48, 15)
    bound = math.sqrt(6 / ((shape[0] + shape[1]) * shape[2]))
    generator = PersonalizedFilterGenerator(5, 8, shape)
    torch.manual_seed(9)
    generator.reset_output_bias()
    torch.manual_seed(9)
    layer = TemporalConvolution(48, 32, context_length=7)
    torch.testing.assert_close(generator.output.bias.detach().view(shape), layer.weight.detach())
    assert generator.output.bias.abs().max() <= bound
    assert generator.output.bias.abs().max() > 0.99 * bound


def test_peg_offset_scale_scales_the_personal_offset_around_the_global_filter():
    profiles = torch.randn(3, 5)
    filters = {}
    for scale in (1.0, 0.1, 0.0):
        torch.manual_seed(6)
        layer = TemporalConvolution(
            3,
            4,
            context_length=2,
            peg_mode=PEGMode.REPLACE,
            profile_dim=5,
            peg_hidden_dim=8,
            peg_offset_scale=scale,
        )
        filters[scale] = layer.personal_filters(profiles)
    global_filter = layer.generator.output.bias.view(4, 3, 5)
    torch.testing.assert_close(filters[0.0], global_filter.expand(3, -1, -1, -1))
    torch.testing.assert_close(filters[0.1] - global_filter, 0.1 * (filters[1.0] - global_filter))
    assert (filters[1.0] - global_filter).abs().amax() > 1e-3


def test_peg_replace_equals_convolution_with_generated_weights():
    torch.manual_seed(7)
    layer = TemporalConvolution(
        3, 4, context_length=2, peg_mode=PEGMode.REPLACE, profile_dim=5, peg_hidden_dim=8
    )
    assert layer.weight is None  # replace: no global filter at all
    inputs, profiles = torch.randn(2, 10, 3), torch.randn(2, 5)
    outputs, _ = layer(inputs, torch.ones(2, 10, dtype=torch.bool), profiles)
    filters = layer.personal_filters(profiles)
    for request in range(2):
        expected = torch.nn.functional.conv1d(
            inputs[request].T[None], filters[request], layer.bias, padding=2
        )[0].T
        torch.testing.assert_close(outputs[request], expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", list(PEGMode))
def test_peg_modes_run_and_keep_the_width(mode):
    layer = TemporalConvolution(3, 4, context_length=1, peg_mode=mode, profile_dim=5)
    outputs, _ = layer(torch.randn(2, 7, 3), torch.ones(2, 7, dtype=torch.bool), torch.randn(2, 5))
    assert outputs.shape == (2, 7, 4)


@pytest.mark.parametrize("kernel", KERNELS, ids=[k.value for k in KERNELS])
@pytest.mark.parametrize(
    "peg_mode,stride,bottleneck_dim",
    [
        (None, 1, None),
        (PEGMode.REPLACE, 4, None),
        (PEGMode.SUM, 2, None),
        (None, 2, 2),
        (PEGMode.REPLACE, 2, 2),
        (PEGMode.CONCAT, 2, 2),
    ],
)
def test_every_kernel_layer_matches_reference_and_padding_never_contributes(
    kernel, peg_mode, stride, bottleneck_dim
):
    """Whole layers on right-padded requests: outputs, and gradients to the inputs and to every
    parameter (the PEG generator's too, through the personal filters)."""
    torch.manual_seed(8)
    options = {"peg_mode": peg_mode, "profile_dim": 3, "bottleneck_dim": bottleneck_dim}
    layer = TemporalConvolution(6, 5, context_length=2, stride=stride, kernel=kernel, **options)
    reference = TemporalConvolution(
        6, 5, context_length=2, stride=stride, kernel=TCNKernel.REFERENCE, **options
    )
    reference.load_state_dict(layer.state_dict())
    mask = lengths_mask([9, 5, 11], 11)
    inputs, profiles = torch.randn(3, 11, 6, requires_grad=True), torch.randn(3, 3)
    outputs, _ = layer(inputs, mask, profiles)
    reference_outputs, _ = reference(inputs, mask, profiles)
    torch.testing.assert_close(outputs, reference_outputs, rtol=1e-4, atol=1e-5)
    upstream = torch.randn_like(outputs)
    grads = torch.autograd.grad(outputs, [inputs, *layer.parameters()], upstream)
    reference_grads = torch.autograd.grad(
        reference_outputs, [inputs, *reference.parameters()], upstream
    )
    for grad, reference_grad in zip(grads, reference_grads, strict=True):
        torch.testing.assert_close(grad, reference_grad, rtol=1e-4, atol=1e-4)
    garbage = inputs.detach().clone()
    garbage[~mask] = 100.0
    torch.testing.assert_close(layer(garbage, mask, profiles)[0], outputs.detach())


def test_bottleneck_is_a_convolution_with_rank_limited_filters():
    torch.manual_seed(9)
    layer = TemporalConvolution(6, 5, context_length=2, bottleneck_dim=2)
    assert layer.weight is not None and layer.weight.shape == (2, 2, 5)
    assert layer.reduce is not None and layer.expand is not None
    # W_out · W_k · W_in per tap k: a full [Dout, Din, K] filter of rank <= b per tap.
    composed = torch.einsum(
        "ob,bck,ci->oik", layer.expand.weight, layer.weight, layer.reduce.weight
    )
    assert torch.linalg.matrix_rank(composed[..., 0]) <= 2
    inputs = torch.randn(2, 10, 6)
    outputs, _ = layer(inputs, torch.ones(2, 10, dtype=torch.bool))
    expected = torch.nn.functional.conv1d(inputs.transpose(1, 2), composed, layer.bias, padding=2)
    torch.testing.assert_close(outputs, expected.transpose(1, 2), rtol=1e-4, atol=1e-5)


def test_peg_cache_gives_the_generated_filters_and_follows_parameter_updates():
    torch.manual_seed(10)
    layer = TemporalConvolution(
        3, 4, context_length=1, peg_mode=PEGMode.REPLACE, profile_dim=5, peg_cache_size=2
    )
    generator = layer.generator
    assert generator is not None
    profiles = torch.randn(3, 5)
    layer.eval()
    with torch.no_grad():
        first = generator(profiles[:2])
        torch.testing.assert_close(first, generator.generate(profiles[:2]))
        assert len(generator._cache) == 2
        mixed = generator(profiles[[2, 0]])  # one hit, one miss; LRU keeps 2
        torch.testing.assert_close(mixed, generator.generate(profiles[[2, 0]]))
        assert len(generator._cache) == 2
        generator.output.bias.add_(1.0)  # a parameter update empties the cache
        torch.testing.assert_close(generator(profiles[:1]), generator.generate(profiles[:1]))
    layer.train()  # training (or autograd) never uses the cache: filters keep their graph
    assert generator(profiles[:1]).requires_grad


def test_one_adam_step_moves_generated_filters_like_a_global_filter():
    """PEG's scale: one Adam step (lr 1e-3) on profiles of log-count size must move a generated
    filter by a small fraction of its size, as it moves a global filter. Before the profile was
    normalised and the second FC scaled by 1 / hidden, this step moved it by 26% of its size
    (CAIN then stayed at the constant predictor)."""
    torch.manual_seed(0)
    generator = PersonalizedFilterGenerator(12, 32, (32, 48, 15))
    generator.reset_output_bias()
    profile = 5.0 + 2.0 * torch.randn(64, 12)  # log counts: large and all positive
    before = generator(profile).detach()
    optimizer = torch.optim.Adam(generator.parameters(), lr=1e-3)
    (generator(profile) * torch.randn_like(before)).sum().backward()
    optimizer.step()
    change = (generator(profile).detach() - before).abs().mean() / before.abs().mean()
    assert change < 0.05, f"one step moved the filters by {change:.2f} of their size"
