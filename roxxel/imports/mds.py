"""MosaicML streaming (MDS) directories: ``index.json`` and ``shard.NNNNN.mds[.zstd]`` files.

Read without MosaicML's code. ``index.json`` (version 2) lists the shards; each shard is
``[uint32 sample count][uint32 end offsets][shard config JSON][samples]``, every sample
``[uint32 size per variable-size column][each column's bytes]``. Shards compressed with
zstd, gz or bz2 are decompressed as they are read, up to the raw size the index states.

What a record is (the dataset's ``meta["import"]`` says which, with every column's name,
MDS encoding and fixed size):

- ``field="col", decode="raw"``: that column's bytes exactly as MDS stored them
  (``meta["import"]["record"] == "bytes"``);
- ``field="col", decode="natural"``: the column as its natural type: ``bytes``, ``str``,
  ``json``, ``jpeg``, ``png`` and the ``str_*`` encodings as their bytes (UTF-8 text),
  ``int`` and the scalar encodings as a 0-d array, ``ndarray:<dtype>[:<shape>]`` as the
  array's values; arrays have ``meta["dtype"]`` (and ``meta["shape"]`` when MDS fixes one)
  (``record`` is ``"array"``, or ``"bytes"``). An ``ndarray`` column without a fixed dtype,
  ``pil``, ``pkl`` and list encodings have no natural form here: use ``decode="raw"``;
- ``field=None, decode="raw"``: the whole sample, each column's stored bytes, framed as
  ``[uint64 LE size per column][the columns' bytes]`` in ``meta["import"]["fields"]``
  order (``record == "fields"``; :func:`roxxel.imports.split_fields` reads it back);
- ``field=None, decode="natural"``: the whole sample as one UTF-8 JSON object of the
  columns' natural values (arrays as nested lists, ``json`` columns as their value,
  ``str_decimal`` as a string); binary columns cannot be JSON and are refused
  (``record == "json"``).

Digests the index states for a shard file (``MDSWriter(hashes=[...])``: hashlib's, and
xxhash's when installed) are checked once the shard is read; a mismatch raises
SourceFormatError after its records, so a ``Writer`` fed by the import publishes nothing.
Pickled columns are never unpickled (``pkl``: raw bytes only).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..backends import Store
from ..errors import SourceFormatError
from ..manifest.keys import key_problem
from ._binary import HashingReader, decompressed, hashers, items
from ._common import (
    Record,
    Source,
    Unit,
    check_choice,
    frame_fields,
    join,
    open_stream,
    spec,
    to_json_bytes,
)

__all__ = ["read_unit", "source"]

FORMAT = "mds"
INDEX = "index.json"
_INDEX_MAX_BYTES = 256 << 20
_DECODES = ("raw", "natural")

_SCALARS = {
    "uint8": "<u1", "uint16": "<u2", "uint32": "<u4", "uint64": "<u8",
    "int8": "<i1", "int16": "<i2", "int32": "<i4", "int64": "<i8",
    "float16": "<f2", "float32": "<f4", "float64": "<f8", "int": "<i8",
}
_NDARRAY_DTYPES = {
    "uint8", "int8", "uint16", "int16", "float16", "uint32", "int32", "float32", "uint64", "int64", "float64",
}
_NDARRAY_VALUE_CODES = {8: "uint8", 9: "int8", 16: "uint16", 17: "int16", 18: "float16", 32: "uint32",
                        33: "int32", 34: "float32", 64: "uint64", 65: "int64", 66: "float64"}
_TEXT = {"str", "json", "str_int", "str_float", "str_decimal"}
_FILE_BYTES = {"bytes", "jpeg", "png"}


def source(
    url: str,
    *,
    field: str | None = None,
    decode: str = "raw",
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """The MDS directory at ``url`` (local or in a store) as a :class:`Source`.

    Reads ``index.json`` and lists the directory (nothing else): every shard the index
    names must be there with the size it states. One unit per shard. See the module
    docstring for ``field`` and ``decode``.
    """
    check_choice("decode", decode, _DECODES)
    store = Store(url, storage_options)
    label = join(url, INDEX)
    index = _load_index(store.read_bytes(INDEX, max_bytes=_INDEX_MAX_BYTES), label)
    shards = index["shards"]
    columns = _columns(shards, label)
    names = [c[0] for c in columns]
    if field is not None and field not in names:
        raise ValueError(f"{label}: no column {field!r}; the columns are {', '.join(names)}")
    meta = _meta(columns, field, decode, label)
    sizes = {key: size for key, size, _ in store.list_info()}
    units = []
    for number, shard in enumerate(shards):
        stored = shard["zip_data"] if shard["compression"] else shard["raw_data"]
        key = stored["basename"]
        where = f"{label}: shards[{number}]"
        if key not in sizes:
            raise SourceFormatError(f"{where}: shard file {join(url, key)} does not exist")
        if sizes[key] != stored["bytes"]:
            raise SourceFormatError(f"{where}: {join(url, key)} has {sizes[key]} bytes, the index says "
                                    f"{stored['bytes']}")
        units.append(Unit(FORMAT, url, key, number, sizes[key], spec=spec(
            field=field, decode=decode, columns=columns, samples=shard["samples"],
            raw_bytes=shard["raw_data"]["bytes"], compression=shard["compression"], hashes=stored.get("hashes"))))
    return Source(FORMAT, tuple(units), meta, storage_options)


def read_unit(unit: Unit, storage_options: Mapping[str, Any] | None = None) -> Iterator[Record]:
    """The records of one shard (a unit of :func:`source`), in order."""
    options = unit.options
    columns = [tuple(c) for c in options["columns"]]
    field, decode = options["field"], options["decode"]
    label = unit.label
    pick = None if field is None else [c[0] for c in columns].index(field)
    decoders = [_field_decoder(c, label) for c in columns] if decode == "natural" else None
    with open_stream(unit, storage_options) as f:
        hashed = HashingReader(f, hashers(options.get("hashes"), label), label)
        stream = decompressed(hashed, options["compression"], label)
        for position, sample in items(stream, label, count=options["samples"], size=options["raw_bytes"]):
            values = _split(sample, columns, label, position)
            if pick is not None:
                value = values[pick]
                yield decoders[pick](value, position) if decoders else bytes(value)
            elif decoders is None:
                yield frame_fields(values)
            else:
                yield to_json_bytes({c[0]: _json_value(c, v, label, position) for c, v in zip(columns, values)},
                                    label, f"sample {position}")
        hashed.check()  # the shard's digests, if its index states any: after its records, before the next


# -- the index -------------------------------------------------------------------------


def _load_index(data: bytes, label: str) -> dict[str, Any]:
    try:
        index = json.loads(data)
    except (ValueError, RecursionError) as exc:  # (nested past the limit)
        raise SourceFormatError(f"{label}: not JSON: {exc}") from None
    if not isinstance(index, dict):
        raise SourceFormatError(f"{label}: expected a JSON object, got {type(index).__name__}")
    if index.get("version") != 2:
        raise SourceFormatError(f"{label}: version {index.get('version')!r} is not MDS index version 2")
    shards = index.get("shards")
    if not isinstance(shards, list):
        raise SourceFormatError(f"{label}: shards must be a list, got {type(shards).__name__}")
    for number, shard in enumerate(shards):
        _check_shard(shard, f"{label}: shards[{number}]")
    return index


def _int(value: Any, where: str, name: str, low: int = 0, high: int = 2**32 - 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SourceFormatError(f"{where}: {name} must be an integer in [{low}, {high}], got {value!r}")
    return value


def _check_shard(shard: Any, where: str) -> None:
    if not isinstance(shard, dict):
        raise SourceFormatError(f"{where}: expected an object, got {type(shard).__name__}")
    if shard.get("format") != "mds":
        raise SourceFormatError(f"{where}: format {shard.get('format')!r} is not 'mds'")
    _int(shard.get("samples"), where, "samples")
    compression = shard.get("compression")
    if compression is not None and not isinstance(compression, str):
        raise SourceFormatError(f"{where}: compression must be a string or null, got {compression!r}")
    for name in ("raw_data", "zip_data") if compression else ("raw_data",):
        entry = shard.get(name)
        if not isinstance(entry, dict):
            raise SourceFormatError(f"{where}: {name} must be an object, got {entry!r}")
        basename = entry.get("basename")
        problem = key_problem(basename) if isinstance(basename, str) else "a string"
        if problem is not None:
            raise SourceFormatError(f"{where}: {name}.basename must be {problem}, got {basename!r}")
        _int(entry.get("bytes"), where, f"{name}.bytes", high=2**32 - 1 if name == "raw_data" else 2**63 - 1)
    names, encodings, sizes = (shard.get(k) for k in ("column_names", "column_encodings", "column_sizes"))
    for key, value in (("column_names", names), ("column_encodings", encodings), ("column_sizes", sizes)):
        if not isinstance(value, list) or not value:
            raise SourceFormatError(f"{where}: {key} must be a non-empty list, got {value!r}")
    if not len(names) == len(encodings) == len(sizes):
        raise SourceFormatError(f"{where}: column_names, column_encodings and column_sizes differ in length "
                                f"({len(names)}, {len(encodings)}, {len(sizes)})")
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise SourceFormatError(f"{where}: column_names must be distinct non-empty strings, got {names!r}")
    for name, encoding, size in zip(names, encodings, sizes):
        if not isinstance(encoding, str):
            raise SourceFormatError(f"{where}: column {name!r}: encoding must be a string, got {encoding!r}")
        if size is not None:
            _int(size, where, f"column {name!r} size", low=1)
        fixed = _fixed_size(encoding, f"{where}: column {name!r}")
        if fixed is not None and size != fixed:
            raise SourceFormatError(f"{where}: column {name!r} of encoding {encoding!r} has size {size!r}, "
                                    f"the encoding's is {fixed}")


def _ndarray(encoding: str, where: str) -> tuple[str | None, tuple[int, ...] | None]:
    parts = encoding.split(":")
    if len(parts) > 3 or (len(parts) > 1 and parts[1] not in _NDARRAY_DTYPES):
        raise SourceFormatError(f"{where}: encoding {encoding!r} is not an MDS ndarray encoding")
    dtype = parts[1] if len(parts) > 1 else None
    shape = None
    if len(parts) == 3:
        try:
            shape = tuple(int(d) for d in parts[2].split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1:
            raise SourceFormatError(f"{where}: encoding {encoding!r} has a bad shape {parts[2]!r}")
    return dtype, shape


def _fixed_size(encoding: str, where: str) -> int | None:
    if encoding in _SCALARS:
        return int(np.dtype(_SCALARS[encoding]).itemsize)
    if encoding == "ndarray" or encoding.startswith("ndarray:"):
        dtype, shape = _ndarray(encoding, where)
        if dtype is not None and shape is not None:
            return int(np.prod(shape)) * np.dtype(dtype).itemsize
    return None


def _columns(shards: list[dict[str, Any]], label: str) -> list[tuple[str, str, int | None]]:
    if not shards:
        return []
    first = list(zip(shards[0]["column_names"], shards[0]["column_encodings"], shards[0]["column_sizes"]))
    for number, shard in enumerate(shards[1:], start=1):
        these = list(zip(shard["column_names"], shard["column_encodings"], shard["column_sizes"]))
        if these != first:
            raise SourceFormatError(f"{label}: shards[{number}] has columns {these}, shards[0] has {first}")
    return first


def _meta(columns: Sequence[tuple[str, str, int | None]], field: str | None, decode: str,
          label: str) -> dict[str, Any]:
    described = [{"name": n, "encoding": e, "size": s} for n, e, s in columns]
    info: dict[str, Any] = {"format": FORMAT, "decode": decode, "columns": described}
    meta: dict[str, Any] = {}
    if field is None:
        info["fields"] = [n for n, _, _ in columns]
        if decode == "raw":
            info["record"] = "fields"
        else:
            for column in columns:
                _json_kind(column, label)  # refuses binary columns now, not at the first sample
            info["record"] = "json"
    else:
        info["field"] = field
        column = next(c for c in columns if c[0] == field)
        kind, dtype, shape = _natural(column, label) if decode == "natural" else ("bytes", None, None)
        info["record"] = kind
        if dtype is not None:
            meta["dtype"] = np.dtype(dtype).str
            if shape is not None:
                meta["shape"] = list(shape)
    meta["import"] = info
    return meta


# -- samples -------------------------------------------------------------------------


def _split(sample: bytes, columns: Sequence[tuple[Any, ...]], label: str, position: int) -> list[memoryview]:
    """The columns' stored bytes of one sample, checked against its length."""
    variable = sum(1 for c in columns if c[2] is None)
    view = memoryview(sample)
    header = 4 * variable
    if len(view) < header:
        raise SourceFormatError(f"{label}: sample {position} has {len(view)} bytes, less than its "
                                f"{header}-byte size header")
    sizes = iter(np.frombuffer(view[:header], "<u4").tolist())
    lengths = [c[2] if c[2] is not None else next(sizes) for c in columns]
    if header + sum(lengths) != len(view):
        raise SourceFormatError(f"{label}: sample {position}: column sizes {lengths} add up to "
                                f"{header + sum(lengths)} bytes with the header, the sample has {len(view)}")
    out = []
    pos = header
    for length in lengths:
        out.append(view[pos : pos + length])
        pos += length
    return out


def _natural(column: tuple[Any, ...], label: str) -> tuple[str, str | None, tuple[int, ...] | None]:
    """(record kind, dtype, fixed shape) of a column decoded naturally, or SourceFormatError."""
    name, encoding, _ = column
    if encoding in _FILE_BYTES or encoding in _TEXT:
        return "bytes", None, None
    if encoding in _SCALARS:
        return "array", _SCALARS[encoding], ()
    if encoding == "ndarray" or encoding.startswith("ndarray:"):
        dtype, shape = _ndarray(encoding, f"{label}: column {name!r}")
        if dtype is not None:
            return "array", dtype, shape
    raise SourceFormatError(f"{label}: column {name!r} of encoding {encoding!r} has no natural form roxxel "
                            "can store with one dtype for the dataset; use decode='raw'")


def _json_kind(column: tuple[Any, ...], label: str) -> str:
    name, encoding, _ = column
    if encoding in _TEXT or encoding in _SCALARS:
        return encoding
    if encoding == "ndarray" or encoding.startswith("ndarray:"):
        _ndarray(encoding, f"{label}: column {name!r}")
        return "ndarray"
    raise SourceFormatError(f"{label}: column {name!r} of encoding {encoding!r} cannot be JSON; use "
                            "decode='raw', or field= to take one column")


def _array(value: memoryview, encoding: str, where: str) -> np.ndarray:
    """The values of an MDS ndarray column (its dtype/shape header checked, if any)."""
    dtype, shape = _ndarray(encoding, where)
    pos = 0
    if dtype is None:
        if not len(value):
            raise SourceFormatError(f"{where}: empty ndarray value")
        code = value[0]
        if code not in _NDARRAY_VALUE_CODES:
            raise SourceFormatError(f"{where}: ndarray dtype code {code} is not one MDS writes")
        dtype, pos = _NDARRAY_VALUE_CODES[code], 1
    if shape is None:
        if len(value) <= pos:
            raise SourceFormatError(f"{where}: ndarray value ends before its shape")
        byte = value[pos]
        ndim, width = byte >> 2, 2 ** (byte & 3)
        pos += 1
        if len(value) < pos + ndim * width:
            raise SourceFormatError(f"{where}: ndarray value ends inside its {ndim}-dimension shape")
        shape = tuple(np.frombuffer(value[pos : pos + ndim * width], f"<u{width}").tolist())
        pos += ndim * width
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize if shape else np.dtype(dtype).itemsize
    if len(value) - pos != expected:
        raise SourceFormatError(f"{where}: ndarray of {dtype} shape {list(shape)} needs {expected} bytes, "
                                f"the value has {len(value) - pos}")
    return np.frombuffer(value[pos:], np.dtype(dtype).newbyteorder("<")).reshape(shape)


def _field_decoder(column: tuple[Any, ...], label: str) -> Any:
    name, encoding, _ = column
    if encoding in _SCALARS:
        dtype = np.dtype(_SCALARS[encoding])
        return lambda value, position: np.frombuffer(value, dtype).reshape(())
    if encoding == "ndarray" or encoding.startswith("ndarray:"):
        return lambda value, position: _array(value, encoding, f"{label}: sample {position} column {name!r}")
    return lambda value, position: bytes(value)


def _json_value(column: tuple[Any, ...], value: memoryview, label: str, position: int) -> Any:
    name, encoding, _ = column
    where = f"{label}: sample {position} column {name!r}"
    try:
        if encoding in _SCALARS:
            return np.frombuffer(value, _SCALARS[encoding])[0].item()
        if encoding.startswith("ndarray"):
            return _array(value, encoding, where).tolist()
        text = bytes(value).decode("utf-8")
        if encoding == "json":
            return json.loads(text)
        if encoding == "str_int":
            return int(text)
        if encoding == "str_float":
            return float(text)
        return text
    except ValueError as exc:
        raise SourceFormatError(f"{where}: not a valid {encoding} value: {exc}") from None
