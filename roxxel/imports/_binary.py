"""Reading the chunk layout MDS shards and LitData chunks share, from a stream.

Both are ``[uint32 count][uint32 end offsets, count + 1][...][items]`` (little-endian):
the offsets are absolute positions in the (decompressed) file, the first one where the
first item starts. Items are read in order from a stream, so a compressed file is
decompressed as it is read and never held whole; only the offsets (4 bytes per item) are.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import logging
import zlib
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np

from ..errors import SourceFormatError, StorageError

log = logging.getLogger(__name__)

__all__ = ["HashingReader", "decompressed", "hashers", "items", "read_exact"]


_STEP = 64 << 20  # a size from a hostile header is read in steps: memory follows the bytes that come


def read_exact(f: Any, size: int, label: str, what: str) -> bytes:
    """Exactly ``size`` bytes (reading as often as needed), or SourceFormatError."""
    if size <= 0:
        return b""
    data = f.read(min(size, _STEP))
    if len(data) == size:
        return data
    parts = [data]
    got = len(data)
    while got < size:
        more = f.read(min(size - got, _STEP))
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

        reader = zstandard.ZstdDecompressor().stream_reader(f, read_size=1 << 20, read_across_frames=True)
        return _Decompressing(reader, (zstandard.ZstdError,), label, compression)
    if algorithm == "gz":
        return _Decompressing(gzip.GzipFile(fileobj=f, mode="rb"), (zlib.error, EOFError, OSError), label,
                              compression)
    if algorithm == "bz2":
        return _Decompressing(bz2.BZ2File(f, mode="rb"), (EOFError, OSError), label, compression)
    raise SourceFormatError(
        f"{label}: compression {compression!r} is not one roxxel reads (zstd, gz, bz2); "
        "decompress the files first"
    )


class _Decompressing:
    """A decompressor's ``read`` whose errors on damaged input become SourceFormatError
    (a storage failure underneath stays what it is)."""

    def __init__(self, reader: Any, damage: tuple[type[BaseException], ...], label: str, compression: str) -> None:
        self._reader, self._damage, self._label, self._compression = reader, damage, label, compression

    def read(self, size: int = -1) -> bytes:
        try:
            return self._reader.read(size)
        except self._damage as exc:
            if isinstance(exc, StorageError):
                raise
            raise SourceFormatError(f"{self._label}: damaged {self._compression} data: {exc}") from exc


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
    if size is not None and 4 + table > size:
        raise SourceFormatError(f"{label}: {count} {item}s need a {4 + table}-byte offset table, the index says "
                                f"the file has {size} bytes")
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


def hashers(expected: Any, label: str) -> dict[str, tuple[Any, str]]:
    """``{algorithm: (hasher, expected hex digest)}`` for the digests an index states that
    can be checked here (hashlib's, and xxhash's when it is installed); others are skipped."""
    if not expected:
        return {}
    if not isinstance(expected, dict):
        raise SourceFormatError(f"{label}: hashes must be an object, got {expected!r}")
    out: dict[str, tuple[Any, str]] = {}
    for algorithm, digest in expected.items():
        if not isinstance(digest, str):
            raise SourceFormatError(f"{label}: hashes.{algorithm} must be a hex string, got {digest!r}")
        if algorithm in hashlib.algorithms_available and not algorithm.startswith("shake_"):
            out[algorithm] = (hashlib.new(algorithm), digest.lower())
            continue
        try:
            import xxhash
        except ImportError:
            xxhash = None
        if xxhash is not None and algorithm in xxhash.algorithms_available:
            out[algorithm] = (getattr(xxhash, algorithm)(), digest.lower())
        else:
            log.debug("%s: cannot check the %s digest here", label, algorithm)
    return out


class HashingReader:
    """A file's ``read`` that feeds every byte read to ``hashers`` (see :func:`hashers`);
    :meth:`check` reads the rest and compares the digests."""

    def __init__(self, f: Any, checks: dict[str, tuple[Any, str]], label: str) -> None:
        self._f, self._checks, self._label = f, checks, label

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        for hasher, _ in self._checks.values():
            hasher.update(data)
        return data

    def check(self) -> None:
        """SourceFormatError naming the algorithm unless every digest matches the file."""
        if not self._checks:
            return
        while self.read(1 << 20):
            pass
        for algorithm, (hasher, expected) in self._checks.items():
            found = hasher.hexdigest()
            if found != expected:
                raise SourceFormatError(f"{self._label}: {algorithm} digest is {found}, the index says {expected}")
