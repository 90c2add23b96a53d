"""The report's statistics on hand-made numbers: means, paired differences, the seed spread."""

from __future__ import annotations

import math

import pytest

from experiments.report import RunResult, Spread, SuiteReport, paired_comparison, t_975
from experiments.suites import Suite, Variant


def test_spread_is_the_mean_and_sample_std():
    spread = Spread.of([0.70, 0.72, 0.74])
    assert spread.mean == pytest.approx(0.72) and spread.std == pytest.approx(0.02)
    assert spread.n == 3
    single = Spread.of([0.5])
    assert single.mean == 0.5 and math.isnan(single.std)


def test_paired_difference_is_taken_seed_by_seed():
    # The variant is 0.01 better on every seed while the seeds themselves spread by 0.1:
    # the paired difference is exact, and it does not exceed the seed spread.
    baseline = {1: 0.60, 2: 0.70, 3: 0.80}
    variant = {1: 0.61, 2: 0.71, 3: 0.81}
    comparison = paired_comparison(variant, baseline, "base")
    assert comparison.difference.mean == pytest.approx(0.01)
    assert comparison.difference.std == pytest.approx(0.0, abs=1e-12)
    assert comparison.seed_spread == pytest.approx(0.1)
    assert comparison.exceeds_seed_spread is False
    # The pairing tells it apart: every seed agrees, the interval is the point +0.01.
    assert comparison.interval == pytest.approx((0.01, 0.01))
    assert comparison.interval_excludes_zero is True


def test_the_interval_is_students_t_over_the_paired_seeds():
    comparison = paired_comparison({1: 0.72, 2: 0.723, 3: 0.717}, {1: 0.7, 2: 0.7, 3: 0.7}, "b")
    half = 4.303 * 0.003 / math.sqrt(3)  # t(0.975, 2 df) x std / sqrt(n)
    assert comparison.interval == pytest.approx((0.02 - half, 0.02 + half))
    assert comparison.interval_excludes_zero is True
    noisy = paired_comparison({1: 0.71, 2: 0.69, 3: 0.72}, {1: 0.7, 2: 0.7, 3: 0.7}, "b")
    assert noisy.interval[0] < 0 < noisy.interval[1] and noisy.interval_excludes_zero is False


@pytest.mark.parametrize(
    ("df", "quantile"),
    [(1, 12.706), (4, 2.776), (30, 2.042), (31, 2.040), (60, 2.000), (10**6, 1.960)],
)
def test_t_quantiles(df, quantile):
    assert t_975(df) == pytest.approx(quantile, abs=1e-3)


def test_a_gain_larger_than_the_seed_spread_exceeds_it():
    baseline = {1: 0.700, 2: 0.702, 3: 0.698}
    variant = {1: 0.720, 2: 0.725, 3: 0.715}
    comparison = paired_comparison(variant, baseline, "base")
    assert comparison.difference.mean == pytest.approx(0.02)
    assert comparison.seed_spread == pytest.approx(0.005)  # the variant's std, the larger one
    assert comparison.exceeds_seed_spread is True
    # a loss counts the same way
    assert paired_comparison(baseline, variant, "v").exceeds_seed_spread is True


def test_unpaired_seeds_are_left_out_and_one_seed_has_no_verdict():
    comparison = paired_comparison({1: 0.8, 2: 0.9}, {2: 0.7, 3: 0.1}, "base")
    assert comparison.difference.n == 1 and comparison.difference.mean == pytest.approx(0.2)
    assert comparison.exceeds_seed_spread is None
    assert comparison.interval is None and comparison.interval_excludes_zero is None


SUITE = Suite(
    "tiny",
    "a tiny suite",
    baseline="a",
    variants=(Variant("a", "lap", x=0), Variant("b", "lap_tcn", ("model.context_length=3",), x=3)),
    x_label="context length",
)


def runs() -> list[RunResult]:
    numbers = {("a", 1): 0.70, ("a", 2): 0.71, ("b", 1): 0.75, ("b", 2): 0.77}
    return [
        RunResult(variant, seed, {"auc": auc, "gauc": auc - 0.1, "logloss": 1 - auc})
        for (variant, seed), auc in numbers.items()
    ]


def test_report_table_and_summary(tmp_path):
    report = SuiteReport.from_runs(SUITE, runs())
    summary = {variant["name"]: variant for variant in report.to_dict()["variants"]}
    assert summary["a"]["comparisons"] is None  # the baseline
    auc = summary["b"]["comparisons"]["auc"]
    assert auc["mean"] == pytest.approx(0.055) and auc["std"] == pytest.approx(0.005 * math.sqrt(2))
    assert auc["exceeds_seed_spread"] is True  # 0.055 > max(0.0071, 0.0141): the seeds spread less
    logloss = summary["b"]["comparisons"]["logloss"]
    assert logloss["mean"] == pytest.approx(-0.055)
    table = report.to_markdown(["data: somewhere"])
    assert "- data: somewhere" in table
    row = next(line for line in table.splitlines() if line.startswith("| b |"))
    # 2 seeds: t = 12.706, half width 12.706 x 0.0071 / sqrt(2) = 0.0635
    assert "0.7600 ± 0.0141" in row and "+0.0550 ± 0.0071 [-0.0085, +0.1185] (**yes**)" in row
    assert auc["interval_95"] == pytest.approx([-0.00853, 0.11853], abs=1e-5)
    assert auc["interval_excludes_zero"] is False
    assert "(baseline)" in next(line for line in table.splitlines() if line.startswith("| a |"))
    plot = report.plot(tmp_path / "tiny.png")
    assert plot is not None and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_table_suite_has_no_plot(tmp_path):
    table_suite = Suite("t", "t", baseline="a", variants=(Variant("a", "lap"),))
    report = SuiteReport.from_runs(table_suite, [RunResult("a", 1, runs()[0].metrics)])
    assert report.plot(tmp_path / "t.png") is None
