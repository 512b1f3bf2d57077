"""Opening a GCS dataset without gcsfs (:mod:`roxxel.backends.gcsopen`; issue 17, GCS
start-up): a fresh process reads a ``gs://`` dataset from the emulator cold and warm
without importing gcsfs, options gcsfs must interpret still get gcsfs, the manifest's
one GET falls back to gcsfs on any answer but 200, and Application Default Credentials
are sent as gcsfs sends them. No test reaches Google: the credentials are fakes, and
their token endpoint is a server on loopback."""

from __future__ import annotations

import datetime
import hashlib
import http.server
import json
import logging
import os
import pickle
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import google.auth
import google.auth.credentials
import google.auth.exceptions
import numpy as np
import pytest

import roxxel
from roxxel.backends import Store, gcs, gcsopen
from roxxel.backends.base import TooLarge
from roxxel.backends.gcsopen import DeferredGCSFileSystem, deferred_gcs
from roxxel.backends.urls import resolve
from roxxel.errors import NotFoundError, StorageError

REPO = Path(__file__).resolve().parent.parent
BUCKET = "roxxel-tests"  # made by conftest's gcs_server fixture
HEAVY = ["gcsfs", "aiohttp", "requests", "google"]  # google: not even google.auth for token="anon"


def _records(n: int = 120) -> list[bytes]:
    return [np.full(50 + 7 * i, i % 251, dtype=np.uint8).tobytes() for i in range(n)]


@pytest.fixture(scope="module")
def gs_dataset(gcs_server) -> tuple[str, list[bytes]]:
    """A dataset of several shards on the emulator, written through gcsfs."""
    url = gcs_server.url(BUCKET, f"t{uuid.uuid4().hex[:12]}/ds")
    records = _records()
    with roxxel.Writer(url, storage_options=gcs_server.storage_options, shard_bytes=8 * 1024) as writer:
        writer.extend(records)
    return url, records


@pytest.fixture
def clean_env(monkeypatch):
    """No emulator host, no client certificate, no proxy, no fsspec GCS configuration."""
    for name in ("STORAGE_EMULATOR_HOST", "GOOGLE_API_USE_CLIENT_CERTIFICATE", "GOOGLE_API_CERTIFICATE_CONFIG",
                 "GOOGLE_CLOUD_UNIVERSE_DOMAIN", "GCSFS_DEFAULT_PROJECT", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(name, raising=False)
    for name in list(os.environ):
        if name.lower() in ("http_proxy", "https_proxy", "all_proxy"):
            monkeypatch.delenv(name)


# -- a fresh process ------------------------------------------------------------------------

_CHILD = """
import hashlib, json, sys, tempfile
import roxxel
url, options = sys.argv[1], json.loads(sys.argv[2])
cache = tempfile.mkdtemp()
digests = []
for _ in ("cold", "warm"):
    with roxxel.open(url, storage_options=options, cache_dir=cache) as ds:
        digests.append(hashlib.sha256(b"".join(bytes(r) for r in ds)).hexdigest())
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[3].split(",")))
print(json.dumps({"heavy": heavy, "digests": digests}))
"""


@pytest.mark.parametrize("where", ["endpoint_url", "STORAGE_EMULATOR_HOST"])
def test_a_fresh_process_reads_a_gs_dataset_cold_and_warm_without_gcsfs(gcs_server, gs_dataset, where):
    url, records = gs_dataset
    env = {**os.environ, "PYTHONPATH": str(REPO), "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
    options: dict[str, Any] = {"token": "anon"}
    if where == "endpoint_url":
        options["endpoint_url"] = gcs_server.endpoint
        env.pop("STORAGE_EMULATOR_HOST", None)
    else:
        env["STORAGE_EMULATOR_HOST"] = gcs_server.endpoint.removeprefix("http://")  # gcsfs adds http://
    out = subprocess.run([sys.executable, "-c", _CHILD, url, json.dumps(options), ",".join(HEAVY)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["heavy"] == []
    expected = hashlib.sha256(b"".join(records)).hexdigest()
    assert seen["digests"] == [expected, expected]


def test_a_deferred_store_writes_lists_and_reads_through_gcsfs_when_asked(gcs_server, gs_dataset, tmp_path):
    """Whatever needs gcsfs (a listing, a write) materializes it once; reads go on."""
    url, records = gs_dataset
    store = Store(url, gcs_server.storage_options)
    backend = store.backend
    assert isinstance(backend._fs, DeferredGCSFileSystem)
    assert "manifest.json" in {path.rsplit("/", 1)[-1] for path in backend.list_info(store.root)}
    assert type(backend._fs).__module__.startswith("gcsfs")
    copy = gcs_server.url(BUCKET, f"t{uuid.uuid4().hex[:12]}/ds")
    with roxxel.Writer(copy, storage_options=gcs_server.storage_options, shard_bytes=8 * 1024) as writer:
        writer.extend(records[:10])
    with roxxel.open(copy, storage_options=gcs_server.storage_options, cache_dir=str(tmp_path)) as ds:
        assert [bytes(r) for r in ds] == records[:10]


# -- what is plain ---------------------------------------------------------------------------

@pytest.mark.parametrize("extra", [
    {"requester_pays": True},
    {"session_kwargs": {"trust_env": True}},
    {"consistency": "md5"},
    {"version_aware": True},
    {"unknown_option": 1},
    {"token": "cache"},
    {"token": "cloud"},
    {"token": {"refresh_token": "x", "client_id": "y", "client_secret": "z"}},
    {"token": "/no/such/service-account.json"},
    {"access": "everything"},
    {"endpoint_url": "ftp://127.0.0.1:1"},
])
def test_options_that_are_not_plain_are_left_to_gcsfs(gcs_server, clean_env, extra):
    options = {**gcs_server.storage_options, **extra}
    assert deferred_gcs(gcs_server.url(BUCKET, "ds"), options) is None


def test_a_url_or_configuration_gcsfs_must_interpret_is_left_to_it(gcs_server, clean_env, monkeypatch):
    options = gcs_server.storage_options
    for url in (f"gs://{BUCKET}/ds?generation=1", f"gs://{BUCKET}/ds#1", f"simplecache::gs://{BUCKET}/ds",
                "gs://", f"s3://{BUCKET}/ds"):
        assert deferred_gcs(url, options) is None, url
    assert deferred_gcs(f"gcs://{BUCKET}/ds/", options)[1] == f"{BUCKET}/ds"
    from fsspec.config import conf

    monkeypatch.setitem(conf, "gcs", {"requester_pays": True})  # as FSSPEC_GCS_REQUESTER_PAYS=1 sets it
    assert deferred_gcs(f"gs://{BUCKET}/ds", options) is None
    monkeypatch.delitem(conf, "gcs")
    monkeypatch.setenv("GOOGLE_API_USE_CLIENT_CERTIFICATE", "true")  # gcsfs may present a certificate
    assert deferred_gcs(f"gs://{BUCKET}/ds", {"token": "anon"}) is None
    assert deferred_gcs(f"gs://{BUCKET}/ds", options) is not None  # not over http to an emulator


def test_a_requester_pays_dataset_resolves_to_gcsfs(gcs_server, clean_env):
    fs, _ = resolve(gcs_server.url(BUCKET, "ds"), {**gcs_server.storage_options, "requester_pays": True})
    assert type(fs).__module__.startswith("gcsfs") and fs.requester_pays
    fs, _ = resolve(gcs_server.url(BUCKET, "ds"), gcs_server.storage_options)
    assert isinstance(fs, DeferredGCSFileSystem)
    assert fs.media_url(f"{BUCKET}/a dir/é+x") == (  # a slash in a name is quoted too, as gcsfs quotes it
        f"{gcs_server.endpoint}/download/storage/v1/b/{BUCKET}/o/a%20dir%2F%C3%A9%2Bx?alt=media"
    )
    for name in ("k", "ds/shards/00000-000001-ab.rox", "a dir/é+x?#"):  # gcsfs's own URL
        assert fs.media_url(f"{BUCKET}/{name}") == fs.materialize().url(f"{BUCKET}/{name}")


# -- the manifest's GET ------------------------------------------------------------------------

def test_a_missing_manifest_is_the_same_error_as_through_gcsfs(gcs_server):
    """The same NotFoundError, naming the manifest's URL, as through gcsfs (whose own
    FileNotFoundError, quoted inside, names the API's path instead of the object's)."""
    url = gcs_server.url(BUCKET, f"t{uuid.uuid4().hex[:12]}/none")
    deferred = Store(url, gcs_server.storage_options)
    assert isinstance(deferred.backend._fs, DeferredGCSFileSystem)
    through_gcsfs = Store(url, fs=deferred.backend._fs.materialize())
    errors = []
    for store in (deferred, through_gcsfs):
        with pytest.raises(NotFoundError) as caught:
            store.read_versioned("manifest.json")
        errors.append(str(caught.value).split("(FileNotFoundError:")[0])
    assert errors[0] == errors[1] and f"{url}/manifest.json" in errors[0]
    assert isinstance(deferred.backend._fs, DeferredGCSFileSystem)  # the 404 needed no gcsfs


def test_an_object_s_info_is_one_get_of_its_resource_and_says_what_gcsfs_says(gcs_server, gs_dataset):
    """exists/size/stat of a deferred store, as a writer's check that no dataset is there
    asks them: one GET of the object's JSON resource, no gcsfs; the same answers as gcsfs."""
    url, _ = gs_dataset
    store = Store(url, gcs_server.storage_options)
    assert store.exists("manifest.json") and not store.exists("manifest.json.missing")
    with pytest.raises(NotFoundError, match="nothing-here"):
        store.size("nothing-here")
    info = store.backend.info(store.path("manifest.json"))
    assert isinstance(store.backend._fs, DeferredGCSFileSystem)  # no gcsfs so far
    through_gcsfs = Store(url, fs=store.backend._fs.materialize())
    expected = through_gcsfs.backend.info(through_gcsfs.path("manifest.json"))
    for field in ("name", "size", "type", "generation", "md5Hash", "crc32c", "mtime", "ctime"):
        assert info.get(field) == expected.get(field), field
    assert store.stat("manifest.json") == through_gcsfs.stat("manifest.json")
    assert info["size"] == len(store.read_bytes("manifest.json"))


def test_the_manifest_s_get_bounds_its_size_and_gives_the_generation(gcs_server):
    url = gcs_server.url(BUCKET, f"t{uuid.uuid4().hex[:12]}")
    store = Store(url, gcs_server.storage_options)
    gcs_fs = store.backend._fs.materialize()
    gcs_fs.pipe_file(store.path("m.json"), b"x" * 100)
    store = Store(url, gcs_server.storage_options)  # deferred again
    fs = store.backend._fs
    assert isinstance(fs, DeferredGCSFileSystem)
    read = gcs.read_deferred(fs, store.path("m.json"), 100)
    assert read is not None and read.data == b"x" * 100
    assert read.version == str(gcs_fs.info(store.path("m.json"))["generation"])
    with pytest.raises(TooLarge):
        gcs.read_deferred(fs, store.path("m.json"), 99)
    with pytest.raises(StorageError, match=rf"could not read {url}/m\.json: it is 100 bytes, more than the limit"):
        store.read_versioned("m.json", max_bytes=99)
    assert isinstance(store.backend._fs, DeferredGCSFileSystem)  # refused without gcsfs


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A stand-in for GCS's JSON API on loopback: ``answer(path)`` -> (status, headers,
    body, bytes to send); every request's path and headers are recorded."""

    protocol_version = "HTTP/1.1"
    seen: ClassVar[list[tuple[str, str, dict[str, str], bytes]]] = []
    endpoint: ClassVar[str] = ""
    answer: ClassVar[Any] = None

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        type(self).seen.append((self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        status, headers, content, send = type(self).answer(self.command, self.path)
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        self.wfile.write(content[:send])
        if send < len(content):
            self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_gcs() -> Iterator[type[_Recorder]]:
    handler = type("Handler", (_Recorder,), {"seen": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    handler.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield handler
    finally:
        server.shutdown()
        server.server_close()


def test_an_answer_that_is_not_200_or_a_short_body_is_left_to_gcsfs(fake_gcs, clean_env):
    body = b"m" * 100
    fake_gcs.answer = staticmethod(lambda method, path: {
        "/download/storage/v1/b/bk/o/ok.json?alt=media": (200, {"x-goog-generation": "17"}, body, 100),
        "/download/storage/v1/b/bk/o/short.json?alt=media": (200, {}, body, 50),
        "/download/storage/v1/b/bk/o/moved.json?alt=media": (302, {"Location": "http://elsewhere/"}, b"", 0),
        "/download/storage/v1/b/bk/o/gzip.json?alt=media": (200, {"Content-Encoding": "gzip"}, body, 100),
    }.get(path, (503, {}, b"busy", 4)))
    fs, _ = deferred_gcs("gs://bk", {"endpoint_url": fake_gcs.endpoint, "token": "anon"})
    read = gcs.read_deferred(fs, "bk/ok.json", 1000)
    assert read is not None and (read.data, read.version) == (body, "17")
    for name in ("short.json", "moved.json", "gzip.json", "busy.json"):
        assert gcs.read_deferred(fs, f"bk/{name}", 1000) is None, name
    assert all("authorization" not in headers for _, _, headers, _ in fake_gcs.seen)  # anonymous
    assert gcs.read_deferred(fs, "bk/ok.json", None) is not None  # the connections still work


# -- Application Default Credentials -----------------------------------------------------------

class FakeCredentials(google.auth.credentials.Credentials):
    """Credentials whose refresh hands out ``token-1``, ``token-2``, ... valid for an hour."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes = 0
        self.lock = threading.Lock()

    def refresh(self, request: Any) -> None:
        with self.lock:
            self.refreshes += 1
            self.token = f"secret-token-{self.refreshes}"
        self.expiry = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(hours=1)


@pytest.fixture
def adc(monkeypatch, clean_env) -> dict[str, Any]:
    """``google.auth.default`` patched to find :class:`FakeCredentials` for project ``proj``."""
    found: dict[str, Any] = {"credentials": FakeCredentials(), "project": "proj", "calls": []}

    def default(scopes=None, request=None, **kwargs):
        found["calls"].append((scopes, request))
        return found["credentials"], found["project"]

    monkeypatch.setattr(google.auth, "default", default)
    monkeypatch.setattr(gcsopen, "_ADC", {})  # no lookup of another test's
    return found


def test_default_credentials_are_sent_as_a_bearer_token_and_refreshed_when_expired(fake_gcs, adc):
    fake_gcs.answer = staticmethod(lambda method, path: (200, {"x-goog-generation": "3"}, b"0123456789", 10))
    found = deferred_gcs("gs://bk/ds", {"endpoint_url": fake_gcs.endpoint})
    assert found is not None
    fs, _ = found
    [(scopes, request)] = adc["calls"]
    assert scopes == ["https://www.googleapis.com/auth/devstorage.full_control"]  # gcsfs's default access
    assert isinstance(request, gcsopen.AuthTransport)
    credentials = adc["credentials"]
    assert gcs.read_deferred(fs, "bk/ds/manifest.json", None).data == b"0123456789"
    into = memoryview(bytearray(4))
    assert gcs.read_deferred_range(fs, "bk/ds/shard", 2, 6, into) is None  # a 200 to a range: gcsfs's
    assert credentials.refreshes == 1
    credentials.expiry = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) + datetime.timedelta(
        seconds=120)  # valid for google.auth, but within gcsfs's five minutes
    with ThreadPoolExecutor(16) as pool:
        headers = list(pool.map(lambda _: fs.headers(), range(64)))
    assert credentials.refreshes == 2  # once, however many threads asked
    assert {h["authorization"] for h in headers} == {"Bearer secret-token-2"}
    sent = [headers.get("authorization") for _, _, headers, _ in fake_gcs.seen]
    assert sent == ["Bearer secret-token-1", "Bearer secret-token-1"]
    assert "secret" not in repr(fs) and b"secret" not in pickle.dumps(fs)
    assert deferred_gcs("gs://bk/other", {"endpoint_url": fake_gcs.endpoint})[0]._resolve() is credentials
    assert len(adc["calls"]) == 1  # the lookup is kept while the environment is unchanged


@pytest.mark.parametrize("case", ["none found", "refresh fails", "another project", "read_only"])
def test_default_credentials_gcsfs_would_not_use_leave_the_url_to_gcsfs(adc, case, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="roxxel")
    options: dict[str, Any] = {"endpoint_url": "http://127.0.0.1:9", "project": "proj"}
    if case == "none found":
        def missing(**kwargs):
            raise google.auth.exceptions.DefaultCredentialsError("none")

        monkeypatch.setattr(google.auth, "default", missing)
        assert deferred_gcs("gs://bk/ds", options) is None
        assert deferred_gcs("gs://bk/ds", {**options, "token": "google_default"}) is None
    elif case == "another project":
        assert deferred_gcs("gs://bk/ds", {**options, "project": "other"}) is None
        monkeypatch.setenv("GCSFS_DEFAULT_PROJECT", "other")  # gcsfs's default project
        assert deferred_gcs("gs://bk/ds", {"endpoint_url": options["endpoint_url"]}) is None
    elif case == "read_only":
        assert deferred_gcs("gs://bk/ds", {**options, "access": "read_only"}) is not None
        assert adc["calls"][-1][0] == ["https://www.googleapis.com/auth/devstorage.read_only"]
    else:  # refresh fails: the ranged read is gcsfs's from then on, with no secret in the log
        def broken(request):
            raise google.auth.exceptions.RefreshError("no refresh")

        monkeypatch.setattr(adc["credentials"], "refresh", broken)
        fs, path = deferred_gcs("gs://bk/ds", options)
        assert gcs.read_deferred(fs, f"{path}/manifest.json", None) is None
        assert gcs.read_deferred_range(fs, f"{path}/shard", 0, 4, memoryview(bytearray(4))) is None
        assert gcs.refused(fs)
        assert caplog.records and "secret" not in caplog.text  # said why, without the token


def test_the_http_client_transport_refreshes_real_google_auth_credentials(fake_gcs, clean_env):
    """google.auth's own user credentials refresh through :class:`AuthTransport` (a POST
    to their token endpoint, here on loopback), without ``requests``."""
    from google.oauth2.credentials import Credentials

    fake_gcs.answer = staticmethod(lambda method, path: (
        200, {"Content-Type": "application/json"},
        json.dumps({"access_token": "fresh-token", "expires_in": 3600, "token_type": "Bearer"}).encode(), 10**6))
    credentials = Credentials(None, refresh_token="refresh-secret", client_id="cid", client_secret="csecret",
                              token_uri=f"{fake_gcs.endpoint}/token")
    credentials.refresh(gcsopen.AuthTransport())
    assert credentials.token == "fresh-token"
    [(method, path, _, body)] = fake_gcs.seen
    assert (method, path) == ("POST", "/token") and b"grant_type=refresh_token" in body
    with pytest.raises(google.auth.exceptions.TransportError):
        gcsopen.AuthTransport()("http://127.0.0.1:9/token", "POST", body=b"")  # nothing listens


# -- pickles and forks -------------------------------------------------------------------------

def test_a_pickled_dataset_carries_no_credentials_and_reads_after_unpickling(gcs_server, gs_dataset, tmp_path, adc):
    url, records = gs_dataset
    with roxxel.open(url, storage_options=gcs_server.storage_options, cache_dir=str(tmp_path / "a")) as ds:
        data = pickle.dumps(ds)
        clone = pickle.loads(data)
        try:
            assert [bytes(clone[i]) for i in (0, 5, len(records) - 1)] == [records[0], records[5], records[-1]]
        finally:
            clone.close()
    # with Application Default Credentials found and used, neither the object nor the token travels
    found = deferred_gcs(url, {"endpoint_url": gcs_server.endpoint})
    assert found is not None
    fs, path = found
    assert gcs.read_deferred(fs, f"{path}/manifest.json", None) is not None  # the token was made and sent
    assert adc["credentials"].token == "secret-token-1"
    backend = Store(url, {"endpoint_url": gcs_server.endpoint}).backend
    backend._fs = fs
    pickled = pickle.dumps(backend)
    assert b"secret-token" not in pickled and b"FakeCredentials" not in pickled
    assert pickle.loads(pickled).read(f"{path}/manifest.json", None).data.startswith(b"{")
    child = backend.forked()
    assert isinstance(child._fs, DeferredGCSFileSystem) and child._fs is not fs


def test_a_zonal_bucket_on_google_s_endpoint_is_left_to_gcsfs(fake_gcs, clean_env, monkeypatch):
    """gcsfs's zonal-aware class reads a bucket whose storage layout says ``zone`` over
    gRPC: its parts are gcsfs's. The layout is asked once per bucket, and only where that
    class is enabled and the endpoint is Google's (here the loopback server stands in)."""
    monkeypatch.setattr(gcsopen, "_GOOGLE", fake_gcs.endpoint)
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "true")
    layouts = {"zonal": (200, {"locationType": "zone"}), "regional": (200, {"locationType": "region"}),
               "denied": (403, {"error": "no"})}

    def answer(method, path):
        if path.endswith("/storageLayout"):
            status, layout = layouts[path.split("/")[4]]
            return status, {}, json.dumps(layout).encode(), 10**6
        return 206, {"Content-Range": "bytes 0-3/10"}, b"0123", 4

    fake_gcs.answer = staticmethod(answer)

    def read(bucket: str) -> int | None:
        fs, path = deferred_gcs(f"gs://{bucket}/ds", {"endpoint_url": fake_gcs.endpoint, "token": "anon"})
        got = [gcs.read_deferred_range(fs, f"{path}/shard", 0, 4, memoryview(bytearray(4))) for _ in range(3)]
        assert gcs.refused(fs) == (got[0] is None)
        return got[0]

    assert read("zonal") is None
    assert read("regional") == 4 and read("denied") == 4  # no permission to ask: JSON, as gcsfs reads then
    asked = [path for _, path, _, _ in fake_gcs.seen if path.endswith("/storageLayout")]
    assert asked == [f"/storage/v1/b/{b}/storageLayout" for b in ("zonal", "regional", "denied")]
    monkeypatch.setenv("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")  # gcsfs's plain class: no question
    assert read("zonal") == 4
