"""Benchmark ``roxxel.open`` reads from S3 against the physical limits measured in the same run.

Everything runs against a moto S3 server that this script starts on 127.0.0.1 (a
subprocess, so it does not share the GIL with the reader) and stops at the end. One
dataset is written first (by default 384 MiB of incompressible records of 1-15 KiB in
32 MiB shards, uncompressed); every figure below reads that dataset.

1. Cold full read: ``roxxel.open`` on an empty cache dir, then ``for r in ds`` touching
   ``r.nbytes`` of every record, timed from ``open`` to the last record, with
   ``--lookahead`` shards prefetched by ``--download-workers`` threads (default 8 and 8,
   so up to 8 downloads are in flight like the limit's). The limit: the same shard
   objects downloaded with plain s3fs, ``--workers`` (8) at a time from a
   ThreadPoolExecutor, once with ``fs.cat_file`` (bytes dropped) and once with
   ``fs.get_file`` to local temp files; the faster of the two is the limit. Stored MiB/s,
   best of ``--repeat`` rounds for each side (the order rotates between rounds). Target:
   roxxel >= 90% of the limit. Also (no target) the median of the per-round ratios, which
   a burst of load from other processes skews less; the CPU time this process spent on
   each side (median); and what hashing the stored bytes (the manifest's checksum
   algorithm, BLAKE3 for datasets written now) costs on one core, the part
   of roxxel's CPU that verifying every shard adds (the client, not moto, is what keeps
   the 2 cores of the reference machine busy).
2. Warm full read in a random order: a random permutation of all records read through
   ``ds.iter_at(order)`` (views made a block at a time), against the cheapest Python loop
   over the same cached files: each file under the cache dir's ``shards/`` mapped with
   ``mmap``, its offsets read from its footer, and a ``memoryview`` slice per record,
   given precomputed lists of (shard, start, end) in the same order. Both touch
   ``nbytes`` of every record. Records/s, best of ``--warm-repeat``. Target >= 80%.
   Also (no target) the same order through ``ds[block]`` gathers of ``--gather``
   indices, each a list of views, and through one ``ds[i]`` per record; and roxxel
   against three other loops in the same order: slicing ``np.uint8`` arrays over the
   maps (the type roxxel returns: what NumPy's slicing alone costs), reading each
   record's offsets from its shard's index in the map instead of a precomputed list,
   and slicing the ``mmap`` objects themselves (bytes copies).
3. Warm random access, µs per record: ``--draws`` random ``ds[i]`` against the bare slice.
   Target: ``ds[i]`` <= 3 µs. Also (no target) ``ds[i]`` on a dataset opened with a
   lookahead large enough that every shard stays mapped.
4. Time to the first record on a cold cache (``open`` + ``next(iter(ds))``) against one
   ``fs.cat_file`` of the first shard. Best of ``--repeat``; no target.
5. A cold shuffled epoch, ``ds.iter(seed=1, window=--window)`` (default 16, roxxel's
   default; at the default size that one window covers all 13 shards), against the
   same 8-way limit (target >= 90%). Its order's shuffle quality: mean distinct shards
   per batch of 256 consecutive records, and mean |distance| between the global ids of
   consecutive records as a ratio of n/3, which a uniform permutation gives (target >=
   0.9); both also at scale from the planner alone (a whole epoch of 4096 shards of 1024
   records; no data, no target). And a warm ``ds.iter`` epoch against the bare mmap loop
   in the same order (target >= 80%), and against the same three other loops as item 2.
   The order's global ids come from ``roxxel.planner.plan`` with the same arguments;
   they are checked against the iterator's records once, untimed.
6. Planner: ``plan()`` and ``next(p.records(start))`` at the middle of the epoch, for
   10^6, 10^8 and 10^9 records of synthetic shards of 10^4..10^5 records (window 16).
   Best of 3. Target: flat, the 10^9 total within 2x of the 10^6 total.
7. Bytes downloaded per epoch (epochs 0 and 1 on one cache) by ``ds.iter`` with a cache
   limited to (window + lookahead + 1) of the largest shard (``--evict-window`` 4,
   ``--evict-lookahead`` 2), against the offline optimum for the same plans: Belady's
   algorithm over the plans' shard access sequence with that capacity in shards (the
   first access of every shard is a compulsory miss), misses counted in stored bytes. No
   target: 1.00x is optimal.

Usage (from the repository root; about 30 s at default sizes on 2 cores; the exit status
is 1 when a target is missed)::

    .venv/bin/python scripts/bench_reader.py            # 384 MiB in 32 MiB shards
    .venv/bin/python scripts/bench_reader.py --quick    # 48 MiB in 4 MiB shards, a smoke test
    .venv/bin/python scripts/bench_reader.py --mib 1024 --repeat 5

Loopback numbers depend on moto, which burns CPU on the same machine: compare the
ratios, not the absolute MiB/s, and rerun when the load average printed at the start is
high.
"""

from __future__ import annotations

import argparse
import logging
import mmap
import os
import shutil
import statistics
import struct
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import fsspec
from benchkit import MiB, RecordSource, bench_storage_options, best_of, check_record_sizes

import roxxel
from roxxel.cache.names import key_from_filename
from roxxel.manifest.checksums import new_hasher
from roxxel.planner import DEFAULT_WINDOW, Plan
from roxxel.planner import plan as make_plan
from roxxel.read import views as views_module
from roxxel.read.views import ACCELERATED
from tests.servers import s3_server

BUCKET = "bench"
PREFIX = "ds"
FOOTER = struct.Struct("<qq8s")  # record count, payload size, magic (roxxel/format/layout.py)
BATCH = 256
SEED = 1

TARGET_COLD = 0.90
TARGET_WARM = 0.80
TARGET_US = 3.0
TARGET_DISTANCE = 0.90
TARGET_FLAT = 2.0


# -- the report -------------------------------------------------------------------------


@dataclass
class Row:
    item: str
    what: str
    value: str
    reference: str = ""
    ratio: str = ""
    target: str = ""
    ok: bool | None = None  # None: no target


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)

    def add(self, row: Row) -> None:
        self.rows.append(row)
        verdict = "" if row.ok is None else ("OK" if row.ok else "MISSED")
        parts = [row.value]
        if row.reference:
            parts.append(f"vs {row.reference}")
        if row.ratio:
            parts.append(f"= {row.ratio}")
        if row.target:
            parts.append(f"target {row.target}")
        print(f"  [{row.item}] {row.what}: {'   '.join(parts)}   {verdict}".rstrip(), flush=True)

    @property
    def ok(self) -> bool:
        return all(row.ok is not False for row in self.rows)

    def print_table(self) -> None:
        head = ("#", "measure", "roxxel / value", "reference", "ratio", "target", "")
        cells = [head] + [
            (r.item, r.what, r.value, r.reference, r.ratio, r.target,
             "" if r.ok is None else ("OK" if r.ok else "MISSED"))
            for r in self.rows
        ]
        widths = [max(len(row[i]) for row in cells) for i in range(len(head))]
        rule = "-" * (sum(widths) + 2 * (len(widths) - 1))
        print(rule)
        for n, row in enumerate(cells):
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
            if n == 0:
                print(rule)
        print(rule, flush=True)


def ratio_row(item: str, what: str, value: float, reference: float, unit: str,
              target: float, value_text: str | None = None,
              reference_text: str | None = None) -> Row:
    """A row comparing ``value`` to ``reference`` (higher is better), target a minimum ratio."""
    ratio = value / reference
    return Row(
        item, what,
        value_text or f"{value:,.0f} {unit}",
        reference_text or f"{reference:,.0f} {unit}",
        f"{ratio:.1%}", f">= {target:.0%}", ratio >= target,
    )


# -- the dataset ------------------------------------------------------------------------


def write_dataset(
    args: argparse.Namespace, url: str, options: dict[str, Any], staging: Path
) -> roxxel.Manifest:
    source = RecordSource(args.mib * MiB, args.min_kib * 1024, args.max_kib * 1024, args.seed)
    t0 = time.perf_counter()
    with roxxel.Writer(url, shard_bytes=args.shard_mib * MiB, storage_options=options,
                       staging_dir=str(staging)) as writer:
        writer.extend(source)
    seconds = time.perf_counter() - t0
    ds = roxxel.open(url, cache_dir=str(staging / "probe-cache"), storage_options=options)
    manifest = ds.manifest
    ds.close()
    shutil.rmtree(staging / "probe-cache", ignore_errors=True)
    table = manifest.shards
    print(
        f"dataset {url}: {len(source.lengths):,} records of {args.min_kib}-{args.max_kib} KiB in "
        f"{len(table)} shards of {args.shard_mib} MiB, {int(table.stored_size.sum()) / MiB:.0f} MiB "
        f"stored (written in {seconds:.1f} s, outside every timing)",
        flush=True,
    )
    return manifest


# -- plain s3fs: the physical limit -----------------------------------------------------


@dataclass
class Took:
    """Wall-clock seconds of a timed region, and this process's CPU seconds (all threads)."""

    seconds: float = 0.0
    cpu: float = 0.0


@contextmanager
def timed() -> Iterator[Took]:
    took = Took()
    t0, c0 = time.perf_counter(), os.times()
    yield took
    c1 = os.times()
    took.seconds = time.perf_counter() - t0
    took.cpu = c1.user + c1.system - c0.user - c0.system


def limit_cat(fs: Any, paths: Sequence[str], workers: int) -> tuple[Took, int]:
    """fs.cat_file of every object ``workers`` at a time, and the bytes received."""
    with timed() as took, ThreadPoolExecutor(workers, thread_name_prefix="limit-cat") as pool:
        futures = [pool.submit(lambda p: len(fs.cat_file(p)), p) for p in paths]
        received = sum(f.result() for f in futures)
    return took, received


def limit_get(fs: Any, paths: Sequence[str], workers: int, folder: Path) -> tuple[Took, int]:
    """fs.get_file of every object to local files ``workers`` at a time."""
    folder.mkdir(parents=True)
    targets = [str(folder / f"{i:06d}.rox") for i in range(len(paths))]
    try:
        with timed() as took, ThreadPoolExecutor(workers, thread_name_prefix="limit-get") as pool:
            for future in [pool.submit(fs.get_file, p, t) for p, t in zip(paths, targets)]:
                future.result()
        received = sum(os.path.getsize(t) for t in targets)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return took, received


# -- roxxel, cold -----------------------------------------------------------------------


@dataclass
class Reader:
    """How every roxxel dataset in this benchmark is opened."""

    url: str
    options: dict[str, Any]
    lookahead: int
    workers: int

    def open(
        self, cache_dir: Path, cache_limit: int | None = None, lookahead: int | None = None
    ) -> roxxel.Dataset:
        return roxxel.open(
            self.url, cache_dir=str(cache_dir), cache_limit=cache_limit, storage_options=self.options,
            lookahead=self.lookahead if lookahead is None else lookahead, download_workers=self.workers,
        )


def cold_read(reader: Reader, cache_dir: Path, window: int | None = None) -> tuple[Took, dict[str, int]]:
    """From open to the last record on an empty cache dir: ``for r in ds``, or with a
    ``window``, ``ds.iter(seed=1, window=...)``."""
    with timed() as took:
        ds = reader.open(cache_dir)
        total = 0
        for r in ds if window is None else ds.iter(seed=SEED, window=window):
            total += r.nbytes
    ds.close()
    return took, ds.stats


def time_to_first(reader: Reader, cache_dir: Path, lookahead: int | None = None) -> float:
    """Seconds for open + next(iter(ds)) on an empty cache dir."""
    t0 = time.perf_counter()
    ds = reader.open(cache_dir, lookahead=lookahead)
    try:
        first = next(iter(ds))
        seconds = time.perf_counter() - t0
        del first
        return seconds
    finally:
        ds.close()


# -- the bare loop over the cached files --------------------------------------------------


class BareMaps:
    """The cache dir's shard files mapped with plain ``mmap``; record bounds from their
    footers and offset tables, as flat arrays indexed by global record id."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.maps: list[mmap.mmap] = []
        self.views: list[memoryview] = []
        self.index: list[memoryview] = []  # each shard's end offsets, as int64, in its map
        self.arrays: list[np.ndarray] = []  # np.uint8 over each map: the type ds[i] returns
        shard, begins, ends = [], [], []
        for k, path in enumerate(paths):
            with open(path, "rb") as f:
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            count, payload, magic = FOOTER.unpack(mm[-FOOTER.size :])
            if magic != b"ROXXEL01":
                raise RuntimeError(f"{path}: not a ROXXEL01 shard")
            offsets = np.frombuffer(mm, dtype="<i8", count=count, offset=payload).astype(np.int64)
            self.maps.append(mm)
            self.views.append(memoryview(mm))
            self.index.append(self.views[-1][payload : payload + 8 * count].cast("q"))
            self.arrays.append(np.frombuffer(mm, dtype=np.uint8))
            shard.append(np.full(count, k, dtype=np.int64))
            begins.append(np.concatenate([[0], offsets[:-1]]))
            ends.append(offsets)
        self.shard = np.concatenate(shard)
        self.first = np.cumsum([0] + [len(e) for e in ends[:-1]])  # each shard's first global id
        self.begins = np.concatenate(begins)
        self.ends = np.concatenate(ends)

    def triples(self, ids: np.ndarray) -> list[tuple[int, int, int]]:
        """(shard, start, end) of each global record id, as plain Python ints."""
        return list(zip(self.shard[ids].tolist(), self.begins[ids].tolist(), self.ends[ids].tolist()))

    def pairs(self, ids: np.ndarray) -> list[tuple[int, int]]:
        """(shard, record within shard) of each global record id."""
        local = ids - self.first[self.shard[ids]]
        return list(zip(self.shard[ids].tolist(), local.tolist()))

    def close(self) -> None:
        self.arrays = []
        for view in self.index + self.views:
            view.release()
        for mm in self.maps:
            mm.close()
        self.views, self.index, self.maps = [], [], []


def bare_touch(views: Sequence[memoryview | np.ndarray], triples: list[tuple[int, int, int]]) -> int:
    total = 0
    for k, s, e in triples:
        total += views[k][s:e].nbytes
    return total


def bare_slice(views: Sequence[memoryview | np.ndarray], triples: list[tuple[int, int, int]]) -> None:
    for k, s, e in triples:
        views[k][s:e]


def index_touch(views: Sequence[memoryview], index: Sequence[memoryview], pairs: list[tuple[int, int]]) -> int:
    total = 0
    for k, j in pairs:
        ends = index[k]
        total += views[k][ends[j - 1] if j else 0 : ends[j]].nbytes
    return total


def bytes_touch(maps: Sequence[mmap.mmap], triples: list[tuple[int, int, int]]) -> int:
    total = 0
    for k, s, e in triples:
        total += len(maps[k][s:e])
    return total


def other_loops(report: Report, item: str, repeat: int, rate: float, bare: BareMaps, ids: np.ndarray) -> None:
    """Roxxel's warm rate against three other bare loops, for scale (no target)."""
    triples, pairs = bare.triples(ids), bare.pairs(ids)
    loops = (
        ("loop slicing np.uint8 arrays (the type roxxel returns)", lambda: bare_touch(bare.arrays, triples)),
        ("loop reading offsets from each shard's index", lambda: index_touch(bare.views, bare.index, pairs)),
        ("loop slicing the mmap objects (bytes copies)", lambda: bytes_touch(bare.maps, triples)),
    )
    for what, loop in loops:
        rate_loop = len(ids) / best_of(repeat, loop)
        report.add(Row(item, f"  against the {what} (info)", f"{rate:,.0f} rec/s",
                       f"{rate_loop:,.0f} rec/s", f"{rate / rate_loop:.1%}"))


def pure_python_row(report: Report, item: str, repeat: int, n: int, t_bare: float, loop: Callable[[], object]) -> None:
    """The same loop with the C extension switched off: what an install without a C
    compiler gets (info)."""
    if not views_module.ACCELERATED:
        return
    saved, views_module._c_views = views_module._c_views, None
    try:
        t = best_of(repeat, loop)
    finally:
        views_module._c_views = saved
    report.add(Row(item, "  same, with the pure-Python twin of roxxel._cviews (info)", f"{n / t:,.0f} rec/s",
                   f"{n / t_bare:,.0f} rec/s bare mmap", f"{t_bare / t:.1%}"))


def ds_touch(ds: roxxel.Dataset, order: list[int]) -> int:
    total = 0
    for i in order:
        total += ds[i].nbytes
    return total


def touch(records: Iterator[np.ndarray]) -> int:
    total = 0
    for r in records:
        total += r.nbytes
    return total


def ds_gather_touch(ds: roxxel.Dataset, order: np.ndarray, block: int) -> int:
    total = 0
    for lo in range(0, len(order), block):
        for r in ds[order[lo : lo + block]]:
            total += r.nbytes
    return total


def ds_index(ds: roxxel.Dataset, order: list[int]) -> None:
    for i in order:
        ds[i]


def ds_iter_touch(ds: roxxel.Dataset, window: int) -> int:
    total = 0
    for r in ds.iter(seed=SEED, window=window):
        total += r.nbytes
    return total


def plan_ids(p: Plan) -> np.ndarray:
    """Global record ids of a plan's whole stream, in order."""
    parts = list(p.records(0))
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def check_order(what: str, records: Iterable[np.ndarray], ids: np.ndarray, bare: BareMaps) -> None:
    """``records`` are exactly global records ``ids``, in order (sizes of all, bytes of a
    sample): a loop that read the right bytes in another order would not pass."""
    count = 0
    for pos, r in enumerate(records):
        i = int(ids[pos])
        if r.nbytes != bare.ends[i] - bare.begins[i]:
            raise RuntimeError(f"{what}: record {pos} is not global record {i}")
        if pos % 97 == 0:
            k, s, e = int(bare.shard[i]), int(bare.begins[i]), int(bare.ends[i])
            if bytes(r) != bytes(bare.views[k][s:e]):
                raise RuntimeError(f"{what}: record {pos} differs from global record {i}'s bytes")
        count += 1
    if count != len(ids):
        raise RuntimeError(f"{what} gave {count} records, expected {len(ids)}")


# -- shuffle quality, planner scaling, Belady -----------------------------------------------


def shuffle_quality(ids: np.ndarray, record_starts: np.ndarray) -> tuple[float, float]:
    """Mean distinct shards per batch of 256 consecutive records, and the mean |distance|
    between consecutive global ids as a ratio of n/3."""
    n = int(record_starts[-1])
    shard = np.searchsorted(record_starts, ids, side="right") - 1
    batches = shard[: len(shard) // BATCH * BATCH].reshape(-1, BATCH)
    if len(batches):
        ordered = np.sort(batches, axis=1)
        distinct = float(((np.diff(ordered, axis=1) != 0).sum(axis=1) + 1).mean())
    else:
        distinct = float(len(np.unique(shard)))
    distance = float(np.abs(np.diff(ids)).mean()) / (n / 3) if len(ids) > 1 else 0.0
    return distinct, distance


def quality_at_scale(window: int, shards: int = 4096, per_shard: int = 1024) -> tuple[float, float]:
    """Shuffle quality of a whole epoch of a big dataset, from the planner alone."""
    counts = np.full(shards, per_shard, dtype=np.int64)
    starts = np.zeros(shards + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    return shuffle_quality(plan_ids(make_plan(counts, seed=SEED, window=window)), starts)


def synthetic_counts(total: int, rng: np.random.Generator) -> np.ndarray:
    """Shard record counts of 10^4..10^5 (about) adding up to exactly ``total``."""
    k = max(1, round(total / 55_000))
    counts = rng.integers(10**4, 10**5 + 1, size=k).astype(np.int64)
    diff = total - int(counts.sum())
    counts += diff // k
    counts[: diff % k] += 1
    return counts


def time_planner(total: int, repeat: int = 3) -> tuple[int, float, float]:
    """(#shards, best seconds of plan(), best seconds of next(records(middle)))."""
    counts = synthetic_counts(total, np.random.default_rng(total))
    best_plan = best_resume = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        p = make_plan(counts, seed=SEED, epoch=3, window=DEFAULT_WINDOW)
        t1 = time.perf_counter()
        ids = next(p.records(p.num_records // 2))
        t2 = time.perf_counter()
        if not len(ids):
            raise RuntimeError("the planner resumed into an empty window")
        best_plan, best_resume = min(best_plan, t1 - t0), min(best_resume, t2 - t1)
    return len(counts), best_plan, best_resume


def belady_misses(sequence: Sequence[int], capacity: int) -> list[bool]:
    """Whether each access misses under Belady's optimal eviction with ``capacity`` slots."""
    never = len(sequence)
    next_use = [never] * len(sequence)
    seen: dict[int, int] = {}
    for i in range(len(sequence) - 1, -1, -1):
        next_use[i] = seen.get(sequence[i], never)
        seen[sequence[i]] = i
    cached: dict[int, int] = {}  # shard -> position of its next use
    misses = []
    for i, k in enumerate(sequence):
        hit = k in cached
        misses.append(not hit)
        if not hit and len(cached) >= capacity:
            del cached[max(cached, key=cached.__getitem__)]
        cached[k] = next_use[i]
    return misses


# -- the sections -----------------------------------------------------------------------


def bench_cold(args: argparse.Namespace, reader: Reader, fs: Any, paths: list[str], stored: int,
               tmp: Path, report: Report) -> Path:
    """Items 1 and 5 (throughput): rotating rounds. Returns a warm cache dir."""
    sides = ("roxxel-full", "cat_file", "get_file", "roxxel-iter")
    seconds: dict[str, list[float]] = {side: [] for side in sides}
    cpu: dict[str, list[float]] = {side: [] for side in sides}  # this process, all threads
    warm_cache = tmp / "cache-warm"
    for r in range(args.repeat):
        order = sides[r % len(sides):] + sides[: r % len(sides)]
        line = []
        for side in order:
            if side == "roxxel-full":
                cache = warm_cache if r == args.repeat - 1 else tmp / f"cache-full-{r}"
                took, stats = cold_read(reader, cache)
                if stats["bytes_downloaded"] != stored:
                    raise RuntimeError(f"cold full read downloaded {stats}, expected {stored} bytes")
                if cache != warm_cache:
                    shutil.rmtree(cache)
            elif side == "roxxel-iter":
                cache = tmp / f"cache-iter-{r}"
                took, stats = cold_read(reader, cache, args.window)
                if stats["bytes_downloaded"] != stored:
                    raise RuntimeError(f"cold ds.iter downloaded {stats}, expected {stored} bytes")
                shutil.rmtree(cache)
            elif side == "cat_file":
                took, got = limit_cat(fs, paths, args.workers)
                if got != stored:
                    raise RuntimeError(f"cat_file received {got} bytes, expected {stored}")
            else:
                took, got = limit_get(fs, paths, args.workers, tmp / f"get-{r}")
                if got != stored:
                    raise RuntimeError(f"get_file received {got} bytes, expected {stored}")
            seconds[side].append(took.seconds)
            cpu[side].append(took.cpu)
            line.append(f"{side} {stored / MiB / took.seconds:6.1f}")
        print(f"round {r + 1}/{args.repeat} (MiB/s): {'   '.join(line)}", flush=True)

    mibs = {side: stored / MiB / min(values) for side, values in seconds.items()}
    limit_name = max(("cat_file", "get_file"), key=mibs.__getitem__)
    limit = mibs[limit_name]
    other = "get_file" if limit_name == "cat_file" else "cat_file"
    report.add(Row("1", f"raw limit: s3fs {limit_name} x{args.workers} (faster than {other})",
                   f"{limit:,.1f} MiB/s", f"{other} {mibs[other]:,.1f} MiB/s"))
    for item, side, what in (
        ("1", "roxxel-full",
         f"cold full read, for r in ds (lookahead={reader.lookahead}, download_workers={reader.workers})"),
        ("5", "roxxel-iter", f"cold shuffled epoch, ds.iter(seed={SEED}, window={args.window})"),
    ):
        report.add(ratio_row(item, f"{what}, best of {args.repeat}", mibs[side], limit, "MiB/s", TARGET_COLD,
                             f"{mibs[side]:,.1f} MiB/s", f"{limit:,.1f} MiB/s"))
        # Paired within each round, so a burst of load on the machine hits both sides.
        paired = statistics.median(a / b for a, b in zip(seconds[limit_name], seconds[side]))
        report.add(Row(item, "  same, median of the per-round ratios (info)", f"{paired:.1%}"))
    # Where the client's CPU goes: on a machine this small the reader competes with moto
    # for the cores, so CPU spent verifying is throughput lost.
    report.add(Row("1", "  client CPU per read, median (info)",
                   ", ".join(f"{side} {statistics.median(cpu[side]):.2f} s" for side in sides)))
    algorithm, hash_s = checksum_seconds(warm_cache, stored)
    report.add(Row("1", f"  of which verifying: {algorithm} of the stored bytes on one core (info)",
                   f"{hash_s:.2f} s", f"{stored / MiB / hash_s:,.0f} MiB/s"))
    return warm_cache


def checksum_seconds(cache_dir: Path, stored: int) -> tuple[str, float]:
    """The cached shards' checksum algorithm, and the CPU seconds it takes over ``stored``
    bytes of them (page cache)."""
    largest = max((p for p in (cache_dir / "shards").iterdir() if p.is_file()), key=lambda p: p.stat().st_size)
    key = key_from_filename(largest.name)
    assert key is not None, largest
    with open(largest, "rb") as f:
        data = f.read()
    t0 = time.process_time()
    h = new_hasher(key.algorithm)
    for _ in range(stored // len(data)):
        h.update(data)
    h.update(data[: stored % len(data)])
    return key.algorithm, time.process_time() - t0


def bench_warm(args: argparse.Namespace, reader: Reader, manifest: roxxel.Manifest, warm_cache: Path,
               report: Report) -> None:
    """Items 2, 3 and 5 (quality, warm epoch)."""
    table = manifest.shards
    n = int(table.records.sum())
    ds = reader.open(warm_cache)
    paths = [ds.cache.path_for(str(c)) for c in table.checksums]
    shards_dir = os.path.join(ds.cache.directory, "shards")
    if any(os.path.dirname(p) != shards_dir or not os.path.exists(p) for p in paths):
        raise RuntimeError(f"the warm cache {warm_cache} lacks some shards")
    bare = BareMaps(paths)
    views = bare.views
    rng = np.random.default_rng(args.seed)
    try:
        downloads = ds.stats["shards_downloaded"]

        # 2. a full read in a random order
        order_ids = rng.permutation(n)
        order = order_ids.tolist()
        triples = bare.triples(order_ids)
        loops = {
            "iter_at": lambda: touch(ds.iter_at(order_ids)),
            "gather": lambda: ds_gather_touch(ds, order_ids, args.gather),
            "index": lambda: ds_touch(ds, order),
        }
        gathered = (r for lo in range(0, n, args.gather) for r in ds[order_ids[lo : lo + args.gather]])
        for what, records in (("ds.iter_at", ds.iter_at(order_ids)), ("ds[block]", gathered),
                              ("ds[i]", (ds[i] for i in order))):
            check_order(what, records, order_ids, bare)
        t = {name: best_of(args.warm_repeat, loop) for name, loop in loops.items()}
        t_bare = best_of(args.warm_repeat, lambda: bare_touch(views, triples))
        report.add(ratio_row("2", "warm random-order full read, ds.iter_at(order) (touch nbytes)",
                             n / t["iter_at"], n / t_bare, "rec/s", TARGET_WARM,
                             reference_text=f"{n / t_bare:,.0f} rec/s bare mmap"))
        for name, what in (("gather", f"ds[block of {args.gather:,}], lists of views"),
                           ("index", "one ds[i] per record")):
            report.add(Row("2", f"  same order, {what} (info)", f"{n / t[name]:,.0f} rec/s",
                           f"{n / t_bare:,.0f} rec/s bare mmap", f"{t_bare / t[name]:.1%}"))
        other_loops(report, "2", args.warm_repeat, n / t["iter_at"], bare, order_ids)
        pure_python_row(report, "2", args.warm_repeat, n, t_bare, loops["iter_at"])

        # 3. random access latency
        draws_ids = rng.integers(0, n, size=args.draws)
        draws = draws_ids.tolist()
        draw_triples = bare.triples(draws_ids)
        t_ds = best_of(args.warm_repeat, lambda: ds_index(ds, draws)) / len(draws) * 1e6
        t_bare = best_of(args.warm_repeat, lambda: bare_slice(views, draw_triples)) / len(draws) * 1e6
        report.add(Row("3", f"warm ds[i] random access ({len(draws):,} draws)", f"{t_ds:.2f} µs",
                       f"{t_bare:.2f} µs bare slice", f"{t_ds / t_bare:.1f}x",
                       f"<= {TARGET_US:g} µs", t_ds <= TARGET_US))
        all_mapped = reader.open(warm_cache, lookahead=ds.num_shards)
        try:
            ds_index(all_mapped, draws)  # map every shard first
            t_all = best_of(args.warm_repeat, lambda: ds_index(all_mapped, draws)) / len(draws) * 1e6
        finally:
            all_mapped.close()
        report.add(Row("3", f"  same, every shard kept mapped (lookahead={ds.num_shards}; info)",
                       f"{t_all:.2f} µs", f"{t_bare:.2f} µs bare slice", f"{t_all / t_bare:.1f}x"))

        # 5. the shuffled epoch's order: quality, then a warm epoch against the bare loop
        p = make_plan(table.records, seed=SEED, epoch=0, rank=0, world_size=1, worker=0,
                      num_workers=1, shuffle=True, window=args.window, remainder="pad")
        ids = plan_ids(p)
        check_order("ds.iter", ds.iter(seed=SEED, window=args.window), ids, bare)
        distinct, distance = shuffle_quality(ids, ds.record_starts)
        windows = f"{p.num_windows} window{'s' if p.num_windows != 1 else ''}"
        report.add(Row("5", f"shuffle: distinct shards per batch of {BATCH} ({len(table)} shards, {windows} "
                       f"of <= {args.window})", f"{distinct:.2f}"))
        report.add(Row("5", "shuffle: mean |id distance| of consecutive records / (n/3)",
                       f"{distance:.3f}", target=f">= {TARGET_DISTANCE:g}", ok=distance >= TARGET_DISTANCE))
        for window in sorted({args.window, DEFAULT_WINDOW}):
            big_distinct, big_distance = quality_at_scale(window)
            report.add(Row("5", f"  same at scale, planner only (4096 shards x 1024, window={window}; info)",
                           f"{big_distance:.3f}; {big_distinct:.2f} shards/batch"))
        iter_triples = bare.triples(ids)
        t_ds = best_of(args.warm_repeat, lambda: ds_iter_touch(ds, args.window))
        t_bare = best_of(args.warm_repeat, lambda: bare_touch(views, iter_triples))
        report.add(ratio_row("5", f"warm shuffled epoch, ds.iter(seed={SEED}, window={args.window})",
                             len(ids) / t_ds, len(ids) / t_bare, "rec/s", TARGET_WARM,
                             reference_text=f"{len(ids) / t_bare:,.0f} rec/s bare mmap"))
        other_loops(report, "5", args.warm_repeat, len(ids) / t_ds, bare, ids)
        pure_python_row(report, "5", args.warm_repeat, len(ids), t_bare, lambda: ds_iter_touch(ds, args.window))
        if ds.stats["shards_downloaded"] != downloads:
            raise RuntimeError(f"the warm runs downloaded shards: {ds.stats}")
    finally:
        ds.close()
        del views
        bare.close()


def bench_first_record(args: argparse.Namespace, reader: Reader, fs: Any, first_path: str, tmp: Path,
                       report: Report) -> None:
    """Item 4."""
    ttfr, cat = [], []
    for r in range(args.repeat):
        cache = tmp / f"cache-first-{r}"
        ttfr.append(time_to_first(reader, cache))
        shutil.rmtree(cache)
        t0 = time.perf_counter()
        fs.cat_file(first_path)
        cat.append(time.perf_counter() - t0)
    report.add(Row("4", f"time to first record, cold (open + next(iter(ds)), lookahead={reader.lookahead})",
                   f"{min(ttfr) * 1e3:,.0f} ms", f"{min(cat) * 1e3:,.0f} ms s3fs cat_file of shard 0",
                   f"{min(ttfr) / min(cat):.1f}x"))
    alone = []
    for r in range(args.repeat):
        cache = tmp / f"cache-first-alone-{r}"
        alone.append(time_to_first(reader, cache, lookahead=0))
        shutil.rmtree(cache)
    report.add(Row("4", "  same with lookahead=0 (info)", f"{min(alone) * 1e3:,.0f} ms",
                   f"{min(cat) * 1e3:,.0f} ms s3fs cat_file of shard 0", f"{min(alone) / min(cat):.1f}x"))


def bench_planner(report: Report) -> None:
    """Item 6."""
    totals = {}
    for exponent in (6, 8, 9):
        shards, t_plan, t_resume = time_planner(10**exponent)
        totals[exponent] = t_plan + t_resume
        report.add(Row("6", f"plan() + resume at the middle, 10^{exponent} records ({shards:,} shards)",
                       f"{t_plan * 1e3:,.1f} + {t_resume * 1e3:,.1f} ms"))
    flat = totals[9] / totals[6]
    report.add(Row("6", "planner: total at 10^9 / total at 10^6", f"{flat:.2f}x",
                   target=f"<= {TARGET_FLAT:g}x", ok=flat <= TARGET_FLAT))


def bench_eviction(args: argparse.Namespace, reader: Reader, manifest: roxxel.Manifest, tmp: Path,
                   report: Report) -> None:
    """Item 7."""
    table = manifest.shards
    capacity = args.evict_window + args.evict_lookahead + 1
    limit = capacity * int(table.raw_size.max())
    epochs = (0, 1)
    sequences = [
        make_plan(table.records, seed=SEED, epoch=e, window=args.evict_window).piece_shard.tolist()
        for e in epochs
    ]
    misses = belady_misses([k for seq in sequences for k in seq], capacity)
    cache = tmp / "cache-evict"
    ds = reader.open(cache, cache_limit=limit, lookahead=args.evict_lookahead)
    try:
        pos = 0
        for e, seq in zip(epochs, sequences):
            before = ds.stats
            t0 = time.perf_counter()
            for _ in ds.iter(seed=SEED, epoch=e, window=args.evict_window):
                pass
            seconds = time.perf_counter() - t0
            after = ds.stats
            got = after["bytes_downloaded"] - before["bytes_downloaded"]
            got_shards = after["shards_downloaded"] - before["shards_downloaded"]
            epoch_misses = misses[pos : pos + len(seq)]
            best = sum(int(table.stored_size[k]) for k, m in zip(seq, epoch_misses) if m)
            pos += len(seq)
            report.add(Row(
                "7", f"epoch {e} downloads, cache_limit {capacity} shards ({limit / MiB:.0f} MiB), "
                f"window={args.evict_window}, lookahead={args.evict_lookahead} ({seconds:.1f} s)",
                f"{got / MiB:,.1f} MiB ({got_shards} shards)",
                f"{best / MiB:,.1f} MiB ({sum(epoch_misses)} misses) Belady",
                f"{got / best:.2f}x" if best else ("1.00x" if got == 0 else "inf"),
                "(1.00x is optimal)",
            ))
    finally:
        ds.close()
        shutil.rmtree(cache, ignore_errors=True)


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=384, help="records to write, MiB (default 384)")
    p.add_argument("--shard-mib", type=int, default=32, help="writer shard_bytes, MiB (default 32)")
    p.add_argument("--min-kib", type=int, default=1, help="smallest record, KiB (default 1)")
    p.add_argument("--max-kib", type=int, default=15, help="largest record, KiB (default 15)")
    p.add_argument("--workers", type=int, default=8,
                   help="concurrent s3fs downloads of the limit (default 8)")
    p.add_argument("--lookahead", type=int, default=8, help="roxxel lookahead (default 8)")
    p.add_argument("--download-workers", type=int, default=8, help="roxxel download_workers (default 8)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW,
                   help=f"ds.iter window for item 5 (default {DEFAULT_WINDOW}, roxxel's default)")
    p.add_argument("--repeat", type=int, default=5, help="cold rounds; best of each side (default 5)")
    p.add_argument("--warm-repeat", type=int, default=5, help="warm loops; best of (default 5)")
    p.add_argument("--gather", type=int, default=1 << 14,
                   help="indices per ds[block] in item 2 (default 16384)")
    p.add_argument("--draws", type=int, default=100_000, help="random ds[i] for item 3 (default 100000)")
    p.add_argument("--evict-window", type=int, default=4, help="ds.iter window for item 7 (default 4)")
    p.add_argument("--evict-lookahead", type=int, default=2, help="lookahead for item 7 (default 2)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="smoke test: 48 MiB in 4 MiB shards, 1 round")
    args = p.parse_args(argv)
    if args.quick:
        args.mib, args.shard_mib, args.repeat, args.warm_repeat, args.draws = 48, 4, 1, 2, 50_000
    check_record_sizes(p, args.min_kib, args.max_kib)
    if args.gather < 1:
        p.error("--gather must be >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"python {sys.version.split()[0]}, roxxel {roxxel.__version__} "
        f"({'C' if ACCELERATED else 'pure-Python'} record views)",
        flush=True,
    )
    report = Report()
    tmp = Path(tempfile.mkdtemp(prefix="roxxel-bench-reader-"))
    started = time.perf_counter()
    try:
        with s3_server() as server:
            server.create_bucket(BUCKET)
            print(f"moto S3 server at {server.endpoint} (pid {server.process.pid})", flush=True)
            options = bench_storage_options(server.endpoint)
            url = server.url(BUCKET, PREFIX)
            (tmp / "staging").mkdir()
            manifest = write_dataset(args, url, options, tmp / "staging")
            table = manifest.shards
            paths = [f"{BUCKET}/{PREFIX}/{uri}" for uri in table.uris.tolist()]
            stored = int(table.stored_size.sum())
            fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
            reader = Reader(url, options, args.lookahead, args.download_workers)

            # Warm up both paths (connection pools, moto's handlers) outside the timing.
            limit_cat(fs, paths[:1], 1)
            time_to_first(reader, tmp / "cache-warmup")
            shutil.rmtree(tmp / "cache-warmup")

            warm_cache = bench_cold(args, reader, fs, paths, stored, tmp, report)
            bench_warm(args, reader, manifest, warm_cache, report)
            bench_first_record(args, reader, fs, paths[0], tmp, report)
            bench_eviction(args, reader, manifest, tmp, report)
        bench_planner(report)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print()
    report.print_table()
    load = os.getloadavg()
    print(
        f"{'all targets met' if report.ok else 'some targets MISSED'}; "
        f"{time.perf_counter() - started:.0f} s; "
        f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
        flush=True,
    )
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
