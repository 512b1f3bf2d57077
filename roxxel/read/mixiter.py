"""Reading a mixture: one consumer's records of its plan, a block at a time.

A :class:`MixtureIterator` walks a :class:`~roxxel.read.mixplan.MixturePlan`: each block
is a run of the schedule, each source's part of it read as ``ds.iter`` reads a window
(:class:`~roxxel.read.iteration._WindowReader`), and the mixture's residency is told the
shards to come (:func:`upcoming_shards`) as each source moves from window to window.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from itertools import chain
from typing import Any

import numpy as np

from ..format import MappedShard
from .head import HeadRecords
from .iteration import _WindowReader, block_position
from .mixjob import MixState
from .mixplan import MixturePlan
from .partfetch import PartRecords
from .records import Records
from .views import BLOCK, RecordViews, record_views

__all__ = ["MixtureIterator", "upcoming_shards"]


class _Member:
    """Member ``i``'s shards as the mixture's record index maps them (its numbers shifted
    to the catalog's), for a window reader."""

    def __init__(self, records: Records, offset: int) -> None:
        self._records, self._offset = records, offset

    def shard(self, k: int) -> MappedShard:
        return self._records.shard(self._offset + k)


class MixtureIterator(Iterator[np.ndarray]):
    """One consumer's records of a mixture's epoch as zero-copy ``uint8`` views."""

    def __init__(self, mixture: Any, p: MixturePlan, state: MixState) -> None:  # a roxxel.read.mixture.Mixture
        self._mixture, self.plan = mixture, p
        self._base_state = state
        self._since = state.since
        self._start = state.position - state.since  # plan positions
        self._at = self._start
        self._block: tuple[int, int, RecordViews] | None = None
        self._order_key: tuple[tuple[int, int], ...] | None = None
        # the records of heads that lead windows about to be read, by (source, segment, window)
        self._early: dict[tuple[int, int, int], Callable[[], HeadRecords | None]] = {}
        self._part: Callable[[], PartRecords | None] | None = None  # a resume's first record's part
        self._records = chain.from_iterable(mixture.records._track(self._blocks()))

    @property
    def position(self) -> int:
        """Records of this epoch this consumer has read, counting those before a resume."""
        return self._since + self._plan_position()

    def _plan_position(self) -> int:
        return block_position(self._at, self._block)

    def __len__(self) -> int:
        return self.plan.length - self._plan_position()

    def __next__(self) -> np.ndarray:
        return next(self._records)

    def __iter__(self) -> Iterator[np.ndarray]:  # noqa: PYI034
        return self._records

    def state(self) -> dict[str, Any]:
        """A JSON-ready dict from which ``mixture.resume(state)`` continues after the last record."""
        t = self._plan_position()
        return replace(self._base_state, position=self._since + t, consumed=self.plan.consumed(t).tolist()).to_dict()

    def read_per_source(self) -> np.ndarray:
        """Records of each source this iterator has handed out."""
        return self.plan.schedule.counts(self._plan_position()) - self.plan.schedule.counts(self._start)

    def _blocks(self) -> Iterator[RecordViews]:
        """The stream in blocks of views. A block ends before any source's window opens a
        shard that is not mapped yet (see :mod:`roxxel.planner`'s stages), so the records
        before it never wait for that shard; each source's part of a block is read as
        ``ds.iter`` reads a window, one window of one pass at a time."""
        p, mixture = self.plan, self._mixture
        mixture.residency.hold(p.window * len(p.sources))
        readers: list[dict[tuple[int, int], _WindowReader]] = [{} for _ in p.sources]
        first = True
        try:
            while self._at < p.length:
                lo = self._at
                consumed = p.consumed(lo)
                self._refresh_order(consumed, readers)
                if first and (views := self._from_part(lo, consumed)) is not None:
                    first = False  # (the first record, from its part: see _first_shard_first)
                    self._block = (lo, 1, views)
                    yield views
                    self._block = None
                    self._at = lo + 1
                    continue
                hi = lo + 1 if first else self._block_end(lo, consumed)  # the first record: one shard
                first = False
                srcs = p.schedule.sources(lo, hi)
                # each source's records of the block, a window at a time, in source order;
                # then put back in the schedule's order (a stable sort of the sources)
                parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
                payloads: list[np.ndarray] = []
                for i, m in enumerate(np.bincount(srcs, minlength=len(p.sources)).tolist()):
                    k = int(consumed[i])
                    while m:
                        seg, off = p.segment(i, k)
                        starts, _ = p.windows_of(i, seg)
                        w = int(np.searchsorted(starts, off, side="right")) - 1
                        skip = off - int(starts[w])
                        take = min(m, int(starts[w + 1]) - off)
                        reader = self._reader(readers[i], i, seg, w)
                        s_, b_, e_ = reader.bounds(skip, skip + take)
                        parts.append((s_ + len(payloads), b_, e_))
                        payloads.extend(reader.payloads)
                        m, k = m - take, k + take
                order = p.schedule.grouped(lo, hi)
                slots, begins, ends = (np.empty(hi - lo, dtype=np.int64) for _ in range(3))
                for out, j in ((slots, 0), (begins, 1), (ends, 2)):
                    out[order] = np.concatenate([part[j] for part in parts]) if len(parts) > 1 else parts[0][j]
                views = record_views(payloads, slots, begins, ends)
                self._block = (lo, hi - lo, views)
                yield views
                self._block = None
                self._at = hi
        finally:
            if self._block is not None:
                self._at = self._plan_position()
                views, self._block = self._block[2], None
                views.close()
            self._mixture._read += self.read_per_source()
            self._start = self._at

    def _reader(self, held: dict[tuple[int, int], _WindowReader], i: int, seg: int, w: int) -> _WindowReader:
        """Source ``i``'s reader of window ``w`` of segment ``seg`` (the last two kept: a
        block may end one window and start the next)."""
        reader = held.get((seg, w))
        if reader is None:
            if len(held) >= 2:
                del held[next(iter(held))]
            member = _Member(self._mixture.records, self._mixture.shard_offsets[i])
            reader = held[(seg, w)] = _WindowReader(member, self.plan.window_order(i, seg, w),
                                                    self._early.pop((i, seg, w), None))
        return reader

    def _block_end(self, lo: int, consumed: np.ndarray) -> int:
        """Where the block from ``lo`` ends: at most ``BLOCK`` on, and before the first
        position where some source's window opens a shard that is not mapped yet."""
        p, records = self.plan, self._mixture.records
        hi = min(p.length, lo + BLOCK * len(p.sources))  # about BLOCK records of each source
        for i in range(len(p.sources)):
            k = int(consumed[i])
            first_shard = self._mixture.shard_offsets[i]
            for _ in range(_CUTS_LOOKED_AT):
                seg, off = p.segment(i, k)
                starts, _ = p.windows_of(i, seg)
                w = int(np.searchsorted(starts, off, side="right")) - 1
                order = p.window_order(i, seg, w)
                skip = off - int(starts[w])
                j = int(np.searchsorted(order.stage_starts, skip, side="right"))  # the next stage (slot j)
                if j < len(order.shards):
                    opens, shard = int(starts[w]) + int(order.stage_starts[j]), int(order.shards[j])
                else:  # the window's end: the next window's (or segment's) first slot
                    opens = int(starts[w + 1])
                    nseg, nw = (seg, w + 1) if w + 1 < len(starts) - 1 else (p.next_segment(i, seg), 0)
                    shard = int(p.window_order(i, nseg, nw).shards[0])
                k = p.segment_start(i, seg) + opens
                at = p.schedule.position_of(i, k - int(p.base[i]))
                if at >= hi:
                    break
                if not records.is_mapped(first_shard + shard):
                    hi = at
                    break
        return hi

    def _refresh_order(self, consumed: np.ndarray, readers: list[dict[tuple[int, int], _WindowReader]]) -> None:
        """When a source's reading has moved into another window: tell the residency the
        order of the shards to be read next (a few windows of every source), and that the
        shards of windows left behind are done with (unless a source reads them now)."""
        p = self.plan
        key = []
        for i in range(len(p.sources)):
            seg, w, _ = p.locate(i, int(consumed[i]))
            key.append((min(seg, 0), w))  # passes: alike
        key_t = tuple(key)
        previous, self._order_key = self._order_key, key_t
        if key_t == previous:
            return
        residency, offsets = self._mixture.residency, self._mixture.shard_offsets
        entered = [i for i, window in enumerate(key_t) if previous is None or previous[i] != window]
        self._ask_heads(consumed, entered, readers, first=previous is None)
        current = {int(k) + offsets[i] for i, (seg, w) in enumerate(key_t) for k in p.windows_of(i, seg)[1][w]}
        if previous is not None:
            left = {int(k) + offsets[i] for i, (seg, w) in enumerate(previous) if (seg, w) != key_t[i]
                    for k in p.windows_of(i, seg)[1][w]}
            if left - current:
                residency.finished(sorted(left - current))
        order = upcoming_shards(p, consumed, offsets, horizon=_WINDOWS_AHEAD)
        residency.expect(order)
        residency.prefetch(order)

    def _ask_heads(self, consumed: np.ndarray, entered: list[int],
                   readers: list[dict[tuple[int, int], _WindowReader]], *, first: bool) -> None:
        """Sources ``entered`` have moved into another window: where a head leads it and the
        source reads from that head next, ask for the head's records
        (:meth:`Residency.first_records`) before its shard's download starts (in practice
        each source's first window: the later ones' shards are fetched ahead). ``first``:
        the stream's first block, whose first record's source goes first, and whose
        shard's download goes before any other (after its head, if it has one)."""
        if first and self._at < self.plan.length:
            lead = int(self.plan.schedule.sources(self._at, self._at + 1)[0])
            entered = [lead, *(i for i in entered if i != lead)]
        for n, i in enumerate(entered):
            k = int(consumed[i])
            if self.plan.schedule.position_of(i, k - int(self.plan.base[i])) >= self.plan.length:
                continue  # (the epoch ends before the source reads on)
            self._ask_head(i, k, readers[i], lead=first and n == 0, share=len(entered))
            if first and n == 0:
                self._first_shard_first(i, k)

    def _ask_head(self, i: int, k: int, held: dict[tuple[int, int], _WindowReader], *, lead: bool,
                  share: int) -> None:
        """Ask for the head that leads source ``i``'s window of its ``k``-th record, if the
        source reads from it next and the window has no reader yet (one of ``share``
        heads asked for together: they split the download budget)."""
        p, residency = self.plan, self._mixture.residency
        seg, w, skip = p.locate(i, k)
        order = p.window_order(i, seg, w)
        if (seg, w) in held or not order.from_head or skip >= int(order.stage_starts[1]):
            return
        shard = self._mixture.shard_offsets[i] + int(order.shards[0])
        if not self._mixture.records.is_mapped(shard):
            early = residency.first_records(shard, lead=lead, share=share)
            if early is not None:
                self._early[(i, seg, w)] = early

    def _first_shard_first(self, i: int, k: int) -> None:
        """The download of the shard source ``i``'s ``k``-th record (the stream's first)
        comes from goes before any other (:meth:`Residency.about_to_map`). Where no head
        serves that record (a resume past the head's positions), the part it lies in is
        asked for first (:meth:`Residency.part_records`): the first block is read from it
        if it comes (:meth:`_from_part`)."""
        seg, w, skip = self.plan.locate(i, k)
        order = self.plan.window_order(i, seg, w)
        slot, local = order.at(skip, skip + 1)
        shard = self._mixture.shard_offsets[i] + int(order.shards[int(slot[0])])
        if (i, seg, w) not in self._early and not self._mixture.records.is_mapped(shard):
            self._part = self._mixture.residency.part_records(shard, int(local[0]))
        self._mixture.residency.about_to_map([shard])

    def _from_part(self, lo: int, consumed: np.ndarray) -> RecordViews | None:
        """The stream's first record, at ``lo``, from the part :meth:`_first_shard_first`
        asked for, if it came and holds it; else None (the record waits for its shard)."""
        wait, self._part = self._part, None
        held = wait() if wait is not None else None
        if held is None:
            return None
        i = int(self.plan.schedule.sources(lo, lo + 1)[0])
        seg, w, skip = self.plan.locate(i, int(consumed[i]))
        _, local = self.plan.window_order(i, seg, w).at(skip, skip + 1)
        return held.views(local) if held.holds(local).all() else None


#: How many cuts of one source a block looks past (those whose shard is mapped already).
_CUTS_LOOKED_AT = 64
#: Windows of each source in the order the residency is told (eviction and prefetch).
_WINDOWS_AHEAD = 3


def upcoming_shards(p: MixturePlan, consumed: np.ndarray, shard_offsets: Sequence[int],
                    horizon: int | None = None) -> list[int]:
    """The catalog shards plan ``p`` reads after each source has read ``consumed`` of its
    records, in order of first use (each source's windows placed where the schedule
    reaches their first record still to read), to the end of the epoch, or of each
    source's next ``horizon`` windows. Every pass reads the same shards, so a source's
    come once: its first segment's (after an elastic resume), then one pass's."""
    positions, shards = [], []
    for i in range(len(p.sources)):
        k = int(consumed[i])
        seg, off = p.segment(i, k)
        starts, _ = p.windows_of(i, seg)
        w = int(np.searchsorted(starts, off, side="right")) - 1
        budget = horizon
        # this segment from window w on, then (from a first segment) the passes', then the
        # pass's windows before w
        walk = [(seg, range(w, len(starts) - 1))]
        if seg < 0:
            walk.append((0, range(len(p.windows_of(i, 0)[0]) - 1)))
        else:
            walk.append((seg + 1, range(w)))
        for s_, windows in walk:
            s_starts, s_shards = p.windows_of(i, s_)
            for ww in windows:
                if budget is not None and budget <= 0:
                    break
                first = p.segment_start(i, s_) + int(s_starts[ww])
                at = p.schedule.position_of(i, max(first, k) - int(p.base[i]))
                if at >= p.length:
                    break
                positions.extend([at] * len(s_shards[ww]))
                shards.extend((s_shards[ww] + shard_offsets[i]).tolist())
                budget = None if budget is None else budget - 1
    if not shards:
        return []
    order = np.asarray(shards, dtype=np.int64)[np.argsort(np.asarray(positions), kind="stable")]
    _, first_use = np.unique(order, return_index=True)
    return order[np.sort(first_use)].tolist()
