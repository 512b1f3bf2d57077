"""roxxel.ops.pack: files, JSON lines, .npy rows and old .rox shards become datasets."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from fsspec.callbacks import Callback

import roxxel
from roxxel import ops
from roxxel.errors import DatasetExistsError
from roxxel.manifest.io import dataset_store


def read_all(url, options, tmp_path) -> list[bytes]:
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options) as ds:
        return [bytes(r) for r in ds]


def test_files_become_records_in_sorted_walk_order(dataset_location, tmp_path):
    url, options = dataset_location
    root = tmp_path / "in"
    (root / "b").mkdir(parents=True)
    (root / "a.bin").write_bytes(b"first")
    (root / "b" / "z.bin").write_bytes(b"")
    (root / "b" / "c.bin").write_bytes(os.urandom(5000))
    (tmp_path / "extra.bin").write_bytes(b"last")
    progress = Callback()
    manifest = ops.pack([str(root), str(tmp_path / "extra.bin")], url, options,
                        shard_bytes=4096, compression="zstd", progress=progress)
    expected = [b"first", (root / "b" / "c.bin").read_bytes(), b"", b"last"]
    assert manifest.records == 4 and len(manifest.shards) == 3
    assert read_all(url, options, tmp_path) == expected
    assert progress.value == progress.size == sum(map(len, expected))


def test_jsonl_lines_become_records_and_blank_lines_are_skipped(tmp_path):
    src = tmp_path / "x.jsonl"
    src.write_bytes(b'{"a": 1}\n\n[1, 2]\r\n"text"')
    url = str(tmp_path / "ds")
    manifest = ops.pack([str(src)], url, format="jsonl")
    assert manifest.records == 3
    assert read_all(url, {}, tmp_path) == [b'{"a": 1}', b"[1, 2]", b'"text"']


def test_an_invalid_json_line_names_file_and_line_and_publishes_nothing(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text("\n".join(json.dumps({"i": i, "pad": "x" * 500}) for i in range(50)) + "\n")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"ok": true}\n{"ok": true}\n{oops}\n')
    url = str(tmp_path / "ds")
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON line"):
        ops.pack([str(good), str(bad)], url, format="jsonl", shard_bytes=2048)
    store = dataset_store(url)
    assert not store.exists("manifest.json")
    assert all(k.startswith("shards/") for k in (store.list() if os.path.isdir(url) else []))


def test_npy_rows_become_records_with_dtype_and_shape_in_meta(tmp_path):
    a = np.arange(24, dtype="<f4").reshape(4, 2, 3)
    b = np.arange(12, dtype="<f4").reshape(2, 2, 3) * -1
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    url = str(tmp_path / "ds")
    manifest = ops.pack([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], url, format="npy", meta={"name": "x"})
    assert manifest.meta == {"dtype": "<f4", "shape": [2, 3], "name": "x"}
    rows = [np.frombuffer(r, dtype=manifest.meta["dtype"]).reshape(manifest.meta["shape"])
            for r in read_all(url, {}, tmp_path)]
    assert np.array_equal(np.stack(rows), np.concatenate([a, b]))


def test_npy_structured_dtype_round_trips_through_meta(tmp_path):
    dtype = np.dtype([("id", "<i4"), ("xy", "<f8", (2,))])
    data = np.zeros(3, dtype=dtype)
    data["id"] = [1, 2, 3]
    np.save(tmp_path / "s.npy", data)
    url = str(tmp_path / "ds")
    manifest = ops.pack([str(tmp_path / "s.npy")], url, format="npy")
    restored = np.lib.format.descr_to_dtype(manifest.meta["dtype"])
    assert restored == dtype and manifest.meta["shape"] == []
    assert np.frombuffer(b"".join(read_all(url, {}, tmp_path)), dtype=restored)["id"].tolist() == [1, 2, 3]


def test_npy_arrays_of_different_rows_are_refused(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((2, 3), dtype=np.int16))
    np.save(tmp_path / "b.npy", np.zeros((2, 4), dtype=np.int16))
    with pytest.raises(ValueError, match=r"b\.npy: rows are int16 of shape \[4\], expected int16 of shape \[3\]"):
        ops.pack([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], str(tmp_path / "ds"), format="npy")


def test_old_rox_shards_are_imported_record_for_record(tmp_path):
    old = roxxel.Roxxel(str(tmp_path / "old" / "wiki.rox"))
    (tmp_path / "old").mkdir()
    recs = [os.urandom(n) for n in (10, 0, 300, 7, 90)]
    old.write(recs, max_shard_bytes=200)
    assert len(old.paths) > 1
    url = str(tmp_path / "ds")
    manifest = ops.pack([str(tmp_path / "old" / "wiki.rox")], url, format="rox")
    assert manifest.records == 5
    assert read_all(url, {}, tmp_path) == recs
    again = ops.pack([str(tmp_path / "old")], str(tmp_path / "ds2"), format="rox")  # a directory
    assert again.shards.checksums.tolist() == manifest.shards.checksums.tolist()


def test_pack_refuses_an_existing_dataset_unless_asked(tmp_path):
    (tmp_path / "f").write_bytes(b"x")
    url = str(tmp_path / "ds")
    ops.pack([str(tmp_path / "f")], url, meta={"v": 1})
    with pytest.raises(DatasetExistsError):
        ops.pack([str(tmp_path / "f")], url)
    appended = ops.pack([str(tmp_path / "f")], url, mode="append")
    assert appended.records == 2 and appended.meta == {"v": 1}


def test_missing_inputs_and_unknown_formats_are_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ops.pack([str(tmp_path / "nope")], str(tmp_path / "ds"))
    with pytest.raises(ValueError, match="format must be one of"):
        ops.pack([str(tmp_path)], str(tmp_path / "ds"), format="csv")
