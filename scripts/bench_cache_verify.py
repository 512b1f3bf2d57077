"""What each cache verification mode costs per shard, when a cached shard is handed out.

For shards of each size (default 32 and 256 MiB) and checksum algorithm, the time of one
``ShardCache.get`` that finds the shard cached:

- ``stat``: a bare ``os.stat`` of the file, for scale;
- ``changed``, file unchanged: the default. The identity check (``fstat``, read and touch
  the small record of verification) and the rest of a cache hit (open, lock);
- ``changed``, file changed since (here: its mtime touched): the file is hashed again;
- ``always``, first mapping in a process: hashed again, whatever its identity; later
  mappings in the same process cost what ``changed`` does;
- the same re-hash with the file's pages dropped from the page cache first
  (``posix_fadvise(DONTNEED)``): read from the disk.

Usage: ``.venv/bin/python scripts/bench_cache_verify.py [--mib 32 256] [--repeat 5]``
(``--quick``: a 4 MiB shard, sha256 only, a smoke test).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from benchkit import MiB

from roxxel.cache import ShardCache
from roxxel.cache import store as cache_store
from roxxel.cache.identity import FileIdentity, read_identity
from roxxel.format import ShardWriter
from roxxel.manifest.checksums import CHECKSUM_ALGORITHMS, new_hasher


def make_shard(path: Path, mib: int) -> None:
    """A valid ROXXEL01 shard of about ``mib`` MiB of 1 MiB random records."""
    chunk = os.urandom(MiB)
    with open(path, "wb") as f:
        writer = ShardWriter(f)
        for i in range(mib):
            writer.append(chunk[i % 256 :] + chunk[: i % 256])
        writer.finish()


def cache_shard(cache: ShardCache, source: Path, algorithm: str) -> dict:
    """Put ``source`` in ``cache`` as a download would; returns the ``get`` arguments."""
    hasher = new_hasher(algorithm)
    with open(source, "rb") as f:
        while block := f.read(8 * MiB):
            hasher.update(block)

    def fetch(sink) -> None:
        with open(source, "rb") as f:
            while block := f.read(8 * MiB):
                sink(block)

    size = source.stat().st_size
    count = int.from_bytes(source.read_bytes()[-24:-16], "little")
    args = {"checksum": f"{algorithm}:{hasher.hexdigest()}", "fetch": fetch, "stored_size": size,
            "raw_size": size, "record_count": count, "label": f"bench-{algorithm}-{size}"}
    cache.get(**args).close()
    return args


def timed(repeat: int, before: Callable[[], object], fn: Callable[[], object]) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs, ``before()`` untimed each time."""
    times = []
    for _ in range(repeat):
        before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def drop_pages(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def measure(directory: Path, mib: int, algorithm: str, repeat: int) -> dict[str, float]:
    source = directory / f"source-{mib}.rox"
    if not source.exists():
        make_shard(source, mib)
    changed = ShardCache(directory / f"cache-{algorithm}", verify="changed")
    always = ShardCache(changed.directory, verify="always")
    args = cache_shard(changed, source, algorithm)
    path = changed.path_for(args["checksum"])

    def hit(cache: ShardCache) -> Callable[[], None]:
        return lambda: cache.get(**args).close()

    def nothing() -> None:
        pass

    def forget() -> None:  # as in a new process
        cache_store._HASHED_HERE.clear()

    def cold() -> None:
        os.utime(path)
        drop_pages(path)

    def identity_check() -> None:
        read_identity(record, touch_if=FileIdentity.of(fd))

    hit(changed)()  # warm: the file in the page cache, its identity recorded
    record = os.path.join(changed.directory, "verified", args["checksum"].replace(":", "-") + ".json")
    fd = os.open(path, os.O_RDONLY)
    slow = max(3, repeat // 2) if mib > 64 else repeat
    try:
        check = timed(repeat * 20, nothing, identity_check)
    finally:
        os.close(fd)
    return {
        "stat": timed(repeat * 20, nothing, lambda: os.stat(path)),
        "changed, file unchanged": timed(repeat * 20, nothing, hit(changed)),
        "  of which the identity check": check,
        "changed, file changed: re-hash": timed(slow, lambda: os.utime(path), hit(changed)),
        "always, first mapping: re-hash": timed(slow, forget, hit(always)),
        "always, later mappings": timed(repeat * 20, nothing, hit(always)),
        "re-hash from disk (pages dropped)": timed(slow, cold, hit(changed)),
    }


def show(value: float, mib: int) -> str:
    text = f"{value * 1e6:9.1f} us" if value < 1e-3 else f"{value * 1e3:9.1f} ms"
    rate = mib * MiB / value / 1e9
    return text + (f" ({rate:4.2f} GB/s)" if value > 1e-3 else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, nargs="+", default=[32, 256], help="shard sizes in MiB")
    parser.add_argument("--algorithms", nargs="+", default=["sha256", "blake2b"], choices=sorted(CHECKSUM_ALGORITHMS))
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default=None, help="where to write the shards (default: a temp dir)")
    parser.add_argument("--quick", action="store_true", help="smoke test: a 4 MiB shard, sha256, 3 rounds")
    opts = parser.parse_args()
    if opts.quick:
        opts.mib, opts.algorithms, opts.repeat = [4], ["sha256"], 3
    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp:
        for algorithm in opts.algorithms:
            results = {mib: measure(Path(tmp), mib, algorithm, opts.repeat) for mib in opts.mib}
            print(f"\n{algorithm}: time per ShardCache.get of a cached shard (median)")
            print(f"{'':36}" + "".join(f"{f'{mib} MiB shard':>28}" for mib in opts.mib))
            for row in results[opts.mib[0]]:
                print(f"{row:36}" + "".join(f"{show(results[mib][row], mib):>28}" for mib in opts.mib))


if __name__ == "__main__":
    main()
