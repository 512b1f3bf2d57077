"""Parallel multipart uploads to S3 (roxxel.backends.multipart), against moto on loopback.

Concurrency and memory are observed by counting, never by timing: a wrapper around the
filesystem's ``_call_s3`` counts the ``UploadPart`` requests in flight (and can hold the
first ones until several are in flight, so a sequential upload could not pass), and a
wrapper around the part reader counts the part buffers alive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pytest

import roxxel
from roxxel.backends import multipart
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
    yield
    multipart.configure(**dataclasses.asdict(previous))
    multipart._sent.clear()


@pytest.fixture
def bucket(s3_server) -> str:
    """A bucket of its own, so its list of pending multipart uploads is this test's."""
    name = f"mp-{uuid.uuid4().hex[:12]}"
    s3_server.create_bucket(name)
    return name


def make_store(server: Any, bucket: str, **policy: Any) -> Store:
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **server.storage_options)
    kwargs = {"retry": roxxel.backends.RetryPolicy(**policy)} if policy else {}
    return Store(f"s3://{bucket}/ds", fs=fs, **kwargs)


def random_file(path: Any, size: int, seed: int = 0) -> str:
    path = str(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).bytes(size))
    return path


class Requests:
    """Counts the S3 requests of one filesystem and the ``UploadPart`` requests in
    flight. With ``hold=k``, each ``UploadPart`` waits until ``k`` are in flight (or
    until no more can start: ``parts``), so the peak is ``k`` only if the upload really
    sends ``k`` parts at once. ``fail(method, number, attempt)`` may return an exception
    to raise instead of sending a request."""

    def __init__(self, fs: Any, hold: int = 0, parts: int = 0, fail: Any = None) -> None:
        self.calls: Counter[str] = Counter()
        self.attempts: Counter[int] = Counter()  # UploadPart requests per part number
        self.in_flight = self.peak = self.parts_done = 0
        self.hold, self.parts, self.fail = hold, parts, fail
        self._full: asyncio.Event | None = None
        original = fs._call_s3

        async def call(method: str, *args: Any, **kwargs: Any) -> Any:
            self.calls[method] += 1
            if method != "upload_part":
                error = self.fail and self.fail(method, 0, self.calls[method])
                if error is not None:
                    raise error
                return await original(method, *args, **kwargs)
            number = kwargs["PartNumber"]
            self.attempts[number] += 1
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            try:
                await self._wait_for_company()
                error = self.fail and self.fail(method, number, self.attempts[number])
                if error is not None:
                    raise error
                result = await original(method, *args, **kwargs)
                self.parts_done += 1
                return result
            finally:
                self.in_flight -= 1

        fs._call_s3 = call

    async def _wait_for_company(self) -> None:
        if not self.hold:
            return
        if self._full is None:
            self._full = asyncio.Event()
        if self.in_flight >= min(self.hold, self.parts - self.parts_done):
            self._full.set()
        # A sequential upload never fills the group: it goes on after the timeout, and
        # the test fails on the peak it reached, not on any time.
        try:
            await asyncio.wait_for(self._full.wait(), timeout=10)
        except asyncio.TimeoutError:
            pass


class Buffers:
    """Counts part buffers alive: read (by multipart._read_part) and not yet sent."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, requests: Requests) -> None:
        self.reads = self.peak = 0
        self._lock = threading.Lock()
        self._requests = requests
        read = multipart._read_part

        def counted(fd: int, offset: int, length: int) -> tuple[bytes, bytes]:
            result = read(fd, offset, length)
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


def test_large_file_goes_up_in_parts_several_at_once(limits, s3_server, bucket, tmp_path) -> None:
    source = random_file(tmp_path / "big", 5 * PART + 12345)  # 6 parts, the last short
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs, hold=3, parts=6)

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


def test_small_file_is_one_put(limits, s3_server, bucket, tmp_path) -> None:
    source = random_file(tmp_path / "small", 2 * PART - 1)
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs)

    store.put_file(source, "small.bin")

    assert requests.calls["put_object"] == 1
    assert requests.calls["upload_part"] == 0
    store.check_upload("small.bin", source, NoReadBack())


def test_part_buffers_alive_never_exceed_the_budget(limits, s3_server, bucket, tmp_path, monkeypatch) -> None:
    multipart.configure(parts_in_flight=2)
    source = random_file(tmp_path / "big", 6 * PART)
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs, hold=2, parts=6)
    buffers = Buffers(monkeypatch, requests)

    store.put_file(source, "big.bin")

    assert buffers.reads == 6  # each part read once, when its turn came
    assert buffers.peak == 2
    assert requests.peak == 2


def test_the_budget_is_shared_by_concurrent_uploads(limits, s3_server, bucket, tmp_path, monkeypatch) -> None:
    sources = [random_file(tmp_path / f"f{i}", 4 * PART, seed=i) for i in range(3)]
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs, hold=3, parts=12)
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
    assert buffers.peak <= 3
    for i, source in enumerate(sources):
        with open(source, "rb") as f:
            assert store.read_bytes(f"f{i}.bin", None) == f.read()


def test_a_failure_mid_upload_aborts_it(limits, s3_server, bucket, tmp_path) -> None:
    source = random_file(tmp_path / "big", 6 * PART)
    store = make_store(s3_server, bucket)

    def fail(method: str, number: int, attempt: int) -> BaseException | None:
        return client_error(403, "AccessDenied", "UploadPart") if number == 4 else None

    requests = Requests(store.fs, fail=fail)

    with pytest.raises(AccessDeniedError, match=r"could not upload s3://mp-.*/ds/big\.bin: access denied"):
        store.put_file(source, "big.bin")

    assert requests.parts_done >= 1  # some parts had landed before the failure
    assert requests.calls["abort_multipart_upload"] == 1
    assert requests.calls["complete_multipart_upload"] == 0
    assert not store.exists("big.bin")
    assert pending_uploads(store, bucket) == []


def test_a_failed_completion_aborts_the_upload(limits, s3_server, bucket, tmp_path) -> None:
    source = random_file(tmp_path / "big", 3 * PART)
    store = make_store(s3_server, bucket)

    def fail(method: str, number: int, attempt: int) -> BaseException | None:
        return client_error(403, "AccessDenied", "CompleteMultipartUpload") if method == "complete_multipart_upload" else None

    requests = Requests(store.fs, fail=fail)
    with pytest.raises(AccessDeniedError):
        store.put_file(source, "big.bin")
    assert requests.calls["abort_multipart_upload"] == 1
    assert not store.exists("big.bin")
    assert pending_uploads(store, bucket) == []


def test_a_part_is_sent_again_after_a_transient_error(limits, s3_server, bucket, tmp_path) -> None:
    source = random_file(tmp_path / "big", 4 * PART)
    store = make_store(s3_server, bucket)

    def fail(method: str, number: int, attempt: int) -> BaseException | None:
        if number == 2 and attempt == 1:
            return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected)")
        if number == 3 and attempt == 1:
            return client_error(503, "SlowDown", "UploadPart")
        return None

    requests = Requests(store.fs, fail=fail)
    store.put_file(source, "big.bin")

    assert requests.attempts == Counter({1: 1, 2: 2, 3: 2, 4: 1})  # only the failed parts again
    assert requests.calls["create_multipart_upload"] == 1  # not the whole upload again
    assert requests.calls["abort_multipart_upload"] == 0
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
