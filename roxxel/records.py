"""Global record indexing over a sequence of shards that are mapped on first use.

Both the local ``Roxxel`` API and the object-store dataset address records by a global
index; this module owns that arithmetic, so it is written (and tested) once. Only the
per-shard record counts are held up front, as one NumPy array.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Sequence

import numpy as np

from .format import MappedShard

__all__ = ["ShardedRecords"]


class ShardedRecords:
    """Records ``0..len-1`` laid end to end across shards with the given record counts.

    ``load(k)`` returns shard ``k`` mapped and validated; it is called at most once per
    shard until :meth:`release` or :meth:`close`. Record access returns zero-copy
    ``numpy.uint8`` views into the mapped shards.
    """

    def __init__(self, counts: Sequence[int] | np.ndarray, load: Callable[[int], MappedShard]):
        counts = np.asarray(counts, dtype=np.int64)
        self.starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])
        self._starts_list: list[int] = self.starts.tolist()
        self._n = int(self.starts[-1])
        self._load = load
        self._shards: list[MappedShard | None] = [None] * len(counts)

    def __len__(self) -> int:
        return self._n

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def shard(self, k: int) -> MappedShard:
        """Shard ``k``, mapped (loading it if needed)."""
        s = self._shards[k]
        if s is None:
            s = self._load(k)
            expected = self._starts_list[k + 1] - self._starts_list[k]
            if len(s) != expected:
                s.close()
                raise ValueError(
                    f"{s.path}: shard has {len(s)} records, expected {expected}"
                )
            self._shards[k] = s
        return s

    def is_loaded(self, k: int) -> bool:
        return self._shards[k] is not None

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, record within shard) of global record ``i`` (0 <= i < len)."""
        k = bisect_right(self._starts_list, i) - 1
        return k, i - self._starts_list[k]

    def get(self, i: int) -> np.ndarray:
        """Record ``i``; negative indices count from the end."""
        n = self._n
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"record index {i} out of range for {n} records")
        starts = self._starts_list
        k = bisect_right(starts, i) - 1
        s = self._shards[k]
        if s is None:
            s = self.shard(k)
        return s.view(i - starts[k])

    def gather(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Records at ``indices`` (negative allowed), in that order, as views."""
        idx = np.asarray(indices)
        if idx.size == 0:
            return []
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"record indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64).ravel()
        n = self._n
        idx = np.where(idx < 0, idx + n, idx)
        bad = np.flatnonzero((idx < 0) | (idx >= n))
        if len(bad):
            raise IndexError(
                f"record index {int(np.asarray(indices).ravel()[bad[0]])} "
                f"out of range for {n} records"
            )
        shard_ids = np.searchsorted(self.starts, idx, side="right") - 1
        local = idx - self.starts[shard_ids]
        out: list[np.ndarray | None] = [None] * len(idx)
        order = np.argsort(shard_ids, kind="stable")
        sorted_ids = shard_ids[order]
        cuts = np.flatnonzero(np.diff(sorted_ids)) + 1
        for group in np.split(order, cuts):
            shard = self.shard(int(shard_ids[group[0]]))
            rec = local[group]
            ends = shard.offsets[rec]
            begins = np.where(rec > 0, shard.offsets[np.maximum(rec - 1, 0)], 0)
            payload = shard.payload
            for pos, b, e in zip(group.tolist(), begins.tolist(), ends.tolist()):
                out[pos] = payload[b:e]
        return out  # type: ignore[return-value]

    def release(self, k: int) -> None:
        """Drop shard ``k``'s map (views already handed out stay valid)."""
        s = self._shards[k]
        if s is not None:
            self._shards[k] = None
            s.close()

    def close(self) -> None:
        for k in range(len(self._shards)):
            self.release(k)
