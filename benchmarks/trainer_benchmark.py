"""Trainer benchmarks: training samples/s per process count and sharding type; scoring latency.

    python benchmarks/trainer_benchmark.py                       # both, writes results/trainer.json
    python benchmarks/trainer_benchmark.py --only latency --history 1000 2000 --candidates 100

Training: `torchrun --nproc_per_node=P trainer/main.py` on a synthetic samples table (or
`--data ROOT`, e.g. the ETL's output) for `--steps` steps; the number is the run's
`train_samples_per_sec` from metrics.json (all ranks' samples / wall time of the training loop,
including input reading). Latency: `trainer.predict.Scorer` on one request with N candidates and
a history of L items, untrained weights, single process; p50/p99 over `--repeats` calls after a
warm-up. Prints a table and writes JSON; numbers, never assertions.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

MODEL_OPTIONS = {"embedding_dim": 16, "mlp_dims": [128, 64]}


def training_benchmark(
    data: Path, runs: list[tuple[int, str]], steps: int, batch_size: int, model: str, threads: int
) -> list[dict]:
    results = []
    for processes, sharding in runs:
        with tempfile.TemporaryDirectory() as run_dir:
            command = [
                sys.executable,
                "-m",
                "torch.distributed.run",
                "--standalone",
                f"--nproc_per_node={processes}",
                str(REPO_ROOT / "trainer" / "main.py"),
                "--data",
                str(data),
                "--model",
                model,
                "--output",
                run_dir,
                f"train.max_steps={steps}",
                f"train.batch_size={batch_size}",
                f"train.sharding_type={sharding}",
                "train.progress=false",
                "train.checkpoint_every=0",
                *(f"model.{key}={json.dumps(value)}" for key, value in MODEL_OPTIONS.items()),
            ]
            # torchrun sets OMP_NUM_THREADS=1 only for several processes; a lone process with the
            # default thread count was 7x slower on this shared 2-core box (oversubscription), so
            # every run gets the same explicit count.
            env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": str(threads)}
            started = time.perf_counter()
            process = subprocess.run(
                command, cwd=REPO_ROOT, env=env, capture_output=True, text=True
            )
            if process.returncode != 0:
                print(process.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"training run failed: {processes} processes, {sharding}")
            metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        row = {
            "processes": processes,
            "threads_per_process": threads,
            "sharding_type": sharding,
            "model": model,
            "steps": metrics["steps"],
            "batch_size_per_rank": batch_size,
            "train_samples_per_sec": round(metrics["train_samples_per_sec"], 1),
            "train_seconds": round(metrics["train_seconds"], 2),
            "wall_seconds_with_startup": round(time.perf_counter() - started, 1),
        }
        print(
            f"train  P={processes} {sharding:12s} {row['train_samples_per_sec']:10.1f} samples/s",
            flush=True,
        )
        results.append(row)
    return results


def latency_benchmark(
    models: list[str], histories: list[int], candidates: int, repeats: int
) -> list[dict]:
    from model.synthetic_batch import synthetic_batch, tiny_feature_spec
    from trainer.predict import Scorer

    results = []
    for history in histories:
        spec = tiny_feature_spec(
            max_len=history, short_len=50, num_items=100_000, num_categories=1000
        )
        batch = synthetic_batch(
            spec, num_requests=1, candidates_per_request=candidates, history_length=history, seed=1
        )
        for model in models:
            scorer = Scorer.random(model, spec, MODEL_OPTIONS | {"embedding_dim": 32})
            for _ in range(10):  # warm-up: allocator and thread pool
                scorer.score(batch)
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                scorer.score(batch)
                timings.append((time.perf_counter() - started) * 1000)
            row = {
                "model": model,
                "history_length": history,
                "candidates": candidates,
                "p50_ms": round(float(np.percentile(timings, 50)), 2),
                "p99_ms": round(float(np.percentile(timings, 99)), 2),
                "repeats": repeats,
                "threads": torch.get_num_threads(),
            }
            print(
                f"score  {model:6s} L={history:5d} N={candidates} "
                f"p50 {row['p50_ms']:8.2f} ms  p99 {row['p99_ms']:8.2f} ms",
                flush=True,
            )
            results.append(row)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", choices=["train", "latency"], default=None)
    parser.add_argument("--data", help="samples root to train on (default: a synthetic one)")
    parser.add_argument("--model", default="cain")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument(
        "--runs",
        nargs="+",
        default=["1:table_wise", "2:table_wise", "2:row_wise", "2:column_wise"],
        help="PROCESSES:SHARDING",
    )
    parser.add_argument("--models", nargs="+", default=["cain", "lap"])
    parser.add_argument("--history", nargs="+", type=int, default=[1000, 2000])
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads per process")
    parser.add_argument(
        "--output", default=str(REPO_ROOT / "benchmarks" / "results" / "trainer.json")
    )
    arguments = parser.parse_args()

    output = Path(arguments.output)
    report = json.loads(output.read_text()) if output.is_file() else {}
    report["note"] = (
        "2 CPU cores shared with other jobs (load average ~6 during the runs): compare rows of "
        "one file, not absolute numbers. No GPU was lent to this task."
    )
    report["machine"] = {
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
    }
    if arguments.only in (None, "train"):
        with tempfile.TemporaryDirectory() as scratch:
            data = Path(arguments.data) if arguments.data else Path(scratch) / "samples"
            if not arguments.data:
                from trainer.synthetic_samples import write_synthetic_samples

                spec = write_synthetic_samples(
                    data,
                    users=400,
                    days=4,
                    files_per_day=2,
                    max_len=200,
                    events_per_day=40,
                    requests_per_day=8,
                    seed=3,
                )
                print(
                    f"synthetic data: {spec.splits['train'].samples} train samples, "
                    f"max_len {spec.max_len}"
                )
            runs = [(int(item.split(":")[0]), item.split(":")[1]) for item in arguments.runs]
            report["training"] = {
                "data": arguments.data or "synthetic: 400 users x 4 days, max_len 200",
                "model_options": MODEL_OPTIONS,
                "results": training_benchmark(
                    data,
                    runs,
                    arguments.steps,
                    arguments.batch_size,
                    arguments.model,
                    arguments.threads,
                ),
            }
    if arguments.only in (None, "latency"):
        torch.set_num_threads(arguments.threads)
        report["latency"] = {
            "model_options": MODEL_OPTIONS | {"embedding_dim": 32},
            "results": latency_benchmark(
                arguments.models, arguments.history, arguments.candidates, arguments.repeats
            ),
        }
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(report, indent=2))
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
