"""Run one of the paper's experiment suites through the real trainer, over several seeds.

    python -m experiments.run SUITE --data ROOT --seeds 3 [--output DIR] [--max-len L]
        [--config conf/train/paper.yaml ...] [--epochs N] [--max-steps N] [--nproc P]
        [key=value ...]

SUITE is a name of experiments/suites.py (table1 ... table7, fig5, fig6, fig7). Each (variant,
seed) is one `torchrun trainer/main.py` subprocess (OMP_NUM_THREADS=1 per process, one run at a
time) writing DIR/VARIANT/seed_S/ (metrics.json, config.yaml, train.log); seeds are 1..N
(`train.seed`). A run whose metrics.json exists is skipped, so an interrupted suite resumes
where it stopped. Each run prints a progress line with its metrics, the elapsed time and an ETA.
With --planted RAW/planted.json (planted data) each run
also gets its AUC on the target impressions (experiments/planted_metrics.py, in the table too).
At the end, and before and after every run, DIR/results.json, DIR/results.md (the table of
experiments/report.py) and, for figure suites, DIR/SUITE.png are written. Failed runs are listed
and make the exit code 1; the others still run. With --variants only those run (plus the
baseline and their references); the table also holds the other variants' finished runs in DIR
with the same settings, so a suite run a few variants at a time gets one table.

Run settings, later ones winning: conf/train/default.yaml (or the --config presets), the suite's
sizes, the variant's model overrides, data.max_history = L (the suite's default unless --max-len;
at most the tables' max_len),
train.seed, quiet logging and a checkpoint only at the end, --epochs / --max-steps, then the
trailing key=value overrides (e.g. model.embedding_dim=64 for bigger runs).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from contract.feature_spec import FeatureSpec
from experiments import planted_metrics
from experiments.report import METRICS, RunResult, SuiteReport
from experiments.suites import SUITES, Suite, Variant

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "conf" / "train" / "default.yaml"
LAUNCH_FILE = "launch.json"


@dataclass(frozen=True)
class RunSettings:
    """Args:
    data: the ETL's output root.
    output: the suite's directory (one subdirectory per variant and seed).
    seeds: train.seed values.
    configs: trainer YAML presets (default: conf/train/default.yaml).
    max_len: L, data.max_history of every run (None: the suite's), at most the tables' max_len.
    overrides: trainer key=value overrides applied after everything else.
    nproc: processes per run (torchrun --nproc_per_node).
    timeout: seconds one run may take.
    planted_design: planted.json of the raw log (planted data): each run also gets the AUC on
        the target impressions (experiments/planted_metrics.py).
    variants: the names to run (--variants; None: every one). The table also holds the other
        variants' runs that DIR already has with these settings (`finished_elsewhere`).
    """

    data: Path
    output: Path
    seeds: tuple[int, ...]
    configs: tuple[Path, ...] = (DEFAULT_CONFIG,)
    max_len: int | None = None
    overrides: tuple[str, ...] = ()
    nproc: int = 2
    timeout: int = 6 * 3600
    planted_design: Path | None = None
    variants: tuple[str, ...] | None = None


def run_directory(settings: RunSettings, variant: Variant, seed: int) -> Path:
    return settings.output / variant.name / f"seed_{seed}"


def history_length(suite: Suite, settings: RunSettings, tables_max_len: int) -> int:
    """L: the requested history length, cut to what the tables hold (the ETL's --max-len)."""
    return min(settings.max_len or suite.max_len, tables_max_len)


def trainer_arguments(
    suite: Suite, variant: Variant, seed: int, settings: RunSettings, tables_max_len: int
) -> list[str]:
    """The arguments of trainer/main.py for one run; tables_max_len: the feature spec's max_len."""
    arguments = [
        "--data",
        str(settings.data),
        "--model",
        variant.model,
        "--output",
        str(run_directory(settings, variant, seed)),
    ]
    for config in settings.configs:
        arguments += ["--config", str(config)]
    return [
        *arguments,
        *suite.overrides,
        *variant.overrides,
        f"data.max_history={history_length(suite, settings, tables_max_len)}",
        f"train.seed={seed}",
        "train.progress=false",
        "train.checkpoint_every=0",
        "train.keep_checkpoints=1",
        *settings.overrides,
    ]


def finished_metrics(directory: Path) -> dict | None:
    """A finished run's metrics.json (the trainer writes it last), else None."""
    path = directory / "metrics.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())


def undefined_metrics(metrics: dict) -> str | None:
    """Why a finished run cannot enter the table: a metric is null (e.g. the model diverged)."""
    names = (*METRICS, *planted_metrics.PLANTED_METRICS)
    null = [name for name in names if name in metrics and metrics[name] is None]
    reasons = metrics.get("undefined") or {}
    return "; ".join(f"{name} null: {reasons.get(name, '?')}" for name in null) or None


class SettingsChanged(Exception):
    """A run directory holds a run of other trainer arguments than the ones asked for now."""


def launched(directory: Path) -> dict | None:
    """The trainer command DIRECTORY was run with (its launch.json), None when not run yet."""
    path = directory / LAUNCH_FILE
    return json.loads(path.read_text()) if path.exists() else None


def check_settings(directory: Path, arguments: list[str], nproc: int) -> None:
    """A run directory belongs to one trainer command (DIRECTORY/launch.json): skipping a finished
    run or resuming an unfinished one under other settings would mix settings in one table."""
    earlier = launched(directory)
    # None: not run yet (or run before launch.json was written: not checked).
    if earlier is None or earlier == {"arguments": arguments, "nproc": nproc}:
        return
    differing = sorted(set(earlier["arguments"]) ^ set(arguments))
    if earlier["nproc"] != nproc:
        differing.append(f"{earlier['nproc']} vs {nproc} processes")
    raise SettingsChanged(
        f"{directory} holds a run with other settings ({', '.join(differing)}): write to "
        "another --output, or delete that directory to run it again"
    )


def launch(arguments: list[str], directory: Path, nproc: int, timeout: int) -> int:
    """One torchrun of trainer/main.py; its output goes to DIRECTORY/train.log.

    torchrun runs in a session of its own: on a timeout, Ctrl-C or an error here its whole
    process group (the launcher and every rank) is stopped, so no rank outlives the runner.
    Raises SettingsChanged when DIRECTORY was run with other arguments.
    """
    check_settings(directory, arguments, nproc)
    directory.mkdir(parents=True, exist_ok=True)
    launched = {"arguments": arguments, "nproc": nproc}
    (directory / LAUNCH_FILE).write_text(json.dumps(launched, indent=2) + "\n")
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    environment["PYTHONPATH"] = os.pathsep.join(
        filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(REPO_ROOT / "trainer" / "main.py"),
        *arguments,
    ]
    with (directory / "train.log").open("w") as log:
        log.write(" ".join(command) + "\n")
        log.flush()
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            return process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(process)
            log.write(f"\n[experiments] stopped after {timeout} s\n")
            return 124
        except BaseException:
            stop_group(process)
            raise


def stop_group(process: subprocess.Popen) -> None:
    """SIGTERM to the run's process group, SIGKILL if it is still there after 30 s."""
    for stop_signal, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 30)):
        try:
            os.killpg(process.pid, stop_signal)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def with_planted_metrics(directory: Path, metrics: dict, settings: RunSettings) -> dict | None:
    """metrics plus the run's target AUCs (computed once, in a subprocess, then read back);
    None when they cannot be computed (see DIRECTORY/planted_metrics.log)."""
    if settings.planted_design is None:
        return metrics
    path = directory / planted_metrics.RESULT_FILE
    if not path.exists():
        environment = {**os.environ, "OMP_NUM_THREADS": "1"}
        environment["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])
        )
        command = [
            sys.executable,
            "-m",
            "experiments.planted_metrics",
            "--run",
            str(directory),
            "--data",
            str(settings.data),
            "--design",
            str(settings.planted_design),
        ]
        with (directory / "planted_metrics.log").open("w") as log:
            subprocess.run(
                command,
                cwd=REPO_ROOT,
                env=environment,
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=settings.timeout,
            )
        if not path.exists():
            return None
    planted = json.loads(path.read_text())
    return {**metrics, **{name: planted[name] for name in planted_metrics.PLANTED_METRICS}}


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def header_lines(suite: Suite, settings: RunSettings) -> list[str]:
    """What the table was measured on: data, L, sizes, seeds, processes."""
    spec = FeatureSpec.read(str(settings.data))
    max_len = settings.max_len or suite.max_len
    effective = history_length(suite, settings, spec.max_len)
    configs = ", ".join(
        str(Path(c).relative_to(REPO_ROOT)) if Path(c).is_relative_to(REPO_ROOT) else str(c)
        for c in settings.configs
    )
    return [
        f"data: `{settings.data}` (source {spec.source}, protocol {spec.protocol}; "
        f"{spec.splits['train'].samples if 'train' in spec.splits else '?'} train / "
        f"{spec.splits['test'].samples if 'test' in spec.splits else '?'} test samples)",
        f"history length L = {effective} (data.max_history; requested {max_len}, the tables hold "
        f"{spec.max_len}), short-term window {min(spec.short_len, effective)}",
        f"sizes: {' '.join(f'`{o}`' for o in suite.overrides)} on top of {configs}"
        + (
            f"; overrides {' '.join(f'`{o}`' for o in settings.overrides)}"
            if settings.overrides
            else ""
        ),
        f"seeds (train.seed): {', '.join(map(str, settings.seeds))}; {settings.nproc} "
        "processes per run (torchrun)",
        *planted_rule_lines(settings),
    ]


@functools.cache
def planted_rule(data: Path, design: Path) -> dict[str, float]:
    return planted_metrics.rule_metrics(data, design)


def planted_rule_lines(settings: RunSettings) -> list[str]:
    """On planted data: the rule's own target AUC, the ceiling for the runs' target AUC."""
    if settings.planted_design is None:
        return []
    rule = planted_rule(settings.data, settings.planted_design)
    return [
        f"planted rule's own target AUC (what learning the pattern exactly gives): "
        f"{rule['rule_target_auc']:.4f} (active users {rule['rule_target_auc_active']:.4f}, "
        f"casual {rule['rule_target_auc_casual']:.4f}; {rule['rule_target_auc_samples']} "
        f"test targets, strength {rule['strength']})"
    ]


def planned(suite: Suite, settings: RunSettings) -> Suite:
    """The variants this invocation runs: --variants (plus their baseline and references)."""
    return suite.subset(list(settings.variants)) if settings.variants else suite


def finished_elsewhere(
    suite: Suite, settings: RunSettings, tables_max_len: int, log=print
) -> list[RunResult]:
    """The finished runs in DIR of the variants this invocation does not run, launched with
    exactly its settings (launch.json): a suite run a few --variants at a time gets one table.
    Runs with other settings, or with undefined metrics, stay out."""
    running = {variant.name for variant in planned(suite, settings).variants}
    results = []
    for seed in settings.seeds:
        for variant in suite.variants:
            if variant.name in running:
                continue
            directory = run_directory(settings, variant, seed)
            metrics = finished_metrics(directory)
            arguments = trainer_arguments(suite, variant, seed, settings, tables_max_len)
            if metrics is None or launched(directory) != {"arguments": arguments,
                                                          "nproc": settings.nproc}:
                continue
            metrics = with_planted_metrics(directory, metrics, settings)
            if metrics is None or undefined_metrics(metrics):
                continue
            results.append(RunResult(variant.name, seed, metrics))
    if results:
        names = sorted({run.variant for run in results})
        log(f"[experiments] in the table too: {len(results)} finished runs of "
            f"{', '.join(names)} in {settings.output} with the same settings")
    return results


def write_results(
    suite: Suite, settings: RunSettings, runs: list[RunResult], failed: list[str]
) -> SuiteReport:
    """DIR/results.md, results.json and the plot over `runs`: a row for every planned variant
    and for each other variant with runs in `runs` (finished_elsewhere)."""
    shown = {variant.name for variant in planned(suite, settings).variants}
    suite = suite.subset(sorted(shown | {run.variant for run in runs}))
    report = SuiteReport.from_runs(suite, runs)
    header = header_lines(suite, settings)
    earlier = sorted({run.variant for run in runs} - shown)
    if earlier:
        header.append(f"also in the table: the runs of {', '.join(earlier)} that this directory "
                      "already held with the same settings (other --variants invocations)")
    if failed:
        header.append(f"failed runs (not in the statistics): {', '.join(failed)}")
    settings.output.mkdir(parents=True, exist_ok=True)
    (settings.output / "results.md").write_text(report.to_markdown(header))
    plot = report.plot(settings.output / f"{suite.name}.png")
    (settings.output / "results.json").write_text(
        json.dumps(
            {
                "suite": suite.name,
                "title": suite.title,
                "header": header,
                "baseline": suite.baseline,
                "runs": [
                    {
                        "variant": run.variant,
                        "seed": run.seed,
                        "metrics": run.metrics,
                        "run_dir": str(
                            run_directory(settings, variant_named(suite, run.variant), run.seed)
                        ),
                    }
                    for run in runs
                ],
                "failed": failed,
                "summary": report.to_dict(),
                "plot": str(plot) if plot else None,
            },
            indent=1,
            default=str,
        )
    )
    return report


def variant_named(suite: Suite, name: str) -> Variant:
    return next(variant for variant in suite.variants if variant.name == name)


def run_suite(suite: Suite, settings: RunSettings, log=print) -> tuple[list[RunResult], list[str]]:
    """Every (variant, seed) of the suite, seed-major so that early results pair up; returns the
    finished runs (with those of `finished_elsewhere`) and the names of the failed ones."""
    plan = [(variant, seed) for seed in settings.seeds
            for variant in planned(suite, settings).variants]
    tables_max_len = FeatureSpec.read(str(settings.data)).max_len
    for variant, seed in plan:  # before any run: not after hours of the others
        arguments = trainer_arguments(suite, variant, seed, settings, tables_max_len)
        check_settings(run_directory(settings, variant, seed), arguments, settings.nproc)
    runs: list[RunResult] = finished_elsewhere(suite, settings, tables_max_len, log)
    failed: list[str] = []
    started = time.monotonic()
    trained_seconds, trained = 0.0, 0
    for index, (variant, seed) in enumerate(plan, start=1):
        directory = run_directory(settings, variant, seed)
        label = f"[{index}/{len(plan)}] {suite.name} {variant.name} seed {seed}"
        metrics = finished_metrics(directory)
        if metrics is not None:
            metrics = with_planted_metrics(directory, metrics, settings)
            if metrics is None:
                failed.append(f"{variant.name}/seed_{seed} (planted metrics)")
                log(f"{label}: finished earlier; planted metrics FAILED")
                continue
            undefined = undefined_metrics(metrics)
            if undefined:
                failed.append(f"{variant.name}/seed_{seed} ({undefined})")
                log(f"{label}: finished earlier with {undefined}")
                continue
            runs.append(RunResult(variant.name, seed, metrics))
            log(f"{label}: skipped, finished earlier (auc={metrics['auc']:.4f})")
            continue
        # The table of every run finished so far, skipped ones included, before hours of this
        # one: a runner killed during it leaves no finished run out of results.md.
        write_results(suite, settings, runs, failed)
        run_start = time.monotonic()
        code = launch(
            trainer_arguments(suite, variant, seed, settings, tables_max_len),
            directory,
            settings.nproc,
            settings.timeout,
        )
        took = time.monotonic() - run_start
        trained_seconds, trained = trained_seconds + took, trained + 1
        remaining = sum(
            finished_metrics(run_directory(settings, v, s)) is None for v, s in plan[index:]
        )
        eta = trained_seconds / trained * remaining
        timing = (
            f"{took:.0f} s; elapsed {minutes(time.monotonic() - started)}, "
            f"ETA {minutes(eta)} for {remaining} more"
        )
        metrics = finished_metrics(directory)
        if code != 0 or metrics is None:
            failed.append(f"{variant.name}/seed_{seed}")
            log(f"{label}: FAILED (exit {code}, log {directory / 'train.log'}) in {timing}")
            continue
        metrics = with_planted_metrics(directory, metrics, settings)
        if metrics is None:
            failed.append(f"{variant.name}/seed_{seed} (planted metrics)")
            log(f"{label}: planted metrics FAILED ({directory / 'planted_metrics.log'})")
            continue
        undefined = undefined_metrics(metrics)
        if undefined:
            failed.append(f"{variant.name}/seed_{seed} ({undefined})")
            log(f"{label}: FAILED, {undefined} in {timing}")
            continue
        runs.append(RunResult(variant.name, seed, metrics))
        target = f" target_auc={metrics['target_auc']:.4f}" if "target_auc" in metrics else ""
        log(
            f"{label}: auc={metrics['auc']:.4f} gauc={metrics['gauc']:.4f} "
            f"logloss={metrics['logloss']:.4f}{target} in {timing}"
        )
        write_results(suite, settings, runs, failed)
    return runs, failed


def parse_arguments(argv: list[str] | None = None) -> tuple[Suite, RunSettings]:
    parser = argparse.ArgumentParser(
        prog="python -m experiments.run",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--data", required=True, help="ETL output root")
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (1..N)")
    parser.add_argument("--output", help="suite directory (default runs/experiments/SUITE)")
    parser.add_argument("--max-len", type=int, help="history length L (default: the suite's)")
    parser.add_argument(
        "--config",
        action="append",
        help="trainer YAML preset(s), in order "
        "(default conf/train/default.yaml), e.g. conf/train/paper.yaml",
    )
    parser.add_argument("--epochs", type=int, help="train.epochs")
    parser.add_argument("--max-steps", type=int, help="train.max_steps (0: whole epochs)")
    parser.add_argument(
        "--variants",
        help="comma-separated subset of the suite's variants (the baseline and the references "
        "of those kept are always run)",
    )
    parser.add_argument("--nproc", type=int, default=2, help="processes per run")
    parser.add_argument("--timeout", type=int, default=6 * 3600, help="seconds per run")
    parser.add_argument(
        "--planted",
        help="planted.json of the raw log: also report the AUC on "
        "the target impressions (experiments/planted_metrics.py)",
    )
    parser.add_argument("overrides", nargs="*", help="trainer key=value, applied last")
    arguments = parser.parse_intermixed_args(argv)
    if arguments.seeds < 1 or arguments.nproc < 1:
        parser.error("--seeds and --nproc must be >= 1")
    overrides = list(arguments.overrides)
    if arguments.epochs is not None:
        overrides.insert(0, f"train.epochs={arguments.epochs}")
    if arguments.max_steps is not None:
        overrides.insert(0, f"train.max_steps={arguments.max_steps}")
    suite = SUITES[arguments.suite]
    variants = tuple(arguments.variants.split(",")) if arguments.variants else None
    if variants:
        try:
            suite.subset(list(variants))
        except ValueError as error:
            parser.error(str(error))
    output = Path(arguments.output or Path("runs") / "experiments" / suite.name)
    settings = RunSettings(
        data=Path(arguments.data).resolve(),
        output=output.resolve(),
        seeds=tuple(range(1, arguments.seeds + 1)),
        configs=tuple(Path(c).resolve() for c in (arguments.config or [DEFAULT_CONFIG])),
        max_len=arguments.max_len,
        overrides=tuple(overrides),
        nproc=arguments.nproc,
        timeout=arguments.timeout,
        planted_design=Path(arguments.planted).resolve() if arguments.planted else None,
        variants=variants,
    )
    return suite, settings


def main(argv: list[str] | None = None) -> int:
    suite, settings = parse_arguments(argv)
    # `kill RUNNER` stops the current run's process group too (launch's cleanup).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    print(
        f"[experiments] {suite.name}: {len(planned(suite, settings).variants)} variants x "
        f"{len(settings.seeds)} seeds -> {settings.output}",
        flush=True,
    )
    try:
        runs, failed = run_suite(suite, settings, log=lambda line: print(line, flush=True))
    except SettingsChanged as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    report_path = settings.output / "results.md"
    write_results(suite, settings, runs, failed)
    print(report_path.read_text())
    if failed:
        print(f"[experiments] {len(failed)} runs failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
