"""Token streams over a mixture: the weights applied to token windows.

Each source is cut into windows of ``seq_len`` tokens as :mod:`roxxel.read.tokens` cuts a
dataset, with an endless seeded order of its own (the order ``ds.stream`` gives it, keyed
by the mixture seed and the source's key). The job's samples are numbered globally, as
``ds.stream`` numbers them: step ``s`` of rank ``r`` of ``W`` is samples
``start_sample + (s*W + r)*batch_size`` on, ``batch_size`` of them. Global sample ``g``
comes from source ``schedule(g)`` (the mixture's schedule of sources), and the ``k``-th
sample of source ``i`` is sample ``k`` of that source's order. So every batch is a run of
the schedule and carries the weights (each source within less than 2 of its share), ranks
take disjoint windows of every source, and any step is computed from its number alone
(the schedule's counts are a closed form): resuming at ``start_step`` costs O(#shards +
batch), and a job whose ranks have all taken ``s`` steps continues on any world size and
batch size from ``start_sample + s*W*batch_size``, as ``ds.stream`` does. An epoch is the
samples before the first ``"stop"`` source would start its second pass over its windows;
a stream of ``E`` epochs is ``(E * epoch - start_sample) // (batch_size * W)`` steps on
every rank. Rows of a batch that come from one source are in ascending window order
(they are interchangeable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .schedule import Schedule
from .tokens import TokenWindows, _check_stream_arguments, _EpochOrder, ask_lead

__all__ = ["mixture_batches", "stream_length"]


def stream_length(schedule: Schedule, windows: list[TokenWindows], policies: tuple[str, ...]) -> int:
    """Samples in one epoch of the job's stream (see the module docstring); 0: endless."""
    ends = []
    for i, (w, policy) in enumerate(zip(windows, policies)):
        if len(w) == 0:
            raise ValueError(f"source {i} has no complete window of {w.seq_len} {w.dtype} tokens")
        if policy == "stop":
            ends.append(schedule.position_of(i, len(w)))
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
    start_sample: int = 0,
    prefetch: Callable[[list[np.ndarray]], None] | None = None,
    lead: Callable[[int, int], Callable[[], np.ndarray | None] | None] | None = None,
) -> Iterator[np.ndarray]:
    """``(batch_size, seq_len)`` batches of rank ``shard[0]`` from ``start_step`` on, for
    ``steps`` steps in all (None: endless). ``prefetch`` gets, before each batch is
    gathered, each source's shards that its next samples read. ``lead(i, k)``, if given,
    is called first for each source ``i`` whose samples in the first batch all lie in the
    head of its shard ``k`` that leads their group (as ``token_batches``' ``lead``)."""
    _check_stream_arguments(batch_size, 0, start_step, None)
    if isinstance(start_sample, bool) or not isinstance(start_sample, (int, np.integer)) or start_sample < 0:
        raise ValueError(f"start_sample must be an integer >= 0, got {start_sample!r}")
    rank, world = shard
    orders = [_EpochOrder(np.diff(w.starts), seed, heads=w.head_windows) for w, seed in zip(windows, seeds)]
    seq_len, dtype = windows[0].seq_len, windows[0].dtype
    step = start_step
    if lead is not None and (steps is None or step < steps):  # each source's first samples, from its head?
        g0 = int(start_sample) + (step * world + rank) * batch_size
        before, srcs = schedule.counts(g0), schedule.sources(g0, g0 + batch_size)
        for i in np.unique(srcs).tolist():
            first = int(before[i])
            picked = orders[i].windows(first, int(np.count_nonzero(srcs == i)))
            ask_lead(windows[i], orders[i], first, picked, lambda k, i=i: lead(i, k))
    while steps is None or step < steps:
        g0 = int(start_sample) + (step * world + rank) * batch_size
        srcs = schedule.sources(g0, g0 + batch_size)
        before = schedule.counts(g0)
        out = np.empty((batch_size, seq_len), dtype=dtype)
        picks = []
        for i in range(len(windows)):
            rows = np.flatnonzero(srcs == i)
            if len(rows):
                picks.append((i, rows, np.sort(orders[i].windows(int(before[i]), len(rows)))))
        if prefetch is not None:
            ahead = [np.zeros(0, dtype=np.int64)] * len(windows)
            for i, rows, ids in picks:
                following = orders[i].shards_ahead(int(before[i]) + len(rows))
                ahead[i] = np.concatenate([windows[i].shards_of(ids), following])
            prefetch(ahead)
        for i, rows, ids in picks:
            if int(rows[-1]) - int(rows[0]) + 1 == len(rows):  # a run of rows: gathered in place
                windows[i].gather(ids, out[rows[0] : rows[-1] + 1])
            else:
                gathered = np.empty((len(rows), seq_len), dtype=dtype)
                windows[i].gather(ids, gathered)
                out[rows] = gathered
        yield out
        step += 1
