"""The fields of a manifest: each value checked alone (counts, shard URIs, checksums,
compressions, the free ``meta`` object) and as whole NumPy columns (the common case
checked in C, the per-row loop run only to name the culprit)."""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from ..format.layout import FOOTER_SIZE, OFFSET_SIZE, max_records
from ._json import MAX_DEPTH
from ._report import error, expected, member, row, show
from .checksums import CHECKSUM_RE, ChecksumError, parse_checksum
from .compressions import COMPRESSION_CODES, COMPRESSIONS, describe
from .heads import HEAD_RE, head_problem, index_start
from .parts import DIGEST_HEX, MAX_PARTS, MIN_PART_BYTES, PARTS_RE, parts_problem
from .keys import KEY_RE, key_problem

__all__ = [
    "COLUMNS",
    "MAX_COUNT",
    "MAX_URI_LENGTH",
    "OPTIONAL_SHARD_FIELDS",
    "SHARD_FIELDS",
    "TOP_FIELDS",
    "check_entries",
    "check_fields",
    "check_head",
    "check_parts",
    "check_room",
    "check_checksum",
    "check_compression",
    "check_count",
    "check_sizes",
    "check_uri",
    "checksum_column",
    "compression_column",
    "copy_meta",
    "count_column",
    "head_column",
    "meta_json",
    "parts_column",
    "readonly",
    "string_column",
    "uri_column",
]

MAX_COUNT = 2**62  # largest record count or byte size a manifest may state
MAX_URI_LENGTH = 1024

TOP_FIELDS = ("format", "version", "records", "meta", "shards")
SHARD_FIELDS = ("uri", "records", "stored_size", "raw_size", "compression", "checksum")
#: A shard's optional fields (see :mod:`roxxel.manifest.heads` and :mod:`~roxxel.manifest.parts`),
#: written only when set.
OPTIONAL_SHARD_FIELDS = ("head", "parts")
_SHARD_FIELD_SETS = frozenset(frozenset(SHARD_FIELDS + extra)
                              for extra in ((), ("head",), ("parts",), ("head", "parts")))
COLUMNS = ("uris", "records", "stored_size", "raw_size", "compression", "checksums", "heads", "parts")
_META_INT_RANGE = (-(2**63), 2**64)  # what every JSON reader with 64-bit ints accepts


def _string_dtype() -> np.dtype[Any]:
    # Variable-width strings (NumPy >= 2) keep one long URI from widening every row,
    # as a fixed-width "U1024" column would; older NumPy falls back to object arrays.
    string_dtype = getattr(getattr(np, "dtypes", None), "StringDType", None)
    return np.dtype(object) if string_dtype is None else string_dtype(coerce=False)


_STR_DTYPE = _string_dtype()


# ------------------------------------------------------------------- scalar checks


def check_count(value: object, path: str) -> int:
    """``value`` as an int in ``[0, MAX_COUNT]``; bools and floats are refused."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise expected(path, "a non-negative integer", value)
    number = int(value)
    if number < 0:
        raise expected(path, "a non-negative integer", value)
    if number > MAX_COUNT:
        raise expected(path, "an integer at most 2**62", value)
    return number


def _plain_str(value: str) -> str:
    # str subclasses (numpy.str_ among them) become plain str, as JSON would give.
    return value if type(value) is str else str.__str__(value)


def check_uri(value: object, path: str) -> str:
    """``value`` if it is a safe path relative to the manifest; explains why if not."""
    if not isinstance(value, str):
        raise expected(path, "a relative path string", value)
    if len(value) > MAX_URI_LENGTH:
        raise error(
            path,
            f"expected a path of at most {MAX_URI_LENGTH} characters, "
            f"got {len(value)} characters: {show(value)}",
        )
    problem = key_problem(value)
    if problem is not None:
        raise expected(path, problem, value)
    return _plain_str(value)


def check_checksum(value: object, path: str) -> str:
    """``value`` if it is ``<algorithm>:<lowercase hex>`` with an allowed algorithm."""
    try:
        parse_checksum(value)
    except ChecksumError as exc:
        if exc.digits is None:
            raise expected(path, exc.expected, value) from None
        raise error(path, f"expected {exc.expected}, got {exc.digits}: {show(value)}") from None
    return _plain_str(value)  # type: ignore[arg-type]


def check_head(value: object, records: int, stored_size: int, compression: str | None,
               path: str) -> str | None:
    """``value`` if it is None or a valid head of the shard described (see
    :mod:`~roxxel.manifest.heads`)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise expected(path, "a string", value)
    problem = head_problem(value, records, stored_size, compression)
    if problem is not None:
        raise error(path, problem)
    return _plain_str(value)


def check_parts(value: object, stored_size: int, compression: str | None, path: str) -> str | None:
    """``value`` if it is None or valid parts of the shard described (see
    :mod:`~roxxel.manifest.parts`)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise expected(path, "a string", value)
    problem = parts_problem(value, stored_size, compression)
    if problem is not None:
        raise error(path, problem)
    return _plain_str(value)


def check_compression(value: object, path: str) -> str | None:
    """``value`` if it names a supported compression (``None`` for uncompressed)."""
    if (value is None or isinstance(value, str)) and value in COMPRESSION_CODES:
        return None if value is None else _plain_str(value)
    raise expected(path, describe(COMPRESSIONS, null="null"), value)


def check_sizes(stored_size: int, raw_size: int, compression: str | None, path: str) -> None:
    if compression is None and raw_size != stored_size:
        raise error(
            path,
            f"expected {stored_size} (equal to stored_size, as compression is null), "
            f"got {raw_size}",
        )


def check_room(records: int, raw_size: int, path: str) -> None:
    """A ROXXEL01 shard of ``records`` records holds at least an 8-byte offset for each and
    the 24-byte footer: a manifest claiming more records than its bytes allow is lying."""
    if records > max_records(raw_size):
        raise error(
            path,
            f"expected at most {max(max_records(raw_size), 0)} records in a shard of "
            f"raw_size {raw_size} ({OFFSET_SIZE} bytes of index per record + {FOOTER_SIZE}), got {records}",
        )


def check_json_value(value: object, path: str, depth: int) -> None:
    """Refuse anything in ``value`` that JSON cannot hold exactly, or nesting too deep."""
    if value is None or isinstance(value, (str, bool)):
        return
    if isinstance(value, int):
        if not _META_INT_RANGE[0] <= value < _META_INT_RANGE[1]:
            raise expected(path, "an integer that fits in 64 bits", value)
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise expected(path, "a finite number", value)
        return
    if not isinstance(value, (dict, list, tuple)):
        raise expected(path, "a JSON value (null, bool, number, string, array, object)", value)
    if depth > MAX_DEPTH:
        raise error(path, f"expected at most {MAX_DEPTH} levels of nesting, got more")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise expected(path, "an object with string keys", key)
            check_json_value(item, member(path, key), depth + 1)
    else:
        for index, item in enumerate(value):
            check_json_value(item, f"{path}[{index}]", depth + 1)


def meta_json(meta: Mapping[str, Any]) -> str:
    """Canonical JSON of a validated meta object: sorted keys, compact, ASCII."""
    return json.dumps(dict(meta), sort_keys=True, allow_nan=False, separators=(",", ":"))


def copy_meta(meta: object) -> dict[str, Any]:
    """A validated deep copy of ``meta`` with keys sorted at every level."""
    if not isinstance(meta, Mapping):
        raise expected("meta", "an object", meta)
    meta = dict(meta)
    check_json_value(meta, "meta", depth=2)
    return json.loads(meta_json(meta))


# ------------------------------------------------------------------- column checks


def _as_list(values: Any) -> list[Any]:
    return values.tolist() if isinstance(values, np.ndarray) else list(values)


def readonly(array: NDArray[Any]) -> NDArray[Any]:
    array.setflags(write=False)
    return array


def count_column(values: object, name: str) -> NDArray[np.int64]:
    """A read-only int64 column of counts in ``[0, MAX_COUNT]``."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.ndim == 1:
        bad = np.flatnonzero((values < 0) | (values > MAX_COUNT))
        if bad.size:
            check_count(values[bad[0]].item(), row(int(bad[0]), name))
        return readonly(values.astype(np.int64))
    items = _as_list(values)
    # One pass in C for the common case; the per-row loop only runs to name the culprit.
    all_ints = set(map(type, items)) <= {int}
    if not (all_ints and (not items or (min(items) >= 0 and max(items) <= MAX_COUNT))):
        items = [check_count(value, row(i, name)) for i, value in enumerate(items)]
    return readonly(np.array(items, dtype=np.int64))


def uri_column(values: object) -> list[str]:
    """The URIs as plain, safe and unique strings."""
    items = _as_list(values)
    fast = (
        set(map(type, items)) <= {str}
        and all(map(KEY_RE.fullmatch, items))
        and max(map(len, items), default=0) <= MAX_URI_LENGTH
    )
    if not fast:
        items = [check_uri(value, row(i, "uri")) for i, value in enumerate(items)]
    if len(set(items)) != len(items):
        first: dict[str, int] = {}
        for i, key in enumerate(items):
            if key in first:
                raise error(
                    row(i, "uri"),
                    f"expected a unique path, got {show(key)} again "
                    f"(first at {row(first[key], 'uri')})",
                )
            first[key] = i
    return items


def checksum_column(values: object) -> list[str]:
    items = _as_list(values)
    if not (set(map(type, items)) <= {str} and all(map(CHECKSUM_RE.fullmatch, items))):
        items = [check_checksum(value, row(i, "checksum")) for i, value in enumerate(items)]
    return items


def compression_column(values: object) -> NDArray[np.int8]:
    """Codes into COMPRESSIONS, from an integer array of codes or a sequence of names."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iu" and values.ndim == 1:
        bad = np.flatnonzero((values < 0) | (values >= len(COMPRESSIONS)))
        if bad.size:
            what = f"a compression code below {len(COMPRESSIONS)}"
            raise expected(row(int(bad[0]), "compression"), what, values[bad[0]].item())
        return readonly(values.astype(np.int8))
    items = _as_list(values)
    try:
        codes = np.fromiter(
            map(COMPRESSION_CODES.__getitem__, items), dtype=np.int8, count=len(items)
        )
    except (KeyError, TypeError):
        names = [check_compression(value, row(i, "compression")) for i, value in enumerate(items)]
        codes = np.array([COMPRESSION_CODES[name] for name in names], dtype=np.int8)
    return readonly(codes)


def string_column(items: list[str]) -> NDArray[Any]:
    return readonly(np.array(items, dtype=_STR_DTYPE))


def head_column(values: object, records: NDArray[np.int64], stored_size: NDArray[np.int64],
                compression: NDArray[np.int8]) -> tuple[list[str], NDArray[np.int64] | None, NDArray[np.int64] | None]:
    """The heads as strings, "" where a shard has none (None in ``values``), and how many
    records and bytes each holds (0 for none; None if no shard has a head)."""
    items = ["" if value is None else value for value in _as_list(values)]
    rows = [i for i, value in enumerate(items) if value != ""]
    if not rows:
        return items, None, None
    fast = all(type(items[i]) is str and HEAD_RE.fullmatch(items[i]) for i in rows)
    if not fast:
        for i in rows:
            check_head(items[i], int(records[i]), int(stored_size[i]),
                       COMPRESSIONS[int(compression[i])], row(i, "head"))
    sizes = np.array([items[i].split(":", 2)[:2] for i in rows], dtype=np.int64)  # (records, bytes) of each
    at = np.array(rows)
    if fast:
        payload = index_start(records[at], stored_size[at])  # (int64: sizes are at most 2**62)
        ok = (compression[at] == 0) & (sizes[:, 0] <= records[at]) & (sizes[:, 1] <= payload)
        for i in at[~ok].tolist():  # (says what is wrong with the first)
            check_head(items[i], int(records[i]), int(stored_size[i]),
                       COMPRESSIONS[int(compression[i])], row(i, "head"))
    counts, nbytes = np.zeros(len(items), dtype=np.int64), np.zeros(len(items), dtype=np.int64)
    counts[at], nbytes[at] = sizes[:, 0], sizes[:, 1]
    return items, readonly(counts), readonly(nbytes)


def parts_column(values: object, stored_size: NDArray[np.int64], compression: NDArray[np.int8]) -> list[str]:
    """The parts as strings, "" where a shard has none (None in ``values``), each checked:
    where every one has the first's part size and algorithm (roxxel's writer's), as whole
    columns (a manifest of 100,000 shards with parts parsed 0.3 s sooner); else, or to
    name the first bad one, a row at a time."""
    items = ["" if value is None else value for value in _as_list(values)]
    rows = [i for i, value in enumerate(items) if value != ""]
    if rows and not _parts_fast(items, rows, stored_size, compression):
        for i in rows:
            check_parts(items[i], int(stored_size[i]), COMPRESSIONS[int(compression[i])], row(i, "parts"))
    return items


def _parts_fast(items: list[Any], rows: list[int], stored_size: NDArray[np.int64],
                compression: NDArray[np.int8]) -> bool:
    """Whether the parts at ``rows`` are all valid, checked as columns, when they share
    the first one's part size and algorithm (False: check them a row at a time)."""
    first = items[rows[0]]
    if type(first) is not str or PARTS_RE.fullmatch(first) is None:
        return False
    prefix = first[: first.index(":", first.index(":") + 1) + 1]  # "<part bytes>:<algorithm>:"
    size = int(prefix.split(":", 1)[0])
    values = [items[i] for i in rows]
    if size < MIN_PART_BYTES or not all(type(v) is str and v.startswith(prefix) for v in values):
        return False
    at = np.array(rows)
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    counts = -(-stored_size[at] // size)
    if not (np.all(compression[at] == 0) and np.all(counts <= MAX_PARTS)
            and np.array_equal(lengths, len(prefix) + DIGEST_HEX * counts)):
        return False
    joined = "".join(values)
    if joined.count(":") != 2 * len(values) or not joined.isascii():  # (colons only in the prefixes)
        return False
    return not joined.replace(prefix, "").encode("ascii").translate(None, b"0123456789abcdef")


def check_entries(entries: object) -> list[dict[str, Any]]:
    """``entries`` if it is a list of objects with exactly the shard fields (and perhaps
    the optional ones)."""
    if not isinstance(entries, list):
        raise expected("shards", "an array of shard objects", entries)
    if not all(type(entry) is dict and frozenset(entry) in _SHARD_FIELD_SETS for entry in entries):
        for i, entry in enumerate(entries):
            check_fields(entry, SHARD_FIELDS, f"shards[{i}]", optional=OPTIONAL_SHARD_FIELDS)
    return entries


def check_fields(obj: object, fields: Sequence[str], path: str, optional: Sequence[str] = ()) -> None:
    """Refuse ``obj`` unless it is a dict holding exactly ``fields``, and perhaps some
    of ``optional``."""
    if not isinstance(obj, dict):
        raise expected(path, "an object", obj)
    for key in obj:
        if key not in fields and key not in optional:
            raise error(member(path, key), f"unknown field (expected {', '.join((*fields, *optional))})")
    for name in fields:
        if name not in obj:
            raise error(member(path, name), "missing required field")
