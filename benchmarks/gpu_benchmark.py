#!/usr/bin/env python3
"""GPU benchmark of the model zoo: training steps and single requests, fp32 and bf16 autocast, for
the full model (TorchRec EmbeddingCollection lookup included) and its dense part (everything after
the lookup). Prints numbers and asserts nothing. Written for one short lease of a GPU machine:
every item runs under try/except, the JSON is rewritten after each item, every line of progress
is printed with the seconds since start, and items that no longer fit `--budget-s` are skipped
(and listed as skipped).

What is measured (settings of `benchmarks/model_benchmark.py`: its BODY, PEER_SETTINGS and
VARIANTS; one candidate per request in training; full-length histories):
- `gemm`: same-run matmul rates, bf16 8192² and fp32 4096² with TF32 off and on (TFLOP/s), and
  the device-to-device copy bandwidth (the ceiling of memory-bound work).
- `train_dense` / `train_full`, per model, L (1000 and 10000) and precision (fp32; bf16 autocast):
  forward + loss (`CTRTrain`) + backward + Adam (lr 1e-3, PyTorch's default implementation);
  median step time over `--steps` after `--warmup`; samples/s; achieved TFLOP/s = matmul/conv
  FLOPs per sample (FlopCounterMode over one step on 8 requests, TCN on its unfold reference,
  exactly as the CPU benchmark counts them) × samples/s; peak memory.
  - dense: the model's sparse arch is replaced by `FixedLookup`, which returns the same looked-up
    embeddings every step (random leaf tensors with requires_grad, shaped as the
    EmbeddingCollection's output, so the backward still produces the gradients the tables would
    receive). The dense arch runs as is: padding, short-term, long-term, over arch. The tables
    and their optimizer are not in these numbers.
  - full: `CTRTrain(build_model(...))` with its EmbeddingCollection on the device (the Adam step
    then covers the tables as dense parameters, as in the CPU benchmark).
- `inference_dense` / `inference_full`: one request, 100 candidates sharing one history, eval mode,
  no_grad; p50 / p99 over `--inference-runs` calls after warm-ups; FLOPs per request.
- `cain_over_lap`: CAIN's step time / LAP's step time for each (kind, L, precision), and CAIN − LAP
  request latency (the paper: CAIN ≈ LAP + 8 ms online).

fbgemm on the device: the models pad histories with torch index ops (`model/layers/embedding.py`)
and call no fbgemm kernel themselves; only TorchRec's own KeyedJaggedTensor / lookup code may
call fbgemm ops, and the CPU build of fbgemm (`fbgemm-gpu-cpu`, the only one small enough to
carry) has no CUDA kernels. `full_model_smoke` therefore runs the full model as installed and
records the fbgemm ops one step dispatches; only if that fails does it register a pure-PyTorch
CUDA implementation of `fbgemm::asynchronous_complete_cumsum` (the op TorchRec uses for jagged
offsets) and try again. Whether that fallback was used is recorded in `meta.fbgemm_fallback` and
every full-model entry carries `"fbgemm_fallback": true/false`. If torchrec does not import at
all, a labelled stand-in (`meta.torchrec_stand_in`: true) provides the few torchrec names the
model code imports; then only the dense part runs and the full-model items are skipped.

Run on a lent H200 (python 3.12, torch 2.11 + CUDA 13.0 preinstalled, nothing downloadable there,
at most 64 MiB of working tree + carried folders per call):
1. Here: `scripts/device_bundle.sh` downloads the cp312 wheels the model code needs at import
   (torchrec 1.6.1 and fbgemm-gpu-cpu 1.6.0, which pair with torch 2.11, tensordict, iopath,
   pyvers and a few pure-Python packages, pytest for the GPU tests) into the ignored folder
   `.device/wheels`, checks that it and the working tree fit in 64 MiB, and prints the one
   device command. It is (run tool, `carry: [".device"]`, `timeout_s` 600):

       for w in .device/wheels/*.whl; do python3 -m zipfile -e "$w" /tmp/site; done
       export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
       nvidia-smi -L
       timeout 120 python3 -m pytest -q -p no:cacheprovider -m gpu tests/model/test_gpu.py
       timeout 330 python3 benchmarks/gpu_benchmark.py --out $OUT/gpu --budget-s 300

   (`scripts/device_bundle.sh` prints it as one line.) Wheels are zip files: extracting them is
   the install, so the device needs no pip.
2. The results come back as `$OUT/gpu/results.json`; copy it to `benchmarks/results/gpu.json`
   and `python3 benchmarks/gpu_benchmark.py --report benchmarks/results/gpu.json` prints the
   tables for docs/models.md.
Device time: the machine's start (minutes) counts against the session's 15 minutes; the command
above takes 7.5 minutes at most (tests ≤ 120 s, benchmark budget 300 s: L=1000 items first, items
that no longer fit are skipped and listed), which leaves about 4 minutes for a rerun of a part
(e.g. `--lengths 10000 --skip-full`) if the machine is still warm. Give the machine back after.

CPU smoke test (tiny sizes; what this machine can check):

    python benchmarks/gpu_benchmark.py --tiny --device cpu --out /tmp/gpu-smoke
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import gc
import importlib.metadata
import json
import logging
import os
import platform
import statistics
import sys
import time
import traceback
import types
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

PROJECT = Path(__file__).resolve().parents[1]
MODELS = ["cain", "lap", "twin", "sim_soft", "eta", "sdim", "din"]
TINY_BODY = {"embedding_dim": 8, "mlp_dims": [32, 16], "attention_hidden_dims": [8, 4]}
T0 = time.time()


def log(message: str) -> None:
    print(f"[{time.time() - T0:7.1f}s] {message}", flush=True)


def short_error(error: BaseException, lines: int = 3) -> str:
    """Type, the first `lines` lines of the message (dispatcher errors put the useful part first
    and a long list of backends after it), and where it was raised (file names only)."""
    message = str(error).strip().splitlines() or [""]
    text = f"{type(error).__name__}: " + "\n".join(message[:lines])
    if len(message) > lines:
        text += f"\n  [... {len(message) - lines} more lines of the message]"
    frames = traceback.extract_tb(error.__traceback__)[-5:]
    where = " <- ".join(f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in reversed(frames))
    return (text + (f"\n  at {where}" if where else ""))[:2000]


def cpu_name() -> str:
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                return "cpu: " + line.split(":", 1)[1].strip()
    return "cpu: " + platform.processor()


# ------------------------------------------------------------------------------------------------
# torchrec: the real one, or a labelled stand-in that lets the dense part import and run
# ------------------------------------------------------------------------------------------------


def install_torchrec_stand_in() -> None:
    """The torchrec names the model code imports, enough to build models and run the dense part
    (JaggedTensor holds values and lengths); anything that needs a real lookup raises."""

    def module(name: str) -> types.ModuleType:
        created = types.ModuleType(name)
        sys.modules[name] = created
        return created

    root = module("torchrec")
    modules = module("torchrec.modules")
    embedding_modules = module("torchrec.modules.embedding_modules")
    embedding_configs = module("torchrec.modules.embedding_configs")
    sparse = module("torchrec.sparse")
    jagged = module("torchrec.sparse.jagged_tensor")
    streamable = module("torchrec.streamable")
    root.modules, root.sparse, root.streamable = modules, sparse, streamable
    modules.embedding_modules, modules.embedding_configs = embedding_modules, embedding_configs
    sparse.jagged_tensor = jagged

    class EmbeddingConfig:
        def __init__(self, **kwargs: object) -> None:
            self.__dict__.update(kwargs)

    class EmbeddingCollection(nn.Module):
        def __init__(self, tables: list, device: torch.device | None = None) -> None:
            super().__init__()
            self.tables = tables

        def embedding_configs(self) -> list:
            return self.tables

        def forward(self, features: object) -> object:
            raise RuntimeError("torchrec stand-in: no embedding lookup")

    class JaggedTensor:
        def __init__(self, values: torch.Tensor, lengths: torch.Tensor) -> None:
            self._values, self._lengths = values, lengths

        def values(self) -> torch.Tensor:
            return self._values

        def lengths(self) -> torch.Tensor:
            return self._lengths

    class KeyedJaggedTensor:
        def __init__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("torchrec stand-in: no KeyedJaggedTensor")

    class Pipelineable:
        pass

    embedding_configs.EmbeddingConfig = EmbeddingConfig
    embedding_modules.EmbeddingCollection = EmbeddingCollection
    jagged.JaggedTensor = JaggedTensor
    jagged.KeyedJaggedTensor = KeyedJaggedTensor
    streamable.Pipelineable = Pipelineable


def import_torchrec(force_stand_in: bool = False) -> dict[str, object]:
    info: dict[str, object] = {"torchrec_stand_in": False}
    if force_stand_in:
        install_torchrec_stand_in()
        return {
            "torchrec_stand_in": True,
            "torchrec_error": "stand-in forced (--torchrec-stand-in)",
        }
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)  # fbgemm warns at length when its version table lacks torch's
    try:
        try:
            import fbgemm_gpu  # noqa: F401

            info["fbgemm_gpu_cpu"] = importlib.metadata.version("fbgemm_gpu_cpu")
        except Exception as error:  # noqa: BLE001
            info["fbgemm_gpu_error"] = short_error(error)
        try:
            import torchrec  # noqa: F401

            info["torchrec"] = importlib.metadata.version("torchrec")
        except Exception as error:  # noqa: BLE001
            info["torchrec_error"] = short_error(error)
            for name in [n for n in sys.modules if n == "torchrec" or n.startswith("torchrec.")]:
                del sys.modules[name]
            install_torchrec_stand_in()
            info["torchrec_stand_in"] = True
    finally:
        logging.disable(previous)
    return info


# ------------------------------------------------------------------------------------------------
# fbgemm inside TorchRec's lookup: which ops run, and the one fallback
# ------------------------------------------------------------------------------------------------


def torch_complete_cumsum(lengths: torch.Tensor) -> torch.Tensor:
    """fbgemm::asynchronous_complete_cumsum in torch ops: [..., n] -> [..., n + 1] = [0, cumsum]."""
    zero = lengths.new_zeros((*lengths.shape[:-1], 1))
    return torch.cat([zero, torch.cumsum(lengths, dim=-1, dtype=lengths.dtype)], dim=-1)


def register_fbgemm_fallback(dispatch_key: str) -> torch.library.Library:
    """Registers `torch_complete_cumsum` as fbgemm's kernel for `dispatch_key` (keep the result)."""
    library = torch.library.Library("fbgemm", "IMPL")
    library.impl("asynchronous_complete_cumsum", torch_complete_cumsum, dispatch_key)
    return library


class OpRecorder(TorchDispatchMode):
    """Counts the ops dispatched inside the `with` block (here: which fbgemm ops a step calls)."""

    def __init__(self) -> None:
        super().__init__()
        self.counts: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
        self.counts[str(func)] += 1
        return func(*args, **(kwargs or {}))


class FixedLookup(nn.Module):
    """Stands in for the sparse arch in the dense benchmark: returns the looked-up embeddings set
    on it (a dict feature key -> JaggedTensor, as the EmbeddingCollection returns)."""

    def __init__(self) -> None:
        super().__init__()
        self.looked_up: dict | None = None

    def forward(self, features: object) -> dict:
        assert self.looked_up is not None
        return self.looked_up


# ------------------------------------------------------------------------------------------------
# The benchmark
# ------------------------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.device = torch.device(args.device)
        self.is_cuda = self.device.type == "cuda"
        self.deadline = T0 + args.budget_s
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, object] = {
            "meta": {},
            "gemm": {},
            "full_model_smoke": {},
            "train_dense": {},
            "train_full": {},
            "inference_dense": {},
            "inference_full": {},
            "cain_over_lap": {},
            "skipped": [],
            "errors": [],
            "timeline": [],
        }
        self.fallback_library: torch.library.Library | None = None
        self.flops_cache: dict[tuple[str, int], float] = {}
        # --tiny shrinks the body too (on top of the CPU benchmark's BODY), so a CPU smoke test
        # takes a minute.
        self.body_overrides = dict(TINY_BODY) if args.tiny else {}

    # -------------------------------------------------------------------- helpers
    def save(self) -> None:
        self.results["elapsed_s"] = round(time.time() - T0, 1)
        path = self.out / "results.json"
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.results, indent=1, default=str))
        temporary.replace(path)

    def remaining(self) -> float:
        return self.deadline - time.time()

    def sync(self) -> None:
        if self.is_cuda:
            torch.cuda.synchronize()

    def cleanup(self) -> None:
        gc.collect()
        if self.is_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float | None:
        return torch.cuda.max_memory_allocated() / 2**30 if self.is_cuda else None

    def autocast(self, precision: str) -> contextlib.AbstractContextManager:
        if precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def item(self, name: str, function: Callable, *args: object, need_s: float = 0.0) -> None:
        """Runs one item under try/except; skipped when less than need_s of the budget is left."""
        if self.remaining() < need_s:
            log(f"SKIP {name}: {self.remaining():.0f}s left < {need_s:.0f}s")
            self.results["skipped"].append(name)
            self.save()
            return
        start = time.time()
        try:
            function(*args)
        except Exception as error:  # noqa: BLE001
            text = short_error(error)
            log(f"ERROR {name}: {text}")
            self.results["errors"].append({"item": name, "error": text})
        finally:
            self.results["timeline"].append([name, round(time.time() - start, 2)])
            self.cleanup()
            self.save()

    # -------------------------------------------------------------------- project and machine
    def load_project(self) -> None:
        sys.path.insert(0, str(PROJECT))
        self.results["meta"]["torchrec_import"] = import_torchrec(self.args.torchrec_stand_in)
        self.stand_in = bool(self.results["meta"]["torchrec_import"]["torchrec_stand_in"])
        self.results["meta"]["torchrec_stand_in"] = self.stand_in
        from benchmarks import model_benchmark
        from model.batch import Batch, Keys, mean_weights
        from model.layers.temporal_convolution import TemporalConvolution
        from model.registry import build_model
        from model.train_wrapper import CTRTrain

        self.mb = model_benchmark
        self.Batch, self.Keys, self.mean_weights = Batch, Keys, mean_weights
        self.TemporalConvolution = TemporalConvolution
        self.build_model, self.CTRTrain = build_model, CTRTrain
        self.JaggedTensor = sys.modules["torchrec.sparse.jagged_tensor"].JaggedTensor
        meta = self.results["meta"]
        meta["body"] = model_benchmark.BODY
        meta["peer_settings"] = model_benchmark.PEER_SETTINGS
        meta["variants"] = {k: list(v) for k, v in model_benchmark.VARIANTS.items()}
        meta["flop_requests"] = model_benchmark.FLOP_REQUESTS
        meta["body_overrides"] = self.body_overrides

    def meta(self) -> None:
        meta = self.results["meta"]
        properties = torch.cuda.get_device_properties(0) if self.is_cuda else None
        meta.update(
            {
                "python": platform.python_version(),
                "torch": torch.__version__,
                "cuda": torch.version.cuda,
                "cudnn": torch.backends.cudnn.version() if self.is_cuda else None,
                "device": torch.cuda.get_device_name() if self.is_cuda else cpu_name(),
                "device_capability": torch.cuda.get_device_capability() if self.is_cuda else None,
                "device_memory_GiB": round(properties.total_memory / 2**30, 1)
                if properties
                else None,
                "threads": torch.get_num_threads(),
                "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
                "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
                "cudnn_benchmark": torch.backends.cudnn.benchmark,
                "float32_matmul_precision": torch.get_float32_matmul_precision(),
                "fbgemm_fallback": False,
                "args": vars(self.args),
            }
        )
        log(f"device {meta['device']}, torch {meta['torch']}, cuda {meta['cuda']}")

    def gemm(self) -> None:
        def rate(size: int, dtype: torch.dtype, tf32: bool, repeats: int = 10) -> float:
            previous = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                left = torch.randn(size, size, device=self.device, dtype=dtype)
                right = torch.randn(size, size, device=self.device, dtype=dtype)
                for _ in range(3):
                    left @ right
                self.sync()
                start = time.perf_counter()
                for _ in range(repeats):
                    left @ right
                self.sync()
                return 2 * size**3 / ((time.perf_counter() - start) / repeats) / 1e12
            finally:
                torch.backends.cuda.matmul.allow_tf32 = previous

        big, mid = self.args.gemm_bf16_size, self.args.gemm_fp32_size
        gemm = self.results["gemm"]
        gemm[f"bf16_{big}_tflops"] = rate(big, torch.bfloat16, False)
        gemm[f"fp32_{mid}_tf32_off_tflops"] = rate(mid, torch.float32, False)
        gemm[f"fp32_{mid}_tf32_on_tflops"] = rate(mid, torch.float32, True)
        source = torch.empty(self.args.copy_mib * 2**20 // 4, device=self.device)
        target = torch.empty_like(source)
        target.copy_(source)
        self.sync()
        start = time.perf_counter()
        for _ in range(10):
            target.copy_(source)
        self.sync()
        seconds = time.perf_counter() - start
        gemm["copy_GBps_read_plus_write"] = 2 * source.numel() * 4 * 10 / seconds / 1e9
        log("GEMM/copy: " + ", ".join(f"{k} {v:.1f}" for k, v in gemm.items()))

    # -------------------------------------------------------------------- models and inputs
    def build(self, name: str, spec, device: torch.device) -> nn.Module:
        model_name, overrides = self.mb.model_and_overrides(name)
        overrides = {**overrides, **self.body_overrides}
        return self.build_model(model_name, spec, overrides, device=device)

    def dense_model(self, name: str, length: int) -> tuple[nn.Module, nn.Module]:
        """CTRTrain(model) on the device, its EmbeddingCollection (on meta) swapped for a
        FixedLookup: only the dense arch's parameters remain."""
        spec = self.mb.benchmark_spec(length)
        torch.manual_seed(0)
        model = self.build(name, spec, torch.device("meta"))
        model.sparse_arch = FixedLookup()
        return self.CTRTrain(model).to(self.device), model

    def dense_inputs(self, requests: int, candidates: int, length: int, grad: bool, seed: int):
        """Looked-up embeddings as the EmbeddingCollection returns them (random leaves, full
        histories of `length`) and the matching Batch."""
        spec = self.mb.benchmark_spec(length)
        dim = self.body_overrides.get("embedding_dim", self.mb.BODY["embedding_dim"])
        device, keys = self.device, self.Keys
        generator = torch.Generator(device=device).manual_seed(seed)
        per_request = {key: length for key in keys.HISTORY}
        per_request.update({key: candidates for key in keys.CANDIDATE})
        per_request[keys.PROFILE_TOP_CATEGORY] = spec.top_categories
        per_request.update({keys.demographic(field): 1 for field in spec.demographics})
        looked_up = {}
        for key, count in per_request.items():
            values = torch.randn(requests * count, dim, device=device, generator=generator) * 0.1
            lengths = torch.full((requests,), count, dtype=torch.long, device=device)
            looked_up[key] = self.JaggedTensor(values=values.requires_grad_(grad), lengths=lengths)
        samples = requests * candidates
        batch = self.Batch(
            sparse_features=None,
            dense_features=torch.randn(
                requests, len(spec.dense_features), device=device, generator=generator
            ),
            labels=torch.randint(0, 2, (samples,), device=device, generator=generator).float(),
            request_index=torch.arange(requests, device=device).repeat_interleave(candidates),
            user_ids=torch.arange(samples, device=device),
            weights=self.mean_weights(samples).to(device),
        )
        return looked_up, batch

    def full_model(self, name: str, length: int, requests: int, candidates: int, seed: int):
        from model.synthetic_batch import synthetic_batch

        spec = self.mb.benchmark_spec(length)
        torch.manual_seed(0)
        wrapper = self.CTRTrain(self.build(name, spec, self.device)).to(self.device)
        batch = synthetic_batch(
            spec,
            num_requests=requests,
            candidates_per_request=candidates,
            history_length=length,
            seed=seed,
        ).to(self.device)
        return wrapper, batch

    def count_flops(self, step: Callable[[], object], model: nn.Module) -> float:
        """Matmul/conv FLOPs of one call of `step`, the TCN on its unfold reference (FlopCounterMode
        counts a grouped convolution's backward as if it had one group)."""
        from model.layers.temporal_convolution import TCNKernel

        convolutions = [m for m in model.modules() if isinstance(m, self.TemporalConvolution)]
        kernels = [convolution.kernel for convolution in convolutions]
        for convolution in convolutions:
            convolution.kernel = TCNKernel.REFERENCE
        try:
            with FlopCounterMode(display=False) as counter:
                step()
        finally:
            for convolution, kernel in zip(convolutions, kernels, strict=True):
                convolution.kernel = kernel
        return float(counter.get_total_flops())

    def time_steps(self, step: Callable[[], object]) -> dict[str, object]:
        """Warm-ups, then the median of `--steps` steps (fewer when a step is slow; recorded)."""
        args = self.args
        warm = []
        for index in range(args.warmup):
            self.sync()
            start = time.perf_counter()
            step()
            self.sync()
            warm.append(time.perf_counter() - start)
            if index >= 1 and warm[-1] > args.config_cap_s / 5:
                break  # a slow step: two warm-ups are enough (the first holds the lazy setup)
        per_step = warm[-1] if warm else 0.0
        allowed = min(args.config_cap_s, max(self.remaining() - 5, 0.0))
        steps = args.steps
        if per_step > 0 and per_step * steps > allowed:
            steps = max(args.min_steps, int(allowed / per_step))
        times = []
        for _ in range(steps):
            self.sync()
            start = time.perf_counter()
            step()
            self.sync()
            times.append(time.perf_counter() - start)
        return {
            "step_s": statistics.median(times),
            "step_min_s": min(times),
            "step_max_s": max(times),
            "steps": steps,
            "warmup_s": [round(w, 4) for w in warm],
        }

    # -------------------------------------------------------------------- training
    def flops_per_sample(self, name: str, length: int) -> float:
        """Counted once per (model, L) on FLOP_REQUESTS requests of the dense part (the lookup
        adds no matmul FLOPs)."""
        key = (name, length)
        if key not in self.flops_cache:
            wrapper, model = self.dense_model(name, length)
            requests = self.mb.FLOP_REQUESTS
            model.sparse_arch.looked_up, batch = self.dense_inputs(requests, 1, length, True, 5)

            def step() -> None:
                loss, _ = wrapper(batch)
                loss.backward()

            self.flops_cache[key] = self.count_flops(step, wrapper) / requests
        return self.flops_cache[key]

    def train(self, kind: str, name: str, length: int) -> None:
        args = self.args
        flops = self.flops_per_sample(name, length)
        if kind == "dense":
            wrapper, model = self.dense_model(name, length)
            model.sparse_arch.looked_up, batch = self.dense_inputs(args.batch, 1, length, True, 0)
            leaves = [jagged.values() for jagged in model.sparse_arch.looked_up.values()]
        else:
            wrapper, batch = self.full_model(name, length, args.batch, 1, seed=0)
            leaves = []
        optimizer = torch.optim.Adam(wrapper.parameters(), lr=1e-3)
        precision = "fp32"

        def step() -> None:
            for leaf in leaves:
                leaf.grad = None
            with self.autocast(precision):
                loss, _ = wrapper(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        entry = self.results[f"train_{kind}"].setdefault(name, {}).setdefault(str(length), {})
        for precision in self.args.precisions:
            if self.remaining() < 3:
                entry[precision] = {"status": "skipped: budget"}
                continue
            try:
                if self.is_cuda:
                    torch.cuda.reset_peak_memory_stats()
                timing = self.time_steps(step)
                samples_per_s = args.batch / timing["step_s"]
                entry[precision] = {
                    **timing,
                    "status": "ok",
                    "batch": args.batch,
                    "samples_per_s": samples_per_s,
                    "flops_per_sample": flops,
                    "achieved_tflops": flops * samples_per_s / 1e12,
                    "peak_mem_GiB": self.peak_gib(),
                }
                if kind == "full":
                    entry[precision]["fbgemm_fallback"] = self.fallback_library is not None
                log(
                    f"train {kind:>5} {name:>8} L={length:<5} {precision}: "
                    f"{samples_per_s:10.0f} samples/s  step {timing['step_s'] * 1e3:8.2f} ms  "
                    f"{flops / 1e9:7.3f} GFLOP/sample  {flops * samples_per_s / 1e12:6.2f} TFLOP/s"
                    f"  peak {entry[precision]['peak_mem_GiB']} GiB ({timing['steps']} steps)"
                )
            except torch.cuda.OutOfMemoryError as error:
                entry[precision] = {"status": "OOM", "error": short_error(error)}
                log(f"train {kind} {name} L={length} {precision}: OOM")
                optimizer.zero_grad(set_to_none=True)
                self.cleanup()
            except Exception as error:  # noqa: BLE001
                entry[precision] = {"status": "error", "error": short_error(error)}
                log(f"train {kind} {name} L={length} {precision}: ERROR {short_error(error)}")
            self.save()

    # -------------------------------------------------------------------- single requests
    def inference(self, kind: str, name: str, length: int) -> None:
        args = self.args
        candidates = args.inference_candidates
        if kind == "dense":
            wrapper, model = self.dense_model(name, length)
            model.sparse_arch.looked_up, batch = self.dense_inputs(1, candidates, length, False, 3)
        else:
            wrapper, batch = self.full_model(name, length, 1, candidates, seed=3)
        scorer = wrapper.model.eval()
        entry = self.results[f"inference_{kind}"].setdefault(name, {}).setdefault(str(length), {})
        with torch.no_grad():
            flops = self.count_flops(lambda: scorer(batch), scorer)
            for precision in self.args.precisions:
                try:
                    times = []
                    with self.autocast(precision):
                        for index in range(args.inference_warmup + args.inference_runs):
                            self.sync()
                            start = time.perf_counter()
                            scorer(batch)
                            self.sync()
                            if index >= args.inference_warmup:
                                times.append((time.perf_counter() - start) * 1e3)
                    quantiles = statistics.quantiles(times, n=100)
                    entry[precision] = {
                        "status": "ok",
                        "candidates": candidates,
                        "runs": len(times),
                        "p50_ms": statistics.median(times),
                        "p99_ms": quantiles[98],
                        "min_ms": min(times),
                        "flops_per_request": flops,
                    }
                    if kind == "full":
                        entry[precision]["fbgemm_fallback"] = self.fallback_library is not None
                    log(
                        f"infer {kind:>5} {name:>8} L={length:<5} {precision}: p50 "
                        f"{entry[precision]['p50_ms']:.2f} ms p99 {quantiles[98]:.2f} ms "
                        f"({flops / 1e9:.2f} GFLOP)"
                    )
                except Exception as error:  # noqa: BLE001
                    entry[precision] = {"status": "error", "error": short_error(error)}
                    log(f"infer {kind} {name} L={length} {precision}: ERROR {short_error(error)}")
                self.save()

    # -------------------------------------------------------------------- full-model smoke
    def full_smoke(self, names: list[str]) -> None:
        """One small full-model training step per model: as installed (recording the fbgemm ops
        it dispatches); if any model fails, again with the labelled fbgemm fallback."""
        smoke = self.results["full_model_smoke"]
        for label in ("as_installed", "fbgemm_fallback"):
            if label == "fbgemm_fallback":
                failed = [n for n in names if not smoke[n]["as_installed"].startswith("ok")]
                if not failed:
                    break
                key = "CUDA" if self.is_cuda else self.args.fallback_key
                self.fallback_library = register_fbgemm_fallback(key)
                self.results["meta"]["fbgemm_fallback"] = {
                    "ops": ["asynchronous_complete_cumsum"],
                    "dispatch_key": key,
                    "because": failed,
                }
                log(f"fbgemm fallback registered for {key} (failed as installed: {failed})")
            for name in names:
                try:
                    wrapper, batch = self.full_model(name, 100, self.args.smoke_requests, 1, 0)
                    optimizer = torch.optim.Adam(wrapper.parameters(), lr=1e-3)
                    recorder = OpRecorder()
                    with recorder:
                        loss, _ = wrapper(batch)
                        loss.backward()
                    optimizer.step()
                    self.sync()
                    fbgemm = sorted(op for op in recorder.counts if op.startswith("fbgemm"))
                    smoke.setdefault(name, {})[label] = f"ok (loss {float(loss):.6f})"
                    smoke[name][label + "_fbgemm_ops"] = fbgemm
                    log(f"full-model smoke {name} {label}: ok, fbgemm ops {fbgemm}")
                except Exception as error:  # noqa: BLE001
                    smoke.setdefault(name, {})[label] = "error: " + short_error(error)
                    log(f"full-model smoke {name} {label}: ERROR {short_error(error)}")
                self.save()

    def full_ok(self, name: str) -> bool:
        entry = self.results["full_model_smoke"].get(name, {})
        return any(str(entry.get(label, "")).startswith("ok") for label in entry)

    # -------------------------------------------------------------------- plan and summary
    def run(self) -> None:
        args = self.args
        self.item("meta", self.meta)
        self.item("load_project", self.load_project)
        self.item("gemm", self.gemm)
        if not hasattr(self, "mb"):
            log("project did not load; stopping")
            return
        full = not args.skip_full and not self.stand_in
        if self.stand_in:
            log("torchrec stand-in: dense part only, full-model items skipped")
            self.results["skipped"].append("full model: torchrec did not import")
        if full:
            self.item("full_smoke", self.full_smoke, args.models, need_s=10)
        for length in args.lengths:
            for name in args.models:
                self.item(
                    f"train dense {name} {length}", self.train, "dense", name, length, need_s=8
                )
            if full:
                for name in [n for n in args.models if self.full_ok(n)]:
                    self.item(
                        f"train full {name} {length}", self.train, "full", name, length, need_s=10
                    )
            for name in args.models:
                self.item(
                    f"inference dense {name} {length}",
                    self.inference,
                    "dense",
                    name,
                    length,
                    need_s=3,
                )
                if full and self.full_ok(name):
                    self.item(
                        f"inference full {name} {length}",
                        self.inference,
                        "full",
                        name,
                        length,
                        need_s=3,
                    )
            self.summarize(quiet=True)
        self.summarize(quiet=False)
        self.save()
        log(f"done in {time.time() - T0:.1f}s")

    def summarize(self, quiet: bool) -> None:
        """CAIN / LAP step time and CAIN − LAP latency, wherever both ran in this run."""
        summary: dict[str, dict[str, float]] = {}
        for kind in ("dense", "full"):
            train = self.results[f"train_{kind}"]
            for length, per_precision in train.get("cain", {}).items():
                for precision, cain in per_precision.items():
                    lap = train.get("lap", {}).get(length, {}).get(precision, {})
                    if "step_s" in cain and "step_s" in lap:
                        key = f"train {kind} L={length} {precision}"
                        summary[key] = {"cain_over_lap_step_time": cain["step_s"] / lap["step_s"]}
            inference = self.results[f"inference_{kind}"]
            for length, per_precision in inference.get("cain", {}).items():
                for precision, cain in per_precision.items():
                    lap = inference.get("lap", {}).get(length, {}).get(precision, {})
                    if "p50_ms" in cain and "p50_ms" in lap:
                        summary[f"inference {kind} L={length} {precision}"] = {
                            "cain_minus_lap_p50_ms": cain["p50_ms"] - lap["p50_ms"],
                            "cain_minus_lap_p99_ms": cain["p99_ms"] - lap["p99_ms"],
                        }
        self.results["cain_over_lap"] = summary
        for key, values in [] if quiet else summary.items():
            log(f"{key}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))


def report(path: str) -> str:
    """Markdown tables of a results JSON (for docs/models.md)."""
    results = json.loads(Path(path).read_text())
    meta, gemm = results.get("meta", {}), results.get("gemm", {})
    lines = [
        f"Device: {meta.get('device')}, torch {meta.get('torch')}, CUDA {meta.get('cuda')}; "
        + ", ".join(f"{k} {v:.1f}" for k, v in gemm.items())
        + f"; fbgemm fallback: {meta.get('fbgemm_fallback')}; "
        f"torchrec stand-in: {meta.get('torchrec_stand_in')}",
        "",
    ]

    def cell(value: object, digits: int = 0) -> str:
        return "–" if value is None else f"{value:,.{digits}f}"

    for kind in ("dense", "full"):
        train = results.get(f"train_{kind}", {})
        if not train:
            continue
        lines += [
            f"| model ({kind}) | L | GFLOP/sample | fp32 samples/s | fp32 TFLOP/s | fp32 peak GiB "
            "| bf16 samples/s | bf16 TFLOP/s | bf16 peak GiB |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, per_length in train.items():
            for length, entry in per_length.items():
                flops = next(
                    (v["flops_per_sample"] for v in entry.values() if "flops_per_sample" in v),
                    None,
                )
                row = [name, length, cell(flops / 1e9 if flops else None, 3)]
                for precision in ("fp32", "bf16"):
                    value = entry.get(precision, {})
                    if value.get("status") != "ok":
                        row += [value.get("status", "–"), "", ""]
                        continue
                    row += [
                        cell(value["samples_per_s"]),
                        cell(value["achieved_tflops"], 2),
                        cell(value["peak_mem_GiB"], 1),
                    ]
                lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    for kind in ("dense", "full"):
        inference = results.get(f"inference_{kind}", {})
        if not inference:
            continue
        lengths = sorted({int(n) for per in inference.values() for n in per})
        header = f"| model ({kind}, 100 candidates) | " + " | ".join(
            f"L={n} fp32 p50 / p99 ms | L={n} bf16 p50 / p99 ms" for n in lengths
        )
        lines += [header + " |", "|---|" + "---:|" * (2 * len(lengths))]
        for name, per_length in inference.items():
            row = [name]
            for length in lengths:
                for precision in ("fp32", "bf16"):
                    value = per_length.get(str(length), {}).get(precision, {})
                    row.append(
                        f"{value['p50_ms']:.2f} / {value['p99_ms']:.2f}"
                        if "p50_ms" in value
                        else value.get("status", "–")
                    )
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    for key, values in results.get("cain_over_lap", {}).items():
        lines.append(f"- {key}: " + ", ".join(f"{k} {v:.2f}" for k, v in values.items()))
    return "\n".join(lines)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--report":
        print(report(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu-benchmark-out"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--lengths", nargs="+", type=int, default=[1000, 10000])
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"])
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--min-steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--config-cap-s", type=float, default=8.0, help="timing seconds per item")
    parser.add_argument("--inference-candidates", type=int, default=100)
    parser.add_argument("--inference-runs", type=int, default=50)
    parser.add_argument("--inference-warmup", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=300.0)
    parser.add_argument("--gemm-bf16-size", type=int, default=8192)
    parser.add_argument("--gemm-fp32-size", type=int, default=4096)
    parser.add_argument("--copy-mib", type=int, default=1024)
    parser.add_argument("--smoke-requests", type=int, default=16)
    parser.add_argument("--skip-full", action="store_true")
    parser.add_argument(
        "--fallback-key",
        default="CPU",
        help="dispatch key of the fbgemm fallback when not on CUDA (CPU smoke tests)",
    )
    parser.add_argument("--cudnn-benchmark", action="store_true")
    parser.add_argument("--cudnn-tf32", choices=["default", "on", "off"], default="default")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--torchrec-stand-in",
        action="store_true",
        help="use the torchrec stand-in even if torchrec imports (CPU test of that path)",
    )
    parser.add_argument("--tiny", action="store_true", help="CPU smoke-test sizes, tiny body")
    if parser.parse_known_args()[0].tiny:  # explicit options still win
        parser.set_defaults(
            lengths=[64, 96],
            batch=8,
            steps=2,
            warmup=1,
            min_steps=1,
            inference_runs=3,
            inference_warmup=1,
            inference_candidates=10,
            gemm_bf16_size=256,
            gemm_fp32_size=256,
            copy_mib=8,
            smoke_requests=4,
        )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cudnn_benchmark:
        torch.backends.cudnn.benchmark = True
    if args.cudnn_tf32 != "default":
        torch.backends.cudnn.allow_tf32 = args.cudnn_tf32 == "on"
    Bench(args).run()


if __name__ == "__main__":
    main()
