"""Raw behavior logs -> Delta tables `events`, `quarantine`, `profiles`, `samples`, `state` + spec.

    bash scripts/spark_submit.sh etl/build_sequences.py --input RAW --output ROOT \
        [--source taobao|feed] [--protocol cain|dare|eta_sdim|ubr4ctr|mimn_sim|feed_click] \
        [--date YYYY-MM-DD [--incremental] | --through YYYY-MM-DD] [--max-len 1024] \
        [--short-len 50] [--negatives 19] [--sampling popularity|uniform] [--seed 2017]
    python etl/build_sequences.py ...   (same flags; starts a local Spark with Delta itself)

Without `--date` the whole configured range is (re)built (`--through D`: its days up to D, the
later days' rows left to their own runs as `other_day`); with `--date D` only day D's partitions
are replaced (Delta replaceWhere): D's events and quarantined rows from RAW, then D's samples and
profiles from the `events` table (which holds the earlier days' history: a day missing between
its first day and D - 1 is refused). Running a day twice leaves the same tables; building the
days one by one in order equals one full build. RAW may be the whole log or D's delivery: every
row is accepted, quarantined or counted as another day's (`other_day`, docs/etl.md).
`--date D --incremental` reads only D's events plus the per-user `state` as of D - 1 (etl/state.py)
and gives the same rows; every run leaves `state` as of its last day (docs/etl.md, "Incremental
daily builds"). The date split is rolling: the source's `test_days` days up to the newest day
built so far are test, so a daily run's own day is test and the day before it returns to train
(`resplit`); after the last day, the tables equal one full build's.
Table schemas: docs/data.md; protocols, bad input and cluster use: docs/etl.md.
Exit codes: 0 ok, 2 bad arguments / missing input / a missing earlier day / unwritable output /
no Delta, 3 row counts that do not add up, 4 input rejected (no accepted row, or an accepted share
of the run's input rows below --min-accepted-share, or a user_id on two rows of the demographics):
nothing was written, every table keeps its previous version.
`--check` validates the arguments and input paths without starting Spark (scripts/spark_submit.sh
runs it before spark-submit).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script (spark-submit etl/build_sequences.py)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import json
import logging
import os
import time
import uuid
from datetime import date, timedelta
from urllib.parse import unquote

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from contract import samples as samples_contract
from contract.feature_spec import SPEC_FILE, FeatureSpec, SplitStats
from etl import clean, negatives, profiles, protocols, spark, state
from etl.config import ConfigError, EtlConfig, SourceFormat, SplitRule, load_config

log = logging.getLogger("etl.build_sequences")
TABLES = ("events", "quarantine", "profiles", "samples")
STATE_TABLE = "state"  # not in the feature spec: the ETL's own, the trainer never reads it
# A table property of `events`: the built days that have no event (comma-separated), so that a
# later day's history check (missing_days) does not take them for days never built.
EMPTY_DAYS_PROPERTY = "cain.emptyDays"
EXIT_BAD_ARGUMENTS, EXIT_COUNTS, EXIT_INPUT_REJECTED = 2, 3, 4


class JobError(RuntimeError):
    """A failure with a message for the user and an exit code."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--input", required=True,
                        help="taobao: the CSV file (or a directory of CSVs); feed: the directory "
                             "with events.csv and profiles.csv")
    parser.add_argument("--output", required=True, help="ROOT directory of the Delta tables")
    parser.add_argument("--source", default="taobao", help="conf/data/source/<name>.yaml or a path")
    parser.add_argument("--protocol", default=None,
                        help="conf/data/protocol/<name>.yaml or a path (default: cain for taobao, "
                             "feed_click for feed)")
    parser.add_argument("--date", help="rebuild only this day (YYYY-MM-DD)")
    parser.add_argument("--incremental", action="store_true",
                        help="with --date D: build D from D's events and the `state` table as "
                             "of D - 1 only (the days before must have been built)")
    parser.add_argument("--through",
                        help="build the range's days up to this one (YYYY-MM-DD), e.g. a daily "
                             "pipeline's first run; rows of later days are left to their own "
                             "runs (other_day), not quarantined")
    parser.add_argument("--start-date", help="override the source's first day")
    parser.add_argument("--end-date", help="override the source's last day")
    parser.add_argument("--max-len", type=int, help="lifelong history length (default 1024)")
    parser.add_argument("--short-len", type=int, help="short-term window (default 50)")
    parser.add_argument("--negatives", type=int, help="negatives per positive (protocol's k)")
    parser.add_argument("--sampling", choices=["popularity", "uniform"])
    parser.add_argument("--top-categories", type=int)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--files-per-day", type=int, default=2,
                        help="files per day partition (the trainer splits files among ranks)")
    parser.add_argument("--shuffle-partitions", type=int, default=None,
                        help="spark.sql.shuffle.partitions (default: sized from a local input, "
                             "see sized_shuffle_partitions; a --conf given to spark-submit wins)")
    parser.add_argument("--min-accepted-share", type=float, default=0.5,
                        help="refuse to write anything (exit 4) when fewer than this share of the "
                             "run's input rows are accepted events, or none is (default 0.5; "
                             "with --date D and 0, a day without events is built empty)")
    parser.add_argument("--check", action="store_true",
                        help="only validate the arguments and input paths (no Spark), exit 0/2")
    return parser.parse_args(argv)


def config_from_args(args: argparse.Namespace) -> EtlConfig:
    protocol = args.protocol or ("feed_click" if args.source == "feed" else "cain")
    return load_config(
        args.source,
        protocol,
        {
            "source.start_date": args.start_date,
            "source.end_date": args.end_date,
            "protocol.negatives": args.negatives,
            "protocol.sampling": args.sampling,
            "max_len": args.max_len,
            "short_len": args.short_len,
            "top_categories": args.top_categories,
            "seed": args.seed,
        },
    )


def _is_local(path: str) -> bool:
    return "://" not in path or path.startswith("file://")


def _local(path: str) -> Path:
    return Path(path.removeprefix("file://"))


# Raw input bytes per shuffle partition. The samples stage multiplies rows (cain: 20 candidates
# per pv, each a draw row before aggregation): at 8 partitions a 10M-event log (290 MB) put ~20M
# draw rows into one aggregation task and ran a 4 GiB local JVM out of heap.
INPUT_BYTES_PER_SHUFFLE_PARTITION = 4 * 2**20
MIN_SHUFFLE_PARTITIONS = 8  # a few partitions beat many tiny tasks on a laptop


def sized_shuffle_partitions(paths: list[str | None]) -> int | None:
    """spark.sql.shuffle.partitions for local inputs of this size; None when not all are local."""
    total = 0
    for path in filter(None, paths):
        if not _is_local(path):
            return None
        local = _local(path)
        files = [local] if local.is_file() else [f for f in local.rglob("*") if f.is_file()]
        total += sum(file.stat().st_size for file in files)
    return max(MIN_SHUFFLE_PARTITIONS, -(-total // INPUT_BYTES_PER_SHUFFLE_PARTITION))


def check_paths(config: EtlConfig, input_path: str, output: str) -> tuple[str, str | None]:
    """-> (events input, demographics input or None); clear errors before Spark starts."""
    if config.source.format == SourceFormat.FEED:
        events_input, profiles_input = f"{input_path}/events.csv", f"{input_path}/profiles.csv"
    else:
        events_input, profiles_input = input_path, None
    if _is_local(input_path):
        for path in filter(None, (events_input, profiles_input)):
            if not _local(path).exists():
                raise JobError(f"input not found: {path}")
    if _is_local(output):
        root = _local(output)
        try:
            root.mkdir(parents=True, exist_ok=True)
            probe = root / f".write-probe-{uuid.uuid4().hex}"
            probe.write_text("")
            probe.unlink()
        except OSError as error:
            raise JobError(f"output {output} is not writable: {error}") from error
    return events_input, profiles_input


def run_dates(config: EtlConfig, day: str | None, through: str | None = None) -> tuple[str, str]:
    """The run's first and last day: the range, a day (`--date`) or the range up to `through`."""
    if day is None and through is None:
        return config.source.start_date, config.source.end_date
    flag, value = ("--date", day) if day is not None else ("--through", through)
    try:
        date.fromisoformat(value)
    except ValueError as error:
        raise JobError(f"{flag} {value!r}: {error}") from error
    if not config.source.start_date <= value <= config.source.end_date:
        raise JobError(
            f"{flag} {value} is outside the configured range "
            f"{config.source.start_date}..{config.source.end_date}"
        )
    if day is None:
        return config.source.start_date, value
    if config.protocol.requests.value == "last":
        raise JobError(f"protocol {config.protocol.name} builds the whole range only (no --date)")
    return day, day


def stage(name: str, started: float, **counts: object) -> None:
    details = ", ".join(f"{key}={value}" for key, value in counts.items())
    log.info("%-11s %6.1fs  %s", name, time.time() - started, details)


def check_accepted(
    by_reason: dict[str | None, int], min_share: float, other_day: int = 0,
    allow_empty: bool = False,
) -> None:
    """Refuse a run whose input is mostly (or entirely) rejected: garbage, an empty file or the
    wrong format must never replace good tables. `by_reason`: the run's rows per reason, None =
    accepted; `other_day`: the input's rows left to other days' runs (in the message only).
    `allow_empty` (a day run with --min-accepted-share 0 after a built day): no accepted row is
    an empty day, built as such."""
    input_rows = sum(by_reason.values())
    accepted_rows = by_reason.get(None, 0)
    share = accepted_rows / input_rows if input_rows else 0.0
    if (accepted_rows > 0 or allow_empty) and share >= min_share:
        return
    rejected = sorted(((k, v) for k, v in by_reason.items() if k), key=lambda kv: str(kv[0]))
    why = "no accepted row" if accepted_rows == 0 else (
        f"accepted share {share:.1%} < --min-accepted-share {min_share:g}")
    raise JobError(
        f"input rejected ({why}), nothing written: every table keeps its current version. "
        f"input_rows={input_rows} accepted={accepted_rows} quarantined by reason: "
        + (", ".join(f"{reason}={count}" for reason, count in rejected) or "none (empty input)")
        + (f"; other_day={other_day} rows of other days (left to their own day's runs)"
           if other_day else ""),
        exit_code=EXIT_INPUT_REJECTED,
    )


def replaced_versions(spark_session: SparkSession, root: str) -> dict[str, int]:
    """The current Delta version of each existing table under ROOT (a rebuild replaces them)."""
    versions = {}
    for name in TABLES:
        version = spark.table_version(spark_session, f"{root}/{name}")
        if version is not None:
            versions[name] = version
    return versions


def build_events(
    spark_session: SparkSession, config: EtlConfig, events_input: str, root: str,
    first: str, last: str, files: int, min_accepted_share: float = 0.0,
    history_start: str | None = None, allow_empty: bool = False,
) -> dict[str, int]:
    """Stage 1: raw lines -> events + quarantine for the run's days; checks the accepted share
    before writing anything and the row invariant after writing. The run owns the input rows
    attributed to its days (clean.undated_run_date for rows without a day); `history_start`: the
    first day `events` holds, when before `first`: the input's events of the days from it to
    `first` that the table lacks are quarantined as `late_event`. The other rows are other days'
    (`other_day`: counted, left to their own day's runs). `allow_empty`: see check_accepted.
    -> the Delta version of each table that existed before this run (they are being replaced)."""
    started = time.time()
    source = config.source
    lines = spark_session.read.text(events_input)
    rows_by_day = {
        row["day"]: row["rows"]
        for row in clean.input_days(lines, source.format.value, source.behaviors,
                                    source.start_date, source.end_date,
                                    source.time_zone).collect()  # one row per day
    }
    undated_date = clean.undated_run_date(rows_by_day, last, source.end_date)
    owned_rows = sum(rows for day, rows in rows_by_day.items()
                     if first <= (day or undated_date) <= last)
    cleaned = clean.clean(lines, source.format.value, source.behaviors, source.start_date,
                          source.end_date, source.time_zone, undated_date)
    marked = cleaned.transform(clean.for_run_dates, first, last)
    if history_start is not None and history_start < first:
        built = built_events(spark_session, root, first)
        reported = reported_late_events(spark_session, root, first)
        marked = marked.unionByName(
            cleaned.transform(clean.late_events, built, first, history_start, reported))
    marked = marked.persist()
    by_reason = {
        row["reason"]: row["count"]
        for row in marked.groupBy("reason").count().collect()  # <= 11 rows
    }
    input_rows = sum(rows_by_day.values())
    other_day = input_rows - owned_rows - by_reason.get("late_event", 0)
    try:
        check_accepted(by_reason, min_accepted_share, other_day, allow_empty)
    except JobError:
        marked.unpersist()
        raise
    previous = replaced_versions(spark_session, root)
    if previous:
        log.info("replacing days %s..%s of existing tables: %s", first, last,
                 ", ".join(f"{name} version {version}" for name, version in previous.items()))
    spark.write_delta(clean.accepted(marked), f"{root}/events", "date",
                      f"date >= '{first}' AND date <= '{last}'", files,
                      ("user_id", "ts", "item_id", "behavior"))
    spark.write_delta(clean.quarantined(marked), f"{root}/quarantine", "run_date",
                      f"run_date >= '{first}' AND run_date <= '{last}'", 1, ("raw", "reason"),
                      merge_schema=True)
    marked.unpersist()
    written = {
        row["date"]: row["count"]
        for row in spark.read_delta(spark_session, f"{root}/events").where(
            F.col("date").between(first, last)).groupBy("date").count().collect()  # per day
    }
    record_empty_days(spark_session, root, first, last, set(written))
    accepted_rows = sum(written.values())
    quarantined_rows = spark.read_delta(spark_session, f"{root}/quarantine").where(
        F.col("run_date").between(first, last)).count()
    reasons = {k: v for k, v in sorted(by_reason.items(), key=lambda kv: str(kv[0])) if k}
    stage("clean", started, input_rows=input_rows, accepted=accepted_rows,
          quarantined=quarantined_rows, other_day=other_day, **reasons)
    if other_day:
        others = sorted((day or f"none (-> {undated_date})", rows)
                        for day, rows in rows_by_day.items()
                        if not first <= (day or undated_date) <= last)
        log.info("other_day: rows of other days, left to their own day's runs (late_event rows "
                 "excepted), by day: %s", ", ".join(f"{day}={rows}" for day, rows in others))
    if input_rows != accepted_rows + quarantined_rows + other_day:
        raise JobError(
            f"row invariant broken: input {input_rows} != accepted {accepted_rows} + "
            f"quarantined {quarantined_rows} + other_day {other_day}", exit_code=EXIT_COUNTS,
        )
    return previous


def days_between(first: str, last: str) -> list[str]:
    """Every day from `first` to `last`, both included (yyyy-MM-dd)."""
    start = date.fromisoformat(first)
    return [(start + timedelta(days=offset)).isoformat()
            for offset in range((date.fromisoformat(last) - start).days + 1)]


def empty_days(spark_session: SparkSession, root: str) -> set[str]:
    """The built days without events, as recorded by record_empty_days."""
    from delta.tables import DeltaTable

    path = f"{root}/events"
    if not DeltaTable.isDeltaTable(spark_session, path):
        return set()
    properties = DeltaTable.forPath(spark_session, path).detail().first()["properties"] or {}
    return set(filter(None, properties.get(EMPTY_DAYS_PROPERTY, "").split(",")))


def record_empty_days(
    spark_session: SparkSession, root: str, first: str, last: str, written: set[str]
) -> None:
    """Record the days of [first, last] without events (`written`: those with events) in the
    `events` table's EMPTY_DAYS_PROPERTY; a commit only when the set changes."""
    recorded = empty_days(spark_session, root)
    run_days = days_between(first, last)
    updated = (recorded - set(run_days)) | {day for day in run_days if day not in written}
    if updated != recorded:
        spark_session.sql(f"ALTER TABLE delta.`{root}/events` SET TBLPROPERTIES "
                          f"('{EMPTY_DAYS_PROPERTY}' = '{','.join(sorted(updated))}')")


def built_days(spark_session: SparkSession, root: str) -> list[str]:
    """The days built so far, sorted: those `events` holds and the recorded empty days."""
    path = f"{root}/events"
    if spark.table_version(spark_session, path) is None:
        return []
    dates = {row["date"] for row in
             spark.read_delta(spark_session, path).select("date").distinct().collect()}
    return sorted(dates | empty_days(spark_session, root))


def missing_days(built: list[str], day: str) -> list[str]:
    """The days between the first of `built` and the day before `day` that are not built."""
    earlier = {built_day for built_day in built if built_day < day}
    if not earlier:
        return []
    return [d for d in days_between(min(earlier), previous_day(day)) if d not in earlier]


def check_history(built: list[str], day: str) -> None:
    """A day run reads its history from `events`: refuse it when an earlier day is missing."""
    missing = missing_days(built, day)
    if not missing:
        return
    shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10
                                       else "")
    raise JobError(
        f"--date {day}: the events table lacks {len(missing)} day"
        f"{'s' if len(missing) > 1 else ''} between its first day {built[0]} and "
        f"{previous_day(day)}: {shown}; day {day}'s timelines and profiles would miss their "
        f"events, nothing written. Build them first, in order (--date {missing[0]}, then each "
        f"later day up to {day}), or run a full build up to it (no --date, --through {day}); a "
        "day that has no event at all is built empty with --date DAY --min-accepted-share 0")


def built_events(spark_session: SparkSession, root: str, before: str) -> DataFrame:
    """The `events` table's rows of the days before `before` (none when there is no table)."""
    path = f"{root}/events"
    if spark.table_version(spark_session, path) is None:
        return spark_session.createDataFrame([], ", ".join(
            f"{name} {kind}" for name, kind in zip(clean.EVENT_COLUMNS, (
                "bigint", "bigint", "bigint", "int", "bigint", "float", "string"), strict=True)))
    return spark.read_delta(spark_session, path).where(F.col("date") < before)


def reported_late_events(spark_session: SparkSession, root: str, before: str) -> DataFrame:
    """The `quarantine` rows of runs before `before` with reason late_event (raw only)."""
    path = f"{root}/quarantine"
    if spark.table_version(spark_session, path) is None:
        return spark_session.createDataFrame([], "raw string")
    return spark.read_delta(spark_session, path).where(
        (F.col("reason") == "late_event") & (F.col("run_date") < before)).select("raw")


def read_demographics(
    spark_session: SparkSession, profiles_input: str | None
) -> tuple[DataFrame | None, tuple[str, ...]]:
    """The demographics (feed: profiles.csv) as (user_id, one int column per field), fields
    sorted; a JobError (exit 4, nothing written yet) when a user_id is on more than one row:
    the samples' left join would duplicate every sample of that user."""
    if profiles_input is None:
        return None, ()
    table = spark_session.read.option("header", True).csv(profiles_input)
    # Sorted: feature_spec.json stores `demographics` with sorted keys, and profile_demographic
    # follows the spec's order.
    fields = tuple(sorted(name for name in table.columns if name != "user_id"))
    typed = table.select(
        F.col("user_id").try_cast("long").alias("user_id"),
        *[F.greatest(F.col(name).try_cast("int"), F.lit(0)).alias(name) for name in fields],
    ).where(F.col("user_id").isNotNull())
    repeated = typed.groupBy("user_id").count().where(F.col("count") > 1)
    examples = repeated.orderBy("user_id").limit(5).collect()
    if examples:
        users = repeated.count()
        raise JobError(
            f"input rejected, nothing written: {users} user_id on more than one row of "
            f"{profiles_input} (each would duplicate every sample of the user), e.g. "
            + ", ".join(f"{row['user_id']} ({row['count']} rows)" for row in examples)
            + ": keep one row per user", exit_code=EXIT_INPUT_REJECTED)
    return typed, fields


def build_samples(
    spark_session: SparkSession, config: EtlConfig, root: str, first: str, last: str,
    demographics: DataFrame | None, demographic_fields: tuple[str, ...], files: int,
    train_end: str, prior: DataFrame | None = None,
) -> None:
    """Stage 2: events (all days up to `last`) -> samples + profiles for [first, last], the
    days up to `train_end` in the train split (SplitRule.DATE). With `prior` (STATE as of the
    day before `first` == `last`): only that day's events."""
    started = time.time()
    protocol = config.protocol
    events = spark.read_delta(spark_session, f"{root}/events").where(F.col("date") <= last)
    if prior is not None:
        events = events.where(F.col("date") == first)
    history_events = events
    if first > config.source.start_date and prior is None:
        # A day run: only the users active in the run's days need their earlier history.
        active = events.where(F.col("date").between(first, last)).select("user_id").distinct()
        history_events = events.join(active, "user_id", "left_semi")
    spec = protocols.sample_spec(config, first, last)
    pools_broadcast = None
    if spec.draws > 0:
        pools = negatives.collect_pools(events, first, last)
        pools_broadcast = spark_session.sparkContext.broadcast(pools)
        log.info("negative pools: %d days, %d events", len(pools.days), pools.events)
    partitions = int(spark_session.conf.get("spark.sql.shuffle.partitions"))
    if prior is None:
        built = history_events.transform(protocols.samples, pools_broadcast, spec, partitions)
    else:
        built = events.transform(state.samples_with_prior, prior, pools_broadcast, spec,
                                 partitions)
    samples = (
        built.transform(profiles.with_demographics, demographics, demographic_fields)
        .transform(protocols.with_split, protocol, train_end)
    )
    contract_columns = [F.col(c.name).cast(c.spark_type) for c in samples_contract.COLUMNS]
    spark.write_delta(samples.select(*contract_columns), f"{root}/samples", "date",
                      f"date >= '{first}' AND date <= '{last}'", files, ("user_id",))
    if pools_broadcast is not None:
        pools_broadcast.unpersist()
    written = spark.read_delta(spark_session, f"{root}/samples").where(
        F.col("date").between(first, last))
    spark.write_delta(
        written.select("user_id", "date", "profile_dense", "profile_top_category",
                       "profile_demographic"),
        f"{root}/profiles", "date", f"date >= '{first}' AND date <= '{last}'", files,
        ("user_id",),
    )
    totals = written.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.size("request_ts")).alias("requests"),
        F.sum(F.size("candidate_label")).alias("candidates"),
        F.sum(F.aggregate("candidate_label", F.lit(0).cast("long"),
                          lambda a, x: a + x)).alias("pos"),
    ).first()
    requested = requested_count(events, config, first, last)
    # Requests left without a negative (their pool is empty or all excluded: a day's first
    # events) are dropped; so are user-days left without requests.
    stage("samples", started, user_days=totals["rows"], requests=totals["requests"],
          candidates=totals["candidates"], positives=totals["pos"],
          dropped_requests=requested - (totals["requests"] or 0))


def resplit(
    spark_session: SparkSession, config: EtlConfig, root: str, first: str, last: str,
    train_end: str,
) -> None:
    """The rolling date split (SplitRule.DATE) on the days this run did not write: days up to
    `train_end` are train, later ones test. A daily run of a new newest day moves the day(s)
    before it from test back to train (a Delta UPDATE that rewrites only their files)."""
    if config.protocol.split != SplitRule.DATE:
        return
    from delta.tables import DeltaTable

    path = f"{root}/samples"
    # Spelled out per split value (not `split != rule`) so that Delta's data skipping can pass
    # over files whose statistics say all their rows have the right split.
    train_days = F.col("date") <= train_end
    stale = ~F.col("date").between(first, last) & (
        (train_days & (F.col("split") == "test")) | (~train_days & (F.col("split") == "train")))
    moved = sorted({(row["date"], row["split"]) for row in spark.read_delta(spark_session, path)
                    .where(stale).select("date", "split").distinct().collect()})  # a row per day
    if not moved:
        return
    DeltaTable.forPath(spark_session, path).update(stale,
                                                   {"split": protocols.date_split(train_end)})
    log.info("re-split (test days up to the newest built day): %s",
             ", ".join(f"{day} {split} -> {'train' if split == 'test' else 'test'}"
                       for day, split in moved))  # a stale day's split flips


def previous_day(day: str) -> str:
    return (date.fromisoformat(day) - timedelta(days=1)).isoformat()


# Delta operations that rewrite files but no row: the state they leave is the one before them.
MAINTENANCE_OPERATIONS = ("OPTIMIZE", "VACUUM START", "VACUUM END", "SET TBLPROPERTIES",
                          "UNSET TBLPROPERTIES", "REORG")


def state_history(spark_session: SparkSession, path: str) -> list[tuple[int, dict]]:
    """(version, the userMetadata of its commit: as_of, source, max_len; {"as_of":
    state.MAINTENANCE} for an OPTIMIZE, VACUUM, ... commit; {} for another commit) of the
    `state` table, newest first; [] when there is no table."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark_session, path):
        return []
    rows = DeltaTable.forPath(spark_session, path).history().select(
        "version", "userMetadata", "operation").collect()  # one row per commit
    history = []
    for row in sorted(rows, key=lambda r: -r["version"]):
        try:
            metadata = json.loads(row["userMetadata"] or "{}")
        except ValueError:
            metadata = {}
        if not metadata and row["operation"] in MAINTENANCE_OPERATIONS:
            metadata = {"as_of": state.MAINTENANCE}
        history.append((int(row["version"]), metadata if isinstance(metadata, dict) else {}))
    return history


def state_metadata(config: EtlConfig, as_of: str) -> dict:
    """What a `state` commit records: its day and the settings its rows depend on."""
    return {"as_of": as_of, "source": config.source.format.value,
            "behaviors": list(config.source.behaviors), "max_len": config.max_len}


def prior_state_version(
    spark_session: SparkSession, config: EtlConfig, root: str, day: str
) -> int | None:
    """The `state` version an incremental run of `day` starts from (None: the range's first day,
    no history); a JobError when the state as of the day before is not there."""
    if day == config.source.start_date:
        return None
    before = previous_day(day)
    history = state_history(spark_session, f"{root}/{STATE_TABLE}")
    days = [(v, m.get("as_of")) for v, m in history]
    version = state.version_as_of(days, before)
    if version is None:
        latest = next((day for _, day in days if day != state.MAINTENANCE), None)
        if latest is None and history:
            latest = "unknown (a commit that is not this job's changed the table)"
        raise JobError(
            f"--incremental --date {day} needs the state as of {before}, but "
            + (f"the newest state of {root}/{STATE_TABLE} is as of {latest}" if history else
               f"{root}/{STATE_TABLE} does not exist")
            + ": build the days before in order (backfill with --date ... --incremental from "
            "the day after the newest state), or run a full build (no --date) or a --date "
            f"{before} run without --incremental, which write the state as of their last day")
    found = dict(history)[version]
    expected = state_metadata(config, before)
    changed = [key for key in ("source", "behaviors", "max_len") if found.get(key) != expected[key]]
    if changed:
        raise JobError(
            f"the state as of {before} was built with other settings ("
            + ", ".join(f"{key} {found.get(key)} != {expected[key]}" for key in changed)
            + "): run a full build (no --date) or a --date run without --incremental first")
    return state.readable_version(days, version)


def read_state(spark_session: SparkSession, root: str, version: int | None) -> DataFrame:
    if version is None:
        return spark_session.createDataFrame([], state.STATE_DDL)
    return (spark_session.read.format("delta").option("versionAsOf", version)
            .load(f"{root}/{STATE_TABLE}"))


def build_state(
    spark_session: SparkSession, config: EtlConfig, root: str, first: str, last: str,
    prior_version: int | None = None, incremental: bool = False,
) -> None:
    """Stage 3: the `state` table as of `last`. A full or day run folds every event up to `last`
    and replaces the table; an incremental run folds the day into the state as of the day before
    (version `prior_version`, None: empty) and MERGEs the day's users in. Each commit records
    state_metadata (`{"as_of": last, ...}`) as its userMetadata (state_history)."""
    started = time.time()
    path = f"{root}/{STATE_TABLE}"
    spec = protocols.sample_spec(config, first, last)
    partitions = int(spark_session.conf.get("spark.sql.shuffle.partitions"))
    events = spark.read_delta(spark_session, f"{root}/events")
    metadata = json.dumps(state_metadata(config, last))
    if not incremental:
        rows = events.where(F.col("date") <= last).transform(state.build, spec, partitions)
        spark.write_state(rows, path, metadata)
        stage("state", started, as_of=last, mode="rebuilt")
        return
    prior = read_state(spark_session, root, prior_version)
    day_rows = events.where(F.col("date") == last).transform(state.advance, prior, spec,
                                                             partitions)
    history = state_history(spark_session, path)
    if prior_version is not None and history and history[0][0] == prior_version:
        spark.merge_state(spark_session, day_rows, path, metadata)
        mode = "merged"
    else:
        # The first day (no earlier state), or a rerun: the newest version is not the one this
        # run starts from, so the table is replaced by that version with the day folded in.
        rest = prior.join(day_rows.select("user_id"), "user_id", "left_anti")
        spark.write_state(rest.unionByName(day_rows), path, metadata)
        mode = "replaced" if prior_version is not None else "started"
    stage("state", started, as_of=last, mode=mode, prior_version=prior_version)


def requested_count(events: DataFrame, config: EtlConfig, first: str, last: str) -> int:
    """Requests the protocol asks for in [first, last], before any is dropped."""
    rule = config.protocol.requests.value
    days = events.where(F.col("date").between(first, last))
    if rule == "positive":
        positive = config.source.behavior_code(config.source.positive_behavior)
        return days.where(F.col("behavior") == positive).count()
    if rule == "last":
        return events.select("user_id").distinct().count()
    return days.count()


def feature_spec(
    spark_session: SparkSession, config: EtlConfig, root: str,
    demographics: DataFrame | None, demographic_fields: tuple[str, ...],
) -> FeatureSpec:
    """The spec describes the whole tables (all days built so far), not just this run."""
    events = spark.read_delta(spark_session, f"{root}/events")
    ids = events.agg(
        F.countDistinct("user_id").alias("users"),
        F.countDistinct("item_id").alias("items"),
        F.countDistinct("category_id").alias("categories"),
        F.max("item_id").alias("max_item"),
        F.max("category_id").alias("max_category"),
    ).first()
    splits = {}
    rows = (
        spark.read_delta(spark_session, f"{root}/samples")
        .groupBy("split")
        .agg(
            F.array_sort(F.collect_set("date")).alias("dates"),
            F.sum(F.size("request_ts")).alias("requests"),
            F.sum(F.size("candidate_label")).alias("samples"),
            F.sum(F.aggregate("candidate_label", F.lit(0).cast("long"), lambda a, x: a + x)).alias(
                "positives"
            ),
        )
        .collect()  # one row per split
    )
    for row in rows:
        splits[row["split"]] = SplitStats(
            dates=tuple(row["dates"]), requests=int(row["requests"]),
            samples=int(row["samples"]), positives=int(row["positives"]),
        )
    cardinalities = {}
    # Samples per file and split: trainer ranks balance their shares without scanning the files.
    file_samples: dict[str, dict[str, int]] = {}
    per_file = (
        spark.read_delta(spark_session, f"{root}/samples")
        .select(F.input_file_name().alias("uri"), "split",
                F.aggregate("request_num_candidates", F.lit(0).cast("long"),
                            lambda a, x: a + x).alias("samples"))
        .groupBy("uri", "split").agg(F.sum("samples").alias("samples"))
        .collect()  # one row per file and split
    )
    for row in per_file:
        file_samples.setdefault(table_relative(row["uri"]), {})[row["split"]] = int(row["samples"])
    if demographics is not None:
        maxima = demographics.agg(*[F.max(name).alias(name) for name in demographic_fields]).first()
        cardinalities = {name: int(maxima[name] or 0) + 1 for name in demographic_fields}
    return FeatureSpec(
        source=config.source.format.value,
        protocol=config.protocol.name,
        behaviors=config.source.behaviors,
        num_users=int(ids["users"]),
        num_items=int(ids["items"]),
        num_categories=int(ids["categories"]),
        max_item_id=int(ids["max_item"] or 0),
        max_category_id=int(ids["max_category"] or 0),
        max_len=config.max_len,
        short_len=config.short_len,
        top_categories=config.top_categories,
        dense_features=profiles.dense_feature_names(
            config.source.behaviors, config.source.format == SourceFormat.FEED
        ),
        demographics=cardinalities,
        splits=splits,
        tables={name: name for name in TABLES},
        file_samples=file_samples,
    )


def table_relative(uri: str) -> str:
    """A data file's path relative to its table, as the Delta log names it: the partition
    directories (`key=value/`) and the file name at the end of its URI."""
    parts = unquote(uri).rstrip("/").split("/")
    start = len(parts) - 1
    while start > 0 and "=" in parts[start - 1]:
        start -= 1
    return "/".join(parts[start:])


def preflight(args: argparse.Namespace) -> tuple[EtlConfig, str, str, str, str | None]:
    """Everything that can be checked without Spark: arguments, config, dates, input paths, output
    writability. -> (config, first day, last day, events input, demographics input or None)."""
    try:
        config = config_from_args(args)
    except ConfigError as error:
        raise JobError(str(error)) from error
    if not 0.0 <= args.min_accepted_share <= 1.0:
        raise JobError(f"--min-accepted-share {args.min_accepted_share} is not in [0, 1]")
    if args.files_per_day < 1:
        raise JobError(f"--files-per-day {args.files_per_day} must be >= 1")
    if args.shuffle_partitions is not None and args.shuffle_partitions < 1:
        raise JobError(f"--shuffle-partitions {args.shuffle_partitions} must be >= 1")
    if args.through is not None and args.date is not None:
        raise JobError("--through D builds the range up to D; --date D builds day D: not both")
    first, last = run_dates(config, args.date, args.through)
    if args.incremental and args.date is None:
        raise JobError("--incremental needs --date D (one day built on the state as of D - 1)")
    events_input, profiles_input = check_paths(config, args.input, args.output)
    return config, first, last, events_input, profiles_input


def run(args: argparse.Namespace) -> FeatureSpec:
    config, first, last, events_input, profiles_input = preflight(args)
    root = args.output.rstrip("/")
    started = time.time()
    try:
        session = spark.session(
            "build_sequences",
            shuffle_partitions=args.shuffle_partitions,
            default_shuffle_partitions=sized_shuffle_partitions([events_input, profiles_input]),
        )
    except spark.DeltaMissingError as error:
        raise JobError(str(error)) from error
    log.info("source=%s protocol=%s days=%s..%s max_len=%d seed=%d shuffle_partitions=%s "
             "input=%s output=%s", config.source.format.value, config.protocol.name, first, last,
             config.max_len, config.seed, session.conf.get("spark.sql.shuffle.partitions"),
             args.input, root)
    with spark.StageProgress(session, log):
        # Checked before anything is written: without the state of D - 1 nothing changes.
        prior_version = (prior_state_version(session, config, root, first)
                         if args.incremental else None)
        # A full build replaces the whole range: only a day run reads an earlier history.
        built = built_days(session, root) if args.date is not None else []
        check_history(built, first)
        demographics, fields = read_demographics(session, profiles_input)
        continues = any(day < first for day in built)  # an empty day continues a history
        previous = build_events(
            session, config, events_input, root, first, last, args.files_per_day,
            args.min_accepted_share, built[0] if built else None,
            allow_empty=args.date is not None and args.min_accepted_share == 0 and continues)
        prior = read_state(session, root, prior_version) if args.incremental else None
        train_end = config.train_end_date(built_days(session, root)[-1])
        build_samples(session, config, root, first, last, demographics, fields,
                      args.files_per_day, train_end, prior)
        resplit(session, config, root, first, last, train_end)
        build_state(session, config, root, first, last, prior_version, args.incremental)
        spec_started = time.time()
        spec = feature_spec(session, config, root, demographics, fields)
        # Scans the whole events and samples tables (distinct ids, split totals, samples per
        # file): with the state MERGE, what still grows with history in an incremental day.
        stage("spec", spec_started, samples_files=len(spec.file_samples))
    if _is_local(root):
        path = spec.write(_local(root))
    else:  # the trainer reads it back with pyarrow's file systems (FeatureSpec.read)
        path = spark.write_text(session, f"{root}/{SPEC_FILE}", spec.to_json())
    for name, stats in spec.splits.items():
        log.info("split %-5s dates=%s requests=%d samples=%d positive_rate=%.4f", name,
                 ",".join(stats.dates), stats.requests, stats.samples, stats.positive_rate)
    log_table_versions(session, root, previous)
    log.info("done in %.1fs: %s", time.time() - started, path)
    return spec


def log_table_versions(session: SparkSession, root: str, previous: dict[str, int]) -> None:
    for name in TABLES:
        version = spark.table_version(session, f"{root}/{name}")
        if name in previous:
            log.info("%-10s version %d replaced by version %s", name, previous[name], version)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="[etl] %(message)s", stream=sys.stderr)
    args = parse_args(argv)
    try:
        if args.check:
            preflight(args)
            log.info("arguments and input paths are valid")
            return 0
        run(args)
    except JobError as error:
        log.error("%s", error)
        return error.exit_code
    return 0


if __name__ == "__main__":
    code = main()
    # Under spark-submit a non-zero exit must reach the shell; os._exit skips py4j teardown noise.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code) if code else sys.exit(0)
