"""The synthetic generators write the exact raw formats, deterministically."""

from __future__ import annotations

import csv
from datetime import datetime, timedelta, timezone

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
