"""The one shard check (roxxel.format.check): each kind of bad shard is refused with the
same problem, naming the shard, whether the check runs in a cache download, ``verify`` or
``cp`` (which checks the stored size and checksum only). Every problem is told with the
default checksum (BLAKE3); a wrong checksum, and a valid shard, with every algorithm."""

from __future__ import annotations

import io
import os
import pickle
import time
import warnings

import pytest
import zstandard

from roxxel import ops
from roxxel.backends import Store
from roxxel.cache import ShardCache
from roxxel.errors import IntegrityError
from roxxel.format import ShardWriter
from roxxel.format.check import ShardCheck, ShardSpec
from roxxel.format.layout import MAGIC
from roxxel.manifest import Manifest, ShardInfo
from roxxel.manifest.checksums import DEFAULT_ALGORITHM, THREADED_CHECK_BYTES, check_threads, parse_checksum
from roxxel.manifest.io import dataset_store, publish_manifest
from tests.checksum_kit import ALGORITHMS, reference_checksum

RECORDS = [b"abc", b"de", b"f" * 300]
PAYLOAD = sum(map(len, RECORDS))


def shard_bytes(records: list[bytes] = RECORDS) -> bytes:
    out = io.BytesIO()
    writer = ShardWriter(out)
    for record in records:
        writer.append(record)
    writer.finish()
    return out.getvalue()


def bad_shard(kind: str, algorithm: str = DEFAULT_ALGORITHM) -> tuple[bytes, ShardInfo, str]:
    """(the object's bytes, its manifest entry with an ``algorithm`` checksum, the problem
    the check must name)."""

    def checksum(data: bytes) -> str:
        return reference_checksum(data, algorithm)

    good = shard_bytes()
    raw, compression = bytearray(good), None
    stored_size = len(good)
    if kind == "size":
        stored = good[:-1]
        info = dict(stored_size=stored_size, raw_size=stored_size, checksum=checksum(good))
        return stored, _info(info, compression), f"stored size is {stored_size - 1} bytes, expected {stored_size}"
    if kind == "checksum":
        stored = bytes([good[0] ^ 1]) + good[1:]
        problem = f"checksum is {checksum(stored)}, expected {checksum(good)}"
        return stored, _info(dict(stored_size=stored_size, raw_size=stored_size, checksum=checksum(good)), None), problem
    if kind == "decompression bomb":
        stored = zstandard.ZstdCompressor(write_content_size=False).compress(good + bytes(4 << 20))
        info = dict(stored_size=len(stored), raw_size=len(good), checksum=checksum(stored))
        return stored, _info(info, "zstd"), f"decompresses to more than {len(good)} bytes, expected raw size {len(good)}"
    if kind == "footer":
        raw[-8:] = b"ROXXEL0X"
        problem = f"footer: magic is {b'ROXXEL0X'!r}, expected {MAGIC!r}"
    elif kind == "offsets":
        raw[PAYLOAD + 8 : PAYLOAD + 16] = (1).to_bytes(8, "little")  # offset[1] = 1 < offset[0] = 3
        problem = "offset[1] is 1, expected >= offset[0] = 3 (offsets must not decrease)"
    else:
        raise AssertionError(kind)
    stored = bytes(raw)
    return stored, _info(dict(stored_size=stored_size, raw_size=stored_size, checksum=checksum(stored)), None), problem


def _info(sizes: dict, compression: str | None) -> ShardInfo:
    suffix = ".zst" if compression else ""
    return ShardInfo(uri=f"shards/a.rox{suffix}", records=len(RECORDS), compression=compression, **sizes)


KINDS = ["size", "checksum", "decompression bomb", "footer", "offsets"]
STORED_ONLY = {"size", "checksum"}  # what cp checks; the layout is verify's to check
# Every kind with the default checksum; a wrong checksum with every other algorithm too.
CASES = [*KINDS, *(f"checksum/{a}" for a in ALGORITHMS if a != DEFAULT_ALGORITHM)]


def case(name: str) -> tuple[str, str]:
    """(kind, algorithm) of a ``CASES`` entry."""
    kind, _, algorithm = name.partition("/")
    return kind, algorithm or DEFAULT_ALGORITHM


@pytest.fixture(params=CASES)
def bad(request, tmp_path):
    """A dataset at tmp_path/ds whose one shard is bad in the way ``request.param`` says."""
    kind, algorithm = case(request.param)
    stored, info, problem = bad_shard(kind, algorithm)
    url = str(tmp_path / "ds")
    store = dataset_store(url)
    store.put_bytes_overwrite(info.uri, stored)
    publish_manifest(store, Manifest.build([info]), replaces=None)
    return kind, url, store, info, problem


def test_the_cache_download_refuses_it(bad, tmp_path):
    kind, url, store, info, problem = bad
    label = store.url(info.uri)
    cache = ShardCache(tmp_path / "cache", attempts=2)
    with pytest.raises(IntegrityError) as caught:
        cache.get(info.checksum, lambda sink: store.stream(info.uri, sink), stored_size=info.stored_size,
                  raw_size=info.raw_size, compression=info.compression, record_count=info.records, label=label)
    assert str(caught.value).startswith(f"{label}: {problem}")
    assert not cache.contains(info.checksum)


def test_verify_reports_it(bad):
    kind, url, store, info, problem = bad
    report = ops.verify(url)
    assert [(b.uri, b.problem) for b in report.bad] == [(info.uri, problem)]


@pytest.mark.parametrize("bad", [c for c in CASES if case(c)[0] in STORED_ONLY], indirect=True)  # the layout is verify's
def test_cp_refuses_a_wrong_size_or_checksum(bad, tmp_path):
    kind, url, store, info, problem = bad
    with pytest.raises(IntegrityError) as caught:
        ops.copy(url, str(tmp_path / "copy"), workers=1)
    assert str(caught.value).startswith(f"{store.url(info.uri)}: {problem} (read 3 times)")


@pytest.mark.parametrize("name", CASES)
@pytest.mark.parametrize("step", [1, 7, 8, 4096])
def test_the_check_itself_in_any_chunking(name, step):
    kind, algorithm = case(name)
    stored, info, problem = bad_shard(kind, algorithm)
    spec = ShardSpec(info.stored_size, info.raw_size, info.compression, info.records, "s3://b/ds/a.rox")
    check = ShardCheck(spec, parse_checksum(info.checksum))
    with pytest.raises(IntegrityError) as caught:
        for i in range(0, len(stored), step):
            check(stored[i : i + step])
        check.finish()
    error = caught.value
    assert (error.label, error.problem, error.transient) == ("s3://b/ds/a.rox", problem, kind in STORED_ONLY)
    assert str(error) == f"s3://b/ds/a.rox: {problem}"
    again = pickle.loads(pickle.dumps(error))  # errors travel back from worker processes
    assert (type(again), str(again), again.problem, again.transient) == (IntegrityError, str(error), problem, error.transient)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("step", [1, 3, 7, 8, 1000])
def test_a_valid_shard_passes_in_any_chunking(step, algorithm):
    records = [b"a" * n for n in (0, 5, 9, 0, 17)]
    data = shard_bytes(records)
    for stored, compression in ((data, None), (zstandard.ZstdCompressor().compress(data), "zstd")):
        spec = ShardSpec(len(stored), len(data), compression, len(records), "x")
        raw = bytearray()
        check = ShardCheck(spec, parse_checksum(reference_checksum(stored, algorithm)), raw=raw.extend, raw_digest=True)
        for i in range(0, len(stored), step):
            check(stored[i : i + step])
        assert check.finish() == reference_checksum(data, algorithm)  # the raw digest, same algorithm
        assert raw == data


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_check_on_several_threads_agrees_with_one_also_in_a_forked_child(algorithm):
    """A large shard being downloaded is hashed on several threads (a pool of the
    hasher's own, so a forked child, as a DataLoader worker is, hashes on its own threads
    too), to the same digest; a wrong byte is still caught."""
    records = [bytes([i % 251]) * 70_000 for i in range(300)]  # 21 MB
    data = shard_bytes(records)
    spec = ShardSpec(len(data), len(data), None, len(records), "x")
    key = parse_checksum(reference_checksum(data, algorithm))
    cpus = len(os.sched_getaffinity(0))
    assert check_threads(len(data)) == min(4, cpus) and check_threads(len(data), share=cpus) == 1
    assert check_threads(THREADED_CHECK_BYTES - 1) == 1

    def check(stored: bytes) -> None:
        checking = ShardCheck(spec, key, threads=4)
        for i in range(0, len(stored), 3 << 20):
            checking(memoryview(stored)[i : i + (3 << 20)])
        checking.finish()

    check(data)
    with pytest.raises(IntegrityError, match="x: checksum is"):
        check(data[:5000] + bytes([data[5000] ^ 1]) + data[5001:])
    with warnings.catch_warnings():  # (forking a process with threads: what DataLoader does)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", RuntimeWarning)  # (JAX's, if a test imported it)
        pid = os.fork()
    if pid == 0:  # the child: the same check, on threads of its own
        code = 1
        try:
            check(data)
            code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
    assert done[0] == pid and os.waitstatus_to_exitcode(done[1]) == 0, "the forked child's check hung or failed"


def test_more_bytes_than_promised_are_refused_as_they_arrive():
    data = shard_bytes()
    spec = ShardSpec(len(data), len(data), None, len(RECORDS), "x")
    check = ShardCheck(spec, parse_checksum(reference_checksum(data, DEFAULT_ALGORITHM)))
    check(data)
    with pytest.raises(IntegrityError, match=rf"x: stored size is more than {len(data)} bytes \(at least {len(data) + 1} arrived\)"):
        check(b"!")
    assert check.refused


def test_a_copy_into_a_store_is_not_decompressed(tmp_path, monkeypatch):
    """cp checks stored bytes only: a zstd shard is copied without being decompressed."""
    url = str(tmp_path / "ds")
    store = Store(url)
    data = shard_bytes()
    stored = zstandard.ZstdCompressor().compress(data)
    info = ShardInfo(uri="shards/a.rox.zst", records=len(RECORDS), stored_size=len(stored), raw_size=len(data),
                     compression="zstd", checksum=reference_checksum(stored, DEFAULT_ALGORITHM))
    store.put_bytes_overwrite(info.uri, stored)
    publish_manifest(store, Manifest.build([info]), replaces=None)

    def no_decompression(*args, **kwargs):
        raise AssertionError("decompression started")

    monkeypatch.setattr(zstandard, "ZstdDecompressor", no_decompression)
    assert ops.copy(url, str(tmp_path / "copy"), workers=1).copied == 1
