"""Elastic resume: the rest of an epoch, re-partitioned over another topology.

A pure function of the planner's inputs (shard record counts, seed, epoch, shuffle,
window, remainder) and of the job's *generations*: the topologies it ran on this epoch,
each with the position every consumer of it had reached. Nothing here reads data.

**Streams.** Generation 0 reads the epoch's stream ``S_0`` as :mod:`roxxel.planner`
plans it. Consumer ``c`` of a topology reads the span ``[lo_c, hi_c)`` of the padded
stream (positions ``x >= R`` of a stream of ``R`` records, the ``"pad"`` wrap, read
position ``x - R``), cut into pieces and windows as the planner does. What consumer ``c``
has read at position ``p`` is the windows before its current window and the first
``skip`` positions of that window in its staged order. What it has left is the rest of
that window (explicit records, at most one window's) and the positions of its span after
that window. Generation ``g+1`` reads the stream ``S_(g+1)``: every consumer's
remainder, consumers in order (rank-major, then worker), *without* the pad positions
(``x >= R``): they repeat records that are read, or left, at their real positions.
``S_(g+1)`` is a list of segments: runs of the epoch's stream (contiguous records of
shards) and loose records (a window's rest); O(#consumers) runs and at most
#consumers windows' records loose.

The new generation splits ``S_(g+1)`` exactly as the planner splits ``S_0``: contiguous
spans of equal length per rank (``"pad"`` wraps around, ``"drop"`` leaves the tail),
workers within a rank contiguously, each span's runs cut into pieces at shard boundaries
and grouped into windows of ``window`` pieces (a span's loose segment is a window of its
own), each window in the planner's staged order keyed by the new topology and the
generation. So a new rank downloads about ``1/W'`` of the remaining shards.

**Guarantee.** Read the positions of every generation in order: every record of the
epoch is read at exactly one *real* position (``x < R`` in its generation), except the
``R_g - W_g * floor(R_g / W_g)`` records at the end of ``S_g`` that ``"drop"`` leaves out
(``R_0 = N``, the epoch's records). With ``"pad"``, the only other records read are the
pad positions: at most ``W_g * ceil(R_g / W_g) - R_g`` (fewer than ``W_g``) in generation
``g``, all of them read if the last generation reads to the end.

**Cost.** The stream's shard order is O(#shards); a consumer's remainder costs O(its
pieces), and the rest of its window (O(one window's records)) is computed only when a
consumer of the next generation reads it (:class:`Loose`; a window across the pad wrap is
computed at once, to count its real records). So planning a new consumer costs
O(#shards + consumers of every earlier generation) plus the window rests it reads. A
resume recomputes every earlier generation: state and time grow with the number of
generations in the epoch (a generation where nothing was read is dropped: :func:`fold`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import ResumeError
from ..permute import Permutation
from ..planner import WindowOrder, check_heads

__all__ = ["ConsumerPlan", "Generation", "Loose", "LooseOrder", "Segments", "consumer_plan", "consumers_of", "elastic_plan", "fold",
           "remaining", "span"]

# Window keys of generations after the first: (seed, epoch, _ELASTIC, generation, ...)
_ELASTIC = 3


def span(total: int, rank: int, world_size: int, worker: int, num_workers: int, remainder: str) -> tuple[int, int]:
    """Consumer ``(rank, worker)``'s positions ``[lo, hi)`` of a stream of ``total``
    records (padded coordinates: ``x >= total`` reads position ``x - total``), as the
    planner splits it."""
    per_rank = -(-total // world_size) if remainder == "pad" else total // world_size
    lo = rank * per_rank + (worker * per_rank) // num_workers
    hi = rank * per_rank + ((worker + 1) * per_rank) // num_workers
    return lo, hi


@dataclass(frozen=True)
class Generation:
    """A topology the job ran on, and each consumer's position in it (consumer
    ``rank * num_workers + worker``)."""

    world_size: int
    num_workers: int
    positions: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "num_workers": self.num_workers,
                "positions": list(self.positions)}

    @classmethod
    def from_dict(cls, data: Any, where: str = "generation") -> Generation:
        if isinstance(data, Generation):
            return data
        if not isinstance(data, dict) or set(data) != {"world_size", "num_workers", "positions"}:
            got = sorted(data) if isinstance(data, dict) else type(data).__name__
            raise ResumeError(f"{where} must have the keys ['num_workers', 'positions', 'world_size'], got {got}")
        for name in ("world_size", "num_workers"):
            value = data[name]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ResumeError(f"{where} field {name!r} must be an integer >= 1, got {value!r}")
        positions = data["positions"]
        consumers = data["world_size"] * data["num_workers"]
        if not isinstance(positions, (list, tuple)) or len(positions) != consumers:
            raise ResumeError(f"{where} field 'positions' must list {consumers} positions, got {positions!r}"[:300])
        for p in positions:
            if isinstance(p, bool) or not isinstance(p, int) or p < 0:
                raise ResumeError(f"{where} field 'positions' must hold integers >= 0, got {p!r}")
        return cls(data["world_size"], data["num_workers"], tuple(positions))


class EpochStream:
    """The epoch's non-empty shards in stream order and where each starts: O(#shards)."""

    def __init__(self, counts: npt.ArrayLike, seed: int, epoch: int, shuffle: bool,
                 heads: np.ndarray | None = None) -> None:
        counts = np.asarray(counts, dtype=np.int64)
        self.heads = heads  # records in each shard's head (roxxel.planner, step 6), or None
        self.record_starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.record_starts[1:])
        order = np.arange(len(counts), dtype=np.int64)
        if shuffle and len(counts) > 1:  # the planner's order (roxxel.planner.plan)
            order = Permutation(len(counts), [seed, epoch, 0])(order)
        self.order = order[counts[order] > 0]
        self.edges = np.zeros(len(self.order) + 1, dtype=np.int64)
        np.cumsum(counts[self.order], out=self.edges[1:])
        self.total = int(self.edges[-1])

    def pieces(self, a: int, b: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(shard, begin, end)`` of the stream's positions ``[a, b)``, cut at shards."""
        first = int(np.searchsorted(self.edges, a, side="right")) - 1
        last = int(np.searchsorted(self.edges, b, side="left"))
        idx = np.arange(first, last)
        begin = np.maximum(self.edges[idx], a) - self.edges[idx]
        end = np.minimum(self.edges[idx + 1], b) - self.edges[idx]
        return self.order[idx], begin, end


class Loose:
    """Loose records: ``ids[start:stop]`` of an array of global record ids computed when
    first needed (the rest of a consumer's window), so that a resume materializes only
    the rests that the consumer it plans reads."""

    def __init__(self, compute: Callable[[], np.ndarray] | np.ndarray, start: int = 0, stop: int | None = None) -> None:
        self._source: list[Any] = [compute]  # shared by slices: computed once
        self.start = start
        self.stop = len(compute) if stop is None else stop  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, cut: slice) -> Loose:
        view = Loose.__new__(Loose)
        view._source, view.start, view.stop = self._source, self.start + cut.start, self.start + cut.stop
        return view

    def ids(self) -> np.ndarray:
        if not isinstance(self._source[0], np.ndarray):
            self._source[0] = np.asarray(self._source[0](), dtype=np.int64)
        return self._source[0][self.start : self.stop]


Segment = tuple[int, int] | Loose  # a run [a, b) of the epoch's stream, or loose record ids


class Segments:
    """A stream made of segments, in order: runs of the epoch's stream and loose records.
    Adjacent runs are merged; empty segments dropped."""

    def __init__(self, items: Sequence[Segment]) -> None:
        kept: list[Segment] = []
        for item in items:
            if isinstance(item, tuple):
                if item[1] <= item[0]:
                    continue
                if kept and isinstance(kept[-1], tuple) and kept[-1][1] == item[0]:
                    kept[-1] = (kept[-1][0], item[1])
                    continue
            elif len(item) == 0:
                continue
            kept.append(item)
        self.items = kept
        lengths = [b - a if isinstance(s, tuple) else len(s) for s in kept for a, b in [_bounds(s)]]
        self.edges = np.zeros(len(kept) + 1, dtype=np.int64)
        np.cumsum(np.asarray(lengths, dtype=np.int64), out=self.edges[1:])
        self.total = int(self.edges[-1])

    @property
    def loose(self) -> int:
        """How many records the loose segments hold."""
        return sum(len(s) for s in self.items if not isinstance(s, tuple))

    def slice(self, a: int, b: int) -> Iterator[Segment]:
        """The segments of positions ``[a, b)`` (``0 <= a <= b <= total``), cut to fit."""
        i = max(int(np.searchsorted(self.edges, a, side="right")) - 1, 0)
        while a < b and i < len(self.items):
            start, item = int(self.edges[i]), self.items[i]
            lo, hi = a - start, min(b, int(self.edges[i + 1])) - start
            yield (item[0] + lo, item[0] + hi) if isinstance(item, tuple) else item[lo:hi]
            a = start + hi
            i += 1

    def records(self, starts: np.ndarray, order: np.ndarray, edges: np.ndarray) -> np.ndarray:
        """Global ids of every record, in stream order (for tests: O(records))."""
        out = []
        for item in self.items:
            if isinstance(item, tuple):
                for k, b, e in zip(*_run_pieces(order, edges, *item)):
                    out.append(np.arange(starts[k] + b, starts[k] + e))
            else:
                out.append(item.ids())
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _bounds(item: Segment) -> tuple[int, int]:
    return item if isinstance(item, tuple) else (0, len(item))


def _run_pieces(order: np.ndarray, edges: np.ndarray, a: int, b: int) -> tuple[np.ndarray, ...]:
    first = int(np.searchsorted(edges, a, side="right")) - 1
    last = int(np.searchsorted(edges, b, side="left"))
    idx = np.arange(first, last)
    return order[idx], np.maximum(edges[idx], a) - edges[idx], np.minimum(edges[idx + 1], b) - edges[idx]


class LooseOrder:
    """The staged order of a window of loose records (global ``ids``), shaped like a
    :class:`~roxxel.planner.WindowOrder`: slot ``j`` is shard ``shards[j]`` (shards in
    order of first appearance), and :meth:`at` gives record numbers within the shard.
    ``begin[j]``/``counts[j]`` bound the records slot ``j`` reads (its lowest to highest)."""

    def __init__(self, ids: np.ndarray, record_starts: np.ndarray, key: tuple[int, ...] | None) -> None:
        shard = np.searchsorted(record_starts, ids, side="right") - 1
        local = ids - record_starts[shard]
        uniq, first, slot_of = np.unique(shard, return_index=True, return_inverse=True)
        rank = np.empty(len(uniq), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(uniq))
        slot_of = rank[slot_of]
        by = np.lexsort((local, slot_of))
        self._local = local[by]
        sizes = np.bincount(slot_of, minlength=len(uniq))
        edges = np.zeros(len(uniq) + 1, dtype=np.int64)
        np.cumsum(sizes, out=edges[1:])
        self.shards = uniq[np.argsort(first, kind="stable")]
        self._inner = WindowOrder(self.shards, edges[:-1], edges[1:], key)
        self.begin = self._local[edges[:-1]] if len(ids) else np.zeros(0, dtype=np.int64)
        self.counts = self._local[edges[1:] - 1] + 1 - self.begin if len(ids) else np.zeros(0, dtype=np.int64)
        self.size = len(ids)
        self.stage_starts = self._inner.stage_starts
        self.piece, self.from_head = self._inner.piece, False  # (no heads: see roxxel.planner, step 6)

    def __len__(self) -> int:
        return self.size

    def stage_of(self, position: int) -> int:
        return self._inner.stage_of(position)

    def slots_from(self, position: int) -> np.ndarray:
        return self._inner.slots_from(position)

    def blocks(self, start: int, block: int) -> Iterator[tuple[int, int]]:
        return self._inner.blocks(start, block)

    def at(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        slot, index = self._inner.at(lo, hi)
        return slot, self._local[index]


@dataclass(frozen=True, eq=False)
class ConsumerPlan:
    """One consumer's span of a :class:`Segments` stream, in windows: what
    :class:`~roxxel.read.iteration.RecordIterator` reads, as it reads a
    :class:`~roxxel.planner.Plan`. ``windows[w]`` is ``(first piece, end piece)`` of the
    range pieces, or an array of loose record ids; ``pad`` marks pieces at pad positions."""

    num_records: int
    lo: int  # the span's first position (padded coordinates)
    total: int  # the stream's length R: positions >= R are pad
    piece_shard: np.ndarray
    piece_begin: np.ndarray
    piece_end: np.ndarray
    piece_pad: np.ndarray
    windows: list[tuple[int, int] | tuple[Loose, bool]]
    window_edges: np.ndarray  # positions within the span where each window starts, then the end
    record_starts: np.ndarray
    key: tuple[int, ...] | None  # None: unshuffled
    heads: np.ndarray | None = None  # records in each shard's head, as the planner's

    @property
    def num_windows(self) -> int:
        return len(self.windows)

    def window_sizes(self) -> np.ndarray:
        return np.diff(self.window_edges)

    def locate(self, start: int) -> tuple[int, int]:
        """The window holding position ``start``, and how far into it that is."""
        if not 0 <= start <= self.num_records:
            raise ValueError(f"start must be in [0, {self.num_records}], got {start}")
        if self.num_windows == 0:
            return 0, 0
        first = max(int(np.searchsorted(self.window_edges, start, side="right")) - 1, 0)
        return first, start - int(self.window_edges[first])

    def window_order(self, w: int) -> WindowOrder | LooseOrder:
        key = None if self.key is None else (*self.key, w)
        item = self.windows[w]
        if isinstance(item[0], Loose):
            return LooseOrder(item[0].ids(), self.record_starts, key)
        a, b = item
        return WindowOrder(self.piece_shard[a:b], self.piece_begin[a:b], self.piece_end[a:b], key, self.heads)

    def _piece_pad(self, w: int) -> np.ndarray:
        """Which of window ``w``'s pieces are at pad positions (one flag for a loose window)."""
        item = self.windows[w]
        if isinstance(item[0], Loose):
            return np.full(1, bool(item[1]))
        return self.piece_pad[item[0] : item[1]]

    def window_shards(self, w: int) -> np.ndarray:
        """The distinct shards window ``w`` reads, in download order."""
        item = self.windows[w]
        shards = self.window_order(w).shards if isinstance(item[0], Loose) else self.piece_shard[item[0] : item[1]]
        _, first = np.unique(shards, return_index=True)
        return shards[np.sort(first)]

    @property
    def shard_order(self) -> np.ndarray:
        """Shards in order of first use."""
        parts = [self.window_shards(w) for w in range(self.num_windows)]
        shards = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        _, first = np.unique(shards, return_index=True)
        return shards[np.sort(first)]

    def window_records(self, w: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """Global record ids of window ``w``'s positions ``lo..hi-1``, in stream order."""
        order = self.window_order(w)
        slot, local = order.at(lo, len(order) if hi is None else hi)
        return self.record_starts[order.shards[slot]] + local

    def records(self, start: int = 0) -> Iterator[np.ndarray]:
        """Global record ids from position ``start`` on, one array per window."""
        first, skip = self.locate(start)
        for w in range(first, self.num_windows):
            ids = self.window_records(w, skip)
            skip = 0
            if len(ids):
                yield ids

    def remainder(self, position: int) -> tuple[Loose, tuple[int, int]]:
        """What is left at ``position``, without pad positions: the rest of the current
        window (global ids in its order, computed when first needed unless the window
        holds pad positions) and a run ``[a, b)`` of the stream's positions."""
        w, skip = self.locate(position)
        real_end = min(self.lo + self.num_records, self.total)
        if w >= self.num_windows:
            return Loose(np.zeros(0, dtype=np.int64)), (0, 0)
        pad = self._piece_pad(w)
        size = int(self.window_edges[w + 1] - self.window_edges[w])
        if isinstance(self.windows[w][0], Loose) and pad[0]:
            rest = Loose(np.zeros(0, dtype=np.int64))
        elif pad.any():  # a window across the wrap: the rest's real records, now
            order = self.window_order(w)
            slot, local = order.at(skip, size)
            rest = Loose((self.record_starts[order.shards[slot]] + local)[~pad[order.piece[slot]]])
        else:
            rest = Loose(lambda: self.window_records(w, skip), 0, size - skip)
        after = self.lo + int(self.window_edges[w + 1])
        return rest, (after, real_end) if after < real_end else (0, 0)


def consumer_plan(
    stream: EpochStream, segments: Segments, *, rank: int, world_size: int, worker: int, num_workers: int,
    window: int, remainder: str, key: tuple[int, ...] | None,
) -> ConsumerPlan:
    """Consumer ``(rank, worker)``'s plan over ``segments`` (see the module docstring).
    Over the whole epoch's stream it is the planner's plan, window keys included."""
    total = segments.total
    lo, hi = span(total, rank, world_size, worker, num_workers, remainder)
    shard: list[np.ndarray] = []
    begin: list[np.ndarray] = []
    end: list[np.ndarray] = []
    pad: list[np.ndarray] = []
    # ("run", first piece, end piece) of a run of range pieces, or ("loose", ids, pad)
    marks: list[tuple[str, Any, Any]] = []
    pieces = run_start = 0
    x = lo
    while x < hi and total:
        a = x % total
        take = min(hi - x, total - a)
        for item in segments.slice(a, a + take):
            if isinstance(item, tuple):
                k, b0, e0 = stream.pieces(*item)
                shard.append(k)
                begin.append(b0)
                end.append(e0)
                pad.append(np.full(len(k), x >= total))
                pieces += len(k)
            else:
                marks.append(("run", run_start, pieces))
                marks.append(("loose", item, x >= total))
                run_start = pieces
        x += take
    marks.append(("run", run_start, pieces))
    cat = (lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64))
    piece_begin, piece_end = cat(begin), cat(end)
    piece_edges = np.zeros(pieces + 1, dtype=np.int64)
    np.cumsum(piece_end - piece_begin, out=piece_edges[1:])
    windows: list[tuple[int, int] | tuple[Loose, bool]] = []
    sizes: list[int] = []
    for kind, first, last in marks:
        if kind == "loose":
            windows.append((first, last))
            sizes.append(len(first))
            continue
        for a in range(first, last, window):  # the planner's windows of `window` pieces
            b = min(a + window, last)
            windows.append((a, b))
            sizes.append(int(piece_edges[b] - piece_edges[a]))
    edges = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(np.asarray(sizes, dtype=np.int64), out=edges[1:])
    return ConsumerPlan(
        num_records=hi - lo, lo=lo, total=total, piece_shard=cat(shard), piece_begin=piece_begin,
        piece_end=piece_end, piece_pad=cat(pad).astype(bool), windows=windows, window_edges=edges,
        record_starts=stream.record_starts, key=key, heads=stream.heads,
    )


def window_key(seed: int, epoch: int, generation: int, rank: int, world_size: int, worker: int,
               num_workers: int) -> tuple[int, ...]:
    """A window's key, less its index: the planner's for generation 0."""
    if generation == 0:
        return (seed, epoch, 1, rank, world_size, worker, num_workers)
    return (seed, epoch, _ELASTIC, generation, rank, world_size, worker, num_workers)


def remaining(
    counts: npt.ArrayLike, *, seed: int, epoch: int, shuffle: bool, window: int, remainder: str,
    generations: Sequence[Generation], heads: npt.ArrayLike | None,
) -> tuple[EpochStream, Segments]:
    """The epoch's stream and what the ``generations`` left of it: the stream the next
    generation splits. ResumeError if a position lies outside its consumer's span.
    ``heads`` are the planner's (:func:`roxxel.planner.plan`): given, even as None, as
    every plan that replays this one must be made with the same."""
    counts = np.asarray(counts, dtype=np.int64)
    stream = EpochStream(counts, seed, epoch, shuffle, check_heads(heads, counts))
    segments = Segments([(0, stream.total)])
    for g, gen in enumerate(generations):
        items: list[Segment] = []
        for c, position in enumerate(gen.positions):
            rank, worker = divmod(c, gen.num_workers)
            key = window_key(seed, epoch, g, rank, gen.world_size, worker, gen.num_workers) if shuffle else None
            p = consumer_plan(stream, segments, rank=rank, world_size=gen.world_size, worker=worker,
                              num_workers=gen.num_workers, window=window, remainder=remainder, key=key)
            if position > p.num_records:
                raise ResumeError(
                    f"generation {g} (world_size={gen.world_size}, num_workers={gen.num_workers}): "
                    f"rank {rank} worker {worker}'s position {position} is past its {p.num_records} records"
                )
            loose, (a, b) = p.remainder(position)
            items.append(loose)
            items.extend(segments.slice(a, b))
        segments = Segments(items)
    return stream, segments


def elastic_plan(
    counts: npt.ArrayLike, *, seed: int, epoch: int, shuffle: bool, window: int, remainder: str,
    generations: Sequence[Generation], rank: int, world_size: int, worker: int, num_workers: int,
    heads: npt.ArrayLike | None,
) -> ConsumerPlan:
    """Consumer ``(rank, worker)`` of ``world_size`` ranks x ``num_workers`` workers,
    continuing the epoch after ``generations``: its share of what they left (``heads``:
    the planner's)."""
    if not (0 <= rank < world_size and 0 <= worker < num_workers):
        raise ValueError(f"rank {rank} of world_size={world_size}, worker {worker} of num_workers={num_workers}: "
                         "rank must be in [0, world_size) and worker in [0, num_workers)")
    stream, segments = remaining(counts, seed=seed, epoch=epoch, shuffle=shuffle, window=window,
                                 remainder=remainder, generations=generations, heads=heads)
    key = window_key(seed, epoch, len(generations), rank, world_size, worker, num_workers) if shuffle else None
    return consumer_plan(stream, segments, rank=rank, world_size=world_size, worker=worker,
                         num_workers=num_workers, window=window, remainder=remainder, key=key)


def fold(generations: Sequence[Generation]) -> tuple[Generation, ...]:
    """``generations`` without those in which no consumer read anything (they leave the
    stream they were given unchanged)."""
    return tuple(g for g in generations if any(g.positions))


def consumers_of(
    states: Sequence[Any], shared: Sequence[str], entry: Callable[[Any], tuple[Any, ...]], *, lockstep: bool
) -> tuple[list[tuple[Any, ...]], bool]:
    """Each consumer's ``entry(state)`` (its position first), consumer ``rank * num_workers
    + worker``, from the states of one topology's consumers (a job state's last
    generation), and whether some were filled in. ResumeError if the states differ in a
    ``shared`` field, name a consumer outside the topology, or two different states of one
    consumer; if a consumer is missing, unless ``lockstep`` (then every consumer not given
    is taken to be where the given ones are, which must agree)."""
    if not states:
        raise ResumeError("job_state needs at least one consumer's state")
    first = states[0]
    for s in states[1:]:
        for name in shared:
            if getattr(s, name) != getattr(first, name):
                raise ResumeError(
                    f"the states are of different streams: {name} is {getattr(first, name)!r} in rank "
                    f"{first.rank} worker {first.worker}'s and {getattr(s, name)!r} in rank {s.rank} worker "
                    f"{s.worker}'s"[:400]
                )
    world, workers = first.world_size, first.num_workers
    mine: dict[int, tuple[Any, ...]] = {}
    for s in states:
        if not (0 <= s.rank < world and 0 <= s.worker < workers):
            raise ResumeError(f"a state of rank {s.rank} worker {s.worker} is no consumer of world_size="
                              f"{world}, num_workers={workers}")
        c, got = s.rank * workers + s.worker, entry(s)
        if mine.setdefault(c, got) != got:
            raise ResumeError(f"two states of rank {s.rank} worker {s.worker} at positions {mine[c][0]} "
                              f"and {got[0]}")
    consumers = world * workers
    missing = [c for c in range(consumers) if c not in mine]
    if missing and not lockstep:
        rank, worker = divmod(missing[0], workers)
        raise ResumeError(
            f"job_state got {len(mine)} of the {consumers} consumers' states (world_size={world}, "
            f"num_workers={workers}); rank {rank} worker {worker}'s is missing. Pass every consumer's "
            "state, or lockstep=True if every consumer has read as many records as these"
        )
    if missing and len(set(mine.values())) > 1:
        raise ResumeError(f"lockstep=True, but the states given are at different positions "
                          f"{sorted({e[0] for e in mine.values()})}")
    fill = next(iter(mine.values()))
    return [mine.get(c, fill) for c in range(consumers)], bool(missing)
