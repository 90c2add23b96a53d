"""A strided 1-D convolution as one GEMM per tap over views of the padded input (no unfold copy).

    out[r, j] = Σ_k x_pad[r, j·s + k] @ W_k^T        x_pad: x zero-padded by K // 2 at both ends

`unfold` materializes every window (K times the input: 6 GB at R=1536, L=1000, Din=192, K=15 in
bf16); a grouped convolution with one group per request reached 3-8 % of bf16 matmul peak on an
H200. Here each tap is a plain (batched) matmul on a view of the padded input, so the work runs
on the GEMM library at large M.

Rows. The padded input is viewed as rows of S = u·s consecutive positions, [R, Lq, S·C]: a free
reshape. Row m holds the inputs of the u outputs m·u .. m·u + u - 1, and output j = m·u + t reads
input m·u·s + t·s + k = (m + q)·S + p for tap k, so it is a sum over Q row offsets q of
rows[m + q] @ T_q, with T_q [S·C, u·D] holding W_k at phase p, output slot t, and zeros where
k = q·S + p - t·s falls outside [0, K). Strides are thereby folded into the row width (layers 2-4:
s = 4, K = 15 -> Q = 4 GEMMs with reduction 4·C instead of 15 with reduction C, 1/15 zero taps);
u > 1 (`outputs_per_row`) trades zero taps (Q·u·s ≥ (u - 1)·s + K) for fewer, larger GEMMs: fewer
passes over the input and output, which bound a GEMM with a reduction of only C = 128-192 on a GPU
(not measured there yet: `benchmarks/tcn_benchmark.py` times u = 2 and 4; on CPU they do not pay
off for personal filters, whose T grows u·S·Q / K times).

Global filters (T [Q, S·C, u·D]) run each tap as one GEMM over all R·Lq rows of every request,
flattened: the last Q - 1 rows of a request then read into the next request, but only in outputs
past L', which are dropped. Personal filters (T [R, Q, S·C, u·D]) run one batched GEMM per tap.

Backward is written out (`TapGEMM`) so that the input gradient is added tap by tap into one
buffer with the same strided views (autograd's slice backward would allocate and zero a full
input-sized gradient per tap), and each filter gradient is one GEMM: rows[q + ·]^T @ grad.

Accumulation. `accumulate_in_float32=False` lets each tap's GEMM add into the running output in
the compute dtype (beta = 1: one read and write of the output per tap; under bf16 autocast one
bf16 rounding of the running sum per tap). True sums each tap's bf16 product into an fp32 buffer
instead (more memory passes). Relative error under bf16 autocast, Din=192, K=15, stride 1
(measured on CPU): one bf16 GEMM (unfold, conv) 0.29 %, fp32 sum 0.33 %, running bf16 sum 0.52 %
(rounding inputs and filters alone: 0.23 %). In fp32 both are the same computation.

Autocast: GEMMs run in the autocast dtype where autocast is on (as `F.conv1d` would), chosen here
and explicit inside `TapGEMM`, whose backward runs in the dtypes of its forward.

Letters: R requests, L length, L' = ceil(L / s) outputs, C input channels, D output channels,
K taps, s stride, u outputs per row, S = u·s positions per row, Q row offsets (tap rows),
Lq rows per request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

AUTOCAST_ELIGIBLE = (torch.float32, torch.float16, torch.bfloat16)  # float64 is never cast
HALF_PRECISION = (torch.float16, torch.bfloat16)


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """The dtype a matmul on `tensor` runs in: the autocast dtype where autocast is on."""
    device_type = tensor.device.type
    if torch.is_autocast_enabled(device_type) and tensor.dtype in AUTOCAST_ELIGIBLE:
        return torch.get_autocast_dtype(device_type)
    return tensor.dtype


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


def tap_rows(width: int, stride: int, outputs_per_row: int) -> int:
    """Q: row offsets the taps span (taps past K are zero)."""
    span = outputs_per_row * stride
    return _ceil_div((outputs_per_row - 1) * stride + width, span)


def padded_rows(
    inputs: torch.Tensor, width: int, stride: int, outputs_per_row: int
) -> tuple[torch.Tensor, int]:
    """[R, L, C] -> (rows [R, Lq, S·C] of the zero-padded input, output rows ceil(L' / u))."""
    num_requests, length, channels = inputs.shape
    half, span = width // 2, outputs_per_row * stride
    output_rows = _ceil_div(_ceil_div(length, stride), outputs_per_row)
    # Every output row's Q tap rows lie inside its request, and every input has a row.
    rows = max(
        output_rows + tap_rows(width, stride, outputs_per_row) - 1, _ceil_div(half + length, span)
    )
    padded = F.pad(inputs, (0, 0, half, rows * span - half - length))  # [R, Lq·S, C]
    return padded.reshape(num_requests, rows, span * channels), output_rows


def tap_filters(weights: torch.Tensor, stride: int, outputs_per_row: int) -> torch.Tensor:
    """[..., D, C, K] -> T [..., Q, S·C, u·D] with T_q[p·C + c, t·D + o] = W[o, c, q·S + p - t·s]
    (zero where that tap is outside [0, K))."""
    *lead, out_dim, in_dim, width = weights.shape
    num_rows, span = tap_rows(width, stride, outputs_per_row), outputs_per_row * stride
    if outputs_per_row == 1:  # T_q[p·C + c, o] = W[o, c, q·s + p]: one copy of the filters
        if num_rows * stride > width:
            weights = F.pad(weights, (0, num_rows * stride - width))  # zero taps past K
        grouped = weights.unflatten(-1, (num_rows, stride))  # [..., D, C, Q, s]
        grouped = grouped.movedim((-2, -1), (-4, -3))  # [..., Q, s, D, C]
        return grouped.transpose(-2, -1).reshape(*lead, num_rows, span * in_dim, out_dim)
    device = weights.device
    offsets = torch.arange(num_rows, device=device)  # q
    phases = torch.arange(span, device=device)  # p
    slots = torch.arange(outputs_per_row, device=device)  # t
    taps = offsets[:, None, None] * span + phases[:, None] - slots * stride  # [Q, S, u]
    taps = torch.where((taps >= 0) & (taps < width), taps, width)
    # Tap-major filters with one zero tap appended (index `width`): [..., K + 1, C, D].
    tap_major = torch.cat(
        [weights.transpose(-1, -3), weights.new_zeros(*lead, 1, in_dim, out_dim)], dim=-3
    )
    gathered = tap_major[..., taps, :, :]  # [..., Q, S, u, C, D]
    gathered = gathered.transpose(-3, -2)  # [..., Q, S, C, u, D]
    return gathered.reshape(*lead, num_rows, span * in_dim, outputs_per_row * out_dim)


def tap_gemm_convolution(
    inputs: torch.Tensor,
    weights: torch.Tensor,
    stride: int,
    outputs_per_row: int = 1,
    accumulate_in_float32: bool = False,
) -> torch.Tensor:
    """inputs [R, L, C]; weights [D, C, K] (global) or [R, D, C, K] (personal) -> [R, L', D]."""
    num_requests, length, _ = inputs.shape
    out_dim, width = weights.shape[-3], weights.shape[-1]
    dtype = compute_dtype(inputs)
    rows, output_rows = padded_rows(inputs.to(dtype), width, stride, outputs_per_row)
    taps = tap_filters(weights.to(dtype), stride, outputs_per_row)  # [(R,) Q, S·C, u·D]
    outputs = TapGEMM.apply(rows, taps, output_rows, accumulate_in_float32)  # rows [R, Lq, S·C]
    outputs = outputs.reshape(num_requests, output_rows * outputs_per_row, out_dim)  # [R, ≥L', D]
    return outputs[:, : _ceil_div(length, stride)]


def _multiply_add(
    total: torch.Tensor, left: torch.Tensor, right: torch.Tensor, separate_product: bool
) -> None:
    """total += left @ right (2-D or batched), in place; `separate_product` forms the product in
    the operands' dtype first (an fp32 `total` accumulating lower-precision products)."""
    if separate_product:
        total += left @ right
    elif left.dim() == 2:
        total.addmm_(left, right)
    else:
        total.baddbmm_(left, right)


class TapGEMM(torch.autograd.Function):
    """rows [R, Lq, S·C]; taps [Q, S·C, u·D] (global) or [R, Q, S·C, u·D] (personal)
    -> [R, output_rows, u·D], out[r, m] = Σ_q rows[r, m + q] @ taps[(r,) q]."""

    @staticmethod
    def forward(
        ctx,
        rows: torch.Tensor,
        taps: torch.Tensor,
        output_rows: int,
        accumulate_in_float32: bool,
    ) -> torch.Tensor:
        ctx.save_for_backward(rows, taps)
        ctx.output_rows = output_rows
        separate = accumulate_in_float32 and rows.dtype in HALF_PRECISION
        ctx.separate = separate
        accumulator = torch.float32 if separate else rows.dtype
        num_requests, row_count, row_width = rows.shape
        with torch.autocast(rows.device.type, enabled=False):
            if taps.dim() == 3:  # global: one GEMM per tap over all requests' rows
                num_taps = taps.shape[0]
                flat = rows.view(num_requests * row_count, row_width)  # [R·Lq, S·C]
                valid = flat.shape[0] - num_taps + 1  # rows whose taps stay inside the buffer
                total = flat.new_zeros(flat.shape[0], taps.shape[-1], dtype=accumulator)
                for offset in range(num_taps):
                    _multiply_add(
                        total[:valid], flat[offset : offset + valid], taps[offset], separate
                    )
                total = total.view(num_requests, row_count, -1)[:, :output_rows]
            else:  # personal: one batched GEMM per tap
                total = rows.new_zeros(num_requests, output_rows, taps.shape[-1], dtype=accumulator)
                for offset in range(taps.shape[1]):
                    window = rows[:, offset : offset + output_rows]  # [R, output_rows, S·C]
                    _multiply_add(total, window, taps[:, offset], separate)
        return total.to(rows.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        rows, taps = ctx.saved_tensors
        output_rows, separate = ctx.output_rows, ctx.separate
        need_rows, need_taps = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad = grad.to(rows.dtype)
        accumulator = torch.float32 if separate else rows.dtype
        num_requests, row_count, row_width = rows.shape
        grad_rows = rows.new_zeros(rows.shape, dtype=accumulator) if need_rows else None
        grad_taps = torch.empty_like(taps) if need_taps else None
        with torch.autocast(rows.device.type, enabled=False):
            if taps.dim() == 3:
                num_taps = taps.shape[0]
                flat = rows.view(num_requests * row_count, row_width)
                valid = flat.shape[0] - num_taps + 1
                padded_grad = grad.new_zeros(num_requests, row_count, taps.shape[-1])
                padded_grad[:, :output_rows] = grad
                flat_grad = padded_grad.view(-1, taps.shape[-1])[:valid]  # [valid, u·D]
                for offset in range(num_taps):
                    if grad_rows is not None:
                        target = grad_rows.view(flat.shape)[offset : offset + valid]
                        _multiply_add(target, flat_grad, taps[offset].T, separate)
                    if grad_taps is not None:
                        torch.mm(flat[offset : offset + valid].T, flat_grad, out=grad_taps[offset])
            else:
                for offset in range(taps.shape[1]):
                    window = rows[:, offset : offset + output_rows]
                    if grad_rows is not None:
                        target = grad_rows[:, offset : offset + output_rows]
                        _multiply_add(target, grad, taps[:, offset].transpose(1, 2), separate)
                    if grad_taps is not None:
                        torch.bmm(window.transpose(1, 2), grad, out=grad_taps[:, offset])
        if grad_rows is not None:
            grad_rows = grad_rows.to(rows.dtype)
        return grad_rows, grad_taps, None, None
