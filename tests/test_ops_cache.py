"""roxxel.ops cache commands: usage per dataset, listing, gc and clear."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

import roxxel
from roxxel import ops
from roxxel.cache import ShardCache
from roxxel.cache.datasets import DATASETS_DIR, record_dataset_use
from roxxel.errors import CacheError
from roxxel.backends.urls import without_masked
from roxxel.manifest.io import dataset_store


BUCKET = "roxxel-tests"  # created by the session fixtures in conftest.py


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 1500)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url, recs, mode="create"):
    with roxxel.Writer(url, shard_bytes=8 * 1024, mode=mode) as w:
        w.extend(recs)
    return w.manifest


def read_everything(url, cache_dir):
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        for _ in ds:
            pass


@pytest.fixture
def two_datasets(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    ma, mb = publish(a, make_records(60, seed=1)), publish(b, make_records(60, seed=2))
    cache_dir = tmp_path / "cache"
    read_everything(a, cache_dir)
    read_everything(b, cache_dir)
    return a, b, ma, mb, cache_dir


def test_usage_is_attributed_to_each_dataset(two_datasets):
    a, b, ma, mb, cache_dir = two_datasets
    usage = ops.cache_usage(cache_dir)
    assert usage.shards == len(ma.shards) + len(mb.shards)
    assert usage.bytes == int(ma.shards.raw_size.sum() + mb.shards.raw_size.sum())
    by_url = {d.url: d for d in usage.datasets}
    assert set(by_url) == {a, b}
    assert by_url[a].cached_shards == by_url[a].shards == len(ma.shards)
    assert by_url[a].cached_bytes == int(ma.shards.raw_size.sum())
    assert usage.unattributed_shards == 0
    listing = ops.cache_list(cache_dir)
    assert len(listing) == usage.shards
    assert {tuple(s.datasets) for s in listing} == {(a,), (b,)}
    assert json.loads(json.dumps(usage.to_dict()))["datasets"][0]["url"] in (a, b)


def test_gc_removes_shards_only_old_versions_needed(two_datasets):
    a, b, ma, mb, cache_dir = two_datasets
    publish(a, make_records(30, seed=3), mode="overwrite")  # a new version of a
    with roxxel.open(a, cache_dir=str(cache_dir)):  # opening notes the new version
        pass
    usage = ops.cache_usage(cache_dir)
    assert usage.unattributed_shards == len(ma.shards)
    report = ops.cache_gc(cache_dir)
    assert report.shards_removed == len(ma.shards)
    assert report.bytes_freed == int(ma.shards.raw_size.sum())
    assert report.shards_kept == len(mb.shards)
    assert ops.cache_usage(cache_dir).unattributed_shards == 0


def test_gc_refresh_forgets_datasets_that_are_gone(two_datasets):
    a, b, ma, mb, cache_dir = two_datasets
    dataset_store(b).delete("manifest.json")
    assert ops.cache_gc(cache_dir).shards_removed == 0  # without refresh, the note keeps them
    report = ops.cache_gc(cache_dir, refresh=True)
    assert report.notes_dropped == 1 and report.shards_removed == len(mb.shards)
    assert [d.url for d in ops.cache_usage(cache_dir).datasets] == [a]


def test_gc_and_clear_never_remove_a_shard_in_use(two_datasets, tmp_path):
    a, b, ma, mb, cache_dir = two_datasets
    dataset_store(b).delete("manifest.json")
    with _held(b, mb, cache_dir) as held:
        stale = os.path.join(str(cache_dir), "tmp", "999999999.abcdef.part")
        with open(stale, "wb") as f:
            f.write(b"partial download of a dead process")
        report = ops.cache_gc(cache_dir, refresh=True)
        assert report.temp_removed == 1 and not os.path.exists(stale)
        assert report.shards_in_use == 1 and report.shards_removed == len(mb.shards) - 1
        cleared = ops.cache_clear(cache_dir)
        assert cleared.shards_removed == len(ma.shards) and cleared.shards_in_use == 1
        assert os.path.exists(held.path)
    assert ops.cache_clear(cache_dir).shards_removed == 1
    assert ops.cache_usage(cache_dir).shards == 0
    assert ops.cache_usage(cache_dir).datasets == []


def _held(url, manifest, cache_dir):
    """A cached shard of ``url`` held (share-locked) as a reading process holds it."""
    cache, shard = ShardCache(str(cache_dir)), manifest.shards[0]
    return cache.get(shard.checksum, lambda sink: None, stored_size=shard.stored_size,
                     raw_size=shard.raw_size, record_count=shard.records, label=url)


def test_notes_never_hold_credentials(tmp_path):
    cache = ShardCache(str(tmp_path / "cache"))
    manifest = publish(str(tmp_path / "ds"), make_records(5))
    record_dataset_use(cache, "s3://AKIAEXAMPLE:very-secret@bucket/ds?X-Amz-Signature=abc123", manifest)
    folder = tmp_path / "cache" / DATASETS_DIR
    (note,) = folder.iterdir()
    text = note.read_text()
    assert "very-secret" not in text and "abc123" not in text and "AKIAEXAMPLE" not in text
    assert json.loads(text)["checksums"] == manifest.shards.checksums.tolist()
    assert oct(os.stat(note).st_mode & 0o777) == "0o600"


def test_cache_commands_need_an_existing_cache(tmp_path):
    with pytest.raises(CacheError, match="there is no cache at"):
        ops.cache_usage(tmp_path / "none")
    assert not (tmp_path / "none").exists()


def test_gc_refresh_reopens_a_dataset_noted_without_its_credentials(s3_server, tmp_path):
    # The note keeps "s3://***@bucket/..." (never the secret); --refresh opens
    # "s3://bucket/..." with the credentials the caller passes.
    url = s3_server.url(BUCKET, f"gc-{tmp_path.name}/ds")
    options = s3_server.storage_options
    with roxxel.Writer(url, shard_bytes=8 * 1024, storage_options=options) as w:
        w.extend(make_records(40))
    cache = ShardCache(str(tmp_path / "cache"))
    secret_url = url.replace("s3://", "s3://AKIAEXAMPLE:very-secret@")
    record_dataset_use(cache, secret_url, w.manifest)
    (note,) = (tmp_path / "cache" / DATASETS_DIR).iterdir()
    assert "very-secret" not in note.read_text() and "***@" in note.read_text()
    assert ops.cache_gc(tmp_path / "cache", refresh=True, storage_options=options).notes_dropped == 0
    assert note.exists()  # the dataset is there: its note stays
    dataset_store(url, options).delete("manifest.json")
    report = ops.cache_gc(tmp_path / "cache", refresh=True, storage_options=options)
    assert report.notes_dropped == 1 and not note.exists()


@pytest.mark.parametrize("masked, reopened", [
    ("s3://***@bucket/ds", "s3://bucket/ds"),
    ("s3://bucket/ds?X-Amz-Signature=***&versionId=3", "s3://bucket/ds?versionId=3"),
    ("gs://bucket/ds?token=***", "gs://bucket/ds"),
    ("s3://bucket/ds?***", "s3://bucket/ds"),  # redact() masks a whole query string
    ("https://***@host/ds?***", "https://host/ds"),
    ("/data/plain/ds", "/data/plain/ds"),
])
def test_masked_parts_are_left_out_when_a_noted_url_is_reopened(masked, reopened):
    assert without_masked(masked) == reopened
