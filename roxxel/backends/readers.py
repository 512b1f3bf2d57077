"""Sequential readers of one object that backends hand out (:meth:`.Backend.open_reader`).

- :class:`FileReader`: an open file, seeked (local disk, memory, any synchronous
  filesystem);
- :class:`StreamReader`: one streaming GET through an async filesystem's ``open_async``
  (s3fs), for a read from offset 0;
- :class:`RangeReader`: one ranged GET per chunk (gcsfs, or a read resumed after a
  failure).

A single streaming GET matters: moto, for one, re-reads the whole object for every
ranged GET, and every ranged GET costs a round trip on a real store. (S3's own,
cheaper, reader is in :mod:`.s3`.)

Readers report every piece they receive to the watchdog (:func:`.watchdog.current`), so
a call is cut off only after its inactivity timeout without a byte, however long a
slow but steady chunk takes. Backend errors propagate untranslated.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from . import watchdog
from .base import ChunkReader
from .errors import http_status

__all__ = ["FileReader", "RangeReader", "StreamReader", "open_async_reader", "open_file_reader"]

logger = logging.getLogger(__name__)


def open_file_reader(fs: AbstractFileSystem, path: str, offset: int) -> ChunkReader:
    """An open file of a synchronous filesystem, positioned at ``offset``."""
    f = fs.open(path, "rb")
    f.seek(offset)
    return FileReader(f)


def open_async_reader(fs: AbstractFileSystem, path: str, offset: int) -> ChunkReader:
    """For an async filesystem: one streaming GET from offset 0 where it has
    ``open_async``, otherwise one ranged GET per read."""
    if offset == 0:
        try:
            f = sync(fs.loop, fs.open_async, path, "rb")
        except (NotImplementedError, AttributeError):
            # AttributeError: a wrapper whose wrapped filesystem has none (DirFileSystem
            # over a synchronous filesystem says it is async)
            pass
        else:
            return StreamReader(fs, path, f)
    return RangeReader(fs, path, offset)


class FileReader:
    def __init__(self, f: Any) -> None:
        self._f = f

    def read(self, size: int) -> bytes:
        return self._f.read(size)

    def read_parts(self, size: int) -> list[bytes]:
        return watchdog.read_in_pieces(self._f.read, size)

    def close(self) -> None:
        self._f.close()


class RangeReader:
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
        if len(data) > end - self._pos:
            raise OSError(
                f"{self._path}: asked for bytes [{self._pos}, {end}), got {len(data)} bytes; "
                "the server ignored the Range header"
            )
        self._pos += len(data)
        return data

    def read_parts(self, size: int) -> list[bytes]:
        data = self.read(size)
        return [data] if data else []

    def close(self) -> None:
        pass


class StreamReader:
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
