"""Every suite names registered models with overrides their configs accept."""

from __future__ import annotations

import pytest

from experiments.suites import SUITES, Suite, Variant
from model.registry import resolve_config


@pytest.mark.parametrize("name", sorted(SUITES))
def test_every_variant_resolves(name):
    suite = SUITES[name]
    for variant in suite.variants:
        options = {}
        for override in (*suite.overrides, *variant.overrides):
            key, value = override.split("=", 1)
            assert key.startswith("model."), override
            options[key.removeprefix("model.")] = (
                value.strip("[]").split(",") if "[" in value else value
            )
        resolve_config(variant.model, options)
    assert suite.baseline in {variant.name for variant in suite.variants}
    if suite.is_figure:
        assert all(variant.x is not None for variant in suite.variants)


def test_the_paper_suites_are_all_there():
    assert set(SUITES) == {f"table{i}" for i in range(1, 8)} | {"fig5", "fig6", "fig7"}


def test_a_reference_must_exist():
    with pytest.raises(ValueError, match="no variant named"):
        Suite("s", "s", baseline="a", variants=(Variant("a", "lap", reference="missing"),))


def test_a_subset_keeps_the_baseline_and_the_references_it_needs():
    table2 = SUITES["table2"]
    tcn = next(v for v in table2.variants if v.name != table2.baseline and v.reference)
    kept = {v.name for v in table2.subset([tcn.name]).variants}
    assert kept == {tcn.name, tcn.reference, table2.baseline}
    with pytest.raises(ValueError, match="has no variants"):
        table2.subset(["no_such_variant"])
