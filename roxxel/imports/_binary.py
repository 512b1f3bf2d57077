"""Reading the chunk layout MDS shards and LitData chunks share, from a stream.

Both are ``[uint32 count][uint32 end offsets, count + 1][...][items]`` (little-endian):
the offsets are absolute positions in the (decompressed) file, the first one where the
first item starts. Items are read in order from a stream, so a compressed file is
decompressed as it is read and never held whole; only the offsets (4 bytes per item) are.
"""

from __future__ import annotations

import bz2
import gzip
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from ..errors import SourceFormatError

__all__ = ["decompressed", "items", "read_exact"]


def read_exact(f: Any, size: int, label: str, what: str) -> bytes:
    """Exactly ``size`` bytes (reading as often as needed), or SourceFormatError."""
    if size <= 0:
        return b""
    data = f.read(size)
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = f.read(size - got)
        if not more:
            raise SourceFormatError(
                f"{label}: truncated: {what} needs {size} bytes, the file ends after {got}"
            )
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def decompressed(f: BinaryIO, compression: str | None, label: str) -> Any:
    """A reader of ``f``'s decompressed bytes (``zstd``, ``gz``, ``bz2`` or none).

    ``compression`` may carry a level (``zstd:7``). Other algorithms raise
    SourceFormatError naming the file and the value.
    """
    if compression is None:
        return f
    algorithm = compression.split(":", 1)[0]
    if algorithm == "zstd":
        import zstandard

        return zstandard.ZstdDecompressor().stream_reader(f, read_size=1 << 20, read_across_frames=True)
    if algorithm == "gz":
        return gzip.GzipFile(fileobj=f, mode="rb")
    if algorithm == "bz2":
        return bz2.BZ2File(f, mode="rb")
    raise SourceFormatError(
        f"{label}: compression {compression!r} is not one roxxel reads (zstd, gz, bz2); "
        "decompress the files first"
    )


def items(
    f: Any, label: str, *, count: int, size: int | None, item: str = "sample"
) -> Iterator[tuple[int, bytes]]:
    """``(position, bytes)`` of each item of a chunk read from ``f``, in order.

    ``count`` is the item count the index promises; ``size`` the decompressed file size it
    promises (None: not known, then the last offset is trusted only as far as the file
    goes). Every offset is checked before it is used: a count, an offset table or a file
    size that disagrees raises SourceFormatError naming the file, the field and the value.
    """
    head = read_exact(f, 4, label, "the item count")
    found = int(np.frombuffer(head, "<u4")[0])
    if found != count:
        raise SourceFormatError(f"{label}: the file holds {found} {item}s, its index says {count}")
    table = 4 * (count + 1)
    offsets = np.frombuffer(read_exact(f, table, label, "the offset table"), "<u4").astype(np.int64)
    start = 4 + table
    if offsets[0] < start:
        raise SourceFormatError(f"{label}: the first {item} starts at offset {int(offsets[0])}, inside the "
                                f"{start}-byte header")
    steps = np.diff(offsets)
    if count and bool((steps < 0).any()):
        bad = int(np.argmax(steps < 0))
        raise SourceFormatError(f"{label}: {item} {bad} ends at offset {int(offsets[bad + 1])}, before it "
                                f"starts at {int(offsets[bad])}")
    if size is not None and int(offsets[-1]) != size:
        raise SourceFormatError(f"{label}: the offsets end at {int(offsets[-1])}, the index says the file "
                                f"has {size} bytes")
    read_exact(f, int(offsets[0]) - start, label, "the header")
    for position, length in enumerate(steps.tolist()):
        yield position, read_exact(f, length, label, f"{item} {position}")
    if size is not None and f.read(1):
        raise SourceFormatError(f"{label}: bytes after the last {item}, past the {size} its index says")
