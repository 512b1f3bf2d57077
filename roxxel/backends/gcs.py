"""GCS through gcsfs: generations as versions, ``ifGenerationMatch`` uploads, and
downloads as one ranged GET per chunk, and ranged parts as plain HTTP GETs.

A whole object is read with one GET after its metadata bounds the size; the version is
the generation the body itself came with (``x-goog-generation``), as the object may
have been replaced since the metadata. Small objects are written with one multipart
upload carrying ``ifGenerationMatch`` (0 to create). Whether the server enforces it is
probed once per process and bucket (:func:`.base.probed_enforcement`):
gcp-storage-emulator, for one, accepts it and ignores it.

Parts of a download (:meth:`GCSBackend.read_range`) are GETs of the URL gcsfs itself
would read (``fs.url(path)``, the JSON API's ``alt=media``) with a Range header, on
kept-alive :mod:`http.client` connections, with the headers of gcsfs's own credentials
object (a bearer token it refreshes; none for ``token="anon"``). gcsfs's ``cat_file``
costs two to three times the CPU per byte (aiohttp and its event loop); on two cores
that is the download's ceiling (README, Benchmarks: Transports). gcsfs reads where the
plain GET would not read the same bytes: a subclass other than gcsfs's zonal-aware one,
a zonal bucket (read over gRPC), requester pays, ``session_kwargs`` (proxies, TLS) or a
client certificate. An answer that does not fit (a redirect, a 200 to a ranged GET, an
encoded body, a reply that is not HTTP, a certificate http.client does not trust) turns
the path off for that filesystem, as for S3's presigned GETs; an error answer (404, 403,
429, 5xx) is raised as such, and a connection refused or cut short is retried like any
other failure.

A dataset opened without gcsfs (:mod:`.gcsopen`) reads the same way before gcsfs is
needed: its manifest by one media GET (:func:`read_deferred`; any answer but 200 goes to
gcsfs), its parts by :func:`read_deferred_range`, with the URL and credentials'
headers of the :class:`.gcsopen.DeferredGCSFileSystem`. Anything else (a listing, a
write, a read the plain GETs leave to gcsfs) makes the ``GCSFileSystem`` once.
"""

from __future__ import annotations

import datetime
import functools
import http.client
import json
import logging
import os
import ssl
import threading
import urllib.parse
import uuid
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fsspec import AbstractFileSystem
from fsspec.asyn import sync

from .base import (
    ChunkReader,
    PreconditionFailed,
    TooLarge,
    Versioned,
    check_size,
    probed_enforcement,
)
from .deferred import DeferringBackend
from .errors import HTTPStatusError, http_status
from .gcsopen import DeferredGCSFileSystem
from .generic import base64_md5
from .readers import RangeReader
from .retry import DEFAULT_POLICY
from .through import Revoked, Through, receive
from .watchdog import current_timeout

if TYPE_CHECKING:
    from .growing import PartFeed

__all__ = ["GCSBackend", "info_deferred", "read_deferred", "read_deferred_range", "read_media_range", "tls_context"]

log = logging.getLogger(__name__)


class GCSBackend(DeferringBackend):
    """GCS through gcsfs; until something needs gcsfs, over a
    :class:`.gcsopen.DeferredGCSFileSystem` (the manifest is then read by
    :func:`read_deferred`, an object's info by :func:`info_deferred`, parts by
    :func:`read_deferred_range`)."""

    deferred_type = DeferredGCSFileSystem

    def reported_md5(self, info: dict[str, Any]) -> str | None:
        """The object's ``md5Hash``; for a composite object (which has none), the MD5 of
        the local file this process uploaded to that generation and found the store's
        CRC32C equal to, while the file is unchanged (:func:`.gcs_upload.verified_md5`)."""
        reported = base64_md5(info)
        if reported is None and info.get("crc32c"):
            from .gcs_upload import verified_md5

            return verified_md5(str(info.get("name", "")), info)
        return reported

    def deferred_info(self, deferred: Any, path: str) -> dict[str, Any] | None:
        return info_deferred(deferred, path)

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        deferred = self.deferred()
        if deferred is not None:
            read = read_deferred(deferred, path, max_bytes)
            if read is not None:
                return read
        info = self.info(path)
        check_size(int(info.get("size") or 0), max_bytes)  # before the body is read
        if not int(info.get("size") or 0):  # GCS answers a range of an empty object 416
            headers, data = self.fs.call("GET", self.fs.url(path))
        else:  # bounded even if the object grew since the metadata: one byte past the limit
            bound = {} if max_bytes is None else {"Range": f"bytes=0-{max_bytes}"}
            headers, data = self.fs.call("GET", self.fs.url(path), headers=bound)
        check_size(len(data), max_bytes)
        # The body's own generation: the object may have been replaced since info().
        generation = headers.get("x-goog-generation")
        return Versioned(data, None if generation is None else str(generation))

    def read_range(self, path: str, start: int, end: int) -> bytes:
        data = bytearray(end - start)
        n = self._plain_range(path, start, end, memoryview(data))
        if n is None:
            return super().read_range(path, start, end)
        return data if n == len(data) else bytes(data[:n])

    def read_range_into(self, path: str, start: int, end: int, into: memoryview | Through) -> int:
        n = self._plain_range(path, start, end, into)
        return super().read_range_into(path, start, end, into) if n is None else n

    def _plain_range(self, path: str, start: int, end: int, into: memoryview | Through) -> int | None:
        deferred = self.deferred()
        if deferred is not None:
            n = read_deferred_range(deferred, path, start, end, into)
            if n is not None:
                return n
        return read_media_range(self.fs, path, start, end, into)

    def open_reader(self, path: str, offset: int) -> ChunkReader:
        # gcsfs has no streaming open_async: one ranged GET per chunk.
        return RangeReader(self.fs, path, offset)

    def put_file(self, local_path: str, path: str) -> bool:
        """Files from :attr:`.multipart.MultipartLimits.threshold` bytes up as parallel
        composite uploads (:mod:`.gcs_upload`) where plain requests reach the store;
        smaller ones, and the rest, through gcsfs's upload, as one object each. True
        for a composite upload: the composed object's CRC32C, in the compose's answer,
        was found to be the one the file's parts combine to."""
        from . import gcs_upload
        from .multipart import limits
        from .watchdog import current

        if os.path.getsize(local_path) >= limits().threshold and gcs_upload.eligible(self.fs, path):
            try:
                gcs_upload.upload(self.fs, local_path, path, current())
                return True
            except gcs_upload.Refused as exc:  # nothing left behind: the upload starts over
                _refuse(self.fs, exc)
            finally:
                self.fs.invalidate_cache(path)
        super().put_file(local_path, path)
        return False

    def put_growing(self, local_path: str, path: str, feed: PartFeed) -> bool | None:
        """Upload ``local_path`` while it is being written, each part as ``feed`` reports
        it (:func:`.gcs_upload.upload_growing`); None if it ended too small to go up in
        parts, else True (the compose's CRC32C confirmed it, as in :meth:`put_file`).
        :class:`~.through.Revoked` where a composite upload is not possible here (it goes
        up finished, through :meth:`put_file`)."""
        from . import gcs_upload

        plain = self._plain_uploads(path)
        if plain is None:
            raise Revoked(f"gs://{path}: no composite upload here; it goes up once finished")
        try:
            return None if gcs_upload.upload_growing(plain, local_path, path, feed) is None else True
        except gcs_upload.Refused as exc:  # nothing left behind
            _refuse(self.deferred() or self.fs, exc)
            raise Revoked(f"gs://{path}: the store refused a plain request; it goes up once finished") from exc
        finally:
            if self.deferred() is None:  # (gcsfs made: its listings cache forgets the path)
                self.fs.invalidate_cache(path)

    def _plain_uploads(self, path: str) -> Any:
        """How a composite upload to ``path`` sends its plain requests
        (:class:`.gcs_upload.Plain`), or None where it cannot. While gcsfs is not made, with
        the URL and credentials the deferred filesystem gives (as reads are sent), so the
        first parts do not wait ~0.35 s for gcsfs to be imported and its client made; gcsfs
        is made for the compose. Else with gcsfs's own."""
        from . import gcs_upload

        if gcs_upload.c_crc32c() is None:
            return None
        deferred = self.deferred()
        if deferred is not None and not refused(deferred):
            try:
                if deferred.json_readable(path.partition("/")[0]):
                    deferred.headers()  # (credentials that can be found and refreshed)
                    return gcs_upload.Plain(deferred.location, lambda headers: headers.update(deferred.headers()),
                                            lambda: self.fs)
            except Exception as exc:  # noqa: BLE001 - any of it means: through gcsfs
                log.debug("plain uploads before gcsfs are not possible (%s)", type(exc).__name__)
        fs = self.fs
        return gcs_upload.Plain.of(fs) if gcs_upload.eligible(fs, path) else None

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

    def conditional_writes_enforced(self, root: str) -> bool:
        return probed_enforcement(self, root)


# -- ranged parts by plain GETs -------------------------------------------------------

# by identity: fsspec filesystems with equal options compare equal
_refused: weakref.WeakValueDictionary[int, AbstractFileSystem] = weakref.WeakValueDictionary()
_idle: dict[tuple[str, str, int | None], list[http.client.HTTPConnection]] = {}
_idle_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _idle_lock
    _idle_lock = threading.Lock()  # a lock a parent's thread held at the fork stays locked


os.register_at_fork(after_in_child=_after_fork_in_child)
_idle_pid = os.getpid()


def read_media_range(fs: Any, path: str, start: int, end: int, into: memoryview | Through) -> int | None:
    """Bytes ``[start, end)`` of ``path`` read into the front of ``into`` by one ranged GET
    on a kept-alive connection; returns their number (fewer if the object ends sooner),
    or None where gcsfs must read them (see the module). Error answers raise
    :class:`.errors.HTTPStatusError` (404: not found; 429, 5xx: transient); a range past
    the end of the object reads as empty."""
    if not _eligible(fs, path):
        return None
    headers: dict[str, str] = {}
    fs.credentials.apply(headers)  # gcsfs's credentials: refreshed by it, never read here
    return _media_range(fs, fs.url(path), headers, path, start, end, into)


def read_deferred_range(fs: DeferredGCSFileSystem, path: str, start: int, end: int,
                        into: memoryview | Through) -> int | None:
    """:func:`read_media_range` before gcsfs is needed (a dataset opened through
    :mod:`.gcsopen`): the URL and headers gcsfs would use, from the deferred filesystem,
    so a cold read never imports gcsfs. None where gcsfs must read: credentials that
    cannot be refreshed, a zonal bucket, or an answer that does not fit (then gcsfs
    reads from now on)."""
    if refused(fs):
        return None
    try:
        if not fs.json_readable(path.partition("/")[0]):
            _refuse(fs, ValueError("a zonal bucket"))
            return None
        headers = fs.headers()
    except Exception as exc:  # noqa: BLE001 - any of it means: read through gcsfs
        _refuse(fs, RuntimeError(f"{type(exc).__name__} while finding the credentials"))
        return None
    return _media_range(fs, fs.media_url(path), headers, path, start, end, into)


def _media_range(fs: Any, media_url: str, auth: dict[str, str], path: str, start: int, end: int,
                 into: memoryview | Through) -> int | None:
    """:func:`read_media_range`'s GET of ``media_url`` with the ``auth`` headers."""
    url = urllib.parse.urlsplit(media_url)
    target = f"{url.path}?{url.query}"
    headers = {**auth, "Range": f"bytes={start}-{end - 1}", "Accept-Encoding": "identity", "User-Agent": "roxxel"}
    while True:
        conn, reused = _take(url)
        try:
            conn.request("GET", target, headers=headers)
            response = conn.getresponse()
            break
        except (http.client.HTTPException, ConnectionError) as exc:
            conn.close()
            if reused:  # a kept-alive connection the server had closed: once more, anew
                continue
            if isinstance(exc, ConnectionError):
                raise  # transient, or an unreachable store: as gcsfs would find it
            _refuse(fs, exc)  # not an HTTP answer
            return None
        except ssl.SSLCertVerificationError as exc:
            conn.close()  # gcsfs's client may trust other certificates
            _refuse(fs, exc)
            return None
        except BaseException:
            conn.close()
            raise
    status, size = response.status, end - start
    fits = status == 206 and response.getheader("Content-Range", "").startswith(f"bytes {start}-")
    fits = fits or (status == 200 and start == 0 and response.length == size)
    if not fits or response.getheader("Content-Encoding", "identity") != "identity":
        response.read(64 * 1024)  # the error document, if any
        conn.close()
        if status == 416:  # the object ends before start
            return 0
        if status in (401, 403, 404, 408, 429) or status >= 500:
            raise HTTPStatusError(status, f"a ranged GET of gs://{path}")
        _refuse(fs, ValueError(f"HTTP {status} to a ranged GET"))
        return None
    try:
        n = size if response.length is None else min(size, response.length)
        receive(response.readinto, into, n)
        if response.read(1):  # more than the range: the connection cannot be reused
            raise OSError(f"gs://{path}: the server sent more than bytes [{start}, {end})")
    except BaseException:
        conn.close()
        raise
    _done_with(url, conn, response)
    return n


def read_deferred(fs: DeferredGCSFileSystem, path: str, max_bytes: int | None) -> Versioned | None:
    """The whole object at ``path`` and its generation by one JSON-API media GET (gcsfs's
    ``fs.url``) on a kept-alive connection, or None where gcsfs must read it: any answer
    but 200 (a missing object, a refusal, a redirect, a busy server), a body that is not
    the object's plain bytes or ends short, a failure on the way. TooLarge, reading none
    of the body, past ``max_bytes``."""
    sent = _deferred_get(fs, fs.media_url, path)
    if sent is None:
        return None
    url, conn, response = sent
    try:
        size = int(response.getheader("Content-Length") or -1)
        plain = response.getheader("Content-Encoding", "identity") == "identity"
        if response.status != 200 or size < 0 or not plain:
            response.read(64 * 1024)  # the error document, if any
            conn.close()
            return None
        if max_bytes is not None and size > max_bytes:
            conn.close()
            raise TooLarge(size)
        data = response.read(size)
        if len(data) != size or response.read(1):
            conn.close()
            log.debug("a plain GET of gs://%s ended short or ran long; reading through gcsfs", path)
            return None
    except TooLarge:
        raise
    except Exception as exc:  # noqa: BLE001
        conn.close()
        log.debug("plain GET failed (%s); reading through gcsfs", type(exc).__name__)
        return None
    _done_with(url, conn, response)
    generation = response.getheader("x-goog-generation")
    return Versioned(data, None if generation is None else str(generation))


_INFO_MAX_BYTES = 1 << 20  # an object resource with its custom metadata is a few KiB


def info_deferred(fs: DeferredGCSFileSystem, path: str) -> dict[str, Any] | None:
    """What gcsfs's ``info`` says of the object at ``path`` (its JSON resource with
    ``size`` an int, ``name`` the bucket's path, ``type`` "file", ``mtime``/``ctime``),
    by one GET of its resource on a kept-alive connection, before gcsfs is needed (a
    writer's check that no dataset is there); None where gcsfs must answer (any answer
    but 200 or 404, a resource that does not describe this object, a failure on the
    way); FileNotFoundError on a 404."""
    sent = _deferred_get(fs, fs.metadata_url, path)
    if sent is None:
        return None
    url, conn, response = sent
    try:
        body = response.read(_INFO_MAX_BYTES + 1)
    except Exception as exc:  # noqa: BLE001
        conn.close()
        log.debug("plain GET of an object's resource failed (%s); asking gcsfs", type(exc).__name__)
        return None
    if len(body) > _INFO_MAX_BYTES:
        conn.close()
        return None
    _done_with(url, conn, response)
    if response.status == 404:
        raise FileNotFoundError(path)
    bucket, _, name = path.partition("/")
    try:
        resource = json.loads(body) if response.status == 200 else None
    except ValueError:
        resource = None
    if (not isinstance(resource, dict) or resource.get("name") != name or name.endswith("/")
            or not str(resource.get("size", "")).isdigit()):
        return None
    info = dict(resource, size=int(resource["size"]), name=f"{bucket}/{name}", type="file")
    for field, key in (("updated", "mtime"), ("timeCreated", "ctime")):
        stamp = resource.get(field)
        if isinstance(stamp, str) and stamp.endswith("Z"):
            try:  # as gcsfs's _parse_timestamp
                whole, _, fraction = stamp[:-1].partition(".")
                info[key] = datetime.datetime.fromisoformat(f"{whole}.{fraction.ljust(6, '0')[:6]}+00:00")
            except ValueError:
                return None
    return info


def _deferred_get(
    fs: DeferredGCSFileSystem, url_of: Callable[[str], str], path: str
) -> tuple[urllib.parse.SplitResult, http.client.HTTPConnection, http.client.HTTPResponse] | None:
    """A GET of ``url_of(path)`` with the headers gcsfs would send, on a kept-alive
    connection (once more on a new one if the server had closed it), and its answer's
    head; None where gcsfs must answer (a zonal bucket, credentials that cannot be
    found or refreshed, a failure on the way)."""
    try:
        if not fs.json_readable(path.partition("/")[0]):
            return None  # a zonal bucket: gcsfs's
        headers = {**fs.headers(), "Accept-Encoding": "identity", "User-Agent": "roxxel"}
        url = urllib.parse.urlsplit(url_of(path))
    except Exception as exc:  # noqa: BLE001 - any of it means: go through gcsfs
        log.debug("plain GET not possible (%s); going through gcsfs", type(exc).__name__)
        return None
    target = f"{url.path}?{url.query}" if url.query else url.path
    while True:
        try:
            conn, reused = _take(url)
        except Exception as exc:  # noqa: BLE001
            log.debug("plain GET not possible (%s); going through gcsfs", type(exc).__name__)
            return None
        try:
            conn.request("GET", target, headers=headers)
            return url, conn, conn.getresponse()
        except Exception as exc:  # noqa: BLE001
            conn.close()
            if reused and isinstance(exc, (http.client.HTTPException, ConnectionError)):
                continue  # a kept-alive connection the server had closed: once more, anew
            log.debug("plain GET failed (%s); going through gcsfs", type(exc).__name__)
            return None


def _done_with(url: urllib.parse.SplitResult, conn: http.client.HTTPConnection,
               response: http.client.HTTPResponse) -> None:
    """Keep ``conn``, whose answer was read whole, for the next request, unless the
    server said it closes it."""
    if response.will_close:
        conn.close()
    else:
        _give_back(url, conn)


def _eligible(fs: Any, path: str) -> bool:
    if refused(fs) or not type(fs).__module__.startswith("gcsfs") or not hasattr(fs, "credentials"):
        return False
    if getattr(fs, "requester_pays", False) or getattr(fs, "session_kwargs", None):
        return False
    if getattr(fs, "_use_client_cert", False) and str(getattr(fs, "_location", "")).startswith("https"):
        return False
    zonal = getattr(fs, "_is_zonal_bucket", None)  # gcsfs's zonal-aware subclass; cached
    return zonal is None or not sync(fs.loop, zonal, fs.split_path(path)[0])


def _take(url: urllib.parse.SplitResult) -> tuple[http.client.HTTPConnection, bool]:
    """A connection to the URL's host, and whether it was used before."""
    global _idle_pid
    with _idle_lock:
        if _idle_pid != os.getpid():  # a forked child starts with none
            _idle.clear()
            _idle_pid = os.getpid()
        idle = _idle.get((url.scheme, url.hostname or "", url.port))
        if idle:
            return idle.pop(), True
    timeout = current_timeout(DEFAULT_POLICY.stall_timeout)  # silence that long fails a read
    if url.scheme == "http":
        return http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout), False
    return http.client.HTTPSConnection(url.hostname or "", url.port, timeout=timeout, context=tls_context()), False


@functools.lru_cache(maxsize=1)
def tls_context() -> ssl.SSLContext:
    """One context for all connections: loading the CA certificates takes milliseconds."""
    return ssl.create_default_context()


def _give_back(url: urllib.parse.SplitResult, conn: http.client.HTTPConnection) -> None:
    with _idle_lock:
        if _idle_pid == os.getpid():
            _idle.setdefault((url.scheme, url.hostname or "", url.port), []).append(conn)
            return
    conn.close()


def refused(fs: AbstractFileSystem) -> bool:
    """Whether plain GETs are off for this filesystem (instance)."""
    return _refused.get(id(fs)) is fs


def _refuse(fs: AbstractFileSystem, exc: BaseException) -> None:
    if not refused(fs):
        _refused[id(fs)] = fs
        log.info("plain GCS GETs are off for this store (%s); reading through gcsfs", exc)
