"""Parallel multipart uploads of finished files to S3, and the ETag they leave.

One S3 connection carries roughly 50-100 MB/s; a node reaches its link only with many
requests in flight. A file of at least :attr:`MultipartLimits.threshold` bytes therefore
goes up as parts of :attr:`MultipartLimits.part_size` bytes (``CreateMultipartUpload``,
``UploadPart`` for each part, ``CompleteMultipartUpload``), many at once. The upload is
run on fsspec's event loop with the filesystem's own s3fs client; each part is a
presigned PUT sent from the file by ``sendfile`` on a part thread where the store allows
(see below), or else an s3fs ``UploadPart`` of the part read into memory.

Memory is bounded per process, not per file: every upload of the process draws its
parts from one budget of :attr:`MultipartLimits.parts_in_flight` slots, and a part is
read from the file only once it holds a slot, so at most ``parts_in_flight *
part_size`` bytes of parts are in memory (none for presigned parts), whatever the size
or number of the files (except for files above 10,000 parts, where parts grow so the
file still fits).

All or nothing: readers see no object, or the previous one, until Complete. A part that
fails transiently (:func:`.errors.classify`) is sent again on its own (this one place
retries inside a backend, so that one bad part does not cost the whole file); any other
failure, or a part that keeps failing, cancels the other parts, waits for those already
on the wire, and aborts the upload, so neither an object nor orphaned parts remain. The
caller (:meth:`.store.Store.put_file`) retries the whole upload, as it would a single PUT.

The ETag of a multipart object is ``md5(md5(part 1) + ... + md5(part N)) + "-N"``, not
an MD5 of the object: :func:`expected_etag` gives it from the parts' MD5s that the
writer computed while it packed the file (:func:`register_part_digests`, so the object
is checked against the bytes packed, and nothing is hashed twice), or else that the
upload computed from the bytes it sent, or else from the local file; an upload is
verified without reading the object back.

The part threads and their kept-alive connections stay while an upload runs, or while
a writer holds them (:func:`hold`), so consecutive shards do not each open new
connections.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import http.client
import itertools
import logging
import os
import re
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .. import trace
from ..workers import PartThreads
from .errors import classify, describe, http_status
from .retry import DEFAULT_POLICY
from .watchdog import Progress

__all__ = [
    "DEFAULT_LIMITS",
    "MultipartLimits",
    "configure",
    "expected_etag",
    "hold",
    "limits",
    "multipart_parts",
    "part_size_for",
    "register_part_digests",
    "upload",
]

log = logging.getLogger(__name__)

MiB = 2**20
MIN_PART = 5 * MiB  # S3's smallest part (but the last)
_MAX_PART = 5 * 2**30
_MAX_PARTS = 10_000
_PART_ATTEMPTS = 5  # sends of one part, the first included
_RETRIED_CODES = {"BadDigest"}  # a part damaged in transit (S3 checked its Content-MD5)


@dataclass(frozen=True)
class MultipartLimits:
    """How files are split for upload, and how many parts a process sends at once.

    ``part_size``: bytes per part (5 MiB to 5 GiB; S3 parts but the last are at least
    5 MiB). ``parts_in_flight``: parts being read or sent at once by the whole process,
    all files together; part buffers take at most ``parts_in_flight * part_size`` bytes.
    ``threshold``: files of at least this many bytes go up in parts, smaller ones in one
    PUT (which holds no part in memory).
    """

    part_size: int = 8 * MiB
    # As many as the downloads' (roxxel.read.parts): a part takes one connection's
    # first-byte latency plus its bytes at that connection's rate, so 16 parts of 8 MiB at
    # 25 MB/s and 30 ms each fill only ~370 MB/s of a 400 MB/s link; 32 leave headroom.
    parts_in_flight: int = 32
    threshold: int = 16 * MiB

    def __post_init__(self) -> None:
        for name in ("part_size", "parts_in_flight", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"MultipartLimits.{name} must be an int, got {value!r}")
        if not MIN_PART <= self.part_size <= _MAX_PART:
            raise ValueError(
                f"MultipartLimits.part_size must be between {MIN_PART} (5 MiB) and {_MAX_PART} "
                f"(5 GiB) bytes, got {self.part_size}"
            )
        if self.parts_in_flight < 1:
            raise ValueError(f"MultipartLimits.parts_in_flight must be >= 1, got {self.parts_in_flight}")
        if self.threshold < self.part_size + 1:
            raise ValueError(
                f"MultipartLimits.threshold must exceed part_size ({self.part_size}), got {self.threshold}"
            )


DEFAULT_LIMITS = MultipartLimits()
_limits = DEFAULT_LIMITS


def limits() -> MultipartLimits:
    """The limits uploads use now."""
    return _limits


def configure(**changes: int) -> MultipartLimits:
    """Change the limits of uploads that start from now on (``part_size``,
    ``parts_in_flight``, ``threshold``; see :class:`MultipartLimits`) and return the
    previous ones, so ``configure(**dataclasses.asdict(previous))`` restores them."""
    global _limits
    previous = _limits
    _limits = replace(previous, **changes)
    return previous


def part_size_for(size: int, part_size: int) -> int:
    """The part size a file of ``size`` bytes is split with: ``part_size``, or, for a
    file of more than 10,000 such parts, the MiB multiple that makes 10,000 enough."""
    needed = -(-size // _MAX_PARTS)
    return max(part_size, -(-needed // MiB) * MiB)


# -- the ETag ----------------------------------------------------------------------------

# ETags the uploads of this process computed from the bytes they sent, by file identity,
# so the check after an upload does not hash the file a second time.
_sent: OrderedDict[tuple[str, int, int, int, int], tuple[int, str]] = OrderedDict()
_sent_lock = threading.Lock()
_SENT_KEPT = 256
# The parts' MD5s computed where the file was written (roxxel.staging), by the file's
# path, inode and size (not its mtime: bytes changed since must fail the check, not be
# hashed anew): its upload sends them instead of hashing each part again, and its check
# compares the object with them.
_packed: OrderedDict[tuple[str, int, int, int], tuple[int, tuple[bytes, ...]]] = OrderedDict()


def _identity(local_path: str) -> tuple[str, int, int, int, int]:
    st = os.stat(local_path)
    return (os.path.abspath(local_path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def multipart_parts(info: dict[str, Any]) -> int | None:
    """The number of parts of an object whose ETag is a multipart ETag ("<hex>-N")."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    match = re.fullmatch(r"[0-9a-f]{32}-([0-9]+)", etag)
    return int(match.group(1)) if match else None


def register_part_digests(local_path: str, part_size: int, digests: Sequence[bytes]) -> None:
    """Record the MD5 digest of each ``part_size``-byte part of the finished file
    ``local_path``, computed from the bytes as they were written to it. An upload of that
    very file (same path, inode and size) split into parts of that size computes no
    part's MD5, and :func:`expected_etag` is made of these digests: the object is checked
    against what was packed, so bytes of the file changed since (same size) fail the
    check instead of being hashed anew. Other uploads ignore them."""
    size = os.path.getsize(local_path)
    if part_size < 1 or len(digests) != max(1, -(-size // part_size)):
        raise ValueError(f"{len(digests)} part digests do not cover {size} bytes in parts of {part_size}")
    with _sent_lock:
        _packed[_identity(local_path)[:4]] = (part_size, tuple(digests))
        while len(_packed) > _SENT_KEPT:
            _packed.popitem(last=False)


def _packed_digests(local_path: str, part_size: int) -> tuple[bytes, ...] | None:
    """The registered part digests of ``local_path`` if its parts are ``part_size`` bytes."""
    with _sent_lock:
        packed = _packed.get(_identity(local_path)[:4])
    return packed[1] if packed is not None and packed[0] == part_size else None


def expected_etag(local_path: str, parts: int) -> str | None:
    """The ETag S3 gives an upload of ``local_path`` in ``parts`` parts, as this module
    splits files; None when this module would not split it into ``parts`` parts (the
    object was uploaded by something else: only a read-back can check it). Made of the
    MD5s the upload of this file used (those registered when it was written, see
    :func:`register_part_digests`, or else computed from the bytes sent), else of the
    registered ones, else of the file read now."""
    size = os.path.getsize(local_path)
    identity = _identity(local_path)
    with _sent_lock:
        packed, sent = _packed.get(identity[:4]), _sent.get(identity)
    if sent is not None and sent[0] == parts:
        return sent[1]
    for part_size in dict.fromkeys((part_size_for(size, _limits.part_size), part_size_for(size, DEFAULT_LIMITS.part_size))):
        if -(-size // part_size) == parts:
            if packed is not None and packed[0] == part_size:
                return _etag(list(packed[1]))
            digests = []
            with open(local_path, "rb") as f:
                for offset in range(0, size, part_size):
                    digests.append(_read_part(f.fileno(), offset, min(part_size, size - offset))[1])
            return _etag(digests)
    return None


def _etag(digests: list[bytes]) -> str:
    return f"{hashlib.md5(b''.join(digests)).hexdigest()}-{len(digests)}"


def _remember(local_path: str, parts: int, etag: str) -> None:
    with _sent_lock:
        _sent[_identity(local_path)] = (parts, etag)
        while len(_sent) > _SENT_KEPT:
            _sent.popitem(last=False)


# -- the upload --------------------------------------------------------------------------

# One budget of part slots per event loop (fsspec runs every async filesystem of a
# process on one loop, so this bounds the process), remade when the limit changes.
_budgets: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, tuple[int, asyncio.Semaphore]] = (
    weakref.WeakKeyDictionary()
)


def _budget(loop: asyncio.AbstractEventLoop, slots: int) -> asyncio.Semaphore:
    held = _budgets.get(loop)
    if held is None or held[0] != slots:
        held = (slots, asyncio.Semaphore(slots))
        _budgets[loop] = held
    return held[1]


def _read_part(fd: int, offset: int, length: int, md5: bytes | None = None) -> tuple[bytes, bytes]:
    """Bytes ``[offset, offset + length)`` of the open file ``fd`` and their MD5 digest
    (``md5`` where it is known already: it is not computed again)."""
    data = _read_bytes(fd, offset, length)
    return data, md5 if md5 is not None else hashlib.md5(data).digest()


def _read_bytes(fd: int, offset: int, length: int) -> bytes:
    """Bytes ``[offset, offset + length)`` of the open file ``fd``; OSError if it is shorter."""
    data = os.pread(fd, length, offset)
    if len(data) != length:
        raise OSError(f"the file to upload ended at byte {offset + len(data)}, expected {offset + length}")
    return data


def _md5_of(fd: int, offset: int, length: int) -> bytes:
    """The MD5 digest of bytes ``[offset, offset + length)`` of the open file ``fd``,
    read a MiB at a time."""
    md5 = hashlib.md5()
    end = offset + length
    while offset < end:
        block = os.pread(fd, min(MiB, end - offset), offset)
        if not block:
            raise OSError(f"the file to upload ended at byte {offset}, expected {end}")
        md5.update(block)
        offset += len(block)
    return md5.digest()


# -- parts by presigned PUTs -----------------------------------------------------------
#
# s3fs sends a body through aiobotocore and aiohttp on one event loop thread, signing
# (over http: hashing) and copying every byte on the way. A presigned UploadPart URL,
# PUT by http.client on a thread of its own with the body sent from the file by
# sendfile, costs a small fraction of that CPU and holds no part in memory. It is used
# where the presigned GETs of downloads are (:func:`.s3.open_direct`: the same
# eligibility, endpoint and TLS settings, and a store that refuses them is read and
# written through s3fs from then on).

_EXPIRES = 3600
_connections = threading.local()  # (scheme, netloc) -> a kept-alive connection, per part thread
_THREADS = PartThreads("roxxel-upload-part")


def hold() -> Callable[[], None]:
    """Keep the part threads, and the connections they keep alive, between uploads
    until the function returned is called (once; later calls do nothing): a writer
    holds them from its first shard to its close, so no shard waits for new threads and
    connections (a TLS handshake each, on a real store)."""
    return _THREADS.hold()


def _after_fork_in_child() -> None:
    global _sent_lock
    _sent_lock = threading.Lock()  # a lock a parent's thread held at the fork would stay locked


os.register_at_fork(after_in_child=_after_fork_in_child)


def _direct_eligible(fs: Any) -> bool:
    from .s3 import _eligible

    return _eligible(fs)


def _put_part(fs: Any, url: str, local_path: str, offset: int, length: int,
              md5: bytes | None = None, digest: bool = True, signed: dict[str, str] | None = None,
              connect: Callable[[], http.client.HTTPConnection] | None = None,
              pool: tuple[object, ...] | None = None) -> tuple[str, bytes | None]:
    """PUT bytes ``[offset, offset + length)`` of ``local_path`` to the presigned ``url``
    (or to ``url`` with the ``signed`` headers, Host among them, on a connection kept
    under ``pool``, else made by ``connect``: its own settings, kept apart from the
    presigned parts') and return the part's ETag and the MD5 digest of the bytes (``md5``,
    where the writer computed it as it packed them; else computed from the file as it is
    sent, unless not ``digest``: then None); a refusal raises botocore's ClientError, as
    s3fs would."""
    import urllib.parse

    from .s3 import _connect, _proxied

    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or _proxied(parts.hostname):
        raise ValueError(f"a presigned part URL of scheme {parts.scheme!r} or to a proxied host")
    kept = _connections.__dict__.setdefault("kept", {})
    where = pool if pool is not None else (parts.scheme, parts.netloc)
    conn = kept.pop(where, None) or (connect() if connect is not None else _connect(fs, parts))
    began, packed = time.perf_counter_ns(), md5 is not None or not digest  # (not digest: the packing's MD5s)
    try:
        conn.putrequest("PUT", f"{parts.path}?{parts.query}", skip_host=signed is not None, skip_accept_encoding=True)
        for name, value in (signed or {}).items():
            conn.putheader(name, value)
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        with open(local_path, "rb") as f:
            sent = conn.sock.sendfile(f, offset, length)
            if sent != length:
                raise OSError(f"sent {sent} bytes of a part of {length}")
            if md5 is None and digest:
                md5 = _md5_of(f.fileno(), offset, length)  # while the server takes the part in
        response = conn.getresponse()
        body = response.read()
    except BaseException:
        conn.close()
        raise
    if response.status != 200:
        conn.close()
        raise _client_error(response.status, body)
    if response.will_close:
        conn.close()
    else:
        kept[where] = conn
    etag = response.getheader("ETag")
    if not etag:
        raise http.client.HTTPException("an UploadPart response without an ETag")
    if (tracer := trace.current()) is not None:
        tracer.complete("upload part", "upload", began, time.perf_counter_ns(), offset=offset, bytes=length,
                        md5_from_packing=packed)
    return etag, md5


def _client_error(status: int, body: bytes, operation: str = "UploadPart") -> Exception:
    """botocore's ClientError for an S3 error response to ``operation`` (its code from
    the XML body)."""
    from botocore.exceptions import ClientError

    text = body[:4096].decode("utf-8", "replace")
    code = re.search(r"<Code>([^<]*)</Code>", text)
    message = re.search(r"<Message>([^<]*)</Message>", text)
    error = {"Code": code.group(1) if code else str(status), "Message": message.group(1) if message else ""}
    return ClientError({"Error": error, "ResponseMetadata": {"HTTPStatusCode": status}}, operation)


@dataclass
class _Upload:
    """One multipart upload in progress."""

    fs: Any
    bucket: str
    key: str
    upload_id: str
    local_path: str
    fd: int
    progress: Progress | None

    async def call(self, method: str, **kwargs: Any) -> Any:
        return await self.fs._call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)

    async def send_part(self, budget: asyncio.Semaphore, number: int, offset: int, length: int,
                        md5: bytes | None, *, digest: bool = True) -> tuple[str, bytes | None]:
        """Send part ``number`` once a slot is free (again, if it fails transiently) and
        return its ETag and MD5 digest (``md5`` if known: not computed again; None where
        not ``digest``, when the caller has it from elsewhere and a presigned PUT, which
        sends no Content-MD5, needs none)."""
        async with budget:
            if _direct_eligible(self.fs):
                sent = await self._send_direct(number, offset, length, md5, digest)
            else:
                sent = await self._send_through_s3fs(number, offset, length, md5, digest)
        if self.progress is not None:
            self.progress.beat()
        return sent

    async def _send_through_s3fs(self, number: int, offset: int, length: int,
                                 known: bytes | None, digest: bool = True) -> tuple[str, bytes | None]:
        """The part read into memory and sent by s3fs with its Content-MD5 (the packed
        bytes' where known: S3 then refuses a part read otherwise; none where not
        ``digest`` and not known); the buffer dies with the slot."""
        md5: bytes | None
        checked: dict[str, str]
        if known is None and not digest:
            data, md5, checked = await asyncio.to_thread(_read_bytes, self.fd, offset, length), None, {}
        else:
            data, md5 = await asyncio.to_thread(_read_part, self.fd, offset, length, known)
            checked = {"ContentMD5": base64.b64encode(md5).decode()}
        response = await _retrying(
            lambda: self.call("upload_part", UploadId=self.upload_id, PartNumber=number, Body=data, **checked),
            self._what(number),
        )
        return str(response["ETag"]), md5

    async def _send_direct(self, number: int, offset: int, length: int, md5: bytes | None,
                           digest: bool = True) -> tuple[str, bytes | None]:
        """The part sent from the file by a presigned PUT on a part thread; no buffer."""
        loop = asyncio.get_running_loop()
        threads = _THREADS.pool(_limits.parts_in_flight)

        async def send() -> tuple[str, bytes | None]:
            s3 = await self.fs.get_s3(self.bucket)
            # No Content-MD5: a SigV2 presigned URL would have to sign it. The part's
            # ETag is its MD5 all the same, and the object's ETag is checked after.
            url = await s3.generate_presigned_url(
                "upload_part", ExpiresIn=_EXPIRES,
                Params={"Bucket": self.bucket, "Key": self.key, "UploadId": self.upload_id, "PartNumber": number},
            )
            put = asyncio.wrap_future(
                threads.submit(lambda: _put_part(self.fs, url, self.local_path, offset, length, md5, digest)),
                loop=loop,
            )
            try:
                return await asyncio.shield(put)
            except asyncio.CancelledError:
                # The PUT goes on in its thread: wait for it (its socket timeout bounds
                # it), so that the abort that follows also removes its part.
                await asyncio.wait({put})
                raise

        try:
            return await _retrying(send, self._what(number))
        except Exception as exc:
            if classify(exc).retryable or http_status(exc) == 404:  # 404: no such upload any more
                raise
            # A store may refuse presigned parts where it takes signed ones: send this
            # part, and every later one, through s3fs, which reports a real refusal.
            from .s3 import _refuse

            _refuse(self.fs, exc)
            return await self._send_through_s3fs(number, offset, length, md5, digest)

    def _what(self, number: int) -> str:
        return f"part {number} of s3://{self.bucket}/{self.key}"

    async def complete(self, etags: list[str], expected: str) -> bool:
        """Complete the upload of the parts that answered ``etags``; whether the store's
        answer confirmed the object is the file's bytes: its ETag is ``expected``, the
        one made of the MD5s of the file's own parts (S3 makes it of the parts it holds).
        Then asking for the object's ETag again (:meth:`.Store.check_upload`) would only
        repeat what was just answered."""
        parts = [{"PartNumber": n, "ETag": etag} for n, etag in enumerate(etags, 1)]
        try:
            response = await _retrying(
                lambda: self.call("complete_multipart_upload", UploadId=self.upload_id,
                                  MultipartUpload={"Parts": parts}),
                f"the completion of s3://{self.bucket}/{self.key}",
            )
        except Exception as exc:
            # A completion whose answer was lost, then sent again, finds no upload:
            # the object it made, with our ETag, is the success it did not report.
            if http_status(exc) == 404 and await self._holds(expected):
                return True
            raise
        answered = response.get("ETag") if isinstance(response, dict) else None
        return isinstance(answered, str) and answered.strip('"') == expected

    async def _holds(self, etag: str) -> bool:
        try:
            head = await self.call("head_object")
        except Exception:  # noqa: BLE001 - the completion's own error is the one to report
            return False
        return str(head.get("ETag", "")).strip('"') == etag

    async def abort(self) -> None:
        """Abort the upload (its parts are deleted); a failure to is logged, not raised,
        so the upload's own error is the one reported."""
        try:
            await _retrying(
                lambda: self.call("abort_multipart_upload", UploadId=self.upload_id),
                f"the abort of s3://{self.bucket}/{self.key}",
            )
        except Exception as exc:  # noqa: BLE001
            if http_status(exc) != 404:  # 404: no such upload, nothing left
                log.warning(
                    "could not abort the multipart upload of s3://%s/%s (%s); its parts stay "
                    "until a lifecycle rule removes them", self.bucket, self.key, describe(exc),
                )


def part_retry(what: str, attempt: int, first_failure: float | None, retryable: bool,
               exc: BaseException) -> tuple[float, float] | None:
    """After failed send ``attempt`` of a part (S3 multipart, GCS composite): (the delay
    before the next send, the time of the first failure), logged; or None to give up:
    not ``retryable``, ``_PART_ATTEMPTS`` sends made, or past the default policy's
    deadline counted from the first failure."""
    now = time.monotonic()
    first = now if first_failure is None else first_failure
    delay = DEFAULT_POLICY.backoff(attempt)
    if not retryable or attempt == _PART_ATTEMPTS or now + delay - first > DEFAULT_POLICY.deadline:
        return None
    log.info("%s: attempt %d/%d failed (%s); sending it again in %.2fs",
             what, attempt, _PART_ATTEMPTS, describe(exc), delay)
    return delay, first


async def _retrying(send: Callable[[], Awaitable[Any]], what: str) -> Any:
    """``send()``, sent again after a transient failure (:func:`part_retry`)."""
    first_failure = None
    for attempt in itertools.count(1):  # until part_retry gives up
        try:
            return await send()
        except Exception as exc:
            retryable = classify(exc).retryable or _error_code(exc) in _RETRIED_CODES
            again = part_retry(what, attempt, first_failure, retryable, exc)
            if again is None:
                raise
            delay, first_failure = again
            await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code of ``exc`` or of the botocore error it was raised from."""
    link: BaseException | None = exc
    while link is not None:
        response = getattr(link, "response", None)
        if isinstance(response, dict) and response.get("Error", {}).get("Code"):
            return str(response["Error"]["Code"])
        link = link.__cause__
    return None


async def upload(fs: Any, local_path: str, path: str, progress: Progress | None = None) -> bool:
    """Upload ``local_path`` to ``path`` on the s3fs filesystem ``fs`` in parts, on
    ``fs``'s loop; all or nothing (see the module). True if the completion's answer
    confirmed the object holds the file's bytes (:meth:`_Upload.complete`)."""
    chosen = _limits
    size = os.path.getsize(local_path)
    part_size = part_size_for(size, chosen.part_size)
    budget = _budget(asyncio.get_running_loop(), chosen.parts_in_flight)
    bucket, key, _ = fs.split_path(path)
    known = _packed_digests(local_path, part_size)
    fd = os.open(local_path, os.O_RDONLY)
    _THREADS.started()
    try:
        created = await _retrying(
            lambda: fs._call_s3("create_multipart_upload", Bucket=bucket, Key=key),
            f"the start of s3://{bucket}/{key}",
        )
        job = _Upload(fs, bucket, key, created["UploadId"], local_path, fd, progress)
        try:
            sent = await _all_or_cancel([
                asyncio.ensure_future(job.send_part(budget, number, offset, min(part_size, size - offset),
                                                    None if known is None else known[number - 1]))
                for number, offset in enumerate(range(0, size, part_size), 1)
            ])
            etag = _etag([md5 for _, md5 in sent])
            confirmed = await job.complete([e for e, _ in sent], etag)
        except BaseException:
            await asyncio.shield(job.abort())
            raise
    finally:
        os.close(fd)
        _THREADS.ended()
    _remember(local_path, len(sent), etag)
    return confirmed


async def _all_or_cancel(tasks: list[asyncio.Future[Any]]) -> list[Any]:
    """The results of ``tasks`` in order; at the first failure (or cancellation) the
    others are cancelled and waited for, then the failure is raised."""
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:  # the upload itself is cancelled: so is every part
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    failures = [t for t in tasks if t in done and not t.cancelled() and t.exception() is not None]
    if not failures:
        return [t.result() for t in tasks]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)  # no part is left in flight
    raise failures[0].exception()  # type: ignore[misc]
