"""Seeded token streams and the O(1) permutation behind them."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from roxxel import Roxxel
from roxxel.permute import Permutation


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 3000), key=st.lists(st.integers(0, 2**32), min_size=1, max_size=3))
def test_permutation_is_a_bijection_of_range_n(n, key):
    image = Permutation(n, key)(np.arange(n))
    assert sorted(image.tolist()) == list(range(n))


def test_permutation_depends_only_on_its_key_and_looks_uniform():
    n = 100_000
    a = Permutation(n, [7, 0])(np.arange(n))
    assert np.array_equal(a, Permutation(n, [7, 0])(np.arange(n)))
    assert not np.array_equal(a, Permutation(n, [7, 1])(np.arange(n)))
    # consecutive outputs of a uniform permutation are n/3 apart on average
    assert 0.95 < np.abs(np.diff(a)).mean() / (n / 3) < 1.05
    assert int(Permutation(n, [7, 0])(12345)) == int(a[12345])
    with pytest.raises(IndexError, match="out of range"):
        Permutation(n, [1])(n)


@pytest.fixture
def tokens(tmp_path):
    """Three shards of int32 tokens whose values are their global positions."""
    ds = Roxxel(str(tmp_path / "tok_*.rox"))
    sizes = [1000, 1500, 777]  # tokens per shard; tails short of a window go unused
    start = 0
    for size in sizes:
        ds.write([np.arange(start, start + size, dtype=np.int32)], max_shard_bytes=25)
        start += size
    assert len(ds.paths) == 3
    return ds


def test_batches_have_the_asked_shape_and_are_real_windows(tokens):
    batch = next(tokens.stream(seq_len=50, batch_size=8, seed=1))
    assert batch.shape == (8, 50) and batch.dtype == np.int32
    for row in batch:  # each row is 50 consecutive tokens that start on a window boundary
        assert np.array_equal(row, np.arange(row[0], row[0] + 50))
    assert batch.flags.c_contiguous and batch.flags.writeable


def test_one_epoch_visits_every_window_exactly_once(tokens):
    seq = 50
    n_windows = 1000 // seq + 1500 // seq + 777 // seq  # 20 + 30 + 15
    assert n_windows == 65
    stream = tokens.stream(seq_len=seq, batch_size=5, seed=3)
    firsts = np.concatenate([b[:, 0] for b in itertools.islice(stream, 13)])
    assert len(set(firsts.tolist())) == 65
    shard_starts = [0, 1000, 2500]
    for t in firsts.tolist():  # no window crosses a shard boundary
        base = max(s for s in shard_starts if s <= t)
        assert (t - base) % seq == 0


@pytest.mark.parametrize("seed", [0, 1, 42, 2**31])
def test_start_step_resumes_exactly_where_an_uninterrupted_run_is(tokens, seed):
    full = list(itertools.islice(tokens.stream(seq_len=40, batch_size=7, seed=seed, epochs=None), 60))
    for start in (0, 1, 9, 10, 11, 37, 59):  # several epochs: 81 windows, 7 per batch
        resumed = list(itertools.islice(tokens.stream(40, 7, seed, start_step=start, epochs=None), 60 - start))
        assert len(resumed) == 60 - start
        assert all(np.array_equal(a, b) for a, b in zip(full[start:], resumed))


def test_seed_and_epoch_change_the_order(tokens):
    a = next(tokens.stream(10, 32, seed=1))
    b = next(tokens.stream(10, 32, seed=2))
    assert not np.array_equal(a, b)
    stream = tokens.stream(10, 327, seed=1, epochs=2)  # one batch = one whole epoch of 327 windows
    e0, e1 = next(stream), next(stream)
    assert sorted(e0[:, 0].tolist()) == sorted(e1[:, 0].tolist())  # each epoch: every window
    small = tokens.stream(10, 4, seed=1)
    first_epoch = [next(small)[:, 0].tolist() for _ in range(3)]
    second_epoch = [b[:, 0].tolist() for b in itertools.islice(tokens.stream(10, 4, seed=1, start_step=82, epochs=2), 3)]
    assert first_epoch != second_epoch


def test_dtype_changes_how_the_payload_is_read(tmp_path):
    ds = Roxxel(tmp_path / "u16.rox")
    ds.write([np.arange(1000, dtype=np.uint16)])
    batch = next(ds.stream(seq_len=100, batch_size=2, seed=0, dtype=np.uint16))
    assert batch.dtype == np.uint16 and batch[0, 1] - batch[0, 0] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(seq_len=0), "seq_len must be a positive integer, got 0"),
        (dict(seq_len=10, batch_size=0), "batch_size must be an integer >= 1, got 0"),
        (dict(seq_len=10, seed=-1), "seed must be an integer >= 0, got -1"),
        (dict(seq_len=10, start_step=-3), "start_step must be an integer >= 0, got -3"),
        (dict(seq_len=10**6), "no complete window of seq_len=1000000"),
        (dict(seq_len=10, epochs=0), r"epochs must be an integer >= 1 \(or None for an endless stream\), got 0"),
        (dict(seq_len=10, epochs=2.0), "epochs must be an integer >= 1 .*got 2.0"),
    ],
)
def test_bad_stream_arguments_are_refused_with_the_value(tokens, kwargs, message):
    with pytest.raises(ValueError, match=message):
        next(tokens.stream(**kwargs))


def test_resume_is_exact_across_permutation_block_boundaries(tokens, monkeypatch):
    from roxxel.read import tokens as tokens_module

    monkeypatch.setattr(tokens_module._EpochOrder, "BLOCK", 5)  # many blocks per epoch
    full = list(itertools.islice(tokens.stream(seq_len=40, batch_size=7, seed=9, epochs=None), 40))
    firsts = np.concatenate([b[:, 0] for b in full[:66 // 7]])
    assert len(set(firsts.tolist())) == len(firsts)  # no window twice within an epoch
    for start in (3, 17, 33):
        resumed = list(itertools.islice(tokens.stream(40, 7, 9, start_step=start, epochs=None), 40 - start))
        assert all(np.array_equal(a, b) for a, b in zip(full[start:], resumed))


def test_a_stream_is_one_epoch_by_default_and_stops(tokens):
    # 65 windows of 50 tokens, 5 per batch: 13 batches, then the stream ends (as in 0.3.0)
    batches = list(itertools.islice(tokens.stream(seq_len=50, batch_size=5, seed=3), 100))
    assert len(batches) == 13
    assert sorted(int(row[0]) for b in batches for row in b) == sorted(
        int(row[0]) for b in itertools.islice(tokens.stream(50, 5, 3, epochs=None), 13) for row in b)
    # 25 + 37 + 19 = 81 windows of 40, 7 per batch: 11 batches; the 4 windows short of
    # a batch are dropped
    assert len(list(itertools.islice(tokens.stream(40, 7, seed=1), 100))) == 11
    assert len(list(itertools.islice(tokens.stream(40, 7, seed=1, epochs=None), 100))) == 100


@pytest.mark.parametrize("epochs", [1, 3])
def test_resuming_a_finite_stream_yields_exactly_the_rest_of_it(tokens, epochs):
    # 81 windows, 7 per batch: batches straddle epochs; 3 epochs are 243 // 7 = 34 steps
    full = list(tokens.stream(seq_len=40, batch_size=7, seed=5, epochs=epochs))
    endless = list(itertools.islice(tokens.stream(40, 7, seed=5, epochs=None), len(full) + 1))
    assert len(full) == epochs * 81 // 7
    assert all(np.array_equal(a, b) for a, b in zip(full, endless))  # the endless stream's head
    for start in range(len(full) + 2):
        resumed = list(tokens.stream(40, 7, seed=5, start_step=start, epochs=epochs))
        assert len(resumed) == max(0, len(full) - start)
        assert all(np.array_equal(a, b) for a, b in zip(full[start:], resumed))


def test_ranks_of_a_finite_stream_stop_together(tokens):
    from roxxel.read.tokens import TokenWindows, token_batches

    sizes = [p.nbytes for p in tokens.payloads]
    windows = TokenWindows(sizes, lambda k: tokens.shard(k).payload, 40, np.int32)
    ranks = [list(token_batches(windows, 4, 2, epochs=2, shard=(r, 3))) for r in range(3)]
    assert [len(r) for r in ranks] == [2 * 81 // (4 * 3)] * 3  # 13 each, the tail dropped
    global_steps = list(itertools.islice(token_batches(windows, 4, 2, epochs=None), 39))
    for r, batches in enumerate(ranks):
        assert all(np.array_equal(a, b) for a, b in zip(batches, global_steps[r::3]))
        resumed = list(token_batches(windows, 4, 2, 7, epochs=2, shard=(r, 3)))
        assert len(resumed) == 6 and all(np.array_equal(a, b) for a, b in zip(batches[7:], resumed))


@settings(max_examples=40, deadline=None)
@given(
    tokens_per_shard=st.lists(st.integers(0, 300), min_size=1, max_size=45),
    seq_len=st.integers(1, 20),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 2**32),
    start=st.integers(0, 40),
)
def test_staged_groups_visit_every_window_once_and_resume_exactly(tokens_per_shard, seq_len, batch_size, seed, start):
    # Many shards, so that an epoch has several groups of 16 (see roxxel.read.tokens)
    from roxxel.read.tokens import TokenWindows, token_batches

    edges = np.concatenate([[0], np.cumsum(tokens_per_shard)])
    payloads = [np.arange(a, b, dtype=np.int32).view(np.uint8) for a, b in itertools.pairwise(edges)]
    windows = TokenWindows([p.nbytes for p in payloads], lambda k: payloads[k], seq_len, np.int32)
    n = len(windows)
    if n == 0:
        return
    endless = list(itertools.islice(token_batches(windows, batch_size, seed, epochs=None), start + 3))
    firsts = np.concatenate([b[:, 0] for b in endless])
    per_epoch = firsts[: n // batch_size * batch_size] if len(firsts) >= n else firsts
    assert len(set(per_epoch.tolist())) == len(per_epoch)  # no window twice in an epoch
    for b in endless:  # real windows: seq_len consecutive tokens of one shard
        assert np.all(np.diff(b, axis=1) == 1)
        shard = np.searchsorted(edges, b[:, 0], side="right") - 1
        assert np.all((b[:, 0] - edges[shard]) % seq_len == 0)
    resumed = list(itertools.islice(token_batches(windows, batch_size, seed, start, epochs=None), 3))
    assert all(np.array_equal(a, b) for a, b in zip(endless[start:], resumed))
    every = sorted(int(b[0, 0]) for b in token_batches(windows, 1, seed))  # one epoch, a window a batch
    assert every == [int(a) + j * seq_len for a, c in zip(edges[:-1], tokens_per_shard) for j in range(c // seq_len)]


@settings(max_examples=60, deadline=None)
@given(
    tokens_per_shard=st.lists(st.integers(0, 600), min_size=1, max_size=40),
    head_fraction=st.lists(st.one_of(st.just(0.0), st.floats(0.1, 1)), min_size=40, max_size=40),
    seq_len=st.integers(1, 12),
    batch_size=st.integers(1, 9),
    seed=st.integers(0, 2**32),
    start=st.integers(0, 6),
    topology=st.sampled_from([(0, 1), (0, 2), (1, 2), (2, 3)]),
)
def test_heads_lead_each_group_and_the_first_batches_are_served_from_the_lead_s_head(
        tokens_per_shard, head_fraction, seq_len, batch_size, seed, start, topology):
    from roxxel.read.tokens import TokenWindows, _EpochOrder, token_batches

    edges = np.concatenate([[0], np.cumsum(tokens_per_shard)])
    payloads = [np.arange(a, b, dtype=np.int32).view(np.uint8) for a, b in itertools.pairwise(edges)]
    heads = [int(p.nbytes * f) for p, f in zip(payloads, head_fraction)]  # (any byte: a head ends at a record)
    mapped: list[int] = []

    def payload(k: int) -> np.ndarray:
        mapped.append(k)
        return payloads[k]

    windows = TokenWindows([p.nbytes for p in payloads], payload, seq_len, np.int32, heads)
    n = len(windows)
    if n == 0:
        return
    assert windows.head_windows.tolist() == [min(h // (4 * seq_len), p.nbytes // (4 * seq_len))
                                             for h, p in zip(heads, payloads)]
    order = _EpochOrder(np.diff(windows.starts), seed, heads=windows.head_windows)
    every = order.windows(0, n)
    assert sorted(every.tolist()) == list(range(n))  # an epoch: every window once
    edges = order._epoch_plan(0)[1]
    for sample in range(0, n, max(1, n // 50)):  # what is asked for ahead: every shard its group reads from here on
        end = int(edges[np.searchsorted(edges, sample, side="right")])
        needed = np.searchsorted(windows.starts, every[sample:end], side="right") - 1
        assert set(needed.tolist()) <= set(order.shards_ahead(sample).tolist())
    lead = order.lead(0)
    shards = order._epoch_plan(0)[0]
    assert (lead is not None) == bool(np.any(windows.head_windows[shards[:16]] > 0))  # a group of 16
    if lead is not None:  # a group's first positions: its lead's head windows alone
        g = order._group_order(0, 0, shards)
        first = every[: int(g.stage_starts[1])] - windows.starts[lead]
        assert g.from_head and np.all((first >= 0) & (first < windows.head_windows[lead]))
    # the stream, with the lead hook: batches within the head are served from its bytes alone
    asked: list[int] = []

    def hook(k: int):
        asked.append(k)
        return lambda: payloads[k][: heads[k]]

    rank, world = topology
    first = (start * world + rank) * batch_size  # this rank's first sample
    plain = list(itertools.islice(token_batches(windows, batch_size, seed, start, epochs=None, shard=topology), 3))
    mapped.clear()
    windows = TokenWindows([p.nbytes for p in payloads], payload, seq_len, np.int32, heads)
    led = token_batches(windows, batch_size, seed, start, epochs=None, shard=topology, lead=hook)
    got = next(led)
    assert np.array_equal(got, plain[0])
    lead = order.lead(first)
    fits = False
    if lead is not None:  # the head is asked for only if the first batch lies in it
        local = order.windows(first, batch_size) - windows.starts[lead]
        fits = bool(np.all((local >= 0) & (local < windows.head_windows[lead])))
    assert asked == ([lead] if fits else [])
    if fits:
        event("the first batch lies in the lead's head")
        assert mapped == []  # a batch of the head's windows maps no shard
    assert all(np.array_equal(a, b) for a, b in zip(plain[1:], led))
