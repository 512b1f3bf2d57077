"""The stream planner: which records one consumer reads in an epoch, and in what order.

A pure function of (shard record counts, seed, epoch, rank, world_size, worker,
num_workers, shuffle, window, remainder): every process computes the same plan, with
no clock, pid, counter or Python ``hash()`` involved.

1. The shards are put in an order permuted per ``(seed, epoch)``; their records, laid
   end to end in that order, form the epoch's stream of ``N`` records.
2. Rank ``r`` gets the contiguous span ``[r*L, (r+1)*L)`` of that stream, so it touches
   about ``1/world_size`` of the shards (two of them shared with its neighbours).
   ``remainder="pad"`` (the default, like ``torch``'s ``DistributedSampler``) makes
   ``L = ceil(N / world_size)`` and wraps around to the start of the stream for the few
   extra records; ``"drop"`` makes ``L = N // world_size`` and leaves the tail out.
   Either way every rank gets exactly ``L`` records, so no rank waits on another.
3. DataLoader workers split their rank's span the same way, contiguously.
4. The consumer's span is a list of pieces (a shard and a range of its records). Runs of
   ``window`` consecutive pieces form a window, whose records are shuffled together.
   The shards of a window come from anywhere in the dataset (step 1), so consecutive
   records are usually far apart in storage; the window bounds how many shards must be
   cached at once.
5. A window is *staged*, so that its first records need only the first shard it
   downloads. Its pieces ``0..W-1`` (slots; step 6 adds one), in plan order, are also
   its download order. With ``n_j`` records in slot ``j`` and ``C_j = n_0 + ... +
   n_(j-1)``, slot ``j`` opens at position ``A_j = min(C_j, max(j, floor(C_j *
   STAGE_FRACTION)))`` of the window (so ``A_0 = 0``, each slot opens at least one
   position after the one before while records are left for it, and every slot is open after about
   ``STAGE_FRACTION`` of the window), and stage ``k`` is positions ``[A_k, A_(k+1))``
   (the last one ends at the window's end).
   Stage ``k`` takes its records from the open slots ``0..k`` in proportion to what
   each has left (largest remainders, ties to the lower slot: the expected composition
   of a uniform draw without replacement), and puts them in a keyed uniform order
   within the stage. The ``t``-th record slot ``j`` gives the window is its record
   ``(r_j + t*a_j) mod n_j`` (a keyed offset ``r_j`` and a golden-ratio stride ``a_j``
   coprime with ``n_j``), so the records a shard gives early are spread over all of it.
   Position ``p`` of a window therefore reads only slots ``0..k`` where ``A_k <= p``:
   a reader maps a shard when a block first reads one of its records (never before its
   stage), and the first record waits for one shard. With equal shards downloaded one
   after another, a reader that takes at least ``1 / STAGE_FRACTION`` times as long to
   read a window as to download it never waits after the first shard; a faster one
   waits at the stages instead of at the window's start. ``STAGE_FRACTION`` is 1/8:
   the windows keep 0.96 of a uniform permutation's mix (1/4 would keep 0.91, 1/2 0.79;
   ``tests/test_window_order.py`` and the README define the measure). Unshuffled
   windows are the same staging with ``STAGE_FRACTION`` 1: the pieces in order.

6. A shard's *head* (its first records, which a reader can have before the whole shard:
   :mod:`roxxel.manifest.heads`) leads its window. Of the window's first piece that has
   records in its shard's head (``heads[k]``: how many of shard ``k``'s first records its
   head holds, 0 for none), those ``g`` records become slot 0 and its others a slot in
   the piece's place; the other pieces keep their order. Slot 0 alone takes the first
   ``L = min(g, max(1, floor(n * STAGE_FRACTION)))`` positions (``n``: that piece's
   records; ``L`` is where that piece alone would end as a window's first piece), and
   every other slot opens where its piece opened in step 5, or at ``L`` if that is
   later. So the first record waits for a head rather than a whole shard. For the
   common window, whose first piece starts a shard with a head, the head's records take
   the positions that piece had alone and every other slot opens where it did; the mix
   of shards is the same. Unshuffled, only the window's first piece may lead, and the
   order is the pieces in order, as without heads. A window with no record in a head is
   as in step 5: a plan without heads is unchanged.

Memory is O(#shards + W) for windows of W slots, and a block of records costs O(block):
no window is ever materialized, so nothing is allocated for records a manifest claims
before their shard is mapped and checked. :meth:`Plan.records` starts at any position
in O(#shards) time, plus O(k*W) to reach stage ``k`` of its window, without replaying
the records before it. ``PLAN_VERSION`` names this order: a saved position means
something only under the order it was saved with.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from .permute import Permutation

__all__ = ["DEFAULT_WINDOW", "HEADS_PLAN_VERSION", "PLAN_VERSION", "STAGE_FRACTION", "Plan", "WindowLayout",
           "WindowOrder", "check_heads", "plan", "plan_version"]

DEFAULT_WINDOW = 16
# 2: staged windows (0.4); 1: each window one uniform permutation (0.4.0.dev before it)
PLAN_VERSION = 2
# 3: version 2 with heads leading windows (step 6): the version of a plan that has heads.
# A plan without heads is the same under both, and keeps version 2; a mixture's plan is
# version 3 where a source's is (roxxel.read.mixplan).
HEADS_PLAN_VERSION = 3
# Every slot of a window is open after this fraction of it (see the module docstring).
STAGE_FRACTION = (1, 8)
_REMAINDERS = ("pad", "drop")
_GOLDEN = (math.sqrt(5) - 1) / 2


@dataclass(frozen=True, eq=False)
class WindowLayout:
    """One window's records in stream order, materialized: record ``local[i]`` of shard
    ``shards[slot[i]]`` comes ``i``-th. ``shards`` are the window's slots' shards (its
    pieces' in download order, the head that leads it first: step 6; a shard may appear
    twice); slot ``j`` reads records ``first[j]:stop[j]`` of shard ``shards[j]``."""

    shards: np.ndarray
    first: np.ndarray
    stop: np.ndarray
    slot: np.ndarray
    local: np.ndarray


class WindowOrder:
    """The staged order of one window (see the module docstring, step 5), computed a
    range of positions at a time.

    ``shards[j]``, ``begin[j]`` and ``counts[j]`` are slot ``j``'s shard, first record and
    record count; ``stage_starts[k]`` is where stage ``k`` (and slot ``k``) opens, with
    the window's length last. Memory is O(W) for W slots, whatever the record counts;
    the stages' compositions are worked out in order, O(W) each, so reading a window
    from its start costs O(W^2) on top of O(1) per record, and starting at stage ``k``
    O(k*W).
    """

    def __init__(self, shards: np.ndarray, begin: np.ndarray, end: np.ndarray,
                 key: tuple[int, ...] | None, heads: np.ndarray | None = None) -> None:
        #: the window's piece of each slot: slot j reads piece piece[j]'s records (two
        #: slots read the piece whose shard's head leads the window: step 6)
        self.piece = np.arange(len(shards), dtype=np.int64)
        #: whether slot 0 reads only records of its shard's head (step 6)
        self.from_head = False
        self.key = key  # None: unshuffled
        num, den = STAGE_FRACTION if key is not None else (1, 1)
        counts = end - begin
        edges = np.zeros(len(shards) + 1, dtype=np.int64)
        np.cumsum(counts, out=edges[1:])
        self.size = int(edges[-1])
        starts = [min(c, max(j, c * num // den)) for j, c in enumerate(edges[:-1].tolist())] + [self.size]
        if heads is not None and len(shards):
            led = _led(shards, begin, counts, starts, heads, (num, den) if key is not None else None)
            if led is not None:
                self.piece, shards, begin, counts, starts = led
                self.from_head = True
        self.shards, self.begin, self.counts = shards, begin, counts
        w = len(shards)
        self.stage_starts = np.asarray(starts, dtype=np.int64)
        # (k, what each slot has left as stage k starts, slot k's records included)
        self._left: tuple[int, np.ndarray] = (0, self._opened(0, np.zeros(w, dtype=np.int64)))
        # stage k's tables: (k, its elements' slot edges, records each slot gave before it,
        # its permutation, lookup shift, lookup table)
        self._stage: _Stage | None = None
        self._ranked: np.ndarray | None = None  # see _ranked_order
        if key is not None and w:
            seq = np.random.SeedSequence([*key, 0])
            offsets = seq.generate_state(w, dtype=np.uint64) % np.maximum(self.counts, 1).astype(np.uint64)
            self._offset = offsets.astype(np.int64)
            self._stride = np.asarray([_stride(n) for n in self.counts.tolist()], dtype=np.int64)
        else:
            self._offset = np.zeros(w, dtype=np.int64)
            self._stride = np.ones(w, dtype=np.int64)

    def __len__(self) -> int:
        return self.size

    def stage_of(self, position: int) -> int:
        """The stage that window position ``position`` lies in: it reads slots ``0..stage``."""
        return int(np.searchsorted(self.stage_starts[:-1], position, side="right")) - 1

    def slots_from(self, position: int) -> np.ndarray:
        """The slots that give records to the stage of ``position`` or a later one,
        ascending: what a reader resuming at ``position`` may need."""
        if position >= self.size:
            return np.zeros(0, dtype=np.int64)
        k = self.stage_of(position)
        left = self._left_at(k).copy()
        left[k + 1 :] = self.counts[k + 1 :]
        return np.flatnonzero(left)

    def blocks(self, start: int, block: int) -> Iterator[tuple[int, int]]:
        """``(lo, hi)`` ranges covering ``[start, len)``: at most ``block`` long, never
        across a stage boundary (so a range needs no shard beyond its stage's)."""
        cuts = self.stage_starts.tolist()
        lo = start
        for hi_stage in cuts[1:]:
            while lo < hi_stage:
                hi = min(lo + block, hi_stage)
                yield lo, hi
                lo = hi

    def at(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(slot, local)`` of window positions ``lo..hi-1``: record ``local[i]`` of slot
        ``slot[i]``'s shard (a record number within the shard)."""
        parts = []
        k = max(self.stage_of(lo), 0)
        while lo < hi:
            a, b = int(self.stage_starts[k]), int(self.stage_starts[k + 1])
            stop = min(hi, b)
            if stop > lo:
                parts.append(self._in_stage(k, lo - a, stop - a))
                lo = stop
            k += 1
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([s for s, _ in parts]), np.concatenate([x for _, x in parts])

    # -- the stages' compositions, in order ----------------------------------------------

    def _opened(self, k: int, left: np.ndarray) -> np.ndarray:
        if k < len(left):
            left[k] = self.counts[k]
        return left

    def _share(self, k: int, left: np.ndarray) -> np.ndarray:
        """Records of each slot in stage ``k``, given what they have left as it starts:
        in proportion (largest remainders, ties to the lower slot)."""
        m = int(self.stage_starts[k + 1] - self.stage_starts[k])
        pool = int(left[: k + 1].sum())
        if m >= pool:
            return left.copy()
        share = np.zeros(len(left), dtype=np.int64)
        if m == 0:
            return share
        if int(left.max()) < (1 << 62) // m:
            share[: k + 1] = _apportion(left[: k + 1], m, pool)
        else:  # products beyond int64: Python integers
            share[: k + 1] = _apportion(np.asarray(left[: k + 1].tolist(), dtype=object), m, pool).astype(np.int64)
        return share

    def _left_at(self, k: int) -> np.ndarray:
        """What each slot has left as stage ``k`` starts (slots past ``k``: 0)."""
        at, left = self._left
        if at > k:
            at, left = 0, self._opened(0, np.zeros(len(self.counts), dtype=np.int64))
        while at < k:
            left = self._opened(at + 1, left - self._share(at, left))
            at += 1
        self._left = (at, left)
        return left

    def _tables(self, k: int) -> _Stage:
        stage = self._stage
        if stage is None or stage.k != k:
            stage = self._stage = self._make_stage(k)
        return stage

    def _make_stage(self, k: int) -> _Stage:
        left = self._left_at(k)
        m = int(self.stage_starts[k + 1] - self.stage_starts[k])
        share = self._share(k, left)
        real = np.flatnonzero(share)  # the slots this stage reads, ascending
        runs = share[real]  # the stage's elements are theirs in runs, slot by slot
        ends = np.cumsum(runs)
        before = (self.counts - left)[real]  # records each gave the stages before
        base = before - (ends - runs)  # element q is the (q + base)-th record its slot gives
        n = self.counts[real]
        stride = self._stride[real]
        fast = len(n) > 0 and (m + int(n.max())) * int(n.max()) < (1 << 62)
        # pick = (offset + (q + base) * stride) mod n = (q * stride + add) mod n
        add = (self._offset[real] + base * stride) % n if fast else base
        perm: Permutation | np.ndarray | None = None
        a = int(self.stage_starts[k])
        if self.key is None or m <= 1:
            pass
        elif a + m <= _RANKED:  # a stage of the window's first positions: its slice of the ranking
            perm = self._ranked_order()[a : a + m] - a
        else:
            perm = Permutation(m, [*self.key, 1, k])
        # Buckets of 2**shift elements, no longer than the shortest run, so that a bucket
        # holds one run boundary at most: the run of a bucket's first element, plus one for
        # the elements past its end. A binary search per record would cost more.
        shift = max(0, min(int(runs.min()).bit_length() - 1 if len(runs) else 0, 62))
        single = (m >> shift) <= _LOOKUP_ENTRIES
        if not single:  # a short run in a long stage: larger buckets, fixed up in passes
            shift = max(0, (m - 1).bit_length() - _LOOKUP_ENTRIES.bit_length() + 1)
        lut = np.searchsorted(ends, np.arange(0, m, 1 << shift, dtype=np.int64), side="right")
        return _Stage(k, real, ends, n, stride, add, self.begin[real], perm, shift, lut, single, fast)

    def _ranked_order(self) -> np.ndarray:
        """The stages in the window's first ``_RANKED`` positions, each ordered at once by
        ranking one window-wide keyed permutation within it (making a keyed permutation
        per stage, and evaluating it over a few records at a time, costs more)."""
        if self._ranked is None:
            ends = self.stage_starts[1:]
            head = int(ends[ends <= _RANKED].max(initial=0))  # whole stages only
            values = Permutation(self.size, [*self.key, 2])(np.arange(head, dtype=np.int64))  # type: ignore[misc]
            self._ranked = _rank_within(values, self.stage_starts[self.stage_starts <= head])
        return self._ranked

    def _in_stage(self, k: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """``(slot, local)`` of stage ``k``'s elements ``lo..hi-1``. The tables' lookups are
        ``take``s (every index is in range by construction: a fancy index costs about
        three times as much), and the arithmetic runs in place."""
        st = self._tables(k)
        if isinstance(st.perm, np.ndarray):
            q = st.perm[lo:hi]
        elif st.perm is not None:
            q = st.perm(np.arange(lo, hi, dtype=np.int64))
        else:
            q = np.arange(lo, hi, dtype=np.int64)
        tmp = np.right_shift(q, st.shift)
        run = st.lut.take(tmp, 0, None, "clip")
        if st.single:
            run += np.greater_equal(q, st.ends.take(run, 0, tmp, "clip"))
        else:
            over = q >= st.ends[run]
            while over.any():
                run += over
                over = q >= st.ends[run]
        if self.key is None:  # the pieces in order: base is the piece's first element
            pick = st.add.take(run, 0, tmp, "clip")
            pick += q
        elif st.fast:
            pick = st.stride.take(run, 0, tmp, "clip")
            pick *= q
            pick += st.add.take(run, 0, None, "clip")
            pick %= st.n.take(run, 0, None, "clip")
        else:  # beyond int64 products (10**9 records a shard): exact, slower
            pick = np.asarray([(int(o) + (int(i) + int(b)) * int(s)) % int(c) for o, i, b, s, c
                               in zip(self._offset[st.real[run]], q, st.add[run], st.stride[run], st.n[run])],
                              dtype=np.int64)
        pick += st.begin.take(run, 0, None, "clip")
        return st.real.take(run, 0, None, "clip"), pick


def _led(shards: np.ndarray, begin: np.ndarray, counts: np.ndarray, starts: list[int], heads: np.ndarray,
         fraction: tuple[int, int] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[int]] | None:
    """A window's slots led by a head (step 6), from its pieces (``shards``, ``begin``,
    ``counts``) and their stage starts (step 5, the window's size last): ``(piece,
    shards, begin, counts, starts)`` of the slots; None if no head leads it.
    ``fraction``: the stage fraction, None for an unshuffled window."""
    covered = np.minimum(begin + counts, heads[shards]) - begin  # each piece's records in its shard's head
    lead = np.flatnonzero(covered > 0)[:1] if fraction is not None else np.flatnonzero(covered[:1] > 0)
    if not len(lead):
        return None
    j, g, n = int(lead[0]), int(covered[lead[0]]), int(counts[lead[0]])
    num, den = fraction or (1, 1)
    first = min(g, min(n, max(1, n * num // den)))  # (where the piece alone would end)
    rest = [j] if g < n else []  # a slot for the piece's others, in its place
    piece = np.asarray([j, *range(j), *rest, *range(j + 1, len(shards))], dtype=np.int64)
    begin, counts = begin[piece], counts[piece]
    counts[0] = g
    if rest:
        begin[j + 1] += g
        counts[j + 1] -= g
    plain = np.asarray(starts[:-1], dtype=np.int64)
    return piece, shards[piece], begin, counts, [0, *np.maximum(plain[piece[1:]], first).tolist(), starts[-1]]


class _Stage(NamedTuple):
    """One stage's tables, per slot it reads (its runs of elements, in slot order)."""

    k: int
    real: np.ndarray  # the slot of each run
    ends: np.ndarray  # where each run of the stage's elements ends
    n: np.ndarray  # the slot's records in the window
    stride: np.ndarray
    add: np.ndarray  # the record number's constant term (fast), or base (not fast)
    begin: np.ndarray  # the slot's first record in its shard
    perm: Permutation | np.ndarray | None  # the stage's order (None: unshuffled or m <= 1)
    shift: int
    lut: np.ndarray  # the run of each bucket's first element
    single: bool  # one fix-up pass is enough
    fast: bool  # int64 products


_LOOKUP_ENTRIES = 1 << 16
_RANKED = 1 << 16  # the stages within a window's first _RANKED positions are ordered at once


def _rank_within(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """The positions ``cuts[k]..cuts[k+1]-1`` of each run ``k``, ordered by their
    ``values`` (distinct): ``np.lexsort((values, run of each position))``, a sort per
    run (several times faster than the lexsort)."""
    bounds = cuts.tolist()
    return np.concatenate([np.argsort(values[a:b]) + a for a, b in pairwise(bounds)] or
                          [np.zeros(0, dtype=np.int64)])


def _stride(n: int) -> int:
    """A stride coprime with ``n`` near ``n / golden ratio``: a walk of it spreads well."""
    if n <= 2:
        return 1
    a = max(1, round(n * _GOLDEN))
    while math.gcd(a, n) != 1:
        a += 1
    return a


def _apportion(left: np.ndarray, m: int, pool: int) -> np.ndarray:
    """``m`` split in proportion to ``left`` (which adds up to ``pool > m``)."""
    scaled = left * m
    share, remainder = scaled // pool, scaled % pool
    short = m - int(share.sum())
    if short:
        if remainder.dtype == object:
            rem = remainder.tolist()
            largest = sorted(range(len(rem)), key=lambda j: -rem[j])[:short]
        else:
            largest = np.argsort(-remainder, kind="stable")[:short]  # stable: ties to the lower slot
        share[largest] += 1
    return share


@dataclass(frozen=True, eq=False)
class Plan:
    """One consumer's epoch: its pieces of shards, its windows, and its record order.

    ``piece_shard[p]`` is the shard of piece ``p``, which covers that shard's records
    ``piece_begin[p]:piece_end[p]``. Window ``w`` is pieces
    ``window_starts[w]:window_starts[w+1]``, in download order.
    """

    num_records: int
    piece_shard: np.ndarray
    piece_begin: np.ndarray
    piece_end: np.ndarray
    window_starts: np.ndarray
    record_starts: np.ndarray  # of the dataset, len(#shards + 1)
    shuffle: bool
    key: tuple[int, ...]
    heads: np.ndarray | None = None  # each shard's records in its head (step 6), or None

    @property
    def shard_order(self) -> np.ndarray:
        """Shards in order of first use: the order to download them in."""
        _, first = np.unique(self.piece_shard, return_index=True)
        return self.piece_shard[np.sort(first)]

    @property
    def num_windows(self) -> int:
        return len(self.window_starts) - 1

    @cached_property
    def _window_edges(self) -> np.ndarray:
        counts = self.piece_end - self.piece_begin
        edges = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=edges[1:])
        return edges[self.window_starts]

    def window_sizes(self) -> np.ndarray:
        return np.diff(self._window_edges)

    def window_shards(self, w: int) -> np.ndarray:
        """The distinct shards window ``w`` reads, in download order (order of first use)."""
        a, b = self.window_starts[w], self.window_starts[w + 1]
        shards = self.piece_shard[a:b]
        _, first = np.unique(shards, return_index=True)
        return shards[np.sort(first)]

    def window_order(self, w: int) -> WindowOrder:
        """Window ``w``'s staged order (module docstring, step 5)."""
        a, b = int(self.window_starts[w]), int(self.window_starts[w + 1])
        key = (*self.key, w) if self.shuffle else None
        return WindowOrder(self.piece_shard[a:b], self.piece_begin[a:b], self.piece_end[a:b], key, self.heads)

    def window_records(self, w: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Global record indices of window ``w``'s positions ``lo..hi-1``, in stream order."""
        order = self.window_order(w)
        slot, local = order.at(lo, len(order) if hi is None else hi)
        return self.record_starts[order.shards[slot]] + local

    def window_layout(self, w: int) -> WindowLayout:
        """Window ``w``'s records in stream order, all at once; see :class:`WindowLayout`."""
        order = self.window_order(w)
        slot, local = order.at(0, len(order))
        return WindowLayout(order.shards, order.begin, order.begin + order.counts, slot, local)

    def records(self, start: int = 0) -> Iterator[np.ndarray]:
        """Global record indices from stream position ``start`` on, one array per window."""
        for _, ids in self.windows(start):
            yield ids

    def windows(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(window, global record indices)`` from stream position ``start`` on."""
        first, skip = self.locate(start)
        for window in range(first, self.num_windows):
            ids = self.window_records(window, skip)
            skip = 0
            if len(ids):
                yield window, ids

    def locate(self, start: int) -> tuple[int, int]:
        """The window holding stream position ``start``, and how far into it that is."""
        if not 0 <= start <= self.num_records:
            raise ValueError(f"start must be in [0, {self.num_records}], got {start}")
        edges = self._window_edges
        if len(edges) < 2:
            return 0, 0
        first = max(int(np.searchsorted(edges, start, side="right")) - 1, 0)
        return first, start - int(edges[first])  # past the last window at the very end


def _check_int(name: str, value: object, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)
def plan(
    counts: npt.ArrayLike,
    *,
    seed: int = 0,
    epoch: int = 0,
    rank: int = 0,
    world_size: int = 1,
    worker: int = 0,
    num_workers: int = 1,
    shuffle: bool = True,
    window: int = DEFAULT_WINDOW,
    remainder: str = "pad",
    reshuffle: int = 0,
    heads: npt.ArrayLike | None = None,
) -> Plan:
    """The plan of consumer ``(rank, worker)`` for ``epoch``; see the module docstring.

    ``reshuffle`` > 0 keeps the shards, pieces and windows and orders each window anew
    (it joins the windows' key): a mixture's ``"repeat"`` source reads its next pass so,
    every rank keeping its share of the shards. ``heads`` (one per shard, each at most
    its count; None: no shard has a head) are the records each shard's head holds:
    see step 6 (a manifest's ``shards.head_records``)."""
    seed, epoch = _check_int("seed", seed, 0), _check_int("epoch", epoch, 0)
    world_size = _check_int("world_size", world_size, 1)
    num_workers = _check_int("num_workers", num_workers, 1)
    window = _check_int("window", window, 1)
    if not 0 <= _check_int("rank", rank, 0) < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    if not 0 <= _check_int("worker", worker, 0) < num_workers:
        raise ValueError(f"worker must be in [0, {num_workers}), got {worker}")
    if remainder not in _REMAINDERS:
        raise ValueError(f"remainder must be 'pad' or 'drop', got {remainder!r}")
    counts = np.asarray(counts, dtype=np.int64)
    record_starts = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=record_starts[1:])
    total = int(record_starts[-1])
    heads = check_heads(heads, counts)

    order = np.arange(len(counts), dtype=np.int64)
    if shuffle and len(counts) > 1:
        order = Permutation(len(counts), [seed, epoch, 0])(order)
    per_rank = -(-total // world_size) if remainder == "pad" else total // world_size
    lo = rank * per_rank + (worker * per_rank) // num_workers
    hi = rank * per_rank + ((worker + 1) * per_rank) // num_workers
    shard, begin, end = _pieces(order, counts[order], lo, hi, total)
    window = min(window, max(len(shard), 1))  # a huge window is one window (no float rounding)
    window_starts = np.arange(0, len(shard) + window, window, dtype=np.int64)
    window_starts[-1] = len(shard)
    window_starts = np.unique(window_starts)
    if len(shard) == 0:
        window_starts = np.zeros(1, dtype=np.int64)
    return Plan(
        num_records=hi - lo,
        piece_shard=shard,
        piece_begin=begin,
        piece_end=end,
        window_starts=window_starts,
        record_starts=record_starts,
        shuffle=shuffle,
        key=(seed, epoch, 1, rank, world_size, worker, num_workers) + ((_check_int("reshuffle", reshuffle, 0),)
                                                                           if reshuffle else ()),
        heads=heads,
    )


def plan_version(heads: np.ndarray | None) -> int:
    """The version of a plan made with ``heads`` (a :class:`Plan`'s, None for none): the
    order a position saved from it counts in."""
    return PLAN_VERSION if heads is None else HEADS_PLAN_VERSION


def check_heads(heads: npt.ArrayLike | None, counts: np.ndarray) -> np.ndarray | None:
    """``heads`` as an int64 array (None if no shard has one); ValueError unless there is
    one per shard, each in ``[0, counts[k]]``."""
    if heads is None:
        return None
    heads = np.asarray(heads, dtype=np.int64)
    if heads.shape != counts.shape:
        raise ValueError(f"heads must hold one count per shard ({len(counts)}), got shape {heads.shape}")
    bad = np.flatnonzero((heads < 0) | (heads > counts))
    if len(bad):
        k = int(bad[0])
        raise ValueError(f"heads[{k}] must be in [0, {int(counts[k])}] (shard {k}'s records), got {int(heads[k])}")
    return heads if heads.any() else None


def _pieces(
    order: np.ndarray, ordered_counts: np.ndarray, lo: int, hi: int, total: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The (shard, begin, end) pieces covering stream positions [lo, hi), wrapping mod total."""
    if hi <= lo or total == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty, empty
    edges = np.zeros(len(order) + 1, dtype=np.int64)
    np.cumsum(ordered_counts, out=edges[1:])
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    while lo < hi:  # at most twice: a padded span wraps around once at most per lap
        a, b = lo % total, min(hi - lo, total - lo % total) + lo % total
        first = int(np.searchsorted(edges, a, side="right")) - 1
        last = int(np.searchsorted(edges, b, side="left"))
        idx = np.arange(first, last)
        begin = np.maximum(edges[idx], a) - edges[idx]
        end = np.minimum(edges[idx + 1], b) - edges[idx]
        keep = end > begin
        parts.append((order[idx][keep], begin[keep], end[keep]))
        lo += b - a
    return tuple(np.concatenate(col) for col in zip(*parts))  # type: ignore[return-value]

