"""Temporal convolution over a history (CAIN §4.1), stacked for MSIA (§4.2), PEG filters (§4.3).

A layer with context length cl slides a filter of width K = 2·cl + 1 along the sequence (context
on both sides of the center item, eq. 1) with zero padding at both ends and a stride s, so the
output has ceil(L / s) positions, output j centered on input j·s. cl = 0 is a per-item linear
layer.

Filters are global (one per layer, eq. 5) or personalized: PEG's 2-layer MLP turns the profile
into one filter per request (eqs. 10-12).

Kernels (`TCNKernel`; each equals the reference in outputs and gradients to inputs and filters,
`tests/model/test_temporal_convolution.py`):
- REFERENCE: unfold + matmul (global) / bmm (personal), the plain definition. The unfolded windows
  are K times the input (6 GB at R=1536, L=1000, Din=192, K=15 in bf16).
- CONV: `F.conv1d`; personal filters as one grouped convolution, one group per request, when the
  output is long (L' > 2·Dout), else unfold + bmm. On an H200 the grouped cuDNN convolution
  reached only 3-8 % of bf16 matmul peak.
- TAP_GEMM: `tap_gemm.py`, one GEMM per tap over views of the padded input (no unfolded copy;
  strides folded into the row width, so layers 2-4 run 4 GEMMs instead of 15), each adding into
  the output in the compute dtype; a global filter as one GEMM per tap over all requests' rows,
  personal filters as one batched GEMM per tap. TAP_GEMM_FLOAT32_SUM sums the taps' products in
  fp32 instead: bf16 error 0.33 % instead of 0.52 % (one bf16 GEMM: 0.29 %), more memory passes.
- AUTO: TAP_GEMM on CUDA (not yet measured there: `benchmarks/tcn_benchmark.py --device cuda
  --dtype bf16 --requests 1536`). On CPU: TAP_GEMM for a global filter from
  `CPU_TAP_GEMM_MIN_POSITIONS` output positions (measured 1.1-1.3x over CONV there, 0.3-0.5x on
  tiny inputs), CONV otherwise. `benchmarks/tcn_benchmark.py` times every kernel; its CPU record
  (benchmarks/results/tcn.json) has not been taken on a quiet machine yet.

Low-rank switch (`bottleneck_dim`, off by default: not in the paper): a layer first projects each
item Din -> b (no bias, so padded zeros stay zero), convolves b -> b (global or PEG filters), and
projects b -> Dout. The composition is a convolution whose per-tap Dout x Din matrices have rank
<= b: K·b² + (Din + Dout)·b multiply-adds per position instead of K·Din·Dout, and PEG generates
b·b·K instead of Dout·Din·K weights per request.

PEG filter cache (`peg_cache_size`, off by default): in eval mode without autograd, filters are
kept per distinct profile row (LRU) and reused while the generator's parameters are unchanged.
PEG filters depend on the profile only, so this is exact; it takes the read of the generator's
32 x (Dout·Din·K) matrix (≈31 MB per layer at 128-128-15) off the request path.

Padding: inputs are right-padded with zeros, which is exactly the paper's zero padding at the end
of the sequence. Outputs at padded positions (bias plus edge leakage) are zeroed again so a
stacked layer never reads them.

Receptive field: with half-width h_n of layer n and S_n the product of strides up to n,
h_1 = cl_1 and h_{n+1} = h_n + cl_{n+1} · S_n, i.e. the span 2h+1 grows by fs − 1 per stride-1
layer (eq. 7) and faster with strides. (When a stride exceeds the width the previous layers cover,
the field has holes between its edges; the half-width bounds it.)

Letters: R requests, L length, L' output length, Din/Dout channels, K filter width, P profile
width, N = Dout·Din·K.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from enum import Enum

import torch
import torch.nn.functional as F
from torch import nn

from model.layers.tap_gemm import tap_gemm_convolution


class PEGMode(Enum):
    """How a layer combines personalized and global filters (paper Table 6)."""

    REPLACE = "replace"  # personalized filter only (paper default, eq. 12)
    SUM = "sum"  # global + personalized outputs
    CONCAT = "concat"  # [global ⊕ personalized] outputs, projected back to Dout (unpublished)


def output_length(length: int, stride: int) -> int:
    return -(-length // stride)


class TCNKernel(Enum):
    """How a TCN layer computes its convolutions (see the module docstring)."""

    AUTO = "auto"  # TAP_GEMM on CUDA; on CPU the fastest measured kernel for the shape
    REFERENCE = "reference"  # unfold + matmul / bmm
    CONV = "conv"  # F.conv1d; personal filters: grouped conv for long outputs, else unfold + bmm
    TAP_GEMM = "tap_gemm"  # one GEMM per tap, adding into the output in the compute dtype
    TAP_GEMM_FLOAT32_SUM = "tap_gemm_float32_sum"  # per-tap products summed in fp32


TAP_GEMM_KERNELS = (TCNKernel.TAP_GEMM, TCNKernel.TAP_GEMM_FLOAT32_SUM)


# CPU: below this many output positions (R·L') the tap GEMM's ~3·Q small GEMM calls cost more than
# oneDNN's one convolution (0.3-0.5x at 80-400 positions, ≈1x at 2 000-6 000, 1.1-1.3x above).
CPU_TAP_GEMM_MIN_POSITIONS = 4096


def resolve_kernel(
    kernel: TCNKernel, device: torch.device, personal: bool, output_positions: int
) -> TCNKernel:
    """The kernel AUTO stands for (any other kernel stands for itself); see the module docstring.
    output_positions: R·L' of the convolution."""
    if kernel is not TCNKernel.AUTO:
        return kernel
    if device.type == "cuda":
        return TCNKernel.TAP_GEMM
    if not personal and output_positions >= CPU_TAP_GEMM_MIN_POSITIONS:
        return TCNKernel.TAP_GEMM
    return TCNKernel.CONV


def _windows(inputs: torch.Tensor, width: int, stride: int) -> torch.Tensor:
    """[R, L, Din] -> [R, L', Din*K]: the zero-padded window around each output center."""
    half = width // 2
    padded = F.pad(inputs, (0, 0, half, half))  # [R, L + 2·half, Din]
    windows = padded.unfold(1, width, stride)  # [R, L', Din, K]
    return windows.flatten(2)


def convolve_global(
    inputs: torch.Tensor, weight: torch.Tensor, stride: int, kernel: TCNKernel = TCNKernel.AUTO
) -> torch.Tensor:
    """One filter for everybody. inputs [R, L, Din]; weight [Dout, Din, K] -> [R, L', Dout]."""
    width = weight.shape[-1]
    positions = inputs.shape[0] * output_length(inputs.shape[1], stride)
    kernel = resolve_kernel(kernel, inputs.device, personal=False, output_positions=positions)
    if kernel is TCNKernel.CONV:
        output = F.conv1d(inputs.transpose(1, 2), weight, stride=stride, padding=width // 2)
        return output.transpose(1, 2)
    if kernel in TAP_GEMM_KERNELS:
        return tap_gemm_convolution(
            inputs, weight, stride, accumulate_in_float32=kernel is TCNKernel.TAP_GEMM_FLOAT32_SUM
        )
    return _windows(inputs, width, stride) @ weight.flatten(1).T


def grouped_convolution(inputs: torch.Tensor, weights: torch.Tensor, stride: int) -> torch.Tensor:
    """`convolve_personal` as one grouped convolution, one group per request (no unfolded copy).
    inputs [R, L, Din]; weights [R, Dout, Din, K] -> [R, L', Dout]."""
    num_requests, length, in_dim = inputs.shape
    out_dim, width = weights.shape[1], weights.shape[-1]
    stacked = inputs.transpose(1, 2).reshape(1, num_requests * in_dim, length)  # [1, R*Din, L]
    output = F.conv1d(
        stacked,
        weights.reshape(num_requests * out_dim, in_dim, width),
        stride=stride,
        padding=width // 2,
        groups=num_requests,
    )  # [1, R*Dout, L']
    return output.view(num_requests, out_dim, -1).transpose(1, 2)


def convolve_personal(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    stride: int,
    kernel: TCNKernel = TCNKernel.AUTO,
) -> torch.Tensor:
    """One filter per request. inputs [R, L, Din]; weights [R, Dout, Din, K] -> [R, L', Dout].

    CONV: the grouped convolution when the output is long (L' > 2·Dout: the unfolded windows,
    L'·Din·K per request, would outweigh the filter, Dout·Din·K), else unfold + bmm, which
    oneDNN's grouped backward loses to at short or strided outputs (CAIN layers 2-4, and layer 1
    at L=100: 1.3-2x on 256 requests).
    """
    out_dim, width = weights.shape[1], weights.shape[-1]
    positions = inputs.shape[0] * output_length(inputs.shape[1], stride)
    kernel = resolve_kernel(kernel, inputs.device, personal=True, output_positions=positions)
    if kernel is TCNKernel.CONV and output_length(inputs.shape[1], stride) > 2 * out_dim:
        return grouped_convolution(inputs, weights, stride)
    if kernel in TAP_GEMM_KERNELS:
        return tap_gemm_convolution(
            inputs, weights, stride, accumulate_in_float32=kernel is TCNKernel.TAP_GEMM_FLOAT32_SUM
        )
    return torch.bmm(_windows(inputs, width, stride), weights.flatten(2).transpose(1, 2))


def xavier_filter(weight: torch.Tensor) -> None:
    """Xavier-uniform for a [Dout, Din, K] filter, in place, as for a convolution: fan-in Din·K,
    fan-out Dout·K (what `initialize_xavier` gives every global filter of a model). Every filter,
    global or PEG's, starts from this draw."""
    nn.init.xavier_uniform_(weight)


class PersonalizedFilterGenerator(nn.Module):
    """PEG (eqs. 10-11): profile [R, P] -> ReLU(FC) -> FC -> filters [R, Dout, Din, K].

    Scale (not in the paper, which gives no initialisation): the profile is layer-normalised (log
    counts and category embeddings differ in scale by orders of magnitude) and the second FC's
    weight is applied with a 1 / hidden multiplier. Without them, Adam moves every generated
    weight by about lr · Σ|hidden| per step: one step at lr 1e-3 on log-count profiles moved the
    filters by 26% of their size (2.5% now, like a global filter; the test of this scale);
    the context representations turned to noise
    and CAIN stayed at the constant predictor on the long-tail demo data (train loss 0.197 vs
    0.1985 after 150 steps, test AUC 0.53, while CAIN with peg_placement=none reached 0.180 and DIN
    0.162 / AUC 0.80). With it a generated weight moves at about the rate of a global filter's.
    """

    def __init__(
        self,
        profile_dim: int,
        hidden_dim: int,
        filter_shape: tuple[int, int, int],
        cache_size: int = 0,
        offset_scale: float = 1.0,
    ):
        super().__init__()
        self.filter_shape = filter_shape
        self.cache_size = cache_size  # profiles kept by the inference cache (0: no cache)
        self._cache: OrderedDict[bytes, torch.Tensor] = OrderedDict()
        self._cache_state: tuple[int, ...] = ()
        size = filter_shape[0] * filter_shape[1] * filter_shape[2]
        self.norm = nn.LayerNorm(profile_dim)
        self.hidden = nn.Linear(profile_dim, hidden_dim)
        self.output = nn.Linear(hidden_dim, size)
        self.output_multiplier = offset_scale / hidden_dim

    def reset_output_bias(self) -> None:
        """Start from a Xavier-initialised global filter (the generator's bias) plus a personal
        offset: a default-initialised bias would give filters far too large for fan-in Din·K.
        The draw is a global filter's (`xavier_filter`), so that with no offset
        (peg_offset_scale=0) a PEG layer starts as a global layer does."""
        filter_init = torch.empty(self.filter_shape)
        xavier_filter(filter_init)
        with torch.no_grad():
            self.output.bias.copy_(filter_init.flatten())

    def generate(self, profile: torch.Tensor) -> torch.Tensor:
        hidden = torch.relu(self.hidden(self.norm(profile)))  # [R, hidden]
        offset = F.linear(hidden, self.output.weight) * self.output_multiplier
        return (offset + self.output.bias).view(-1, *self.filter_shape)  # [R, Dout, Din, K]

    def forward(self, profile: torch.Tensor) -> torch.Tensor:
        if self.cache_size > 0 and not self.training and not torch.is_grad_enabled():
            return self._cached(profile)
        return self.generate(profile)

    def _parameter_state(self) -> tuple[int, ...]:
        # An optimizer step or load_state_dict bumps a parameter's version counter.
        return tuple(v for p in self.parameters() for v in (p.data_ptr(), p._version))

    def _cached(self, profile: torch.Tensor) -> torch.Tensor:
        """Same filters as `generate`, reusing those of profile rows seen before (LRU)."""
        state = self._parameter_state()
        if state != self._cache_state:
            self._cache.clear()
            self._cache_state = state
        keys = [bytes(row) for row in profile.detach().cpu().contiguous().numpy()]
        missing = [index for index, key in enumerate(keys) if key not in self._cache]
        if missing:
            generated = self.generate(profile[missing])  # [M, Dout, Din, K]
            for index, filters in zip(missing, generated, strict=True):
                self._cache[keys[index]] = filters
        for key in keys:
            self._cache.move_to_end(key)
        filters = torch.stack([self._cache[key] for key in keys])  # [R, Dout, Din, K]
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return filters


class TemporalConvolution(nn.Module):
    """One TCN layer: [R, L, Din] (zero where padded) -> [R, ceil(L/s), Dout].

    Args:
        in_dim, out_dim: channels.
        context_length: cl; filter width K = 2·cl + 1.
        stride: s.
        peg_mode: None for global filters only, else how PEG's filters enter (`PEGMode`).
        profile_dim, peg_hidden_dim: PEG's input width and hidden width.
        kernel: how the convolutions are computed (`TCNKernel`).
        bottleneck_dim: None (paper) or b: project Din -> b, convolve b -> b, project b -> Dout.
        peg_cache_size: profiles whose PEG filters the eval-mode cache keeps (0: none).
        peg_offset_scale: multiplies the personal offset (its size at init and, under Adam, the
            rate at which it moves); 1 moves it at about a global filter's rate.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        context_length: int,
        stride: int = 1,
        peg_mode: PEGMode | None = None,
        profile_dim: int = 0,
        peg_hidden_dim: int = 32,
        kernel: TCNKernel = TCNKernel.AUTO,
        bottleneck_dim: int | None = None,
        peg_cache_size: int = 0,
        peg_offset_scale: float = 1.0,
    ) -> None:
        super().__init__()
        width = 2 * context_length + 1
        self.stride = stride
        self.kernel = kernel
        self.peg_mode = peg_mode
        # With a bottleneck the convolution itself runs b -> b between two per-item projections.
        self.reduce = nn.Linear(in_dim, bottleneck_dim, bias=False) if bottleneck_dim else None
        self.expand = nn.Linear(bottleneck_dim, out_dim, bias=False) if bottleneck_dim else None
        conv_in, conv_out = (
            (bottleneck_dim, bottleneck_dim) if bottleneck_dim else (in_dim, out_dim)
        )
        needs_global = peg_mode is not PEGMode.REPLACE
        self.weight = (
            nn.Parameter(torch.empty(conv_out, conv_in, width)) if needs_global else None
        )  # [Dout, Din, K] (b, b, K with a bottleneck)
        if self.weight is not None:
            xavier_filter(self.weight)
        self.bias = nn.Parameter(torch.zeros(out_dim))  # b_c, shared by global and PEG filters
        self.generator = (
            PersonalizedFilterGenerator(
                profile_dim,
                peg_hidden_dim,
                (conv_out, conv_in, width),
                peg_cache_size,
                peg_offset_scale,
            )
            if peg_mode is not None
            else None
        )
        self.merge = (
            nn.Linear(2 * conv_out, conv_out, bias=False) if peg_mode is PEGMode.CONCAT else None
        )

    def personal_filters(self, profile: torch.Tensor) -> torch.Tensor:
        """[R, P] -> [R, Dout, Din, K]; only for a layer with PEG."""
        assert self.generator is not None
        return self.generator(profile)

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor, profile: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """inputs [R, L, Din]; mask [R, L]; profile [R, P]
        -> (outputs [R, L', Dout], mask [R, L'])."""
        if self.reduce is not None:
            inputs = self.reduce(inputs)  # [R, L, b]; no bias, so masking after is the same
        inputs = inputs * mask[:, :, None]  # padded positions never contribute
        outputs: list[torch.Tensor] = []
        if self.weight is not None:
            outputs.append(convolve_global(inputs, self.weight, self.stride, self.kernel))
        if self.generator is not None:
            assert profile is not None, "a PEG layer needs the profile"
            filters = self.personal_filters(profile)
            outputs.append(convolve_personal(inputs, filters, self.stride, self.kernel))
        if self.peg_mode is PEGMode.CONCAT:
            assert self.merge is not None
            combined = self.merge(torch.cat(outputs, dim=-1))
        else:
            combined = outputs[0] if len(outputs) == 1 else outputs[0] + outputs[1]
        if self.expand is not None:
            combined = self.expand(combined)  # [R, L', b] -> [R, L', Dout]
        lengths = mask.sum(-1)  # [R]
        out_lengths = torch.div(lengths + self.stride - 1, self.stride, rounding_mode="floor")
        out_mask = (
            torch.arange(combined.shape[1], device=mask.device)[None, :] < out_lengths[:, None]
        )
        return (combined + self.bias) * out_mask[:, :, None], out_mask


class TemporalConvNet(nn.Module):
    """Stacked TCN layers (MSIA §4.2.1); returns every layer's output for its own attention.

    Layer 1 maps Din -> Dout (CAIN: stride 1, so each item keeps its own representation); later
    layers map Dout -> Dout (CAIN: stride 4). Between layers a ReLU supplies the non-linearity
    the paper credits for the later layers' gain; each layer's *linear* output (eq. 5 / 12) is what
    its attention reads.

    Args:
        context_lengths: cl per layer (its length is the number of layers).
        strides: stride per layer.
        peg_layers: per layer, the PEG mode or None.
        kernel, bottleneck_dim, peg_cache_size, peg_offset_scale: see `TemporalConvolution` (the
            same for every layer).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        context_lengths: Sequence[int],
        strides: Sequence[int],
        peg_layers: Sequence[PEGMode | None],
        profile_dim: int = 0,
        peg_hidden_dim: int = 32,
        kernel: TCNKernel = TCNKernel.AUTO,
        bottleneck_dim: int | None = None,
        peg_cache_size: int = 0,
        peg_offset_scale: float = 1.0,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TemporalConvolution(
                in_dim=in_dim if index == 0 else out_dim,
                out_dim=out_dim,
                context_length=context_length,
                stride=strides[index],
                peg_mode=peg_layers[index],
                profile_dim=profile_dim,
                peg_hidden_dim=peg_hidden_dim,
                kernel=kernel,
                bottleneck_dim=bottleneck_dim,
                peg_cache_size=peg_cache_size,
                peg_offset_scale=peg_offset_scale,
            )
            for index, context_length in enumerate(context_lengths)
        )

    def forward(
        self, inputs: torch.Tensor, mask: torch.Tensor, profile: torch.Tensor | None = None
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """inputs [R, L, Din]; mask [R, L] -> per layer n: ([R, L_n, Dout], mask [R, L_n])."""
        results = []
        for index, layer in enumerate(self.layers):
            if index > 0:
                inputs = torch.relu(inputs)
            inputs, mask = layer(inputs, mask, profile)
            results.append((inputs, mask))
        return results


def receptive_half_widths(context_lengths: Sequence[int], strides: Sequence[int]) -> list[int]:
    """Half-width, in input positions, of each layer's receptive field (see module docstring)."""
    widths, half_width, spacing = [], 0, 1
    for context_length, stride in zip(context_lengths, strides, strict=True):
        half_width += context_length * spacing  # this layer's taps are `spacing` inputs apart
        widths.append(half_width)
        spacing *= stride
    return widths
