"""Benchmark typed reads and the payload file against limits measured in the same run.

1. A warm typed epoch: a dataset of float32 records of 768 values (written with
   ``Writer(dtype="float32", shape=768)``, default shard size, every shard in the cache),
   read as ``(batch, 768)`` arrays, against a bare ``numpy.memmap`` of the same bytes.
   Each side of a line makes the same arrays, so both read every byte:
   - slices in stored order: ``ds.arrays[lo:hi]`` (a zero-copy view inside a shard)
     against ``memmap[lo:hi]``, each batch copied into one buffer (the copy a training
     step makes into its staging buffer). Target: at least 80% of the memmap's rate.
   - the stream in stored order: ``ds.arrays.iter(shuffle=False, batch_size=B)`` (a fresh
     array a batch) against ``memmap[lo:hi].copy()``. Target: at least 80%.
   - the stream shuffled: ``ds.arrays.iter(seed=1, batch_size=B)`` against
     ``memmap[idx]`` with the same record order, batch by batch (a fresh array a batch).
     Target: at least 80%.
2. ``ds.payload()`` read sequentially in 1 MiB ``readinto`` calls, from the warm cache,
   against ``readinto`` of a plain file holding the same bytes (in the page cache).
   No target; the ratio is printed.

Each figure is the best of ``--repeat`` rounds; the rounds of the two sides of a ratio
alternate, in the same run. Usage: ``.venv/bin/python scripts/bench_typed.py [--mib 256] [--repeat 5]``
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Callable

import numpy as np
from benchkit import MiB

import roxxel

DIM = 768


def rates(nbytes: int, repeat: int, ours: Callable[[], object], bare: Callable[[], object]) -> tuple[float, float]:
    """Bytes per second of the best of ``repeat`` rounds of each side, the rounds
    alternating (so a burst of load from other processes hits both), after one warm-up."""
    ours()
    bare()
    best = [float("inf"), float("inf")]
    for _ in range(repeat):
        for side, fn in enumerate((ours, bare)):
            t0 = time.perf_counter()
            fn()
            best[side] = min(best[side], time.perf_counter() - t0)
    return nbytes / best[0], nbytes / best[1]


def bench_shuffled(ds: roxxel.Dataset, mm: np.ndarray, batch: int, repeat: int) -> tuple[float, float]:
    order = np.concatenate(list(ds.iter(seed=1).plan.records()))
    cuts = [order[lo : lo + batch] for lo in range(0, len(order), batch)]

    def ours() -> None:
        for _ in ds.arrays.iter(seed=1, batch_size=batch):
            pass

    def bare() -> None:
        for idx in cuts:
            mm[idx]

    nbytes = len(order) * DIM * 4
    return rates(nbytes, repeat, ours, bare)


def bench_stream(ds: roxxel.Dataset, mm: np.ndarray, batch: int, repeat: int) -> tuple[float, float]:
    n = len(mm)

    def ours() -> None:
        for _ in ds.arrays.iter(shuffle=False, batch_size=batch):
            pass

    def bare() -> None:
        for lo in range(0, n, batch):
            mm[lo : lo + batch].copy()

    nbytes = n * DIM * 4
    return rates(nbytes, repeat, ours, bare)


def bench_slices(ds: roxxel.Dataset, mm: np.ndarray, batch: int, repeat: int) -> tuple[float, float]:
    n = len(mm)
    out = np.empty((batch, DIM), dtype=np.float32)
    arrays = ds.arrays

    def ours() -> None:
        for lo in range(0, n - batch + 1, batch):
            np.copyto(out, arrays[lo : lo + batch])

    def bare() -> None:
        for lo in range(0, n - batch + 1, batch):
            np.copyto(out, mm[lo : lo + batch])

    nbytes = (n // batch) * batch * DIM * 4
    return rates(nbytes, repeat, ours, bare)


def bench_payload(ds: roxxel.Dataset, plain: str, repeat: int) -> tuple[float, float]:
    buf = bytearray(MiB)

    def ours() -> None:
        with ds.payload() as f:
            while f.readinto(buf):
                pass

    def bare() -> None:
        with open(plain, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass

    nbytes = os.path.getsize(plain)
    return rates(nbytes, repeat, ours, bare)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="dataset size (default 256 MiB)")
    parser.add_argument("--repeat", type=int, default=5, help="rounds; best of each side (default 5)")
    args = parser.parse_args()
    n = args.mib * MiB // (DIM * 4)
    x = np.random.default_rng(0).standard_normal((n, DIM), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="roxxel-bench-typed-") as tmp:
        url = os.path.join(tmp, "ds")
        t0 = time.perf_counter()
        with roxxel.Writer(url, dtype="float32", shape=DIM) as w:
            w.extend(x)
        took = time.perf_counter() - t0
        plain = os.path.join(tmp, "plain.f32")
        x.tofile(plain)
        del x
        mm = np.memmap(plain, dtype=np.float32, mode="r", shape=(n, DIM))
        print(f"dataset: {n:,} float32 records of {DIM} values ({args.mib} MiB) in {len(w.manifest.shards)} "
              f"shards; writer.extend(array) {args.mib / took:.0f} MiB/s")
        with roxxel.open(url, cache_dir=os.path.join(tmp, "cache")) as ds:
            ds.warm()
            lines = (("slices in stored order", "ds.arrays[lo:hi]", "memmap[lo:hi]", bench_slices),
                     ("stream in stored order", "ds.arrays.iter", "memmap[lo:hi].copy()", bench_stream),
                     ("stream shuffled", "ds.arrays.iter", "memmap[idx]", bench_shuffled))
            for title, us, them, bench in lines:
                for batch in (256, 1024):
                    ours, bare = bench(ds, mm, batch, args.repeat)
                    share = ours / bare
                    print(f"{title}, batch {batch:4d}: {us} {ours / MiB:6.0f} MiB/s   {them} {bare / MiB:6.0f} MiB/s"
                          f"   {share:6.1%}   target >= 80%  {'OK' if share >= 0.8 else 'MISSED'}")
            ours, bare = bench_payload(ds, plain, args.repeat)
            print(f"payload, 1 MiB readinto (warm cache): ds.payload() {ours / MiB:7.0f} MiB/s   plain file "
                  f"{bare / MiB:7.0f} MiB/s   {ours / bare:6.1%}")
        del mm


if __name__ == "__main__":
    main()
