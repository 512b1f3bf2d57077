"""Concurrency: eight reader processes and a ``warm`` process on one small cache.

Every record each reader gets must be right and each reader's epoch complete; the
cache's published shards never exceed the limit (sampled under the cache's own publish
lock, where the invariant must hold), and with the downloads in ``tmp/`` the cache never
exceeds the limit plus the shards in flight; every shard is downloaded once per residency
in the cache: between two downloads of a shard, some process evicted it.
"""

from __future__ import annotations

import json
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest

from roxxel.cache.files import exclusive_lock
from tests.reliability_kit import (
    concurrent_reader,
    concurrent_warm,
    forkserver,
    regular_bytes,
    write,
)

N = 1200
SHARD_BYTES = 8192
READERS = 8
LIMIT_SHARDS = 24  # > what 8 readers (2 mapped each) and warm (2 workers) can hold at once
LATENCY = 0.002


class UsageSampler(threading.Thread):
    """Samples the cache's published and in-flight bytes until stopped."""

    def __init__(self, cache_dir: Path) -> None:
        super().__init__(name="usage-sampler", daemon=True)
        self.cache_dir = cache_dir
        self.stop = threading.Event()
        self.peak_published = self.peak_total = self.samples = 0

    def run(self) -> None:
        shards, tmp = self.cache_dir / "shards", self.cache_dir / "tmp"
        lock = str(self.cache_dir / "locks" / "publish.lock")
        while not self.stop.wait(0.003):
            with exclusive_lock(lock):  # roxxel's own protocol: no publish or eviction meanwhile
                published = regular_bytes(shards)
            total = published + regular_bytes(tmp)
            self.peak_published = max(self.peak_published, published)
            self.peak_total = max(self.peak_total, total)
            self.samples += 1


def events_by_shard(log: Path) -> dict[str, list[tuple[float, str]]]:
    """checksum -> [(time, "downloading" | "cached" | "unlinking")], from every process.

    "unlinking" is noted just before an evictor unlinks the shard, "downloading" just
    after a process found it absent (under the shard's lock): so between two downloads of
    a shard there must be an unlink, in time order, if each residency is downloaded once.
    """
    out: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for line in log.read_text().splitlines():
        _pid, when, message = line.split(" ", 2)
        for event in ("downloading", "cached", "unlinking"):
            marker = f"{event} "
            if marker in message:
                checksum = message.split(marker, 1)[1].split()[0]
                out[checksum].append((float(when), event))
    return out


@pytest.mark.reliability("processes", "8 reader processes (each a whole epoch in its own shuffled order) and a `warm` process on one cache whose limit holds half the dataset: every record right and every epoch complete, published shards never above the limit, the cache never above the limit plus the shards in flight, each shard downloaded once per residency")
def test_eight_readers_and_warm_share_a_small_cache(tmp_path, reliability):
    url, cache_dir = str(tmp_path / "ds"), tmp_path / "cache"
    manifest = write(url, N, shard_bytes=SHARD_BYTES)
    shards = len(manifest.shards)
    largest = int(manifest.shards.raw_size.max())
    limit = LIMIT_SHARDS * largest
    assert shards >= 2 * LIMIT_SHARDS, "the dataset must not fit in the cache"
    in_flight = (2 * READERS + 2) * largest  # a reader's own fetch + its prefetch; warm's 2 workers
    events = tmp_path / "events.log"
    ctx = forkserver()
    from roxxel.cache import ShardCache

    ShardCache(cache_dir)  # the directory exists before the sampler looks at it
    sampler = UsageSampler(cache_dir)
    sampler.start()
    procs = [
        ctx.Process(target=concurrent_reader, args=(url, str(cache_dir), limit, rank, str(events),
                                                    str(tmp_path / f"r{rank}.json"), LATENCY))
        for rank in range(READERS)
    ]
    procs.append(ctx.Process(target=concurrent_warm, args=(url, str(cache_dir), limit, str(events),
                                                           str(tmp_path / "warm.json"), LATENCY)))
    started = time.monotonic()
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(120)
    finally:
        sampler.stop.set()
        sampler.join()
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    elapsed = time.monotonic() - started
    assert [p.exitcode for p in procs] == [0] * len(procs), "a process failed (a bad record?)"

    results = [json.loads((tmp_path / f"r{rank}.json").read_text()) for rank in range(READERS)]
    for result in results:
        assert sorted(result["seen"]) == list(range(N)), "a reader's epoch is not every record once"
    warm_report = json.loads((tmp_path / "warm.json").read_text())

    log = events.read_text()
    assert "will exceed its limit" not in log, "the limit was exceeded (every shard in use)"
    assert sampler.samples > 10
    assert sampler.peak_published <= limit
    assert sampler.peak_total <= limit + in_flight

    downloads = evictions = 0
    for checksum, timeline in events_by_shard(events).items():
        timeline.sort()
        resident_since_download = False
        for when, event in timeline:
            if event == "downloading":
                assert not resident_since_download, (
                    f"{checksum} was downloaded again at {when} without an eviction since the last "
                    "download:\n" + "\n".join(line for line in log.splitlines() if checksum in line)
                )
                resident_since_download = True
                downloads += 1
            elif event == "unlinking":
                resident_since_download = False
                evictions += 1
    total_downloads = sum(r["shards_downloaded"] for r in results) + warm_report["shards_fetched"]
    assert downloads == total_downloads, "every download was logged"
    reliability.note(
        f"{shards} shards, limit {LIMIT_SHARDS} shards; {downloads} downloads, {evictions} evictions; "
        f"peak published {sampler.peak_published / largest:.1f} shards, peak with tmp "
        f"{sampler.peak_total / largest:.1f}; warm fetched {warm_report['shards_fetched']}; {elapsed:.1f}s"
    )
