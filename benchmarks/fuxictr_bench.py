#!/usr/bin/env python
"""CPU timing harness for the peer implementation reczoo/FuxiCTR, folder model_zoo/LongCTR.

Provenance: a copy of the project's shared peer harness `shared/bench/fuxictr_bench.py` (sha256
aa9ab195d38dad10cfe8275dd5639a64d8c86bb51262f12a6ab3cd2a46e24e17), setup described in
`shared/bench/fuxictr.md`. Kept here so `benchmarks/model_benchmark.py --peer` can run it in the
same session as our models. Changes against that file: this paragraph, and `--count-flops N`
(the child counts the matmul FLOPs of one training step with torch's FlopCounterMode, as our
benchmark does). Everything else is unchanged, so its style is the original's (see the ruff
per-file ignores in pyproject.toml).

This file is our own harness. It contains no FuxiCTR code: it imports the `fuxictr` package
(pip-installed, or from --fuxictr-src) and the model classes from an extracted copy of
model_zoo/LongCTR whose location is given on the command line.

What it measures, per model and history length L (each pair in a fresh subprocess, so that the
peak RSS belongs to that pair alone):
  * training step: the model's own `train_step` (forward, loss, backward, clip_grad_norm_,
    Adam step, zero_grad) plus `loss.item()`, on random batches; median over --steps steps after
    --warmup warm-up steps; samples/s = batch size / median step time;
  * peak RSS of the process (ru_maxrss) after model construction and after training;
  * at L == --infer-len: inference latency of one forward call (eval mode, no_grad) on a batch of
    --infer-candidates candidates that share one user history (the history tiled, as FuxiCTR's
    collator would deliver it), p50 and p99 over --infer-calls calls.
The parent process also measures dense fp32 GEMM throughput (2048x2048 @ 2048x2048, median of 10)
before and after the model runs, so the numbers can be expressed relative to the machine.

Input layout (what the LongCTR models consume, see model_zoo/LongCTR/longctr_dataloader.py):
  batch_dict: {"label": (B,)}; item_dict: {"item_id": (B*(L+1),), "cate_id": (B*(L+1),)}, where
  each row is L history items followed by the target item; mask: (B, L) float, 1 = real item.

Example:
  python fuxictr_bench.py --longctr-dir <LONGCTR_DIR> --lens 100,1000,2000 --out <RESULTS_JSON>
"""
import argparse
import inspect
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

RESULT_MARK = "@@RESULT@@ "
DEFAULT_MODELS = "DIN,SIM,ETA,SDIM,TWIN"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--longctr-dir", required=True,
                   help="path of the extracted model_zoo/LongCTR folder")
    p.add_argument("--fuxictr-src", default=None,
                   help="optional folder holding a `fuxictr` package to import instead of the installed one")
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--lens", default="100,1000,2000")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--embedding-dim", type=int, default=64)
    p.add_argument("--dnn-hidden-units", default="2048,1024")
    p.add_argument("--n-items", type=int, default=100_000)
    p.add_argument("--n-cates", type=int, default=10_000)
    p.add_argument("--infer-len", type=int, default=1000)
    p.add_argument("--infer-candidates", type=int, default=100)
    p.add_argument("--infer-calls", type=int, default=50)
    p.add_argument("--infer-warmup", type=int, default=5)
    p.add_argument("--gemm-n", type=int, default=2048)
    p.add_argument("--gemm-reps", type=int, default=10)
    p.add_argument("--seed", type=int, default=2024)
    p.add_argument("--child-timeout", type=int, default=1800, help="seconds per (model, L) run")
    p.add_argument("--count-flops", type=int, default=0,
                   help="1: count the matmul FLOPs of one extra training step (FlopCounterMode)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra constructor kwarg for every model (value parsed as JSON), e.g. num_heads=2")
    p.add_argument("--out", default=None, help="write all results as JSON here")
    p.add_argument("--child", nargs=2, metavar=("MODEL", "L"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def import_torch(threads):
    import torch
    torch.set_num_threads(threads)
    return torch


def gemm_gflops(torch, n, reps):
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    c = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=c)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"n": n, "reps": reps, "median_s": med, "gflops": 2.0 * n ** 3 / med / 1e9}


# ---------------------------------------------------------------- child side

def make_feature_map(tmpdir, args):
    """Two item-side categorical features, as FuxiCTR's FeatureProcessor would describe them."""
    from fuxictr.features import FeatureMap
    spec = {
        "dataset_id": "bench",
        "num_fields": 2,
        "total_features": args.n_items + args.n_cates,
        "input_length": 2,
        "labels": ["label"],
        "features": [
            {"item_id": {"source": "item", "type": "categorical", "padding_idx": 0,
                         "oov_idx": args.n_items - 1, "vocab_size": args.n_items}},
            {"cate_id": {"source": "item", "type": "categorical", "padding_idx": 0,
                         "oov_idx": args.n_cates - 1, "vocab_size": args.n_cates}},
        ],
    }
    path = os.path.join(tmpdir, "feature_map.json")
    with open(path, "w") as fd:
        json.dump(spec, fd)
    fmap = FeatureMap("bench", tmpdir)
    fmap.load(path, {"embedding_dim": args.embedding_dim})
    return fmap


def parse_sets(items):
    out = {}
    for item in items:
        key, _, raw = item.partition("=")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def build_model(name, fmap, tmpdir, args):
    if args.longctr_dir not in sys.path:
        sys.path.insert(0, args.longctr_dir)
    # Import the model's own sub-package only (model_zoo/LongCTR/<NAME>/__init__.py).
    cls = getattr(importlib.import_module(name), name)
    ours = {
        "gpu": -1,
        "embedding_dim": args.embedding_dim,
        "dnn_hidden_units": [int(x) for x in args.dnn_hidden_units.split(",") if x],
        "learning_rate": 1e-3,
        # keys BaseModel/compile() read from the flat params dict
        "optimizer": "adam",
        "loss": "binary_crossentropy",
        "metrics": ["logloss", "AUC"],
        "verbose": 0,
        "model_root": tmpdir,
        "embedding_regularizer": None,
        "net_regularizer": None,
    }
    ours.update(parse_sets(args.set))
    defaults = {k: v.default for k, v in inspect.signature(cls.__init__).parameters.items()
                if v.default is not inspect.Parameter.empty}
    effective = dict(defaults)
    effective.update({k: v for k, v in ours.items() if k in defaults})
    model = cls(fmap, **ours)
    return model, defaults, effective


def random_batch(torch, gen, batch_size, seq_len, args):
    n = batch_size * (seq_len + 1)
    items = {
        "item_id": torch.randint(1, args.n_items, (n,), generator=gen),
        "cate_id": torch.randint(1, args.n_cates, (n,), generator=gen),
    }
    labels = torch.randint(0, 2, (batch_size,), generator=gen).float()
    mask = torch.ones(batch_size, seq_len)
    return {"label": labels}, items, mask


def shared_history_batch(torch, gen, n_cand, seq_len, args):
    """n_cand candidates, one user history of length seq_len, tiled per candidate."""
    items = {}
    for feat, vocab in (("item_id", args.n_items), ("cate_id", args.n_cates)):
        hist = torch.randint(1, vocab, (1, seq_len), generator=gen).expand(n_cand, seq_len)
        cand = torch.randint(1, vocab, (n_cand, 1), generator=gen)
        items[feat] = torch.cat([hist, cand], dim=1).reshape(-1).contiguous()
    return {"label": torch.zeros(n_cand)}, items, torch.ones(n_cand, seq_len)


def run_child(args):
    name, seq_len = args.child[0], int(args.child[1])
    if args.fuxictr_src:
        sys.path.insert(0, args.fuxictr_src)
    torch = import_torch(args.threads)
    torch.manual_seed(args.seed)
    import fuxictr
    res = {"model": name, "L": seq_len, "batch_size": args.batch_size,
           "threads": torch.get_num_threads(), "torch": torch.__version__,
           "fuxictr": fuxictr.__version__, "rss_after_import_mib": peak_rss_mib()}
    with tempfile.TemporaryDirectory() as tmpdir:
        fmap = make_feature_map(tmpdir, args)
        model, defaults, effective = build_model(name, fmap, tmpdir, args)
    res["constructor_defaults"] = {k: repr(v) for k, v in defaults.items()}
    res["effective_hparams"] = {k: repr(v) for k, v in effective.items()}
    res["n_params"] = sum(p.numel() for p in model.parameters())
    res["n_params_trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    res["rss_after_build_mib"] = peak_rss_mib()

    gen = torch.Generator().manual_seed(args.seed)
    batches = [random_batch(torch, gen, args.batch_size, seq_len, args) for _ in range(4)]
    model.train()
    model._batch_index = 0
    model._max_gradient_norm = 10.0  # BaseModel.fit() default
    step_times, losses = [], []
    for i in range(args.warmup + args.steps):
        batch = batches[i % len(batches)]
        t0 = time.perf_counter()
        loss = model.train_step(batch)
        loss_val = loss.item()
        dt = time.perf_counter() - t0
        losses.append(loss_val)
        if i >= args.warmup:
            step_times.append(dt)
    res["step_times_s"] = step_times
    res["step_median_s"] = statistics.median(step_times)
    res["samples_per_s"] = args.batch_size / res["step_median_s"]
    res["losses"] = losses
    res["peak_rss_train_mib"] = peak_rss_mib()
    if args.count_flops:
        from torch.utils.flop_counter import FlopCounterMode
        with FlopCounterMode(display=False) as counter:
            model.train_step(batches[0]).item()
        res["flops_per_sample"] = counter.get_total_flops() / args.batch_size
    del batches

    if seq_len == args.infer_len and args.infer_calls > 0:
        model.eval()
        batch = shared_history_batch(torch, gen, args.infer_candidates, seq_len, args)
        lat = []
        with torch.no_grad():
            for i in range(args.infer_warmup + args.infer_calls):
                t0 = time.perf_counter()
                out = model.forward(batch)["y_pred"]
                _ = float(out[0, 0])
                dt = time.perf_counter() - t0
                if i >= args.infer_warmup:
                    lat.append(dt)
        lat.sort()
        res["infer_candidates"] = args.infer_candidates
        res["infer_latencies_s"] = lat
        res["infer_p50_s"] = percentile(lat, 50)
        res["infer_p99_s"] = percentile(lat, 99)
        res["peak_rss_infer_mib"] = peak_rss_mib()
    print(RESULT_MARK + json.dumps(res), flush=True)


def percentile(sorted_vals, q):
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_vals) == 1:
        return sorted_vals[0]
    pos = (len(sorted_vals) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_vals) - 1)
    return sorted_vals[lo] + (sorted_vals[hi] - sorted_vals[lo]) * (pos - lo)


# ---------------------------------------------------------------- parent side

def child_argv(args, name, seq_len):
    argv = [sys.executable, os.path.abspath(__file__), "--child", name, str(seq_len)]
    for key, val in vars(args).items():
        if key in ("child", "out", "set") or val is None:
            continue
        argv += ["--" + key.replace("_", "-"), str(val)]
    for item in args.set:
        argv += ["--set", item]
    return argv


def cpu_name():
    try:
        with open("/proc/cpuinfo") as fd:
            for line in fd:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def fmt(x, spec):
    return "-" if x is None else format(x, spec)


def run_parent(args):
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env[var] = str(args.threads)
    torch = import_torch(args.threads)
    report = {"cpu": cpu_name(), "nproc": os.cpu_count(), "torch": torch.__version__,
              "threads": args.threads, "args": {k: v for k, v in vars(args).items() if k != "child"}}
    report["gemm_before"] = gemm_gflops(torch, args.gemm_n, args.gemm_reps)
    print("GEMM before: %.1f GFLOP/s" % report["gemm_before"]["gflops"], flush=True)
    runs = []
    for seq_len in [int(x) for x in args.lens.split(",") if x]:
        for name in [m for m in args.models.split(",") if m]:
            t0 = time.time()
            try:
                proc = subprocess.run(child_argv(args, name, seq_len), env=env, capture_output=True,
                                      text=True, timeout=args.child_timeout)
                lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT_MARK)]
                if proc.returncode == 0 and lines:
                    res = json.loads(lines[-1][len(RESULT_MARK):])
                else:
                    res = {"model": name, "L": seq_len, "error": "rc=%d: %s" % (
                        proc.returncode, (proc.stderr or proc.stdout)[-2000:])}
            except subprocess.TimeoutExpired:
                res = {"model": name, "L": seq_len, "error": "timeout"}
            res["wall_s"] = time.time() - t0
            runs.append(res)
            if "error" in res:
                print("%s L=%d ERROR %s" % (name, seq_len, res["error"]), flush=True)
            else:
                print("%s L=%d step %.4fs  %.0f samples/s  peak RSS %.0f MiB%s" % (
                    name, seq_len, res["step_median_s"], res["samples_per_s"],
                    res["peak_rss_train_mib"],
                    "  infer p50 %.4fs p99 %.4fs" % (res["infer_p50_s"], res["infer_p99_s"])
                    if "infer_p50_s" in res else ""), flush=True)
    report["gemm_after"] = gemm_gflops(torch, args.gemm_n, args.gemm_reps)
    print("GEMM after: %.1f GFLOP/s" % report["gemm_after"]["gflops"], flush=True)
    report["runs"] = runs
    if args.out:  # written before the table, so a closed stdout cannot lose it
        with open(args.out, "w") as fd:
            json.dump(report, fd, indent=1)
    gemm = report["gemm_before"]["gflops"]
    print()
    print("| model | L | step s (median) | samples/s | peak RSS MiB | infer p50 s | infer p99 s |"
          " GEMM GFLOP/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in runs:
        if "error" in r:
            print("| %s | %d | error | | | | | %.1f |" % (r["model"], r["L"], gemm))
            continue
        print("| %s | %d | %.4f | %.0f | %.0f | %s | %s | %.1f |" % (
            r["model"], r["L"], r["step_median_s"], r["samples_per_s"], r["peak_rss_train_mib"],
            fmt(r.get("infer_p50_s"), ".4f"), fmt(r.get("infer_p99_s"), ".4f"), gemm))


def main():
    args = parse_args()
    args.longctr_dir = os.path.abspath(args.longctr_dir)
    if args.fuxictr_src:
        args.fuxictr_src = os.path.abspath(args.fuxictr_src)
    if args.child:
        run_child(args)
    else:
        run_parent(args)


if __name__ == "__main__":
    main()
