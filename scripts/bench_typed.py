"""Benchmark typed reads and the payload file against limits measured in the same run.

1. A warm typed epoch: a dataset of float32 records of 768 values (written with
   ``Writer(dtype="float32", shape=768)``, default shard size, every shard in the cache),
   read as ``(batch, 768)`` arrays, against a bare NumPy array of the same bytes
   (``np.memmap`` of a plain file in the page cache, as an ``ndarray``: no subclass
   overhead on the baseline). Each side of a line makes the same arrays, so both read
   every byte, and both are consumed by the same loop, ``for batch in batches: pass``
   (each batch held while the next is made, as a training step holds it):
   - slices in stored order: ``ds.arrays[lo:hi]`` (a zero-copy view inside a shard)
     against ``array[lo:hi]``, each batch copied into one buffer (the copy a training
     step makes into its staging buffer). Target: at least 80% of the baseline's rate.
   - the stream in stored order: ``ds.arrays.iter(shuffle=False, batch_size=B)`` (a new
     array a batch) against ``array[lo:hi].copy()``. Target: at least 80%.
   - the stream shuffled: ``ds.arrays.iter(seed=1, batch_size=B)`` against a gather of
     exactly the records that stream yields, in the order it yields them, batch by batch
     (a new array a batch), the faster of ``array[idx]`` and ``array.take(idx, axis=0)``.
     Target: at least 80%. (The script checks first that each batch holds exactly the
     records the plan gives it.)
2. ``ds.payload()`` read sequentially in 1 MiB ``readinto`` calls, from the warm cache,
   against ``readinto`` of a plain file holding the same bytes (in the page cache).
   No target; the ratio is printed.

Each measurement runs in a fresh process with default options (``roxxel.open(url,
cache_dir=...)``), which reads one untimed epoch and then times ``--epochs`` epochs; a
side's figure is the best over ``--rounds`` such processes, the two sides' processes
alternating (so a burst of load from other processes hits both). The load average is
printed at the start and the end: compare runs made at a quiet moment.

Usage: ``.venv/bin/python scripts/bench_typed.py [--mib 256] [--rounds 5] [--epochs 3]``
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from benchkit import MiB

import roxxel

DIM = 768
LINES = ("slices", "stream", "shuffled")
BATCHES = (256, 1024)


def consume(batches: Iterable[object]) -> None:
    """The consumer both sides of a line share: each batch is held while the next is made."""
    for _batch in batches:
        pass


def side_fn(spec: dict[str, Any]) -> Callable[[], object]:
    """The epoch to time for one side (``"ours"``, or a baseline) of one line."""
    line, side, batch = spec["line"], spec["side"], spec["batch"]
    if side == "ours":
        ds = roxxel.open(spec["url"], cache_dir=spec["cache"])  # default options
        arrays = ds.arrays
        n = len(arrays)
        if line == "stream":
            return lambda: consume(arrays.iter(shuffle=False, batch_size=batch))
        if line == "shuffled":
            return lambda: consume(arrays.iter(seed=1, batch_size=batch))
        get = arrays.__getitem__
    else:
        n = spec["records"]
        array = np.memmap(spec["plain"], dtype=np.float32, mode="r", shape=(n, DIM)).view(np.ndarray)
        if line == "stream":
            return lambda: consume(array[lo : lo + batch].copy() for lo in range(0, n, batch))
        if line == "shuffled":
            order = np.load(spec["order"])
            cuts = [order[lo : lo + batch] for lo in range(0, len(order), batch)]
            if side == "take":
                return lambda: consume(array.take(idx, axis=0) for idx in cuts)
            return lambda: consume(array[idx] for idx in cuts)
        get = array.__getitem__
    out = np.empty((batch, DIM), dtype=np.float32)

    def slices() -> None:  # (the same loop both sides: only get differs)
        for lo in range(0, n - batch + 1, batch):
            np.copyto(out, get(slice(lo, lo + batch)))

    return slices


def child(spec: dict[str, Any]) -> None:
    """Time one side of one line in this (fresh) process: one untimed epoch, then the
    best of ``epochs``; prints the seconds as JSON."""
    if spec["line"] == "payload":
        fn = payload_fn(spec)
    else:
        fn = side_fn(spec)
    fn()
    best = float("inf")
    for _ in range(spec["epochs"]):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"seconds": best}))


def payload_fn(spec: dict[str, Any]) -> Callable[[], object]:
    buf = bytearray(MiB)
    if spec["side"] == "ours":
        ds = roxxel.open(spec["url"], cache_dir=spec["cache"])

        def ours() -> None:
            with ds.payload() as f:
                while f.readinto(buf):
                    pass

        return ours

    def bare() -> None:
        with open(spec["plain"], "rb", buffering=0) as f:
            while f.readinto(buf):
                pass

    return bare


def measure(spec: dict[str, Any], sides: tuple[str, ...], rounds: int) -> dict[str, float]:
    """The best seconds of each side over ``rounds`` fresh processes, sides alternating."""
    best = dict.fromkeys(sides, float("inf"))
    for _ in range(rounds):
        for side in sides:
            out = subprocess.run([sys.executable, __file__, "--child", json.dumps({**spec, "side": side})],
                                 check=True, capture_output=True, text=True)
            best[side] = min(best[side], json.loads(out.stdout.splitlines()[-1])["seconds"])
    return best


def stream_order(url: str, cache: str, x: np.ndarray, batch: int) -> np.ndarray:
    """The records ``ds.arrays.iter(seed=1, batch_size=batch)`` yields, in its order (each
    row found in ``x`` by its first 8 bytes); AssertionError unless every batch holds
    exactly the records the plan gives it."""
    keys = np.ascontiguousarray(x[:, :2]).view(np.int64).ravel()
    by_key = np.argsort(keys)
    assert len(np.unique(keys)) == len(keys), "the rows' first 8 bytes must tell them apart"
    with roxxel.open(url, cache_dir=cache) as ds:
        plan = np.concatenate(list(ds.iter(seed=1).plan.records()))
        found = []
        for b in ds.arrays.iter(seed=1, batch_size=batch):
            k = np.ascontiguousarray(b[:, :2]).view(np.int64).ravel()
            found.append(by_key[np.searchsorted(keys, k, sorter=by_key)])
    order = np.concatenate(found)
    assert np.array_equal(x[order], np.concatenate([x[o] for o in found]))
    for lo in range(0, len(plan), batch):
        assert np.array_equal(np.sort(order[lo : lo + batch]), np.sort(plan[lo : lo + batch])), lo
    return order


def huge_page_shares(url: str, cache: str, plain: str) -> str:
    """How much of the cache's shards and of the plain file the kernel maps with 2 MiB
    pages once read (``FilePmdMapped`` in ``/proc/self/smaps``): a gather from 4 KiB pages
    pays more TLB misses. Linux only; empty elsewhere."""
    if not os.path.exists("/proc/self/smaps"):
        return ""
    with roxxel.open(url, cache_dir=cache) as ds:
        shards = [ds.shard(k) for k in range(ds.num_shards)]
        mm = np.memmap(plain, dtype=np.uint8, mode="r")
        for a in [s.payload for s in shards] + [mm]:
            int(a[::4096].sum())  # every page touched
        rss = {"cache": [0, 0], "plain": [0, 0]}
        with open("/proc/self/smaps") as f:
            side = None
            for text in f:
                if "-" in text.split(" ", 1)[0]:  # a mapping's first line
                    path = text.split()[-1]
                    side = "plain" if path == os.path.realpath(plain) else "cache" if path.endswith(".rox") else None
                elif side and text.startswith(("Rss:", "FilePmdMapped:")):
                    rss[side][text.startswith("FilePmdMapped:")] += int(text.split()[1])
        del mm
    return ", ".join(f"{k} {pmd / max(total, 1):.0%}" for k, (total, pmd) in rss.items())


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="dataset size (default 256 MiB)")
    parser.add_argument("--rounds", type=int, default=5, help="fresh processes per side; the best (default 5)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per process; the best (default 3)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    print(f"start: {load()}")
    n = args.mib * MiB // (DIM * 4)
    x = np.random.default_rng(0).standard_normal((n, DIM), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="roxxel-bench-typed-") as tmp:
        url, cache = os.path.join(tmp, "ds"), os.path.join(tmp, "cache")
        t0 = time.perf_counter()
        with roxxel.Writer(url, dtype="float32", shape=DIM) as w:
            w.extend(x)
        took = time.perf_counter() - t0
        plain = os.path.join(tmp, "plain.f32")
        x.tofile(plain)
        with roxxel.open(url, cache_dir=cache) as ds:
            ds.warm()
        orders = {}
        for batch in BATCHES:
            orders[batch] = os.path.join(tmp, f"order-{batch}.npy")
            np.save(orders[batch], stream_order(url, cache, x, batch))
        del x
        print(f"dataset: {n:,} float32 records of {DIM} values ({args.mib} MiB) in {len(w.manifest.shards)} "
              f"shards; writer.extend(array) {args.mib / took:.0f} MiB/s")
        shares = huge_page_shares(url, cache, plain)
        if shares:
            print(f"bytes mapped in 2 MiB pages once read: {shares}")
        base = {"url": url, "cache": cache, "plain": plain, "records": n, "epochs": args.epochs}
        titles = {"slices": ("slices in stored order", "ds.arrays[lo:hi]", "array[lo:hi]"),
                  "stream": ("stream in stored order", "ds.arrays.iter", "array[lo:hi].copy()"),
                  "shuffled": ("stream shuffled", "ds.arrays.iter", "array[idx]")}
        for line in LINES:
            title, us, them = titles[line]
            for batch in BATCHES:
                spec = {**base, "line": line, "batch": batch}
                sides: tuple[str, ...] = ("ours", "bare")
                nbytes = n * DIM * 4
                if line == "slices":
                    nbytes = (n // batch) * batch * DIM * 4
                if line == "shuffled":
                    spec["order"] = orders[batch]
                    sides = ("ours", "bare", "take")
                best = measure(spec, sides, args.rounds)
                bare_side = min(sides[1:], key=lambda s: best[s])
                ours, bare = nbytes / best["ours"], nbytes / best[bare_side]
                label = them if bare_side == "bare" else "array.take(idx)"
                share = ours / bare
                print(f"{title}, batch {batch:4d}: {us} {ours / MiB:6.0f} MiB/s   {label} {bare / MiB:6.0f} MiB/s"
                      f"   {share:6.1%}   target >= 80%  {'OK' if share >= 0.8 else 'MISSED'}   ({load()})",
                      flush=True)
        best = measure({**base, "line": "payload"}, ("ours", "bare"), args.rounds)
        size = os.path.getsize(plain)
        ours, bare = size / best["ours"], size / best["bare"]
        print(f"payload, 1 MiB readinto (warm cache): ds.payload() {ours / MiB:7.0f} MiB/s   plain file "
              f"{bare / MiB:7.0f} MiB/s   {ours / bare:6.1%}")
    print(f"end: {load()}")


if __name__ == "__main__":
    main()
