"""The main job end to end: write a sample dataset, then stream it back shuffled.

Run through ``bash scripts/demo.sh`` (README command (a)). Prints a short summary.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

import roxxel


def sample_documents(n: int, seed: int):
    """Variable-length token documents (int32), like a tokenized text corpus."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.integers(0, 50_000, size=int(rng.integers(64, 4096)), dtype=np.int32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--documents", type=int, default=20_000)
    parser.add_argument("--shard-bytes", type=int, default=32 << 20)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")

    with tempfile.TemporaryDirectory(prefix="roxxel-demo-") as tmp:
        base = Path(tmp) / "corpus.rox"
        t0 = time.perf_counter()
        paths = roxxel.Roxxel(base).write(
            sample_documents(args.documents, seed=0), max_shard_bytes=args.shard_bytes
        )
        write_s = time.perf_counter() - t0
        stored = sum(Path(p).stat().st_size for p in paths)

        with roxxel.Roxxel(base) as ds:
            t0 = time.perf_counter()
            checked = sum(ds[i].nbytes for i in np.random.default_rng(1).permutation(len(ds)))
            read_s = time.perf_counter() - t0
            tokens = sum(p.nbytes for p in ds.payloads) // 4
            steps = max(1, tokens // (args.seq_len * args.batch_size))
            t0 = time.perf_counter()
            streamed = 0
            for batch in itertools.islice(ds.stream(args.seq_len, args.batch_size, seed=42), steps):
                streamed += batch.nbytes
            stream_s = time.perf_counter() - t0
            resumed = next(ds.stream(args.seq_len, args.batch_size, seed=42, start_step=steps - 1))
            assert np.array_equal(resumed, batch), "resume must reproduce the last batch"

        mb = 1 << 20
        print(f"wrote    {args.documents} records, {stored / mb:.1f} MiB in {len(paths)} shards "
              f"({stored / mb / write_s:.0f} MiB/s)")
        print(f"read     every record once in a shuffled order: {checked / mb:.1f} MiB "
              f"({args.documents / read_s:,.0f} records/s)")
        print(f"streamed {steps} batches of {args.batch_size}x{args.seq_len} int32 tokens "
              f"({streamed / mb / stream_s:.0f} MiB/s); resume at step {steps - 1} reproduced "
              "the same batch")


if __name__ == "__main__":
    main()
