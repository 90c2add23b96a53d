"""Seeded synthetic raw logs in the exact formats the ETL reads, for tests, demos and benchmarks.

    python -m etl.synthetic taobao --output RAW.csv --users 1000 --categories 200 --days 9 \
        --seed 2017 [--items N] [--catalog long_tail|dense]
    python -m etl.synthetic feed --output FEED_DIR --users 1000 --authors 500 --days 7 \
        --seed 2017 [--items N] [--catalog long_tail|dense] [--planted-context STRENGTH ...]

**taobao** writes the Tianchi UserBehavior CSV: no header, `user_id,item_id,category_id,
behavior_type,timestamp`, behaviors `pv|buy|cart|fav`, unix seconds, consecutive days starting
2017-11-25 00:00 China time (Asia/Shanghai, UTC+8), rows sorted by user then time like the real
file.

**feed** writes a WeChat-Channels-like feed log (schema in docs/etl.md): `FEED_DIR/events.csv`
with header `user_id,item_id,author_id,click,timestamp,watch_time` (one row per impression) and
`FEED_DIR/profiles.csv` with header `user_id,age_bucket,gender,region,education`.

**Catalog** (`--catalog`). `long_tail` (the default) is shaped like the real logs: item
popularity is one global Zipf law (exponent 0.9) over a catalog of about one item per expected
event (`--items` default: users x mean events), and 40 % of the items are released on a later day
(uniform over days 2..N) and cannot be drawn before it, so new items keep appearing. Measured on
the defaults (`taobao --users 1000 --seed 2017`: 104,477 events; `feed --users 1000`: 151,326
impressions):

| log | distinct items | once | twice | >= 10 times | top 1 % of items: events | new that day |
|---|---|---|---|---|---|---|
| taobao, long_tail | 27,801 | 51 % | 22 % | 4.9 % | 31 % | 52 % |
| feed, long_tail | 43,711 | 56 % | 20 % | 4.6 % | 30 % | 52 % |
| taobao, dense (before) | 12,795 | 31 % | 19 % | 14.8 % | 24 % | 28 % |

("once": share of distinct items seen once; "new that day": mean share of a day's distinct items
that no earlier day had, days 2..N. Taobao's cart/fav/buy follow-ups and the 8 % in-session
revisits repeat an item the user just viewed, which is why "twice" is common.) `dense` is the
earlier demo catalog, byte for byte: 20,000 items, all available from day 1, Zipf 1.1 within each
category. Every run prints the measured shape (`catalog_shape`) on stderr.

**Planted context** (feed only, `--planted-context STRENGTH`): data with a known answer, a click
effect that depends on two items co-occurring far back in the history; the generative process is
in etl/planted_context.py.

What makes the data learnable (and the consecutive context matter, which is what CAIN exploits):
- items belong to categories (authors); item popularity is Zipf-skewed (globally for the long
  tail, within each category for the dense catalog) and categories themselves are Zipf-skewed;
- categories form *themes* (blocks of `THEME_SIZE` neighbouring ids);
- a user has a few favourite categories; activity per user is log-normal (a few heavy users);
- a user consumes in *sessions*: a session starts in a favourite (or popular) category and each
  next item stays in the current category, moves to a related category of the same theme, or
  jumps back to a favourite; so the next item depends on the session's recent items;
- Taobao: `cart`, `fav`, `buy` follow a `pv` of the same item a few seconds later (rates close to
  the real file: pv 89%, cart 5.5%, fav 3%, buy 2%);
- feed: a session's click probability and watch time start high and decay with fatigue, and jump
  back when the session moves to a favourite author (the paper's Figure 1 pattern); a user's
  impressions get distinct timestamps (ties moved a second earlier), so an impression's place in
  the log is its place in every later request's history.

`--dirty-rate` injects the defects the real file has (malformed lines, unknown behaviors, null
or negative ids, timestamps outside the date range, exact duplicates), so quarantine is exercised.
"""

from __future__ import annotations

import argparse
import csv
import enum
import sys
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from etl import planted_context

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


class CatalogShape(enum.StrEnum):
    """How item popularity is spread over the catalog."""

    LONG_TAIL = "long_tail"  # like the real logs: most items seen once or twice, new items daily
    DENSE = "dense"  # the earlier demo catalog: a few hundred events per item, all from day 1


# Long-tail catalog (the default). Item popularity is one global Zipf law over a catalog about as
# large as the log (ITEMS_PER_EVENT items per expected event), so most items are drawn once or
# twice while the head carries a large share of the traffic; NEW_ITEM_SHARE of the items are
# released on a later day (uniform over days 2..N) and cannot be drawn before it.
LONG_TAIL_EXPONENT = 0.9
ITEMS_PER_EVENT = 1.0
NEW_ITEM_SHARE = 0.4
DENSE_ITEMS = 20_000  # default catalog size of the dense shape


@dataclass(frozen=True)
class Catalog:
    """Items grouped by category; within a category ordered by release day, then popularity.

    Args:
        item_category: [M] category id of item id i + 1.
        category_items: category id -> its item ids (release day ascending, most popular first).
        category_cumulative: category id -> cumulative popularity over category_items.
        category_released: category id -> [days] how many of category_items exist on each day
            (a prefix of category_items, since they are ordered by release day).
        category_weights: [C] popularity of category id c + 1.
    """

    item_category: np.ndarray
    category_items: dict[int, np.ndarray]
    category_cumulative: dict[int, np.ndarray]
    category_released: dict[int, np.ndarray]
    category_weights: np.ndarray


def zipf_weights(size: int, exponent: float) -> np.ndarray:
    weights = 1.0 / np.arange(1, size + 1, dtype=np.float64) ** exponent
    return weights / weights.sum()


def make_catalog(
    rng: np.random.Generator, items: int, categories: int, days: int, shape: CatalogShape
) -> Catalog:
    """A catalog of `items` items in `categories` categories, for a log of `days` days."""
    # Category sizes are skewed, but every category gets at least one item.
    category_weights = zipf_weights(categories, 0.9)[rng.permutation(categories)]
    item_category = np.concatenate(
        [
            np.arange(1, categories + 1),
            rng.choice(categories, size=max(items - categories, 0), p=category_weights) + 1,
        ]
    )[:items]
    item_category = item_category[rng.permutation(items)]
    if shape is CatalogShape.LONG_TAIL:
        popularity = zipf_weights(items, LONG_TAIL_EXPONENT)[rng.permutation(items)]  # [M]
        later = rng.random(items) < NEW_ITEM_SHARE
        release = np.where(later, rng.integers(1, max(days, 2), size=items), 0) if days > 1 else (
            np.zeros(items, dtype=np.int64)
        )  # [M]
    category_items, category_cumulative, category_released = {}, {}, {}
    for category in range(1, categories + 1):
        members = np.flatnonzero(item_category == category) + 1
        if shape is CatalogShape.DENSE:
            members = members[rng.permutation(len(members))]  # popularity rank is random in id
            weights = zipf_weights(len(members), 1.1)
            released = np.full(days, len(members))
        else:
            members = members[np.argsort(-popularity[members - 1], kind="stable")]
            release[members[0] - 1] = 0  # the category's most popular item exists from day 1
            members = members[np.argsort(release[members - 1], kind="stable")]
            weights = popularity[members - 1]
            released = np.searchsorted(release[members - 1], np.arange(days), side="right")
        category_items[category] = members
        category_cumulative[category] = np.cumsum(weights)
        category_released[category] = released
    return Catalog(
        item_category, category_items, category_cumulative, category_released, category_weights
    )


def default_items(shape: CatalogShape, users: int, mean_events: float) -> int:
    """Catalog size when --items is not given: about one item per event for the long tail."""
    if shape is CatalogShape.DENSE:
        return DENSE_ITEMS
    return max(1, round(users * mean_events * ITEMS_PER_EVENT))


def catalog_shape(item_ids: np.ndarray, days: np.ndarray) -> dict[str, float]:
    """The measured shape of a log's items.

    Args:
        item_ids: [E] item id of every event.
        days: [E] day index of every event (0 = first day).

    Returns the share of distinct items seen once, twice and at least 10 times, the share of
    events on the 1 % most frequent items, and the mean share of a day's distinct items that no
    earlier day had (days 2..N: new items keep appearing).
    """
    _, counts = np.unique(item_ids, return_counts=True)
    ranked = np.sort(counts)[::-1]
    head = max(1, len(ranked) // 100)
    new_shares = []
    seen: set[int] = set()
    for day in np.unique(days):
        today = set(np.unique(item_ids[days == day]).tolist())
        if seen:
            new_shares.append(len(today - seen) / len(today))
        seen |= today
    return {
        "items": float(len(counts)),
        "events": float(len(item_ids)),
        "once": float(np.mean(counts == 1)),
        "twice": float(np.mean(counts == 2)),
        "ten_or_more": float(np.mean(counts >= 10)),
        "top_1pct_event_share": float(ranked[:head].sum() / ranked.sum()),
        "new_item_share_per_day": float(np.mean(new_shares)) if new_shares else 0.0,
    }


def format_shape(shape: dict[str, float]) -> str:
    return (
        f"{int(shape['items'])} items: {shape['once']:.0%} seen once, {shape['twice']:.0%} twice, "
        f"{shape['ten_or_more']:.1%} >= 10 times; top 1% of items carry "
        f"{shape['top_1pct_event_share']:.0%} of events; {shape['new_item_share_per_day']:.0%} of "
        "a day's items are new"
    )


def related_category(rng: np.random.Generator, category: int, categories: int) -> int:
    theme_start = (category - 1) // THEME_SIZE * THEME_SIZE + 1
    theme_end = min(theme_start + THEME_SIZE, categories + 1)
    return int(rng.integers(theme_start, theme_end))


def pick_item(rng: np.random.Generator, catalog: Catalog, category: int, day: int) -> int:
    """An item of `category` released by `day`, drawn by popularity."""
    released = int(catalog.category_released[category][day])
    cumulative = catalog.category_cumulative[category][:released]
    index = int(np.searchsorted(cumulative, rng.random() * cumulative[-1]))
    return int(catalog.category_items[category][min(index, released - 1)])


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
                item = pick_item(rng, catalog, category, day)
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
    users: int,
    items: int,
    categories: int,
    days: int,
    seed: int,
    mean_events: float,
    shape: CatalogShape = CatalogShape.LONG_TAIL,
) -> list[tuple[int, int, int, str, int]]:
    """Clean rows `(user_id, item_id, category_id, behavior, ts)`, sorted by user then time."""
    rng = np.random.default_rng(seed)
    catalog = make_catalog(rng, items, categories, days, shape)
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
        args.users, args.items, args.categories, args.days, args.seed, args.mean_events,
        args.catalog,
    )
    shape = catalog_shape(
        np.array([row[1] for row in rows]),
        (np.array([row[4] for row in rows]) - int(TAOBAO_START.timestamp())) // SECONDS_PER_DAY,
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
        f"{args.days} days from {TAOBAO_START.date()} -> {output}; {args.catalog} catalog of "
        f"{args.items}, {format_shape(shape)}",
        file=sys.stderr,
    )
    return len(lines)


DEMOGRAPHICS = {"age_bucket": 8, "gender": 3, "region": 32, "education": 6}


def distinct_timestamps(rows: list[list]) -> None:
    """Make a user's time-ordered timestamps strictly increasing, in place, by moving an event
    that shares its second with the next one a second earlier (sessions end clamped at the last
    second of a day). Then position in the log = position in every request's history."""
    for index in range(len(rows) - 2, -1, -1):
        rows[index][4] = min(rows[index][4], rows[index + 1][4] - 1)


def write_feed(args: argparse.Namespace) -> int:
    """Impressions with click labels and watch times, plus a profile table (docs/etl.md); with
    --planted-context, the planted effect of etl/planted_context.py and DIR/planted.json."""
    rng = np.random.default_rng(args.seed)
    catalog = make_catalog(rng, args.items, args.authors, args.days, args.catalog)
    counts = events_per_user(rng, args.users, args.mean_events)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    events_path, profiles_path = output / "events.csv", output / "profiles.csv"
    design = None
    if args.planted_context is not None:
        design = planted_context.make_design(
            args.planted_context, args.planted_window, *args.planted_lag, args.planted_rate,
            first_item_id=args.items + 1, author_weights=catalog.category_weights, seed=args.seed,
        )
    active_threshold = float(np.quantile(counts, planted_context.ACTIVE_QUANTILE))
    active_users, planted = [], planted_context.PlantedCounts()
    rows, item_ids, days = 0, [], []
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
                    user_rows.append([user_id, item, author, click, ts, round(float(watch), 1)])
            user_rows.sort(key=lambda row: (row[4], row[1]))
            distinct_timestamps(user_rows)
            if design is not None:
                active = bool(counts[user_id - 1] >= active_threshold)
                if active:
                    active_users.append(user_id)
                planted = planted + planted_context.plant(
                    planted_context.user_rng(args.seed, user_id),
                    design,
                    user_rows,
                    planted_context.susceptibility(active),
                )
            events.writerows(user_rows)
            rows += len(user_rows)
            item_ids.extend(row[1] for row in user_rows)
            first_second = int(FEED_START.timestamp())
            days.extend((row[4] - first_second) // SECONDS_PER_DAY for row in user_rows)
    shape = catalog_shape(np.array(item_ids), np.array(days))
    print(
        f"[synthetic] wrote {rows} feed impressions for {args.users} users, {args.days} days "
        f"from {FEED_START.date()} -> {events_path}, {profiles_path}; {args.catalog} catalog of "
        f"{args.items}, {format_shape(shape)}",
        file=sys.stderr,
    )
    if design is not None:
        path = planted_context.write_design(output, design, active_users)
        print(
            f"[synthetic] planted context strength {design.strength}: {planted.targets} target "
            f"impressions, {planted.with_pattern} with the pattern -> {path}",
            file=sys.stderr,
        )
    return rows


ITEMS_HELP = (
    "catalog size (default: users x mean events for the long-tail catalog, "
    f"{DENSE_ITEMS} for the dense one)"
)
CATALOG_HELP = "item popularity: long_tail (default, like the real logs) or dense (the old demo)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m etl.synthetic", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sources = parser.add_subparsers(dest="source", required=True)
    taobao = sources.add_parser("taobao", help="Taobao UserBehavior CSV (no header)")
    taobao.add_argument("--output", required=True, help="CSV file to write")
    taobao.add_argument("--users", type=int, default=1000)
    taobao.add_argument("--items", type=int, help=ITEMS_HELP)
    taobao.add_argument("--categories", type=int, default=200)
    taobao.add_argument("--days", type=int, default=9)
    taobao.add_argument("--mean-events", type=float, default=100.0,
                        help="mean events per user (the real file: about 101)")
    taobao.add_argument("--dirty-rate", type=float, default=0.001,
                        help="fraction of extra defective lines to inject (0 for a clean log)")
    taobao.add_argument("--seed", type=int, default=2017)
    taobao.add_argument("--catalog", type=CatalogShape, choices=list(CatalogShape),
                        default=CatalogShape.LONG_TAIL, help=CATALOG_HELP)
    feed = sources.add_parser("feed", help="feed log: events.csv + profiles.csv in a directory")
    feed.add_argument("--output", required=True, help="directory to write")
    feed.add_argument("--users", type=int, default=1000)
    feed.add_argument("--items", type=int, help=ITEMS_HELP)
    feed.add_argument("--authors", type=int, default=500)
    feed.add_argument("--days", type=int, default=7)
    feed.add_argument("--mean-events", type=float, default=150.0)
    feed.add_argument("--seed", type=int, default=2017)
    feed.add_argument("--catalog", type=CatalogShape, choices=list(CatalogShape),
                      default=CatalogShape.LONG_TAIL, help=CATALOG_HELP)
    feed.add_argument("--planted-context", type=float, metavar="STRENGTH",
                      help="plant a context effect of this strength (etl/planted_context.py; "
                      "0 = the control: the same log with no effect); writes DIR/planted.json")
    feed.add_argument("--planted-window", type=int, default=planted_context.DEFAULT_WINDOW,
                      help="largest distance between the two triggers that forms the pattern")
    feed.add_argument("--planted-lag", type=int, nargs=2, metavar=("MIN", "MAX"),
                      default=list(planted_context.DEFAULT_LAG),
                      help="the far window, in impressions before the target (MIN > short_len)")
    feed.add_argument("--planted-rate", type=float, default=planted_context.DEFAULT_RATE,
                      help="probability that an impression at or after lag MAX starts an episode")
    args = parser.parse_args(argv)
    if args.items is None:
        args.items = default_items(args.catalog, args.users, args.mean_events)
    for name in ("users", "items", "days"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.source == "taobao" and not 1 <= args.categories <= args.items:
        parser.error("--categories must be between 1 and --items")
    if args.source == "feed" and not 1 <= args.authors <= args.items:
        parser.error("--authors must be between 1 and --items")
    if args.source == "feed" and args.planted_context is not None:
        problem = planted_context.check_parameters(
            args.planted_context, args.planted_window, *args.planted_lag, args.planted_rate
        )
        if problem:
            parser.error(problem)
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.source == "taobao":
        write_taobao(args)
    else:
        write_feed(args)


if __name__ == "__main__":
    main()
