"""A multipart upload to S3 of a file still being written: each part goes up as soon as
its bytes are in the file. (:class:`PartFeed` also feeds GCS's composite uploads of such
files: :func:`.gcs_upload.upload_growing`.)

The writer names a large shard before it packs it, and tells a :class:`PartFeed` how far
the staged file is written as each part of it is complete; :func:`upload` (on fsspec's
event loop, from an upload thread) creates the multipart upload once the file holds the
multipart threshold (a file that ends smaller goes up in one PUT, as before) and sends
each part as the feed reports it, under the same budget of parts in flight as the
uploads of finished files (:mod:`.multipart`). So the link is busy from the shard's
first parts, not from its last: a shard of 256 MiB packed at 300 MB/s would otherwise
leave the link idle for most of a second before it went up.

Where reads are signed by roxxel (:func:`.s3open.ranged_request`), so are the upload's
creation and its parts (:class:`_SignedUpload`): the first parts do not wait for s3fs,
which only completes (or aborts) the upload. Otherwise, and after a store refused a
request signed here, the rest is :mod:`.multipart`'s: presigned PUTs from the file by
``sendfile`` (or s3fs parts). Either way each part is retried on its own, and the upload
is all or nothing (a failed part cancels the others and aborts the upload). The parts'
MD5s are the ones packing computed: the feed hands them over with the file's final
size, and the expected multipart ETag is made of them. S3 answers the completion with
the ETag it makes of the parts it holds: when that is the one expected, the object is
the bytes that were packed; otherwise the check after the upload
(:meth:`.store.Store.check_upload`) compares them. No part is hashed here.

A feed that is given up (the writer aborted) aborts the upload and raises
:class:`~.through.Revoked`. A feed is reusable: when the whole upload is retried
(:meth:`.store.Store.put_growing`), the new attempt sends every part written so far at
once, and goes on as the first one did.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import multipart
from .errors import classify, http_status
from .s3open import canonical_query, create_multipart, ranged_request
from .through import Revoked

if TYPE_CHECKING:
    from .s3 import S3Backend
    from .s3open import _Request

log = logging.getLogger(__name__)

__all__ = ["PartFeed", "upload"]

_Final = tuple[int, tuple[Any, ...]]  # a finished file's size, and its parts' digests (MD5s or CRC32Cs)


class PartFeed:
    """How far a file being written is written, told by its writer's thread to the upload
    that sends it (:func:`upload` on an event loop, or
    :func:`.gcs_upload.upload_growing` on a thread, which :meth:`wait`). Thread-safe;
    each call wakes the upload."""

    def __init__(self, part_size: int) -> None:
        if part_size < multipart.MIN_PART:
            raise ValueError(f"part_size must be at least {multipart.MIN_PART} bytes (S3's smallest part), got {part_size}")
        self.part_size = part_size
        self._lock = threading.RLock()  # (give_up may run in a finalizer, on any thread)
        self._changed = threading.Condition(self._lock)
        self._written = 0
        self._final: _Final | None = None  # the size, each part's digest
        self._given_up = False
        self._wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def written(self, end: int) -> None:
        """The file's first ``end`` bytes are written (and stay as they are)."""
        with self._lock:
            self._written = max(self._written, end)
            self._notify()

    def finished(self, size: int, part_digests: Sequence[bytes] | Sequence[int] | None) -> None:
        """The file is whole: ``size`` bytes, the digest of each ``part_size`` part as it
        was packed: its MD5 (S3's ETag is made of them) or its CRC32C (each GCS part's
        answer must name it); None if there are none."""
        parts = max(1, -(-size // self.part_size))
        if part_digests is not None and len(part_digests) != parts:
            raise ValueError(f"{len(part_digests)} part digests do not cover {size} bytes in parts of {self.part_size}")
        with self._lock:
            self._written, self._final = size, (size, tuple(part_digests or ()))
            self._notify()

    def give_up(self) -> None:
        """The file will not be finished: the upload aborts."""
        with self._lock:
            self._given_up = True
            self._notify()

    def wait(self, seen: int, stop: Callable[[], bool] = lambda: False) -> tuple[int, _Final | None, bool]:
        """Block until more than ``seen`` bytes are written, the file is finished or given
        up, or ``stop()`` (asked again at each :meth:`poke`); then what is known."""
        with self._changed:
            self._changed.wait_for(lambda: self._written > seen or self._final is not None or self._given_up
                                   or stop())
            return self._written, self._final, self._given_up

    def new_parts(self, started: int, upto: int, last: bool, max_parts: int, what: str) -> list[tuple[int, int]]:
        """(offset, length) of each part after the first ``started`` that ends at or before
        ``upto`` (and the last, shorter one if ``last``: the file is finished at ``upto``).
        :class:`~.through.Revoked` for a part past ``max_parts`` (the store would refuse it:
        the upload of ``what`` is given up)."""
        out: list[tuple[int, int]] = []
        while True:
            number = started + len(out)
            offset = number * self.part_size
            length = min(self.part_size, upto - offset)
            if length <= 0 or (length < self.part_size and not last):
                return out
            if number == max_parts:
                raise Revoked(f"the upload of {what} was given up: the file outgrew {max_parts} parts of "
                              f"{self.part_size} bytes")
            out.append((offset, length))

    def poke(self) -> None:
        """Wake a :meth:`wait` to ask its ``stop()`` again (a part failed, say)."""
        with self._lock:
            self._changed.notify_all()

    def _notify(self) -> None:
        self._changed.notify_all()
        if self._wake is not None:
            loop, event = self._wake
            try:
                loop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the loop is closed: no upload to wake
                pass

    def _attach(self, event: asyncio.Event) -> tuple[int, _Final | None, bool]:
        """Wake ``event`` (on the running loop) at every later call; what is known now."""
        with self._lock:
            self._wake = (asyncio.get_running_loop(), event)
            return self._written, self._final, self._given_up

    def _state(self) -> tuple[int, _Final | None, bool]:
        with self._lock:
            return self._written, self._final, self._given_up


async def upload(backend: S3Backend, local_path: str, path: str, feed: PartFeed) -> bool | None:
    """Upload ``local_path``, being written, to ``path`` (``bucket/key``) of the S3
    ``backend`` as ``feed`` reports its parts (on fsspec's loop); all or nothing, and
    True if the completion's answer confirmed the object, as :func:`.multipart.upload`.
    The upload is made once the file holds the multipart threshold; None, having sent
    nothing, if it ends smaller: it is for one PUT (:meth:`.s3.S3Backend.put_file`).
    :class:`~.through.Revoked` if the feed is given up, or the file outgrows 10,000 parts.

    Where reads are signed here (:func:`.s3open.ranged_request`: plain options, static
    credentials), so are the upload's creation and its parts, and s3fs, made meanwhile
    by the writer's probe, is waited for only by the completion: a writer's first parts
    do not wait ~0.4 s for s3fs to be imported and its client made. A store that refuses
    them gets them through s3fs instead."""
    budget = multipart._budget(asyncio.get_running_loop(), multipart.limits().parts_in_flight)
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
        job = await _create(backend, path, local_path, fd)
        tasks: list[asyncio.Future[tuple[str, bytes | None]]] = []

        def send(upto: int, last: bool) -> None:
            """Start every part not started yet that ends at or before ``upto`` (and the
            last, shorter one if ``last``)."""
            for offset, length in feed.new_parts(len(tasks), upto, last, multipart._MAX_PARTS, path):
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
            md5s = final[1]
            sent = await multipart._all_or_cancel(tasks)
            etag = multipart._etag(list(md5s))
            confirmed = await job.complete([e for e, _ in sent], etag)
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
    return confirmed


async def _create(backend: S3Backend, path: str, local_path: str, fd: int) -> multipart._Upload:
    """The multipart upload of ``path``: made by a request signed here where possible,
    else by s3fs."""
    bucket, _, key = path.partition("/")
    request = await asyncio.to_thread(_signed_request, backend, path)
    if request is not None:
        try:
            upload_id = await multipart._retrying(lambda: asyncio.to_thread(create_multipart, request),
                                                  f"the start of s3://{path}")
        except Exception as exc:
            if classify(exc).retryable:
                raise  # (the store's trouble, not the signature's: the whole upload is retried)
            _refused(backend, "a multipart upload", exc)
        else:
            return _SignedUpload(None, bucket, key, upload_id, local_path, fd, None, backend, request)
    fs = await asyncio.to_thread(lambda: backend.fs)
    bucket, key, _ = fs.split_path(path)
    created = await multipart._retrying(
        lambda: fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key),
        f"the start of s3://{bucket}/{key}",
    )
    return multipart._Upload(fs, bucket, key, created["UploadId"], local_path, fd, None)


def _refused(backend: S3Backend, what: str, exc: BaseException) -> None:
    """The store refused ``what``, signed here: requests are signed by s3fs from now on
    (reads too, as after a refused signed read). Only the error's code or type is logged:
    another exception's text may hold a header, credentials among them."""
    from .s3 import _refuse

    code = multipart._error_code(exc) or type(exc).__name__
    log.info("%s signed here was refused (%s); S3 requests go through s3fs from now on", what, code)
    deferred = backend.deferred_source()
    if deferred is not None:
        _refuse(deferred, exc)


def _signed_request(backend: S3Backend, path: str) -> _Request | None:
    """The signed request template of ``path``, as ranged reads sign theirs, or None."""
    from .s3 import refused

    deferred = backend.deferred_source()
    if deferred is None or refused(deferred):
        return None
    try:
        return ranged_request(deferred, path)
    except Exception as exc:  # noqa: BLE001 - any of it means: go through s3fs
        log.debug("signed uploads not possible (%s); going through s3fs", type(exc).__name__)
        return None


class _SignedUpload(multipart._Upload):
    """A multipart upload made by a request signed here, whose parts are PUT with headers
    signed here (on the part threads, from the file by ``sendfile``), so that nothing
    waits for s3fs; the completion and an abort go through s3fs, made when first needed.
    A part refused (not transiently) is sent through s3fs, as every later one."""

    def __init__(self, fs: Any, bucket: str, key: str, upload_id: str, local_path: str, fd: int,
                 progress: Any, backend: S3Backend, request: _Request) -> None:
        super().__init__(fs, bucket, key, upload_id, local_path, fd, progress)
        self._backend, self._request, self._signed = backend, request, True

    async def _made(self) -> None:
        if self.fs is None:  # (made in a thread unless it is made already: importing s3fs takes a while)
            backend = self._backend
            self.fs = backend.fs if backend.deferred() is None else await asyncio.to_thread(lambda: backend.fs)

    async def call(self, method: str, **kwargs: Any) -> Any:
        await self._made()
        return await super().call(method, **kwargs)

    async def send_part(self, budget: asyncio.Semaphore, number: int, offset: int, length: int,
                        md5: bytes | None, *, digest: bool = True) -> tuple[str, bytes | None]:
        if self._signed:
            async with budget:
                try:
                    return await multipart._retrying(lambda: self._send_signed(number, offset, length, md5, digest),
                                                     self._what(number))
                except Exception as exc:
                    if classify(exc).retryable or http_status(exc) == 404:  # 404: no such upload any more
                        raise
                    self._signed = False
                    _refused(self._backend, f"part {number} of an upload", exc)
        await self._made()
        return await super().send_part(budget, number, offset, length, md5, digest=digest)

    async def _send_signed(self, number: int, offset: int, length: int, md5: bytes | None,
                           digest: bool) -> tuple[str, bytes | None]:
        request = self._request
        query = canonical_query({"partNumber": str(number), "uploadId": self.upload_id})
        headers = request.headers(time.gmtime(), "PUT", query, "UNSIGNED-PAYLOAD")
        where = request.where
        url = f"{where.scheme}://{where.host}{request.target}?{query}"
        pool = ("signed", where.scheme, where.host, *where.address)  # (as signed reads keep theirs apart)
        threads = multipart._THREADS.pool(multipart.limits().parts_in_flight)
        put = asyncio.wrap_future(threads.submit(
            lambda: multipart._put_part(None, url, self.local_path, offset, length, md5, digest, headers,
                                        request.connection, pool)))
        try:
            return await asyncio.shield(put)
        except asyncio.CancelledError:
            await asyncio.wait({put})  # (as for presigned parts: the abort that follows removes it)
            raise
