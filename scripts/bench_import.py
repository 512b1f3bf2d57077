"""Importing MDS and WebDataset into roxxel (issue 14, benchmark): MB/s of input converted,
against a plain read of the same files (the limit), each in a fresh process.

Before timing, ``--mib`` (256) MiB of incompressible records of ``--min-kib``..``--max-kib``
KiB are written by the peers' own libraries: an MDS directory by mosaicml-streaming's
``MDSWriter`` (columns ``data: bytes`` and ``n: int``, 64 MiB shards, uncompressed), and
WebDataset tar shards by ``webdataset.ShardWriter`` (``.bin`` and ``.cls`` members, 64 MiB).

Each measurement runs in a fresh Python process and times its work only (imports excluded):

- **read (limit)**: every input file read whole, in order, 16 MiB at a time, discarded;
- **import only**: ``roxxel.imports.open_source(...)`` iterated, records discarded;
- **pack to local**: ``roxxel.ops.pack(inputs, url, format=...)`` with default options
  (whole samples, 64 MiB shards, no compression) into a local directory, manifest
  published;
- **pack to S3** (``--s3``): the same into a moto S3 server on loopback (a subprocess);
- **writer alone**: the same records, made in memory, appended to a ``roxxel.Writer`` with
  default options into a local directory: what packing costs without any import.

Rates are MB/s (10^6 bytes/s) of the input files' bytes. On this loaded 2-core machine
(other agents' jobs, moto) the figures are only comparable within one run. Usage:
``.venv/bin/python scripts/bench_import.py [--mib 256] [--s3] [--out bench-out/import.json]``.
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

from benchkit import REPO, MiB, RecordSource, bench_storage_options

SHARD_BYTES = 64 * MiB

CHILD = r"""
import json, os, sys, time
kind, fmt, inputs, url, options = json.loads(sys.argv[1])
if kind == "read":
    t0 = time.perf_counter()
    total = 0
    for path in inputs:
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(16 << 20):
                total += len(chunk)
    print(json.dumps({"seconds": time.perf_counter() - t0, "bytes": total}))
    sys.exit(0)
import roxxel
from roxxel import imports, ops
if kind == "writer":
    sys.path.insert(0, os.path.join(os.path.dirname(roxxel.__file__), "..", "scripts"))
    from benchkit import RecordSource
    source = RecordSource(*options["records"], seed=14)
    t0 = time.perf_counter()
    with roxxel.Writer(url) as writer:
        writer.extend(source)
    print(json.dumps({"seconds": time.perf_counter() - t0, "records": len(source)}))
    sys.exit(0)
t0 = time.perf_counter()
if kind == "import":
    count = sum(1 for _ in imports.open_source(fmt, inputs))
else:
    count = ops.pack(inputs, url, options or None, format=fmt).records
print(json.dumps({"seconds": time.perf_counter() - t0, "records": count}))
"""


def write_mds(path: str, source: RecordSource) -> None:
    sys.path.insert(0, str(REPO))
    from tests import peer_stubs

    streaming = peer_stubs.streaming()
    with streaming.MDSWriter(out=path, columns={"data": "bytes", "n": "int"}, size_limit=SHARD_BYTES) as writer:
        for i, record in enumerate(source):
            writer.write({"data": bytes(record), "n": i})


def write_wds(path: str, source: RecordSource) -> None:
    import webdataset as wds

    os.makedirs(path)
    with wds.ShardWriter(os.path.join(path, "shard-%06d.tar"), maxsize=SHARD_BYTES, verbose=0) as sink:
        for i, record in enumerate(source):
            sink.write({"__key__": f"s{i:08d}", "bin": bytes(record), "cls": str(i % 1000).encode()})


def files(path: str) -> list[str]:
    return sorted(os.path.join(path, name) for name in os.listdir(path))


def run_child(kind: str, fmt: str, inputs: list[str], url: str = "", options: dict | None = None) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", CHILD, json.dumps([kind, fmt, inputs, url, options or {}])],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode:
        raise RuntimeError(f"{kind} {fmt} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=256, help="input size per format (default: 256)")
    parser.add_argument("--min-kib", type=int, default=16)
    parser.add_argument("--max-kib", type=int, default=256)
    parser.add_argument("--s3", action="store_true", help="also pack into a moto S3 server")
    parser.add_argument("--out", default=None, help="write the results as JSON here too")
    args = parser.parse_args()
    results: dict[str, Any] = {"mib": args.mib, "record_kib": [args.min_kib, args.max_kib], "formats": {}}
    with tempfile.TemporaryDirectory(prefix="bench-import-") as tmp:
        source = RecordSource(args.mib * MiB, args.min_kib * 1024, args.max_kib * 1024, seed=14)
        inputs = {"mds": os.path.join(tmp, "mds"), "wds": os.path.join(tmp, "wds")}
        t0 = time.perf_counter()
        write_mds(inputs["mds"], source)
        write_wds(inputs["wds"], source)
        print(f"wrote {len(source)} records ({source.total_bytes / MiB:.0f} MiB) as MDS and WebDataset "
              f"in {time.perf_counter() - t0:.1f} s", flush=True)
        server = None
        if args.s3:
            from tests import servers

            server = servers.s3_server().__enter__()
            server.create_bucket("bench")
        try:
            for fmt, path in inputs.items():
                paths = files(path)
                size = sum(os.path.getsize(p) for p in paths)
                given = [path] if fmt == "mds" else paths
                row: dict[str, Any] = {"input_bytes": size, "files": len(paths)}
                runs = [("read (limit)", "read", ""), ("import only", "import", ""),
                        ("pack to local", "pack", os.path.join(tmp, f"out-{fmt}"))]
                if server is not None:
                    runs.append(("pack to S3", "pack", server.url("bench", f"out-{fmt}")))
                for label, kind, url in runs:
                    options = bench_storage_options(server.endpoint) if url.startswith("s3://") else None
                    result = run_child(kind, fmt, paths if kind == "read" else given, url, options)
                    rate = size / result["seconds"] / 1e6
                    row[label] = {"seconds": round(result["seconds"], 3), "MB/s": round(rate, 1)}
                    print(f"{fmt:4} {label:14} {result['seconds']:7.2f} s {rate:8.1f} MB/s", flush=True)
                results["formats"][fmt] = row
            records = [args.mib * MiB, args.min_kib * 1024, args.max_kib * 1024]
            result = run_child("writer", "", [], os.path.join(tmp, "out-writer"), {"records": records})
            rate = source.total_bytes / result["seconds"] / 1e6
            results["writer alone"] = {"record_bytes": source.total_bytes, "seconds": round(result["seconds"], 3),
                                       "MB/s": round(rate, 1)}
            print(f"writer alone        {result['seconds']:7.2f} s {rate:8.1f} MB/s (record bytes)", flush=True)
        finally:
            if server is not None:
                server.__exit__(None, None, None)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
