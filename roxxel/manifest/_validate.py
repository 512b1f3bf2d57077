"""Validation of manifest documents: constants, field checks and JSON parsing.

Private to :mod:`roxxel.manifest`; :mod:`roxxel.manifest.schema` builds its dataclasses
on these checks. Every failure is a :class:`~roxxel.errors.ManifestError` naming the
manifest's URL (redacted), the field path, what was expected and what was found.
"""

from __future__ import annotations

import json
import math
import numbers
import operator
import re
import reprlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from hashlib import sha256
from operator import itemgetter
from types import MappingProxyType
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..errors import ManifestError

FORMAT_NAME = "roxxel.manifest"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64  # levels of JSON nesting; the document object itself is level 1
MAX_COUNT = 2**62  # largest record count or byte size a manifest may state
MAX_URI_LENGTH = 1024
COMPRESSIONS: tuple[str | None, ...] = (None, "zstd")  # index = code in ShardTable.compression
CHECKSUM_ALGORITHMS: Mapping[str, int] = MappingProxyType({"sha256": 64, "blake2b": 128})

_TOP_FIELDS = ("format", "version", "records", "meta", "shards")
_SHARD_FIELDS = ("uri", "records", "stored_size", "raw_size", "compression", "checksum")
_SHARD_FIELD_SET = frozenset(_SHARD_FIELDS)
_COLUMNS = ("uris", "records", "stored_size", "raw_size", "compression", "checksums")
_COMPRESSION_CODES = {name: code for code, name in enumerate(COMPRESSIONS)}
_FOOTER_BYTES = 24  # the ROXXEL01 footer
_META_INT_RANGE = (-(2**63), 2**64)  # what every JSON reader with 64-bit ints accepts

_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*:"
_SEGMENT = r"(?!\.\.?(?:/|\Z))[^/\\\x00-\x1f\x7f-\x9f\ud800-\udfff]+"
_URI_RE = re.compile(rf"(?!{_SCHEME})(?!.*::){_SEGMENT}(?:/{_SEGMENT})*", re.DOTALL)
# Checked in this order to explain a URI that _URI_RE refused.
_URI_PROBLEMS = (
    (re.compile(r"[\x00-\x1f\x7f-\x9f]"), "a path without control characters"),
    (re.compile(r"[\ud800-\udfff]"), "a path without unpaired surrogates"),
    (re.compile(r"\\"), "a path without backslashes"),
    (re.compile(r"\A/"), "a path relative to the manifest, not an absolute one"),
    (re.compile(rf"\A{_SCHEME}"), "a path relative to the manifest, not a URL with a scheme"),
    (re.compile("::"), "a path without '::' (fsspec URL chaining)"),
    (re.compile(r"//|/\Z"), "a path without empty segments ('//' or a trailing '/')"),
    (re.compile(r"(?:\A|/)\.\.?(?:/|\Z)"), "a path without '.' or '..' segments"),
)
_CHECKSUM_RE = re.compile(
    "|".join(f"{algo}:[0-9a-f]{{{n}}}" for algo, n in CHECKSUM_ALGORITHMS.items())
)
_USERINFO_RE = re.compile(r"(?<=//)[^/?#@]*@")

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3

# Validation runs inside dataclass constructors, which cannot take the manifest's URL
# as an argument; from_json/from_dict publish it here so every message can name it.
_SOURCE: ContextVar[str | None] = ContextVar("roxxel_manifest_source", default=None)


def _string_dtype() -> np.dtype[Any]:
    # Variable-width strings (NumPy >= 2) keep one long URI from widening every row,
    # as a fixed-width "U1024" column would; older NumPy falls back to object arrays.
    string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)
    return np.dtype(object) if string_dtype is None else string_dtype(coerce=False)


_STR_DTYPE = _string_dtype()


# --------------------------------------------------------------------------- errors


def _redact(url: str) -> str:
    """``url`` without userinfo or query string, either of which may carry credentials."""
    url = _USERINFO_RE.sub("***@", url, count=1)
    base, query, _ = url.partition("?")
    return base + ("?***" if query else "")


@contextmanager
def _reporting_source(source: str | None) -> Iterator[None]:
    token = _SOURCE.set(None if source is None else _redact(source))
    try:
        yield
    finally:
        _SOURCE.reset(token)


def _show(value: object) -> str:
    """A repr of ``value`` of at most 80 characters, cheap even for huge values."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _error(path: str, detail: str) -> ManifestError:
    source = _SOURCE.get()
    where = "manifest" if source is None else f"manifest {source}"
    return ManifestError(f"{where}: {path}: {detail}" if path else f"{where}: {detail}")


def _expected(path: str, what: str, value: object) -> ManifestError:
    return _error(path, f"expected {what}, got {_show(value)}")


def _member(path: str, key: object) -> str:
    """The path of member ``key`` of the object at ``path``."""
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{_show(key)}]"


def _row(index: int, name: str) -> str:
    return f"shards[{index}].{name}"


# ------------------------------------------------------------------- scalar checks


def _count(value: object, path: str) -> int:
    """``value`` as an int in ``[0, MAX_COUNT]``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise _expected(path, "a non-negative integer", value)
    number = int(value)
    if number < 0:
        raise _expected(path, "a non-negative integer", value)
    if number > MAX_COUNT:
        raise _expected(path, "an integer at most 2**62", value)
    return number


def _plain_str(value: str) -> str:
    # str subclasses (numpy.str_ among them) become plain str, as JSON would give.
    return value if type(value) is str else str.__str__(value)


def _uri(value: object, path: str) -> str:
    """``value`` if it is a safe path relative to the manifest; explains why if not."""
    if not isinstance(value, str):
        raise _expected(path, "a relative path string", value)
    if not value:
        raise _expected(path, "a non-empty relative path", value)
    if len(value) > MAX_URI_LENGTH:
        raise _error(
            path,
            f"expected a path of at most {MAX_URI_LENGTH} characters, "
            f"got {len(value)} characters: {_show(value)}",
        )
    for pattern, what in _URI_PROBLEMS:
        if pattern.search(value):
            raise _expected(path, what, value)
    if _URI_RE.fullmatch(value) is None:
        raise _expected(path, "a safe relative path", value)
    return _plain_str(value)


def _checksum(value: object, path: str) -> str:
    """``value`` if it is ``<algorithm>:<lowercase hex>`` with an allowed algorithm."""
    if not isinstance(value, str) or ":" not in value:
        raise _expected(path, "a checksum like 'sha256:<64 hex digits>'", value)
    algorithm, _, digest = value.partition(":")
    if algorithm not in CHECKSUM_ALGORITHMS:
        allowed = ", ".join(sorted(CHECKSUM_ALGORITHMS))
        raise _expected(path, f"a checksum algorithm among {allowed}", value)
    length = CHECKSUM_ALGORITHMS[algorithm]
    if len(digest) != length:
        raise _error(
            path,
            f"expected {length} hex digits after '{algorithm}:', "
            f"got {len(digest)}: {_show(value)}",
        )
    if _CHECKSUM_RE.fullmatch(value) is None:
        raise _expected(path, "lowercase hex digits [0-9a-f]", value)
    return _plain_str(value)


def _compression(value: object, path: str) -> str | None:
    """``value`` if it names a supported compression (``None`` for uncompressed)."""
    if (value is None or isinstance(value, str)) and value in _COMPRESSION_CODES:
        return None if value is None else _plain_str(value)
    names = " or ".join("null" if name is None else repr(name) for name in COMPRESSIONS)
    raise _expected(path, names, value)


def _check_sizes(stored_size: int, raw_size: int, compression: str | None, path: str) -> None:
    if compression is None and raw_size != stored_size:
        raise _error(
            path,
            f"expected {stored_size} (equal to stored_size, as compression is null), "
            f"got {raw_size}",
        )


def _check_room(records: int, raw_size: int, path: str) -> None:
    """A ROXXEL01 shard of ``records`` records holds at least an 8-byte offset for each and
    the 24-byte footer: a manifest claiming more records than its bytes allow is lying."""
    if records > (raw_size - _FOOTER_BYTES) // 8:
        raise _error(
            path,
            f"expected at most {max((raw_size - _FOOTER_BYTES) // 8, 0)} records in a shard of "
            f"raw_size {raw_size} (8 bytes of index per record + {_FOOTER_BYTES}), got {records}",
        )


def _check_json_value(value: object, path: str, depth: int) -> None:
    """Refuse anything in ``value`` that JSON cannot hold exactly, or nesting too deep."""
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not _META_INT_RANGE[0] <= value < _META_INT_RANGE[1]:
            raise _expected(path, "an integer that fits in 64 bits", value)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _expected(path, "a finite number", value)
        return
    if not isinstance(value, (dict, list, tuple)):
        raise _expected(path, "a JSON value (null, bool, number, string, array, object)", value)
    if depth > MAX_DEPTH:
        raise _error(path, f"expected at most {MAX_DEPTH} levels of nesting, got more")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise _expected(path, "an object with string keys", key)
            _check_json_value(item, _member(path, key), depth + 1)
    else:
        for index, item in enumerate(value):
            _check_json_value(item, f"{path}[{index}]", depth + 1)


def _meta_json(meta: Mapping[str, Any]) -> str:
    """Canonical JSON of a validated meta object: sorted keys, compact, ASCII."""
    return json.dumps(dict(meta), sort_keys=True, allow_nan=False, separators=(",", ":"))


def _copy_meta(meta: object) -> dict[str, Any]:
    """A validated deep copy of ``meta`` with keys sorted at every level."""
    if not isinstance(meta, Mapping):
        raise _expected("meta", "an object", meta)
    meta = dict(meta)
    _check_json_value(meta, "meta", depth=2)
    return json.loads(_meta_json(meta))


# ------------------------------------------------------------------- column checks


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def _readonly(array: NDArray[Any]) -> NDArray[Any]:
    array.setflags(write=False)
    return array


def _count_column(values: object, name: str) -> NDArray[np.int64]:
    """A read-only int64 column of counts in ``[0, MAX_COUNT]``."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.ndim == 1:
        bad = np.flatnonzero((values < 0) | (values > MAX_COUNT))
        if bad.size:
            _count(values[bad[0]].item(), _row(int(bad[0]), name))
        return _readonly(values.astype(np.int64))
    items = _as_list(values)
    # One pass in C for the common case; the per-row loop only runs to name the culprit.
    all_ints = set(map(type, items)) <= {int}
    if not (all_ints and (not items or (min(items) >= 0 and max(items) <= MAX_COUNT))):
        items = [_count(value, _row(i, name)) for i, value in enumerate(items)]
    return _readonly(np.array(items, dtype=np.int64))


def _uri_column(values: object) -> list[str]:
    """The URIs as plain, safe and unique strings."""
    items = _as_list(values)
    fast = (
        set(map(type, items)) <= {str}
        and all(map(_URI_RE.fullmatch, items))
        and max(map(len, items), default=0) <= MAX_URI_LENGTH
    )
    if not fast:
        items = [_uri(value, _row(i, "uri")) for i, value in enumerate(items)]
    if len(set(items)) != len(items):
        first: dict[str, int] = {}
        for i, uri in enumerate(items):
            if uri in first:
                raise _error(
                    _row(i, "uri"),
                    f"expected a unique path, got {_show(uri)} again "
                    f"(first at {_row(first[uri], 'uri')})",
                )
            first[uri] = i
    return items


def _checksum_column(values: object) -> list[str]:
    items = _as_list(values)
    if not (set(map(type, items)) <= {str} and all(map(_CHECKSUM_RE.fullmatch, items))):
        items = [_checksum(value, _row(i, "checksum")) for i, value in enumerate(items)]
    return items


def _compression_column(values: object) -> NDArray[np.int8]:
    """Codes into COMPRESSIONS, from an integer array of codes or a sequence of names."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.ndim == 1:
        bad = np.flatnonzero((values < 0) | (values >= len(COMPRESSIONS)))
        if bad.size:
            what = f"a compression code below {len(COMPRESSIONS)}"
            raise _expected(_row(int(bad[0]), "compression"), what, values[bad[0]].item())
        return _readonly(values.astype(np.int8))
    items = _as_list(values)
    try:
        codes = np.fromiter(
            map(_COMPRESSION_CODES.__getitem__, items), dtype=np.int8, count=len(items)
        )
    except (KeyError, TypeError):
        names = [_compression(value, _row(i, "compression")) for i, value in enumerate(items)]
        codes = np.array([_COMPRESSION_CODES[name] for name in names], dtype=np.int8)
    return _readonly(codes)


def _string_column(items: list[str]) -> NDArray[Any]:
    return _readonly(np.array(items, dtype=_STR_DTYPE))


def _check_entries(entries: object) -> list[dict[str, Any]]:
    """``entries`` if it is a list of objects with exactly the shard fields."""
    if not isinstance(entries, list):
        raise _expected("shards", "an array of shard objects", entries)
    if not all(type(entry) is dict and entry.keys() == _SHARD_FIELD_SET for entry in entries):
        for i, entry in enumerate(entries):
            _check_fields(entry, _SHARD_FIELDS, f"shards[{i}]")
    return entries


def _check_fields(obj: object, fields: Sequence[str], path: str) -> None:
    """Refuse ``obj`` unless it is a dict holding exactly ``fields``."""
    if not isinstance(obj, dict):
        raise _expected(path, "an object", obj)
    for key in obj:
        if key not in fields:
            raise _error(_member(path, key), f"unknown field (expected {', '.join(fields)})")
    for name in fields:
        if name not in obj:
            raise _error(_member(path, name), "missing required field")


# ---------------------------------------------------------------------- JSON input


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _error("", f"expected unique keys in every object, got {_show(key)} twice")
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> float:
    raise _error("", f"expected finite numbers, got {name}")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _error("", f"expected finite numbers, got {_show(text)}, which overflows a float")
    return number


def _parse_json(data: str | bytes) -> object:
    """The JSON value in ``data``, refusing oversized, non-UTF-8 or ambiguous documents."""
    limit = f"at most {MAX_MANIFEST_BYTES} bytes (MAX_MANIFEST_BYTES)"
    if isinstance(data, str):
        if len(data) > MAX_MANIFEST_BYTES:  # checked before encoding a huge string
            raise _error("", f"expected {limit}, got {len(data)} characters")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            detail = f"expected UTF-8 text, got an unencodable character at {exc.start}"
            raise _error("", detail) from exc
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise TypeError(f"from_json() takes str or bytes, not {type(data).__name__}")
    if len(raw) > MAX_MANIFEST_BYTES:
        raise _error("", f"expected {limit}, got {len(raw)} bytes")
    try:
        text = data if isinstance(data, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error("", f"expected UTF-8 text, got an invalid byte at offset {exc.start}") from exc
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except ManifestError:
        raise
    except RecursionError as exc:
        detail = f"expected at most {MAX_DEPTH} levels of nesting, got too many to parse"
        raise _error("", detail) from exc
    except ValueError as exc:
        raise _error("", f"expected a JSON document, got invalid JSON: {exc}") from exc


def _check_header(doc: dict[str, Any]) -> None:
    """Refuse a document of another format or version before judging its fields."""
    for name in ("format", "version"):
        if name not in doc:
            raise _error(name, "missing required field")
    if doc["format"] != FORMAT_NAME:
        raise _expected("format", repr(FORMAT_NAME), doc["format"])
    version = doc["version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise _expected("version", "an integer", version)
    if version != FORMAT_VERSION:
        raise _error(
            "version",
            f"unsupported version {_show(version)}; this roxxel reads version {FORMAT_VERSION}",
        )


# ----------------------------------------------------------------------- dataclasses
