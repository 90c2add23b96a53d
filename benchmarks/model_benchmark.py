"""Model zoo speed on this CPU, in the peer's configuration (see PEERS.md). Prints numbers; asserts
nothing.

    python benchmarks/model_benchmark.py                       # everything, a few minutes
    python benchmarks/model_benchmark.py --models cain lap --lengths 1000

Training step (forward + backward + Adam) on batch 256, 2 torch threads, random ids, full-length
histories (no padding), item (100k) ⊕ category (10k) at 64 dims each, MLP 2048-1024: median of
`--steps` (≥10) steps after 3 warm-ups; samples/s = 256 / median. FLOPs per sample come from
`torch.utils.flop_counter` over one training step (matmul/conv FLOPs; element-wise ops are not
counted). A 2048² fp32 GEMM is timed in the same run because the machine's speed drifts: only
ratios within one run are comparable.

Each sample is its own request (`--candidates-per-request 1`), as in the peer, so nothing is
shared between samples. The inference column scores one request with 100 candidates that share
one L=1000 history (eval mode, no grad): p50 / p99 over `--inference-runs` runs; models with
PEG are timed again with the PEG filter cache on (`peg_cache_size`, the same request repeated: a
returning user whose filters are cached).

`VARIANTS` names switch settings that are not registered models (`cain_b32`: CAIN with a rank-32
TCN, `tcn_bottleneck_dim=32`).

Peer defaults are lighter than the papers' (TWIN, SIM's ESU and ETA 1 head, SDIM 1 signature ×
4 bits, ETA 32 hash bits, top-k 50, a 1-head short-term attention); `PEER_SETTINGS` applies them so
the comparison is like for like. The body runs without side features (the peer's histories have
none). What stays different: our profile features (top categories, demographics, statistics: 195
more MLP inputs), DIN's short-term branch (the peer's DIN has none), SDIM's L2 normalisation of
each bucket sum (the paper's; the peer's default skips it), and one head of width 128 where the
peer projects to 64 and back (W_o).

The peer in the same run (`--peer PYTHON --peer-longctr DIR`): for each model it has (DIN, SIM,
ETA, SDIM, TWIN) and each length, the peer's training step is timed right after ours by
`benchmarks/fuxictr_bench.py` (a copy of the shared harness, see its docstring) in a fresh
process of the peer's interpreter, at the same batch, threads, steps and warm-ups (its request
latency at L=1000 comes from the same process). Ratios ours / peer are printed and written per
model and length, next to the GEMM rate measured before and after the run; only numbers from one
run are compared (the peer's numbers in PEERS.md are another machine's and are not used here).
Peer setup (venv with fuxictr 2.3.10, its LongCTR model zoo): `scripts/setup_peer_env.sh`.

    python benchmarks/model_benchmark.py --models eta sdim --lengths 100 1000 \
        --peer ~/.cache/cain/peer-venv/bin/python \
        --peer-longctr ~/.cache/cain/fuxictr-2.3.10/model_zoo/LongCTR
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

# On a shared machine, OpenMP workers that spin while waiting thrash against other processes
# (a 2-thread LAP request took 4x its 1-thread time here); sleeping workers do not. Must be set
# before torch loads OpenMP; an explicit setting in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from contract.config import to_plain  # noqa: E402
from model.layers.temporal_convolution import TCNKernel, TemporalConvolution  # noqa: E402
from model.registry import build_model, resolve_config  # noqa: E402
from model.synthetic_batch import synthetic_batch, tiny_feature_spec  # noqa: E402
from model.train_wrapper import CTRTrain  # noqa: E402

# The peer's class for each of our models it implements (reczoo/FuxiCTR model_zoo/LongCTR).
PEER_MODELS = {"din": "DIN", "sim_soft": "SIM", "eta": "ETA", "sdim": "SDIM", "twin": "TWIN"}
PEER_HARNESS = Path(__file__).resolve().parent / "fuxictr_bench.py"
PEER_RESULT_MARK = "@@RESULT@@ "  # the harness's marker of its result line
PEER_INFERENCE_LENGTH = 1000

BODY = {"embedding_dim": 64, "mlp_dims": [2048, 1024], "use_side_features": False}
# The peer's short-term branch is a 1-head target attention over the last 49 items (ours defaults
# to DIN's activation unit); its DIN has none, and ours cannot switch it off, so din keeps ours.
PEER_SHORT_TERM = {"short_term_attention": "multi_head", "short_term_heads": 1}
PEER_SETTINGS: dict[str, dict[str, object]] = {
    "twin": {**PEER_SHORT_TERM, "twin.num_heads": 1, "twin.top_k": 50},
    "sdim": {**PEER_SHORT_TERM, "sdim.num_bits": 4, "sdim.bits_per_signature": 4},
    "sim_soft": {**PEER_SHORT_TERM, "sim_soft.top_k": 50, "sim_soft.num_heads": 1},
    "eta": {**PEER_SHORT_TERM, "eta.top_k": 50, "eta.num_bits": 32, "eta.num_heads": 1},
}
# Benchmark-only names for switch settings of a registered model: name -> (model, overrides).
VARIANTS: dict[str, tuple[str, dict[str, object]]] = {
    "cain_b32": ("cain", {"tcn_bottleneck_dim": 32}),  # rank-32 TCN (not the paper's default)
}
DEFAULT_MODELS = ["din", "sim_soft", "eta", "sdim", "twin", "lap", "cain", "cain_b32", "lap_tcn"]
FLOP_REQUESTS = 8  # FLOPs per sample are counted on this many requests (they scale linearly)


def benchmark_spec(max_len: int):
    """Item 100k ⊕ category 10k, two demographic fields and three dense statistics (PEG input)."""
    return tiny_feature_spec(
        max_len=max_len, short_len=50, num_items=100_000, num_categories=10_000
    )


def gemm_gflops(size: int = 2048, repeats: int = 10) -> float:
    left, right = torch.randn(size, size), torch.randn(size, size)
    for _ in range(2):
        left @ right
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        left @ right
        times.append(time.perf_counter() - start)
    return 2 * size**3 / statistics.median(times) / 1e9


def model_and_overrides(name: str) -> tuple[str, dict[str, object]]:
    """Registered model name and overrides for a benchmark name (a model or a `VARIANTS` key)."""
    model, extra = VARIANTS.get(name, (name, {}))
    return model, {**BODY, **PEER_SETTINGS.get(model, {}), **extra}


def build(name: str, spec, **extra: object) -> torch.nn.Module:
    model, overrides = model_and_overrides(name)
    return build_model(model, spec, {**overrides, **extra})


def train_step_seconds(
    name: str, length: int, candidates_per_request: int, args: argparse.Namespace
) -> dict[str, float]:
    spec = benchmark_spec(length)
    num_requests = -(-args.batch_size // candidates_per_request)
    batch_size = num_requests * candidates_per_request
    torch.manual_seed(0)
    model = CTRTrain(build(name, spec))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = [
        synthetic_batch(
            spec,
            num_requests=num_requests,
            candidates_per_request=candidates_per_request,
            history_length=length,
            seed=seed,
        )
        for seed in range(2)
    ]

    def step(batch) -> None:
        loss, _ = model(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    # FlopCounterMode counts a grouped convolution's backward as if it had one group (R times too
    # many FLOPs), so the count runs on the unfold reference of the TCN: the same arithmetic. It
    # runs on FLOP_REQUESTS requests (every counted matmul scales with requests or candidates).
    flop_requests = min(num_requests, FLOP_REQUESTS)
    flop_batch = synthetic_batch(
        spec,
        num_requests=flop_requests,
        candidates_per_request=candidates_per_request,
        history_length=length,
        seed=5,
    )
    convolutions = [m for m in model.modules() if isinstance(m, TemporalConvolution)]
    kernels = [convolution.kernel for convolution in convolutions]
    for convolution in convolutions:
        convolution.kernel = TCNKernel.REFERENCE
    with FlopCounterMode(display=False) as counter:
        step(flop_batch)
    for convolution, kernel in zip(convolutions, kernels, strict=True):
        convolution.kernel = kernel
    times = []
    for index in range(args.warmup + args.steps):
        start = time.perf_counter()
        step(batches[index % 2])
        if index >= args.warmup:
            times.append(time.perf_counter() - start)
    seconds = statistics.median(times)
    return {
        "batch_size": batch_size,
        "requests": num_requests,
        "step_s": seconds,
        "samples_per_s": batch_size / seconds,
        "flops_per_sample": counter.get_total_flops() / (flop_requests * candidates_per_request),
    }


def inference_ms(name: str, args: argparse.Namespace, **extra: object) -> list[float]:
    spec = benchmark_spec(1000)
    torch.manual_seed(0)
    model = build(name, spec, **extra).eval()
    batch = synthetic_batch(
        spec, num_requests=1, candidates_per_request=100, history_length=1000, seed=3
    )
    times = []
    with torch.no_grad():
        for index in range(3 + args.inference_runs):
            start = time.perf_counter()
            model(batch)
            if index >= 3:
                times.append((time.perf_counter() - start) * 1000)
    quantiles = statistics.quantiles(times, n=100)
    return [statistics.median(times), quantiles[98]]


def peer_step(name: str, length: int, args: argparse.Namespace) -> dict[str, object]:
    """The peer's training step (and its 100-candidate request at L=1000) for our model `name`,
    timed by the harness in a fresh process of the peer's interpreter at our settings."""
    argv = [
        args.peer,
        str(PEER_HARNESS),
        "--child",
        PEER_MODELS[name],
        str(length),
        "--longctr-dir",
        str(Path(args.peer_longctr).resolve()),
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        "--warmup",
        str(args.warmup),
        "--steps",
        str(args.steps),
        "--infer-len",
        str(PEER_INFERENCE_LENGTH),
        "--infer-calls",
        "0" if args.skip_inference else str(args.inference_runs),
        "--infer-warmup",
        "3",
        "--count-flops",
        "1",
    ]
    # The harness's own parent sets these for its children; OMP_WAIT_POLICY is ours (see top).
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    env.pop("PYTHONPATH", None)  # our packages (model/, trainer/) stay out of the peer's path
    try:
        process = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=args.peer_timeout
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {args.peer_timeout} s"}
    lines = [x for x in process.stdout.splitlines() if x.startswith(PEER_RESULT_MARK)]
    if process.returncode != 0 or not lines:
        tail = (process.stderr or process.stdout)[-1500:]
        return {"error": f"rc={process.returncode}: {tail}"}
    result = json.loads(lines[-1][len(PEER_RESULT_MARK) :])
    result.pop("constructor_defaults", None)  # effective_hparams keeps what was used
    return result


def markdown_table(results: dict[str, dict], lengths: list[int], gemm: list[float]) -> str:
    """Ours, and where the peer ran in the same run: peer and ours / peer."""
    header = "| model | " + " | ".join(f"L={n} samples/s: ours / peer = ratio" for n in lengths)
    header += " | GFLOP/sample L=1000 ours / peer | request p50 / p99 ms, 100 candidates (peer) |"
    lines = [header, "|" + "---|" * (len(lengths) + 3)]
    for name, result in results.items():
        cells = []
        for length in lengths:
            ours = result["train"].get(str(length))
            if ours is None:
                cells.append("–")
                continue
            cell = f"{ours['samples_per_s']:.0f}"
            peer = ours.get("peer")
            if peer is not None:
                cell += (
                    f" / {peer['samples_per_s']:.0f} = **{ours['ours_over_peer']:.2f}**"
                    if "samples_per_s" in peer
                    else " / peer error"
                )
            cells.append(cell)
        at_1000 = result["train"].get("1000", {})
        flops = at_1000.get("flops_per_sample")
        flops_cell = f"{flops / 1e9:.3f}" if flops is not None else "–"
        peer_flops = at_1000.get("peer", {}).get("flops_per_sample")
        if peer_flops is not None:
            flops_cell += f" / {peer_flops / 1e9:.3f}"
        inference = result.get("inference_ms")
        inference_cell = f"{inference[0]:.1f} / {inference[1]:.1f}" if inference else "–"
        peer_inference = result.get("inference_peer_ms")
        if inference and peer_inference:
            inference_cell += f" ({peer_inference[0]:.0f} / {peer_inference[1]:.0f})"
        cached = result.get("inference_peg_cached_ms")
        if cached:
            inference_cell += f"; PEG cached {cached[0]:.1f} / {cached[1]:.1f}"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {flops_cell} | {inference_cell} |")
    rates = " / ".join(f"{g:.0f}" for g in gemm)
    return "\n".join(lines) + f"\n\nGEMM 2048² fp32 in this run, before / after: {rates} GFLOP/s."


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS)
    parser.add_argument("--lengths", nargs="+", type=int, default=[100, 1000, 2000])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--candidates-per-request", type=int, default=1)
    parser.add_argument(
        "--protocol-models",
        nargs="*",
        default=[],
        help="also time these at L=1000 with --protocol-candidates candidates sharing a request",
    )
    parser.add_argument("--protocol-candidates", type=int, default=20)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument(
        "--merge", action="store_true", help="update --output instead of replacing it"
    )
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--inference-runs", type=int, default=30)
    parser.add_argument("--output", default="benchmarks/results/models.json")
    parser.add_argument(
        "--peer",
        metavar="PYTHON",
        help="interpreter of the peer's venv (fuxictr 2.3.10): time the peer in the same run",
    )
    parser.add_argument("--peer-longctr", metavar="DIR", help="the peer's model_zoo/LongCTR")
    parser.add_argument("--peer-timeout", type=int, default=1800, help="seconds per peer run")
    args = parser.parse_args()
    if args.peer and not args.peer_longctr:
        parser.error("--peer needs --peer-longctr")
    torch.set_num_threads(args.threads)
    output_path = Path(args.output)
    previous = json.loads(output_path.read_text()) if args.merge and output_path.exists() else {}

    load_before = os.getloadavg()
    gflops_before = gemm_gflops()
    print(f"GEMM 2048² fp32: {gflops_before:.0f} GFLOP/s, load {load_before}", flush=True)
    results: dict[str, dict] = previous.get("results", {})
    for name in args.models:
        entry = results.setdefault(name, {"train": {}})
        entry["config"] = to_plain(resolve_config(*model_and_overrides(name)))
        del entry["config"]["mlp_dims"]  # the same for all models: see setup.body
        entry.pop("inference_peer_ms", None)
        for length in args.lengths:
            measured = train_step_seconds(name, length, args.candidates_per_request, args)
            entry["train"][str(length)] = measured
            print(
                f"{name:>14} L={length:<5} {measured['samples_per_s']:8.0f} samples/s "
                f"{measured['flops_per_sample'] / 1e9:7.3f} GFLOP/sample "
                f"({measured['flops_per_sample'] * measured['samples_per_s'] / 1e9:.0f} GFLOP/s)",
                flush=True,
            )
            if args.peer and name in PEER_MODELS and args.candidates_per_request == 1:
                peer = peer_step(name, length, args)
                measured["peer"] = peer
                if "error" in peer:
                    print(f"{'peer':>14} L={length:<5} ERROR {peer['error']}", flush=True)
                    continue
                measured["ours_over_peer"] = measured["samples_per_s"] / peer["samples_per_s"]
                peer_flops = peer.get("flops_per_sample")
                print(
                    f"{'peer ' + PEER_MODELS[name]:>14} L={length:<5} "
                    f"{peer['samples_per_s']:8.0f} samples/s "
                    + (f"{peer_flops / 1e9:7.3f} GFLOP/sample " if peer_flops else "")
                    + f"-> ours / peer {measured['ours_over_peer']:.2f}",
                    flush=True,
                )
                if "infer_p50_s" in peer:
                    entry["inference_peer_ms"] = [
                        peer["infer_p50_s"] * 1000,
                        peer["infer_p99_s"] * 1000,
                    ]
        if not args.skip_inference:
            entry["inference_ms"] = inference_ms(name, args)
            p50, p99 = entry["inference_ms"]
            print(
                f"{name:>14} inference 100 candidates, L=1000: p50 {p50:.1f} ms, p99 {p99:.1f} ms"
            )
            if "peg_cache_size" in entry["config"]:
                # The same request again with the PEG filter cache on: a returning user.
                entry["inference_peg_cached_ms"] = inference_ms(name, args, peg_cache_size=4)
                p50, p99 = entry["inference_peg_cached_ms"]
                print(f"{name:>14}   with PEG filters cached: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    for name in args.protocol_models:
        entry = results.setdefault(name, {"train": {}})
        measured = train_step_seconds(name, 1000, args.protocol_candidates, args)
        entry["protocol_1000"] = measured
        print(
            f"{name:>14} L=1000 {args.protocol_candidates} candidates/request: "
            f"{measured['samples_per_s']:8.0f} samples/s",
            flush=True,
        )
    gflops_after = gemm_gflops()
    load_after = os.getloadavg()
    runs = previous.get("runs", []) + [
        {
            "models": args.models,
            "lengths": args.lengths,
            "protocol_models": args.protocol_models,
            "gemm_gflops": [gflops_before, gflops_after],
            "load_average": [load_before, load_after],
            "threads": args.threads,
            "peer": {"python": args.peer, "longctr": args.peer_longctr} if args.peer else None,
            "ours_over_peer": {
                name: {
                    key: round(value["ours_over_peer"], 3)
                    for key, value in results[name]["train"].items()
                    if key in map(str, args.lengths) and "ours_over_peer" in value
                }
                for name in args.models
                if name in results
            },
        }
    ]
    gflops = statistics.median([g for run in runs for g in run["gemm_gflops"]])

    ratios: dict[str, dict[str, float]] = {}
    for name in [n for n in results if n.startswith("cain")]:
        if "lap" not in results:
            break
        ratios[name] = {
            key: results["lap"]["train"][key]["samples_per_s"]
            / results[name]["train"][key]["samples_per_s"]
            for key in results[name]["train"]
            if key in results["lap"]["train"]
        }
        rounded = {key: round(value, 2) for key, value in ratios[name].items()}
        print(f"{name} step time / LAP step time:", rounded)
    lengths = sorted({int(k) for entry in results.values() for k in entry["train"]})
    print(markdown_table(results, lengths, [gflops_before, gflops_after]))
    output = {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "gemm_gflops_median": gflops,
        },
        "setup": {
            "batch_size": args.batch_size,
            "candidates_per_request": args.candidates_per_request,
            "protocol_candidates": args.protocol_candidates,
            "steps": args.steps,
            "warmup": args.warmup,
            "inference_runs": args.inference_runs,
            "body": BODY,
            "peer_settings": PEER_SETTINGS,
            "items": 100_000,
            "categories": 10_000,
        },
        "runs": runs,
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
        "results": results,
        "cain_over_lap_step_time": ratios,
    }
    output_path.parent.mkdir(parents=True, exist_ok=True)
    output_path.write_text(json.dumps(output, indent=2))
    print(f"wrote {output_path}")


if __name__ == "__main__":
    main()
