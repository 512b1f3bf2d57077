"""Planned iteration over a remote dataset: ``ds.iter(...)`` and resumable state.

A :class:`RecordIterator` walks one consumer's :class:`~roxxel.planner.Plan` window by
window. When a window starts, its shards' downloads start in the plan's order, then the
shards of the following windows are queued for the background downloader; a shard is
mapped only when the stream first needs one of its records (the window's stages: see
:mod:`roxxel.planner`), so the first record waits for the records of the head that
leads the window, if one does and its shard is not in yet, else for the window's first
shard only, and a resume in the middle of a window maps only the shards still needed. The
cache is told the plan order, so eviction removes the shard used furthest in the
future. ``state()`` is a small dict from which ``ds.resume(state)`` continues at the same
record, after checking that the dataset, the topology and the plan version are the same.
"""

from __future__ import annotations

import operator
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from itertools import chain, islice
from typing import Any

import numpy as np

from .. import trace
from ..errors import ResumeError
from ..planner import DEFAULT_WINDOW, HEADS_PLAN_VERSION, PLAN_VERSION, Plan, WindowOrder, plan, plan_version
from .elastic import ConsumerPlan, Generation, LooseOrder, elastic_plan
from .head import HeadRecords
from .partfetch import PartRecords
from .records import Records
from .residency import Residency
from .views import BLOCK, RecordViews, record_views

__all__ = ["IterState", "RecordIterator", "detect_topology"]

_STATE_TYPES = {"seed": int, "epoch": int, "position": int, "rank": int, "world_size": int,
                "worker": int, "num_workers": int, "shuffle": bool, "window": int,
                "remainder": str, "fingerprint": str, "plan": int}
# States saved before the plan version was kept (roxxel 0.4.0.dev0 until staged windows)
# have no "plan": their windows were each one uniform permutation.
_UNVERSIONED = 1


@dataclass(frozen=True)
class IterState:
    """Where a consumer is in its stream, and what the stream is a function of."""

    seed: int
    epoch: int
    position: int
    rank: int
    world_size: int
    worker: int
    num_workers: int
    shuffle: bool
    window: int
    remainder: str
    fingerprint: str
    plan: int = PLAN_VERSION  # the planner's order the position counts in
    # An elastic continuation: the generations of the epoch before this one's (see
    # roxxel.read.elastic); None for the epoch's first topology. Saved only when set.
    elastic: tuple[Generation, ...] | None = None

    def __post_init__(self) -> None:
        if self.elastic is not None:
            gens = tuple(Generation.from_dict(g, f"iterator state field 'elastic'[{i}]")
                         for i, g in enumerate(self.elastic))
            object.__setattr__(self, "elastic", gens or None)  # no generation before: the planner's

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.elastic is None:
            del data["elastic"]
        else:
            data["elastic"] = [g.to_dict() for g in self.elastic]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IterState:
        names = {f.name for f in fields(cls)}
        if isinstance(data, Mapping) and "plan" not in data:
            data = {**data, "plan": _UNVERSIONED}
        if isinstance(data, Mapping) and "elastic" not in data:
            data = {**data, "elastic": None}
        if isinstance(data, Mapping) and not isinstance(data["elastic"], (list, tuple, type(None))):
            raise ResumeError(f"iterator state field 'elastic' must be a list, got {data['elastic']!r}"[:300])
        if not isinstance(data, Mapping) or set(data) != names:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ResumeError(f"iterator state must have the keys {sorted(names)}, got {got}")
        for name, kind in _STATE_TYPES.items():
            value = data[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ResumeError(f"iterator state field {name!r} must be {kind.__name__}, got {value!r}")
        return cls(**{name: data[name] for name in names})


def detect_topology(
    rank: int | None, world_size: int | None, worker: int | None, num_workers: int | None
) -> tuple[int, int, int, int]:
    """Fill in what the caller left out: torch.distributed, else RANK/WORLD_SIZE; the
    DataLoader worker from torch's worker info. torch is consulted only if imported."""
    torch = sys.modules.get("torch")
    if rank is None or world_size is None:
        r, w = 0, 1
        dist = getattr(torch, "distributed", None) if torch is not None else None
        if dist is not None and dist.is_available() and dist.is_initialized():
            r, w = dist.get_rank(), dist.get_world_size()
        elif "WORLD_SIZE" in os.environ:
            r, w = int(os.environ.get("RANK", "0")), int(os.environ["WORLD_SIZE"])
        rank = r if rank is None else rank
        world_size = w if world_size is None else world_size
    if worker is None or num_workers is None:
        wk, nw = 0, 1
        info = torch.utils.data.get_worker_info() if torch is not None and hasattr(torch, "utils") else None
        if info is not None:
            wk, nw = info.id, info.num_workers
        worker = wk if worker is None else worker
        num_workers = nw if num_workers is None else num_workers
    return rank, world_size, worker, num_workers


class RecordIterator(Iterator[np.ndarray]):
    """Records of one consumer's epoch as zero-copy ``uint8`` views, in plan order.

    ``records`` maps the shards, ``residency`` is told what they will need and when;
    ``counts`` are the shards' record counts and ``heads`` their heads' (the plan is a
    function of them: see :func:`roxxel.planner.plan`).
    """

    def __init__(
        self,
        records: Records,
        residency: Residency,
        counts: np.ndarray,
        state: IterState,
        track: Callable[[Iterator[RecordViews]], Iterator[RecordViews]],
        heads: np.ndarray | None,
    ) -> None:
        self._index = records
        self._residency = residency
        self._counts, self._heads = counts, heads
        self._base = state
        self.plan: Plan | ConsumerPlan = (plan if state.elastic is None else _elastic_plan)(
            counts,
            seed=state.seed,
            epoch=state.epoch,
            rank=state.rank,
            world_size=state.world_size,
            worker=state.worker,
            num_workers=state.num_workers,
            shuffle=state.shuffle,
            window=state.window,
            remainder=state.remainder,
            heads=heads,
            **({} if state.elastic is None else {"generations": state.elastic}),
        )
        if not 0 <= state.position <= self.plan.num_records:
            raise ResumeError(
                f"position {state.position} is outside this consumer's epoch of "
                f"{self.plan.num_records} records"
            )
        _check_plan_version(state, self.plan)
        self._base = IterState(**{**state.to_dict(), "plan": plan_version(self.plan.heads)})
        self._at = state.position  # the position where the current block starts
        # (first position, length, the block's views): how far the block's views have got
        # is how far the stream has, with no per-record counting
        self._block: tuple[int, int, RecordViews] | None = None
        # What makes a block's records from its bounds (the views; roxxel.read.typed
        # puts typed batches here): settable until the first record is read.
        self.make_views: Callable[..., RecordViews] = record_views  # (payloads, slots, begins, ends)
        self._records = chain.from_iterable(track(self._blocks()))

    @property
    def position(self) -> int:
        """Records of this epoch consumed so far, counting those before a resume."""
        return block_position(self._at, self._block)

    def __len__(self) -> int:
        """Records left in this epoch."""
        return self.plan.num_records - self.position

    def __next__(self) -> np.ndarray:
        return next(self._records)

    def state(self) -> dict[str, Any]:
        """A JSON-ready dict from which ``ds.resume(state)`` continues after the last record."""
        return IterState(**{**self._base.to_dict(), "position": self.position}).to_dict()

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._records  # iterating it directly saves a Python call per record

    def _next_epoch_order(self) -> list[int]:
        """This consumer's shard order in the next epoch: known now, as plans are pure."""
        st = self._base
        following = plan(
            self._counts, seed=st.seed, epoch=st.epoch + 1, rank=st.rank,
            world_size=st.world_size, worker=st.worker, num_workers=st.num_workers,
            shuffle=st.shuffle, window=st.window, remainder=st.remainder, heads=self._heads,
        )
        return following.shard_order.tolist()

    def _blocks(self) -> Iterator[RecordViews]:
        """The stream in blocks of views; between windows, the downloads and the cache's
        bookkeeping. Closing it (``ds.close()`` does) lets go of the current block's maps."""
        residency, p = self._residency, self.plan
        tracer = trace.current()
        if tracer is not None:
            st = self._base  # (a process that is no DataLoader worker has no worker label)
            tracer.label(rank=st.rank, worker=st.worker if st.num_workers > 1 else None)
        order = p.shard_order.tolist()
        rank_of = {k: i for i, k in enumerate(order)}
        residency.expect(order, then=self._next_epoch_order())
        residency.hold(p.num_windows and int(max(len(p.window_shards(w)) for w in range(p.num_windows))))
        first, skip = p.locate(self._at)
        try:
            for w in range(first, p.num_windows):
                stages = p.window_order(w)
                window = p.window_shards(w).tolist()
                # Downloads start in the window's plan order (its pieces'), from the stage
                # of the position on; then the following windows' shards.
                slots = stages.slots_from(skip)
                by_piece = slots[np.argsort(stages.piece[slots], kind="stable")]
                needed = list(dict.fromkeys(stages.shards[by_piece].tolist()))
                early = None  # the records of the head that leads the window, if sooner
                part = None  # those of the part a resume's first record lies in, likewise
                if stages.from_head and skip < stages.stage_starts[1]:
                    lead = int(stages.shards[0])
                    if not self._index.is_mapped(lead):
                        early = residency.first_records(lead)  # (asked before its download starts)
                        if early is None:  # its shard is read first, whole
                            needed = [lead, *(k for k in needed if k != lead)]
                elif skip:  # resumed inside the window: the shard of its first position goes first
                    slot, local = stages.at(skip, skip + 1)
                    first_shard = int(stages.shards[int(slot[0])])
                    needed = [first_shard, *(k for k in needed if k != first_shard)]
                    if self.make_views is record_views and not self._index.is_mapped(first_shard):
                        part = residency.part_records(first_shard, int(local[0]))  # (before its download)
                residency.about_to_map(needed[:1])  # the first one read: its download goes first
                residency.fetch_together(needed)
                residency.prefetch(islice(order, max(rank_of[k] for k in window) + 1, None))
                reader = _WindowReader(self._index, stages, early, start=skip)
                start = self._at - skip  # the window's first position in the stream
                # (typed batches group a block's records by shard: their blocks must not
                # depend on where a stream was resumed, so they are not split)
                split = reader.split_at_waits if self.make_views is record_views else _whole
                if part is not None and (held := part()) is not None:
                    n, views = _part_block(stages, held, skip)
                    del held  # (its bytes live on in the views only while they do)
                    yield from self._hand(views, start + skip, n, w)
                    skip += n
                part = None
                for lo, hi in (run for block in stages.blocks(skip, BLOCK) for run in split(*block)):
                    slots, begins, ends = reader.bounds(lo, hi)
                    views = self.make_views(reader.payloads, slots, begins, ends)
                    yield from self._hand(views, start + lo, hi - lo, w)
                self._at = start + len(stages)
                self._block = None
                skip = 0
                following = set(p.window_shards(w + 1).tolist()) if w + 1 < p.num_windows else set()
                done = [k for k in window if k not in following]
                residency.finished(done)
        finally:  # closed (by ds.close()) mid-block: keep the position, let go of the maps
            if self._block is not None:
                self._at = self.position
                views, self._block = self._block[2], None
                views.close()

    def _hand(self, views: RecordViews, first: int, n: int, window: int) -> Iterator[RecordViews]:
        """Hand the consumer ``views``, the ``n`` records from stream position ``first`` on."""
        self._block = (first, n, views)
        tracer = trace.current()
        handed = time.perf_counter_ns()
        yield views
        if tracer is not None:  # the consumer's time with the block
            tracer.complete("records", "read", handed, time.perf_counter_ns(),
                            records=n, window=window, position=first)


def _part_block(order: WindowOrder | LooseOrder, held: PartRecords, at: int) -> tuple[int, RecordViews]:
    """The records at window positions ``at`` on that ``held`` holds (from the part of
    the shard that the record at ``at`` lies in): a run of them in one slot, as views
    of the part's bytes; how many."""
    slots, local = order.at(at, min(at + BLOCK, len(order)))
    same = slots == slots[0]
    n = len(same) if same.all() else int(np.argmin(same))
    inside = held.holds(local[:n])
    n = n if inside.all() else int(np.argmin(inside))  # (at least 1: the part is the first record's)
    return n, held.views(local[:n])


def _whole(lo: int, hi: int) -> tuple[tuple[int, int]]:
    return ((lo, hi),)


def block_position(at: int, block: tuple[int, int, RecordViews] | None) -> int:
    """A stream's position: ``at``, or inside the block being read, (its first position,
    its length, its views), the records handed out of it so far."""
    if block is None:
        return at
    first, length, views = block
    return first + length - operator.length_hint(views)


_UNMAPPED = np.zeros(0, dtype=np.uint8)  # the payload of a slot no block has needed yet


class _WindowReader:
    """One window's shards, each mapped when a block first needs one of its records,
    and the end offsets of the records the window reads from each. ``early`` waits for
    the records of the head that leads the window (:meth:`Residency.first_records`),
    which slot 0 reads from if they come (``order.from_head``: it reads none beyond them).
    ``start``: the window position read first (a resume's)."""

    def __init__(self, index: Records, order: WindowOrder | LooseOrder,
                 early: Callable[[], HeadRecords | None] | None = None, *, start: int = 0) -> None:
        self._index, self._order, self._early = index, order, early
        width = len(order.shards)
        self.payloads: list[np.ndarray] = [_UNMAPPED] * width
        self._mapped = [False] * width
        # Slots mapped, or never read from ``start`` on, and how many of the first ones
        # are (split_at_waits: a block of stage k with slots 0..k-1 ready waits for one
        # shard at most, slot k's)
        self._ready = [True] * width
        for j in order.slots_from(start).tolist():
            self._ready[j] = False
        self._ready_prefix = 0
        self._advance()
        # Slot j's offsets [since_j, stop_j) (a record's begin is its predecessor's end)
        # are copied into one table as it is mapped: one gather then bounds a block. The
        # table grows with the shards mapped, whose record counts are verified, never
        # with what the manifest claims.
        self._since = np.maximum(order.begin - 1, 0)
        self._stop = order.begin + order.counts
        self._runs = np.zeros(width, dtype=np.int64)  # slot j's offset in the table, less since_j
        self._table = np.zeros(0, dtype=np.int64)
        self._used = 0

    def split_at_waits(self, lo: int, hi: int) -> Iterator[tuple[int, int]]:
        """``[lo, hi)`` (positions of one stage) cut before each position whose slot is
        not mapped yet, but its first: each part waits for one shard at most. A reader
        that starts inside a stage (a resume) then has its first records once the shard
        of its first position is in, not once every shard the stage reads is, and the
        rest as their shards arrive. (Read from a window's start, a stage's slots are
        mapped as it opens, one at a time: its blocks go whole, unexamined.)"""
        while lo < hi and self._ready_prefix < self._order.stage_of(lo):
            slots, _ = self._order.at(lo, hi)
            waits = np.flatnonzero(~np.asarray(self._mapped)[slots] & (slots != slots[0]))
            if not len(waits):
                break
            yield lo, lo + int(waits[0])
            lo += int(waits[0])
        if lo < hi:
            yield lo, hi

    def _advance(self) -> None:
        ready, n = self._ready, len(self._ready)
        while self._ready_prefix < n and ready[self._ready_prefix]:
            self._ready_prefix += 1

    def bounds(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Slot, begin and end offset of each record at window positions ``lo..hi-1``,
        with the slots' shards mapped."""
        slots, local = self._order.at(lo, hi)
        present = np.flatnonzero(np.bincount(slots, minlength=len(self._mapped))).tolist()
        for j in present:  # ascending: the window's stage order
            if not self._mapped[j]:
                self._map(j)
        at = self._runs[slots] + local
        ends = self._table[at]
        begins = self._table[at - 1]  # at 0 this wraps around; local == 0 is fixed below
        begins[local == 0] = 0
        return slots, begins, ends

    def _map(self, j: int) -> None:
        early = None
        if j == 0 and self._early is not None:
            wait, self._early = self._early, None
            early = wait()  # (checked: its offsets are the whole shard's, its payload holds slot 0's records)
        shard = early if early is not None else self._index.shard(int(self._order.shards[j]))  # checks its count
        since, stop = int(self._since[j]), int(self._stop[j])
        need = self._used + stop - since
        if need > len(self._table):
            grown = np.empty(max(need, 2 * len(self._table)), dtype=np.int64)
            grown[: self._used] = self._table[: self._used]
            self._table = grown
        self._table[self._used : need] = shard.offsets[since:stop]
        self._runs[j] = self._used - since
        self._used = need
        self.payloads[j] = shard.payload
        self._mapped[j] = self._ready[j] = True
        self._advance()


def _elastic_plan(counts: np.ndarray, **kwargs: Any) -> ConsumerPlan:
    try:
        return elastic_plan(counts, **kwargs)
    except ValueError as exc:  # an invalid topology, as plan() reports it
        raise ResumeError(str(exc)) from exc


def _check_plan_version(state: IterState, p: Plan | ConsumerPlan) -> None:
    """ResumeError unless ``state``'s position means the same records under this plan:
    its version's; or an older version's where this plan orders the position's window as
    it did (a window boundary, where the rest of the epoch is the same windows; for a
    state of version 2 on a plan with heads, also a window no head leads)."""
    version = plan_version(p.heads)
    if state.plan == version:
        return
    boundary = state.position in set(np.cumsum(p.window_sizes()).tolist()) | {0}
    if state.plan == _UNVERSIONED and boundary:
        return
    if state.plan == _UNVERSIONED:
        raise ResumeError(
            f"the state was saved by an earlier roxxel, whose windows had another order (plan "
            f"version {_UNVERSIONED}; this one reads version {version}): resuming at position "
            f"{state.position}, inside a window, would read other records than the ones left. "
            "Start the epoch over, or resume with the roxxel that saved it"
        )
    if state.plan == PLAN_VERSION and version == HEADS_PLAN_VERSION and state.elastic is None:
        w, _ = p.locate(state.position)
        if boundary or w >= p.num_windows or not p.window_order(w).from_head:
            return
        raise ResumeError(
            f"the state was saved by a roxxel that did not plan with the dataset's shard heads (plan "
            f"version {PLAN_VERSION}; this one reads version {version}, where a head leads window {w}): "
            f"resuming at position {state.position}, inside that window, would read other records than "
            "the ones left. Resume at the window's end, or with the roxxel that saved it"
        )
    raise ResumeError(
        f"the state is of plan version {state.plan}; this roxxel reads plan version {version} "
        "for this dataset: resume with the roxxel that saved it"
    )


def new_state(fingerprint: str, **kwargs: Any) -> IterState:
    """The state of a fresh iterator, with the topology detected where not given."""
    rank, world_size, worker, num_workers = detect_topology(
        kwargs.pop("rank"), kwargs.pop("world_size"), kwargs.pop("worker"), kwargs.pop("num_workers")
    )
    return IterState(
        rank=rank,
        world_size=world_size,
        worker=worker,
        num_workers=num_workers,
        fingerprint=fingerprint,
        window=kwargs.pop("window") or DEFAULT_WINDOW,
        **kwargs,
    )


def check_resumable(
    saved: IterState, fingerprint: str, url: str, now: tuple[int, int, int, int]
) -> None:
    """ResumeError unless ``saved`` belongs to the dataset at ``url`` with ``fingerprint``
    and to this topology."""
    if saved.fingerprint != fingerprint:
        raise ResumeError(
            f"the saved state belongs to another dataset or version (manifest fingerprint "
            f"{saved.fingerprint}); {url} has {fingerprint}"
        )
    rank, world_size, worker, num_workers = now
    if (saved.world_size, saved.num_workers) != (world_size, num_workers):
        raise ResumeError(
            f"the state was saved with world_size={saved.world_size}, num_workers={saved.num_workers}; "
            f"this process runs with world_size={world_size}, num_workers={num_workers}. One consumer's "
            "state resumes that consumer only: to resume on another topology, merge every consumer's state "
            "with roxxel.job_state(states) (or job_state(state, lockstep=True) if every consumer has read "
            "as many records as this one) and resume from that"
        )
    if (saved.rank, saved.worker) != (rank, worker):
        raise ResumeError(
            f"the state is rank {saved.rank} worker {saved.worker}'s; this is rank {rank} worker {worker}"
        )
