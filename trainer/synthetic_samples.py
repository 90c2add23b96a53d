"""Contract-conformant `samples` Delta tables without Spark, for trainer tests and benchmarks.

    python -m trainer.synthetic_samples --output /tmp/tiny --users 64 --days 4

writes `/tmp/tiny/samples` (Delta, partitioned by date, deletion vectors off) and
`/tmp/tiny/feature_spec.json` following contract/samples.py: one row per user-day with the timeline
(the last `max_len` events before the day, then the day's events), one request per positive event
of the day with its history end and sampled negatives, and profile columns. Users prefer a few
categories, so positives are learnable (AUC well above 0.5 after a few hundred steps). The last
day is the test split. Seeded: the same arguments write the same rows.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pyarrow as pa
from deltalake import write_deltalake

from contract import samples
from contract.feature_spec import FeatureSpec, SplitStats

DAY_SECONDS = 86_400
FIRST_DAY = 1_511_539_200  # 2017-11-25 00:00 UTC
DENSE_FEATURES = ("log_events", "log_active_days", "click_rate")


def synthetic_samples(
    users: int,
    days: int,
    *,
    items: int = 500,
    categories: int = 20,
    events_per_day: int = 12,
    requests_per_day: int = 3,
    negatives: int = 3,
    max_len: int = 50,
    demographics: dict[str, int] | None = None,
    seed: int = 0,
) -> tuple[pa.Table, FeatureSpec]:
    """Rows of the samples table and the matching spec (all days; the last one is `test`)."""
    generator = np.random.default_rng(seed)
    demographics = dict(demographics or {})
    item_category = generator.integers(0, categories, size=items + 1)
    rows: dict[str, list] = {name: [] for name in samples.NAMES}
    split_counts = {"train": [0, 0, 0], "test": [0, 0, 0]}  # requests, samples, positives
    dates = [
        f"2017-11-{25 + day:02d}" if 25 + day <= 30 else f"2017-12-{day - 5:02d}"
        for day in range(days)
    ]
    for user in range(1, users + 1):
        liked = generator.choice(categories, size=3, replace=False)
        liked_items = np.flatnonzero(np.isin(item_category, liked))
        profile_codes = [int(generator.integers(0, size)) for size in demographics.values()]
        timeline: list[tuple[int, int, int, int, float]] = []  # ts, item, category, behavior, watch
        for day, date in enumerate(dates):
            day_start = FIRST_DAY + day * DAY_SECONDS
            seconds = np.sort(generator.choice(DAY_SECONDS, size=events_per_day, replace=False))
            preferred = generator.random(events_per_day) < 0.7
            day_items = np.where(
                preferred,
                generator.choice(liked_items, size=events_per_day),
                generator.integers(1, items + 1, size=events_per_day),
            )
            day_events = [
                (
                    int(day_start + second),
                    int(item),
                    int(item_category[item]),
                    int(generator.integers(1, 5)),
                    float(np.round(generator.exponential(20.0), 1)),
                )
                for second, item in zip(seconds, day_items, strict=False)
            ]
            before = timeline[-max_len:]
            day_timeline = sorted(before + day_events)
            split = "test" if day == days - 1 else "train"
            positions = np.sort(
                generator.choice(np.arange(1, events_per_day), size=requests_per_day, replace=False)
            )
            request_ts, history_end, num_candidates = [], [], []
            candidate_item, candidate_category, candidate_label = [], [], []
            for position in positions:
                ts, item, category, _, _ = day_events[position]
                request_ts.append(ts)
                history_end.append(sum(1 for event in day_timeline if event[0] < ts))
                sampled = generator.integers(1, items + 1, size=negatives)
                candidate_item.extend([item, *sampled.tolist()])
                candidate_category.extend([category, *item_category[sampled].tolist()])
                candidate_label.extend([1] + [0] * negatives)
                num_candidates.append(1 + negatives)
            counts = split_counts[split]
            counts[0] += len(positions)
            counts[1] += len(positions) * (1 + negatives)
            counts[2] += len(positions)
            past = np.array([event[2] for event in timeline], dtype=np.int64)
            top = (
                np.argsort(-np.bincount(past, minlength=categories), kind="stable")[:3]
                if past.size
                else []
            )
            rows["user_id"].append(user)
            rows["date"].append(date)
            rows["split"].append(split)
            rows["timeline_item_id"].append([event[1] for event in day_timeline])
            rows["timeline_category_id"].append([event[2] for event in day_timeline])
            rows["timeline_behavior"].append([event[3] for event in day_timeline])
            rows["timeline_ts"].append([event[0] for event in day_timeline])
            rows["timeline_watch_time"].append([event[4] for event in day_timeline])
            rows["request_ts"].append(request_ts)
            rows["request_history_end"].append(history_end)
            rows["request_num_candidates"].append(num_candidates)
            rows["candidate_item_id"].append(candidate_item)
            rows["candidate_category_id"].append(candidate_category)
            rows["candidate_label"].append(candidate_label)
            rows["profile_dense"].append(
                [float(np.log1p(len(timeline))), float(np.log1p(day)), float(generator.random())]
            )
            rows["profile_top_category"].append([int(category) for category in top])
            rows["profile_demographic"].append(profile_codes)
            timeline.extend(day_events)
    table = pa.table(rows, schema=samples.arrow_schema())
    spec = FeatureSpec(
        source="feed" if demographics else "taobao",
        protocol="synthetic",
        behaviors=("pv", "cart", "fav", "buy"),
        num_users=users,
        num_items=items,
        num_categories=categories,
        max_item_id=items,
        max_category_id=categories - 1,
        max_len=max_len,
        short_len=min(8, max_len),
        top_categories=3,
        dense_features=DENSE_FEATURES,
        demographics=demographics,
        splits={
            split: SplitStats(
                dates=tuple(dates[:-1]) if split == "train" else (dates[-1],),
                requests=counts[0],
                samples=counts[1],
                positives=counts[2],
            )
            for split, counts in split_counts.items()
        },
        tables={"samples": "samples"},
    )
    return table, spec


def write_synthetic_samples(
    root: str | Path, users: int, days: int, *, files_per_day: int = 1, **options
) -> FeatureSpec:
    """Write ROOT/samples (Delta) and ROOT/feature_spec.json; returns the spec.

    files_per_day > 1 appends each day in several commits, so the table has uneven files as a
    real Spark output does (tests of the per-rank row balance need several files).
    """
    table, spec = synthetic_samples(users, days, **options)
    path = str(Path(root) / "samples")
    configuration = {"delta.enableDeletionVectors": "false"}
    chunks = np.array_split(np.arange(table.num_rows), files_per_day)
    for index, chunk in enumerate(chunks):
        write_deltalake(
            path,
            table.take(pa.array(chunk)),
            partition_by=["date"],
            mode="overwrite" if index == 0 else "append",
            configuration=configuration if index == 0 else None,
        )
    spec.write(root)
    return spec


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output", required=True, help="directory for samples/ and feature_spec.json"
    )
    parser.add_argument("--users", type=int, default=64)
    parser.add_argument("--days", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=50)
    parser.add_argument("--files-per-day", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args()
    spec = write_synthetic_samples(
        arguments.output,
        arguments.users,
        arguments.days,
        files_per_day=arguments.files_per_day,
        max_len=arguments.max_len,
        seed=arguments.seed,
    )
    print(
        f"wrote {arguments.output}: {spec.splits['train'].samples} train / "
        f"{spec.splits['test'].samples} test samples"
    )


if __name__ == "__main__":
    main()
