"""ETL throughput: events/s and peak memory of the full `build_sequences` job on local Spark.

    python benchmarks/etl_benchmark.py --sizes 100000 1000000 10000000 [--master local[2]]
        [--output benchmarks/results/etl.json] [--work /tmp/cain-etl-bench] [--merge]
        [--incremental-day]

For each size: a seeded synthetic Taobao log (`etl.synthetic`, ~100 events per user like the real
file) is generated (timed separately), then `python etl/build_sequences.py` runs in a fresh
process (Spark start-up included, as a user would run it). Peak memory is the largest resident
set of the job's whole process tree (Python driver + JVM), sampled every 0.2 s from /proc.
A copy job (`benchmarks/etl_copy_job.py`: read the same CSV, write it as Parquet) runs first
in the same run: the build's time is reported as a ratio to it (`etl_to_copy_ratio`), which is
less sensitive to the load of a shared machine than the wall time. Also reported: bytes per
sample of the `samples` table (Parquet files / candidates), per request
and per user-day row, and the machine's load average (other work on a shared machine slows the
job; compare numbers from the same run only). Prints a table; never asserts on timings.

`--incremental-day`: after the full build of a size, the range's last day is rebuilt on top of
the other days' history (the size). The state is first set to the day before by an untimed
`--date LAST-1` run. Then, timed: `--date LAST --incremental` with the day's drop as its input
(`day-SIZE.csv`: LAST's events of users 1..`--day-users`, default the smallest size's users, so
every size rebuilds the *same* day and only the history differs: the cost of a daily run should
not grow with history), and `--date LAST` on the whole log (the non-incremental way: rereads
every earlier event of the day's users).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time
from datetime import date, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def tree_rss_bytes(root_pid: int) -> int:
    """Resident memory of a process and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            parent, pages = int(fields[1]), int(fields[21])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(parent, []).append(int(entry.name))
        rss[int(entry.name)] = pages * os.sysconf("SC_PAGE_SIZE")
    total, stack = 0, [root_pid]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, []))
    return total


def run_measured(command: list[str], env: dict[str, str], log_path: Path) -> tuple[float, int, int]:
    """-> (wall seconds, peak tree RSS bytes, exit code)."""
    peak = 0
    with log_path.open("w") as log:
        started = time.time()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   cwd=REPO)
        done = threading.Event()

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                peak = max(peak, tree_rss_bytes(process.pid))
                time.sleep(0.2)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        code = process.wait()
        done.set()
        sampler.join()
    return time.time() - started, peak, code


def _logged_shuffle_partitions(log: Path) -> int | None:
    match = re.search(r"shuffle_partitions=(\d+)", log.read_text())
    return int(match.group(1)) if match else None


def stage_seconds(log: Path) -> dict[str, float]:
    """Seconds of each stage as the job logged them (`[etl] clean  112.3s ...`)."""
    return {name: float(seconds) for name, seconds in
            re.findall(r"\[etl\] (clean|samples|state|spec)\s+([0-9.]+)s", log.read_text())}


def write_day_drop(raw: Path, drop: Path, day: str, time_zone: str, users: int) -> int:
    """Write `day`'s events of users 1..`users` (a daily drop) from the raw log; -> rows written."""
    from zoneinfo import ZoneInfo

    start = int(datetime.combine(date.fromisoformat(day), datetime.min.time(),
                                 ZoneInfo(time_zone)).timestamp())
    rows = 0
    with raw.open() as source, drop.open("w") as sink:
        for line in source:
            fields = line.split(",")
            try:
                user, ts = int(fields[0]), int(fields[4])
            except (IndexError, ValueError):
                continue  # a deliberately defective row: not part of the day's drop
            if user <= users and start <= ts < start + 86_400:
                sink.write(line)
                rows += 1
    return rows


def incremental_day(raw: Path, root: Path, env: dict[str, str], work: Path, size: int,
                    day_users: int) -> dict:
    """Wall seconds of the last day: --incremental on its drop, and without on the whole log."""
    sys.path.insert(0, str(REPO))  # run as a script: the repository is not on sys.path
    from etl.config import load_config

    source = load_config("taobao", "cain").source
    last = source.end_date
    before = (date.fromisoformat(last) - timedelta(days=1)).isoformat()
    drop = work / f"day-{size}.csv"
    drop_events = write_day_drop(raw, drop, last, source.time_zone, day_users)
    job = [sys.executable, "etl/build_sequences.py", "--output", str(root)]
    seconds, peaks = {}, {}
    for name, extra in (("state", ["--input", str(raw), "--date", before]),
                        ("incremental", ["--input", str(drop), "--date", last, "--incremental"]),
                        ("full_history", ["--input", str(raw), "--date", last])):
        wall, peak, code = run_measured(job + extra, env, work / f"{name}-{size}.log")
        if code != 0:
            raise SystemExit(f"the {name} day run failed for size {size}: see "
                             f"{work}/{name}-{size}.log")
        seconds[name], peaks[name] = round(wall, 1), round(peak / 2**30, 2)
    return {"day": last, "day_users": day_users, "day_events": drop_events,
            "incremental_day_seconds": seconds["incremental"],
            "incremental_day_peak_rss_gib": peaks["incremental"],
            "full_history_day_seconds": seconds["full_history"],
            "incremental_stage_seconds": stage_seconds(work / f"incremental-{size}.log"),
            "full_history_stage_seconds": stage_seconds(work / f"full_history-{size}.log")}


def samples_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in (root / "samples").rglob("*.parquet"))


def benchmark(size: int, work: Path, master: str, day_users: int | None = None) -> dict:
    users = max(10, size // 100)
    items = max(20_000, size // 20)
    raw, root = work / f"raw-{size}.csv", work / f"delta-{size}"
    subprocess.run(["rm", "-rf", str(root)], check=True)
    started = time.time()
    subprocess.run(
        [sys.executable, "-m", "etl.synthetic", "taobao", "--output", str(raw), "--users",
         str(users), "--items", str(items), "--categories", "500", "--seed", "2017"],
        check=True, cwd=REPO,
    )
    generate_seconds = time.time() - started
    input_rows = sum(1 for _ in raw.open())
    env = {**os.environ, "SPARK_MASTER": master, "PYTHONPATH": str(REPO)}
    # The I/O floor, measured in the same run: read the CSV, write it as Parquet.
    copy_seconds, copy_peak, code = run_measured(
        [sys.executable, "benchmarks/etl_copy_job.py", "--input", str(raw), "--output",
         str(work / f"copy-{size}")], env, work / f"copy-{size}.log",
    )
    if code != 0:
        raise SystemExit(f"the copy job failed for size {size}: see {work}/copy-{size}.log")
    load_before = os.getloadavg()[0]
    seconds, peak, code = run_measured(
        [sys.executable, "etl/build_sequences.py", "--input", str(raw), "--output", str(root)],
        env, work / f"etl-{size}.log",
    )
    if code != 0:
        raise SystemExit(f"build_sequences failed for size {size}: see {work}/etl-{size}.log")
    spec = json.loads((root / "feature_spec.json").read_text())
    candidates = sum(split["samples"] for split in spec["splits"].values())
    requests = sum(split["requests"] for split in spec["splits"].values())
    rows = 0
    from deltalake import DeltaTable

    rows = DeltaTable(str(root / "samples")).to_pyarrow_dataset().count_rows()
    table_bytes = samples_bytes(root)
    day = incremental_day(raw, root, env, work, size, day_users) if day_users else {}
    return {
        "events": input_rows,
        "users": users,
        "items": items,
        "master": master,
        "shuffle_partitions": _logged_shuffle_partitions(work / f"etl-{size}.log"),
        "generate_seconds": round(generate_seconds, 1),
        "etl_seconds": round(seconds, 1),
        "copy_seconds": round(copy_seconds, 1),
        "etl_to_copy_ratio": round(seconds / copy_seconds, 2),
        "copy_peak_rss_gib": round(copy_peak / 2**30, 2),
        "stage_seconds": stage_seconds(work / f"etl-{size}.log"),
        "events_per_second": round(input_rows / seconds),
        "peak_rss_gib": round(peak / 2**30, 2),
        "requests": requests,
        "candidates": candidates,
        "sample_rows": rows,
        "samples_table_bytes": table_bytes,
        "bytes_per_candidate": round(table_bytes / max(candidates, 1), 1),
        "bytes_per_request": round(table_bytes / max(requests, 1), 1),
        "bytes_per_user_day_row": round(table_bytes / max(rows, 1), 1),
        "load_average_before": round(load_before, 2),
        "load_average_after": round(os.getloadavg()[0], 2),
        **day,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--work", type=Path, default=Path("/tmp/cain-etl-bench"))
    parser.add_argument("--output", type=Path, default=REPO / "benchmarks/results/etl.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the output file's results for sizes not run now")
    parser.add_argument("--incremental-day", action="store_true",
                        help="also time the last day with and without --incremental")
    parser.add_argument("--day-users", type=int, default=None,
                        help="users in the --incremental-day drop (default: the smallest size's)")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    kept = []
    if args.merge and args.output.exists():
        kept = json.loads(args.output.read_text())["results"]
    print(f"{'events':>10} {'etl s':>8} {'events/s':>10} {'peak GiB':>9} {'copy s':>7} "
          f"{'ratio':>6} {'B/cand':>7} {'B/req':>7} {'load':>5}")
    day_users = None
    if args.incremental_day:
        day_users = args.day_users or max(10, min(args.sizes) // 100)
    for size in args.sizes:
        result = benchmark(size, args.work, args.master, day_users)
        print(f"{result['events']:>10} {result['etl_seconds']:>8} "
              f"{result['events_per_second']:>10} {result['peak_rss_gib']:>9} "
              f"{result['copy_seconds']:>7} {result['etl_to_copy_ratio']:>6} "
              f"{result['bytes_per_candidate']:>7} {result['bytes_per_request']:>7} "
              f"{result['load_average_before']:>5}", flush=True)
        if args.incremental_day:
            print(f"{'':>10} day {result['day']} ({result['day_events']} events of "
                  f"{day_users} users): --incremental {result['incremental_day_seconds']} s; "
                  f"all its users without: {result['full_history_day_seconds']} s", flush=True)
        # Written after every size, so a long run that fails later keeps what it measured.
        kept = [r for r in kept if r["size"] != size] + [{"size": size, **result}]
        payload = {
            "benchmark": "etl/build_sequences.py, protocol cain (k=19), max_len 1024, full 9 days",
            "machine": f"{os.cpu_count()} CPUs, shared with other jobs (see load averages)",
            "results": sorted(kept, key=lambda r: r["size"]),
        }
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
