"""Writing ROXXEL01 shards: records to bytes, and a streaming shard writer."""

from __future__ import annotations

from array import array
from typing import Protocol, Union

import numpy as np

from .layout import LITTLE_ENDIAN, ShardLayout, pack_footer, shard_size

__all__ = ["Record", "ShardWriter", "record_bytes"]

Record = Union[bytes, bytearray, memoryview, str, np.ndarray]


class _Sink(Protocol):
    def write(self, data: bytes | memoryview, /) -> object: ...


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
        return shard_size(self._payload_size, len(self._offsets))

    def file_size_with(self, nbytes: int) -> int:
        """Size of the finished shard if one more record of ``nbytes`` were appended."""
        return shard_size(self._payload_size + nbytes, len(self._offsets) + 1)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Write one record's bytes (use :func:`record_bytes` to convert records)."""
        if self._finished:
            raise ValueError("cannot append to a finished shard")
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if n:
            self._sink.write(data)
        self._payload_size += n
        self._offsets.append(self._payload_size)

    def append_equal(self, data: bytes | bytearray | memoryview, count: int) -> None:
        """Write ``count`` records of equal length at once: ``data`` is their bytes end to
        end (its length a multiple of ``count``). No Python loop per record."""
        if self._finished:
            raise ValueError("cannot append to a finished shard")
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        if count < 0 or (n % count if count else n):
            raise ValueError(f"{n} bytes are not {count} records of equal length")
        if not count:
            return
        if n:
            self._sink.write(data)
        ends = self._payload_size + (n // count) * np.arange(1, count + 1, dtype=np.int64)
        self._offsets.frombytes(ends.tobytes())  # native int64, as the array's own items
        self._payload_size += n

    def finish(self) -> ShardLayout:
        """Write the offset table and footer; returns the shard's layout."""
        if self._finished:
            raise ValueError("shard is already finished")
        self._finished = True
        table = self._offsets
        if not LITTLE_ENDIAN:
            table = array("q", table)
            table.byteswap()
        self._sink.write(memoryview(table).cast("B"))
        self._sink.write(pack_footer(len(self._offsets), self._payload_size))
        return ShardLayout(record_count=len(self._offsets), payload_size=self._payload_size)
