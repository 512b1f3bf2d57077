"""The storage boundary beyond the conformance suite (tests/test_store_conformance.py):
names and URLs, error classification, and the wrapper's retries and error translation
with fault-injecting filesystems and a dead endpoint."""

from __future__ import annotations

import errno
import os
import re
import ssl
import time
from collections.abc import Callable
from typing import Any

import pytest

from roxxel.backends import RetryPolicy, Store
from roxxel.backends.errors import Kind, classify
from roxxel.backends.urls import join_url, relative_key, resolve
from roxxel.errors import (
    AccessDeniedError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from roxxel.manifest.keys import check_key
from roxxel.manifest.redaction import redact
from tests import servers

FAST = RetryPolicy(base_delay=0.001, max_delay=0.01)


def payload(n: int, seed: int = 0) -> bytes:
    return bytes((i * 31 + seed) % 251 for i in range(n))


def url_pattern(url: str) -> str:
    return re.escape(url)


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
            if queue:
                raise queue.pop(0)
            return attr(*args, **kwargs)

        return faulty


class Forever:
    """A queue entry that is raised on every call."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def faulty_store(
    base: Store, policy: RetryPolicy = FAST, **faults: list[Any]
) -> tuple[Store, Faulty]:
    fs = Faulty(base.fs, **faults)
    return Store(base.base_url, fs=fs, retry=policy), fs  # type: ignore[arg-type]


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


@pytest.mark.parametrize(
    ("fstype", "options", "node_local"),
    [
        ("ext4", {"rw", "relatime"}, False),
        ("xfs", {"rw"}, False),
        ("nfs4", {"rw", "vers=4.2"}, False),  # flock becomes a POSIX lock the server grants
        ("nfs", {"rw", "vers=3", "nolock"}, True),
        ("nfs4", {"rw", "local_lock=flock"}, True),
        ("nfs4", {"rw", "local_lock=none"}, False),
        ("lustre", {"rw", "flock"}, False),
        ("lustre", {"rw", "localflock"}, True),
        ("lustre", {"rw"}, True),  # without flock, Lustre refuses or keeps locks local
        ("fuse.gcsfuse", {"rw"}, True),
        ("fuse.s3fs", {"rw"}, True),
    ],
)
def test_which_local_filesystems_keep_their_locks_to_one_node(fstype, options, node_local):
    from roxxel.backends.local import node_local_locks

    assert node_local_locks(fstype, options) is node_local


def test_the_mount_of_a_path_is_the_longest_mount_point_above_it():
    from roxxel.backends.local import mount_of

    mounts = (
        "/dev/sda1 / ext4 rw,relatime 0 0\n"
        "server:/export /mnt/data nfs4 rw,vers=4.2,local_lock=flock 0 0\n"
        "gcsfuse /mnt/data/bucket fuse.gcsfuse rw,nosuid 0 0\n"
    )
    assert mount_of("/mnt/data/ds", mounts) == ("nfs4", {"rw", "vers=4.2", "local_lock=flock"})
    assert mount_of("/mnt/data/bucket/ds", mounts) == ("fuse.gcsfuse", {"rw", "nosuid"})
    assert mount_of("/mnt/database/ds", mounts) == ("ext4", {"rw", "relatime"})
    assert mount_of("/mnt/data", mounts)[0] == "nfs4"
    assert mount_of("/tmp", "") is None


def test_a_range_answered_with_the_whole_object_is_named_by_the_range_reader():
    from roxxel.backends.readers import RangeReader

    class WholeObject:
        def size(self, path: str) -> int:
            return 100

        def cat_file(self, path: str, start: int | None = None, end: int | None = None) -> bytes:
            return b"x" * 100

    reader = RangeReader(WholeObject(), "bucket/obj", 10)  # type: ignore[arg-type]
    with pytest.raises(OSError, match=r"asked for bytes \[10, 30\), got 100 bytes; the server ignored the Range header"):
        reader.read(20)


# -- S3 round trips -----------------------------------------------------------------------


def test_s3_info_of_a_missing_key_is_one_head_not_a_listing_too(new_location):
    """Once s3fs is made, an object's info is its HeadObject alone: s3fs's own info
    of a missing key also LISTs the prefix, a second round trip (before every publish
    of a new dataset). A prefix is not an object; an object's info is s3fs's."""
    from roxxel.backends.s3 import S3Backend

    location = new_location("s3")
    store = Store(location.url, location.storage_options)
    backend = store.backend
    assert isinstance(backend, S3Backend)
    store.put_bytes_overwrite("dir/object", b"12345")
    fs = backend.fs  # s3fs made
    calls: list[str] = []
    real = fs._call_s3

    async def call(method: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(method)
        return await real(method, *args, **kwargs)

    fs._call_s3 = call
    assert not store.exists("missing") and calls == ["head_object"]
    with pytest.raises(NotFoundError):
        store.size("dir")  # a prefix
    info = backend.info(store.path("dir/object"))
    fs._call_s3 = real
    assert calls == ["head_object"] * 3
    assert info["size"] == 5 and info["type"] == "file" and info["name"] == store.path("dir/object")
    assert info["ETag"] == fs.info(store.path("dir/object"))["ETag"]


def test_s3_puts_of_small_bodies_do_not_wait_for_100_continue(new_location, tmp_path):
    """botocore asks every PutObject to wait for the server's 100 Continue, a round trip
    on each small PUT (a manifest, a probe, a small shard): a body of up to 16 MiB is
    sent with its headers, a larger one still waits."""
    from roxxel.backends import s3

    location = new_location("s3")
    store = Store(location.url, location.storage_options)
    store.put_bytes_overwrite("first", b"x")  # the client is made
    client = store.backend.fs.s3
    sent: list[tuple[int, bool]] = []

    def seen(request: Any, **_: Any) -> None:
        sent.append((int(request.headers["Content-Length"]), "Expect" in request.headers))

    client.meta.events.register("before-send.s3.PutObject", seen)
    store.put_bytes_overwrite("manifest", b"{}")
    store.put_bytes_create_only("created", b"{}")
    small = tmp_path / "small"
    small.write_bytes(b"y" * 1000)
    store.backend._put_object_streaming(str(small), store.path("small"))
    large = tmp_path / "large"
    large.write_bytes(b"z" * (s3._AT_ONCE_MAX + 1))
    store.backend._put_object_streaming(str(large), store.path("large"))
    assert sent == [(2, False), (2, False), (1000, False), (s3._AT_ONCE_MAX + 1, True)]
    assert store.read_bytes("created") == b"{}" and store.size("large") == s3._AT_ONCE_MAX + 1
