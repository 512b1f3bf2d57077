"""Parallel composite uploads of finished files to GCS, checked by their CRC32C.

One GCS connection carries roughly 50-100 MB/s; a node reaches its link only with many
requests in flight. A file of at least :attr:`.multipart.MultipartLimits.threshold` bytes
therefore goes up as parts (:attr:`~.multipart.MultipartLimits.part_size` bytes), each a
temporary object of its own beside the target, ``<prefix>/.roxxel-part-<uuid>-NNNN``
(hidden from roxxel's listings), many at once; ``compose`` then makes the object from
them in one atomic step (up to 32 components a call, so more parts are composed in two
levels, at most 1,024 parts: larger files get larger parts), and the parts are deleted.
This is what gsutil and gcloud call a parallel composite upload. GCS's XML API multipart
upload would leave no temporary objects, but neither fake-gcs-server nor
gcp-storage-emulator implements it.

Each part is one media upload (``uploadType=media``) sent by :mod:`http.client` from the
file with ``sendfile`` on a part thread, with the headers of gcsfs's own credentials
(as :func:`.gcs.read_media_range` reads; on the same kept-alive connections; or, for a
shard still being packed while gcsfs is not made, the URL and headers of the deferred
filesystem, as :func:`.gcs.read_deferred_range` reads: :class:`Plain`), so no
part is ever held in memory: RAM does not grow with the file. The parts of every upload
of the process share one budget of :attr:`~.multipart.MultipartLimits.parts_in_flight`
part threads (the same limits as S3's multipart uploads, :func:`.multipart.configure`).
``compose`` goes through gcsfs (its retries); the deletions are plain DELETEs on the
part threads, as gcsfs's batch deletion is not implemented by fake-gcs-server.

Integrity: GCS answers each part with the part's CRC32C, which must equal the one
computed from the file (a part damaged on the way is sent again); the composed object's
CRC32C must equal the combination of the parts' (:func:`crc32c_combine`), which also
proves their order. A composite object has no ``md5Hash``: :func:`verified_md5` gives
:meth:`.gcs.GCSBackend.reported_md5` the MD5 of the local file this process uploaded to
that generation of the object, while the file is unchanged (see there).

All or nothing: the object appears (or replaces the previous one) only at the last
compose, unconditionally, as gcsfs's ``put_file`` writes shards (their names are
content-addressed, or hold random digits: never another writer's). A file still being
written goes up the same way, each part as it is written (:func:`upload_growing`), each
part's CRC32C then also checked against the one computed as it was packed. A failure cancels the parts not started, waits for those on the
wire, and deletes every part written; a failure to delete is logged. A process killed
mid-upload leaves its parts behind (hidden names; a lifecycle rule on ``.roxxel-part-``
removes them). On real GCS, buckets with soft delete keep the deleted parts, and bill
them, for the soft-delete retention period, and a retention policy or a default event
hold keeps them from being deleted at all: there, prefer fewer, larger parts
(:func:`.multipart.configure`) or turn composite uploads off with ``threshold``.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import itertools
import json
import logging
import os
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from dataclasses import dataclass, field
from typing import Any

from .. import trace
from ..errors import IntegrityError
from ..workers import PartThreads
from .errors import HTTPStatusError, classify, describe
from .growing import PartFeed
from .multipart import MiB, limits, part_retry
from .through import Revoked
from .watchdog import Progress

__all__ = ["PART_PREFIX", "Plain", "Refused", "c_crc32c", "crc32c_combine", "eligible", "part_size_for", "upload",
           "upload_growing", "verified_md5"]

log = logging.getLogger(__name__)

PART_PREFIX = ".roxxel-part-"
_COMPOSE_MAX = 32  # components per compose request
_MAX_PARTS = _COMPOSE_MAX * _COMPOSE_MAX  # two levels of compose (GCS allows 1,024 components)
_ANSWER_MAX = 1 * MiB  # an upload's JSON answer is a few hundred bytes


class Refused(Exception):
    """The store answered a part upload in a way a plain request cannot use (a redirect,
    a body that is not the object's metadata): the caller uploads through gcsfs."""


def part_size_for(size: int, part_size: int) -> int:
    """The part size a file of ``size`` bytes is split with: ``part_size``, or, for a
    file of more than 1,024 such parts, the MiB multiple that makes 1,024 enough."""
    needed = -(-size // _MAX_PARTS)
    return max(part_size, -(-needed // MiB) * MiB)


# -- CRC32C ------------------------------------------------------------------------------

_CASTAGNOLI = 0x82F63B78  # the reflected CRC32C polynomial


def _multmodp(a: int, b: int) -> int:
    """a * b modulo the polynomial (bit-reflected, as zlib's crc32_combine)."""
    m, p = 1 << 31, 0
    while True:
        if a & m:
            p ^= b
            if not a & (m - 1):
                return p
        m >>= 1
        b = (b >> 1) ^ _CASTAGNOLI if b & 1 else b >> 1


_X2N = [1 << 30]  # x^(2^k) modulo the polynomial
for _ in range(31):
    _X2N.append(_multmodp(_X2N[-1], _X2N[-1]))


def crc32c_combine(crc1: int, crc2: int, length2: int) -> int:
    """The CRC32C of ``A + B`` from ``crc1`` of ``A``, ``crc2`` of ``B`` and ``len(B)``."""
    p, k, n = 1 << 31, 3, length2  # x^(8 * length2)
    while n:
        if n & 1:
            p = _multmodp(_X2N[k & 31], p)
        n >>= 1
        k += 1
    return _multmodp(p, crc1) ^ crc2


def c_crc32c() -> Any:
    """google_crc32c with its C implementation, or None (a pure Python CRC of a shard
    would take minutes: the upload then goes through gcsfs)."""
    try:
        import google_crc32c
    except ImportError:
        return None
    return google_crc32c if google_crc32c.implementation == "c" else None


_CRC_BLOCK = 256 * 1024  # bytes read at a time: a part thread holds at most two blocks


def _crc32c_of(fd: int, offset: int, length: int) -> int:
    """The CRC32C of bytes ``[offset, offset + length)`` of the open file ``fd``."""
    crc32c = c_crc32c()
    crc, end = 0, offset + length
    while offset < end:
        block = os.pread(fd, min(_CRC_BLOCK, end - offset), offset)
        if not block:
            raise OSError(f"the file to upload ended at byte {offset}, expected {end}")
        crc = crc32c.extend(crc, block)
        offset += len(block)
    return crc


def _decode_crc(value: object, what: str) -> int:
    try:
        raw = base64.b64decode(str(value), validate=True)
    except ValueError:
        raw = b""
    if len(raw) != 4:
        raise OSError(f"{what}: the store's answer has no usable crc32c ({value!r:.40})")
    return int.from_bytes(raw, "big")


def _encode_crc(crc: int) -> str:
    return base64.b64encode(crc.to_bytes(4, "big")).decode()


# -- what this process uploaded, for the check after the upload ---------------------------

# (path, generation) -> (crc32c, identity of the local file) of composite objects whose
# CRC32C this process verified against the file it uploaded.
_verified: OrderedDict[tuple[str, str], tuple[str, tuple[str, int, int, int, int]]] = OrderedDict()
_verified_lock = threading.Lock()
_VERIFIED_KEPT = 256


def _identity(local_path: str) -> tuple[str, int, int, int, int]:
    st = os.stat(local_path)
    return (os.path.abspath(local_path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def verified_md5(path: str, info: dict[str, Any]) -> str | None:
    """The MD5 (hex) of the bytes of object ``path`` ("bucket/key") as described by ``info`` (its
    metadata: ``generation``, ``crc32c``), if this process uploaded that generation
    from a local file, found the store's CRC32C of it equal to the file's, and the file
    is unchanged since; else None."""
    import hashlib

    with _verified_lock:
        known = _verified.get((path, str(info.get("generation"))))
    if known is None or known[0] != info.get("crc32c"):
        return None
    local_path = known[1][0]
    try:
        if _identity(local_path) != known[1]:
            return None
        md5 = hashlib.md5()
        with open(local_path, "rb") as f:
            for block in iter(lambda: f.read(MiB), b""):
                md5.update(block)
    except OSError:
        return None
    return md5.hexdigest() if _identity(local_path) == known[1] else None


def _remember(path: str, generation: str, crc: str, identity: tuple[str, int, int, int, int]) -> None:
    with _verified_lock:
        _verified[(path, generation)] = (crc, identity)
        while len(_verified) > _VERIFIED_KEPT:
            _verified.popitem(last=False)


# -- the part threads ---------------------------------------------------------------------

_THREADS = PartThreads("roxxel-gcs-part")


def hold() -> Callable[[], None]:
    """Keep the part threads, and the connections they keep alive, between uploads until
    the function returned is called (as :func:`.multipart.hold` for S3: a writer holds
    them from its first shard to its close)."""
    return _THREADS.hold()


def _after_fork_in_child() -> None:
    global _verified_lock
    _verified_lock = threading.Lock()  # a lock a parent's thread held at the fork would stay locked


os.register_at_fork(after_in_child=_after_fork_in_child)


# -- requests -----------------------------------------------------------------------------


def eligible(fs: Any, path: str) -> bool:
    """Whether ``path`` on the gcsfs filesystem ``fs`` can be uploaded in parts here:
    where plain requests read it (:func:`.gcs.read_media_range`) and a C CRC32C exists."""
    from .gcs import _eligible

    return c_crc32c() is not None and _eligible(fs, path)


@dataclass(frozen=True)
class Plain:
    """Where and how an upload's plain requests go: the JSON API's ``location``
    (``http[s]://host[:port]``), ``auth`` (adds the credentials' headers to a dict) and
    ``make_fs`` (the gcsfs filesystem, for what plain requests do not do)."""

    location: str
    auth: Callable[[dict[str, str]], None]
    make_fs: Callable[[], Any]

    @classmethod
    def of(cls, fs: Any) -> Plain:
        """Those of the gcsfs filesystem ``fs`` (its credentials, refreshed by gcsfs)."""
        return cls(str(fs._location), fs.credentials.apply, lambda: fs)


@dataclass(frozen=True)
class _Part:
    number: int  # from 1
    offset: int
    length: int
    name: str  # object key of the temporary part


@dataclass
class _Job:
    """One composite upload in progress."""

    fs: Any  # gcsfs's filesystem; None until it is needed (see gcsfs)
    bucket: str
    key: str
    local_path: str
    progress: Progress | None
    token: str
    plain: Plain
    started: set[str] = field(default_factory=set)  # the parts whose upload began
    intermediates: list[str] = field(default_factory=list)  # composed from parts, for a second level
    _started_lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def of(cls, fs: Any, path: str, local_path: str, progress: Progress | None) -> _Job:
        bucket, key, _ = fs.split_path(path)
        return cls(fs, bucket, key, local_path, progress, uuid.uuid4().hex, Plain.of(fs))

    @property
    def gcsfs(self) -> Any:
        """The gcsfs filesystem (for the compose, and what plain requests cannot do),
        made now if it is not yet."""
        if self.fs is None:
            self.fs = self.plain.make_fs()
        return self.fs

    @property
    def folder(self) -> str:
        """The key's folder ("" or ending in "/"), where its temporary parts go."""
        return self.key.rsplit("/", 1)[0] + "/" if "/" in self.key else ""

    def part(self, number: int, offset: int, length: int) -> _Part:
        return _Part(number, offset, length, f"{self.folder}{PART_PREFIX}{self.token}-{number:04d}")

    @property
    def url(self) -> str:
        return f"gs://{self.bucket}/{self.key}"

    def endpoint(self) -> urllib.parse.SplitResult:
        return urllib.parse.urlsplit(self.plain.location)

    def object_path(self, name: str) -> str:
        base = self.endpoint().path.rstrip("/")
        return f"{base}/storage/v1/b/{urllib.parse.quote(self.bucket, safe='')}/o/{urllib.parse.quote(name, safe='')}"

    def request(self, method: str, target: str, body: Callable[[http.client.HTTPConnection], None] | None,
                length: int, what: str) -> tuple[int, bytes]:
        """One plain request on a kept-alive connection: ``body(conn)`` sends its
        ``length`` bytes after the headers. Returns the status and the answer's body."""
        from .gcs import _give_back, _take

        endpoint = self.endpoint()
        headers = {"Content-Length": str(length), "User-Agent": "roxxel", "Accept-Encoding": "identity"}
        if body is not None:
            headers["Content-Type"] = "application/octet-stream"
        self.plain.auth(headers)  # the credentials' headers: never read here
        while True:
            conn, reused = _take(endpoint)
            try:
                conn.putrequest(method, target, skip_accept_encoding=True)
                for name, value in headers.items():
                    conn.putheader(name, value)
                conn.endheaders()
                if body is not None:
                    body(conn)
                response = conn.getresponse()
                data = response.read(_ANSWER_MAX + 1)
            except (http.client.HTTPException, ConnectionError) as exc:
                conn.close()
                if reused:  # a kept-alive connection the server had closed: once more, anew
                    continue
                if isinstance(exc, (ConnectionError, http.client.IncompleteRead)):
                    raise
                raise Refused(f"{what}: {describe(exc)}") from exc
            except ssl.SSLCertVerificationError as exc:
                conn.close()  # gcsfs's client may trust other certificates
                raise Refused(f"{what}: {describe(exc)}") from exc
            except BaseException:
                conn.close()
                raise
            break
        if response.will_close or len(data) > _ANSWER_MAX:
            conn.close()
        else:
            _give_back(endpoint, conn)
        return response.status, data

    def send_part(self, part: _Part) -> tuple[int, str]:
        """Upload ``part`` from the file (again, if it fails transiently); returns its
        CRC32C and generation, checked against the file's."""
        what = f"part {part.number} of {self.url}"
        with self._started_lock:
            self.started.add(part.name)
        base = self.endpoint().path.rstrip("/")
        target = (f"{base}/upload/storage/v1/b/{urllib.parse.quote(self.bucket, safe='')}/o"
                  f"?uploadType=media&name={urllib.parse.quote(part.name, safe='')}")

        def once() -> tuple[int, str]:
            began = time.perf_counter_ns()
            crc: list[int] = []
            with open(self.local_path, "rb") as f:

                def body(conn: http.client.HTTPConnection) -> None:
                    sent = conn.sock.sendfile(f, part.offset, part.length)
                    if sent != part.length:
                        raise OSError(f"{what}: sent {sent} bytes of {part.length}")
                    crc.append(_crc32c_of(f.fileno(), part.offset, part.length))  # while GCS takes it in

                status, data = self.request("POST", target, body, part.length, what)
            answer = _answer(status, data, what)
            if int(answer.get("size", -1)) != part.length:
                raise http.client.IncompleteRead(b"", part.length)  # transient: sent again
            if _decode_crc(answer.get("crc32c"), what) != crc[0]:
                raise _Damaged(f"{what}: the store's crc32c {answer.get('crc32c')} is not the file's "
                               f"{_encode_crc(crc[0])}")
            if (tracer := trace.current()) is not None:
                tracer.complete("upload part", "upload", began, time.perf_counter_ns(), offset=part.offset,
                                bytes=part.length)
            return crc[0], str(answer.get("generation"))

        sent = _retrying(once, what)
        if self.progress is not None:
            self.progress.beat()
        return sent

    def compose(self, name: str, sources: list[str], what: str) -> dict[str, Any]:
        """Compose ``sources`` (keys, in order) into ``name`` through gcsfs."""
        body = {
            "kind": "storage#composeRequest",
            "sourceObjects": [{"name": source} for source in sources],
            "destination": {"contentType": "application/octet-stream"},
        }
        began = time.perf_counter_ns()
        answer = self.gcsfs.call("POST", "b/{}/o/{}/compose", self.bucket, name, json=body, json_out=True)
        if (tracer := trace.current()) is not None:
            tracer.complete("compose", "upload", began, time.perf_counter_ns(), parts=len(sources))
        if not isinstance(answer, dict):
            raise OSError(f"{what}: the store's answer to compose is not an object")
        if self.progress is not None:
            self.progress.beat()
        return answer

    def delete(self, name: str) -> None:
        """Delete the temporary object ``name`` (already gone is fine); a failure is
        logged, not raised, so the upload's own outcome is the one reported."""
        what = f"the temporary part gs://{self.bucket}/{name}"

        def once() -> None:
            status, data = self.request("DELETE", self.object_path(name), None, 0, what)
            if status not in (200, 204, 404):
                _answer(status, data, what)

        try:
            try:
                _retrying(once, what)
            except Refused:  # as its upload may have been: gcsfs deletes it
                with contextlib.suppress(FileNotFoundError):
                    self.gcsfs.rm_file(f"{self.bucket}/{name}")
        except Exception as exc:  # noqa: BLE001 - see the docstring
            log.warning("could not delete %s (%s); it is safe to delete", what, describe(exc))


class _Damaged(OSError):
    """A part whose CRC32C the store computed differs from the file's: sent again."""


def _answer(status: int, data: bytes, what: str) -> dict[str, Any]:
    """The JSON object of a 200 answer; an HTTP error raised as such."""
    if status in (401, 403, 404, 408, 429) or status >= 500:
        raise HTTPStatusError(status, what)
    if status != 200:
        raise Refused(f"{what}: HTTP {status}")
    try:
        answer = json.loads(data)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise Refused(f"{what}: the answer is not a JSON object")
    return answer


def _retrying(send: Callable[[], Any], what: str) -> Any:
    """``send()``, again after a transient failure or a damaged part (as S3's parts:
    :func:`.multipart.part_retry`)."""
    first_failure = None
    for attempt in itertools.count(1):  # until part_retry gives up
        try:
            return send()
        except Refused:
            raise
        except Exception as exc:
            retryable = isinstance(exc, _Damaged) or classify(exc).retryable
            again = part_retry(what, attempt, first_failure, retryable, exc)
            if again is None:
                raise
            delay, first_failure = again
            time.sleep(delay)
    raise AssertionError("unreachable")


def _all_or_cancel(futures: list[Future[Any]]) -> list[Any]:
    """The results of ``futures`` in order; at the first failure the others not started
    are cancelled, those running are waited for, and the failure is raised."""
    try:
        done, pending = wait(futures, return_when=FIRST_EXCEPTION)
    except BaseException:
        for future in futures:
            future.cancel()
        wait(futures)
        raise
    failures = [f for f in futures if f in done and not f.cancelled() and f.exception() is not None]
    if not failures:
        return [f.result() for f in futures]
    for future in pending:
        future.cancel()
    wait(pending)  # no part is left on the wire to land after the cleanup
    raise failures[0].exception()  # type: ignore[misc]


# -- the upload ---------------------------------------------------------------------------


def upload(fs: Any, local_path: str, path: str, progress: Progress | None = None) -> dict[str, Any]:
    """Upload ``local_path`` to ``path`` on the gcsfs filesystem ``fs`` as a parallel
    composite upload and return the object's metadata (the last compose's answer); all
    or nothing, checked by CRC32C (see the module). :class:`Refused` (nothing left
    behind) where the store will not take plain requests."""
    chosen = limits()
    size = os.path.getsize(local_path)
    identity = _identity(local_path)
    part_size = part_size_for(size, chosen.part_size)
    job = _Job.of(fs, path, local_path, progress)
    parts = [job.part(n, offset, min(part_size, size - offset)) for n, offset in enumerate(range(0, size, part_size), 1)]
    _THREADS.started()
    threads = _THREADS.pool(chosen.parts_in_flight)
    try:
        sent = _all_or_cancel([threads.submit(lambda p=p: job.send_part(p)) for p in parts])
        answer = _compose(job, threads, parts, [crc for crc, _ in sent], size)
    finally:
        _clean_up(job, threads, parts)
    _remember(f"{job.bucket}/{job.key}", str(answer.get("generation")), str(answer.get("crc32c")), identity)
    return answer


def upload_growing(plain: Plain, local_path: str, path: str, feed: PartFeed) -> dict[str, Any] | None:
    """Upload ``local_path``, being written, to ``path`` (``bucket/key``) as a parallel
    composite upload whose parts go up as ``feed`` reports them written (as
    :func:`.growing.upload` does S3's), by the plain requests ``plain`` says (gcsfs is
    made only for the compose), and return the object's metadata; all or nothing,
    checked by CRC32C, as :func:`upload`. None, having sent nothing, if the file ends
    under the multipart threshold (it goes up whole). :class:`~.through.Revoked` if the
    feed is given up, or the file outgrows 1,024 parts of ``feed.part_size``."""
    chosen = limits()
    written, final, given_up = feed.wait(chosen.threshold - 1)
    if given_up:
        raise Revoked(f"the upload of gs://{path} was given up before it began")
    if final is not None and final[0] < chosen.threshold:
        return None
    bucket, _, key = path.partition("/")
    job = _Job(None, bucket, key, local_path, None, uuid.uuid4().hex, plain)
    parts: list[_Part] = []
    futures: list[Future[tuple[int, str]]] = []

    def failed() -> BaseException | None:
        return next((e for f in futures if f.done() and not f.cancelled() and (e := f.exception()) is not None), None)

    _THREADS.started()
    threads = _THREADS.pool(chosen.parts_in_flight)
    try:
        try:
            while True:
                if given_up:
                    raise Revoked(f"the upload of {job.url} was given up: its file is not finished")
                if (error := failed()) is not None:
                    raise error
                upto = written if final is None else final[0]
                for offset, length in feed.new_parts(len(parts), upto, final is not None, _MAX_PARTS, job.url):
                    parts.append(part := job.part(len(parts) + 1, offset, length))
                    futures.append(threads.submit(lambda p=part: job.send_part(p)))
                    futures[-1].add_done_callback(lambda _: feed.poke())  # a failed part ends the wait
                if final is not None:
                    break
                written, final, given_up = feed.wait(written, stop=lambda: failed() is not None)
            sent = _all_or_cancel(futures)
        except BaseException:
            for future in futures:
                future.cancel()
            wait(futures)  # no part is left on the wire to land after the cleanup
            raise
        identity = _identity(local_path)  # (the file is finished)
        crcs = [crc for crc, _ in sent]
        _check_packed(job, crcs, final[1])
        answer = _compose(job, threads, parts, crcs, final[0])
    finally:
        _clean_up(job, threads, parts)
    _remember(f"{job.bucket}/{job.key}", str(answer.get("generation")), str(answer.get("crc32c")), identity)
    return answer


def _check_packed(job: _Job, crcs: list[int], packed: tuple[Any, ...]) -> None:
    """IntegrityError unless each part the store holds has the CRC32C its bytes had when
    they were packed (``packed``, which the writer computed): a part is checked against
    the file it was sent from, and the file may have changed since it was packed."""
    if len(packed) != len(crcs) or not all(type(crc) is int for crc in packed):
        raise TypeError(f"{job.url}: the feed was finished without the CRC32C of each of its {len(crcs)} parts")
    for number, (crc, wanted) in enumerate(zip(crcs, packed, strict=True), 1):
        if crc != wanted:
            raise IntegrityError(f"{job.url}: part {number} went up with crc32c {_encode_crc(crc)}, but its bytes "
                                 f"had {_encode_crc(wanted)} when they were packed: the staged file changed")


def _compose(job: _Job, threads: Any, parts: list[_Part], crcs: list[int], size: int) -> dict[str, Any]:
    """Compose ``parts`` (sent; their CRC32Cs ``crcs``) into the job's object, checked
    (:func:`_check`); the object's metadata."""
    sources = [p.name for p in parts]
    if len(sources) > _COMPOSE_MAX:  # first level: groups of 32 into intermediates
        groups = [sources[i:i + _COMPOSE_MAX] for i in range(0, len(sources), _COMPOSE_MAX)]
        middle = [f"{job.folder}{PART_PREFIX}{job.token}-c{i:02d}" for i in range(len(groups))]
        job.intermediates += middle
        _all_or_cancel([
            threads.submit(lambda m=m, g=g: job.compose(m, g, f"the compose of {job.url}"))
            for m, g in zip(middle, groups)
        ])
        sources = middle
    answer = job.compose(job.key, sources, f"the compose of {job.url}")
    _check(job, answer, size, crcs, [p.length for p in parts])
    return answer


def _clean_up(job: _Job, threads: Any, parts: list[_Part]) -> None:
    """Delete every temporary object the job began, whatever happened; release the
    part threads."""
    try:
        unsent = {p.name for p in parts} - job.started  # (cancelled before they began)
        names = [p.name for p in parts if p.name not in unsent] + job.intermediates
        wait([threads.submit(lambda n=n: job.delete(n)) for n in names])
    finally:
        _THREADS.ended()


def _check(job: _Job, answer: dict[str, Any], size: int, crcs: list[int], lengths: list[int]) -> None:
    """IntegrityError (the object deleted) unless the composed object has the file's
    size and the CRC32C its parts combine to."""
    expected = crcs[0]
    for crc, length in zip(crcs[1:], lengths[1:]):
        expected = crc32c_combine(expected, crc, length)
    problem = None
    if int(answer.get("size", -1)) != size:
        problem = f"is {answer.get('size')} bytes, expected {size}"
    elif _decode_crc(answer.get("crc32c"), f"the compose of {job.url}") != expected:
        problem = f"has crc32c {answer.get('crc32c')}, expected {_encode_crc(expected)} (its parts')"
    if problem is None:
        return
    try:
        job.gcsfs.rm_file(f"{job.bucket}/{job.key}")
    except Exception as exc:  # noqa: BLE001 - the integrity error is the one to report
        log.warning("could not delete the wrongly composed %s (%s)", job.url, describe(exc))
    raise IntegrityError(f"{job.url}: the composed object {problem}")
