"""S3 through s3fs: whole objects with their ETag, conditional PUTs, streaming uploads,
and downloads as plain HTTP GETs of presigned URLs.

Versions are ETags: one ``GetObject`` gives body and ETag; ``PutObject`` carries
``If-Match: <etag>``, or ``If-None-Match: *`` to create. Whether the server enforces
them is probed once per process and bucket (:func:`.base.probed_enforcement`).

Uploads of finished files below :attr:`.multipart.MultipartLimits.threshold` (16 MiB)
are one ``PutObject`` whose body streams from the file (s3fs's ``put_file`` would hold a
small object in memory twice over); larger files go up as parallel multipart uploads
(:mod:`.multipart`).

Parts of a download (:meth:`S3Backend.read_range_into`) of a dataset opened without
s3fs (:mod:`.s3open`) with static credentials are ranged GETs signed here
(:func:`read_signed_range`): a cold read then imports neither s3fs nor botocore. Other
downloads (:meth:`S3Backend.open_reader`) are, where possible, plain GETs of presigned
URLs. s3fs reads an object's body through aiobotocore and aiohttp; on the reference
machine that stack alone costs more CPU per byte than hashing and writing the bytes to
the cache together. A GET of a URL that s3fs itself presigned (so the same credentials,
endpoint, region and addressing), read with :mod:`http.client` in large pieces, costs a
fraction of it. It is used only where it reads exactly what s3fs would read: an
``S3FileSystem`` without requester-pays, versioning, extra request parameters (SSE-C
keys and the like), TLS or proxy settings of its own, and no proxy in the environment.
When a GET fails before its body starts, :func:`open_direct` returns None and the
reader is s3fs's, which reports a missing object or retries a busy server in its own
way; any other failure (a refused signature, a redirect, a TLS error, an unreachable
host) also turns this path off for that filesystem for good. Presigned URLs hold a
signature: they never reach a message or a log.
"""

from __future__ import annotations

import functools
import http.client
import logging
import os
import ssl
import sys
import threading
import time
import urllib.parse
import urllib.request
import weakref
from collections.abc import Callable
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.asyn import get_loop, sync

from .base import (
    ChunkReader,
    PreconditionFailed,
    Versioned,
    check_size,
    copy_into,
    probed_enforcement,
)
from .deferred import DeferringBackend
from .errors import HTTPStatusError, http_status
from .generic import etag_md5
from .growing import PartFeed, upload as upload_growing
from .readers import open_async_reader
from .retry import DEFAULT_POLICY
from .s3open import DeferredS3FileSystem, ranged_request, signed_get, signed_head
from .through import Through, receive
from .watchdog import current_timeout, read_in_pieces

__all__ = ["DirectReader", "S3Backend", "open_direct", "read_direct_range", "refused"]

_S3_SINGLE_PUT_MAX = 5 * 2**30


class S3Backend(DeferringBackend):
    """S3 through s3fs; until something needs s3fs, over a :class:`.s3open.DeferredS3FileSystem`
    (whole objects are then read by :func:`.s3open.signed_get`, an object's info by
    :func:`.s3open.signed_head`)."""

    deferred_type = DeferredS3FileSystem

    def reported_md5(self, info: dict[str, Any]) -> str | None:
        return etag_md5(info)  # the ETag of a single-part upload

    def deferred_info(self, deferred: Any, path: str) -> dict[str, Any] | None:
        return signed_head(deferred, path)

    def info(self, path: str) -> dict[str, Any]:
        """Before s3fs is made, one signed HEAD (:meth:`deferred_info`); after, s3fs's
        ``HeadObject`` on its kept-alive connections, and nothing more: s3fs's own
        ``info`` of a missing key also LISTs its prefix (a second round trip, before
        every publish of a new dataset) for a directory, which is never an object."""
        if self.deferred() is not None:
            return super().info(path)
        return sync(self.fs.loop, self._head, path)

    async def _head(self, path: str) -> dict[str, Any]:
        fs = self.fs
        bucket, key, version_id = fs.split_path(path)
        if not key:
            raise FileNotFoundError(f"{path} is a bucket, not an object")
        extra = {"VersionId": version_id} if version_id else {}
        out = await fs._call_s3("head_object", fs.kwargs, Bucket=bucket, Key=key, **extra)  # (404: FileNotFoundError)
        return {  # as s3fs's info answers
            "ETag": out.get("ETag", ""),
            "LastModified": out.get("LastModified", ""),
            "size": out["ContentLength"],
            "name": f"{bucket}/{key}",
            "type": "file",
            "StorageClass": out.get("StorageClass", "STANDARD"),
            "VersionId": out.get("VersionId"),
            "ContentType": out.get("ContentType"),
        }

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        deferred = self.deferred()
        if deferred is not None:
            read = signed_get(deferred, path, max_bytes)
            if read is not None:
                return read
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

    def read_range(self, path: str, start: int, end: int) -> bytes:
        data = bytearray(end - start)
        n = read_direct_range(self.fs, path, start, end, memoryview(data))
        return super().read_range(path, start, end) if n is None else data

    def read_range_into(self, path: str, start: int, end: int, into: memoryview | Through) -> int:
        deferred = self.deferred()
        n = read_signed_range(deferred, path, start, end, into) if deferred is not None else None
        if n is not None:
            return n
        n = read_direct_range(self.fs, path, start, end, into)
        return copy_into(super().read_range(path, start, end), into) if n is None else n

    def open_reader(self, path: str, offset: int) -> ChunkReader:
        direct = open_direct(self.fs, path, offset)
        if direct is not None:
            return direct
        return open_async_reader(self.fs, path, offset)

    def put_file(self, local_path: str, path: str) -> bool:
        from . import multipart

        size = os.path.getsize(local_path)
        if size >= min(multipart.limits().threshold, _S3_SINGLE_PUT_MAX):
            return self._put_multipart(local_path, path)
        self._put_object_streaming(local_path, path)
        return False

    def _put_multipart(self, local_path: str, path: str) -> bool:
        """Parts in parallel under the process's budget (:mod:`.multipart`); each part
        that lands counts as progress for the upload's stall timeout. True if the
        completion's answer confirmed the object's bytes."""
        from . import multipart
        from .watchdog import current

        try:
            return bool(sync(self.fs.loop, multipart.upload, self.fs, local_path, path, current()))
        finally:
            self.fs.invalidate_cache(path)

    def put_growing(self, local_path: str, path: str, feed: PartFeed) -> bool | None:
        """Upload ``local_path`` while it is being written, each part as ``feed`` reports
        it (:mod:`.growing`); None if it ended too small to go up in parts, else whether
        the completion's answer confirmed the object's bytes."""
        try:
            # (fsspec's loop, which s3fs's will be, unless a filesystem given has its own)
            loop = get_loop() if self.deferred() is not None else self.fs.loop
            return sync(loop, upload_growing, self, local_path, path, feed)
        finally:
            if self.deferred() is None:  # (s3fs made: its listings cache forgets the path)
                self.fs.invalidate_cache(path)

    def _put_object_streaming(self, local_path: str, path: str) -> None:
        """One PUT whose body streams from the file.

        s3fs's put_file reads an object under 2 chunks into memory (twice over, through
        botocore and aiohttp), so memory would grow with the shard size; a file body is
        read in small blocks instead, and is rewound by botocore if it retries.
        """
        bucket, key, _ = self.fs.split_path(path)
        size = os.path.getsize(local_path)
        with open(local_path, "rb") as body:
            sync(self.fs.loop, self._put_object, Bucket=bucket, Key=key, Body=body, ContentLength=size)
        self.fs.invalidate_cache(path)

    async def _put_object(self, **params: Any) -> Any:
        """s3fs's ``PutObject``, without waiting for a ``100 Continue`` (see
        :func:`_send_at_once`)."""
        await self.fs.set_session()
        _send_at_once(await self.fs.get_s3(params["Bucket"]))
        return await self.fs._call_s3("put_object", **params)

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
            sync(self.fs.loop, self._put_object, Bucket=bucket, Key=key, Body=data, **conditions, **self.fs.req_kw)
        except Exception as exc:
            # 409 ConditionalRequestConflict (a concurrent conditional write in progress)
            # is transient: the wrapper retries the same conditional PUT.
            if conditions and http_status(exc) == 412:
                raise PreconditionFailed(path) from exc
            raise
        finally:
            self.fs.invalidate_cache(path)

    def conditional_writes_enforced(self, root: str) -> bool:
        return probed_enforcement(self, root)


#: Bodies up to this size are sent with their PUT (:func:`_send_at_once`).
_AT_ONCE_MAX = 16 * 2**20


def _send_at_once(client: Any) -> None:
    """Make ``client`` (botocore's, of s3fs) send a ``PutObject`` body of up to
    :data:`_AT_ONCE_MAX` bytes with its headers. botocore asks every body's PUT to wait for
    the server's ``100 Continue`` first, which costs a round trip on each (a manifest's
    publish, a probe, a small shard), to save sending a body the server refuses: for a
    body of a few MB at one connection's speed, about what the round trip costs."""
    # (after botocore's own handler of every S3 operation, which adds the header)
    client.meta.events.register_last("before-call.s3", _no_expect, unique_id="roxxel-send-at-once")


def _no_expect(model: Any, params: dict[str, Any], **_: Any) -> None:
    if getattr(model, "name", None) != "PutObject":
        return
    body = params.get("body")
    size = None
    if isinstance(body, (bytes, bytearray)):
        size = len(body)
    elif hasattr(body, "seek") and hasattr(body, "tell"):
        from botocore.utils import determine_content_length

        size = determine_content_length(body)
    if size is not None and size <= _AT_ONCE_MAX:
        params.get("headers", {}).pop("Expect", None)


# -- downloads by presigned GETs -------------------------------------------------------

log = logging.getLogger(__name__)

_EXPIRES = 3600  # seconds a presigned URL stays valid; one object's download needs far less
_CLIENT_KWARGS = {"endpoint_url", "region_name"}
_CONFIG_KWARGS = {  # botocore Config options that do not change what a GET returns
    "connect_timeout", "read_timeout", "retries", "max_pool_connections", "signature_version",
    "s3", "region_name", "user_agent", "user_agent_extra", "parameter_validation",
    "request_checksum_calculation", "response_checksum_validation",
}
# by identity: fsspec filesystems with equal options compare equal
_refused: weakref.WeakValueDictionary[int, AbstractFileSystem] = weakref.WeakValueDictionary()


class DirectReader:
    """The body of one presigned GET, from the offset it was opened at."""

    def __init__(self, conn: http.client.HTTPConnection, response: http.client.HTTPResponse) -> None:
        self._conn, self._response = conn, response

    def read(self, size: int) -> bytes:
        data = self._response.read(size)
        if not data and self._response.length:
            # http.client returns b"" when the connection ends early (for compatibility)
            raise http.client.IncompleteRead(b"", self._response.length)
        return data

    def read_parts(self, size: int) -> list[bytes]:
        return read_in_pieces(self.read, size)

    def close(self) -> None:
        self._conn.close()


def open_direct(fs: AbstractFileSystem, path: str, offset: int) -> DirectReader | None:
    """A reader of ``path`` from ``offset`` by a presigned GET, or None where s3fs must read."""
    parts = _presigned(fs, path)
    if parts is None:
        return None
    try:
        conn = _connect(fs, parts)
    except Exception as exc:  # noqa: BLE001 - any of it means: read through s3fs
        _refuse(fs, exc)
        return None
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"Range": f"bytes={offset}-"} if offset else {})
        response = conn.getresponse()
        expected = 206 if offset else 200
        if response.status != expected or (offset and not _starts_at(response, offset)):
            status = response.status
            response.read(64 * 1024)  # the error document, if any; not shown: it may echo the URL
            conn.close()
            if status == 404 or status == 429 or status >= 500:
                return None  # the object's own state or a busy server: s3fs reports or retries
            raise _Unsuitable(f"HTTP {status} where {expected} was expected")
    except Exception as exc:  # noqa: BLE001
        conn.close()
        _refuse(fs, exc)
        return None
    return DirectReader(conn, response)


class _Connections:
    """Kept-alive connections to S3 endpoints, shared by the threads of this process.

    A connection is taken for one request and given back only after its response was
    read to the end; one that failed is closed. A forked child starts with none."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._idle: dict[tuple[object, ...], list[http.client.HTTPConnection]] = {}
        self._pid = os.getpid()

    def take(self, pool: tuple[object, ...],
             connect: Callable[[], http.client.HTTPConnection]) -> tuple[http.client.HTTPConnection, bool]:
        """An idle connection of ``pool`` (its scheme, host and port, at least), else a new one from
        ``connect``; and whether it was used before."""
        with self._lock:
            if self._pid != os.getpid():
                self._idle, self._pid = {}, os.getpid()
            idle = self._idle.get(pool)
            if idle:
                return idle.pop(), True
        return connect(), False

    def give_back(self, pool: tuple[object, ...], conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if self._pid == os.getpid():
                self._idle.setdefault(pool, []).append(conn)
                return
        conn.close()


_CONNECTIONS = _Connections()
# a TLS connection cut short: as transient as a reset (as backends.errors classifies it)
_TLS_DROPS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _after_fork_in_child() -> None:
    global _CONNECTIONS
    _CONNECTIONS = _Connections()  # the parent's lock may be held: a new pool, new lock


os.register_at_fork(after_in_child=_after_fork_in_child)


def read_direct_range(fs: AbstractFileSystem, path: str, start: int, end: int,
                      into: memoryview | Through) -> int | None:
    """Bytes ``[start, end)`` of ``path``, read into the front of ``into`` by a presigned
    ranged GET on a kept-alive connection; returns their number, or None where s3fs must
    read them (see the module docstring). An answer
    that says the store is busy (429, 5xx) raises :class:`.errors.HTTPStatusError`, a
    transient error, so that the caller retries it and can slow down."""
    parts = _presigned(fs, path)
    if parts is None:
        return None
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    pool = (parts.scheme, parts.hostname or "", parts.port)
    return _ranged_get(fs, pool, lambda: _connect(fs, parts), target, {}, path, start, end, into)


def read_signed_range(fs: DeferredS3FileSystem, path: str, start: int, end: int,
                      into: memoryview | Through) -> int | None:
    """:func:`read_direct_range` before s3fs is needed (a dataset opened through
    :mod:`.s3open`, on an explicit endpoint or AWS's own): the GET is signed here with
    Signature Version 4 headers (:func:`.s3open.ranged_request`), so a cold read imports
    neither s3fs nor botocore (a fresh process's first parts waited ~250 ms for them).
    None: not possible here (credentials that are not static, say), or refused once
    (then s3fs reads from now on)."""
    if refused(fs):
        return None
    try:
        request = ranged_request(fs, path)
    except Exception as exc:  # noqa: BLE001 - any of it means: read through s3fs
        _refuse(fs, exc)
        return None
    if request is None:
        return None
    where = request.where  # (its own pool: its connections are made with its own TLS settings)
    pool = ("signed", where.scheme, where.host, *where.address)
    return _ranged_get(fs, pool, request.connection, request.target, request.headers(time.gmtime()),
                       path, start, end, into)


def _ranged_get(fs: Any, pool: tuple[object, ...], connect: Callable[[], http.client.HTTPConnection],
                target: str, signed: dict[str, str], path: str, start: int, end: int,
                into: memoryview | Through) -> int | None:
    """Bytes ``[start, end)`` of ``path`` by one GET of ``target`` with the ``signed``
    headers, on a kept-alive connection of ``pool`` (its scheme, host and port, at
    least), else a new one from ``connect`` (see :func:`read_direct_range`)."""
    headers = {**signed, "Range": f"bytes={start}-{end - 1}"}
    while True:
        conn, reused = _CONNECTIONS.take(pool, connect)
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            break
        except OSError as exc:
            conn.close()
            if isinstance(exc, ssl.SSLError) and not isinstance(exc, _TLS_DROPS):
                _refuse(fs, exc)  # a certificate or TLS setting that does not fit
                return None
            if reused:  # a kept-alive connection the server had closed: once more, anew
                continue
            raise  # a refused or dropped connection, a timeout: transient, the caller retries
        except Exception as exc:  # noqa: BLE001 - an answer that is not HTTP: read through s3fs
            conn.close()
            _refuse(fs, exc)
            return None
    status = response.status
    whole = status == 200 and start == 0 and response.length == end
    if status != 206 and not whole:
        response.read(64 * 1024)  # the error document, if any; not shown: it may echo the URL
        conn.close()
        if status == 429 or status >= 500:
            raise HTTPStatusError(status, f"a ranged GET of {redact_path(path)}")
        if status not in (404, 416):  # the object's own state is s3fs's to report
            _refuse(fs, _Unsuitable(f"HTTP {status} where 206 was expected"))
        return None
    if not whole and not _starts_at(response, start):
        response.read(64 * 1024)
        conn.close()
        _refuse(fs, _Unsuitable("a Content-Range that does not start where asked"))
        return None
    try:
        receive(response.readinto, into, end - start)
    except BaseException:
        conn.close()
        raise
    if response.read(1):  # more than the range: the connection cannot be reused
        conn.close()
        raise OSError(f"{redact_path(path)}: the server sent more than bytes [{start}, {end})")
    _CONNECTIONS.give_back(pool, conn)
    return end - start


def redact_path(path: str) -> str:
    """An object path for messages (never a presigned URL)."""
    return f"s3://{path}"


def _presigned(fs: AbstractFileSystem, path: str) -> urllib.parse.SplitResult | None:
    """The presigned GET URL of ``path``, split, or None where s3fs must read it (this
    filesystem is not eligible, or the URL does not suit, which turns the path off)."""
    if not _eligible(fs):
        return None
    try:
        parts = urllib.parse.urlsplit(fs.sign(path, expiration=_EXPIRES))
        if parts.scheme not in ("http", "https") or not parts.hostname or _proxied(parts.hostname):
            raise _Unsuitable(f"a {parts.scheme or 'schemeless'} URL or a proxied host")
    except Exception as exc:  # noqa: BLE001 - any of it means: read through s3fs
        _refuse(fs, exc)
        return None
    return parts


class _Unsuitable(Exception):
    """The direct path does not fit this store."""


def _eligible(fs: AbstractFileSystem) -> bool:
    cls = type(fs)
    if cls.__name__ != "S3FileSystem" or not cls.__module__.startswith("s3fs") or refused(fs):
        return False
    if getattr(fs, "requester_pays", False) or getattr(fs, "version_aware", False):
        return False
    if getattr(fs, "s3_additional_kwargs", None):
        return False
    if not set(getattr(fs, "client_kwargs", None) or {}) <= _CLIENT_KWARGS:
        return False
    return set(getattr(fs, "config_kwargs", None) or {}) <= _CONFIG_KWARGS


def _proxied(host: str) -> bool:
    proxies = urllib.request.getproxies()
    if not any(k in proxies for k in ("http", "https", "all")):
        return False
    return not urllib.request.proxy_bypass(host)


def _connect(fs: Any, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
    # The socket timeout is the inactivity timeout: a body silent that long fails its
    # read (a transient TimeoutError, resumed by a ranged GET) instead of being abandoned.
    config = getattr(fs, "config_kwargs", None) or {}
    timeout = config.get("read_timeout") or current_timeout(DEFAULT_POLICY.stall_timeout)
    timeout = None if timeout is None else float(timeout)
    if parts.scheme == "http":
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    context = _tls_context(_ca_bundle())
    return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)


@functools.lru_cache(maxsize=4)
def _tls_context(cafile: str | None) -> ssl.SSLContext:
    """One context per CA bundle: loading a bundle takes milliseconds, a download many."""
    return ssl.create_default_context(cafile=cafile)


def _ca_bundle() -> str | None:
    """The CA bundle botocore verifies S3's certificate with."""
    explicit = os.environ.get("AWS_CA_BUNDLE")
    if explicit:
        return explicit
    httpsession = sys.modules.get("botocore.httpsession")
    return httpsession.get_cert_path(True) if httpsession is not None else None


def _starts_at(response: http.client.HTTPResponse, offset: int) -> bool:
    content_range = response.getheader("Content-Range", "")
    return content_range.startswith(f"bytes {offset}-")


def refused(fs: AbstractFileSystem) -> bool:
    """Whether the direct path is off for this filesystem (instance)."""
    return _refused.get(id(fs)) is fs


def _refuse(fs: AbstractFileSystem, exc: BaseException) -> None:
    """Read this filesystem through s3fs from now on."""
    if not refused(fs):
        _refused[id(fs)] = fs
        # another exception's text may hold the presigned URL: only its type is shown
        detail = str(exc) if isinstance(exc, _Unsuitable) else type(exc).__name__
        log.info("direct S3 GETs are off for this store (%s); reading through s3fs", detail)
