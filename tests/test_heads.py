"""Shard heads: the manifest field, the writer's heads, and the first records served
from a head before the whole shard has arrived."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from blake3 import blake3

import roxxel
import roxxel.read.head
import roxxel.read.parts
import roxxel.read.residency
import roxxel.writer
from roxxel.backends import Store
from roxxel.build import commit, write_part
from roxxel.build.parts import Receipt
from roxxel.errors import ManifestError, ReceiptError, ResumeError, StorageError
from roxxel.manifest import Manifest, ShardInfo, ShardTable
from roxxel.manifest.checksums import parse_checksum
from roxxel.manifest.heads import HeadCheck, index_start, parse_head
from roxxel.manifest.parts import parse_parts
from roxxel.manifest.io import dataset_store, publish_manifest, read_manifest
from roxxel.ops.verify import verify
from roxxel.planner import plan
from roxxel.read.head import HeadFetch
from roxxel.read.mixplan import MixturePlan, Topology
from roxxel.read.parts import PartEngine

HEAD = 64 * 1024  # the writer's head size in these tests (8 MiB by default)
H1, H2 = "blake3:" + "1" * 64, "blake3:" + "2" * 64


def info(**kw) -> ShardInfo:
    fields = dict(uri="s.rox", records=10, stored_size=1 << 20, raw_size=1 << 20, compression=None,
                  checksum="blake3:" + "c" * 64)
    return ShardInfo(**(fields | kw))


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 3000)), dtype=np.uint8).tobytes() for _ in range(n)]


@pytest.fixture
def small_heads(monkeypatch):
    monkeypatch.setattr(roxxel.writer, "HEAD_BYTES", HEAD)


def written(tmp_path) -> tuple[str, list[bytes], Manifest]:
    """A dataset of 400 records in shards of 2.5 heads (small_heads), with heads: its
    URL, records and manifest."""
    url, recs = str(tmp_path / "ds"), make_records(400)
    return url, recs, write(url, recs, shard_bytes=5 * HEAD // 2)


def write(url: str, recs: list[bytes], **kw) -> Manifest:
    with roxxel.Writer(url, **kw) as w:
        w.extend(recs)
    assert w.manifest is not None
    return w.manifest


# -- the manifest field ----------------------------------------------------------------


def test_a_head_round_trips_and_a_manifest_without_heads_is_unchanged():
    head = f"3:4096:{H1}:{H2}"
    manifest = Manifest.build([info(head=head), info(uri="t.rox")])
    text = manifest.to_json()
    assert text.count('"head":') == 1 and f'"checksum":"blake3:{"c" * 64}","head":"{head}"}}' in text
    again = Manifest.from_json(text)
    assert again == manifest and again.shards[0].head == head and again.shards[1].head is None
    assert pickle.loads(pickle.dumps(manifest)) == manifest
    both = ShardTable.concat([manifest.shards, ShardTable.from_infos([info(uri="u.rox")])])
    assert both.heads.tolist() == [head, "", ""]
    assert manifest.shards.to_list()[0]["head"] == head and "head" not in manifest.shards.to_list()[1]
    plain = Manifest.build([info(), info(uri="t.rox")])
    assert '"head"' not in plain.to_json()
    assert plain != Manifest.build([info(head=head), info(uri="t.rox")])
    parsed = parse_head(head)
    assert (parsed.records, parsed.size, parsed.first.checksum, parsed.index.checksum) == (3, 4096, H1, H2)
    assert str(parsed) == head


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(head="1:4096:blake3:12"),
         r"shard\.head: expected '<records>:<bytes>:<checksum>:<checksum>', got '1:4096:blake3:12'"),
        (dict(head=f"0:4096:{H1}:{H2}"), r"expected '<records>:<bytes>:<checksum>:<checksum>'"),
        (dict(head=f"1:0:{H1}:{H2}"), r"expected '<records>:<bytes>:<checksum>:<checksum>'"),
        (dict(head=f"1:{10 ** 18}:{H1}:{H2}"), r"expected '<records>:<bytes>:<checksum>:<checksum>'"),
        (dict(head=f"4096:{H1}:{H2}"), r"expected '<records>:<bytes>:<checksum>:<checksum>'"),
        (dict(head=4096), r"shard\.head: expected a string, got 4096"),
        (dict(head=f"1:4096:{H1}:{H2}", compression="zstd", raw_size=2 << 20),
         r"shard\.head: expected no head on a shard stored with compression 'zstd'"),
        (dict(head=f"11:4096:{H1}:{H2}"), r"shard\.head: expected a head of at most the shard's 10 records, got 11"),
        (dict(head=f"1:{(1 << 20) - 103}:{H1}:{H2}"),
         rf"shard\.head: expected a head of at most the payload's {(1 << 20) - 104} bytes, got {(1 << 20) - 103}"),
    ],
)
def test_a_bad_head_is_refused_naming_the_field_and_the_value(kw, message):
    with pytest.raises(ManifestError, match=message):
        info(**kw)


def test_a_bad_head_in_a_manifest_names_its_shard():
    doc = Manifest.build([info(), info(uri="t.rox")]).to_dict()
    doc["shards"][1]["head"] = f"1:{1 << 20}:{H1}:{H2}"
    with pytest.raises(ManifestError,
                       match=r"manifest s3://b/ds: shards\[1\]\.head: expected a head of at most the payload"):
        Manifest.from_dict(doc, source="s3://b/ds")
    doc["shards"][1]["head"] = f"11:4096:{H1}:{H2}"
    with pytest.raises(ManifestError, match=r"shards\[1\]\.head: expected a head of at most the shard's 10 records"):
        Manifest.from_dict(doc)
    doc["shards"][1]["head"] = f"1:4096:{H1}:{H2}"
    assert Manifest.from_dict(doc).shards[1].head == f"1:4096:{H1}:{H2}"
    doc["shards"][1]["heads"] = "x"
    with pytest.raises(ManifestError, match=r"shards\[1\]\.heads: unknown field \(expected uri, .*, checksum, head, parts\)"):
        Manifest.from_dict(doc)


# -- the writer ---------------------------------------------------------------------


def test_the_writer_gives_each_shard_of_a_new_dataset_a_head_of_its_bytes(tmp_path, small_heads):
    url = str(tmp_path / "ds")
    manifest = write(url, make_records(400), shard_bytes=5 * HEAD // 2)
    *full, last = manifest.shards
    assert len(full) > 1 and last.stored_size <= 2 * HEAD and last.head is None  # (a small last shard: none)
    for shard in full:
        assert shard.stored_size > 2 * HEAD
        data = (tmp_path / "ds" / shard.uri).read_bytes()
        head = parse_head(shard.head)
        payload = index_start(shard.records, shard.stored_size)
        ends = np.frombuffer(data[payload:-24], dtype="<i8")
        assert head.records == int(np.searchsorted(ends, HEAD, side="right")) > 1
        assert head.size == ends[head.records - 1] <= HEAD
        assert head.first.hexdigest == blake3(data[: head.size]).hexdigest()
        assert head.index.hexdigest == blake3(data[payload:]).hexdigest()
    again = write(url, make_records(400, seed=1), shard_bytes=5 * HEAD // 2, mode="overwrite")
    assert all(s.head for s in list(again.shards)[:-1])


def test_compressed_small_and_tiny_record_shards_get_no_head(tmp_path, small_heads):
    zstd = write(str(tmp_path / "z"), make_records(300), shard_bytes=5 * HEAD // 2, compression="zstd")
    assert [s.head for s in zstd.shards] == [None] * len(zstd.shards)
    small = write(str(tmp_path / "s"), make_records(300), shard_bytes=HEAD)
    assert [s.head for s in small.shards] == [None] * len(small.shards)
    # records of one byte: an index larger than the head, which would come no sooner
    tiny = write(str(tmp_path / "t"), [b"x"] * 40_000, shard_bytes=400_000)
    assert [s.head for s in tiny.shards] == [None] * len(tiny.shards)


def test_a_built_dataset_s_shards_have_heads(tmp_path, small_heads):
    url = str(tmp_path / "ds")
    receipts = [write_part(make_records(300, seed=p), url, part=p, shard_bytes=5 * HEAD // 2) for p in (1, 0)]
    for receipt in receipts:
        assert all(s.head for s in receipt.shards if s.stored_size > 2 * HEAD) and len(receipt.shards) > 1
        assert Receipt.from_dict(json.loads(json.dumps(receipt.to_dict()))) == receipt
    manifest = commit(url, receipts)
    assert [s.head for s in manifest.shards] == [s.head for r in receipts[::-1] for s in r.shards]


# -- reading ------------------------------------------------------------------------


class InParts(Store):
    """A local dataset read as a store that downloads shards in parts. Until ``release``
    is set, every read but the head's waits; ``fail_head`` makes the head's reads fail.
    Records every ranged read: (thread kind, key, start, end)."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.root = args[0]  # (a local directory)
        self.release = threading.Event()
        self.reads: list[tuple[str, str, int, int]] = []
        self.fail_head = False
        self.fail_index = False
        self.flip_head = False  # the head's bytes come back with one bit flipped (in transit)
        self.hold_head: threading.Event | None = None  # the head's reads wait for it
        self.head_in_flight = self.head_peak = 0
        self.lock = threading.Lock()

    @property
    def downloads_in_parts(self) -> bool:
        return True

    def size_of(self, key) -> int:
        return os.path.getsize(os.path.join(self.root, key))

    def read_part(self, key, start, end, into, **kw):
        head = threading.current_thread().name.startswith("roxxel-head")
        self.reads.append(("head" if head else "shard", key, start, end))
        if head and (self.fail_index if end == self.size_of(key) else self.fail_head):
            raise StorageError(f"could not read {self.url(key)}: injected")
        if head:
            with self.lock:
                self.head_in_flight += 1
                self.head_peak = max(self.head_peak, self.head_in_flight)
        try:
            if head and self.hold_head is not None:
                assert self.hold_head.wait(30)
            if not head:
                assert self.release.wait(30)
            got = super().read_part(key, start, end, into, **kw)
        finally:
            if head:
                with self.lock:
                    self.head_in_flight -= 1
        if head and self.flip_head and start == 0:
            got[5] ^= 1
        return got


def test_the_first_records_come_from_the_head_before_the_shard_arrives(tmp_path, small_heads):
    url, recs, manifest = written(tmp_path)
    first, head = manifest.shards[0], parse_head(manifest.shards[0].head)
    store = InParts(url)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        it = iter(ds)
        got = [bytes(next(it)) for _ in range(head.records)]  # no read but the head's has ended
        assert head.records > 1 and sum(map(len, recs[: head.records])) == head.size
        assert not store.release.is_set() and ds.stats["shards_downloaded"] == 0
        store.release.set()
        got += [bytes(r) for r in it]
        assert got == recs
        stats = ds.stats
        payload = index_start(first.records, first.stored_size)
        assert stats["head_bytes"] == first.stored_size - payload  # the index: the one range read twice
        assert stats["bytes_downloaded"] == sum(s.stored_size for s in manifest.shards)
    heads = [r[1:] for r in store.reads if r[0] == "head"]
    assert sorted(heads) == [(first.uri, 0, head.size), (first.uri, payload, first.stored_size)]
    # the shard's own download started where the head ended: no byte fetched twice but the index
    assert min(a for kind, key, a, b in store.reads if kind == "shard" and key == first.uri) == head.size
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=InParts(url)) as ds:  # cached: no head
        assert [bytes(r) for r in ds] == recs and ds.stats["head_bytes"] == 0


def test_a_reader_whose_first_records_come_from_a_head_fetches_no_shard_as_its_first(tmp_path, small_heads):
    recs = make_records(400)
    led, plain = str(tmp_path / "led"), str(tmp_path / "plain")
    write(led, recs, shard_bytes=5 * HEAD // 2)
    write(plain, recs, shard_bytes=5 * HEAD // 2, heads=False)
    for url, from_head in ((led, True), (plain, False)):
        store = InParts(url)
        with roxxel.open(url, cache_dir=str(tmp_path / f"cache-{from_head}"), store=store) as ds:
            it = iter(ds)
            reader = threading.Thread(target=next, args=(it,))  # (without a head, it waits for the shard)
            reader.start()
            deadline = time.monotonic() + 10
            while not (urgent := [t for t in roxxel.read.parts.engine()._transfers if t.urgent]) \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            # with a head, the shard read next goes before the others (urgent), not alone in
            # pieces with the others held back (first): that only idled the link
            assert [t.first for t in urgent] == [not from_head]
            store.release.set()
            reader.join(10)
            assert [bytes(r) for r in it] == recs[1:]


def test_a_mixture_whose_first_record_has_no_head_fetches_its_shard_as_the_first(tmp_path, small_heads):
    urls = [str(tmp_path / f"src{i}") for i in range(2)]
    recs = [make_records(n, seed=20 + i) for i, n in enumerate((400, 300))]
    for url, r in zip(urls, recs):  # the source of the first position has no heads, the other one has
        write(url, r, shard_bytes=5 * HEAD // 2, heads=url != urls[0])
    stores = [InParts(url) for url in urls]
    with mixed(urls, stores, tmp_path / "cache") as m:
        it = m.iter(rank=0, world_size=1)
        first = int(it.plan.schedule.sources(0, 1)[0])
        assert first == 0 and it.plan.window_order(1, 0, 0).from_head  # (the other source's head is asked too)
        reader = threading.Thread(target=next, args=(it,))
        reader.start()
        deadline = time.monotonic() + 10
        while not (urgent := [t for t in roxxel.read.parts.engine()._transfers if t.urgent]) \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [t.first for t in urgent] == [True]  # its first record waits for that shard whole
        for s in stores:
            s.release.set()
        reader.join(10)
        assert len([bytes(r) for r in it]) == it.plan.length - 1


def stream_unheld(url: str, cache_dir) -> list[np.ndarray]:
    """``ds.stream(32, 4, seed=5)``'s batches, read through a store that holds back no read."""
    released = InParts(url)
    released.release.set()
    with roxxel.open(url, cache_dir=str(cache_dir), store=released) as ds:
        return list(ds.stream(32, 4, seed=5, rank=0, world_size=1))


def test_ds_stream_s_first_batches_come_from_the_head_that_leads_its_group(tmp_path, small_heads):
    url, recs, manifest = written(tmp_path)
    seq_len, batch = 32, 4  # windows of 128 bytes: a head of 64 KiB holds about 500
    whole = stream_unheld(url, tmp_path / "plain")
    store = InParts(url)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        stream = ds.stream(seq_len, batch, seed=5, rank=0, world_size=1)
        got = [next(stream) for _ in range(10)]  # no read but the head's has ended (its first 156 samples)
        assert not store.release.is_set() and ds.stats["shards_downloaded"] == 0
        store.release.set()
        got += list(stream)
        heads = [r[1:] for r in store.reads if r[0] == "head"]
        (key, _, size), index = sorted(heads)[0], sorted(heads)[1]
        shard = next(s for s in manifest.shards if s.uri == key)
        assert size == parse_head(shard.head).size and index[2] == shard.stored_size
        assert ds.stats["head_bytes"] == index[2] - index[1]
        assert ds.stats["bytes_downloaded"] == sum(s.stored_size for s in manifest.shards)
    assert len(got) == len(whole) and all(np.array_equal(a, b) for a, b in zip(got, whole))
    # the shard's own download started where its head ended: no byte fetched twice but the index
    assert min(a for kind, k, a, b in store.reads if kind == "shard" and k == key) == size


@pytest.mark.parametrize("failing", ["fail_head", "flip_head"])
def test_a_stream_s_head_that_fails_leaves_its_first_batches_to_the_shard(tmp_path, small_heads, caplog, failing):
    url, recs, manifest = written(tmp_path)
    whole = stream_unheld(url, tmp_path / "plain")
    store = InParts(url)
    setattr(store, failing, True)
    store.release.set()
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        got = list(ds.stream(32, 4, seed=5, rank=0, world_size=1))
        assert ds.stats["bytes_downloaded"] == sum(s.stored_size for s in manifest.shards)
    assert len(got) == len(whole) and all(np.array_equal(a, b) for a, b in zip(got, whole))
    assert "wait for the whole shard" in caplog.text


def test_heads_false_streams_in_the_order_of_a_dataset_without_heads(tmp_path, small_heads):
    recs = make_records(400)
    with_heads, without = str(tmp_path / "with"), str(tmp_path / "without")
    write(with_heads, recs, shard_bytes=5 * HEAD // 2)
    write(without, recs, shard_bytes=5 * HEAD // 2, heads=False)
    with roxxel.open(with_heads, cache_dir=str(tmp_path / "c1")) as a, \
            roxxel.open(without, cache_dir=str(tmp_path / "c2")) as b:
        plain = list(b.stream(32, 4, seed=5, rank=0, world_size=1))
        led = list(a.stream(32, 4, seed=5, rank=0, world_size=1))
        old = list(a.stream(32, 4, seed=5, rank=0, world_size=1, heads=False))
        assert len(plain) == len(led) == len(old)
        assert all(np.array_equal(x, y) for x, y in zip(plain, old))  # the order of before heads
        assert not all(np.array_equal(x, y) for x, y in zip(plain, led))  # heads lead the groups


def test_a_mixture_stream_s_first_batch_comes_from_its_sources_heads(tmp_path, small_heads):
    urls = [str(tmp_path / f"ds{i}") for i in range(2)]
    manifests = [write(url, make_records(400, seed=i), shard_bytes=5 * HEAD // 2) for i, url in enumerate(urls)]

    def batches(stores, cache, gated):
        sources = [roxxel.open(url, cache_dir=str(tmp_path / f"{cache}{i}"), store=store)
                   for i, (url, store) in enumerate(zip(urls, stores))]
        with roxxel.mix(sources, weights=[0.5, 0.5], seed=3, cache_dir=str(tmp_path / cache)) as m:
            stream = m.stream(32, 4, rank=0, world_size=1)
            got = [next(stream) for _ in range(5)]  # 10 samples of each source: within their heads
            if gated:  # no read but the heads' has ended
                assert not any(s.release.is_set() for s in stores) and m.stats["shards_downloaded"] == 0
                for s in stores:
                    s.release.set()
            return got + list(stream)

    released = [InParts(url) for url in urls]
    for s in released:
        s.release.set()
    whole = batches(released, "plain", gated=False)
    stores = [InParts(url) for url in urls]
    got = batches(stores, "cache", gated=True)
    assert len(got) == len(whole) > 5 and all(np.array_equal(a, b) for a, b in zip(got, whole))
    for store, manifest in zip(stores, manifests):  # each source's head: its bytes and its index
        heads = sorted(r[1:] for r in store.reads if r[0] == "head")
        shard = next(s for s in manifest.shards if s.uri == heads[0][0])
        assert [(a, b) for _, a, b in heads] == [(0, parse_head(shard.head).size),
                                                 (index_start(shard.records, shard.stored_size), shard.stored_size)]


def two_sources(tmp_path) -> tuple[list[str], list[list[bytes]]]:
    """Two datasets of 400 and 300 records in shards of 2.5 heads (small_heads), with heads."""
    urls = [str(tmp_path / f"src{i}") for i in range(2)]
    recs = [make_records(n, seed=10 + i) for i, n in enumerate((400, 300))]
    for url, r in zip(urls, recs):
        write(url, r, shard_bytes=5 * HEAD // 2)
    return urls, recs


def mixed(urls, stores, cache) -> roxxel.Mixture:
    sources = [roxxel.open(url, cache_dir=str(cache), store=store) for url, store in zip(urls, stores)]
    return roxxel.mix(sources, weights=[0.6, 0.4], seed=4, cache_dir=str(cache))


def plan_records(p, recs: list[list[bytes]]) -> list[bytes]:
    """The records of mixture plan ``p``'s epoch, in order, from each source's records."""
    srcs, ids = p.records(0, p.length)
    out, taken = [], [0] * len(recs)
    for i in srcs.tolist():
        out.append(recs[i][int(ids[i][taken[i]])])
        taken[i] += 1
    return out


def test_a_mixture_s_first_records_come_from_its_sources_heads(tmp_path, small_heads):
    urls, recs = two_sources(tmp_path)
    stores = [InParts(url) for url in urls]
    with mixed(urls, stores, tmp_path / "cache") as m:
        it = m.iter(rank=0, world_size=1)
        p = it.plan
        assert p.version == 3 and it.state()["plan"] == 3  # (roxxel.planner.HEADS_PLAN_VERSION)
        # the leading positions whose records lie in the heads that lead each source's first window
        led = [int(p.window_order(i, 0, 0).stage_starts[1]) for i in range(2)]
        assert all(p.window_order(i, 0, 0).from_head for i in range(2))
        sources = p.schedule.sources(0, sum(led)).tolist()
        seen, n = [0, 0], 0
        while n < len(sources) and seen[sources[n]] < led[sources[n]]:
            seen[sources[n]] += 1
            n += 1
        assert n > 10 and min(seen) > 0
        got = [bytes(next(it)) for _ in range(n)]  # no read but the heads' has ended
        assert m.stats["shards_downloaded"] == 0
        for s in stores:
            s.release.set()
        got += [bytes(r) for r in it]
        assert got == plan_records(p, recs)
    for store in stores:  # each source read one head: its bytes and its index
        assert len([r for r in store.reads if r[0] == "head"]) == 2


def test_mixture_states_of_version_2_continue_in_the_order_planned_without_heads(tmp_path, small_heads):
    urls, recs = two_sources(tmp_path)
    released = [InParts(url) for url in urls]
    for s in released:
        s.release.set()
    with mixed(urls, released, tmp_path / "cache") as m:
        it = m.iter(rank=0, world_size=1)
        for _ in range(7):
            next(it)
        state = it.state()
        led = [bytes(r) for r in m.iter(rank=0, world_size=1)]
        older = [bytes(r) for r in m.resume({**state, "plan": 2, "position": 0, "consumed": [0, 0]})]
        # version 2: the order of the same plan made without the sources' heads
        headless = MixturePlan([replace(src, heads=None) for src in m._sources], m.schedule, seed=4, epoch=0,
                               topology=Topology(0, 1, 0, 1), samples=None, shuffle=True, window=16, remainder="pad")
        assert headless.version == 2 and older == plan_records(headless, recs) != led
        again = m.resume({**state, "plan": 2})
        assert [bytes(r) for r in again] == older[7:]  # a state of version 2 continues its own order
        assert again.state()["plan"] == 2
        assert [bytes(r) for r in m.resume(state)] == led[7:]
        with pytest.raises(ResumeError, match="plan version 4; this roxxel reads 2 and 3"):
            m.resume({**state, "plan": 4})
        # a job of version 2 continues on its own topology only
        job = roxxel.job_state([{**state, "plan": 2}])
        with pytest.raises(ResumeError, match=r"state is of plan version 2: it continues on its own topology only "
                                              r"\(world_size=1, num_workers=1\); on another, this roxxel continues "
                                              "plan version 3"):
            m.resume(job, rank=0, world_size=2, worker=0, num_workers=1)
        with pytest.raises(ResumeError, match="job state is of plan version 5; this roxxel reads 2 and 3"):
            m.resume({**job, "plan": 5}, rank=0, world_size=1, worker=0, num_workers=1)


def test_a_loader_state_of_another_plan_version_does_not_continue_inside_its_epoch(tmp_path, small_heads):
    from roxxel.torch import IterableRecords, StatefulLoader

    urls, recs = two_sources(tmp_path)

    def loader():
        m = roxxel.mix(urls, weights=[0.6, 0.4], seed=4, cache_dir=str(tmp_path / "cache"))
        return StatefulLoader(IterableRecords(m, batch_size=8, collate=lambda rs: [bytes(r) for r in rs]))

    saved, it = loader(), None
    it = iter(saved)
    head = [next(it) for _ in range(3)]
    state = json.loads(json.dumps(saved.state_dict()))
    assert state["job"]["plan"] == 3
    del it
    fresh = loader()
    fresh.load_state_dict(state)
    assert head + list(fresh) == list(loader())  # (the same version: exactly where it was)
    older = {**state, "job": {**state["job"], "plan": 2}}
    with pytest.raises(ResumeError, match=r"loader state's job is of plan version 2; this roxxel plans this mixture "
                                          r"at version 3 \(its shards' heads lead their windows\)"):
        loader().load_state_dict(older)
    loader().load_state_dict({**older, "batches": 0})  # (an epoch's start: nothing to name)


def test_a_mixture_with_heads_resized_twice_reads_each_record_of_its_stop_sources_once(tmp_path, small_heads):
    urls, recs = two_sources(tmp_path)
    released = [InParts(url) for url in urls]
    for s in released:
        s.release.set()
    read: list[bytes] = []
    with mixed(urls, released, tmp_path / "cache") as m:

        def run(job, world, take):
            states = []
            for rank in range(world):
                it = m.iter(rank=rank, world_size=world) if job is None else m.resume(job, rank=rank, world_size=world)
                read.extend(bytes(next(it)) for _ in range(take)) if take else read.extend(bytes(r) for r in it)
                states.append(it.state())
            return json.loads(json.dumps(roxxel.job_state(states)))

        job = run(None, 2, 60)
        assert job["plan"] == 3
        job = run(job, 3, 45)
        run(job, 1, None)
    assert len(read) == len(set(read))  # (the records are distinct)
    second = set(recs[1])
    assert {r for r in read if r in second} == second or {r for r in read if r not in second} == set(recs[0])


@pytest.mark.parametrize("later", [False, True], ids=["first piece leads", "a later piece leads"])
def test_ds_iter_s_first_records_come_from_the_head_that_leads_its_window(tmp_path, small_heads, later):
    url, recs, manifest = written(tmp_path)
    counts, heads = manifest.shards.records, manifest.shards.head_records
    assert manifest.shards[-1].head is None  # (a small last shard: a later piece leads where it comes first)
    seed = next(s for s in range(200) if (plan(counts, seed=s, heads=heads).window_order(0).piece[0] > 0) == later)
    store = InParts(url)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        it = ds.iter(seed=seed)
        order = it.plan.window_order(0)
        shard = manifest.shards[int(order.shards[0])]
        head = parse_head(shard.head)
        assert order.from_head and order.counts[0] == head.records  # (roxxel.planner, step 6)
        assert it.plan.piece_shard[0] == (len(counts) - 1 if later else order.shards[0])
        first_stage = int(order.stage_starts[1])
        ids = it.plan.window_records(0, 0, first_stage).tolist()
        got = [bytes(next(it)) for _ in range(first_stage)]  # no read but the head's has ended
        assert first_stage >= 1 and got == [recs[i] for i in ids]
        assert not store.release.is_set() and ds.stats["shards_downloaded"] == 0
        store.release.set()
        got += [bytes(r) for r in it]
        assert got == [recs[i] for ids in it.plan.records() for i in ids.tolist()]
        assert sorted(got) == sorted(recs)
        payload = index_start(shard.records, shard.stored_size)
        assert ds.stats["head_bytes"] == shard.stored_size - payload
        assert ds.stats["bytes_downloaded"] == sum(s.stored_size for s in manifest.shards)
    heads = [r[1:] for r in store.reads if r[0] == "head"]
    assert sorted(heads) == [(shard.uri, 0, head.size), (shard.uri, payload, shard.stored_size)]
    assert min(a for kind, key, a, b in store.reads if kind == "shard" and key == shard.uri) == head.size
    # resumed at the window's start, the same; past its first stage, no head is asked for,
    # but the part its first record lies in (and that shard's index)
    slot, local = order.at(first_stage, first_stage + 1)
    resumed_in = manifest.shards[int(order.shards[int(slot[0])])]
    for position, extra in ((0, shard.stored_size - payload),
                            (first_stage, part_bytes(url, resumed_in, int(local[0])))):
        again = InParts(url)
        again.release.set()
        with roxxel.open(url, cache_dir=str(tmp_path / f"cache{position}"), store=again) as ds:
            assert [bytes(r) for r in ds.resume({**it.state(), "position": position})] == got[position:]
            assert ds.stats["head_bytes"] == extra
        assert any(r[2] == 0 and r[3] == head.size for r in again.reads if r[0] == "head") == (position == 0)


def part_bytes(url: str, shard: ShardInfo, record: int) -> int:
    """The bytes a resume fetches for its first record, record ``record`` of ``shard``:
    the shard's record index and footer, and the parts that record lies in (none for a
    shard without parts: the resume waits for it whole)."""
    if shard.parts is None:
        return 0
    parts, payload = parse_parts(shard.parts), index_start(shard.records, shard.stored_size)
    offsets = np.fromfile(os.path.join(url, shard.uri), dtype="<i8", count=shard.records, offset=payload)
    a, b = parts.span(parts.covering(int(offsets[record - 1]) if record else 0, int(offsets[record])),
                      shard.stored_size)
    return shard.stored_size - payload + b - a


class KeyGated(InParts):
    """A store whose reads of a shard wait until its key is in ``opened``."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.opened: set[str] = set()
        self.asked: list[str] = []  # the shards read, in the order their reads came
        self.changed = threading.Condition()
        self.release.set()

    def open(self, *keys: str) -> None:
        with self.changed:
            self.opened.update(keys)
            self.changed.notify_all()

    def read_part(self, key, start, end, into, **kw):
        with self.changed:
            self.asked.append(key)
            assert self.changed.wait_for(lambda: key in self.opened, 30)
        return super().read_part(key, start, end, into, **kw)


@pytest.mark.parametrize("heads", [False, True], ids=["no heads", "heads"])
def test_a_resume_inside_a_stage_has_its_first_records_once_their_shard_is_in(tmp_path, small_heads, heads):
    url, recs = str(tmp_path / "ds"), make_records(400)
    manifest = write(url, recs, shard_bytes=5 * HEAD // 2, heads=heads)
    with roxxel.open(url, cache_dir=str(tmp_path / "plain")) as ds:
        it = ds.iter(seed=3)
        order = it.plan.window_order(0)
        position = int(order.stage_starts[-2]) + 1  # in the window's last stage: every shard is read there
        assert len(order.shards) > 2 and position < len(order)
        state = {**it.state(), "position": position}
        rest = [bytes(r) for r in ds.resume(state)]
    slot, _ = order.at(position, position + 1)
    first = manifest.shards[int(order.shards[int(slot[0])])].uri
    store = KeyGated(url)
    store.open(first)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        resumed = ds.resume(state)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(bytes(next(resumed))), daemon=True)
        try:
            reader.start()
            reader.join(10)  # (its other shards are held back: only the first position's has come)
            assert got == rest[:1] and store.asked[0] == first  # (and its download went first)
            assert {key for _, key, _, _ in store.reads} == {first}  # (the others are held back)
        finally:
            store.open(*(s.uri for s in manifest.shards))
        got += [bytes(r) for r in resumed]
    assert got == rest


def test_a_head_that_does_not_match_is_not_served(tmp_path, small_heads, caplog):
    url, recs, manifest = written(tmp_path)
    first, head = manifest.shards[0], parse_head(manifest.shards[0].head)
    wrong = f"{head.records}:{head.size}:blake3:{'0' * 64}:{head.index.checksum}"
    shards = [replace(first, head=wrong)] + list(manifest.shards)[1:]
    publish_manifest(dataset_store(url, {}), manifest.with_shards(shards), replaces=None)
    store = InParts(url)
    with caplog.at_level(logging.WARNING, logger="roxxel"):
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            it = iter(ds)
            threading.Timer(0.5, store.release.set).start()  # (no record comes before the shard)
            assert bytes(next(it)) == recs[0] and store.release.is_set()
            assert [recs[0]] + [bytes(r) for r in it] == recs
            assert ds.stats["shards_downloaded"] == len(manifest.shards)
    assert any(f"the first records of {store.url(first.uri)} wait for the whole shard" in m
               and f"bytes [0, {head.size}) (its head): blake3 is " in m and "expected " + "0" * 64 in m
               for m in caplog.messages)


@pytest.mark.parametrize("failing", ["head", "index"])
def test_a_head_that_cannot_be_fetched_leaves_its_records_to_the_shard(tmp_path, small_heads, caplog, failing):
    url = str(tmp_path / "ds")
    recs = make_records(400)
    first = write(url, recs, shard_bytes=5 * HEAD // 2).shards[0]
    store = InParts(url)
    setattr(store, f"fail_{failing}", True)
    store.release.set()
    with caplog.at_level(logging.WARNING, logger="roxxel"):
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            assert [bytes(r) for r in ds] == recs
    assert any("the first records of" in m and "injected" in m for m in caplog.messages)
    size = parse_head(first.head).size
    starts = [a for kind, key, a, b in store.reads if kind == "shard" and key == first.uri]
    if failing == "head":  # its bytes, which the head's fetch did not get, came from the shard's download
        assert ("shard", first.uri, 0, size) in store.reads
    else:  # the head's bytes, fetched, were not fetched again
        assert min(starts) == size


def test_a_head_is_fetched_as_pieces_side_by_side_and_checked(tmp_path, small_heads, monkeypatch, caplog):
    monkeypatch.setattr(roxxel.read.head, "PIECE", 16 * 1024)
    url = str(tmp_path / "ds")
    recs = make_records(400)
    first = write(url, recs, shard_bytes=5 * HEAD // 2).shards[0]
    head = parse_head(first.head)
    store = InParts(url)
    store.hold_head = threading.Event()
    fetch = HeadFetch(store, first.uri, first.records, first.stored_size, head)
    assert not fetch.done(0.3) and store.head_peak == 5  # (all side by side, held)
    store.hold_head.set()
    assert fetch.done(10)
    early = fetch.records()
    payload = index_start(first.records, first.stored_size)
    pieces = [("head", first.uri, a, min(a + 16 * 1024, head.size)) for a in range(0, head.size, 16 * 1024)]
    assert len(pieces) == 4 and sorted(store.reads) == pieces + [("head", first.uri, payload, first.stored_size)]
    assert (fetch.gets, fetch.index_bytes) == (5, first.stored_size - payload)
    assert early.count == head.records and len(early.offsets) == first.records
    starts = [0, *early.offsets[: head.records - 1].tolist()]
    assert [bytes(early.payload[a:b]) for a, b in zip(starts, early.offsets[: head.records])] == recs[: head.records]
    assert not early.payload.flags.writeable
    with caplog.at_level(logging.WARNING, logger="roxxel"):
        # a head whose record count does not match where its bytes end
        wrong = HeadFetch(store, first.uri, first.records, first.stored_size, replace(head, records=head.records - 1))
        assert wrong.done(10) and wrong.records() is None and wrong.prefix() is not None
        # an index in the store that is not the head's
        data = bytearray((tmp_path / "ds" / first.uri).read_bytes())
        data[payload + 3] ^= 1
        (tmp_path / "ds" / first.uri).write_bytes(bytes(data))
        bad = HeadFetch(store, first.uri, first.records, first.stored_size, head)
        assert bad.done(10) and bad.records() is None
    assert any(f"record {head.records - 2} ends at byte " in m and f"expected {head.size} from the manifest's head" in m
               for m in caplog.messages)
    assert any(f"bytes [{payload}, {first.stored_size}) (its record index): blake3 is " in m
               and f"expected {head.index.hexdigest}" in m for m in caplog.messages)


def test_a_head_s_gets_count_against_the_part_engine_s_limit(tmp_path, small_heads, monkeypatch):
    monkeypatch.setattr(roxxel.read.head, "PIECE", 16 * 1024)
    url = str(tmp_path / "ds")
    shards = write(url, make_records(400), shard_bytes=5 * HEAD // 2).shards
    first, second = shards[0], shards[1]
    head = parse_head(first.head)
    store = InParts(url)
    store.hold_head = threading.Event()
    store.release.set()
    engine = PartEngine(parts=4, part_size=16 * 1024)
    fetch = HeadFetch(store, first.uri, first.records, first.stored_size, head, engine=engine)
    # a limit of 4: the head in 3 pieces and the index, not 4 pieces of 16 KiB and the index
    assert not fetch.done(0.3) and store.head_peak == 4 and fetch.gets == 4
    assert len(engine._outside) == 4  # (counted against the engine's limit, as its own parts are)
    got: list[bytes] = []
    engine.attach()
    download = threading.Thread(target=engine.download,
                                args=(store, second.uri, second.stored_size, lambda view: got.append(bytes(view))))
    download.start()
    time.sleep(0.3)
    assert [r for r in store.reads if r[0] == "shard"] == []  # no slot free while the head's GETs are out
    store.hold_head.set()
    download.join(30)
    engine.detach()
    assert fetch.done(10) and fetch.records() is not None
    assert b"".join(got) == (tmp_path / "ds" / second.uri).read_bytes()
    pieces = sorted(r[2:] for r in store.reads if r[0] == "head" and r[3] <= head.size)
    assert len(pieces) == 3 and pieces[0][0] == 0 and pieces[-1][1] == head.size


def test_heads_asked_together_split_the_part_engine_s_limit(tmp_path, small_heads, monkeypatch):
    monkeypatch.setattr(roxxel.read.head, "PIECE", 16 * 1024)
    url = str(tmp_path / "ds")
    shards = write(url, make_records(400), shard_bytes=5 * HEAD // 2).shards
    first, second = shards[0], shards[1]
    store = InParts(url)
    store.hold_head = threading.Event()
    engine = PartEngine(parts=8, part_size=16 * 1024)
    fetches = [HeadFetch(store, s.uri, s.records, s.stored_size, parse_head(s.head), engine=engine, share=2)
               for s in (first, second)]
    # a limit of 8 for two heads: each in 3 pieces and its index, 8 GETs in all (alone: 7 and 1 each)
    assert not fetches[1].done(0.3) and store.head_peak == 8 and [f.gets for f in fetches] == [4, 4]
    store.hold_head.set()
    assert all(f.done(10) and f.records() is not None for f in fetches)
    alone = HeadFetch(store, first.uri, first.records, first.stored_size, parse_head(first.head), engine=engine)
    assert alone.gets == 5 and alone.done(10)  # (4 pieces of 16 KiB cover a 64 KiB head: the most it needs)


class SlowDown(Exception):
    status = 503  # (as an HTTP client's error carries it: roxxel.backends.errors.http_status)


class ThrottledHead(InParts):
    """Each read of a head's first piece is refused once with a 503 (told to ``on_failure``,
    as a retried attempt is) before it is served."""

    def read_part(self, key, start, end, into, **kw):
        if start == 0 and threading.current_thread().name.startswith("roxxel-head"):
            kw["on_failure"](SlowDown("503 Slow Down"))
        return super().read_part(key, start, end, into, **kw)


def test_a_throttled_head_read_slows_the_part_engine_down(tmp_path, small_heads):
    url = str(tmp_path / "ds")
    first = write(url, make_records(400), shard_bytes=5 * HEAD // 2).shards[0]
    store = ThrottledHead(url)
    engine = PartEngine(parts=16, part_size=16 * 1024)
    fetch = HeadFetch(store, first.uri, first.records, first.stored_size, parse_head(first.head), engine=engine)
    assert fetch.done(10) and fetch.records() is not None
    assert engine.stats["retries"] == engine.stats["throttled"] == 1 and engine.limit == 8  # halved, as for a part


def test_verify_checks_heads_against_the_shards(tmp_path, small_heads):
    url = str(tmp_path / "ds")
    manifest = write(url, make_records(400), shard_bytes=5 * HEAD // 2)
    assert verify(url).ok
    first = manifest.shards[0]
    head = parse_head(first.head)
    store = dataset_store(url, {})
    for wrong, problem in [
        (replace(head, first=parse_checksum("blake3:" + "0" * 64)),
         rf"head: bytes \[0, {head.size}\) hash to blake3:{head.first.hexdigest}, "
         r"the manifest's head says blake3:0{64}"),
        (replace(head, index=parse_checksum("blake3:" + "0" * 64)),
         rf"head: the record index and footer hash to blake3:{head.index.hexdigest}, the manifest's head says"),
        (replace(head, records=head.records - 1),
         rf"head: record {head.records - 2} ends at byte \d+, the manifest's head says {head.size}"),
    ]:
        shards = [replace(first, head=str(wrong))] + list(manifest.shards)[1:]
        publish_manifest(store, manifest.with_shards(shards), replaces=None)
        report = verify(url)
        assert [b.uri for b in report.bad] == [first.uri]
        assert re.fullmatch(problem + ".*", report.bad[0].problem), report.bad[0].problem


@pytest.mark.parametrize("chunk", [7, 1000, 4099, 1 << 20])
def test_a_head_check_takes_the_shard_in_any_chunks(tmp_path, small_heads, chunk):
    first = write(str(tmp_path / "ds"), make_records(400), shard_bytes=5 * HEAD // 2).shards[0]
    data = (tmp_path / "ds" / first.uri).read_bytes()
    head = parse_head(first.head)

    def problem(data: bytes) -> str | None:
        check = HeadCheck(head, first.records, first.stored_size)
        for a in range(0, len(data), chunk):
            check(data[a : a + chunk])
        return check.problem()

    assert problem(data) is None
    flipped = bytearray(data)
    flipped[head.size - 1] ^= 1
    assert problem(bytes(flipped)).startswith(f"head: bytes [0, {head.size}) hash to blake3:")
    assert problem(data[:-3]).startswith("head: the record index and footer hash to")


class RetriedPieces(InParts):
    """Every read of the head's bytes from byte 0 comes back as a retry's does, in a
    buffer of its own, while the attempt given up on writes garbage where it was told to."""

    def read_part(self, key, start, end, into, **kw):
        if start != 0 or not threading.current_thread().name.startswith("roxxel-head"):
            return super().read_part(key, start, end, into, **kw)
        own = memoryview(bytearray(end - start))
        got = super().read_part(key, start, end, own, **kw)
        into[:] = b"\xff" * len(into)  # (the abandoned attempt, still receiving)
        return got


def test_a_retried_head_piece_is_taken_from_the_retry_s_buffer(tmp_path, small_heads, monkeypatch):
    monkeypatch.setattr(roxxel.read.head, "PIECE", 16 * 1024)
    url = str(tmp_path / "ds")
    recs = make_records(400)
    first = write(url, recs, shard_bytes=5 * HEAD // 2).shards[0]
    head = parse_head(first.head)
    fetch = HeadFetch(RetriedPieces(url), first.uri, first.records, first.stored_size, head)
    assert fetch.done(10)
    data = (tmp_path / "ds" / first.uri).read_bytes()
    assert bytes(fetch.prefix()) == data[: head.size]
    early = fetch.records()
    assert early is not None and bytes(early.payload) == data[: head.size]
    store = RetriedPieces(url)
    store.release.set()
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        assert [bytes(r) for r in ds] == recs  # (the shard's download took the retry's bytes too)


def test_a_trace_shows_the_head_s_reads_and_the_wait_for_its_records(tmp_path, small_heads, monkeypatch):
    from roxxel import trace

    monkeypatch.setattr(trace, "_tracer", None)
    url = str(tmp_path / "ds")
    recs = make_records(400)
    first = write(url, recs, shard_bytes=5 * HEAD // 2).shards[0]
    head = parse_head(first.head)
    store = InParts(url)
    store.release.set()
    trace.start(tmp_path / "run.json")
    try:
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            assert [bytes(r) for r in ds] == recs
    finally:
        path = trace.stop()
    events = json.loads(open(path).read())["traceEvents"]
    reads = sorted((e["args"]["offset"], e["args"]["bytes"]) for e in events if e.get("name") == "head part")
    payload = index_start(first.records, first.stored_size)
    assert reads == [(0, head.size), (payload, first.stored_size - payload)]
    waits = [e for e in events if e.get("name") == "wait for head"]
    assert len(waits) == 1 and waits[0]["args"]["records"] == head.records


def test_a_manifest_without_heads_is_written_as_before():
    manifest = Manifest.build([info(), info(uri="t.rox", records=3, stored_size=100, raw_size=100)], {"a": 1})
    assert manifest.to_json() == (
        '{"format":"roxxel.manifest","version":1,"records":13,"meta":{"a":1},"shards":['
        '{"uri":"s.rox","records":10,"stored_size":1048576,"raw_size":1048576,"compression":null,'
        f'"checksum":"blake3:{"c" * 64}"}},'
        '{"uri":"t.rox","records":3,"stored_size":100,"raw_size":100,"compression":null,'
        f'"checksum":"blake3:{"c" * 64}"}}]}}'
    )


@pytest.mark.parametrize("value", [None, ""])
def test_a_head_field_that_holds_no_head_is_refused(value):
    doc = Manifest.build([info(), info(uri="t.rox")]).to_dict()
    doc["shards"][1]["head"] = value
    message = rf"shards\[1\]\.head: expected a head string \(or no head field\), got {value!r}"
    with pytest.raises(ManifestError, match=message):
        Manifest.from_dict(doc)


def test_a_head_too_large_to_fetch_apart_is_not_fetched(tmp_path, small_heads, monkeypatch):
    monkeypatch.setattr(roxxel.read.head, "MAX_HEAD_BYTES", HEAD // 2)  # (the manifest may say anything)
    url = str(tmp_path / "ds")
    recs = make_records(400)
    write(url, recs, shard_bytes=5 * HEAD // 2)
    store = InParts(url)
    store.release.set()
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        assert [bytes(r) for r in ds] == recs
        assert ds.stats["head_bytes"] == 0
    assert not [r for r in store.reads if r[0] == "head"]


def test_head_bytes_that_do_not_match_are_read_again_for_the_shard(tmp_path, small_heads, caplog):
    url, recs, manifest = written(tmp_path)
    first, head = manifest.shards[0], parse_head(manifest.shards[0].head)
    store = InParts(url)
    store.flip_head = True  # (a bit flipped in transit: the store's copy is good)
    store.release.set()
    with caplog.at_level(logging.WARNING, logger="roxxel"):
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            assert [bytes(r) for r in ds] == recs
            assert ds.stats["shards_downloaded"] == len(manifest.shards) and ds.stats["retries"] == 0
    # the head's bytes were read again, once, and the rest of the shard once: no second download
    shard_reads = [(a, b) for kind, key, a, b in store.reads if kind == "shard" and key == first.uri]
    assert (0, head.size) in shard_reads and len([r for r in shard_reads if r[0] == head.size]) == 1
    assert any(f"bytes [0, {head.size}) (its head): blake3 is " in m for m in caplog.messages)


def test_closing_while_the_first_records_are_awaited_ends_the_wait(tmp_path, small_heads):
    url = str(tmp_path / "ds")
    write(url, make_records(400), shard_bytes=5 * HEAD // 2)
    store = InParts(url)
    store.hold_head = threading.Event()
    ds = roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store)
    outcome: list[BaseException | None] = []

    def read() -> None:
        try:
            next(iter(ds))
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001 - what the reader got
            outcome.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.3)  # (the reader is waiting for the head, held)
    ds.close()
    reader.join(10)
    store.hold_head.set()
    store.release.set()
    assert not reader.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError) and "closed" in str(outcome[0])


def test_heads_false_writes_none(tmp_path, small_heads):
    manifest = write(str(tmp_path / "ds"), make_records(400), shard_bytes=5 * HEAD // 2, heads=False)
    assert [s.head for s in manifest.shards] == [None] * len(manifest.shards)
    receipt = write_part(make_records(300), str(tmp_path / "b"), part=0, shard_bytes=5 * HEAD // 2, heads=False)
    assert [s.head for s in receipt.shards] == [None] * len(receipt.shards)


def test_an_append_adds_no_head(tmp_path, small_heads):
    """(So a dataset that older roxxel versions read stays readable by them.)"""
    url = str(tmp_path / "ds")
    old = write(url, make_records(300), shard_bytes=5 * HEAD // 2, heads=False)
    appended = write(url, make_records(300, seed=1), shard_bytes=5 * HEAD // 2, mode="append")
    assert len(appended.shards) > len(old.shards)
    assert not any(s.head for s in appended.shards) and '"head"' not in appended.to_json()
    built = commit(url, [write_part(make_records(300, seed=2), url, part=0, shard_bytes=5 * HEAD // 2)], mode="append")
    assert len(built.shards) > len(appended.shards) and not any(s.head for s in built.shards)
    # appending to nothing makes a new dataset: its first shard has a head
    fresh = write(str(tmp_path / "new"), make_records(300), shard_bytes=5 * HEAD // 2, mode="append")
    assert fresh.shards[0].head is not None


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_the_first_records_come_from_the_head_on_real_protocol_servers(new_location, tmp_path, small_heads, kind):
    from roxxel import trace

    url, options = new_location(kind)
    recs = make_records(400)
    with roxxel.Writer(url, shard_bytes=5 * HEAD // 2, storage_options=options) as w:
        w.extend(recs)
    first = w.manifest.shards[0]
    head = parse_head(first.head)
    trace.start(tmp_path / "run.json")
    try:
        with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
            assert [bytes(r) for r in ds] == recs
            stats = ds.stats
    finally:
        path = trace.stop()
    payload = index_start(first.records, first.stored_size)
    assert stats["head_bytes"] == first.stored_size - payload
    events = json.loads(open(path).read())["traceEvents"]
    assert sorted(e["args"]["offset"] for e in events if e.get("name") == "head part") == [0, payload]
    waits = [e for e in events if e.get("name") == "wait for head"]
    assert len(waits) == 1 and waits[0]["args"]["records"] == head.records
    # the first shard's own parts began where the head ended
    starts = [e["args"]["offset"] for e in events if e.get("name") == "part" and e["args"]["key"].endswith(first.uri)]
    assert min(starts) == head.size


def test_a_receipt_shard_with_an_unknown_key_names_the_optional_head(tmp_path, small_heads):
    receipt = write_part(make_records(300), str(tmp_path / "b"), part=0, shard_bytes=5 * HEAD // 2)
    doc = receipt.to_dict()
    doc["shards"][0]["heads"] = doc["shards"][0].pop("head")
    message = (r"receipt\.shards\[0\]: expected the keys \['uri', 'records', 'stored_size', 'raw_size', "
               r"'compression', 'checksum'\] \(and perhaps \['head', 'parts'\]\); unknown \['heads'\], missing \[\]")
    with pytest.raises(ReceiptError, match=message):
        Receipt.from_dict(doc)


def test_states_of_plans_with_heads_are_version_3_and_older_ones_resume_only_where_the_order_is_the_same(
    tmp_path, small_heads
):
    url, recs, manifest = written(tmp_path)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        it = ds.iter(seed=2, window=2)
        sizes = it.plan.window_sizes().tolist()
        assert len(sizes) > 1 and it.plan.window_order(0).from_head
        got = [bytes(next(it)) for _ in range(sizes[0] + 3)]
        state = it.state()
        assert state["plan"] == 3  # (roxxel.planner.HEADS_PLAN_VERSION)
        assert [bytes(r) for r in ds.resume(state)] == [bytes(r) for r in it]
        # a state of plan version 2 (a roxxel that planned without heads): at a window's end,
        # the same records are left; inside a window a head leads, other ones: refused
        older = {**state, "plan": 2, "position": sizes[0]}
        rest = [bytes(r) for r in ds.resume(older)]
        assert sorted(got[: sizes[0]] + rest) == sorted(recs)
        with pytest.raises(ResumeError, match=r"did not plan with the dataset's shard heads \(plan version 2; "
                                              r"this one reads version 3, where a head leads window 1\)"):
            ds.resume({**state, "plan": 2})
        # a job of version 2 does not continue on another topology
        job = roxxel.job_state([{**state, "plan": 2}])
        with pytest.raises(ResumeError, match="job state is of plan version 2; this roxxel resumes plan version 3"):
            ds.resume(job, rank=0, world_size=2, worker=0, num_workers=1)
        assert ds.iter(seed=2, window=2, start=sizes[0] + 3).state()["plan"] == 3
    plain = str(tmp_path / "plain")
    write(plain, make_records(400), shard_bytes=5 * HEAD // 2, heads=False)
    with roxxel.open(plain, cache_dir=str(tmp_path / "cache")) as ds:
        assert ds.iter(seed=2, window=2).state()["plan"] == 2  # without heads: the same plans as before


def test_a_merge_keeps_every_source_s_heads_and_they_check_out(tmp_path, small_heads):
    from roxxel import ops

    a, b, dest = (str(tmp_path / name) for name in ("a", "b", "dest"))
    first = write(a, make_records(300, seed=1), shard_bytes=5 * HEAD // 2)
    second = write(b, make_records(300, seed=2), shard_bytes=5 * HEAD // 2)
    ops.merge([a, b], dest)
    merged = read_manifest(dataset_store(dest))
    heads = [s.head for s in (*first.shards, *second.shards)]
    assert sum(1 for h in heads if h) >= 4 and [s.head for s in merged.shards] == heads
    assert ops.verify(dest).ok  # (verify checks each head against its shard's bytes)


def test_a_head_s_reads_start_one_another_not_the_reader(tmp_path, small_heads, monkeypatch):
    """The reader starts one thread for a head's GETs, and each the next before its GET: a
    thread's start waits for the new one to take the GIL, which the reader need not."""
    monkeypatch.setattr(roxxel.read.head, "PIECE", 16 * 1024)
    url, recs, manifest = written(tmp_path)
    first = manifest.shards[0]
    store = InParts(url)
    store.hold_head = threading.Event()
    starters: list[str] = []
    start = threading.Thread.start

    def recorded(self):
        starters.append(threading.current_thread().name)
        start(self)

    monkeypatch.setattr(threading.Thread, "start", recorded)
    fetch = HeadFetch(store, first.uri, first.records, first.stored_size, parse_head(first.head))
    deadline = time.monotonic() + 10
    while store.head_peak < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not fetch.done(0) and store.head_peak == 5  # (still all side by side)
    store.hold_head.set()
    assert fetch.done(10) and fetch.records() is not None
    assert starters.count(threading.current_thread().name) == 1


@pytest.mark.parametrize("fast", [True, False])
def test_downloads_ahead_wait_for_a_head_s_first_record_only_where_connections_are_fast(
        tmp_path, small_heads, monkeypatch, fast):
    """Where the store's connections are fast (loopback), the CPU is the limit, and the
    other downloads wait until the reader has its first record from the head; where the
    head's GETs show them to be slow, they start beside those GETs."""
    monkeypatch.setattr(roxxel.read.parts.PartEngine, "_leads_slowly", lambda self, leading: not fast)
    monkeypatch.setattr(roxxel.read.parts.PartEngine, "lead_check", lambda self, store: None if fast else 0.0)
    monkeypatch.setattr(roxxel.read.residency, "_FIRST_GRACE", 30.0)  # (no reader this soon: not here)
    monkeypatch.setattr(roxxel.read.parts, "_LEAD_HOLD_SECONDS", 30.0)  # (nor a GET stuck)
    url, recs, manifest = written(tmp_path)
    assert len(manifest.shards) > 2
    store = InParts(url)
    store.hold_head = threading.Event()
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        it = iter(ds)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(bytes(next(it))))
        reader.start()
        others = lambda: [r for r in store.reads if r[0] == "shard" and r[1] != manifest.shards[0].uri]  # noqa: E731
        if fast:
            time.sleep(0.3)
            assert [r for r in store.reads if r[0] == "shard"] == []  # (not even the first shard's parts)
            # (and the downloads ahead have not begun: only the first shard's is with the engine)
            assert {t.key for t in roxxel.read.parts.engine()._transfers} <= {manifest.shards[0].uri}
        else:
            deadline = time.monotonic() + 10
            while not others() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert others() and not got  # (beside the head's GETs, still held)
        store.hold_head.set()
        reader.join(10)
        assert got == recs[:1]
        store.release.set()
        got += [bytes(r) for r in it]
    assert got == recs
