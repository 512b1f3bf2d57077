"""Small objects read whole with their version, and written only if that version is
still there: the compare-and-swap behind every publish that depends on what it read
(DESIGN.md, invariants 9 and 10).

One class per kind of store, chosen by :func:`for_filesystem`:

- local disk: the version is the content's SHA-256; an exclusive ``flock`` on a lock
  file beside the object is held across read, compare and rename, by every roxxel
  writer of that object (creation uses ``os.link``, which refuses an existing target);
- memory: the same under one process-wide lock (``memory://`` is one dict per process);
- S3: one ``GetObject`` gives body and ETag; ``PutObject`` with ``If-Match: <etag>``, or
  ``If-None-Match: *`` to create;
- GCS: one GET gives the body and its generation (``x-goog-generation``), after the
  metadata bounds the size; uploads carry ``ifGenerationMatch`` (0 to create);
- any other fsspec store: no conditional writes, unless its protocol was given its own
  operations with :func:`register`.

A store can accept the precondition headers and ignore them (s3rver, gcp-storage-emulator).
:meth:`Conditional.enforced` finds out once per process and store with a probe object
that a conditional write must fail to replace; callers refuse to publish on a store
that fails it unless told there is only one writer.

Backend exceptions propagate untranslated (the caller's retry wrapper translates
them); a precondition that failed raises :class:`PreconditionFailed`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import json
import logging
import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any, Callable, NamedTuple

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from . import localfiles
from .errors import http_status

__all__ = ["Conditional", "PreconditionFailed", "TooLarge", "Versioned", "for_filesystem", "register"]

logger = logging.getLogger(__name__)

# memory:// is one process-wide dict: this makes its check-then-set atomic.
_MEMORY_LOCK = threading.Lock()
LOCK_PREFIX = ".roxxel-lock-"
PROBE_PREFIX = ".roxxel-probe-"
_PROBE_BODY = b"roxxel: a probe of conditional writes; safe to delete\n"
# (class, filesystem token, bucket) -> whether that store enforces preconditions
_PROBED: dict[tuple[str, str, str], bool] = {}
_PROBE_LOCK = threading.Lock()
# protocol -> the conditional operations of a store roxxel does not know itself
_REGISTRY: dict[str, Callable[[AbstractFileSystem], Conditional]] = {}


class PreconditionFailed(Exception):
    """The object is not at the version a conditional write required (HTTP 412/409)."""


class TooLarge(Exception):
    """The object is larger than the caller's limit; nothing of it was kept."""

    def __init__(self, size: int) -> None:
        super().__init__(f"{size} bytes")
        self.size = size


class Versioned(NamedTuple):
    """A whole object and the version it was read at (opaque; None if the store has none)."""

    data: bytes
    version: str | None


class Conditional:
    """A store without conditional writes (the base class, for other fsspec stores)."""

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        """The whole object, read in one request; TooLarge past ``max_bytes``."""
        return Versioned(read_whole(self.fs, path, max_bytes), None)

    def put(self, path: str, data: bytes) -> None:
        """Replace the object unconditionally."""
        self.fs.pipe_file(path, data)

    def put_if_absent(self, path: str, data: bytes) -> None:
        """Create the object; FileExistsError if it exists (best effort here: check, then put)."""
        if self.fs.exists(path):
            raise FileExistsError(path)
        self.fs.pipe_file(path, data)

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        """Replace the object only if it is still at ``version``."""
        raise NotImplementedError("this store has no conditional writes")

    def enforced(self, root: str) -> bool:
        """Whether the store refuses writes whose preconditions fail."""
        return False


class LocalConditional(Conditional):
    """Local disk: content digests as versions, a lock file across read-compare-rename."""

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        with open(path, "rb") as f:
            check_size(os.fstat(f.fileno()).st_size, max_bytes)
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        check_size(len(data), max_bytes)
        return Versioned(data, digest(data))

    def put(self, path: str, data: bytes) -> None:
        with file_lock(path):
            localfiles.write_replace(path, data)

    def put_if_absent(self, path: str, data: bytes) -> None:
        localfiles.write_new(path, data)

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        with file_lock(path):
            try:
                with open(path, "rb") as f:
                    current = digest(f.read())
            except FileNotFoundError:
                current = None
            if current != version:
                raise PreconditionFailed(path)
            localfiles.write_replace(path, data)

    def enforced(self, root: str) -> bool:
        return True


class MemoryConditional(Conditional):
    """fsspec's memory filesystem: content digests as versions, one process-wide lock."""

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        data = self.fs.cat_file(path)
        check_size(len(data), max_bytes)
        return Versioned(data, digest(data))

    def put(self, path: str, data: bytes) -> None:
        with _MEMORY_LOCK:
            self.fs.pipe_file(path, data)

    def put_if_absent(self, path: str, data: bytes) -> None:
        with _MEMORY_LOCK:
            if self.fs.isfile(path):
                raise FileExistsError(path)
            self.fs.pipe_file(path, data)

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        with _MEMORY_LOCK:
            current = digest(self.fs.cat_file(path)) if self.fs.isfile(path) else None
            if current != version:
                raise PreconditionFailed(path)
            self.fs.pipe_file(path, data)

    def enforced(self, root: str) -> bool:
        return True


class _ProbedConditional(Conditional):
    """An object store whose enforcement of preconditions is probed once per process."""

    def enforced(self, root: str) -> bool:
        bucket = root.strip("/").split("/", 1)[0]
        token = str(getattr(self.fs, "_fs_token", None) or id(self.fs))
        key = (type(self.fs).__name__, token, bucket)
        with _PROBE_LOCK:
            if key not in _PROBED:
                _PROBED[key] = self._probe(f"{root.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex}")
                logger.info("%s bucket %s: conditional writes %s", type(self.fs).__name__, bucket,
                            "enforced" if _PROBED[key] else "NOT enforced")
            return _PROBED[key]

    def _probe(self, path: str) -> bool:
        """Write ``path``, then try two conditional writes that must both fail."""
        self.put(path, _PROBE_BODY)
        try:
            version = self.read(path, None).version
            wrong = _wrong_version(version)
            return _refused(lambda: self.put_if_absent(path, _PROBE_BODY)) and _refused(
                lambda: self.put_if_match(path, _PROBE_BODY, wrong)
            )
        finally:
            with contextlib.suppress(Exception):
                self.fs.rm_file(path)


class S3Conditional(_ProbedConditional):
    """S3 through s3fs: ETags, ``If-Match`` and ``If-None-Match: *`` on PutObject."""

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        return sync(self.fs.loop, self._read, path, max_bytes)

    async def _read(self, path: str, max_bytes: int | None) -> Versioned:
        bucket, key, version_id = self.fs.split_path(path)
        extra = {"VersionId": version_id} if version_id else {}
        response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key, **extra, **self.fs.req_kw)
        body = response["Body"]
        size = int(response.get("ContentLength") or 0)
        try:
            check_size(size, max_bytes)
            data = await body.read()
        finally:
            body.close()
        if len(data) != size:
            raise http.client.IncompleteRead(data[:size], max(0, size - len(data)))
        return Versioned(data, response.get("ETag"))

    def put(self, path: str, data: bytes) -> None:
        self._put(path, data)

    def put_if_absent(self, path: str, data: bytes) -> None:
        try:
            self._put(path, data, IfNoneMatch="*")
        except PreconditionFailed:
            raise FileExistsError(path) from None

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        self._put(path, data, IfMatch=version)

    def _put(self, path: str, data: bytes, **conditions: str) -> None:
        bucket, key, _ = self.fs.split_path(path)
        try:
            sync(self.fs.loop, self.fs._call_s3, "put_object", Bucket=bucket, Key=key, Body=data,
                 **conditions, **self.fs.req_kw)
        except Exception as exc:
            if conditions and http_status(exc) in (409, 412):
                raise PreconditionFailed(path) from exc
            raise
        finally:
            self.fs.invalidate_cache(path)


class GCSConditional(_ProbedConditional):
    """GCS through gcsfs: generations and ``ifGenerationMatch`` on multipart uploads."""

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        self.fs.invalidate_cache(path)
        info = self.fs.info(path)
        if info.get("type") != "file":
            raise FileNotFoundError(f"{path} is a prefix, not an object")
        check_size(int(info.get("size") or 0), max_bytes)  # before the body is read
        headers, data = self.fs.call("GET", self.fs.url(path))
        check_size(len(data), max_bytes)  # replaced by a larger one since the metadata
        # The body's own generation: the object may have been replaced since info().
        generation = headers.get("x-goog-generation")
        return Versioned(data, None if generation is None else str(generation))

    def put(self, path: str, data: bytes) -> None:
        self._upload(path, data, None)

    def put_if_absent(self, path: str, data: bytes) -> None:
        try:
            self._upload(path, data, "0")
        except PreconditionFailed:
            raise FileExistsError(path) from None

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        self._upload(path, data, version)

    def _upload(self, path: str, data: bytes, generation: str | None) -> None:
        """One multipart upload (gcsfs's simple upload, with any generation precondition)."""
        bucket, key, _ = self.fs.split_path(path)
        boundary = f"roxxel-{uuid.uuid4().hex}"
        body = b"".join((
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            json.dumps({"name": key}).encode(),
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ))
        params = {} if generation is None else {"ifGenerationMatch": generation}
        try:
            self.fs.call(
                "POST", f"{self.fs._location}/upload/storage/v1/b/{bucket}/o",
                uploadType="multipart", data=body, json_out=True,
                headers={"Content-Type": f'multipart/related; boundary="{boundary}"'}, **params,
            )
        except (FileExistsError, OSError) as exc:
            if generation is not None and (isinstance(exc, FileExistsError) or http_status(exc) == 412):
                raise PreconditionFailed(path) from exc
            raise
        finally:
            self.fs.invalidate_cache(path)


def register(protocol: str, factory: Callable[[AbstractFileSystem], Conditional]) -> None:
    """Give the fsspec protocol ``protocol`` its own conditional operations
    (``factory(fs)``, a :class:`Conditional` whose ``enforced`` says whether they hold)."""
    _REGISTRY[protocol] = factory


def for_filesystem(fs: AbstractFileSystem) -> Conditional:
    """The conditional operations of ``fs``'s kind of store."""
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    for name in protocols:
        if name in _REGISTRY:
            return _REGISTRY[name](fs)
    names = set(protocols)
    if names & {"file", "local"}:
        return LocalConditional(fs)
    if "memory" in names:
        return MemoryConditional(fs)
    if names & {"s3", "s3a"} and hasattr(fs, "_call_s3"):
        return S3Conditional(fs)
    if names & {"gs", "gcs"} and hasattr(fs, "_location"):
        return GCSConditional(fs)
    return Conditional(fs)


def read_whole(fs: AbstractFileSystem, path: str, max_bytes: int | None) -> bytes:
    """The whole object in one GET, bounded by the size its metadata gives just before.
    A body of another length (cut short, or the object replaced in between) raises
    IncompleteRead, a transient error: the caller's retry starts again from the metadata."""
    info = fs.info(path)
    size = int(info.get("size") or 0)
    check_size(size, max_bytes)
    data = fs.cat_file(path)
    if len(data) != size:
        raise http.client.IncompleteRead(data[:size], max(0, size - len(data)))
    return data


def check_size(size: int, max_bytes: int | None) -> None:
    if max_bytes is not None and size > max_bytes:
        raise TooLarge(size)


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _wrong_version(version: str | None) -> str:
    """A version the probe object certainly does not have."""
    if version is not None and version.strip('"').isdigit():  # a GCS generation
        return str(int(version.strip('"')) + 7919)
    return '"00000000000000000000000000000000"'


def _refused(write: Any) -> bool:
    """Whether ``write()`` failed its precondition (any other error propagates)."""
    try:
        write()
    except (PreconditionFailed, FileExistsError):
        return True
    return False


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive lock on ``<dir>/.roxxel-lock-<name>``, shared by every roxxel process
    that writes ``path``."""
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    fd = os.open(os.path.join(folder, LOCK_PREFIX + name), os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
