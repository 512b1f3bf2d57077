"""The payload as one file: ``ds.payload()`` reads the records' bytes end to end.

A :class:`PayloadFile` is a read-only, seekable binary file (an :class:`io.RawIOBase`)
over the payloads of every shard in order, without their offset tables and footers:
byte ``o`` of the file is byte ``o - start[k]`` of shard ``k``'s payload, where
``start[k]`` is the sum of the payload sizes before shard ``k``. It has ``read``,
``readinto``, ``readall``, ``seek``, ``tell`` and ``read_at(offset, length)`` (a read at
an offset that leaves the position alone, as hexz has it), so it serves
``io.BufferedReader``, ``tarfile.open(fileobj=...)``, ``zipfile.ZipFile`` and readers
that ``readinto`` a NumPy array.

Where the bytes come from, shard by shard, for a dataset (``ds.payload()``):

- a shard that is mapped, or in the cache, is read from its map (no request);
- a shard stored uncompressed and not cached is read with ranged GETs: its footer once
  (checked against the manifest's record count and sizes), then each read's range, at
  least ``readahead`` bytes (1 MiB by default) up to the payload's end, kept for the
  next read;
- a zstd shard cannot be read by range (its bytes do not sit at their payload offsets):
  it is downloaded, verified and decompressed into the cache as any read would do, and
  read from its map.

Bytes read by range are not covered by the shard's checksum (only whole shards are
verified); read from the cache (``ds.warm()`` first) where that matters. The payload
sizes come from the manifest (raw size less the offsets and footer) and each shard's
bytes are checked against them. A PayloadFile is not safe to share between threads.
"""

from __future__ import annotations

import io
from bisect import bisect_right
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ShardFormatError
from ..format.layout import payload_size
from ..manifest.compressions import COMPRESSIONS

if TYPE_CHECKING:
    # roxxel.read.dataset imports this module: not imported here (no import cycle)
    Dataset = Any

__all__ = ["DEFAULT_READAHEAD", "PayloadFile", "dataset_payload"]

DEFAULT_READAHEAD = 1 << 20

# part(k, start, end): bytes start..end-1 of shard k's payload (a bytes-like object)
Part = Callable[[int, int, int], Any]


class PayloadFile(io.RawIOBase):
    """Shard payloads of ``sizes`` bytes, end to end, as one read-only file (see the
    module docstring); ``part(k, start, end)`` gives the bytes of one shard's payload."""

    def __init__(self, sizes: Sequence[int], part: Part, name: str) -> None:
        super().__init__()
        self.name = name
        self._sizes = [int(n) for n in sizes]
        starts = np.zeros(len(self._sizes) + 1, dtype=np.int64)
        np.cumsum(self._sizes, out=starts[1:])
        self._starts: list[int] = starts.tolist()
        self.size = self._starts[-1]
        self._part = part
        self._pos = 0

    # -- io.RawIOBase ----------------------------------------------------------------

    def readable(self) -> bool:
        self._check()
        return True

    def seekable(self) -> bool:
        self._check()
        return True

    def writable(self) -> bool:
        self._check()
        return False

    def write(self, data: Any) -> int:
        raise io.UnsupportedOperation(f"{self.name}: the payload file is read-only")

    def truncate(self, size: int | None = None) -> int:
        raise io.UnsupportedOperation(f"{self.name}: the payload file is read-only")

    def tell(self) -> int:
        self._check()
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        """Move to ``offset`` from the start, the position or the end (past the end is
        allowed: reads there return nothing); returns the new position."""
        self._check()
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}.get(whence)
        if base is None:
            raise ValueError(f"whence must be 0, 1 or 2, got {whence!r}")
        pos = base + int(offset)
        if pos < 0:
            raise ValueError(f"{self.name}: negative seek position {pos}")
        self._pos = pos
        return pos

    def readinto(self, buffer: Any) -> int:
        """Read up to ``len(buffer)`` bytes at the position into ``buffer``; 0 at the end."""
        n = self._read_into(self._pos, memoryview(buffer).cast("B"))
        self._pos += n
        return n

    def readall(self) -> bytes:
        """The rest of the file, from the position, in one read."""
        out = bytearray(max(self.size - self._pos, 0))
        n = self.readinto(out)
        del out[n:]
        return bytes(out)

    def read_at(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` (fewer at the end of the file), leaving the
        position where it is."""
        if offset < 0 or length < 0:
            raise ValueError(f"{self.name}: read_at needs offset >= 0 and length >= 0, got {offset}, {length}")
        out = bytearray(max(min(length, self.size - offset), 0))
        n = self._read_into(offset, memoryview(out))
        del out[n:]
        return bytes(out)

    def __len__(self) -> int:
        return self.size

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"position={self._pos}"
        return f"PayloadFile({self.name!r}, size={self.size}, {state})"

    # -- reading -----------------------------------------------------------------------

    def _check(self) -> None:
        if self.closed:
            raise ValueError(f"I/O operation on closed payload file {self.name}")

    def _read_into(self, pos: int, out: memoryview) -> int:
        """Bytes from file offset ``pos`` into ``out``, shard by shard; how many."""
        self._check()
        want = max(min(len(out), self.size - pos), 0)
        done = 0
        starts, sizes = self._starts, self._sizes
        while done < want:
            at = pos + done
            k = bisect_right(starts, at) - 1  # empty shards share their start: the last one wins
            begin = at - starts[k]
            end = min(sizes[k], begin + want - done)
            data = memoryview(self._part(k, begin, end)).cast("B")
            if len(data) != end - begin:
                raise ShardFormatError(
                    f"{self.name}: shard {k} gave {len(data)} bytes for payload bytes [{begin}, {end})"
                )
            out[done : done + len(data)] = data
            done += len(data)
        return done


def mapped_parts(payload: Callable[[int], np.ndarray], sizes: Sequence[int], name: str) -> Part:
    """``part`` reading each shard's payload from its map (``payload(k)``), checked
    against its expected size."""

    def part(k: int, start: int, end: int) -> np.ndarray:
        data = payload(k)
        if len(data) != sizes[k]:
            raise ShardFormatError(f"{name}: shard {k}'s payload has {len(data)} bytes, expected {sizes[k]}")
        return data[start:end]

    return part


class _DatasetParts:
    """A dataset's shard payloads: from maps where cached, else by range (see above)."""

    def __init__(self, ds: Dataset, sizes: Sequence[int], readahead: int) -> None:
        self._ds = ds
        self._sizes = sizes
        self._readahead = readahead
        self._chunk: tuple[int, int, bytes] | None = None  # (shard, start, bytes) last fetched
        table = ds.manifest.shards
        self._plain = [COMPRESSIONS[c] is None for c in table.compression.tolist()]
        self._mapped = mapped_parts(lambda k: ds.shard(k).payload, sizes, ds.url)

    def __call__(self, k: int, start: int, end: int) -> Any:
        ds = self._ds
        if not self._plain[k] or ds.verified_only or ds.is_mapped(k) or \
                ds.cache.contains(str(ds.manifest.shards.checksums[k])):
            return self._mapped(k, start, end)
        chunk = self._chunk
        if chunk is None or chunk[0] != k or not chunk[1] <= start or end > chunk[1] + len(chunk[2]):
            chunk = self._chunk = (k, start, self._fetch(k, start, end))
        at = start - chunk[1]
        return memoryview(chunk[2])[at : at + end - start]

    def _fetch(self, k: int, start: int, end: int) -> bytes:
        ranged = self._ds._ranged
        size = ranged._payload_size(k)  # from the footer, checked against the manifest's count
        if size != self._sizes[k]:
            raise ShardFormatError(
                f"{ranged.store.url(str(ranged.table.uris[k]))}: footer says a payload of {size} bytes, "
                f"expected {self._sizes[k]} from the manifest's raw size and record count"
            )
        stop = min(size, max(end, start + self._readahead))
        return ranged.store.read_range(str(ranged.table.uris[k]), start, stop)


def dataset_payload(ds: Dataset, readahead: int = DEFAULT_READAHEAD) -> PayloadFile:
    """``ds.payload()``: see the module docstring."""
    if isinstance(readahead, bool) or not isinstance(readahead, int) or readahead < 1:
        raise ValueError(f"readahead must be a positive number of bytes, got {readahead!r}")
    table = ds.manifest.shards
    sizes = payload_size(table.raw_size, table.records).tolist()
    return PayloadFile(sizes, _DatasetParts(ds, sizes, readahead), ds.url)
