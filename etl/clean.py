"""Raw lines -> canonical events + quarantine: every input row ends in exactly one of the two.

    lines (value: string)
      .transform(parse_taobao | parse_feed)     -> PARSED: raw, user_id, item_id, category_id,
                                                   behavior, ts, watch_time, reason
      .transform(assign_dates, start, end, tz,  -> + date (event day), run_date (attribution;
                 undated_date)                     undated_run_date: rows without a day)
      .transform(mark_duplicates)               -> exact duplicate events get reason "duplicate"
    accepted(...)    -> EVENTS: user_id, item_id, category_id, behavior, ts, watch_time, date
    quarantined(...) -> QUARANTINE: raw, raw_encoding, reason, run_date

Reasons (a fixed vocabulary, counted in the job log): `invalid_utf8` (the line is not valid
UTF-8, checked first: binary input), `malformed_line` (wrong number of fields),
`null_id` (an empty id or timestamp field), `non_numeric` (a field that is not a number),
`negative_id`, `unknown_behavior`, `bad_watch_time`, `timestamp_out_of_range` (outside the
configured days), `duplicate` (the same canonical event again; the first copy is kept),
`late_event` (`--date` runs: an event of an earlier built day that that day's build did not
have, `late_events`).

`raw` is the line as text (`raw_encoding` "utf8"), or for an `invalid_utf8` line its exact bytes
in base64 (`raw_encoding` "base64"): Parquet strings must be valid UTF-8, and readers such as
pyarrow/delta-rs refuse anything else, so undecodable bytes are never stored as a string.

`run_date` attributes a row to the run that owns it: its event day when the timestamp parses and
lies in the range; otherwise (no usable day) the input's main day, `undated_run_date`: the day
holding more than half of the input's dated rows (a day's delivery), else the range's last day
(a log of many days: the run that has seen all of it). So a `--date D` run handles exactly the
rows attributed to D, the union of day-by-day runs over one log equals one full run over it, and
a day's delivery owns its own bad lines. `input_days` counts the rows per day for that choice
(and for the job's reconciliation). Built-in Spark SQL functions only (no Python UDFs).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

EVENT_COLUMNS = ("user_id", "item_id", "category_id", "behavior", "ts", "watch_time", "date")
FEED_HEADER = "user_id,item_id,author_id,click,timestamp,watch_time"
# Unix seconds outside this window cannot be a real log time (and would overflow conversions).
MAX_PLAUSIBLE_TS = 10**11
INTEGER = r"^-?[0-9]+$"
DECIMAL = r"^-?[0-9]+(\.[0-9]*)?$"


def _first_reason(checks: Sequence[tuple[Column, str]]) -> Column:
    # Undecodable bytes first: nothing parsed from such a line can be trusted.
    checks = [(~F.is_valid_utf8(F.col("value")), "invalid_utf8"), *checks]
    reason = F.lit(None).cast("string")
    for failed, name in reversed(checks):
        reason = F.when(failed, F.lit(name)).otherwise(reason)
    return reason


def _raw() -> list[Column]:
    """`raw` and `raw_encoding`: the line as text, or its exact bytes in base64 when they are not
    valid UTF-8 (a Parquet string column must hold valid UTF-8)."""
    valid = F.is_valid_utf8(F.col("value"))
    return [
        F.when(valid, F.col("value")).otherwise(F.base64(F.col("value").cast("binary")))
        .alias("raw"),
        F.when(valid, F.lit("utf8")).otherwise(F.lit("base64")).alias("raw_encoding"),
    ]


def _integer(field: Column) -> Column:
    return F.when(field.rlike(INTEGER), field.try_cast("long"))


def _id_checks(fields: Sequence[Column]) -> list[tuple[Column, str]]:
    return [
        (F.greatest(*[F.coalesce(f == "", F.lit(True)) for f in fields]), "null_id"),
        (F.greatest(*[~f.rlike(INTEGER) | f.try_cast("long").isNull() for f in fields]),
         "non_numeric"),
        (F.greatest(*[f.try_cast("long") < 0 for f in fields]), "negative_id"),
    ]


def parse_taobao(lines: DataFrame, behaviors: Sequence[str]) -> DataFrame:
    """UserBehavior lines `user_id,item_id,category_id,behavior_type,timestamp` -> PARSED.

    `behavior` is the code i + 1 of behaviors[i]; `reason` is null for a row that parsed.
    """
    fields = F.split(F.col("value"), ",", -1)
    part = [F.trim(F.get(fields, i)) for i in range(5)]  # get: null, not an error, past the end
    behavior = F.array_position(F.array(*[F.lit(name) for name in behaviors]), part[3]).cast("int")
    reason = _first_reason(
        [(F.size(fields) != 5, "malformed_line"), *_id_checks([part[0], part[1], part[2], part[4]]),
         (behavior == 0, "unknown_behavior")]
    )
    return lines.select(
        *_raw(),
        _integer(part[0]).alias("user_id"),
        _integer(part[1]).alias("item_id"),
        _integer(part[2]).alias("category_id"),
        behavior.alias("behavior"),
        # A line with the wrong number of fields has no trustworthy timestamp (or day).
        F.when(F.size(fields) == 5, _integer(part[4])).alias("ts"),
        F.lit(None).cast("float").alias("watch_time"),
        reason.alias("reason"),
    )


def parse_feed(lines: DataFrame) -> DataFrame:
    """Feed lines `user_id,item_id,author_id,click,timestamp,watch_time` -> PARSED.

    The header line is dropped (it is not a data row). `category_id` = author, behavior
    impression (1) when click = 0, click (2) when click = 1; watch_time in seconds, >= 0.
    """
    data = lines.where(F.trim(F.col("value")) != FEED_HEADER)
    fields = F.split(F.col("value"), ",", -1)
    part = [F.trim(F.get(fields, i)) for i in range(6)]
    click = _integer(part[3])
    watch = F.when(part[5].rlike(DECIMAL), part[5].try_cast("float"))
    reason = _first_reason(
        [(F.size(fields) != 6, "malformed_line"), *_id_checks([part[0], part[1], part[2], part[4]]),
         (~click.isin(0, 1) | click.isNull(), "unknown_behavior"),
         (watch.isNull() | (watch < 0), "bad_watch_time")]
    )
    return data.select(
        *_raw(),
        _integer(part[0]).alias("user_id"),
        _integer(part[1]).alias("item_id"),
        _integer(part[2]).alias("category_id"),
        (click + 1).cast("int").alias("behavior"),
        F.when(F.size(fields) == 6, _integer(part[4])).alias("ts"),
        watch.alias("watch_time"),
        reason.alias("reason"),
    )


def event_date(ts: Column, time_zone: str) -> Column:
    """Calendar day (yyyy-MM-dd) of unix seconds in `time_zone`; needs a UTC session zone."""
    local = F.from_utc_timestamp(F.timestamp_seconds(ts), time_zone)
    return F.when(ts.between(0, MAX_PLAUSIBLE_TS), F.date_format(local, "yyyy-MM-dd"))


def parse(lines: DataFrame, source_format: str, behaviors: Sequence[str]) -> DataFrame:
    """Lines -> PARSED, by source format."""
    return parse_taobao(lines, behaviors) if source_format == "taobao" else parse_feed(lines)


def input_days(
    lines: DataFrame, source_format: str, behaviors: Sequence[str], start_date: str,
    end_date: str, time_zone: str,
) -> DataFrame:
    """Lines -> (day, rows): the input rows per event day in the range; `day` null for the rows
    without a usable day (no timestamp that parses and lies in the range). One row per day."""
    day = event_date(F.col("ts"), time_zone)
    return (
        parse(lines, source_format, behaviors)
        .select(F.when(day.between(start_date, end_date), day).alias("day"))
        .groupBy("day").agg(F.count(F.lit(1)).alias("rows"))
    )


def undated_run_date(rows_by_day: Mapping[str | None, int], run_last: str, end_date: str) -> str:
    """The run that owns an input's rows without a usable day (`input_days`; None = no day):
    the day holding more than half of the dated rows (the input is that day's delivery, maybe
    with a few early or late rows), else the range's last day `end_date` (a log of many days:
    every day's run reads it, the last one has seen all of it), or the run's own last day
    `run_last` when no row is dated. The same input gives the same owner in every run."""
    dated = {day: rows for day, rows in rows_by_day.items() if day is not None}
    if not dated:
        return run_last
    main = max(dated, key=lambda day: (dated[day], day))
    return main if 2 * dated[main] > sum(dated.values()) else end_date


def assign_dates(
    parsed: DataFrame, start_date: str, end_date: str, time_zone: str,
    undated_date: str | None = None,
) -> DataFrame:
    """PARSED -> + `date` (event day or null) and `run_date`; out-of-range rows get a reason.
    `undated_date`: the run_date of rows without a usable day (default `end_date`)."""
    in_range = F.col("_day").between(start_date, end_date)
    return (
        parsed.withColumn("_day", event_date(F.col("ts"), time_zone))
        .withColumn(
            "reason",
            F.when(
                F.col("reason").isNull() & ~F.coalesce(in_range, F.lit(False)),
                F.lit("timestamp_out_of_range"),
            ).otherwise(F.col("reason")),
        )
        .withColumn("run_date", F.when(in_range, F.col("_day"))
                    .otherwise(F.lit(undated_date or end_date)))
        .withColumn("date", F.when(F.col("reason").isNull(), F.col("_day")))
        .drop("_day")
    )


def mark_duplicates(dated: DataFrame) -> DataFrame:
    """Keep one row per distinct canonical event; the other copies get reason "duplicate".

    The kept copy is the one with the smallest raw line, so reruns keep the same one.
    """
    key = [c for c in EVENT_COLUMNS if c != "watch_time"] + ["watch_time"]
    valid = dated.where(F.col("reason").isNull())
    invalid = dated.where(F.col("reason").isNotNull())
    grouped = valid.groupBy(*key, "run_date").agg(
        F.array_sort(F.collect_list("raw")).alias("raws")
    )
    kept = grouped.select(
        F.col("raws")[0].alias("raw"), F.lit("utf8").alias("raw_encoding"), *key, "run_date",
        F.lit(None).cast("string").alias("reason"),
    )
    copies = grouped.where(F.size("raws") > 1).select(
        F.explode(F.slice("raws", 2, F.size("raws") - 1)).alias("raw"),
        F.lit("utf8").alias("raw_encoding"),
        *key,
        "run_date",
        F.lit("duplicate").alias("reason"),
    )
    return kept.unionByName(copies).unionByName(invalid.select(kept.columns))


def accepted(marked: DataFrame) -> DataFrame:
    """-> EVENTS (docs/data.md)."""
    return marked.where(F.col("reason").isNull()).select(
        F.col("user_id").cast("long"),
        F.col("item_id").cast("long"),
        F.col("category_id").cast("long"),
        F.col("behavior").cast("int"),
        F.col("ts").cast("long"),
        F.col("watch_time").cast("float"),
        F.col("date").cast("string"),
    )


def quarantined(marked: DataFrame) -> DataFrame:
    """-> QUARANTINE (docs/data.md): raw line, its encoding, reason, run_date."""
    return marked.where(F.col("reason").isNotNull()).select(
        F.col("raw").cast("string"), F.col("raw_encoding"), F.col("reason"), F.col("run_date")
    )


def late_events(
    marked: DataFrame, events: DataFrame, run_date: str, since: str, reported: DataFrame
) -> DataFrame:
    """Rows of a day in [since, run_date) (the days already built: `since` is the first) that
    would be accepted but that EVENTS does not hold: reason `late_event`, attributed to
    `run_date` (a run of `run_date` cannot add them to their day; docs/etl.md says how to
    reprocess). Rows EVENTS holds belong to their own day's run and are left out, as are rows of
    days before `since` (before the history the tables hold) and rows an earlier run already
    quarantined as late (`reported`: their `raw`), so a log re-read every day reports a late row
    once, not once a day."""
    earlier = marked.where(F.col("reason").isNull() & (F.col("run_date") >= since)
                           & (F.col("run_date") < run_date))
    built = events.select(*[F.col(name).alias(f"_built_{name}") for name in EVENT_COLUMNS])
    same = [F.col(name).eqNullSafe(F.col(f"_built_{name}")) for name in EVENT_COLUMNS]
    known = reported.select(F.col("raw").alias("_reported_raw")).distinct()
    return (
        earlier.join(built, same, "left_anti")
        .join(known, F.col("raw") == F.col("_reported_raw"), "left_anti")
        .withColumn("reason", F.lit("late_event"))
        .withColumn("run_date", F.lit(run_date))
    )


def for_run_dates(marked: DataFrame, first_date: str, last_date: str) -> DataFrame:
    """Only the rows a run over [first_date, last_date] owns."""
    return marked.where(F.col("run_date").between(first_date, last_date))


def clean(
    lines: DataFrame,
    source_format: str,
    behaviors: Sequence[str],
    start_date: str,
    end_date: str,
    time_zone: str,
    undated_date: str | None = None,
) -> DataFrame:
    """Lines -> marked rows (every input row once, `reason` null for accepted events).
    `undated_date`: the run_date of rows without a usable day (`undated_run_date`; default the
    range's last day)."""
    return (
        parse(lines, source_format, behaviors)
        .transform(assign_dates, start_date, end_date, time_zone, undated_date)
        .transform(mark_duplicates)
    )
