#!/usr/bin/env bash
# spark-submit with Delta Lake: the same job on a laptop (default local[2]) or a cluster.
#
#   bash scripts/spark_submit.sh etl/build_sequences.py --input RAW --output ROOT
#   SPARK_MASTER=yarn bash scripts/spark_submit.sh --deploy-mode client --num-executors 50 \
#       etl/build_sequences.py --input hdfs:///raw/UserBehavior.csv --output hdfs:///cain/delta
#
# Under spark-submit the JVM exists before Python runs, so Delta's jars and SQL extension must come
# as --packages/--conf here (etl/spark.py checks and fails with a clear message otherwise).
# DELTA_PACKAGE: Maven Central has no io.delta:delta-spark_4.2_2.13:4.4.1 (the version of the pip
# package); 4.4.0 is the newest build for Spark 4.2. Override with CAIN_DELTA_PACKAGE.
# The ETL uses built-in Spark SQL functions only, so executors need no project code: the driver
# (client mode) runs from this checkout. Extra spark-submit options go before the script path.
set -euo pipefail
delta_package="${CAIN_DELTA_PACKAGE:-io.delta:delta-spark_4.2_2.13:4.4.0}"
if ! command -v spark-submit >/dev/null 2>&1; then
  echo "spark-submit not found: source scripts/setup_env.sh (pyspark ships it) or install Spark" >&2
  exit 2
fi
# Shuffle partitions: CAIN_SHUFFLE_PARTITIONS if set, else the job sizes them from its input.
shuffle=()
if [ -n "${CAIN_SHUFFLE_PARTITIONS:-}" ]; then
  shuffle=(--conf "spark.sql.shuffle.partitions=$CAIN_SHUFFLE_PARTITIONS")
fi
exec spark-submit \
  --master "${SPARK_MASTER:-local[2]}" \
  --packages "$delta_package" \
  --conf spark.sql.extensions=io.delta.sql.DeltaSparkSessionExtension \
  --conf spark.sql.catalog.spark_catalog=org.apache.spark.sql.delta.catalog.DeltaCatalog \
  --conf spark.ui.showConsoleProgress=false \
  --conf spark.log.level="${CAIN_SPARK_LOG_LEVEL:-WARN}" \
  --conf spark.driver.memory="${CAIN_DRIVER_MEMORY:-4g}" \
  --conf spark.databricks.delta.snapshotPartitions="${CAIN_DELTA_SNAPSHOT_PARTITIONS:-2}" \
  ${shuffle[@]+"${shuffle[@]}"} \
  "$@"
