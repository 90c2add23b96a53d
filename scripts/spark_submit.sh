#!/usr/bin/env bash
# spark-submit with Delta Lake: the same job on a laptop (default local[2]) or a cluster.
#
#   bash scripts/spark_submit.sh etl/build_sequences.py --input RAW --output ROOT
#   SPARK_MASTER=yarn bash scripts/spark_submit.sh --deploy-mode client --num-executors 50 \
#       etl/build_sequences.py --input hdfs:///raw/UserBehavior.csv --output hdfs:///cain/delta
#
# Optional: after `source scripts/setup_env.sh` a plain `spark-submit etl/build_sequences.py ...`
# works too (SPARK_CONF_DIR=conf/spark). Under spark-submit the JVM exists before Python runs, so
# Delta's jars and SQL extension must come from conf/spark/spark-defaults.conf, the one place they
# are named: this wrapper points SPARK_CONF_DIR there when unset and passes the file's Delta lines
# as --packages/--conf as well (so they also apply next to a cluster's own SPARK_CONF_DIR).
# etl/spark.py checks and fails with a clear message when they are missing. Override the package
# with CAIN_DELTA_PACKAGE.
# The driver (client mode) runs from this checkout and ships the project's packages to the
# executors itself (etl/spark.py, addPyFile); executors need numpy, pyarrow and pandas.
# Extra spark-submit options go before the script path.
#
# Before spark-submit starts a JVM (and resolves jars), the application's own checks run in plain
# Python: for etl/build_sequences.py, `--check` validates the arguments and input paths, so a typo
# or a missing input fails in a second with its message, not after JVM start-up.
set -euo pipefail
repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
defaults="$repo_root/conf/spark/spark-defaults.conf"
export SPARK_CONF_DIR="${SPARK_CONF_DIR:-$repo_root/conf/spark}"
setting() { awk -v key="$1" '$1 == key { print $2 }' "$defaults"; }
delta_package="${CAIN_DELTA_PACKAGE:-$(setting spark.jars.packages)}"
if ! command -v spark-submit >/dev/null 2>&1; then
  echo "spark-submit not found: source scripts/setup_env.sh (pyspark ships it) or install Spark" >&2
  exit 2
fi
# Shuffle partitions: CAIN_SHUFFLE_PARTITIONS if set, else the job sizes them from its input.
shuffle=()
if [ -n "${CAIN_SHUFFLE_PARTITIONS:-}" ]; then
  shuffle=(--conf "spark.sql.shuffle.partitions=$CAIN_SHUFFLE_PARTITIONS")
fi
# The application script: the first argument that is not a spark-submit option or its value.
app="" app_index=0 index=0 expect_value=0
for arg in "$@"; do
  index=$((index + 1))
  if [ "$expect_value" = 1 ]; then expect_value=0; continue; fi
  case "$arg" in
    --verbose|-v|--supervise|--help|-h|--version) ;;
    --*=*) ;;
    -*) expect_value=1 ;;
    *) app="$arg"; app_index=$index; break ;;
  esac
done
if [ "$(basename "$app")" = "build_sequences.py" ]; then
  python="${PYSPARK_DRIVER_PYTHON:-${PYSPARK_PYTHON:-python3}}"
  "$python" "$app" "${@:$((app_index + 1))}" --check >/dev/null || exit $?
fi
# Local knobs: only when set (otherwise spark-defaults.conf or the cluster's configuration).
optional=()
[ -n "${SPARK_MASTER:-}" ] && optional+=(--master "$SPARK_MASTER")
[ -n "${CAIN_SPARK_LOG_LEVEL:-}" ] && optional+=(--conf "spark.log.level=$CAIN_SPARK_LOG_LEVEL")
[ -n "${CAIN_DRIVER_MEMORY:-}" ] && optional+=(--conf "spark.driver.memory=$CAIN_DRIVER_MEMORY")
exec spark-submit \
  --packages "$delta_package" \
  --conf "spark.sql.extensions=$(setting spark.sql.extensions)" \
  --conf "spark.sql.catalog.spark_catalog=$(setting spark.sql.catalog.spark_catalog)" \
  ${optional[@]+"${optional[@]}"} \
  ${shuffle[@]+"${shuffle[@]}"} \
  "$@"
