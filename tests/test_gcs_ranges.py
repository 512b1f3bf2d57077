"""GCS download parts as plain ranged GETs (``GCSBackend.read_range``), against
fake-gcs-server: the bytes, the errors, the cases left to gcsfs, and several parts in
flight through a link shaped like a real store's."""

from __future__ import annotations

import http.client
import inspect
import logging
import os
import threading
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from roxxel.backends import RetryPolicy, Store
from roxxel.backends import gcs as gcs_backend
from roxxel.backends.generic import FsspecBackend
from roxxel.errors import IntegrityError, NotFoundError, StorageError
from tests import shaping_proxy
from tests.test_parts import read_through

FAST = RetryPolicy(base_delay=0.001, max_delay=0.01, max_attempts=3)
BUCKET = "roxxel-tests"  # made by conftest's gcs_server fixture


def read_part(store: Store, key: str, start: int, end: int) -> bytes:
    """``Store.read_part`` whether it returns the bytes or reads them into a buffer."""
    if "into" in inspect.signature(store.read_part).parameters:
        return bytes(store.read_part(key, start, end, memoryview(bytearray(end - start))))
    return bytes(store.read_part(key, start, end))


@pytest.fixture
def gcs_store(gcs_server, monkeypatch):
    """A Store on a fresh prefix whose gcsfs ``cat_file`` must not be used, and the
    counter of connections the plain GETs opened."""
    url = gcs_server.url(BUCKET, f"t{uuid.uuid4().hex[:12]}")
    store = Store(url, gcs_server.storage_options, retry=FAST)

    def no_gcsfs(*args, **kwargs):
        raise AssertionError("read through gcsfs")

    monkeypatch.setattr(FsspecBackend, "read_range", no_gcsfs)
    opened = []
    real_take = gcs_backend._take

    def take(url):
        conn, reused = real_take(url)
        if not reused:
            opened.append(conn)
        return conn, reused

    monkeypatch.setattr(gcs_backend, "_take", take)
    store.opened = opened
    return store


def put(store: Store, key: str, data: bytes) -> None:
    store.fs.pipe_file(store.path(key), data)


def test_ranged_parts_are_the_object_s_bytes(gcs_store):
    data = os.urandom(3 * 2**20 + 17)
    key = "dir/shard 0001+é.rxl"  # a slash, a space, a plus and a non-ASCII letter
    put(gcs_store, key, data)
    for start, end in ((0, 1), (0, 2**20), (2**20 - 5, 2**20 + 5), (3 * 2**20, len(data)), (0, len(data))):
        assert read_part(gcs_store, key, start, end) == data[start:end]
        assert gcs_store.read_range(key, start, end) == data[start:end]
    assert len(gcs_store.opened) <= 1  # one kept-alive connection (maybe an earlier test's), reused
    assert not gcs_backend.refused(gcs_store.fs)


def test_a_part_handed_on_through_small_blocks_is_the_object_s_bytes(gcs_server):
    """A placed part (received through a Through) arrives whole: block by block by the
    plain ranged GET, at once by gcsfs where the store has settings of its own."""
    url = gcs_server.url(BUCKET, f"t{uuid.uuid4().hex[:12]}")
    data = os.urandom(3 * 2**20 + 17)
    plain = Store(url, gcs_server.storage_options, retry=FAST)
    put(plain, "placed", data)
    through_gcsfs = Store(url, {**gcs_server.storage_options, "session_kwargs": {"trust_env": True}}, retry=FAST)
    for store, blocks in ((plain, 5), (through_gcsfs, 1)):  # (2 MiB + 17 bytes in blocks of 512 KiB)
        assert read_through(store, "placed", 2**20, len(data), 2**19) == (data[2**20 :], blocks)
    assert not gcs_backend.refused(plain.fs)


def test_a_missing_object_is_not_found_and_keeps_the_path(gcs_store):
    with pytest.raises(NotFoundError):
        read_part(gcs_store, "nothing-here", 0, 10)
    put(gcs_store, "there", b"0123456789")
    assert read_part(gcs_store, "there", 2, 5) == b"234"
    assert not gcs_backend.refused(gcs_store.fs)


def test_an_object_shorter_than_the_manifest_says_is_an_integrity_error(gcs_store):
    put(gcs_store, "short", b"x" * 100)
    with pytest.raises(IntegrityError):
        read_part(gcs_store, "short", 50, 200)  # ends early
    with pytest.raises(IntegrityError):
        read_part(gcs_store, "short", 150, 200)  # starts past the end: 416


def test_stores_with_settings_of_their_own_are_read_through_gcsfs(gcs_server):
    url = gcs_server.url(BUCKET, f"t{uuid.uuid4().hex[:12]}")
    options = {**gcs_server.storage_options, "session_kwargs": {"trust_env": True}}
    store = Store(url, options, retry=FAST)
    put(store, "k", b"abcdef")
    assert gcs_backend.read_media_range(store.fs, store.path("k"), 0, 3, memoryview(bytearray(3))) is None
    assert read_part(store, "k", 1, 4) == b"bcd"  # through gcsfs cat_file


def test_an_answer_that_does_not_fit_turns_the_path_off_for_that_filesystem(gcs_server, caplog):
    """A server that ignores Range (answers 200 with the whole body): gcsfs reads from
    then on, and the Store says the server ignored the Range header."""
    import http.server

    caplog.set_level(logging.INFO, logger=gcs_backend.__name__)
    body = b"y" * 1000

    class Whole(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Whole)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        endpoint = f"http://127.0.0.1:{server.server_address[1]}"
        store = Store(f"gs://{BUCKET}/x", {**gcs_server.storage_options, "endpoint_url": endpoint}, retry=FAST)
        into = memoryview(bytearray(10))
        assert gcs_backend.read_media_range(store.fs, store.path("k"), 5, 15, into) is None
        assert gcs_backend.refused(store.fs)
        assert "reading through gcsfs" in caplog.text
        with pytest.raises(StorageError, match="ignored the Range header"):
            store.read_range("k", 5, 15)
    finally:
        server.shutdown()
        server.server_close()


def test_several_parts_in_flight_through_a_shaped_link(gcs_server):
    """16 parts of 1 MiB, 8 at a time, through 30 ms to the first byte and 25 MB/s per
    connection: every byte right, and no more connections than parts in flight."""
    port = urllib.parse.urlsplit(gcs_server.endpoint).port
    data = os.urandom(16 * 2**20)
    with shaping_proxy.start(port, latency=0.03, conn_rate=25e6, link_rate=400e6) as proxy:
        options = {**gcs_server.storage_options, "endpoint_url": proxy.endpoint}
        store = Store(gcs_server.url(BUCKET, f"t{uuid.uuid4().hex[:12]}"), options, retry=FAST)
        put(store, "big", data)
        opened = []
        real_take = gcs_backend._take

        def take(url):
            conn, reused = real_take(url)
            if not reused:
                opened.append(conn)
            return conn, reused

        bounds = [(a, a + 2**20) for a in range(0, len(data), 2**20)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(gcs_backend, "_take", take)
            mp.setattr(FsspecBackend, "read_range", lambda *a, **k: pytest.fail("read through gcsfs"))
            with ThreadPoolExecutor(8) as pool:
                parts = list(pool.map(lambda b: read_part(store, "big", *b), bounds * 2))
        assert b"".join(parts[: len(bounds)]) == data
        assert b"".join(parts[len(bounds):]) == data
        assert 1 <= len(opened) <= 8
        assert not gcs_backend.refused(store.fs)


def test_a_kept_alive_connection_the_server_closed_is_replaced(gcs_store):
    put(gcs_store, "k", b"0123456789")
    assert read_part(gcs_store, "k", 0, 4) == b"0123"
    for idle in gcs_backend._idle.values():  # the server hung up on the idle connections
        for conn in idle:
            if conn.sock is not None:
                conn.sock.shutdown(2)
    assert read_part(gcs_store, "k", 4, 10) == b"456789"
    assert not gcs_backend.refused(gcs_store.fs)


def test_the_bearer_token_comes_from_gcsfs_s_credentials(gcs_store, monkeypatch):
    """The headers of gcsfs's credentials object go with each GET (the emulator
    ignores them)."""
    seen = []
    credentials = gcs_store.fs.credentials

    def apply(headers):
        headers["Authorization"] = "Bearer from-gcsfs"
        seen.append(dict(headers))

    monkeypatch.setattr(credentials, "apply", apply)
    sent = []
    real_request = http.client.HTTPConnection.request

    def request(self, method, url, body=None, headers=None, **kwargs):
        sent.append(headers or {})
        return real_request(self, method, url, body, headers or {}, **kwargs)

    monkeypatch.setattr(http.client.HTTPConnection, "request", request)
    put(gcs_store, "k", b"0123456789")
    assert read_part(gcs_store, "k", 3, 6) == b"345"
    assert seen and sent[-1]["Authorization"] == "Bearer from-gcsfs"
