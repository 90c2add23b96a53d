"""Sample protocols: which events become requests and which candidates each request scores.

    sample_spec(config, first_date, last_date) -> sequences.SampleSpec (the protocol's scalars)
    EVENTS.transform(samples, POOLS | None, spec, partitions)
        -> SAMPLES (docs/data.md) without `split` and `profile_demographic`, one row per
           user-day in [first_date, last_date] that keeps at least one request
    SAMPLES.transform(with_split, protocol, train_end_date) -> + split

EVENTS: every event of the users to build, up to last_date (their history included); POOLS: a
Broadcast of sampling.DayPools (None for protocols without sampling).

Presets live in conf/data/protocol/ (cain, dare, eta_sdim, ubr4ctr, mimn_sim, feed_click; see
docs/etl.md). Requests of one user-day share one timeline row; a request's history is the timeline
prefix with ts < request ts (`request_history_end`), so the target is never in its own history;
with watch times, the prefix of events that ended before it (etl/sequences.py).

The work per user runs in numpy (etl/sequences.py) inside an Arrow UDF: the events are
partitioned by user, sorted by (user, ts, item, behavior, category, watch time) and handed over
in chunks of whole users. Negatives come from the request's pool (etl/sampling.py); with
`exclude_history`, items the user interacted with before the request and the positive itself are
removed, duplicates dropped, and the first k kept. A request left without any negative (its pool
is empty or holds only excluded items: a day's first events) is dropped, and so is a user-day
left without requests; one with fewer than k keeps what it has. ubr4ctr's own-history negatives
come from the user's own events of the same day before the request (so they too lie in the
request's pool).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial

import pyarrow as pa
from pyspark import Broadcast
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from etl import sequences
from etl.config import EtlConfig, ProtocolConfig, Sampling, SourceFormat, SplitRule

SORT_ORDER = ("user_id", "ts", "item_id", "behavior", "category_id", "watch_time")


def sample_spec(config: EtlConfig, first_date: str, last_date: str) -> sequences.SampleSpec:
    protocol = config.protocol
    return sequences.SampleSpec(
        first_date=first_date,
        last_date=last_date,
        max_len=config.max_len,
        top_categories=config.top_categories,
        behaviors=len(config.source.behaviors),
        positive_code=config.source.behavior_code(config.source.positive_behavior),
        with_watch_time=config.source.format == SourceFormat.FEED,
        time_zone=config.source.time_zone,
        requests=protocol.requests.value,
        negatives=protocol.negatives,
        draws=protocol.draws_per_request,
        uniform=protocol.sampling == Sampling.UNIFORM,
        exclude_history=protocol.exclude_history,
        history_fraction=protocol.history_fraction,
        replace_probability=protocol.replace_probability,
        seed=config.seed,
    )


def _sample_batches(batches: Iterator[pa.RecordBatch], pools: Broadcast | None,
                    spec: sequences.SampleSpec) -> Iterator[pa.RecordBatch]:
    """Arrow UDF: user-sorted event batches -> SAMPLES batches, processed in chunks that each
    end at a user boundary (a user's events may span input batches)."""
    day_pools = pools.value if pools is not None else None
    for table in sequences.whole_user_tables(batches):
        yield sequences.process(sequences.EventChunk.from_arrow(table), spec, day_pools)


def samples(events: DataFrame, pools: Broadcast | None, spec: sequences.SampleSpec,
            partitions: int) -> DataFrame:
    """EVENTS -> SAMPLES less split and demographics (see the module docstring)."""
    by_user = (
        events.select(*sequences.EVENT_COLUMNS)
        .repartition(partitions, "user_id")
        .sortWithinPartitions(*SORT_ORDER)
    )
    return by_user.mapInArrow(partial(_sample_batches, pools=pools, spec=spec),
                              sequences.SAMPLE_DDL)


def date_split(train_end_date: str) -> Column:
    """SplitRule.DATE's `split`: the days up to train_end_date are train, later ones test."""
    return F.when(F.col("date") <= train_end_date, "train").otherwise("test")


def with_split(
    samples: DataFrame, protocol: ProtocolConfig, train_end_date: str
) -> DataFrame:
    if protocol.split == SplitRule.DATE:
        return samples.withColumn("split", date_split(train_end_date))
    # USER_RECENCY: one row per user; the latest test_fraction of users (by their request time)
    # are test. A global ordering: fine for one row per user.
    recency = Window.orderBy(F.try_element_at("request_ts", F.lit(-1)).desc(), F.col("user_id"))
    rank = F.percent_rank().over(recency)
    split = F.when(rank < protocol.test_fraction, "test").otherwise("train")
    return samples.withColumn("split", split)
