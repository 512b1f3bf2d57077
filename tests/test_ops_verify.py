"""roxxel.ops.verify and verify_cache: every shard checked, bad ones reported with reasons."""

from __future__ import annotations

import os

import numpy as np
from fsspec.callbacks import Callback

import roxxel
from roxxel import ops
from roxxel.manifest import Manifest, ShardInfo
from roxxel.manifest.io import dataset_store, publish_manifest


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 1500)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url, options, recs, **kw):
    with roxxel.Writer(url, shard_bytes=8 * 1024, storage_options=options, **kw) as w:
        w.extend(recs)
    return w.manifest


def corrupt(store, key: str, *, position: int = 0) -> None:
    data = bytearray(store.read_bytes(key, max_bytes=None))
    data[position] ^= 0xFF
    store.put_bytes_overwrite(key, bytes(data))


class Recorder(Callback):
    def __init__(self):
        super().__init__()
        self.sizes = []

    def call(self, *args, **kwargs):
        self.sizes.append(self.size)


def test_a_good_dataset_verifies_on_every_store(dataset_location):
    url, options = dataset_location
    manifest = publish(url, options, make_records(100), compression="zstd")
    progress = Recorder()
    report = ops.verify(url, options, progress=progress)
    assert report.ok and report.bad == []
    assert report.checked == report.shards == len(manifest.shards)
    assert report.bytes == int(manifest.shards.stored_size.sum())
    assert progress.size == progress.value == report.bytes
    assert report.to_dict()["ok"] is True


def test_bad_shards_are_listed_with_what_is_wrong(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(150))
    store = dataset_store(url)
    uris = manifest.shards.uris.tolist()
    corrupt(store, uris[1], position=5)  # same size, other bytes
    store.put_bytes_overwrite(uris[2], store.read_bytes(uris[2])[:-1])  # cut short
    store.delete(uris[3])
    report = ops.verify(url, workers=2)
    assert not report.ok and report.checked == len(uris)
    problems = {b.uri: b.problem for b in report.bad}
    assert set(problems) == set(uris[1:4])
    assert problems[uris[1]].startswith("checksum is blake3:")
    assert f"expected {manifest.shards.checksums[1]}" in problems[uris[1]]
    size = int(manifest.shards.stored_size[2])
    assert problems[uris[2]] == f"stored size is {size - 1} bytes, expected {size}"
    assert "not found" in problems[uris[3]]
    assert report.to_dict()["bad"][0]["uri"] == uris[1]


def _republish(url: str, manifest: Manifest, k: int, **changes) -> None:
    shards = list(manifest.shards)
    fields = {**shards[k].__dict__, **changes}
    shards[k] = ShardInfo(**fields)
    publish_manifest(dataset_store(url), manifest.with_shards(shards), replaces=None)


def test_a_manifest_that_lies_about_the_record_count_fails_the_footer_check(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(60))
    records = int(manifest.shards.records[0])
    _republish(url, manifest, 0, records=records + 1)
    report = ops.verify(url)
    assert [b.uri for b in report.bad] == [manifest.shards.uris[0]]
    assert "offset" in report.bad[0].problem or "footer" in report.bad[0].problem


def test_a_zstd_shard_that_decompresses_to_another_size_is_bad(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(60), compression="zstd")
    raw = int(manifest.shards.raw_size[0])
    _republish(url, manifest, 0, raw_size=raw - 100)
    report = ops.verify(url)
    assert len(report.bad) == 1
    # The frame's header already tells: nothing is decompressed.
    assert report.bad[0].problem == f"zstd frame declares {raw} bytes of content, expected raw size {raw - 100}"


def test_verify_cache_finds_and_removes_a_corrupt_cached_copy(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(100))
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        for k in range(3):
            ds.shard(k)
        path = ds.cache.path_for(str(manifest.shards.checksums[1]))
    report = ops.verify_cache(url, cache_dir=cache_dir)
    assert report.ok and report.checked == 3 and report.not_cached == len(manifest.shards) - 3
    with open(path, "r+b") as f:
        f.write(b"\x00\x01")
    report = ops.verify_cache(url, cache_dir=cache_dir)
    assert [b.uri for b in report.bad] == [manifest.shards.uris[1]]
    assert "corrupt on disk" in report.bad[0].problem and os.path.exists(path)
    report = ops.verify_cache(url, cache_dir=cache_dir, remove_bad=True)
    assert report.bad[0].problem.endswith("removed from the cache")
    assert not os.path.exists(path)
    assert ops.verify_cache(url, cache_dir=cache_dir).ok
