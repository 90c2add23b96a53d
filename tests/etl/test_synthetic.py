"""The synthetic generators write the exact raw formats, deterministically."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest

from etl import synthetic

CHINA = timezone(timedelta(hours=8))


def generate(tmp_path, *extra: str):
    path = tmp_path / "log.csv"
    synthetic.main(["taobao", "--output", str(path), "--users", "20", "--items", "200",
                    "--categories", "15", "--days", "9", "--seed", "3", *extra])
    return path


def test_taobao_lines_have_the_userbehavior_format(tmp_path):
    lines = generate(tmp_path, "--dirty-rate", "0").read_text().splitlines()
    start = datetime(2017, 11, 25, tzinfo=CHINA).timestamp()
    end = datetime(2017, 12, 4, tzinfo=CHINA).timestamp()
    for line in lines:
        user, item, category, behavior, ts = line.split(",")
        assert int(user) > 0 and int(item) > 0 and int(category) > 0
        assert behavior in {"pv", "cart", "fav", "buy"}
        assert start <= int(ts) < end
    keys = [(int(line.split(",")[0]), int(line.split(",")[4])) for line in lines]
    assert keys == sorted(keys)  # by user, then time, like the real file


def test_taobao_is_deterministic_per_seed(tmp_path):
    first = generate(tmp_path).read_bytes()
    assert generate(tmp_path).read_bytes() == first


def test_taobao_follow_ups_act_on_a_viewed_item(tmp_path):
    rows = [line.split(",") for line in generate(tmp_path, "--dirty-rate", "0").read_text().split()]
    viewed = {(r[0], r[1]) for r in rows if r[3] == "pv"}
    assert all((r[0], r[1]) in viewed for r in rows if r[3] != "pv")


def test_dirty_rate_injects_defective_lines(tmp_path):
    clean = generate(tmp_path, "--dirty-rate", "0").read_text().splitlines()
    dirty = generate(tmp_path, "--dirty-rate", "0.05").read_text().splitlines()
    assert len(dirty) - len(clean) == round(len(clean) * 0.05)


def test_feed_writes_events_and_profiles(tmp_path):
    synthetic.main(["feed", "--output", str(tmp_path), "--users", "10", "--items", "100",
                    "--authors", "10", "--days", "2", "--seed", "1"])
    with (tmp_path / "events.csv").open() as handle:
        events = list(csv.DictReader(handle))
    with (tmp_path / "profiles.csv").open() as handle:
        profiles = list(csv.DictReader(handle))
    assert list(events[0]) == ["user_id", "item_id", "author_id", "click", "timestamp",
                               "watch_time"]
    assert {row["click"] for row in events} <= {"0", "1"}
    assert all(float(row["watch_time"]) == 0.0 for row in events if row["click"] == "0")
    assert any(float(row["watch_time"]) > 0 for row in events if row["click"] == "1")
    assert len(profiles) == 10 and set(profiles[0]) == {"user_id", *synthetic.DEMOGRAPHICS}


def test_long_tail_catalog_looks_like_the_real_logs(tmp_path):
    """Most items seen once or twice, a head carrying much of the traffic, new items every day."""
    path = tmp_path / "log.csv"
    synthetic.main(["taobao", "--output", str(path), "--users", "300", "--seed", "3",
                    "--dirty-rate", "0"])
    rows = [line.split(",") for line in path.read_text().splitlines()]
    start = datetime(2017, 11, 25, tzinfo=CHINA).timestamp()
    shape = synthetic.catalog_shape(
        np.array([int(row[1]) for row in rows]),
        (np.array([int(row[4]) for row in rows]) - int(start)) // 86_400,
    )
    assert shape["once"] > 0.45 and shape["once"] + shape["twice"] > 0.65
    assert shape["ten_or_more"] < 0.1
    assert shape["top_1pct_event_share"] > 0.2
    assert shape["new_item_share_per_day"] > 0.3


def test_dense_catalog_is_denser(tmp_path):
    shapes = {}
    for catalog in ("long_tail", "dense"):
        path = tmp_path / f"{catalog}.csv"
        synthetic.main(["taobao", "--output", str(path), "--users", "200", "--seed", "3",
                        "--dirty-rate", "0", "--catalog", catalog])
        items = np.array([int(line.split(",")[1]) for line in path.read_text().splitlines()])
        shapes[catalog] = synthetic.catalog_shape(items, np.zeros(len(items), dtype=np.int64))
    assert shapes["dense"]["once"] < shapes["long_tail"]["once"]


def test_catalog_shape_counts_items():
    shape = synthetic.catalog_shape(np.array([1, 2, 2, 3, 3, 3]), np.array([0, 0, 0, 1, 1, 1]))
    assert shape["items"] == 3 and shape["once"] == pytest.approx(1 / 3)
    assert shape["twice"] == pytest.approx(1 / 3)
    assert shape["top_1pct_event_share"] == pytest.approx(3 / 6)  # one item of three: item 3
    assert shape["new_item_share_per_day"] == pytest.approx(1.0)  # day 1: only item 3, new


def test_feed_timestamps_are_distinct_per_user(tmp_path):
    synthetic.main(["feed", "--output", str(tmp_path), "--users", "10", "--items", "100",
                    "--authors", "10", "--days", "2", "--seed", "1"])
    with (tmp_path / "events.csv").open() as handle:
        events = list(csv.DictReader(handle))
    per_user: dict[str, list[int]] = {}
    for row in events:
        per_user.setdefault(row["user_id"], []).append(int(row["timestamp"]))
    assert all(len(set(times)) == len(times) for times in per_user.values())
