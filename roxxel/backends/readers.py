"""Sequential readers of one object, used by :meth:`Store.stream` and :meth:`Store.open_read`.

:func:`open_chunk_reader` picks the cheapest way to read an object from an offset on:

- a synchronous filesystem (local disk, memory): an open file, seeked;
- S3, where :mod:`.direct` applies: one plain HTTP GET of a presigned URL (ranged when
  resuming after a failure);
- an async filesystem with ``open_async`` (s3fs otherwise), from offset 0: one streaming GET;
- otherwise (gcsfs, or resuming after a failure): one ranged GET per chunk.

A single streaming GET matters: moto, for one, re-reads the whole object for every
ranged GET, and every ranged GET costs a round trip on a real store.

Readers report every piece they receive to the watchdog (:func:`.watchdog.current`), so
a call is cut off only after its inactivity timeout without a byte, however long a
slow but steady chunk takes.
"""

from __future__ import annotations

import inspect
import io
import logging
from typing import Any, Protocol

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from . import watchdog
from .direct import open_direct
from .errors import http_status
from .retry import RetryPolicy, call

__all__ = ["ChunkReader", "StoreReader", "open_chunk_reader"]

logger = logging.getLogger(__name__)


class ChunkReader(Protocol):
    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the object)."""

    def read_parts(self, size: int) -> list[bytes]:
        """Up to ``size`` bytes as received, unjoined (empty only at the end)."""

    def close(self) -> None:
        """Release the connection or file; idempotent."""


def open_chunk_reader(fs: AbstractFileSystem, path: str, offset: int) -> ChunkReader:
    """A reader of ``path`` positioned at ``offset``; backend errors propagate untranslated."""
    if not getattr(fs, "async_impl", False):
        f = fs.open(path, "rb")
        f.seek(offset)
        return _FileReader(f)
    direct = open_direct(fs, path, offset)
    if direct is not None:
        return direct
    if offset == 0:
        try:
            f = sync(fs.loop, fs.open_async, path, "rb")
        except NotImplementedError:
            pass
        else:
            return _StreamReader(fs, path, f)
    return _RangeReader(fs, path, offset)


class _FileReader:
    def __init__(self, f: Any) -> None:
        self._f = f

    def read(self, size: int) -> bytes:
        return self._f.read(size)

    def read_parts(self, size: int) -> list[bytes]:
        return watchdog.read_in_pieces(self._f.read, size)

    def close(self) -> None:
        self._f.close()


class _RangeReader:
    """One ranged GET per read, never past the object's end as its metadata gave it when
    the reader opened (a range that starts past the end is answered 416, which gcsfs
    also logs as an error); a 416 all the same (the object shrank since) ends the reads."""

    def __init__(self, fs: AbstractFileSystem, path: str, offset: int) -> None:
        self._fs, self._path, self._pos = fs, path, offset
        self._end: int | None = None

    def read(self, size: int) -> bytes:
        if self._end is None:
            self._end = int(self._fs.size(self._path))
        end = min(self._pos + size, self._end)
        if end <= self._pos:
            return b""
        progress = watchdog.current()
        if progress is not None:  # one request: no byte is seen before the last
            progress.unseen(end - self._pos)
        try:
            data = self._fs.cat_file(self._path, start=self._pos, end=end)
        except Exception as exc:
            if http_status(exc) != 416:  # Range Not Satisfiable: the object ends before _pos
                raise
            data, self._end = b"", self._pos
        if progress is not None:
            progress.beat()
        self._pos += len(data)
        return data

    def read_parts(self, size: int) -> list[bytes]:
        data = self.read(size)
        return [data] if data else []

    def close(self) -> None:
        pass


class _StreamReader:
    """One streaming GET, read from the caller's thread through fsspec's event loop."""

    def __init__(self, fs: AbstractFileSystem, path: str, f: Any) -> None:
        self._fs, self._path, self._f = fs, path, f

    def read(self, size: int) -> bytes:
        return b"".join(self.read_parts(size))

    def read_parts(self, size: int) -> list[bytes]:
        # The body's pieces as aiohttp delivers them: joining them would copy every byte.
        progress = watchdog.current()
        return sync(self._fs.loop, _read_up_to, self._f, size, progress)

    def close(self) -> None:
        if self._f is None:
            return
        f, self._f = self._f, None
        try:
            sync(self._fs.loop, _close_stream, f)
        except Exception as exc:  # the body is abandoned either way; nothing to recover
            logger.debug("ignored error closing the stream of %s: %s", self._path, exc)


async def _read_up_to(f: Any, size: int, progress: watchdog.Progress | None) -> list[bytes]:
    parts = []
    remaining = size
    while remaining > 0:
        part = await f.read(remaining)
        if not part:
            break
        parts.append(part)
        remaining -= len(part)
        if progress is not None:
            progress.beat()
    return parts


async def _close_stream(f: Any) -> None:
    # s3fs's streamed file keeps the HTTP body as ``r`` and does not close it itself;
    # closing it returns (or drops) the connection when a read stops early.
    body = getattr(f, "r", None)
    if body is not None:
        closing = body.aclose() if hasattr(body, "aclose") else body.close()
        if inspect.isawaitable(closing):
            await closing
    await f.close()


class StoreReader(io.RawIOBase):
    """A read-only, seekable binary file over one object.

    Each read is retried on transient errors (from the same position) and every backend
    error is translated to a roxxel error naming ``url``.
    """

    def __init__(self, f: Any, url: str, policy: RetryPolicy, size: int) -> None:
        super().__init__()
        self._f, self._url, self._policy = f, url, policy
        self._pos = 0
        self.size = size

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset} in {self._url}")
        self._pos = base + offset
        return self._pos

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            size = max(self.size - self._pos, 0)
        pos = self._pos

        def attempt() -> bytes:
            self._f.seek(pos)
            return self._f.read(size)

        data = call(attempt, op="read", url=self._url, policy=self._policy)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        data = self.read(len(view))
        view[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            try:
                self._f.close()
            finally:
                super().close()
