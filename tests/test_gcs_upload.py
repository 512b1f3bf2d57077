"""Parallel composite uploads to GCS (roxxel.backends.gcs_upload), against fake-gcs-server
(and, once, gcp-storage-emulator) on loopback.

Concurrency is observed by counting, never by timing: a wrapper around the upload's
plain requests counts the part uploads in flight, and can hold the first ones until
several are in flight, so a sequential upload could not pass.
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import multiprocessing
import re
import threading
import tracemalloc
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pytest

import roxxel
from roxxel.backends import gcs_upload, multipart
from roxxel.backends.errors import HTTPStatusError
from roxxel.backends.gcs import GCSBackend, refused
from roxxel.backends.store import Store
from roxxel.errors import AccessDeniedError, IntegrityError
from tests import servers

MiB = 2**20
PART = 5 * MiB


@pytest.fixture
def limits() -> Iterator[None]:
    """Parts of 5 MiB, 3 in flight, for files from 10 MiB; the defaults restored after."""
    previous = multipart.configure(part_size=PART, parts_in_flight=3, threshold=2 * PART)
    yield
    multipart.configure(**dataclasses.asdict(previous))


def make_store(location: Any) -> Store:
    """A store on a filesystem of its own (what one test turns off stays in that test)."""
    url, options = location
    return Store(url, fs=fsspec.filesystem("gs", skip_instance_cache=True, **options))


def random_file(path: Any, size: int, seed: int = 0) -> str:
    path = str(path)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(seed).bytes(size))
    return path


def left_objects(store: Store) -> list[str]:
    """Every object under the store's prefix, hidden ones included."""
    store.fs.invalidate_cache()
    return sorted(p.rsplit("/", 1)[-1] for p in store.fs.find(store.root, withdirs=False))


def same_bytes(store: Store, key: str, source: str) -> bool:
    with open(source, "rb") as f:
        return store.read_bytes(key, None) == f.read()


class Requests:
    """Counts the upload's plain requests (part uploads, deletions) and composes, and the
    part uploads in flight. With ``hold=k`` each part waits until ``k`` are in flight (or
    no more can start: ``parts``), so the peak is ``k`` only if ``k`` go at once.
    ``fail(number, attempt)`` may return an exception to raise instead of sending part
    ``number``; ``answer(number, attempt)`` may return a (status, body) to answer with."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, hold: int = 0, parts: int = 0,
                 fail: Any = None, answer: Any = None) -> None:
        self.calls: Counter[str] = Counter()
        self.attempts: Counter[int] = Counter()
        self.in_flight = self.peak = self.parts_done = 0
        self.in_flight_at_cleanup: int | None = None
        self.hold, self.parts, self.fail, self.answer = hold, parts, fail, answer
        self._lock = threading.Lock()
        self._full = threading.Event()
        request, compose = gcs_upload._Job.request, gcs_upload._Job.compose

        def counted(job: Any, method: str, target: str, body: Any, length: int, what: str) -> Any:
            if method != "POST":
                with self._lock:
                    self.calls[method] += 1
                    if self.in_flight_at_cleanup is None:
                        self.in_flight_at_cleanup = self.in_flight
                return request(job, method, target, body, length, what)
            name = urllib.parse.parse_qs(urllib.parse.urlsplit(target).query)["name"][0]
            number = int(name.rsplit("-", 1)[1])
            with self._lock:
                self.calls["part"] += 1
                self.attempts[number] += 1
                attempt = self.attempts[number]
                self.in_flight += 1
                self.peak = max(self.peak, self.in_flight)
                full = self.in_flight >= min(self.hold, self.parts - self.parts_done)
            ok = False
            try:
                if self.hold:  # a sequential upload never fills the group: it goes on after
                    if full:  # the timeout, and fails on the peak, not on time
                        self._full.set()
                    self._full.wait(10)
                error = self.fail and self.fail(number, attempt)
                if error is not None:
                    raise error
                canned = self.answer and self.answer(number, attempt)
                result = canned or request(job, method, target, body, length, what)
                ok = True
                return result
            finally:
                with self._lock:
                    self.in_flight -= 1
                    self.parts_done += ok

        def composed(job: Any, name: str, sources: list[str], what: str) -> Any:
            with self._lock:
                self.calls["compose"] += 1
            return compose(job, name, sources, what)

        monkeypatch.setattr(gcs_upload._Job, "request", counted)
        monkeypatch.setattr(gcs_upload._Job, "compose", composed)


class NoReadBack:
    """A read-back check that fails the test if check_upload reads the object back."""

    def __call__(self, chunk: bytes) -> None:
        raise AssertionError("check_upload read the object back")

    def finish(self) -> None:
        raise AssertionError("check_upload read the object back")


class ReadBack:
    """A read-back check that keeps what it is given."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.finished = False

    def __call__(self, chunk: bytes) -> None:
        self.data += chunk

    def finish(self) -> None:
        self.finished = True


def part_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("roxxel-gcs-part")]


def test_crc32c_combine_is_the_crc32c_of_the_concatenation() -> None:
    import google_crc32c

    rng = np.random.default_rng(7)
    for _ in range(20):
        a, b = rng.bytes(int(rng.integers(0, 5000))), rng.bytes(int(rng.integers(0, 5000)))
        combined = gcs_upload.crc32c_combine(google_crc32c.value(a), google_crc32c.value(b), len(b))
        assert combined == google_crc32c.value(a + b)


def test_parts_grow_so_that_two_levels_of_compose_take_any_file() -> None:
    """GCS composes at most 32 objects a call (and 1,024 components in all)."""
    assert gcs_upload.part_size_for(100 * MiB, 8 * MiB) == 8 * MiB
    for size in (8 * 1024 * MiB, 8 * 1024 * MiB + 1, 5 * 2**40):
        part = gcs_upload.part_size_for(size, 8 * MiB)
        assert part % MiB == 0 and -(-size // part) <= 32 * 32


def test_large_file_goes_up_in_parts_several_at_once(limits, new_location, tmp_path, monkeypatch) -> None:
    source = random_file(tmp_path / "big", 5 * PART + 12345)  # 6 parts, the last short
    store = make_store(new_location("gcs"))
    requests = Requests(monkeypatch, hold=3, parts=6)

    assert store.put_file(source, "big.bin") is True  # confirmed by the compose's CRC32C

    assert requests.calls["part"] == 6
    assert requests.calls["compose"] == 1
    assert requests.peak == 3  # the limit, reached and never passed
    assert requests.calls["DELETE"] == 6  # every part, after the compose
    assert same_bytes(store, "big.bin", source)
    assert left_objects(store) == ["big.bin"]  # no temporary part left
    assert part_threads() == []  # the part threads ended with the last upload
    store.check_upload("big.bin", source, NoReadBack())


def test_small_file_is_one_upload_through_gcsfs(limits, new_location, tmp_path, monkeypatch) -> None:
    source = random_file(tmp_path / "small", 2 * PART - 1)
    store = make_store(new_location("gcs"))
    requests = Requests(monkeypatch)

    assert store.put_file(source, "small.bin") is False  # (gcsfs's upload: checked after)

    assert requests.calls == Counter()
    assert same_bytes(store, "small.bin", source)
    store.check_upload("small.bin", source, NoReadBack())


def test_more_parts_than_one_compose_takes_are_composed_in_two_levels(limits, new_location, tmp_path,
                                                                       monkeypatch) -> None:
    monkeypatch.setattr(gcs_upload, "_COMPOSE_MAX", 2)  # 5 parts: 3 intermediates, then 1
    source = random_file(tmp_path / "big", 4 * PART + 1)
    store = make_store(new_location("gcs"))
    requests = Requests(monkeypatch)

    store.put_file(source, "big.bin")

    assert requests.calls["part"] == 5
    assert requests.calls["compose"] == 3 + 1
    assert requests.calls["DELETE"] == 5 + 3
    assert same_bytes(store, "big.bin", source)
    assert left_objects(store) == ["big.bin"]
    store.check_upload("big.bin", source, NoReadBack())


def test_the_budget_is_shared_by_concurrent_uploads(limits, new_location, tmp_path, monkeypatch) -> None:
    sources = [random_file(tmp_path / f"f{i}", 3 * PART, seed=i) for i in range(3)]
    store = make_store(new_location("gcs"))
    requests = Requests(monkeypatch, hold=3, parts=9)
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
    assert requests.calls["part"] == 9
    assert requests.peak == 3  # three files, nine parts: three in flight at most
    for i, source in enumerate(sources):
        assert same_bytes(store, f"f{i}.bin", source)
    assert left_objects(store) == ["f0.bin", "f1.bin", "f2.bin"]
    assert part_threads() == []


def test_no_part_is_held_in_memory(limits, new_location, tmp_path) -> None:
    """Parts go from the file by sendfile: the upload allocates far less than one part."""
    source = random_file(tmp_path / "big", 6 * PART)
    store = make_store(new_location("gcs"))
    store.exists("warm-up")  # the client is made before measuring
    tracemalloc.start()
    try:
        store.put_file(source, "big.bin")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PART // 2, f"{peak} bytes allocated at the peak"
    assert same_bytes(store, "big.bin", source)


def test_a_failed_part_leaves_no_object_and_no_parts(limits, new_location, tmp_path, monkeypatch) -> None:
    source = random_file(tmp_path / "big", 6 * PART)
    store = make_store(new_location("gcs"))

    def fail(number: int, attempt: int) -> BaseException | None:
        return HTTPStatusError(403, f"part {number} (injected)") if number == 4 else None

    requests = Requests(monkeypatch, fail=fail)

    with pytest.raises(AccessDeniedError, match=r"could not upload gs://roxxel-tests/t\w+/ds/big\.bin: access denied"):
        store.put_file(source, "big.bin")

    assert requests.parts_done >= 1  # some parts had landed before the failure
    assert requests.in_flight_at_cleanup == 0  # no part still on the wire to land after it
    assert requests.calls["compose"] == 0
    assert left_objects(store) == []  # neither the object nor a temporary part
    assert part_threads() == []


def test_a_part_is_sent_again_after_a_transient_error_or_damage(limits, new_location, tmp_path,
                                                                monkeypatch) -> None:
    """A reset connection, a 503, and a part whose CRC32C (as the store computed it) is
    not the file's: each of those parts is sent again, and only those."""
    source = random_file(tmp_path / "big", 4 * PART)
    store = make_store(new_location("gcs"))

    def fail(number: int, attempt: int) -> BaseException | None:
        if number == 1 and attempt == 1:
            return ConnectionResetError(errno.ECONNRESET, "Connection reset by peer (injected)")
        if number == 2 and attempt == 1:
            return HTTPStatusError(503, "part 2 (injected)")
        return None

    requests = Requests(monkeypatch, fail=fail)
    crc_of = gcs_upload._crc32c_of
    damaged: list[int] = []

    def local_crc(fd: int, offset: int, length: int) -> int:  # part 3's bytes changed on the way, once
        crc = crc_of(fd, offset, length)
        if offset == 2 * PART and not damaged:
            damaged.append(offset)
            return crc ^ 1
        return crc

    monkeypatch.setattr(gcs_upload, "_crc32c_of", local_crc)
    store.put_file(source, "big.bin")

    assert requests.attempts == Counter({1: 2, 2: 2, 3: 2, 4: 1})
    assert requests.calls["compose"] == 1
    assert same_bytes(store, "big.bin", source)
    assert left_objects(store) == ["big.bin"]


def test_a_composite_without_md5_is_checked_by_its_crc32c(limits, new_location, tmp_path, monkeypatch) -> None:
    """Real GCS gives a composite object no md5Hash (the emulators do): the check uses
    the CRC32C this process verified for that generation, and reads nothing back; it
    refuses another file, and reads back an object it did not upload."""
    source = random_file(tmp_path / "big", 3 * PART, seed=1)
    other = random_file(tmp_path / "other", 3 * PART, seed=2)  # same size, other bytes
    store = make_store(new_location("gcs"))
    info = type(store.backend).info

    def without_md5(backend: Any, path: str) -> dict[str, Any]:
        return {k: v for k, v in info(backend, path).items() if k != "md5Hash"}

    monkeypatch.setattr(type(store.backend), "info", without_md5)
    store.put_file(source, "big.bin")
    assert "md5Hash" not in store.backend.info(store.path("big.bin"))

    store.check_upload("big.bin", source, NoReadBack())
    with pytest.raises(IntegrityError, match=r"gs://roxxel-tests/t\w+/ds/big\.bin: uploaded object has md5 "):
        store.check_upload("big.bin", other, NoReadBack())

    gcs_upload._verified.clear()  # as if another process had uploaded it
    check = ReadBack()
    store.check_upload("big.bin", source, check)
    with open(source, "rb") as f:
        assert check.finished and bytes(check.data) == f.read()


def test_a_store_refusing_plain_uploads_gets_the_file_through_gcsfs(limits, new_location, tmp_path,
                                                                    monkeypatch) -> None:
    source = random_file(tmp_path / "big", 3 * PART)
    store = make_store(new_location("gcs"))
    requests = Requests(monkeypatch, answer=lambda number, attempt: (302, b"moved"))

    store.put_file(source, "big.bin")

    assert refused(store.fs)  # plain requests are off for this filesystem from now on
    assert requests.calls["compose"] == 0
    assert same_bytes(store, "big.bin", source)
    assert left_objects(store) == ["big.bin"]
    store.check_upload("big.bin", source, NoReadBack())


def _upload_in_child(url: str, options: dict[str, Any], source: str, queue: Any) -> None:
    try:
        store = Store(url, fs=fsspec.filesystem("gs", skip_instance_cache=True, **options))
        store.put_file(source, "child.bin")
        with open(source, "rb") as f:
            queue.put(store.read_bytes("child.bin", None) == f.read())
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put(repr(exc))


def test_a_forked_child_uploads_in_parts(limits, new_location, tmp_path) -> None:
    location = new_location("gcs")
    store = make_store(location)
    source = random_file(tmp_path / "big", 3 * PART)
    store.put_file(source, "parent.bin")  # the parent's pool and connections existed
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_upload_in_child, args=(location.url, location.storage_options, source, queue))
    child.start()
    result = queue.get(timeout=120)
    child.join(30)
    assert result is True
    assert child.exitcode == 0
    assert left_objects(store) == ["child.bin", "parent.bin"]


def test_the_other_emulator_takes_composite_uploads_too(limits, tmp_path, monkeypatch) -> None:
    """gcp-storage-emulator: another implementation of the same JSON API."""
    source = random_file(tmp_path / "big", 3 * PART + 7)
    with servers.gcs_emulator_server() as server:
        server.create_bucket("emu")
        store = Store("gs://emu/ds", fs=fsspec.filesystem("gs", skip_instance_cache=True, **server.storage_options))
        requests = Requests(monkeypatch, hold=3, parts=4)
        store.put_file(source, "big.bin")
        assert requests.calls["part"] == 4 and requests.peak == 3
        assert same_bytes(store, "big.bin", source)
        assert left_objects(store) == ["big.bin"]
        store.check_upload("big.bin", source, NoReadBack())


def test_writer_uploads_large_shards_as_composites(limits, new_location, tmp_path, monkeypatch) -> None:
    url, options = new_location("gcs")
    requests = Requests(monkeypatch)
    records = [np.random.default_rng(i).bytes(512 * 1024) for i in range(64)]  # 32 MiB
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options) as writer:
        writer.extend(records)
    assert requests.calls["compose"] >= 2  # the full shards went up in parts
    store = Store(url, options)
    assert not [n for n in left_objects(store) if n.startswith(gcs_upload.PART_PREFIX)]
    with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def test_a_writer_keeps_the_part_threads_from_one_shard_to_the_next(limits, new_location, monkeypatch) -> None:
    """As on S3: the part threads (each with its kept-alive connection) stay from a
    writer's first shard to its close, even when its shards go up one after the other."""
    pools: list[int] = []
    request = gcs_upload._Job.request

    def recording(job: Any, method: str, target: str, body: Any, length: int, what: str) -> Any:
        if method == "POST":
            pools.append(id(gcs_upload._THREADS._pools[3]))  # the threads of a budget of 3 parts
        return request(job, method, target, body, length, what)

    monkeypatch.setattr(gcs_upload._Job, "request", recording)
    url, options = new_location("gcs")
    records = [np.random.default_rng(i).bytes(MiB) for i in range(33)]
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options, upload_workers=1,
                       max_staged_shards=1) as writer:
        writer.extend(records)  # 3 shards in parts, uploaded one at a time
    assert len(writer.manifest.shards) == 3 and len(pools) >= 6
    assert len(set(pools)) == 1
    assert gcs_upload._THREADS._pools == {}  # released at the close


def test_parts_a_store_refuses_to_delete_plainly_are_deleted_through_gcsfs(limits, new_location, tmp_path,
                                                                           monkeypatch, caplog) -> None:
    """The upload fails after its parts landed, and the store answers the clean-up's
    plain DELETEs in a way they cannot use (a redirect): gcsfs deletes the parts, and
    nothing is left behind or logged as left."""
    source = random_file(tmp_path / "big", 6 * PART)
    store = make_store(new_location("gcs"))
    request = gcs_upload._Job.request
    deletes: list[str] = []

    def refusing_deletes(job: Any, method: str, target: str, body: Any, length: int, what: str) -> Any:
        if method == "DELETE":
            deletes.append(target)
            return 302, b"moved"
        return request(job, method, target, body, length, what)

    def failing_compose(job: Any, name: str, sources: list[str], what: str) -> Any:
        raise HTTPStatusError(403, f"{what} (injected)")

    monkeypatch.setattr(gcs_upload._Job, "request", refusing_deletes)
    monkeypatch.setattr(gcs_upload._Job, "compose", failing_compose)
    with caplog.at_level(logging.WARNING, logger="roxxel"), pytest.raises(AccessDeniedError):
        store.put_file(source, "big.bin")
    assert len(deletes) == 6  # every part had begun (and landed) before the compose
    assert left_objects(store) == []  # gcsfs deleted them
    assert "could not delete" not in caplog.text


# -- shards that go up as they are packed -------------------------------------------------


def assert_published_whole(url: str, options: dict[str, Any], records: list[bytes], tmp_path: Any) -> None:
    """No temporary part is left under ``url``, and its dataset reads back as ``records``."""
    assert not [n for n in left_objects(Store(url, options)) if n.startswith(gcs_upload.PART_PREFIX)]
    with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def part_sent(monkeypatch: pytest.MonkeyPatch, shard: int, number: int) -> threading.Event:
    """An event set when part ``number`` of the writer's shard ``shard`` begins to go up."""
    started = threading.Event()
    real = gcs_upload._Job.send_part

    def send(job: Any, part: Any) -> Any:
        if int(job.key.rsplit("/", 1)[-1].split("-")[1]) == shard and part.number == number:
            started.set()
        return real(job, part)

    monkeypatch.setattr(gcs_upload._Job, "send_part", send)
    return started


def held_until(event: threading.Event, records: list[bytes], hold_at: int, waited: list[bool]) -> Iterator[bytes]:
    for i, record in enumerate(records):
        if i == hold_at:
            waited.append(event.wait(30))
        yield record


def test_a_large_shards_parts_go_up_before_it_is_packed(limits, new_location, tmp_path, monkeypatch) -> None:
    """Shard 0's 11th record (of 1 MiB) is given only once its first part (5 MiB) is on
    its way: its parts go up as it is packed; it is composed under a name made before
    its digest was known, checked by CRC32C (no HEAD after), leaves no part behind, and
    reads back. The next shard ends under the threshold: one upload, through gcsfs."""
    url, options = new_location("gcs")
    started, waited = part_sent(monkeypatch, 0, 1), []
    requests = Requests(monkeypatch)
    asked: list[str] = []
    real_info = GCSBackend.info

    def info(self: Any, path: str) -> Any:
        asked.append(path)
        return real_info(self, path)

    monkeypatch.setattr(GCSBackend, "info", info)
    records = [np.random.default_rng(i).bytes(MiB) for i in range(18)]  # a shard of 3 parts, and one of 7 MiB
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options) as writer:
        writer.extend(held_until(started, records, hold_at=10, waited=waited))
    assert waited == [True]
    first, second = writer.manifest.shards.uris.tolist()
    assert re.fullmatch(r"shards/00000-000000-[0-9a-f]{12}\.rox", first)
    assert requests.calls["part"] == 3 and requests.calls["compose"] == 1
    assert not [p for p in asked if p.endswith(first)]  # checked by the compose's answer: no request after
    assert [p for p in asked if p.endswith(second)]  # (gcsfs's upload of the small one is checked after)
    assert_published_whole(url, options, records, tmp_path)


def test_without_c_crc32c_gcs_shards_go_up_once_packed_through_gcsfs(limits, new_location, tmp_path,
                                                                     monkeypatch) -> None:
    """Without google_crc32c's C code nothing can check composite parts: the writer
    neither names shards before their digest nor sends parts while packing; each shard
    goes up once packed, through gcsfs, and is published."""
    url, options = new_location("gcs")
    monkeypatch.setattr(gcs_upload, "c_crc32c", lambda: None)
    requests = Requests(monkeypatch)
    records = [np.random.default_rng(i).bytes(MiB) for i in range(11)]
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options) as writer:
        writer.extend(records)
    (uri,) = writer.manifest.shards.uris.tolist()
    assert uri[-16:-4] == writer.manifest.shards[0].checksum.split(":")[1][:12]  # named by its digest
    assert requests.calls == Counter()
    assert_published_whole(url, options, records, tmp_path)


def test_a_part_changed_in_the_staged_file_before_it_went_up_is_never_published(limits, new_location,
                                                                               monkeypatch) -> None:
    """A part's CRC32C is the one its bytes had when they were packed: a byte flipped in
    the staged file before the part is sent (GCS then holds, and answers, the flipped
    one) fails the upload, and nothing is published or left behind."""
    url, options = new_location("gcs")
    real = gcs_upload._Job.send_part

    def flipping(job: Any, part: Any) -> Any:
        if part.number == 2:
            with open(job.local_path, "r+b") as f:
                f.seek(part.offset + 7)
                byte = f.read(1)[0]
                f.seek(part.offset + 7)
                f.write(bytes([byte ^ 1]))
        return real(job, part)

    monkeypatch.setattr(gcs_upload._Job, "send_part", flipping)
    records = [np.random.default_rng(i).bytes(MiB) for i in range(11)]
    with pytest.raises(IntegrityError, match=r"part 2 went up with crc32c .*, but its bytes had .* when they "
                                             r"were packed: the staged file changed"):
        with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options) as writer:
            writer.extend(records)
    store = Store(url, options)
    assert not store.exists("manifest.json")
    assert not [n for n in left_objects(store) if n.startswith(gcs_upload.PART_PREFIX)]


def test_a_writer_aborted_mid_shard_leaves_no_gcs_part_behind(limits, new_location, monkeypatch) -> None:
    """An error in the records once a part of the shard being packed is up: its parts
    are deleted, nothing is published."""
    url, options = new_location("gcs")
    started, waited = part_sent(monkeypatch, 0, 1), []

    def failing() -> Iterator[bytes]:
        for i in range(12):
            if i == 10:  # (the upload begins at 10 MiB, the threshold)
                waited.append(started.wait(30))
                raise ValueError("a bad record")
            yield np.random.default_rng(i).bytes(MiB)

    with pytest.raises(ValueError, match="a bad record"):
        with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options) as writer:
            writer.extend(failing())
    assert waited == [True]
    store = Store(url, options)
    assert not store.exists("manifest.json")
    assert not [n for n in left_objects(store) if n.startswith(gcs_upload.PART_PREFIX)]


def test_a_store_refusing_plain_part_uploads_gets_the_finished_shard_through_gcsfs(limits, new_location, tmp_path,
                                                                                     monkeypatch, caplog) -> None:
    """The store answers the first part's plain upload in a way it cannot use (a
    redirect): the shard goes up once finished, through gcsfs, and is published; the
    writer says why."""
    caplog.set_level(logging.INFO, logger="roxxel.writer")
    url, options = new_location("gcs")
    options = {**options, "skip_instance_cache": True}  # (the refusal stays with this test's filesystem)
    requests = Requests(monkeypatch, answer=lambda number, attempt: (302, b"moved"))
    records = [np.random.default_rng(i).bytes(MiB) for i in range(11)]
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options) as writer:
        writer.extend(records)
    assert requests.calls["compose"] == 0 and requests.calls["part"] >= 1
    assert re.search(r"shards/00000-000000-[0-9a-f]{12}\.rox goes up again from the finished file: gs://.*: the "
                     r"store refused a plain request; it goes up once finished", caplog.text)
    assert_published_whole(url, options, records, tmp_path)


def test_a_growing_gcs_upload_needs_the_packed_crc32cs() -> None:
    """Without the CRC32C of each part as packed, nothing can vouch for the parts: the
    upload refuses to go on (a writer always hands them over)."""
    job = gcs_upload._Job(None, "b", "shards/x.rox", "/nonexistent", None, "t", gcs_upload.Plain("http://h", lambda headers: None, lambda: None))
    with pytest.raises(TypeError, match=r"gs://b/shards/x\.rox: the feed was finished without the CRC32C of each "
                                        r"of its 2 parts"):
        gcs_upload._check_packed(job, [1, 2], ())
    with pytest.raises(TypeError, match="without the CRC32C of each of its 2 parts"):
        gcs_upload._check_packed(job, [1, 2], (b"md5-1", b"md5-2"))  # (MD5s are not CRC32Cs)
    gcs_upload._check_packed(job, [1, 2], (1, 2))


def test_a_writer_from_storage_options_sends_gcs_parts_before_gcsfs_is_made(limits, new_location, tmp_path,
                                                                           monkeypatch) -> None:
    """A dataset written from plain storage options: the parts of a shard being packed
    go up with the URL and credentials gcsfs would use, from the deferred filesystem,
    while gcsfs is not made yet (it is made only once the first part is on its way, and
    then composes); the dataset reads back."""
    from roxxel.backends.gcsopen import DeferredGCSFileSystem

    url, options = new_location("gcs")
    started, waited = part_sent(monkeypatch, 0, 1), []
    real_materialize = DeferredGCSFileSystem.materialize

    def materialize(self: DeferredGCSFileSystem) -> Any:
        waited.append(started.wait(30))
        return real_materialize(self)

    monkeypatch.setattr(DeferredGCSFileSystem, "materialize", materialize)
    requests = Requests(monkeypatch)
    records = [np.random.default_rng(i).bytes(MiB) for i in range(11)]
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options) as writer:
        assert isinstance(writer.store.backend.deferred_source(), DeferredGCSFileSystem)
        writer.extend(records)
    assert waited and all(waited)
    assert requests.calls["part"] == 3 and requests.calls["compose"] == 1
    assert_published_whole(url, options, records, tmp_path)
