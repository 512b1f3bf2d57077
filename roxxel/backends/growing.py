"""A multipart upload to S3 of a file still being written: each part goes up as soon as
its bytes are in the file.

The writer names a large shard before it packs it, and tells a :class:`PartFeed` how far
the staged file is written as each part of it is complete; :func:`upload` (on fsspec's
event loop, from an upload thread) creates the multipart upload at once and sends each
part as the feed reports it, under the same budget of parts in flight as the uploads of
finished files (:mod:`.multipart`). So the link is busy from the shard's first part, not
from its last: a shard of 256 MiB packed at 300 MB/s would otherwise leave the link
idle for most of a second before it went up.

The rest is :mod:`.multipart`'s: presigned PUTs from the file by ``sendfile`` (or s3fs
parts), each part retried on its own, all or nothing (a failed part cancels the others
and aborts the upload). The parts' MD5s are the ones packing computed: the feed hands
them over with the file's final size, and the object's multipart ETag is made of them,
so the check after the upload (:meth:`.store.Store.check_upload`) compares the object
with the bytes that were packed. No part is hashed here.

A feed that is given up (the writer aborted) aborts the upload and raises
:class:`~.through.Revoked`. A feed is reusable: when the whole upload is retried
(:meth:`.store.Store.put_growing`), the new attempt sends every part written so far at
once, and goes on as the first one did.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from typing import Any

from . import multipart
from .through import Revoked

__all__ = ["PartFeed", "upload"]


class PartFeed:
    """How far a file being written is written, told by its writer's thread to the upload
    that sends it (:func:`upload`). Thread-safe; each call wakes the upload."""

    def __init__(self, part_size: int) -> None:
        if part_size < multipart.MIN_PART:
            raise ValueError(f"part_size must be at least {multipart.MIN_PART} bytes (S3's smallest part), got {part_size}")
        self.part_size = part_size
        self._lock = threading.RLock()  # (give_up may run in a finalizer, on any thread)
        self._written = 0
        self._final: tuple[int, tuple[bytes, ...]] | None = None  # the size, each part's MD5
        self._given_up = False
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def written(self, end: int) -> None:
        """The file's first ``end`` bytes are written (and stay as they are)."""
        with self._lock:
            self._written = max(self._written, end)
            self._notify()

    def finished(self, size: int, part_md5s: Sequence[bytes]) -> None:
        """The file is whole: ``size`` bytes, the MD5 digest of each ``part_size`` part."""
        parts = max(1, -(-size // self.part_size))
        if len(part_md5s) != parts:
            raise ValueError(f"{len(part_md5s)} part digests do not cover {size} bytes in parts of {self.part_size}")
        if multipart.part_size_for(size, self.part_size) != self.part_size:
            raise ValueError(f"a file of {size} bytes cannot go up in parts of {self.part_size} bytes (over 10,000)")
        with self._lock:
            self._written, self._final = size, (size, tuple(part_md5s))
            self._notify()

    def give_up(self) -> None:
        """The file will not be finished: the upload aborts."""
        with self._lock:
            self._given_up = True
            self._notify()

    def _notify(self) -> None:
        if self._wake is not None:
            loop, event = self._wake
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: no upload to wake
                pass

    def _attach(self, event: asyncio.Event) -> tuple[int, tuple[int, tuple[bytes, ...]] | None, bool]:
        """Wake ``event`` (on the running loop) at every later call; what is known now."""
        with self._lock:
            self._wake = (asyncio.get_running_loop(), event)
            return self._written, self._final, self._given_up

    def _state(self) -> tuple[int, tuple[int, tuple[bytes, ...]] | None, bool]:
        with self._lock:
            return self._written, self._final, self._given_up


async def upload(fs: Any, local_path: str, path: str, feed: PartFeed) -> str | None:
    """Upload ``local_path``, being written, to ``path`` on the s3fs filesystem ``fs`` as
    ``feed`` reports its parts (on ``fs``'s loop), and return the object's ETag; all or
    nothing, as :func:`.multipart.upload`. The upload is made once the file holds the
    multipart threshold; None, having sent nothing, if it ends smaller: it is for one
    PUT (:meth:`.s3.S3Backend.put_file`). :class:`~.through.Revoked` if the feed is given
    up, or the file outgrows 10,000 parts."""
    part_size = feed.part_size
    budget = multipart._budget(asyncio.get_running_loop(), multipart.limits().parts_in_flight)
    bucket, key, _ = fs.split_path(path)
    event = asyncio.Event()
    written, final, given_up = feed._attach(event)
    threshold = multipart.limits().threshold
    while written < threshold and final is None and not given_up:  # no upload for a file too small for parts
        await event.wait()
        event.clear()
        written, final, given_up = feed._state()
    if given_up:
        raise Revoked(f"the upload of {path} was given up before it began")
    if final is not None and final[0] < threshold:
        return None
    fd = os.open(local_path, os.O_RDONLY)
    multipart._THREADS.started()
    try:
        created = await multipart._retrying(
            lambda: fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key),
            f"the start of s3://{bucket}/{key}",
        )
        job = multipart._Upload(fs, bucket, key, created["UploadId"], local_path, fd, None)
        tasks: list[asyncio.Future[tuple[str, bytes | None]]] = []

        def send(upto: int, last: bool) -> None:
            """Start every part not started yet that ends at or before ``upto`` (and the
            last, shorter one if ``last``)."""
            while True:
                offset = len(tasks) * part_size
                length = min(part_size, upto - offset)
                if length <= 0 or (length < part_size and not last):
                    return
                if len(tasks) == multipart._MAX_PARTS:  # (S3 would refuse the part)
                    raise Revoked(f"the upload of {path} was given up: the file outgrew "
                                  f"{multipart._MAX_PARTS} parts of {part_size} bytes")
                task = asyncio.ensure_future(job.send_part(budget, len(tasks) + 1, offset, length, None, digest=False))
                task.add_done_callback(lambda _: event.set())  # a failed part stops the upload at once
                tasks.append(task)

        try:
            while True:
                event.clear()
                written, final, given_up = feed._state()
                if given_up:
                    raise Revoked(f"the upload of {path} was given up: its file is not finished")
                failed = next((t for t in tasks if t.done() and not t.cancelled() and t.exception()), None)
                if failed is not None:
                    raise failed.exception()  # type: ignore[misc]
                send(written if final is None else final[0], last=final is not None)
                if final is not None:
                    break
                await event.wait()
            assert final is not None
            md5s = final[1]
            sent = await multipart._all_or_cancel(tasks)
            etag = multipart._etag(list(md5s))
            await job.complete([e for e, _ in sent], etag)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)  # no part is left on the wire
            await asyncio.shield(job.abort())
            raise
    finally:
        os.close(fd)
        multipart._THREADS.ended()
    multipart._remember(local_path, len(md5s), etag)
    return etag
