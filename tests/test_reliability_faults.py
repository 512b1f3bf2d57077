"""Injected store faults against the writer, the reader, ``warm`` and ``cp``.

Every request goes through :class:`tests.faults.FaultyFileSystem`, so roxxel's real retry,
translation and verification paths run. Transient faults must be retried under a
deadline, with an epoch still delivering every record exactly once and the request count
staying below 1.5x the fault-free count at a 5% fault rate; permanent faults must fail
at once with an error naming the URI; corrupted bytes must never be served or published;
a stall must be cut off by an inactivity timeout rather than waited out.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time

import pytest

import roxxel
from roxxel.backends import RetryPolicy, Store
from roxxel.cache import ShardCache
from roxxel.errors import (
    AccessDeniedError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from roxxel.manifest.io import dataset_store, read_manifest
from roxxel.ops import copy, warm
from tests.faults import (
    CORRUPTING,
    TRANSIENT,
    Fault,
    FaultyFileSystem,
    NoFaults,
    RandomFaults,
    Scripted,
    faulty_url,
)
from tests.reliability_kit import FAST, check_all, write

N = 400  # records: ~30 shards of 4 KiB
BIG = 2000  # for request counts: ~150 shards, so 5% of the requests is a fair sample
SHARD_BYTES = 4096
RATE = 0.05
MAX_OVERHEAD = 1.5
STALL = 6.0  # seconds a stalled request hangs
CUT_OFF = 3.0  # a stall must end (error or retried success) well before STALL

rel = pytest.mark.reliability


@pytest.fixture
def dataset(tmp_path) -> str:
    url = str(tmp_path / "ds")
    write(url, N, shard_bytes=SHARD_BYTES)
    return url


@pytest.fixture
def big(tmp_path) -> str:
    url = str(tmp_path / "big")
    write(url, BIG, shard_bytes=SHARD_BYTES)
    return url


def faulty(url: str, plan, policy: RetryPolicy = FAST, **kw) -> tuple[Store, FaultyFileSystem]:
    fs = FaultyFileSystem(plan, **kw)
    return Store(faulty_url(url), fs=fs, retry=policy), fs


def read_epoch(url: str, store: Store, cache_dir, n: int = N) -> None:
    with roxxel.open(url, cache_dir=str(cache_dir), store=store) as ds:
        check_all(ds.iter(seed=1), n)


def stall_policy() -> RetryPolicy:
    return dataclasses.replace(FAST, stall_timeout=1.0, upload_timeout=1.0)


def short_stall_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 s inactivity and upload timeouts in the default policy of every Store: warm and
    cp build their stores from URLs and take no RetryPolicy (the defaults wait 30 s and
    120 s)."""
    defaults = dict(Store.__init__.__kwdefaults__)
    defaults["retry"] = dataclasses.replace(defaults["retry"], stall_timeout=1.0, upload_timeout=1.0)
    monkeypatch.setattr(Store.__init__, "__kwdefaults__", defaults)


def url_re(url: str) -> str:
    return re.escape(url)


# -- the reader ------------------------------------------------------------------------------


@rel("faults", "Reader: every shard request hit by `{kind}` 20% of the time; a shuffled epoch must give every record exactly once",
     summary="Reader: 20% of shard requests hit by one fault kind at a time (connection reset mid-body, body cut short, 503 SlowDown, 500, short read reported as success, flipped bit); a shuffled epoch gives every record exactly once")
@pytest.mark.parametrize("kind", TRANSIENT + CORRUPTING)
def test_reader_epoch_survives_each_fault_kind(big, tmp_path, kind, reliability):
    # at most 2 faults per shard: a corrupted download is fetched again up to 3 times in all
    plan = RandomFaults(seed=7, rate=0.2, kinds=(kind,), paths=("*/shards/*",), per_path=2)
    store, fs = faulty(big, plan)
    read_epoch(big, store, tmp_path / "cache", BIG)
    assert sum(plan.injected.values()) >= 10, plan.injected
    reliability.note(f"{sum(plan.injected.values())} {kind} faults in {fs.total_requests} requests")


@rel("faults", "Reader ({compression}): 5% of all requests fail with a mix of resets, cut bodies, 503, 500, short reads and flipped bits; every record exactly once, under 1.5x the fault-free request count")
@pytest.mark.parametrize("compression", ["uncompressed", "zstd"])
def test_reader_request_overhead_at_five_percent(tmp_path, compression, reliability):
    url = str(tmp_path / "ds")
    write(url, BIG, shard_bytes=SHARD_BYTES, compression=None if compression == "uncompressed" else compression)
    clean, clean_fs = faulty(url, NoFaults())
    read_epoch(url, clean, tmp_path / "cache0", BIG)
    plan = RandomFaults(seed=11, rate=RATE, kinds=TRANSIENT + CORRUPTING, paths=("*/shards/*",), per_path=2)
    store, fs = faulty(url, plan)
    read_epoch(url, store, tmp_path / "cache1", BIG)
    ratio = fs.total_requests / clean_fs.total_requests
    reliability.note(f"{fs.total_requests} requests vs {clean_fs.total_requests} fault-free "
                     f"({ratio:.2f}x), faults {dict(plan.injected)}")
    assert plan.injected, "no fault was injected"
    assert ratio < MAX_OVERHEAD


@rel("faults", "Reader: a shard whose every request fails with 503 SlowDown ends in TransientStorageError naming it once the retry deadline passes")
def test_reader_gives_up_at_the_deadline(dataset, tmp_path):
    manifest = read_manifest(dataset_store(dataset))
    uri = str(manifest.shards.uris[0])
    plan = Scripted(forever=[("*", f"*/{uri}", Fault("slowdown"))])
    policy = RetryPolicy(max_attempts=10_000, deadline=0.5, base_delay=0.01, max_delay=0.05)
    store, fs = faulty(dataset, plan, policy)
    started = time.monotonic()
    with roxxel.open(dataset, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        with pytest.raises(TransientStorageError, match=url_re(uri)):
            ds[0]
    assert time.monotonic() - started < 5
    assert plan.injected["slowdown"] > 3


@rel("faults", "Reader: HTTP {kind} on a shard fails at once (no retry) with an error naming the shard's URI",
     summary="Reader: HTTP 403 and 404 on a shard fail at once (no retry, under the default 60 s retry deadline) with AccessDeniedError / NotFoundError naming the shard's URI")
@pytest.mark.parametrize(("kind", "error"), [("403", AccessDeniedError), ("404", NotFoundError)])
def test_reader_permanent_faults_fail_fast_naming_the_uri(dataset, tmp_path, kind, error):
    manifest = read_manifest(dataset_store(dataset))
    uri = str(manifest.shards.uris[3])
    plan = Scripted(forever=[("*", f"*/{uri}", Fault(kind))])
    store, fs = faulty(dataset, plan, RetryPolicy())  # the default policy: would retry for 60 s
    started = time.monotonic()
    with roxxel.open(dataset, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        first = int(manifest.shards.record_starts[3])
        with pytest.raises(error, match=url_re(uri)):
            ds[first]
    assert time.monotonic() - started < 1
    assert plan.injected[kind] == 1, "a permanent failure was retried"


@rel("faults", "Reader: HTTP 403 on the manifest fails at once naming manifest.json and pointing at the credentials")
def test_manifest_access_denied_fails_fast(dataset, tmp_path):
    plan = Scripted(forever=[("*", "*/manifest.json", Fault("403"))])
    store, fs = faulty(dataset, plan, RetryPolicy())
    with pytest.raises(AccessDeniedError, match=r"manifest\.json.*storage_options"):
        roxxel.open(dataset, cache_dir=str(tmp_path / "cache"), store=store)
    assert plan.injected["403"] == 1


@rel("faults", "Reader: a short read of manifest.json reported as success is retried, not parsed as a truncated manifest")
def test_manifest_short_read_is_retried(dataset, tmp_path):
    plan = Scripted([("cat_file", "*/manifest.json", Fault("short"))])
    store, fs = faulty(dataset, plan)
    with roxxel.open(dataset, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        assert len(ds) == N


@rel("faults", "Reader: a shard request that stalls for 6 s is cut off by the inactivity timeout (RetryPolicy.stall_timeout=1) and retried instead of being waited out")
def test_reader_stall_is_cut_off(dataset, tmp_path):
    manifest = read_manifest(dataset_store(dataset))
    plan = Scripted([("open", f"*/{manifest.shards.uris[0]}", Fault("stall"))])
    store, fs = faulty(dataset, plan, stall_policy(), stall_seconds=STALL)
    started = time.monotonic()
    try:
        with roxxel.open(dataset, cache_dir=str(tmp_path / "cache"), store=store, lookahead=0) as ds:
            try:
                ds[0]
            except StorageError:
                pass  # cut off and given up on: acceptable, as long as it was quick
        assert time.monotonic() - started < CUT_OFF
    finally:
        fs.release_stalls()


# -- the writer ------------------------------------------------------------------------------


@rel("faults", "Writer: uploads and the manifest publish hit by `{kind}` 20% of the time; the dataset must publish complete and correct",
     summary="Writer: 20% of uploads and of the manifest publish hit by one fault kind at a time (reset, 503, 500, lost response after the object landed); the dataset publishes complete and correct")
@pytest.mark.parametrize("kind", ("reset", "slowdown", "500", "lost"))
def test_writer_survives_transient_faults(tmp_path, kind, reliability):
    url = str(tmp_path / "ds")
    plan = RandomFaults(seed=3, rate=0.2, kinds=(kind,))
    store, fs = faulty(url, plan)
    write(url, N, shard_bytes=SHARD_BYTES, store=store)
    assert sum(plan.injected.values()) >= 3, plan.injected
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, N, 0)
    reliability.note(f"{sum(plan.injected.values())} faults in {fs.total_requests} requests")


@rel("faults", "Writer: 5% of requests fail (resets, 503, 500, lost responses); the dataset publishes complete, under 1.5x the fault-free request count")
def test_writer_request_overhead_at_five_percent(tmp_path, reliability):
    clean, clean_fs = faulty(str(tmp_path / "a"), NoFaults())
    write(str(tmp_path / "a"), BIG, shard_bytes=SHARD_BYTES, store=clean)
    plan = RandomFaults(seed=5, rate=RATE, kinds=("reset", "slowdown", "500", "lost"))
    store, fs = faulty(str(tmp_path / "b"), plan)
    write(str(tmp_path / "b"), BIG, shard_bytes=SHARD_BYTES, store=store)
    with roxxel.open(str(tmp_path / "b"), cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, BIG, 0)
    ratio = fs.total_requests / clean_fs.total_requests
    reliability.note(f"{fs.total_requests} requests vs {clean_fs.total_requests} ({ratio:.2f}x)")
    assert plan.injected
    assert ratio < MAX_OVERHEAD


@rel("faults", "Writer: a shard upload that stalls for 6 s is cut off by the upload timeout (upload_timeout=1) and retried; the dataset publishes")
def test_writer_stall_is_cut_off(tmp_path):
    url = str(tmp_path / "ds")
    store, fs = faulty(url, Scripted([("put_file", "*/shards/*", Fault("stall"))]), stall_policy(),
                       stall_seconds=STALL)
    started = time.monotonic()
    try:
        write(url, N, shard_bytes=SHARD_BYTES, store=store)
        assert time.monotonic() - started < CUT_OFF
    finally:
        fs.release_stalls()
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, N, 0)


@rel("faults", "Writer: a manifest publish that stalls, is abandoned by the inactivity timeout and retried, never lands later over a newer version (no rollback by a zombie request)")
def test_abandoned_manifest_publish_never_rolls_back(tmp_path):
    url = str(tmp_path / "ds")
    write(url, 50, version=1)
    plan = Scripted([("pipe_file", "*/manifest.json", Fault("stall"))])
    policy = dataclasses.replace(FAST, stall_timeout=0.5)
    store, fs = faulty(url, plan, policy, stall_seconds=2)
    write(url, 60, version=2, mode="overwrite", store=store)  # a stalled publish is waited out
    write(url, 70, version=3, mode="overwrite")  # a newer version, by another writer
    assert read_manifest(dataset_store(url)).meta["version"] == 3
    time.sleep(2.5)  # the abandoned attempt wakes up
    assert read_manifest(dataset_store(url)).meta["version"] == 3, "the dataset was rolled back"


@rel("faults", "Writer: HTTP 403 on a shard upload fails at once naming the shard, and publishes nothing")
def test_writer_access_denied_fails_fast(tmp_path):
    url = str(tmp_path / "ds")
    plan = Scripted(forever=[("put_file", "*/shards/*", Fault("403"))])
    store, fs = faulty(url, plan, RetryPolicy())
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match=r"shards/.*\.rox"):
        write(url, N, shard_bytes=SHARD_BYTES, store=store)
    assert time.monotonic() - started < 2
    assert not os.path.exists(os.path.join(url, "manifest.json"))


@rel("faults", "Writer: an upload truncated in transit but reported as success is uploaded again, and the dataset publishes")
def test_writer_reuploads_a_short_upload(tmp_path):
    url = str(tmp_path / "ds")
    plan = Scripted([("put_file", "*/shards/*", Fault("short"))])
    store, fs = faulty(url, plan)
    write(url, N, shard_bytes=SHARD_BYTES, store=store)
    assert plan.injected["short"] == 1
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, N, 0)


@rel("faults", "Writer: a bit flipped in an upload is caught (the stored object is checked) and uploaded again; never a published checksum the stored bytes fail")
def test_writer_never_publishes_a_corrupted_upload(tmp_path):
    url = str(tmp_path / "ds")
    plan = Scripted([("put_file", "*/shards/*", Fault("flip"))])
    store, fs = faulty(url, plan)
    write(url, N, shard_bytes=SHARD_BYTES, store=store)
    assert plan.injected["flip"] == 1
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, N, 0)


# -- warm ------------------------------------------------------------------------------------


@rel("faults", "`roxxel.ops.warm`: 5% of requests fail (mixed transient and corrupting faults); every shard is cached and verified, under 1.5x the fault-free request count")
def test_warm_under_faults(big, tmp_path, reliability):
    dataset = big
    manifest = read_manifest(dataset_store(dataset))
    clean = NoFaults()
    warm(faulty_url(dataset), {"faults": clean}, cache_dir=str(tmp_path / "c0"), workers=2)
    plan = RandomFaults(seed=13, rate=RATE, kinds=TRANSIENT + CORRUPTING, paths=("*/shards/*",), per_path=2)
    report = warm(faulty_url(dataset), {"faults": plan}, cache_dir=str(tmp_path / "c1"), workers=2)
    assert report.shards_fetched == len(manifest.shards)
    cache = ShardCache(tmp_path / "c1")
    assert {e.checksum for e in cache.entries()} == set(manifest.shards.checksums.tolist())
    assert all(cache.verify(e.checksum) for e in cache.entries())
    ratio = plan.total_requests / clean.total_requests
    reliability.note(f"{plan.total_requests} requests vs {clean.total_requests} ({ratio:.2f}x), "
                     f"faults {dict(plan.injected)}")
    assert plan.injected
    assert ratio < MAX_OVERHEAD


@rel("faults", "`roxxel.ops.warm`: HTTP 404 on a shard fails at once with an error naming the shard's URI")
def test_warm_permanent_fault_fails_fast(dataset, tmp_path):
    manifest = read_manifest(dataset_store(dataset))
    uri = str(manifest.shards.uris[5])
    plan = Scripted(forever=[("*", f"*/{uri}", Fault("404"))])
    started = time.monotonic()
    with pytest.raises(NotFoundError, match=url_re(uri)):
        warm(faulty_url(dataset), {"faults": plan}, cache_dir=str(tmp_path / "c"), workers=2)
    assert time.monotonic() - started < 2
    assert plan.injected["404"] == 1


@rel("faults", "`roxxel.ops.warm`: a shard request that stalls for 6 s is cut off by the inactivity timeout (stall_timeout=1 in the default RetryPolicy) instead of being waited out")
def test_warm_stall_is_cut_off(dataset, tmp_path, monkeypatch):
    short_stall_timeout(monkeypatch)
    plan = Scripted([("open", "*/shards/*", Fault("stall"))])
    options = {"faults": plan, "stall_seconds": STALL}
    started = time.monotonic()
    try:
        warm(faulty_url(dataset), options, cache_dir=str(tmp_path / "c"), workers=2)
    except StorageError:
        pass
    assert time.monotonic() - started < CUT_OFF


# -- cp --------------------------------------------------------------------------------------


@rel("faults", "`roxxel.ops.copy`: 5% of requests on both stores fail (resets, 503, 500, cut bodies, lost upload responses); the copy is complete and verified, under 1.5x the fault-free request count")
def test_copy_under_faults(big, tmp_path, reliability):
    dataset = big
    clean = NoFaults()
    copy(faulty_url(dataset), faulty_url(tmp_path / "c0"), {"faults": clean}, workers=2,
         staging_dir=str(tmp_path))
    kinds = ("reset", "payload", "slowdown", "500", "lost")
    plan = RandomFaults(seed=17, rate=RATE, kinds=kinds)
    report = copy(faulty_url(dataset), faulty_url(tmp_path / "c1"), {"faults": plan}, workers=2,
                  staging_dir=str(tmp_path))
    assert report.published and report.copied == report.shards
    with roxxel.open(str(tmp_path / "c1"), cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, BIG, 0)
    ratio = plan.total_requests / clean.total_requests
    reliability.note(f"{plan.total_requests} requests vs {clean.total_requests} ({ratio:.2f}x), "
                     f"faults {dict(plan.injected)}")
    assert plan.injected
    assert ratio < MAX_OVERHEAD
    assert [n for n in os.listdir(tmp_path) if n.startswith("roxxel-copy-")] == []


@rel("faults", "`roxxel.ops.copy`: bits flipped or reads cut short while reading the source are caught by the checksum and read again; the copy is correct")
def test_copy_source_corruption_is_caught(dataset, tmp_path):
    src = RandomFaults(seed=19, rate=0.2, kinds=CORRUPTING, ops=("open",), per_path=2)
    copy(faulty_url(dataset), str(tmp_path / "dst"), src_options={"faults": src}, dst_options={},
         workers=2, staging_dir=str(tmp_path))
    assert sum(src.injected.values()) >= 3, src.injected
    with roxxel.open(str(tmp_path / "dst"), cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, N, 0)


@rel("faults", "`roxxel.ops.copy`: a source read and a destination upload that stall for 6 s are cut off by the inactivity and upload timeouts (stall_timeout=1, upload_timeout=1) and retried; the copy is correct")
def test_copy_stall_is_cut_off(dataset, tmp_path, monkeypatch):
    short_stall_timeout(monkeypatch)
    src = Scripted([("open", "*/shards/*", Fault("stall"))])
    dst = Scripted([("put_file", "*/shards/*", Fault("stall"))])
    started = time.monotonic()
    copy(faulty_url(dataset), faulty_url(tmp_path / "dst"), src_options={"faults": src, "stall_seconds": STALL},
         dst_options={"faults": dst, "stall_seconds": STALL}, workers=2, staging_dir=str(tmp_path))
    assert time.monotonic() - started < CUT_OFF + 1
    assert src.injected["stall"] == 1 and dst.injected["stall"] == 1
    with roxxel.open(str(tmp_path / "dst"), cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, N, 0)


@rel("faults", "`roxxel.ops.copy`: HTTP 403 on the destination fails at once naming the shard, and publishes nothing")
def test_copy_permanent_fault_fails_fast(dataset, tmp_path):
    plan = Scripted(forever=[("put_file", "*/shards/*", Fault("403"))])
    started = time.monotonic()
    with pytest.raises(AccessDeniedError, match=r"shards/.*\.rox"):
        copy(dataset, faulty_url(tmp_path / "dst"), src_options={}, dst_options={"faults": plan},
             workers=2, staging_dir=str(tmp_path))
    assert time.monotonic() - started < 2
    assert not os.path.exists(tmp_path / "dst" / "manifest.json")


@rel("faults", "`roxxel.ops.copy`: a bit flipped in an upload to the destination is caught (the object is read back) and uploaded again; the copy is correct")
def test_copy_never_publishes_a_corrupted_upload(dataset, tmp_path):
    plan = Scripted([("put_file", "*/shards/*", Fault("flip"))])
    copy(dataset, faulty_url(tmp_path / "dst"), src_options={}, dst_options={"faults": plan},
         workers=2, staging_dir=str(tmp_path))
    assert plan.injected["flip"] == 1
    with roxxel.open(str(tmp_path / "dst"), cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds, N, 0)


# -- S3 end to end: moto behind a fault-injecting WSGI middleware -------------------------------


@pytest.fixture(scope="module")
def faulty_s3():
    from tests import faulty_s3 as module

    with module.running("faulty", read_timeout=1) as running:
        yield running


def s3_requests(server) -> int:
    return sum(server.counts()["requests"].values())


@pytest.fixture(scope="module")
def s3_written(faulty_s3, tmp_path_factory) -> tuple[str, dict]:
    """A dataset written to the faulty S3 while 5% of PUTs answer 503 or 500; the faults."""
    server, options = faulty_s3
    url = f"s3://faulty/{tmp_path_factory.mktemp('s3w').name}/ds"
    server.configure(rate=RATE, kinds=["slowdown", "500"], methods=["PUT"], seed=3)
    write(url, BIG, shard_bytes=SHARD_BYTES, storage_options=options)
    counts = server.counts()
    server.configure()
    return url, counts


@rel("faults", "S3 end to end (moto behind a fault-injecting proxy): 5% of PUTs answer 503 SlowDown or 500; the writer publishes the dataset complete and correct")
def test_s3_writer_under_http_faults(faulty_s3, s3_written, tmp_path, reliability):
    server, options = faulty_s3
    url, counts = s3_written
    with roxxel.open(url, cache_dir=str(tmp_path / "c"), storage_options=options) as ds:
        check_all(ds, BIG, 0)
    reliability.note(f"faults {counts['injected']} in {sum(counts['requests'].values())} requests")
    assert sum(counts["injected"].values()) >= 3


@rel("faults", "S3 end to end: 5% of GETs and HEADs answer 503 SlowDown, 500 or a body cut short; through s3fs's and botocore's own retries, every record exactly once, under 1.5x the fault-free request count")
def test_s3_reader_under_http_faults(faulty_s3, s3_written, tmp_path, reliability):
    server, options = faulty_s3
    url, _ = s3_written
    server.configure()
    with roxxel.open(url, cache_dir=str(tmp_path / "c0"), storage_options=options) as ds:
        check_all(ds.iter(seed=1), BIG)
    clean = s3_requests(server)
    server.configure(rate=RATE, kinds=["slowdown", "500", "cut"], methods=["GET", "HEAD"], seed=2)
    with roxxel.open(url, cache_dir=str(tmp_path / "c1"), storage_options=options) as ds:
        check_all(ds.iter(seed=1), BIG)
    counts = server.counts()
    server.configure()
    faulted = sum(counts["requests"].values())
    reliability.note(f"{faulted} requests vs {clean} ({faulted / clean:.2f}x), faults {counts['injected']}")
    assert sum(counts["injected"].values()) >= 3
    assert faulted / clean < MAX_OVERHEAD


@rel("faults", "S3 end to end: a GET that stalls for 30 s is cut off by the client's read timeout (storage_options read_timeout=1) and retried; the epoch completes in seconds")
def test_s3_stall_is_cut_off_by_the_read_timeout(faulty_s3, tmp_path):
    server, options = faulty_s3
    url = f"s3://faulty/{tmp_path.name}/ds"
    server.configure()
    write(url, N, shard_bytes=SHARD_BYTES, storage_options=options)
    server.configure(rate=1.0, kinds=["stall"], methods=["GET"], stall_seconds=30, limit=2)
    started = time.monotonic()
    with roxxel.open(url, cache_dir=str(tmp_path / "c"), storage_options=options) as ds:
        check_all(ds.iter(seed=1), N)
    assert server.counts()["injected"] == {"stall": 2}
    assert time.monotonic() - started < 10
