"""Per-user time-ordered event lists and the per-(user, day) split into "before" and "during".

    EVENTS.transform(user_histories, last_date)
        -> HISTORY: user_id, events array<EVENT> ascending by (ts, item_id, behavior, ...)
    HISTORY.transform(user_days, first_date, last_date)
        -> USER_DAY: user_id, date, prior array<EVENT> (every event before the day),
                     day array<EVENT> (the day's events)

    EVENT = struct<ts long, item_id long, behavior int, category_id long, watch_time float,
                   date string>

A sample row's timeline is `last_n(prior, max_len) ++ day` (docs/data.md). Everything a request at
time t sees is the prefix of the timeline with ts < t, so the point-in-time rule holds by
construction: `prior` only holds days before the sample day, and a request's history ends at the
first timeline event with ts >= t. Struct field order is the sort order.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

EVENT_FIELDS = ("ts", "item_id", "behavior", "category_id", "watch_time", "date")


def last_n(array: Column, n: int) -> Column:
    """The last n elements (all of them when shorter).

    Not `slice(array, -n, n)`: Spark returns an EMPTY array when the array is shorter than n.
    """
    return F.slice(array, F.greatest(F.size(array) - F.lit(n) + 1, F.lit(1)), F.lit(n))


def event_struct() -> Column:
    return F.struct(
        F.col("ts"),
        F.col("item_id"),
        F.col("behavior"),
        F.col("category_id"),
        # 0.0 where the source has no watch time (docs/data.md: hist_watch_time).
        F.coalesce(F.col("watch_time"), F.lit(0.0)).cast("float").alias("watch_time"),
        F.col("date"),
    )


def user_histories(events: DataFrame, last_date: str) -> DataFrame:
    """EVENTS -> HISTORY over the days up to and including last_date."""
    return (
        events.where(F.col("date") <= last_date)
        .groupBy("user_id")
        .agg(F.array_sort(F.collect_list(event_struct())).alias("events"))
    )


def user_days(histories: DataFrame, first_date: str, last_date: str) -> DataFrame:
    """HISTORY -> USER_DAY for each day in [first_date, last_date] on which the user was active."""
    active_days = F.array_distinct(
        F.transform(
            F.filter("events", lambda e: e["date"].between(first_date, last_date)),
            lambda e: e["date"],
        )
    )
    return (
        histories.select("user_id", "events", F.explode(active_days).alias("date"))
        .select(
            "user_id",
            "date",
            F.filter("events", lambda e: e["date"] < F.col("date")).alias("prior"),
            F.filter("events", lambda e: e["date"] == F.col("date")).alias("day"),
        )
    )
