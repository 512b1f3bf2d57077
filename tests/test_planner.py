"""The stream planner: a pure, partitioned, resumable order over shards."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roxxel.planner import plan


def stream(p, start=0) -> np.ndarray:
    parts = list(p.records(start))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), min_size=1, max_size=30),
    world=st.integers(1, 5),
    workers=st.integers(1, 3),
    window=st.integers(1, 6),
    seed=st.integers(0, 2**32),
    epoch=st.integers(0, 3),
    shuffle=st.booleans(),
)
def test_ranks_and_workers_partition_the_epoch(counts, world, workers, window, seed, epoch, shuffle):
    total = sum(counts)
    for remainder in ("drop", "pad"):
        per_rank = total // world if remainder == "drop" else -(-total // world)
        seen = []
        for rank in range(world):
            rank_ids = [stream(plan(counts, seed=seed, epoch=epoch, rank=rank, world_size=world, worker=w,
                                     num_workers=workers, shuffle=shuffle, window=window, remainder=remainder))
                        for w in range(workers)]
            assert sum(len(ids) for ids in rank_ids) == per_rank  # equal counts per rank
            seen.extend(np.concatenate(rank_ids).tolist())
        assert all(0 <= i < total for i in seen)
        if remainder == "drop":
            assert len(set(seen)) == len(seen) == per_rank * world  # disjoint
        else:
            assert set(seen) == set(range(total))  # covers the epoch
            assert len(seen) - len(set(seen)) < world  # only the padding repeats


def test_the_plan_is_a_pure_function_of_its_inputs():
    counts = [10, 0, 7, 30, 12, 5]
    a = stream(plan(counts, seed=3, epoch=1, rank=1, world_size=2))
    b = stream(plan(counts, seed=3, epoch=1, rank=1, world_size=2))
    assert np.array_equal(a, b)
    assert not np.array_equal(a, stream(plan(counts, seed=4, epoch=1, rank=1, world_size=2)))
    assert not np.array_equal(a, stream(plan(counts, seed=3, epoch=2, rank=1, world_size=2)))
    ordered = stream(plan(counts, shuffle=False))
    assert ordered.tolist() == list(range(sum(counts)))


@pytest.mark.parametrize("start", [0, 1, 15, 16, 17, 99, 150, 200])
def test_resume_from_any_position_matches_the_uninterrupted_stream(start):
    counts = [13, 20, 7, 40, 9, 33, 28, 50]
    p = plan(counts, seed=11, window=3)
    assert np.array_equal(stream(p, start), stream(p)[start:])


def test_each_rank_touches_about_its_share_of_the_shards():
    counts = [100] * 64
    shards = [len(np.unique(plan(counts, seed=1, rank=r, world_size=8).piece_shard)) for r in range(8)]
    assert all(s <= 64 // 8 + 2 for s in shards)
    fetch = plan(counts, seed=1, rank=3, world_size=8).shard_order
    assert len(fetch) == len(set(fetch.tolist()))


def test_shuffle_quality_within_windows():
    counts = [1000] * 100
    n = sum(counts)
    ids = stream(plan(counts, seed=5, window=16))
    assert sorted(ids.tolist()) == list(range(n))
    mean_distance = np.abs(np.diff(ids)).mean()
    assert mean_distance > 0.85 * n / 3
    distinct = np.mean([len(np.unique(ids[i:i + 256] // 1000)) for i in range(0, n - 256, 256)])
    assert distinct > 12  # a window of 16 shards is mixed


def test_memory_and_time_do_not_depend_on_the_record_count():
    counts = np.full(10_000, 100_000, dtype=np.int64)  # 10**9 records
    p = plan(counts, seed=1, window=4)
    first = next(p.records(start=987_654_321))
    assert len(first) <= 4 * 100_000
    assert p.piece_shard.nbytes < 1_000_000


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(rank=2, world_size=2), r"rank must be in \[0, 2\), got 2"),
        (dict(worker=1), r"worker must be in \[0, 1\), got 1"),
        (dict(window=0), "window must be an integer >= 1, got 0"),
        (dict(seed=-1), "seed must be an integer >= 0, got -1"),
        (dict(remainder="repeat"), "remainder must be 'pad' or 'drop', got 'repeat'"),
    ],
)
def test_bad_plan_arguments_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        plan([5, 5], **kwargs)


@pytest.mark.parametrize("world_size, rank", [(4, 1), (3, 2), (1, 0)])
def test_window_layout_spans_only_the_records_a_consumer_reads(world_size, rank):
    # The reader copies each shard's offsets over [first, stop) only: with many ranks,
    # that is a rank's share of a shard, not the whole shard.
    p = plan([1000, 700, 1300], seed=2, world_size=world_size, rank=rank, window=2)
    spanned = 0
    for w in range(p.num_windows):
        layout = p.window_layout(w)
        for j in range(len(layout.shards)):
            mine = layout.local[layout.slot == j]
            assert (layout.first[j], layout.stop[j]) == (mine.min(), mine.max() + 1)
            spanned += int(layout.stop[j] - layout.first[j])
    assert spanned == p.num_records  # no padding wrap here: every span is read in full


def test_a_windows_shards_are_listed_in_download_order():
    # ds.iter starts a window's downloads in this order, and its stages open the shards in
    # the same order: the plan's order of first use
    p = plan([30, 10, 50, 20, 40, 60, 10], seed=4, window=3)
    listed = np.concatenate([p.window_shards(w) for w in range(p.num_windows)])
    assert listed.tolist() == p.shard_order.tolist()
    for w in range(p.num_windows):
        order = p.window_order(w)
        assert order.shards.tolist() == p.window_shards(w).tolist()
        slots, _ = order.at(0, len(order))
        assert slots[0] == 0  # the window starts with the shard it downloads first
