"""roxxel.ops.warm: the node cache filled in plan order, idempotent, then read without downloads."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from fsspec.callbacks import Callback

import roxxel
from roxxel import ops
from roxxel.backends import Store
from roxxel.errors import CacheError
from roxxel.ops.warm import warm_order
from roxxel.planner import plan


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 1500)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url, options, recs, **kw):
    with roxxel.Writer(url, shard_bytes=8 * 1024, storage_options=options, **kw) as w:
        w.extend(recs)
    return w.manifest


class CountingStore(Store):
    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.streams: list[str] = []

    def stream(self, key, sink, *args, **kwargs):
        self.streams.append(key)
        return super().stream(key, sink, *args, **kwargs)


def cached(cache_dir, manifest) -> set[int]:
    found = {e.checksum for e in roxxel.cache.ShardCache(str(cache_dir)).entries()}
    return {k for k, c in enumerate(manifest.shards.checksums.tolist()) if c in found}


def test_warm_then_the_planned_read_downloads_nothing(dataset_location, tmp_path):
    url, options = dataset_location
    recs = make_records(200)
    manifest = publish(url, options, recs, compression="zstd")
    cache_dir = tmp_path / "cache"
    report = ops.warm(url, options, cache_dir=cache_dir, ranks=[1], world_size=3, seed=7, epoch=2)
    expected = plan(manifest.shards.records, seed=7, epoch=2, rank=1, world_size=3).shard_order.tolist()
    assert report.shards_planned == report.shards_fetched == len(expected)
    assert report.bytes_downloaded == int(manifest.shards.stored_size[expected].sum())
    assert cached(cache_dir, manifest) == set(expected)

    store = CountingStore(url, options)
    with roxxel.open(url, cache_dir=str(cache_dir), store=store) as ds:
        got = [bytes(r) for r in ds.iter(seed=7, epoch=2, rank=1, world_size=3)]
        assert ds.stats["shards_downloaded"] == 0
    assert store.streams == []
    assert sorted(got) == sorted(recs[i] for ids in plan(
        manifest.shards.records, seed=7, epoch=2, rank=1, world_size=3).records() for i in ids)


def test_warm_is_idempotent_and_skips_cached_shards(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(150))
    cache_dir = tmp_path / "cache"
    first = ops.warm(url, cache_dir=cache_dir, ranks=[0], world_size=2)
    everything = ops.warm(url, cache_dir=cache_dir)
    again = ops.warm(url, cache_dir=cache_dir)
    n = len(manifest.shards)
    assert everything.shards_fetched == n - first.shards_fetched
    assert everything.shards_cached == first.shards_fetched
    assert (again.shards_fetched, again.shards_cached, again.bytes_downloaded) == (0, n, 0)
    assert cached(cache_dir, manifest) == set(range(n))


def test_warm_order_interleaves_the_ranks_of_a_node():
    manifest = roxxel.Manifest.build(
        [roxxel.ShardInfo(uri=f"s/{k}", records=10, stored_size=1000, raw_size=1000,
                          compression=None, checksum="sha256:" + f"{k:064x}") for k in range(40)]
    )
    orders = [plan(manifest.shards.records, seed=3, rank=r, world_size=4).shard_order.tolist() for r in (0, 2)]
    merged = warm_order(manifest, ranks=[0, 2], world_size=4, seed=3)
    assert merged[:2] == [orders[0][0], orders[1][0]]
    assert set(merged) == set(orders[0]) | set(orders[1]) and len(merged) == len(set(merged))
    assert warm_order(manifest) == list(range(40))


def test_warm_under_a_limit_fetches_the_longest_prefix_that_fits(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(200))
    order = warm_order(manifest, ranks=[0], world_size=1, seed=1)
    raw = manifest.shards.raw_size
    limit = int(raw[order[:4]].sum()) + int(raw[order[4]]) - 1  # the 5th does not fit
    cache_dir = tmp_path / "cache"
    report = ops.warm(url, cache_dir=cache_dir, ranks=[0], world_size=1, seed=1, limit=limit)
    assert report.shards_fetched == 4
    assert report.shards_over_limit == len(order) - 4
    assert cached(cache_dir, manifest) == set(order[:4])


def test_warm_refuses_a_limit_below_one_shard(tmp_path):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(50))
    with pytest.raises(CacheError, match="too small"):
        ops.warm(url, cache_dir=tmp_path / "cache", limit=100)


def test_concurrent_warms_download_each_shard_once(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(200))
    cache_dir = tmp_path / "cache"
    reports = []
    threads = [threading.Thread(target=lambda: reports.append(ops.warm(url, cache_dir=cache_dir, workers=2)))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(r.shards_fetched for r in reports) == len(manifest.shards)
    assert cached(cache_dir, manifest) == set(range(len(manifest.shards)))


def test_dataset_warm_reports_progress_and_rejects_bad_indices(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(100))
    progress = Callback()
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        counts = ds.warm([2, 0, 2], workers=1, progress=progress)
        assert counts == {"shards_fetched": 2, "shards_cached": 0, "bytes_downloaded": progress.value}
        assert progress.size == progress.value == int(manifest.shards.stored_size[[0, 2]].sum())
        again = Callback()
        assert ds.warm([0], progress=again)["shards_cached"] == 1
        assert again.size == again.value == 0  # nothing left to download
        with pytest.raises(IndexError, match="out of range"):
            ds.warm([len(manifest.shards)])
