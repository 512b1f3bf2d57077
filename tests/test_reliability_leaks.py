"""Leaks and shutdown: descriptors, threads and maps come back to their baseline after
1,000 open/read/close cycles, and the interpreter exits within seconds while the
downloader is busy, whether or not the dataset was closed."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import roxxel
from tests.reliability_kit import check_record, write
from tests.test_dataset import open_descriptors

REPO = Path(__file__).resolve().parents[1]
CYCLES = 1000
EXIT_WITHIN = 5.0

rel = pytest.mark.reliability


def fds() -> set[tuple[str, str]]:
    """Open descriptors, after collecting garbage that may still hold some."""
    gc.collect()
    return open_descriptors()


def maps_of(folder: Path) -> int:
    with open("/proc/self/maps") as f:
        return sum(str(folder) in line for line in f)


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def thread_names() -> list[str]:
    return sorted(t.name for t in threading.enumerate())


def cycle(url: str, cache_dir: Path, i: int, options: dict | None = None) -> None:
    """Open, read some records three ways (starting the downloader), close."""
    ds = roxxel.open(url, cache_dir=str(cache_dir), cache_limit=None if i % 2 else 12 * 4096,
                     storage_options=options, lookahead=2)
    n = len(ds)
    assert check_record(ds[(i * 7919) % n]) == (i * 7919) % n
    it = ds.iter(seed=i, window=2) if i % 3 else iter(ds)
    for _ in range(i % 40):
        check_record(next(it))
    if i % 5 == 0:
        ds.fetch((i * 31) % n)
    ds.close()


def leak_check(url: str, cache_dir: Path, cycles: int, reliability, options: dict | None = None) -> None:
    for i in range(20):  # warm-up: lazily created pools, caches, connections
        cycle(url, cache_dir, i, options)
    base_fds, base_threads, base_rss = fds(), thread_names(), rss_kib()
    started = time.monotonic()
    for i in range(20, 20 + cycles):
        cycle(url, cache_dir, i, options)
    elapsed = time.monotonic() - started
    grown = rss_kib() - base_rss
    reliability.note(f"{cycles} cycles in {elapsed:.1f}s; fds {len(base_fds)}->{len(fds())}, "
                     f"threads {len(base_threads)}->{len(thread_names())}, RSS +{grown} KiB")
    assert fds() <= base_fds  # none left open (GC may close older ones meanwhile)
    assert thread_names() == base_threads
    assert maps_of(cache_dir) == 0
    assert grown < 32 * 1024, f"RSS grew by {grown} KiB over {cycles} cycles"


@rel("leaks", "1,000 open / read (ds[i], ds.iter, iter, fetch) / close cycles on local disk, half with a small cache limit: descriptors, threads and maps back to baseline, memory flat")
def test_open_close_cycles_leak_nothing(tmp_path, reliability):
    url = str(tmp_path / "ds")
    write(url, 600, shard_bytes=4096)
    leak_check(url, tmp_path / "cache", CYCLES, reliability)


@rel("leaks", "100 open / read / close cycles against S3: descriptors, threads and maps back to baseline")
def test_open_close_cycles_on_s3_leak_nothing(new_location, tmp_path, reliability):
    url, options = new_location("s3")
    write(url, 300, shard_bytes=4096, storage_options=options)
    leak_check(url, tmp_path / "cache", 100, reliability, options)


@rel("leaks", "300 Writer open / write / close cycles, with every fifth one aborted by an exception: descriptors, threads and staging back to baseline")
def test_writer_cycles_leak_nothing(tmp_path, reliability):
    staging = tmp_path / "staging"
    staging.mkdir()

    def one(i: int) -> None:
        url = str(tmp_path / f"ds{i % 7}")
        try:
            with roxxel.Writer(url, shard_bytes=2048, mode="overwrite", staging_dir=str(staging)) as w:
                w.extend(os.urandom(300) for _ in range(i % 13 + 1))
                if i % 5 == 0:
                    raise KeyError("abort")
        except KeyError:
            pass

    for i in range(10):
        one(i)
    base_fds, base_threads = fds(), thread_names()
    started = time.monotonic()
    for i in range(10, 310):
        one(i)
    reliability.note(f"300 writers in {time.monotonic() - started:.1f}s")
    assert fds() <= base_fds  # none left open (GC may close older ones meanwhile)
    assert thread_names() == base_threads
    assert os.listdir(staging) == []


EXITING = textwrap.dedent(
    """
    import json, sys, threading, time
    import roxxel
    from roxxel.backends import Store
    from tests.faults import FaultyFileSystem, RandomFaults, faulty_url

    url, cache_dir, mode, close = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "close"
    uris = roxxel.open(url, cache_dir=cache_dir).manifest.shards.uris.tolist()
    if mode == "stalled":  # every shard download but the first hangs for a minute
        plan = RandomFaults(rate=1.0, kinds=("stall",), ops=("open",), paths=tuple(f"*/{u}" for u in uris[1:]))
        fs = FaultyFileSystem(plan, stall_seconds=60)
    else:  # busy: every read of every shard but the first crawls
        fs = FaultyFileSystem()
    ds = roxxel.open(url, cache_dir=cache_dir, store=Store(faulty_url(url), fs=fs, chunk_size=512))
    it = iter(ds)
    first = next(it)  # shard 0, read by this thread; the next ones are being prefetched now
    fs.latency = 0.05
    def read_on():
        try:
            list(it)
        except Exception:  # close() ends it; how is test_close_while_another_thread_iterates's
            pass

    reader = threading.Thread(target=read_on, daemon=True)  # waits for shard 1
    reader.start()
    deadline = time.monotonic() + 10
    while sum(path.endswith(tuple(uris[1:])) for op, path in list(fs.log)) < 2:
        assert time.monotonic() < deadline, "the downloader never got busy"
        time.sleep(0.01)
    assert any(t.name.startswith("roxxel-download") for t in threading.enumerate())
    time.sleep(0.3)  # downloads under way
    print("busy", flush=True)
    if close:
        ds.close()
    """
)


@rel("leaks", "Interpreter exit while the downloader is {mode}, {how}: the process exits within 5 s")
@pytest.mark.parametrize("mode", ["busy", pytest.param("stalled", id="stalled")])
@pytest.mark.parametrize("how", ["without close()", "after close()"])
def test_interpreter_exits_while_downloading(tmp_path, mode, how, request, reliability):
    url = str(tmp_path / "ds")
    write(url, 400, shard_bytes=16384)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen(
        [sys.executable, "-c", EXITING, url, str(tmp_path / "cache"), mode,
         "close" if how == "after close()" else "exit"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, env=env, text=True,
    )
    try:
        line = proc.stdout.readline()
        if line != "busy\n":
            pytest.fail(f"the child did not get busy: {line!r} {proc.stderr.read()}")
        started = time.monotonic()
        try:
            proc.wait(timeout=EXIT_WITHIN + 1)
        except subprocess.TimeoutExpired:
            pass
        took = time.monotonic() - started
        reliability.note(f"exit {took:.1f}s after the downloader got busy")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        stderr = proc.stderr.read()
    assert took < EXIT_WITHIN, f"exit took {took:.1f}s"
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr


@rel("leaks", "close() while another thread is iterating (downloads in flight): that thread's iteration ends, or raises ValueError saying the dataset is closed; never an internal exception")
def test_close_while_another_thread_iterates(tmp_path):
    from roxxel.backends import Store

    from tests.faults import FaultyFileSystem, faulty_url

    url = str(tmp_path / "ds")
    write(url, 400, shard_bytes=16384)
    fs = FaultyFileSystem()
    ds = roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=Store(faulty_url(url), fs=fs, chunk_size=512))
    it = iter(ds)
    next(it)
    fs.latency = 0.01  # the next shards crawl in
    outcome: list[BaseException | None] = []

    def read_on() -> None:
        try:
            for _ in it:
                pass
            outcome.append(None)
        except BaseException as exc:  # judged below
            outcome.append(exc)

    reader = threading.Thread(target=read_on)
    reader.start()
    time.sleep(0.3)
    ds.close()
    reader.join(5)
    assert not reader.is_alive(), "the iterating thread did not stop"
    error = outcome[0]
    assert error is None or (isinstance(error, ValueError) and "closed" in str(error)), repr(error)
