"""roxxel.imports against files written by the real libraries, in the tests themselves.

MDS by mosaicml-streaming's MDSWriter, LitData by litdata.optimize, tar shards by
webdataset's ShardWriter/TarWriter, Parquet by pyarrow. Each is imported into a roxxel
dataset (locally, and from and into the S3 and GCS servers), and every record read back
is compared with what the library was given. Hostile inputs (lying indexes, bad offsets,
truncated files) are refused with errors naming the file, the field and the value.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
import struct
import tarfile
from decimal import Decimal
from pathlib import Path

import fsspec
import numpy as np
import pytest

import roxxel
from roxxel import imports
from roxxel.errors import SourceFormatError
from tests import peer_stubs

# -- helpers -------------------------------------------------------------------------------


def roundtrip(source: imports.Source, url: str, options: dict, cache_dir, **writer) -> tuple[list[bytes], dict]:
    """Write the source's records to a roxxel dataset at ``url``; its records and meta."""
    with roxxel.Writer(url, storage_options=options, meta=source.meta, **writer) as w:
        w.extend(source)
    ds = roxxel.open(url, cache_dir=str(cache_dir), storage_options=options)
    try:
        return [bytes(ds[i]) for i in range(len(ds))], ds.meta
    finally:
        ds.close()


def upload(local_dir, location) -> str:
    """Copy a local directory's files to ``<location.url>-src``; that URL."""
    url = location.url + "-src"
    fs, root = fsspec.core.url_to_fs(url, **location.storage_options)
    for name in sorted(os.listdir(local_dir)):
        fs.put_file(os.path.join(local_dir, name), f"{root}/{name}")
    return url


def as_bytes(value) -> bytes:
    return np.ascontiguousarray(value).tobytes() if isinstance(value, (np.ndarray, np.generic)) else bytes(value)


# -- MDS -------------------------------------------------------------------------------

MDS_COLUMNS = {
    "data": "bytes", "text": "str", "n": "int", "f": "float32", "u": "uint16",
    "tokens": "ndarray:int32", "grid": "ndarray:float64:2,3", "any": "ndarray",
    "obj": "json", "big": "str_int", "blob": "pkl",
}


def mds_sample(i: int) -> dict:
    return {
        "data": bytes([i % 256]) * (i % 7), "text": "é" * (i % 5), "n": i - 50, "f": i / 4, "u": i * 3,
        "tokens": np.arange(i % 9 + 1, dtype=np.int32), "grid": np.full((2, 3), i, np.float64),
        "any": np.arange(i % 4 + 1, dtype=np.uint8).reshape(1, -1), "obj": {"i": i, "l": [i] * (i % 3)},
        "big": 10**20 + i, "blob": ("a", i),
    }


@pytest.fixture(scope="module")
def mds_dirs(tmp_path_factory):
    """An MDS directory written by MDSWriter, plain and zstd-compressed, several shards."""
    streaming = peer_stubs.streaming()
    root = tmp_path_factory.mktemp("mds")
    samples = [mds_sample(i) for i in range(60)]
    out = {}
    for compression in (None, "zstd"):
        path = str(root / (compression or "plain"))
        with streaming.MDSWriter(out=path, columns=MDS_COLUMNS, compression=compression, size_limit=1500) as w:
            for sample in samples:
                w.write(sample)
        out[compression or "plain"] = path
    return out, samples


@pytest.mark.parametrize("kind", ["plain", "zstd"])
def test_mds_every_column_raw_and_natural(mds_dirs, kind, tmp_path):
    from streaming.base.format.mds.encodings import mds_encode

    dirs, samples = mds_dirs
    path = dirs[kind]
    source = imports.open_source("mds", path)
    assert len(source.units) > 3 and all(u.key.startswith("shard.") for u in source.units)
    fields = source.meta["import"]["fields"]
    records = list(source)
    assert len(records) == len(samples)
    for record, sample in zip(records, samples):
        split = imports.split_fields(record, fields)
        assert {k: bytes(v) for k, v in split.items()} == {k: mds_encode(MDS_COLUMNS[k], sample[k]) for k in fields}
    for column, encoding in MDS_COLUMNS.items():  # raw: MDS's own bytes of every column
        raw = list(imports.open_source("mds", path, field=column))
        assert raw == [mds_encode(encoding, s[column]) for s in samples]
    natural = {
        "data": lambda s: s["data"], "text": lambda s: s["text"].encode(), "n": lambda s: np.int64(s["n"]),
        "f": lambda s: np.float32(s["f"]), "u": lambda s: np.uint16(s["u"]), "tokens": lambda s: s["tokens"],
        "grid": lambda s: s["grid"], "obj": lambda s: json.dumps(s["obj"], sort_keys=True).encode(),
        "big": lambda s: str(s["big"]).encode(),
    }
    for column, expected in natural.items():
        source = imports.open_source("mds", path, field=column, decode="natural")
        got = list(source)
        assert [as_bytes(g) for g in got] == [as_bytes(expected(s)) for s in samples], column
    meta = imports.open_source("mds", path, field="grid", decode="natural").meta
    assert meta["dtype"] == "<f8" and meta["shape"] == [2, 3] and meta["import"]["record"] == "array"
    assert imports.open_source("mds", path, field="tokens", decode="natural").meta["dtype"] == "<i4"
    assert "shape" not in imports.open_source("mds", path, field="tokens", decode="natural").meta


def test_mds_natural_refusals_and_json_samples(mds_dirs, tmp_path):
    streaming = peer_stubs.streaming()
    dirs, _ = mds_dirs
    for column in ("any", "blob"):  # no one dtype; pickles are never unpickled
        with pytest.raises(SourceFormatError, match=rf"column '{column}' of encoding '(ndarray|pkl)'.*decode='raw'"):
            imports.open_source("mds", dirs["plain"], field=column, decode="natural")
    with pytest.raises(SourceFormatError, match=r"column 'blob' of encoding 'pkl' cannot be JSON"):
        imports.open_source("mds", dirs["plain"], decode="natural")
    with pytest.raises(ValueError, match=r"no column 'nope'"):
        imports.open_source("mds", dirs["plain"], field="nope")
    path = str(tmp_path / "textual")
    columns = {"s": "str", "n": "int", "j": "json", "a": "ndarray:int16", "x": "float64", "d": "str_decimal"}
    rows = [{"s": f"s{i}", "n": i, "j": {"k": [i]}, "a": np.arange(i + 1, dtype=np.int16), "x": i / 2,
             "d": Decimal(f"{i}.10")} for i in range(12)]
    with streaming.MDSWriter(out=path, columns=columns, size_limit=300) as w:
        for row in rows:
            w.write(row)
    source = imports.open_source("mds", path, decode="natural")
    assert source.meta["import"]["record"] == "json"
    got = [json.loads(r) for r in source]
    assert got == [{**r, "a": r["a"].tolist(), "d": f"{i}.10"} for i, r in enumerate(rows)]


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_mds_from_and_into_a_store(mds_dirs, kind, new_location, tmp_path):
    dirs, samples = mds_dirs
    dest = new_location(kind)
    src = upload(dirs["zstd"], dest)
    source = imports.open_source("mds", src, dest.storage_options, field="tokens", decode="natural")
    records, meta = roundtrip(source, dest.url, dest.storage_options, tmp_path / "cache", shard_bytes=4096)
    assert records == [s["tokens"].tobytes() for s in samples]
    assert meta["dtype"] == "<i4" and meta["import"]["format"] == "mds"


def _copy(src, dst):
    shutil.copytree(src, dst)
    return str(dst)


def _edit_index(path, edit):
    with open(os.path.join(path, "index.json")) as f:
        index = json.load(f)
    edit(index)
    with open(os.path.join(path, "index.json"), "w") as f:
        json.dump(index, f)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda ix: ix.update(version=3), r"index\.json: version 3 is not MDS index version 2"),
        (lambda ix: ix["shards"][1]["raw_data"].update(basename="../../etc/passwd"),
         r"shards\[1\]: raw_data\.basename must be a path without '\.' or '\.\.' segments, got '\.\./\.\./etc/passwd'"),
        (lambda ix: ix["shards"][0]["raw_data"].update(bytes=True), r"shards\[0\]: raw_data\.bytes must be an integer"),
        (lambda ix: ix["shards"][0]["column_sizes"].__setitem__(ix["shards"][0]["column_names"].index("n"), 4),
         r"shards\[0\]: column 'n' of encoding 'int' has size 4, the encoding's is 8"),
        (lambda ix: ix["shards"][2]["raw_data"].update(bytes=ix["shards"][2]["raw_data"]["bytes"] + 1),
         r"shard\.00002\.mds has \d+ bytes, the index says \d+"),
        (lambda ix: ix["shards"][1].update(column_names=ix["shards"][1]["column_names"][::-1]),
         r"shards\[1\] has columns"),
    ],
)
def test_mds_lying_index_refused(mds_dirs, tmp_path, edit, match):
    path = _copy(mds_dirs[0]["plain"], tmp_path / "mds")
    _edit_index(path, edit)
    with pytest.raises(SourceFormatError, match=match):
        list(imports.open_source("mds", path))


def test_mds_huge_counts_and_sizes_are_not_allocated(mds_dirs, tmp_path):
    path = _copy(mds_dirs[0]["zstd"], tmp_path / "mds")
    _edit_index(path, lambda ix: ix["shards"][0].update(samples=2**32 - 2))
    with pytest.raises(SourceFormatError, match=r"shard\.00000\.mds\.zstd: the file holds \d+ samples, its index"):
        list(imports.open_source("mds", path))
    path = _copy(mds_dirs[0]["zstd"], tmp_path / "mds2")
    shard = Path(path, "shard.00000.mds.zstd")
    import zstandard

    raw = bytearray(zstandard.ZstdDecompressor().decompress(shard.read_bytes()))
    raw[0:4] = struct.pack("<I", 2**30)  # a count whose offset table is 4 GiB
    shard.write_bytes(zstandard.ZstdCompressor().compress(bytes(raw)))
    _edit_index(path, lambda ix: (ix["shards"][0].update(samples=2**30),
                                  ix["shards"][0]["zip_data"].update(bytes=shard.stat().st_size)))
    with pytest.raises(SourceFormatError, match=r"2\d+ samples need a \d+-byte offset table, the index says the file "
                                                r"has \d+ bytes"):
        list(imports.open_source("mds", path))


def test_mds_bad_shards_refused(mds_dirs, tmp_path):
    path = _copy(mds_dirs[0]["plain"], tmp_path / "mds")
    _edit_index(path, lambda ix: ix["shards"][0].update(samples=ix["shards"][0]["samples"] + 1))
    with pytest.raises(SourceFormatError, match=r"shard\.00000\.mds: the file holds \d+ samples, its index says"):
        list(imports.open_source("mds", path))
    path = _copy(mds_dirs[0]["plain"], tmp_path / "mds2")
    shard = os.path.join(path, "shard.00001.mds")
    data = bytearray(Path(shard).read_bytes())
    data[8:12] = struct.pack("<I", 3)  # the first sample's end offset, inside the header
    Path(shard).write_bytes(bytes(data))
    with pytest.raises(SourceFormatError, match=r"shard\.00001\.mds: sample 0 ends at offset 3, before it starts at \d+"):
        list(imports.open_source("mds", path))
    path = _copy(mds_dirs[0]["zstd"], tmp_path / "mds3")
    shard = os.path.join(path, "shard.00002.mds.zstd")
    data = Path(shard).read_bytes()
    Path(shard).write_bytes(data[: len(data) // 2])
    _edit_index(path, lambda ix: ix["shards"][2]["zip_data"].update(bytes=len(data) // 2))
    with pytest.raises(SourceFormatError, match=r"shard\.00002\.mds\.zstd: truncated"):
        list(imports.open_source("mds", path))


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_mds_digests_checked(compression, tmp_path):
    streaming = peer_stubs.streaming()
    path = str(tmp_path / "hashed")
    with streaming.MDSWriter(out=path, columns={"data": "bytes"}, compression=compression,
                             hashes=["sha1", "xxh64"], size_limit=1 << 20) as w:
        for i in range(50):
            w.write({"data": bytes([i]) * 100})
    assert list(imports.open_source("mds", path, field="data")) == [bytes([i]) * 100 for i in range(50)]
    shard = Path(path, "shard.00000.mds" + (".zstd" if compression else ""))
    data = bytearray(shard.read_bytes())
    data[-1] ^= 1  # the last sample's last byte (or the zstd frame's checksum): the layout still parses
    shard.write_bytes(bytes(data))
    with pytest.raises(SourceFormatError, match=r"shard\.00000\.mds(\.zstd)?: (sha1 digest is [0-9a-f]+, the index "
                                                r"says [0-9a-f]+|damaged zstd data)"):
        list(imports.open_source("mds", path, field="data"))


# -- LitData -----------------------------------------------------------------------------


def litdata_item(i: int) -> dict:
    return {"data": bytes([i % 256]) * (i % 5), "tokens": np.arange(i % 6 + 1, dtype=np.int64),
            "text": f"t{i}", "n": i, "x": i / 8, "tensor": np.ones((2, 2), np.float32) * i}


@pytest.fixture(scope="module")
def litdata_dir(tmp_path_factory):
    """A LitData directory by litdata.optimize: >10 chunks, so names sort numerically."""
    import litdata

    out = str(tmp_path_factory.mktemp("litdata") / "out")
    litdata.optimize(litdata_item, list(range(48)), out, chunk_bytes=300, num_workers=1, start_method="fork",
                     keep_data_ordered=True, mode="overwrite")
    return out


def test_litdata_records_in_item_order(litdata_dir):
    source = imports.open_source("litdata", litdata_dir)
    keys = [u.key for u in source.units]
    assert len(keys) > 11 and keys.index("chunk-0-10.bin") == keys.index("chunk-0-9.bin") + 1
    fields = source.meta["import"]["fields"]
    assert fields == ["data", "tokens", "text", "n", "x", "tensor"]
    items = [litdata_item(i) for i in range(48)]
    records = [imports.split_fields(r, fields) for r in source]
    assert [bytes(r["data"]) for r in records] == [it["data"] for it in items]
    assert [bytes(r["text"]) for r in records] == [it["text"].encode() for it in items]
    cases = {"tokens": lambda it: it["tokens"], "n": lambda it: np.int64(it["n"]), "x": lambda it: np.float64(it["x"]),
             "data": lambda it: it["data"], "text": lambda it: it["text"].encode()}
    for field, expected in cases.items():
        source = imports.open_source("litdata", litdata_dir, field=field, decode="natural")
        assert [as_bytes(r) for r in source] == [as_bytes(expected(it)) for it in items], field
    assert imports.open_source("litdata", litdata_dir, field="tokens", decode="natural").meta["dtype"] == "<i8"
    with pytest.raises(SourceFormatError, match=r"serializer 'bytes' cannot be JSON"):
        imports.open_source("litdata", litdata_dir, decode="natural")
    with pytest.raises(SourceFormatError, match=r"field 'tensor': serializer '.*' has no natural form"):
        imports.open_source("litdata", litdata_dir, field="tensor", decode="natural")


def test_litdata_from_s3_into_gcs(litdata_dir, new_location, tmp_path):
    s3, gcs = new_location("s3"), new_location("gcs")
    src = upload(litdata_dir, s3)
    source = imports.open_source("litdata", src, s3.storage_options, field="tokens", decode="natural")
    records, meta = roundtrip(source, gcs.url, gcs.storage_options, tmp_path / "cache")
    assert records == [litdata_item(i)["tokens"].tobytes() for i in range(48)]
    assert meta["import"]["field"] == "tokens"


def row_item(i: int) -> dict:
    return {"text": f"doc {i}", "n": i, "x": i / 2}


def token_item(i: int) -> dict:
    return {"data": bytes([i % 256]) * (i % 9), "tokens": np.arange(i % 13 + 1, dtype=np.int32)}


@pytest.mark.parametrize("layout", ["chunk", "batch", "sample"])
def test_litdata_zstd_layouts(layout, tmp_path):
    import litdata

    out = str(tmp_path / layout)
    litdata.optimize(token_item, list(range(40)), out, chunk_bytes=400, num_workers=1, start_method="fork",
                     keep_data_ordered=True, compression="zstd", compression_level=layout,
                     compression_batch_size=3)
    source = imports.open_source("litdata", out, field="tokens", decode="natural")
    assert len(source.units) > 2
    assert [r.tobytes() for r in source] == [token_item(i)["tokens"].tobytes() for i in range(40)]
    assert list(imports.open_source("litdata", out, field="data")) == [token_item(i)["data"] for i in range(40)]


def test_litdata_rows_in_arrow_footers(tmp_path):
    import litdata
    import pyarrow as pa

    out = str(tmp_path / "rows")
    litdata.optimize(row_item, list(range(30)), out, chunk_bytes=300, num_workers=1, start_method="fork",
                     keep_data_ordered=True)
    source = imports.open_source("litdata", out, decode="natural")
    assert source.meta["import"]["rows"] == "arrow-footer" and source.meta["import"]["fields"] == ["text", "n", "x"]
    assert [json.loads(r) for r in source] == [row_item(i) for i in range(30)]
    arrow = list(imports.open_source("litdata", out))
    assert [pa.ipc.open_stream(r).read_all().to_pylist()[0] for r in arrow] == [row_item(i) for i in range(30)]
    numbers = imports.open_source("litdata", out, field="n")
    assert numbers.meta["dtype"] == "<i8" and [int(r) for r in numbers] == list(range(30))
    chunk = Path(out, "chunk-0-1.bin")
    data = chunk.read_bytes()
    chunk.write_bytes(data[:-12] + struct.pack("<I", len(data)) + data[-8:])  # a footer longer than its file
    with pytest.raises(SourceFormatError, match=r"chunk-0-1\.bin: the Arrow footer says it has \d+ bytes"):
        list(imports.open_source("litdata", out, field="text"))


def test_litdata_hostile(litdata_dir, tmp_path):
    path = _copy(litdata_dir, tmp_path / "lit")
    _edit_index(path, lambda ix: ix["chunks"][0].update(filename="../index.json"))
    with pytest.raises(SourceFormatError, match=r"chunks\[0\]: filename must be a path without '\.' or '\.\.'"):
        imports.open_source("litdata", path)
    path = _copy(litdata_dir, tmp_path / "lit2")
    _edit_index(path, lambda ix: ix["chunks"][3].update(chunk_size=ix["chunks"][3]["chunk_size"] + 2))
    with pytest.raises(SourceFormatError, match=r"chunk-0-3\.bin: the file holds \d+ items, its index says"):
        list(imports.open_source("litdata", path))
    path = _copy(litdata_dir, tmp_path / "lit3")
    chunk = os.path.join(path, "chunk-0-4.bin")
    data = Path(chunk).read_bytes()
    Path(chunk).write_bytes(data[:-5])
    with pytest.raises(SourceFormatError, match=rf"chunk-0-4\.bin has {len(data) - 5} bytes, the index says {len(data)}"):
        imports.open_source("litdata", path)
    _edit_index(path, lambda ix: next(c for c in ix["chunks"] if c["filename"] == "chunk-0-4.bin").update(
        chunk_bytes=len(data) - 5))
    with pytest.raises(SourceFormatError, match=rf"chunk-0-4\.bin: the offsets end at {len(data)}, the index says "
                                                rf"the file has {len(data) - 5} bytes"):
        list(imports.open_source("litdata", path))
    path = _copy(litdata_dir, tmp_path / "lit4")
    _edit_index(path, lambda ix: ix["config"].update(encryption="fernet"))
    with pytest.raises(SourceFormatError, match=r"config\.encryption is 'fernet'"):
        imports.open_source("litdata", path)


# -- WebDataset -------------------------------------------------------------------------


def wds_sample(i: int) -> dict:
    return {"__key__": f"sample{i:05d}", "jpg": bytes([i % 256]) * (i % 11 + 1), "cls": str(i % 10).encode(),
            "json": {"i": i}}


@pytest.fixture(scope="module")
def wds_dir(tmp_path_factory):
    import webdataset as wds

    root = tmp_path_factory.mktemp("wds")
    with wds.ShardWriter(str(root / "shard-%06d.tar"), maxcount=9, verbose=0) as sink:
        for i in range(40):
            sink.write(wds_sample(i))
    return str(root)


def test_webdataset_samples_members_and_fields(wds_dir):
    source = imports.open_source("wds", [wds_dir])
    assert [u.key for u in source.units] == [f"shard-{i:06d}.tar" for i in range(5)]
    fields = source.meta["import"]["fields"]
    assert fields == ["__key__", "cls", "jpg", "json"]
    got = [{k: bytes(v) for k, v in imports.split_fields(r, fields).items()} for r in source]
    expected = [wds_sample(i) for i in range(40)]
    assert [g["__key__"].decode() for g in got] == [e["__key__"] for e in expected]
    assert [g["jpg"] for g in got] == [e["jpg"] for e in expected]
    assert [json.loads(g["json"]) for g in got] == [e["json"] for e in expected]
    assert list(imports.open_source("wds", [wds_dir], field="cls")) == [e["cls"] for e in expected]
    members = list(imports.open_source("wds", [wds_dir], per_member=True))
    assert len(members) == 3 * 40 and members[1] == expected[0]["jpg"]


def test_webdataset_gzip_tar_into_s3(new_location, tmp_path):
    import webdataset as wds

    local = tmp_path / "gz"
    local.mkdir()
    with wds.TarWriter(str(local / "part.tar.gz"), compress=True) as sink:
        for i in range(25):
            sink.write({"__key__": f"k{i}", "txt": f"text {i}", "bin": np.arange(i + 1, dtype=np.uint8).tobytes()})
    dest = new_location("s3")
    src = upload(local, dest)
    source = imports.open_source("wds", [src], dest.storage_options, field="bin")
    records, meta = roundtrip(source, dest.url, dest.storage_options, tmp_path / "cache")
    assert records == [np.arange(i + 1, dtype=np.uint8).tobytes() for i in range(25)]
    assert meta["import"] == {"format": "wds", "field": "bin", "record": "bytes"}


def test_webdataset_hostile(wds_dir, tmp_path):
    path = tmp_path / "cut.tar"
    data = Path(wds_dir, "shard-000001.tar").read_bytes()
    path.write_bytes(data[:1000])
    with pytest.raises(SourceFormatError, match=r"cut\.tar: (truncated|not a readable tar file)"):
        list(imports.open_source("wds", [str(path)], field="jpg"))
    odd = tmp_path / "odd.tar"
    with tarfile.open(odd, "w") as tar:
        for name, body in (("a.jpg", b"1"), ("a.cls", b"2"), ("b.jpg", b"3")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    with pytest.raises(SourceFormatError, match=r"odd\.tar: sample 'b' has fields \['jpg'\], expected \['cls', 'jpg'\]"):
        list(imports.open_source("wds", [str(odd)]))
    with pytest.raises(SourceFormatError, match=r"odd\.tar: sample 'b' has no 'cls' member"):
        list(imports.open_source("wds", [str(odd)], field="cls"))
    with pytest.raises(SourceFormatError, match=r"member 'a\.jpg' has 1 bytes, more than max_member_bytes=0"):
        list(imports.open_source("wds", [str(odd)], per_member=True, max_member_bytes=0))


@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_tar_members_as_tarfile_reads_them(fmt, tmp_path):
    """Long names (ustar prefix, GNU long names, pax paths), directories and links: the
    members imported are the regular files tarfile itself extracts, in order."""
    names = ["p" * 120 + "/s0.jpg", "dir/sub/s1.txt", "é/s2.bin", "s3." + "y" * 150]
    path = tmp_path / "t.tar.gz"
    with tarfile.open(path, "w:gz", format=fmt) as tar:
        folder = tarfile.TarInfo("folder")
        folder.type = tarfile.DIRTYPE
        tar.addfile(folder)
        for i, name in enumerate(names):
            if fmt == tarfile.USTAR_FORMAT and i == 3:
                continue  # a 150-byte name without a '/' does not fit ustar
            info = tarfile.TarInfo(name)
            info.size = i * 700 + 3
            tar.addfile(info, io.BytesIO(bytes([i]) * info.size))
        link = tarfile.TarInfo("link")
        link.type = tarfile.SYMTYPE
        link.linkname = "x" * 90
        tar.addfile(link)
    with tarfile.open(path) as tar:
        expected = [tar.extractfile(m).read() for m in tar if m.isfile()]
    assert list(imports.open_source("wds", [str(path)], per_member=True)) == expected


def test_tar_headers_are_checked(tmp_path):
    good = io.BytesIO()
    with tarfile.open(fileobj=good, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        info = tarfile.TarInfo("a.bin")
        info.size = 600
        tar.addfile(info, io.BytesIO(b"z" * 600))
    data = bytearray(good.getvalue())
    bad = tmp_path / "sum.tar"
    data[0] ^= 1  # the name changes, the checksum does not
    bad.write_bytes(bytes(data))
    with pytest.raises(SourceFormatError, match=r"sum\.tar: header at offset 0: checksum \d+, the header's bytes"):
        list(imports.open_source("wds", [str(bad)], per_member=True))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(good.getvalue()[:900])
    with pytest.raises(SourceFormatError, match=r"cut\.tar: truncated: member 'a\.bin' needs 600 bytes"):
        list(imports.open_source("wds", [str(cut)], per_member=True))
    junk = tmp_path / "junk.tar"
    junk.write_bytes(b"not a tar at all " * 64)
    with pytest.raises(SourceFormatError, match=r"junk\.tar: header at offset 0: checksum"):
        list(imports.open_source("wds", [str(junk)], per_member=True))


# -- Parquet -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def parquet_file(tmp_path_factory):
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 100
    table = pa.table({
        "text": [f"row {i}" for i in range(n)],
        "blob": [bytes([i]) * (i % 4) for i in range(n)],
        "tokens": pa.array([list(range(i % 5 + 1)) for i in range(n)], pa.list_(pa.int32())),
        "vec": pa.array([[i, -i] for i in range(n)], pa.list_(pa.float32(), 2)),
        "score": [i / 3 for i in range(n)],
    })
    path = str(tmp_path_factory.mktemp("pq") / "data.parquet")
    pq.write_table(table, path, row_group_size=30)
    return path, table


def test_parquet_row_groups_columns_and_rows(parquet_file):
    import pyarrow as pa

    path, table = parquet_file
    rows = table.to_pylist()
    source = imports.open_source("parquet", path, field="text")
    assert [u.part for u in source.units] == [0, 1, 2, 3]
    assert list(source) == [r["text"].encode() for r in rows]
    assert list(imports.open_source("parquet", path, field="blob")) == [r["blob"] for r in rows]
    tokens = imports.open_source("parquet", path, field="tokens")
    assert tokens.meta["dtype"] == "<i4" and "shape" not in tokens.meta
    assert [r.tobytes() for r in tokens] == [np.array(r["tokens"], np.int32).tobytes() for r in rows]
    vec = imports.open_source("parquet", path, field="vec")
    assert vec.meta["shape"] == [2] and [r.tolist() for r in vec] == [r["vec"] for r in rows]
    arrow = list(imports.open_source("parquet", path, rows="arrow", batch_rows=7))
    assert [pa.ipc.open_stream(r).read_all().to_pylist()[0] for r in arrow] == rows
    with pytest.raises(SourceFormatError, match=r"column 'blob' is binary: binary cannot be JSON"):
        imports.open_source("parquet", path)


def test_parquet_json_rows_in_gcs_and_hostile(new_location, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    local = tmp_path / "pq"
    local.mkdir()
    table = pa.table({"a": list(range(20)), "s": [f"x{i}" for i in range(20)]})
    pq.write_table(table, str(local / "part-1.parquet"), row_group_size=8)
    pq.write_table(table, str(local / "part-2.parquet"), row_group_size=8)
    dest = new_location("gcs")
    src = upload(local, dest)
    source = imports.open_source("parquet", [src], dest.storage_options)
    assert len(source.units) == 6
    records, meta = roundtrip(source, dest.url, dest.storage_options, tmp_path / "cache")
    assert [json.loads(r) for r in records] == table.to_pylist() * 2 and meta["import"]["record"] == "json"
    cut = tmp_path / "cut.parquet"
    cut.write_bytes((local / "part-1.parquet").read_bytes()[:-100])
    with pytest.raises(SourceFormatError, match=r"cut\.parquet: not a readable Parquet file"):
        imports.open_source("parquet", str(cut))
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"b": [b"x", None]}), str(nulls))
    with pytest.raises(SourceFormatError, match=r"nulls\.parquet \(row group 0\).*row 1: column 'b' is null"):
        list(imports.open_source("parquet", str(nulls), field="b"))
    inner = tmp_path / "inner.parquet"
    pq.write_table(pa.table({"t": pa.array([[1, 2], [3, None]], pa.list_(pa.int32()))}), str(inner))
    with pytest.raises(SourceFormatError, match=r"row 1: column 't' holds a null inside its list"):
        list(imports.open_source("parquet", str(inner), field="t"))


# -- JSON lines, units, pack -----------------------------------------------------------------


def test_jsonl_field_and_errors(tmp_path):
    path = tmp_path / "a.jsonl"
    path.write_text('{"text": "héllo", "n": 1}\n\n{"text": {"nested": true}, "n": 2}\n')
    assert list(imports.open_source("jsonl", str(path), field="text")) == ["héllo".encode(), b'{"nested":true}']
    assert list(imports.open_source("jsonl", str(path))) == [
        b'{"text": "h\xc3\xa9llo", "n": 1}', b'{"text": {"nested": true}, "n": 2}']
    with pytest.raises(SourceFormatError, match=r"a\.jsonl:1: field 'missing' missing from the line"):
        list(imports.open_source("jsonl", str(path), field="missing"))
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"a": 1}\n{nope}\n')
    with pytest.raises(SourceFormatError, match=r"b\.jsonl:2: invalid JSON line"):
        list(imports.open_source("jsonl", str(bad)))


def test_jsonl_gzip_in_a_store(new_location, tmp_path):
    import gzip

    local = tmp_path / "lines"
    local.mkdir()
    lines = [json.dumps({"text": f"line {i}", "n": i}) for i in range(30)]
    (local / "a.jsonl.gz").write_bytes(gzip.compress("\n".join(lines[:20]).encode()))
    (local / "b.jsonl").write_text("\n".join(lines[20:]) + "\n")
    (local / "skip.txt").write_text("not listed")
    dest = new_location("gcs")
    src = upload(local, dest)
    source = imports.open_source("jsonl", [src], dest.storage_options, field="n")
    assert [u.key for u in source.units] == ["a.jsonl.gz", "b.jsonl"]
    assert list(source) == [str(i).encode() for i in range(30)]
    (local / "a.jsonl.gz").write_bytes(gzip.compress(b"\n".join(x.encode() for x in lines))[:-9])
    with pytest.raises(SourceFormatError, match=r"a\.jsonl\.gz: damaged gzip data after line \d+"):
        list(imports.open_source("jsonl", [str(local / "a.jsonl.gz")]))


def test_units_are_picklable_without_credentials(mds_dirs, new_location):
    dest = new_location("s3")
    src = upload(mds_dirs[0]["plain"], dest)
    options = {**dest.storage_options, "secret": "very-secret-value"}
    source = imports.open_source("mds", src, options, field="data")
    blob = pickle.dumps(source.units)
    assert b"very-secret-value" not in blob and "very-secret-value" not in repr(source)
    units = pickle.loads(blob)
    records = [r for unit in reversed(units) for r in imports.read_unit(unit, dest.storage_options)]
    expected = [s["data"] for s in mds_dirs[1]]
    per_unit = [list(imports.read_unit(u, dest.storage_options)) for u in units]
    assert records == [r for chunk in reversed(per_unit) for r in chunk]
    assert [r for chunk in per_unit for r in chunk] == expected


def test_pack_imports_from_the_command_line(mds_dirs, wds_dir, new_location, tmp_path, capsys):
    from roxxel.cli import main

    url = str(tmp_path / "from-mds")
    assert main(["pack", mds_dirs[0]["zstd"], url, "--format", "mds", "--field", "tokens", "--decode", "natural",
                 "--shard-bytes", "1KiB", "--quiet"]) == 0
    with roxxel.open(url, cache_dir=str(tmp_path / "c1")) as ds:
        assert [bytes(r) for r in ds] == [s["tokens"].tobytes() for s in mds_dirs[1]]
        assert ds.meta["dtype"] == "<i4" and ds.meta["import"]["field"] == "tokens" and len(ds.shards) > 1
    capsys.readouterr()
    s3 = new_location("s3")
    src = upload(wds_dir, s3)
    so = s3.storage_options
    flags = [f"--source-option={key}={json.dumps(value)}" for key, value in so.items() if key != "client_kwargs"]
    flags += [f"--source-option=client_kwargs.{k}={json.dumps(v)}" for k, v in so.get("client_kwargs", {}).items()]
    url = str(tmp_path / "from-wds")
    assert main(["pack", src, url, "--format", "wds", "--per-member", "--json", "--quiet", *flags]) == 0
    assert json.loads(capsys.readouterr().out)["records"] == 3 * 40
    with roxxel.open(url, cache_dir=str(tmp_path / "c2")) as ds:
        assert bytes(ds[1]) == wds_sample(0)["jpg"] and ds.meta["import"]["record"] == "member"
    with pytest.raises(ValueError, match=r"wds takes the options field, per_member, fields, max_member_bytes; not decode"):
        roxxel.ops.pack([wds_dir], str(tmp_path / "x"), format="wds", import_options={"decode": "natural"})
    with pytest.raises(ValueError, match=r"import_options are for the formats jsonl, mds"):
        roxxel.ops.pack([wds_dir], str(tmp_path / "x"), format="files", import_options={"field": "jpg"})


def test_json_nested_past_the_recursion_limit_is_a_source_format_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    path.write_bytes(b"[" * 5000 + b"\n")
    with pytest.raises(SourceFormatError, match=r"deep.jsonl:1: invalid JSON line"):
        list(imports.open_source("jsonl", [str(path)], field="x"))
