"""Per-user state for incremental daily builds: what a day's samples need from the earlier days.

    fold(chunk: EventChunk, prior: Prior | None, spec) -> pa.RecordBatch of STATE rows
        each user of the chunk, as of the end of the chunk's last day
    EVENTS.transform(build, spec, partitions) -> STATE of every user, from the whole history
    samples_with_prior(DAY_EVENTS, STATE, pools, spec, partitions) -> SAMPLES (as protocols.samples)
    advance(DAY_EVENTS, STATE, spec, partitions) -> STATE rows of the day's users, day included
    version_as_of(history, day) -> the `state` table version holding the state as of `day`
    readable_version(history, version) -> the newest version with its rows (after OPTIMIZE...)

The state of user u as of the end of day D (one row per user, the `state` Delta table):

- `recent_*`: u's last `max_len` events up to D, in timeline order (the timeline of D + 1 starts
  with them);
- `behavior_counts` [behaviors], `event_count`, `active_days`, `touched_category_id` +
  `touched_category_count` (every category u touched, ascending id, with its event count),
  `watch_time_total`: the profile accumulators, so the profile of D + 1 is exact
  (etl/sequences.py `_profiles`; its watch time less the watches of `recent_*` still running at
  D + 1's midnight, `sequences.running_watch_time`);
- `touched_item_id`: every distinct item u touched, ascending (`exclude_history` removes them
  from the negatives of any later request);
- `last_active_date`: u's last day with events (<= D).

Users without events on D keep their row unchanged. `watch_time_total` is a float64 fold over
days, `((0 + day_1) + day_2) + ...`, each day's sum taken over its events in order: the full
build sums in the same order (sequences.watch_time_before), so both give the same bits.

Letters: N events, U users, C (user, category) pairs, I (user, item) pairs.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial

import numpy as np
import pyarrow as pa
from pyspark import Broadcast
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from etl import sequences
from etl.sequences import EventChunk, SampleSpec

STATE_FIELDS = [
    ("user_id", pa.int64()), ("last_active_date", pa.string()),
    ("recent_item_id", pa.list_(pa.int64())), ("recent_category_id", pa.list_(pa.int64())),
    ("recent_behavior", pa.list_(pa.int32())), ("recent_ts", pa.list_(pa.int64())),
    ("recent_watch_time", pa.list_(pa.float32())),
    ("behavior_counts", pa.list_(pa.int64())), ("event_count", pa.int64()),
    ("active_days", pa.int64()), ("touched_category_id", pa.list_(pa.int64())),
    ("touched_category_count", pa.list_(pa.int64())), ("watch_time_total", pa.float64()),
    ("touched_item_id", pa.list_(pa.int64())),
]
STATE_SCHEMA = pa.schema(STATE_FIELDS)
_SPARK_TYPES = {pa.int64(): "bigint", pa.int32(): "int", pa.float32(): "float",
                pa.float64(): "double", pa.string(): "string"}
STATE_DDL = ", ".join(
    f"{name} array<{_SPARK_TYPES[t.value_type]}>" if pa.types.is_list(t)
    else f"{name} {_SPARK_TYPES[t]}"
    for name, t in STATE_FIELDS
)
PRIOR_DATE = ""  # the date of the recent events put in front of a day's events (before any day)


@dataclass
class Prior:
    """STATE rows of some users, ascending user_id ([U] columns; list columns as values + [U + 1]
    offsets), read from Arrow."""

    user_id: np.ndarray
    behavior_counts: np.ndarray  # [U, behaviors]
    event_count: np.ndarray
    active_days: np.ndarray
    category_id: np.ndarray
    category_count: np.ndarray
    category_offsets: np.ndarray
    watch_time_total: np.ndarray  # float64
    item_id: np.ndarray
    item_offsets: np.ndarray

    @staticmethod
    def from_arrow(table: pa.Table, behaviors: int) -> Prior:
        def flat(name: str) -> tuple[np.ndarray, np.ndarray]:
            column = table.column(name).combine_chunks()
            offsets = np.asarray(column.offsets.to_numpy(), dtype=np.int64)
            values = np.asarray(column.values.to_numpy(zero_copy_only=False), dtype=np.int64)
            return values[offsets[0]:offsets[-1]], offsets - offsets[0]

        def scalar(name: str, dtype: type) -> np.ndarray:
            return np.asarray(table.column(name).to_numpy(zero_copy_only=False), dtype=dtype)

        counts, _ = flat("behavior_counts")
        categories, category_offsets = flat("touched_category_id")
        category_counts, _ = flat("touched_category_count")
        items, item_offsets = flat("touched_item_id")
        return Prior(scalar("user_id", np.int64), counts.reshape(-1, behaviors),
                     scalar("event_count", np.int64), scalar("active_days", np.int64),
                     categories, category_counts, category_offsets,
                     scalar("watch_time_total", np.float64), items, item_offsets)

    @staticmethod
    def empty(behaviors: int) -> Prior:
        none = np.zeros(0, dtype=np.int64)
        return Prior(none, np.zeros((0, behaviors), np.int64), none, none, none, none,
                     np.zeros(1, np.int64), np.zeros(0), none, np.zeros(1, np.int64))

    def take(self, values: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """values[rows] of a per-user column ([U] or [U, ...]), zero where rows is -1."""
        if len(values) == 0:
            return np.zeros((len(rows), *values.shape[1:]), dtype=values.dtype)
        taken = values[np.maximum(rows, 0)]
        mask = (rows >= 0).reshape(-1, *([1] * (values.ndim - 1)))
        return np.where(mask, taken, 0).astype(values.dtype)

    def rows(self, users: np.ndarray) -> np.ndarray:
        """[n] the row of each user, -1 for a user without state."""
        position = np.searchsorted(self.user_id, users)
        inside = position < len(self.user_id)
        found = inside & (self.user_id[np.minimum(position, len(self.user_id) - 1)] == users) \
            if len(self.user_id) else np.zeros(len(users), dtype=bool)
        return np.where(found, position, -1)


def _gather(values: np.ndarray, offsets: np.ndarray, rows: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """The lists of `rows` (-1: an empty list) -> (values, offsets [len(rows) + 1])."""
    safe = np.clip(rows, 0, len(offsets) - 2) if len(offsets) > 1 else np.zeros_like(rows)
    padded = np.append(offsets, offsets[-1])  # an empty prior has offsets [0]
    starts = np.where(rows >= 0, padded[safe], 0)
    ends = np.where(rows >= 0, padded[safe + 1], 0)
    indices, new_offsets = sequences.ranges(starts, ends)
    return values[indices], new_offsets


def fold(chunk: EventChunk, prior: Prior | None, spec: SampleSpec) -> pa.RecordBatch:
    """The state of each user of `chunk` as of the end of its last day.

    `chunk`: whole users, sorted as for sequences.process; events dated PRIOR_DATE are the
    users' `recent_*` events from `prior` (already counted there), the others are new. Without
    `prior` every event is new (a build from the whole history).
    """
    n = len(chunk)
    if n == 0:
        return pa.RecordBatch.from_pylist([], schema=STATE_SCHEMA)
    prior = prior if prior is not None else Prior.empty(spec.behaviors)
    user = chunk.user_id
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    user_first = np.flatnonzero(new_user)  # [U]
    user_end = np.append(user_first[1:], n)
    users = user[user_first]
    user_index = np.cumsum(new_user) - 1  # [N]
    rows = prior.rows(users)
    is_new = chunk.date != PRIOR_DATE  # [N]

    recent, recent_offsets = sequences.ranges(np.maximum(user_first, user_end - spec.max_len),
                                              user_end)
    behavior_counts = prior.take(prior.behavior_counts, rows)
    for code in range(1, spec.behaviors + 1):
        behavior_counts[:, code - 1] += np.bincount(
            user_index[is_new & (chunk.behavior == code)], minlength=len(users))
    event_count = prior.take(prior.event_count, rows) + np.bincount(
        user_index[is_new], minlength=len(users))
    # New user-days, in order: their sums extend the prior's fold one day at a time.
    new_day = is_new.copy()
    new_day[1:] &= new_user[1:] | (chunk.date[1:] != chunk.date[:-1])
    day_start = np.flatnonzero(new_day)
    day_end = np.append(day_start[1:], n)
    day_end = np.minimum(day_end, user_end[user_index[day_start]])
    day_user = user_index[day_start]
    active_days = prior.take(prior.active_days, rows) + np.bincount(
        day_user, minlength=len(users))
    day_sum = sequences.range_sums(chunk.watch_time, day_start, day_end)
    watch_time_total = prior.take(prior.watch_time_total, rows)
    day_position = np.arange(len(day_start)) - np.searchsorted(day_user, day_user)
    for position in range(int(day_position.max(initial=-1)) + 1):
        at = day_position == position
        watch_time_total[day_user[at]] = watch_time_total[day_user[at]] + day_sum[at]

    prior_categories, prior_category_offsets = _gather(prior.category_id,
                                                       prior.category_offsets, rows)
    prior_category_counts, _ = _gather(prior.category_count, prior.category_offsets, rows)
    category_user = np.concatenate([np.repeat(np.arange(len(users)),
                                              np.diff(prior_category_offsets)),
                                    user_index[is_new]])
    category = np.concatenate([prior_categories, chunk.category_id[is_new]])
    weight = np.concatenate([prior_category_counts, np.ones(is_new.sum(), dtype=np.int64)])
    category_values, category_counts, category_offsets = _count_pairs(
        category_user, category, weight, len(users))

    prior_items, prior_item_offsets = _gather(prior.item_id, prior.item_offsets, rows)
    item_user = np.concatenate([np.repeat(np.arange(len(users)), np.diff(prior_item_offsets)),
                                user_index[is_new]])
    item = np.concatenate([prior_items, chunk.item_id[is_new]])
    item_values, _, item_offsets = _count_pairs(item_user, item, np.ones(len(item), np.int64),
                                                len(users))

    last_day = chunk.date[user_end - 1]
    columns = [
        pa.array(users, pa.int64()),
        pa.array(last_day, pa.string()),
        sequences._list(chunk.item_id[recent], recent_offsets, pa.int64()),
        sequences._list(chunk.category_id[recent], recent_offsets, pa.int64()),
        sequences._list(chunk.behavior[recent].astype(np.int32), recent_offsets, pa.int32()),
        sequences._list(chunk.ts[recent], recent_offsets, pa.int64()),
        sequences._list(chunk.watch_time[recent].astype(np.float32), recent_offsets,
                        pa.float32()),
        sequences._list(behavior_counts.ravel(),
                        np.arange(len(users) + 1, dtype=np.int64) * spec.behaviors, pa.int64()),
        pa.array(event_count, pa.int64()),
        pa.array(active_days, pa.int64()),
        sequences._list(category_values, category_offsets, pa.int64()),
        sequences._list(category_counts, category_offsets, pa.int64()),
        pa.array(watch_time_total, pa.float64()),
        sequences._list(item_values, item_offsets, pa.int64()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=STATE_SCHEMA)


def _count_pairs(owner: np.ndarray, value: np.ndarray, weight: np.ndarray, owners: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (owner, value) pairs with summed weights -> (values ascending per owner, sums,
    offsets [owners + 1])."""
    order = np.lexsort((value, owner))
    owner, value, weight = owner[order], value[order], weight[order]
    change = np.ones(len(owner), dtype=bool)
    change[1:] = (owner[1:] != owner[:-1]) | (value[1:] != value[:-1])
    first = np.flatnonzero(change)
    sums = np.add.reduceat(weight, first) if len(first) else np.zeros(0, np.int64)
    offsets = np.zeros(owners + 1, dtype=np.int64)
    np.cumsum(np.bincount(owner[first], minlength=owners), out=offsets[1:])
    return value[first], sums.astype(np.int64), offsets


def top_categories(prior: Prior, rows: np.ndarray, k: int
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the prior rows `rows` (-1: none): (distinct categories [g], the k most frequent, most
    first, ties by smaller id, as values + offsets [g + 1])."""
    values, offsets = _gather(prior.category_id, prior.category_offsets, rows)
    counts, _ = _gather(prior.category_count, prior.category_offsets, rows)
    owner = np.repeat(np.arange(len(rows)), np.diff(offsets))
    rank = np.lexsort((values, -counts, owner))
    position = np.arange(len(rank)) - np.searchsorted(owner[rank], owner[rank])
    chosen = rank[position < k]
    top_offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(np.minimum(np.diff(offsets), k), out=top_offsets[1:])
    return np.diff(offsets), values[chosen], top_offsets


# -- Spark: the state next to a day's events, partitioned by user ---------------------------

SOURCE = "_source"  # 0: a STATE row, 1: an event of the day (sorted first by user, then this)


def _with_state(day_events: DataFrame, state: DataFrame, partitions: int) -> DataFrame:
    """The day's events and the STATE rows of their users in one frame, partitioned by user and
    sorted (user, state row first, then the events in sequences.process order)."""
    users = day_events.select("user_id").distinct()
    rows = state.join(users, "user_id", "left_semi").withColumn(SOURCE, F.lit(0))
    events = day_events.select(*sequences.EVENT_COLUMNS).withColumn(SOURCE, F.lit(1))
    return (
        rows.unionByName(events, allowMissingColumns=True)
        .repartition(partitions, "user_id")
        .sortWithinPartitions("user_id", SOURCE, "ts", "item_id", "behavior", "category_id",
                              "watch_time")
    )


def split_batch(table: pa.Table, behaviors: int) -> tuple[EventChunk, Prior]:
    """A table of `_with_state` rows (whole users) -> (the users' recent events dated PRIOR_DATE
    followed by their day's events, sorted as for sequences.process; their prior)."""
    source = table.column(SOURCE).to_numpy(zero_copy_only=False)
    rows = table.filter(pa.array(source == 0))
    prior = Prior.from_arrow(rows, behaviors)
    day = EventChunk.from_arrow(table.filter(pa.array(source == 1)))

    def flat(name: str, dtype: type) -> np.ndarray:
        column = rows.column(name).combine_chunks()
        return np.asarray(column.flatten().to_numpy(zero_copy_only=False), dtype=dtype)

    lengths = np.asarray(rows.column("recent_ts").combine_chunks().value_lengths()
                         .to_numpy(zero_copy_only=False), dtype=np.int64) if len(rows) else \
        np.zeros(0, np.int64)
    recent = EventChunk(np.repeat(prior.user_id, lengths), flat("recent_item_id", np.int64),
                        flat("recent_category_id", np.int64), flat("recent_behavior", np.int32),
                        flat("recent_ts", np.int64), flat("recent_watch_time", np.float32),
                        np.full(int(lengths.sum()), PRIOR_DATE, dtype=object).astype(str))
    both = EventChunk(*(np.concatenate([getattr(recent, name), getattr(day, name)])
                        for name in sequences.EVENT_COLUMNS))
    order = np.lexsort((np.arange(len(both)),
                        np.r_[np.zeros(len(recent), int), np.ones(len(day), int)], both.user_id))
    return EventChunk(*(getattr(both, name)[order] for name in sequences.EVENT_COLUMNS)), prior


def _sample_batches(batches: Iterator[pa.RecordBatch], pools: Broadcast | None,
                    spec: SampleSpec) -> Iterator[pa.RecordBatch]:
    day_pools = pools.value if pools is not None else None
    for table in sequences.whole_user_tables(batches):
        chunk, prior = split_batch(table, spec.behaviors)
        yield sequences.process(chunk, spec, day_pools, prior)


def _fold_batches(batches: Iterator[pa.RecordBatch], spec: SampleSpec,
                  with_prior: bool) -> Iterator[pa.RecordBatch]:
    for table in sequences.whole_user_tables(batches):
        if with_prior:
            chunk, prior = split_batch(table, spec.behaviors)
            yield fold(chunk, prior, spec)
        else:
            yield fold(EventChunk.from_arrow(table), None, spec)


def samples_with_prior(day_events: DataFrame, state: DataFrame, pools: Broadcast | None,
                       spec: SampleSpec, partitions: int) -> DataFrame:
    """DAY_EVENTS (one day, every user) + STATE as of the day before -> SAMPLES of the day, less
    split and demographics: the rows protocols.samples gives from the whole history."""
    return _with_state(day_events, state, partitions).mapInArrow(
        partial(_sample_batches, pools=pools, spec=spec), sequences.SAMPLE_DDL)


def advance(day_events: DataFrame, state: DataFrame, spec: SampleSpec,
            partitions: int) -> DataFrame:
    """DAY_EVENTS + STATE as of the day before -> STATE rows of the day's users, day included."""
    return _with_state(day_events, state, partitions).mapInArrow(
        partial(_fold_batches, spec=spec, with_prior=True), STATE_DDL)


def build(events: DataFrame, spec: SampleSpec, partitions: int) -> DataFrame:
    """EVENTS (every event up to the state's day) -> STATE of every user."""
    by_user = (
        events.select(*sequences.EVENT_COLUMNS)
        .repartition(partitions, "user_id")
        .sortWithinPartitions("user_id", "ts", "item_id", "behavior", "category_id",
                              "watch_time")
    )
    return by_user.mapInArrow(partial(_fold_batches, spec=spec, with_prior=False), STATE_DDL)


# The as_of of a commit that rewrites files but no row (OPTIMIZE, VACUUM, table properties).
MAINTENANCE = "maintenance"


def version_as_of(history: list[tuple[int, str | None]], day: str) -> int | None:
    """The newest `state` table version holding the state as of the end of `day`, or None.

    history: (version, as_of day of its commit) newest first; as_of None for a commit that is
    not ours (it may have changed rows), MAINTENANCE for one that changed no row (skipped). A
    version newer than the one found with an earlier as_of (a rebuild of an earlier day) or of
    unknown content makes it stale: None.
    """
    for version, as_of in history:
        if as_of == MAINTENANCE:
            continue
        if as_of == day:
            return version
        if as_of is None or as_of < day:
            return None
    return None


def readable_version(history: list[tuple[int, str | None]], version: int) -> int:
    """The newest version with the same rows as `version`: the maintenance commits directly
    after it (after an OPTIMIZE and a VACUUM, `version`'s own files may be gone)."""
    newest = version
    for later, as_of in reversed(history):  # oldest first
        if later <= version:
            continue
        if as_of != MAINTENANCE:
            break
        newest = later
    return newest
