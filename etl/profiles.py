"""User profile features for PEG, computed only from the events before the sample day.

    dense_feature_names(behaviors, with_watch_time) -> the names of `profile_dense`, in order:
        log1p of the count of each behavior, of all events, of active days, of distinct
        categories (feed: and of the total watch time, less the watches still running at the
        day's midnight); etl/sequences.py computes them (and
        `profile_top_category`: the most-interacted categories/authors, most first, ties by
        smaller id) from the user's events before the sample day only.
    SAMPLES.transform(with_demographics, DEMOGRAPHICS, fields)
        -> + profile_demographic array<int> (codes in `fields` order; 0 = unknown user)
"""

from __future__ import annotations

from collections.abc import Sequence

from pyspark.sql import DataFrame
from pyspark.sql import functions as F


def dense_feature_names(behaviors: Sequence[str], with_watch_time: bool) -> tuple[str, ...]:
    names = [f"log_{behavior}_count" for behavior in behaviors]
    names += ["log_events", "log_active_days", "log_distinct_categories"]
    if with_watch_time:
        names.append("log_watch_time")
    return tuple(names)


def with_demographics(
    user_days: DataFrame, demographics: DataFrame | None, fields: Sequence[str]
) -> DataFrame:
    """Join the static profile table (user_id + one int column per field; broadcast: one small
    row per user); an empty array for Taobao."""
    if demographics is None or not fields:
        return user_days.withColumn("profile_demographic", F.array().cast("array<int>"))
    codes = F.array(*[F.coalesce(F.col(f"demographic_{name}"), F.lit(0)) for name in fields])
    renamed = demographics.select(
        "user_id", *[F.col(name).cast("int").alias(f"demographic_{name}") for name in fields]
    )
    return (
        user_days.join(F.broadcast(renamed), "user_id", "left")
        .withColumn("profile_demographic", codes.cast("array<int>"))
        .drop(*[f"demographic_{name}" for name in fields])
    )
