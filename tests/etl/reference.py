"""A small pure-Python reference of the negative sampler, written from its definition
(docs/etl.md "Negative sampling"), independent of etl/: the tables must match it exactly.

events: dicts with user_id, item_id, category_id, behavior, ts, date (the `events` table).
"""

from __future__ import annotations

from collections import defaultdict

MASK = (1 << 64) - 1


def _mix(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def draw_hash(seed: int, *parts: int) -> int:
    h = _mix(seed & MASK)
    for part in parts:
        h = _mix(h ^ (part & MASK))
    return h


def day_pools(events: list[dict]) -> dict[str, list[dict]]:
    """date -> the day's events in pool order (ts, user, item, behavior, category)."""
    pools = defaultdict(list)
    for event in events:
        pools[event["date"]].append(event)
    for pool in pools.values():
        pool.sort(key=lambda e: (e["ts"], e["user_id"], e["item_id"], e["behavior"],
                                 e["category_id"]))
    return pools


def candidates(events: list[dict], negatives: int, uniform: bool, exclude_history: bool,
               seed: int, positive_behavior: int = 1) -> dict[tuple, list[tuple] | None]:
    """(user, date, ts, item) of every request (every `positive_behavior` event) -> its
    candidates [(item, category, label)], positive first; None when it is dropped."""
    pools = day_pools(events)
    by_user = defaultdict(list)
    for event in events:
        by_user[event["user_id"]].append(event)
    draws = 2 * negatives + 4
    result = {}
    for event in events:
        if event["behavior"] != positive_behavior:
            continue
        user, ts, item = event["user_id"], event["ts"], event["item_id"]
        pool = [e for e in pools[event["date"]] if e["ts"] < ts]
        if uniform:  # distinct items, in the order of their first event
            first = {}
            for e in pool:
                first.setdefault(e["item_id"], e)
            pool = list(first.values())
        excluded = {item}
        if exclude_history:
            excluded |= {e["item_id"] for e in by_user[user] if e["ts"] < ts}
        chosen = []
        for j in range(draws if pool else 0):
            drawn = pool[draw_hash(seed, user, ts, item, j) % len(pool)]
            if drawn["item_id"] in excluded or drawn["item_id"] in {c[0] for c in chosen}:
                continue
            if len(chosen) < negatives:
                chosen.append((drawn["item_id"], drawn["category_id"], 0))
        key = (user, event["date"], ts, item)
        result[key] = [(item, event["category_id"], 1), *chosen] if chosen else None
    return result


def table_candidates(samples: list[dict]) -> dict[tuple, list[tuple]]:
    """The samples table's requests in the same form as `candidates` (kept requests only)."""
    result = {}
    for row in samples:
        offset = 0
        for ts, size in zip(row["request_ts"], row["request_num_candidates"], strict=True):
            items = row["candidate_item_id"][offset:offset + size]
            key = (row["user_id"], row["date"], ts, items[0])
            result[key] = list(zip(items, row["candidate_category_id"][offset:offset + size],
                                   row["candidate_label"][offset:offset + size], strict=True))
            offset += size
    return result
