"""Sample protocols: which events become requests and which candidates each request scores.

    USER_DAY.transform(with_requests, protocol, positive_code)
        -> keeps rows with >= 1 request, + requests array<EVENT> (ascending; mimn_sim: the user's
           last event, on the user's last day only)
    REQUEST_ROWS = USER_DAY.transform(request_rows)
        -> user_id, date, request int, ts, item_id   (input of negatives.draw_items)
    USER_DAY(+requests, profile_*).transform(to_samples, DRAWS | None, protocol, ...)
        -> SAMPLES (docs/data.md) without `split`
    SAMPLES.transform(with_split, protocol, train_end_date) -> + split

Presets live in conf/data/protocol/ (cain, dare, eta_sdim, ubr4ctr, mimn_sim, feed_click; see
docs/etl.md). Requests of one user-day share one timeline row; a request's history is the timeline
prefix with ts < request ts (`request_history_end`), so the target is never in its own history.

Negative candidates for request i come from its fixed-size chunk of draws (negatives.py); with
`exclude_history`, items the user interacted with before the request (every earlier day, plus the
earlier events of the same day) and the positive itself are removed, duplicates dropped, and the
first k kept. A request left without any negative (the first day of the data has no pool) is
dropped, and so is a user-day left without requests; one with fewer than k keeps what it has.
"""

from __future__ import annotations

from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from etl.config import ProtocolConfig, RequestRule, SplitRule
from etl.timelines import last_n

CANDIDATE = "struct<item_id:bigint,category_id:bigint,label:int>"


def with_requests(user_days: DataFrame, protocol: ProtocolConfig, positive_code: int) -> DataFrame:
    day = F.col("day")
    if protocol.requests == RequestRule.POSITIVE:
        requests = F.filter(day, lambda e: e["behavior"] == positive_code)
    elif protocol.requests in (RequestRule.ALL, RequestRule.LABELED):
        requests = day
    else:  # LAST: the user's very last event, on the user's last active day
        last_day = Window.partitionBy("user_id")
        is_last_day = F.col("date") == F.max("date").over(last_day)
        requests = F.when(is_last_day, F.array(F.try_element_at(day, F.lit(-1)))).otherwise(
            F.array().cast(user_days.schema["day"].dataType)
        )
    return user_days.withColumn("requests", requests).where(F.size("requests") > 0)


def request_rows(user_days: DataFrame) -> DataFrame:
    return user_days.select(
        "user_id", "date", F.posexplode("requests").alias("request", "event")
    ).select(
        "user_id",
        "date",
        F.col("request").cast("int"),
        F.col("event.ts").alias("ts"),
        F.col("event.item_id").alias("item_id"),
    )


def _uniform(seed: int, salt: str, *parts: Column) -> Column:
    """A deterministic U[0, 1) from a hash (no rand(): results must not depend on partitioning)."""
    bits = F.pmod(F.xxhash64(F.lit(seed), F.lit(salt), *parts), F.lit(1 << 52))
    return bits.cast("double") / float(1 << 52)


def _candidate(item: Column, category: Column, label: int | Column) -> Column:
    return F.struct(
        item.cast("long").alias("item_id"),
        category.cast("long").alias("category_id"),
        (label if isinstance(label, Column) else F.lit(label)).cast("int").alias("label"),
    )


def _sampled(request: Column, index: Column, protocol: ProtocolConfig) -> Column:
    """array<long>: request's sampled items from its chunk of draws, after exclusion, at most
    `sampled_per_request`, in draw order. Needs columns draws, seen_before_day, day_items,
    prior_length and the request's `history_end`."""
    draws = protocol.draws_per_request
    chunk = F.slice(F.col("draws"), index * draws + 1, F.lit(draws))
    items = F.filter(F.transform(chunk, lambda d: d["item_id"]), lambda item: item.isNotNull())
    excluded = F.array(request["item_id"])
    if protocol.exclude_history:
        # Every item seen on earlier days, plus the same day's events before the request.
        length = (request["history_end"] - F.col("prior_length")).cast("int")
        excluded = F.concat(F.col("seen_before_day"), F.slice("day_items", F.lit(1), length),
                            excluded)
    return F.slice(F.array_except(items, excluded), 1, protocol.sampled_per_request)


def _category_of(item: Column, request: Column) -> Column:
    return F.try_element_at(request["category_of"], item)


def _own_history_pick(request: Column, j: Column, protocol: ProtocolConfig, seed: int) -> Column:
    """ubr4ctr: with probability history_fraction, an earlier event of another item (uniform
    over the user's events before the request); null otherwise or when there is none."""
    own = request["own"]
    use_own = (_uniform(seed, "own", F.col("user_id"), request["ts"], request["item_id"], j)
               < protocol.history_fraction) & (F.size(own) > 0)
    position = F.floor(
        _uniform(seed, "pick", F.col("user_id"), request["ts"], request["item_id"], j)
        * F.size(own)
    ).cast("int") + 1
    chosen = F.try_element_at(own, position)
    return F.when(use_own, _candidate(chosen["item_id"], chosen["category_id"], 0))


def _candidates(request: Column, protocol: ProtocolConfig, positive_code: int, seed: int
                ) -> Column:
    """array<CANDIDATE> for one materialized request, or null to drop the request."""
    if protocol.requests == RequestRule.LABELED:
        label = (request["behavior"] == positive_code).cast("int")
        return F.array(_candidate(request["item_id"], request["category_id"], label))
    positive = _candidate(request["item_id"], request["category_id"], 1)
    if protocol.draws_per_request == 0:
        return F.array(positive)
    sampled = F.transform(
        request["sampled"], lambda item: _candidate(item, _category_of(item, request), 0)
    )
    if protocol.replace_probability > 0:
        # mimn_sim: the target itself is replaced by a sampled item (label 0) with probability p.
        replace = _uniform(seed, "replace", F.col("user_id"), request["ts"], request["item_id"])
        return F.when(
            (replace < protocol.replace_probability) & (F.size(sampled) > 0), sampled
        ).otherwise(F.array(positive))
    negatives = sampled
    if protocol.history_fraction > 0:
        negatives = F.filter(
            F.transform(
                F.sequence(F.lit(0), F.lit(protocol.negatives - 1)),
                lambda j: F.coalesce(
                    _own_history_pick(request, j, protocol, seed), F.try_element_at(sampled, j + 1)
                ),
            ),
            lambda c: c.isNotNull(),
        )
    # A positive without any negative (the first day has an empty pool) is dropped; one with
    # fewer than k (a tiny catalog, a user who has seen most of it) keeps what it has.
    return F.when(F.size(negatives) > 0, F.concat(F.array(positive), negatives))


def to_samples(
    user_days: DataFrame,
    draws: DataFrame | None,
    protocol: ProtocolConfig,
    positive_code: int,
    max_len: int,
    seed: int,
) -> DataFrame:
    """USER_DAY (+ requests, profile_*) and DRAWS -> SAMPLES without split.

    Built in projections whose heavy columns are each referenced once, so Spark's optimizer
    keeps them as separate steps instead of inlining (and recomputing) them per use.
    """
    profile = ["profile_dense", "profile_top_category", "profile_demographic"]
    rows = user_days
    if draws is not None:
        rows = rows.join(draws, ["user_id", "date"], "left")
    else:
        rows = rows.withColumn(
            "draws", F.array().cast("array<struct<item_id:bigint,category_id:bigint>>")
        )
    recent = last_n(F.col("prior"), max_len)
    rows = rows.select(
        "user_id", "date", "requests", "draws", *profile,
        F.concat(recent, F.col("day")).alias("timeline"),
        F.size(recent).alias("prior_length"),
        F.array_distinct(F.transform("prior", lambda e: e["item_id"])).alias("seen_before_day"),
        F.transform("day", lambda e: e["item_id"]).alias("day_items"),
    ).withColumn("timeline_ts", F.transform("timeline", lambda e: e["ts"]))
    # Step 1: where each request's history ends (its first timeline event at or after its ts).
    rows = rows.withColumn(
        "requests",
        F.transform(
            "requests",
            lambda r: r.withField(
                "history_end", (F.array_position("timeline_ts", r["ts"]) - 1).cast("int")
            ),
        ),
    )
    # Step 2: sampled items (and ubr4ctr's own-history choices) per request.
    if protocol.draws_per_request > 0:
        draws_per_request = protocol.draws_per_request

        def sample(r: Column, index: Column) -> Column:
            chunk = F.slice(F.col("draws"), index * draws_per_request + 1,
                            F.lit(draws_per_request))
            # item -> category of the drawn items (a pool item has one category per day, so
            # the distinct (item, category) pairs have distinct keys).
            category_of = F.map_from_entries(
                F.array_distinct(
                    F.transform(
                        F.filter(chunk, lambda d: d["item_id"].isNotNull()),
                        lambda d: F.struct(d["item_id"], d["category_id"]),
                    )
                )
            )
            with_sample = r.withField("sampled", _sampled(r, index, protocol)).withField(
                "category_of", category_of
            )
            if protocol.history_fraction > 0:
                own = F.filter(F.slice("timeline", F.lit(1), r["history_end"]),
                               lambda e: e["item_id"] != r["item_id"])
                with_sample = with_sample.withField("own", own)
            return with_sample

        rows = rows.withColumn("requests", F.transform("requests", sample))
    # Step 3: candidates; requests without candidates are dropped.
    built = F.filter(
        F.transform(
            "requests",
            lambda r: F.struct(
                r["ts"].alias("ts"),
                r["history_end"].alias("history_end"),
                _candidates(r, protocol, positive_code, seed)
                .cast(f"array<{CANDIDATE}>")
                .alias("candidates"),
            ),
        ),
        lambda r: r["candidates"].isNotNull(),
    )
    rows = rows.select("user_id", "date", "timeline", "timeline_ts", *profile, built.alias("built"))
    rows = rows.where(F.size("built") > 0).withColumn(
        "candidates", F.flatten(F.transform("built", lambda r: r["candidates"]))
    )
    return rows.select(
        F.col("user_id").cast("long"),
        F.col("date"),
        F.transform("timeline", lambda e: e["item_id"]).alias("timeline_item_id"),
        F.transform("timeline", lambda e: e["category_id"]).alias("timeline_category_id"),
        F.transform("timeline", lambda e: e["behavior"]).cast("array<int>").alias("timeline_behavior"),
        F.col("timeline_ts"),
        F.transform("timeline", lambda e: e["watch_time"]).cast("array<float>").alias(
            "timeline_watch_time"
        ),
        F.transform("built", lambda r: r["ts"]).alias("request_ts"),
        F.transform("built", lambda r: r["history_end"]).alias("request_history_end"),
        F.transform("built", lambda r: F.size(r["candidates"])).alias("request_num_candidates"),
        F.transform("candidates", lambda c: c["item_id"]).alias("candidate_item_id"),
        F.transform("candidates", lambda c: c["category_id"]).alias("candidate_category_id"),
        F.transform("candidates", lambda c: c["label"]).alias("candidate_label"),
        *profile,
    )


def with_split(
    samples: DataFrame, protocol: ProtocolConfig, train_end_date: str
) -> DataFrame:
    if protocol.split == SplitRule.DATE:
        split = F.when(F.col("date") <= train_end_date, "train").otherwise("test")
        return samples.withColumn("split", split)
    # USER_RECENCY: one row per user; the latest test_fraction of users (by their request time)
    # are test. A global ordering: fine for one row per user.
    recency = Window.orderBy(F.try_element_at("request_ts", F.lit(-1)).desc(), F.col("user_id"))
    rank = F.percent_rank().over(recency)
    split = F.when(rank < protocol.test_fraction, "test").otherwise("train")
    return samples.withColumn("split", split)
