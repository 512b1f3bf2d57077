"""Hostile inputs, end to end: manifests, shard bytes, zstd frames and cache directories
crafted to break roxxel, and a canary secret that must never leave the process.

Bytes from storage are never trusted (DESIGN invariant 3): a hostile manifest is refused
by ``roxxel.open`` with a ManifestError naming the field, before anything else is read or
written; a hostile shard whose checksum matches (the attacker wrote the manifest too) is
refused before it is published in the cache or mapped; a zstd frame is bounded by the
manifest's raw size without allocating what it declares; files planted in the cache are
neither followed nor served, and never block. Credentials (invariant 8) never appear in
logs, reprs, manifests, cache files, error messages or pickles other than the dataset's
own (deliberately, for DataLoader workers).
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import os
import pickle
import re
import stat
import struct
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import zstandard

import roxxel
from roxxel.backends import Store
from roxxel.cache import ShardCache
from roxxel.errors import IntegrityError, ManifestError, RoxxelError, StorageError
from roxxel.format import ShardWriter
from roxxel.manifest.io import dataset_store, read_manifest
from tests.faults import FaultyFileSystem, NoFaults, faulty_url
from tests.reliability_kit import check_all, check_record, forkserver, limited, make_record, write

rel = pytest.mark.reliability
MEMORY_LIMIT = 1 << 30  # address space for the rlimit tests: far below what the attacks ask for


# -- hostile manifests ---------------------------------------------------------------------------


@pytest.fixture
def honest(tmp_path) -> dict[str, Any]:
    """A real dataset's manifest document, to mutate."""
    url = str(tmp_path / "honest")
    write(url, 50, shard_bytes=2048)
    return json.loads(Path(url, "manifest.json").read_text())


def open_hostile(tmp_path: Path, document: Any, *, raw: bytes | None = None) -> tuple[pytest.ExceptionInfo, FaultyFileSystem]:
    """Publish ``document`` as a dataset's manifest and open it through a counting store;
    the open must fail with ManifestError, touching nothing but manifest.json."""
    url = tmp_path / "hostile"
    url.mkdir(exist_ok=True)
    data = raw if raw is not None else (document if isinstance(document, str) else json.dumps(document)).encode()
    (url / "manifest.json").write_bytes(data)
    fs = FaultyFileSystem(NoFaults())
    store = Store(faulty_url(url), fs=fs)
    cache_dir = tmp_path / "cache"
    with pytest.raises(ManifestError) as caught:
        roxxel.open(str(url), cache_dir=str(cache_dir), store=store)
    touched = {path for _, path in fs.log}
    assert touched == {f"{url}/manifest.json"}, f"read more than the manifest: {touched}"
    assert not cache_dir.exists(), "the cache was touched for a refused manifest"
    return caught, fs


def with_uri(doc: dict[str, Any], uri: Any) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["shards"][0]["uri"] = uri
    return doc


@rel("hostile", "Manifest with a path-traversal shard URI `{uri}`: refused naming shards[0].uri, nothing but the manifest read",
     summary="Manifests with path-traversal shard URIs (`..`, `../x`, `shards/../../x`, `./x`, `shards//x`, trailing `/`): refused naming shards[0].uri; nothing but the manifest read, nothing written")
@pytest.mark.parametrize("uri", ["../outside.rox", "shards/../../outside.rox", "..", "./shards/a.rox",
                                 "shards/./a.rox", "shards//a.rox", "shards/a.rox/"])
def test_manifest_path_traversal(tmp_path, honest, uri):
    caught, _ = open_hostile(tmp_path, with_uri(honest, uri))
    assert "shards[0].uri" in str(caught.value)


@rel("hostile", "Manifest with an absolute or foreign shard URI `{uri}`: refused naming shards[0].uri, nothing else read",
     summary="Manifests with absolute or foreign shard URIs (`/etc/passwd`, `file://`, another bucket on `s3://` and `gs://`, `memory://`, `https://`, `::` chains, Windows and UNC paths, NUL, `~`): refused naming shards[0].uri, nothing else read")
@pytest.mark.parametrize("uri", ["/etc/passwd", "file:///etc/passwd", "s3://another-bucket/x.rox",
                                 "gs://another-bucket/x.rox", "memory://x.rox", "https://example.com/x.rox",
                                 "simplecache::s3://b/x.rox", "shards/a::b.rox", "C:\\x.rox",
                                 "\\\\server\\share\\x.rox", "shards/\x00.rox", "~/x.rox/../../y"])
def test_manifest_foreign_uri(tmp_path, honest, uri):
    caught, _ = open_hostile(tmp_path, with_uri(honest, uri))
    assert "shards[0].uri" in str(caught.value)


@rel("hostile", "Manifest with `{field}` = {value!r}: refused naming the field",
     summary="Manifests with huge or negative shard counts and sizes (2**63, 2**64, 10**40, 2**62+1, -1, -5): refused naming the field")
@pytest.mark.parametrize(("field", "value"), [
    ("records", 2**63), ("records", -1), ("records", 10**40), ("stored_size", -5),
    ("raw_size", 2**64), ("records", 2**62 + 1),
])
def test_manifest_huge_or_negative_counts(tmp_path, honest, field, value):
    doc = copy.deepcopy(honest)
    doc["shards"][0][field] = value
    caught, _ = open_hostile(tmp_path, doc)
    assert f"shards[0].{field}" in str(caught.value)


@rel("hostile", "Manifest whose total record count ({records}) does not add up, or overflows: refused naming `records`",
     summary="Manifests whose total record count does not add up or overflows (1, 2**62, -1, 10**30): refused naming `records`")
@pytest.mark.parametrize("records", [1, 2**62, -1, 10**30])
def test_manifest_total_records(tmp_path, honest, records):
    doc = copy.deepcopy(honest)
    doc["records"] = records
    caught, _ = open_hostile(tmp_path, doc)
    assert "records" in str(caught.value)


@rel("hostile", "Manifest with a wrong type at `{path}` ({value!r}): refused naming the field",
     summary="Manifests with wrong types (strings, bools, floats, null, lists and objects where counts, URIs, checksums, compression or meta belong): refused naming the field")
@pytest.mark.parametrize(("path", "value"), [
    ("records", "10"), ("records", True), ("records", 1.5), ("records", None), ("version", "1"),
    ("shards", {}), ("meta", []), ("shards[0].records", 1.0), ("shards[0].records", False),
    ("shards[0].uri", 5), ("shards[0].checksum", 123), ("shards[0].compression", "gzip"),
    ("shards[0].compression", True), ("shards[0].stored_size", [1]),
])
def test_manifest_wrong_types(tmp_path, honest, path, value):
    doc = copy.deepcopy(honest)
    if path.startswith("shards[0]."):
        doc["shards"][0][path.split(".", 1)[1]] = value
    else:
        doc[path] = value
    caught, _ = open_hostile(tmp_path, doc)
    assert path.split(".")[-1] in str(caught.value)


@rel("hostile", "Manifest with duplicate keys ({where}): refused, not silently resolved to one value",
     summary="Manifests with duplicate keys (top level, shard entry, meta): refused, not silently resolved to one value")
@pytest.mark.parametrize("where", ["top level", "shard entry", "meta"])
def test_manifest_duplicate_keys(tmp_path, honest, where):
    text = json.dumps(honest)
    if where == "top level":
        text = text.replace('"records": ', '"records": 1, "records": ', 1)
    elif where == "shard entry":
        text = text.replace('"uri": ', '"uri": "shards/evil.rox", "uri": ', 1)
    else:
        text = text.replace('"meta": {', '"meta": {"a": 1, "a": 2, ', 1)
    caught, _ = open_hostile(tmp_path, text)
    assert "twice" in str(caught.value)


@rel("hostile", "Manifest with the non-finite number `{token}`: refused",
     summary="Manifests with NaN, Infinity, -Infinity or 1e999 (in meta and in counts): refused")
@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_manifest_non_finite_numbers(tmp_path, honest, token):
    text = json.dumps(honest).replace('"meta": {', f'"meta": {{"x": {token}, ', 1)
    caught, _ = open_hostile(tmp_path, text)
    assert "finite" in str(caught.value)
    text = json.dumps(honest).replace('"records": ', f'"records": {token}, "ignored": ', 1)
    open_hostile(tmp_path, text)


@rel("hostile", "Manifest nested {depth} levels deep: refused quickly, without a RecursionError or a crash",
     summary="Manifests nested 65 and 100,000 levels deep: refused quickly, without a RecursionError or a crash")
@pytest.mark.parametrize("depth", [65, 100_000])
def test_manifest_deep_nesting(tmp_path, honest, depth):
    nested = "[" * depth + "]" * depth
    text = json.dumps(honest).replace('"meta": {', f'"meta": {{"deep": {nested}, ', 1)
    started = time.monotonic()
    caught, _ = open_hostile(tmp_path, text)
    assert "nesting" in str(caught.value)
    assert time.monotonic() - started < 5


@rel("hostile", "Manifest of 65 MiB (over the 64 MiB cap): refused from its size alone, its bytes never read")
def test_manifest_oversized_is_never_read(tmp_path):
    url = tmp_path / "hostile"
    url.mkdir()
    with open(url / "manifest.json", "wb") as f:
        f.truncate(65 * 2**20)  # sparse
    fs = FaultyFileSystem(NoFaults())
    with pytest.raises((ManifestError, StorageError), match=r"manifest\.json.*(limit|at most)"):
        roxxel.open(str(url), cache_dir=str(tmp_path / "cache"), store=Store(faulty_url(url), fs=fs))
    assert fs.requests["cat_file"] == 0 and fs.requests["open"] == 0


# -- hostile shards (with matching checksums: the attacker wrote the manifest too) ----------------


def shard_bytes(records: list[bytes]) -> bytes:
    buf = io.BytesIO()
    writer = ShardWriter(buf)
    for record in records:
        writer.append(record)
    writer.finish()
    return buf.getvalue()


def footer(count: int, payload: int) -> bytes:
    return struct.pack("<qq8s", count, payload, b"ROXXEL01")


def hostile_shards() -> dict[str, tuple[bytes, int]]:
    """name -> (stored bytes, record count the manifest claims)."""
    good = shard_bytes([make_record(0), make_record(1), make_record(2)])
    payload = sum(len(make_record(i)) for i in range(3))
    body = good[:payload]
    ends = struct.unpack_from("<3q", good, payload)
    return {
        "huge record count": (body + struct.pack("<3q", *ends) + footer(2**60, payload), 2**60),
        "huge record count, manifest agreeing with the footer": (body + footer(2**40, payload), 2**40),
        "offset past the end": (body + struct.pack("<3q", ends[0], ends[1], payload + 10**9) + footer(3, payload), 3),
        "non-monotonic offsets": (body + struct.pack("<3q", ends[1], ends[0], ends[2]) + footer(3, payload), 3),
        "negative offset": (body + struct.pack("<3q", -5, ends[1], ends[2]) + footer(3, payload), 3),
        "trailing garbage": (good + b"garbage", 3),
        "truncated": (good[:-5], 3),
        "payload size past the end": (body + struct.pack("<3q", *ends) + footer(3, 2**62), 3),
        "not a shard at all": (b"<html>503 Service Unavailable</html>", 3),
        "empty file": (b"", 3),
    }


def publish_shard(url: Path, data: bytes, records: int, size: int | None = None) -> str:
    """Publish ``data`` as the dataset's one shard; the manifest claims ``records`` records
    and ``size`` stored and raw bytes (default: the true size)."""
    (url / "shards").mkdir(parents=True, exist_ok=True)
    (url / "shards" / "a.rox").write_bytes(data)
    size = len(data) if size is None else size
    info = {"uri": "shards/a.rox", "records": records, "stored_size": size, "raw_size": size,
            "compression": None, "checksum": "sha256:" + hashlib.sha256(data).hexdigest()}
    doc = {"format": "roxxel.manifest", "version": 1, "records": records, "meta": {}, "shards": [info]}
    (url / "manifest.json").write_text(json.dumps(doc))
    return info["checksum"]


@rel("hostile", "Shard with {case} (checksum matching): refused (by the manifest check, or naming the shard) before it is published in the cache or mapped; no temp file left",
     summary="Shards with matching checksums but huge record counts (with and without the manifest agreeing), offsets past the end, non-monotonic or negative offsets, a payload size past the end, trailing garbage, truncation, HTML or empty bodies: refused before anything is cached or mapped, no temp file left")
@pytest.mark.parametrize("case", list(hostile_shards()))
def test_hostile_shard_is_never_served(tmp_path, case):
    data, records = hostile_shards()[case]
    url = tmp_path / "ds"
    publish_shard(url, data, records)
    cache_dir = tmp_path / "cache"
    try:
        ds = roxxel.open(str(url), cache_dir=str(cache_dir), lookahead=0)
    except ManifestError as exc:  # the claimed count cannot fit the claimed size: refused up front
        assert "shards[0]" in str(exc)
        assert not cache_dir.exists()
        return
    with ds:
        with pytest.raises((IntegrityError, roxxel.ShardFormatError), match=r"shards/a\.rox"):
            ds[0]
        assert not ds.is_mapped(0)
    assert os.listdir(cache_dir / "shards") == []
    assert os.listdir(cache_dir / "tmp") == []


@rel("hostile", "Shard object in the store {how} than its manifest entry says: IntegrityError naming the shard (the documented error for bytes that do not match their manifest), nothing cached",
     summary="Shard objects shorter or longer than their manifest entry: IntegrityError naming the shard (a longer one serves only its verified bytes)")
@pytest.mark.parametrize("how", ["shorter", "longer"])
def test_shard_object_of_the_wrong_size(tmp_path, how):
    url = tmp_path / "ds"
    manifest = write(str(url), 60, shard_bytes=2048)
    path = url / str(manifest.shards.uris[0])
    data = path.read_bytes()
    path.write_bytes(data[:-9] if how == "shorter" else data + b"trailing bytes")
    cache_dir = tmp_path / "cache"
    with roxxel.open(str(url), cache_dir=str(cache_dir), lookahead=0) as ds:
        if how == "longer":  # the verified prefix is exactly the shard: serving it is safe
            try:
                check_all(ds, 60, 0)
            except IntegrityError as exc:
                assert str(manifest.shards.uris[0]) in str(exc)
            return
        with pytest.raises(IntegrityError, match=re.escape(str(manifest.shards.uris[0]))):
            ds[0]
    assert os.listdir(cache_dir / "tmp") == []


def run_limited(tmp_path: Path, url: Path, how: str) -> dict[str, Any]:
    result = tmp_path / f"{how}.json"
    ctx = forkserver()
    p = ctx.Process(target=limited, args=(MEMORY_LIMIT, how, str(url), str(tmp_path / f"cache-{how}"), str(result)))
    p.start()
    p.join(60)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail(f"{how}: still running after 60 s under the memory limit")
    assert p.exitcode == 0, f"{how}: the child died (exit code {p.exitcode})"
    return json.loads(result.read_text())


CLAIMS = {
    "10**9 records in a 3-record shard": (10**9, None),
    "2**36 records and 2**40 bytes, for a 3-record object": (2**36, 2**40),
}


@rel("hostile", "Manifest claiming {claim}, read with `{how}` under a 1 GiB address-space limit: a roxxel error naming the shard, not a MemoryError or a per-record allocation",
     summary="Manifests claiming 10**9 records for a 3-record shard, or 2**36 records in 2**40 bytes for a tiny object, read with ds[i], iter(ds), ds.iter and ds.stream under a 1 GiB address-space limit: a roxxel error naming the shard, never a MemoryError or a per-record allocation")
@pytest.mark.parametrize("how", ["getitem", "plain", "iter", "stream"])
@pytest.mark.parametrize("claim", list(CLAIMS))
def test_huge_claimed_record_count_is_refused_before_allocating(tmp_path, claim, how):
    good = shard_bytes([make_record(0), make_record(1), make_record(2)])
    url = tmp_path / "ds"
    publish_shard(url, good, *CLAIMS[claim])
    outcome = run_limited(tmp_path, url, how)
    assert outcome["error"] is not None and outcome["roxxel"], outcome
    assert "a.rox" in outcome["message"] or "shards[0]" in outcome["message"], outcome
    assert outcome["tmp"] == [] and outcome["shards"] == [], outcome


# -- hostile zstd frames ---------------------------------------------------------------------------

_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_RAW_BLOCK = b"\x19\x00\x00abc"  # the last block: raw, 3 bytes


ZSTD_CASES = [
    "declares 2**40 bytes, manifest says the real size",
    "declares 2**40 bytes and so does the manifest",
    "declares no size, needs a 2 GiB window",
    "declares no size, inflates to 2 GiB of zeros",
]


def zstd_frame(case: str) -> tuple[bytes, int]:
    """(frame bytes, raw_size the manifest claims) of one of ZSTD_CASES."""
    good = shard_bytes([make_record(i) for i in range(3)])
    huge_declared = _ZSTD_MAGIC + bytes([0xC0, 0x50]) + struct.pack("<Q", 2**40) + _RAW_BLOCK
    if case == ZSTD_CASES[0]:
        return huge_declared, len(good)
    if case == ZSTD_CASES[1]:
        return huge_declared, 2**40
    if case == ZSTD_CASES[2]:
        return _ZSTD_MAGIC + bytes([0x00, 0xA8]) + _RAW_BLOCK, len(good)
    bomb = io.BytesIO()
    with zstandard.ZstdCompressor(level=1, write_content_size=False).stream_writer(bomb, closefd=False) as w:
        chunk = bytes(1 << 20)
        for _ in range(2048):  # 2 GiB of zeros
            w.write(chunk)
    return bomb.getvalue(), len(good)


@rel("hostile", "zstd frame that {case}: refused under a 1 GiB address-space limit before allocating or writing more than the manifest's raw size",
     summary="zstd frames declaring 2**40 bytes (with the manifest disagreeing, and agreeing), needing a 2 GiB window, or inflating to 2 GiB of zeros: IntegrityError under a 1 GiB address-space limit, never more than the manifest's raw size written")
@pytest.mark.parametrize("case", ZSTD_CASES)
def test_hostile_zstd_frame(tmp_path, case):
    frame, raw_size = zstd_frame(case)
    url = tmp_path / "ds"
    (url / "shards").mkdir(parents=True)
    (url / "shards" / "a.rox.zst").write_bytes(frame)
    info = {"uri": "shards/a.rox.zst", "records": 3, "stored_size": len(frame), "raw_size": raw_size,
            "compression": "zstd", "checksum": "sha256:" + hashlib.sha256(frame).hexdigest()}
    doc = {"format": "roxxel.manifest", "version": 1, "records": 3, "meta": {}, "shards": [info]}
    (url / "manifest.json").write_text(json.dumps(doc))
    outcome = run_limited(tmp_path, url, "getitem")
    assert outcome["error"] == "IntegrityError", outcome
    assert "a.rox.zst" in outcome["message"], outcome
    assert outcome["tmp"] == [] and outcome["shards"] == [], outcome
    assert outcome["seconds"] < 20, outcome


# -- things planted in the cache directory ---------------------------------------------------------


def plant(kind: str, cache_dir: Path, checksum: str, outside: Path, good: bytes) -> None:
    stem = checksum.replace(":", "-")
    shard = cache_dir / "shards" / f"{stem}.rox"
    if kind == "symlink to a file outside, at the shard's name":
        outside.write_bytes(good)
        shard.symlink_to(outside)
    elif kind == "symlink to a corrupt file outside, at the shard's name":
        outside.write_bytes(b"x" * len(good))
        shard.symlink_to(outside)
    elif kind == "FIFO at the shard's name":
        os.mkfifo(shard)
    elif kind == "file of another user at the shard's name":
        shard.write_bytes(good)
        os.chown(shard, 4321, 4321)
    elif kind == "wrong-sized file at the shard's name":
        shard.write_bytes(good + b"!")
    elif kind == "symlink at the shard's lock file":
        outside.write_bytes(b"precious")
        (cache_dir / "locks" / f"{stem}.lock").symlink_to(outside)
    elif kind == "FIFO at the shard's lock file":
        os.mkfifo(cache_dir / "locks" / f"{stem}.lock")
    elif kind == "symlink at the publish lock":
        outside.write_bytes(b"precious")
        (cache_dir / "locks" / "publish.lock").symlink_to(outside)
    elif kind == "dead process's temp file that is a symlink outside":
        outside.write_bytes(b"precious")
        (cache_dir / "tmp" / "999999999.abcdef.part").symlink_to(outside)
    elif kind == "dead process's temp file that is a FIFO":
        os.mkfifo(cache_dir / "tmp" / "999999999.ghijkl.part")
    elif kind == "foreign files in every folder":
        (cache_dir / "datasets").mkdir(exist_ok=True)
        for sub in ("shards", "tmp", "locks", "digests", "datasets"):
            (cache_dir / sub / "notes.txt").write_text("mine")
        (cache_dir / "shards" / "sha256-zz.rox").write_text("not a checksum name")
        (cache_dir / "datasets" / "junk.json").write_text("{not json")
    elif kind == "symlinked datasets folder":
        outside.mkdir()
        (cache_dir / "datasets").symlink_to(outside)
    else:
        raise ValueError(kind)


PLANTS = [
    "symlink to a file outside, at the shard's name",
    "symlink to a corrupt file outside, at the shard's name",
    "FIFO at the shard's name",
    "file of another user at the shard's name",
    "wrong-sized file at the shard's name",
    "symlink at the shard's lock file",
    "FIFO at the shard's lock file",
    "symlink at the publish lock",
    "dead process's temp file that is a symlink outside",
    "dead process's temp file that is a FIFO",
    "foreign files in every folder",
    "symlinked datasets folder",
]


class Hang(Exception):
    pass


@rel("hostile", "Cache directory with a {kind} planted: the dataset reads correctly within seconds (with a cache limit forcing eviction), nothing outside the cache is followed, read or changed",
     summary="Symlinks (to good and corrupt files outside), FIFOs, another user's files, wrong-sized files and foreign files planted at shard names, lock files, the publish lock, dead processes' temp files and the datasets folder: the dataset reads correctly within seconds with eviction on; nothing outside the cache is followed or changed, nothing blocks")
@pytest.mark.parametrize("kind", PLANTS)
def test_planted_in_the_cache_directory(tmp_path, kind):
    import signal

    url = str(tmp_path / "ds")
    manifest = write(url, 120, shard_bytes=2048)
    cache_dir = tmp_path / "cache"
    ShardCache(cache_dir)
    outside = tmp_path / "outside"
    checksum = str(manifest.shards.checksums[0])
    good = Path(url, str(manifest.shards.uris[0])).read_bytes()
    plant(kind, cache_dir, checksum, outside, good)
    before = outside.lstat() if outside.exists() else None
    before_bytes = outside.read_bytes() if outside.is_file() else None

    def hang(*_: object) -> None:
        raise Hang(f"blocked by a {kind}")

    previous = signal.signal(signal.SIGALRM, hang)
    signal.alarm(10)
    try:
        limit = 4 * int(manifest.shards.raw_size.max())
        with roxxel.open(url, cache_dir=str(cache_dir), cache_limit=limit, lookahead=1) as ds:
            check_all(ds, 120, 0)
        ShardCache(cache_dir).clean_temp()
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    if before is not None:
        after = outside.lstat()
        assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
        if before_bytes is not None:
            assert outside.read_bytes() == before_bytes
    shard = cache_dir / "shards" / (checksum.replace(":", "-") + ".rox")
    if os.path.lexists(shard):
        st = shard.lstat()
        assert stat.S_ISREG(st.st_mode) and st.st_uid == os.getuid() and shard.read_bytes() == good
    if kind == "foreign files in every folder":
        for sub in ("shards", "tmp", "locks", "digests", "datasets"):
            assert (cache_dir / sub / "notes.txt").read_text() == "mine", f"{sub}/notes.txt was touched"


# -- a canary secret -------------------------------------------------------------------------------


def _exception_texts(exc: BaseException) -> list[str]:
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts += [str(exc), repr(exc)]
        exc = exc.__cause__ or exc.__context__
    return texts


@rel("hostile", "A canary secret in storage_options (S3): never in logs (every logger at DEBUG), reprs, manifests, cache files, reports, error messages, or pickles other than the dataset's own")
def test_canary_secret_never_leaks(s3_server, tmp_path, caplog):
    canary = f"CANARY{uuid.uuid4().hex}"
    options = s3_server.storage_options | {"secret": canary, "skip_instance_cache": True}
    url = f"s3://roxxel-tests/canary-{uuid.uuid4().hex[:8]}/ds"
    cache_dir = tmp_path / "cache"
    (tmp_path / "staging").mkdir()
    texts: list[str] = []
    blobs: list[bytes] = []
    caplog.set_level(logging.DEBUG)
    from roxxel import ops

    with caplog.at_level(logging.DEBUG):
        writer = roxxel.Writer(url, shard_bytes=2048, storage_options=options, compression="zstd",
                               staging_dir=str(tmp_path / "staging"))
        texts.append(repr(writer))
        with writer:
            writer.extend(make_record(i) for i in range(100))
        texts += [repr(writer.manifest), writer.manifest.to_json()]
        with roxxel.open(url, cache_dir=str(cache_dir), storage_options=options) as ds:
            it = ds.iter(seed=1)
            for _ in range(10):
                check_record(next(it))
            texts += [repr(ds), repr(ds.store), repr(ds.cache), repr(it), json.dumps(it.state()),
                      str(ds.stats), repr(ds.manifest)]
            blobs += [pickle.dumps(ds.manifest), pickle.dumps(it.state())]
            dataset_pickle = pickle.dumps(ds)
            assert canary.encode() in dataset_pickle, "DESIGN 8: a dataset pickle carries its storage_options"
            check_all(ds, 100, 0)
        for report in (ops.warm(url, options, cache_dir=str(tmp_path / "c2")),
                       ops.copy(url, str(tmp_path / "copy"), src_options=options, dst_options={}),
                       ops.info(url, options, cache_dir=str(cache_dir)), ops.verify(url, options)):
            texts += [repr(report), json.dumps(getattr(report, "to_dict", lambda: {})(), default=str)]
        store = dataset_store(url, options)
        texts.append(store.read_bytes("manifest.json").decode())
        errors: list[BaseException] = []
        for action in (
            lambda: roxxel.open(url + "-missing", cache_dir=str(cache_dir), storage_options=options),
            lambda: roxxel.Writer(url, storage_options=options),  # exists
            lambda: store.read_range(str(read_manifest(store).shards.uris[0]), 0, 10**9),
            lambda: ops.warm(url + "-missing", options, cache_dir=str(cache_dir)),
            lambda: ops.copy(url + "-missing", str(tmp_path / "nowhere"), src_options=options, dst_options={}),
        ):
            try:
                action()
            except (RoxxelError, OSError, ValueError) as exc:
                errors.append(exc)
        assert len(errors) == 5
        # a corrupted shard: the IntegrityError and its log lines
        fs = s3_server.filesystem()
        first = str(read_manifest(store).shards.uris[0])
        fs.pipe_file(f"{url[5:]}/{first}", b"corrupted")
        try:
            with roxxel.open(url, cache_dir=str(tmp_path / "c3"), storage_options=options) as ds:
                ds[0]
        except RoxxelError as exc:
            errors.append(exc)
        assert isinstance(errors[-1], StorageError | IntegrityError)
    for exc in errors:
        texts += _exception_texts(exc)
        try:
            blobs.append(pickle.dumps(exc))
        except Exception:  # an unpicklable error cannot leak through pickling
            pass
    texts.append(caplog.text)
    for root in (cache_dir, tmp_path / "c2", tmp_path / "c3", tmp_path / "copy", tmp_path / "staging"):
        for path in Path(root).rglob("*"):
            if path.is_file() and not path.is_symlink():
                blobs.append(path.read_bytes())
    for text in texts:
        assert canary not in text
    for blob in blobs:
        assert canary.encode() not in blob
    assert len(caplog.records) > 10, "the logs were captured"
