"""The pure DataFrame -> DataFrame transforms on inputs of a few rows built inline."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyspark.sql import Row
from pyspark.testing import assertDataFrameEqual

from etl import negatives, profiles, protocols
from etl.config import load_config
from etl.sampling import DayPool
from etl.sequences import EventChunk, SampleSpec, process

pytestmark = pytest.mark.spark
EVENTS = "user_id long, item_id long, category_id long, behavior int, ts long, " \
         "watch_time float, date string"
D1, D2, D3 = "2017-11-25", "2017-11-26", "2017-11-27"


def events(spark, *rows):
    return spark.createDataFrame(list(rows), EVENTS)


def chunk(*rows) -> EventChunk:
    """Events (user, item, category, behavior, ts, date[, watch_time]), sorted as the Arrow UDF
    gets them."""
    rows = sorted(rows, key=lambda r: (r[0], r[4], r[1], r[3], r[2]))
    columns = list(zip(*[(*row, 0.0)[:7] for row in rows], strict=True))
    return EventChunk(np.array(columns[0]), np.array(columns[1]), np.array(columns[2]),
                      np.array(columns[3], dtype=np.int32), np.array(columns[4]),
                      np.array(columns[6], dtype=np.float32), np.array(columns[5]))


def spec(first=D1, last=D3, max_len=10, top=3, **protocol) -> SampleSpec:
    values = dict(requests="positive", negatives=0, draws=0, uniform=False,
                  exclude_history=False, history_fraction=0.0, replace_probability=0.0,
                  with_watch_time=False)
    values.update(protocol)
    return SampleSpec(first_date=first, last_date=last, max_len=max_len, top_categories=top,
                      behaviors=4, positive_code=1, seed=1, time_zone="Asia/Shanghai",
                      **values)


def test_timeline_keeps_the_last_max_len_events_before_the_day_then_the_day():
    # Before: slice(arr, -n, n) returned [] for a history shorter than n (kept as a property).
    log = chunk(*[(1, 10 + t, 7, 1, t, D1) for t in range(5)], (1, 30, 7, 1, 100, D2),
                (2, 40, 7, 1, 50, D2))
    rows = {(r["user_id"], r["date"]): r for r in process(log, spec(max_len=3), None).to_pylist()}
    assert rows[(1, D2)]["timeline_item_id"] == [12, 13, 14, 30]  # last 3 before, then the day
    assert rows[(2, D2)]["timeline_item_id"] == [40]  # a short history stays whole
    assert rows[(1, D1)]["timeline_item_id"] == [10, 11, 12, 13, 14]


def test_user_days_split_history_at_the_day_boundary():
    log = chunk((1, 10, 100, 1, 30, D1), (1, 11, 100, 1, 20, D1), (1, 12, 101, 1, 90, D2),
                (1, 13, 101, 4, 95, D3), (1, 14, 101, 1, 96, D3))
    rows = {r["date"]: r for r in process(log, spec(first=D2), None).to_pylist()}
    assert set(rows) == {D2, D3}  # D1 is before the run's first day
    assert rows[D2]["timeline_item_id"] == [11, 10, 12]
    assert rows[D3]["timeline_item_id"] == [11, 10, 12, 13, 14]
    assert rows[D3]["request_ts"] == [96] and rows[D3]["request_history_end"] == [4]


def test_profile_counts_only_earlier_days():
    log = chunk((1, 10, 7, 1, 10, D1), (1, 11, 7, 4, 11, D1), (1, 12, 8, 1, 12, D1),
                (1, 13, 9, 1, 90, D2), (1, 14, 9, 1, 91, D2))
    row = process(log, spec(first=D2, last=D2, top=1), None).to_pylist()[0]
    assert row["profile_top_category"] == [7]  # category 9 is the sample day's own
    # pv, cart, fav, buy, events, active days, distinct categories — before the day only.
    expected = [math.log1p(value) for value in (2, 0, 0, 1, 3, 1, 2)]
    assert row["profile_dense"] == pytest.approx(expected, rel=1e-6)


def test_requests_at_the_same_time_share_a_history_end():
    log = chunk((1, 10, 7, 1, 10, D1), (1, 11, 7, 1, 20, D1), (1, 12, 7, 1, 20, D1),
                (1, 13, 7, 2, 30, D1))
    row = process(log, spec(), None).to_pylist()[0]
    assert row["request_ts"] == [10, 20, 20] and row["request_history_end"] == [0, 1, 1]


def test_a_running_watch_hides_itself_and_every_later_event_until_it_ends():
    """Feed logs: an event is in a request's history once ts + watch_time < request ts, and a
    history is a timeline prefix, so the watch running 20-50 also hides the event at 25 (which
    ended at 26); the one running 90-130 (day 1) hides day 1's end from day 2's first request."""
    log = chunk((1, 10, 7, 1, 10, D1, 5.0), (1, 11, 7, 2, 20, D1, 30.0), (1, 12, 7, 1, 25, D1, 1.0),
                (1, 13, 7, 1, 35, D1), (1, 14, 7, 1, 50, D1), (1, 15, 7, 1, 51, D1),
                (1, 16, 7, 2, 90, D1, 40.0), (1, 17, 7, 1, 100, D2), (1, 18, 7, 1, 131, D2))
    rows = {r["date"]: r for r in process(
        log, spec(requests="all", with_watch_time=True), None).to_pylist()}
    assert rows[D1]["request_ts"] == [10, 20, 25, 35, 50, 51, 90]
    # ts < request alone: [0, 1, 2, 3, 4, 5, 6].
    assert rows[D1]["request_history_end"] == [0, 1, 1, 1, 1, 5, 6]
    assert rows[D2]["timeline_ts"] == [10, 20, 25, 35, 50, 51, 90, 100, 131]
    assert rows[D2]["request_history_end"] == [6, 8]
    taobao = process(log, spec(requests="all"), None).to_pylist()  # no watch times: ts alone
    assert [r["request_history_end"] for r in taobao] == [[0, 1, 2, 3, 4, 5, 6], [7, 8]]


def test_a_watch_running_at_midnight_enters_the_profile_of_the_day_after_it_ended():
    """Its event counts on day 2 (it started before), its watch time from day 3 (it ended at
    00:01 on day 2, after that day's midnight: a 00:00:30 request must not see its length)."""
    midnight_d2 = 1511625600  # 2017-11-26 00:00 Asia/Shanghai
    log = chunk((1, 10, 7, 1, midnight_d2 - 43200, D1, 30.0),
                (1, 11, 7, 1, midnight_d2 - 60, D1, 120.0),
                (1, 12, 7, 1, midnight_d2 + 30, D2, 5.0),
                (1, 13, 7, 1, midnight_d2 + 86400 + 30, D3, 5.0))
    rows = {r["date"]: r for r in process(
        log, spec(requests="all", with_watch_time=True), None).to_pylist()}
    events, watch = 4, 7  # positions in profile_dense (pv, cart, fav, buy, events, ...)
    assert rows[D2]["profile_dense"][events] == pytest.approx(math.log1p(2))
    assert rows[D2]["profile_dense"][watch] == pytest.approx(math.log1p(30.0))  # was 150
    assert rows[D3]["profile_dense"][watch] == pytest.approx(math.log1p(155.0))


def test_demographics_follow_the_given_field_order(spark):
    days = spark.createDataFrame([(1, D1), (2, D1)], "user_id long, date string")
    table = spark.createDataFrame([(1, 3, 1)], "user_id long, age_bucket int, gender int")
    result = days.transform(profiles.with_demographics, table, ("gender", "age_bucket"))
    assertDataFrameEqual(
        result,
        [Row(user_id=1, date=D1, profile_demographic=[1, 3]),
         Row(user_id=2, date=D1, profile_demographic=[0, 0])],  # no profile: code 0
    )


def test_pool_is_the_days_events_before_the_request():
    """The pool of a request at t on day D: day D's events (any user, any behavior) with ts < t.
    Before: the items of the days before D, quantised into 65,536 slots."""
    # Day D's events: item 10 twice (a popular item), 11 once, 12 at t = 50 (not before 50).
    pool = DayPool.from_events(
        ts=np.array([10, 20, 30, 50]), user=np.array([1, 2, 3, 1]), item=np.array([10, 11, 10, 12]),
        behavior=np.array([1, 1, 4, 1]), category=np.array([7, 8, 7, 9]),
    )
    requests = 4000
    user, item = np.arange(requests), np.full(requests, 99)
    ts = np.full(requests, 50)
    items, categories = pool.draw(user, ts, item, 5, uniform=False, seed=1)
    assert set(items.ravel()) == {10, 11}  # 12 happens at t, not before
    assert abs((items == 10).mean() - 2 / 3) < 0.02  # exact popularity: 2 of 3 pool events
    assert set(zip(items.ravel(), categories.ravel(), strict=True)) == {(10, 7), (11, 8)}
    distinct, _ = pool.draw(user, ts, item, 5, uniform=True, seed=1)
    assert abs((distinct == 10).mean() - 1 / 2) < 0.02  # uniform over distinct items
    first, _ = pool.draw(user[:3], np.array([10, 11, 21]), item[:3], 5, uniform=False, seed=1)
    assert (first[0] == -1).all()  # the day's first event: an empty pool
    assert set(first[1]) == {10} and set(first[2]) <= {10, 11}
    again, _ = pool.draw(user, ts, item, 5, uniform=False, seed=1)
    assert (again == items).all()  # a hash of (seed, user, ts, item, j): deterministic
    other, _ = pool.draw(user, ts, item, 5, uniform=False, seed=2)
    assert (other != items).any()


@pytest.mark.parametrize("preset", ["cain", "dare", "eta_sdim", "ubr4ctr", "mimn_sim"])
def test_protocol_presets_build_samples(spark, preset):
    config = load_config("taobao", preset)
    protocol = config.protocol
    rows = [(user, 100 + (user * 7 + t) % 40, 1 + (user + t) % 5, 1 + (t % 5 == 4), 1000 * day + t,
             None, date) for user in (1, 2, 3) for day, date in enumerate((D1, D2, D3))
            for t in range(6)]
    log = events(spark, *rows)
    pools = None
    if protocol.draws_per_request:
        pools = spark.sparkContext.broadcast(negatives.collect_pools(log, D1, D3))
    samples = log.transform(
        protocols.samples, pools, protocols.sample_spec(config, D1, D3), 2
    ).transform(protocols.with_split, protocol, D2)
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
        # Every day has samples: a request's pool is its own day's earlier events.
        assert {r["date"] for r in result} == {D1, D2, D3}


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
