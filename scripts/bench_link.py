"""Cold reads through a link shaped like a real object store's (issue 17's benchmark).

A server runs on loopback behind ``tests/shaping_proxy.py``: moto (``--store s3``, the
default) or fake-gcs-server (``--store gcs``). By default the proxy adds 30 ms to each
response's first byte and allows 25 MB/s per connection and 400 MB/s for the whole link,
so one connection gets 1/16 of the link, as on S3. ``--loopback`` reads without the proxy
(verification included, as always). Datasets of incompressible records are written
straight to the server, unshaped; every read below goes through the proxy.

For each dataset (default: 12 shards of 32 MiB, and 1 shard of 256 MiB; the issue's
1.6 GB datasets are ``48x32 6x256``):

- **best client**: the same objects fetched as ``--part-mib`` (8) MiB ranged GETs,
  ``--parallel`` in flight (each number given is timed, and the fastest counts: by
  default 16 and 32 through the proxy, where fewer than 16 cannot fill the link, and 2,
  4, 8, 16 and 32 on loopback, where the CPUs are the limit and fewer connections move
  the same bytes faster: 4 for the client that drops them, 2-4 for the one that keeps
  them), each thread on a kept-alive ``http.client`` connection (S3: presigned URLs;
  GCS: the JSON API's media URLs); bytes dropped. This is the limit.
  Also timed: one part alone, from which the first-record target (twice that, plus 50 ms)
  is computed; and the same client doing the rest of a cold read's work (each part
  hashed with BLAKE3 and written to a file where the caches go), a second reference:
  on loopback, where the CPU rather than the link is the limit, the part of the gap that
  is the work itself (also the fastest of ``--parallel``).
- **roxxel**, default options, each run in a fresh process with a fresh cache:
  ``for r in ds``, ``ds.iter(seed=1)`` and ``ds.stream(2048, 32, seed=1)`` (batches of
  32 windows of 2,048 int32 tokens; its first record is its first batch), or those of
  ``--modes``. ``--modes m.iter(seed=1)`` also writes a twin of each dataset (other
  records, the same sizes) and reads ``roxxel.mix([dataset, twin], [0.5, 0.5])``'s
  ``m.iter(seed=1)``; its epoch (which ends where the first source does) is rated
  against the best client over both datasets' objects, and its open is the mix's.
  ``--modes ds.resume`` times ``ds.resume(state)`` of an ``ds.iter(seed=1)`` state one
  record into its first window's last stage, which reads from every shard of the window
  (a job restarted from a checkpoint): its first record is the resume's, and its rate
  counts what it downloads of the rest of the epoch. ``--modes "loader(workers=4)"``
  reads one epoch through ``roxxel.torch.StatefulLoader`` with 4 DataLoader workers
  (batches of 256 records), each its own process with its share of the node's parts in
  flight; torch is imported before the clock starts, its "open" is the loader's making
  and its first record the first batch.
  Reported separately: the import, the open, the time from the call to ``open`` to the
  first record, and the epoch (from the call to ``open`` to the last record), whose
  rate counts the stored bytes. The children write bytecode (they drop
  ``PYTHONDONTWRITEBYTECODE``), so only the first import pays for compiling.

moto reads a whole object for every ranged GET (OBJECT-STORES.md); here it runs behind the
test layer's ``fast_ranges``, which serves a single byte range by reading only that range.
On this 2-core machine, check the load average printed at the end before trusting a ratio.

The caches go to ``--cache-root`` (default: the system's temp directory); its write speed
is measured first, since a cold read that keeps every byte cannot beat it. On this VM the
disk takes buffered writes at about 250 MB/s and ``/dev/shm`` (memory) at about 2 GB/s,
as a node's NVMe would: ``--cache-root /dev/shm`` takes the disk out of the comparison.

Usage: ``.venv/bin/python scripts/bench_link.py [--store s3|gcs] [--loopback] [--cache-root DIR]
[--datasets 12x32 1x256] [--modes ...] [--latency 0.03] [--conn-mbps 25] [--link-mbps 400] [--repeat N]``
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import blake3
import fsspec
from benchkit import MiB, RecordSource, bench_storage_options, bytecode_env

import roxxel
from tests import servers, shaping_proxy

#: A torch DataLoader of 4 workers over the dataset (StatefulLoader, batches of 256
#: records): the processes of a node splitting its budget (README, Reading a dataset).
LOADER = "loader(workers=4)"

_CHILD = f"LOADER = {LOADER!r}" + """
import json, sys, tempfile, time
url, options, mode, root = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4] or None
if mode == LOADER:  # (torch is imported by the training script long before it reads)
    import torch.utils.data
t0 = time.perf_counter()
import roxxel
t_import = time.perf_counter()
if mode == LOADER:  # every worker opens the dataset itself; "first": the first batch
    from roxxel.torch import IterableRecords, StatefulLoader

    def count(records):  # (a batch's bytes: the batches are not what is timed)
        return sum(r.nbytes for r in records)

    with tempfile.TemporaryDirectory(dir=root) as cache:
        batches = iter(StatefulLoader(IterableRecords(url, batch_size=256, collate=count, storage_options=options,
                                                      cache_dir=cache), num_workers=4))
        t_open = time.perf_counter()
        n = next(batches)
        t_first = time.perf_counter()
        n += sum(batches)
        t_end = time.perf_counter()
        with roxxel.open(url, storage_options=options, cache_dir=cache) as ds:  # (every shard, once)
            stored = int(ds.manifest.shards.stored_size.sum())
    print(json.dumps({"import": t_import - t0, "open": t_open - t_import, "first": t_first - t_import,
                      "epoch": t_end - t_import, "bytes": n, "stored": stored}))
    sys.exit(0)
with tempfile.TemporaryDirectory(dir=root) as cache, (
    roxxel.mix([url, url + "-b"], [0.5, 0.5], storage_options=options, cache_dir=cache)  # (with its twin)
    if mode == "m.iter(seed=1)" else roxxel.open(url, storage_options=options, cache_dir=cache)
) as ds:
    t_open = time.perf_counter()
    if mode == "for r in ds":
        records = iter(ds)
    elif mode in ("ds.iter(seed=1)", "m.iter(seed=1)"):
        records = ds.iter(seed=1)
    elif mode == "ds.resume":  # inside the first window's last stage, which reads all its shards
        it = ds.iter(seed=1)
        records = ds.resume({**it.state(), "position": int(it.plan.window_order(0).stage_starts[-2]) + 1})
    else:
        records = ds.stream(2048, 32, seed=1)
    first = next(records)
    t_first = time.perf_counter()
    n = first.nbytes + sum(r.nbytes for r in records)
    t_end = time.perf_counter()
    stored = ds.stats["bytes_downloaded"]
print(json.dumps({"import": t_import - t0, "open": t_open - t_import, "first": t_first - t_import,
                  "epoch": t_end - t_import, "bytes": n, "stored": stored}))
"""


def write_dataset(url: str, options: dict[str, Any], shards: int, shard_mib: int, seed: int = 0) -> roxxel.Manifest:
    """``shards`` shards of about ``shard_mib`` MiB of 1-15 KiB incompressible records
    (another ``seed``: other records)."""
    source = RecordSource(shards * shard_mib * MiB, 1024, 15 * 1024, seed=shards + 1000 * seed)
    with roxxel.Writer(url, shard_bytes=shard_mib * MiB, storage_options=options) as writer:
        writer.extend(source)
    return writer.manifest


def part_urls(store: str, fs: Any, endpoint: str, paths: list[str]) -> list[str]:
    """A URL per object that a plain GET with a Range header reads."""
    if store == "s3":
        return [fs.url(p, expires=3600) for p in paths]
    urls = []
    for p in paths:
        bucket, name = p.split("/", 1)
        urls.append(f"{endpoint}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media")
    return urls


def best_client(urls: list[str], sizes: list[int], part: int, parallel: int, keep: str | None = None) -> float:
    """Seconds to fetch every object as ranged parts, ``parallel`` in flight. ``keep``: a
    directory where each object is also written to a file of its own, each part hashed
    with BLAKE3 (the work a cold read must do besides fetching: verify and keep every
    byte), each thread receiving into one buffer it reuses (about 6% faster on loopback
    than a fresh buffer a part), else the bytes are dropped (``read``, which here beats
    ``readinto`` a reused buffer)."""
    jobs = [(i, url, start, min(start + part, size)) for i, (url, size) in enumerate(zip(urls, sizes))
            for start in range(0, size, part)]
    local = threading.local()
    files: list[int] = []
    if keep is not None:
        files = [os.open(os.path.join(keep, f"best-{i}"), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
                 for i in range(len(urls))]

    def fetch(job: tuple[int, str, int, int]) -> int:
        i, url, start, end = job
        parts = urllib.parse.urlsplit(url)
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(parts.netloc, timeout=600)
        local.conn.request("GET", f"{parts.path}?{parts.query}", headers={"Range": f"bytes={start}-{end - 1}"})
        response = local.conn.getresponse()
        got = 0
        if keep is not None:  # (into one buffer per thread, reused: a fresh one's pages cost the kernel)
            if getattr(local, "buffer", None) is None:
                local.buffer = memoryview(bytearray(part))
            buffer = local.buffer[: end - start]
            while got < end - start and (n := response.readinto(buffer[got:])):
                got += n
            blake3.blake3(buffer[:got]).digest()
            os.pwrite(files[i], buffer[:got], start)
        while chunk := response.read(1 << 20):
            got += len(chunk)
        if response.status != 206 or got != end - start:
            raise RuntimeError(f"GET {parts.path} [{start}, {end}): status {response.status}, {got} bytes")
        return got

    started = time.perf_counter()
    try:
        with ThreadPoolExecutor(parallel) as pool:
            total = sum(pool.map(fetch, jobs))
        elapsed = time.perf_counter() - started
    finally:
        for i, fd in enumerate(files):
            os.close(fd)
            os.unlink(os.path.join(keep or "", f"best-{i}"))
    assert total == sum(sizes)
    return elapsed


def fastest(urls: list[str], sizes: list[int], part: int, parallels: list[int],
            keep_root: str | None | bool = False) -> tuple[float, int]:
    """The best client's MB/s (:func:`best_client`) at the fastest of ``parallels`` GETs in
    flight, and that number. ``keep_root`` (not False): it also hashes and keeps every
    byte, in a temporary directory there (None: the system's)."""
    rates = {}
    for parallel in parallels:
        if keep_root is False:
            seconds = best_client(urls, sizes, part, parallel)
        else:
            with tempfile.TemporaryDirectory(dir=keep_root) as keep:
                seconds = best_client(urls, sizes, part, parallel, keep)
        rates[parallel] = sum(sizes) / seconds / 1e6
    best = max(rates, key=rates.__getitem__)
    return rates[best], best


MODES = ("for r in ds", "ds.iter(seed=1)", "ds.stream", "m.iter(seed=1)", "ds.resume", LOADER)
DEFAULT_MODES = MODES[:3]


def roxxel_run(url: str, options: dict[str, Any], mode: str, cache_root: str | None) -> dict[str, float]:
    """One cold read with default options in a fresh process."""
    out = subprocess.run([sys.executable, "-c", _CHILD, url, json.dumps(options), mode, cache_root or ""],
                         capture_output=True, text=True, check=True, env=bytecode_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_limit(cache_root: str | None, total: int = 256 * MiB, piece: int = 8 * MiB) -> float:
    """MB/s of writing ``total`` bytes to a new file where the caches go, then fsync: what a
    cold read that keeps every byte in the cache cannot beat, whatever the link."""
    data = bytearray(os.urandom(piece))
    with tempfile.NamedTemporaryFile(dir=cache_root) as f:
        started = time.perf_counter()
        for _ in range(total // piece):
            f.write(data)
        f.flush()
        os.fsync(f.fileno())
        return total / (time.perf_counter() - started) / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["12x32", "1x256"], metavar="NxMIB")
    parser.add_argument("--latency", type=float, default=0.03, help="seconds to each response's first byte")
    parser.add_argument("--conn-mbps", type=float, default=25.0, help="MB/s per connection")
    parser.add_argument("--link-mbps", type=float, default=400.0, help="MB/s for the whole link")
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--parallel", type=int, nargs="+", default=None,
                        help="GETs in flight of the best clients: each is timed, the fastest counts "
                             "(default: 16 32 shaped, 2 4 8 16 32 on loopback)")
    parser.add_argument("--store", choices=("s3", "gcs"), default="s3")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each side in turn per dataset (with medians of the ratios)")
    parser.add_argument("--loopback", action="store_true", help="read without the shaping proxy")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(DEFAULT_MODES),
                        help="the ways of reading timed (m.iter: see the module docstring)")
    parser.add_argument("--cache-root", default=None,
                        help="where the cold reads' caches go (default: the system's temp directory)")
    args = parser.parse_args(argv)
    if args.parallel is None:
        args.parallel = [2, 4, 8, 16, 32] if args.loopback else [16, 32]
    if min(args.parallel) < 1:
        parser.error(f"--parallel takes numbers of GETs in flight of 1 or more, got {args.parallel}")
    # roxxel's bytecode written once, untimed, so that no child's import compiles it
    subprocess.run([sys.executable, "-c", "import roxxel"], check=True, env=bytecode_env())
    disk = write_limit(args.cache_root)
    print(f"writing to {args.cache_root or tempfile.gettempdir()}: {disk:.0f} MB/s (a cold read keeps every "
          "byte in the cache, so it cannot beat this)")
    tried = f"{'/'.join(map(str, args.parallel))} x {args.part_mib} MiB ranged GETs in flight, the fastest"
    if args.loopback:
        print(f"{args.store} on loopback (no shaping); best client: {tried}")
    else:
        print(f"{args.store} through a link of {args.latency * 1000:.0f} ms to first byte, {args.conn_mbps:g} MB/s "
              f"per connection, {args.link_mbps:g} MB/s in all; best client: {tried}")
    server = servers.s3_server(fast_ranges=True) if args.store == "s3" else servers.gcs_server()
    with server:
        server.create_bucket("link")
        direct = bench_storage_options(server.endpoint) if args.store == "s3" else server.storage_options
        port = int(server.endpoint.rsplit(":", 1)[1])
        with contextlib.ExitStack() as stack:
            endpoint = server.endpoint
            if not args.loopback:
                proxy = stack.enter_context(shaping_proxy.start(
                    port, latency=args.latency, conn_rate=args.conn_mbps * 1e6, link_rate=args.link_mbps * 1e6))
                endpoint = proxy.endpoint
            shaped = dict(direct, endpoint_url=endpoint)
            fs = fsspec.filesystem("s3" if args.store == "s3" else "gs", skip_instance_cache=True, **shaped)
            for spec in args.datasets:
                shards, shard_mib = (int(x) for x in spec.split("x"))
                url = f"{server.protocol}://link/d{spec}"
                manifest = write_dataset(url, direct, shards, shard_mib)
                paths = [f"link/d{spec}/{uri}" for uri in manifest.shards.uris.tolist()]
                sizes = [int(s) for s in manifest.shards.stored_size.tolist()]
                total = sum(sizes)
                urls = part_urls(args.store, fs, endpoint, paths)
                if "m.iter(seed=1)" in args.modes:  # the mixture's second source, and the limit over both
                    twin = write_dataset(url + "-b", direct, shards, shard_mib, seed=1)
                    both_urls = urls + part_urls(args.store, fs, endpoint,
                                                 [f"link/d{spec}-b/{uri}" for uri in twin.shards.uris.tolist()])
                    both_sizes = sizes + [int(s) for s in twin.shards.stored_size.tolist()]
                print(f"\n{spec} MiB ({total / 1e6:.0f} MB)")
                ratios: dict[str, list[tuple[float, float]]] = {}
                for run in range(args.repeat):  # each side in turn: the load moves both alike
                    limit, ways = fastest(urls, sizes, args.part_mib * MiB, args.parallel)
                    one = min(best_client(urls[:1], [min(sizes[0], args.part_mib * MiB)], args.part_mib * MiB, 1)
                              for _ in range(3))
                    target = 2 * one + 0.05
                    same, kept_ways = fastest(urls, sizes, args.part_mib * MiB, args.parallel, args.cache_root)
                    print(f" run {run + 1}: best client {limit:.0f} MB/s with {ways} in flight (that also hashes and "
                          f"keeps every byte: {same:.0f} MB/s with {kept_ways}); one part alone {one * 1000:.0f} ms, "
                          f"so the first-record target is {target * 1000:.0f} ms")
                    limits = {mode: (limit, same) for mode in MODES}  # (m.iter: over both sources, below)
                    if "m.iter(seed=1)" in args.modes:  # the best clients over both sources
                        both, _ = fastest(both_urls, both_sizes, args.part_mib * MiB, args.parallel)
                        both_kept, _ = fastest(both_urls, both_sizes, args.part_mib * MiB, args.parallel,
                                               args.cache_root)
                        limits["m.iter(seed=1)"] = (both, both_kept)
                        print(f" run {run + 1}: over both of m.iter's sources, best client {both:.0f} MB/s "
                              f"(that also hashes and keeps every byte: {both_kept:.0f} MB/s)")
                    for mode in args.modes:
                        r = roxxel_run(url, shaped, mode, args.cache_root)
                        rate = r["stored"] / r["epoch"] / 1e6  # from the call to open to the last record
                        best, kept = limits[mode]
                        ratios.setdefault(mode, []).append((rate / best, r["first"] / target, rate / kept))
                        print(f"  roxxel {mode:16s} import {r['import'] * 1000:5.0f} ms  "
                              f"open {r['open'] * 1000:5.0f} ms  first record {r['first'] * 1000:6.0f} ms "
                              f"({r['first'] / target:4.0%} of target)  epoch {r['epoch']:6.2f} s  {rate:5.0f} MB/s "
                              f"= {rate / best:4.0%} of the best client ({rate / kept:4.0%} of the one that keeps)")
                if args.repeat > 1:
                    for mode, got in ratios.items():
                        print(f"  median of {args.repeat}, {mode:16s}: epoch "
                              f"{statistics.median(g[0] for g in got):4.0%} of the best client "
                              f"({statistics.median(g[2] for g in got):4.0%} of the one that keeps), first record "
                              f"{statistics.median(g[1] for g in got):4.0%} of its target")
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
