"""The ROXXEL01 shard byte layout: the one module that knows offsets and footers.

A shard is::

    [payload bytes][int64 LE end offset of each record][int64 LE record count]
    [int64 LE payload size][b"ROXXEL01"]

Record ``i`` is ``payload[end[i-1]:end[i]]`` (with ``end[-1] == 0``). The payload is clean
and contiguous, so it can be viewed as one flat array. Offsets are 64-bit: shards larger
than 4 GiB are legal. Nothing else (dtype, shape) lives in the shard.

Every byte read here is treated as hostile: the footer and the offset table are checked
against the file size before anything is mapped, and every violation raises
:class:`~roxxel.errors.ShardFormatError` naming the file, the field, and the expected and
actual values.
"""

from __future__ import annotations

import mmap
import os
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import BinaryIO, Protocol, Union

import numpy as np

from .errors import ShardFormatError

__all__ = [
    "FOOTER_SIZE",
    "MAGIC",
    "MappedShard",
    "ShardLayout",
    "ShardWriter",
    "Record",
    "check_offsets",
    "int_sequence",
    "parse_footer",
    "read_footer",
    "read_layout",
    "record_bytes",
]

MAGIC = b"ROXXEL01"
_FOOTER = struct.Struct("<qq8s")
FOOTER_SIZE = _FOOTER.size  # 24
OFFSET_SIZE = 8
_OFFSET_DTYPE = np.dtype("<i8")
_LITTLE_ENDIAN = sys.byteorder == "little"

Record = Union[bytes, bytearray, memoryview, str, np.ndarray]


class _Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


@dataclass(frozen=True)
class ShardLayout:
    """Where the parts of a validated shard lie; all sizes in bytes."""

    record_count: int
    payload_size: int

    @property
    def index_offset(self) -> int:
        return self.payload_size

    @property
    def file_size(self) -> int:
        return self.payload_size + OFFSET_SIZE * self.record_count + FOOTER_SIZE


def parse_footer(footer: bytes, file_size: int, name: str) -> ShardLayout:
    """Validate the last 24 bytes of a shard of ``file_size`` bytes and return its layout.

    Checks the magic, that both counts are non-negative, and that payload, index and
    footer add up to the file size exactly. ``name`` is used in error messages only.
    """
    if file_size < FOOTER_SIZE:
        raise ShardFormatError(
            f"{name}: file size is {file_size} bytes, expected at least {FOOTER_SIZE} "
            "(the ROXXEL01 footer)"
        )
    if len(footer) != FOOTER_SIZE:
        raise ShardFormatError(
            f"{name}: footer is {len(footer)} bytes, expected {FOOTER_SIZE}"
        )
    count, payload, magic = _FOOTER.unpack(footer)
    if magic != MAGIC:
        raise ShardFormatError(f"{name}: magic is {magic!r}, expected {MAGIC!r}")
    if count < 0:
        raise ShardFormatError(f"{name}: record count is {count}, expected >= 0")
    if payload < 0:
        raise ShardFormatError(f"{name}: payload size is {payload}, expected >= 0")
    expected = payload + OFFSET_SIZE * count + FOOTER_SIZE
    if expected != file_size:
        raise ShardFormatError(
            f"{name}: file size is {file_size} bytes, expected {expected} "
            f"(payload size {payload} + 8 * record count {count} + {FOOTER_SIZE})"
        )
    return ShardLayout(record_count=count, payload_size=payload)


def check_offsets(offsets: np.ndarray, layout: ShardLayout, name: str) -> None:
    """Check a shard's end-offset table: first >= 0, non-decreasing, last == payload size."""
    if len(offsets) != layout.record_count:
        raise ShardFormatError(
            f"{name}: offset table has {len(offsets)} entries, "
            f"expected {layout.record_count}"
        )
    if layout.record_count == 0:
        if layout.payload_size != 0:
            raise ShardFormatError(
                f"{name}: shard has 0 records but payload size {layout.payload_size}, "
                "expected 0"
            )
        return
    first = int(offsets[0])
    if first < 0:
        raise ShardFormatError(f"{name}: offset[0] is {first}, expected >= 0")
    if layout.record_count > 1:
        drops = np.flatnonzero(offsets[1:] < offsets[:-1])
        if len(drops):
            i = int(drops[0]) + 1
            raise ShardFormatError(
                f"{name}: offset[{i}] is {int(offsets[i])}, expected >= "
                f"offset[{i - 1}] = {int(offsets[i - 1])} (offsets must not decrease)"
            )
    last = int(offsets[-1])
    if last != layout.payload_size:
        raise ShardFormatError(
            f"{name}: offset[{layout.record_count - 1}] is {last}, "
            f"expected the payload size {layout.payload_size}"
        )


def read_footer(fd: int, name: str) -> tuple[ShardLayout, int]:
    """The validated layout of the shard open on ``fd``, and the file's size."""
    size = os.fstat(fd).st_size
    if size < FOOTER_SIZE:
        parse_footer(b"", size, name)  # raises with the size in the message
    return parse_footer(os.pread(fd, FOOTER_SIZE, size - FOOTER_SIZE), size, name), size


def read_layout(f: BinaryIO, file_size: int, name: str) -> tuple[ShardLayout, np.ndarray]:
    """Read and validate the footer and offset table of an open shard file.

    Memory used is the offset table only (8 bytes per record), never the payload.
    """
    if file_size < FOOTER_SIZE:
        parse_footer(b"", file_size, name)  # raises with the size in the message
    f.seek(file_size - FOOTER_SIZE)
    layout = parse_footer(f.read(FOOTER_SIZE), file_size, name)
    f.seek(layout.index_offset)
    raw = f.read(OFFSET_SIZE * layout.record_count)
    offsets = np.frombuffer(raw, dtype=_OFFSET_DTYPE)
    check_offsets(offsets, layout, name)
    return layout, offsets


def record_bytes(record: Record, position: int | None = None) -> memoryview:
    """Return the bytes of one record without copying where possible.

    Accepts bytes-like objects, ``str`` (stored as UTF-8) and NumPy arrays (their
    C-ordered bytes). Anything else raises ``TypeError`` naming the type.
    """
    if isinstance(record, (bytes, bytearray)):
        return memoryview(record)
    if isinstance(record, str):
        return memoryview(record.encode("utf-8"))
    if isinstance(record, np.ndarray):
        return memoryview(np.ascontiguousarray(record)).cast("B")
    if isinstance(record, memoryview):
        return record if record.c_contiguous and record.format == "B" else memoryview(
            record.tobytes()
        )
    where = "" if position is None else f" at position {position}"
    raise TypeError(
        f"record{where} is of type {type(record).__name__}; expected bytes, bytearray, "
        "memoryview, str or numpy.ndarray"
    )


class ShardWriter:
    """Stream records into one ROXXEL01 shard; only the offsets are kept in memory.

    ``sink`` is anything with ``write`` (a file, or a hashing wrapper around one).
    Call :meth:`finish` once to append the offset table and the footer.
    """

    def __init__(self, sink: _Sink, *, offsets: array | None = None) -> None:
        self._sink = sink
        self._offsets = offsets if offsets is not None else array("q")
        self._payload_size = self._offsets[-1] if len(self._offsets) else 0
        self._finished = False

    @property
    def record_count(self) -> int:
        return len(self._offsets)

    @property
    def payload_size(self) -> int:
        return self._payload_size

    @property
    def file_size(self) -> int:
        """Size of the finished shard if it were finished now."""
        return self._payload_size + OFFSET_SIZE * len(self._offsets) + FOOTER_SIZE

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write one record's bytes (use :func:`record_bytes` to convert records)."""
        if self._finished:
            raise ValueError("cannot append to a finished shard")
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if n:
            self._sink.write(data)
        self._payload_size += n
        self._offsets.append(self._payload_size)

    def finish(self) -> ShardLayout:
        """Write the offset table and footer; returns the shard's layout."""
        if self._finished:
            raise ValueError("shard is already finished")
        self._finished = True
        table = self._offsets
        if not _LITTLE_ENDIAN:
            table = array("q", table)
            table.byteswap()
        self._sink.write(memoryview(table).cast("B"))
        self._sink.write(_FOOTER.pack(len(self._offsets), self._payload_size, MAGIC))
        return ShardLayout(record_count=len(self._offsets), payload_size=self._payload_size)


class MappedShard:
    """A validated, read-only, memory-mapped shard. ``shard[i]`` is a zero-copy view.

    The footer and offset table are validated before the payload is exposed. After
    :meth:`close`, views already handed out stay valid: the mapping is released when
    the last of them is gone.
    """

    __slots__ = ("path", "layout", "payload", "offsets", "ends", "_map")

    def __init__(
        self, path: str | os.PathLike[str], *, name: str | None = None, fd: int | None = None
    ) -> None:
        """Map ``path``, or the file already open on ``fd`` (``path`` then only names it;
        the file is opened anew through /proc, so no lock on ``fd`` is shared)."""
        self.path = os.fspath(path)
        label = name or self.path
        source = self.path
        if fd is not None and os.path.isdir("/proc/self/fd"):
            source = f"/proc/self/fd/{fd}"
        with open(source, "rb") as f:
            self.layout, size = read_footer(f.fileno(), label)
            self._map = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        try:
            count, payload = self.layout.record_count, self.layout.payload_size
            self.offsets = np.frombuffer(
                self._map, dtype=_OFFSET_DTYPE, count=count, offset=payload
            )
            check_offsets(self.offsets, self.layout, label)
            self.payload = np.frombuffer(self._map, dtype=np.uint8, count=payload)
            self.ends = int_sequence(self.offsets)
        except BaseException:
            self.offsets = self.payload = self.ends = None  # type: ignore[assignment]
            _close_map(self._map)
            raise

    def __len__(self) -> int:
        return self.layout.record_count

    def __getitem__(self, i: int) -> np.ndarray:
        n = self.layout.record_count
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self.path}: record {i} out of range for {n} records")
        return self.view(i)

    def view(self, i: int) -> np.ndarray:
        """Record ``i`` without bounds checks; callers guarantee 0 <= i < len."""
        ends = self.ends
        return self.payload[(ends[i - 1] if i else 0) : ends[i]]

    def bounds(self, i: int) -> tuple[int, int]:
        """Start and end offset of record ``i`` (0 <= i < len) in the payload."""
        ends = self.ends
        return (ends[i - 1] if i else 0), ends[i]

    def close(self) -> None:
        """Release this shard's references to the map (idempotent)."""
        if self._map is None:
            return
        if isinstance(self.ends, memoryview):
            self.ends.release()
        self.offsets = self.payload = self.ends = None  # type: ignore[assignment]
        _close_map(self._map)
        self._map = None

    def __enter__(self) -> MappedShard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MappedShard({self.path!r}, records={self.layout.record_count}, "
            f"payload_size={self.layout.payload_size})"
        )


def int_sequence(offsets: np.ndarray) -> memoryview | list[int]:
    """The int64 LE ``offsets`` as a sequence of Python ints with the cheapest lookup.

    On little-endian machines this is a zero-copy memoryview (indexing it is faster than
    indexing the array); call ``release()`` on it before the map can be closed.
    """
    if _LITTLE_ENDIAN:
        return memoryview(offsets).cast("B").cast("q")
    return offsets.tolist()


def _close_map(m: mmap.mmap) -> None:
    try:
        m.close()
    except BufferError:
        # Views handed out to callers still use the map; it is unmapped when they go.
        pass

