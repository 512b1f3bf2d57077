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
   ``window`` consecutive pieces are shuffled together: all their records in a keyed
   uniform permutation. The shards of a window come from anywhere in the dataset (step
   1), so consecutive records are usually far apart in storage; the window bounds how
   many shards must be cached at once.

Memory is O(#shards + window records); :meth:`Plan.records` starts at any position in
O(#shards) time, without replaying the records before it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from .permute import Permutation

__all__ = ["DEFAULT_WINDOW", "Plan", "WindowLayout", "plan"]

DEFAULT_WINDOW = 16
_REMAINDERS = ("pad", "drop")


@dataclass(frozen=True, eq=False)
class WindowLayout:
    """One window's records in stream order: record ``local[i]`` of shard
    ``shards[slot[i]]`` comes ``i``-th. ``shards`` are the window's distinct shards,
    ascending; the window reads records ``first[j]:stop[j]`` of shard ``shards[j]``."""

    shards: np.ndarray
    first: np.ndarray
    stop: np.ndarray
    slot: np.ndarray
    local: np.ndarray


@dataclass(frozen=True, eq=False)
class Plan:
    """One consumer's epoch: its pieces of shards, its windows, and its record order.

    ``piece_shard[p]`` is the shard of piece ``p``, which covers that shard's records
    ``piece_begin[p]:piece_end[p]``. Window ``w`` is pieces
    ``window_starts[w]:window_starts[w+1]``.
    """

    num_records: int
    piece_shard: np.ndarray
    piece_begin: np.ndarray
    piece_end: np.ndarray
    window_starts: np.ndarray
    record_starts: np.ndarray  # of the dataset, len(#shards + 1)
    shuffle: bool
    key: tuple[int, ...]

    @property
    def shard_order(self) -> np.ndarray:
        """Shards in order of first use: the order to download them in."""
        _, first = np.unique(self.piece_shard, return_index=True)
        return self.piece_shard[np.sort(first)]

    @property
    def num_windows(self) -> int:
        return len(self.window_starts) - 1

    def window_sizes(self) -> np.ndarray:
        counts = self.piece_end - self.piece_begin
        edges = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=edges[1:])
        return np.diff(edges[self.window_starts])

    def window_shards(self, w: int) -> np.ndarray:
        """The distinct shards window ``w`` reads."""
        a, b = self.window_starts[w], self.window_starts[w + 1]
        return np.unique(self.piece_shard[a:b])

    def window_records(self, w: int) -> np.ndarray:
        """Global record indices of window ``w``, in stream order."""
        layout = self.window_layout(w)
        return self.record_starts[layout.shards][layout.slot] + layout.local

    def window_layout(self, w: int) -> WindowLayout:
        """Window ``w``'s records in stream order, by shard; see :class:`WindowLayout`."""
        a, b = int(self.window_starts[w]), int(self.window_starts[w + 1])
        begin, end = self.piece_begin[a:b], self.piece_end[a:b]
        counts = end - begin
        total = int(counts.sum())
        shards, piece_slot = np.unique(self.piece_shard[a:b], return_inverse=True)
        first = np.full(len(shards), np.iinfo(np.int64).max, dtype=np.int64)
        stop = np.zeros(len(shards), dtype=np.int64)
        np.minimum.at(first, piece_slot, begin)  # a shard may have two pieces (a padded wrap)
        np.maximum.at(stop, piece_slot, end)
        slot = np.repeat(piece_slot.astype(np.int64), counts)
        local = np.arange(total, dtype=np.int64) - np.repeat(_exclusive_cumsum(counts) - begin, counts)
        if self.shuffle and total > 1:
            order = Permutation(total, [*self.key, w])(np.arange(total))
            slot, local = slot[order], local[order]
        return WindowLayout(shards, first, stop, slot, local)

    def records(self, start: int = 0) -> Iterator[np.ndarray]:
        """Global record indices from stream position ``start`` on, one array per window."""
        for _, ids in self.windows(start):
            yield ids

    def windows(self, start: int = 0) -> Iterator[tuple[int, np.ndarray]]:
        """``(window, global record indices)`` from stream position ``start`` on."""
        first, skip = self.locate(start)
        for window in range(first, self.num_windows):
            ids = self.window_records(window)
            if skip:
                ids, skip = ids[skip:], 0
            if len(ids):
                yield window, ids

    def locate(self, start: int) -> tuple[int, int]:
        """The window holding stream position ``start``, and how far into it that is."""
        if not 0 <= start <= self.num_records:
            raise ValueError(f"start must be in [0, {self.num_records}], got {start}")
        sizes = self.window_sizes()
        edges = np.zeros(len(sizes) + 1, dtype=np.int64)
        np.cumsum(sizes, out=edges[1:])
        first = max(int(np.searchsorted(edges, start, side="right")) - 1, 0)
        return first, start - int(edges[first]) if len(sizes) else 0


def _exclusive_cumsum(counts: np.ndarray) -> np.ndarray:
    """``[0, c0, c0+c1, ...]`` without the grand total: where each count's run starts."""
    out = np.zeros(len(counts), dtype=np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


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
) -> Plan:
    """The plan of consumer ``(rank, worker)`` for ``epoch``; see the module docstring."""
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

    order = np.arange(len(counts), dtype=np.int64)
    if shuffle and len(counts) > 1:
        order = Permutation(len(counts), [seed, epoch, 0])(order)
    per_rank = -(-total // world_size) if remainder == "pad" else total // world_size
    lo = rank * per_rank + (worker * per_rank) // num_workers
    hi = rank * per_rank + ((worker + 1) * per_rank) // num_workers
    shard, begin, end = _pieces(order, counts[order], lo, hi, total)
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
        key=(seed, epoch, 1, rank, world_size, worker, num_workers),
    )


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

