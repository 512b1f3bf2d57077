"""roxxel.ops.copy: datasets copied between stores, verified, manifest last, resumable."""

from __future__ import annotations

import numpy as np
import pytest
from fsspec.callbacks import Callback

import roxxel
from roxxel import ops
from roxxel.backends import Store
from roxxel.errors import DatasetExistsError, IntegrityError
from roxxel.manifest.io import dataset_store, read_manifest
from roxxel.ops.copy import copy_shard
from roxxel.progress import Meter
from roxxel.workers import WorkerPool


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 1500)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url, options, recs, **kw):
    with roxxel.Writer(url, shard_bytes=8 * 1024, storage_options=options, **kw) as w:
        w.extend(recs)
    return w.manifest


def read_all(url, options, cache) -> list[bytes]:
    with roxxel.open(url, cache_dir=str(cache), storage_options=options) as ds:
        return [bytes(r) for r in ds]


@pytest.mark.parametrize(("src_kind", "dst_kind"), [("s3", "gcs"), ("gcs", "local"), ("memory", "s3")])
def test_copy_between_stores_gives_the_same_dataset(new_location, tmp_path, src_kind, dst_kind):
    src, dst = new_location(src_kind), new_location(dst_kind)
    recs = make_records(120)
    manifest = publish(src.url, src.storage_options, recs, compression="zstd")
    progress = Callback()
    report = ops.copy(src.url, dst.url, src_options=src.storage_options,
                      dst_options=dst.storage_options, progress=progress)
    assert (report.copied, report.kept, report.published) == (len(manifest.shards), 0, True)
    assert report.bytes_copied == progress.value == progress.size == int(manifest.shards.stored_size.sum())
    assert read_manifest(dataset_store(dst.url, dst.storage_options)) == manifest
    assert read_all(dst.url, dst.storage_options, tmp_path / "cache") == recs

    again = ops.copy(src.url, dst.url, src_options=src.storage_options, dst_options=dst.storage_options)
    assert (again.copied, again.published) == (0, False)


class StopAfter(Callback):
    """Interrupts the copy after some bytes, as a Ctrl-C or a killed job would."""

    def __init__(self, nbytes):
        super().__init__()
        self.nbytes = nbytes

    def call(self, *args, **kwargs):
        if self.value >= self.nbytes:
            raise KeyboardInterrupt


def test_an_interrupted_copy_resumes_without_recopying_verified_shards(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    manifest = publish(src, {}, make_records(200))
    total = int(manifest.shards.stored_size.sum())
    with pytest.raises(KeyboardInterrupt):
        ops.copy(src, dst, workers=1, progress=StopAfter(total // 2))
    store = dataset_store(dst)
    assert not store.exists("manifest.json")
    present = [k for k in store.list() if k.startswith("shards/")]
    assert 0 < len(present) < len(manifest.shards)

    report = ops.copy(src, dst)
    assert report.kept == len(present) and report.copied == len(manifest.shards) - len(present)
    assert read_manifest(store) == manifest


def test_a_wrong_or_missing_destination_shard_is_copied_again(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    manifest = publish(src, {}, make_records(100))
    ops.copy(src, dst)
    store = dataset_store(dst)
    store.delete("manifest.json")
    uris = manifest.shards.uris.tolist()
    data = bytearray(store.read_bytes(uris[0]))
    data[0] ^= 1
    store.put_bytes_overwrite(uris[0], bytes(data))  # same size, wrong bytes
    store.delete(uris[1])
    report = ops.copy(src, dst)
    assert (report.copied, report.kept) == (2, len(uris) - 2)
    assert ops.verify(dst).ok


def test_a_corrupt_source_shard_is_not_copied_and_nothing_is_published(tmp_path):
    src, dst = str(tmp_path / "src"), str(tmp_path / "dst")
    manifest = publish(src, {}, make_records(100))
    bad = manifest.shards.uris[2]
    store = dataset_store(src)
    data = bytearray(store.read_bytes(bad))
    data[-30] ^= 1
    store.put_bytes_overwrite(bad, bytes(data))
    with pytest.raises(IntegrityError, match=rf"{bad}: checksum is blake3:\w+, expected"):
        ops.copy(src, dst, workers=1)
    target = dataset_store(dst)
    assert not target.exists("manifest.json") and not target.exists(bad)


def test_copy_refuses_to_replace_another_dataset_unless_asked(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    publish(a, {}, make_records(30, seed=1))
    other = publish(b, {}, make_records(30, seed=2))
    with pytest.raises(DatasetExistsError, match="a different dataset already exists"):
        ops.copy(a, b)
    assert read_manifest(dataset_store(b)) == other
    assert ops.copy(a, b, overwrite=True).published
    assert read_manifest(dataset_store(b)) == read_manifest(dataset_store(a))


def test_copy_onto_itself_is_refused(tmp_path):
    url = str(tmp_path / "a")
    publish(url, {}, make_records(10))
    with pytest.raises(ValueError, match="the same dataset"):
        ops.copy(url, url + "/")


class FlakyStore(Store):
    """Flips one bit in the first ``bad_reads`` downloads or ``bad_uploads`` uploads."""

    def __init__(self, *args, bad_reads=0, bad_uploads=0, **kw):
        super().__init__(*args, **kw)
        self.bad_reads, self.bad_uploads, self.uploads = bad_reads, bad_uploads, 0

    def stream(self, key, sink, size=None):
        if self.bad_reads:
            self.bad_reads -= 1
            first = [True]

            def flipping(chunk):
                if first[0]:
                    first[0] = False
                    chunk = bytes([chunk[0] ^ 1]) + chunk[1:]
                sink(chunk)

            return super().stream(key, flipping, size)
        return super().stream(key, sink, size)

    def put_file(self, local_path, key):
        self.uploads += 1
        super().put_file(local_path, key)
        if self.bad_uploads:
            self.bad_uploads -= 1
            data = bytearray(self.read_bytes(key, max_bytes=None))
            data[-1] ^= 1
            self.put_bytes_overwrite(key, bytes(data))


def _copy_one(tmp_path, src_store, dst_store, shard):
    meter = Meter(None, shard.stored_size)
    with WorkerPool(1, "test") as jobs:  # only its cancellation check is used here
        copied = copy_shard(src_store, shard.uri, dst_store, shard.uri, shard,
                            staging_dir=str(tmp_path), jobs=jobs, meter=meter)
    return copied, meter.done


def test_a_shard_corrupted_in_transit_is_read_again(tmp_path):
    manifest = publish(str(tmp_path / "src"), {}, make_records(20))
    shard = manifest.shards[0]
    src = FlakyStore(str(tmp_path / "src"), bad_reads=2)
    dst = Store(str(tmp_path / "dst"))
    assert _copy_one(tmp_path, src, dst, shard) == (True, shard.stored_size)  # counted once
    assert dst.read_bytes(shard.uri) == Store(str(tmp_path / "src")).read_bytes(shard.uri)
    src.bad_reads = 3
    with pytest.raises(IntegrityError, match=r"read 3 times\); the source is corrupt"):
        _copy_one(tmp_path, src, Store(str(tmp_path / "dst2")), shard)


def test_an_upload_that_lands_corrupted_is_uploaded_again(tmp_path):
    manifest = publish(str(tmp_path / "src"), {}, make_records(20))
    shard = manifest.shards[0]
    src = Store(str(tmp_path / "src"))
    dst = FlakyStore(str(tmp_path / "dst"), bad_uploads=1)
    assert _copy_one(tmp_path, src, dst, shard)[0] is True
    assert dst.uploads == 2 and dst.read_bytes(shard.uri) == src.read_bytes(shard.uri)
    broken = FlakyStore(str(tmp_path / "dst2"), bad_uploads=3)
    with pytest.raises(IntegrityError, match="does not match size .* after 3 uploads"):
        _copy_one(tmp_path, src, broken, shard)


def test_overwrite_never_changes_a_shard_the_live_destination_lists(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    src = publish(a, {}, make_records(5, seed=1))
    other = publish(b, {}, make_records(5, seed=2))
    uri = src.shards[0].uri  # give b's only shard the name a's first shard has
    target = dataset_store(b)
    target.put_bytes_overwrite(uri, target.read_bytes(other.shards[0].uri, max_bytes=None))
    renamed = other.with_shards([roxxel.ShardInfo(**{**vars(other.shards[0]), "uri": uri})])
    target.put_bytes_overwrite("manifest.json", renamed.to_json().encode())
    with pytest.raises(DatasetExistsError, match=rf"{uri} is listed by the dataset published at .*with checksum"):
        ops.copy(a, b, overwrite=True)
    assert read_manifest(target) == renamed
    assert read_all(b, {}, tmp_path / "cache") == make_records(5, seed=2)
