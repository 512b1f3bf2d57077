"""roxxel.ops.merge: datasets of parallel writers combined into one manifest."""

from __future__ import annotations

import numpy as np
import pytest

import roxxel
from roxxel import ops
from roxxel.errors import DatasetExistsError, ManifestError, NotFoundError
from roxxel.manifest.io import Snapshot, dataset_store, publish_manifest, read_manifest


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


def test_parts_under_the_destination_stay_in_place(dataset_location, tmp_path):
    url, options = dataset_location
    parts = [make_records(60, seed=s) for s in range(3)]
    manifests = [publish(f"{url}/part-{i}", options, recs, meta={"dtype": "u1"}) for i, recs in enumerate(parts)]
    report = ops.merge([f"{url}/part-{i}" for i in range(3)], url, options)
    n = sum(len(m.shards) for m in manifests)
    assert (report.shards, report.in_place, report.copied, report.records) == (n, n, 0, 180)
    merged = read_manifest(dataset_store(url, options))
    assert merged.shards.uris.tolist() == [
        f"part-{i}/{uri}" for i, m in enumerate(manifests) for uri in m.shards.uris.tolist()
    ]
    assert merged.meta == {"dtype": "u1"}
    assert read_all(url, options, tmp_path / "cache") == [r for recs in parts for r in recs]
    again = ops.merge([f"{url}/part-{i}" for i in range(3)], url, options)
    assert not again.published


def test_sources_elsewhere_are_copied_under_checksum_names(tmp_path):
    a, b, dest = (str(tmp_path / name) for name in ("a", "b", "dest"))
    recs_a, recs_b = make_records(50, seed=1), make_records(50, seed=2)
    publish(a, {}, recs_a, compression="zstd")
    mb = publish(b, {}, recs_b)
    report = ops.merge([a, b], dest)
    assert report.in_place == 0 and report.copied == report.shards
    merged = read_manifest(dataset_store(dest))
    digest = mb.shards.checksums[0].split(":")[1]
    assert f"shards/blake3-{digest[:32]}.rox" in merged.shards.uris.tolist()
    assert any(u.endswith(".rox.zst") for u in merged.shards.uris.tolist())
    assert read_all(dest, {}, tmp_path / "cache") == recs_a + recs_b
    assert ops.verify(dest).ok
    assert not ops.merge([a, b], dest).published


def test_a_source_given_twice_is_merged_once(tmp_path):
    dest = str(tmp_path / "dest")
    publish(dest + "/p", {}, make_records(40))
    report = ops.merge([dest + "/p", dest + "/p/manifest.json"], dest)
    assert report.records == 40


def test_duplicate_shards_are_refused(tmp_path):
    dest = str(tmp_path / "dest")
    manifest = publish(dest + "/p0", {}, make_records(40))
    ops.copy(dest + "/p0", dest + "/p1")
    with pytest.raises(ManifestError, match=r"duplicate shards: .*p0/shards/.* and .*p1/shards/.* have the same checksum"):
        ops.merge([dest + "/p0", dest + "/p1"], dest)
    assert not dataset_store(dest).exists("manifest.json")
    assert len(manifest.shards) > 1


def test_conflicting_shards_are_refused(tmp_path):
    dest = str(tmp_path / "dest")
    part = publish(dest + "/p", {}, make_records(40, seed=1))
    other = publish(str(tmp_path / "other"), {}, make_records(40, seed=2))
    shard, theirs = part.shards[0], other.shards[0]
    # A dataset at dest whose manifest names dest/p's first object with another checksum.
    fake = roxxel.ShardInfo(uri=f"p/{shard.uri}", records=theirs.records, stored_size=theirs.stored_size,
                            raw_size=theirs.raw_size, compression=None, checksum=theirs.checksum)
    publish_manifest(dataset_store(dest), roxxel.Manifest.build([fake]), replaces=Snapshot(None, None))
    with pytest.raises(ManifestError, match=rf"conflicting shards: .*p/{shard.uri} is listed with checksum"):
        ops.merge([dest + "/p", dest], dest, overwrite=True)


def test_sources_with_different_meta_need_an_explicit_meta(tmp_path):
    dest = str(tmp_path / "dest")
    publish(dest + "/a", {}, make_records(20, seed=1), meta={"dtype": "u1"})
    publish(dest + "/b", {}, make_records(20, seed=2), meta={"dtype": "u2"})
    with pytest.raises(ManifestError, match="the sources disagree on meta"):
        ops.merge([dest + "/a", dest + "/b"], dest)
    report = ops.merge([dest + "/a", dest + "/b"], dest, meta={"dtype": "bytes"})
    assert report.published and read_manifest(dataset_store(dest)).meta == {"dtype": "bytes"}


def test_merge_refuses_a_different_dataset_at_the_destination(tmp_path):
    dest = str(tmp_path / "dest")
    publish(dest + "/a", {}, make_records(20, seed=1))
    publish(dest + "/b", {}, make_records(20, seed=2))
    ops.merge([dest + "/a"], dest)
    with pytest.raises(DatasetExistsError, match="a different dataset already exists"):
        ops.merge([dest + "/a", dest + "/b"], dest)
    assert ops.merge([dest + "/a", dest + "/b"], dest, overwrite=True).records == 40
    # Adding a part to a merged dataset: the destination is a source too.
    publish(dest + "/c", {}, make_records(20, seed=3))
    assert ops.merge([dest, dest + "/c"], dest, overwrite=True).records == 60


def test_a_missing_in_place_shard_stops_the_merge_before_publishing(tmp_path):
    dest = str(tmp_path / "dest")
    manifest = publish(dest + "/a", {}, make_records(40))
    dataset_store(dest + "/a").delete(manifest.shards.uris[1])
    with pytest.raises(NotFoundError, match=manifest.shards.uris[1]):
        ops.merge([dest + "/a"], dest)
    assert not dataset_store(dest).exists("manifest.json")
