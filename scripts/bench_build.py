"""Building a dataset from Parquet with Dask (issue 14, benchmark): ``roxxel.dask`` on a
local cluster of ``--workers`` (2) processes against the single-process ``roxxel.Writer``
and against the raw upload limit, into moto S3 on loopback, in the same run.

The input is ``--mib`` (256; ``--full``: 1024) MiB of incompressible records of
``--min-kib``..``--max-kib`` KiB in ``--files`` (8) Parquet files of one binary column
``data``, written with pyarrow before timing (row groups of 16 MiB).

- **dask**: ``roxxel.dask.write_parts`` with one part per Parquet file (each read in
  batches of 64 rows), on a fresh ``distributed.LocalCluster`` (one thread per worker
  process), timed from submitting the parts to the commit returning; with each worker's
  peak RSS (VmHWM) and its RSS before the job (roxxel, pyarrow and Dask
  imported), for each ``--shard-mib`` size: the peak must not grow with the shard size
  (a worker holds one shard's offsets; shards are staged on disk).
- **writer**: one ``roxxel.Writer`` in a fresh process reading the same files, timed from
  the first record to ``close()``, with its peak RSS.
- **reading alone**: the same reading of the files in a fresh process, writing nothing:
  the part of each peak RSS that is pyarrow's.
- **upload limit**: the best upload client of ``scripts/bench_upload.py`` (presigned
  multipart ``UploadPart``, ``sendfile``) putting files of the dataset's size, with
  ``--parallel`` parts in flight (default: workers x the writer's 4 upload threads: the
  same concurrency as the Dask build).

The figures of a loaded 2-core machine (moto shares the cores) are only comparable within
one run. Usage: ``.venv/bin/python scripts/bench_build.py [--mib 256 | --full]
[--shard-mib 16 64] [--workers 2] [--out bench-out/build.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_upload import best_client
from benchkit import REPO, MiB, RecordSource, bench_storage_options

from tests import servers

BUCKET = "build"
ROW_GROUP_BYTES = 16 * MiB
READ = {"pre_buffer": False, "buffer_size": 1 << 20}  # pyarrow's leanest reading

_WRITER_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[4])
import pyarrow.parquet as pq
import roxxel

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))

url, options, shard_bytes, paths = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[5:]
READ = {"pre_buffer": False, "buffer_size": 1 << 20}
before = rss("VmRSS:")
t0 = time.perf_counter()
if not url:  # the reading alone
    for path in paths:
        for batch in pq.ParquetFile(path, **READ).iter_batches(columns=["data"], batch_size=64):
            batch.column(0).to_pylist()
    print(json.dumps({"seconds": time.perf_counter() - t0, "rss_peak": rss("VmHWM:"), "rss_before": before}))
    sys.exit(0)
with roxxel.Writer(url, storage_options=options, shard_bytes=shard_bytes) as w:
    for path in paths:
        for batch in pq.ParquetFile(path, **READ).iter_batches(columns=["data"], batch_size=64):
            for value in batch.column(0).to_pylist():
                w.append(value)
print(json.dumps({"seconds": time.perf_counter() - t0, "rss_peak": rss("VmHWM:"), "rss_before": before,
                  "stored": int(sum(w.manifest.shards.stored_size.tolist()))}))
"""


def make_parquet(folder: str, total: int, files: int, min_kib: int, max_kib: int) -> tuple[list[str], int, int]:
    """``files`` Parquet files holding ``total`` bytes of records; their paths, the record
    bytes and the record count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = RecordSource(total, min_kib * 1024, max_kib * 1024, seed=0)
    per_file = -(-len(source) // files)
    paths = []
    mean = source.total_bytes / max(1, len(source))
    records = iter(source)
    for k in range(files):
        chunk = [bytes(r) for _, r in zip(range(per_file), records)]  # one file's records at a time
        if not chunk:
            break
        path = os.path.join(folder, f"part-{k:03d}.parquet")
        pq.write_table(pa.table({"data": pa.array(chunk, pa.binary())}), path,
                       row_group_size=max(1, int(ROW_GROUP_BYTES / mean)), compression="none")
        paths.append(path)
    return paths, source.total_bytes, len(source)


def parquet_records(path: str) -> Any:
    """A Parquet file's ``data`` values, one row group batch at a time (runs on a worker)."""
    import pyarrow.parquet as pq

    for batch in pq.ParquetFile(path, **READ).iter_batches(columns=["data"], batch_size=64):
        yield from batch.column(0).to_pylist()


def worker_rss() -> dict[str, int]:
    """This process's RSS and peak RSS (VmHWM: since its exec, unlike ``ru_maxrss``, which
    a spawned child inherits from its parent), in bytes (runs on every Dask worker)."""
    import pyarrow.parquet  # noqa: F401 - what a part imports, before the job

    import roxxel.build  # noqa: F401

    with open("/proc/self/status") as f:
        fields = {line.split(":")[0]: int(line.split()[1]) * 1024 for line in f if line.startswith("Vm")}
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}


def run_dask(url: str, options: dict[str, Any], paths: list[str], workers: int, shard_bytes: int) -> dict[str, Any]:
    """One Dask build on a fresh local cluster; seconds and each worker's RSS."""
    import distributed

    import roxxel.dask

    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        before = client.run(worker_rss)
        t0 = time.perf_counter()
        manifest = roxxel.dask.write_parts(paths, parquet_records, url,
                                           storage_options=options, shard_bytes=shard_bytes, client=client)
        seconds = time.perf_counter() - t0
        after = client.run(worker_rss)
    return {
        "seconds": seconds,
        "stored": int(sum(manifest.shards.stored_size.tolist())),
        "records": manifest.records,
        "rss_before": sorted(v["rss"] for v in before.values()),
        "rss_peak": sorted(v["peak"] for v in after.values()),
    }


def run_writer(url: str, options: dict[str, Any], paths: list[str], shard_bytes: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _WRITER_CHILD, url, json.dumps(options), str(shard_bytes), str(REPO / "scripts"),
         *paths],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    if out.returncode:
        raise RuntimeError(f"the writer failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="MiB of records (default 256)")
    parser.add_argument("--full", action="store_true", help="1024 MiB, as the issue asks")
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--min-kib", type=int, default=4)
    parser.add_argument("--max-kib", type=int, default=252)
    parser.add_argument("--shard-mib", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=None, help="the upload limit's parts in flight")
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--out", help="also write the results as JSON to this file (e.g. bench-out/build.json)")
    args = parser.parse_args(argv)
    total = (1024 if args.full else args.mib) * MiB
    parallel = args.parallel or args.workers * 4
    print(f"{total // MiB} MiB in {args.files} Parquet files, {args.workers} Dask workers, upload limit at "
          f"{parallel} parts in flight; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}", flush=True)
    results: dict[str, Any] = {"mib": total // MiB, "workers": args.workers, "parallel": parallel, "runs": []}
    with servers.s3_server() as s3, tempfile.TemporaryDirectory() as tmp:
        options = bench_storage_options(s3.endpoint)
        paths, record_bytes, count = make_parquet(tmp, total, args.files, args.min_kib, args.max_kib)
        print(f"input: {count} records, {record_bytes / 1e6:.0f} MB", flush=True)
        reading = run_writer("", {}, paths, 0)  # pyarrow reading every file, in one process, nothing written
        results["reading_alone"] = reading
        print(f"pyarrow reading the input alone: peak RSS {reading['rss_peak'] / MiB:.0f} MiB "
              f"({reading['rss_before'] / MiB:.0f} MiB before)", flush=True)
        for shard_mib in args.shard_mib:
            s3.reset()
            s3.create_bucket(BUCKET)
            shard = shard_mib * MiB
            dask_run = run_dask(f"s3://{BUCKET}/dask{shard_mib}", options, paths, args.workers, shard)
            assert dask_run["records"] == count
            writer_run = run_writer(f"s3://{BUCKET}/writer{shard_mib}", options, paths, shard)
            stored = dask_run["stored"]
            blobs = []
            for k, start in enumerate(range(0, stored, shard)):  # the shards' sizes, random bytes
                blobs.append(os.path.join(tmp, f"blob-{k}"))
                with open(blobs[-1], "wb") as f:
                    f.write(os.urandom(min(shard, stored - start)))
            limit_s = best_client(s3.endpoint, BUCKET, blobs, args.part_mib * MiB, parallel)
            for blob in blobs:
                os.unlink(blob)
            run = {"shard_mib": shard_mib, "dask": dask_run, "writer": writer_run, "upload_limit_s": limit_s}
            results["runs"].append(run)

            def rate(seconds: float) -> float:
                return record_bytes / seconds / 1e6

            print(f"shards of {shard_mib} MiB: dask {rate(dask_run['seconds']):.0f} MB/s, writer "
                  f"{rate(writer_run['seconds']):.0f} MB/s, upload limit {rate(limit_s):.0f} MB/s; worker RSS "
                  f"{[round(r / MiB) for r in dask_run['rss_before']]} MiB before, peak "
                  f"{[round(r / MiB) for r in dask_run['rss_peak']]} MiB; writer peak "
                  f"{writer_run['rss_peak'] / MiB:.0f} MiB; load {os.getloadavg()[0]:.1f}", flush=True)
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
