"""ds.payload() and Roxxel.payload() (issue 18, part 2): the payload bytes end to end as
a read-only seekable file; ranged GETs for uncached shards (counted), maps for cached
ones, the cache for zstd shards; BufferedReader, tarfile, zipfile and NumPy consumers."""

from __future__ import annotations

import io
import os
import tarfile
import zipfile

import numpy as np
import pytest

import roxxel
from roxxel.backends import Store
from roxxel.errors import ShardFormatError
from roxxel.manifest.io import read_manifest


class CountingStore(Store):
    """Counts ranged reads and whole-object downloads."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.ranges: list[tuple[str, int, int]] = []
        self.streams: list[str] = []

    def read_range(self, key, start, end):
        self.ranges.append((key, start, end))
        return super().read_range(key, start, end)

    def stream(self, key, sink, size=None):
        self.streams.append(key)
        return super().stream(key, sink, size)


def records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0, 1500, size=n)
    sizes[::7] = 0  # empty records: empty runs inside the payload
    return [rng.integers(0, 256, size=int(s), dtype=np.uint8).tobytes() for s in sizes]


def write(url: str, options: dict, recs: list, **kw) -> roxxel.Manifest:
    with roxxel.Writer(url, storage_options=options, shard_bytes=kw.pop("shard_bytes", 8192), **kw) as w:
        w.extend(recs)
    return w.manifest


def open_counting(url: str, options: dict, tmp_path) -> tuple[roxxel.Dataset, CountingStore]:
    store = CountingStore(url, options)
    return roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store), store


def test_reads_across_shards_use_ranged_gets_then_the_cache(dataset_location, tmp_path):
    url, options = dataset_location
    recs = records(60)
    manifest = write(url, options, recs)
    whole = b"".join(recs)
    sizes = [len(b"".join(recs[a:b])) for a, b in zip(manifest.shards.record_starts[:-1], manifest.shards.record_starts[1:])]
    assert len(sizes) >= 4
    edge = sizes[0] + sizes[1]  # where shard 2's payload starts
    ds, store = open_counting(url, options, tmp_path)
    with ds:
        f = ds.payload(readahead=64)
        assert f.size == len(whole) == f.seek(0, io.SEEK_END)
        assert f.read_at(edge - 10, 30) == whole[edge - 10 : edge + 20]  # shards 1 and 2
        assert f.tell() == len(whole)  # read_at leaves the position alone
        keys = [key for key, _, _ in store.ranges]
        uris = manifest.shards.uris.tolist()
        # a footer and one range of each of the two shards, nothing downloaded whole
        assert sorted(keys) == sorted([uris[1], uris[1], uris[2], uris[2]])
        assert [(s, e) for k, s, e in store.ranges if k == uris[2] and s == 0] == [(0, 64)]
        assert store.streams == []
        assert f.read_at(edge + 20, 40) == whole[edge + 20 : edge + 60]  # in the readahead: no GET
        assert len(store.ranges) == 4
        f.seek(edge - 5)
        assert f.read(100) == whole[edge - 5 : edge + 95] and f.tell() == edge + 95
        assert len(store.ranges) == 6  # shard 1 and 2 again (the last range is one shard's), footers kept

        ds.warm()
        store.ranges.clear()
        f.seek(0)
        assert f.read() == whole
        assert f.read() == b"" and f.read_at(len(whole), 5) == b""
        assert store.ranges == []  # every shard from the cache now


def test_a_local_dataset_and_the_local_api(tmp_path):
    recs = records(80, seed=1)
    whole = b"".join(recs)
    url = str(tmp_path / "ds")
    write(url, {}, recs)
    ds, store = open_counting(url, {}, tmp_path)
    with ds, ds.payload() as f:
        assert f.read() == whole
        assert len(store.ranges) == 2 * ds.num_shards  # a footer and one range (<= 1 MiB) a shard
    local = roxxel.Roxxel(str(tmp_path / "loc.rox"))
    local.write(recs, max_shard_bytes=9000)
    local = roxxel.Roxxel(str(tmp_path / "loc.rox"))
    assert len(local.paths) > 3
    with local.payload() as f:
        assert f.read_at(8990, 30) == whole[8990:9020]
        f.seek(12345)
        assert f.read(10_000) == whole[12345:22345]
        assert f.readall() == whole[22345:]
    local.close()


def test_zstd_shards_are_read_from_the_cache(dataset_location, tmp_path):
    url, options = dataset_location
    recs = records(40, seed=2)
    whole = b"".join(recs)
    write(url, options, recs, compression="zstd")
    ds, store = open_counting(url, options, tmp_path)
    with ds:
        f = ds.payload()
        mid = len(whole) // 2
        assert f.read_at(mid, 5000) == whole[mid : mid + 5000]
        assert store.ranges == [] or all(k == "manifest.json" for k, _, _ in store.ranges)
        assert 1 <= ds.stats["shards_downloaded"] <= 2 + ds.lookahead  # whole, verified, decompressed
        assert f.read_at(0, len(whole)) == whole


def test_tarfile_zipfile_bufferedreader_and_numpy_read_it(tmp_path):
    tar_buf = io.BytesIO()
    members = {f"dir/file{i}.bin": os.urandom(1000 * i + 7) for i in range(12)}
    with tarfile.open(fileobj=tar_buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    zip_buf = io.BytesIO()
    with zipfile.ZipFile(zip_buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    for kind, blob in (("tar", tar_buf.getvalue()), ("zip", zip_buf.getvalue())):
        url = str(tmp_path / kind)
        chunks = [blob[i : i + 3000] for i in range(0, len(blob), 3000)]  # records: the file in pieces
        manifest = write(url, {}, chunks)
        assert len(manifest.shards) > 3
        with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
            if kind == "tar":
                with tarfile.open(fileobj=ds.payload(), mode="r:") as tar:
                    got = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}
                with tarfile.open(fileobj=io.BufferedReader(ds.payload(), 4096), mode="r|") as tar:  # streamed
                    streamed = {m.name: tar.extractfile(m).read() for m in tar}
                assert streamed == members
            else:
                with zipfile.ZipFile(ds.payload()) as zf:
                    got = {name: zf.read(name) for name in zf.namelist()}
            assert got == members
            arr = np.empty(len(blob) // 4, dtype="<u4")
            f = ds.payload()
            assert f.readinto(arr) == arr.nbytes
            assert arr.tobytes() == blob[: arr.nbytes]


def test_file_semantics(tmp_path):
    url = str(tmp_path / "ds")
    write(url, {}, [b"abc", b"", b"defgh"])
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        f = ds.payload()
        assert f.readable() and f.seekable() and not f.writable()
        assert f.read(2) == b"ab" and f.tell() == 2
        assert f.seek(3, io.SEEK_CUR) == 5 and f.read() == b"fgh"
        assert f.seek(100) == 100 and f.read(5) == b"" and f.read_at(6, 100) == b"gh"
        with pytest.raises(ValueError, match="negative seek"):
            f.seek(-1)
        with pytest.raises(ValueError, match="offset >= 0"):
            f.read_at(-1, 2)
        with pytest.raises(io.UnsupportedOperation):
            f.write(b"x")
        f.close()
        with pytest.raises(ValueError, match="closed"):
            f.read(1)
        with pytest.raises(ValueError, match="readahead"):
            ds.payload(readahead=0)


def test_a_footer_that_disagrees_with_the_manifest_is_refused(tmp_path):
    url = str(tmp_path / "ds")
    manifest = write(url, {}, records(30, seed=3))
    path = os.path.join(url, manifest.shards.uris[1])
    data = bytearray(open(path, "rb").read())
    data[-16:-8] = (int.from_bytes(data[-16:-8], "little") - 8).to_bytes(8, "little")  # payload size
    with open(path, "wb") as out:
        out.write(data)
    assert read_manifest(Store(url)).shards.stored_size[1] == len(data)
    ds, _ = open_counting(url, {}, tmp_path)
    with ds:
        f = ds.payload()
        start = int(len(b"".join(records(30, seed=3)[: int(manifest.shards.records[0])])))
        assert f.read_at(0, 10) is not None
        with pytest.raises(ShardFormatError, match=rf"{manifest.shards.uris[1]}: file size is {len(data)} bytes, expected"):
            f.read_at(start + 1, 10)
