"""Crash loops: a writer, a reader and ``warm`` SIGKILLed at seeded random moments.

Each loop runs ``$ROXXEL_RELIABILITY_ITERATIONS`` kills (default 50) of a child forked
from a preloaded forkserver. Kill moments are drawn uniformly over the time an unkilled
run takes, so they land in every phase: opening, downloading, verifying, publishing,
evicting. After every kill:

- the last published manifest is intact and names only shards whose bytes verify;
- no corrupt or partial shard is ever served (every record read back checks itself);
- after a new process's cleanup, nothing of the dead process is left in the cache's
  ``tmp/``, no lock is held, and no leftover blocks anything;
- a new process makes progress within seconds.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

import pytest

import roxxel
from roxxel.cache import ShardCache
from roxxel.manifest.io import dataset_store, read_manifest
from roxxel.ops import warm
from tests.reliability_kit import (
    check_all,
    check_cache,
    check_record,
    files,
    forkserver,
    reader_child,
    warm_child,
    write,
    writer_child,
)
from tests.reliability_report import iterations

N = 300
SHARD_BYTES = 4096
RECOVERY = 5.0  # seconds within which a new process must make progress
LATENCY = 0.002  # per request and per read: stretches downloads so kills land inside them

rel = pytest.mark.reliability


def run_and_kill(target, args, delay: float) -> tuple[bool, int | None, int]:
    """Start ``target(*args)`` in a forked child, SIGKILL it after ``delay`` seconds if it
    is still running; returns (killed, exit code, pid)."""
    ctx = forkserver()
    process = ctx.Process(target=target, args=args, daemon=True)
    process.start()
    process.join(delay)
    killed = process.is_alive()
    if killed:
        process.kill()
    process.join(30)
    assert not process.is_alive(), "a SIGKILLed child did not die"
    return killed, process.exitcode, process.pid


def timed_run(target, args, runs: int = 3) -> float:
    """The median duration of unkilled runs of ``target(*args)`` (each must succeed)."""
    forkserver()  # started before the clock
    durations = []
    for _ in range(runs):
        started = time.monotonic()
        killed, code, _ = run_and_kill(target, args, 60)
        assert not killed and code == 0, f"an unkilled run failed (exit code {code})"
        durations.append(time.monotonic() - started)
    return sorted(durations)[len(durations) // 2]


@rel("crash", "Writer SIGKILLed at random moments while packing, uploading (zstd or not) and publishing, ROXXEL_RELIABILITY_ITERATIONS times (default 50): the last published manifest stays intact and readable, a new writer publishes within seconds, and dead writers' staging is cleaned")
def test_writer_crash_loop(tmp_path, reliability):
    url = str(tmp_path / "ds")
    staging = tmp_path / "staging"
    staging.mkdir()
    store = dataset_store(url)
    write(url, N, version=0, shard_bytes=SHARD_BYTES)
    duration = timed_run(writer_child, (url, N, 1, SHARD_BYTES, str(staging), None))
    published, cache_dir = 1, str(tmp_path / "cache")
    rng = random.Random(20260401)
    killed = landed = 0
    slowest = 0.0
    for i in range(iterations()):
        version = published + 1
        compression = "zstd" if i % 2 else None
        was_killed, code, pid = run_and_kill(
            writer_child, (url, N, version, SHARD_BYTES, str(staging), compression),
            rng.uniform(0, duration * 1.1),
        )
        killed += was_killed
        assert was_killed or code == 0, f"iteration {i}: the writer failed on its own (exit {code})"
        manifest = read_manifest(store)  # intact: parses and validates
        found = manifest.meta["version"]
        assert found in (published, version), f"iteration {i}: version {found} is neither published one"
        landed += found == version
        with roxxel.open(url, cache_dir=cache_dir) as ds:
            check_all(ds, N, found)  # every shard verified by checksum and footer; every record right
        started = time.monotonic()  # a new writer makes progress: it publishes the next version
        published = found + 1
        write(url, N, version=published, shard_bytes=SHARD_BYTES, mode="overwrite",
              staging_dir=str(staging))
        slowest = max(slowest, time.monotonic() - started)
        assert slowest < RECOVERY
        dead = [n for n in files(staging) if re.match(rf"roxxel-writer-{pid}-", n)]
        assert dead == [], f"iteration {i}: the killed writer's staging survived: {dead}"
        assert read_manifest(store).meta["version"] == published
    temps = [n for n in files(url) if n.startswith(".roxxel-tmp-")]
    orphans = len(files(Path(url) / "shards")) - len(read_manifest(store).shards)
    reliability.note(f"{killed} kills, {landed} runs finished first, recovery <= {slowest:.2f}s, "
                     f"{len(temps)} temp files and {orphans} unreferenced shards left in the dataset")
    assert killed >= iterations() // 2, "most kills should land while the writer is running"


def _remove_some(cache_dir: str, rng: random.Random) -> None:
    """Evict a random half of the cached shards, so the next run downloads again."""
    cache = ShardCache(cache_dir)
    for entry in cache.entries():
        if rng.random() < 0.5:
            cache.remove(entry.checksum)


def _mid_download(cache_dir: str, pid: int) -> bool:
    return any(name.startswith(f"{pid}.") for name in files(Path(cache_dir) / "tmp"))


def _probe_read(url: str, cache_dir: str, limit: int | None, rng: random.Random) -> float:
    """A new process reads records through the same cache; returns how long it took."""
    started = time.monotonic()
    with roxxel.open(url, cache_dir=cache_dir, cache_limit=limit, lookahead=1) as ds:
        for i in rng.sample(range(len(ds)), 25):
            assert check_record(ds[i]) == i
    return time.monotonic() - started


@rel("crash", "Reader SIGKILLed at random moments during a shuffled epoch through a small cache (downloading, verifying, publishing, evicting), ROXXEL_RELIABILITY_ITERATIONS times: no temp file or lock survives cleanup, every cached shard re-verifies, a new reader reads within seconds")
def test_reader_crash_loop(tmp_path, reliability):
    url, cache_dir = str(tmp_path / "ds"), str(tmp_path / "cache")
    manifest = write(url, N, shard_bytes=SHARD_BYTES)
    limit = 8 * int(manifest.shards.raw_size.max())
    ctx = forkserver()
    duration = timed_run(reader_child, (url, cache_dir, limit, 0, ctx.Value("q", 0, lock=False), LATENCY))
    rng = random.Random(20260402)
    killed = mid = 0
    slowest = 0.0
    for i in range(iterations()):
        _remove_some(cache_dir, rng)
        progress = ctx.Value("q", 0, lock=False)
        was_killed, code, pid = run_and_kill(
            reader_child, (url, cache_dir, limit, i, progress, LATENCY), rng.uniform(0, duration)
        )
        assert was_killed or code == 0, f"iteration {i}: the reader failed (exit {code}): a bad record?"
        killed += was_killed
        mid += _mid_download(cache_dir, pid)
        check_cache(cache_dir, manifest)
        slowest = max(slowest, _probe_read(url, cache_dir, limit, rng))
        assert slowest < RECOVERY
    reliability.note(f"{killed} kills, {mid} mid-download, recovery <= {slowest:.2f}s")
    assert killed >= iterations() // 2
    assert mid >= 1 or iterations() < 20, "no kill landed during a download"


@rel("crash", "`roxxel.ops.warm` SIGKILLed at random moments, ROXXEL_RELIABILITY_ITERATIONS times: no temp file or lock survives cleanup, every cached shard re-verifies, a new warm completes within seconds")
def test_warm_crash_loop(tmp_path, reliability):
    url, cache_dir = str(tmp_path / "ds"), str(tmp_path / "cache")
    manifest = write(url, N, shard_bytes=SHARD_BYTES)
    duration = timed_run(warm_child, (url, cache_dir, None, LATENCY))
    rng = random.Random(20260403)
    killed = mid = 0
    slowest = 0.0
    for i in range(iterations()):
        _remove_some(cache_dir, rng)
        was_killed, code, pid = run_and_kill(warm_child, (url, cache_dir, None, LATENCY),
                                             rng.uniform(0, duration))
        assert was_killed or code == 0, f"iteration {i}: warm failed on its own (exit {code})"
        killed += was_killed
        mid += _mid_download(cache_dir, pid)
        check_cache(cache_dir, manifest)
        started = time.monotonic()
        report = warm(url, cache_dir=cache_dir, workers=2)
        slowest = max(slowest, time.monotonic() - started)
        assert slowest < RECOVERY
        assert report.shards_fetched + report.shards_cached == len(manifest.shards)
        check_cache(cache_dir, manifest)
        assert len(ShardCache(cache_dir).entries()) == len(manifest.shards)
    reliability.note(f"{killed} kills, {mid} mid-download, recovery <= {slowest:.2f}s")
    assert killed >= iterations() // 2
    assert mid >= 1 or iterations() < 20, "no kill landed during a download"
