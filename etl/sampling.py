"""Negative draws from the item population as of the request's own timestamp (numpy, no Spark).

The pool of a request at time t on day D (calendar day in the source's time zone) is every event
of day D, of every user and behavior, with ts < t (docs/etl.md, "Negative sampling"):

- `popularity`: the item of a uniformly drawn event of the pool (exact popularity weighting);
- `uniform`: a uniformly drawn distinct item of the pool.

Draw j of a request is `draw_hash(seed, user, ts, item, j) mod n`, an index into the pool (n its
size), so the same input and seed give the same draws whatever the partitioning. Why the same day:
an item's share among the day's events before t is its share at t, so neither the day-level
novelty of an item nor an untrained embedding of an item first seen that day separates positives
from negatives.

Shapes: E events of one day, I distinct items of one day, R requests, J draws per request.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MASK = (1 << 64) - 1
_GOLDEN, _MIX1, _MIX2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer on uint64 (wrapping arithmetic)."""
    x = x + np.uint64(_GOLDEN)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(_MIX1)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(_MIX2)
    return x ^ (x >> np.uint64(31))


def draw_hash(seed: int, *parts: np.ndarray) -> np.ndarray:
    """uint64 hash of (seed, *parts), element-wise; parts are broadcast against each other.

    h = mix(seed); h = mix(h ^ part) for each part. Parts are non-negative integers (ids, unix
    seconds, draw indices), taken modulo 2**64.
    """
    with np.errstate(over="ignore"):
        h = _mix(np.asarray(seed & MASK, dtype=np.uint64))
        for part in parts:
            h = _mix(h ^ np.asarray(part).astype(np.uint64))
    return h


@dataclass(frozen=True)
class DayPool:
    """One day's events in pool order (ts, user_id, item_id, behavior, category_id).

    Args:
        ts / item / category: [E] the events' times, items and categories in pool order.
        first_ts / first_item / first_category: [I] the day's distinct items in the order of
            their first event, with that event's time and category.
    """

    ts: np.ndarray
    item: np.ndarray
    category: np.ndarray
    first_ts: np.ndarray
    first_item: np.ndarray
    first_category: np.ndarray

    @staticmethod
    def from_events(ts: np.ndarray, user: np.ndarray, item: np.ndarray, behavior: np.ndarray,
                    category: np.ndarray) -> DayPool:
        order = np.lexsort((category, behavior, item, user, ts))  # last key sorts first
        ts, item, category = ts[order], item[order], category[order]
        _, first = np.unique(item, return_index=True)
        first.sort()  # positions of each item's first event, in pool order
        return DayPool(ts, item, category, ts[first], item[first], category[first])

    def draw(self, user: np.ndarray, ts: np.ndarray, item: np.ndarray, draws: int,
             uniform: bool, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """-> items [R, J], categories [R, J] of the requests (user, ts, item) [R]; -1 where the
        request's pool is empty."""
        times, items, categories = (
            (self.first_ts, self.first_item, self.first_category) if uniform
            else (self.ts, self.item, self.category)
        )
        size = np.searchsorted(times, ts, side="left").astype(np.uint64)  # [R] pool before ts
        index = np.arange(draws, dtype=np.uint64)[None, :]
        h = draw_hash(seed, user[:, None], ts[:, None], item[:, None], index)  # [R, J]
        empty = size == 0
        position = (h % np.maximum(size, 1)[:, None]).astype(np.int64)
        drawn_items = np.where(empty[:, None], -1, items[position] if len(items) else -1)
        drawn_categories = np.where(empty[:, None], -1,
                                    categories[position] if len(items) else -1)
        return drawn_items, drawn_categories


@dataclass(frozen=True)
class DayPools:
    """date (yyyy-MM-dd) -> DayPool, for the days that have requests."""

    days: dict[str, DayPool]

    @staticmethod
    def from_arrays(date: np.ndarray, ts: np.ndarray, user: np.ndarray, item: np.ndarray,
                    behavior: np.ndarray, category: np.ndarray) -> DayPools:
        days = {}
        for day in np.unique(date):
            mask = date == day
            days[str(day)] = DayPool.from_events(ts[mask], user[mask], item[mask],
                                                 behavior[mask], category[mask])
        return DayPools(days)

    @property
    def events(self) -> int:
        return sum(len(pool.ts) for pool in self.days.values())
