"""Seeded synthetic raw logs in the exact formats the ETL reads, for tests, demos and benchmarks.

    python -m etl.synthetic taobao --output RAW.csv --users 1000 --items 20000 --categories 200 \
        --days 9 --seed 2017
    python -m etl.synthetic feed --output FEED_DIR --users 1000 --items 20000 --authors 500 \
        --days 7 --seed 2017

**taobao** writes the Tianchi UserBehavior CSV: no header, `user_id,item_id,category_id,
behavior_type,timestamp`, behaviors `pv|buy|cart|fav`, unix seconds, consecutive days starting
2017-11-25 00:00 China time (Asia/Shanghai, UTC+8), rows sorted by user then time like the real
file.

**feed** writes a WeChat-Channels-like feed log (schema in docs/etl.md): `FEED_DIR/events.csv`
with header `user_id,item_id,author_id,click,timestamp,watch_time` (one row per impression) and
`FEED_DIR/profiles.csv` with header `user_id,age_bucket,gender,region,education`.

What makes the data learnable (and the consecutive context matter, which is what CAIN exploits):
- items belong to categories (authors); item popularity is Zipf-skewed within each category and
  categories themselves are Zipf-skewed;
- categories form *themes* (blocks of `THEME_SIZE` neighbouring ids);
- a user has a few favourite categories; activity per user is log-normal (a few heavy users);
- a user consumes in *sessions*: a session starts in a favourite (or popular) category and each
  next item stays in the current category, moves to a related category of the same theme, or
  jumps back to a favourite; so the next item depends on the session's recent items;
- Taobao: `cart`, `fav`, `buy` follow a `pv` of the same item a few seconds later (rates close to
  the real file: pv 89%, cart 5.5%, fav 3%, buy 2%);
- feed: a session's click probability and watch time start high and decay with fatigue, and jump
  back when the session moves to a favourite author (the paper's Figure 1 pattern).

`--dirty-rate` injects the defects the real file has (malformed lines, unknown behaviors, null
or negative ids, timestamps outside the date range, exact duplicates), so quarantine is exercised.
"""

from __future__ import annotations

import argparse
import csv
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

CHINA = timezone(timedelta(hours=8))
TAOBAO_START = datetime(2017, 11, 25, tzinfo=CHINA)
FEED_START = datetime(2024, 3, 4, tzinfo=CHINA)
THEME_SIZE = 5
SECONDS_PER_DAY = 86_400
# Probabilities of the next item's category within a session.
STAY_IN_CATEGORY = 0.6
MOVE_WITHIN_THEME = 0.25  # else: jump back to one of the user's favourite categories
REVISIT_ITEM = 0.08  # pv the same item again (the real log has many repeats)
FOLLOW_UP = {"cart": 0.062, "fav": 0.033, "buy": 0.023}  # per pv, same item, seconds later


@dataclass(frozen=True)
class Catalog:
    """Items grouped by category, each group ordered by popularity (most popular first).

    Args:
        item_category: [M] category id of item id i + 1.
        category_items: category id -> item ids of that category, most popular first.
        category_cumulative: category id -> cumulative popularity over category_items.
        category_weights: [C] popularity of category id c + 1.
    """

    item_category: np.ndarray
    category_items: dict[int, np.ndarray]
    category_cumulative: dict[int, np.ndarray]
    category_weights: np.ndarray


def zipf_weights(size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def make_catalog(rng: np.random.Generator, items: int, categories: int) -> Catalog:
    # Category sizes are skewed, but every category gets at least one item.
    category_weights = zipf_weights(categories, 0.9)[rng.permutation(categories)]
    item_category = np.concatenate(
        [
            np.arange(1, categories + 1),
            rng.choice(categories, size=max(items - categories, 0), p=category_weights) + 1,
        ]
    )[:items]
    item_category = item_category[rng.permutation(items)]
    category_items, category_cumulative = {}, {}
    for category in range(1, categories + 1):
        members = np.flatnonzero(item_category == category) + 1
        members = members[rng.permutation(len(members))]  # popularity rank is random in id
        category_items[category] = members
        category_cumulative[category] = np.cumsum(zipf_weights(len(members), 1.1))
    return Catalog(item_category, category_items, category_cumulative, category_weights)


def related_category(rng: np.random.Generator, category: int, categories: int) -> int:
    theme_start = (category - 1) // THEME_SIZE * THEME_SIZE + 1
    theme_end = min(theme_start + THEME_SIZE, categories + 1)
    return int(rng.integers(theme_start, theme_end))


def pick_item(rng: np.random.Generator, catalog: Catalog, category: int) -> int:
    cumulative = catalog.category_cumulative[category]
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1]))
    return int(catalog.category_items[category][min(index, len(cumulative) - 1)])


@dataclass(frozen=True)
class Session:
    """One session of consecutive consumption: items, their categories, timestamps, and whether
    each item was a jump back to a favourite category (which restores engagement in feeds)."""

    items: list[int]
    categories: list[int]
    timestamps: list[int]
    refreshed: list[bool]


def user_sessions(
    rng: np.random.Generator,
    catalog: Catalog,
    favourites: np.ndarray,
    favourite_weights: np.ndarray,
    events: int,
    start: datetime,
    days: int,
) -> list[Session]:
    categories = len(catalog.category_weights)
    sessions, produced = [], 0
    while produced < events:
        length = min(int(rng.geometric(1 / 8)), events - produced)
        day = int(rng.integers(days))
        # Activity peaks in the evening (China time), like the real logs.
        second = int(np.clip(rng.normal(20.5, 3.5), 0, 23.99) * 3600 + rng.integers(3600)) % 86_400
        ts = int(start.timestamp()) + day * SECONDS_PER_DAY + second
        last_second = day_end(ts, start)  # sessions stay within their day (and the range)
        if rng.random() < 0.8:
            category = int(rng.choice(favourites, p=favourite_weights))
        else:
            category = int(rng.choice(categories, p=catalog.category_weights)) + 1
        session = Session([], [], [], [])
        for position in range(length):
            refreshed = False
            if position and session.items and rng.random() < REVISIT_ITEM:
                item = session.items[int(rng.integers(len(session.items)))]
                category = int(catalog.item_category[item - 1])
            else:
                if position:
                    draw = rng.random()
                    if draw >= STAY_IN_CATEGORY + MOVE_WITHIN_THEME:
                        category = int(rng.choice(favourites, p=favourite_weights))
                        refreshed = True
                    elif draw >= STAY_IN_CATEGORY:
                        category = related_category(rng, category, categories)
                item = pick_item(rng, catalog, category)
            session.items.append(item)
            session.categories.append(category)
            session.timestamps.append(ts)
            session.refreshed.append(refreshed)
            ts = min(ts + 5 + int(rng.exponential(50)), last_second)
        sessions.append(session)
        produced += length
    return sessions


def user_favourites(
    rng: np.random.Generator, catalog: Catalog
) -> tuple[np.ndarray, np.ndarray]:
    categories = len(catalog.category_weights)
    count = min(int(rng.integers(2, 6)), categories)
    favourites = rng.choice(categories, size=count, replace=False, p=catalog.category_weights) + 1
    return favourites, rng.dirichlet(np.ones(count))


def events_per_user(rng: np.random.Generator, users: int, mean: float) -> np.ndarray:
    # Log-normal activity with the requested mean: most users are light, a few are very heavy.
    sigma = 1.0
    draws = rng.lognormal(np.log(mean) - sigma**2 / 2, sigma, size=users)
    return np.maximum(1, np.round(draws)).astype(np.int64)


def taobao_rows(
    users: int, items: int, categories: int, days: int, seed: int, mean_events: float
) -> list[tuple[int, int, int, str, int]]:
    """Clean rows `(user_id, item_id, category_id, behavior, ts)`, sorted by user then time."""
    rng = np.random.default_rng(seed)
    catalog = make_catalog(rng, items, categories)
    counts = events_per_user(rng, users, mean_events)
    rows: list[tuple[int, int, int, str, int]] = []
    for user_id in range(1, users + 1):
        favourites, weights = user_favourites(rng, catalog)
        pv_count = max(1, int(counts[user_id - 1] * 0.9))
        user_rows = []
        for session in user_sessions(
            rng, catalog, favourites, weights, pv_count, TAOBAO_START, days
        ):
            for item, category, ts in zip(session.items, session.categories, session.timestamps):
                user_rows.append((user_id, item, category, "pv", ts))
                for behavior, rate in FOLLOW_UP.items():
                    if rng.random() < rate:
                        later = min(ts + 1 + int(rng.integers(30)), day_end(ts, TAOBAO_START))
                        user_rows.append((user_id, item, category, behavior, later))
        user_rows.sort(key=lambda row: (row[4], row[1], row[3]))
        rows.extend(user_rows)
    return rows


def day_end(ts: int, start: datetime) -> int:
    """Last second of ts's day, so a follow-up never crosses midnight (or the last day)."""
    offset = (ts - int(start.timestamp())) // SECONDS_PER_DAY
    return int(start.timestamp()) + (offset + 1) * SECONDS_PER_DAY - 1


def dirty_taobao_lines(
    rng: np.random.Generator, clean: list[str], rate: float, days: int
) -> list[tuple[int, str]]:
    """Defective lines and the positions to insert them at: one of each kind in turn."""
    count = int(round(len(clean) * rate))
    start = int(TAOBAO_START.timestamp())
    out_of_range = [start - 3 * SECONDS_PER_DAY, start + (days + 2) * SECONDS_PER_DAY, 0, 2**31 + 7]
    dirty = []
    for index in range(count):
        line = clean[int(rng.integers(len(clean)))]
        user, item, category, behavior, ts = line.split(",")
        kind = index % 7
        if kind == 0:
            bad = f"{user},{item},{category},{behavior}"  # missing a field
        elif kind == 1:
            bad = f"{user},{item},{category},click,{ts}"  # unknown behavior
        elif kind == 2:
            bad = f"-{user},{item},{category},{behavior},{ts}"  # negative id
        elif kind == 3:
            bad = f"{user},,{category},{behavior},{ts}"  # null id
        elif kind == 4:
            bad = f"{user},{item},{category},{behavior},{out_of_range[index % 4]}"
        elif kind == 5:
            bad = line  # exact duplicate
        else:
            bad = f"{user},{item}x,{category},{behavior},{ts}"  # not a number
        dirty.append((int(rng.integers(len(clean) + 1)), bad))
    return dirty


def write_taobao(args: argparse.Namespace) -> int:
    rows = taobao_rows(
        args.users, args.items, args.categories, args.days, args.seed, args.mean_events
    )
    lines = [f"{u},{i},{c},{b},{t}" for u, i, c, b, t in rows]
    dirty = dirty_taobao_lines(
        np.random.default_rng(args.seed + 1), lines, args.dirty_rate, args.days
    )
    for position, line in sorted(dirty, reverse=True):
        lines.insert(position, line)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w") as handle:
        handle.write("\n".join(lines))
        handle.write("\n")
    print(
        f"[synthetic] wrote {len(lines)} lines ({len(dirty)} defective) for {args.users} users, "
        f"{args.days} days from {TAOBAO_START.date()} -> {output}",
        file=sys.stderr,
    )
    return len(lines)


DEMOGRAPHICS = {"age_bucket": 8, "gender": 3, "region": 32, "education": 6}


def write_feed(args: argparse.Namespace) -> int:
    """Impressions with click labels and watch times, plus a profile table (docs/etl.md)."""
    rng = np.random.default_rng(args.seed)
    catalog = make_catalog(rng, args.items, args.authors)
    counts = events_per_user(rng, args.users, args.mean_events)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    events_path, profiles_path = output / "events.csv", output / "profiles.csv"
    rows = 0
    with events_path.open("w", newline="") as events_file, profiles_path.open(
        "w", newline=""
    ) as profiles_file:
        events = csv.writer(events_file)
        profiles = csv.writer(profiles_file)
        events.writerow(["user_id", "item_id", "author_id", "click", "timestamp", "watch_time"])
        profiles.writerow(["user_id", *DEMOGRAPHICS])
        for user_id in range(1, args.users + 1):
            demographic = [int(rng.integers(size)) for size in DEMOGRAPHICS.values()]
            profiles.writerow([user_id, *demographic])
            favourites, weights = user_favourites(rng, catalog)
            # Demographics shift engagement a little, so PEG has something to find.
            base = 0.25 + 0.03 * demographic[0] / DEMOGRAPHICS["age_bucket"]
            user_rows = []
            for session in user_sessions(
                rng, catalog, favourites, weights, int(counts[user_id - 1]), FEED_START, args.days
            ):
                interest = 1.0
                for item, author, ts, refreshed in zip(
                    session.items, session.categories, session.timestamps, session.refreshed
                ):
                    # Fatigue: engagement decays along the session and recovers on a jump back
                    # to a favourite author; favourite authors are clicked more.
                    interest = 1.0 if refreshed else interest * 0.85
                    favourite = 1.6 if author in favourites else 0.7
                    probability = min(0.95, base * favourite * (0.4 + interest))
                    click = int(rng.random() < probability)
                    watch = rng.gamma(2.0, 12.0 * (0.3 + interest) * favourite) if click else 0.0
                    user_rows.append((user_id, item, author, click, ts, round(float(watch), 1)))
            user_rows.sort(key=lambda row: (row[4], row[1]))
            events.writerows(user_rows)
            rows += len(user_rows)
    print(
        f"[synthetic] wrote {rows} feed impressions for {args.users} users, {args.days} days "
        f"from {FEED_START.date()} -> {events_path}, {profiles_path}",
        file=sys.stderr,
    )
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m etl.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="source", required=True)
    taobao = sources.add_parser("taobao", help="Taobao UserBehavior CSV (no header)")
    taobao.add_argument("--output", required=True, help="CSV file to write")
    taobao.add_argument("--users", type=int, default=1000)
    taobao.add_argument("--items", type=int, default=20_000)
    taobao.add_argument("--categories", type=int, default=200)
    taobao.add_argument("--days", type=int, default=9)
    taobao.add_argument("--mean-events", type=float, default=100.0,
                        help="mean events per user (the real file: about 101)")
    taobao.add_argument("--dirty-rate", type=float, default=0.001,
                        help="fraction of extra defective lines to inject (0 for a clean log)")
    taobao.add_argument("--seed", type=int, default=2017)
    feed = sources.add_parser("feed", help="feed log: events.csv + profiles.csv in a directory")
    feed.add_argument("--output", required=True, help="directory to write")
    feed.add_argument("--users", type=int, default=1000)
    feed.add_argument("--items", type=int, default=20_000)
    feed.add_argument("--authors", type=int, default=500)
    feed.add_argument("--days", type=int, default=7)
    feed.add_argument("--mean-events", type=float, default=150.0)
    feed.add_argument("--seed", type=int, default=2017)
    args = parser.parse_args(argv)
    for name in ("users", "items", "days"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.source == "taobao" and not 1 <= args.categories <= args.items:
        parser.error("--categories must be between 1 and --items")
    if args.source == "feed" and not 1 <= args.authors <= args.items:
        parser.error("--authors must be between 1 and --items")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.source == "taobao":
        write_taobao(args)
    else:
        write_feed(args)


if __name__ == "__main__":
    main()
