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

from dataclasses import dataclass

import numpy as np

from ..planner import Plan, WindowOrder, plan
from .schedule import Schedule

__all__ = ["MixSource", "MixturePlan"]


@dataclass(frozen=True, eq=False)
class MixSource:
    """What the planner needs of a source: its shards' record counts, its key (from its
    manifest fingerprint) and its policy."""

    counts: np.ndarray
    key: int
    policy: str

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
    ) -> None:
        self.sources, self.schedule = sources, schedule
        self.seed, self.epoch, self.topology = seed, epoch, topology
        self.shuffle, self.window, self.remainder = shuffle, window, remainder
        self.base = np.zeros(len(sources), dtype=np.int64) if base is None else np.asarray(base, dtype=np.int64)
        # each source's plan (every pass has its pieces and windows), and the window orders in
        # use, a few per source (a block reads each many times; a tiny source goes through
        # many passes, whose orders must not push out a large source's)
        t = topology
        self._plans = [plan(src.counts, seed=pass_seed(seed, src.key, epoch, 0), rank=t.rank,
                            world_size=t.world_size, worker=t.worker, num_workers=t.num_workers,
                            shuffle=shuffle, window=window, remainder=remainder) for src in sources]
        self._orders: list[dict[tuple[int, int], WindowOrder]] = [{} for _ in sources]
        self._windows: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}
        self.per_pass = np.asarray([p.num_records for p in self._plans], dtype=np.int64)
        for i, n in enumerate(self.per_pass.tolist()):
            if n == 0:
                raise ValueError(
                    f"source {i} has {sources[i].records} records: fewer than one for consumer "
                    f"(rank {topology.rank}, worker {topology.worker}) of {topology.world_size} ranks x "
                    f"{topology.num_workers} workers"
                )
        self.length = self._length(samples, done)

    def _length(self, samples: int | None, done: int) -> int:
        topo, ends = self.topology, []
        for i, src in enumerate(self.sources):
            if src.policy != "stop":
                continue
            fewest = _fewest_per_pass(src.records, topo.world_size, topo.num_workers, self.remainder)
            left = fewest - int(self.base[i])
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

    def windows_of(self, i: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """Where each window of source ``i``'s passes starts (positions within a pass, the
        pass's length last) and each window's shards, in download order: the same in
        every pass."""
        got = self._windows.get(i)
        if got is None:
            p = self.pass_plan(i, 0)
            starts = np.zeros(p.num_windows + 1, dtype=np.int64)
            np.cumsum(p.window_sizes(), out=starts[1:])
            got = self._windows[i] = (starts, [p.window_shards(w) for w in range(p.num_windows)])
        return got

    def window_order(self, i: int, pass_: int, w: int) -> WindowOrder:
        """Window ``w``'s staged order in source ``i``'s pass ``pass_`` (as the planner's
        ``reshuffle=pass_`` orders it)."""
        held = self._orders[i]
        order = held.get((pass_, w))
        if order is None:
            if len(held) >= _ORDERS_KEPT:
                del held[next(iter(held))]
            p = self._plans[i]
            a, b = int(p.window_starts[w]), int(p.window_starts[w + 1])
            key = (*p.key, *((pass_,) if pass_ else ()), w) if p.shuffle else None
            order = held[(pass_, w)] = WindowOrder(p.piece_shard[a:b], p.piece_begin[a:b], p.piece_end[a:b], key)
        return order

    def consumed(self, t: int) -> np.ndarray:
        """Records of each source read before position ``t`` (the base included)."""
        return self.base + self.schedule.counts(t)

    def records(self, lo: int, hi: int) -> tuple[np.ndarray, list[np.ndarray]]:
        """The sources of positions ``lo..hi-1``, and for each source the source-local
        record indices those positions read, in order (a pure function: see
        :meth:`sources_at` for the source of each)."""
        srcs = self.schedule.sources(lo, hi)
        first = self.consumed(lo)
        out = []
        for i in range(len(self.sources)):
            m = int(np.count_nonzero(srcs == i))
            out.append(self.take(i, int(first[i]), m))
        return srcs, out

    def take(self, i: int, k: int, m: int) -> np.ndarray:
        """Source ``i``'s records ``k..k+m-1`` of this consumer (across passes)."""
        n = int(self.per_pass[i])
        parts = []
        while m > 0:
            pass_, off = divmod(k, n)
            step = min(m, n - off)
            parts.extend(self._records_of(i, pass_, off, off + step))
            k, m = k + step, m - step
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def _records_of(self, i: int, pass_: int, lo: int, hi: int) -> list[np.ndarray]:
        """Positions ``lo..hi-1`` of source ``i``'s pass as the source's record indices."""
        p = self.pass_plan(i, pass_)
        sizes = p.window_sizes()
        out = []
        w, skip = p.locate(lo)
        at = lo
        while at < hi and w < p.num_windows:
            end = min(int(sizes[w]), skip + hi - at)
            order = self.window_order(i, pass_, w)
            slot, local = order.at(skip, end)
            out.append(p.record_starts[order.shards[slot]] + local)
            at += end - skip
            w, skip = w + 1, 0
        return out


_ORDERS_KEPT = 8  # window orders kept per source


def _fewest_per_pass(records: int, world_size: int, num_workers: int, remainder: str) -> int:
    per_rank = -(-records // world_size) if remainder == "pad" else records // world_size
    return per_rank // num_workers


def pass_seed(seed: int, key: int, epoch: int, pass_: int) -> int:
    """The planner seed of one source's pass: a pure function, never Python's hash()."""
    state = np.random.SeedSequence([seed, key, epoch, pass_, 0x6D6978]).generate_state(2, np.uint32)
    return (int(state[0]) << 31) | (int(state[1]) >> 1)
