"""The pure DataFrame -> DataFrame transforms on inputs of a few rows built inline."""

from __future__ import annotations

import math

import pytest
from pyspark.sql import Row
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from etl import negatives, profiles, protocols, timelines
from etl.config import Sampling, load_config

pytestmark = pytest.mark.spark
EVENTS = "user_id long, item_id long, category_id long, behavior int, ts long, " \
         "watch_time float, date string"
D1, D2, D3 = "2017-11-25", "2017-11-26", "2017-11-27"


def events(spark, *rows):
    return spark.createDataFrame(list(rows), EVENTS)


def test_last_n_keeps_short_arrays_whole(spark):
    # slice(arr, -n, n) would return [] for the first two rows.
    frame = spark.createDataFrame([([1],), ([1, 2, 3],), ([1, 2, 3, 4, 5],), ([],)], "a array<int>")
    result = frame.select(timelines.last_n(F.col("a"), 3).alias("a"))
    assertDataFrameEqual(result, [Row(a=[1]), Row(a=[1, 2, 3]), Row(a=[3, 4, 5]), Row(a=[])])


def test_user_days_split_history_at_the_day_boundary(spark):
    log = events(
        spark,
        (1, 10, 100, 1, 30, None, D1), (1, 11, 100, 1, 20, None, D1),
        (1, 12, 101, 1, 90, None, D2), (1, 13, 101, 4, 95, None, D3),
    )
    days = log.transform(timelines.user_histories, D3).transform(timelines.user_days, D2, D3)
    result = days.select(
        "date",
        F.transform("prior", lambda e: e["item_id"]).alias("prior"),
        F.transform("day", lambda e: e["item_id"]).alias("day"),
    )
    assertDataFrameEqual(
        result,
        [Row(date=D2, prior=[11, 10], day=[12]), Row(date=D3, prior=[11, 10, 12], day=[13])],
    )


def test_profile_counts_only_earlier_days(spark):
    log = events(
        spark,
        (1, 10, 7, 1, 10, None, D1), (1, 11, 7, 4, 11, None, D1), (1, 12, 8, 1, 12, None, D1),
        (1, 13, 9, 1, 90, None, D2), (1, 14, 9, 1, 91, None, D2),
    )
    days = log.transform(timelines.user_histories, D2).transform(timelines.user_days, D2, D2)
    result = days.transform(profiles.with_profile, ("pv", "cart", "fav", "buy"), 1, False)
    row = result.select("profile_dense", "profile_top_category").first()
    assert row["profile_top_category"] == [7]  # category 9 is the sample day's own
    # pv, cart, fav, buy, events, active days, distinct categories — before the day only.
    expected = [math.log1p(value) for value in (2, 0, 0, 1, 3, 1, 2)]
    assert row["profile_dense"] == pytest.approx(expected, rel=1e-6)


def test_demographics_follow_the_given_field_order(spark):
    days = spark.createDataFrame([(1, D1), (2, D1)], "user_id long, date string")
    table = spark.createDataFrame([(1, 3, 1)], "user_id long, age_bucket int, gender int")
    result = days.transform(profiles.with_demographics, table, ("gender", "age_bucket"))
    assertDataFrameEqual(
        result,
        [Row(user_id=1, date=D1, profile_demographic=[1, 3]),
         Row(user_id=2, date=D1, profile_demographic=[0, 0])],  # no profile: code 0
    )


def test_pool_uses_only_items_seen_before_the_day(spark):
    log = events(
        spark,
        (1, 10, 7, 1, 10, None, D1), (2, 10, 7, 1, 11, None, D1), (2, 11, 8, 1, 12, None, D1),
        (1, 99, 9, 1, 90, None, D2),
    )
    dates = spark.createDataFrame([(D2,)], "date string")
    pool = negatives.item_pool(log, dates, Sampling.POPULARITY, 30, seed=1)
    slots = {row["item_id"]: row["count"] for row in pool.groupBy("item_id").count().collect()}
    assert slots == {10: 20, 11: 10}  # item 99 appears only on the day itself
    uniform = negatives.item_pool(log, dates, Sampling.UNIFORM, 30, seed=1)
    assert sorted(r["count"] for r in uniform.groupBy("item_id").count().collect()) == [15, 15]


@pytest.mark.parametrize("preset", ["cain", "dare", "eta_sdim", "ubr4ctr", "mimn_sim"])
def test_protocol_presets_build_samples(spark, preset):
    config = load_config("taobao", preset)
    protocol = config.protocol
    rows = [(user, 100 + (user * 7 + t) % 40, 1 + (user + t) % 5, 1 + (t % 5 == 4), 1000 * day + t,
             None, date) for user in (1, 2, 3) for day, date in enumerate((D1, D2, D3))
            for t in range(6)]
    log = events(spark, *rows)
    days = (
        log.transform(timelines.user_histories, D3)
        .transform(timelines.user_days, D1, D3)
        .transform(protocols.with_requests, protocol, 1)
        .transform(profiles.with_profile, config.source.behaviors, 3, False)
        .transform(profiles.with_demographics, None, ())
    )
    requests = days.transform(protocols.request_rows)
    pool = negatives.item_pool(log, requests.select("date"), protocol.sampling, 64, config.seed)
    draws = negatives.draw_items(requests, pool, protocol.draws_per_request, 64, config.seed)
    samples = protocols.to_samples(days, draws, protocol, 1, 10, config.seed).transform(
        protocols.with_split, protocol, D2
    )
    result = samples.collect()
    assert result, preset
    for row in result:
        assert sum(row["request_num_candidates"]) == len(row["candidate_label"])
        assert len(row["request_ts"]) == len(row["request_history_end"])
        for ts, end in zip(row["request_ts"], row["request_history_end"], strict=True):
            assert all(t < ts for t in row["timeline_ts"][:end])
    if preset == "mimn_sim":
        assert len(result) == 3 and all(len(r["request_ts"]) == 1 for r in result)
        assert {r["split"] for r in result} <= {"train", "test"}
    else:
        per_request = protocol.negatives + 1
        # A tiny pool may hold fewer than k unseen items; a request keeps at least one negative.
        assert all(2 <= n <= per_request for r in result for n in r["request_num_candidates"])
        assert all(r["candidate_label"].count(1) == len(r["request_ts"]) for r in result)
        # Day 1 has an empty pool; only ubr4ctr can draw from the user's own earlier events.
        expected_days = {D1, D2, D3} if preset == "ubr4ctr" else {D2, D3}
        assert {r["date"] for r in result} == expected_days


def test_stage_progress_reports_the_running_stage(spark):
    import logging
    import threading

    from etl.spark import StageProgress

    progress = StageProgress(spark, logging.getLogger("test"), interval=0.05)
    job = threading.Thread(
        target=lambda: spark.range(0, 60_000_000, 1, 8).selectExpr("sum(hash(id))").collect()
    )
    reports = []
    with progress:
        job.start()
        while job.is_alive():
            reports.append(progress.report())
            job.join(0.02)
    seen = [report for report in reports if report]
    assert any("/8 tasks (" in report for report in seen)  # the 8-task stage, as it ran
    assert progress.report() is None  # nothing running any more
