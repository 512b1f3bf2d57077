"""What an elastic resume costs (issue 13): time and peak memory to plan one new consumer.

Synthetic record counts (no data is read: the planner works on counts). For each size, a
job of ``--ranks x --workers`` consumers stops at random positions mid-epoch; one consumer
of ``--new-ranks x --new-workers`` is planned from that job state (every earlier
consumer's remainder, then its share), and its first window's record ids are computed.
A second resize (a third generation) is timed too. For reference: the planner's plan of
one consumer (what a same-topology resume costs).

    .venv/bin/python scripts/bench_elastic.py                 # 10^6, 10^8, 10^9 records
    .venv/bin/python scripts/bench_elastic.py --records 1e6 --shard-records 1000
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from roxxel.planner import plan
from roxxel.read.elastic import Generation, elastic_plan, remaining, span


def _timed(fn):
    """``fn()``, its wall and CPU seconds (the best of three runs: the machine may be
    busy), and the peak of the memory it allocates (a fourth run, traced)."""
    best = (float("inf"), float("inf"))
    for _ in range(3):
        wall, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, (time.perf_counter() - wall, time.process_time() - cpu))
    tracemalloc.start()
    fn()
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return out, best[0], best[1], peak


def _stopped(total: int, world: int, workers: int, remainder: str, rng: np.random.Generator) -> Generation:
    lengths = [hi - lo for lo, hi in (span(total, r, world, w, workers, remainder)
                                      for r in range(world) for w in range(workers))]
    return Generation(world, workers, tuple(int(rng.integers(0, n + 1)) for n in lengths))


def run(records: int, shard_records: int, args: argparse.Namespace) -> None:
    shards = max(1, records // shard_records)
    counts = np.full(shards, records // shards, dtype=np.int64)
    counts[: records - int(counts.sum())] += 1
    params = {"seed": 1, "epoch": 0, "shuffle": True, "window": args.window, "remainder": "pad"}
    rng = np.random.default_rng(0)
    first = _stopped(records, args.ranks, args.workers, "pad", rng)
    mine = {"rank": args.new_ranks - 1, "world_size": args.new_ranks, "worker": 0, "num_workers": args.new_workers}

    _, *cost_plan = _timed(lambda: plan(counts, rank=0, world_size=args.ranks, worker=0,
                                       num_workers=args.workers, **params))
    _, *cost_resume = _timed(lambda: elastic_plan(counts, **params, generations=[first], **mine))
    _, *cost_window = _timed(lambda: next(elastic_plan(counts, **params, generations=[first], **mine).records(), None))
    _, left = remaining(counts, **params, generations=[first])
    second = _stopped(left.total, args.new_ranks, args.new_workers, "pad", rng)
    again = {"rank": 0, "world_size": args.ranks, "worker": 0, "num_workers": args.workers}
    _, *cost_twice = _timed(lambda: elastic_plan(counts, **params, generations=[first, second], **again))

    def show(name: str, cost: list[float]) -> str:
        wall, cpu, peak = cost
        return f"{name} {wall * 1e3:7.1f} ms ({cpu * 1e3:7.1f} CPU) {peak / (1 << 20):6.1f} MiB"

    print(f"{records:>14,} records {shards:>7,} shards | " + " | ".join(
        [show("plan", cost_plan), show("elastic resume", cost_resume), show("+ its first window", cost_window),
         show("resized twice", cost_twice)]), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--records", type=float, nargs="*", default=[1e6, 1e8, 1e9])
    parser.add_argument("--shard-records", type=int, default=10_000, help="records per shard (default 10,000)")
    parser.add_argument("--ranks", type=int, default=64)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--new-ranks", type=int, default=48)
    parser.add_argument("--new-workers", type=int, default=6)
    parser.add_argument("--window", type=int, default=16)
    args = parser.parse_args()
    print(f"job {args.ranks} ranks x {args.workers} workers -> {args.new_ranks} x {args.new_workers} -> "
          f"{args.ranks} x {args.workers}; window {args.window} shards; {args.shard_records:,} records a shard")
    for records in args.records:
        run(int(records), args.shard_records, args)


if __name__ == "__main__":
    main()
