"""Samples from user-sorted events, vectorised with numpy over many users at once (no Spark).

    process(events: EventChunk, spec: SampleSpec, pools: DayPools | None,
            prior: state.Prior | None = None) -> pa.RecordBatch
        SAMPLES rows (contract/samples.py, less `split`) of the chunk's user-days in
        [spec.first_date, spec.last_date] that keep at least one request

The chunk holds *whole users*: every event of each of its users up to the last day, sorted by
(user_id, ts, item_id, behavior, category_id, watch_time). For the user-day (u, D):

- timeline = the last `max_len` events of u before D, then u's events of D;
- requests = D's events chosen by the protocol; `request_history_end` = the number of timeline
  events with ts < request ts; with watch times (feed logs), only the timeline's longest prefix
  whose events all *ended* (ts + watch_time) before the request ts (`visible_history_end`);
- profile = statistics of u's events before D (etl/build_sequences.py names them), as known at
  D's midnight (`spec.time_zone`): with watch times, a watch still running then (ts < midnight
  <= ts + watch_time) counts as an event but not yet its watch time (`running_watch_time`), which
  enters the first day that starts after it ended;
- candidates = the positive and its negatives from the request's pool (etl/sampling.py), with the
  user's earlier items and the positive excluded, de-duplicated, the first k kept.

With `prior` (an incremental day build, etl/state.py) the chunk holds one day's events after each
user's `recent_*` events from the state table (dated state.PRIOR_DATE), and the profile and the
items excluded from the negatives come from the state's accumulators instead of the chunk: the
rows are the same as from the whole history.

This is the fast path of the `samples` stage (etl/protocols.py runs it in an Arrow UDF); its
output equals the definitions above exactly, which tests/etl/reference.py recomputes in plain
Python. Letters: N events, G user-days, R requests, J draws per request, K negatives per request.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date, datetime, time
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

import numpy as np
import pyarrow as pa

from etl.sampling import DayPools, draw_hash

if TYPE_CHECKING:  # etl.state imports this module
    from etl import state

# Events per numpy chunk: large enough to amortise the per-call overhead, small enough for
# [requests x draws] arrays of a few hundred MB at most.
CHUNK_EVENTS = 200_000
SALT_REPLACE, SALT_OWN, SALT_PICK = 0x5EED0001, 0x5EED0002, 0x5EED0003


@dataclass(frozen=True)
class SampleSpec:
    """Scalar parameters of a build (picklable: shipped to the executors).

    requests: "positive" | "all" | "labeled" | "last" (etl.config.RequestRule values).
    negatives: k; draws: draws per request (0: no sampling); uniform: Sampling.UNIFORM.
    """

    first_date: str
    last_date: str
    max_len: int
    top_categories: int
    behaviors: int
    positive_code: int
    with_watch_time: bool
    time_zone: str  # IANA zone of the calendar days (the profile is as of a day's midnight)
    requests: str
    negatives: int
    draws: int
    uniform: bool
    exclude_history: bool
    history_fraction: float
    replace_probability: float
    seed: int


@dataclass
class EventChunk:
    """[N] columns of whole users' events, sorted by (user, ts, item, behavior, category, watch);
    `date` as yyyy-MM-dd strings."""

    user_id: np.ndarray
    item_id: np.ndarray
    category_id: np.ndarray
    behavior: np.ndarray
    ts: np.ndarray
    watch_time: np.ndarray
    date: np.ndarray

    @staticmethod
    def from_arrow(table: pa.Table | pa.RecordBatch) -> EventChunk:
        def column(name: str, dtype: type) -> np.ndarray:
            values = table.column(name)
            if name == "watch_time":
                values = values.fill_null(0.0)
            return np.asarray(values.to_numpy(zero_copy_only=False), dtype=dtype)

        return EventChunk(column("user_id", np.int64), column("item_id", np.int64),
                          column("category_id", np.int64), column("behavior", np.int32),
                          column("ts", np.int64), column("watch_time", np.float32),
                          column("date", object).astype(str))

    def __len__(self) -> int:
        return len(self.user_id)

    def slice(self, start: int, end: int) -> EventChunk:
        return EventChunk(*(getattr(self, name)[start:end] for name in EVENT_COLUMNS))


EVENT_COLUMNS = ("user_id", "item_id", "category_id", "behavior", "ts", "watch_time", "date")


def ranges(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated index ranges [starts[i], ends[i]) -> (indices, offsets [len(starts) + 1])."""
    lengths = np.maximum(ends - starts, 0)
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    return np.repeat(starts, lengths) + within, offsets


def visible_history_end(end_ms: np.ndarray, timeline: np.ndarray, timeline_offsets: np.ndarray,
                        request_ts_ms: np.ndarray, request_group: np.ndarray) -> np.ndarray:
    """[R] per request: the length of its timeline's longest prefix whose events all end (end_ms,
    ts + watch_time in ms) before request_ts_ms: an event is visible once it has ended, and a
    history is a prefix, so an event still running hides every later one too.

    One search over the flat timelines' running maxima of end_ms, each timeline's shifted above the
    previous one's (exact int64; a timeline's own events only, so a daily build sees what the full
    build sees). end_ms: [N] per event; timeline [T] / timeline_offsets [G + 1] from `ranges`."""
    if len(timeline) == 0:
        return np.zeros(len(request_ts_ms), dtype=np.int64)
    ends = end_ms[timeline]
    base = min(int(ends.min()), int(request_ts_ms.min()))
    span = max(int(ends.max()), int(request_ts_ms.max())) - base + 1
    groups = len(timeline_offsets) - 1
    if groups * span >= 1 << 62:
        raise ValueError(f"{groups} timelines spanning {span} ms overflow the int64 search key")
    shift = np.repeat(np.arange(groups, dtype=np.int64) * span, np.diff(timeline_offsets))
    running = np.maximum.accumulate(ends - base + shift)
    target = request_group.astype(np.int64) * span + (request_ts_ms - base)
    return np.searchsorted(running, target, side="left") - timeline_offsets[request_group]


def end_ms(chunk: EventChunk) -> np.ndarray:
    """[N] when each event ended, ts + watch_time, in integer milliseconds."""
    watch_ms = np.round(chunk.watch_time.astype(np.float64) * 1000).astype(np.int64)
    return chunk.ts * 1000 + watch_ms


def midnight_ms(dates: np.ndarray, time_zone: str) -> np.ndarray:
    """[G] the first millisecond of each yyyy-MM-dd day in `time_zone`."""
    zone = ZoneInfo(time_zone)
    unique, inverse = np.unique(dates.astype(str), return_inverse=True)
    starts = [int(datetime.combine(date.fromisoformat(day), time(), zone).timestamp()) * 1000
              for day in unique]
    return np.asarray(starts, dtype=np.int64)[inverse]


def running_watch_time(chunk: EventChunk, timeline_start: np.ndarray, group_start: np.ndarray,
                       time_zone: str) -> np.ndarray:
    """[g] per user-day: the watch time of the user's events before the day that are still
    running at its midnight (ended at or after it), among the timeline's events before the day
    (the user's last `max_len`: what the state's `recent_*` holds, so a daily build subtracts the
    same). float64 sums in event order. Known only once they end, these watches are left out of
    the day's profile (a watch running across more than max_len later events stays in: a bound
    of the rule, not met by a feed where one watch ends before the next starts)."""
    indices, offsets = ranges(timeline_start, group_start)
    group = np.repeat(np.arange(len(group_start)), np.diff(offsets))
    midnight = midnight_ms(chunk.date[group_start], time_zone)
    still_running = end_ms(chunk)[indices] >= midnight[group]
    watch = np.where(still_running, chunk.watch_time[indices].astype(np.float64), 0.0)
    return range_sums(watch, offsets[:-1], offsets[1:])


def run_starts(change: np.ndarray) -> np.ndarray:
    """[N] index of the first element of each element's run; `change[i]`: a run starts at i."""
    positions = np.where(change, np.arange(len(change)), 0)
    return np.maximum.accumulate(positions) if len(change) else positions


def range_sums(values: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Sums of values[starts[i]:ends[i]] in float64, each summed in index order."""
    indices, offsets = ranges(starts, ends)
    total = np.zeros(len(starts))
    nonempty = offsets[1:] > offsets[:-1]
    if nonempty.any():
        total[nonempty] = np.add.reduceat(values[indices].astype(np.float64),
                                          offsets[:-1][nonempty])
    return total


def _uniform01(seed: int, salt: int, *parts: np.ndarray) -> np.ndarray:
    return (draw_hash(seed, salt, *parts) >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def _keys(users: np.ndarray, items: np.ndarray, other_users: np.ndarray,
          other_items: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact int64 keys of (user index, item) pairs, consistent between the two sets."""
    top_item = max(items.max(initial=0), other_items.max(initial=0))
    low_item = min(items.min(initial=0), other_items.min(initial=0))
    top_user = max(users.max(initial=0), other_users.max(initial=0))
    if low_item >= 0 and top_item < (1 << 40) and top_user < (1 << 22):
        return (users.astype(np.int64) << 40) | items, (other_users.astype(np.int64) << 40) | \
            other_items
    codes = np.unique(np.concatenate([items, other_items]))  # huge ids: dense codes instead
    return (users.astype(np.int64) * len(codes) + np.searchsorted(codes, items),
            other_users.astype(np.int64) * len(codes) + np.searchsorted(codes, other_items))


def first_k_distinct(items: np.ndarray, valid: np.ndarray, k: int) -> np.ndarray:
    """[R, J] -> mask of the first k valid draws of each row whose item no earlier valid draw of
    the row had."""
    rows, width = items.shape
    if rows == 0 or width == 0:
        return np.zeros_like(valid)
    # Invalid draws get distinct negative keys, so they never equal anything.
    key = np.where(valid, items, -1 - np.arange(width, dtype=np.int64)[None, :])
    ordered = np.sort(key, axis=1)
    repeats = (ordered[:, 1:] == ordered[:, :-1]).any(axis=1)  # most rows have none
    keep = valid.copy()
    if repeats.any():
        subset = np.flatnonzero(repeats)
        order = np.argsort(key[subset], axis=1, kind="stable")
        sorted_subset = np.take_along_axis(key[subset], order, axis=1)
        repeat = np.zeros((len(subset), width), dtype=bool)
        np.put_along_axis(repeat, order[:, 1:], sorted_subset[:, 1:] == sorted_subset[:, :-1],
                          axis=1)
        keep[subset] &= ~repeat
    return keep & (np.cumsum(keep, axis=1, dtype=np.int16) <= k)


def _top_categories(chunk: EventChunk, user_start: np.ndarray, group_start: np.ndarray,
                    groups: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the user-days `groups` (their first event index `group_start[groups]`): the distinct
    categories before the day and the k most frequent (ties: smaller id).
    -> (distinct counts [g], top values, top offsets [g + 1])."""
    n = len(chunk)
    index = np.arange(n, dtype=np.int64)
    order = np.lexsort((index, chunk.category_id, chunk.user_id))
    user_sorted, category_sorted = chunk.user_id[order], chunk.category_id[order]
    pair_change = np.ones(n, dtype=bool)
    pair_change[1:] = (user_sorted[1:] != user_sorted[:-1]) | (
        category_sorted[1:] != category_sorted[:-1])
    pair_first = np.flatnonzero(pair_change)  # position of each (user, category) pair
    pair_user_start = user_start[order[pair_first]]  # the pair's user's first event
    pair_category = category_sorted[pair_first]
    pair_id = np.cumsum(pair_change) - 1
    key = pair_id * (n + 1) + order  # ascending: pairs in order, each by event index
    # Pairs of each user are contiguous; a user's pairs are [pair_lo, pair_hi).
    starts_of_pairs = pair_user_start
    g_user_start = user_start[group_start[groups]]
    pair_lo = np.searchsorted(starts_of_pairs, g_user_start, side="left")
    pair_hi = np.searchsorted(starts_of_pairs, g_user_start, side="right")
    cross, cross_offsets = ranges(pair_lo, pair_hi)  # [C] (user-day, pair) rows
    cross_group = np.repeat(np.arange(len(groups)), np.diff(cross_offsets))
    before = np.searchsorted(key, cross * (n + 1) + group_start[groups][cross_group])
    counts = before - pair_first[cross]
    present = counts > 0
    distinct = np.bincount(cross_group[present], minlength=len(groups))
    rank = np.lexsort((pair_category[cross][present], -counts[present], cross_group[present]))
    ranked_group = cross_group[present][rank]
    position = np.arange(len(rank)) - np.searchsorted(ranked_group, ranked_group)
    chosen = position < k
    top_values = pair_category[cross][present][rank][chosen]
    top_offsets = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum(np.bincount(ranked_group[chosen], minlength=len(groups)), out=top_offsets[1:])
    return distinct, top_values, top_offsets


def process(chunk: EventChunk, spec: SampleSpec, pools: DayPools | None,
            prior: state.Prior | None = None) -> pa.RecordBatch:
    n = len(chunk)
    if n == 0:
        return empty_batch()
    user, ts, item = chunk.user_id, chunk.ts, chunk.item_id
    index = np.arange(n, dtype=np.int64)
    new_user = np.ones(n, dtype=bool)
    new_user[1:] = user[1:] != user[:-1]
    new_group = new_user.copy()
    new_group[1:] |= chunk.date[1:] != chunk.date[:-1]
    user_start = run_starts(new_user)  # [N]
    same_time = new_user.copy()
    same_time[1:] |= ts[1:] != ts[:-1]
    time_start = run_starts(same_time)  # [N] first event of the user at this ts
    group_start_all = np.flatnonzero(new_group)  # [G'] every user-day of the chunk
    group_end_all = np.append(group_start_all[1:], n)
    group_date = chunk.date[group_start_all]
    in_range = (group_date >= spec.first_date) & (group_date <= spec.last_date)
    user_last = np.append(np.flatnonzero(new_user)[1:], n) - 1  # per user: its last event
    last_of_user = np.zeros(n, dtype=bool)
    last_of_user[user_last] = True

    # Requests: event-level, then grouped by user-day.
    if spec.requests == "positive":
        is_request = chunk.behavior == spec.positive_code
    elif spec.requests == "last":
        is_request = last_of_user
    else:  # all, labeled
        is_request = np.ones(n, dtype=bool)
    event_group = np.cumsum(new_group) - 1  # [N] user-day of each event
    is_request &= in_range[event_group]
    request = np.flatnonzero(is_request)  # [R] event index of each request
    groups = np.flatnonzero(in_range & (np.bincount(event_group[request],
                                                    minlength=len(group_start_all)) > 0))
    group_start, group_end = group_start_all[groups], group_end_all[groups]
    request_group = np.searchsorted(group_start, request, side="right") - 1  # [R] into groups
    timeline_start = np.maximum(user_start[group_start], group_start - spec.max_len)

    # Candidates per request (positive first), then the requests that keep one.
    labels_positive = np.ones(len(request), dtype=np.int32)
    if spec.requests == "labeled":
        labels_positive = (chunk.behavior[request] == spec.positive_code).astype(np.int32)
    negatives, negative_categories, keep_request = _negatives(
        chunk, spec, pools, request, time_start, index, prior)
    # Drop requests without candidates, then user-days without requests.
    request = request[keep_request]
    request_group = request_group[keep_request]
    labels_positive = labels_positive[keep_request]
    negatives = [row for row, keep in zip(negatives, keep_request, strict=True) if keep] \
        if isinstance(negatives, list) else negatives[keep_request]
    negative_categories = [row for row, keep in zip(negative_categories, keep_request,
                                                    strict=True) if keep] \
        if isinstance(negative_categories, list) else negative_categories[keep_request]
    kept_groups = np.unique(request_group)
    remap = np.full(len(groups), -1, dtype=np.int64)
    remap[kept_groups] = np.arange(len(kept_groups))
    request_group = remap[request_group]
    groups, group_start, group_end = groups[kept_groups], group_start[kept_groups], \
        group_end[kept_groups]
    timeline_start = timeline_start[kept_groups]

    # Timelines.
    timeline, timeline_offsets = ranges(timeline_start, group_end)
    history_end = time_start[request] - timeline_start[request_group]
    if spec.with_watch_time:  # an event is seen once its watch has ended
        history_end = np.minimum(history_end, visible_history_end(
            end_ms(chunk), timeline, timeline_offsets, chunk.ts[request] * 1000, request_group))
    history_end = history_end.astype(np.int32)
    request_offsets = np.zeros(len(groups) + 1, dtype=np.int64)
    np.cumsum(np.bincount(request_group, minlength=len(groups)), out=request_offsets[1:])

    # Candidates, flattened request-major.
    if isinstance(negatives, list):  # variable numbers of negatives (ubr4ctr, mimn_sim)
        sizes = np.array([len(row) for row in negatives], dtype=np.int64)
        flat_negatives = np.concatenate([np.asarray(row, dtype=np.int64) for row in negatives]) \
            if len(negatives) else np.zeros(0, np.int64)
        flat_negative_categories = np.concatenate(
            [np.asarray(row, dtype=np.int64) for row in negative_categories]) \
            if len(negative_categories) else np.zeros(0, np.int64)
    else:
        sizes = (negatives >= 0).sum(axis=1)
        flat_negatives = negatives[negatives >= 0]
        flat_negative_categories = negative_categories[negatives >= 0]
    include_positive = np.ones(len(request), dtype=bool)
    if spec.replace_probability > 0:  # mimn_sim: a replaced target has its sampled item only
        include_positive = sizes == 0
    per_request = sizes + include_positive
    candidate_offsets = np.zeros(len(request) + 1, dtype=np.int64)
    np.cumsum(per_request, out=candidate_offsets[1:])
    total = int(candidate_offsets[-1])
    candidate_item = np.empty(total, dtype=np.int64)
    candidate_category = np.empty(total, dtype=np.int64)
    candidate_label = np.zeros(total, dtype=np.int32)
    head = candidate_offsets[:-1][include_positive]
    candidate_item[head] = item[request][include_positive]
    candidate_category[head] = chunk.category_id[request][include_positive]
    candidate_label[head] = labels_positive[include_positive]
    negative_slots, _ = ranges(candidate_offsets[:-1] + include_positive, candidate_offsets[1:])
    candidate_item[negative_slots] = flat_negatives
    candidate_category[negative_slots] = flat_negative_categories
    group_candidate_offsets = candidate_offsets[request_offsets]

    running = running_watch_time(chunk, timeline_start, group_start, spec.time_zone) \
        if spec.with_watch_time else None
    if prior is None:
        dense, top_values, top_offsets = _profiles(chunk, spec, user_start, group_start_all,
                                                   groups, running)
    else:
        dense, top_values, top_offsets = _prior_profiles(prior, spec, user[group_start], running)
    return _batch(chunk, spec, group_start, timeline, timeline_offsets, request, request_offsets,
                  history_end, per_request, candidate_item, candidate_category, candidate_label,
                  group_candidate_offsets, dense, top_values, top_offsets)


def _profiles(chunk: EventChunk, spec: SampleSpec, user_start: np.ndarray,
              group_start_all: np.ndarray, groups: np.ndarray, running: np.ndarray | None
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profile of each user-day in `groups` from the user's events before the day; `running`:
    the watch time still running at the day's midnight (left out)."""
    start = group_start_all[groups]
    first = user_start[start]
    statistics = []
    for code in range(1, spec.behaviors + 1):
        cumulative = np.concatenate([[0], np.cumsum(chunk.behavior == code)])
        statistics.append(cumulative[start] - cumulative[first])
    statistics.append(start - first)  # events
    group_user_first = np.searchsorted(group_start_all, first)
    statistics.append(groups - group_user_first)  # active days before the day
    distinct, top_values, top_offsets = _top_categories(
        chunk, user_start, group_start_all, groups, spec.top_categories)
    statistics.append(distinct)
    if spec.with_watch_time:
        before = watch_time_before(chunk, user_start, group_start_all)[groups]
        statistics.append(np.maximum(before - running, 0.0))
    dense = np.log1p(np.stack(statistics, axis=1).astype(np.float64)).astype(np.float32)
    return dense, top_values, top_offsets


def watch_time_before(chunk: EventChunk, user_start: np.ndarray,
                      group_start_all: np.ndarray) -> np.ndarray:
    """[G'] the user's total watch time before each user-day: a float64 fold over the earlier
    days, `((0 + day_1) + day_2) + ...`, each day summed over its events in order. Summed day by
    day so that an incremental build (etl/state.py) carries the same bits in its state."""
    group_end_all = np.append(group_start_all[1:], len(chunk))
    day_sum = range_sums(chunk.watch_time, group_start_all, group_end_all)
    group_user_first = np.searchsorted(group_start_all, user_start[group_start_all])
    position = np.arange(len(group_start_all)) - group_user_first
    before = np.zeros(len(group_start_all))
    for day in range(1, int(position.max(initial=0)) + 1):
        at = np.flatnonzero(position == day)
        before[at] = before[at - 1] + day_sum[at - 1]
    return before


def _prior_profiles(prior: state.Prior, spec: SampleSpec, users: np.ndarray,
                    running: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The profiles of `users` [g] from their state (all zero for a user without one): the same
    statistics as _profiles computes from the whole history (`running` from the state's recent
    events)."""
    from etl import state

    rows = prior.rows(users)
    counts = prior.take(prior.behavior_counts, rows)  # [g, behaviors]
    statistics = [counts[:, code] for code in range(spec.behaviors)]
    statistics.append(prior.take(prior.event_count, rows))
    statistics.append(prior.take(prior.active_days, rows))
    distinct, top_values, top_offsets = state.top_categories(prior, rows, spec.top_categories)
    statistics.append(distinct)
    if spec.with_watch_time:
        statistics.append(np.maximum(prior.take(prior.watch_time_total, rows) - running, 0.0))
    dense = np.log1p(np.stack(statistics, axis=1).astype(np.float64)).astype(np.float32)
    return dense, top_values, top_offsets


def _negatives(chunk: EventChunk, spec: SampleSpec, pools: DayPools | None,
               request: np.ndarray, time_start: np.ndarray, index: np.ndarray,
               prior: state.Prior | None = None):
    """-> (negative items, their categories, keep mask [R]).

    Items/categories are [R, K] with -1 for none, or lists of arrays when the count varies by
    more than exclusion (ubr4ctr, mimn_sim)."""
    count = len(request)
    none = np.full((count, 0), -1, dtype=np.int64)
    if spec.requests == "labeled" or spec.draws == 0:
        return none, none, np.ones(count, dtype=bool)
    user, ts, item = chunk.user_id[request], chunk.ts[request], chunk.item_id[request]
    sampled_count = max(spec.negatives, 1) if spec.replace_probability > 0 else spec.negatives
    # Draw k + 4 first; only rows left with fewer than k usable draws get all `draws` (the kept
    # draws are the first k usable ones either way, so the result is the same).
    first_width = min(spec.draws, sampled_count + 4)
    rows = np.arange(count)
    drawn, drawn_category, keep = _usable_draws(chunk, spec, pools, request, rows, first_width,
                                                prior)
    short = np.flatnonzero(keep.sum(axis=1) < sampled_count)
    if len(short) and first_width < spec.draws:
        full = _usable_draws(chunk, spec, pools, request, short, spec.draws, prior)
        pad = ((0, 0), (0, spec.draws - first_width))
        drawn = np.pad(drawn, pad, constant_values=-1)
        drawn_category = np.pad(drawn_category, pad, constant_values=-1)
        keep = np.pad(keep, pad)
        drawn[short], drawn_category[short], keep[short] = full
    # Left-align the kept draws: [R, k] with -1 padding, in draw order.
    order = np.argsort(~keep, axis=1, kind="stable")[:, :sampled_count]
    kept = np.take_along_axis(keep, order, axis=1)
    sampled = np.where(kept, np.take_along_axis(drawn, order, axis=1), -1)
    sampled_category = np.where(kept, np.take_along_axis(drawn_category, order, axis=1), -1)
    has = kept.sum(axis=1)
    if spec.replace_probability > 0:  # mimn_sim: the target replaced by its sampled item
        replace = (_uniform01(spec.seed, SALT_REPLACE, user, ts, item)
                   < spec.replace_probability) & (has > 0)
        items = [sampled[r, :1] if replace[r] else sampled[r, :0] for r in range(count)]
        categories = [sampled_category[r, :1] if replace[r] else sampled_category[r, :0]
                      for r in range(count)]
        return items, categories, np.ones(count, dtype=bool)
    if spec.history_fraction > 0:
        return _with_own_history(chunk, spec, request, sampled, sampled_category, time_start)
    return sampled, sampled_category, has > 0


def _usable_draws(chunk: EventChunk, spec: SampleSpec, pools: DayPools | None,
                  request: np.ndarray, rows: np.ndarray, width: int,
                  prior: state.Prior | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draws 0..width-1 of the requests `request[rows]` -> (items, categories, keep) [r, width];
    keep: the first k usable draws (not excluded, not a repeat)."""
    request = request[rows]
    user, ts, item = chunk.user_id[request], chunk.ts[request], chunk.item_id[request]
    drawn = np.full((len(request), width), -1, dtype=np.int64)
    drawn_category = drawn.copy()
    dates = chunk.date[request]
    for day in np.unique(dates):
        on_day = np.flatnonzero(dates == day)
        pool = pools.days.get(str(day)) if pools is not None else None
        if pool is not None:
            drawn[on_day], drawn_category[on_day] = pool.draw(
                user[on_day], ts[on_day], item[on_day], width, spec.uniform, spec.seed)
    valid = (drawn >= 0) & (drawn != item[:, None])
    if spec.exclude_history:
        valid &= ~_touched_before(chunk, request, drawn)
        if prior is not None:  # items of the days before the chunk's recent events too
            valid &= ~_in_prior_items(prior, user, drawn)
    sampled_count = max(spec.negatives, 1) if spec.replace_probability > 0 else spec.negatives
    return drawn, drawn_category, first_k_distinct(drawn, valid, sampled_count)


def _touched_before(chunk: EventChunk, request: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """[r, J] whether the request's user had an event with the drawn item before the request
    (events are sorted by user then time: a (user, item) pair's first event is its earliest).
    A hash lookup per draw (pandas' Index), not a binary search: the draws outnumber the events."""
    import pandas as pd

    if len(request) == 0:
        return np.zeros(drawn.shape, dtype=bool)
    user_index = np.cumsum(np.r_[True, chunk.user_id[1:] != chunk.user_id[:-1]]) - 1
    # -1 (no draw) becomes item 0: such draws are invalid whatever this returns.
    event_key, draw_key = _keys(user_index, chunk.item_id,
                                np.repeat(user_index[request], drawn.shape[1]),
                                np.maximum(drawn.ravel(), 0))
    order = np.lexsort((np.arange(len(chunk)), event_key))
    sorted_key = event_key[order]
    first = np.r_[True, sorted_key[1:] != sorted_key[:-1]]
    pair_first_ts = chunk.ts[order][first]
    found = pd.Index(sorted_key[first]).get_indexer(draw_key)
    touched = (found >= 0) & (pair_first_ts[found] < np.repeat(chunk.ts[request],
                                                                drawn.shape[1]))
    return touched.reshape(drawn.shape)


def _in_prior_items(prior: state.Prior, user: np.ndarray, drawn: np.ndarray) -> np.ndarray:
    """[r, J] whether the drawn item is among the request's user's items in `prior` (all of them
    before the chunk's day, so before the request)."""
    import pandas as pd

    rows = prior.rows(user)
    owner = np.repeat(np.arange(len(prior.user_id)), np.diff(prior.item_offsets))
    item_key, draw_key = _keys(owner, prior.item_id, np.repeat(rows, drawn.shape[1]),
                               np.maximum(drawn.ravel(), 0))
    found = pd.Index(item_key).get_indexer(draw_key) >= 0
    return (found & (np.repeat(rows, drawn.shape[1]) >= 0)).reshape(drawn.shape)


def _with_own_history(chunk: EventChunk, spec: SampleSpec, request: np.ndarray,
                      sampled: np.ndarray, sampled_category: np.ndarray,
                      time_start: np.ndarray):
    """ubr4ctr: negative slot j is, with probability history_fraction, one of the user's own
    events of the same day before the request (another item: it lies in the request's pool),
    else the j-th sampled item. A loop over requests: ubr4ctr is not the benchmark protocol."""
    user, ts, item = chunk.user_id[request], chunk.ts[request], chunk.item_id[request]
    first_of_day = _day_first(chunk)[request]
    use_own = _uniform01(spec.seed, SALT_OWN, user[:, None], ts[:, None], item[:, None],
                         np.arange(spec.negatives)[None, :]) < spec.history_fraction
    pick = _uniform01(spec.seed, SALT_PICK, user[:, None], ts[:, None], item[:, None],
                      np.arange(spec.negatives)[None, :])
    items, categories = [], []
    for r in range(len(request)):
        lo, hi = first_of_day[r], time_start[request[r]]
        own = np.flatnonzero(chunk.item_id[lo:hi] != item[r]) + lo
        row_items, row_categories = [], []
        for j in range(spec.negatives):
            if use_own[r, j] and len(own):
                chosen = own[int(pick[r, j] * len(own))]
                row_items.append(chunk.item_id[chosen])
                row_categories.append(chunk.category_id[chosen])
            elif sampled[r, j] >= 0:
                row_items.append(sampled[r, j])
                row_categories.append(sampled_category[r, j])
        items.append(np.asarray(row_items, dtype=np.int64))
        categories.append(np.asarray(row_categories, dtype=np.int64))
    return items, categories, np.array([len(row) > 0 for row in items], dtype=bool)


def _day_first(chunk: EventChunk) -> np.ndarray:
    """[N] index of the first event of each event's user-day."""
    change = np.ones(len(chunk), dtype=bool)
    change[1:] = (chunk.user_id[1:] != chunk.user_id[:-1]) | (chunk.date[1:] != chunk.date[:-1])
    return run_starts(change)


def _list(values: np.ndarray, offsets: np.ndarray, value_type: pa.DataType) -> pa.Array:
    return pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32), pa.int32()),
                                    pa.array(values, value_type))


SAMPLE_FIELDS = [
    ("user_id", pa.int64()), ("date", pa.string()),
    ("timeline_item_id", pa.list_(pa.int64())), ("timeline_category_id", pa.list_(pa.int64())),
    ("timeline_behavior", pa.list_(pa.int32())), ("timeline_ts", pa.list_(pa.int64())),
    ("timeline_watch_time", pa.list_(pa.float32())), ("request_ts", pa.list_(pa.int64())),
    ("request_history_end", pa.list_(pa.int32())),
    ("request_num_candidates", pa.list_(pa.int32())),
    ("candidate_item_id", pa.list_(pa.int64())), ("candidate_category_id", pa.list_(pa.int64())),
    ("candidate_label", pa.list_(pa.int32())), ("profile_dense", pa.list_(pa.float32())),
    ("profile_top_category", pa.list_(pa.int64())),
]
SAMPLE_SCHEMA = pa.schema(SAMPLE_FIELDS)
# The Spark DDL of the Arrow UDF's output (same names and types).
SAMPLE_DDL = ", ".join(
    f"{name} {'array<' if pa.types.is_list(t) else ''}"
    f"{ {pa.int64(): 'bigint', pa.int32(): 'int', pa.float32(): 'float', pa.string(): 'string'}[t.value_type if pa.types.is_list(t) else t]}"  # noqa: E501
    f"{'>' if pa.types.is_list(t) else ''}"
    for name, t in SAMPLE_FIELDS
)


def empty_batch() -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist([], schema=SAMPLE_SCHEMA)


def _batch(chunk, spec, group_start, timeline, timeline_offsets, request, request_offsets,
           history_end, per_request, candidate_item, candidate_category, candidate_label,
           group_candidate_offsets, dense, top_values, top_offsets) -> pa.RecordBatch:
    groups = len(group_start)
    dense_offsets = np.arange(groups + 1, dtype=np.int64) * dense.shape[1]
    columns = [
        pa.array(chunk.user_id[group_start], pa.int64()),
        pa.array(chunk.date[group_start], pa.string()),
        _list(chunk.item_id[timeline], timeline_offsets, pa.int64()),
        _list(chunk.category_id[timeline], timeline_offsets, pa.int64()),
        _list(chunk.behavior[timeline].astype(np.int32), timeline_offsets, pa.int32()),
        _list(chunk.ts[timeline], timeline_offsets, pa.int64()),
        _list(chunk.watch_time[timeline].astype(np.float32), timeline_offsets, pa.float32()),
        _list(chunk.ts[request], request_offsets, pa.int64()),
        _list(history_end, request_offsets, pa.int32()),
        _list(per_request.astype(np.int32), request_offsets, pa.int32()),
        _list(candidate_item, group_candidate_offsets, pa.int64()),
        _list(candidate_category, group_candidate_offsets, pa.int64()),
        _list(candidate_label, group_candidate_offsets, pa.int32()),
        _list(dense.ravel(), dense_offsets, pa.float32()),
        _list(top_values, top_offsets, pa.int64()),
    ]
    return pa.RecordBatch.from_arrays(columns, schema=SAMPLE_SCHEMA)


def whole_user_tables(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.Table]:
    """User-sorted batches -> tables of about CHUNK_EVENTS rows that each hold whole users."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows < CHUNK_EVENTS:
            continue
        table = pa.Table.from_batches(pending).combine_chunks()
        users = table.column("user_id").to_numpy()
        cut = int(np.searchsorted(users, users[-1]))  # the last user may go on: keep it
        if cut > 0:
            yield table.slice(0, cut)
        pending = table.slice(cut).to_batches()
        pending_rows = table.num_rows - cut
    if pending_rows:
        yield pa.Table.from_batches(pending).combine_chunks()
