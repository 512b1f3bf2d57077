"""One conformance suite for every backend, as zarr-python has for its stores: the same
tests of :class:`~roxxel.backends.Store` against local disk, ``memory://``, S3 (moto),
GCS (fake-gcs-server) and the generic fsspec backend, twice: over a filesystem roxxel
knows nothing about (fsspec's ``DirFileSystem`` over memory: no conditional writes), and
over ``faulty://`` from tests/faults.py with no faults, whose backend, given with
:func:`roxxel.backends.register`, adds conditional writes.

A backend that passes this suite behaves, through the wrapper, like every other: round
trips, ranges, streams, uploads, listings, deletes, whole reads with their version,
create-only and compare-and-swap writes, the errors they raise, and the retries of the
wrapper around them.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import re
import threading
import uuid
from collections.abc import Callable
from typing import Any

import fsspec
import pytest
from fsspec.implementations.dirfs import DirFileSystem

from roxxel.backends import FsspecBackend, RetryPolicy, Store
from roxxel.backends.gcs import GCSBackend
from roxxel.backends.local import LocalBackend
from roxxel.backends.memory import MemoryBackend
from roxxel.backends.s3 import S3Backend
from roxxel.errors import (
    ConflictError,
    DatasetExistsError,
    IntegrityError,
    NotFoundError,
    StorageError,
)
from roxxel.format.check import ShardCheck, ShardSpec
from roxxel.manifest.checksums import parse_checksum
from tests.faults import FaultyBackend, faulty_url

FAST = RetryPolicy(base_delay=0.001, max_delay=0.01)
BACKENDS = ("local", "memory", "s3", "gcs", "fsspec", "registered")
# Those that enforce conditional writes: all but a plain fsspec filesystem, which says it
# has none (test_a_store_without_conditional_writes_says_so).
CONDITIONAL = tuple(b for b in BACKENDS if b != "fsspec")
on_conditional_stores = pytest.mark.parametrize("kind", CONDITIONAL, indirect=True)
EXPECTED_BACKEND = {
    "local": LocalBackend, "memory": MemoryBackend, "s3": S3Backend, "gcs": GCSBackend,
    "fsspec": FsspecBackend, "registered": FaultyBackend,
}


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def url_pattern(url: str) -> str:
    return re.escape(url)


@pytest.fixture(params=BACKENDS)
def kind(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def make_store(kind, new_location, tmp_path) -> Callable[..., Store]:
    """``make_store(**kwargs)``: a Store (``retry=FAST``, then ``kwargs``) over a fresh,
    empty dataset prefix on the backend ``kind``."""
    unique = f"t{uuid.uuid4().hex[:12]}"
    if kind == "fsspec":
        fs = DirFileSystem(path=f"/dirfs-{unique}", fs=fsspec.filesystem("memory"))
        return lambda **kwargs: Store("dir://ds", fs=fs, **{"retry": FAST, **kwargs})
    url, options = (faulty_url(tmp_path / unique / "ds"), {}) if kind == "registered" else new_location(kind)
    return lambda **kwargs: Store(url, options, **{"retry": FAST, **kwargs})


@pytest.fixture
def store(make_store) -> Store:
    return make_store()


@pytest.fixture
def conditional_store(store) -> Store:
    """The store, on the backends that enforce conditional writes (tests using it carry
    ``@on_conditional_stores``)."""
    assert store.conditional_writes_enforced()
    return store


class AfterCall:
    """A fault raised after the real call went through: a lost response."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def fail_first(monkeypatch, backend: Any, **faults: list[Any]) -> dict[str, int]:
    """Make the named operations of ``backend`` raise the queued exceptions (or
    :class:`AfterCall` faults) first, then work; return the count of calls of each."""
    calls: dict[str, int] = {}
    for name, queue in faults.items():
        real, pending = getattr(backend, name), list(queue)

        def faulty(*args: Any, _name: str = name, _real: Any = real, _pending: list = pending,
                   **kwargs: Any) -> Any:
            calls[_name] = calls.get(_name, 0) + 1
            if _pending:
                fault = _pending.pop(0)
                if isinstance(fault, AfterCall):
                    _real(*args, **kwargs)
                    fault = fault.exc
                raise fault
            return _real(*args, **kwargs)

        monkeypatch.setattr(backend, name, faulty)
    return calls


def _client_error(status: int, code: str) -> Exception:
    """What s3fs raises for an S3 error response: a builtin OSError chained to botocore's."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    error = ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )
    return translate_boto_error(error)


def test_each_kind_of_store_is_served_by_its_own_backend(store, kind):
    assert type(store.backend) is EXPECTED_BACKEND[kind]
    assert isinstance(store.backend, FsspecBackend) and store.backend.fs is store.fs


def test_bytes_round_trip_size_and_exists(store):
    data = payload(1000)
    store.put_bytes_overwrite("a/b.bin", data)
    assert store.read_bytes("a/b.bin") == data
    assert store.size("a/b.bin") == 1000
    assert store.exists("a/b.bin")
    assert not store.exists("a/missing.bin")
    assert not store.exists("a"), "a prefix is not an object"
    store.put_bytes_overwrite("empty", b"")
    assert store.read_bytes("empty") == b""
    assert store.size("empty") == 0


def test_read_range(store):
    data = payload(300)
    store.put_bytes_overwrite("r.bin", data)
    assert store.read_range("r.bin", 0, 10) == data[:10]
    assert store.read_range("r.bin", 100, 300) == data[100:]
    assert store.read_range("r.bin", 7, 7) == b""
    with pytest.raises(StorageError, match=url_pattern(store.url("r.bin"))):
        store.read_range("r.bin", 250, 400)
    with pytest.raises(ValueError):
        store.read_range("r.bin", 5, 4)


def test_stream_feeds_sink_each_byte_once_in_bounded_chunks(make_store):
    store = make_store(chunk_size=1000)
    data = payload(5_007)
    store.put_bytes_overwrite("shards/000001.rox", data)
    digest, sizes, parts = hashlib.sha256(), [], []

    def sink(chunk: bytes) -> None:
        digest.update(chunk)
        sizes.append(len(chunk))
        parts.append(chunk)

    assert store.stream("shards/000001.rox", sink) == 5_007
    assert b"".join(parts) == data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()
    assert max(sizes) <= 1000
    store.put_bytes_overwrite("empty", b"")
    assert store.stream("empty", sizes.append) == 0


def test_get_file_streams_to_disk_with_progress(store, tmp_path):
    data = payload(70_000)
    store.put_bytes_overwrite("x.bin", data)
    seen: list[int] = []
    target = tmp_path / "download" / "x.bin"
    target.parent.mkdir()
    assert store.get_file("x.bin", target, callback=seen.append) == len(data)
    assert target.read_bytes() == data
    assert sum(seen) == len(data)


def test_get_file_of_missing_object_leaves_no_file(store, tmp_path):
    target = tmp_path / "nothing.bin"
    with pytest.raises(NotFoundError, match=url_pattern(store.url("nothing.bin"))):
        store.get_file("nothing.bin", target)
    assert not target.exists()


def test_open_read_is_seekable(store):
    data = payload(5000)
    store.put_bytes_overwrite("o.bin", data)
    with store.open_read("o.bin") as f:
        assert f.read(10) == data[:10]
        f.seek(-20, os.SEEK_END)
        assert f.tell() == 4980
        assert f.read() == data[-20:]
        f.seek(100)
        buffer = bytearray(50)
        assert f.readinto(buffer) == 50
        assert bytes(buffer) == data[100:150]


@pytest.mark.parametrize("size", [1234, 6 * 2**20 + 5], ids=["small", "over-5MiB"])
def test_put_file_uploads_a_finished_file(store, tmp_path, size):
    source = tmp_path / "staged.rox"
    data = os.urandom(size)
    source.write_bytes(data)
    store.put_file(source, "shards/000001.rox")
    assert store.size("shards/000001.rox") == size
    assert store.read_bytes("shards/000001.rox", max_bytes=None) == data
    with pytest.raises(FileNotFoundError):
        store.put_file(tmp_path / "missing", "shards/000002.rox")


def test_create_only_publish_refuses_an_existing_key(store):
    store.put_bytes_create_only("manifest.json", b'{"v": 1}')
    with pytest.raises(DatasetExistsError, match=url_pattern(store.url("manifest.json"))):
        store.put_bytes_create_only("manifest.json", b'{"v": 2}')
    assert store.read_bytes("manifest.json") == b'{"v": 1}'
    assert store.list() == ["manifest.json"], "no temporary file is left behind"


@on_conditional_stores
def test_create_only_relies_on_the_server_precondition(conditional_store, monkeypatch):
    """With the existence check skipped, only the store itself can refuse the write."""
    store = conditional_store
    store.put_bytes_create_only("manifest.json", b"first")
    monkeypatch.setattr(store, "exists", lambda key: False)
    with pytest.raises(DatasetExistsError, match="already exists"):
        store.put_bytes_create_only("manifest.json", b"second")
    assert store.read_bytes("manifest.json") == b"first"


@on_conditional_stores
def test_concurrent_create_only_has_exactly_one_winner(conditional_store):
    store = conditional_store
    outcomes: dict[int, str] = {}
    start = threading.Barrier(8)

    def publish(i: int) -> None:
        start.wait()
        try:
            store.put_bytes_create_only("manifest.json", b"writer %d" % i)
            outcomes[i] = "won"
        except DatasetExistsError:
            outcomes[i] = "lost"

    threads = [threading.Thread(target=publish, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [i for i, outcome in outcomes.items() if outcome == "won"]
    assert len(outcomes) == 8 and len(winners) == 1
    assert store.read_bytes("manifest.json") == b"writer %d" % winners[0]


def test_overwrite_replaces(store):
    store.put_bytes_overwrite("manifest.json", b"old")
    store.put_bytes_overwrite("manifest.json", b"new and longer")
    assert store.read_bytes("manifest.json") == b"new and longer"
    assert store.list() == ["manifest.json"]


def test_list_is_recursive_sorted_and_relative(store):
    for key in ["shards/000002.rox", "manifest.json", "shards/000001.rox", "shards/sub/x"]:
        store.put_bytes_overwrite(key, b"x")
    assert store.list() == [
        "manifest.json", "shards/000001.rox", "shards/000002.rox", "shards/sub/x",
    ]
    assert store.list("shards/") == ["shards/000001.rox", "shards/000002.rox", "shards/sub/x"]
    assert store.list("nothing") == []


def test_delete_and_delete_missing(store):
    store.put_bytes_overwrite("d.bin", b"x")
    store.delete("d.bin")
    assert not store.exists("d.bin")
    store.delete("d.bin")
    store.delete("never-existed.bin")


@pytest.mark.parametrize(
    "operation",
    [
        lambda s, k: s.size(k),
        lambda s, k: s.read_bytes(k),
        lambda s, k: s.read_range(k, 0, 10),
        lambda s, k: s.stream(k, lambda chunk: None),
        lambda s, k: s.open_read(k),
    ],
    ids=["size", "read_bytes", "read_range", "stream", "open_read"],
)
def test_missing_object_is_not_found_naming_the_url(store, operation):
    url = store.url("shards/missing.rox")
    with pytest.raises(NotFoundError, match=url_pattern(url)) as caught:
        operation(store, "shards/missing.rox")
    assert isinstance(caught.value, FileNotFoundError)
    assert caught.value.__cause__ is not None


def test_read_bytes_refuses_objects_over_the_cap(store):
    store.put_bytes_overwrite("manifest.json", b"x" * 100)
    assert store.read_bytes("manifest.json", max_bytes=100) == b"x" * 100
    with pytest.raises(StorageError, match=r"100 bytes, more than the limit of 99"):
        store.read_bytes("manifest.json", max_bytes=99)


def test_store_survives_pickling(store):
    """DataLoader workers receive the store by pickle (storage_options included)."""
    store.put_bytes_overwrite("manifest.json", b"{}")
    clone = pickle.loads(pickle.dumps(store))
    assert clone.read_bytes("manifest.json") == b"{}" and clone.url("a") == store.url("a")


def test_invalid_keys_are_refused_before_any_io(store):
    for key in ["", "/etc/passwd", "../other/manifest.json", "a//b", "a/./b", "s3://x/y"]:
        with pytest.raises(ValueError, match="invalid store key"):
            store.size(key)


def test_transient_errors_are_retried_until_success(store, monkeypatch):
    import aiohttp
    from gcsfs.retry import HttpError

    data = payload(500)
    store.put_bytes_overwrite("manifest.json", data)
    ops = fail_first(monkeypatch, store.backend, read=[
        _client_error(503, "SlowDown"), HttpError({"code": 502, "message": "bad gw"}),
        aiohttp.ClientPayloadError("cut short"), ConnectionResetError(104, "reset"),
    ])
    assert store.read_bytes("manifest.json") == data
    assert ops == {"read": 5}


def test_stream_resumes_from_the_offset_reached(make_store, monkeypatch):
    """A body cut short mid-object is re-requested from where it stopped, not from 0."""
    import aiohttp

    store = make_store(chunk_size=1000)
    data = payload(4_500)
    store.put_bytes_overwrite("shard.rox", data)
    opened_at: list[int] = []
    real_open = store.backend.open_reader

    def open_flaky(path, offset):
        reader = real_open(path, offset)
        opened_at.append(offset)
        if len(opened_at) > 1:
            return reader
        real_read, reads = reader.read_parts, []

        def read_parts(size: int) -> list[bytes]:
            reads.append(size)
            if len(reads) == 3:
                raise aiohttp.ClientPayloadError("Response payload is not completed")
            return real_read(size)

        reader.read_parts = read_parts
        return reader

    monkeypatch.setattr(store.backend, "open_reader", open_flaky)
    parts: list[bytes] = []
    assert store.stream("shard.rox", parts.append) == len(data)
    assert b"".join(parts) == data
    assert opened_at == [0, 2000]


def test_create_only_retry_after_a_lost_response_succeeds(store, monkeypatch):
    """The first PUT lands but its response is lost; the retry finds our own object."""
    import aiohttp

    ops = fail_first(monkeypatch, store.backend, put_if_absent=[AfterCall(aiohttp.ServerDisconnectedError())])
    monkeypatch.setattr(store, "exists", lambda key: False)  # only the store's condition decides
    store.put_bytes_create_only("manifest.json", b"ours")
    assert ops["put_if_absent"] == 2, "the retry is refused, then finds our own object"
    assert store.read_bytes("manifest.json") == b"ours"
    with pytest.raises(DatasetExistsError):
        store.put_bytes_create_only("manifest.json", b"theirs")
    monkeypatch.undo()
    with pytest.raises(DatasetExistsError):  # the existence check comes first
        store.put_bytes_create_only("manifest.json", b"ours")


@on_conditional_stores
def test_conditional_replace_retry_after_a_lost_response_succeeds(conditional_store, monkeypatch):
    import aiohttp

    store = conditional_store
    store.put_bytes_overwrite("manifest.json", b"old")
    _, version = store.read_versioned("manifest.json")
    ops = fail_first(monkeypatch, store.backend, put_if_match=[AfterCall(aiohttp.ServerDisconnectedError())])
    store.put_bytes_if_match("manifest.json", b"new", version)
    assert ops["put_if_match"] == 2
    assert store.read_bytes("manifest.json") == b"new"
    with pytest.raises(ConflictError, match="another writer changed it"):
        store.put_bytes_if_match("manifest.json", b"newer", version)
    assert store.read_bytes("manifest.json") == b"new"


def test_sink_errors_propagate_unchanged(store):
    store.put_bytes_overwrite("x", b"abc")

    def sink(chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left") as caught:
        store.stream("x", sink)
    assert not isinstance(caught.value, StorageError)


@pytest.mark.parametrize("stored", [3000, 2500], ids=["ends-at-a-chunk-boundary", "ends-mid-chunk"])
def test_a_truncated_object_of_known_size_is_an_integrity_error(make_store, stored, caplog):
    """A shard cut short in the store (GCS answers a range past its end with 416) is an
    IntegrityError naming it, on every store, and no client logs an error on the way."""
    store = make_store(chunk_size=1000)
    store.put_bytes_overwrite("shards/s.rox", payload(stored))
    with caplog.at_level(logging.WARNING):
        with pytest.raises(IntegrityError, match=rf"s\.rox: it ended at byte {stored}, expected 6000 bytes"):
            store.stream("shards/s.rox", lambda chunk: None, size=6000)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


@on_conditional_stores
def test_whole_reads_carry_a_version_that_conditional_writes_compare(conditional_store):
    store = conditional_store
    store.put_bytes_overwrite("manifest.json", b"first")
    data, version = store.read_versioned("manifest.json")
    assert data == b"first" and version is not None
    store.put_bytes_if_match("manifest.json", b"second", version)
    data, newer = store.read_versioned("manifest.json")
    assert data == b"second" and newer != version
    with pytest.raises(ConflictError, match=url_pattern(store.url("manifest.json"))):
        store.put_bytes_if_match("manifest.json", b"third", version)
    assert store.read_bytes("manifest.json") == b"second"


def test_stat_and_list_info_give_sizes_and_modification_times(store):
    store.put_bytes_overwrite("a.bin", payload(10))
    store.put_bytes_overwrite("sub/b.bin", payload(20))
    size, modified = store.stat("sub/b.bin")
    assert size == 20 and (modified is None or modified > 0)
    listed = store.list_info()
    assert [(key, size) for key, size, _ in listed] == [("a.bin", 10), ("sub/b.bin", 20)]
    with pytest.raises(NotFoundError):
        store.stat("sub")


def _read_back_check(store: Store, data: bytes) -> ShardCheck:
    """The one shard check of ``data`` (size and checksum: ``data`` is no ROXXEL01 shard)."""
    key = "shards/1.rox"
    spec = ShardSpec(len(data), len(data), None, 0, store.url(key))
    return ShardCheck(spec, parse_checksum("sha256:" + hashlib.sha256(data).hexdigest()), layout=False)


def test_check_upload_accepts_the_same_bytes_and_refuses_others(store, kind, tmp_path):
    source = tmp_path / "staged.rox"
    source.write_bytes(payload(3000))
    store.put_file(source, "shards/1.rox")
    store.check_upload("shards/1.rox", source, _read_back_check(store, payload(3000)))
    reported = store.backend.reported_md5(store.backend.info(store.path("shards/1.rox")))
    assert reported == (hashlib.md5(payload(3000)).hexdigest() if kind in ("s3", "gcs") else None)
    store.put_bytes_overwrite("shards/1.rox", payload(3000, seed=1))
    with pytest.raises(IntegrityError, match=url_pattern(store.url("shards/1.rox"))):
        store.check_upload("shards/1.rox", source, _read_back_check(store, payload(3000)))


def test_a_store_without_conditional_writes_says_so(store, kind):
    """Either a store enforces conditional writes, or it says it does not and a
    compare-and-swap on it is a StorageError that writes nothing."""
    if store.conditional_writes_enforced():
        assert kind != "fsspec"
        return
    assert kind == "fsspec"
    store.put_bytes_overwrite("manifest.json", b"first")
    assert store.read_versioned("manifest.json") == (b"first", None)
    with pytest.raises(StorageError, match="has no conditional writes"):
        store.put_bytes_if_match("manifest.json", b"second", "anything")
    assert store.read_bytes("manifest.json") == b"first"
