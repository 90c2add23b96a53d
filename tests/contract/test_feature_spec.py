"""The feature spec: JSON round trip, and a clear refusal of specs from another contract version."""

from __future__ import annotations

import json

import pytest

from contract.feature_spec import SPEC_VERSION, FeatureSpec, FeatureSpecError, SplitStats


def _spec() -> FeatureSpec:
    return FeatureSpec(
        source="taobao",
        protocol="cain",
        behaviors=("pv", "cart"),
        num_users=2,
        num_items=3,
        num_categories=1,
        max_item_id=9,
        max_category_id=4,
        max_len=10,
        short_len=5,
        top_categories=2,
        dense_features=("log_events",),
        splits={"train": SplitStats(dates=("2017-11-26",), requests=1, samples=2, positives=1)},
        file_samples={"date=2017-11-26/part-0.parquet": {"train": 2}},
    )


def test_round_trip(tmp_path):
    spec = _spec()
    spec.write(tmp_path)
    assert FeatureSpec.read(tmp_path) == spec


def test_a_spec_of_an_older_etl_says_to_rebuild(tmp_path):
    payload = json.loads(_spec().to_json())
    payload["version"] = SPEC_VERSION - 1
    (tmp_path / "feature_spec.json").write_text(json.dumps(payload))
    with pytest.raises(FeatureSpecError, match="older ETL .* rebuild them"):
        FeatureSpec.read(tmp_path)


def test_missing_spec_names_the_path(tmp_path):
    with pytest.raises(FeatureSpecError, match="no feature spec at"):
        FeatureSpec.read(tmp_path)
