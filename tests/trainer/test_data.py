"""The Delta reader: disjoint balanced shares, synchronized weighted steps, exact batches."""

from __future__ import annotations

import os
import socket

import numpy as np
import pyarrow as pa
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from deltalake import DeltaTable

from contract.feature_spec import FeatureSpec
from model.batch import Keys
from model.tables import table_layout
from trainer.batching import BatchBuilder, SampleDataError, log2_bucket, request_block
from trainer.data import (
    DataFile,
    Prefetcher,
    SamplesTable,
    SampleStream,
    rank_share,
    read_pieces,
    sample_counts,
)


def _stream(
    root,
    split="train",
    rank=0,
    world_size=1,
    seed=None,
    batch_size=40,
    max_rows=10_000,
    max_history=None,
):
    spec = FeatureSpec.read(root)
    table = SamplesTable.open(root, spec)
    return SampleStream(
        rank_share(table.files(spec.splits[split].dates), rank, world_size),
        BatchBuilder(spec, table_layout(spec, max_rows), max_history),
        split=split,
        batch_size=batch_size,
        shuffle_rows=16,
        read_rows=8,
        seed=seed,
        rank=rank,
    )


def test_shares_are_disjoint_and_balanced_by_rows_across_uneven_files():
    files = [DataFile(f"f{index}", rows, "d") for index, rows in enumerate([2048, 2048, 904, 3000])]
    shares = [rank_share(files, rank, 4) for rank in range(4)]
    rows = [sum(piece.rows for piece in share) for share in shares]
    assert max(rows) - min(rows) <= 1 and sum(rows) == 8000
    covered = sorted(
        (piece.file.uri, piece.begin, piece.end) for share in shares for piece in share
    )
    for uri in {file.uri for file in files}:  # each file's row ranges tile it with no overlap
        ranges = [(begin, end) for name, begin, end in covered if name == uri]
        assert ranges[0][0] == 0
        assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:], strict=False))
        assert ranges[-1][1] == next(file.rows for file in files if file.uri == uri)


def test_sample_weighted_shares_balance_samples_not_rows(tiny_data):
    spec = FeatureSpec.read(tiny_data)
    files = SamplesTable.open(tiny_data, spec).files(spec.splits["train"].dates)
    counts = sample_counts(files, "train")
    weights = [np.arange(1, file.rows + 1) ** 2 for file in files]  # very uneven rows
    for row_weights in (counts, weights):
        shares = [rank_share(files, rank, 3, row_weights) for rank in range(3)]
        flat = {file.uri: weight for file, weight in zip(files, row_weights, strict=False)}
        totals = [sum(flat[p.file.uri][p.begin : p.end].sum() for p in share) for share in shares]
        heaviest_row = max(weight.max() for weight in row_weights)
        assert sum(totals) == sum(weight.sum() for weight in row_weights)
        assert max(totals) - min(totals) <= heaviest_row
    assert sum(count.sum() for count in counts) == spec.splits["train"].samples


def test_ranks_read_disjoint_rows_that_cover_the_split(tiny_data):
    spec = FeatureSpec.read(tiny_data)
    table = SamplesTable.open(tiny_data, spec)
    seen = []
    for rank in range(3):
        keys = []
        train_files = table.files(spec.splits["train"].dates)
        for part in read_pieces(rank_share(train_files, rank, 3), 8, "train"):
            keys += list(
                zip(
                    part.column("user_id").to_pylist(),
                    [ts[0] for ts in part.column("request_ts").to_pylist()],
                    strict=False,
                )
            )
        seen.append(keys)
    all_keys = [key for keys in seen for key in keys]
    assert len(all_keys) == len(set(all_keys))  # disjoint
    expected = (
        DeltaTable(str(tiny_data / "samples"))
        .to_pyarrow_table()
        .filter(pa.compute.equal(pa.compute.field("split"), "train"))
    )
    assert len(all_keys) == expected.num_rows  # complete
    assert max(map(len, seen)) - min(map(len, seen)) <= 1  # balanced


@pytest.mark.parametrize("max_history", [None, 4])
def test_histories_follow_the_contract(feed_data, max_history):
    """Each request's history is the timeline before it, cut to its most recent max_len (or
    data.max_history) events."""
    spec = FeatureSpec.read(feed_data)
    limit = max_history or spec.max_len
    rows = DeltaTable(str(feed_data / "samples")).to_pyarrow_table().to_pylist()
    expected = []  # (user, req_ts, history items, time-gap buckets, candidates, labels)
    for row in sorted(rows, key=lambda row: (row["date"], row["user_id"])):
        if row["split"] != "train":
            continue
        begin = 0
        requests = zip(
            row["request_ts"],
            row["request_history_end"],
            row["request_num_candidates"],
            strict=True,
        )
        for ts, end, count in requests:
            start = max(0, end - limit)
            items = row["timeline_item_id"][start:end]
            gaps = [
                min(spec.time_gap_buckets - 1, int(np.floor(np.log2(1 + ts - t))))
                for t in row["timeline_ts"][start:end]
            ]
            expected.append(
                (
                    row["user_id"],
                    items,
                    gaps,
                    row["candidate_item_id"][begin : begin + count],
                    row["profile_demographic"],
                )
            )
            begin += count
    stream = _stream(feed_data, batch_size=10_000, max_history=max_history)
    got = []
    for batch in stream.batches():
        features = batch.sparse_features.to_dict()
        items = features[Keys.HISTORY_ITEM].to_dense()
        gaps = features[Keys.HISTORY_TIME_GAP].to_dense()
        candidates = features[Keys.CANDIDATE_ITEM].to_dense()
        ages = features[Keys.demographic("age")].to_dense()
        genders = features[Keys.demographic("gender")].to_dense()
        first_sample = torch.searchsorted(batch.request_index, torch.arange(batch.num_requests))
        for request in range(batch.num_requests):
            got.append(
                (
                    int(batch.user_ids[first_sample[request]]),
                    items[request].tolist(),
                    gaps[request].tolist(),
                    candidates[request].tolist(),
                    [int(ages[request][0]), int(genders[request][0])],
                )
            )
        assert all(length <= limit for length in features[Keys.HISTORY_ITEM].lengths().tolist())
    assert sorted(map(str, got)) == sorted(map(str, expected))


def test_same_seed_same_batches_and_skip_resumes_the_sequence(tiny_data):
    def signature(batches):
        return [(batch.user_ids.tolist(), batch.labels.tolist()) for batch in batches]

    first = signature(_stream(tiny_data, seed=5).batches(epoch=1))
    assert first == signature(_stream(tiny_data, seed=5).batches(epoch=1))
    assert first != signature(_stream(tiny_data, seed=6).batches(epoch=1))
    assert signature(_stream(tiny_data, seed=5).batches(epoch=1, skip=3)) == first[3:]


def test_batches_hold_whole_requests_near_the_batch_size(tiny_data):
    sizes = [batch.num_samples for batch in _stream(tiny_data, seed=1, batch_size=40).batches()]
    assert all(20 <= size <= 60 + 4 for size in sizes)


def test_log2_buckets_are_capped():
    assert log2_bucket(np.array([0, 1, 2, 3, 10**12]), 8).tolist() == [0, 1, 1, 2, 7]


def test_misaligned_row_is_a_clear_error(tiny_data):
    spec = FeatureSpec.read(tiny_data)
    train_files = SamplesTable.open(tiny_data, spec).files(spec.splits["train"].dates)
    table = next(read_pieces(rank_share(train_files, 0, 1), 4))
    broken = table.set_column(
        table.schema.get_field_index("timeline_ts"),
        "timeline_ts",
        pa.array(
            [values[:-1] for values in table.column("timeline_ts").to_pylist()],
            pa.list_(pa.int64()),
        ),
    )
    with pytest.raises(SampleDataError, match="timeline_ts is not aligned"):
        request_block(broken, spec)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _steps_worker(rank: int, port: int, queue) -> None:
    from model.synthetic_batch import synthetic_batch, tiny_feature_spec
    from trainer.distributed import ProcessGroup
    from trainer.loop import SynchronizedBatches

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    group = ProcessGroup(rank, 2, rank, torch.device("cpu"))
    spec = tiny_feature_spec()
    batch = synthetic_batch(spec, num_requests=4, candidates_per_request=1)  # 4 samples
    filler = synthetic_batch(spec, num_requests=1, candidates_per_request=1)
    local = iter([batch] * (3 if rank == 0 else 5))  # rank 1 has two batches more
    steps = SynchronizedBatches(local, group, filler)
    weights = [(b.num_samples, round(float(b.weights.sum()), 6)) for b in steps]
    queue.put((rank, weights, [samples for samples, _ in steps.pending]))
    dist.destroy_process_group()


def test_ranks_run_until_every_rank_is_out_of_data_with_exact_step_weights():
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_steps_worker, args=(_free_port(), queue), nprocs=2, start_method="spawn")
    results = {
        rank: (weights, pending)
        for rank, weights, pending in (queue.get(timeout=60) for _ in range(2))
    }
    # Steps 1-3: 8 samples over 2 ranks, each sample weighs W/N = 2/8, so each rank's 4 sum to
    # 1; steps 4-5: rank 0 feeds the filler (weight 0), rank 1's 4 samples weigh 2/4 each.
    assert results[0][0] == [(4, 1.0)] * 3 + [(1, 0.0)] * 2
    assert results[1][0] == [(4, 1.0)] * 3 + [(4, 2.0)] * 2
    assert results[0][1] == [4, 4, 4, 0, 0] and results[1][1] == [4] * 5


def test_closed_prefetcher_leaves_no_thread_behind(tiny_data):
    """A thread left reading Parquet at interpreter exit can abort a finished run."""
    batches = Prefetcher(_stream(tiny_data, seed=1).batches(), depth=2)
    next(batches)
    batches.close()
    assert not batches._thread.is_alive()


def _shutdown_worker(rank: int, port: int, queue) -> None:
    from trainer.distributed import shutdown_process_group

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    total = torch.ones(1)
    dist.all_reduce(total)
    shutdown_process_group(succeeded=True)
    queue.put((rank, float(total), dist.is_initialized()))


def test_shutdown_meets_at_a_barrier_and_destroys_the_group():
    context = mp.get_context("spawn")
    queue = context.Queue()
    mp.start_processes(_shutdown_worker, args=(_free_port(), queue), nprocs=2, start_method="spawn")
    assert sorted(queue.get(timeout=60) for _ in range(2)) == [(0, 2.0, False), (1, 2.0, False)]


def test_table_paths_join_uris_without_folding_the_scheme():
    from contract.feature_spec import join

    assert join("s3://bucket/cain/", "samples") == "s3://bucket/cain/samples"
    assert join("/data/cain", "samples") == "/data/cain/samples"


def test_rebuilt_tables_give_the_same_batches(tmp_path):
    """File names carry random UUIDs; the same data written twice must still read the same."""
    from trainer.synthetic_samples import write_synthetic_samples

    roots = [tmp_path / "first", tmp_path / "second"]
    for root in roots:
        write_synthetic_samples(root, users=12, days=3, files_per_day=3, seed=4)
    names = [
        [
            file.uri.rsplit("/", 1)[-1]
            for file in SamplesTable.open(root, FeatureSpec.read(root)).files(
                FeatureSpec.read(root).splits["train"].dates
            )
        ]
        for root in roots
    ]
    assert names[0] != names[1]
    first, second = (_stream(root, seed=7) for root in roots)
    for one, other in zip(first.batches(), second.batches(), strict=True):
        assert torch.equal(one.labels, other.labels)
        assert torch.equal(one.user_ids, other.user_ids)
