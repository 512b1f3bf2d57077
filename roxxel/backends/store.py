"""A dataset prefix on one store, addressed by relative keys: the one wrapper around
every backend.

:class:`Store` maps keys to paths and runs each operation of its backend
(:class:`.base.Backend`, chosen by :func:`.registry.backend_for`) under retries
(:mod:`.retry`), stall detection (:mod:`.watchdog`) and error translation
(:mod:`.errors`): every method retries transient failures and raises only roxxel errors
(chained to the backend's exception), whose messages name the operation and the full
URL. Nothing reads credentials: ``storage_options`` go to fsspec unchanged and never
appear in messages, logs or ``repr``.
"""

from __future__ import annotations

import datetime
import hashlib
import http.client
import io
import itertools
import logging
import os
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO, Protocol, TypeVar

from fsspec import AbstractFileSystem

from ..errors import (
    ConflictError,
    DatasetExistsError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from .base import (
    HIDDEN_PREFIX,
    Backend,
    ChunkReader,
    PreconditionFailed,
    TooLarge,
    Versioned,
)
from .growing import PartFeed
from .multipart import expected_etag, multipart_parts
from .registry import backend_for
from .retry import DEFAULT_POLICY, RetryPolicy, call
from .through import Through
from .urls import check_key, join_url, redact, resolve
from .watchdog import StallError, watched

__all__ = ["DEFAULT_CHUNK_SIZE", "MANIFEST_MAX_BYTES", "Store"]

logger = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_CHUNK_SIZE = 16 * 2**20
_MIN_UPLOAD_RATE = 2**20  # bytes/s below which an upload counts as stalled
MANIFEST_MAX_BYTES = 64 * 2**20


class Store:
    """The objects under one dataset URL.

    ``Store("s3://bucket/wiki", storage_options)`` addresses ``s3://bucket/wiki/<key>``.
    ``fs`` may be given to use a ready filesystem (for instance a fault-injecting one in
    tests); ``url`` is then only stripped of its protocol by that filesystem. The
    filesystem's protocol picks the :attr:`backend` (:func:`.registry.backend_for`).
    """

    def __init__(
        self,
        url: str | os.PathLike[str],
        storage_options: Mapping[str, Any] | None = None,
        *,
        fs: AbstractFileSystem | None = None,
        retry: RetryPolicy = DEFAULT_POLICY,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        url = os.fspath(url)
        if fs is None:
            fs, root = resolve(url, storage_options)
        else:
            root = fs._strip_protocol(url)
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        self._backend = backend_for(fs)
        self._pid = os.getpid()
        self.root = root.rstrip("/") or root
        self.retry = retry
        self.chunk_size = chunk_size
        plain_path = self._backend.paths_are_local and "://" not in url and "::" not in url
        self._url = self.root if plain_path else url.rstrip("/")

    def __repr__(self) -> str:
        return f"Store({redact(self._url)!r})"

    @property
    def backend(self) -> Backend:
        """The backend this store wraps; in a forked child, a new one over a new
        filesystem made from the same arguments (async clients such as s3fs refuse to be
        used across a fork)."""
        if self._pid != os.getpid():
            self._backend = self._backend.forked()
            self._pid = os.getpid()
        return self._backend

    @property
    def downloads_in_parts(self) -> bool:
        """Whether whole objects are best downloaded as many ranged parts at once
        (:meth:`read_range`) rather than streamed in one read (:meth:`stream`)."""
        return self.backend.downloads_in_parts

    @property
    def fs(self) -> AbstractFileSystem:
        """The backend's fsspec filesystem (see :attr:`backend`)."""
        return self.backend.fs

    # -- names -----------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """The dataset URL for messages (a local path stays a path), credentials masked."""
        return redact(self._url)

    def url(self, key: str) -> str:
        """The full URL of ``key`` for messages, credentials masked. Only the dataset's
        URL can carry them: the key (checked, :func:`.urls.check_key`) is shown as it is,
        even where it holds a ``?``."""
        return join_url(redact(self._url), key)

    def path(self, key: str) -> str:
        """The path of ``key`` on :attr:`fs`."""
        return f"{self.root.rstrip('/')}/{check_key(key)}"

    # -- reading ---------------------------------------------------------------------

    def size(self, key: str) -> int:
        """The size in bytes of the object ``key``; NotFoundError if there is none."""
        path = self.path(key)
        return self._run("stat", key, lambda: self.backend.info(path)["size"])

    def stat(self, key: str) -> tuple[int, float | None]:
        """Size and modification time (see :meth:`list_info`) of the object ``key``;
        NotFoundError if there is none."""
        path = self.path(key)
        info = self._run("stat", key, lambda: self.backend.info(path))
        return int(info.get("size") or 0), modified_time(info)

    def exists(self, key: str) -> bool:
        """Whether an object (not merely a prefix) exists at ``key``."""
        try:
            self.size(key)
        except NotFoundError:
            return False
        return True

    def read_bytes(self, key: str, max_bytes: int | None = MANIFEST_MAX_BYTES) -> bytes:
        """The whole object; StorageError, reading nothing, if it exceeds ``max_bytes``."""
        return self.read_versioned(key, max_bytes).data

    def read_versioned(self, key: str, max_bytes: int | None = MANIFEST_MAX_BYTES) -> Versioned:
        """The whole object and its version, read consistently: one request, or pinned to
        the version its metadata named, so an object replaced meanwhile is never seen
        half old, half new. The version (an ETag, a GCS generation, a content digest) is
        what :meth:`put_bytes_if_match` compares against; None where the store has none.
        StorageError, reading nothing more, if the object exceeds ``max_bytes``."""
        path = self.path(key)
        backend = self.backend

        def read() -> Versioned:
            try:
                return backend.read(path, max_bytes)
            except TooLarge as exc:
                raise StorageError(
                    f"could not read {self.url(key)}: it is {exc.size} bytes, "
                    f"more than the limit of {max_bytes} bytes"
                ) from None

        return self._run("read", key, read)

    def read_range(self, key: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the object; StorageError if it ends before ``end``."""
        if not 0 <= start <= end:
            raise ValueError(f"invalid byte range [{start}, {end}) for {self.url(key)}")
        path = self.path(key)
        if start == end:
            return b""
        backend = self.backend
        data = self._run("read", key, lambda: backend.read_range(path, start, end))
        if len(data) > end - start:
            raise self._range_ignored(key, start, end, len(data))
        if len(data) < end - start:
            raise StorageError(
                f"could not read {self.url(key)}: asked for bytes [{start}, {end}), "
                f"got {len(data)} bytes; the object is shorter than expected"
            )
        return data

    def _range_ignored(self, key: str, start: int, end: int, got: int) -> StorageError:
        return StorageError(
            f"could not read {self.url(key)}: asked for bytes [{start}, {end}) "
            f"({end - start} bytes), got {got}; the server ignored the Range header "
            "(a proxy or server that does not support ranged GETs?)"
        )

    def read_part(
        self,
        key: str,
        start: int,
        end: int,
        into: memoryview | Through,
        *,
        on_failure: Callable[[BaseException], object] | None = None,
    ) -> memoryview | Through:
        """Bytes ``[start, end)`` of an object whose size is known (from a manifest), as
        one part of a download, read into ``into`` (``end - start`` bytes or more);
        returns the view of them: of ``into`` unless an attempt failed (then ``into`` may
        still be written to by an abandoned attempt, and must not be reused). ``into``
        may be a :class:`.through.Through` instead, which hands the bytes on as they
        arrive; the one that did (``into`` itself, or a retry's) is returned, and once
        this returns or raises, nothing more of the range is handed on.
        An answer shorter than asked (a body cut short) is
        retried like any transient failure, and if it stays short the object is not
        what the manifest says (IntegrityError). ``on_failure(exc)`` is told of each
        failed attempt that is retried."""
        if not 0 <= start < end or len(into) < end - start:
            raise ValueError(f"invalid byte range [{start}, {end}) for {self.url(key)}")
        path, backend, want = self.path(key), self.backend, end - start
        attempts = itertools.count()  # (next() is atomic: an abandoned attempt may still start)

        def attempt() -> memoryview | Through:
            # A retry reads into a buffer of its own: an attempt abandoned on a stall may
            # still be writing into the caller's (which is then not the view returned).
            first = next(attempts) == 0
            view: memoryview | Through
            if isinstance(into, Through):
                view = into if first else into.retry()  # (the abandoned one's bytes refused)
            else:
                view = into[:want] if first else memoryview(bytearray(want))
            got = backend.read_range_into(path, start, end, view)
            if got > want:
                raise self._range_ignored(key, start, end, got)
            if got < want:
                raise http.client.IncompleteRead(b"", want - got)
            return view

        try:
            return self._run("download", key, attempt, on_failure=on_failure)
        except BaseException as exc:
            if isinstance(into, Through):
                into.revoke()  # (the last attempt may have been abandoned, still receiving)
            short = isinstance(exc, TransientStorageError) and isinstance(exc.__cause__, http.client.IncompleteRead)
            if not short:
                raise
            raise IntegrityError(
                f"could not download {self.url(key)}: bytes [{start}, {end}) came back "
                "short every time; was it replaced or truncated?"
            ) from exc

    def stream(self, key: str, sink: Callable[[bytes], object], size: int | None = None) -> int:
        """Feed the whole object to ``sink`` in order, in chunks, and return its size.

        ``sink`` sees every byte exactly once, in pieces of at most :attr:`chunk_size`, so
        a caller can hash while writing to a file without holding the object in memory.
        ``size``, when the caller knows it (from a manifest), saves a metadata request;
        then exactly ``size`` bytes are streamed, and an object that ends earlier is an
        error. A transient failure is retried from the offset reached (the retry
        deadline applies per chunk). Exceptions raised by ``sink`` propagate unchanged.
        """
        path = self.path(key)
        known_size = size is not None
        if size is None:
            size = self.size(key)
        pos = 0
        reader: ChunkReader | None = None
        backend = self.backend

        def next_parts() -> list[bytes]:
            nonlocal reader
            want, box = min(self.chunk_size, size - pos), [reader]

            def step() -> list[bytes]:
                if box[0] is None:
                    box[0] = backend.open_reader(path, pos)
                return box[0].read_parts(want)

            def abandon() -> None:  # runs when a stalled step finally returns
                if box[0] is not None:
                    box[0].close()

            try:
                parts = watched(step, self.retry.stall_timeout, on_abandon=abandon)
            except StallError:
                reader = None  # still in use by the abandoned step, which closes it
                raise
            except BaseException:
                reader = None
                abandon()
                raise
            reader = box[0]
            return parts

        try:
            while pos < size:
                parts = self._run("download", key, next_parts, timeout=None)
                if not parts:
                    error = IntegrityError if known_size else StorageError
                    raise error(
                        f"could not download {self.url(key)}: it ended at byte {pos}, "
                        f"expected {size} bytes; was it replaced or truncated?"
                    )
                for part in parts:
                    sink(part)
                    pos += len(part)
        finally:
            if reader is not None:
                reader.close()
        return pos

    def get_file(
        self,
        key: str,
        local_path: str | os.PathLike[str],
        callback: Callable[[int], object] | None = None,
    ) -> int:
        """Download the object to ``local_path`` and return its size.

        ``callback(nbytes)`` is called after each chunk is written. On error the partial
        file is removed; callers that need atomic publication download to a temporary
        name (or use :meth:`stream` with their own file and hash).
        """
        local_path = os.fspath(local_path)

        def write(chunk: bytes) -> None:
            f.write(chunk)
            if callback is not None:
                callback(len(chunk))

        try:
            with open(local_path, "wb") as f:
                return self.stream(key, write)
        except BaseException:
            try:
                os.unlink(local_path)
            except FileNotFoundError:
                pass
            raise

    def open_read(self, key: str) -> BinaryIO:
        """A seekable binary file over the object; reads are retried and translated."""
        path = self.path(key)
        size = self.size(key)
        backend = self.backend
        f = self._run("open", key, lambda: backend.open(path))
        return StoreReader(f, self.url(key), self.retry, size)  # type: ignore[return-value]

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys of all objects under the directory-like ``prefix`` (all if empty)."""
        return sorted(self._find(prefix))

    def list_info(self, prefix: str = "") -> list[tuple[str, int, float | None]]:
        """``(key, size, modified)`` of all objects under ``prefix``, sorted by key;
        ``modified`` is in seconds since the epoch, None where the store does not say."""
        return sorted(
            (key, int(info.get("size") or 0), modified_time(info))
            for key, info in self._find(prefix, detail=True).items()
        )

    def _find(self, prefix: str, detail: bool = False) -> dict[str, dict[str, Any]]:
        """Key -> fsspec info (empty unless ``detail``) of every object under ``prefix``."""
        prefix = prefix.strip("/")
        base = self.path(prefix) if prefix else self.root
        backend = self.backend
        found = self._run("list", prefix, lambda: backend.list_info(base))
        root = self.root.rstrip("/") + "/"
        keys = {}
        for full, info in found.items():
            full = full.rstrip("/")
            if not full.startswith(root):
                logger.debug("list %s: ignoring %s outside the store", self, full)
                continue
            key = full[len(root):]
            if key.rsplit("/", 1)[-1].startswith(HIDDEN_PREFIX):
                continue
            keys[key] = info if detail else {}
        return keys

    # -- writing ---------------------------------------------------------------------

    def put_file(self, local_path: str | os.PathLike[str], key: str) -> bool:
        """Upload a finished local file to ``key``, replacing any object there.

        All or nothing: readers see the previous object (or none) until the upload
        completes, and a failed upload leaves no partial object. True where the store's
        answer to the upload confirmed that the object holds the file's bytes (an S3
        multipart completion answering with the ETag made of the file's own parts; a GCS
        compose answering with the CRC32C they combine to): :meth:`check_upload` would
        ask the store again what it has just answered.
        """
        local_path = os.fspath(local_path)
        os.stat(local_path)  # a missing source is the caller's FileNotFoundError, not the store's
        path = self.path(key)
        backend = self.backend

        def upload() -> bool:
            return bool(backend.put_file(local_path, path))

        base = self.retry.upload_timeout
        # An upload reports no progress: allow it the upload timeout plus 1 MiB/s.
        budget = None if base is None else base + os.path.getsize(local_path) / _MIN_UPLOAD_RATE
        return self._run("upload", key, upload, timeout=budget)

    def put_growing(self, local_path: str, key: str, feed: PartFeed) -> bool | None:
        """Upload ``local_path`` to ``key`` while it is being written (S3 and GCS only: the
        writer asks only of those), each part as ``feed`` reports it written; all or
        nothing, and True if the store's answer confirmed the object, as :meth:`put_file`.
        None if the file ended smaller than the multipart threshold: nothing was sent,
        and it goes up as a finished file does (:meth:`put_file`, one request). No time
        limit is set on the whole: the file grows as fast as its writer packs it. Each
        part, and each request, is bounded and retried as an upload's are; a failed
        upload is retried whole, from the parts written by then. Raises
        :class:`~.through.Revoked` once the feed is given up, or where the store cannot
        take the file in parts: it is then for :meth:`put_file` once finished."""
        path = self.path(key)
        put = getattr(self.backend, "put_growing", None)
        if put is None:
            raise TypeError(f"{redact(self._url)}: only S3 and GCS take an upload of a file still being written")
        return self._run("upload", key, lambda: put(os.fspath(local_path), path, feed), timeout=None)

    def check_upload(self, key: str, local_path: str | os.PathLike[str], check: ReadBackCheck) -> None:
        """IntegrityError unless the object ``key`` holds exactly the bytes of ``local_path``.

        The size always; then the MD5 the store reports for the object (S3's ETag of a
        single-part upload, GCS's md5Hash; :meth:`.Backend.reported_md5`) against the
        local file's; or a multipart ETag (``<md5 of the parts' MD5s>-N``) against the
        one the file gives when split as :mod:`.multipart` splits it; or, where the store
        reports neither (local disk, memory, an object split some other way), the object
        read back through ``check`` (each chunk in order, then ``check.finish()``, which
        raises IntegrityError: the writer passes the one shard check, roxxel.format's
        ShardCheck).
        """
        local_path = os.fspath(local_path)
        path = self.path(key)
        backend = self.backend
        info = self._run("stat", key, lambda: backend.info(path))
        expected = os.path.getsize(local_path)
        if info["size"] != expected:
            raise IntegrityError(
                f"{self.url(key)}: uploaded object is {info['size']} bytes, expected {expected}"
            )
        reported = backend.reported_md5(info)
        parts = multipart_parts(info) if reported is None else None
        if parts is not None:
            wanted_etag = expected_etag(local_path, parts)
            if wanted_etag is not None:
                actual = str(info.get("ETag") or info.get("etag")).strip('"')
                if actual != wanted_etag:
                    raise IntegrityError(
                        f"{self.url(key)}: uploaded object has multipart ETag {actual}, "
                        f"expected {wanted_etag}"
                    )
                return
        if reported is None:
            self.stream(key, check, size=expected)
            check.finish()
            return
        wanted = _file_digest(local_path, hashlib.md5())
        if reported != wanted:
            raise IntegrityError(
                f"{self.url(key)}: uploaded object has md5 {reported}, expected {wanted}"
            )

    def put_bytes_overwrite(self, key: str, data: bytes) -> None:
        """Atomically make ``key`` hold ``data``, replacing any object there."""
        path = self.path(key)
        backend = self.backend
        # Never abandoned on a stall: an abandoned write could still land later, over a
        # newer one (the clients' own timeouts bound it).
        self._run("write", key, lambda: backend.put(path, data), timeout=None)

    def put_bytes_create_only(self, key: str, data: bytes) -> None:
        """Publish ``data`` at ``key`` atomically; DatasetExistsError if ``key`` exists.

        Local disk: ``os.link`` of a finished temp file (refuses an existing target).
        memory: check and set under a lock. S3: a PUT with ``If-None-Match: *``. GCS: an
        upload with ``ifGenerationMatch=0``. Other stores: check, then put (best effort;
        see :meth:`conditional_writes_enforced`). A refused write that finds an identical
        object there was our own attempt whose answer was lost: it counts as success.
        """
        path = self.path(key)
        backend = self.backend
        if self.exists(key):  # the store may not enforce the condition: refuse early
            raise DatasetExistsError(f"could not publish {self.url(key)}: it already exists")
        self._put_once(key, data, lambda: backend.put_if_absent(path, data), FileExistsError)

    def put_bytes_if_match(self, key: str, data: bytes, version: str) -> None:
        """Make ``key`` hold ``data`` only if it is still at ``version`` (from
        :meth:`read_versioned`); ConflictError, writing nothing, if another writer
        changed it since. S3: ``If-Match``; GCS: ``ifGenerationMatch``; local disk and
        memory: a lock held across compare and replace. A store without conditional
        writes raises StorageError."""
        path = self.path(key)
        backend = self.backend

        def put() -> None:
            try:
                backend.put_if_match(path, data, version)
            except NotImplementedError:
                raise StorageError(
                    f"could not publish {self.url(key)}: {type(self.fs).__name__} has no "
                    "conditional writes, so a concurrent writer could not be detected"
                ) from None

        self._put_once(key, data, put, PreconditionFailed)

    def _put_once(self, key: str, data: bytes, put: Callable[[], None], lost: type[Exception]) -> None:
        """Run a conditional ``put``, never abandoned on a stall (an abandoned write could
        land later, over a newer one). ``lost`` is what ``put`` raises when its condition
        failed. That may be our own earlier attempt whose response was lost, retried by
        this wrapper or inside the cloud client itself (botocore, s3fs and gcsfs each
        retry), so the object is read back, and holding exactly ``data`` counts as success.
        """
        backend, path = self.backend, self.path(key)

        def attempt() -> None:
            try:
                put()
            except lost:
                if backend.read(path, None).data == data:
                    logger.info("publish %s: found our own earlier attempt", self.url(key))
                    return
                if lost is FileExistsError:
                    raise DatasetExistsError(f"could not publish {self.url(key)}: it already exists") from None
                raise ConflictError(
                    f"could not publish {self.url(key)}: another writer changed it since it was "
                    "read (the conditional write was refused); nothing was published"
                ) from None

        self._run("publish", key, attempt, timeout=None)

    def conditional_writes_enforced(self) -> bool:
        """Whether this store refuses a write whose precondition fails. Local disk and
        memory: yes. S3 and GCS: probed once per process and bucket with a small object
        under this prefix (``.roxxel-probe-*``, deleted at once), because some servers
        accept the headers and ignore them. Other stores: no."""
        backend = self.backend
        return self._run(
            "probe conditional writes at", "", lambda: backend.conditional_writes_enforced(self.root),
            timeout=None,
        )

    def delete(self, key: str) -> None:
        """Delete the object ``key``; a missing object is not an error."""
        path = self.path(key)
        backend = self.backend
        try:
            self._run("delete", key, lambda: backend.delete(path))
        except NotFoundError:
            pass

    # -- internals -------------------------------------------------------------------

    def _run(
        self,
        op: str,
        key: str,
        fn: Callable[[], T],
        timeout: float | None = -1.0,
        on_failure: Callable[[BaseException], object] | None = None,
    ) -> T:
        """``fn`` with retries; ``timeout`` bounds each attempt (-1: the policy's
        stall_timeout)."""
        url = self.url(key) if key else self._url
        return call(fn, op=op, url=url, policy=self.retry, timeout=timeout, on_failure=on_failure)


class ReadBackCheck(Protocol):
    """What :meth:`Store.check_upload` feeds an object read back to: each chunk in order,
    then ``finish()``, which raises IntegrityError unless the bytes were right."""

    def __call__(self, chunk: bytes) -> object: ...

    def finish(self) -> object: ...


def _file_digest(path: str, digest: Any) -> str:
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def modified_time(info: Mapping[str, Any]) -> float | None:
    """When an object was last written, in seconds since the epoch, from an fsspec
    ``info`` dict of S3 (LastModified), GCS (mtime, updated), local disk or memory
    (created); None if it says nothing usable. On local disk, the later of the file's
    mtime and its inode change time (``created`` there), as ``cp -p``, ``tar`` and
    ``rsync -a`` give a file just written an old mtime."""
    if isinstance(info.get("mtime"), (int, float)) and isinstance(info.get("created"), (int, float)):
        return float(max(info["mtime"], info["created"]))
    for name in ("LastModified", "mtime", "updated", "created"):
        value = info.get(name)
        if isinstance(value, str):
            try:
                value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
        if isinstance(value, datetime.datetime):
            if value.tzinfo is None:
                value = value.replace(tzinfo=datetime.timezone.utc)
            return value.timestamp()
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


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
