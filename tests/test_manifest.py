"""Tests for the manifest schema: round trips, validation messages, columns, speed."""

from __future__ import annotations

import copy
import hashlib
import json
import pickle
import re
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roxxel.errors import ManifestError
from roxxel.manifest import Manifest, ShardInfo, ShardTable
from roxxel.manifest._json import MAX_MANIFEST_BYTES
from roxxel.manifest.checksums import CHECKSUM_ALGORITHMS
from roxxel.manifest.compressions import COMPRESSIONS
from roxxel.manifest.schema import FORMAT_NAME, FORMAT_VERSION

SOURCE = "s3://b/ds/manifest.json"
TOP_FIELDS = ("format", "version", "records", "meta", "shards")
PREFIX = f"manifest {SOURCE}: "


def base_doc(n: int = 3) -> dict[str, Any]:
    """A valid manifest document with ``n`` uncompressed shards of 10 records."""
    shards = [
        {
            "uri": f"shards/{i:06d}.rox",
            "records": 10,
            "stored_size": 1000,
            "raw_size": 1000,
            "compression": None,
            "checksum": f"sha256:{i:064x}",
        }
        for i in range(n)
    ]
    return {
        "format": FORMAT_NAME,
        "version": 1,
        "records": 10 * n,
        "meta": {"dtype": "uint16"},
        "shards": shards,
    }


def info(i: int = 0, **changes: Any) -> ShardInfo:
    fields = {
        "uri": f"shards/{i:06d}.rox",
        "records": 10,
        "stored_size": 1000,
        "raw_size": 1000,
        "compression": None,
        "checksum": f"sha256:{i:064x}",
    }
    return ShardInfo(**{**fields, **changes})


def reject(data: str | bytes, match: str) -> ManifestError:
    """Assert that from_json refuses ``data`` with a message naming the source."""
    with pytest.raises(ManifestError, match=match) as caught:
        Manifest.from_json(data, source=SOURCE)
    assert str(caught.value).startswith(PREFIX), str(caught.value)
    return caught.value


def put(*path_and_value: Any) -> Callable[[dict[str, Any]], None]:
    *path, value = path_and_value

    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def drop(*path: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        target: Any = doc
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


# ------------------------------------------------------------------ happy paths


def test_round_trip_of_a_small_manifest() -> None:
    doc = base_doc()
    m = Manifest.from_json(json.dumps(doc), source=SOURCE)
    assert m.records == 30
    assert len(m.shards) == 3
    assert m.meta == {"dtype": "uint16"}
    assert m.to_dict() == {**doc, "format": FORMAT_NAME, "version": FORMAT_VERSION}
    assert Manifest.from_json(m.to_json()) == m
    assert Manifest.from_dict(m.to_dict()) == m
    assert json.loads(m.to_json()) == m.to_dict()


def test_json_field_names_and_order_are_fixed() -> None:
    m = Manifest.build([info(0, compression="zstd", raw_size=400)], {"z": 1, "a": {"y": 2, "b": 3}})
    doc = json.loads(m.to_json())
    assert list(doc) == ["format", "version", "records", "meta", "shards"]
    shard_keys = ["uri", "records", "stored_size", "raw_size", "compression", "checksum"]
    assert list(doc["shards"][0]) == shard_keys
    assert list(doc["meta"]) == ["a", "z"] and list(doc["meta"]["a"]) == ["b", "y"]
    assert doc["shards"][0]["compression"] == "zstd"
    assert m.to_json().isascii() and " " not in m.to_json()


def test_to_json_and_fingerprint_do_not_depend_on_meta_key_order() -> None:
    a = Manifest.build([info(0)], {"b": [1, {"y": 1, "x": 2}], "a": "é"})
    b = Manifest.build([info(0)], {"a": "é", "b": [1, {"x": 2, "y": 1}]})
    assert a == b
    assert a.to_json() == b.to_json()
    assert a.fingerprint() == b.fingerprint()
    assert re.fullmatch(r"sha256:[0-9a-f]{64}", a.fingerprint())
    assert a.fingerprint() == "sha256:" + hashlib.sha256(a.to_json().encode()).hexdigest()


def test_meta_equality_is_json_exact() -> None:
    ones = [Manifest.build([], {"x": v}) for v in (1, 1.0, True)]
    assert ones[0] != ones[1] and ones[0] != ones[2] and ones[1] != ones[2]
    assert len({m.fingerprint() for m in ones}) == 3
    assert Manifest.build([info(0)]) != Manifest.build([info(1)])
    assert Manifest.build([]) != "manifest"


def test_meta_is_a_read_only_deep_copy() -> None:
    meta = {"shape": [2, 3], "tok": {"name": "gpt2"}}
    m = Manifest.build([info(0)], meta)
    meta["shape"].append(4)
    meta["tok"]["name"] = "changed"
    assert m.meta == {"shape": [2, 3], "tok": {"name": "gpt2"}}
    with pytest.raises(TypeError):
        m.meta["new"] = 1  # type: ignore[index]
    assert m.to_dict()["meta"] is not m.to_dict()["meta"]


def test_empty_manifest_round_trips() -> None:
    m = Manifest.build([])
    assert m.records == 0 and len(m.shards) == 0
    assert m.shards.record_starts.tolist() == [0]
    assert Manifest.from_json(m.to_json()) == m


def test_accepted_unusual_uris_and_compressed_sizes() -> None:
    uris = ["a", "shards/a:b.rox", "ünïcode/データ.rox", "a b/c d.rox", "..a/b.."]
    uris += [".hidden/x", "1abc:x", "x" * 1024]
    infos = [info(i, uri=uri) for i, uri in enumerate(uris)]
    infos.append(info(99, compression="zstd", stored_size=10, raw_size=1000))
    m = Manifest.build(infos)
    again = Manifest.from_json(m.to_json().encode("utf-8"))
    assert again == m and list(again.shards.uris) == uris + ["shards/000099.rox"]


def test_blake2b_checksums_are_allowed() -> None:
    m = Manifest.build([info(0, checksum="blake2b:" + "0f" * 64)])
    assert Manifest.from_json(m.to_json()).shards[0].checksum == "blake2b:" + "0f" * 64


def test_from_json_takes_bytes_like_but_not_other_types() -> None:
    text = json.dumps(base_doc())
    assert Manifest.from_json(bytearray(text.encode())) == Manifest.from_json(text)
    with pytest.raises(TypeError, match="str or bytes"):
        Manifest.from_json(123)  # type: ignore[arg-type]


def test_pickle_round_trip_keeps_columns_read_only() -> None:
    m = Manifest.build([info(0), info(1, compression="zstd", raw_size=700)], {"a": [1]})
    again = pickle.loads(pickle.dumps(m))
    assert again == m and again.meta == {"a": [1]}
    assert not again.shards.records.flags.writeable
    assert copy.deepcopy(m) == m


# ------------------------------------------------------------------- shard table


def test_table_columns_are_read_only_numpy_arrays() -> None:
    t = ShardTable.from_infos([info(0), info(1, records=5, compression="zstd", raw_size=300)])
    for name in ("records", "stored_size", "raw_size", "record_starts"):
        column = getattr(t, name)
        assert isinstance(column, np.ndarray) and column.dtype == np.int64
    assert isinstance(t.uris, np.ndarray) and isinstance(t.checksums, np.ndarray)
    assert isinstance(t.compression, np.ndarray) and t.compression.dtype.kind == "i"
    assert [COMPRESSIONS[c] for c in t.compression] == [None, "zstd"]
    assert t.raw_size.tolist() == [1000, 300]
    assert t.record_starts.tolist() == [0, 10, 15]
    for column in (t.uris, t.records, t.compression, t.checksums, t.record_starts):
        with pytest.raises(ValueError, match="read-only"):
            column[0] = column[1]


def test_table_copies_its_inputs() -> None:
    records = np.array([1, 2])
    t = ShardTable(
        uris=["a", "b"],
        records=records,
        stored_size=[40, 40],
        raw_size=[40, 40],
        compression=np.zeros(2, np.int8),
        checksums=[f"sha256:{0:064x}"] * 2,
    )
    records[0] = 100
    assert t.records.tolist() == [1, 2]


def test_table_indexing_and_iteration() -> None:
    infos = [info(i, records=i) for i in range(4)]
    t = ShardTable.from_infos(infos)
    assert len(t) == 4
    assert t[2] == infos[2] and t[-1] == infos[3] and t[np.int64(1)] == infos[1]
    assert list(t) == infos
    assert ShardTable.from_infos(t) == t
    with pytest.raises(IndexError, match="shard index 4 out of range for 4 shards"):
        t[4]
    with pytest.raises(IndexError):
        t[-5]


def test_locate_finds_the_shard_of_a_record_and_skips_empty_shards() -> None:
    t = ShardTable.from_infos([info(0, records=5), info(1, records=0), info(2, records=3)])
    assert t.total_records == 8
    expected = [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4), (2, 0), (2, 1), (2, 2)]
    assert [t.locate(i) for i in range(8)] == expected
    assert t.locate(-1) == (2, 2)
    with pytest.raises(IndexError, match="record index 8 out of range for 8 records"):
        t.locate(8)


def test_table_equality() -> None:
    a = ShardTable.from_infos([info(0), info(1)])
    assert a == ShardTable.from_infos([info(0), info(1)])
    assert a != ShardTable.from_infos([info(1), info(0)])
    assert a != ShardTable.from_infos([info(0), info(1, records=11)])
    assert a != ShardTable.from_infos([info(0)])
    assert a != object()
    with pytest.raises(TypeError):
        hash(a)


def test_concat_and_manifest_helpers() -> None:
    m = Manifest.build([info(0)], {"dtype": "uint8"})
    longer = m.extended([info(1), info(2)])
    assert [s.uri for s in longer.shards] == [info(i).uri for i in range(3)]
    assert longer.records == 30 and longer.meta == m.meta
    assert m.records == 10  # unchanged
    assert longer.extended(ShardTable.from_infos([info(3)])).records == 40
    assert m.with_shards([info(5)]).shards == ShardTable.from_infos([info(5)])
    assert m.with_meta({"x": 1}).meta == {"x": 1}
    assert ShardTable.concat([]) == ShardTable.from_infos([])
    with pytest.raises(ManifestError, match=r"shards\[1\]\.uri: expected a unique path"):
        m.extended([info(0)])


def test_table_from_columns_with_names_or_codes() -> None:
    by_codes = ShardTable(
        uris=np.array(["a", "b"]),
        records=np.array([1, 2], dtype=np.uint32),
        stored_size=[40, 48],
        raw_size=[40, 480],
        compression=np.array([0, 1]),
        checksums=np.array([f"sha256:{0:064x}", f"sha256:{1:064x}"]),
    )
    by_names = ShardTable(
        uris=["a", "b"],
        records=[1, 2],
        stored_size=[40, 48],
        raw_size=[40, 480],
        compression=[None, "zstd"],
        checksums=[f"sha256:{0:064x}", f"sha256:{1:064x}"],
    )
    assert by_codes == by_names
    assert repr(by_codes) == "ShardTable(<2 shards, 3 records>)"


# ------------------------------------------------------ construction validation


def test_shard_info_validates_and_normalizes() -> None:
    assert type(info(0, records=np.int64(5)).records) is int
    assert type(info(0, uri=np.str_("a/b")).uri) is str
    cases = [
        ({"records": True}, r"^manifest: shard\.records: expected a non-negative integer, got Tr"),
        ({"uri": "../x"}, r"shard\.uri: expected a path without '\.' or '\.\.' segments"),
        ({"raw_size": 1001}, r"shard\.raw_size: expected 1000 \(equal to stored_size"),
        ({"compression": "gzip"}, r"shard\.compression: expected null or 'zstd', got 'gzip'"),
        (
            {"records": 123},
            r"shard\.records: expected at most 122 records in a shard of raw_size 1000 "
            r"\(8 bytes of index per record \+ 24\), got 123",
        ),
    ]
    for changes, match in cases:
        with pytest.raises(ManifestError, match=match):
            info(0, **changes)


def columns(**changes: Any) -> dict[str, Any]:
    cols: dict[str, Any] = {
        "uris": ["a", "b"],
        "records": [1, 2],
        "stored_size": [40, 48],
        "raw_size": [40, 48],
        "compression": [None, None],
        "checksums": [f"sha256:{0:064x}"] * 2,
    }
    return {**cols, **changes}


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"records": [1]}, r"shards: expected columns of equal length"),
        (
            {"records": np.array([True, False])},
            r"shards\[0\]\.records: expected a non-negative integer, got True",
        ),
        (
            {"records": np.array([1.0, 2.0])},
            r"shards\[0\]\.records: expected a non-negative integer, got 1\.0",
        ),
        ({"records": np.array([1, -2])}, r"shards\[1\]\.records: expected a non-negative integer"),
        (
            {"records": np.array([2**63 - 1, 0], dtype=np.uint64)},
            r"shards\[0\]\.records: expected an integer at most 2\*\*62",
        ),
        (
            {"records": [2**62, 2**62]},
            r"shards: expected at most 2\*\*62 records in total, got 9223372036854775808",
        ),
        (
            {"compression": np.array([0, 5])},
            r"shards\[1\]\.compression: expected a compression code below 2, got 5",
        ),
        ({"compression": [0, 1]}, r"shards\[0\]\.compression: expected null or 'zstd', got 0"),
        (
            {"uris": ["a", "a"]},
            r"shards\[1\]\.uri: expected a unique path, got 'a' again "
            r"\(first at shards\[0\]\.uri\)",
        ),
        ({"uris": ["a", 3]}, r"shards\[1\]\.uri: expected a relative path string, got 3"),
        (
            {"checksums": ["sha256:x", "y"]},
            r"shards\[0\]\.checksum: expected 64 hex digits after 'sha256:', got 1",
        ),
    ],
)
def test_table_constructor_validates(changes: dict[str, Any], match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        ShardTable(**columns(**changes))


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"x": float("nan")}, r"meta\.x: expected a finite number, got nan"),
        ({"x": [1, float("-inf")]}, r"meta\.x\[1\]: expected a finite number, got -inf"),
        (
            {"s": {1, 2}},
            r"meta\.s: expected a JSON value \(null, bool, number, string, array, object\), "
            r"got \{1, 2\}",
        ),
        ({"n": np.int64(3)}, r"meta\.n: expected a JSON value"),
        ({"a b": {1: "x"}}, r"""meta\['a b'\]: expected an object with string keys, got 1"""),
        ({"big": 2**64}, r"meta\.big: expected an integer that fits in 64 bits, got 1844674"),
        ([1], r"^manifest: meta: expected an object, got \[1\]$"),
    ],
)
def test_manifest_constructor_validates_meta(meta: Any, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        Manifest.build([info(0)], meta)


def test_meta_nesting_limit_applies_when_building() -> None:
    cyclic: dict[str, Any] = {}
    cyclic["a"] = cyclic
    match = r"meta(\.a)+: expected at most 64 levels of nesting, got more"
    with pytest.raises(ManifestError, match=match):
        Manifest.build([], cyclic)


def test_manifest_needs_a_shard_table() -> None:
    with pytest.raises(TypeError, match="ShardTable"):
        Manifest([info(0)])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="ShardInfo objects"):
        ShardTable.from_infos([{"uri": "a"}])  # type: ignore[list-item]


# -------------------------------------------------------- from_json: documents

URI_CASES = [
    ("", r"expected a non-empty relative path, got ''"),
    ("x" * 1025, r"expected a path of at most 1024 characters, got 1025 characters: 'xxx"),
    ("/abs/x.rox", r"expected a path relative to the manifest, not an absolute one, got '/abs"),
    ("s3://b/x", r"expected a path relative to the manifest, not a URL with a scheme, got 's3:"),
    ("file:x.rox", r"expected a path relative to the manifest, not a URL with a scheme, got "),
    ("C:/x.rox", r"expected a path relative to the manifest, not a URL with a scheme, got "),
    ("git+ssh:x", r"expected a path relative to the manifest, not a URL with a scheme, got "),
    ("a/../b.rox", r"expected a path without '\.' or '\.\.' segments, got 'a/\.\./b\.rox'"),
    ("..", r"expected a path without '\.' or '\.\.' segments, got "),
    ("./a", r"expected a path without '\.' or '\.\.' segments, got "),
    ("a/.", r"expected a path without '\.' or '\.\.' segments, got "),
    ("a//b", r"expected a path without empty segments \('//' or a trailing '/'\), got 'a//b'"),
    ("a/", r"expected a path without empty segments"),
    ("a/b::c", r"expected a path without '::' \(fsspec URL chaining\), got 'a/b::c'"),
    ("a\\b", r"expected a path without backslashes, got 'a\\\\b'"),
    ("a\x00b", r"expected a path without control characters, got 'a\\x00b'"),
    ("a\nb", r"expected a path without control characters, got "),
    ("a\x7fb", r"expected a path without control characters, got "),
    ("a\x85b", r"expected a path without control characters, got "),
    ("a\ud800b", r"expected a path without unpaired surrogates"),
    (3, r"expected a relative path string, got 3"),
    (None, r"expected a relative path string, got None"),
    (["a"], r"expected a relative path string, got \['a'\]"),
]

CHECKSUM_CASES = [
    ("abc", r"expected a checksum like 'blake3:<64 hex digits>', got 'abc'"),
    (3, r"expected a checksum like 'blake3:<64 hex digits>', got 3"),
    ("md5:" + "0" * 32, r"expected a checksum algorithm among blake2b, blake3, sha256, got 'md5:0+'"),
    ("SHA256:" + "0" * 64, r"expected a checksum algorithm among blake2b, blake3, sha256"),
    ("BLAKE3:" + "0" * 64, r"expected a checksum algorithm among blake2b, blake3, sha256"),
    ("blake3:" + "0" * 128, r"expected 64 hex digits after 'blake3:', got 128"),
    ("blake3:" + "F" * 64, r"expected lowercase hex digits \[0-9a-f\], got 'blake3:F+'"),
    ("sha256:" + "0" * 63, r"expected 64 hex digits after 'sha256:', got 63: 'sha256:0+'"),
    ("sha256:" + "0" * 65, r"expected 64 hex digits after 'sha256:', got 65"),
    ("blake2b:" + "0" * 64, r"expected 128 hex digits after 'blake2b:', got 64"),
    ("sha256:" + "A" * 64, r"expected lowercase hex digits \[0-9a-f\], got 'sha256:A+'"),
    ("sha256:" + "g" * 64, r"expected lowercase hex digits \[0-9a-f\]"),
    ("sha256:" + "٣" * 64, r"expected lowercase hex digits \[0-9a-f\]"),
]

BAD_COUNTS = [
    (True, "True"),
    (False, "False"),
    (10.0, r"10\.0"),
    ("10", "'10'"),
    (None, "None"),
    ([10], r"\[10\]"),
    (-5, "-5"),
]

def doc_cases() -> list[Any]:
    """(mutation of base_doc(), expected message) for every rule from_json enforces."""
    unsupported = r"version: unsupported version {}; this roxxel reads version 1"
    deep = json.loads("[" * 100 + "]" * 100)
    cases = [
        (put("extra", 1), r"extra: unknown field \(expected format, version, records, meta, sh"),
        (put("a b", 1), r"\['a b'\]: unknown field"),
        (put("format", "roxx"), r"format: expected 'roxxel\.manifest', got 'roxx'"),
        (put("format", 1), r"format: expected 'roxxel\.manifest', got 1"),
        (put("version", 2), unsupported.format(2)),
        (put("version", 0), unsupported.format(0)),
        (put("version", "1"), r"version: expected an integer, got '1'"),
        (put("version", True), r"version: expected an integer, got True"),
        (put("version", 1.0), r"version: expected an integer, got 1\.0"),
        (put("records", 2**62 + 1), r"records: expected an integer at most 2\*\*62, got 46116860"),
        (put("records", 31), r"records: expected 30 \(the sum of shards\[\*\]\.records\), got 31"),
        (put("shards", {"a": 1}), r"shards: expected an array of shard objects, got \{'a': 1\}"),
        (put("shards", 1, []), r"shards\[1\]: expected an object, got \[\]"),
        (put("shards", 1, "extra", 1), r"shards\[1\]\.extra: unknown field \(expected uri, rec"),
        (drop("shards", 2, "checksum"), r"shards\[2\]\.checksum: missing required field"),
        (
            put("shards", 1, "raw_size", 1001),
            r"shards\[1\]\.raw_size: expected 1000 \(equal to stored_size, "
            r"as compression is null\), got 1001",
        ),
        (
            put("shards", 2, "uri", "shards/000000.rox"),
            r"shards\[2\]\.uri: expected a unique path, got 'shards/000000\.rox' again "
            r"\(first at shards\[0\]\.uri\)",
        ),
        (put("meta", []), r"meta: expected an object, got \[\]"),
        (put("meta", "x"), r"meta: expected an object, got 'x'"),
        (put("meta", None), r"meta: expected an object, got None"),
        (put("meta", "big", 2**64), r"meta\.big: expected an integer that fits in 64 bits"),
        # Nesting outside meta is never legal, so the schema refuses it as it is.
        (put("shards", 0, "uri", deep), r"shards\[0\]\.uri: expected a relative path string"),
        (put("deep", deep), r"deep: unknown field"),
    ]
    cases += [(drop(name), rf"{name}: missing required field") for name in TOP_FIELDS]
    for value, shown in BAD_COUNTS:
        expected = rf"expected a non-negative integer, got {shown}$"
        cases.append((put("records", value), rf"records: {expected}"))
        for name in ("records", "stored_size", "raw_size"):
            cases.append((put("shards", 1, name, value), rf"shards\[1\]\.{name}: {expected}"))
    for name in ("records", "stored_size", "raw_size"):
        expected = rf"shards\[1\]\.{name}: expected an integer at most 2\*\*62"
        cases.append((put("shards", 1, name, 2**62 + 1), expected))
    for value in ("gzip", "ZSTD", "", 1, 0, True, [], {}):
        expected = rf"expected null or 'zstd', got {re.escape(repr(value))}$"
        expected = rf"shards\[1\]\.compression: {expected}"
        cases.append((put("shards", 1, "compression", value), expected))
    for value, match in URI_CASES:
        cases.append((put("shards", 1, "uri", value), rf"shards\[1\]\.uri: {match}"))
    for value, match in CHECKSUM_CASES:
        cases.append((put("shards", 1, "checksum", value), rf"shards\[1\]\.checksum: {match}"))
    return [pytest.param(mutate, match, id=match[:60]) for mutate, match in cases]


@pytest.mark.parametrize(("mutate", "match"), doc_cases())
def test_from_json_rejects_invalid_documents(
    mutate: Callable[[dict[str, Any]], None], match: str
) -> None:
    doc = base_doc()
    mutate(doc)
    error = reject(json.dumps(doc), PREFIX + match)
    assert len(str(error)) < 300  # values are shown truncated
    with pytest.raises(ManifestError, match=match):
        Manifest.from_dict(doc)


# ------------------------------------------------------------ from_json: text


def test_rejects_oversized_input_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def must_not_parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("parsed an oversized manifest")

    monkeypatch.setattr(json, "loads", must_not_parse)
    limit = r"expected at most 67108864 bytes \(MAX_MANIFEST_BYTES\), got "
    reject(b" " * (MAX_MANIFEST_BYTES + 1), limit + "67108865 bytes$")
    reject(" " * (MAX_MANIFEST_BYTES + 1), limit + "67108865 characters$")
    reject("é" * (MAX_MANIFEST_BYTES // 2 + 1), limit + "67108866 bytes$")


def test_rejects_text_that_is_not_utf8() -> None:
    reject(b'{"format": "\xff"}', r"expected UTF-8 text, got an invalid byte at offset 12$")
    reject('{"format": "\ud800"}', r"expected UTF-8 text, got an unencodable character at 12$")


@pytest.mark.parametrize("text", ["", "{", "{'a': 1}", "[1,]", '{"a":1} x', "\ufeff{}", "9" * 5000])
def test_rejects_text_that_is_not_json(text: str) -> None:
    reject(text, r"expected a JSON document, got invalid JSON: ")


def test_rejects_a_utf8_byte_order_mark() -> None:
    text = b"\xef\xbb\xbf" + json.dumps(base_doc()).encode()
    reject(text, r"got invalid JSON: Unexpected UTF-8 BOM")


@pytest.mark.parametrize(
    ("text", "shown"), [("[]", r"\[\]"), ("1", "1"), ("null", "None"), ('"x"', "'x'")]
)
def test_rejects_a_top_level_that_is_not_an_object(text: str, shown: str) -> None:
    reject(text, rf"expected a JSON object at the top level, got {shown}$")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ('"version": 1', '"version": 1, "version": 1'),
        ('"records": 10, "stored_size"', '"records": 10, "records": 10, "stored_size"'),
        ('"meta": {"dtype": "uint16"}', '"meta": {"a": {"b": [{"c": 1, "c": 2}]}}'),
    ],
)
def test_rejects_duplicate_keys_at_any_depth(old: str, new: str) -> None:
    text = json.dumps(base_doc())
    assert old in text
    reject(text.replace(old, new, 1), r"expected unique keys in every object, got '[a-z]+' twice$")


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999", "-1e999"])
@pytest.mark.parametrize("where", ["meta", "records"])
def test_rejects_non_finite_numbers(token: str, where: str) -> None:
    text = json.dumps(base_doc())
    old = '"meta": {"dtype": "uint16"}' if where == "meta" else '"records": 30'
    new = f'"meta": {{"x": [{token}]}}' if where == "meta" else f'"records": {token}'
    overflows = token.endswith("e999")
    shown = re.escape(f"'{token}', which overflows a float" if overflows else token)
    reject(text.replace(old, new), rf"expected finite numbers, got {shown}$")


def nested_meta(levels: int, kind: str) -> str:
    """A document whose meta is ``levels`` containers deep, so the document is ``levels + 1``."""
    if kind == "object":
        meta = '{"a":' * (levels - 1) + "{}" + "}" * (levels - 1)
    else:
        meta = '{"a":' + "[" * (levels - 1) + "]" * (levels - 1) + "}"
    return json.dumps(base_doc()).replace('{"dtype": "uint16"}', meta)


def test_nesting_up_to_64_levels_is_accepted() -> None:
    for kind in ("object", "array"):
        m = Manifest.from_json(nested_meta(63, kind))
        assert Manifest.from_json(m.to_json()) == m
        too_deep = r"meta\.a(\.a|\[0\])*: expected at most 64 levels of nesting, got more$"
        reject(nested_meta(64, kind), too_deep)


def test_rejects_nesting_too_deep_for_the_parser() -> None:
    too_deep = r"expected at most 64 levels of nesting, got too many to parse$"
    reject(nested_meta(100_000, "array"), too_deep)


def test_messages_without_source_and_with_secrets_in_the_source() -> None:
    no_source = r"^manifest: expected a JSON object at the top level, got \[\]$"
    with pytest.raises(ManifestError, match=no_source):
        Manifest.from_json("[]")
    url = "https://user:secret@host/ds/manifest.json?X-Amz-Signature=abc123"
    with pytest.raises(ManifestError) as caught:
        Manifest.from_json("[]", source=url)
    message = str(caught.value)
    assert message.startswith("manifest https://***@host/ds/manifest.json?***: ")
    assert "secret" not in message and "abc123" not in message


# -------------------------------------------------------------- property tests

SEGMENTS = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="/\\:"),
    min_size=1,
    max_size=8,
).filter(lambda s: s not in (".", ".."))
URIS = st.lists(SEGMENTS, min_size=1, max_size=4).map("/".join)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def shard_infos(draw: st.DrawFn, uri: str) -> ShardInfo:
    compression = draw(st.sampled_from(COMPRESSIONS))
    stored_size = draw(st.integers(24, 2**40))
    raw_size = stored_size if compression is None else draw(st.integers(24, 2**40))
    algorithm = draw(st.sampled_from(sorted(CHECKSUM_ALGORITHMS)))
    size = CHECKSUM_ALGORITHMS[algorithm] // 2
    digest = draw(st.binary(min_size=size, max_size=size)).hex()
    return ShardInfo(
        uri=uri,
        records=draw(st.integers(0, (raw_size - 24) // 8)),  # room for its offsets and footer
        stored_size=stored_size,
        raw_size=raw_size,
        compression=compression,
        checksum=f"{algorithm}:{digest}",
    )


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    uris = draw(st.lists(URIS, unique=True, max_size=12))
    shards = [draw(shard_infos(uri)) for uri in uris]
    meta = draw(st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=5))
    return Manifest.build(shards, meta)


@settings(max_examples=150, deadline=None)
@given(manifests())
def test_json_round_trip(m: Manifest) -> None:
    text = m.to_json()
    again = Manifest.from_json(text)
    assert again == m
    assert again.to_json() == text
    assert again.fingerprint() == m.fingerprint()
    assert Manifest.from_dict(m.to_dict()) == m
    assert list(again.shards) == list(m.shards)


WEIRD_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    st.text(max_size=6),
    st.sampled_from(["", "/abs", "a/../b", "s3://x", "zstd", "gzip", "sha256:" + "0" * 64]),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
)


def container_paths(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Paths of every container in ``value``, including the root ``()``."""
    paths = [path]
    if isinstance(value, dict):
        items: Any = value.items()
    else:
        items = enumerate(value) if isinstance(value, list) else []
    for key, item in items:
        if isinstance(item, (dict, list)):
            paths.extend(container_paths(item, (*path, key)))
    return paths


def mutate_document(doc: dict[str, Any], data: st.DataObject) -> None:
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(container_paths(doc)))
        target: Any = doc
        for key in path:
            target = target[key]
        keys = list(target) if isinstance(target, dict) else list(range(len(target)))
        op = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if op == "add" or not keys:
            if isinstance(target, dict):
                key = data.draw(st.sampled_from([*keys, "extra", "uri"]))
                target[key] = data.draw(WEIRD_VALUES)
            else:
                target.append(data.draw(WEIRD_VALUES))
        elif op == "delete":
            del target[data.draw(st.sampled_from(keys))]
        else:
            target[data.draw(st.sampled_from(keys))] = data.draw(WEIRD_VALUES)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.data())
def test_mutated_documents_give_a_manifest_or_manifest_error(
    m: Manifest, data: st.DataObject
) -> None:
    doc = m.to_dict()
    mutate_document(doc, data)
    try:
        Manifest.from_json(json.dumps(doc, allow_nan=True))
    except ManifestError:
        pass
    try:
        Manifest.from_dict(doc)
    except ManifestError:
        pass


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(manifests(), st.data())
def test_corrupted_bytes_give_a_manifest_or_manifest_error(
    m: Manifest, data: st.DataObject
) -> None:
    raw = bytearray(m.to_json().encode())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(raw)))
        action = data.draw(st.sampled_from(["set", "insert", "truncate"]))
        special = st.sampled_from([*b'{}[]",:\\0-.eE9', 0, 0xFF, 0xC3, 0x7F])
        byte = data.draw(special | st.integers(0, 255))
        if action == "truncate":
            del raw[position:]
        elif action == "insert" or position == len(raw):
            raw.insert(position, byte)
        else:
            raw[position] = byte
    try:
        Manifest.from_json(bytes(raw))
    except ManifestError:
        pass


# ------------------------------------------------------------------------ speed


def test_100k_shards_build_and_parse_fast() -> None:
    n = 100_000
    started = time.perf_counter()
    table = ShardTable(
        uris=[f"shards/{i:06d}.rox" for i in range(n)],
        records=np.full(n, 1000),
        stored_size=np.full(n, 1 << 26),
        raw_size=np.full(n, 1 << 27),
        compression=np.ones(n, dtype=np.int8),
        checksums=[f"sha256:{i:064x}" for i in range(n)],
    )
    m = Manifest(table, {"dtype": "uint16", "shape": [-1]})
    build_seconds = time.perf_counter() - started
    text = m.to_json()

    started = time.perf_counter()
    again = Manifest.from_json(text, source=SOURCE)
    parse_seconds = time.perf_counter() - started

    assert build_seconds < 2.0, build_seconds
    assert parse_seconds < 2.0, parse_seconds
    assert again == m and again.records == n * 1000
    columns = ("uris", "records", "stored_size", "raw_size", "compression", "checksums")
    for name in (*columns, "record_starts"):
        assert isinstance(getattr(again.shards, name), np.ndarray)
    assert again.shards.locate(n * 1000 - 1) == (n - 1, 999)
