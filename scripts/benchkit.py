"""What the benchmark scripts share: a timer, a cheap record source, S3 options for moto.

Imported by the scripts next to it (a script's own folder is on ``sys.path``); it puts
the repository root there too, for ``tests.servers``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # for tests.servers

MiB = 1 << 20
POOL_BYTES = 32 * MiB


def bytecode_env() -> dict[str, str]:
    """This environment for a fresh child process that writes bytecode, as an installed
    package has (without ``PYTHONDONTWRITEBYTECODE``, which some machines set: every
    import of roxxel would compile it)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def best_of(repeat: int, fn: Callable[[], object]) -> float:
    """The fastest of ``repeat`` calls of ``fn``, in seconds."""
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_storage_options(endpoint: str) -> dict[str, Any]:
    """Options with timeouts long enough for large objects on a loaded 2-core machine."""
    from tests.servers import s3_storage_options

    return s3_storage_options(endpoint, connect_timeout=10, read_timeout=600, max_attempts=2)


def check_record_sizes(parser: argparse.ArgumentParser, min_kib: int, max_kib: int) -> None:
    """Exit with a usage error unless ``--min-kib``/``--max-kib`` suit :class:`RecordSource`."""
    if not 1 <= min_kib <= max_kib:
        parser.error("need 1 <= --min-kib <= --max-kib")
    if max_kib * 1024 >= POOL_BYTES:
        parser.error(f"--max-kib must be below {POOL_BYTES // 1024}")


class RecordSource:
    """Records of ``min_bytes..max_bytes``, slices of one random pool: incompressible, and
    cheap to produce, so generating them never limits the writer."""

    def __init__(self, total_bytes: int, min_bytes: int, max_bytes: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.pool = memoryview(rng.bytes(POOL_BYTES))
        mean = (min_bytes + max_bytes) / 2
        lengths = rng.integers(min_bytes, max_bytes + 1, size=int(total_bytes / mean * 1.1) + 16)
        count = int(np.searchsorted(np.cumsum(lengths), total_bytes)) + 1
        self.lengths = lengths[:count]
        self.starts = rng.integers(0, POOL_BYTES - max_bytes, size=count)
        self.total_bytes = int(self.lengths.sum())

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[memoryview]:
        pool = self.pool
        for start, length in zip(self.starts.tolist(), self.lengths.tolist()):
            yield pool[start : start + length]
