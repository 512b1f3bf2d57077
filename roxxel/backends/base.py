"""The store interface: what :class:`~roxxel.backends.Store` needs from a backend.

A backend is one kind of store (local disk, memory, S3, GCS, any other fsspec
filesystem) seen through its fsspec filesystem :attr:`Backend.fs`. It addresses objects
by their path on that filesystem, does each operation once, and lets the backend's own
exceptions propagate untranslated: retries, stall detection and error translation are
the wrapper's (:class:`~roxxel.backends.Store`), once for every backend. Two outcomes
are the interface's own exceptions: :class:`PreconditionFailed` for a conditional write
whose condition failed, and :class:`TooLarge` for a whole-object read over its limit.

Versions (a content digest, an ETag, a GCS generation) are opaque strings: a version
returned by :meth:`Backend.read` is what :meth:`Backend.put_if_match` compares against.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any, BinaryIO, ClassVar, NamedTuple, Protocol

from fsspec import AbstractFileSystem

from .errors import describe, http_status
from .through import Through
from .urls import redact

__all__ = [
    "HIDDEN_PREFIX",
    "Backend",
    "ChunkReader",
    "PreconditionFailed",
    "TooLarge",
    "Versioned",
    "check_size",
    "copy_into",
    "digest",
    "probed_enforcement",
]

logger = logging.getLogger(__name__)

# Temporary files, lock files and probes that roxxel itself leaves beside objects.
HIDDEN_PREFIX = ".roxxel-"


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


class ChunkReader(Protocol):
    """One object read in order from an offset (one streaming GET, an open file, ...)."""

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes (fewer only at the end of the object)."""

    def read_parts(self, size: int) -> list[bytes]:
        """Up to ``size`` bytes as received, unjoined (empty only at the end). Readers
        report every piece they receive to :func:`.watchdog.current` progress."""

    def close(self) -> None:
        """Release the connection or file; idempotent."""


def copy_into(data: bytes, into: memoryview | Through) -> int:
    """Copy what of ``data`` fits to the front of ``into`` (or hand it on, through a
    :class:`.through.Through`); returns ``len(data)``."""
    if isinstance(into, Through):
        return into.copy(data)
    n = min(len(data), len(into))
    into[:n] = memoryview(data)[:n]
    return len(data)


class Backend(ABC):
    """One kind of store, over its fsspec filesystem ``fs``.

    Every method does its work once (no retries) and raises the backend's own
    exceptions: ``FileNotFoundError`` for a missing object (a prefix is not an object),
    ``FileExistsError`` when a create-only write finds one. Paths are paths on ``fs``.
    """

    #: Paths on this backend are paths of the local filesystem (a dataset URL without a
    #: protocol names a local directory and is shown as such).
    paths_are_local: ClassVar[bool] = False
    #: Whole objects are downloaded as ranged parts, many in flight (a remote store,
    #: where one connection is far slower than the link); else streamed in one read.
    downloads_in_parts: ClassVar[bool] = True

    def __init__(self, fs: AbstractFileSystem) -> None:
        self.fs = fs

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.fs).__name__})"

    def forked(self) -> Backend:
        """This backend for a forked child: over a new filesystem made from the same
        arguments (async clients such as s3fs refuse to be used across a fork)."""
        from .registry import backend_for

        fs = self.fs
        return backend_for(type(fs)(*fs.storage_args, **fs.storage_options))

    # -- metadata and listing ----------------------------------------------------------

    @abstractmethod
    def info(self, path: str) -> dict[str, Any]:
        """The object's fsspec ``info``, fresh from the store (at least ``size``);
        FileNotFoundError for a prefix or nothing."""

    @abstractmethod
    def list_info(self, base: str) -> dict[str, dict[str, Any]]:
        """Path -> fsspec ``info`` of every object below ``base``, fresh from the store."""

    @abstractmethod
    def reported_md5(self, info: dict[str, Any]) -> str | None:
        """The MD5 hex digest of the whole object that the store reports in ``info``
        (from :meth:`info`), or None where it reports none."""

    # -- reading -----------------------------------------------------------------------

    @abstractmethod
    def read(self, path: str, max_bytes: int | None) -> Versioned:
        """The whole object and its version, read consistently (one request, or pinned
        to one version), so an object replaced meanwhile is never seen half old, half
        new; TooLarge, reading no more of it, past ``max_bytes``."""

    @abstractmethod
    def read_range(self, path: str, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` (``start < end``) as the store returns them; the caller
        checks their length."""

    def read_range_into(self, path: str, start: int, end: int, into: memoryview | Through) -> int:
        """Bytes ``[start, end)`` written to the front of ``into`` (at least ``end -
        start`` bytes), or handed on through it (a :class:`.through.Through`); returns
        how many the store sent, which may be more than fit (nothing past ``len(into)``
        is written) or fewer. A backend that can read
        straight into the buffer overrides this; by default it is a copy of
        :meth:`read_range`."""
        return copy_into(self.read_range(path, start, end), into)

    @abstractmethod
    def open_reader(self, path: str, offset: int) -> ChunkReader:
        """A sequential reader of the object from ``offset`` on, the cheapest this
        store has (one request for the rest of the object where it can)."""

    @abstractmethod
    def open(self, path: str) -> BinaryIO:
        """A seekable binary file over the object."""

    # -- writing -----------------------------------------------------------------------

    @abstractmethod
    def put_file(self, local_path: str, path: str) -> bool | None:
        """Upload the finished local file, replacing any object: all or nothing (readers
        see the old object or the new one; a failed upload leaves no partial object),
        with memory bounded whatever the file's size. True where the store's answer to
        the upload confirmed that the object holds the file's bytes (an S3 multipart
        completion naming the ETag made of the file's own parts, a GCS compose naming
        the CRC32C its parts, checked against the file, combine to); else None or False."""

    @abstractmethod
    def put(self, path: str, data: bytes) -> None:
        """Atomically make the object hold ``data``, replacing any object there."""

    @abstractmethod
    def put_if_absent(self, path: str, data: bytes) -> None:
        """Create the object; FileExistsError if it exists (enforced by the store where
        :meth:`conditional_writes_enforced`, best effort otherwise)."""

    @abstractmethod
    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        """Replace the object only if it is still at ``version`` (from :meth:`read`);
        PreconditionFailed otherwise; NotImplementedError on a store without
        conditional writes."""

    @abstractmethod
    def delete(self, path: str) -> None:
        """Delete the object; FileNotFoundError if there is none."""

    @abstractmethod
    def conditional_writes_enforced(self, root: str) -> bool:
        """Whether the store refuses writes whose preconditions fail, for objects under
        ``root`` (some servers accept the headers and ignore them)."""


def check_size(size: int, max_bytes: int | None) -> None:
    """TooLarge if ``size`` exceeds ``max_bytes`` (None: no limit)."""
    if max_bytes is not None and size > max_bytes:
        raise TooLarge(size)


def digest(data: bytes) -> str:
    """The version of an object on a store that has none of its own: its content's SHA-256."""
    return "sha256:" + hashlib.sha256(data).hexdigest()



PROBE_PREFIX = HIDDEN_PREFIX + "probe-"
_PROBE_BODY = b"roxxel: a probe of conditional writes; safe to delete\n"
# (class, filesystem token, bucket) -> whether that store enforces preconditions
_PROBED: dict[tuple[str, str, str], bool] = {}
_PROBE_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    global _PROBE_LOCK
    _PROBE_LOCK = threading.Lock()  # a probe under way in a parent's thread (a writer's) did not come along


os.register_at_fork(after_in_child=_after_fork_in_child)


def probed_enforcement(backend: Backend, root: str) -> bool:
    """Whether ``backend`` enforces preconditions in the bucket of ``root``: found out once
    per process and bucket by a probe object under ``root`` (``.roxxel-probe-*``,
    deleted at once) that two conditional writes must both fail to replace."""
    fs = backend.fs
    bucket = root.strip("/").split("/", 1)[0]
    token = str(getattr(fs, "_fs_token", None) or id(fs))
    key = (type(fs).__name__, token, bucket)
    with _PROBE_LOCK:
        if key not in _PROBED:
            _PROBED[key] = _probe(backend, f"{root.rstrip('/')}/{PROBE_PREFIX}{uuid.uuid4().hex}")
            logger.info("%s bucket %s: conditional writes %s", type(fs).__name__, bucket,
                        "enforced" if _PROBED[key] else "NOT enforced")
        return _PROBED[key]


def _probe(backend: Backend, path: str) -> bool:
    """Write ``path``, then try two conditional writes that must both fail."""
    backend.put(path, _PROBE_BODY)
    try:
        wrong = _wrong_version(backend.read(path, None).version)
        return _refused(lambda: backend.put_if_absent(path, _PROBE_BODY)) and _refused(
            lambda: backend.put_if_match(path, _PROBE_BODY, wrong)
        )
    finally:
        try:
            backend.fs.rm_file(path)
        except Exception as exc:  # noqa: BLE001 - the verdict stands; say what is left
            logger.warning("could not delete the probe object %s (%s); it is safe to delete",
                           redact(path), describe(exc))


def _wrong_version(version: str | None) -> str:
    """A version the probe object certainly does not have."""
    if version is not None and version.strip('"').isdigit():  # a GCS generation
        return str(int(version.strip('"')) + 7919)
    return '"00000000000000000000000000000000"'


# Answers of a store that does not take conditional writes at all (Bad Request, Method Not
# Allowed, Not Implemented): as unprotected as one that ignores them.
_REJECTED = (400, 405, 501)


def _refused(write: Callable[[], None]) -> bool:
    """Whether ``write()`` failed its precondition; False if it went through or the store
    rejected the condition itself (any other error propagates)."""
    try:
        write()
    except (PreconditionFailed, FileExistsError):
        return True
    except NotImplementedError:
        return False
    except Exception as exc:
        if http_status(exc) in _REJECTED:
            return False
        raise
    return False
