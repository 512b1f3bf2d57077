"""A shard's staged file: written once, front to back, and hashed in the same pass.

The writer packs records into a local file before it uploads it. The bytes go through a
:class:`StagingFile`, which gathers them into chunks of up to :data:`CHUNK` bytes and,
for each chunk, hashes it with the manifest's checksum algorithm (a chunk at a time:
BLAKE3 is several times faster on a MiB than on a record of a few KiB), writes it to
the file and, with ``part_size``, updates the MD5 of the multipart part it belongs to
(chunks never straddle a part). Those MD5s are what S3's ETag of a multipart upload is
made of: handed to :func:`roxxel.backends.multipart.register_part_digests`, they let the
upload be checked against the very bytes that were packed, and nothing is read back or
hashed a second time. For GCS's parts, whose uploads GCS answers with their CRC32C, the
writer asks for each part's CRC32C instead (``part_md5s=False``, ``part_crc32c``: the
``google_crc32c`` module), in the same pass.

With ``md5_lanes`` (one-thread :class:`~roxxel.workers.WorkerPool` s, whose jobs run in
order), the MD5s are computed on those threads while packing goes on, consecutive parts
on alternate lanes (hashlib releases the GIL on chunks this large, and MD5 is the
slowest step by far: about 0.7 GB/s a core, against several for BLAKE3). Memory stays
bounded whatever the shard's size: the chunk being filled and at most
:data:`CHUNKS_IN_FLIGHT` chunks waiting for their MD5. With ``on_part``, each part's end
offset is told as soon as the part is in the file, so that it can go up while the rest
is packed (:mod:`roxxel.backends.growing`).

Also here: the writer's staging folder (:func:`make_staging_dir`, which removes those
of killed writers) and zstd compression of a staged shard through the same hashing
(:func:`compress`).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

import zstandard

from .cache.files import pid_alive
from .manifest.checksums import DEFAULT_ALGORITHM, new_hasher
from .workers import WorkerPool

__all__ = ["CHUNK", "CHUNKS_IN_FLIGHT", "Digests", "StagingFile", "compress", "make_staging_dir"]

#: Bytes gathered before they are hashed and written.
CHUNK = 1 << 20
_STAGING_PREFIX = "roxxel-writer-"
_COPY_CHUNK = 8 << 20
#: Chunks that may wait for their MD5 before :meth:`StagingFile.write` waits (two parts
#: of the default 8 MiB, so that both lanes have work).
CHUNKS_IN_FLIGHT = 16


@dataclass(frozen=True)
class Digests:
    """What a finished :class:`StagingFile` holds: its size, the hex digest of the
    manifest's checksum algorithm over all of it, and the MD5 digest of each part of
    ``part_size`` bytes (the last one shorter), or None where parts had no MD5; and the
    CRC32C of each part, or None where parts had none."""

    size: int
    hexdigest: str
    part_size: int | None
    part_md5s: tuple[bytes, ...] | None
    part_crc32cs: tuple[int, ...] | None = None


def _update(md5: hashlib._Hash, chunk: bytearray, length: int) -> bytearray:
    md5.update(memoryview(chunk)[:length])
    return chunk


class StagingFile:
    """Write ``path`` (created or truncated) front to back, hashing as described in the
    module docstring. Call :meth:`finish` once for the :class:`Digests`, or
    :meth:`close` to give up (both close the file; close is idempotent)."""

    def __init__(self, path: str, *, part_size: int | None = None, part_md5s: bool = True,
                 part_crc32c: Any = None, md5_lanes: Sequence[WorkerPool] = (),
                 on_part: Callable[[int], object] | None = None) -> None:
        if part_size is not None and part_size < 1:
            raise ValueError(f"part_size must be positive, got {part_size}")
        self.path = path
        self._file = open(path, "wb", buffering=0)  # noqa: SIM115 - closed by finish/close
        self._hash = new_hasher(DEFAULT_ALGORITHM)
        self._part_size = part_size
        # one MD5 a part so far (S3's parts); one CRC32C a part so far (GCS's: with
        # ``part_crc32c``, google_crc32c, which the caller found with its C code)
        self._md5s = [hashlib.md5()] if part_size is not None and part_md5s else None
        self._crc32c = None if part_size is None else part_crc32c
        self._crcs = [0]
        self._lanes = tuple(md5_lanes)
        self._pending: deque[Future[bytearray]] = deque()
        self._free: list[bytearray] = []
        self._chunk = bytearray(CHUNK)
        self._filled = 0
        self._written = 0  # bytes hashed and written
        self._room = self._room_at(0)
        self._on_part = on_part if part_size is not None else None

    @property
    def size(self) -> int:
        """The bytes written so far."""
        return self._written + self._filled

    def _room_at(self, offset: int) -> int:
        """The size of the chunk that starts at ``offset``: it ends at a part's end."""
        if self._part_size is None:
            return CHUNK
        return min(CHUNK, self._part_size - offset % self._part_size)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (copied: the caller may reuse its buffer at once)."""
        view = memoryview(data)
        n, filled = view.nbytes, self._filled
        if filled + n < self._room:  # most records: into the chunk, which stays unfilled
            self._chunk[filled : filled + n] = view
            self._filled = filled + n
            return
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        at = 0
        while at < n:
            take = min(self._room - self._filled, n - at)
            self._chunk[self._filled : self._filled + take] = view[at : at + take]
            self._filled += take
            at += take
            if self._filled == self._room:
                end = self._written + self._filled
                self._emit(ends_part=self._part_size is not None and end % self._part_size == 0)

    def _emit(self, *, ends_part: bool) -> None:
        """Hash and write the chunk filled so far; its MD5 on its part's lane, or here."""
        chunk, length = self._chunk, self._filled
        view = memoryview(chunk)[:length]
        self._hash.update(view)
        if self._crc32c is not None:
            self._crcs[-1] = self._crc32c.extend(self._crcs[-1], bytes(view))  # (it takes bytes only)
            if ends_part:
                self._crcs.append(0)
        while view:
            view = view[self._file.write(view) :]
        del view  # (a bytearray with a view exported cannot be reused)
        self._written += length
        self._filled = 0
        self._room = self._room_at(self._written)
        if ends_part and self._on_part is not None:
            self._on_part(self._written)
        md5s = self._md5s
        if md5s is None:
            return
        md5 = md5s[-1]
        if ends_part:
            md5s.append(hashlib.md5())  # (the one past the last part is dropped by finish)
        if not self._lanes:
            md5.update(memoryview(chunk)[:length])
            return
        lane = self._lanes[(len(md5s) - 1 - ends_part) % len(self._lanes)]
        self._pending.append(lane.submit(lambda: _update(md5, chunk, length)))
        if len(self._pending) >= CHUNKS_IN_FLIGHT:
            self._free.append(self._pending.popleft().result())
        while self._pending and self._pending[0].done():
            self._free.append(self._pending.popleft().result())
        self._chunk = self._free.pop() if self._free else bytearray(CHUNK)

    def finish(self) -> Digests:
        """Write what is left, close the file and return its :class:`Digests`."""
        if self._file.closed:
            raise ValueError(f"staged file {self.path} is closed")
        try:
            parts_hashed = self._md5s is not None or self._crc32c is not None
            if self._filled or (parts_hashed and (self._written % self._part_size or not self._written)):
                self._emit(ends_part=True)  # the last part (or the only one, of an empty file)
            while self._pending:
                self._pending.popleft().result()
        finally:
            self._file.close()
        md5s = self._md5s
        return Digests(self._written, self._hash.hexdigest(), self._part_size,
                       None if md5s is None else tuple(m.digest() for m in md5s[:-1]),
                       None if self._crc32c is None else tuple(self._crcs[:-1]))

    def close(self) -> None:
        """Give up: close the file (the caller removes it); pending MD5s are dropped."""
        self._file.close()
        self._pending.clear()


def compress(raw_path: str, raw_size: int, part_size: int | None) -> tuple[str, Digests]:
    """zstd-compress the finished shard ``raw_path`` (content size in the frame) to
    ``raw_path + ".zst"``, hashing the output as a :class:`StagingFile` does (with the
    MD5s of its parts of ``part_size`` bytes, if given); its path and digests."""
    out_path = raw_path + ".zst"
    cctx = zstandard.ZstdCompressor(level=3, write_content_size=True, threads=0)
    sink = StagingFile(out_path, part_size=part_size)
    try:
        with open(raw_path, "rb") as src:
            cctx.copy_stream(src, sink, size=raw_size, read_size=_COPY_CHUNK, write_size=_COPY_CHUNK)
        return out_path, sink.finish()
    except BaseException:
        sink.close()
        raise


def make_staging_dir(staging_dir: str | None) -> str:
    """A new staging folder of this process under ``staging_dir`` (default: the temp
    folder), after removing those left there by writers that were killed."""
    root = staging_dir or tempfile.gettempdir()
    try:
        names = os.listdir(root)
    except OSError:
        names = []
    for name in names:
        m = re.match(re.escape(_STAGING_PREFIX) + r"(\d+)-", name)
        if m and not pid_alive(int(m.group(1))):
            shutil.rmtree(os.path.join(root, name), ignore_errors=True)
    return tempfile.mkdtemp(prefix=f"{_STAGING_PREFIX}{os.getpid()}-", dir=staging_dir)
