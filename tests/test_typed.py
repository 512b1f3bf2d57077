"""Typed datasets (issue 18, part 1): the record type in meta, Writer(dtype=, shape=),
bulk extend, and typed zero-copy reads through ds.arrays, as_arrays, iter and the local API."""

from __future__ import annotations

import os
from itertools import pairwise

import numpy as np
import pytest

import roxxel
from roxxel.errors import ManifestError, ShardFormatError
from roxxel.manifest import Manifest
from roxxel.manifest.io import dataset_store, publish_manifest, read_manifest
from roxxel.manifest.record_type import RecordType


def open_ds(url, tmp_path, options=None):
    return roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options or {})


CASES = [  # dtype, shape, records
    ("float32", (768,), 40),
    ("<i2", (2, 3), 500),
    (">f8", (3,), 300),  # big-endian, as declared
    ("complex64", (4,), 400),
    ("bool", (5,), 900),
    ("uint8", (), 900),  # one value a record
]


def values(dtype: str, shape: tuple[int, ...], n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal((n, *shape)) * 100
    if np.dtype(dtype).kind == "c":
        raw = raw + 1j * raw[::-1]
    return raw.astype(dtype)


@pytest.mark.parametrize(("dtype", "shape", "n"), CASES, ids=[f"{d}{list(s)}" for d, s, _ in CASES])
def test_typed_round_trip(tmp_path, dtype, shape, n):
    url = str(tmp_path / "ds")
    x = values(dtype, shape, n)
    with roxxel.Writer(url, dtype=dtype, shape=shape, shard_bytes=4096) as w:
        w.extend(x[: n // 2])
        for row in x[n // 2 : n // 2 + 3]:
            w.append(row)
        w.extend(x[n // 2 + 3 :])
    assert w.manifest.meta == {"dtype": np.dtype(dtype).str, "shape": list(shape)}
    with open_ds(url, tmp_path) as ds:
        assert ds.num_shards > 1
        assert ds.record_type == RecordType(np.dtype(dtype), shape)
        a = ds.arrays
        assert len(a) == n
        for i in (0, 1, n // 2 + 1, n - 1, -1):
            got = a[i]
            assert got.dtype == np.dtype(dtype) and got.shape == shape
            assert np.array_equal(got, x[i])
        whole = a[:]
        assert whole.shape == (n, *shape) and np.array_equal(whole, x)
        picks = [n - 1, 0, 7, 7, n // 3]
        assert np.array_equal(a[picks], x[picks])
        assert np.array_equal(a[np.array(picks)], x[picks])
        assert np.array_equal(a[5:n:7], x[5:n:7])
        assert a[3:3].shape == (0, *shape)
        assert np.array_equal(np.stack(list(a)), x)
        assert bytes(ds[3]) == x[3].tobytes()  # ds[i] is the uint8 view it always was
        assert ds[3].dtype == np.uint8


def test_views_lie_in_the_shard_map_and_cross_shards_are_stacked(tmp_path):
    url = str(tmp_path / "ds")
    x = values("float32", (16,), 400)
    with roxxel.Writer(url, dtype="float32", shape=16, shard_bytes=8 * 1024) as w:
        w.extend(x)
    with open_ds(url, tmp_path) as ds:
        first = int(ds.shards.records[0])
        payload = ds.shard(0).payload
        one = ds.arrays[2]
        run = ds.arrays[1 : first - 1]  # inside shard 0
        assert np.shares_memory(one, payload) and np.shares_memory(run, payload)
        assert run.shape == (first - 2, 16) and not run.flags.writeable
        assert np.array_equal(run, x[1 : first - 1])
        across = ds.arrays[first - 3 : first + 3]  # shards 0 and 1: one stacked copy
        assert across.shape == (6, 16) and np.array_equal(across, x[first - 3 : first + 3])
        assert not np.shares_memory(across, payload)
        listed = ds.arrays[[first + 1, 2]]
        assert listed.shape == (2, 16) and not np.shares_memory(listed, payload)


def test_variable_length_records_are_1d_arrays_and_a_misfit_names_its_record(tmp_path):
    url = str(tmp_path / "ds")
    docs = [np.arange(k, dtype=np.int32) * 3 for k in (5, 0, 1, 17, 4)]
    with roxxel.Writer(url, dtype="int32") as w:
        w.extend(docs)
    with open_ds(url, tmp_path) as ds:
        assert ds.record_type == RecordType(np.dtype("int32"), None)
        for i, doc in enumerate(docs):
            assert ds.arrays[i].dtype == np.int32 and np.array_equal(ds.arrays[i], doc)
        assert [len(d) for d in ds.arrays[1:4]] == [0, 1, 17]
        batches = list(ds.arrays.iter(seed=0, shuffle=False, batch_size=2))
        assert [[len(d) for d in b] for b in batches] == [[5, 0], [1, 17], [4]]
    # Bytes that are no int32 records: the error names the record and its length.
    url2 = str(tmp_path / "raw")
    with roxxel.Writer(url2) as w:
        w.extend([b"\x01", np.arange(2, dtype="<i4").tobytes(), b"abcdef"])
    with open_ds(url2, tmp_path) as ds:
        tokens = ds.as_arrays("<i4")
        assert np.array_equal(tokens[1], [0, 1])  # at byte offset 1: an unaligned view reads right
        assert not tokens[1].flags.aligned or tokens[1].ctypes.data % 4 == 0
        with pytest.raises(ShardFormatError, match=r"record 2 has 6 bytes, expected a multiple of 4"):
            tokens[2]
        with pytest.raises(ShardFormatError, match=r"record 0 has 1 bytes"):
            tokens[[1, 0]]
        with pytest.raises(ShardFormatError, match=r"raw: record (0 has 1|2 has 6) bytes"):
            list(tokens.iter(seed=3))
        with pytest.raises(ShardFormatError, match=r"record 2 has 6 bytes, expected the 8 bytes of one int32 of shape"):
            ds.as_arrays("int32", 2)[1:3]


def test_writer_refuses_another_dtype_or_shape(tmp_path):
    url = str(tmp_path / "ds")
    with roxxel.Writer(url, dtype="float32", shape=(4,)) as w:
        with pytest.raises(ValueError, match=r"takes float32 of shape \(4,\) records, got an array of float64"):
            w.extend(np.zeros((3, 4)))
        with pytest.raises(ValueError, match=r"float32 of shape \(4,\) records, got .* of shape \(3, 5\)"):
            w.extend(np.zeros((3, 5), np.float32))
        with pytest.raises(ValueError, match=r"position 0 is int32 of shape \(4,\)"):
            w.append(np.zeros(4, np.int32))
        with pytest.raises(ValueError, match=r"position 0 has 12 bytes; float32 of shape \(4,\) records have 16"):
            w.append(b"x" * 12)
        w.append(np.ones(4, np.float32))
        w.append(b"y" * 16)
    assert len(read_manifest(dataset_store(url)).shards) == 1
    for dtype, shape, match in [("O", None, "plain number dtype"), ("U4", (2,), "plain number dtype"),
                                ("f4,i4", None, "plain number dtype"), ("f4", (0,), r"shape\[0\]"),
                                ("f4", (2, True), r"shape\[1\]")]:
        with pytest.raises(ValueError, match=match):
            roxxel.Writer(str(tmp_path / "no"), dtype=dtype, shape=shape)
    with pytest.raises(ValueError, match="needs a dtype"):
        roxxel.Writer(str(tmp_path / "no"), shape=(3,))
    with pytest.raises(ValueError, match=r"meta declares records of int16 .* dtype/shape say float32"):
        roxxel.Writer(str(tmp_path / "no"), dtype="float32", meta={"dtype": "int16"})


def test_append_keeps_the_dataset_type(tmp_path):
    url = str(tmp_path / "ds")
    x = values("int16", (3,), 50)
    with roxxel.Writer(url, dtype="int16", shape=3, meta={"tokenizer": "t"}) as w:
        w.extend(x[:20])
    with roxxel.Writer(url, mode="append") as w:  # adopts the declared type, and checks it
        with pytest.raises(ValueError, match="int16 of shape"):
            w.extend(np.zeros((2, 3), np.float32))
        w.extend(x[20:])
    assert w.manifest.meta == {"dtype": "<i2", "shape": [3], "tokenizer": "t"}
    with pytest.raises(ValueError, match=r"declares int16 of shape \(3,\).* this writer's records are float32"):
        roxxel.Writer(url, mode="append", dtype="float32", shape=3)
    with roxxel.Writer(str(tmp_path / "new"), mode="append", dtype="int16", shape=3) as w:  # creates it
        w.extend(x[:2])
    assert w.manifest.meta == {"dtype": "<i2", "shape": [3]}
    with open_ds(url, tmp_path) as ds:
        assert np.array_equal(ds.arrays[:], x)


def test_bulk_extend_packs_shards_exactly_as_appending(tmp_path):
    x = values("float32", (37,), 333)
    for name, write in (("bulk", lambda w: w.extend(x)), ("each", lambda w: [w.append(r) for r in x])):
        with roxxel.Writer(str(tmp_path / name), shard_bytes=5000) as w:
            write(w)
    bulk, each = (read_manifest(dataset_store(str(tmp_path / n))) for n in ("bulk", "each"))
    assert len(bulk.shards) > 10
    assert np.array_equal(bulk.shards.checksums, each.shards.checksums)
    w = roxxel.Writer(str(tmp_path / "obj"))
    with pytest.raises(TypeError, match="record at position 1 is of type NoneType"):
        w.extend(np.array([b"a", None], dtype=object))  # not numbers: records one by one
    w.abort()
    with roxxel.Writer(str(tmp_path / "text")) as w:  # str and bytes arrays: each element a record, as ever
        w.extend(np.array(["abc", "de"]))
        w.extend(np.array([b"x", b"yz"]))
    with roxxel.open(str(tmp_path / "text"), cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == [b"abc", b"de", b"x", b"yz"]


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"dtype": "object"}, r"meta\.dtype: expected a plain number dtype .*'\|O'"),
        ({"dtype": "O8"}, r"meta\.dtype"),
        ({"dtype": [["a", "<f4"], ["b", "|O"]]}, r"meta\.dtype: expected a NumPy dtype string .*\[\['a'"),
        ({"dtype": "f4,O"}, r"meta\.dtype"),
        ({"dtype": "(2,)f4"}, r"meta\.dtype"),
        ({"dtype": "datetime64[s]"}, r"meta\.dtype"),
        ({"dtype": "x" * 100}, r"meta\.dtype"),
        ({"dtype": "<f16"}, r"meta\.dtype: expected a dtype of one size on every platform .*, got '<f16'"),
        ({"dtype": "f4", "shape": [3, -1]}, r"meta\.shape\[1\]: expected a positive integer, got -1"),
        ({"dtype": "f4", "shape": [3, True]}, r"meta\.shape\[1\]: expected a positive integer, got True"),
        ({"dtype": "f4", "shape": "3"}, r"meta\.shape: expected a list of positive integers, got '3'"),
        ({"dtype": "f4", "shape": [1 << 30, 1 << 30]}, r"meta\.shape: expected a record of at most 2\*\*48"),
        ({"shape": [3]}, r"meta\.shape: is set, but meta\.dtype is not"),
    ],
)
def test_a_hostile_declaration_is_refused_naming_the_field(tmp_path, meta, match):
    url = str(tmp_path / "ds")
    with roxxel.Writer(url) as w:
        w.append(b"abcd")
    store = dataset_store(url)
    publish_manifest(store, read_manifest(store).with_meta(meta), replaces=None)
    with open_ds(url, tmp_path) as ds:
        assert bytes(ds[0]) == b"abcd"  # the uint8 records read as before
        with pytest.raises(ManifestError, match=rf"{os.path.basename(url)}/manifest.json: {match}"):
            _ = ds.arrays


@pytest.mark.parametrize("dtype", ["longdouble", "float128", "complex256", "clongdouble", "g", "<G", "f16", "long",
                                   "<l", "ulong", "int", "int_", "uint", "intp", ">p", "uintp", "N"])
def test_a_type_whose_size_depends_on_the_platform_is_refused(tmp_path, dtype):
    try:
        np.dtype(dtype)
    except TypeError:
        pytest.skip(f"{dtype!r} is no dtype on this platform")
    one_size = "expected a dtype of one size on every platform"
    with pytest.raises(ManifestError, match=rf"manifest m\.json: meta\.dtype: {one_size} .*, got '"):
        RecordType.from_meta({"dtype": dtype, "shape": [2]}, "m.json")
    with pytest.raises(ValueError, match=rf"^dtype: {one_size}"):
        roxxel.Writer(str(tmp_path / "no"), dtype=dtype, shape=2)
    if np.dtype(dtype).itemsize > {"f": 8, "c": 16}.get(np.dtype(dtype).kind, 8):  # the type itself, too
        with pytest.raises(ValueError, match=rf"^dtype: {one_size}"):
            RecordType.of(np.dtype(dtype).type)
    assert not os.path.exists(tmp_path / "no" / "manifest.json")


def test_sized_spellings_of_the_same_types_are_kept():
    for dtype in ("<i8", "int64", "uint64", "float64", "<c16", "complex128", "intc", "double", "q", "float16"):
        kind = RecordType.from_meta({"dtype": dtype}, "m.json")
        assert kind is not None and RecordType.of(dtype) == kind and kind.dtype.itemsize <= 16


def test_an_untyped_dataset_reads_as_before(tmp_path):
    url = str(tmp_path / "ds")
    with roxxel.Writer(url, meta={"source": "web"}) as w:
        w.extend([b"ab", b"cdef"])
    assert w.manifest.meta == {"source": "web"}
    with open_ds(url, tmp_path) as ds:
        assert ds.record_type is None
        assert ds[1].dtype == np.uint8 and bytes(ds[1]) == b"cdef"
        assert [bytes(r) for r in ds[0:2]] == [b"ab", b"cdef"]
        with pytest.raises(ValueError, match=r"declares no record dtype .*as_arrays"):
            _ = ds.arrays
        assert np.array_equal(ds.as_arrays("<u2")[1], np.frombuffer(b"cdef", "<u2"))


def rows(a: np.ndarray) -> list[bytes]:
    """The rows of ``a`` as a sorted list: a batch's records, whatever their order in it."""
    return sorted(r.tobytes() for r in a)


def test_typed_iteration_batches_and_resumes(tmp_path):
    url = str(tmp_path / "ds")
    x = values("float32", (8,), 300)
    with roxxel.Writer(url, dtype="float32", shape=8, shard_bytes=4096) as w:
        w.extend(x)
    with open_ds(url, tmp_path) as ds:
        assert ds.num_shards > 2
        order = np.concatenate(list(ds.iter(seed=5).plan.records()))
        records = list(ds.arrays.iter(seed=5))  # one at a time: the stream's own order
        assert all(r.shape == (8,) and r.dtype == np.float32 for r in records)
        assert np.array_equal(np.stack(records), x[order])
        it = ds.arrays.iter(seed=5, batch_size=64)
        assert len(it) == 5
        first = next(it)
        assert first.shape == (64, 8) and first.flags.writeable and not np.shares_memory(first, ds.shard(0).payload)
        assert rows(first) == rows(x[order[:64]])  # the stream's next 64 records, grouped by shard
        state = it.state()
        assert state["position"] == 64
        resumed = list(ds.arrays.resume(state, batch_size=100))
        assert [len(b) for b in resumed] == [100, 100, 36]
        assert rows(np.concatenate(resumed)) == rows(x[order[64:]])
        for b, lo in zip(resumed, (64, 164, 264)):
            assert rows(b) == rows(x[order[lo : lo + 100]])
        tail = list(it)
        assert [len(b) for b in tail] == [64, 64, 64, 44]
        assert it.position == 300 and len(it) == 0
        unshuffled = list(ds.arrays.iter(shuffle=False, batch_size=128))
        assert np.array_equal(np.concatenate(unshuffled), x)


def test_a_misfit_record_in_a_typed_batch_is_named(tmp_path):
    url = str(tmp_path / "ds")
    recs = [np.full(4, i, np.float32).tobytes() for i in range(40)]
    recs[17] = recs[17][:12]  # a record of three values among records of four
    with roxxel.Writer(url, shard_bytes=1024) as w:
        w.extend(recs)
    with open_ds(url, tmp_path) as ds:
        typed = ds.as_arrays("float32", 4)
        with pytest.raises(ShardFormatError, match=r"record 17 has 12 bytes, expected the 16 bytes"):
            list(typed.iter(seed=1, batch_size=8))
        with pytest.raises(ShardFormatError, match=r"record 17 has 12 bytes"):
            typed[10:20]
        assert np.array_equal(typed[:17], np.repeat(np.arange(17, dtype=np.float32), 4).reshape(17, 4))
        _, j = ds.locate(18)
        if j:  # records after the misfit are off the 16-byte grid of their shard, and still read right
            assert np.array_equal(typed[18:19], [[18, 18, 18, 18]])


def test_the_local_api_reads_typed_records(tmp_path):
    x = values("<f4", (6,), 100)
    path = str(tmp_path / "vec.rox")
    roxxel.Roxxel(path).write([row.tobytes() for row in x])
    local = roxxel.Roxxel(path)
    a = local.as_arrays("<f4", 6)
    assert np.array_equal(a[:], x) and np.shares_memory(a[10:20], local.shard(0).payload)
    assert np.array_equal(a[[3, 1]], x[[3, 1]]) and np.array_equal(a[-1], x[-1])
    local.close()


def test_a_typed_dataset_on_object_stores(dataset_location, tmp_path):
    url, options = dataset_location
    x = values("float32", (32,), 120)
    with roxxel.Writer(url, dtype="float32", shape=(32,), shard_bytes=4096, storage_options=options) as w:
        w.extend(x)
    with open_ds(url, tmp_path, options) as ds:
        assert ds.num_shards > 2
        assert np.array_equal(ds.arrays[:], x)
        assert np.shares_memory(ds.arrays[0:2], ds.shard(0).payload)
        order = np.concatenate(list(ds.iter(seed=1).plan.records()))
        batches = list(ds.arrays.iter(seed=1, batch_size=50))
        assert [rows(b) for b in batches] == [rows(x[order[lo : lo + 50]]) for lo in (0, 50, 100)]


def test_record_type_is_part_of_meta_so_version_1_readers_read_the_manifest(tmp_path):
    m = Manifest.build([], {**RecordType.of("float32", (2, 2)).to_meta(), "x": 1})
    assert Manifest.from_json(m.to_json()).meta == {"dtype": "<f4", "shape": [2, 2], "x": 1}


def test_the_torch_adapter_stacks_fixed_shape_records(tmp_path):
    torch = pytest.importorskip("torch")  # installed with the project: this runs
    from roxxel.torch import IterableRecords

    url = str(tmp_path / "ds")
    x = values(">f8", (3, 2), 100)  # big-endian on disk: torch gets native tensors
    with roxxel.Writer(url, dtype=">f8", shape=(3, 2), shard_bytes=2048) as w:
        w.extend(x)
    with open_ds(url, tmp_path) as ds:
        order = np.concatenate(list(ds.iter(seed=4).plan.records()))
        batches = list(torch.utils.data.DataLoader(IterableRecords(ds, batch_size=32, seed=4), batch_size=None))
    assert [tuple(b.shape) for b in batches] == [(32, 3, 2)] * 3 + [(4, 3, 2)]
    assert all(b.dtype == torch.float64 for b in batches)
    assert np.array_equal(torch.cat(batches).numpy(), x[order])

    docs = [np.arange(k, dtype=np.int32) for k in (3, 1, 4, 1, 5)]
    with roxxel.Writer(str(tmp_path / "tokens"), dtype="int32") as w:
        w.extend(docs)
    loader = IterableRecords(str(tmp_path / "tokens"), batch_size=5, shuffle=False, cache_dir=str(tmp_path / "c2"))
    (batch,) = list(loader)
    assert [t.dtype for t in batch] == [torch.int32] * 5
    assert [t.tolist() for t in batch] == [d.tolist() for d in docs]


def test_the_torch_adapter_reads_an_undeclarable_type_as_bytes(tmp_path, caplog):
    pytest.importorskip("torch")
    from roxxel.torch import IterableRecords

    url = str(tmp_path / "ds")
    with roxxel.Writer(url, meta={"dtype": [["a", "<f4"], ["b", "<i4"]], "shape": []}) as w:
        w.extend([b"12345678", b"abcdefgh"])  # as `roxxel pack --format npy` packs a structured array
    (batch,) = list(IterableRecords(url, batch_size=2, shuffle=False, cache_dir=str(tmp_path / "c")))
    assert [bytes(t.numpy()) for t in batch] == [b"12345678", b"abcdefgh"]
    assert "reading the records of" in caplog.text and "meta.dtype" in caplog.text


def test_pieces_read_records_off_their_shard_s_grid():
    from roxxel.read.typed import TypedRecords, _Batch, _Pieces

    payload = np.arange(64, dtype=np.uint8)
    typed = TypedRecords(None, RecordType.of("<u2", 2), "synthetic")  # records of 4 bytes
    begins = np.array([1, 9, 30, 1], dtype=np.int64)  # not multiples of 4: byte by byte
    batch = _Batch(typed, 3)
    first, rest = list(_Pieces([payload], np.zeros(4, np.int64), begins, begins + 4, typed, batch, str))
    expect = np.stack([payload[b : b + 4].view("<u2") for b in begins.tolist()])
    assert first.shape == (3, 2) and rest is None and batch.have == 1  # the next block finishes it
    assert np.array_equal(np.concatenate([first, batch.take()]), expect)
    for begin in (64, 62, -4):  # on the grid of its shard or off it, past its end or before its start
        with pytest.raises(IndexError, match=rf"record 1 of a block: bounds \[{begin}, {begin + 4}\) are outside "
                                             "its payload of 64 bytes"):
            list(_Pieces([payload], np.zeros(2, np.int64), np.array([0, begin]), np.array([4, begin + 4]), typed,
                         _Batch(typed, 3), str))
    with pytest.raises(ShardFormatError, match="synthetic: rec 0 has 3 bytes"):
        _Pieces([payload], np.zeros(1, np.int64), np.array([0]), np.array([3]), typed, batch, lambda j: f"rec {j}")


def test_what_roxxel_pack_writes_from_npy_reads_typed(tmp_path):
    from roxxel import ops

    x = values("<i2", (4, 2), 50)
    np.save(tmp_path / "a.npy", x[:30])
    np.save(tmp_path / "b.npy", x[30:])
    url = str(tmp_path / "packed")
    ops.pack([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], url, format="npy")
    with open_ds(url, tmp_path) as ds:
        assert ds.record_type == RecordType(np.dtype("<i2"), (4, 2))
        assert np.array_equal(ds.arrays[:], x)


def test_appending_to_a_dataset_whose_meta_declares_no_readable_type(tmp_path):
    url = str(tmp_path / "ds")
    with roxxel.Writer(url, meta={"dtype": [["a", "<f4"]], "shape": []}) as w:  # a structured npy pack
        w.append(b"abcd")
    with roxxel.Writer(url, mode="append") as w:
        w.append(b"efgh")
    assert w.manifest.records == 2
    with pytest.raises(ManifestError, match=r"meta\.dtype"):
        roxxel.Writer(url, mode="append", dtype="float32")


def test_bulk_extend_of_strided_rows_a_chunk_at_a_time(tmp_path, monkeypatch):
    import roxxel.writer

    monkeypatch.setattr(roxxel.writer, "_ROWS_BYTES", 1000)  # many chunks of a few rows
    x = values("float64", (20,), 300)[:, ::2]  # not contiguous: copied a chunk at a time
    with roxxel.Writer(str(tmp_path / "ds"), dtype="float64", shape=10, shard_bytes=3000) as w:
        w.extend(x)
        w.extend(x[:0])
    with roxxel.Writer(str(tmp_path / "empty")) as w2:
        w2.extend(np.zeros((5, 0), np.int8))  # five empty records
    with open_ds(str(tmp_path / "ds"), tmp_path) as ds:
        assert ds.num_shards > 5 and np.array_equal(ds.arrays[:], x)
    with open_ds(str(tmp_path / "empty"), tmp_path) as ds:
        assert [bytes(r) for r in ds[:]] == [b""] * 5


@pytest.mark.parametrize(("kwargs", "batch"), [
    ({"shuffle": False}, 1000), ({"seed": 3}, 256), ({"seed": 3}, 1000), ({"seed": 4, "window": 2}, 77),
    ({"seed": 5, "world_size": 3, "rank": 1}, 300), ({"seed": 6, "world_size": 2, "rank": 1, "shuffle": False}, 999),
])
def test_typed_batches_hold_the_plan_s_records_across_blocks_and_stages(tmp_path, kwargs, batch):
    n = 40_000  # past the stream's blocks of 16,384 records, in 10 shards
    ids = np.repeat(np.arange(n, dtype=np.int32), 2).reshape(n, 2)  # each record names itself
    url = str(tmp_path / "ds")
    with roxxel.Writer(url, dtype="int32", shape=2, shard_bytes=32_000) as w:
        w.extend(ids)
    with open_ds(url, tmp_path) as ds:
        plan = np.concatenate(list(ds.iter(**kwargs).plan.records()))
        shard_of = np.searchsorted(ds.record_starts, np.arange(n), side="right") - 1
        it = ds.arrays.iter(**kwargs, batch_size=batch)
        got = [next(it) for _ in range(3)]
        state = it.state()
        got += list(it)
        topology = {k: v for k, v in kwargs.items() if k in ("world_size", "rank")}
        resumed = list(ds.arrays.resume(state, batch_size=batch, **topology))
    assert ds.num_shards >= 10 and [len(b) for b in got] == [len(p) for p in np.array_split(plan, range(
        batch, len(plan), batch))]
    for lo, b in zip(range(0, len(plan), batch), got):
        want, seen = plan[lo : lo + batch], b[:, 0]
        assert b.dtype == np.int32 and np.array_equal(b[:, 1], seen)
        assert np.array_equal(np.sort(seen), np.sort(want))  # the plan's records exactly
        for k in np.unique(shard_of[want]):  # each shard's records in stream order
            assert np.array_equal(seen[shard_of[seen] == k], want[shard_of[want] == k])
        if kwargs.get("shuffle") is False:
            assert np.array_equal(seen, want)  # unshuffled: the stream's order itself
    assert all(np.array_equal(a, b) for a, b in zip(resumed, got[3:], strict=True))


@pytest.mark.parametrize(("width", "batch", "have"), [(3, 1, 0), (3, 7, 2), (300, 64, 0), (5, 256, 100)])
def test_a_block_s_batches_are_grouped_by_slot_in_stream_order(width, batch, have):
    from roxxel.read.typed import TypedRecords, _Batch, _Pieces

    typed = TypedRecords(None, RecordType.of("<i4", 2), "synthetic")  # records of 8 bytes
    rng = np.random.default_rng(width + batch)
    payloads = [rng.integers(0, 1 << 30, 2 * 50, dtype=np.int32).view(np.uint8) for _ in range(width)]
    n = 3000
    slots, local = rng.integers(0, width, n), rng.integers(0, 50, n)
    assembling = _Batch(typed, batch)
    if have:  # the batch a previous block began
        assembling.open()[:have] = -1
        assembling.have = have
    out = [b for b in _Pieces(payloads, slots, local * 8, local * 8 + 8, typed, assembling, str) if b is not None]
    if assembling.have:
        out.append(assembling.take())
    got = np.concatenate(out)[have:]
    cuts = [0, *range(batch - have, n, batch), n]
    want = []
    for lo, hi in pairwise(cuts):  # each batch's records, grouped by slot, in stream order in a group
        for j in sorted(range(lo, hi), key=lambda j: slots[j]):
            want.append(payloads[slots[j]].view(np.int32)[2 * local[j] : 2 * local[j] + 2])
    assert np.array_equal(got, np.stack(want)) and [len(b) for b in out][:-1] == [batch] * (len(out) - 1)
