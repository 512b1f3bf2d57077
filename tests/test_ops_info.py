"""roxxel.ops.info and list_shards: a manifest's summary and its shards' cache status."""

from __future__ import annotations

import os

import numpy as np
import pytest

import roxxel
from roxxel import ops
from roxxel.errors import ManifestError, NotFoundError
from roxxel.manifest.io import dataset_store


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 1500)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url, options, recs, **kw):
    with roxxel.Writer(url, shard_bytes=8 * 1024, storage_options=options, **kw) as w:
        w.extend(recs)
    return w.manifest


def test_info_summarizes_the_manifest_and_the_cache(dataset_location, tmp_path):
    url, options = dataset_location
    manifest = publish(url, options, make_records(120), compression="zstd", meta={"dtype": "uint8"})
    cache = tmp_path / "cache"
    before = ops.info(url, options, cache_dir=cache)
    assert not cache.exists()  # a missing cache counts as empty and is not created
    assert (before.records, before.shards) == (120, len(manifest.shards))
    assert before.stored_bytes == int(manifest.shards.stored_size.sum())
    assert before.raw_bytes == int(manifest.shards.raw_size.sum())
    assert before.compression == {"zstd": len(manifest.shards)}
    assert before.meta == {"dtype": "uint8"}
    assert before.fingerprint == manifest.fingerprint()
    assert (before.cached_shards, before.cached_bytes) == (0, 0)

    with roxxel.open(url, cache_dir=str(cache), storage_options=options) as ds:
        ds[0], ds[len(ds) - 1]  # noqa: B018 - maps the first and the last shard
    after = ops.info(url, options, cache_dir=cache)
    assert after.cached_shards == 2
    assert after.cached_bytes == int(manifest.shards.raw_size[0] + manifest.shards.raw_size[-1])
    assert after.to_dict()["cached_shards"] == 2


def test_list_shards_gives_every_shard_in_manifest_order(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, make_records(80))
    cache = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache)) as ds:
        ds[0]  # noqa: B018
    shards = ops.list_shards(url, cache_dir=cache)
    assert [s.uri for s in shards] == manifest.shards.uris.tolist()
    assert [s.checksum for s in shards] == manifest.shards.checksums.tolist()
    assert [s.records for s in shards] == manifest.shards.records.tolist()
    assert [s.cached for s in shards] == [True] + [False] * (len(shards) - 1)
    assert shards[0].to_dict()["uri"] == shards[0].uri


def test_info_of_a_missing_dataset_names_the_manifest(tmp_path):
    with pytest.raises(NotFoundError, match=r"manifest\.json"):
        ops.info(str(tmp_path / "nothing"))


def test_info_refuses_a_bad_manifest(tmp_path):
    url = str(tmp_path / "ds")
    os.makedirs(url)
    dataset_store(url).put_bytes_overwrite("manifest.json", b'{"format": "roxxel.manifest", "version": 9}')
    with pytest.raises(ManifestError, match="unsupported version 9"):
        ops.info(url)
