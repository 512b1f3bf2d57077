"""A shard handed out by the cache, share-locked while the caller uses it."""

from __future__ import annotations

import os
from typing import BinaryIO

from ..errors import CacheError
from ..format import MappedShard
from .files import open_regular

__all__ = ["CachedShard"]


class CachedShard:
    """A published, verified shard file, held with a shared ``flock`` until :meth:`close`.

    While it is open no cache (in this or any other process) evicts or removes the file.
    The lock lives on a private fd of its own, because ``flock`` locks belong to an open
    file description and :meth:`map` and :meth:`open` open the file again. After
    :meth:`close`, maps and files already opened stay valid (eviction only unlinks), but
    the file may then disappear from the cache directory.

    The bytes were verified against the checksum when they were downloaded, and the file
    is handed out only while its identity is the one recorded then (or after hashing it
    again). Damage that changes no metadata (a failing disk) is caught by :meth:`map`'s
    footer and offset checks (:class:`~roxxel.errors.ShardFormatError`), by
    ``verify="always"``, or by :meth:`ShardCache.reverify`. A write into the file while a
    process maps it shows in that map: nothing can vet bytes already mapped.
    """

    __slots__ = ("checksum", "path", "size", "label", "_fd")

    def __init__(self, checksum: str, path: str, fd: int, label: str) -> None:
        self.checksum = checksum
        self.path = path
        self.label = label
        self._fd: int | None = fd
        self.size = os.fstat(fd).st_size

    @property
    def closed(self) -> bool:
        return self._fd is None

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.label}: cached shard {self.path} is closed")
        return self._fd

    def map(self) -> MappedShard:
        """Memory-map the shard (validating its footer and offsets); errors name the label."""
        # The very file we hold the shared lock on, not whatever the path names by now.
        return MappedShard(self.path, name=self.label, fd=self._require_open())

    def open(self) -> BinaryIO:
        """A new read-only binary file on the shard, positioned at its start."""
        lock_fd = self._require_open()
        fd = open_regular(self.path)
        if fd is not None and not _same_inode(fd, lock_fd):
            os.close(fd)
            fd = None
        if fd is None:
            raise CacheError(f"{self.label}: cached file {self.path} was replaced while open")
        return os.fdopen(fd, "rb")

    def close(self) -> None:
        """Release the shared lock (idempotent)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> CachedShard:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()

    def __reduce__(self) -> object:
        raise TypeError("a CachedShard holds a lock of this process and cannot be pickled")

    def __repr__(self) -> str:
        state = "closed" if self._fd is None else "open"
        return f"CachedShard({self.label!r}, path={self.path!r}, size={self.size}, {state})"


def _same_inode(fd: int, other: int) -> bool:
    a, b = os.fstat(fd), os.fstat(other)
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
