"""Streaming the Delta `samples` table into Batches: shares per rank, shuffle buffer, prefetch.

    table = SamplesTable.open(root, spec)                     # delta-rs, no Spark
    share = rank_share(table.files("train"), rank, world_size) # disjoint, balanced by row count
    stream = SampleStream(share, builder, batch_size=1536, seed=7, shuffle_rows=1024)
    for batch in Prefetcher(stream.batches(epoch=0), depth=4): ...

Sharing: the split's files are laid end to end in a fixed order (date, path) and rank r reads the
global row range [r N / W, (r + 1) N / W), cutting files at row granularity, so shares differ by
at most one row whatever the file sizes (round-robin by file was 2048/2048/904/3000 rows over 4
ranks). Batch counts can still differ by one or two per rank; the training loop stops all ranks at
the first rank that runs out (an all-reduce per step) and evaluation pads exhausted ranks with a
filler batch, because DMP's collectives need the same number of steps everywhere.

Memory is bounded by `shuffle_rows` rows plus the prefetch queue: Parquet is read in record batches
of `read_rows` rows; a block of about `shuffle_rows` rows is shuffled at the request level with a
generator seeded by (seed, rank, epoch), so a run is reproducible and resumable by skipping the
batches already consumed.
"""

from __future__ import annotations

import hashlib
import queue
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import DeltaTable

from contract.feature_spec import FeatureSpec, join
from contract.samples import STREAMED
from model.batch import Batch
from trainer.batching import BatchBuilder, SampleDataError, request_block


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of the Delta table: its URI, its path as the Delta log names it (relative
    to the table), row count and `date` partition."""

    uri: str
    rows: int
    date: str
    relative: str = ""


@dataclass(frozen=True)
class FilePiece:
    """Rows [begin, end) of one file."""

    file: DataFile
    begin: int
    end: int

    @property
    def rows(self) -> int:
        return self.end - self.begin


class SamplesTable:
    """The `samples` Delta table at one version, listed through delta-rs."""

    def __init__(
        self,
        path: str,
        version: int,
        files: list[DataFile],
    ):
        self.path = path
        self.version = version
        self._files = files

    @staticmethod
    def open(root: str | Path, spec: FeatureSpec, version: int | None = None) -> SamplesTable:
        relative = spec.tables.get("samples", "samples")
        path = relative if "://" in relative else join(root, relative)
        try:
            table = DeltaTable(path, version=version)
        except Exception as error:  # delta-rs raises several types (TableNotFoundError, OSError)
            raise SampleDataError(
                f"cannot open the samples Delta table at {path}: {error}"
            ) from error
        reader_features = table.protocol().reader_features or []
        if "deletionVectors" in reader_features:
            # delta-rs would silently return deleted rows or fail later; refuse up front.
            raise SampleDataError(
                f"{path} uses deletion vectors, which delta-rs cannot read: rewrite it with "
                "delta.enableDeletionVectors=false (docs/data.md)"
            )
        actions = pa.table(table.get_add_actions(flatten=True)).to_pydict()
        missing = [None] * len(actions["path"])
        keyed = []
        for relative_path, rows, date, first_user, last_user in zip(
            actions["path"],
            actions.get("num_records", missing),
            actions.get("partition.date", missing),
            actions.get("min.user_id", missing),
            actions.get("max.user_id", missing),
            strict=True,
        ):
            uri = _absolute_uri(path, unquote(relative_path))
            if rows is None:  # no statistics in the log: read the Parquet footer
                rows = _parquet_file(uri).metadata.num_rows
            file = DataFile(
                uri=uri, rows=int(rows), date=date or "", relative=unquote(relative_path)
            )
            # File names are random (Spark and delta-rs put a UUID in them): order by content
            # (date, user range, rows) so that rebuilding the same data trains the same model.
            users = tuple(-1 if user is None else user for user in (first_user, last_user))
            keyed.append(((file.date, *users, file.rows, file.uri), file))
        files = [file for _, file in sorted(keyed, key=lambda pair: pair[0])]
        return SamplesTable(path, table.version(), files)

    def digest(self) -> str:
        """SHA-256 of the files' Delta paths and row counts: the same content wherever the table
        lives; another version of the table (rows added or rewritten) has another digest."""
        listing = "\n".join(f"{file.relative}\t{file.rows}" for file in self._files)
        return hashlib.sha256(listing.encode()).hexdigest()

    @property
    def partitioned_by_date(self) -> bool:
        """Every file has a `date` partition value (the contract); else views read every file."""
        return all(file.date for file in self._files)

    def files(self, dates: tuple[str, ...] | None) -> list[DataFile]:
        """The files of these `date` partitions; every file when dates are unknown (None).

        Rows are still filtered on the `split` column while reading, so unknown dates only cost
        reading the other splits too.
        """
        if not dates or not self.partitioned_by_date:
            return list(self._files)
        wanted = set(dates)
        return [file for file in self._files if file.date in wanted]

    def missing_files(self) -> list[str]:
        """URIs of files the Delta log lists that are not in storage (deleted by hand, say)."""
        return [file.uri for file in self._files if not _exists(file.uri)]


@dataclass(frozen=True)
class SplitView:
    """What one stream reads: rows whose `split` column is `split`, on `dates` (None: all).

    The validation view is the train split's last `data.validation_days` dates; the train view
    is the rest of them (`split_views`).
    """

    name: str
    split: str
    dates: tuple[str, ...] | None


def split_views(
    spec: FeatureSpec, train_split: str, test_split: str, validation_days: int
) -> dict[str, SplitView]:
    """train / validation (when validation_days > 0) / test views of the samples table."""
    train_dates = spec.splits[train_split].dates if train_split in spec.splits else None
    test_dates = spec.splits[test_split].dates if test_split in spec.splits else None
    views = {"test": SplitView("test", test_split, test_dates)}
    if not validation_days:
        views["train"] = SplitView("train", train_split, train_dates)
        return views
    if not train_dates or len(train_dates) <= validation_days:
        raise SampleDataError(
            f"data.validation_days={validation_days} needs more {train_split!r} dates than that; "
            f"the feature spec lists {list(train_dates or [])}"
        )
    views["train"] = SplitView("train", train_split, train_dates[:-validation_days])
    views["validation"] = SplitView("validation", train_split, train_dates[-validation_days:])
    return views


def view_samples(files: list[DataFile], view: SplitView, spec: FeatureSpec) -> int:
    """Samples (candidates) the view holds in `files`: from the spec's per-file counts, or read."""
    return int(sum(weights.sum() for weights in sample_weights(files, view.split, spec)))


def _absolute_uri(table_path: str, relative_path: str) -> str:
    if "://" in relative_path or relative_path.startswith("/"):
        return relative_path
    if "://" in table_path:
        return table_path.rstrip("/") + "/" + relative_path
    return str(Path(table_path) / relative_path)


def _exists(uri: str) -> bool:
    if "://" not in uri:
        return Path(uri).is_file()
    filesystem, path = pafs.FileSystem.from_uri(uri)
    return filesystem.get_file_info(path).type == pafs.FileType.File


def _parquet_file(uri: str) -> pq.ParquetFile:
    filesystem, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (None, uri)
    try:
        if filesystem is None:
            return pq.ParquetFile(path)
        return pq.ParquetFile(filesystem.open_input_file(path))
    except (OSError, pa.ArrowInvalid) as error:
        raise SampleDataError(f"cannot read Parquet file {uri}: {error}") from error


def rank_share(
    files: list[DataFile],
    rank: int,
    world_size: int,
    row_weights: list[np.ndarray] | None = None,
) -> list[FilePiece]:
    """Rank `rank`'s pieces of the files laid end to end.

    Without weights: the global row range [rank N / W, (rank + 1) N / W) (shares differ by at most
    one row). With `row_weights` (one [rows] array per file, e.g. `sample_counts`): the rows whose
    cumulative weight starts in [rank S / W, (rank + 1) S / W), so shares differ by less than one
    row's weight.
    """
    if row_weights is None:
        total = sum(file.rows for file in files)
        begin, end = rank * total // world_size, (rank + 1) * total // world_size
    else:
        weights = np.concatenate(row_weights) if row_weights else np.zeros(0)
        starts = np.cumsum(weights) - weights  # [N] cumulative weight before each row
        total = float(weights.sum())
        # Row i belongs to the rank whose weight interval contains starts[i].
        begin = int(np.searchsorted(starts, rank * total / world_size, side="left"))
        end = int(np.searchsorted(starts, (rank + 1) * total / world_size, side="left"))
        if rank == world_size - 1:
            end = len(weights)
    pieces = []
    offset = 0
    for file in files:
        low, high = max(begin, offset), min(end, offset + file.rows)
        if low < high:
            pieces.append(FilePiece(file, low - offset, high - offset))
        offset += file.rows
    return pieces


def sample_weights(files: list[DataFile], split: str, spec: FeatureSpec) -> list[np.ndarray]:
    """Per-row weights [rows] per file for `rank_share`: the file's samples of `split` spread
    evenly over its rows when the ETL recorded them (`FeatureSpec.file_samples`), else the exact
    per-row counts read from the file (`sample_counts`). Shares then hold about equal samples, so
    ranks need few filler steps to finish an epoch together."""
    weights = []
    for file in files:
        recorded = spec.file_samples.get(file.relative)
        if recorded is None:
            weights.extend(sample_counts([file], split))
        else:
            weights.append(np.full(file.rows, recorded.get(split, 0) / max(file.rows, 1)))
    return weights


def sample_counts(files: list[DataFile], split: str | None = None) -> list[np.ndarray]:
    """Samples (candidates) per row of each file, 0 for rows of other splits. [rows] per file.

    Reads only the small `request_num_candidates` and `split` columns: a fraction of one pass.
    """
    counts = []
    for file in files:
        table = _parquet_file(file.uri).read(columns=["request_num_candidates", "split"])
        column = table.column("request_num_candidates").combine_chunks()
        offsets = column.offsets.to_numpy(zero_copy_only=False).astype(np.int64)
        values = column.values.to_numpy(zero_copy_only=False).astype(np.int64)
        cumulative = np.concatenate([[0], np.cumsum(values[offsets[0] : offsets[-1]])])
        per_row = cumulative[offsets - offsets[0]][1:] - cumulative[offsets - offsets[0]][:-1]
        if split is not None:
            per_row = np.where(
                table.column("split").to_numpy(zero_copy_only=False) == split, per_row, 0
            )
        if len(per_row) != file.rows:
            raise SampleDataError(
                f"{file.uri}: {len(per_row)} rows, the Delta log says {file.rows}"
            )
        counts.append(per_row)
    return counts


def read_pieces(
    pieces: Iterable[FilePiece], read_rows: int, split: str | None = None
) -> Iterator[pa.Table]:
    """Stream the pieces as tables of at most `read_rows` rows, keeping rows of `split`."""
    for piece in pieces:
        parquet = _parquet_file(piece.file.uri)
        missing = [name for name in STREAMED if name not in parquet.schema_arrow.names]
        if missing:
            raise SampleDataError(f"{piece.file.uri}: missing columns {missing} (docs/data.md)")
        # Only the row groups overlapping [begin, end) are read.
        group_start = 0
        for group in range(parquet.metadata.num_row_groups):
            group_rows = parquet.metadata.row_group(group).num_rows
            group_end = group_start + group_rows
            if group_end > piece.begin and group_start < piece.end:
                position = group_start
                for record_batch in parquet.iter_batches(
                    batch_size=read_rows, row_groups=[group], columns=list(STREAMED)
                ):
                    low = max(piece.begin - position, 0)
                    high = min(piece.end - position, record_batch.num_rows)
                    position += record_batch.num_rows
                    if low >= high:
                        continue
                    table = pa.Table.from_batches([record_batch.slice(low, high - low)])
                    if split is not None:
                        table = table.filter(pc.equal(table.column("split"), split))
                    if table.num_rows:
                        yield table
            group_start = group_end
            if group_start >= piece.end:
                break


def cut_batches(candidate_counts: np.ndarray, batch_size: int) -> list[tuple[int, int]]:
    """Split requests (in order) into [start, end) runs of about `batch_size` candidates.

    A run closes at the first request that starts at or past the next multiple of batch_size;
    a final run under half a batch is merged into the previous one. counts: [Q].
    """
    count = candidate_counts.shape[0]
    if count == 0:
        return []
    starts = np.cumsum(candidate_counts) - candidate_counts
    batch_id = starts // batch_size
    edges = [0, *(np.flatnonzero(np.diff(batch_id)) + 1).tolist(), count]
    if len(edges) > 2 and candidate_counts[edges[-2] :].sum() < batch_size / 2:
        del edges[-2]
    return list(zip(edges[:-1], edges[1:], strict=False))


class SampleStream:
    """Batches of one rank's share, shuffled (training) or in file order (evaluation).

    Args:
        pieces: this rank's share (`rank_share`).
        builder: turns requests of a block into a Batch.
        split: rows of other splits are dropped.
        batch_size: samples (candidates) per batch.
        shuffle_rows: rows per shuffle block (bounds memory).
        read_rows: rows per Parquet record batch.
        seed / rank: seed the shuffle; None seed means no shuffling.
    """

    def __init__(
        self,
        pieces: list[FilePiece],
        builder: BatchBuilder,
        *,
        split: str,
        batch_size: int,
        shuffle_rows: int,
        read_rows: int,
        seed: int | None,
        rank: int = 0,
    ) -> None:
        self.pieces = pieces
        self.builder = builder
        self.split = split
        self.batch_size = batch_size
        self.shuffle_rows = shuffle_rows
        self.read_rows = read_rows
        self.seed = seed
        self.rank = rank

    @property
    def rows(self) -> int:
        return sum(piece.rows for piece in self.pieces)

    def _blocks(self, generator: np.random.Generator | None) -> Iterator[pa.Table]:
        pieces = list(self.pieces)
        if generator is not None:
            pieces = [pieces[index] for index in generator.permutation(len(pieces))]
        pending: list[pa.Table] = []
        pending_rows = 0
        for table in read_pieces(pieces, self.read_rows, self.split):
            pending.append(table)
            pending_rows += table.num_rows
            if pending_rows >= self.shuffle_rows:
                yield pa.concat_tables(pending)
                pending, pending_rows = [], 0
        if pending:
            yield pa.concat_tables(pending)

    def batches(self, epoch: int = 0, skip: int = 0) -> Iterator[Batch]:
        """The epoch's batches, skipping the first `skip` (resume) without building them."""
        generator = (
            np.random.default_rng([self.seed, self.rank, epoch]) if self.seed is not None else None
        )
        emitted = 0
        for table in self._blocks(generator):
            block = request_block(table, self.builder.spec, self.builder.max_len)
            order = np.arange(block.num_requests)
            if generator is not None:
                order = generator.permutation(block.num_requests)
            for start, end in cut_batches(block.candidate_count[order], self.batch_size):
                if emitted >= skip:
                    yield self.builder.build(block, order[start:end])
                emitted += 1


class Prefetcher:
    """Runs an iterator in a background thread, `depth` items ahead; errors re-raise here.

    Arrow decoding and NumPy gathers release the GIL, so reading overlaps the training step.
    With `pin_memory` (CUDA) the thread also pins each batch, so the loop's
    `batch.to(device, non_blocking=True)` copies asynchronously. `close()` stops the thread early
    (max_steps reached).
    """

    _END = object()

    def __init__(self, iterator: Iterator[Batch], depth: int, pin_memory: bool = False) -> None:
        self._pin_memory = pin_memory
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._finished = False
        self._thread = threading.Thread(target=self._run, args=(iterator,), daemon=True)
        self._thread.start()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, iterator: Iterator[Batch]) -> None:
        try:
            for item in iterator:
                if not self._put(item.pin_memory() if self._pin_memory else item):
                    return
            self._put(self._END)
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._put(error)

    def __iter__(self) -> Prefetcher:
        return self

    def __next__(self) -> Batch:
        if self._finished:
            raise StopIteration
        item = self._queue.get()
        if item is self._END:
            self._finished = True
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop and join the thread: none may outlive the run (see shutdown_process_group)."""
        self._stop.set()
        self._thread.join()
