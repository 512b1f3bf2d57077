"""Start-up: what opening a dataset imports, hashes and cleans (issue 17, part 6).

Behaviour only: no wall-clock figures (those are scripts/bench_startup.py's). A fresh
process is a subprocess; its ``sys.modules`` says what it imported.
"""

from __future__ import annotations

import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from unittest import mock

import pytest

import roxxel
from roxxel.backends import Store
from roxxel.backends.s3open import DeferredS3FileSystem, sigv4_headers
from roxxel.cache import ShardCache
from roxxel.cache import store as cache_store
from roxxel.manifest.io import read_manifest, read_snapshot

REPO = Path(__file__).resolve().parent.parent
HEAVY = ["s3fs", "aiohttp", "aiobotocore", "botocore", "gcsfs"]

_CHILD = r"""
import json, sys
import roxxel
lazy = {"numpy.random", "numpy.ma"} - set(sys.modules)
url, options, cache_dir = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
with roxxel.open(url, storage_options=options, cache_dir=cache_dir) as ds:
    first = bytes(next(iter(ds.iter(seed=1))))
    state = ds.iter(seed=1)
    next(state)
    resumed = bytes(next(ds.resume(state.state())))
    records = len(ds)
heavy = sorted({m.split(".")[0] for m in sys.modules} & set(sys.argv[4].split(",")))
print(json.dumps({"heavy": heavy, "lazy": sorted(lazy), "records": records, "first": first.hex()[:16], "resumed": resumed.hex()[:16]}))
"""


def fresh_open(url: str, options: dict, cache_dir: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, url, json.dumps(options), str(cache_dir), ",".join(HEAVY)],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def write(url: str, options: dict | None = None, n: int = 40) -> roxxel.Manifest:
    with roxxel.Writer(url, shard_bytes=256, storage_options=options) as writer:
        writer.extend(f"record-{i:04d}".encode() * 3 for i in range(n))
    return writer.manifest


# -- what an open imports ------------------------------------------------------------


def test_opening_a_local_dataset_imports_no_cloud_sdk(tmp_path):
    url = str(tmp_path / "ds")
    write(url)
    seen = fresh_open(url, {}, tmp_path / "cache")
    assert seen["heavy"] == []
    assert seen["lazy"] == []  # NumPy's lazy submodules the first ds.iter needs: at import
    assert seen["records"] == 40


def test_an_s3_read_imports_neither_s3fs_nor_botocore(s3_server, tmp_path):
    """The manifest is read by one signed GET, and with keys in the options the shards
    are downloaded by signed ranged GETs too: a cold read needs neither s3fs (aiobotocore,
    aiohttp) nor botocore, nor does a warm one."""
    url = s3_server.url("roxxel-tests", f"startup-{tmp_path.name}/ds")
    options = s3_server.storage_options
    write(url, options)
    cold = fresh_open(url, options, tmp_path / "cold")
    assert cold["heavy"] == []
    with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "warm")) as ds:
        ds.warm()
    warm = fresh_open(url, options, tmp_path / "warm")
    assert warm["heavy"] == []
    assert (warm["records"], warm["first"], warm["resumed"]) == (cold["records"], cold["first"], cold["resumed"])


def test_shard_downloads_with_keys_from_botocore_s_chain_go_through_s3fs(s3_server, tmp_path, monkeypatch):
    """Ranged GETs are signed here only with static keys: keys that botocore finds (and may
    refresh) at an explicit endpoint leave the shards to s3fs's presigned GETs (the same
    records)."""
    url = s3_server.url("roxxel-tests", f"chain-{tmp_path.name}/ds")
    options = s3_server.storage_options
    write(url, options)
    stated = fresh_open(url, options, tmp_path / "stated")
    options.pop("key"), options.pop("secret")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    chained = fresh_open(url, options, tmp_path / "chained")
    assert "s3fs" in chained["heavy"] and stated["heavy"] == []
    assert (chained["records"], chained["first"]) == (stated["records"], stated["first"])


def test_an_s3_store_defers_s3fs_until_something_needs_it(s3_server, tmp_path):
    url = s3_server.url("roxxel-tests", f"defer-{tmp_path.name}/ds")
    manifest = write(url, s3_server.storage_options)
    store = Store(url, s3_server.storage_options)
    assert isinstance(store.backend._fs, DeferredS3FileSystem)
    assert read_manifest(store) == manifest
    assert isinstance(store.backend._fs, DeferredS3FileSystem)  # one signed GET
    snapshot = read_snapshot(store)  # publishers get the ETag all the same
    assert snapshot.manifest == manifest and snapshot.version
    assert store.list("shards")  # a listing needs s3fs
    assert type(store.fs).__name__ == "S3FileSystem"


def test_an_s3_object_s_info_is_one_signed_head(s3_server, tmp_path):
    """exists/size/stat of a deferred store answer what s3fs answers, without s3fs: the
    writer's check that no dataset is there costs one request, not s3fs's import."""
    url = s3_server.url("roxxel-tests", f"head-{tmp_path.name}/ds")
    write(url, s3_server.storage_options)
    store = Store(url, s3_server.storage_options)
    size, modified = store.stat("manifest.json")
    assert store.exists("manifest.json") and not store.exists("manifest.json.missing")
    assert store.size("manifest.json") == size == len(store.read_bytes("manifest.json"))
    assert isinstance(store.backend._fs, DeferredS3FileSystem)  # no s3fs so far
    with pytest.raises(roxxel.NotFoundError, match="nothing-here"):
        store.size("nothing-here")
    through_s3fs = Store(url, s3_server.storage_options)
    _ = through_s3fs.fs  # made now: its info is s3fs's
    assert through_s3fs.stat("manifest.json") == (size, modified) and modified is not None


def test_a_missing_s3_dataset_is_reported_as_through_s3fs(s3_server, tmp_path):
    url = s3_server.url("roxxel-tests", f"missing-{tmp_path.name}/ds")
    with pytest.raises(roxxel.NotFoundError, match="manifest.json"):
        roxxel.open(url, storage_options=s3_server.storage_options, cache_dir=str(tmp_path / "cache"))


@pytest.mark.parametrize("change", [
    {"anon": True},
    {"requester_pays": True},
    {"config_kwargs": {"s3": {"addressing_style": "virtual"}}},
    {"client_kwargs": {"verify": False}},
])
def test_options_the_signed_get_does_not_repeat_go_through_s3fs(s3_server, change):
    options = {**s3_server.storage_options, **change}
    options = {k: v for k, v in options.items() if v is not None}
    store = Store("s3://roxxel-tests/x", options)
    assert type(store.backend._fs).__name__ == "S3FileSystem"


def test_the_signature_is_botocores():
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    now = time.gmtime(1765000000)
    for token in (None, "session/token+="):
        for target in ("/bucket/ds/manifest.json", "/b/a%20b/c~d/%C3%A9.json"):
            ours = sigv4_headers("GET", "127.0.0.1:9000", target, "eu-west-1", ("AKID", "SECRET", token), now)
            request = AWSRequest(method="GET", url="http://127.0.0.1:9000" + target)
            with mock.patch("botocore.auth.get_current_datetime", return_value=datetime.datetime(*now[:6])):
                S3SigV4Auth(Credentials("AKID", "SECRET", token), "s3", "eu-west-1").add_auth(request)
            assert ours["Authorization"] == request.headers["Authorization"]
            assert ours["x-amz-date"] == request.headers["X-Amz-Date"]


@pytest.mark.parametrize(("method", "params", "payload"), [
    ("POST", {"uploads": ""}, None),  # CreateMultipartUpload
    ("PUT", {"partNumber": "7", "uploadId": "2~a.b_c-d+e/f=g h"}, "UNSIGNED-PAYLOAD"),  # UploadPart
])
def test_the_signature_of_a_multipart_request_is_botocores(method, params, payload):
    """The growing upload's requests (roxxel.backends.growing): a query string, and an
    unsigned body, signed as botocore signs them."""
    from botocore.auth import S3SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from roxxel.backends.s3open import _EMPTY_SHA256, canonical_query

    now = time.gmtime(1765000000)
    target, query = "/bucket/ds/shards/00000-000000-0123456789ab.rox", canonical_query(params)
    ours = sigv4_headers(method, "127.0.0.1:9000", target, "eu-west-1", ("AKID", "SECRET", "tok"), now, query,
                         payload or _EMPTY_SHA256)
    # (botocore encodes the query itself from params; "?uploads" is sent bare, as botocore sends it)
    request = (AWSRequest(method=method, url=f"http://127.0.0.1:9000{target}?uploads") if "uploads" in params
               else AWSRequest(method=method, url=f"http://127.0.0.1:9000{target}", params=params))
    with mock.patch("botocore.auth.get_current_datetime", return_value=datetime.datetime(*now[:6])), \
            mock.patch.object(S3SigV4Auth, "payload", return_value=payload or _EMPTY_SHA256):
        S3SigV4Auth(Credentials("AKID", "SECRET", "tok"), "s3", "eu-west-1").add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["x-amz-content-sha256"] == request.headers["X-Amz-Content-SHA256"]


# -- what an open hashes and cleans --------------------------------------------------


@pytest.mark.parametrize("kind", ["local", "memory"])
def test_a_readers_open_does_not_hash_the_manifest(kind, tmp_path, monkeypatch):
    url = str(tmp_path / "ds") if kind == "local" else f"memory://startup-{tmp_path.name}/ds"
    manifest = write(url)
    calls = []

    def counting(data: bytes) -> str:
        calls.append(len(data))
        return "sha256:" + "0" * 64

    monkeypatch.setattr(f"roxxel.backends.{kind}.digest", counting)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        assert ds.manifest == manifest
        assert bytes(ds[0]).startswith(b"record-0000")
    assert calls == []
    assert read_snapshot(Store(url)).version == "sha256:" + "0" * 64  # publishers still get one
    assert len(calls) == 1


def test_temp_files_are_cleaned_once_per_process_per_directory(tmp_path, monkeypatch):
    cleaned = []
    real = cache_store.clean_temp
    monkeypatch.setattr(cache_store, "clean_temp", lambda tmp: cleaned.append(tmp) or real(tmp))
    first, second = tmp_path / "a", tmp_path / "b"
    for _ in range(3):
        ShardCache(first)
    ShardCache(second)
    ShardCache(second)
    assert cleaned == [str(first / "tmp"), str(second / "tmp")]
    ShardCache(first).clean_temp()  # asked for: always
    assert len(cleaned) == 3


def test_a_new_process_cleans_what_a_dead_one_left(tmp_path):
    cache_dir = tmp_path / "cache"
    ShardCache(cache_dir)
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = cache_dir / "tmp" / f"{int(child.stdout)}.abc123.part"
    stale.write_bytes(b"partial")
    ShardCache(cache_dir)  # this process cleaned the directory already
    assert stale.exists()
    code = f"from roxxel.cache import ShardCache; ShardCache({str(cache_dir)!r})"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert not stale.exists()


def test_a_fork_right_after_open_reads_in_the_child(tmp_path):
    """A DataLoader-style fork right after open: the child reads without importing
    anything the parent had not (no import lock inherited half-held)."""
    url = str(tmp_path / "ds")
    write(url)
    code = (
        "import os, sys, roxxel\n"
        f"ds = roxxel.open({url!r}, cache_dir={str(tmp_path / 'cache')!r})\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if bytes(next(iter(ds.iter(seed=2)))).startswith(b'record-') else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "sys.exit(os.waitstatus_to_exitcode(status))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=60)
    assert done.returncode == 0


# -- what the first ds.iter or ds.resume computes ------------------------------------


def test_the_canonical_json_is_json_dumps_of_the_dict():
    """Manifest.to_json writes the shards column by column: the text (and so the
    fingerprint saved in every iteration state) must stay exactly json.dumps's."""
    import hashlib
    import random

    rng = random.Random(17)
    checked = 0
    for _ in range(200):
        shards = []
        for i in range(rng.randint(0, 12)):
            compression = rng.choice([None, "zstd"])
            raw = rng.randint(24, 10**12)
            shards.append({
                "uri": rng.choice(["shards/a", "shards/é€😀", 'shards/q"uote', "x y/z", "s/\u0001", "s/\u2028"]) + f"{i}.rox",
                "records": rng.randint(0, 1),
                "stored_size": raw if compression is None else rng.randint(1, raw),
                "raw_size": raw,
                "compression": compression,
                "checksum": "sha256:" + hashlib.sha256(bytes([i])).hexdigest(),
            })
        meta = rng.choice([{}, {"a": [1, 2.5, "é"], "b": {"c": None, "d": True}}, {"tok": "x\u2028y"}])
        doc = {"format": "roxxel.manifest", "version": 1, "records": sum(s["records"] for s in shards),
               "meta": meta, "shards": shards}
        try:
            manifest = roxxel.Manifest.from_dict(doc)
        except roxxel.ManifestError:
            continue  # a combination the schema refuses
        expected = json.dumps(manifest.to_dict(), ensure_ascii=True, allow_nan=False, separators=(",", ":"))
        assert manifest.to_json() == expected
        checked += 1
    assert checked > 50


def test_a_forked_child_rebuilds_the_s3_backend_deferred():
    """A fork DataLoader worker does not import s3fs or make a client to read cached
    shards: its backend is deferred again, even after the parent's made its filesystem."""
    from roxxel.backends import Store
    from roxxel.backends.s3open import DeferredS3FileSystem

    options = {"endpoint_url": "http://127.0.0.1:9", "key": "k", "secret": "s"}
    store = Store("s3://bucket/ds", options)
    assert isinstance(store.backend._fs, DeferredS3FileSystem)
    child = store.backend.forked()
    assert isinstance(child._fs, DeferredS3FileSystem) and child._fs.storage_options == options
    store.backend.fs  # the parent makes its S3FileSystem (nothing is sent)
    assert not isinstance(store.backend._fs, DeferredS3FileSystem)
    again = store.backend.forked()
    assert isinstance(again._fs, DeferredS3FileSystem) and again._fs.url == "s3://bucket/ds"


@pytest.mark.parametrize("protocol", ["s3", "gs"])
def test_a_protocol_fsspec_maps_elsewhere_is_not_deferred(protocol, monkeypatch):
    """A protocol registered to another implementation (a class path not imported yet, as
    ``fsspec.register_implementation("s3", "pkg.FS")`` leaves it) or configured through
    fsspec's own configuration is resolved by fsspec, not opened without it."""
    import importlib

    from roxxel.backends.gcsopen import deferred_gcs
    from roxxel.backends.s3open import deferred_s3

    defer = deferred_s3 if protocol == "s3" else deferred_gcs
    url = f"{protocol}://bucket/ds"
    options = {"key": "k", "secret": "s", "endpoint_url": "http://127.0.0.1:9"} if protocol == "s3" else {
        "token": "anon", "endpoint_url": "http://127.0.0.1:9"}
    assert defer(url, options) is not None
    registry = importlib.import_module("fsspec.registry")  # (fsspec.registry is also a mapping's name)
    monkeypatch.setitem(registry.known_implementations, protocol, {"class": "elsewhere.FileSystem"})
    monkeypatch.delitem(registry._registry, protocol, raising=False)
    assert defer(url, options) is None
    monkeypatch.undo()
    import fsspec.config

    monkeypatch.setitem(fsspec.config.conf, protocol, {"anon": True})
    assert defer(url, options) is None
