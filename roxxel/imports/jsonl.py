"""JSON lines files: one record per non-blank line.

``field=None``: the line without its line ending (``meta`` gets no ``import`` entry: the
record is the line). ``field="text"``: the value of that key of each line's object, a
string as its UTF-8 bytes and anything else as compact JSON text
(``meta["import"]["record"] == "bytes"``). Every line must be valid JSON (a line that is
not raises ValueError naming the file and the line number), and with ``field`` an object
that has the key. Files ending with ``.gz`` are decompressed as they are read. One unit
per file.
"""

from __future__ import annotations

import gzip
import json
import os
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import SourceFormatError
from ._common import Record, Source, Unit, locate, open_stream, spec

__all__ = ["read_unit", "source"]

FORMAT = "jsonl"
MAX_LINE_BYTES = 1 << 30  # a file without line ends is refused, not read into memory whole
SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")


def source(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    field: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """The JSON lines files ``inputs``: files (any name), or directories, listed for
    ``*.jsonl`` and ``*.ndjson`` files (and their ``.gz``)."""
    if field is not None and (not isinstance(field, str) or not field):
        raise ValueError(f"field must be a non-empty string, got {field!r}")
    units = tuple(
        Unit(FORMAT, url, key, number, size, spec=spec(field=field))
        for number, (url, key, size) in enumerate(locate(inputs, storage_options, SUFFIXES))
    )
    meta: dict[str, Any] = {}
    if field is not None:
        meta["import"] = {"format": FORMAT, "field": field, "record": "bytes"}
    return Source(FORMAT, units, meta, storage_options)


def read_unit(unit: Unit, storage_options: Mapping[str, Any] | None = None) -> Iterator[Record]:
    """The records of one file, in order."""
    field = unit.options.get("field")
    label = unit.label
    with open_stream(unit, storage_options) as raw:
        f: Any = gzip.GzipFile(fileobj=raw, mode="rb") if unit.key.endswith(".gz") else raw
        yield from _lines(f, field, label)


def _lines(f: Any, field: str | None, label: str) -> Iterator[Record]:
    number = 0
    try:
        for number, line in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b""), start=1):
            if len(line) > MAX_LINE_BYTES:
                raise SourceFormatError(f"{label}:{number}: line longer than {MAX_LINE_BYTES} bytes")
            line = line.rstrip(b"\r\n")
            if not line.strip():
                continue  # blank lines are not records
            try:
                value = json.loads(line)
            except (ValueError, RecursionError) as exc:  # (nested past the limit)
                raise SourceFormatError(f"{label}:{number}: invalid JSON line: {exc}") from None
            if field is None:
                yield line
                continue
            if not isinstance(value, dict) or field not in value:
                raise SourceFormatError(f"{label}:{number}: field {field!r} missing from the line "
                                        f"(a JSON {type(value).__name__})")
            picked = value[field]
            if isinstance(picked, str):
                yield picked.encode("utf-8")
            else:
                yield json.dumps(picked, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    except (gzip.BadGzipFile, zlib.error, EOFError) as exc:
        raise SourceFormatError(f"{label}: damaged gzip data after line {number}: {exc}") from exc
