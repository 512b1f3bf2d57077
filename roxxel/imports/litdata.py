"""LitData optimized directories: ``index.json`` (``config`` and ``chunks``) and
``chunk-<worker>-<n>.bin`` files, read without LitData's code.

Chunks are read in numeric order of their names (``chunk-0-9`` before ``chunk-0-10``),
which is item order for ``keep_data_ordered=True``. A chunk is
``[uint32 item count][uint32 end offsets][items]``, an item ``[uint32 size per leaf][the
leaves' bytes]``; ``config.data_format`` names each leaf's serializer and
``config.data_spec`` the structure (a flat dict's keys name the fields; otherwise the
fields are the leaf positions ``"0"``, ``"1"``, ...). zstd-compressed chunks are read
in all three of LitData's layouts: whole files (``compression_level="chunk"``,
``chunk-*.zstd.bin``, decompressed as they are read), frames of ``compression_batch_size``
items (``"batch"``, the default; one frame in memory at a time) and one frame per item
(``"sample"``); every frame's size is checked against the offsets, and a frame above
1 GiB is refused. Encrypted chunks are refused with a clear error.

Rows of plain dicts (str, numbers, lists) may be kept only in an Arrow IPC file at the end
of each chunk (``[chunk][IPC file][uint32 LE its size]["LDARW01\0"]``; LitData does this
when pyarrow is installed). Those are read through pyarrow, one record batch at a time,
and their records are as for Parquet (``meta["import"]["rows"] == "arrow-footer"``): a
field's value (``field=``), or the row as a one-row Arrow IPC stream (``decode="raw"``)
or a JSON object (``decode="natural"``).

What a record is (``meta["import"]`` lists the fields and their serializers):

- ``field="x", decode="raw"``: that leaf's serialized bytes (``record == "bytes"``);
- ``field="x", decode="natural"``: ``bytes``, ``str``, ``text`` as their bytes; ``int``,
  ``float``, ``bool`` as 0-d ``int64``/``float64``/``bool`` arrays; ``no_header_numpy:N``
  and ``no_header_tensor:N`` as 1-D arrays of their dtype (``meta["dtype"]``); other
  serializers (``numpy``/``tensor`` with a per-item dtype, ``json``, images, ``pickle``)
  have no natural form here: use ``decode="raw"``;
- ``field=None, decode="raw"``: the item's leaves framed as ``[uint64 LE size per
  field][the fields' bytes]`` (``record == "fields"``);
- ``field=None, decode="natural"``: the item as a JSON object of the leaves' natural
  values (arrays as lists; binary leaves refused; ``record == "json"``).

Pickled leaves are never unpickled. One unit per chunk.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..backends import Store
from ..errors import SourceFormatError
from ..manifest.keys import key_problem
from . import parquet
from ._binary import decompressed, items, read_exact
from ._common import (
    Record,
    Source,
    Unit,
    check_choice,
    frame_fields,
    join,
    natural_key,
    open_stream,
    spec,
    to_json_bytes,
)

__all__ = ["read_unit", "source"]

FORMAT = "litdata"
INDEX = "index.json"
_INDEX_MAX_BYTES = 256 << 20
_DECODES = ("raw", "natural")
# LitData's dtype tables (litdata/constants.py): index -> dtype.
_NUMPY = ["int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float16", "float32",
          "float64", "complex64", "complex128", "bool"]
_TORCH = {0: "float32", 1: "float32", 2: "float64", 3: "float64", 4: "complex64", 5: "complex64",
          6: "complex128", 7: "complex128", 8: "float16", 9: "float16", 11: "uint8", 12: "int8", 13: "int16",
          14: "int16", 15: "int32", 16: "int32", 17: "int64", 18: "int64", 19: "bool", 20: "uint16"}
_SCALARS = {"int": "<i8", "float": "<f8", "bool": "|b1"}
_TEXT = {"str", "text"}


def source(
    url: str,
    *,
    field: str | None = None,
    decode: str = "raw",
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """The LitData directory at ``url`` (local or in a store) as a :class:`Source`.

    Reads ``index.json`` and lists the directory: every chunk the index names must be
    there. One unit per chunk, in numeric order of the chunk names.
    """
    check_choice("decode", decode, _DECODES)
    store = Store(url, storage_options)
    label = join(url, INDEX)
    config, chunks = _load_index(store.read_bytes(INDEX, max_bytes=_INDEX_MAX_BYTES), label)
    formats = config["data_format"]
    names = _field_names(config.get("data_spec"), len(formats), label)
    compression = config.get("compression")
    level = config.get("compression_level")
    whole = compression is not None and level in (None, "chunk")
    sizes = {key: size for key, size, _ in store.list_info()}
    ordered = sorted(chunks, key=lambda c: natural_key(c["filename"]))
    for chunk in ordered:
        key = chunk["filename"]
        if key not in sizes:
            raise SourceFormatError(f"{label}: chunk file {join(url, key)} does not exist")
        if not whole and sizes[key] != chunk["chunk_bytes"]:
            raise SourceFormatError(f"{label}: {join(url, key)} has {sizes[key]} bytes, the index says "
                                    f"{chunk['chunk_bytes']}")
    schema = None
    if ordered and not whole:  # rows only in Arrow footers? The first chunk says.
        first = ordered[0]
        schema = _footer_schema(store, first, sizes[first["filename"]], join(url, first["filename"]))
    rows = None if schema is None else ("arrow" if decode == "raw" else "json")
    fields = names if schema is None else schema.names
    if field is not None and field not in fields:
        raise ValueError(f"{label}: no field {field!r}; the fields are {', '.join(fields)}")
    if schema is None:
        meta = _meta(names, formats, field, decode, label)
    else:
        meta = _arrow_meta(schema, field, decode, rows, label)
    units = []
    for number, chunk in enumerate(ordered):
        key = chunk["filename"]
        units.append(Unit(FORMAT, url, key, number, sizes[key], spec=spec(
            field=field, decode=decode, names=names, formats=formats, items=chunk["chunk_size"],
            raw_bytes=chunk["chunk_bytes"], compression=compression, level=level, rows=rows)))
    return Source(FORMAT, tuple(units), meta, storage_options)


def read_unit(unit: Unit, storage_options: Mapping[str, Any] | None = None) -> Iterator[Record]:
    """The records of one chunk (a unit of :func:`source`), in order."""
    options = unit.options
    names, formats = options["names"], options["formats"]
    field, decode = options["field"], options["decode"]
    label = unit.label
    pick = None if field is None else names.index(field)
    level = options.get("level")
    whole = options["compression"] is not None and level in (None, "chunk")  # a .zstd.bin file
    if options.get("rows") is not None:
        yield from _footer_records(unit, storage_options)
        return
    with open_stream(unit, storage_options) as f:
        footer = None if whole else _footer(f, label)
        # The index's size is the decompressed one; an Arrow footer after the items is not theirs.
        size = options["raw_bytes"] - (0 if footer is None else footer[1] + 12)
        if f.peek(8)[:8] == _FRAMED_MAGIC:
            chunk = _framed_items(f, label, count=options["items"], size=size)
        else:
            chunk = items(decompressed(f, options["compression"] if whole else None, label), label,
                          count=options["items"], size=size, item="item")
        for position, item in chunk:
            if level == "sample" and options["compression"] is not None:
                item = _inflate(item, label, f"item {position}")
            leaves = _split(item, len(formats), label, position)
            if pick is not None:
                value = leaves[pick]
                yield _natural_value(formats[pick], value) if decode == "natural" else bytes(value)
            elif decode == "raw":
                yield frame_fields(leaves)
            else:
                yield to_json_bytes({n: _json_value(fmt, v, f"{label}: item {position} field {n!r}")
                                     for n, fmt, v in zip(names, formats, leaves)}, label, f"item {position}")


# -- zstd frames inside chunks ---------------------------------------------------------

_FRAMED_MAGIC = b"LDFZ01\0\0"
_FRAMED_PREFIX = struct.Struct("<8sHHIII")
_FRAME = struct.Struct("<IIQII")
_MAX_FRAME_BYTES = 1 << 30


def _inflate(data: bytes, label: str, what: str, size: int | None = None) -> bytes:
    """One zstd frame, decompressed to at most 1 GiB (exactly ``size`` bytes if given)."""
    import zstandard

    limit = _MAX_FRAME_BYTES if size is None else size
    try:
        out = zstandard.ZstdDecompressor().decompress(data, max_output_size=limit)
    except zstandard.ZstdError as exc:
        raise SourceFormatError(f"{label}: {what}: not a zstd frame of at most {limit} bytes: {exc}") from None
    if size is not None and len(out) != size:
        raise SourceFormatError(f"{label}: {what} inflates to {len(out)} bytes, the chunk says {size}")
    return out


def _framed_items(f: Any, label: str, *, count: int, size: int) -> Iterator[tuple[int, bytes]]:
    """``(position, bytes)`` of each item of a ``compression_level="batch"`` chunk, in order:
    ``[prefix][uint32 item offsets][frame table][zstd frames]``, one frame inflated at a time."""
    prefix = read_exact(f, _FRAMED_PREFIX.size, label, "the prefix")
    _, version, _, found, _, frames = _FRAMED_PREFIX.unpack(prefix)
    if version != 1:
        raise SourceFormatError(f"{label}: framed zstd chunk version {version} is not 1")
    if found != count:
        raise SourceFormatError(f"{label}: the file holds {found} items, its index says {count}")
    if _FRAMED_PREFIX.size + 4 * (count + 1) + _FRAME.size * frames > size:
        raise SourceFormatError(f"{label}: {count} items in {frames} frames need more than the {size}-byte file")
    if not 0 < frames <= max(count, 1):
        raise SourceFormatError(f"{label}: {frames} zstd frames for {count} items")
    offsets = np.frombuffer(read_exact(f, 4 * (count + 1), label, "the offset table"), "<u4").astype(np.int64)
    if offsets[0] != 0 or bool((np.diff(offsets) < 0).any()):
        raise SourceFormatError(f"{label}: the item offsets are not increasing from 0")
    table = [_FRAME.unpack(read_exact(f, _FRAME.size, label, "the frame table")) for _ in range(frames)]
    cursor = _FRAMED_PREFIX.size + 4 * (count + 1) + _FRAME.size * frames
    position = 0
    for number, (first, items_in, where, stored, raw) in enumerate(table):
        what = f"zstd frame {number}"
        if first != position or items_in < 1 or first + items_in > count:
            raise SourceFormatError(f"{label}: {what} holds items {first}..{first + items_in - 1}, expected from "
                                    f"{position}, within {count}")
        if where != cursor or where + stored > size:
            raise SourceFormatError(f"{label}: {what} at offset {where} ({stored} bytes) is not where the previous "
                                    f"one ends ({cursor}) within the {size}-byte file")
        if raw != offsets[first + items_in] - offsets[first] or raw > _MAX_FRAME_BYTES:
            raise SourceFormatError(f"{label}: {what} says {raw} bytes inflated, its items' offsets say "
                                    f"{int(offsets[first + items_in] - offsets[first])} (at most 1 GiB)")
        data = _inflate(read_exact(f, stored, label, what), label, what, raw)
        base = int(offsets[first])
        for i in range(first, first + items_in):
            yield i, data[int(offsets[i]) - base : int(offsets[i + 1]) - base]
        position += items_in
        cursor += stored
    if position != count or cursor != size:
        raise SourceFormatError(f"{label}: the frames hold {position} items in {cursor} bytes, the chunk has "
                                f"{count} items in {size} bytes")


# -- the index -------------------------------------------------------------------------


def _load_index(data: bytes, label: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    try:
        index = json.loads(data)
    except (ValueError, RecursionError) as exc:  # (nested past the limit)
        raise SourceFormatError(f"{label}: not JSON: {exc}") from None
    if not isinstance(index, dict) or not isinstance(index.get("config"), dict):
        raise SourceFormatError(f"{label}: expected an object with a 'config' object")
    config, chunks = index["config"], index.get("chunks")
    if not isinstance(chunks, list):
        raise SourceFormatError(f"{label}: chunks must be a list, got {type(chunks).__name__}")
    formats = config.get("data_format")
    if not isinstance(formats, list) or not formats or not all(isinstance(x, str) and x for x in formats):
        raise SourceFormatError(f"{label}: config.data_format must be a non-empty list of strings, got {formats!r}")
    if config.get("encryption") is not None:
        raise SourceFormatError(f"{label}: config.encryption is {config['encryption']!r}: encrypted chunks are "
                                "not read by roxxel")
    compression = config.get("compression")
    if compression is not None and (not isinstance(compression, str) or compression.split(":")[0] != "zstd"):
        raise SourceFormatError(f"{label}: config.compression {compression!r} is not one roxxel reads (zstd)")
    if config.get("compression_level") not in (None, "chunk", "batch", "sample"):
        raise SourceFormatError(f"{label}: config.compression_level {config.get('compression_level')!r} is not "
                                "'chunk', 'batch' or 'sample'")
    if config.get("item_loader") not in (None, "PyTreeLoader"):
        raise SourceFormatError(f"{label}: config.item_loader {config.get('item_loader')!r} is not read by "
                                "roxxel (only PyTreeLoader)")
    seen = set()
    for number, chunk in enumerate(chunks):
        where = f"{label}: chunks[{number}]"
        if not isinstance(chunk, dict):
            raise SourceFormatError(f"{where}: expected an object, got {type(chunk).__name__}")
        name = chunk.get("filename")
        problem = key_problem(name) if isinstance(name, str) else "a string"
        if problem is not None:
            raise SourceFormatError(f"{where}: filename must be {problem}, got {name!r}")
        if name in seen:
            raise SourceFormatError(f"{where}: filename {name!r} is listed twice")
        seen.add(name)
        for key in ("chunk_size", "chunk_bytes"):
            value = chunk.get(key)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**32:
                raise SourceFormatError(f"{where}: {key} must be an integer in [0, 2**32), got {value!r}")
    return config, chunks


def _field_names(data_spec: Any, count: int, label: str) -> list[str]:
    """A flat dict's keys, else the leaf positions."""
    positions = [str(i) for i in range(count)]
    if not isinstance(data_spec, str):
        return positions
    try:
        tree = json.loads(data_spec)
        node = tree[1]
        if node.get("type") != "builtins.dict":
            return positions
        keys = json.loads(node["context"])
        leaves = all(child.get("type") is None and not child.get("children_spec") for child in node["children_spec"])
    except (ValueError, TypeError, KeyError, IndexError, AttributeError):
        raise SourceFormatError(f"{label}: config.data_spec is not a LitData tree spec: {data_spec[:200]!r}") from None
    if not leaves or not isinstance(keys, list) or len(keys) != count:
        return positions
    names = [str(k) for k in keys]
    return names if len(set(names)) == count else positions


def _meta(names: Sequence[str], formats: Sequence[str], field: str | None, decode: str,
          label: str) -> dict[str, Any]:
    info: dict[str, Any] = {"format": FORMAT, "decode": decode,
                            "fields_formats": dict(zip(names, formats))}
    meta: dict[str, Any] = {}
    if field is None:
        info["fields"] = list(names)
        if decode == "natural":
            for name, fmt in zip(names, formats):
                _json_value(fmt, None, f"{label}: field {name!r}")  # refuses binary leaves now
        info["record"] = "fields" if decode == "raw" else "json"
    else:
        info["field"] = field
        info["record"] = "bytes"
        if decode == "natural":
            dtype = _natural_dtype(formats[list(names).index(field)], f"{label}: field {field!r}")
            if dtype is not None:
                info["record"] = "array"
                meta["dtype"] = np.dtype(dtype).str
                if formats[list(names).index(field)] in _SCALARS:
                    meta["shape"] = []
    meta["import"] = info
    return meta


# -- items -----------------------------------------------------------------------------


def _split(item: bytes, count: int, label: str, position: int) -> list[memoryview]:
    view = memoryview(item)
    header = 4 * count
    if len(view) < header:
        hint = (" (LitData kept this chunk's rows in an Arrow IPC footer, which roxxel does not read)"
                if not len(view) else "")
        raise SourceFormatError(f"{label}: item {position} has {len(view)} bytes, less than its "
                                f"{header}-byte size header{hint}")
    sizes = np.frombuffer(view[:header], "<u4").tolist()
    if header + sum(sizes) != len(view):
        raise SourceFormatError(f"{label}: item {position}: leaf sizes {sizes} add up to "
                                f"{header + sum(sizes)} bytes with the header, the item has {len(view)}")
    out, pos = [], header
    for size in sizes:
        out.append(view[pos : pos + size])
        pos += size
    return out


def _natural_dtype(fmt: str, where: str) -> str | None:
    """The dtype of a leaf's natural value (None: bytes), or SourceFormatError."""
    name, _, arg = fmt.partition(":")
    if name in ("bytes", *_TEXT):
        return None
    if name in _SCALARS:
        return _SCALARS[name]
    try:
        if name == "no_header_numpy" and 0 <= int(arg) < len(_NUMPY):
            return _NUMPY[int(arg)]
        if name == "no_header_tensor" and int(arg) in _TORCH:
            return _TORCH[int(arg)]
    except ValueError:
        pass
    raise SourceFormatError(f"{where}: serializer {fmt!r} has no natural form roxxel can store with one "
                            "dtype for the dataset; use decode='raw'")


def _natural_value(fmt: str, value: memoryview) -> Record:
    dtype = _natural_dtype(fmt, fmt)
    if dtype is None:
        return bytes(value)
    array = np.frombuffer(value, np.dtype(dtype).newbyteorder("<") if dtype != "bool" else dtype)
    return array.reshape(()) if fmt in _SCALARS else array


def _json_value(fmt: str, value: memoryview | None, where: str) -> Any:
    """A leaf's natural value for JSON; with ``value=None``, only checks the serializer."""
    name = fmt.partition(":")[0]
    try:
        if name in _TEXT:
            return None if value is None else bytes(value).decode("utf-8")
        if name in _SCALARS or name in ("no_header_numpy", "no_header_tensor"):
            if value is None:
                _natural_dtype(fmt, where)
                return None
            return _natural_value(fmt, value).tolist()  # type: ignore[union-attr]
        if name == "numpy":
            return None if value is None else _header_array(value, "<", where).tolist()
        if name == "tensor":
            return None if value is None else _header_array(value, ">", where).tolist()
    except (ValueError, struct.error) as exc:
        raise SourceFormatError(f"{where}: not a valid {fmt} value: {exc}") from None
    raise SourceFormatError(f"{where}: serializer {fmt!r} cannot be JSON; use decode='raw', or field= to take "
                            "one field")


def _header_array(value: memoryview, order: str, where: str) -> np.ndarray:
    """A ``numpy`` (little-endian header) or ``tensor`` (big-endian header) leaf's array."""
    code, ndim = struct.unpack_from(f"{order}II", value, 0)
    table = dict(enumerate(_NUMPY)) if order == "<" else _TORCH
    if code not in table or ndim > 64:
        raise SourceFormatError(f"{where}: dtype code {code} / {ndim} dimensions are not LitData's")
    shape = struct.unpack_from(f"{order}{ndim}I", value, 8)
    dtype = np.dtype(table[code])
    data = value[8 + 4 * ndim :]
    if len(data) != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
        raise SourceFormatError(f"{where}: {dtype} array of shape {list(shape)} needs "
                                f"{int(np.prod(shape, dtype=np.int64)) * dtype.itemsize} bytes, has {len(data)}")
    return np.frombuffer(data, dtype).reshape(shape)


# -- rows kept in Arrow IPC footers ---------------------------------------------------------

_ARROW_MAGIC = b"LDARW01\0"


def _footer(f: Any, label: str) -> tuple[int, int] | None:
    """``(start, size)`` of the Arrow IPC file at the end of a chunk, or None; ``f`` is
    left at offset 0."""
    size = f.raw.size
    found = None
    if size >= 12:
        f.seek(size - 12)
        tail = read_exact(f, 12, label, "the footer")
        if tail[4:] == _ARROW_MAGIC:
            length = struct.unpack("<I", tail[:4])[0]
            if length > size - 12 - 8:
                raise SourceFormatError(f"{label}: the Arrow footer says it has {length} bytes, the file has "
                                        f"{size - 12} before it")
            found = (size - 12 - length, length)
    f.seek(0)
    return found


def _footer_schema(store: Store, chunk: Mapping[str, Any], size: int, label: str) -> Any:
    """The Arrow schema of a chunk whose rows are only in its Arrow footer, else None."""
    count = chunk["chunk_size"]
    header = 4 + 4 * (count + 1)
    if size < header + 12:
        return None
    offsets = np.frombuffer(store.read_range(chunk["filename"], 4, header), "<u4")
    if count == 0 or int(offsets[-1]) != header:
        return None  # items are in the chunk: read those
    tail = store.read_range(chunk["filename"], size - 12, size)
    if tail[4:] != _ARROW_MAGIC:
        return None
    pa = parquet._pyarrow()
    length = struct.unpack("<I", tail[:4])[0]
    if length > size - 12 - header:
        raise SourceFormatError(f"{label}: the Arrow footer says it has {length} bytes, the file has "
                                f"{size - 12 - header} for it")
    start = size - 12 - length
    with io.BufferedReader(store.open_read(chunk["filename"]), buffer_size=1 << 20) as f:  # type: ignore[arg-type]
        try:
            return pa.ipc.open_file(_Window(f, start, length)).schema
        except pa.ArrowException as exc:
            raise SourceFormatError(f"{label}: the Arrow footer is not an Arrow IPC file: {exc}") from exc


def _arrow_meta(schema: Any, field: str | None, decode: str, rows: str, label: str) -> dict[str, Any]:
    kind, dtype, shape = parquet.describe(schema, field, rows, label)
    info: dict[str, Any] = {"format": FORMAT, "decode": decode, "rows": "arrow-footer", "fields": schema.names,
                            "schema": str(schema), "record": kind}
    return parquet.described_meta(info, field, dtype, shape)


class _Window(io.RawIOBase):
    """Bytes ``[start, start + length)`` of a seekable file, as a file of their own."""

    def __init__(self, f: Any, start: int, length: int) -> None:
        super().__init__()
        self._f, self._start, self._length, self._pos = f, start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        want = max(0, min(len(view), self._length - self._pos))
        if not want:
            return 0
        self._f.seek(self._start + self._pos)
        data = self._f.read(want)
        view[: len(data)] = data
        self._pos += len(data)
        return len(data)


def _footer_records(unit: Unit, storage_options: Mapping[str, Any] | None) -> Iterator[Record]:
    """The records of a chunk whose rows are in its Arrow footer."""
    pa = parquet._pyarrow()
    options = unit.options
    label = unit.label
    with open_stream(unit, storage_options) as f:
        footer = _footer(f, label)
        if footer is None:
            raise SourceFormatError(f"{label}: no Arrow footer, though the directory's first chunk keeps its rows "
                                    "in one")
        count = struct.unpack("<I", read_exact(f, 4, label, "the item count"))[0]
        if count != options["items"]:
            raise SourceFormatError(f"{label}: the file holds {count} items, its index says {options['items']}")
        done = 0
        try:
            reader = pa.ipc.open_file(_Window(f, *footer))
            for number in range(reader.num_record_batches):
                batch = reader.get_batch(number)
                if done + batch.num_rows > count:
                    break
                yield from parquet.batch_records(batch, options["field"], options["rows"], label, done)
                done += batch.num_rows
        except pa.ArrowException as exc:
            raise SourceFormatError(f"{label}: the Arrow footer is unreadable after {done} rows: {exc}") from exc
        if done != count:
            raise SourceFormatError(f"{label}: the Arrow footer holds {'more than ' if done < count else ''}"
                                    f"{done} rows, the index says {count} items")
