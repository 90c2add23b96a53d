"""Every raw row ends up accepted or quarantined with its reason; duplicates are counted."""

from __future__ import annotations

import base64

import pytest
from pyspark.sql import Row
from pyspark.testing import assertDataFrameEqual

from etl import clean

pytestmark = pytest.mark.spark
BEHAVIORS = ("pv", "cart", "fav", "buy")
START, END, ZONE = "2017-11-25", "2017-11-26", "Asia/Shanghai"
T0 = 1511539200  # 2017-11-25 00:00 China time


def marked(spark, *lines: str):
    frame = spark.createDataFrame([(line,) for line in lines], "value string")
    return clean.clean(frame, "taobao", BEHAVIORS, START, END, ZONE)


def test_valid_rows_become_events_with_china_dates(spark):
    rows = marked(spark, f"1,10,100,pv,{T0}", f"1,11,100,buy,{T0 - 1 + 2 * 86400}")
    expected = spark.createDataFrame(
        [(1, 10, 100, 1, T0, None, "2017-11-25"), (1, 11, 100, 4, T0 - 1 + 2 * 86400, None,
                                                    "2017-11-26")],
        "user_id long, item_id long, category_id long, behavior int, ts long, watch_time float, "
        "date string",
    )
    assertDataFrameEqual(clean.accepted(rows), expected)
    assert clean.quarantined(rows).count() == 0


BAD_LINES = [
    # Rows whose timestamp parses and lies in the range belong to that day's run, the others to
    # the last day's run.
    ("1,10,100,pv", "malformed_line", END),
    (f"1,10,100,pv,{T0},extra", "malformed_line", END),
    (f"1,,100,pv,{T0}", "null_id", START),
    ("1,10,100,pv,", "null_id", END),
    (f"1,10x,100,pv,{T0}", "non_numeric", START),
    (f"-1,10,100,pv,{T0}", "negative_id", START),
    (f"1,10,100,click,{T0}", "unknown_behavior", START),
    (f"1,10,100,pv,{T0 - 1}", "timestamp_out_of_range", END),
    ("1,10,100,pv,99999999999999999", "timestamp_out_of_range", END),
]


def test_bad_rows_are_quarantined_with_their_reason(spark):
    rows = marked(spark, *[line for line, _, _ in BAD_LINES])
    assert clean.accepted(rows).count() == 0
    assertDataFrameEqual(
        clean.quarantined(rows),
        [Row(raw=line, raw_encoding="utf8", reason=reason, run_date=run_date)
         for line, reason, run_date in BAD_LINES],
    )


def test_exact_duplicates_keep_one_copy_and_count_the_rest(spark):
    line = f"1,10,100,pv,{T0 + 5}"
    rows = marked(spark, line, line, line, f"2,10,100,pv,{T0 + 5}")
    assert clean.accepted(rows).count() == 2
    assertDataFrameEqual(
        clean.quarantined(rows),
        [Row(raw=line, raw_encoding="utf8", reason="duplicate", run_date=START)] * 2,
    )


def test_input_rows_equal_accepted_plus_quarantined(spark, raw_log):
    lines = spark.read.text(str(raw_log))
    rows = clean.clean(lines, "taobao", BEHAVIORS, "2017-11-25", "2017-11-27", ZONE).cache()
    assert clean.accepted(rows).count() + clean.quarantined(rows).count() == lines.count()
    reasons = {row["reason"] for row in clean.quarantined(rows).select("reason").collect()}
    assert {"duplicate", "malformed_line", "unknown_behavior", "negative_id"} <= reasons


def test_invalid_utf8_lines_are_quarantined_with_their_exact_bytes(spark, tmp_path):
    # Binary input: Spark reads the bytes as a string unchecked; Parquet readers (pyarrow,
    # delta-rs) refuse a string column that is not UTF-8, so such a line is kept as base64.
    good = f"1,10,100,pv,{T0}".encode()
    bad = [b"\xff\xfe,10,100,pv," + str(T0).encode(), b"1,1\x80,100,pv," + str(T0).encode(),
           b"\x00\xc3(garbage"]
    path = tmp_path / "binary.csv"
    path.write_bytes(b"\n".join([good, *bad]) + b"\n")
    rows = clean.clean(spark.read.text(str(path)), "taobao", BEHAVIORS, START, END, ZONE)
    assert clean.accepted(rows).count() == 1
    quarantined = clean.quarantined(rows).collect()
    assert {row["reason"] for row in quarantined} == {"invalid_utf8"}
    assert {row["raw_encoding"] for row in quarantined} == {"base64"}
    assert sorted(base64.b64decode(row["raw"]) for row in quarantined) == sorted(bad)


def test_run_dates_partition_the_rows(spark):
    rows = marked(spark, f"1,10,100,pv,{T0}", f"1,10,100,pv,{T0 + 86400}", "garbage")
    first = clean.for_run_dates(rows, START, START).count()
    second = clean.for_run_dates(rows, END, END).count()
    assert (first, second) == (1, 2)  # the unattributable line belongs to the last day


def test_feed_rows_map_clicks_and_watch_time(spark):
    lines = [clean.FEED_HEADER, f"1,10,7,1,{T0},12.5", f"1,11,7,0,{T0 + 1},0", f"1,12,7,2,{T0},1",
             f"1,13,7,1,{T0},-3"]
    frame = spark.createDataFrame([(line,) for line in lines], "value string")
    rows = clean.clean(frame, "feed", ("impression", "click"), START, END, ZONE)
    accepted = clean.accepted(rows).select("item_id", "category_id", "behavior", "watch_time")
    assertDataFrameEqual(accepted, [Row(item_id=10, category_id=7, behavior=2, watch_time=12.5),
                                    Row(item_id=11, category_id=7, behavior=1, watch_time=0.0)])
    reasons = sorted(row["reason"] for row in clean.quarantined(rows).collect())
    assert reasons == ["bad_watch_time", "unknown_behavior"]
