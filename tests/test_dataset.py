"""roxxel.open: reading published datasets through the node-local cache."""

from __future__ import annotations

import gc
import itertools
import json
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import roxxel
from roxxel.backends import Store
from roxxel.errors import CacheError, IntegrityError, NotFoundError
from roxxel.manifest import Manifest, ShardInfo
from roxxel.manifest.io import Snapshot, dataset_store, publish_manifest


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url: str, options: dict, recs: list[bytes], shard_bytes: int = 16 * 1024, **kw) -> Manifest:
    with roxxel.Writer(url, shard_bytes=shard_bytes, storage_options=options, **kw) as w:
        w.extend(recs)
    assert w.manifest is not None
    return w.manifest


class CountingStore(Store):
    """Counts whole-object downloads and ranged reads; can hold or break some shards."""

    def __init__(self, *args, hold: threading.Event | None = None, hold_except: str = "",
                 fail_uri: str | None = None, **kw):
        super().__init__(*args, **kw)
        self.streams: list[str] = []
        self.ranges: list[tuple[str, int, int]] = []
        self.hold, self.hold_except, self.fail_uri = hold, hold_except, fail_uri

    def stream(self, key, sink, size=None):
        self.streams.append(key)
        if key == self.fail_uri:
            raise NotFoundError(f"could not download {self.url(key)}: injected")
        if self.hold is not None and key != self.hold_except:
            self.hold.wait(30)
        return super().stream(key, sink, size)

    def read_range(self, key, start, end):
        self.ranges.append((key, start, end))
        return super().read_range(key, start, end)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_every_record_reads_back_exactly_in_a_shuffled_order(dataset_location, tmp_path, compression):
    url, options = dataset_location
    recs = make_records(400)
    manifest = publish(url, options, recs, compression=compression)
    assert len(manifest.shards) > 10
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options) as ds:
        assert len(ds) == 400
        for i in np.random.default_rng(1).permutation(400).tolist():
            assert bytes(ds[i]) == recs[i]
        assert [bytes(r) for r in ds[-3:]] == recs[-3:]
        assert [bytes(r) for r in ds[[5, -1, 5]]] == [recs[5], recs[-1], recs[5]]
        assert bytes(ds[-400]) == recs[0]
        for bad in (400, -401):
            with pytest.raises(IndexError, match=f"record index {bad} out of range for 400 records"):
                ds[bad]
        assert ds.stats["shards_downloaded"] == len(manifest.shards)


def test_iter_at_reads_an_order_of_our_own_from_a_cold_cache(dataset_location, tmp_path, monkeypatch):
    monkeypatch.setattr(roxxel.read.records, "BLOCK", 64)  # many blocks, each over many shards
    url, options = dataset_location
    recs = make_records(400)
    manifest = publish(url, options, recs)
    order = np.random.default_rng(2).integers(0, 400, size=1000)
    expected = [recs[i] for i in order.tolist()]
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options) as ds:
        with pytest.raises(IndexError, match="record index 400 out of range for 400 records"):
            ds.iter_at([0, 400])  # at the call, before any record
        it = ds.iter_at(order)
        order[:] = 0  # the caller's array is theirs again
        assert [bytes(r) for r in it] == expected
        assert ds.stats["shards_downloaded"] == len(manifest.shards)  # each once
        assert [bytes(r) for r in ds.iter_at([-1, -400, 7])] == [recs[-1], recs[0], recs[7]]
        assert list(ds.iter_at([])) == []


def test_open_reads_only_the_manifest(tmp_path):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(200))
    store = CountingStore(url)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        assert len(ds) == 200 and ds.num_shards > 5
        assert store.streams == [] and store.ranges == []
        assert ds.stats == {"shards_downloaded": 0, "bytes_downloaded": 0, "cache_hits": 0, "gets": 0,
                            "retries": 0, "wait_seconds": 0.0, "head_bytes": 0,
                            "link_bytes_per_second": 0.0}


def test_url_may_name_the_manifest_itself(tmp_path):
    url = str(tmp_path / "ds")
    publish(url, {}, [b"x"])
    with roxxel.open(url + "/manifest.json", cache_dir=str(tmp_path / "c")) as ds:
        assert bytes(ds[0]) == b"x"


def test_iteration_yields_every_record_in_order(dataset_location, tmp_path):
    url, options = dataset_location
    recs = make_records(300)
    publish(url, options, recs)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options) as ds:
        assert [bytes(r) for r in ds] == recs


def test_first_record_arrives_before_the_other_shards(tmp_path):
    url = str(tmp_path / "ds")
    recs = make_records(300)
    manifest = publish(url, {}, recs)
    hold = threading.Event()  # every shard but the first is held back until set
    store = CountingStore(url, hold=hold, hold_except=str(manifest.shards.uris[0]))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store, lookahead=3) as ds:
        it = iter(ds)
        t0 = time.monotonic()
        first = next(it)  # only shard 0 may be needed for this
        assert time.monotonic() - t0 < 10
        assert bytes(first) == recs[0]
        hold.set()
        assert [bytes(first)] + [bytes(r) for r in it] == recs


def test_a_background_download_error_surfaces_in_the_reader(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(300))
    bad = manifest.shards.uris[2]
    store = CountingStore(url, fail_uri=str(bad))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        with pytest.raises(NotFoundError, match=f"could not download .*{bad}: injected"):
            for _ in ds:
                pass


def threads_named(prefix: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def open_descriptors() -> set[tuple[str, str]]:
    """(number, target) of each open descriptor: a leak shows even on a reused number."""
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the listing's own descriptor, closed by now
            continue
        # /proc files open at this moment: our own listing, or another thread's reads (in a
        # test session that runs a Dask cluster, its system monitor reads /proc/<pid>/fd and
        # /proc/<pid>/stat through psutil); roxxel opens none it keeps
        if not target.startswith("/proc/"):
            out.add((fd, target))
    return out


def test_close_leaves_no_thread_descriptor_or_map(tmp_path):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(300))
    gc.collect()  # so that another test's garbage does not close a descriptor meanwhile
    fds_before = open_descriptors()
    # (another test's dataset may still be open, e.g. one that torch's IterableRecords
    # keeps for the next epoch: only this test's threads count)
    threads_before = set(threads_named("roxxel-download"))
    for i in range(3):  # (a cache of its own each time: cached shards start no thread)
        ds = roxxel.open(url, cache_dir=str(tmp_path / "cache" / str(i)))
        it = iter(ds)
        for _ in range(50):
            next(it)
        assert set(threads_named("roxxel-download")) - threads_before
        ds.close()
        ds.close()  # idempotent
        assert set(threads_named("roxxel-download")) - threads_before == set()
    with open("/proc/self/maps") as f:
        assert str(tmp_path / "cache") not in f.read()
    assert not open_descriptors() - fds_before  # none left open by roxxel
    with pytest.raises(ValueError, match="closed"):
        ds[0]


def test_an_iterator_keeps_its_position_when_the_dataset_is_closed_under_it(tmp_path):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(300))
    ds = roxxel.open(url, cache_dir=str(tmp_path / "cache"))
    it = ds.iter(seed=5)
    taken = [bytes(next(it)) for _ in range(37)]
    ds.close()
    assert it.position == 37 and it.state()["position"] == 37 and len(it) == 300 - 37
    assert list(it) == []
    state = it.state()
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as again:
        whole = [bytes(r) for r in again.iter(seed=5)]
        assert [bytes(r) for r in again.resume(state)] == whole[37:]
    assert taken == whole[:37]


def test_a_corrupted_remote_object_raises_integrity_error(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(100))
    uri = str(manifest.shards.uris[1])
    path = os.path.join(url, uri)
    data = bytearray(open(path, "rb").read())
    data[10] ^= 0xFF
    open(path, "wb").write(bytes(data))
    k0_records = int(manifest.shards.records[0])
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        ds[0]
        with pytest.raises(IntegrityError, match=rf"{uri}.*{manifest.shards.checksums[1][7:19]}"):
            ds[k0_records]
    assert not any(n.endswith(".rox") for n in os.listdir(tmp_path / "cache" / "shards")) or all(
        manifest.shards.checksums[1][7:] not in n for n in os.listdir(tmp_path / "cache" / "shards")
    )


def test_fetch_reads_one_record_with_ranged_reads(tmp_path):
    url = str(tmp_path / "ds")
    recs = make_records(200)
    manifest = publish(url, {}, recs)
    store = CountingStore(url)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        k1 = int(manifest.shards.records[0])
        assert ds.fetch(k1 + 3) == recs[k1 + 3]
        assert len(store.ranges) == 3  # footer, two offsets, the record
        assert ds.fetch(k1) == recs[k1] and ds.fetch(-1) == recs[-1]
        assert len(store.ranges) == 3 + 2 + 3  # the footer of shard 1 is remembered
        assert store.streams == []  # no shard was downloaded
        assert ds.stats["shards_downloaded"] == 0


def test_cache_limit_too_small_is_refused_with_the_minimum(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(200))
    largest = int(manifest.shards.raw_size.max())
    three = int(np.sort(manifest.shards.raw_size)[-3:].sum())  # the shard read and 2 prefetched
    with pytest.raises(CacheError, match=rf"cache limit {largest} bytes is too small for {url} with "
                                         rf"lookahead=2: at least {three} bytes"):
        roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=largest, lookahead=2)
    with pytest.raises(CacheError, match=rf"cache limit {largest - 1} bytes is too small for {url}: "
                                         rf"at least {largest} bytes"):
        roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=largest - 1)


def cache_usage(cache_dir) -> int:
    """Bytes of published shards and downloads in flight."""
    total = 0
    for sub in ("shards", "tmp"):
        for root, _, files in os.walk(os.path.join(cache_dir, sub)):
            for name in files:
                try:
                    total += os.path.getsize(os.path.join(root, name))
                except FileNotFoundError:  # evicted meanwhile
                    pass
    return total


def test_small_cache_limit_holds_during_a_shuffled_full_read(tmp_path):
    url = str(tmp_path / "ds")
    recs = make_records(800, seed=5)
    manifest = publish(url, {}, recs, shard_bytes=32 * 1024)
    assert len(manifest.shards) >= 20
    largest = int(manifest.shards.raw_size.max())
    limit = 2 * largest
    cache_dir = tmp_path / "cache"
    peak = 0
    with roxxel.open(url, cache_dir=str(cache_dir), cache_limit=limit, lookahead=0) as ds:
        for i in np.random.default_rng(2).permutation(len(recs)).tolist():
            assert bytes(ds[i]) == recs[i]
            peak = max(peak, cache_usage(cache_dir))
    in_flight = largest  # one download at a time with lookahead=0
    assert peak <= limit + in_flight


def unlinked_but_mapped(directory) -> int:
    """Bytes of files under ``directory`` this process still maps after they were unlinked
    (they hold disk space that a directory listing no longer shows)."""
    sizes: dict[str, int] = {}
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 7 and fields[-1] == "(deleted)" and fields[5].startswith(str(directory)):
                start, end = (int(x, 16) for x in fields[0].split("-"))
                sizes[fields[4]] = sizes.get(fields[4], 0) + end - start
    return sum(sizes.values())


def test_iter_at_in_a_random_order_keeps_the_disk_within_a_small_cache_limit(tmp_path, monkeypatch):
    monkeypatch.setattr(roxxel.read.records, "BLOCK", 128)
    url = str(tmp_path / "ds")
    recs = make_records(800, seed=6)
    manifest = publish(url, {}, recs, shard_bytes=32 * 1024)
    largest = int(manifest.shards.raw_size.max())
    limit = 3 * largest
    cache_dir = tmp_path / "cache"
    order = np.random.default_rng(3).permutation(len(recs))
    peak = 0
    with roxxel.open(url, cache_dir=str(cache_dir), cache_limit=limit, lookahead=0) as ds:
        for i, record in zip(order.tolist(), ds.iter_at(order)):
            assert bytes(record) == recs[i]
            peak = max(peak, cache_usage(cache_dir) + unlinked_but_mapped(cache_dir))
    assert peak <= limit  # lookahead=0: nothing is downloading between two records


def test_large_manifest_opens_fast_with_numpy_columns(tmp_path):
    n = 100_000
    digest = "sha256:" + "ab" * 32
    shards = [ShardInfo(uri=f"shards/{k:06d}.rox", records=10, stored_size=1000, raw_size=1000,
                        compression=None, checksum=digest) for k in range(n)]
    url = f"memory://big{os.getpid()}/ds"
    store = dataset_store(url, {})
    publish_manifest(store, Manifest.build(shards), replaces=Snapshot(None, None))
    t0 = time.perf_counter()
    ds = roxxel.open(url, cache_dir=str(tmp_path / "cache"))
    elapsed = time.perf_counter() - t0
    assert len(ds) == 10 * n and ds.num_shards == n
    assert isinstance(ds.shards.records, np.ndarray) and isinstance(ds.shards.uris, np.ndarray)
    assert elapsed < 2.0, f"opening {n} shards took {elapsed:.2f} s"
    ds.close()


READER = textwrap.dedent(
    """
    import json, sys
    import roxxel
    url, options, cache_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    with roxxel.open(url, cache_dir=cache_dir, storage_options=options) as ds:
        total = sum(r.nbytes for r in ds)
        print(json.dumps({"bytes": total, **ds.stats}))
    """
)


def test_four_processes_share_one_cache_and_download_each_shard_once(new_location, tmp_path):
    url, options = new_location("s3")
    recs = make_records(400)
    manifest = publish(url, options, recs)
    cache_dir = str(tmp_path / "shared-cache")
    env = dict(os.environ, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    procs = [subprocess.Popen([sys.executable, "-c", READER, url, json.dumps(options), cache_dir],
                              stdout=subprocess.PIPE, env=env) for _ in range(4)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert all(r["bytes"] == sum(map(len, recs)) for r in results)
    assert sum(r["shards_downloaded"] for r in results) == len(manifest.shards)
    assert sum(r["bytes_downloaded"] for r in results) == int(manifest.shards.stored_size.sum())


def test_remote_token_stream_matches_the_local_api_and_splits_ranks(dataset_location, tmp_path):
    url, options = dataset_location
    local = roxxel.Roxxel(str(tmp_path / "tok_*.rox"))
    docs = [np.arange(k * 10_000, (k + 1) * 10_000, dtype=np.int32) for k in range(6)]
    local.write(docs, max_shard_bytes=45_000)  # one document per shard
    with roxxel.Writer(url, storage_options=options, shard_bytes=45_000) as w:
        w.extend(docs)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options) as ds:
        remote = ds.stream(seq_len=100, batch_size=8, seed=7, rank=0, world_size=1)
        mine = local.stream(seq_len=100, batch_size=8, seed=7)
        for _ in range(20):
            assert np.array_equal(next(remote), next(mine))
        resumed = next(ds.stream(100, 8, seed=7, start_step=19, rank=0, world_size=1))
        full = list(itertools.islice(ds.stream(100, 8, seed=7, rank=0, world_size=1), 20))
        assert np.array_equal(resumed, full[19])
        ranks = [list(itertools.islice(ds.stream(100, 8, seed=7, rank=r, world_size=3), 25)) for r in range(3)]
        firsts = [int(row[0]) for batches in ranks for b in batches for row in b]
        assert len(firsts) == len(set(firsts)) == 600  # the epoch, split between ranks


def test_a_cached_copy_damaged_on_disk_is_downloaded_again(tmp_path):
    url = str(tmp_path / "ds")
    recs = make_records(100)
    publish(url, {}, recs)
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert bytes(ds[0]) == recs[0]
    (cached,) = [p for p in (cache_dir / "shards").iterdir() if p.stat().st_size > 0][:1]
    data = bytearray(cached.read_bytes())
    data[-8:] = b"GARBAGE!"  # same size, broken footer
    cached.write_bytes(bytes(data))
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert bytes(ds[0]) == recs[0]
        assert ds.stats["shards_downloaded"] == 1
    assert cached.read_bytes()[-8:] == b"ROXXEL01"


def test_credentials_in_a_url_never_reach_reprs_or_messages(tmp_path, caplog):
    import logging

    url = "memory://alice:s3cr3t@bucket/ds"
    with caplog.at_level(logging.DEBUG, logger="roxxel"):
        with roxxel.Writer(url) as w:
            w.append(b"x")
        assert "s3cr3t" not in repr(w)
        with pytest.raises(roxxel.DatasetExistsError) as exists:
            roxxel.Writer(url)
        with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
            assert bytes(ds[0]) == b"x"
            text = repr(ds) + ds.url + str(exists.value)
            with pytest.raises(roxxel.ResumeError) as resume:
                ds.resume({**ds.iter().state(), "fingerprint": "sha256:" + "0" * 64})
    assert "***" in text and "s3cr3t" not in text + str(resume.value) + caplog.text


@pytest.mark.parametrize(("field", "value"), [("position", "5"), ("shuffle", "no"), ("world_size", True)])
def test_a_malformed_iterator_state_is_refused_naming_the_field(tmp_path, field, value):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(50))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        state = {**ds.iter(rank=0, world_size=1).state(), field: value}
        with pytest.raises(roxxel.ResumeError, match=f"field '{field}' must be"):
            ds.resume(state, rank=0, world_size=1)


def belady_misses(sequence: list[int], capacity: int) -> int:
    """Misses of the offline optimum: evict the shard whose next use is furthest away."""
    cached: set[int] = set()
    misses = 0
    for i, k in enumerate(sequence):
        if k in cached:
            continue
        misses += 1
        if len(cached) >= capacity:
            def next_use(s: int) -> int:
                rest = sequence[i + 1:]
                return rest.index(s) if s in rest else len(sequence)
            cached.remove(max(cached, key=next_use))
        cached.add(k)
    return misses


def test_eviction_under_a_small_limit_is_optimal_across_epochs(tmp_path):
    from roxxel.planner import plan

    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(500, seed=3), shard_bytes=20 * 1024)
    window, lookahead = 4, 2
    capacity = window + lookahead + 1
    limit = capacity * int(manifest.shards.raw_size.max())
    sequences = [plan(manifest.shards.records, seed=4, epoch=e, window=window).piece_shard.tolist()
                 for e in (0, 1)]
    # The downloader keeps `lookahead` shards downloaded ahead of the reader at all
    # times, so their room is not the reader's: the reference is an optimal cache
    # (Belady's, which knows the future) of the remaining room.
    optimum = belady_misses(sequences[0] + sequences[1], capacity - lookahead)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=limit, lookahead=lookahead) as ds:
        for epoch in (0, 1):
            assert sum(1 for _ in ds.iter(seed=4, epoch=epoch, window=window)) == 500
        assert len(manifest.shards) >= 12
        # A prefetch racing the reader may cost one download, or two on a loaded machine
        # (seen once in a full suite run on 2 cores).
        assert ds.stats["shards_downloaded"] <= optimum + 2


@pytest.mark.parametrize("topology", [
    dict(rank=0, world_size=1, window=2),
    dict(rank=2, world_size=3, window=4, num_workers=2, worker=1),  # padded: wraps around
    dict(rank=1, world_size=2, window=3, shuffle=False),
])
def test_state_and_resume_are_exact_at_every_position(tmp_path, monkeypatch, topology):
    # Blocks of 3 records: the position is read from the block's cursor, so block and
    # window boundaries are where a miscount would show.
    monkeypatch.setattr(roxxel.read.iteration, "BLOCK", 3)
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(61), shard_bytes=4096)
    assert len(manifest.shards) > 8
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        it = ds.iter(seed=5, **topology)
        states, records = [it.state()], []
        for record in it:
            records.append(bytes(record))
            states.append(it.state())
        assert [s["position"] for s in states] == list(range(len(records) + 1))
        assert len(it) == 0 and len(records) == it.plan.num_records
        pos = {k: topology[k] for k in ("rank", "world_size", "worker", "num_workers") if k in topology}
        for k, state in enumerate(states):
            assert [bytes(r) for r in ds.resume(state, **pos)] == records[k:], k
