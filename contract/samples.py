"""The `samples` Delta table: one row per (user, day) with at least one request that day.

The ETL writes it (etl/build_sequences.py), the trainer streams it (trainer/data.py,
trainer/batching.py); this module is the one place its columns are named. Column groups, aligned
element by element within a group:

- row: `user_id`, `date` (the partition), `split` (`train` / `test`);
- `timeline_*`: the user's events as of the day — the last `max_len` events before the day, then
  the day's own events — ascending by (ts, item_id, behavior);
- `request_*`: one entry per request (one user at one timestamp), ascending by `request_ts`;
  `request_history_end` is the exclusive end of the request's history in the timeline (the number
  of timeline events with ts < request_ts; with watch times, of the longest timeline prefix whose
  events all ended, ts + watch_time < request_ts), so its history is
  `timeline[max(0, history_end - max_len) : history_end]`;
- `candidate_*`: every candidate of every request, request-major;
  `request_num_candidates` says how many belong to each request;
- `profile_*`: the user's profile as of the start of the day.

Names: the Delta table stores a *timeline* per user-day; a *history* is one request's prefix of
it (what the model sees, `Keys.HISTORY_*` in model/batch.py). docs/data.md has the meaning of
every column.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa


@dataclass(frozen=True)
class Column:
    """A column's name and its Spark SQL type (`long`, `array<int>`, ...)."""

    name: str
    spark_type: str

    @property
    def arrow_type(self) -> pa.DataType:
        element = self.spark_type.removeprefix("array<").removesuffix(">")
        scalar = _ARROW_SCALARS[element]
        return pa.list_(scalar) if self.spark_type.startswith("array<") else scalar


_ARROW_SCALARS = {
    "long": pa.int64(),
    "int": pa.int32(),
    "float": pa.float32(),
    "string": pa.string(),
}

PARTITION_COLUMN = "date"
COLUMNS = (
    Column("user_id", "long"),
    Column("date", "string"),
    Column("split", "string"),
    Column("timeline_item_id", "array<long>"),
    Column("timeline_category_id", "array<long>"),
    Column("timeline_behavior", "array<int>"),
    Column("timeline_ts", "array<long>"),
    Column("timeline_watch_time", "array<float>"),
    Column("request_ts", "array<long>"),
    Column("request_history_end", "array<int>"),
    Column("request_num_candidates", "array<int>"),
    Column("candidate_item_id", "array<long>"),
    Column("candidate_category_id", "array<long>"),
    Column("candidate_label", "array<int>"),
    Column("profile_dense", "array<float>"),
    Column("profile_top_category", "array<long>"),
    Column("profile_demographic", "array<int>"),
)
NAMES = tuple(column.name for column in COLUMNS)
# What the trainer reads from the Parquet files (the partition column lives in the Delta log).
STREAMED = tuple(name for name in NAMES if name != PARTITION_COLUMN)
# Aligned groups: every column of a group has the same length per row as the group's first.
TIMELINE = tuple(name for name in NAMES if name.startswith("timeline_"))
REQUEST = tuple(name for name in NAMES if name.startswith("request_"))
CANDIDATE = tuple(name for name in NAMES if name.startswith("candidate_"))


def arrow_schema() -> pa.Schema:
    return pa.schema([(column.name, column.arrow_type) for column in COLUMNS])
