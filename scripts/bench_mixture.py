"""Mixtures (issue 12's benchmark): warm and cold epochs, and the proportions' worst deviation.

1. **warm**: three local datasets of small records (``--records`` in all, split 3:2:1), and
   one dataset holding the same records. Each read runs in a fresh process with default
   options, its cache filled beforehand: a 3-source ``roxxel.mix`` (weights from the
   record counts: a shuffled union, so both read the same records) ``m.iter(seed=1)``
   epoch, against a single-dataset ``ds.iter(seed=1)`` epoch: the best of five runs of
   each, the two alternating. Reported: open, first record, epoch, records/s, and the
   ratio (target: at least 90%).
2. **cold**: three datasets on moto S3 behind ``tests/shaping_proxy.py`` (30 ms to first
   byte, 25 MB/s per connection, 400 MB/s in all, as ``bench_link.py``), read as one
   mixture with weights 0.5/0.3/0.2 and ``"repeat"`` on the smallest, from a fresh
   process with a fresh cache, against the best client (``bench_link.best_client``:
   every object as 8 MiB ranged GETs, 32 in flight, on kept-alive connections).
3. **proportions**: for weights 0.5/0.3/0.2 and 0.7/0.2/0.07/0.03, the worst deviation
   ``|count_i - w_i * B|`` over every run of ``B`` consecutive records of one consumer's
   epoch, for any ``B`` (the maximum minus the minimum of ``c_i(t) - w_i t``).

Usage: ``.venv/bin/python scripts/bench_mixture.py [--records 1500000] [--cold-mib 64 64 32]
[--skip-cold]``. On this 2-core machine, check the load average printed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any

import fsspec
import numpy as np
from bench_link import best_client, part_urls
from benchkit import MiB, bench_storage_options

import roxxel
from roxxel.read.mixplan import MixSource, MixturePlan, Topology
from roxxel.read.schedule import Schedule, integer_weights
from tests import servers, shaping_proxy

_CHILD = """
import json, sys, time
t0 = time.perf_counter()
import roxxel
t_import = time.perf_counter()
kind, urls, options, cache = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3]), sys.argv[4]
weights = json.loads(sys.argv[5])
if kind == "mix":
    sources = [{"url": u, "storage_options": options} for u in urls]
    policy = None if weights is None else ["stop"] * (len(urls) - 1) + ["repeat"]
    ds = roxxel.mix(sources, weights, policy=policy, cache_dir=cache)
else:
    ds = roxxel.open(urls[0], storage_options=options, cache_dir=cache)
t_open = time.perf_counter()
records = ds.iter(seed=1)
first = next(records)
t_first = time.perf_counter()
n, nbytes = 1, first.nbytes
for r in records:
    n += 1
    nbytes += r.nbytes
t_end = time.perf_counter()
stored = ds.stats["bytes_downloaded"]
ds.close()
print(json.dumps({"open": t_open - t_import, "first": t_first - t_import, "epoch": t_end - t_import,
                  "records": n, "bytes": nbytes, "stored": stored}))
"""


def run(kind: str, urls: list[str], options: dict[str, Any], cache: str, weights: list[float] | None = None
        ) -> dict[str, float]:
    out = subprocess.run([sys.executable, "-c", _CHILD, kind, json.dumps(urls), json.dumps(options), cache,
                          json.dumps(weights)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def warm(records: int, root: str) -> None:
    split = [records * 3 // 6, records * 2 // 6, records - records * 5 // 6]
    urls, start = [], 0
    rng = np.random.default_rng(0)
    sizes = rng.integers(64, 192, size=records)
    for i, n in enumerate(split):
        url = os.path.join(root, f"src{i}")
        with roxxel.Writer(url) as w:
            w.extend(np.full(int(s), k % 251, dtype=np.uint8) for k, s in zip(range(start, start + n),
                                                                                 sizes[start:start + n]))
        urls.append(url)
        start += n
    single = os.path.join(root, "single")
    with roxxel.Writer(single) as w:
        w.extend(np.full(int(s), k % 251, dtype=np.uint8) for k, s in enumerate(sizes))
    cache = os.path.join(root, "cache")
    run("mix", urls, {}, cache)  # fill the cache
    run("one", [single], {}, cache)
    runs: dict[str, list[dict[str, float]]] = {"one": [], "mix": []}
    for _ in range(5):  # the two sides alternate, so that a slower spell of the machine hits both
        runs["one"].append(run("one", [single], {}, cache))
        runs["mix"].append(run("mix", urls, {}, cache))
    results = {}
    for kind in ("one", "mix"):
        best = results[kind] = min(runs[kind], key=lambda r: r["epoch"])
        label = "single ds.iter" if kind == "one" else "3-source mix  "
        print(f"  {label} open {best['open'] * 1000:6.1f} ms  first record {best['first'] * 1000:6.1f} ms  "
              f"epoch {best['epoch']:6.2f} s  {best['records'] / best['epoch'] / 1e6:5.2f} M records/s "
              f"({best['records']} records)")
    assert results["one"]["records"] == results["mix"]["records"], results
    ratio = results["one"]["epoch"] / results["mix"]["epoch"]
    print(f"  warm mixture epoch: {ratio:.0%} of the single dataset's throughput (target 90%)")


def cold(mibs: list[int], root: str) -> None:
    weights = [0.5, 0.3, 0.2]
    with servers.s3_server(fast_ranges=True) as server:
        server.create_bucket("mix")
        direct = bench_storage_options(server.endpoint)
        port = int(server.endpoint.rsplit(":", 1)[1])
        with contextlib.ExitStack() as stack:
            proxy = stack.enter_context(shaping_proxy.start(port, latency=0.03, conn_rate=25e6, link_rate=400e6))
            shaped = dict(direct, endpoint_url=proxy.endpoint)
            urls, paths, sizes = [], [], []
            for i, mib in enumerate(mibs):
                url = f"s3://mix/src{i}"
                with roxxel.Writer(url, storage_options=direct, shard_bytes=32 * MiB) as w:
                    left = mib * MiB
                    while left > 0:
                        w.append(os.urandom(min(left, 256 * 1024)))
                        left -= 256 * 1024
                urls.append(url)
                m = w.manifest
                paths += [f"mix/src{i}/{u}" for u in m.shards.uris.tolist()]
                sizes += [int(s) for s in m.shards.stored_size.tolist()]
            fs = fsspec.filesystem("s3", skip_instance_cache=True, **shaped)
            limit = sum(sizes) / best_client(part_urls("s3", fs, proxy.endpoint, paths), sizes, 8 * MiB, 32) / 1e6
            with tempfile.TemporaryDirectory(dir=root) as cache:
                r = run("mix", urls, shaped, cache, weights)
            rate = r["stored"] / r["epoch"] / 1e6
            print(f"  best client {limit:.0f} MB/s over {sum(sizes) / 1e6:.0f} MB; mixture open "
                  f"{r['open'] * 1000:.0f} ms, first record {r['first'] * 1000:.0f} ms, epoch {r['epoch']:.2f} s "
                  f"({r['stored'] / 1e6:.0f} MB downloaded): {rate:.0f} MB/s = {rate / limit:.0%} of the best client")


def deviations() -> None:
    for weights in ([0.5, 0.3, 0.2], [0.7, 0.2, 0.07, 0.03]):
        n = integer_weights(weights)
        schedule = Schedule(n)
        sources = [MixSource(np.full(1000, 100, dtype=np.int64), key=i, policy="stop") for i in range(len(n))]
        for world in (1, 8):
            p = MixturePlan(sources, schedule, seed=0, epoch=0, topology=Topology(0, world, 0, 1), samples=None,
                            shuffle=True, window=16, remainder="pad")
            srcs = schedule.sources(0, p.length)
            worst = 0.0
            for i, k in enumerate(n):
                dev = np.concatenate([[0], np.cumsum(srcs == i)]) - np.arange(p.length + 1) * (k / sum(n))
                worst = max(worst, float(dev.max() - dev.min()))
            print(f"  weights {weights} (as {n}), world size {world}: {p.length} records per consumer, worst "
                  f"|count - w*B| over all runs {worst:.3f} (bound: 2)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_500_000)
    parser.add_argument("--cold-mib", type=int, nargs=3, default=[256, 160, 64])
    parser.add_argument("--skip-cold", action="store_true")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as root:
        print(f"warm: {args.records} records of 64-191 bytes, local disk, cache filled")
        warm(args.records, root)
        if not args.skip_cold:
            print(f"cold: sources of {args.cold_mib} MiB on moto S3 through the shaping proxy")
            cold(args.cold_mib, root)
    print("proportions:")
    deviations()
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
