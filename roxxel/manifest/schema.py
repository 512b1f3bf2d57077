"""The manifest schema: frozen dataclasses, canonical JSON, and validation.

A dataset is described by one JSON document at ``<dataset url>/manifest.json``::

    {"format": "roxxel.manifest", "version": 1, "records": 20,
     "meta": {"dtype": "uint16"},
     "shards": [{"uri": "shards/000000.rox", "records": 10, "stored_size": 1234,
                 "raw_size": 1234, "compression": null,
                 "checksum": "blake3:<64 lowercase hex digits>"}, ...]}

Two keys of ``meta`` are reserved: ``dtype`` and ``shape`` declare the type of the
records (see :mod:`roxxel.manifest.record_type`, which validates them when a reader asks
for typed records); the rest of ``meta`` is the user's.

Per-shard metadata is held in NumPy columns (:class:`ShardTable`), never one Python
object per shard, so a manifest of 100,000+ shards opens fast and stays small.

Every manifest read here is treated as hostile. Parsing (:mod:`._json`) and the field
checks (:mod:`._fields`) raise :class:`~roxxel.errors.ManifestError` naming the
manifest's URL (secrets redacted), the field path (``shards[3].checksum``), what was expected and what was found. Constructing
:class:`ShardInfo`, :class:`ShardTable` or :class:`Manifest` directly runs the same
checks, so every instance of these classes is valid.

This module does no I/O; fetching and publishing manifests live elsewhere.
"""

from __future__ import annotations

import json
import operator
from json.encoder import encode_basestring_ascii  # what json.dumps quotes strings with
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from hashlib import sha256
from itertools import chain, repeat
from operator import itemgetter
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..format.layout import max_records
from ._fields import (
    COLUMNS,
    MAX_COUNT,
    OPTIONAL_SHARD_FIELDS,
    SHARD_FIELDS,
    TOP_FIELDS,
    check_checksum,
    check_compression,
    check_count,
    check_entries,
    check_fields,
    check_head,
    check_parts,
    check_room,
    check_sizes,
    check_uri,
    checksum_column,
    compression_column,
    copy_meta,
    count_column,
    head_column,
    parts_column,
    meta_json,
    readonly,
    string_column,
    uri_column,
)
from ._json import parse_json
from ._report import error, expected, reporting_source, row, show
from .compressions import COMPRESSIONS

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "Manifest", "ShardInfo", "ShardTable"]

FORMAT_NAME = "roxxel.manifest"
FORMAT_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """One shard's entry in a manifest. Construction validates every field.

    ``uri`` is relative to the manifest; ``stored_size`` counts the bytes in the store,
    ``raw_size`` the bytes after decompression; ``checksum`` (``"blake3:<hex>"``, or
    another of :data:`~roxxel.manifest.checksums.CHECKSUM_ALGORITHMS`) covers the stored bytes.
    ``head``, optional, vouches for the first bytes and the record index of an
    uncompressed shard on their own (see :mod:`~roxxel.manifest.heads`); ``parts``,
    optional, each part of its stored bytes (see :mod:`~roxxel.manifest.parts`).
    """

    uri: str
    records: int
    stored_size: int
    raw_size: int
    compression: str | None
    checksum: str
    head: str | None = None
    parts: str | None = None

    def __post_init__(self) -> None:
        put = object.__setattr__
        put(self, "uri", check_uri(self.uri, "shard.uri"))
        put(self, "records", check_count(self.records, "shard.records"))
        put(self, "stored_size", check_count(self.stored_size, "shard.stored_size"))
        put(self, "raw_size", check_count(self.raw_size, "shard.raw_size"))
        put(self, "compression", check_compression(self.compression, "shard.compression"))
        put(self, "checksum", check_checksum(self.checksum, "shard.checksum"))
        check_sizes(self.stored_size, self.raw_size, self.compression, "shard.raw_size")
        check_room(self.records, self.raw_size, "shard.records")
        put(self, "head", check_head(self.head, self.records, self.stored_size, self.compression,
                                     "shard.head"))
        put(self, "parts", check_parts(self.parts, self.stored_size, self.compression, "shard.parts"))


@dataclass(frozen=True, eq=False, kw_only=True)
class ShardTable:
    """Per-shard metadata as read-only NumPy columns, one row per shard.

    ``uris``, ``checksums``, ``heads`` and ``parts`` are string arrays (``heads`` and
    ``parts`` optional, "" where a shard has none; pass None for none at all); ``records``, ``stored_size`` and
    ``raw_size`` are int64; ``compression`` holds int8 codes into :data:`COMPRESSIONS`
    (pass an integer array of codes, or any other sequence of names such as
    ``[None, "zstd"]``). ``record_starts`` (int64, ``len + 1`` entries) is derived:
    shard ``k`` holds global records ``record_starts[k]:record_starts[k + 1]``; so is
    ``head_records`` (int64: how many records each shard's head holds, 0 for none; None
    if no shard has a head), which plans are a function of (:mod:`roxxel.planner`), and
    ``head_bytes`` (where each head ends, likewise), which token streams are.
    Construction copies and validates every column and refuses duplicate URIs.
    """

    uris: NDArray[Any]
    records: NDArray[np.int64]
    stored_size: NDArray[np.int64]
    raw_size: NDArray[np.int64]
    compression: NDArray[np.int8]
    checksums: NDArray[Any]
    heads: NDArray[Any] | None = None
    parts: NDArray[Any] | None = None
    record_starts: NDArray[np.int64] = field(init=False, repr=False)
    head_records: NDArray[np.int64] | None = field(init=False, repr=False)
    head_bytes: NDArray[np.int64] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        columns = {
            "uris": string_column(uri_column(self.uris)),
            "records": count_column(self.records, "records"),
            "stored_size": count_column(self.stored_size, "stored_size"),
            "raw_size": count_column(self.raw_size, "raw_size"),
            "compression": compression_column(self.compression),
            "checksums": string_column(checksum_column(self.checksums)),
        }
        heads = [None] * len(columns["uris"]) if self.heads is None else self.heads
        parts = [None] * len(columns["uris"]) if self.parts is None else self.parts
        lengths = {name: len(column) for name, column in columns.items()} | {"heads": len(heads), "parts": len(parts)}
        if len(set(lengths.values())) > 1:
            raise expected("shards", "columns of equal length", lengths)
        for name, column in columns.items():
            object.__setattr__(self, name, column)
        bad = np.flatnonzero((self.compression == 0) & (self.raw_size != self.stored_size))
        if bad.size:
            i = int(bad[0])
            check_sizes(int(self.stored_size[i]), int(self.raw_size[i]), None, row(i, "raw_size"))
        object.__setattr__(self, "record_starts", self._prefix_sums())
        bad = np.flatnonzero(self.records > max_records(self.raw_size))
        if bad.size:
            i = int(bad[0])
            check_room(int(self.records[i]), int(self.raw_size[i]), row(i, "records"))
        # (after the room check: 8 bytes of index a record then fit in int64)
        column, counts, nbytes = head_column(heads, self.records, self.stored_size, self.compression)
        object.__setattr__(self, "heads", string_column(column))
        object.__setattr__(self, "head_records", counts)
        object.__setattr__(self, "head_bytes", nbytes)
        object.__setattr__(self, "parts", string_column(parts_column(parts, self.stored_size, self.compression)))

    def _prefix_sums(self) -> NDArray[np.int64]:
        total = sum(self.records.tolist())  # exact: int64 sums could wrap around
        if total > MAX_COUNT:
            raise error("shards", f"expected at most 2**62 records in total, got {total}")
        starts = np.zeros(len(self.records) + 1, dtype=np.int64)
        np.cumsum(self.records, out=starts[1:])
        return readonly(starts)

    @classmethod
    def from_infos(cls, infos: Iterable[ShardInfo]) -> ShardTable:
        """The table holding ``infos`` in order."""
        rows = list(infos)
        for i, info in enumerate(rows):
            if not isinstance(info, ShardInfo):
                kind = type(info).__name__
                raise TypeError(f"from_infos() takes ShardInfo objects, got {kind} at {i}")
        return cls(
            uris=[info.uri for info in rows],
            records=np.array([info.records for info in rows], dtype=np.int64),
            stored_size=np.array([info.stored_size for info in rows], dtype=np.int64),
            raw_size=np.array([info.raw_size for info in rows], dtype=np.int64),
            compression=[info.compression for info in rows],
            checksums=[info.checksum for info in rows],
            heads=[info.head for info in rows],
            parts=[info.parts for info in rows],
        )

    @classmethod
    def from_list(cls, entries: Sequence[Mapping[str, Any]]) -> ShardTable:
        """The table described by a manifest's ``shards`` array of JSON objects."""
        entries = check_entries(entries)
        columns = [list(map(itemgetter(name), entries)) for name in SHARD_FIELDS]
        for name in OPTIONAL_SHARD_FIELDS:  # (absent: None; present, it must hold one)
            column = [entry.get(name) for entry in entries]
            if any(value is None or value == "" for entry, value in zip(entries, column) if name in entry):
                i = next(i for i, entry in enumerate(entries) if name in entry and entry[name] in (None, ""))
                raise expected(row(i, name), f"a {name} string (or no {name} field)", entries[i][name])
            columns.append(column)
        return cls(**dict(zip(COLUMNS, columns)))

    @classmethod
    def concat(cls, tables: Iterable[ShardTable]) -> ShardTable:
        """One table holding the rows of ``tables`` in order; URIs must stay unique."""
        tables = list(tables)
        if not tables:
            return cls.from_infos(())
        columns = {name: np.concatenate([getattr(t, name) for t in tables]) for name in COLUMNS}
        return cls(**columns)

    def to_list(self) -> list[dict[str, Any]]:
        """The ``shards`` array of the manifest's JSON, one object per shard."""
        rows = zip(
            self.uris.tolist(),
            self.records.tolist(),
            self.stored_size.tolist(),
            self.raw_size.tolist(),
            [COMPRESSIONS[code] for code in self.compression.tolist()],
            self.checksums.tolist(),
        )
        entries = [dict(zip(SHARD_FIELDS, row)) for row in rows]
        for entry, head, parts in zip(entries, self.heads.tolist(), self.parts.tolist()):
            if head:
                entry["head"] = head
            if parts:
                entry["parts"] = parts
        return entries

    def to_json(self) -> str:
        """:meth:`to_list` as canonical compact ASCII JSON (exactly what ``json.dumps``
        gives, tested), assembled from the columns without a dict per shard: at 100,000
        shards 2-3x faster, a cost the first ``ds.iter`` or ``ds.resume`` of a process pays
        for the manifest's fingerprint."""
        quote = encode_basestring_ascii  # json.dumps's own quoting
        names = ["null" if name is None else quote(name) for name in COMPRESSIONS]
        columns = (
            map(quote, self.uris.tolist()),
            map(str, self.records.tolist()),
            map(str, self.stored_size.tolist()),
            map(str, self.raw_size.tolist()),
            map(names.__getitem__, self.compression.tolist()),
            map(quote, self.checksums.tolist()),
        )
        pieces = []  # '{"uri":', <uri>, ',"records":', <records>, ..., '},' per shard
        for i, (name, column) in enumerate(zip(SHARD_FIELDS, columns)):
            pieces += [repeat(("{" if i == 0 else ",") + f'"{name}":'), column]
        for name, values in (("head", self.heads.tolist()), ("parts", self.parts.tolist())):
            if any(values):  # (written only where set)
                pieces.append([f',"{name}":' + quote(value) if value else "" for value in values])
        text = "".join(chain.from_iterable(zip(*pieces, repeat("},"))))
        return "[" + text[:-1] + "]"

    @property
    def total_records(self) -> int:
        """The number of records in all shards."""
        return int(self.record_starts[-1])

    def locate(self, index: int) -> tuple[int, int]:
        """``(shard, offset)`` of global record ``index`` (negative counts from the end)."""
        i = operator.index(index)
        total = self.total_records
        if i < 0:
            i += total
        if not 0 <= i < total:
            raise IndexError(f"record index {index} out of range for {total} records")
        shard = int(np.searchsorted(self.record_starts, i, side="right")) - 1
        return shard, i - int(self.record_starts[shard])

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ShardInfo:
        i = operator.index(index)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"shard index {index} out of range for {n} shards")
        return ShardInfo(
            uri=str(self.uris[i]),
            records=int(self.records[i]),
            stored_size=int(self.stored_size[i]),
            raw_size=int(self.raw_size[i]),
            compression=COMPRESSIONS[int(self.compression[i])],
            checksum=str(self.checksums[i]),
            head=str(self.heads[i]) or None,
            parts=str(self.parts[i]) or None,
        )

    def __iter__(self) -> Iterator[ShardInfo]:
        return map(self.__getitem__, range(len(self)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ShardTable):
            return NotImplemented
        return all(np.array_equal(getattr(self, n), getattr(other, n)) for n in COLUMNS)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"ShardTable(<{len(self)} shards, {self.total_records} records>)"

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt through the constructor, so the copy is validated and read-only again.
        return (_rebuild_table, tuple(getattr(self, name) for name in COLUMNS))


def _rebuild_table(*columns: NDArray[Any]) -> ShardTable:
    return ShardTable(**dict(zip(COLUMNS, columns)))


def _as_table(shards: ShardTable | Iterable[ShardInfo]) -> ShardTable:
    return shards if isinstance(shards, ShardTable) else ShardTable.from_infos(shards)


@dataclass(frozen=True, eq=False)
class Manifest:
    """A dataset's manifest: its shards and a free ``meta`` object for the user.

    ``meta`` is stored as a validated deep copy and exposed read-only; treat the values
    inside it as read-only too. Two manifests are equal exactly when they serialize to
    the same JSON.
    """

    shards: ShardTable
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.shards, ShardTable):
            raise TypeError("Manifest.shards must be a ShardTable; build() takes ShardInfo")
        object.__setattr__(self, "meta", MappingProxyType(copy_meta(self.meta)))

    @classmethod
    def build(
        cls, shards: ShardTable | Iterable[ShardInfo], meta: Mapping[str, Any] | None = None
    ) -> Manifest:
        """The manifest of ``shards`` (in order) with ``meta`` (default: empty)."""
        return cls(_as_table(shards), {} if meta is None else meta)

    def with_shards(self, shards: ShardTable | Iterable[ShardInfo]) -> Manifest:
        """A copy of this manifest whose shards are exactly ``shards``."""
        return type(self)(_as_table(shards), self.meta)

    def with_meta(self, meta: Mapping[str, Any]) -> Manifest:
        """A copy of this manifest whose meta is ``meta``."""
        return type(self)(self.shards, meta)

    def extended(self, more_shards: ShardTable | Iterable[ShardInfo]) -> Manifest:
        """A copy of this manifest with ``more_shards`` appended after its own shards."""
        return type(self)(ShardTable.concat([self.shards, _as_table(more_shards)]), self.meta)

    @property
    def records(self) -> int:
        """The number of records in the dataset."""
        return self.shards.total_records

    def to_dict(self) -> dict[str, Any]:
        """The manifest as plain JSON-ready Python objects (a fresh deep copy)."""
        return {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "records": self.records,
            "meta": copy_meta(self.meta),
            "shards": self.shards.to_list(),
        }

    def to_json(self) -> str:
        """Canonical compact ASCII JSON: equal manifests give identical strings."""
        head = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "records": self.records,
                "meta": copy_meta(self.meta)}
        text = json.dumps(head, ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        # exactly json.dumps(self.to_dict(), ...), without a dict per shard (tested)
        return f'{text[:-1]},"shards":{self.shards.to_json()}}}'

    def fingerprint(self) -> str:
        """``"sha256:<hex>"`` of :meth:`to_json`, identifying this exact dataset."""
        cached = self.__dict__.get("_fingerprint")
        if cached is None:  # computed once: the manifest is immutable
            cached = "sha256:" + sha256(self.to_json().encode("ascii")).hexdigest()
            object.__setattr__(self, "_fingerprint", cached)
        return cached

    @classmethod
    def from_json(cls, data: str | bytes, source: str | None = None) -> Manifest:
        """The manifest in ``data``; :class:`ManifestError` naming ``source`` if invalid."""
        with reporting_source(source):
            return cls._from_document(parse_json(data))

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str | None = None) -> Manifest:
        """The manifest described by ``data`` (as :meth:`to_dict` returns), validated."""
        with reporting_source(source):
            return cls._from_document(dict(data) if isinstance(data, Mapping) else data)

    @classmethod
    def _from_document(cls, doc: object) -> Manifest:
        if not isinstance(doc, dict):
            raise expected("", "a JSON object at the top level", doc)
        _check_header(doc)
        check_fields(doc, TOP_FIELDS, "")
        records = check_count(doc["records"], "records")
        if not isinstance(doc["meta"], dict):
            raise expected("meta", "an object", doc["meta"])
        shards = ShardTable.from_list(doc["shards"])
        if shards.total_records != records:
            raise error(
                "records",
                f"expected {shards.total_records} (the sum of shards[*].records), got {records}",
            )
        return cls(shards, doc["meta"])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        # Compared as JSON text, because as Python values 1 == 1.0 == True.
        return self.shards == other.shards and meta_json(self.meta) == meta_json(other.meta)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        meta = show(dict(self.meta))
        return f"Manifest(records={self.records}, shards={len(self.shards)}, meta={meta})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.shards, dict(self.meta)))


def _check_header(doc: dict[str, Any]) -> None:
    """Refuse a document of another format or version before judging its fields."""
    for name in ("format", "version"):
        if name not in doc:
            raise error(name, "missing required field")
    if doc["format"] != FORMAT_NAME:
        raise expected("format", repr(FORMAT_NAME), doc["format"])
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise expected("version", "an integer", version)
    if version != FORMAT_VERSION:
        raise error(
            "version",
            f"unsupported version {show(version)}; this roxxel reads version {FORMAT_VERSION}",
        )
