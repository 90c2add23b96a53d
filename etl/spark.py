"""The SparkSession with Delta Lake, and the one way every job reads and writes Delta tables.

The Delta package and confs live in one place, `conf/spark/spark-defaults.conf` (read here with
`spark_defaults()`, by spark-submit through SPARK_CONF_DIR, and by scripts/spark_submit.sh).
Two ways to get Delta's jars onto the JVM:
- `python etl/build_sequences.py ...` (and the tests): `session()` starts the JVM itself and asks
  Spark's resolver for `DELTA_PACKAGE` from Maven Central (cached in ~/.ivy2.5.2 after the first
  run);
- `spark-submit` (plain after `source scripts/setup_env.sh`, scripts/spark_submit.sh, clusters):
  the JVM already exists and got the package and confs from spark-defaults.conf (or the
  wrapper's flags); `session()` then only attaches to it and `require_delta()` fails with a clear
  message when the classes are missing.

The pip package `delta-spark==4.4.1` would ask for `io.delta:delta-spark_4.2_2.13:4.4.1`, which
Maven Central does not have (its newest build for Spark 4.2 is 4.4.0; the Python side is the same
API), so the artifact is pinned in spark-defaults.conf. Override it with `CAIN_DELTA_PACKAGE`.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

SPARK_DEFAULTS = Path(__file__).resolve().parents[1] / "conf" / "spark" / "spark-defaults.conf"


def spark_defaults(path: Path = SPARK_DEFAULTS) -> dict[str, str]:
    """key -> value of a spark-defaults.conf (whitespace-separated, `#` comments)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            values[key] = value.strip()
    return values


_DEFAULTS = spark_defaults()
DELTA_PACKAGE = os.environ.get("CAIN_DELTA_PACKAGE") or _DEFAULTS["spark.jars.packages"]
DELTA_CONF = {key: _DEFAULTS[key] for key in
              ("spark.sql.extensions", "spark.sql.catalog.spark_catalog")}
# delta-rs (the trainer's reader) refuses tables with deletion vectors.
TABLE_PROPERTIES = {"delta.enableDeletionVectors": "false"}
SESSION_CONF = {
    # Day boundaries are computed explicitly in the source's time zone (etl/clean.py); a UTC
    # session keeps any other timestamp rendering machine-independent.
    "spark.sql.session.timeZone": "UTC",
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
}


class DeltaMissingError(RuntimeError):
    """The JVM has no Delta Lake classes (spark-submit without --packages)."""


def session(app_name: str, master: str | None = None, shuffle_partitions: int | None = None,
            default_shuffle_partitions: int | None = None) -> SparkSession:
    """Attach to the running SparkSession (spark-submit) or start a local one with Delta.

    spark.sql.shuffle.partitions: `shuffle_partitions` if given, else one set explicitly on the
    running application (spark-submit --conf, spark-defaults.conf), else
    `default_shuffle_partitions` (the job sizes it from its input), else 8 locally.
    """
    active = SparkSession.getActiveSession()
    if active is None and os.environ.get("SPARK_ENV_LOADED") is None and not _launched_by_submit():
        builder = SparkSession.builder.appName(app_name)
        for key, value in _DEFAULTS.items():  # the same file spark-submit reads
            builder = builder.config(key, value)
        builder = builder.master(master or os.environ.get("SPARK_MASTER") or _DEFAULTS.get(
            "spark.master", "local[2]"))
        builder = builder.config("spark.jars.packages", DELTA_PACKAGE)
        # Local mode: a few shuffle partitions beat the default 200 tiny tasks on 2 cores.
        partitions = shuffle_partitions or default_shuffle_partitions or 8
        builder = builder.config("spark.sql.shuffle.partitions", str(partitions))
        if os.environ.get("CAIN_DRIVER_MEMORY"):
            builder = builder.config("spark.driver.memory", os.environ["CAIN_DRIVER_MEMORY"])
        spark = builder.getOrCreate()
    else:
        spark = SparkSession.builder.appName(app_name).getOrCreate()
        explicit = spark.sparkContext.getConf().contains("spark.sql.shuffle.partitions")
        partitions = shuffle_partitions or (None if explicit else default_shuffle_partitions)
        if partitions:
            spark.conf.set("spark.sql.shuffle.partitions", str(partitions))
    for key, value in SESSION_CONF.items():
        spark.conf.set(key, value)
    spark.sparkContext.setLogLevel("WARN")
    require_delta(spark)
    ship_project_code(spark)
    return spark


PACKAGES = ("contract", "etl")  # what the Arrow UDFs (etl/negatives.py) import on executors
_SHIPPED: set[str] = set()


def ship_project_code(spark: SparkSession) -> None:
    """Zip the project packages the executors' Python UDFs import and add them to the job
    (SparkContext.addPyFile): executors then need only numpy, pyarrow and pandas, on a cluster as
    in local mode (where worker processes do not see the driver's sys.path). The zip must outlive
    the application (executors fetch it when their first task starts), so its directory is
    removed when the driver process exits."""
    import atexit
    import shutil
    import tempfile
    import zipfile

    application = spark.sparkContext.applicationId
    if application in _SHIPPED:  # once per application: Spark refuses a second cain_etl.zip
        return
    _SHIPPED.add(application)
    repo = Path(__file__).resolve().parents[1]
    directory = Path(tempfile.mkdtemp(prefix="cain-pyfiles-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    target = directory / "cain_etl.zip"
    with zipfile.ZipFile(target, "w") as archive:
        for package in PACKAGES:
            for source in sorted((repo / package).rglob("*.py")):
                archive.write(source, source.relative_to(repo))
    spark.sparkContext.addPyFile(str(target))


def _launched_by_submit() -> bool:
    # spark-submit starts the Python driver with the gateway already running.
    return "PYSPARK_GATEWAY_PORT" in os.environ


def require_delta(spark: SparkSession) -> None:
    from py4j.java_gateway import JavaClass

    jvm = spark.sparkContext._jvm  # noqa: SLF001 - the only way to probe the classpath
    # py4j resolves names through Spark's class loader; a missing class comes back as a package.
    if not isinstance(jvm.io.delta.tables.DeltaTable, JavaClass):
        raise DeltaMissingError(
            "Delta Lake classes are not on the Spark classpath. `source scripts/setup_env.sh` "
            "(SPARK_CONF_DIR=conf/spark), run through scripts/spark_submit.sh, or pass "
            f"--packages {DELTA_PACKAGE} "
            + " ".join(f"--conf {key}={value}" for key, value in DELTA_CONF.items())
        )
    extensions = spark.conf.get("spark.sql.extensions", "") or ""
    if "DeltaSparkSessionExtension" not in extensions:
        raise DeltaMissingError(
            "spark.sql.extensions does not include io.delta.sql.DeltaSparkSessionExtension; "
            "pass the Delta --conf flags (see scripts/spark_submit.sh)"
        )


def write_delta(
    frame: DataFrame,
    path: str,
    partition_column: str,
    replace_where: str,
    files_per_partition: int = 2,
    sort_by: tuple[str, ...] = (),
    merge_schema: bool = False,
) -> None:
    """Atomically replace the rows matching `replace_where` (and only those) with `frame`.

    Re-running with the same input leaves the same table; other partitions are untouched.
    Each partition value gets `files_per_partition` files (rows spread by a hash of the first
    `sort_by` column), so the table has a few large files, not one per shuffle task and value;
    the trainer splits files among its ranks. `merge_schema`: a table written by an older ETL
    gains the frame's new columns (null in its old rows) instead of refusing the write.
    """
    spread = F.pmod(F.xxhash64(*(sort_by[:1] or (partition_column,))), F.lit(files_per_partition))
    frame = frame.repartition(files_per_partition * 16, F.col(partition_column), spread)
    if sort_by:
        frame = frame.sortWithinPartitions(*sort_by)
    writer = frame.write.format("delta").mode("overwrite").partitionBy(partition_column)
    writer = writer.option("replaceWhere", replace_where)
    if merge_schema:
        writer = writer.option("mergeSchema", "true")
    for key, value in TABLE_PROPERTIES.items():
        writer = writer.option(key, value)
    writer.save(path)


def write_state(frame: DataFrame, path: str, user_metadata: str) -> None:
    """Replace the whole (unpartitioned) table at `path` with `frame`, `user_metadata` recorded
    in the commit."""
    writer = frame.write.format("delta").mode("overwrite").option("overwriteSchema", "true")
    writer = writer.option("userMetadata", user_metadata)
    for key, value in TABLE_PROPERTIES.items():
        writer = writer.option(key, value)
    writer.save(path)


def merge_state(spark: SparkSession, updates: DataFrame, path: str, user_metadata: str) -> None:
    """Upsert `updates` into the table at `path` by user_id (Delta MERGE), `user_metadata`
    recorded in the commit."""
    from delta.tables import DeltaTable

    key = "spark.databricks.delta.commitInfo.userMetadata"
    spark.conf.set(key, user_metadata)
    try:
        (DeltaTable.forPath(spark, path).alias("state")
         .merge(updates.alias("day"), "state.user_id = day.user_id")
         .whenMatchedUpdateAll().whenNotMatchedInsertAll().execute())
    finally:
        spark.conf.unset(key)


def read_delta(spark: SparkSession, path: str) -> DataFrame:
    return spark.read.format("delta").load(path)


def table_version(spark: SparkSession, path: str) -> int | None:
    """The current version of the Delta table at `path`, None when there is none."""
    from delta.tables import DeltaTable

    if not DeltaTable.isDeltaTable(spark, path):
        return None
    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()["version"])


def write_text(spark: SparkSession, uri: str, text: str) -> str:
    """Write a small text file through Spark's Hadoop FileSystem (any scheme the job can write
    its tables to: hdfs://, s3a://, abfss://, gs://, file://); returns `uri`.

    Written to `uri.tmp` then renamed, so a reader never sees half a file on file systems with
    atomic rename (HDFS, local); object stores have no rename, and there it is a copy.
    """
    jvm = spark.sparkContext._jvm  # noqa: SLF001 - Hadoop's FileSystem API lives in the JVM
    hadoop = jvm.org.apache.hadoop.fs
    target, partial = hadoop.Path(uri), hadoop.Path(uri + ".tmp")
    filesystem = target.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # noqa: SLF001
    stream = filesystem.create(partial, True)
    try:
        stream.write(bytearray(text.encode("utf-8")))
    finally:
        stream.close()
    filesystem.delete(target, False)
    if not filesystem.rename(partial, target):
        raise OSError(f"could not rename {uri}.tmp to {uri}")
    return uri


class StageProgress:
    """Logs Spark's running stages every `interval` seconds while a job runs (`with` block).

    The console progress bar is off (it garbles logs and Airflow's task logs), so a long stage
    would otherwise be silent for tens of minutes. One line per interval, e.g.
    `running: stage 14 35/74 tasks (2 running)`; nothing when no stage is running.
    """

    def __init__(self, spark: SparkSession, log: logging.Logger, interval: float = 30.0) -> None:
        self.spark = spark
        self.log = log
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="spark-progress", daemon=True)

    def report(self) -> str | None:
        """The running stages' task counts, or None when none is running."""
        tracker = self.spark.sparkContext.statusTracker()
        parts = []
        for stage_id in sorted(tracker.getActiveStageIds()):
            info = tracker.getStageInfo(stage_id)  # None when Spark already forgot the stage
            if info is not None:
                parts.append(f"stage {stage_id} {info.numCompletedTasks}/{info.numTasks} tasks "
                             f"({info.numActiveTasks} running)")
        return "; ".join(parts) or None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            line = self.report()
            if line:
                self.log.info("running: %s", line)

    def __enter__(self) -> StageProgress:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
