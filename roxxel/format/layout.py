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
actual values. Code elsewhere asks this module where things lie (:func:`payload_size`,
:func:`max_records`, :func:`offsets_span`, :func:`footer_span`) instead of computing it.
"""

from __future__ import annotations

import os
import struct
import sys
from dataclasses import dataclass
from typing import BinaryIO, TypeVar

import numpy as np

from ..errors import ShardFormatError

__all__ = [
    "FOOTER_SIZE",
    "MAGIC",
    "OFFSET_SIZE",
    "ShardLayout",
    "check_offsets",
    "footer_span",
    "max_records",
    "offsets_span",
    "pack_footer",
    "parse_footer",
    "payload_size",
    "read_footer",
    "read_layout",
    "shard_size",
]

MAGIC = b"ROXXEL01"
_FOOTER = struct.Struct("<qq8s")
FOOTER_SIZE = _FOOTER.size  # 24
OFFSET_SIZE = 8
OFFSET_DTYPE = np.dtype("<i8")

LITTLE_ENDIAN = sys.byteorder == "little"

Size = TypeVar("Size", int, np.ndarray)


def shard_size(payload_size: int, record_count: int) -> int:
    """The size of a shard of ``record_count`` records and ``payload_size`` payload bytes."""
    return payload_size + OFFSET_SIZE * record_count + FOOTER_SIZE


def payload_size(raw_size: Size, record_count: Size) -> Size:
    """The payload size of a shard of ``raw_size`` bytes holding ``record_count`` records
    (negative if it cannot hold them); works elementwise on NumPy columns."""
    return raw_size - OFFSET_SIZE * record_count - FOOTER_SIZE


def max_records(raw_size: Size) -> Size:
    """The most records a shard of ``raw_size`` bytes can hold (an offset each and the
    footer, with an empty payload); negative below the footer's size. Elementwise too."""
    return (raw_size - FOOTER_SIZE) // OFFSET_SIZE


def offsets_span(payload_size: int, index: int) -> tuple[int, int]:
    """The byte range ``[start, end)`` of the end offsets that bound record ``index``:
    the offsets of records ``index - 1`` and ``index`` (only ``index``'s for record 0)."""
    first = index - 1 if index else index
    return payload_size + OFFSET_SIZE * first, payload_size + OFFSET_SIZE * (index + 1)


def footer_span(size: int) -> tuple[int, int]:
    """The byte range ``[start, end)`` of the footer of a shard of ``size`` bytes (which
    must be at least :data:`FOOTER_SIZE`; :func:`parse_footer` says so otherwise)."""
    return size - FOOTER_SIZE, size


def pack_footer(record_count: int, payload_size: int) -> bytes:
    """The footer of a shard of ``record_count`` records and ``payload_size`` payload bytes."""
    return _FOOTER.pack(record_count, payload_size, MAGIC)


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
        return shard_size(self.payload_size, self.record_count)


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
    expected = shard_size(payload, count)
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
    return parse_footer(os.pread(fd, FOOTER_SIZE, footer_span(size)[0]), size, name), size


def read_layout(f: BinaryIO, file_size: int, name: str) -> tuple[ShardLayout, np.ndarray]:
    """Read and validate the footer and offset table of an open shard file.

    Memory used is the offset table only (8 bytes per record), never the payload.
    """
    if file_size < FOOTER_SIZE:
        parse_footer(b"", file_size, name)  # raises with the size in the message
    f.seek(footer_span(file_size)[0])
    layout = parse_footer(f.read(FOOTER_SIZE), file_size, name)
    f.seek(layout.index_offset)
    raw = f.read(OFFSET_SIZE * layout.record_count)
    offsets = np.frombuffer(raw, dtype=OFFSET_DTYPE)
    check_offsets(offsets, layout, name)
    return layout, offsets
