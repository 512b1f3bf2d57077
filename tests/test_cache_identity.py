"""A cached shard is served only while it is the file that was verified (issue 15, item 7).

Each cached file's identity (inode, size, mtime_ns, ctime_ns) is recorded when it is
verified; a file whose identity changed, or that has none recorded, is hashed again
before it is mapped, and removed and fetched again if it no longer matches.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import roxxel
from roxxel import ops
from roxxel.cache import ShardCache
from roxxel.cache import store as store_module
from roxxel.cli import main


def records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(200, 2000)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url: str, options: dict, recs: list[bytes], **kw) -> roxxel.manifest.Manifest:
    with roxxel.Writer(url, shard_bytes=16 * 1024, storage_options=options, **kw) as w:
        w.extend(recs)
    return w.manifest


def cached_path(cache_dir: Path, checksum: str) -> Path:
    return cache_dir / "shards" / (checksum.replace(":", "-") + ".rox")


def record_path(cache_dir: Path, checksum: str) -> Path:
    return cache_dir / "verified" / (checksum.replace(":", "-") + ".json")


def flip(path: Path, offset: int = 0, *, keep_mtime: bool = False) -> None:
    """Flip one byte in place: same inode, same size; optionally with the mtime put back."""
    before = os.stat(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


@pytest.fixture
def hashes(monkeypatch) -> list[str]:
    """The cache's re-hashes in this test (the checksums of the files hashed)."""
    calls: list[str] = []
    real = store_module.hash_fd

    def counting(fd, key):
        calls.append(key.checksum)
        return real(fd, key)

    monkeypatch.setattr(store_module, "hash_fd", counting)
    return calls


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_a_flipped_byte_in_a_cached_shard_is_never_served(new_location, tmp_path, kind, caplog):
    url, options = new_location(kind)
    recs = records(60)
    manifest = publish(url, options, recs)
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir), storage_options=options) as ds:
        assert bytes(ds[0]) == recs[0]
    checksum = str(manifest.shards.checksums[0])
    path = cached_path(cache_dir, checksum)
    flip(path)
    with caplog.at_level(logging.WARNING, logger="roxxel.cache"), \
            roxxel.open(url, cache_dir=str(cache_dir), storage_options=options) as ds:
        assert bytes(ds[0]) == recs[0]
        assert ds.stats["shards_downloaded"] == 1
    warning = next(r.getMessage() for r in caplog.records if "changed since it was verified" in r.getMessage())
    assert str(manifest.shards.uris[0]) in warning and str(path) in warning
    assert path.read_bytes()[0] == recs[0][0]


def test_an_in_place_edit_with_the_same_size_and_mtime_is_caught_by_its_ctime(tmp_path):
    url = str(tmp_path / "ds")
    recs = records(60)
    manifest = publish(url, {}, recs, compression="zstd")
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert [bytes(r) for r in ds] == recs
    for checksum in manifest.shards.checksums.tolist():
        flip(cached_path(cache_dir, checksum), 5, keep_mtime=True)
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert [bytes(r) for r in ds] == recs
        assert ds.stats["shards_downloaded"] == len(manifest.shards)


def test_a_file_with_the_same_bytes_and_a_new_identity_is_hashed_once_not_fetched(tmp_path, hashes):
    url = str(tmp_path / "ds")
    recs = records(60)
    manifest = publish(url, {}, recs)
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert bytes(ds[0]) == recs[0]
    assert hashes == []  # verified while it downloaded
    checksum = str(manifest.shards.checksums[0])
    os.utime(cached_path(cache_dir, checksum))  # a backup tool, or an older roxxel, touched it
    for _ in range(2):
        with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
            assert bytes(ds[0]) == recs[0]
            assert ds.stats["shards_downloaded"] == 0
    assert hashes == [checksum]


def test_a_cache_of_the_previous_release_is_verified_once_before_use(tmp_path, hashes):
    url = str(tmp_path / "ds")
    recs = records(60)
    manifest = publish(url, {}, recs)
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert [bytes(r) for r in ds] == recs
    first, second = manifest.shards.checksums.tolist()[:2]
    for checksum in manifest.shards.checksums.tolist():
        record_path(cache_dir, checksum).unlink()  # what the previous release leaves
    flip(cached_path(cache_dir, second), 7, keep_mtime=True)
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert [bytes(r) for r in ds] == recs
        assert ds.stats["shards_downloaded"] == 1  # the damaged one
    assert sorted(hashes) == sorted(manifest.shards.checksums.tolist())
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert [bytes(r) for r in ds] == recs
    assert len(hashes) == len(manifest.shards)  # recorded: not hashed again
    assert record_path(cache_dir, first).exists()


def rot(path: Path, record: Path) -> None:
    """Damage that leaves the identity as recorded (a failing disk): flip a byte, then
    record the identity the file has now."""
    flip(path, 3)
    st = os.stat(path)
    doc = json.loads(record.read_text())
    doc.update(ino=st.st_ino, size=st.st_size, mtime_ns=st.st_mtime_ns, ctime_ns=st.st_ctime_ns)
    record.write_text(json.dumps(doc))


def test_verify_always_rehashes_each_shard_on_its_first_mapping_in_a_process(tmp_path, hashes, monkeypatch):
    url = str(tmp_path / "ds")
    recs = records(60)
    manifest = publish(url, {}, recs)
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir), verify="always") as ds:
        assert [bytes(r) for r in ds] == recs
    assert hashes == []  # downloaded and verified by this process
    checksum = str(manifest.shards.checksums[0])
    rot(cached_path(cache_dir, checksum), record_path(cache_dir, checksum))
    monkeypatch.setattr(store_module, "_HASHED_HERE", set())  # as in a new process
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:  # "changed": nothing changed
        assert bytes(ds[0]) != recs[0]
    assert hashes == []
    for _ in range(2):
        with roxxel.open(url, cache_dir=str(cache_dir), verify="always") as ds:
            assert [bytes(r) for r in ds] == recs
    assert sorted(hashes) == sorted(manifest.shards.checksums.tolist())  # once each per process
    with pytest.raises(ValueError, match="verify is 'sometimes', expected one of 'changed', 'always'"):
        roxxel.open(url, cache_dir=str(cache_dir), verify="sometimes")


def test_a_replaced_file_is_not_served_and_a_process_mapping_the_old_one_keeps_it(tmp_path):
    url = str(tmp_path / "ds")
    recs = records(60)
    manifest = publish(url, {}, recs)
    cache_dir = tmp_path / "cache"
    checksum = str(manifest.shards.checksums[0])
    path = cached_path(cache_dir, checksum)
    with roxxel.open(url, cache_dir=str(cache_dir)) as holder:
        view = holder[0]  # mapped and held
        impostor = tmp_path / "impostor"
        impostor.write_bytes(path.read_bytes())
        flip(impostor)  # a valid footer and offsets: only a hash tells it apart
        os.replace(impostor, path)  # same size, another inode
        with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
            assert bytes(ds[0]) == recs[0]
            assert ds.stats["shards_downloaded"] == 1
        assert bytes(view) == recs[0] == bytes(holder[0])


def test_processes_sharing_the_cache_refetch_a_damaged_shard_once(tmp_path):
    url = str(tmp_path / "ds")
    recs = records(80)
    manifest = publish(url, {}, recs)
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        assert [bytes(r) for r in ds] == recs
    for checksum in manifest.shards.checksums.tolist():
        flip(cached_path(cache_dir, checksum), 11)
    script = textwrap.dedent(f"""
        import hashlib, roxxel
        with roxxel.open({url!r}, cache_dir={str(cache_dir)!r}) as ds:
            digest = hashlib.sha256(b"".join(bytes(r) for r in ds)).hexdigest()
            print(digest, ds.stats["shards_downloaded"])
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
             for _ in range(4)]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    import hashlib

    expected = hashlib.sha256(b"".join(recs)).hexdigest()
    assert [digest for digest, _ in outputs] == [expected] * 4
    assert sum(int(n) for _, n in outputs) == len(manifest.shards)  # each shard once per node


def test_cache_verify_reports_and_removes_damaged_files(tmp_path, capsys):
    plain, packed = str(tmp_path / "plain"), str(tmp_path / "packed")
    recs = records(40)
    manifests = [publish(plain, {}, recs), publish(packed, {}, recs, compression="zstd")]
    cache_dir = tmp_path / "cache"
    for url in (plain, packed):
        with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
            assert [bytes(r) for r in ds] == recs
    bad = [str(manifests[0].shards.checksums[1]), str(manifests[1].shards.checksums[0])]
    rot(cached_path(cache_dir, bad[0]), record_path(cache_dir, bad[0]))  # identity as recorded
    flip(cached_path(cache_dir, bad[1]), 2)
    shards = sum(len(m.shards) for m in manifests)

    assert main(["cache", "verify", "--cache-dir", str(cache_dir), "--json", "-q"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is False and report["checked"] == shards
    assert sorted(d["checksum"] for d in report["damaged"]) == sorted(bad)
    assert all(d["removed"] and "hashes to" in d["problem"] for d in report["damaged"])
    assert not any(cached_path(cache_dir, c).exists() for c in bad)

    assert main(["cache", "verify", "--cache-dir", str(cache_dir), "-q"]) == 0
    assert capsys.readouterr().out.startswith(f"ok: {shards - 2} cached shards verified")
    for url in (plain, packed):
        with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
            assert [bytes(r) for r in ds] == recs
            assert ds.stats["shards_downloaded"] == 1


def test_cache_verify_without_repair_reports_and_keeps(tmp_path):
    url = str(tmp_path / "ds")
    manifest = publish(url, {}, records(40))
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        ds.warm()
    checksum = str(manifest.shards.checksums[0])
    flip(cached_path(cache_dir, checksum))
    report = ops.cache_verify(cache_dir, repair=False)
    assert [(d.checksum, d.removed) for d in report.damaged] == [(checksum, False)]
    assert cached_path(cache_dir, checksum).exists()
    assert not ShardCache(cache_dir).verify(checksum)


@pytest.mark.parametrize("planted", ["symlink outside", "directory", "garbage"])
def test_a_hostile_record_is_never_followed_nor_trusted(tmp_path, planted):
    url = str(tmp_path / "ds")
    recs = records(40)
    manifest = publish(url, {}, recs)
    cache_dir = tmp_path / "cache"
    with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
        ds.warm()
    checksum = str(manifest.shards.checksums[0])
    record = record_path(cache_dir, checksum)
    honest = record.read_text()
    record.unlink()
    outside = tmp_path / "outside.json"
    if planted == "symlink outside":
        outside.write_text(honest)  # even the right identity is not read through a symlink
        record.symlink_to(outside)
    elif planted == "directory":
        record.mkdir()
    else:
        record.write_text('{"version": 1, "ino": "1"}')
    flip(cached_path(cache_dir, checksum))
    for _ in range(2):
        with roxxel.open(url, cache_dir=str(cache_dir)) as ds:
            assert [bytes(r) for r in ds] == recs
    if planted == "symlink outside":
        assert outside.read_text() == honest
    assert ShardCache(cache_dir).clear() == len(manifest.shards)
