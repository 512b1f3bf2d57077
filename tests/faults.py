"""A fault-injecting fsspec filesystem for the reliability tests.

:class:`FaultyFileSystem` (protocol ``faulty://``) wraps a real filesystem (local disk by
default, or ``memory``) and injects, per request, the failures object stores produce,
raising the exception types the real backends raise, so roxxel's real retry, translation
and verification paths run::

    plan = RandomFaults(seed=1, rate=0.05, kinds=TRANSIENT)
    fs = FaultyFileSystem(faults=plan)
    store = Store("faulty:///tmp/ds", fs=fs)          # or, through a URL:
    roxxel.ops.warm("faulty:///tmp/ds", {"faults": plan})

Every request (``info``, ``cat_file``, ``open``, ``put_file``, ``pipe_file``, ``rm_file``,
``find``/``ls``) is counted in :attr:`FaultyFileSystem.requests`, so tests can compare
request counts with and without faults. Fault kinds (see :data:`KINDS`):

``reset``     ConnectionResetError: at once for a call, or after N bytes of a body
``payload``   aiohttp.ClientPayloadError mid-body (a body cut short, as s3fs reports it)
``slowdown``  HTTP 503 SlowDown, as s3fs raises it (OSError chained to botocore's ClientError)
``500``       HTTP 500 InternalError, the same way
``403``       AccessDenied: PermissionError chained to ClientError (permanent)
``404``       NoSuchKey: FileNotFoundError chained to ClientError (permanent)
``short``     a read returns fewer bytes than asked, reported as success (not at EOF)
``flip``      one bit of the returned (or, for an upload, of the stored) bytes flipped
``stall``     the request hangs for :attr:`FaultyFileSystem.stall_seconds` (released early
              by :meth:`FaultyFileSystem.release_stalls`), then proceeds normally
``lost``      an upload lands, but the caller sees ConnectionResetError (a lost response)

Plans are small picklable objects, so a plan can cross into a child process.
"""

from __future__ import annotations

import errno
import fnmatch
import hashlib
import io
import os
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import fsspec
from fsspec import AbstractFileSystem

from roxxel.backends import FsspecBackend, PreconditionFailed, Versioned
from roxxel.backends import register as register_backend
from roxxel.backends.base import digest
from roxxel.backends.generic import read_whole
from roxxel.backends.local import file_lock

__all__ = [
    "KINDS",
    "PERMANENT",
    "TRANSIENT",
    "CORRUPTING",
    "Fault",
    "FaultyFileSystem",
    "NoFaults",
    "RandomFaults",
    "Scripted",
    "client_error",
    "faulty_url",
    "register",
]

TRANSIENT = ("reset", "payload", "slowdown", "500")
CORRUPTING = ("short", "flip")
PERMANENT = ("403", "404")
KINDS = TRANSIENT + CORRUPTING + PERMANENT + ("stall", "lost")

READ_OPS = ("info", "cat_file", "open")
WRITE_OPS = ("put_file", "pipe_file")


def client_error(status: int, code: str, operation: str = "GetObject") -> OSError:
    """What s3fs raises for an S3 error response: a builtin OSError (FileNotFoundError for
    404, PermissionError for 403) chained to botocore's ClientError."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    error = ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )
    try:
        raise translate_boto_error(error) from error
    except OSError as exc:
        return exc


def _exception(kind: str, path: str) -> BaseException:
    if kind == "reset" or kind == "lost":
        return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected)")
    if kind == "payload":
        import aiohttp

        return aiohttp.ClientPayloadError("Response payload is not completed (injected)")
    if kind == "slowdown":
        return client_error(503, "SlowDown")
    if kind == "500":
        return client_error(500, "InternalError")
    if kind == "403":
        return client_error(403, "AccessDenied")
    if kind == "404":
        return client_error(404, "NoSuchKey")
    raise ValueError(f"fault {kind!r} is not an exception")


@dataclass(frozen=True)
class Fault:
    """One injected failure: its kind and, for a body, where in the body it strikes."""

    kind: str
    at: float = 0.5  # fraction of the body read before a mid-body fault strikes

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected one of {KINDS}")


class FaultPlan:
    """Decides, for each request, whether it fails and how; counts the requests it saw
    (in ``requests``, by operation), so a plan shared by several filesystems counts all."""

    requests: Counter

    def decide(self, op: str, path: str) -> Fault | None:
        raise NotImplementedError

    def seen(self, op: str) -> None:
        with self._lock:
            self.requests[op] += 1

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()


@dataclass
class NoFaults(FaultPlan):
    """No faults; only counts requests."""

    requests: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def decide(self, op: str, path: str) -> Fault | None:
        return None


@dataclass
class RandomFaults(FaultPlan):
    """Each request matching ``ops`` and ``paths`` (fnmatch patterns on the path) fails
    with probability ``rate``, with a kind drawn from ``kinds``.

    The draw for the n-th request of an (operation, path) is a hash of ``seed``, those and
    the path's last two parts, so a run repeats whatever order threads make their
    requests in, and wherever the dataset lives. ``limit`` caps
    the faults injected in all; ``per_path`` those injected into one path (so a test can
    stay within a retry budget, as a real flaky network does not fail one object forever).
    """

    seed: int = 0
    rate: float = 0.05
    kinds: tuple[str, ...] = TRANSIENT
    ops: tuple[str, ...] = READ_OPS + WRITE_OPS
    paths: tuple[str, ...] = ("*",)
    limit: int | None = None
    per_path: int | None = None
    injected: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        for kind in self.kinds:
            Fault(kind)
        self._lock = threading.Lock()
        self._nth: Counter = Counter()
        self._per_path: Counter = Counter()

    def _draw(self, op: str, path: str, *key: object) -> float:
        # Only the path's last two parts (shards/<name>): draws do not depend on tmp dirs.
        where = "/".join(path.rsplit("/", 2)[-2:])
        digest = hashlib.blake2b(repr((self.seed, op, where, *key)).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") / 2**64

    def decide(self, op: str, path: str) -> Fault | None:
        if op not in self.ops or not any(fnmatch.fnmatch(path, p) for p in self.paths):
            return None
        with self._lock:
            nth = self._nth[op, path]
            self._nth[op, path] += 1
            if self.limit is not None and sum(self.injected.values()) >= self.limit:
                return None
            if self.per_path is not None and self._per_path[path] >= self.per_path:
                return None
            if self._draw(op, path, nth) >= self.rate:
                return None
            kind = self.kinds[int(self._draw(op, path, nth, "kind") * len(self.kinds))]
            fault = Fault(kind, at=self._draw(op, path, nth, "at"))
            self.injected[fault.kind] += 1
            self._per_path[path] += 1
            return fault


@dataclass
class Scripted(FaultPlan):
    """Faults in a fixed order: each entry ``(op, path pattern, Fault)`` strikes the next
    matching request once; ``forever`` entries strike every matching request."""

    script: list[tuple[str, str, Fault]] = field(default_factory=list)
    forever: list[tuple[str, str, Fault]] = field(default_factory=list)
    injected: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()

    def decide(self, op: str, path: str) -> Fault | None:
        with self._lock:
            for entries, consume in ((self.script, True), (self.forever, False)):
                for i, (want_op, pattern, fault) in enumerate(entries):
                    if (want_op in ("*", op)) and fnmatch.fnmatch(path, pattern):
                        if consume:
                            del entries[i]
                        self.injected[fault.kind] += 1
                        return fault
        return None


def _flip(data: bytes, at: float) -> bytes:
    if not data:
        return data
    out = bytearray(data)
    i = min(int(at * len(out)), len(out) - 1)
    out[i] ^= 1 << (int(at * 1e6) % 8)
    return bytes(out)


class FaultyFileSystem(AbstractFileSystem):
    """An fsspec filesystem over ``target`` that injects the faults ``faults`` decides.

    ``target_protocol`` (default ``"file"``) and ``target_options`` build the wrapped
    filesystem. ``latency`` seconds are slept per request and per body read (to make
    transfers take time). Instances are not cached by fsspec: every ``Store`` built from
    a URL gets its own, so pass the same plan object to share a plan.
    """

    protocol = ("faulty",)
    cachable = False
    root_marker = ""

    def __init__(
        self,
        faults: FaultPlan | None = None,
        *,
        target_protocol: str = "file",
        target_options: dict[str, Any] | None = None,
        stall_seconds: float = 30.0,
        latency: float = 0.0,
        **storage_options: Any,
    ) -> None:
        super().__init__(**storage_options)
        self.faults = faults if faults is not None else NoFaults()
        self.target: AbstractFileSystem = fsspec.filesystem(target_protocol, **(target_options or {}))
        self.stall_seconds = stall_seconds
        self.latency = latency
        self.requests: Counter = Counter()
        self.log: list[tuple[str, str]] = []  # (op, path) of every request
        self._lock = threading.Lock()
        self._release = threading.Event()

    # -- bookkeeping ------------------------------------------------------------------

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        path = os.fspath(path) if not isinstance(path, str) else path
        if path.startswith("faulty://"):
            path = path[len("faulty://"):]
        return path.rstrip("/") or "/"

    def unstrip_protocol(self, name: str) -> str:
        return "faulty://" + name

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def release_stalls(self) -> None:
        """End every stall now and in the future."""
        self._release.set()

    def _request(self, op: str, path: str) -> Fault | None:
        with self._lock:
            self.requests[op] += 1
            self.log.append((op, path))
        self.faults.seen(op)
        if self.latency:
            time.sleep(self.latency)
        fault = self.faults.decide(op, path)
        if fault is not None and fault.kind == "stall":
            self._release.wait(self.stall_seconds)
            return None
        return fault

    def _raise_now(self, fault: Fault | None, path: str, *, body: bool) -> None:
        """Raise the fault's exception if it strikes before any byte is returned."""
        if fault is None or fault.kind in CORRUPTING or fault.kind == "lost":
            return
        if body and fault.kind in ("reset", "payload"):
            return  # mid-body: the file object raises after some bytes
        raise _exception(fault.kind, path)

    # -- reading ----------------------------------------------------------------------

    def info(self, path: str, **kwargs: Any) -> dict[str, Any]:
        path = self._strip_protocol(path)
        fault = self._request("info", path)
        self._raise_now(fault, path, body=False)
        info = dict(self.target.info(path, **kwargs))
        info["name"] = path
        return info

    def cat_file(self, path: str, start: int | None = None, end: int | None = None, **kwargs: Any) -> bytes:
        path = self._strip_protocol(path)
        fault = self._request("cat_file", path)
        self._raise_now(fault, path, body=False)
        data = self.target.cat_file(path, start=start, end=end, **kwargs)
        if fault is not None and fault.kind == "short" and len(data) > 1:
            data = data[: max(1, int(len(data) * fault.at))]
        elif fault is not None and fault.kind == "flip":
            data = _flip(data, fault.at)
        return data

    def _open(self, path: str, mode: str = "rb", block_size: Any = None, autocommit: bool = True,
              cache_options: Any = None, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        if "r" not in mode:
            return _UploadFile(self, path)
        fault = self._request("open", path)
        self._raise_now(fault, path, body=True)
        return _FaultyReader(self, self.target.open(path, "rb"), path, fault)

    def ls(self, path: str, detail: bool = True, **kwargs: Any) -> list[Any]:
        path = self._strip_protocol(path)
        fault = self._request("ls", path)
        self._raise_now(fault, path, body=False)
        return self.target.ls(path, detail=detail, **kwargs)

    def find(self, path: str, maxdepth: int | None = None, withdirs: bool = False,
             detail: bool = False, **kwargs: Any) -> Any:
        path = self._strip_protocol(path)
        fault = self._request("find", path)
        self._raise_now(fault, path, body=False)
        return self.target.find(path, maxdepth=maxdepth, withdirs=withdirs, detail=detail, **kwargs)

    # -- writing ----------------------------------------------------------------------

    def _store(self, op: str, path: str, data: bytes) -> None:
        fault = self._request(op, path)
        self._raise_now(fault, path, body=False)
        if fault is not None and fault.kind == "short" and len(data) > 1:
            data = data[: max(1, int(len(data) * fault.at))]
        elif fault is not None and fault.kind == "flip":
            data = _flip(data, fault.at)
        parent = path.rsplit("/", 1)[0]
        if parent:
            self.target.makedirs(parent, exist_ok=True)
        self.target.pipe_file(path, data)
        if fault is not None and fault.kind == "lost":
            raise _exception("lost", path)

    def pipe_file(self, path: str, value: bytes, mode: str = "overwrite", **kwargs: Any) -> None:
        path = self._strip_protocol(path)
        if mode == "create" and self.target.exists(path):
            raise FileExistsError(path)
        self._store("pipe_file", path, bytes(value))

    def put_file(self, lpath: str, rpath: str, callback: Any = None, mode: str = "overwrite",
                 **kwargs: Any) -> None:
        rpath = self._strip_protocol(rpath)
        with open(lpath, "rb") as f:
            data = f.read()
        self._store("put_file", rpath, data)

    def rm_file(self, path: str) -> None:
        path = self._strip_protocol(path)
        fault = self._request("rm_file", path)
        self._raise_now(fault, path, body=False)
        self.target.rm_file(path)

    def _rm(self, path: str) -> None:
        self.rm_file(path)

    def mkdir(self, path: str, create_parents: bool = True, **kwargs: Any) -> None:
        self.target.mkdir(self._strip_protocol(path), create_parents=create_parents, **kwargs)

    def makedirs(self, path: str, exist_ok: bool = False) -> None:
        self.target.makedirs(self._strip_protocol(path), exist_ok=exist_ok)

    def invalidate_cache(self, path: str | None = None) -> None:
        self.target.invalidate_cache(None if path is None else self._strip_protocol(path))


class _FaultyReader(io.RawIOBase):
    """The body of one GET: delivers bytes, then (maybe) fails partway through."""

    def __init__(self, fs: FaultyFileSystem, f: Any, path: str, fault: Fault | None) -> None:
        super().__init__()
        self._fs, self._f, self._path, self._fault = fs, f, path, fault
        self._size = fs.target.size(path)
        self._cut: int | None = None
        self._armed = fault is not None and fault.kind in ("reset", "payload", "short", "flip")

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._f.seek(offset, whence)

    def tell(self) -> int:
        return self._f.tell()

    def read(self, size: int = -1) -> bytes:
        if self._fs.latency:
            time.sleep(self._fs.latency)
        pos = self._f.tell()
        remaining = self._size - pos
        if size is None or size < 0:
            size = remaining
        fault = self._fault
        if not self._armed or fault is None or remaining <= 0:
            return self._f.read(size)
        if self._cut is None:  # where in this body the fault strikes
            self._cut = pos + max(0, min(remaining - 1, int(remaining * fault.at)))
        if fault.kind in ("reset", "payload"):
            if pos >= self._cut:
                self._armed = False
                raise _exception(fault.kind, self._path)
            return self._f.read(min(size, self._cut - pos))
        if fault.kind == "short":  # fewer bytes than asked, though more remain
            self._armed = False
            n = min(size, self._cut - pos + 1)
            return self._f.read(n if n < size else max(1, size // 2))
        data = self._f.read(size)  # flip
        if pos <= self._cut < pos + len(data):
            self._armed = False
            data = _flip(data, (self._cut - pos) / len(data))
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(memoryview(buffer)))
        memoryview(buffer).cast("B")[: len(data)] = data
        return len(data)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
        super().close()


class _UploadFile(io.BytesIO):
    """A file opened for writing: its bytes are stored, all at once, on close."""

    def __init__(self, fs: FaultyFileSystem, path: str) -> None:
        super().__init__()
        self._fs, self._path = fs, path

    def close(self) -> None:
        if not self.closed:
            data = self.getvalue()
            super().close()
            self._fs._store("put_file", self._path, data)


class FaultyBackend(FsspecBackend):
    """``faulty://`` as a store: the generic fsspec backend, plus manifest reads and
    conditional writes in which every request goes through the faulty filesystem
    (counted, and faulted like any other), while a lock on the target (its file lock on
    local disk, one lock in memory) makes compare and write atomic, as the target
    store's own conditional writes are."""

    _memory_lock = threading.Lock()

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        data = read_whole(self.fs, path, max_bytes)
        return Versioned(data, digest(data))

    def put(self, path: str, data: bytes) -> None:
        with self._lock(path):
            self.fs.pipe_file(path, data)

    def put_if_absent(self, path: str, data: bytes) -> None:
        with self._lock(path):
            self.fs.pipe_file(path, data, mode="create")

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        with self._lock(path):
            try:
                current = digest(self.fs.target.cat_file(self.fs._strip_protocol(path)))
            except FileNotFoundError:
                current = None
            if current != version:
                raise PreconditionFailed(path)
            self.fs.pipe_file(path, data)

    def conditional_writes_enforced(self, root: str) -> bool:
        return True

    def _lock(self, path: str) -> Any:
        if "file" in self.fs.target.protocol or "local" in self.fs.target.protocol:
            return file_lock(self.fs._strip_protocol(path))
        return self._memory_lock


def register() -> None:
    """Make ``faulty://`` URLs resolve to :class:`FaultyFileSystem` (idempotent)."""
    fsspec.register_implementation("faulty", FaultyFileSystem, clobber=True)
    register_backend("faulty", FaultyBackend)


register()


def faulty_url(path: str | os.PathLike[str]) -> str:
    """The ``faulty://`` URL of a local path."""
    return "faulty://" + os.path.abspath(os.fspath(path))
