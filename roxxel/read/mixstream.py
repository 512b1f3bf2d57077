"""Token streams over a mixture: the weights applied to token windows.

Each source is cut into windows of ``seq_len`` tokens as :mod:`roxxel.read.tokens` cuts a
dataset, with an endless seeded order of its own (the order ``ds.stream`` gives it, keyed
by the mixture seed and the source's key). Rank ``r`` of ``W`` reads the mixture's
schedule of sources over its sample positions ``t = step * batch_size + row``; the
``k``-th window it takes from source ``i`` is sample ``k * W + r`` of that source's order,
so ranks take disjoint windows of every source. A step is computed from the step number
alone (the schedule's counts are a closed form), so resuming at ``start_step`` costs
O(#shards + batch), as ``ds.stream``'s does. An epoch is the number of samples after
which the first ``"stop"`` source would start its second pass on some rank; a stream of
``E`` epochs is ``E * epoch // batch_size`` steps on every rank. Rows of a batch that come
from one source are in ascending window order (they are interchangeable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .schedule import Schedule
from .tokens import TokenWindows, _check_stream_arguments, _EpochOrder

__all__ = ["mixture_batches", "stream_length"]


def stream_length(schedule: Schedule, windows: list[TokenWindows], policies: tuple[str, ...], world: int) -> int:
    """Samples in one epoch of a rank's stream (see the module docstring); 0: endless."""
    ends = []
    for i, (w, policy) in enumerate(zip(windows, policies)):
        per_rank = len(w) // world
        if per_rank == 0:
            raise ValueError(f"source {i} has {len(w)} windows of {w.seq_len} tokens: fewer than one per rank")
        if policy == "stop":
            ends.append(schedule.position_of(i, per_rank))
    return min(ends) if ends else 0


def mixture_batches(
    windows: list[TokenWindows],
    seeds: list[int],
    schedule: Schedule,
    batch_size: int,
    start_step: int,
    *,
    steps: int | None,
    shard: tuple[int, int],
    prefetch: Callable[[list[np.ndarray]], None] | None = None,
) -> Iterator[np.ndarray]:
    """``(batch_size, seq_len)`` batches of rank ``shard[0]`` from ``start_step`` on, for
    ``steps`` steps in all (None: endless). ``prefetch`` gets, before each batch is
    gathered, each source's shards that its next samples open."""
    _check_stream_arguments(batch_size, 0, start_step, None)
    rank, world = shard
    orders = [_EpochOrder(np.diff(w.starts), seed) for w, seed in zip(windows, seeds)]
    seq_len, dtype = windows[0].seq_len, windows[0].dtype
    step = start_step
    while steps is None or step < steps:
        t0 = step * batch_size
        srcs = schedule.sources(t0, t0 + batch_size)
        before = schedule.counts(t0)
        out = np.empty((batch_size, seq_len), dtype=dtype)
        picks = []
        for i in range(len(windows)):
            rows = np.flatnonzero(srcs == i)
            if len(rows):
                first = int(before[i])
                ids = np.sort(orders[i].windows(first * world, len(rows) * world)[rank::world])
                picks.append((i, rows, ids))
        if prefetch is not None:
            ahead = [np.zeros(0, dtype=np.int64)] * len(windows)
            for i, _, ids in picks:
                following = orders[i].shards_ahead(int(before[i]) * world + rank)
                ahead[i] = np.concatenate([windows[i].shards_of(ids), following])
            prefetch(ahead)
        for i, rows, ids in picks:
            if _contiguous(rows):  # a view: gathered in place
                windows[i].gather(ids, out[rows[0] : rows[-1] + 1])
            else:
                gathered = np.empty((len(rows), seq_len), dtype=dtype)
                windows[i].gather(ids, gathered)
                out[rows] = gathered
        yield out
        step += 1


def _contiguous(rows: np.ndarray) -> bool:
    return int(rows[-1]) - int(rows[0]) + 1 == len(rows)
