"""Statistics over seeds, the markdown table and the figures of one suite's runs.

    report = SuiteReport.from_runs(suite, runs)     # runs: RunResult per (variant, seed)
    report.to_markdown(header_lines); report.plot(path)

For every variant and metric (AUC, GAUC, logloss; on planted data also the AUC on the
target impressions, overall and per user type, when every run has it): mean ± standard
deviation over seeds (sample std, n - 1), and the *paired* difference to its reference variant
(the suite's baseline, or the variant's own reference) run with the same seed: variant -
reference per seed, then mean ± std of those differences. The difference **exceeds the seed
spread** when |mean difference| is larger than the seed spread, the larger of the two variants'
standard deviations over seeds: a gain smaller than what changing the seed alone does is not
told apart from noise. With fewer than two
paired seeds there is no spread and the answer is "n/a".

The screen ignores the pairing; the **95 % confidence interval** of the mean paired difference
(Student's t with n - 1 degrees of freedom: mean ± t·std/√n) uses it: a variant that gains
0.001 on every seed while the seeds themselves spread by 0.005 has a narrow interval away from 0.
It assumes the per-seed differences are roughly normal; with 2 seeds t is 12.7, so the interval
is wide unless the differences agree closely.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from experiments.suites import Suite

METRICS = ("auc", "gauc", "logloss")
# On planted data (experiments/planted_metrics.py), when every run has them.
PLANTED_METRICS = ("target_auc", "target_auc_active", "target_auc_casual")
METRIC_TITLES = {
    "auc": "AUC",
    "gauc": "GAUC",
    "logloss": "logloss",
    "target_auc": "target AUC",
    "target_auc_active": "target AUC active",
    "target_auc_casual": "target AUC casual",
}


@dataclass(frozen=True)
class RunResult:
    """Metrics of one finished trainer run (its metrics.json)."""

    variant: str
    seed: int
    metrics: dict[str, Any]


@dataclass(frozen=True)
class Spread:
    """mean and sample standard deviation of n values (std is nan below 2 values)."""

    mean: float
    std: float
    n: int

    @staticmethod
    def of(values: list[float]) -> Spread:
        n = len(values)
        if n == 0:
            return Spread(math.nan, math.nan, 0)
        mean = sum(values) / n
        if n < 2:
            return Spread(mean, math.nan, n)
        variance = sum((value - mean) ** 2 for value in values) / (n - 1)
        return Spread(mean, math.sqrt(variance), n)

    def format(self, digits: int = 4, signed: bool = False) -> str:
        if self.n == 0:
            return "–"
        mean = f"{self.mean:+.{digits}f}" if signed else f"{self.mean:.{digits}f}"
        return mean if math.isnan(self.std) else f"{mean} ± {self.std:.{digits}f}"


# Student's t, 97.5 % quantile, for 1..30 degrees of freedom (beyond: series in 1/df).
T_975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
         2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
         2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t_975(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with `df` degrees of freedom."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= len(T_975):
        return T_975[df - 1]
    z = 1.959964  # Abramowitz & Stegun 26.7.5, three terms: within 0.001 from df = 30 on
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


@dataclass(frozen=True)
class Comparison:
    """A variant minus its reference, paired by seed, for one metric."""

    reference: str
    difference: Spread
    seed_spread: float  # max of the two variants' std over seeds (nan below 2 seeds)

    @property
    def exceeds_seed_spread(self) -> bool | None:
        if self.difference.n < 2 or math.isnan(self.seed_spread):
            return None
        return abs(self.difference.mean) > self.seed_spread

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % confidence interval of the mean paired difference (None below 2 seeds)."""
        n = self.difference.n
        if n < 2:
            return None
        half = t_975(n - 1) * self.difference.std / math.sqrt(n)
        return self.difference.mean - half, self.difference.mean + half

    @property
    def interval_excludes_zero(self) -> bool | None:
        interval = self.interval
        return None if interval is None else interval[0] > 0 or interval[1] < 0

    def format(self, digits: int = 4) -> str:
        """`mean ± std [low, high] (verdict)`: the interval, then the seed-spread screen."""
        verdict = {True: "**yes**", False: "no", None: "n/a"}[self.exceeds_seed_spread]
        interval = self.interval
        shown = "" if interval is None else " [" + ", ".join(
            f"{bound:+.{digits}f}" for bound in interval) + "]"
        return f"{self.difference.format(digits, signed=True)}{shown} ({verdict})"


def paired_comparison(
    variant: dict[int, float], reference: dict[int, float], reference_name: str
) -> Comparison:
    """variant, reference: seed -> metric value; only seeds present in both are paired."""
    seeds = sorted(set(variant) & set(reference))
    difference = Spread.of([variant[seed] - reference[seed] for seed in seeds])
    spreads = [Spread.of([values[seed] for seed in seeds]).std for values in (variant, reference)]
    seed_spread = max(spreads) if seeds and not any(math.isnan(s) for s in spreads) else math.nan
    return Comparison(reference_name, difference, seed_spread)


@dataclass(frozen=True)
class VariantSummary:
    name: str
    model: str
    overrides: tuple[str, ...]
    x: float | None
    seeds: tuple[int, ...]
    metrics: dict[str, Spread]
    comparisons: dict[str, Comparison] | None  # None for a variant compared with nothing

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.model,
            "overrides": list(self.overrides),
            "x": self.x,
            "seeds": list(self.seeds),
            "metrics": {
                name: {"mean": spread.mean, "std": spread.std, "n": spread.n}
                for name, spread in self.metrics.items()
            },
            "comparisons": None
            if self.comparisons is None
            else {
                name: {
                    "reference": comparison.reference,
                    "mean": comparison.difference.mean,
                    "std": comparison.difference.std,
                    "n": comparison.difference.n,
                    "seed_spread": comparison.seed_spread,
                    "exceeds_seed_spread": comparison.exceeds_seed_spread,
                    "interval_95": None if comparison.interval is None
                    else list(comparison.interval),
                    "interval_excludes_zero": comparison.interval_excludes_zero,
                }
                for name, comparison in self.comparisons.items()
            },
        }


@dataclass(frozen=True)
class SuiteReport:
    suite: Suite
    variants: tuple[VariantSummary, ...]
    metric_names: tuple[str, ...] = METRICS

    @staticmethod
    def from_runs(suite: Suite, runs: list[RunResult]) -> SuiteReport:
        planted = [m for m in PLANTED_METRICS if runs and all(m in r.metrics for r in runs)]
        metric_names = (*METRICS, *planted)
        values: dict[str, dict[str, dict[int, float]]] = {
            variant.name: {metric: {} for metric in metric_names} for variant in suite.variants
        }
        for run in runs:
            for metric in metric_names:
                values[run.variant][metric][run.seed] = float(run.metrics[metric])
        summaries = []
        for variant in suite.variants:
            mine = values[variant.name]
            reference = suite.reference_of(variant)
            comparisons = None
            if reference != variant.name:
                comparisons = {
                    metric: paired_comparison(mine[metric], values[reference][metric], reference)
                    for metric in metric_names
                }
            summaries.append(
                VariantSummary(
                    name=variant.name,
                    model=variant.model,
                    overrides=variant.overrides,
                    x=variant.x,
                    seeds=tuple(sorted(mine["auc"])),
                    metrics={
                        metric: Spread.of(list(mine[metric].values())) for metric in metric_names
                    },
                    comparisons=comparisons,
                )
            )
        return SuiteReport(suite, tuple(summaries), metric_names)

    def to_dict(self) -> dict[str, Any]:
        return {
            "metrics": list(self.metric_names),
            "variants": [summary.to_dict() for summary in self.variants],
        }

    def to_markdown(self, header: list[str]) -> str:
        """The table: header lines (data, sizes, seeds) first, then one row per variant."""
        lines = [f"# {self.suite.name}: {self.suite.title}", ""]
        lines += [f"- {line}" for line in header]
        lines += [f"- {note}" for note in self.suite.notes]
        lines += [
            "- Δ = variant − reference, paired by seed, mean ± std over seeds, [the 95 % "
            "confidence interval of the mean Δ] (Student's t over the paired seeds); **yes** when "
            "|mean Δ| exceeds the seed spread (the larger std over seeds of the two variants).",
            "",
        ]
        columns = ["variant", "model", "overrides", "seeds"]
        columns += [METRIC_TITLES[metric] for metric in self.metric_names]
        columns += ["reference"] + [f"Δ{METRIC_TITLES[metric]}" for metric in self.metric_names]
        lines.append("| " + " | ".join(columns) + " |")
        lines.append("|" + "---|" * len(columns))
        for summary in self.variants:
            cells = [
                summary.name,
                summary.model,
                " ".join(f"`{o}`" for o in summary.overrides) or "–",
                str(len(summary.seeds)),
            ]
            cells += [summary.metrics[metric].format() for metric in self.metric_names]
            if summary.comparisons is None:
                cells += ["(baseline)"] + ["–"] * len(self.metric_names)
            else:
                cells.append(summary.comparisons["auc"].reference)
                cells += [summary.comparisons[metric].format() for metric in self.metric_names]
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def plot(self, path: Path) -> Path | None:
        """A figure suite's metrics against its x values (mean ± std over seeds); None for a
        table suite or when no run has finished."""
        if not self.suite.is_figure:
            return None
        points = [s for s in self.variants if s.x is not None and s.metrics["auc"].n]
        if not points:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        shown = [m for m in self.metric_names if m in (*METRICS, "target_auc")]
        figure, axes = plt.subplots(1, len(shown), figsize=(4 * len(shown), 3.4))
        for axis, metric in zip(axes, shown, strict=True):
            xs = [s.x for s in points]
            means = [s.metrics[metric].mean for s in points]
            errors = [
                0.0 if math.isnan(s.metrics[metric].std) else s.metrics[metric].std for s in points
            ]
            axis.errorbar(xs, means, yerr=errors, marker="o", capsize=3)
            axis.set_xlabel(self.suite.x_label)
            axis.set_title(METRIC_TITLES[metric])
            axis.grid(alpha=0.3)
        seeds = max(s.metrics["auc"].n for s in points)
        figure.suptitle(f"{self.suite.name}: mean ± std over {seeds} seeds", fontsize=10)
        figure.tight_layout()
        figure.savefig(path, dpi=110)
        plt.close(figure)
        return path
