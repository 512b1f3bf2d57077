"""Benchmark the local read path against the physical limits measured in the same run.

1. Warm random access: ``ds[i]`` per record against a bare ``memoryview`` slice of an
   ``mmap`` of the same file (each record's bounds given to the bare loop in Python lists
   indexed by the record's number, the cheapest form). Target: ``ds[i]`` within 3x of the bare slice. Also (no
   target) the same records written as shards of 64 MiB, read through a glob.
2. ``stream()`` throughput against a plain ``memcpy`` (``np.copyto``) of the same bytes
   from the same map, per batch size. Target: at least 50% of memcpy once a batch is
   1 MiB or more. Also (no target) the gather alone: ``take`` of as many sorted random
   rows into a fresh batch, the copy ``stream()`` makes, without choosing the rows.

Usage: ``.venv/bin/python scripts/bench_local.py [--mib 512] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import itertools
import mmap
import tempfile
from pathlib import Path

import numpy as np
from benchkit import best_of

import roxxel


def bench_random_access(pattern: str, repeat: int) -> tuple[float, float]:
    """ds[i] and a bare memoryview slice per record of ``pattern``'s files, ns/record."""
    ds = roxxel.Roxxel(pattern)
    n = len(ds)
    order = np.random.default_rng(0).permutation(n)
    maps, views = [], []
    for path in ds.paths:
        with open(path, "rb") as f:
            maps.append(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ))
        views.append(memoryview(maps[-1]))
    # each record's file and bounds, as Python lists indexed by the record's number
    # (starts shares its int objects with ends, as the cheapest list of bounds would)
    ends = np.concatenate([ds.shard(k).offsets for k in range(ds.num_shards)]).tolist()
    starts = [0] + ends[:-1]
    for first in ds.record_starts[1:-1].tolist():
        starts[first] = 0
    shard_of = np.repeat(np.arange(ds.num_shards), np.diff(ds.record_starts)).tolist()
    indices = order.tolist()
    mv = views[0]

    def bare():
        if len(views) == 1:
            for i in indices:
                mv[starts[i] : ends[i]]
        else:
            for i in indices:
                views[shard_of[i]][starts[i] : ends[i]]

    def ours():
        for i in indices:
            ds[i]

    for fn in (bare, ours):  # warm the page cache and the code paths
        fn()
    t_bare = best_of(repeat, bare) / n
    t_ours = best_of(repeat, ours) / n
    del mv
    for view in views:
        view.release()
    for mm in maps:
        mm.close()
    ds.close()
    return t_ours, t_bare


def bench_stream(path: Path, seq_len: int, batch_size: int, repeat: int) -> tuple[float, float]:
    ds = roxxel.Roxxel(path)
    payload = ds.raw_data
    batch_bytes = seq_len * batch_size * 4
    steps = max(4, len(payload) // batch_bytes)
    buf = np.empty(batch_bytes, dtype=np.uint8)
    blocks = len(payload) // batch_bytes

    def memcpy():
        for s in range(steps):
            k = s % blocks
            np.copyto(buf, payload[k * batch_bytes : (k + 1) * batch_bytes])

    def stream():
        for _ in itertools.islice(ds.stream(seq_len, batch_size, seed=1, epochs=None), steps):
            pass

    windows = payload[: len(payload) // (seq_len * 4) * seq_len * 4].view(np.int32).reshape(-1, seq_len)
    rng = np.random.default_rng(1)
    rows = [np.sort(rng.choice(len(windows), batch_size, replace=False)) for _ in range(steps)]

    def gather():  # the copy at the heart of stream(): sorted random rows, nothing else
        for picked in rows:
            windows.take(picked, axis=0, out=np.empty((batch_size, seq_len), np.int32), mode="clip")

    memcpy()
    stream()
    total = steps * batch_bytes
    bw_copy = total / best_of(repeat, memcpy)
    bw_stream = total / best_of(repeat, stream)
    bw_gather = total / best_of(repeat, gather)
    ds.close()
    return bw_stream, bw_copy, bw_gather


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=512, help="dataset size (default 512 MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; best of each side (default 5)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    mib = 1 << 20
    with tempfile.TemporaryDirectory(prefix="roxxel-bench-") as tmp:
        path = Path(tmp) / "bench.rox"
        target = args.mib * mib
        sizes = rng.integers(1024, 15 * 1024, size=target // (8 * 1024))
        chunk = rng.integers(0, 256, size=16 * 1024, dtype=np.uint8)
        roxxel.Roxxel(path).write(chunk[: int(s)] for s in sizes)
        print(f"dataset: {len(sizes):,} records of 1-15 KiB, {path.stat().st_size / mib:.0f} MiB, one file")

        t_ours, t_bare = bench_random_access(str(path), args.repeat)
        ratio = t_ours / t_bare
        print(f"random access, one file        ds[i] {t_ours * 1e9:5.0f} ns/record   bare mmap slice "
              f"{t_bare * 1e9:5.0f} ns   ratio {ratio:.2f}x   target <= 3x  "
              f"{'OK' if ratio <= 3 else 'MISSED'}")
        parts = Path(tmp) / "parts"
        written = roxxel.Roxxel(parts).write((chunk[: int(s)] for s in sizes), max_shard_bytes=64 * mib)
        t_ours, t_bare = bench_random_access(str(Path(tmp) / "parts_*.rox"), args.repeat)
        print(f"random access, {len(written)} files (info)  ds[i] {t_ours * 1e9:5.0f} ns/record   bare mmap slice "
              f"{t_bare * 1e9:5.0f} ns   ratio {t_ours / t_bare:.2f}x")

        for seq_len, batch_size in ((2048, 32), (2048, 128), (2048, 512), (8192, 256)):
            bw_stream, bw_copy, bw_gather = bench_stream(path, seq_len, batch_size, args.repeat)
            batch_mib = seq_len * batch_size * 4 / mib
            share = bw_stream / bw_copy
            verdict = "" if batch_mib < 1 else ("  target >= 50%  " + ("OK" if share >= 0.5 else "MISSED"))
            print(f"stream batch {batch_size:4d}x{seq_len} int32 ({batch_mib:5.2f} MiB)  "
                  f"{bw_stream / mib:7.0f} MiB/s   memcpy {bw_copy / mib:7.0f} MiB/s   "
                  f"{share:6.1%}{verdict}   (the gather alone: {bw_gather / bw_copy:.1%})")


if __name__ == "__main__":
    main()
