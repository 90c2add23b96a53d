"""Negative sampling without Python UDFs, deterministic, and blind to the future.

    EVENTS.transform(item_pool, SAMPLE_DATES, sampling, slots, seed)
        -> POOL: date, slot int, item_id long, category_id long
    REQUESTS.transform(draw_items, POOL, draws, slots, seed)
        -> DRAWS: user_id, date, draws array<struct<request int, draw int, item_id long,
                                                     category_id long>> sorted by (request, draw)

    SAMPLE_DATES: date (the days that have requests)
    REQUESTS: user_id, date, request int (index within the day), ts long, item_id long

The pool of day D is built only from events of days before D (so a negative never reveals an item
or a popularity that appears later). It is a table of `slots` entries in which each item fills a
share of the slots proportional to its weight (popularity: its event count before D; uniform: 1),
laid out in a hash order of the item ids. A draw is `slot = pmod(xxhash64(seed, user, ts, item,
draw), slots)` followed by an equi-join on (date, slot), which Spark broadcasts; so the same input
and seed always give the same negatives, whatever the partitioning. Exclusion of the user's own
items and de-duplication happen afterwards, per request (etl/protocols.py); every request draws a
fixed number of items so that request i's draws are `draws[i * n : (i + 1) * n]`.

A day with no earlier events (the first day of the data) has an empty pool: its requests get no
negatives and the protocols drop them (the first day only seeds histories and profiles).
"""

from __future__ import annotations

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from etl.config import Sampling


def item_pool(
    events: DataFrame, sample_dates: DataFrame, sampling: Sampling, slots: int, seed: int
) -> DataFrame:
    daily = events.groupBy("date", "item_id").agg(
        F.count(F.lit(1)).alias("count"), F.max("category_id").alias("category_id")
    )
    targets = sample_dates.select(F.col("date").alias("pool_date")).distinct()
    before = (
        # Tiny left side (a few days): a broadcast nested-loop join on date < pool_date.
        F.broadcast(targets)
        .join(daily, daily["date"] < F.col("pool_date"))
        .groupBy("pool_date", "item_id")
        .agg(F.sum("count").alias("count"), F.max("category_id").alias("category_id"))
    )
    weight = F.col("count") if sampling == Sampling.POPULARITY else F.lit(1).cast("long")
    order = Window.partitionBy("pool_date").orderBy(
        F.xxhash64(F.lit(seed), F.col("item_id")), F.col("item_id")
    )
    total = Window.partitionBy("pool_date")
    weighted = (
        before.withColumn("weight", weight)
        .withColumn("upper", F.sum("weight").over(order.rowsBetween(Window.unboundedPreceding, 0)))
        .withColumn("total", F.sum("weight").over(total))
    )
    # Integer arithmetic: item i owns slots [floor(lower * S / total), floor(upper * S / total)).
    first_slot = F.floor((F.col("upper") - F.col("weight")) * slots / F.col("total")).cast("int")
    end_slot = F.floor(F.col("upper") * slots / F.col("total")).cast("int")
    return weighted.where(end_slot > first_slot).select(
        F.col("pool_date").alias("date"),
        F.explode(F.sequence(first_slot, end_slot - 1)).alias("slot"),
        "item_id",
        "category_id",
    )


def draw_items(
    requests: DataFrame, pool: DataFrame, draws: int, slots: int, seed: int
) -> DataFrame:
    slot = F.pmod(
        F.xxhash64(F.lit(seed), "user_id", "ts", "item_id", F.col("draw")), F.lit(slots)
    ).cast("int")
    drawn = requests.select(
        "user_id", "date", "request", "ts", "item_id",
        F.explode(F.sequence(F.lit(0), F.lit(draws - 1))).alias("draw"),
    ).withColumn("slot", slot)
    joined = drawn.drop("item_id").join(F.broadcast(pool), ["date", "slot"], "left")
    return joined.groupBy("user_id", "date").agg(
        F.array_sort(
            F.collect_list(F.struct("request", "draw", "item_id", "category_id"))
        ).alias("draws")
    )
