"""The I/O floor of the ETL: read the raw CSV and write it back as Parquet, nothing else.

    python benchmarks/etl_copy_job.py --input RAW.csv --output DIR

Same Spark settings as the job (etl.spark.session, Spark start-up included); the five columns
typed as the `events` table types them. benchmarks/etl_benchmark.py runs it next to the build
and reports the build's time as a ratio to this one, measured in the same run.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402

from pyspark.sql import functions as F  # noqa: E402

from etl import build_sequences, spark  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    args = parser.parse_args()
    session = spark.session(
        "etl_copy_job",
        default_shuffle_partitions=build_sequences.sized_shuffle_partitions([args.input]))
    fields = F.split(F.col("value"), ",")
    part = [F.get(fields, index) for index in range(5)]  # null past the end of a short line
    session.read.text(args.input).select(
        part[0].try_cast("long").alias("user_id"), part[1].try_cast("long").alias("item_id"),
        part[2].try_cast("long").alias("category_id"), part[3].alias("behavior"),
        part[4].try_cast("long").alias("ts"),
    ).write.mode("overwrite").parquet(args.output)
    session.stop()


if __name__ == "__main__":
    main()
