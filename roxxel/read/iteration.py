"""Planned iteration over a remote dataset: ``ds.iter(...)`` and resumable state.

A :class:`RecordIterator` walks one consumer's :class:`~roxxel.planner.Plan` window by
window. Before a window starts, its shards are mapped (fetched if needed) and the
shards of the following windows are queued for the background downloader in plan
order; the cache is told the plan order, so eviction removes the shard used furthest
in the future. ``state()`` is a small dict from which ``ds.resume(state)`` continues at
the same record, after checking that the dataset and topology are the same.
"""

from __future__ import annotations

import operator
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from itertools import chain, islice
from typing import Any

import numpy as np

from ..errors import ResumeError
from ..format import MappedShard
from ..planner import DEFAULT_WINDOW, Plan, WindowLayout, plan
from .records import Records
from .residency import Residency
from .views import BLOCK, RecordViews, record_views

__all__ = ["IterState", "RecordIterator", "detect_topology"]

_STATE_TYPES = {"seed": int, "epoch": int, "position": int, "rank": int, "world_size": int,
                "worker": int, "num_workers": int, "shuffle": bool, "window": int,
                "remainder": str, "fingerprint": str}


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> IterState:
        names = {f.name for f in fields(cls)}
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
    ``counts`` are the shards' record counts (the plan is a function of them).
    """

    def __init__(
        self,
        records: Records,
        residency: Residency,
        counts: np.ndarray,
        state: IterState,
        track: Callable[[Iterator[RecordViews]], Iterator[RecordViews]],
    ) -> None:
        self._index = records
        self._residency = residency
        self._counts = counts
        self._base = state
        self.plan: Plan = plan(
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
        )
        if not 0 <= state.position <= self.plan.num_records:
            raise ResumeError(
                f"position {state.position} is outside this consumer's epoch of "
                f"{self.plan.num_records} records"
            )
        self._at = state.position  # the position where the current block starts
        # (first position, length, the block's views): how far the block's views have got
        # is how far the stream has, with no per-record counting
        self._block: tuple[int, int, RecordViews] | None = None
        self._records = chain.from_iterable(track(self._blocks()))

    @property
    def position(self) -> int:
        """Records of this epoch consumed so far, counting those before a resume."""
        block = self._block
        if block is None:
            return self._at
        first, length, views = block
        return first + length - operator.length_hint(views)

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
            shuffle=st.shuffle, window=st.window, remainder=st.remainder,
        )
        return following.shard_order.tolist()

    def _blocks(self) -> Iterator[RecordViews]:
        """The stream in blocks of views; between windows, the downloads and the cache's
        bookkeeping. Closing it (``ds.close()`` does) lets go of the current block's maps."""
        residency, p = self._residency, self.plan
        order = p.shard_order.tolist()
        rank_of = {k: i for i, k in enumerate(order)}
        residency.expect(order, then=self._next_epoch_order())
        residency.hold(p.num_windows and int(max(len(p.window_shards(w)) for w in range(p.num_windows))))
        first, skip = p.locate(self._at)
        try:
            for w in range(first, p.num_windows):
                window = p.window_shards(w).tolist()
                residency.fetch_together(window)
                residency.prefetch(islice(order, max(rank_of[k] for k in window) + 1, None))
                # The shards are verified against the manifest before the window's records,
                # whose count the manifest claims, are planned (and allocated).
                shards = [self._index.shard(k) for k in window]
                slots, begins, ends = _window_bounds(shards, p.window_layout(w), skip)
                skip = 0
                payloads = [s.payload for s in shards]
                for lo in range(0, len(slots), BLOCK):
                    hi = lo + BLOCK
                    views = record_views(payloads, slots[lo:hi], begins[lo:hi], ends[lo:hi])
                    self._block = (self._at + lo, len(slots[lo:hi]), views)
                    yield views
                self._at += len(slots)
                self._block = None
                following = set(p.window_shards(w + 1).tolist()) if w + 1 < p.num_windows else set()
                done = [k for k in window if k not in following]
                residency.finished(done)
        finally:  # closed (by ds.close()) mid-block: keep the position, let go of the maps
            if self._block is not None:
                self._at = self.position
                views, self._block = self._block[2], None
                views.close()


def _window_bounds(
    shards: list[MappedShard], layout: WindowLayout, skip: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Slot (index into ``shards``), begin and end offset of each record the window
    reads from position ``skip`` on, in stream order."""
    slots, local = layout.slot[skip:], layout.local[skip:]
    # The end offsets of the records the window reads (and of each run's predecessor),
    # end to end: one gather then finds every record's bounds.
    since = np.maximum(layout.first - 1, 0)
    reads = zip(shards, since.tolist(), layout.stop.tolist())
    ends_all = np.concatenate([s.offsets[a:b] for s, a, b in reads])
    runs = np.zeros(len(shards), dtype=np.int64)
    np.cumsum((layout.stop - since)[:-1], out=runs[1:])
    at = (runs - since)[slots] + local
    ends = ends_all[at].astype(np.int64, copy=False)
    begins = ends_all[at - 1].astype(np.int64, copy=False)
    begins[local == 0] = 0
    return np.ascontiguousarray(slots, dtype=np.int64), begins, ends


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
            f"this process runs with world_size={world_size}, num_workers={num_workers}. Elastic resume "
            "is not supported: resume with the saved topology, or start the epoch over"
        )
    if (saved.rank, saved.worker) != (rank, worker):
        raise ResumeError(
            f"the state is rank {saved.rank} worker {saved.worker}'s; this is rank {rank} worker {worker}"
        )
