"""ds.iter maps a window's shards as the stream first needs them: the first record waits
for the window's first shard only, and a resume maps only the shards still to be read."""

from __future__ import annotations

import threading

import numpy as np
import pytest

import roxxel
from roxxel.backends import Store
from roxxel.planner import PLAN_VERSION, plan


def make_records(n: int) -> list[bytes]:
    return [f"record {i} ".encode() * (1 + i % 7) for i in range(n)]


class HoldingStore(Store):
    """Downloads of every shard not in ``free`` wait until :meth:`release`."""

    def __init__(self, *args, free: set[str], **kw):
        super().__init__(*args, **kw)
        self.free = set(free)
        self.started: list[str] = []
        self.finished: list[str] = []
        self._released = threading.Event()

    def release(self) -> None:
        self._released.set()

    def stream(self, key, sink, size=None):
        self.started.append(key)
        if key not in self.free:
            assert self._released.wait(30), f"{key} was never released"
        out = super().stream(key, sink, size)
        self.finished.append(key)
        return out


@pytest.fixture
def dataset(tmp_path):
    """800 records in about 30 shards."""
    url = str(tmp_path / "ds")
    recs = make_records(800)
    with roxxel.Writer(url, shard_bytes=1500) as w:
        w.extend(recs)
    manifest = w.manifest
    assert manifest is not None and len(manifest.shards) >= 16
    return url, recs, manifest


def expected_stream(manifest, **kwargs) -> list[int]:
    return np.concatenate(list(plan(manifest.shards.records, **kwargs).records())).tolist()


def test_the_first_record_comes_while_the_windows_other_shards_are_held(dataset, tmp_path):
    url, recs, manifest = dataset
    p = plan(manifest.shards.records, seed=3, window=8)
    order = p.window_order(0)
    first = int(order.shards[0])
    uris = manifest.shards.uris
    store = HoldingStore(url, free={str(uris[first])})
    try:
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            it = ds.iter(seed=3, window=8, rank=0, world_size=1)
            head = [bytes(next(it)) for _ in range(int(order.stage_starts[1]))]  # stage 0: shard s_0 alone
            ids = expected_stream(manifest, seed=3, window=8)
            assert head == [recs[i] for i in ids[: len(head)]] and head
            others = [str(uris[k]) for k in p.window_shards(0).tolist() if k != first]
            assert not set(others) & set(store.finished)  # still held back
            assert [k for k in range(ds.num_shards) if ds.is_mapped(k)] == [first]
            store.release()
            assert head + [bytes(r) for r in it] == [recs[i] for i in ids]
    finally:
        store.release()


def test_a_resume_maps_only_the_shards_it_still_needs(dataset, tmp_path):
    url, recs, manifest = dataset
    kwargs = {"seed": 8, "window": 8, "rank": 0, "world_size": 1}
    p = plan(manifest.shards.records, seed=8, window=8)
    order = p.window_order(1)
    stage = 2
    assert order.stage_starts[stage] < order.stage_starts[stage + 1]
    start = int(p.window_sizes()[0] + order.stage_starts[stage])  # window 1, its third stage
    open_slots = order.shards[: stage + 1].tolist()
    store = HoldingStore(url, free={str(manifest.shards.uris[k]) for k in open_slots})
    try:
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            state = {**ds.iter(**kwargs).state(), "position": start}
            it = ds.resume(state, rank=0, world_size=1)
            stage_length = int(order.stage_starts[stage + 1] - order.stage_starts[stage])
            got = [bytes(next(it)) for _ in range(stage_length)]
            ids = expected_stream(manifest, seed=8, window=8)
            assert got == [recs[i] for i in ids[start : start + stage_length]]
            mapped = {k for k in range(ds.num_shards) if ds.is_mapped(k)}
            assert mapped <= set(open_slots)  # nothing of window 0, nothing of a later stage
            assert not set(p.window_shards(0).tolist()) - set(open_slots) & mapped
            store.release()
            assert got + [bytes(r) for r in it] == [recs[i] for i in ids[start:]]
    finally:
        store.release()


def test_states_carry_the_plan_version(dataset, tmp_path):
    url, recs, manifest = dataset
    kwargs = {"seed": 2, "window": 4, "rank": 0, "world_size": 1}
    ids = expected_stream(manifest, seed=2, window=4)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        it = ds.iter(**kwargs)
        next(it)
        state = it.state()
        assert state["plan"] == PLAN_VERSION == 2
        assert [bytes(r) for r in ds.resume(state, rank=0, world_size=1)] == [recs[i] for i in ids[1:]]

        # A state saved before staged windows has no plan version; inside a window its
        # position would name other records: refused
        old = {k: v for k, v in state.items() if k != "plan"}
        with pytest.raises(roxxel.ResumeError, match="plan version 1.*inside a window"):
            ds.resume(old, rank=0, world_size=1)
        # at a window boundary the rest of the epoch is the same windows: resumed
        boundary = int(plan(manifest.shards.records, seed=2, window=4).window_sizes()[0])
        resumed = ds.resume({**old, "position": boundary}, rank=0, world_size=1)
        rest = [bytes(r) for r in resumed]
        assert rest == [recs[i] for i in ids[boundary:]]
        assert resumed.state()["plan"] == PLAN_VERSION  # saved again, it is today's
        assert [bytes(r) for r in ds.resume({**old, "position": 0}, rank=0, world_size=1)] == [recs[i] for i in ids]

        with pytest.raises(roxxel.ResumeError, match="plan version 3; this roxxel reads plan version 2"):
            ds.resume({**state, "plan": 3}, rank=0, world_size=1)
        with pytest.raises(roxxel.ResumeError, match="field 'plan' must be int"):
            ds.resume({**state, "plan": "2"}, rank=0, world_size=1)


def test_the_first_batch_of_a_stream_waits_for_one_shard(tmp_path):
    from roxxel.read.tokens import _EpochOrder

    url = str(tmp_path / "tokens")
    with roxxel.Writer(url, shard_bytes=16_100) as w:  # 20 shards of 4,000 tokens: 400 windows of 10
        for k in range(20):
            w.append(np.arange(4000 * k, 4000 * (k + 1), dtype=np.int32))
    manifest = w.manifest
    assert len(manifest.shards) == 20
    order = _EpochOrder(np.full(20, 400), seed=7)
    first = int(order._epoch_plan(0)[0][0])
    store = HoldingStore(url, free={str(manifest.shards.uris[first])})
    try:
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            stream = ds.stream(seq_len=10, batch_size=8, seed=7, rank=0, world_size=1)
            head = [next(stream) for _ in range(50 // 8)]  # the group's stage 0: 50 windows of s_0
            assert all(np.all(b // 4000 == first) for b in head)
            assert [k for k in range(ds.num_shards) if ds.is_mapped(k)] == [first]
            store.release()
            rest = list(stream)
        assert len(head) + len(rest) == 20 * 400 // 8
        firsts = np.concatenate([b[:, 0] for b in head + rest])
        assert sorted(firsts.tolist()) == list(range(0, 80_000, 10))  # every window once
    finally:
        store.release()
