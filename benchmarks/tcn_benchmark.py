"""TCN convolution speed per kernel: one layer's convolution, forward and forward + backward.
Prints numbers; asserts nothing; writes JSON after every item.

    python benchmarks/tcn_benchmark.py                                  # CPU, R=64, fp32
    python benchmarks/tcn_benchmark.py --device cuda --dtype bf16 --requests 1536   # tcn_cuda.json

Shapes (CAIN at history length L): layer 1, [R, L, 192] -> [R, L, 128], K = 15, stride 1; a later
layer, [R, L, 128] -> [R, L/4, 128], K = 15, stride 4. Each with one global filter [Dout, Din, K]
and with personal (PEG) filters [R, Dout, Din, K] that are leaves here (the generator that makes
them in CAIN is timed on its own as `peg_generator`: profile [R, 64] -> 32 -> Dout·Din·K).

Timed: `convolve_global` / `convolve_personal` with each `TCNKernel` (and `tap_gemm_convolution`
with 2 outputs per row, and 4 on CUDA), inputs and filters requiring grad; forward under no_grad,
and forward + backward of <output, ones>. `--dtype bf16` runs them under bf16 autocast (as training
with autocast would). FLOPs per forward: 2·R·L'·Din·Dout·K (backward: twice that), so achieved
GFLOP/s = 3 × forward FLOPs / (forward + backward time). A square matmul in the same run and
dtype (2048², and 8192² on CUDA; 2048² fp32 always), timed before every round and at the end,
gives the machine's GEMM rate (the fastest of those timings), so numbers read as ratios.

Every item is timed `--repeats` times after `--warmup` runs in each of `--rounds` passes over all
items (CPU default: 3 rounds of 2; the machine is shared, so kernels are interleaved and the
summary uses each item's fastest run, as interference only adds time). On CUDA (1 round of 10
after 3 warm-ups) every timing is bracketed by `torch.cuda.synchronize()`.

An item that fails (out of memory, an unsupported op) records its error and the run goes on.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

# Sleeping OpenMP workers on a shared CPU (see model_benchmark.py); set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.layers.tap_gemm import tap_gemm_convolution  # noqa: E402
from model.layers.temporal_convolution import (  # noqa: E402
    PersonalizedFilterGenerator,
    TCNKernel,
    convolve_global,
    convolve_personal,
    output_length,
    resolve_kernel,
)

# name -> (Din, Dout, K, stride); the input length is --length for both.
SHAPES = {"layer1": (192, 128, 15, 1), "later": (128, 128, 15, 4)}
PROFILE_DIM, PEG_HIDDEN_DIM = 64, 32
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seconds(run: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> list:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        run()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def statistics_of(times: list[float]) -> dict:
    return {"min_s": min(times), "median_s": statistics.median(times), "times_s": times}


def gemm_gflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 10) -> float:
    left = torch.randn(size, size, device=device, dtype=dtype)
    right = torch.randn(size, size, device=device, dtype=dtype)
    times = seconds(lambda: left @ right, device, warmup=2, repeats=repeats)
    return 2 * size**3 / statistics.median(times) / 1e9


def convolution(label: str, filters: str) -> Callable:
    """(inputs, weights, stride) -> outputs for an item label: a kernel or tap_gemm_u<n>."""
    if label.startswith("tap_gemm_u"):
        outputs_per_row = int(label.removeprefix("tap_gemm_u"))
        return lambda inputs, weights, stride: tap_gemm_convolution(
            inputs, weights, stride, outputs_per_row
        )
    kernel = TCNKernel(label)
    convolve = convolve_global if filters == "global" else convolve_personal
    return lambda inputs, weights, stride: convolve(inputs, weights, stride, kernel)


def measure_convolution(
    label: str, shape: str, filters: str, args: argparse.Namespace, device: torch.device
) -> dict[str, list[float]]:
    """Forward and forward + backward times (s) of one kernel on one shape, `--repeats` each."""
    in_dim, out_dim, width, stride = SHAPES[shape]
    requests, length = args.requests, args.length
    inputs = torch.randn(requests, length, in_dim, device=device, requires_grad=True)
    filter_shape = (
        (requests, out_dim, in_dim, width) if filters == "personal" else (out_dim, in_dim, width)
    )
    weights = (torch.randn(filter_shape, device=device) / (in_dim * width) ** 0.5).requires_grad_()
    convolve = convolution(label, filters)
    autocast = torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")

    def forward() -> None:
        with torch.no_grad(), autocast:
            convolve(inputs, weights, stride)

    def forward_backward() -> None:
        with autocast:
            outputs = convolve(inputs, weights, stride)
        outputs.backward(torch.ones_like(outputs))
        inputs.grad, weights.grad = None, None

    return {
        "forward": seconds(forward, device, args.warmup, args.repeats),
        "forward_backward": seconds(forward_backward, device, args.warmup, args.repeats),
    }


def measure_generator(
    shape: str, args: argparse.Namespace, device: torch.device
) -> dict[str, list[float]]:
    """Forward + backward times (s) of PEG's filter generator for this shape's filters."""
    in_dim, out_dim, width, _ = SHAPES[shape]
    generator = PersonalizedFilterGenerator(PROFILE_DIM, PEG_HIDDEN_DIM, (out_dim, in_dim, width))
    generator = generator.to(device)
    profile = torch.randn(args.requests, PROFILE_DIM, device=device)
    autocast = torch.autocast(device.type, dtype=DTYPES[args.dtype], enabled=args.dtype != "fp32")

    def forward_backward() -> None:
        with autocast:
            filters = generator(profile)
        filters.backward(torch.ones_like(filters))
        generator.zero_grad(set_to_none=True)

    return {"forward_backward": seconds(forward_backward, device, args.warmup, args.repeats)}


def forward_flops(shape: str, args: argparse.Namespace) -> int:
    in_dim, out_dim, width, stride = SHAPES[shape]
    return 2 * args.requests * output_length(args.length, stride) * in_dim * out_dim * width


def summary(
    items: list[dict], gemm_rate: float, args: argparse.Namespace, device: torch.device
) -> dict:
    """Per shape and filter type: each kernel's fastest forward + backward, its speed-up over
    CONV (fastest over fastest, and the median over rounds of the same ratio within a round,
    where the two ran minutes apart at most), its share of the GEMM rate, and what AUTO picks."""
    table: dict[str, dict] = {}
    for item in items:
        if "forward_backward" in item and item["kernel"] != "peg_generator":
            table.setdefault(f"{item['shape']}/{item['filters']}", {})[item["kernel"]] = item
    result = {}
    for key, kernels in table.items():
        shape, filters = key.split("/")
        conv_times = kernels.get("conv", {}).get("forward_backward", {}).get("times_s", [])
        conv = min(conv_times, default=None)
        positions = args.requests * output_length(args.length, SHAPES[shape][3])
        auto = resolve_kernel(TCNKernel.AUTO, device, filters == "personal", positions)
        cells = {}
        for label, item in kernels.items():
            times = item["forward_backward"]["times_s"]
            fastest = min(times)
            per_round = [
                min(conv_times[start : start + args.repeats])
                / min(times[start : start + args.repeats])
                for start in range(0, min(len(times), len(conv_times)), args.repeats)
            ]
            cells[label] = {
                "forward_backward_ms": 1e3 * fastest,
                "speedup_vs_conv": conv / fastest if conv else None,
                "speedup_vs_conv_within_rounds": statistics.median(per_round)
                if per_round
                else None,
                "share_of_gemm_rate": 3 * item["forward_flops"] / fastest / 1e9 / gemm_rate,
            }
        result[key] = {"auto_picks": auto.value, "kernels": cells}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--length", type=int, default=1000)
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=list(SHAPES))
    parser.add_argument("--filters", nargs="+", default=["global", "personal"])
    parser.add_argument(
        "--kernels",
        nargs="+",
        default=None,
        help="kernel values and tap_gemm_u<n>; default: all but auto (tap_gemm_float32_sum only "
        "in bf16, tap_gemm_u4 only on CUDA)",
    )
    parser.add_argument("--rounds", type=int, default=None, help="passes over all items")
    parser.add_argument("--warmup", type=int, default=None, help="runs before each item's timing")
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per item and round")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--output",
        default=None,
        help="default: benchmarks/results/tcn.json on CPU, tcn_cuda.json on CUDA",
    )
    args = parser.parse_args()
    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    # CPU: the machine is shared, so items are interleaved over rounds and the fastest run counts.
    for name, cuda_value, cpu_value in (("rounds", 1, 3), ("warmup", 3, 1), ("repeats", 10, 2)):
        if getattr(args, name) is None:
            setattr(args, name, cuda_value if on_cuda else cpu_value)
    if args.kernels is None:
        args.kernels = ["reference", "conv", "tap_gemm", "tap_gemm_u2"]
        if on_cuda:  # on CPU u = 4 lost everywhere (0.3-0.9x of conv; personal filters 0.1-0.3x)
            args.kernels.append("tap_gemm_u4")
        if args.dtype != "fp32":
            args.kernels.insert(3, "tap_gemm_float32_sum")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    machine = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "threads": args.threads,
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name(device) if on_cuda else platform.processor(),
        "cuda_matmul_fp32_precision": torch.backends.cuda.matmul.fp32_precision,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "load_average_before": os.getloadavg(),
    }
    # GEMM rates (GFLOP/s) per dtype and size, timed before every round and at the end: the
    # machine's speed drifts, and shares of the GEMM rate use the fastest of them.
    gemm: dict[str, list] = {}
    gemm_sizes = [("fp32", 2048)]
    if args.dtype != "fp32":
        gemm_sizes += [(args.dtype, 2048)] + ([(args.dtype, 8192)] if on_cuda else [])

    def time_gemms() -> float:
        for dtype, size in gemm_sizes:
            try:
                rate: float | str = gemm_gflops(device, DTYPES[dtype], size)
            except Exception as error:  # recorded; the items may still run
                rate = f"{type(error).__name__}: {error}"[:500]
            gemm.setdefault(f"{dtype}_{size}", []).append(rate)
        print(f"GEMM GFLOP/s: {gemm}", flush=True)
        rates = [
            rate
            for name, values in gemm.items()
            if name.startswith(args.dtype)
            for rate in values
            if isinstance(rate, float)
        ]
        return max(rates, default=float("nan"))

    plan = [
        (shape, filters, label)
        for shape in args.shapes
        for filters in args.filters
        for label in args.kernels + (["peg_generator"] if filters == "personal" else [])
    ]
    items = [
        {"shape": shape, "filters": filters, "kernel": label} for shape, filters, label in plan
    ]
    results = Path(__file__).resolve().parent / "results"
    output_path = Path(args.output or results / ("tcn.json" if not on_cuda else "tcn_cuda.json"))
    output_path.parent.mkdir(parents=True, exist_ok=True)

    def write() -> None:
        document = {
            "machine": {**machine, "load_average_after": os.getloadavg()},
            "setup": {
                key: getattr(args, key)
                for key in ("device", "dtype", "requests", "length", "rounds", "warmup", "repeats")
            },
            "shapes": {
                name: dict(zip(("in_dim", "out_dim", "width", "stride"), shape, strict=True))
                for name, shape in SHAPES.items()
            },
            "gemm_gflops": gemm,
            "summary": summary(items, gemm_rate, args, device),
            "items": items,
        }
        output_path.write_text(json.dumps(document, indent=2) + "\n")

    gemm_rate = float("nan")
    for round_index in range(args.rounds):
        gemm_rate = time_gemms()
        for index, item in enumerate(items, start=1):
            if "error" in item:
                continue
            shape, filters, label = item["shape"], item["filters"], item["kernel"]
            try:
                if on_cuda:
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats(device)
                if label == "peg_generator":
                    measured = measure_generator(shape, args, device)
                else:
                    measured = measure_convolution(label, shape, filters, args, device)
                    item["forward_flops"] = forward_flops(shape, args)
                for phase, times in measured.items():
                    previous = item.get(phase, {}).get("times_s", [])
                    item[phase] = statistics_of(previous + times)
                if on_cuda:
                    peak = torch.cuda.max_memory_allocated(device) / 2**30
                    item["peak_memory_gib"] = max(item.get("peak_memory_gib", 0.0), peak)
                fastest = item["forward_backward"]["min_s"]
                line = f"fwd+bwd {1e3 * fastest:9.1f} ms"
                if "forward" in item:
                    rate = 3 * item["forward_flops"] / fastest / 1e9
                    line = (
                        f"fwd {1e3 * item['forward']['min_s']:9.1f} ms  {line}  "
                        f"{rate:8.0f} GFLOP/s ({rate / gemm_rate:.0%} of GEMM)"
                    )
            except Exception as error:  # recorded, and the run goes on
                item["error"] = f"{type(error).__name__}: {error}"[:2000]
                item["traceback"] = traceback.format_exc()[-4000:]
                line = f"ERROR {item['error'][:200]}"
                if on_cuda:
                    torch.cuda.empty_cache()
            write()
            print(
                f"[round {round_index + 1}/{args.rounds}, {index}/{len(items)}] "
                f"{shape:6} {filters:8} {label:22} {line}",
                flush=True,
            )

    gemm_rate = time_gemms()
    write()
    print(f"wrote {output_path}")
    for key, entry in summary(items, gemm_rate, args, device).items():
        cells = ", ".join(
            f"{label} {cell['speedup_vs_conv']:.2f}x ({cell['speedup_vs_conv_within_rounds']:.2f}x)"
            if cell["speedup_vs_conv"]
            else label
            for label, cell in entry["kernels"].items()
        )
        print(
            f"{key}: conv time / kernel time, fastest (within rounds): {cells}; "
            f"auto picks {entry['auto_picks']}"
        )


if __name__ == "__main__":
    main()
