"""The plan of one consumer of a mixture: which record of which source at each position.

A pure function of (the sources' shard record counts and keys, the integer weights, the
policies, the mixture seed, the epoch, the topology, ``samples``, ``shuffle``,
``window``, ``remainder``), like :func:`roxxel.planner.plan`:

1. Every consumer (rank x DataLoader worker) reads the same :class:`Schedule` of sources:
   position ``t`` reads source ``s = schedule(t)``, and it is the ``k``-th time the
   consumer reads ``s``, ``k = c_s(t)`` (how often ``s`` comes before ``t``).
2. The consumer's records of source ``s`` are that source's own plan for the consumer
   (:func:`roxxel.planner.plan` with the same rank, world size, worker and worker count,
   window and remainder), pass after pass: its ``k``-th is record ``k mod n`` of pass
   ``k // n``, where ``n`` is how many records the consumer's plan of ``s`` holds. Each
   pass is planned with a seed of its own, derived from (mixture seed, the source's key,
   epoch, pass); the key comes from the source's manifest, so adding, removing or
   reweighting other sources does not change a source's order. Ranks and workers get
   disjoint parts of every pass, and each rank's parts are about ``1/world_size`` of the
   source's shards, as with ``ds.iter``.
3. The epoch ends after ``L`` positions: where the first ``"stop"`` source would start a
   second pass (for the consumer of that source with the fewest records per pass, so
   that every consumer stops at the same position), or after the consumer's share of
   ``samples`` (split over ranks and workers as ``ds.iter`` splits records: ``"pad"``
   rounds the per-rank share up, ``"drop"`` down), whichever comes first. ``"repeat"``
   sources never end it.

A position's record is found in O(S) from the schedule's period table, plus the source
pass's plan (O(#shards)), so a plan resumes anywhere without replaying its positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..planner import Plan, WindowOrder, plan, plan_version
from .schedule import Schedule

__all__ = ["MixSource", "MixturePlan"]


@dataclass(frozen=True, eq=False)
class MixSource:
    """What the planner needs of a source: its shards' record counts, its key (from its
    manifest fingerprint), its policy, and the records in each shard's head (None: none,
    or a plan of version 2; see :mod:`roxxel.planner`, step 6)."""

    counts: np.ndarray
    key: int
    policy: str
    heads: np.ndarray | None = None

    @property
    def records(self) -> int:
        return int(self.counts.sum())


@dataclass(frozen=True)
class Topology:
    rank: int
    world_size: int
    worker: int
    num_workers: int


class MixturePlan:
    """Consumer ``topology``'s plan of ``epoch`` (see the module docstring).

    ``base`` are the records of each source the consumer had read before this plan's
    position 0 (a continuation with changed weights or sources: see :class:`Mixture`'s
    ``resume``); the epoch's length is then what is left.

    After an elastic resume (another topology: :mod:`roxxel.read.elastic`), ``first[i]``
    is what source ``i``'s plan gives this consumer of what the job's earlier
    ``generation``s left of the source's first pass (None: nothing, a ``"repeat"``
    source, which starts a pass of its own, its windows keyed by the generation too),
    read before the source's passes; ``fewest[i]`` the fewest records any consumer's
    ``first[i]`` holds (where a ``"stop"`` source ends the epoch).

    A source's records are read in *segments*: ``first`` (segment -1), then its passes
    (segment ``p`` for pass ``p``), each in windows.
    """

    def __init__(
        self,
        sources: list[MixSource],
        schedule: Schedule,
        *,
        seed: int,
        epoch: int,
        topology: Topology,
        samples: int | None,
        shuffle: bool,
        window: int,
        remainder: str,
        base: np.ndarray | None = None,
        done: int = 0,
        first: Sequence[Any | None] | None = None,
        fewest: Sequence[int | None] | None = None,
        generation: int = 0,
    ) -> None:
        self.sources, self.schedule = sources, schedule
        self.seed, self.epoch, self.topology = seed, epoch, topology
        self.shuffle, self.window, self.remainder = shuffle, window, remainder
        self.generation = generation
        self.base = np.zeros(len(sources), dtype=np.int64) if base is None else np.asarray(base, dtype=np.int64)
        # each source's plan (every pass has its pieces and windows), and the window orders in
        # use, a few per source (a block reads each many times; a tiny source goes through
        # many passes, whose orders must not push out a large source's)
        t = topology
        self._plans = [plan(src.counts, seed=pass_seed(seed, src.key, epoch, 0), rank=t.rank,
                            world_size=t.world_size, worker=t.worker, num_workers=t.num_workers,
                            shuffle=shuffle, window=window, remainder=remainder, heads=src.heads)
                       for src in sources]
        #: the plan's version (:func:`roxxel.planner.plan_version`): 3 if a source's heads lead
        self.version = max(plan_version(p.heads) for p in self._plans)
        self.first = list(first) if first is not None else [None] * len(sources)
        self.first_len = np.asarray([0 if f is None else f.num_records for f in self.first], dtype=np.int64)
        self._orders: list[dict[tuple[int, int], Any]] = [{} for _ in sources]
        self._windows: dict[tuple[int, bool], tuple[np.ndarray, list[np.ndarray]]] = {}
        self.per_pass = np.asarray([p.num_records for p in self._plans], dtype=np.int64)
        for i, n in enumerate(self.per_pass.tolist()):
            if n == 0:
                raise ValueError(
                    f"source {i} has {sources[i].records} records: fewer than one for consumer "
                    f"(rank {topology.rank}, worker {topology.worker}) of {topology.world_size} ranks x "
                    f"{topology.num_workers} workers"
                )
        self.length = self._length(samples, done, fewest)

    def _length(self, samples: int | None, done: int, fewest: Sequence[int | None] | None) -> int:
        topo, ends = self.topology, []
        for i, src in enumerate(self.sources):
            if src.policy != "stop":
                continue
            most = fewest[i] if fewest is not None and fewest[i] is not None else \
                _fewest_per_pass(src.records, topo.world_size, topo.num_workers, self.remainder)
            left = int(most) - int(self.base[i])
            ends.append(0 if left <= 0 else self.schedule.position_of(i, left))
        if samples is not None:
            per_rank = -(-samples // topo.world_size) if self.remainder == "pad" else samples // topo.world_size
            lo = (topo.worker * per_rank) // topo.num_workers
            hi = ((topo.worker + 1) * per_rank) // topo.num_workers
            ends.append(max(0, hi - lo - done))
        if not ends:
            raise ValueError("a mixture whose sources all repeat needs samples= (the records of an epoch)")
        return min(ends)

    def pass_plan(self, i: int, pass_: int = 0) -> Plan:
        """The consumer's plan of source ``i``: the same pieces and windows in every pass
        (:meth:`window_order` gives a pass's order of a window)."""
        return self._plans[i]

    # -- segments: the first (after an elastic resume), then the passes -----------------

    def segment(self, i: int, k: int) -> tuple[int, int]:
        """Where source ``i``'s ``k``-th record (from 0) lies: (segment, position in it)."""
        e = int(self.first_len[i])
        if k < e:
            return -1, k
        return divmod(k - e, int(self.per_pass[i]))

    def locate(self, i: int, k: int) -> tuple[int, int, int]:
        """Where source ``i``'s ``k``-th record lies: (segment, window, position in the window)."""
        seg, off = self.segment(i, k)
        starts, _ = self.windows_of(i, seg)
        w = int(np.searchsorted(starts, off, side="right")) - 1
        return seg, w, off - int(starts[w])

    def segment_start(self, i: int, seg: int) -> int:
        """How many of source ``i``'s records come before segment ``seg``."""
        return 0 if seg < 0 else int(self.first_len[i]) + seg * int(self.per_pass[i])

    def next_segment(self, i: int, seg: int) -> int:
        return 0 if seg < 0 else seg + 1

    def windows_of(self, i: int, seg: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
        """Where each window of source ``i``'s segment ``seg`` starts (positions within
        it, its length last) and each window's shards, in download order (the same for
        every pass)."""
        first = seg < 0
        got = self._windows.get((i, first))
        if got is None:
            p = self.first[i] if first else self._plans[i]
            starts = np.zeros(p.num_windows + 1, dtype=np.int64)
            np.cumsum(p.window_sizes(), out=starts[1:])
            got = self._windows[(i, first)] = (starts, [p.window_shards(w) for w in range(p.num_windows)])
        return got

    def window_order(self, i: int, seg: int, w: int) -> Any:
        """Window ``w``'s staged order in source ``i``'s segment ``seg`` (a pass: as the
        planner's ``reshuffle`` orders it; the first segment: as its elastic plan does)."""
        held = self._orders[i]
        order = held.get((seg, w))
        if order is None:
            if len(held) >= _ORDERS_KEPT:
                del held[next(iter(held))]
            if seg < 0:
                order = self.first[i].window_order(w)
            else:
                p = self._plans[i]
                a, b = int(p.window_starts[w]), int(p.window_starts[w + 1])
                turn = seg + (self.generation << 32 if self.first[i] is None and self.generation else 0)
                key = (*p.key, *((turn,) if turn else ()), w) if p.shuffle else None
                order = WindowOrder(p.piece_shard[a:b], p.piece_begin[a:b], p.piece_end[a:b], key, p.heads)
            held[(seg, w)] = order
        return order

    def consumed(self, t: int) -> np.ndarray:
        """Records of each source read before position ``t`` (the base included)."""
        return self.base + self.schedule.counts(t)

    def records(self, lo: int, hi: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """The sources of positions ``lo..hi-1``, and for each source the source-local
        record indices those positions read, in order (a pure function of the plan)."""
        srcs = self.schedule.sources(lo, hi)
        first = self.consumed(lo)
        out = []
        for i in range(len(self.sources)):
            m = int(np.count_nonzero(srcs == i))
            out.append(self.take(i, int(first[i]), m))
        return srcs, out

    def take(self, i: int, k: int, m: int) -> np.ndarray:
        """Source ``i``'s records ``k..k+m-1`` of this consumer (across segments)."""
        parts = []
        record_starts = self._plans[i].record_starts
        while m > 0:
            seg, off = self.segment(i, k)
            starts, _ = self.windows_of(i, seg)
            w = int(np.searchsorted(starts, off, side="right")) - 1
            skip = off - int(starts[w])
            step = min(m, int(starts[w + 1]) - off)
            order = self.window_order(i, seg, w)
            slot, local = order.at(skip, skip + step)
            parts.append(record_starts[order.shards[slot]] + local)
            k, m = k + step, m - step
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


_ORDERS_KEPT = 8  # window orders kept per source


def _fewest_per_pass(records: int, world_size: int, num_workers: int, remainder: str) -> int:
    per_rank = -(-records // world_size) if remainder == "pad" else records // world_size
    return per_rank // num_workers


def pass_seed(seed: int, key: int, epoch: int, pass_: int) -> int:
    """The planner seed of one source's pass: a pure function, never Python's hash()."""
    state = np.random.SeedSequence([seed, key, epoch, pass_, 0x6D6978]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) | (int(state[1]) >> 1)
