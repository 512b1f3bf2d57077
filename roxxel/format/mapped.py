"""A validated, read-only, memory-mapped ROXXEL01 shard."""

from __future__ import annotations

import mmap
import os

import numpy as np

from .layout import LITTLE_ENDIAN, OFFSET_DTYPE, check_offsets, read_footer

__all__ = ["MappedShard", "int_sequence"]


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
                self._map, dtype=OFFSET_DTYPE, count=count, offset=payload
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
    if LITTLE_ENDIAN:
        return memoryview(offsets).cast("B").cast("q")
    return offsets.tolist()


def _close_map(m: mmap.mmap) -> None:
    try:
        m.close()
    except BufferError:
        # Views handed out to callers still use the map; it is unmapped when they go.
        pass
