"""Parallel multipart uploads to S3 (roxxel.backends.multipart), against moto on loopback.

Concurrency and memory are observed by counting, never by timing: a wrapper around the
filesystem's ``_call_s3`` counts the ``UploadPart`` requests in flight (and can hold the
first ones until several are in flight, so a sequential upload could not pass), and a
wrapper around the part reader counts the part buffers alive.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import hashlib
import threading
import urllib.parse
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pytest

import roxxel
from roxxel.backends import multipart
from roxxel.backends.s3 import _refuse, refused
from roxxel.backends.store import Store
from roxxel.errors import AccessDeniedError, IntegrityError
from tests import faulty_s3
from tests.faults import client_error

MiB = 2**20
PART = 5 * MiB  # S3's smallest part


@pytest.fixture
def limits() -> Iterator[None]:
    """Parts of 5 MiB, 3 in flight, for files from 10 MiB; the defaults restored after."""
    previous = multipart.configure(part_size=PART, parts_in_flight=3, threshold=2 * PART)
    multipart._sent.clear()
    multipart._packed.clear()
    yield
    multipart.configure(**dataclasses.asdict(previous))
    multipart._sent.clear()
    multipart._packed.clear()


@pytest.fixture
def bucket(s3_server) -> str:
    """A bucket of its own, so its list of pending multipart uploads is this test's."""
    name = f"mp-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name


@pytest.fixture(params=["presigned", "s3fs"])
def transport(request: pytest.FixtureRequest) -> str:
    """How parts are sent: presigned PUTs from part threads (where the store allows,
    the default), or through s3fs (the fallback)."""
    return request.param


def make_store(server: Any, bucket: str, transport: str = "presigned") -> Store:
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **server.storage_options)
    if transport == "s3fs":
        _refuse(fs, RuntimeError("this test sends parts through s3fs"))
    return Store(f"s3://{bucket}/ds", fs=fs)


def random_file(path: Any, size: int, seed: int = 0) -> str:
    path = str(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).bytes(size))
    return path


class Requests:
    """Counts the S3 requests of one filesystem and the ``UploadPart`` requests in
    flight, whichever way parts are sent: presigned PUTs on part threads
    (``multipart._put_part``) or s3fs's ``_call_s3``. With ``hold=k``, each part waits
    until ``k`` are in flight (or no more can start: ``parts``), so the peak is ``k``
    only if the upload really sends ``k`` parts at once. ``fail(method, number,
    attempt)`` may return an exception to raise instead of sending a request; the
    responses to the requests in ``lose`` (method, n-th call) are lost after they were
    done."""

    def __init__(self, fs: Any, monkeypatch: pytest.MonkeyPatch, hold: int = 0, parts: int = 0,
                 fail: Any = None, lose: tuple[tuple[str, int], ...] = ()) -> None:
        self.calls: Counter[str] = Counter()
        self.attempts: Counter[int] = Counter()  # UploadPart requests per part number
        self.in_flight = self.peak = self.parts_done = 0
        self.in_flight_at_abort: int | None = None
        self.hold, self.parts, self.fail, self.lose = hold, parts, fail, lose
        self._lock = threading.Lock()
        self._loop_full: asyncio.Event | None = None
        self._thread_full = threading.Event()
        original_call, original_put = fs._call_s3, multipart._put_part

        async def call(method: str, *args: Any, **kwargs: Any) -> Any:
            if method != "upload_part":
                with self._lock:
                    self.calls[method] += 1
                    n = self.calls[method]
                    if method == "abort_multipart_upload":
                        self.in_flight_at_abort = self.in_flight
                error = self.fail and self.fail(method, 0, n)
                if error is not None:
                    raise error
                result = await original_call(method, *args, **kwargs)
                if (method, n) in self.lose:  # it was done; its answer is lost on the way back
                    raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected)")
                return result
            attempt, full = self._begin(kwargs["PartNumber"])
            ok = False
            try:
                if self.hold:  # a sequential upload never fills the group: it goes on after
                    if self._loop_full is None:  # the timeout, and fails on the peak, not on time
                        self._loop_full = asyncio.Event()
                    if full:
                        self._loop_full.set()
                    with contextlib.suppress(asyncio.TimeoutError):
                        await asyncio.wait_for(self._loop_full.wait(), timeout=10)
                self._raise_if_failing(kwargs["PartNumber"], attempt)
                result = await original_call(method, *args, **kwargs)
                ok = True
                return result
            finally:
                self._end(ok)

        def put(fs_: Any, url: str, *args: Any) -> str:
            number = int(urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["partNumber"][0])
            attempt, full = self._begin(number)
            ok = False
            try:
                if self.hold:
                    if full:
                        self._thread_full.set()
                    self._thread_full.wait(10)
                self._raise_if_failing(number, attempt)
                result = original_put(fs_, url, *args)
                ok = True
                return result
            finally:
                self._end(ok)

        fs._call_s3 = call
        monkeypatch.setattr(multipart, "_put_part", put)

    def _begin(self, number: int) -> tuple[int, bool]:
        with self._lock:
            self.calls["upload_part"] += 1
            self.attempts[number] += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            return self.attempts[number], self.in_flight >= min(self.hold, self.parts - self.parts_done)

    def _end(self, ok: bool) -> None:
        with self._lock:
            self.in_flight -= 1
            self.parts_done += ok

    def _raise_if_failing(self, number: int, attempt: int) -> None:
        error = self.fail and self.fail("upload_part", number, attempt)
        if error is not None:
            raise error


class Buffers:
    """Counts part buffers alive: read (by multipart._read_part) and not yet sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, requests: Requests) -> None:
        self.reads = self.peak = 0
        self._lock = threading.Lock()
        self._requests = requests
        read = multipart._read_part

        def counted(fd: int, offset: int, length: int, *known: bytes | None) -> tuple[bytes, bytes]:
            result = read(fd, offset, length, *known)
            with self._lock:
                self.reads += 1
                self.peak = max(self.peak, self.alive)
            return result

        monkeypatch.setattr(multipart, "_read_part", counted)

    @property
    def alive(self) -> int:
        return self.reads - self._requests.parts_done


def pending_uploads(store: Store, bucket: str) -> list[Any]:
    return store.fs.call_s3("list_multipart_uploads", Bucket=bucket).get("Uploads", [])


class NoReadBack:
    """A read-back check that fails the test if check_upload reads the object back."""

    def __call__(self, chunk: bytes) -> None:
        raise AssertionError("check_upload read the object back")

    def finish(self) -> None:
        raise AssertionError("check_upload read the object back")


def test_large_file_goes_up_in_parts_several_at_once(limits, transport, s3_server, bucket, tmp_path, monkeypatch) -> None:
    source = random_file(tmp_path / "big", 5 * PART + 12345)  # 6 parts, the last short
    store = make_store(s3_server, bucket, transport)
    requests = Requests(store.fs, monkeypatch, hold=3, parts=6)

    store.put_file(source, "big.bin")

    assert requests.calls["create_multipart_upload"] == 1
    assert requests.calls["upload_part"] == 6
    assert requests.calls["complete_multipart_upload"] == 1
    assert requests.peak == 3  # the limit, reached and never passed
    with open(source, "rb") as f:
        assert store.read_bytes("big.bin", None) == f.read()
    info = store.backend.info(store.path("big.bin"))
    assert info["ETag"].strip('"').endswith("-6")
    assert pending_uploads(store, bucket) == []
    store.check_upload("big.bin", source, NoReadBack())


def test_small_file_is_one_put(limits, s3_server, bucket, tmp_path, monkeypatch) -> None:
    source = random_file(tmp_path / "small", 2 * PART - 1)
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs, monkeypatch)

    store.put_file(source, "small.bin")

    assert requests.calls["put_object"] == 1
    assert requests.calls["upload_part"] == 0
    store.check_upload("small.bin", source, NoReadBack())


def test_part_buffers_alive_never_exceed_the_budget(limits, transport, s3_server, bucket, tmp_path,
                                                     monkeypatch) -> None:
    """Through s3fs a part is read into memory when its turn comes and dropped when it
    is sent; presigned parts are sent from the file and hold no buffer at all."""
    multipart.configure(parts_in_flight=2)
    source = random_file(tmp_path / "big", 6 * PART)
    store = make_store(s3_server, bucket, transport)
    requests = Requests(store.fs, monkeypatch, hold=2, parts=6)
    buffers = Buffers(monkeypatch, requests)

    store.put_file(source, "big.bin")

    assert requests.peak == 2
    if transport == "s3fs":
        assert buffers.reads == 6  # each part read once, when its turn came
        assert buffers.peak == 2
    else:
        assert buffers.reads == 0


def test_the_budget_is_shared_by_concurrent_uploads(limits, transport, s3_server, bucket, tmp_path, monkeypatch) -> None:
    sources = [random_file(tmp_path / f"f{i}", 4 * PART, seed=i) for i in range(3)]
    store = make_store(s3_server, bucket, transport)
    requests = Requests(store.fs, monkeypatch, hold=3, parts=12)
    buffers = Buffers(monkeypatch, requests)
    errors: list[BaseException] = []

    def put(i: int) -> None:
        try:
            store.put_file(sources[i], f"f{i}.bin")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert errors == []
    assert requests.calls["upload_part"] == 12
    assert requests.peak == 3  # three files, twelve parts: three in flight at most
    assert buffers.peak <= 3 if transport == "s3fs" else buffers.reads == 0
    for i, source in enumerate(sources):
        with open(source, "rb") as f:
            assert store.read_bytes(f"f{i}.bin", None) == f.read()


def test_a_failure_mid_upload_aborts_it(limits, transport, s3_server, bucket, tmp_path, monkeypatch) -> None:
    source = random_file(tmp_path / "big", 6 * PART)
    store = make_store(s3_server, bucket, transport)

    def fail(method: str, number: int, attempt: int) -> BaseException | None:
        return client_error(403, "AccessDenied", "UploadPart") if number == 4 else None

    requests = Requests(store.fs, monkeypatch, fail=fail)

    with pytest.raises(AccessDeniedError, match=r"could not upload s3://mp-.*/ds/big\.bin: access denied"):
        store.put_file(source, "big.bin")

    assert requests.parts_done >= 1  # some parts had landed before the failure
    assert requests.calls["abort_multipart_upload"] == 1
    assert requests.in_flight_at_abort == 0  # no part still on the wire to land after it
    assert requests.calls["complete_multipart_upload"] == 0
    assert not store.exists("big.bin")
    assert pending_uploads(store, bucket) == []


def test_a_failed_completion_aborts_the_upload(limits, transport, s3_server, bucket, tmp_path, monkeypatch) -> None:
    source = random_file(tmp_path / "big", 3 * PART)
    store = make_store(s3_server, bucket, transport)

    def fail(method: str, number: int, attempt: int) -> BaseException | None:
        return client_error(403, "AccessDenied", "CompleteMultipartUpload") if method == "complete_multipart_upload" else None

    requests = Requests(store.fs, monkeypatch, fail=fail)
    with pytest.raises(AccessDeniedError):
        store.put_file(source, "big.bin")
    assert requests.calls["abort_multipart_upload"] == 1
    assert not store.exists("big.bin")
    assert pending_uploads(store, bucket) == []


def test_a_completion_whose_answer_was_lost_counts(limits, s3_server, bucket, tmp_path, monkeypatch) -> None:
    """Sent again, the completion finds no upload (it completed; S3 answers 404
    NoSuchUpload, moto would complete it again): the object there, with the ETag of our
    parts, is ours."""
    source = random_file(tmp_path / "big", 3 * PART)
    store = make_store(s3_server, bucket)

    def fail(method: str, number: int, n: int) -> BaseException | None:
        if method == "complete_multipart_upload" and n == 2:
            return client_error(404, "NoSuchUpload", "CompleteMultipartUpload")
        return None

    requests = Requests(store.fs, monkeypatch, fail=fail, lose=(("complete_multipart_upload", 1),))

    store.put_file(source, "big.bin")

    assert requests.calls["complete_multipart_upload"] == 2
    assert requests.calls["abort_multipart_upload"] == 0
    with open(source, "rb") as f:
        assert store.read_bytes("big.bin", None) == f.read()
    store.check_upload("big.bin", source, NoReadBack())


def test_a_part_is_sent_again_after_a_transient_error(limits, transport, s3_server, bucket, tmp_path, monkeypatch) -> None:
    source = random_file(tmp_path / "big", 4 * PART)
    store = make_store(s3_server, bucket, transport)

    def fail(method: str, number: int, attempt: int) -> BaseException | None:
        if number == 2 and attempt == 1:
            return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected)")
        if number == 3 and attempt == 1:
            return client_error(503, "SlowDown", "UploadPart")
        return None

    requests = Requests(store.fs, monkeypatch, fail=fail)
    store.put_file(source, "big.bin")

    assert requests.attempts == Counter({1: 1, 2: 2, 3: 2, 4: 1})  # only the failed parts again
    assert requests.calls["create_multipart_upload"] == 1  # not the whole upload again
    assert requests.calls["abort_multipart_upload"] == 0
    with open(source, "rb") as f:
        assert store.read_bytes("big.bin", None) == f.read()
    store.check_upload("big.bin", source, NoReadBack())


def test_a_store_refusing_presigned_parts_gets_them_through_s3fs(limits, s3_server, bucket, tmp_path,
                                                                   monkeypatch) -> None:
    source = random_file(tmp_path / "big", 4 * PART)
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs, monkeypatch)
    put = multipart._put_part  # the counting wrapper

    def refusing(fs: Any, url: str, *args: Any) -> str:
        put(fs, url, *args)  # counted, and sent: then answered as a store refusing it would
        raise client_error(403, "SignatureDoesNotMatch", "UploadPart")

    monkeypatch.setattr(multipart, "_put_part", refusing)
    store.put_file(source, "big.bin")

    assert refused(store.fs)  # presigned requests are off for this filesystem from now on
    assert requests.calls["upload_part"] >= 4 + 1  # at least one refused, then all four through s3fs
    with open(source, "rb") as f:
        assert store.read_bytes("big.bin", None) == f.read()
    store.check_upload("big.bin", source, NoReadBack())


def test_a_server_failing_uploads_leaves_nothing(limits, tmp_path) -> None:
    """The faulty S3 server answers every UploadPart 500: the parts' retries run out,
    the upload is aborted, and nothing remains."""
    source = random_file(tmp_path / "big", 3 * PART)
    with faulty_s3.running("faulty", read_timeout=30) as (server, options):
        store = Store("s3://faulty/ds", options, retry=roxxel.backends.RetryPolicy(max_attempts=1, base_delay=0.01))
        multipart._PART_ATTEMPTS, saved = 2, multipart._PART_ATTEMPTS
        try:
            server.configure(rate=1.0, kinds=["500"], methods=["PUT"])
            with pytest.raises(roxxel.errors.TransientStorageError, match=r"could not upload s3://faulty/ds/big\.bin"):
                store.put_file(source, "big.bin")
            assert server.counts()["injected"]["500"] >= 3
            server.configure()
            assert not store.exists("big.bin")
            assert pending_uploads(store, "faulty") == []
            # and the same store uploads once the server recovers, a transient 500 or two included
            server.configure(rate=1.0, kinds=["500"], methods=["PUT"], limit=2)
            store.put_file(source, "big.bin")
            with open(source, "rb") as f:
                assert store.read_bytes("big.bin", None) == f.read()
        finally:
            multipart._PART_ATTEMPTS = saved


def test_check_upload_refuses_another_multipart_object(limits, s3_server, bucket, tmp_path) -> None:
    source = random_file(tmp_path / "big", 3 * PART, seed=1)
    other = random_file(tmp_path / "other", 3 * PART, seed=2)  # same size, other bytes
    store = make_store(s3_server, bucket)
    store.put_file(source, "big.bin")
    actual = store.backend.info(store.path("big.bin"))["ETag"].strip('"')
    multipart._sent.clear()  # computed from the file, not remembered from the upload
    wanted = multipart.expected_etag(other, 3)

    with pytest.raises(IntegrityError) as caught:
        store.check_upload("big.bin", other, NoReadBack())

    message = str(caught.value)
    assert f"s3://{bucket}/ds/big.bin" in message
    assert f"multipart ETag {actual}, expected {wanted}" in message
    assert actual != wanted
    store.check_upload("big.bin", source, NoReadBack())  # and accepts the right file


def test_check_upload_reads_back_an_object_split_otherwise(limits, s3_server, bucket, tmp_path) -> None:
    """An object uploaded in parts of another size has an ETag this module cannot
    predict: the check reads it back instead of refusing it."""
    source = random_file(tmp_path / "big", 3 * PART)
    store = make_store(s3_server, bucket)
    multipart.configure(part_size=6 * MiB)  # 3 parts of 6, 6 and 3 MiB
    store.put_file(source, "big.bin")
    multipart._sent.clear()

    class ReadBack:
        def __init__(self) -> None:
            self.data = bytearray()
            self.finished = False

        def __call__(self, chunk: bytes) -> None:
            self.data += chunk

        def finish(self) -> None:
            self.finished = True

    multipart.configure(part_size=8 * MiB)  # 2 parts now, not the object's 3: read back
    check = ReadBack()
    store.check_upload("big.bin", source, check)
    with open(source, "rb") as f:
        assert check.finished and bytes(check.data) == f.read()


def test_writer_uploads_large_shards_in_parts(limits, s3_server, bucket, tmp_path) -> None:
    url = f"s3://{bucket}/written"
    records = [np.random.default_rng(i).bytes(512 * 1024) for i in range(64)]  # 32 MiB
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=s3_server.storage_options) as writer:
        writer.extend(records)
    store = Store(url, s3_server.storage_options)
    etags = [store.backend.info(store.path(uri))["ETag"] for uri in writer.manifest.shards.uris.tolist()]
    assert sum(e.strip('"').endswith("-3") for e in etags) >= 2  # the full shards went up in parts
    assert pending_uploads(store, bucket) == []
    with roxxel.open(url, storage_options=s3_server.storage_options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def mib_records(n: int, seed: int = 0) -> list[bytes]:
    return [np.random.default_rng(seed + i).bytes(MiB) for i in range(n)]


def flip(path: str, offset: int) -> None:
    """Flip one bit of the file's byte at ``offset``, its size unchanged."""
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 1]))


def shard_of(url: str) -> tuple[int, int]:
    """(shard index, part number) of a presigned UploadPart URL of a writer's shard."""
    parts = urllib.parse.urlsplit(url)
    name = parts.path.rsplit("/", 1)[-1]  # <generation>-<index>-<digest>.rox
    return int(name.split("-")[1]), int(urllib.parse.parse_qs(parts.query)["partNumber"][0])


def multipart_etag(data: bytes, part_size: int) -> str:
    digests = b"".join(hashlib.md5(data[i : i + part_size]).digest() for i in range(0, len(data), part_size))
    return f"{hashlib.md5(digests).hexdigest()}-{-(-len(data) // part_size)}"


@pytest.mark.parametrize(("transport", "compression"), [("presigned", None), ("s3fs", None), ("presigned", "zstd")])
def test_writer_hashes_each_part_once_while_packing(limits, transport, compression, s3_server, bucket, tmp_path,
                                                     monkeypatch) -> None:
    """The parts' MD5s come from staging, computed as the shard was packed (or, with
    zstd, as it was compressed): neither the upload nor the check after it hashes (or
    reads) the staged file again, and the objects' ETags are those of the bytes stored."""
    computed: list[str] = []
    md5_of, read_part = multipart._md5_of, multipart._read_part

    def counted_md5_of(*args: Any) -> bytes:
        computed.append("part sent")
        return md5_of(*args)

    def counted_read(fd: int, offset: int, length: int, md5: bytes | None = None) -> tuple[bytes, bytes]:
        if md5 is None:
            computed.append("part read")
        return read_part(fd, offset, length, md5)

    monkeypatch.setattr(multipart, "_md5_of", counted_md5_of)
    monkeypatch.setattr(multipart, "_read_part", counted_read)
    records = mib_records(24)  # shards of 11, 11 and 2 records of 1 MiB: 3, 3 and 1 part(s)
    store = make_store(s3_server, bucket, transport)
    with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store, compression=compression) as writer:
        writer.extend(records)

    assert computed == []
    shards = writer.manifest.shards.uris.tolist()
    for uri in shards[:2]:
        etag = store.backend.info(store.path(uri))["ETag"].strip('"')
        assert etag == multipart_etag(store.read_bytes(uri, None), PART)
    with roxxel.open(store.base_url, storage_options=s3_server.storage_options,
                     cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def test_a_staged_shard_changed_after_packing_is_never_published(limits, s3_server, bucket, monkeypatch) -> None:
    """The upload is checked against the bytes packed, not against the staged file as
    read later: a byte flipped in the file between packing and upload (same size) fails
    every attempt's check, and nothing is published."""
    real = roxxel.writer.Writer._put_checked

    def flipping(self: Any, path: str, shard: Any, uploaded: bool = False) -> None:
        if shard.stored_size >= 2 * PART:  # (a shard in parts: a single PUT's check is the store's)
            flip(path, 1000)
        real(self, path, shard, uploaded)

    monkeypatch.setattr(roxxel.writer.Writer, "_growing_key", lambda self, index: None)  # packed, then sent
    monkeypatch.setattr(roxxel.writer.Writer, "_put_checked", flipping)
    store = make_store(s3_server, bucket)
    message = r"s3://mp-.*/ds/shards/00000-000000-[0-9a-f]{12}\.rox: uploaded object has multipart ETag [0-9a-f]{32}-3, "
    writer = roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store)
    with pytest.raises(IntegrityError, match=message + r"expected [0-9a-f]{32}-3"), writer:
        writer.extend(mib_records(11))
    assert not store.exists("manifest.json")


def test_the_next_shards_parts_start_while_the_last_parts_of_the_previous_are_in_flight(
        limits, s3_server, bucket, monkeypatch) -> None:
    """The part budget stays full across shard boundaries: the last part of shard 0 is
    held on the wire until a part of shard 1 has started (if shards went up one after
    the other, none would, and the hold would run out)."""
    started_next = threading.Event()
    overlapped: list[bool] = []
    real = multipart._put_part

    def put(fs: Any, url: str, *args: Any) -> Any:
        shard, number = shard_of(url)
        if shard == 1:
            started_next.set()
        if (shard, number) == (0, 3):  # 11 MiB in parts of 5: the third is the last
            overlapped.append(started_next.wait(30))
        return real(fs, url, *args)

    monkeypatch.setattr(multipart, "_put_part", put)
    store = make_store(s3_server, bucket)
    with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
        writer.extend(mib_records(22))
    assert overlapped == [True]
    assert len(writer.manifest.shards) == 2


def test_part_threads_and_connections_stay_from_one_shard_to_the_next(limits, s3_server, bucket,
                                                                      monkeypatch) -> None:
    """A writer holds the part threads (each with its kept-alive connection) from its
    first shard to its close, even when its shards go up one after the other."""
    pools: list[int] = []
    real = multipart._put_part

    def put(fs: Any, url: str, *args: Any) -> Any:
        pools.append(id(multipart._THREADS._pools[3]))  # the threads of a budget of 3 parts
        return real(fs, url, *args)

    monkeypatch.setattr(multipart, "_put_part", put)
    store = make_store(s3_server, bucket)
    with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store, upload_workers=1,
                       max_staged_shards=1) as writer:
        writer.extend(mib_records(33))  # 3 shards in parts, uploaded one at a time
    assert len(writer.manifest.shards) == 3 and len(pools) == 9
    assert len(set(pools)) == 1
    assert multipart._THREADS._pools == {}  # released at the close


def test_a_trace_shows_where_a_writers_time_goes(limits, s3_server, bucket, tmp_path) -> None:
    """With tracing on, the writer records its set-up, each shard's packing, upload,
    put and check, each S3 part (its MD5 from the packing), and the publish."""
    import json

    from roxxel import trace

    trace.start(tmp_path / "write.json")
    try:
        store = make_store(s3_server, bucket)
        with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
            writer.extend(mib_records(13))  # a shard of 3 parts, and one of 2 MiB
    finally:
        path = trace.stop()
    assert path is not None
    with open(path) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    names = Counter(e["name"] for e in events)
    assert names["writer set-up"] == 1 and names["publish"] == 1
    assert names["pack shard"] == names["upload shard"] == names["put"] == names["check"] == 2
    # the shard in parts is checked by its completion's answer; the small one, by a request
    assert sorted(e.get("args", {}).get("by", "") for e in events if e["name"] == "check") == ["", "the upload's answer"]
    parts = [e for e in events if e["name"] == "upload part"]
    assert len(parts) == 3 and all(e["args"]["md5_from_packing"] for e in parts)
    assert sum(e["args"]["bytes"] for e in parts) == writer.manifest.shards[0].stored_size
