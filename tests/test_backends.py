"""The storage boundary: one conformance suite run against local disk, memory://, S3
(moto) and GCS (gcp-storage-emulator), then retries and error translation with
fault-injecting filesystems and a dead endpoint."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import pickle
import re
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from roxxel.backends import (
    Kind,
    RetryPolicy,
    Store,
    check_key,
    classify,
    join_url,
    redact,
    relative_key,
    resolve,
)
from roxxel.backends import conditional as conditional_module
from roxxel.backends import store as store_module
from roxxel.errors import (
    AccessDeniedError,
    ConflictError,
    DatasetExistsError,
    IntegrityError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from tests import servers

FAST = RetryPolicy(base_delay=0.001, max_delay=0.01)


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def url_pattern(url: str) -> str:
    return re.escape(url)


# -- conformance: every store behaves the same ------------------------------------------


@pytest.fixture
def store(dataset_location) -> Store:
    url, options = dataset_location
    return Store(url, options, retry=FAST)


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


def test_stream_feeds_sink_each_byte_once_in_bounded_chunks(dataset_location):
    url, options = dataset_location
    store = Store(url, options, retry=FAST, chunk_size=1000)
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


@pytest.mark.parametrize("kind", ["local", "memory", "s3", "gcs"])
def test_create_only_relies_on_the_server_precondition(new_location, kind, monkeypatch):
    """With the existence check skipped, only the store itself can refuse the write."""
    store = Store(*new_location(kind), retry=FAST)
    store.put_bytes_create_only("manifest.json", b"first")
    monkeypatch.setattr(store, "exists", lambda key: False)
    with pytest.raises(DatasetExistsError, match="already exists"):
        store.put_bytes_create_only("manifest.json", b"second")
    assert store.read_bytes("manifest.json") == b"first"


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_concurrent_create_only_has_exactly_one_winner(new_location, kind):
    url, options = new_location(kind)
    store = Store(url, options, retry=FAST)
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


# -- names and URLs -------------------------------------------------------------------


def test_resolve_local_paths_file_urls_and_memory(tmp_path):
    fs, path = resolve(str(tmp_path / "ds"))
    assert "file" in fs.protocol and path == (tmp_path / "ds").as_posix()
    fs, path = resolve(f"file://{tmp_path}/ds/")
    assert path == (tmp_path / "ds").as_posix()
    fs, path = resolve("memory://wiki/ds")
    assert "memory" in fs.protocol and path == "/wiki/ds"


def test_store_urls(tmp_path):
    assert Store(tmp_path / "ds").url("manifest.json") == f"{tmp_path.as_posix()}/ds/manifest.json"
    relative = Store("ds")
    assert relative.base_url == os.path.abspath("ds")
    assert Store("memory://wiki/ds/").url("shards/1.rox") == "memory://wiki/ds/shards/1.rox"
    assert join_url("s3://b/ds/", "manifest.json") == "s3://b/ds/manifest.json"
    assert relative_key("s3://b/ds", "s3://b/ds/shards/1.rox") == "shards/1.rox"
    with pytest.raises(ValueError):
        relative_key("s3://b/ds", "s3://b/dsx/1.rox")
    with pytest.raises(ValueError):
        check_key("shards/../../x")


def test_no_credentials_in_repr_or_messages(s3_server):
    options = s3_server.storage_options | {"secret": "s3cr3t-VALUE", "skip_instance_cache": True}
    store = Store("s3://roxxel-tests/creds/ds", options, retry=FAST)
    assert repr(store) == "Store('s3://roxxel-tests/creds/ds')"
    with pytest.raises(NotFoundError) as caught:
        store.read_bytes("manifest.json")
    assert "s3cr3t" not in str(caught.value) and "testing" not in str(caught.value)
    assert (
        redact("https://user:pw@h/x?a=1&X-Amz-Signature=abc")
        == "https://***@h/x?***"  # the whole query: credentials may sit under any name
    )


# -- error classification ---------------------------------------------------------------


def _client_error(status: int, code: str) -> Exception:
    """What s3fs raises for an S3 error response: a builtin OSError chained to botocore's."""
    from botocore.exceptions import ClientError
    from s3fs.errors import translate_boto_error

    error = ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "GetObject",
    )
    return translate_boto_error(error)


def _examples() -> list[tuple[Callable[[], BaseException], Kind]]:
    import aiohttp
    import botocore.exceptions as bce
    import google.auth.exceptions as gae
    import requests.exceptions
    from gcsfs.retry import HttpError

    return [
        (lambda: _client_error(503, "SlowDown"), Kind.TRANSIENT),
        (lambda: _client_error(500, "InternalError"), Kind.TRANSIENT),
        (lambda: _client_error(429, "TooManyRequests"), Kind.TRANSIENT),
        (lambda: _client_error(403, "AccessDenied"), Kind.DENIED),
        (lambda: _client_error(403, "SignatureDoesNotMatch"), Kind.DENIED),
        (lambda: _client_error(404, "NoSuchKey"), Kind.NOT_FOUND),
        (lambda: _client_error(400, "InvalidArgument"), Kind.PERMANENT),
        (lambda: bce.NoCredentialsError(), Kind.DENIED),
        (lambda: bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:9"), Kind.UNREACHABLE),
        (lambda: bce.ConnectTimeoutError(endpoint_url="http://127.0.0.1:9"), Kind.TRANSIENT),
        (lambda: bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:9"), Kind.TRANSIENT),
        (lambda: aiohttp.ClientPayloadError("Response payload is not completed"), Kind.TRANSIENT),
        (lambda: aiohttp.ServerDisconnectedError(), Kind.TRANSIENT),
        (lambda: HttpError({"code": 503, "message": "backendError"}), Kind.TRANSIENT),
        (lambda: HttpError({"code": 401, "message": "Invalid Credentials"}), Kind.DENIED),
        (lambda: HttpError({"code": 400, "message": "bad"}), Kind.PERMANENT),
        (lambda: OSError("Forbidden: b/o/x\nno access"), Kind.DENIED),
        (lambda: requests.exceptions.ProxyError(), Kind.TRANSIENT),
        (lambda: gae.DefaultCredentialsError("no creds"), Kind.DENIED),
        (lambda: ConnectionResetError(errno.ECONNRESET, "reset"), Kind.TRANSIENT),
        (lambda: ConnectionRefusedError(errno.ECONNREFUSED, "refused"), Kind.UNREACHABLE),
        (lambda: TimeoutError(), Kind.TRANSIENT),
        (lambda: FileNotFoundError("x"), Kind.NOT_FOUND),
        (lambda: ValueError("Bad Request: invalid"), Kind.PERMANENT),
        # TLS: a certificate that does not verify is configuration, not bad luck ...
        (lambda: bce.SSLError(endpoint_url="https://h", error=ssl.SSLCertVerificationError(1, "verify failed")),
         Kind.PERMANENT),
        (lambda: _raised_from(OSError("stat failed"), ssl.SSLCertVerificationError(1, "self-signed")), Kind.PERMANENT),
        # ... while a handshake cut short is retried like any dropped connection
        (lambda: bce.SSLError(endpoint_url="https://h", error=ssl.SSLEOFError(8, "EOF in violation")), Kind.TRANSIENT),
        (lambda: ssl.SSLEOFError(8, "EOF occurred in violation of protocol"), Kind.TRANSIENT),  # direct GETs
        (lambda: ssl.SSLError(1, "[SSL: DECRYPTION_FAILED_OR_BAD_RECORD_MAC] bad record mac"), Kind.TRANSIENT),
        (lambda: ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number"), Kind.PERMANENT),
        (lambda: _with_kwargs(ValueError("odd"), ("not", "a", "mapping")), Kind.PERMANENT),
    ]


def _with_kwargs(exc: Exception, kwargs: object) -> Exception:
    exc.kwargs = kwargs  # type: ignore[attr-defined]
    return exc


def _raised_from(outer: BaseException, cause: BaseException) -> BaseException:
    try:
        raise outer from cause
    except BaseException as exc:  # noqa: BLE001 - the point is the chained exception
        return exc


def test_classification_of_backend_exceptions():
    for make, expected in _examples():
        exc = make()
        assert classify(exc) is expected, f"{exc!r} ({exc.__cause__!r})"


# -- retries, with a fault-injecting filesystem ----------------------------------------


class Faulty:
    """Delegates to a real filesystem, but named methods first raise queued exceptions."""

    def __init__(self, fs: Any, **faults: list[BaseException]) -> None:
        self._fs = fs
        self._faults = {name: list(excs) for name, excs in faults.items()}
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if name not in self._faults:
            return attr

        def faulty(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            queue = self._faults[name]
            if queue and isinstance(queue[0], Forever):
                raise queue[0].exc
            if queue and isinstance(queue[0], AfterCall):
                attr(*args, **kwargs)
                raise queue.pop(0).exc
            if queue:
                raise queue.pop(0)
            return attr(*args, **kwargs)

        return faulty


class Forever:
    """A queue entry that is raised on every call."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class AfterCall:
    """A queue entry raised after the real call went through: a lost response."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def faulty_store(
    base: Store, policy: RetryPolicy = FAST, **faults: list[Any]
) -> tuple[Store, Faulty]:
    fs = Faulty(base.fs, **faults)
    return Store(base.base_url, fs=fs, retry=policy), fs  # type: ignore[arg-type]


def faulty_conditional(monkeypatch, **faults: list[Any]) -> Faulty:
    """Make every Store's whole-object reads and conditional writes (the backend's
    :mod:`roxxel.backends.conditional` operations) raise the queued exceptions first."""
    real = conditional_module.for_filesystem
    faulty = Faulty(None, **faults)

    def wrapped(fs: Any) -> Faulty:
        faulty._fs = real(fs)
        return faulty

    monkeypatch.setattr(conditional_module, "for_filesystem", wrapped)
    return faulty


def test_transient_errors_are_retried_until_success(store, monkeypatch):
    import aiohttp
    from gcsfs.retry import HttpError

    data = payload(500)
    store.put_bytes_overwrite("manifest.json", data)
    ops = faulty_conditional(monkeypatch, read=[
        _client_error(503, "SlowDown"), HttpError({"code": 502, "message": "bad gw"}),
        aiohttp.ClientPayloadError("cut short"), ConnectionResetError(104, "reset"),
    ])
    assert store.read_bytes("manifest.json") == data
    assert ops.calls == {"read": 5}


def test_stream_resumes_from_the_offset_reached(dataset_location, monkeypatch):
    """A body cut short mid-object is re-requested from where it stopped, not from 0."""
    import aiohttp

    url, options = dataset_location
    store = Store(url, options, retry=FAST, chunk_size=1000)
    data = payload(4_500)
    store.put_bytes_overwrite("shard.rox", data)
    opened_at: list[int] = []
    real_open = store_module.open_chunk_reader

    def open_flaky(fs, path, offset):
        reader = real_open(fs, path, offset)
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

    monkeypatch.setattr(store_module, "open_chunk_reader", open_flaky)
    parts: list[bytes] = []
    assert store.stream("shard.rox", parts.append) == len(data)
    assert b"".join(parts) == data
    assert opened_at == [0, 2000]


@pytest.mark.parametrize("kind", ["local", "memory", "s3", "gcs"])
def test_create_only_retry_after_a_lost_response_succeeds(new_location, kind, monkeypatch):
    """The first PUT lands but its response is lost; the retry finds our own object."""
    import aiohttp

    store = Store(*new_location(kind), retry=FAST)
    ops = faulty_conditional(monkeypatch, put_if_absent=[AfterCall(aiohttp.ServerDisconnectedError())])
    monkeypatch.setattr(store, "exists", lambda key: False)  # only the store's condition decides
    store.put_bytes_create_only("manifest.json", b"ours")
    assert ops.calls["put_if_absent"] == 2, "the retry is refused, then finds our own object"
    assert store.read_bytes("manifest.json") == b"ours"
    with pytest.raises(DatasetExistsError):
        store.put_bytes_create_only("manifest.json", b"ours")


@pytest.mark.parametrize("kind", ["local", "memory", "s3", "gcs"])
def test_conditional_replace_retry_after_a_lost_response_succeeds(new_location, kind, monkeypatch):
    import aiohttp

    store = Store(*new_location(kind), retry=FAST)
    store.put_bytes_overwrite("manifest.json", b"old")
    _, version = store.read_versioned("manifest.json")
    ops = faulty_conditional(monkeypatch, put_if_match=[AfterCall(aiohttp.ServerDisconnectedError())])
    store.put_bytes_if_match("manifest.json", b"new", version)
    assert ops.calls["put_if_match"] == 2
    assert store.read_bytes("manifest.json") == b"new"
    with pytest.raises(ConflictError, match="another writer changed it"):
        store.put_bytes_if_match("manifest.json", b"newer", version)
    assert store.read_bytes("manifest.json") == b"new"


@pytest.mark.parametrize(
    ("make_error", "expected"),
    [
        (lambda: _client_error(403, "AccessDenied"), AccessDeniedError),
        (lambda: _client_error(404, "NoSuchKey"), NotFoundError),
        (lambda: OSError("Forbidden: bucket/x\nAnonymous caller lacks access"), AccessDeniedError),
        (lambda: _client_error(400, "InvalidArgument"), StorageError),
    ],
    ids=["s3-403", "s3-404", "gcs-403", "s3-400"],
)
def test_permanent_errors_fail_fast_without_retry(new_location, make_error, expected):
    base = Store(*new_location("memory"))
    flaky, fs = faulty_store(base, info=[Forever(make_error())])
    started = time.monotonic()
    with pytest.raises(expected, match=url_pattern(base.url("manifest.json"))) as caught:
        flaky.size("manifest.json")
    assert fs.calls["info"] == 1
    assert time.monotonic() - started < 1
    assert type(caught.value) is expected
    if expected is AccessDeniedError:
        assert "storage_options" in str(caught.value)


def test_transient_error_past_the_deadline_raises_transient_storage_error(new_location):
    base = Store(*new_location("memory"))
    original = _client_error(503, "SlowDown")
    policy = RetryPolicy(max_attempts=1000, deadline=0.3, base_delay=0.02, max_delay=0.05)
    flaky, fs = faulty_store(base, policy, info=[Forever(original)])
    started = time.monotonic()
    with pytest.raises(TransientStorageError, match=url_pattern(base.url("x"))) as caught:
        flaky.size("x")
    assert caught.value.__cause__ is original
    assert 0.25 < time.monotonic() - started < 2
    assert fs.calls["info"] > 2


def test_attempt_limit(new_location):
    base = Store(*new_location("memory"))
    policy = RetryPolicy(max_attempts=3, base_delay=0)
    flaky, fs = faulty_store(base, policy, info=[Forever(TimeoutError())])
    with pytest.raises(TransientStorageError, match="3 attempt"):
        flaky.size("x")
    assert fs.calls["info"] == 3


def test_sink_errors_propagate_unchanged(store):
    store.put_bytes_overwrite("x", b"abc")

    def sink(chunk: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left") as caught:
        store.stream("x", sink)
    assert not isinstance(caught.value, StorageError)


def test_connection_refused_fails_within_seconds_naming_the_url():
    """A dead S3 endpoint: refused connections get a short retry window, then a clear error.

    (gcsfs is not tested here: it retries refused connections itself for about 35 s,
    and storage_options cannot shorten that.)
    """
    endpoint = f"http://127.0.0.1:{servers.free_port()}"
    options = servers.s3_storage_options(endpoint) | {"skip_instance_cache": True}
    store = Store("s3://bucket/ds", options)  # the default RetryPolicy
    started = time.monotonic()
    with pytest.raises(StorageError, match=r"s3://bucket/ds/manifest\.json.*unreachable") as caught:
        store.read_bytes("manifest.json")
    assert time.monotonic() - started < 12
    assert isinstance(caught.value, TransientStorageError)
    assert "server up" in str(caught.value)


@pytest.mark.parametrize("stored", [3000, 2500], ids=["ends-at-a-chunk-boundary", "ends-mid-chunk"])
def test_a_truncated_object_of_known_size_is_an_integrity_error(dataset_location, stored, caplog):
    """A shard cut short in the store (GCS answers a range past its end with 416) is an
    IntegrityError naming it, on every store, and no client logs an error on the way."""
    url, options = dataset_location
    store = Store(url, options, retry=FAST, chunk_size=1000)
    store.put_bytes_overwrite("shards/s.rox", payload(stored))
    with caplog.at_level(logging.WARNING):
        with pytest.raises(IntegrityError, match=rf"s\.rox: it ended at byte {stored}, expected 6000 bytes"):
            store.stream("shards/s.rox", lambda chunk: None, size=6000)
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []


def test_a_server_that_ignores_range_is_named(new_location):
    base = Store(*new_location("memory"), retry=FAST)
    base.put_bytes_overwrite("x", payload(100))

    class IgnoresRange(Faulty):
        def __getattr__(self, name: str) -> Any:
            if name == "cat_file":
                return lambda path, start=None, end=None, **kw: self._fs.cat_file(path)
            return super().__getattr__(name)

    flaky = Store(base.base_url, fs=IgnoresRange(base.fs), retry=FAST)  # type: ignore[arg-type]
    with pytest.raises(StorageError, match=r"asked for bytes \[10, 20\) \(10 bytes\), got 100; the server ignored the Range header"):
        flaky.read_range("x", 10, 20)
