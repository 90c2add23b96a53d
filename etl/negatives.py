"""Negative sampling: draws from the item population as of the request's own timestamp.

    collect_pools(EVENTS, first_date, last_date) -> sampling.DayPools (on the driver; broadcast it)

The pool of a request at time t on day D is every event of day D (every user, every behavior)
with ts < t (etl/sampling.py): `popularity` draws the item of a uniformly drawn pool event,
`uniform` a uniformly drawn distinct item of the pool; the draw's category is that event's (for
`uniform`, the item's first event of the day). Draw j is `draw_hash(seed, user, ts, item, j) mod
pool size`, so the same input and seed give the same negatives whatever the partitioning.
Exclusion of the user's own items and de-duplication follow, per request (etl/sequences.py).

The draws run in the samples stage's Arrow UDF (etl/protocols.py) with the day pools broadcast:
executors need numpy, pyarrow, pandas and this package (etl/spark.py ships it with addPyFile).
"""

from __future__ import annotations

from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from etl.sampling import DayPools


def collect_pools(events: DataFrame, first_date: str, last_date: str) -> DayPools:
    """The day pools of [first_date, last_date], collected to the driver (one row per event)."""
    table = events.where(F.col("date").between(first_date, last_date)).select(
        "date", "ts", "user_id", "item_id", "behavior", "category_id"
    ).toArrow()
    column = {name: table.column(name).to_numpy(zero_copy_only=False)
              for name in table.column_names}
    return DayPools.from_arrays(column["date"].astype(str), column["ts"], column["user_id"],
                                column["item_id"], column["behavior"], column["category_id"])
