"""User profile features for PEG, computed only from the events before the sample day.

    USER_DAY.transform(with_profile, behaviors, top_categories, with_watch_time)
        -> + profile_dense array<float>   (log1p of the statistics named by dense_feature_names)
           profile_top_category array<long> (most-interacted categories/authors, most first,
                                             ties by smaller id; at most top_categories)
    USER_DAY.transform(with_demographics, DEMOGRAPHICS, fields)
        -> + profile_demographic array<int> (codes in `fields` order; 0 = unknown user)

`prior` (timelines.py) holds every event of the user before the sample day, never the day itself,
so no statistic can see the sample's own day.
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F


def dense_feature_names(behaviors: Sequence[str], with_watch_time: bool) -> tuple[str, ...]:
    names = [f"log_{behavior}_count" for behavior in behaviors]
    names += ["log_events", "log_active_days", "log_distinct_categories"]
    if with_watch_time:
        names.append("log_watch_time")
    return tuple(names)


def _count_behavior(events: Column, code: int) -> Column:
    # A closure, not `lambda e, code=code:` — Spark reads a two-argument lambda as (element, index).
    return F.size(F.filter(events, lambda e: e["behavior"] == code))


def with_profile(
    user_days: DataFrame, behaviors: Sequence[str], top_categories: int, with_watch_time: bool
) -> DataFrame:
    prior = F.col("prior")
    categories = F.transform(prior, lambda e: e["category_id"])
    statistics = [_count_behavior(prior, code) for code in range(1, len(behaviors) + 1)]
    statistics += [
        F.size(prior),
        F.size(F.array_distinct(F.transform(prior, lambda e: e["date"]))),
        F.size(F.array_distinct(categories)),
    ]
    if with_watch_time:
        statistics.append(
            F.aggregate(prior, F.lit(0.0).cast("double"), lambda total, e: total + e["watch_time"])
        )
    dense = F.array(*[F.log1p(value.cast("double")).cast("float") for value in statistics])
    # Count each distinct category by filtering the list: quadratic in the user's distinct
    # categories, fine for real histories (hundreds of events); Spark has no built-in array
    # histogram.
    ranked = F.array_sort(
        F.transform(
            F.array_distinct(categories),
            lambda c: F.struct(
                (-F.size(F.filter(categories, lambda x: x == c))).alias("negative_count"),
                c.alias("category_id"),
            ),
        )
    )
    top = F.transform(F.slice(ranked, 1, top_categories), lambda s: s["category_id"])
    return user_days.withColumn("profile_dense", dense).withColumn(
        "profile_top_category", top.cast("array<long>")
    )


def with_demographics(
    user_days: DataFrame, demographics: DataFrame | None, fields: Sequence[str]
) -> DataFrame:
    """Join the static profile table (user_id + one int column per field); empty for Taobao."""
    if demographics is None or not fields:
        return user_days.withColumn("profile_demographic", F.array().cast("array<int>"))
    codes = F.array(*[F.coalesce(F.col(f"demographic_{name}"), F.lit(0)) for name in fields])
    renamed = demographics.select(
        "user_id", *[F.col(name).cast("int").alias(f"demographic_{name}") for name in fields]
    )
    return (
        user_days.join(renamed, "user_id", "left")
        .withColumn("profile_demographic", codes.cast("array<int>"))
        .drop(*[f"demographic_{name}" for name in fields])
    )
