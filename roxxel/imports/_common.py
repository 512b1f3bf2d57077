"""What every import shares: units of work, sources, the sample framing, and safe reads.

A :class:`Unit` is one file (or one Parquet row group) of a source: small, picklable, and
free of credentials, so an engine can send it to any worker, which reads it with
:func:`roxxel.imports.read_unit` and the ``storage_options`` it was given separately.
"""

from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import numpy as np

from ..backends import Store
from ..backends.urls import redact
from ..errors import SourceFormatError

__all__ = [
    "Record",
    "Source",
    "Unit",
    "frame_fields",
    "locate",
    "natural_key",
    "open_stream",
    "split_fields",
]

#: What an import yields: bytes, or a NumPy array whose dtype and shape the meta names.
Record = bytes | np.ndarray

_READ_BUFFER = 8 << 20  # each read of a store file is one watched call: few, large ones


@dataclass(frozen=True)
class Unit:
    """One unit of parallel work of a source: a file, or one row group of a Parquet file.

    ``url`` is the directory (or prefix) the file is in and ``key`` its name there;
    ``index`` its position in the source's order; ``size`` its stored bytes (for progress);
    ``part`` the row group (Parquet) or None; ``spec`` a JSON text of what reading it
    needs (the import's options and, for MDS and LitData, the file's index entry).
    Units never hold credentials: ``storage_options`` travel separately.
    """

    format: str
    url: str
    key: str
    index: int
    size: int
    part: int | None = None
    spec: str = "{}"

    @property
    def options(self) -> dict[str, Any]:
        """The decoded :attr:`spec`."""
        value = json.loads(self.spec)
        return value if isinstance(value, dict) else {}

    @property
    def label(self) -> str:
        """The unit's file for messages (credentials masked), with its row group if any."""
        name = join(self.url, self.key)
        return name if self.part is None else f"{name} (row group {self.part})"


@dataclass(frozen=True)
class Source:
    """A source's units of work in order, and the ``meta`` its records need to be read.

    Iterating yields every record of every unit in order (:func:`read_unit` on each).
    ``storage_options`` are kept for that and never shown.
    """

    format: str
    units: tuple[Unit, ...]
    meta: Mapping[str, Any]
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)

    def __iter__(self) -> Iterator[Record]:
        from . import read_unit

        for unit in self.units:
            yield from read_unit(unit, self.storage_options)

    @property
    def size(self) -> int:
        """The stored bytes of all units (what progress counts)."""
        return sum(unit.size for unit in self.units)


def join(url: str, key: str) -> str:
    """``url``/``key`` for messages, credentials masked."""
    return redact(f"{url.rstrip('/')}/{key}" if url else key)


def natural_key(name: str) -> list[Any]:
    """Sort key comparing digit runs as numbers: ``chunk-0-9`` before ``chunk-0-10``."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def locate(
    inputs: Sequence[str | os.PathLike[str]],
    storage_options: Mapping[str, Any] | None,
    suffixes: tuple[str, ...],
) -> list[tuple[str, str, int]]:
    """``(directory url, key, size)`` of every input file, in order.

    A file is taken as given; a directory (or prefix) is listed recursively and its files
    whose names end with one of ``suffixes`` are taken in natural order (numbers compared
    as numbers). A missing input raises NotFoundError naming it.
    """
    found: list[tuple[str, str, int]] = []
    for given in inputs:
        url = os.fspath(given).rstrip("/") or os.fspath(given)
        store = Store(url, storage_options)
        if store.fs.isdir(store.root):
            listed = [(key, size) for key, size, _ in store.list_info() if key.endswith(suffixes)]
            if not listed:
                raise FileNotFoundError(f"{redact(url)}: no files ending with {', '.join(suffixes)}")
            found.extend((url, key, size) for key, size in sorted(listed, key=lambda k: natural_key(k[0])))
            continue
        head, sep, name = url.rpartition("/")
        if not name:
            raise FileNotFoundError(f"input {redact(url)} names no file")
        parent = head if head else ("/" if sep else ".")
        size = Store(parent, storage_options).size(name)
        found.append((parent, name, size))
    return found


def open_stream(unit: Unit, storage_options: Mapping[str, Any] | None) -> BinaryIO:
    """A buffered, seekable binary file over the unit's file (reads retried, translated)."""
    raw = Store(unit.url, storage_options).open_read(unit.key)
    return io.BufferedReader(raw, buffer_size=_READ_BUFFER)  # type: ignore[arg-type]


def frame_fields(values: Sequence[bytes | memoryview]) -> bytes:
    """One record of several fields: ``[uint64 LE size per field][the fields' bytes]``.

    The field names and their order are in the dataset's meta (``import.fields``), so a
    record carries sizes only; :func:`split_fields` reads it back.
    """
    sizes = np.fromiter((memoryview(v).nbytes for v in values), dtype="<u8", count=len(values))
    return b"".join([sizes.tobytes(), *values])


def split_fields(record: Any, fields: Sequence[str]) -> dict[str, memoryview]:
    """The fields of a record written by :func:`frame_fields`, by name (zero-copy views).

    ``record`` is bytes-like or a NumPy array (``ds[i]``); ``fields`` is the dataset's
    ``meta["import"]["fields"]``. ValueError if the sizes do not add up to the record.
    """
    view = memoryview(np.ascontiguousarray(record) if isinstance(record, np.ndarray) else record).cast("B")
    count = len(fields)
    header = 8 * count
    if view.nbytes < header:
        raise ValueError(f"record of {view.nbytes} bytes is shorter than its {count} field sizes")
    sizes = np.frombuffer(view[:header], dtype="<u8")
    if int(sizes.sum(dtype=np.uint64)) != view.nbytes - header or bool((sizes > view.nbytes).any()):
        raise ValueError(f"field sizes {sizes.tolist()} do not add up to the record's {view.nbytes - header} bytes")
    out: dict[str, memoryview] = {}
    pos = header
    for name, size in zip(fields, sizes.tolist()):
        out[name] = view[pos : pos + size]
        pos += size
    return out


def check_choice(name: str, value: Any, choices: Sequence[Any]) -> None:
    """ValueError naming the option unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def to_json_bytes(obj: Mapping[str, Any], label: str, what: str) -> bytes:
    """``obj`` as compact UTF-8 JSON; SourceFormatError naming ``what`` if it cannot be."""
    try:
        return json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise SourceFormatError(f"{label}: {what} cannot be JSON: {exc}") from None


def spec(**options: Any) -> str:
    """The JSON text of a unit's options (sorted keys: equal options, equal units)."""
    return json.dumps(options, sort_keys=True, separators=(",", ":"))

