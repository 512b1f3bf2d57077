"""The main job end to end, through an S3 server embedded on loopback (moto).

1. start moto's S3 server on 127.0.0.1 and make a bucket;
2. write a sample corpus (variable-length token documents) with ``roxxel.Writer``;
3. open it with ``roxxel.open`` on a fresh node cache and read one shuffled epoch with
   ``ds.iter`` (the shards stream in the background), then again from the warm cache;
4. stream fixed-length token batches with ``ds.stream`` and check that a resumed stream
   reproduces the same batch;
5. print a summary: records, bytes, throughput, bytes downloaded, cache hits.

Run through ``bash scripts/demo.sh`` (README command (a)). Nothing leaves this machine.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

import roxxel  # noqa: E402
from tests.servers import s3_server  # noqa: E402

MIB = 1 << 20


def sample_documents(n: int, seed: int):
    """Variable-length token documents (int32), like a tokenized text corpus."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 50_000, size=int(rng.integers(64, 4096)), dtype=np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=30_000)
    parser.add_argument("--shard-mib", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with s3_server() as s3, tempfile.TemporaryDirectory(prefix="roxxel-demo-") as tmp:
        s3.create_bucket("demo")
        url, options = s3.url("demo", "corpus"), s3.storage_options
        print(f"S3 server on loopback: {s3.endpoint}; dataset {url}")

        t0 = time.perf_counter()
        with roxxel.Writer(url, shard_bytes=args.shard_mib * MIB, storage_options=options,
                           meta={"dtype": "int32", "tokenizer": "demo"}) as writer:
            writer.extend(sample_documents(args.documents, seed=0))
        write_s = time.perf_counter() - t0
        manifest = writer.manifest
        stored = int(manifest.shards.stored_size.sum())
        print(f"wrote    {manifest.records:,} records, {stored / MIB:.1f} MiB in "
              f"{len(manifest.shards)} shards ({stored / MIB / write_s:.0f} MiB/s to S3)")

        cache_dir = str(Path(tmp) / "cache")
        for label in ("cold", "warm"):  # the second open is another job on the same node
            with roxxel.open(url, cache_dir=cache_dir, storage_options=options) as ds:
                t0 = time.perf_counter()
                nbytes = sum(r.nbytes for r in ds.iter(seed=1, epoch=0))
                secs = time.perf_counter() - t0
                stats, records = ds.stats, len(ds)
            print(f"read     one shuffled epoch, {label} cache: {records:,} records, "
                  f"{nbytes / MIB:.1f} MiB in {secs:.2f} s ({nbytes / MIB / secs:.0f} MiB/s); "
                  f"downloaded {stats['bytes_downloaded'] / MIB:.1f} MiB in "
                  f"{stats['shards_downloaded']} shards, {stats['cache_hits']} cache hits")

        with roxxel.open(url, cache_dir=cache_dir, storage_options=options) as ds:
            steps = 50
            t0 = time.perf_counter()
            stream = ds.stream(args.seq_len, args.batch_size, seed=42, epochs=None)  # 50 steps, however small the corpus
            batches = list(itertools.islice(stream, steps))
            secs = time.perf_counter() - t0
            resumed = next(ds.stream(args.seq_len, args.batch_size, seed=42, start_step=steps - 1,
                                     epochs=None))
            same = np.array_equal(resumed, batches[-1])
            print(f"streamed {steps} batches of {args.batch_size}x{args.seq_len} int32 tokens "
                  f"({steps * batches[0].nbytes / MIB / secs:.0f} MiB/s); resume at step "
                  f"{steps - 1} {'reproduced the same batch' if same else 'DIFFERED'}")
            if not same:
                sys.exit(1)


if __name__ == "__main__":
    main()
