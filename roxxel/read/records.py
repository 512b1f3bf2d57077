"""Global record indexing over a sequence of shards that are mapped on first use.

Both the local ``Roxxel`` API and the object-store dataset address records by a global
index; :class:`Records` owns that arithmetic, so it is written (and tested) once. Which
shards are mapped, and how a shard gets mapped, is the business of a
:class:`ShardSource` given to it (for a dataset, its :class:`~roxxel.read.residency.Residency`;
for local files, :class:`LocalShards`). Only the per-shard record counts are held up
front, as one NumPy array.
"""

from __future__ import annotations

import weakref
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from typing import Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from ..errors import ShardFormatError
from ..format import MappedShard
from ..manifest.record_type import RecordType
from .head import HeadRecords
from .typed import TypedRecords
from .views import BLOCK, RecordViews, closing, record_views, stored_blocks

__all__ = ["LocalShards", "Records", "ShardSource"]

T = TypeVar("T")


class ShardSource(Protocol):
    """What :class:`Records` needs of whoever maps its shards."""

    @property
    def max_mapped(self) -> int | None:
        """How many shards one read may keep mapped at once (None: any number)."""

    def map(self, k: int) -> MappedShard:
        """Shard ``k``, mapped and validated; held until :meth:`release`."""

    def release(self, k: int) -> None:
        """Let go of shard ``k``'s map (if mapped), telling the :meth:`on_unmap` callback."""

    def on_unmap(self, callback: Callable[[int], None]) -> None:
        """Call ``callback(k)`` whenever shard ``k`` is unmapped, whoever decided it."""

    def about_to_map(self, shards: list[int]) -> None:
        """``shards`` are all needed now (a remote source may fetch them side by side)."""

    def expect(self, shards: Iterable[int]) -> None:
        """``shards`` will be read in this order (a remote source plans its cache by it)."""

    def prefetch(self, upcoming: Iterable[int]) -> None:
        """These shards come next, in this order (a remote source downloads ahead)."""

    def first_records(self, k: int) -> Callable[[], HeadRecords | None] | None:
        """Ask, before shard ``k``'s download starts, for its first records sooner than
        its map (a remote shard with a head). Returns None if they would not come
        sooner; else a function that waits for them and returns them, checked, or None
        if they could not be had."""


class LocalShards:
    """Shard files on local disk: mapped when asked, nothing fetched or planned."""

    max_mapped = None

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)
        self._maps: dict[int, MappedShard] = {}
        self._unmapped: Callable[[int], object] = lambda k: None

    def map(self, k: int) -> MappedShard:
        shard = self._maps[k] = MappedShard(self.paths[k])
        return shard

    def release(self, k: int) -> None:
        shard = self._maps.pop(k, None)
        if shard is not None:
            self._unmapped(k)
            shard.close()

    def on_unmap(self, callback: Callable[[int], object]) -> None:
        self._unmapped = callback

    def about_to_map(self, shards: list[int]) -> None:
        pass

    def expect(self, shards: Iterable[int]) -> None:
        pass

    def prefetch(self, upcoming: Iterable[int]) -> None:
        pass

    def first_records(self, k: int) -> Callable[[], HeadRecords | None] | None:
        return None


class Records:
    """Records ``0..len-1`` laid end to end across shards with known record counts.

    ``counts`` are the shards' record counts; ``source`` maps them (see
    :class:`ShardSource`). ``self[i]`` is a zero-copy ``numpy.uint8`` view; slices and
    index lists give lists of views. The dataset classes are :class:`Records` with a
    source: the index's hot path is their own ``__getitem__``, with no call in between.
    """

    _n: int = 0
    _closed: bool = False
    _iterators: weakref.WeakSet[Iterator[Any]] | None = None  # live generators of blocks
    _only: tuple[np.ndarray, Sequence[int]] | None = None

    def __init__(self, counts: Sequence[int] | np.ndarray, source: ShardSource) -> None:
        self._source = source
        # Held weakly: no reference cycle, so a dataset dropped without close() goes (and
        # its shards' cache locks with it) at once, not at the next garbage collection.
        unmapped = weakref.WeakMethod(self._unmapped)
        source.on_unmap(lambda k: _call_if_alive(unmapped, k))
        self._set_counts(counts)

    def _set_counts(self, counts: Sequence[int] | np.ndarray) -> None:
        """Index these record counts (every shard unmapped)."""
        counts = np.asarray(counts, dtype=np.int64)
        self.record_starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.record_starts[1:])
        self._starts_list: list[int] = self.record_starts.tolist()
        self._n = int(self.record_starts[-1])
        self._multi = len(counts) > 1
        self._shards: list[MappedShard | None] = [None] * len(counts)
        # (payload, end offsets) per mapped shard: the two things a lookup needs
        self._views: list[tuple[np.ndarray, Sequence[int]] | None] = [None] * len(counts)
        self._only = None  # (payload, end offsets) of the lone shard of a one-shard dataset, mapped

    # -- shards --------------------------------------------------------------------

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def shard(self, k: int) -> MappedShard:
        """Shard ``k``, mapped (loading it if needed)."""
        self._check_open()
        s = self._shards[k]
        if s is None:
            s = self._source.map(k)
            expected = self._starts_list[k + 1] - self._starts_list[k]
            if len(s) != expected:
                self._source.release(k)
                raise ShardFormatError(
                    f"{s.path}: footer says {len(s)} records, expected {expected} from the manifest"
                )
            self._shards[k] = s
            self._views[k] = (s.payload, s.ends)
            if not self._multi:
                self._only = self._views[k]
        return s

    def is_mapped(self, k: int) -> bool:
        return self._shards[k] is not None

    def locate(self, i: int) -> tuple[int, int]:
        """(shard, record within shard) of global record ``i`` (0 <= i < len)."""
        k = bisect_right(self._starts_list, i) - 1
        return k, i - self._starts_list[k]

    def release(self, k: int) -> None:
        """Unmap shard ``k`` (views already handed out stay valid)."""
        self._source.release(k)

    def _unmapped(self, k: int) -> None:
        """The source is letting go of shard ``k``'s map: so does the index."""
        if self._shards[k] is not None:
            self._shards[k] = None
            self._views[k] = None
            self._only = None

    def _release_all(self) -> None:
        for k in range(len(getattr(self, "_shards", ()))):
            self.release(k)

    # -- records -------------------------------------------------------------------

    def __len__(self) -> int:
        self._check_open()
        return self._n

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray | list[np.ndarray]:
        """``ds[i]`` is one record; a slice or a list/array of indices gives a list."""
        only = self._only  # one shard, mapped: its offsets are global
        if only is not None and type(key) is int and 0 <= key < self._n:  # the hottest path
            payload, ends = only
            return payload[ends[key - 1] if key else 0 : ends[key]]
        if type(key) is int:  # the hot path, kept free of calls
            n = self._n
            i = key + n if key < 0 else key
            if 0 <= i < n:
                starts = self._starts_list
                k = bisect_right(starts, i) - 1 if self._multi else 0
                view = self._views[k]
                if view is None:
                    self.shard(k)
                    view = self._views[k]
                payload, ends = view  # type: ignore[misc]
                j = i - starts[k]
                return payload[ends[j - 1] if j else 0 : ends[j]]
        return self._getitem_general(key)  # errors name the index as given

    def _getitem_general(self, key: object) -> np.ndarray | list[np.ndarray]:
        self._check_open()
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            i = int(key)
            if not -self._n <= i < self._n:
                raise IndexError(f"record index {i} out of range for {self._n} records")
            return self[i]
        if isinstance(key, slice):
            return self.gather(np.arange(*key.indices(self._n), dtype=np.int64))
        if isinstance(key, (list, tuple, np.ndarray, range)):
            return self.gather(key)
        raise TypeError(f"record index must be an int, slice or list of ints, got {type(key).__name__}")

    def __iter__(self) -> Iterator[np.ndarray]:
        """Every record in stored order."""
        self._check_open()
        return chain.from_iterable(self._track(self._stored_blocks()))

    def _track(self, blocks: Iterator[T]) -> Iterator[T]:
        """Remember a live generator of blocks, so that close() can end it (and let go of
        the maps its current block holds)."""
        if self._iterators is None:
            self._iterators = weakref.WeakSet()
        self._iterators.add(blocks)
        return blocks

    def _stored_blocks(self) -> Iterator[RecordViews]:
        return closing(self._each_stored_block())

    def _each_stored_block(self) -> Iterator[RecordViews]:
        n, source = self.num_shards, self._source
        source.expect(range(n))
        for k in range(n):
            self._check_open()
            head = early = None
            if not k:  # the first shard's download starts first, and goes before the others
                # the first record from its head, if sooner (asked before the download starts)
                head = None if self.is_mapped(0) else source.first_records(0)
                source.about_to_map([0])
            source.prefetch(range(k + 1, n))  # before the map: the downloads overlap
            if head is not None:
                early = head()
            if early is not None:
                yield from stored_blocks(early.payload, early.offsets[: early.count])
            shard = self.shard(k)
            yield from stored_blocks(shard.payload, shard.offsets, early.count if early else 0)

    def as_arrays(self, dtype: npt.DTypeLike, shape: Sequence[int] | int | None = None) -> TypedRecords:
        """These records read as arrays of ``dtype`` (a plain number type), each of
        ``shape`` or, with ``shape=None``, 1-D of any length (see :mod:`roxxel.read.typed`)."""
        return TypedRecords(self, RecordType.of(dtype, shape), str(getattr(self, "url", None) or repr(self)))

    def gather(self, indices: Sequence[int] | np.ndarray) -> list[np.ndarray]:
        """Records at ``indices`` (negative allowed), in that order, as views.

        Shard lookups and offset reads are vectorized; each shard is mapped once.
        """
        self._check_open()
        idx = self._checked_indices(indices)
        return list(self._views_at(idx)) if len(idx) else []

    def iter_at(self, indices: Sequence[int] | np.ndarray) -> Iterator[np.ndarray]:
        """Records at ``indices`` (negative allowed), in that order, as views made a block
        at a time: ``ds[indices]`` without holding every view at once, for reading many
        records in an order of your own. Bad indices raise here, before any record."""
        self._check_open()
        idx = np.array(self._checked_indices(indices))  # a copy: the caller may reuse theirs
        return chain.from_iterable(self._track(closing(self._blocks_at(idx))))

    def _blocks_at(self, idx: np.ndarray) -> Iterator[RecordViews]:
        for lo in range(0, len(idx), BLOCK):
            for part in self._mappable_parts(idx[lo : lo + BLOCK]):
                self._check_open()
                yield self._views_at(part)

    def _checked_indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """``indices`` as a flat int64 array of 0..len-1 (negatives counted from the end)."""
        idx = np.asarray(indices)
        if idx.size == 0:
            return np.zeros(0, dtype=np.int64)
        if idx.dtype == bool or not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"record indices must be integers, got dtype {idx.dtype}")
        idx = idx.astype(np.int64, copy=False).ravel()
        n = self._n
        low, high = int(idx.min()), int(idx.max())
        if low < -n or high >= n:
            bad = np.flatnonzero((idx < -n) | (idx >= n))
            raise IndexError(f"record index {int(idx[bad[0]])} out of range for {n} records")
        if low < 0:
            idx = np.where(idx < 0, idx + n, idx)
        return idx

    def _views_at(self, idx: np.ndarray) -> RecordViews:
        """Views of records ``idx`` (checked, non-empty), with their shards mapped."""
        shard_ids = np.searchsorted(self.record_starts, idx, side="right") - 1
        local = idx - self.record_starts[shard_ids]
        if len(idx) * 8 < self.num_shards:  # a few records of many shards: no O(#shards) pass
            involved = np.unique(shard_ids)
        else:
            involved = np.flatnonzero(np.bincount(shard_ids, minlength=self.num_shards))
        needed = involved.tolist()
        self._source.about_to_map(needed)
        payloads, offsets = [], []
        for k in needed:
            shard = self.shard(k)
            payloads.append(shard.payload)  # keeps its map alive if the shard is released
            offsets.append(shard.offsets)
        counts = self.record_starts[involved + 1] - self.record_starts[involved]
        if int(counts.sum()) <= _CONCAT_FACTOR * len(idx) + _CONCAT_SLACK:
            slots, begins, ends = _bounds_by_table(shard_ids, local, involved, offsets, counts)
        else:  # the shards are much larger than the gather: read their offsets per shard
            slots, begins, ends = _bounds_by_shard(shard_ids, local, offsets)
        return record_views(payloads, slots, begins, ends)

    def _mappable_parts(self, idx: np.ndarray) -> list[np.ndarray]:
        """``idx`` cut into runs that touch at most as many shards as the source may keep
        mapped, so that a block's maps never pin more than it holds (else one run)."""
        cap = self._source.max_mapped
        if cap is None:
            return [idx]
        shard_ids = (np.searchsorted(self.record_starts, idx, side="right") - 1).tolist()
        cuts, seen = [], set()
        for i, k in enumerate(shard_ids):
            if k not in seen and len(seen) == cap:
                cuts.append(i)
                seen = set()
            seen.add(k)
        return np.split(idx, cuts)

    def _check_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    def _close_records(self) -> None:
        for blocks in list(self._iterators or ()):
            try:
                blocks.close()  # type: ignore[attr-defined]
            except ValueError:  # running in another thread right now; it ends on its own
                pass
        self._release_all()
        self._closed = True
        self._n = 0


def _call_if_alive(method: weakref.WeakMethod[Callable[[int], None]], k: int) -> None:
    bound = method()
    if bound is not None:
        bound(k)


# A gather reads its records' bounds from one table of the involved shards' offsets, end
# to end, when that table is not much larger than the gather; else shard by shard. (Copying
# an offset into the table costs about 1 ns; going shard by shard, several microseconds a
# shard: on 13 shards of 4K records, the table is faster even for a gather of 1024.)
_CONCAT_FACTOR = 4
_CONCAT_SLACK = 1 << 16


def _bounds_by_table(
    shard_ids: np.ndarray, local: np.ndarray, involved: np.ndarray, offsets: list[np.ndarray], counts: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slot, begin, end) of each record, with one fancy index into all the offsets."""
    slots = np.searchsorted(involved, shard_ids)  # involved is sorted and holds every id
    table = np.concatenate(offsets).astype(np.int64, copy=False)
    first = np.zeros(len(involved), dtype=np.int64)
    np.cumsum(counts[:-1], out=first[1:])
    at = first[slots] + local
    ends = table[at]
    begins = table[at - 1]  # at 0 this wraps to the table's end; local == 0 is fixed below
    begins[local == 0] = 0
    return slots, begins, ends


def _bounds_by_shard(
    shard_ids: np.ndarray, local: np.ndarray, offsets: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(slot, begin, end) of each record, reading each shard's offsets once per group."""
    order = np.argsort(shard_ids, kind="stable")
    cuts = np.flatnonzero(np.diff(shard_ids[order])) + 1
    slots = np.empty(len(local), dtype=np.int64)
    begins = np.empty(len(local), dtype=np.int64)
    ends = np.empty(len(local), dtype=np.int64)
    for slot, group in enumerate(np.split(order, cuts)):
        rec = local[group]
        table = offsets[slot]
        slots[group] = slot
        ends[group] = table[rec]
        begins[group] = np.where(rec > 0, table[np.maximum(rec - 1, 0)], 0)
    return slots, begins, ends
