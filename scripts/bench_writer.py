"""Benchmark ``roxxel.Writer`` uploads to S3 against the physical limit measured in the same run.

Everything runs against a moto S3 server that this script starts on 127.0.0.1 (a
subprocess, so it does not share the GIL with the writer) and stops at the end.

1. Writer throughput: the same records (by default 512 MiB of incompressible records of
   1-15 KiB, slices of one random pool built before timing) are written to S3 through
   ``roxxel.Writer`` (no compression, ``--shard-mib`` shards, ``--workers`` upload
   threads), timed from the first ``append`` to ``close()`` returning, so the time
   includes packing, hashing, staging to disk, uploading, the size checks and the
   manifest.
2. The physical limit: local files of exactly the manifest's stored shard sizes, written
   to a temp dir before timing, uploaded with plain s3fs ``fs.put_file`` from a
   ThreadPoolExecutor of ``--workers`` threads to another prefix. Nothing else.
3. Both in MiB/s (of stored bytes), per round and best of ``--repeat`` rounds (the order
   alternates between rounds, objects are deleted between rounds), and the ratio
   writer/limit against the target of >= 85%.
4. Peak RSS independence from shard size: the writer runs in two child processes
   (``--child``), each writing ``--rss-mib`` (1.5 GiB) to the same server, with 64 MiB and
   then 1 GiB shards. Each child reports its own VmHWM (from /proc/self/status, read
   before it exits); moto's memory lives in the server process and is not counted. The
   target: the 1 GiB-shard run peaks less than ``--rss-margin-mib`` (256 MiB) above the
   64 MiB run. ``--no-rss`` skips this part.

Usage (from the repository root; about 2 minutes at default sizes on 2 cores; the exit
status is 1 when a target is missed)::

    .venv/bin/python scripts/bench_writer.py            # 512 MiB, 64 MiB shards, 4 workers
    .venv/bin/python scripts/bench_writer.py --quick    # small sizes, a smoke test
    .venv/bin/python scripts/bench_writer.py --mib 1024 --shard-mib 128 --workers 8 --no-rss

Loopback numbers depend on moto, which burns CPU on the same machine: compare the ratio,
not the absolute MiB/s, and rerun when the load average printed at the start is high.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
from benchkit import REPO, MiB, RecordSource, bench_storage_options, check_record_sizes

import roxxel
from tests.servers import s3_server

TARGET = 0.85
BUCKET = "bench"


# -- the two timed runs -----------------------------------------------------------------


def run_writer(
    url: str,
    records: Sequence[memoryview] | RecordSource,
    shard_bytes: int,
    workers: int,
    storage_options: dict[str, Any],
    staging_dir: str,
) -> tuple[float, roxxel.Manifest]:
    """Seconds from the first append to close() returning, and the published manifest."""
    writer = roxxel.Writer(
        url,
        shard_bytes=shard_bytes,
        storage_options=storage_options,
        upload_workers=workers,
        staging_dir=staging_dir,
    )
    try:
        t0 = time.perf_counter()
        writer.extend(records)
        manifest = writer.close()
        seconds = time.perf_counter() - t0
    except BaseException:
        writer.abort()
        raise
    return seconds, manifest


def make_limit_files(sizes: Sequence[int], folder: Path, pool: memoryview) -> list[Path]:
    """Local files of the given sizes (random bytes), flushed to the page cache like the
    writer's freshly staged shards."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, size in enumerate(sizes):
        path = folder / f"{i:06d}.rox"
        with open(path, "wb") as f:
            left = size
            while left:
                n = min(left, len(pool))
                f.write(pool[:n])
                left -= n
        paths.append(path)
    return paths


def run_limit(fs: Any, paths: Sequence[Path], prefix: str, workers: int) -> float:
    """Seconds to put every file with plain s3fs at ``workers`` concurrency."""
    t0 = time.perf_counter()
    with ThreadPoolExecutor(workers, thread_name_prefix="limit-put") as pool:
        futures = [pool.submit(fs.put_file, str(p), f"{prefix}/{p.name}") for p in paths]
        for future in futures:
            future.result()
    return time.perf_counter() - t0


@dataclass
class Round:
    writer_seconds: float
    limit_seconds: float
    stored_bytes: int

    @property
    def writer_mibs(self) -> float:
        return self.stored_bytes / MiB / self.writer_seconds

    @property
    def limit_mibs(self) -> float:
        return self.stored_bytes / MiB / self.limit_seconds


def bench_throughput(args: argparse.Namespace, server: Any, tmp: Path) -> tuple[float, float]:
    options = bench_storage_options(server.endpoint)
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **options)
    source = RecordSource(args.mib * MiB, args.min_kib * 1024, args.max_kib * 1024, args.seed)
    t0 = time.perf_counter()
    records = list(source)
    print(
        f"records: {len(records):,} of {args.min_kib}-{args.max_kib} KiB, "
        f"{source.total_bytes / MiB:.0f} MiB (built in {time.perf_counter() - t0:.2f} s, "
        f"outside the timing); shards {args.shard_mib} MiB; {args.workers} upload workers",
        flush=True,
    )
    staging = tmp / "staging"
    staging.mkdir()

    # Warm up both paths (connection pools, moto's handlers) outside the timing.
    warm = RecordSource(8 * MiB, args.min_kib * 1024, args.max_kib * 1024, args.seed + 1)
    run_writer(server.url(BUCKET, "warm/writer"), warm, 2 * MiB, args.workers, options, str(staging))
    warm_files = make_limit_files([2 * MiB] * args.workers, tmp / "warm", source.pool)
    run_limit(fs, warm_files, f"{BUCKET}/warm/limit", args.workers)
    fs.rm(f"{BUCKET}/warm", recursive=True)

    limit_files: list[Path] | None = None
    rounds: list[Round] = []
    for r in range(args.repeat):
        # Alternate the order so neither side always runs on a fresher server.
        order = ("writer", "limit") if r % 2 == 0 else ("limit", "writer")
        if limit_files is None:
            order = ("writer", "limit")  # the limit's file sizes come from the writer's manifest
        seconds: dict[str, float] = {}
        stored = 0
        for side in order:
            if side == "writer":
                url = server.url(BUCKET, f"round{r}/writer")
                seconds["writer"], manifest = run_writer(
                    url, records, args.shard_mib * MiB, args.workers, options, str(staging)
                )
                sizes = [int(s) for s in manifest.shards.stored_size]
                stored = sum(sizes)
                if limit_files is None:
                    limit_files = make_limit_files(sizes, tmp / "limit", source.pool)
            else:
                assert limit_files is not None
                seconds["limit"] = run_limit(fs, limit_files, f"{BUCKET}/round{r}/limit", args.workers)
        fs.rm(f"{BUCKET}/round{r}", recursive=True)
        result = Round(seconds["writer"], seconds["limit"], stored)
        rounds.append(result)
        print(
            f"round {r + 1}/{args.repeat} ({' then '.join(order)}): "
            f"{len(sizes)} shards, {stored / MiB:.0f} MiB stored   "
            f"writer {result.writer_seconds:6.2f} s {result.writer_mibs:7.1f} MiB/s   "
            f"limit {result.limit_seconds:6.2f} s {result.limit_mibs:7.1f} MiB/s   "
            f"ratio {result.writer_mibs / result.limit_mibs:6.1%}",
            flush=True,
        )
    best_writer = max(r.writer_mibs for r in rounds)
    best_limit = max(r.limit_mibs for r in rounds)
    return best_writer, best_limit


# -- peak RSS in child processes ----------------------------------------------------------


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field} line")


def child_main(args: argparse.Namespace) -> None:
    """Write ``--mib`` to ``--url`` and print one JSON line with this process's memory."""
    logging.basicConfig(level=logging.WARNING, format="child: %(levelname)s %(name)s: %(message)s")
    source = RecordSource(args.mib * MiB, args.min_kib * 1024, args.max_kib * 1024, args.seed)
    baseline = _proc_status_kib("VmRSS")
    with tempfile.TemporaryDirectory(prefix="roxxel-bench-child-") as staging:
        seconds, manifest = run_writer(
            args.url,
            source,
            args.shard_mib * MiB,
            args.workers,
            bench_storage_options(args.endpoint),
            staging,
        )
    report = {
        "baseline_kib": baseline,
        "hwm_kib": _proc_status_kib("VmHWM"),
        "seconds": seconds,
        "stored_bytes": int(manifest.shards.stored_size.sum()),
        "shards": len(manifest.shards),
    }
    print("RSS-REPORT " + json.dumps(report), flush=True)


def run_child(args: argparse.Namespace, server: Any, url: str, shard_mib: int) -> dict[str, Any]:
    argv = [
        sys.executable, os.path.abspath(__file__), "--child",
        "--endpoint", server.endpoint, "--url", url,
        "--mib", str(args.rss_mib), "--shard-mib", str(shard_mib),
        "--workers", str(args.workers), "--seed", str(args.seed),
        "--min-kib", str(args.min_kib), "--max-kib", str(args.max_kib),
    ]  # fmt: skip
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        out, _ = process.communicate()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    if process.returncode != 0:
        raise RuntimeError(f"child writer ({shard_mib} MiB shards) exited with {process.returncode}:\n{out}")
    lines = [line for line in out.splitlines() if line.startswith("RSS-REPORT ")]
    if not lines:
        raise RuntimeError(f"child writer ({shard_mib} MiB shards) printed no report:\n{out}")
    return json.loads(lines[-1].removeprefix("RSS-REPORT "))


def bench_rss(args: argparse.Namespace, server: Any) -> bool:
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **bench_storage_options(server.endpoint))
    hwm = {}
    for shard_mib in (args.rss_small_shard_mib, args.rss_large_shard_mib):
        prefix = f"rss/shard-{shard_mib}"
        report = run_child(args, server, server.url(BUCKET, prefix), shard_mib)
        fs.rm(f"{BUCKET}/{prefix}", recursive=True)  # free moto's copy before the next run
        hwm[shard_mib] = report["hwm_kib"] / 1024
        mibs = report["stored_bytes"] / MiB / report["seconds"]
        print(
            f"child writer, {shard_mib:5d} MiB shards: {report['stored_bytes'] / MiB:.0f} MiB in "
            f"{report['shards']} shards, {mibs:6.1f} MiB/s   peak RSS {hwm[shard_mib]:7.1f} MiB "
            f"(before writing {report['baseline_kib'] / 1024:.1f} MiB)",
            flush=True,
        )
    extra = hwm[args.rss_large_shard_mib] - hwm[args.rss_small_shard_mib]
    ok = extra < args.rss_margin_mib
    print(
        f"peak RSS with {args.rss_large_shard_mib} MiB shards is {extra:+.1f} MiB vs "
        f"{args.rss_small_shard_mib} MiB shards   target < +{args.rss_margin_mib} MiB   "
        f"{'OK' if ok else 'MISSED'}",
        flush=True,
    )
    return ok


# -- main -------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mib", type=int, default=512, help="records to write, MiB (default 512)")
    p.add_argument("--shard-mib", type=int, default=64, help="writer shard_bytes, MiB (default 64)")
    p.add_argument("--workers", type=int, default=4, help="upload threads for both sides (default 4)")
    p.add_argument("--min-kib", type=int, default=1, help="smallest record, KiB (default 1)")
    p.add_argument("--max-kib", type=int, default=15, help="largest record, KiB (default 15)")
    p.add_argument("--repeat", type=int, default=3, help="throughput rounds; best of each side (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-rss", action="store_true", help="skip the peak-RSS child runs")
    p.add_argument("--rss-mib", type=int, default=1536, help="MiB written by each RSS child (default 1536)")
    p.add_argument("--rss-small-shard-mib", type=int, default=64)
    p.add_argument("--rss-large-shard-mib", type=int, default=1024)
    p.add_argument("--rss-margin-mib", type=int, default=256,
                   help="allowed extra peak RSS of the large-shard run (default 256)")
    p.add_argument("--quick", action="store_true",
                   help="smoke test: 48 MiB in 8 MiB shards, 1 round, RSS children of 96 MiB")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--endpoint", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.mib, args.shard_mib, args.repeat = 48, 8, 1
        args.rss_mib, args.rss_small_shard_mib, args.rss_large_shard_mib = 96, 8, 64
    check_record_sizes(p, args.min_kib, args.max_kib)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(args)
        return 0
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    load = os.getloadavg()
    print(
        f"machine: {os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
        f"python {sys.version.split()[0]}, roxxel {roxxel.__version__}",
        flush=True,
    )
    tmp = Path(tempfile.mkdtemp(prefix="roxxel-bench-writer-"))
    try:
        with s3_server() as server:
            server.create_bucket(BUCKET)
            print(f"moto S3 server at {server.endpoint} (pid {server.process.pid})", flush=True)
            best_writer, best_limit = bench_throughput(args, server, tmp)
            ratio = best_writer / best_limit
            ok = ratio >= TARGET
            print(
                f"best of {args.repeat}: writer {best_writer:.1f} MiB/s   limit (s3fs put_file x "
                f"{args.workers}) {best_limit:.1f} MiB/s   writer/limit {ratio:.1%}   "
                f"target >= {TARGET:.0%}   {'OK' if ok else 'MISSED'}",
                flush=True,
            )
            if not args.no_rss:
                ok = bench_rss(args, server) and ok
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
