"""Whole-object S3 downloads as plain GETs of presigned URLs, and every way back to s3fs."""

from __future__ import annotations

import logging
import uuid

import pytest

from roxxel.backends import Store
from roxxel.backends import s3 as direct
from roxxel.backends import s3open
from roxxel.backends.s3 import DirectReader, open_direct, refused
from roxxel.errors import NotFoundError
from tests import servers
from tests.test_parts import read_through

BUCKET = "roxxel-tests"  # created by the session fixtures in conftest.py
DATA = bytes((i * 131 + 7) % 256 for i in range(3 * 2**20 + 123))


@pytest.fixture
def s3_store(s3_server) -> Store:
    store = Store(s3_server.url(BUCKET, f"direct-{uuid.uuid4().hex[:10]}"),
                  s3_server.storage_options | {"skip_instance_cache": True})
    store.put_bytes_overwrite("obj", DATA)
    return store


def read_all(reader, size: int = 1 << 20) -> bytes:
    parts = []
    while chunk := reader.read_parts(size):
        parts.extend(chunk)
    reader.close()
    return b"".join(parts)


def stream(store: Store, key: str, size: int | None = None) -> bytes:
    parts: list[bytes] = []
    store.stream(key, parts.append, size=size)
    return b"".join(parts)


def test_an_object_is_read_whole_and_from_an_offset(s3_store):
    path = s3_store.path("obj")
    whole = open_direct(s3_store.fs, path, 0)
    assert isinstance(whole, DirectReader)
    assert read_all(whole) == DATA
    tail = open_direct(s3_store.fs, path, 2**20 + 5)
    assert isinstance(tail, DirectReader)
    assert read_all(tail, 333_333) == DATA[2**20 + 5 :]
    assert stream(s3_store, "obj", size=len(DATA)) == DATA


@pytest.mark.parametrize("option", [
    {"requester_pays": True},
    {"s3_additional_kwargs": {"SSECustomerAlgorithm": "AES256"}},
    {"client_kwargs": {"region_name": "us-east-1", "verify": False}},
    {"config_kwargs": {"proxies": {"http": "http://127.0.0.1:9"}}},
])
def test_stores_with_settings_of_their_own_are_read_through_s3fs(s3_server, option):
    options = s3_server.storage_options | {"skip_instance_cache": True} | option
    store = Store(s3_server.url(BUCKET, f"direct-{uuid.uuid4().hex[:10]}"), options)
    assert open_direct(store.fs, store.path("obj"), 0) is None


def test_a_proxy_in_the_environment_leaves_reads_to_s3fs(s3_store, monkeypatch):
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert open_direct(s3_store.fs, s3_store.path("obj"), 0) is None


def test_a_failing_direct_get_falls_back_to_s3fs_for_good(s3_store, monkeypatch, caplog):
    # A presigned URL on a port nothing listens on: the direct path is turned off for
    # this filesystem, and the download goes through s3fs, complete.
    sign = s3_store.fs.sign
    dead = f"http://127.0.0.1:{servers.free_port()}"
    calls = []

    def dead_sign(path, expiration=100, **kwargs):
        calls.append(path)
        url = sign(path, expiration=expiration, **kwargs)
        return dead + url[url.index("/", len("http://")):]

    monkeypatch.setattr(s3_store.fs, "sign", dead_sign)
    with caplog.at_level(logging.INFO, logger="roxxel.backends.s3"):
        assert stream(s3_store, "obj", size=len(DATA)) == DATA
        assert stream(s3_store, "obj", size=len(DATA)) == DATA
    assert len(calls) == 1 and refused(s3_store.fs)  # off for good after the first failure
    assert "direct S3 GETs are off for this store (ConnectionRefusedError)" in caplog.text
    assert "Signature" not in caplog.text and "Credential" not in caplog.text


def test_a_missing_object_is_reported_by_s3fs_and_keeps_the_direct_path(s3_store):
    assert open_direct(s3_store.fs, s3_store.path("missing"), 0) is None
    with pytest.raises(NotFoundError, match="missing"):
        stream(s3_store, "missing")
    assert not refused(s3_store.fs)
    assert isinstance(open_direct(s3_store.fs, s3_store.path("obj"), 0), DirectReader)


def test_https_endpoints_verify_the_certificate_and_host_with_botocore_s_bundle(s3_store, monkeypatch):
    import ssl
    import urllib.parse

    import botocore.httpsession

    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)
    parts = urllib.parse.urlsplit("https://bucket.s3.example.com/key?X-Amz-Signature=x")
    conn = direct._connect(s3_store.fs, parts)
    assert (conn.host, conn.port) == ("bucket.s3.example.com", 443)
    assert conn._context.verify_mode == ssl.CERT_REQUIRED and conn._context.check_hostname
    assert direct._ca_bundle() == botocore.httpsession.get_cert_path(True)
    assert direct._connect(s3_store.fs, parts)._context is conn._context  # loaded once
    monkeypatch.setenv("AWS_CA_BUNDLE", "/etc/custom-ca.pem")
    assert direct._ca_bundle() == "/etc/custom-ca.pem"


# -- ranged GETs signed here (no s3fs) ----------------------------------------------


def fresh_store(s3_server, options: dict | None = None) -> tuple[Store, str]:
    """A Store made as a reader makes it (over the deferred filesystem), with one object."""
    prefix = f"signed-{uuid.uuid4().hex[:10]}"
    options = s3_server.storage_options if options is None else options
    Store(s3_server.url(BUCKET, prefix), options | {"skip_instance_cache": True}).put_bytes_overwrite("obj", DATA)
    return Store(s3_server.url(BUCKET, prefix), options), "obj"


def test_parts_are_read_by_ranged_gets_signed_here_without_s3fs(s3_server):
    store, key = fresh_store(s3_server)
    buffer = memoryview(bytearray(2**20))
    for start, end in ((0, 1000), (2**20 + 5, 2 * 2**20 + 5), (len(DATA) - 77, len(DATA))):
        assert bytes(store.read_part(key, start, end, buffer)) == DATA[start:end]
    assert isinstance(store.backend._fs, direct.DeferredS3FileSystem)  # s3fs was never made


def test_a_part_handed_on_through_small_blocks_is_the_object_s_bytes(s3_server):
    """A placed part (received through a Through) arrives whole: block by block by the
    GET signed here, at once by s3fs where the store has settings of its own."""
    store, key = fresh_store(s3_server)
    requester_pays = Store(store._url, s3_server.storage_options | {"requester_pays": True})
    for reader, blocks in ((store, 5), (requester_pays, 1)):  # (2 MiB + 123 bytes in blocks of 512 KiB)
        assert read_through(reader, key, 2**20, len(DATA), 2**19) == (DATA[2**20 :], blocks)
    assert isinstance(store.backend._fs, direct.DeferredS3FileSystem)  # s3fs was never made there


def test_a_refused_signed_get_leaves_reads_to_s3fs_for_good(s3_server, monkeypatch, caplog):
    """A store that refuses our signature (403) is read through s3fs from then on, and
    the bytes are the same; the refusal is logged without the signature."""
    import http.server
    import threading
    import urllib.parse

    hits = []

    class Refuse(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            hits.append(self.headers.get("Authorization", ""))
            self.send_response(403)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Refuse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        store, key = fresh_store(s3_server)
        refusing = s3_server.storage_options | {"endpoint_url": f"http://127.0.0.1:{server.server_address[1]}"}
        elsewhere = direct.DeferredS3FileSystem(store.url(key), refusing)
        monkeypatch.setattr(direct, "ranged_request", lambda fs, path: s3open.ranged_request(elsewhere, path))
        buffer = memoryview(bytearray(2**20))
        with caplog.at_level(logging.INFO, logger="roxxel.backends.s3"):
            assert bytes(store.read_part(key, 10, 5000, buffer)) == DATA[10:5000]
            assert bytes(store.read_part(key, 5000, 9000, buffer)) == DATA[5000:9000]
    finally:
        server.shutdown()
    assert len(hits) == 1 and hits[0].startswith("AWS4-HMAC-SHA256 Credential=")
    assert "HTTP 403" in caplog.text and "Signature=" not in caplog.text


def test_ranged_gets_are_signed_here_only_with_static_credentials(s3_server, monkeypatch):
    """With an explicit endpoint, keys given in the options are signed with here; keys
    from botocore's chain (which may be temporary, refreshed by botocore) leave the
    ranged reads to s3fs. One resolution serves every object of the bucket."""
    path = f"{BUCKET}/some/shard.rox"
    stated = direct.DeferredS3FileSystem(s3_server.url(BUCKET, "x"), s3_server.storage_options)
    request = s3open.ranged_request(stated, path)
    assert request is not None and request.target == f"/{path}" and request.region == "us-east-1"
    other = s3open.ranged_request(stated, f"{BUCKET}/other key")
    assert other is not None and other.target == f"/{BUCKET}/other%20key" and other.where == request.where
    options = s3_server.storage_options
    options.pop("key"), options.pop("secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    assert s3open.ranged_request(direct.DeferredS3FileSystem(s3_server.url(BUCKET, "x"), options), path) is None
