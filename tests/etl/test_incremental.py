"""Incremental daily builds (`--date D --incremental`, etl/state.py): one day's events plus the
per-user state as of the day before give exactly the rows of a build from the whole history."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from deltalake import DeltaTable

from contract.feature_spec import FeatureSpec
from etl import build_sequences, state
from etl.sampling import DayPools
from etl.sequences import EVENT_COLUMNS, EventChunk, SampleSpec, process

DAYS = ("2017-11-25", "2017-11-26", "2017-11-27")  # conftest.DAYS
TABLES = ("events", "quarantine", "samples", "profiles", "state")


def table(root: Path, name: str) -> list[dict]:
    return DeltaTable(str(root / name)).to_pyarrow_table().to_pylist()


def canonical(root: Path, name: str, days: tuple[str, ...] | None = None) -> list[tuple]:
    """The table's rows (of `days`) as sorted tuples; with `days`, samples carry the split of
    tables built up to the last of them (the date split rolls: that day is test)."""
    rows = table(root, name)
    if days is not None:
        rows = [row for row in rows if row["date"] in days]
        for row in rows:
            if "split" in row:
                row["split"] = "test" if row["date"] == max(days) else "train"
    return sorted(tuple(repr(v) for v in row.values()) for row in rows)


# -- numpy: the state carries what process needs (no Spark) ---------------------------------

def random_log(seed: int = 0, events: int = 600, users: int = 15, max_watch: float = 100.0
               ) -> EventChunk:
    """Events of 3 days (Asia/Shanghai), sorted as the Arrow UDF gets them; watch times with full
    float32 bits, up to `max_watch` seconds."""
    generator = np.random.default_rng(seed)
    user = generator.integers(0, users, events)
    item = generator.integers(0, 60, events)
    day = generator.integers(0, 3, events)
    ts = 1511539200 + day * 86400 + generator.integers(0, 86400, events)
    behavior = generator.integers(1, 5, events).astype(np.int32)
    watch = (generator.random(events) * max_watch).astype(np.float32)
    order = np.lexsort((watch, item % 7, behavior, item, ts, user))
    return EventChunk(user[order], item[order], (item % 7)[order], behavior[order], ts[order],
                      watch[order], np.array(DAYS)[day][order])


def day_spec(day: str) -> SampleSpec:
    return SampleSpec(first_date=day, last_date=day, max_len=8, top_categories=3, behaviors=4,
                      positive_code=1, with_watch_time=True,
                      time_zone="Asia/Shanghai", requests="positive", negatives=5,
                      draws=14, uniform=False, exclude_history=True, history_fraction=0.0,
                      replace_probability=0.0, seed=3)


def subset(chunk: EventChunk, mask: np.ndarray) -> EventChunk:
    return EventChunk(*(getattr(chunk, name)[mask] for name in EVENT_COLUMNS))


def with_state(chunk: EventChunk, rows: pa.RecordBatch, day: str) -> pa.Table:
    """The frame state._with_state hands the Arrow UDF: the STATE rows of the day's users, then
    the day's events, sorted by user then source."""
    on_day = subset(chunk, chunk.date == day)
    active = np.isin(rows.column("user_id").to_numpy(), on_day.user_id)
    state_rows = pa.Table.from_batches([rows]).filter(pa.array(active))
    events = pa.table({name: getattr(on_day, name) for name in EVENT_COLUMNS})
    both = pa.concat_tables([
        state_rows.append_column(state.SOURCE, pa.array(np.zeros(len(state_rows), np.int32))),
        events.append_column(state.SOURCE, pa.array(np.ones(len(events), np.int32))),
    ], promote_options="default")
    order = np.lexsort((np.arange(len(both)), both.column(state.SOURCE).to_numpy(),
                        both.column("user_id").to_numpy()))
    return both.take(pa.array(order))


@pytest.mark.parametrize("max_watch", [100.0, 20_000.0])
@pytest.mark.parametrize("day", DAYS[1:])
def test_samples_from_the_state_equal_samples_from_the_whole_history(day, max_watch):
    """max_watch 20,000 s: many watches run across midnight (left out of the next profile)."""
    log = random_log(max_watch=max_watch)
    pools = DayPools.from_arrays(log.date, log.ts, log.user_id, log.item_id, log.behavior,
                                 log.category_id)
    expected = process(subset(log, log.date <= day), day_spec(day), pools).to_pylist()
    before = state.fold(subset(log, log.date < day), None, day_spec(day))
    chunk, prior = state.split_batch(with_state(log, before, day), behaviors=4)
    assert process(chunk, day_spec(day), pools, prior).to_pylist() == expected
    # Histories longer than max_len, items and categories only the state remembers: covered.
    assert max(len(row["touched_item_id"]) for row in before.to_pylist()) > 8


def test_a_profile_leaves_out_the_watches_still_running_at_its_midnight():
    """log_watch_time of (u, D): the watch time of u's events before D less the watches among u's
    last max_len events before D that end at or after D's midnight (recomputed here in plain
    Python); the long watches of this log make some profiles differ from the plain total."""
    log = random_log(max_watch=20_000.0)
    midnight = {day: 1511539200 + 86400 * index for index, day in enumerate(DAYS)}
    pools = DayPools.from_arrays(log.date, log.ts, log.user_id, log.item_id, log.behavior,
                                 log.category_id)
    rows = process(log, day_spec(DAYS[2]), pools).to_pylist()
    differs = 0
    for row in rows:
        earlier = [i for i in range(len(log)) if log.user_id[i] == row["user_id"]
                   and log.date[i] < row["date"]]
        total = sum(float(log.watch_time[i]) for i in earlier)
        running = sum(float(log.watch_time[i]) for i in earlier[-8:]  # max_len
                      if log.ts[i] * 1000 + round(float(log.watch_time[i]) * 1000)
                      >= midnight[row["date"]] * 1000)
        assert row["profile_dense"][-1] == pytest.approx(np.log1p(total - running), rel=1e-6)
        differs += running > 0
    assert rows and differs > 0


def test_folding_a_day_into_the_state_equals_folding_the_whole_history():
    log = random_log(seed=1)
    day = DAYS[2]
    before = state.fold(subset(log, log.date < day), None, day_spec(day))
    chunk, prior = state.split_batch(with_state(log, before, day), behaviors=4)
    folded = {row["user_id"]: row for row in state.fold(chunk, prior, day_spec(day)).to_pylist()}
    whole = {row["user_id"]: row for row in state.fold(log, None, day_spec(day)).to_pylist()}
    assert folded and all(whole[user] == row for user, row in folded.items())
    # Users without events that day keep their row: the same as the whole history's.
    idle = set(whole) - set(folded)
    assert all(whole[user] == row for user, row in
               ((r["user_id"], r) for r in before.to_pylist()) if user in idle)


def test_the_state_version_of_a_day_is_the_newest_not_superseded_by_an_earlier_day():
    history = [(5, DAYS[2]), (4, DAYS[1]), (3, DAYS[0]), (2, DAYS[2]), (1, DAYS[1])]
    assert state.version_as_of(history, DAYS[2]) == 5
    assert state.version_as_of(history, DAYS[1]) == 4
    # Version 1 (as of day 2) predates a rebuild of day 1 (version 3): stale.
    assert state.version_as_of([(3, DAYS[0]), (1, DAYS[1])], DAYS[1]) is None
    assert state.version_as_of([(7, None), (6, DAYS[1])], DAYS[1]) is None
    assert state.version_as_of([], DAYS[0]) is None


def test_maintenance_commits_keep_the_state_of_the_day_and_are_where_to_read_it():
    """An OPTIMIZE or VACUUM of `state` (a maintenance job, auto-optimize) rewrites files but no
    row: the state as of the day is still there, read at the newest such commit (the older
    version's files may be vacuumed)."""
    maintenance = state.MAINTENANCE
    history = [(9, maintenance), (8, maintenance), (7, DAYS[1]), (6, maintenance), (5, DAYS[0])]
    assert state.version_as_of(history, DAYS[1]) == 7
    assert state.readable_version(history, 7) == 9
    assert state.version_as_of(history, DAYS[0]) == 5
    assert state.readable_version(history, 5) == 6  # 7 holds other rows
    assert state.version_as_of([(8, maintenance), (7, None), (6, DAYS[1])], DAYS[1]) is None


# -- Spark: the whole job ---------------------------------------------------------------

@pytest.mark.spark
def test_day_by_day_incremental_builds_equal_the_full_build(full_build, daily_build):
    """conftest.DAILY_CHAIN: the range's first day (no state needed), then each day on the state
    of the day before (Delta MERGE); the last day rerun from the whole history (the state is
    rebuilt), then incrementally (from the state as of the day before, not from its own)."""
    for root in (daily_build.rerun_by_date, daily_build.root):
        for name in TABLES:
            assert canonical(root, name) == canonical(full_build, name), (root, name)
    operations = DeltaTable(str(daily_build.root / "state")).history()
    assert [entry["operation"] for entry in operations][::-1] == [
        "WRITE", "MERGE", "MERGE", "WRITE", "WRITE"]


@pytest.mark.spark
def test_maintenance_on_the_state_table_does_not_break_the_daily_chain(
    spark, full_build, daily_build, raw_log, build_cli, tmp_path
):
    """OPTIMIZE and a table property set on `state` between two days (commits without this job's
    metadata) used to stop the next --incremental run ("the newest state is as of None")."""
    root = shutil.copytree(daily_build.first_day, tmp_path / "root")  # --date DAYS[0] alone
    path = root / "state"
    spark.sql(f"OPTIMIZE delta.`{path}`")
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES ('delta.logRetentionDuration' = "
              "'interval 60 days')")
    newest = DeltaTable(str(path)).history(1)[0]
    assert newest["operation"] == "SET TBLPROPERTIES" and not newest.get("userMetadata")
    code = build_sequences.main(build_cli(raw_log, root, "--date", DAYS[1], "--incremental"))
    assert code == 0
    for name in ("events", "samples", "profiles"):
        assert canonical(root, name) == canonical(full_build, name, DAYS[:2]), name


@pytest.mark.spark
def test_a_first_run_through_a_day_leaves_the_later_days_to_their_runs(
    spark, full_build, raw_log, build_cli, tmp_path, caplog
):
    """A daily pipeline's first run on the whole log (`--through D`): the days up to D are built,
    the later days' rows are neither events nor quarantined (they used to be quarantined as
    timestamp_out_of_range, then accepted by the next day's run: counted twice), D is the test
    split; the next day's incremental run takes the test split over and D returns to train."""
    caplog.set_level(logging.INFO, logger="etl.build_sequences")
    assert build_sequences.main(build_cli(raw_log, tmp_path, "--through", DAYS[1])) == 0
    for name in ("events", "samples", "profiles"):
        assert canonical(tmp_path, name) == canonical(full_build, name, DAYS[:2]), name
    quarantined = sorted(repr(row) for row in table(tmp_path, "quarantine"))
    assert quarantined == sorted(repr(row) for row in table(full_build, "quarantine")
                                 if row["run_date"] in DAYS[:2])
    later = sum(1 for row in table(full_build, "events") if row["date"] == DAYS[2])
    later += sum(1 for row in table(full_build, "quarantine") if row["run_date"] == DAYS[2])
    assert later > 0 and re.findall(r"other_day=(\d+)", caplog.text) == [str(later)]
    code = build_sequences.main(build_cli(raw_log, tmp_path, "--date", DAYS[2], "--incremental"))
    assert code == 0
    for name in TABLES:
        assert canonical(tmp_path, name) == canonical(full_build, name), name
    assert f"{DAYS[1]} test -> train" in caplog.text
    splits = FeatureSpec.read(tmp_path).splits
    assert splits["test"].dates == (DAYS[2],) and splits["train"].dates == DAYS[:2]


@pytest.mark.spark
def test_incremental_without_the_state_of_the_day_before_is_a_clear_error(
    spark, raw_log, build_cli, tmp_path, caplog
):
    code = build_sequences.main(build_cli(raw_log, tmp_path, "--date", DAYS[1], "--incremental"))
    assert code == 2
    assert f"needs the state as of {DAYS[0]}" in caplog.text and "backfill" in caplog.text
    assert not (tmp_path / "events").exists()  # refused before anything was written


def raw_line(event: dict) -> str:
    behavior = ("pv", "cart", "fav", "buy")[event["behavior"] - 1]
    return f"{event['user_id']},{event['item_id']},{event['category_id']},{behavior},{event['ts']}"


@pytest.mark.spark
def test_late_events_are_quarantined_and_a_rebuild_from_their_day_recovers_them(
    spark, full_build, raw_log, build_cli, tmp_path
):
    """Day 1 is built without three of its events; they arrive with day 2's input: quarantined
    as `late_event` under day 2, the counts still add up. Rebuilding day 1 (without
    --incremental) then day 2 incrementally gives the full build's rows."""
    lines = raw_log.read_text().splitlines()
    counts = {line: lines.count(line) for line in lines}
    day_one = [raw_line(e) for e in table(full_build, "events") if e["date"] == DAYS[0]]
    held_out = [line for line in day_one if counts.get(line) == 1][:3]
    assert len(held_out) == 3
    early = tmp_path / "early.csv"
    early.write_text("\n".join(line for line in lines if line not in held_out) + "\n")
    root = tmp_path / "root"
    assert build_sequences.main(build_cli(early, root, "--date", DAYS[0], "--incremental")) == 0
    assert build_sequences.main(build_cli(raw_log, root, "--date", DAYS[1], "--incremental")) == 0
    late = [row for row in table(root, "quarantine") if row["reason"] == "late_event"]
    assert sorted(row["raw"] for row in late) == sorted(held_out)
    assert {row["run_date"] for row in late} == {DAYS[1]}
    # Nothing lost: every line of the first two days is an event or quarantined, once.
    full_events = [e for e in table(full_build, "events") if e["date"] in DAYS[:2]]
    full_quarantine = [q for q in table(full_build, "quarantine") if q["run_date"] in DAYS[:2]]
    assert len(table(root, "events")) == len(full_events) - len(held_out)
    assert len(table(root, "quarantine")) == len(full_quarantine) + len(held_out)
    # The next day re-reads the same log (on a copy): the late rows are reported once, under
    # day 2 only, not again under day 3.
    later = shutil.copytree(root, tmp_path / "later")
    assert build_sequences.main(build_cli(raw_log, later, "--date", DAYS[2], "--incremental")) == 0
    late = [row for row in table(later, "quarantine") if row["reason"] == "late_event"]
    assert sorted(row["raw"] for row in late) == sorted(held_out)
    assert {row["run_date"] for row in late} == {DAYS[1]}
    # Reprocess: rebuild the late events' day, then the days after it in order.
    assert build_sequences.main(build_cli(raw_log, root, "--date", DAYS[0])) == 0
    assert build_sequences.main(build_cli(raw_log, root, "--date", DAYS[1], "--incremental")) == 0
    for name in ("events", "samples", "profiles"):
        assert canonical(root, name) == canonical(full_build, name, DAYS[:2]), name
    assert not [row for row in table(root, "quarantine") if row["reason"] == "late_event"]
