"""Records read as typed NumPy arrays: ``ds.arrays`` and ``records.as_arrays(dtype, shape)``.

A :class:`TypedRecords` reads the records of a dataset (or of local shards) as arrays of
one :class:`~roxxel.manifest.record_type.RecordType`, without copying where the bytes
allow it:

- ``typed[i]`` is a view of record ``i`` in its shard's map: an array of the shape, or a
  1-D array for variable-length records;
- ``typed[a:b]`` of fixed-shape records in one shard is one ``(n, *shape)`` view of that
  shard's map; across shards, and for index lists and stepped slices, it is one stacked
  ``(n, *shape)`` array (a copy). Variable-length records give a list of 1-D views.
- ``typed.iter(...)`` (a dataset's, with ``ds.iter``'s arguments) yields the planned
  stream as arrays, or with ``batch_size`` as ``(batch, *shape)`` arrays: each batch
  holds the stream's next ``batch_size`` records (``state()`` counts them as ``ds.iter``
  does), copied straight from the shards' maps into a new array (never a view of the
  maps or of another batch): records stored back to back in one piece, the others with
  one ``take`` per shard, so within a batch they are grouped by shard, in the window's
  download order and in stream order within each group (see :class:`_Pieces`).

A record whose length does not fit the type (not the fixed shape's size, or not a
multiple of the dtype's size) raises :class:`~roxxel.errors.ShardFormatError` naming the
record. A record's offset in its shard need not be a multiple of the dtype's size: such
views are valid but unaligned (NumPy reads them, somewhat more slowly).

The raw ``uint8`` views stay where they were: ``ds[i]`` is unchanged for every dataset,
typed or not.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ShardFormatError
from ..manifest import Manifest
from ..manifest.io import MANIFEST_KEY
from ..manifest.record_type import RecordType

if TYPE_CHECKING:
    from ..backends import Store
    from ..format import MappedShard

    # roxxel.read.records (which imports this module) and roxxel.read.iteration: not
    # imported here, even for type checkers, so that the read path has no import cycle
    Records = Any
    RecordIterator = Any

__all__ = ["RecordType", "TypedIterator", "TypedRecords", "declared_type"]


def declared_type(manifest: Manifest, store: Store) -> RecordType | None:
    """The record type ``manifest`` (of the dataset in ``store``) declares, or None;
    ManifestError naming the manifest, the field and the value if it is invalid."""
    return RecordType.from_meta(manifest.meta, store.url(MANIFEST_KEY))


class TypedRecords:
    """The records of ``records`` as arrays of ``kind`` (see the module docstring).

    ``label`` names the dataset in error messages.
    """

    def __init__(self, records: Records, kind: RecordType, label: str) -> None:
        self.records = records
        self.kind = kind
        self.dtype = kind.dtype
        self.shape = kind.shape
        self._label = label
        self._nbytes = kind.record_bytes
        self._itemsize = kind.dtype.itemsize
        # per shard: (its map, whether all its records have the fixed size)
        self._gridded: dict[int, tuple[int, bool]] = {}  # shard -> (id of the map checked, on grid)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, key: int | slice | Sequence[int] | np.ndarray) -> np.ndarray | list[np.ndarray]:
        """One record as an array; a slice or index list as one array (fixed shape) or a
        list of arrays (variable length)."""
        if isinstance(key, (int, np.integer)) and not isinstance(key, (bool, np.bool_)):
            i = int(key)
            return self.typed(self.records[i], i + len(self.records) if i < 0 else i)
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self.records))
            if step == 1 and self._nbytes is not None:
                return self._run(start, stop)
            return self._gather(np.arange(start, stop, step, dtype=np.int64))
        if isinstance(key, (list, tuple, np.ndarray, range)):
            return self._gather(key)
        raise TypeError(f"record index must be an int, slice or list of ints, got {type(key).__name__}")

    def __iter__(self) -> Iterator[np.ndarray]:
        """Every record in stored order, as arrays."""
        typed = self.typed
        return (typed(raw, i) for i, raw in enumerate(self.records))

    def iter(self, *args: Any, batch_size: int | None = None, **kwargs: Any) -> TypedIterator:
        """``ds.iter(*args, **kwargs)`` as arrays; with ``batch_size``, as ``(batch, *shape)``
        arrays of fixed-shape records (lists of arrays for variable-length ones), the last
        batch shorter. ``state()`` and ``position`` count records, as ``ds.iter``'s do."""
        raw: RecordIterator = self.records.iter(*args, **kwargs)  # type: ignore[attr-defined]
        return TypedIterator(raw, self, batch_size)

    def resume(self, state: Any, *, batch_size: int | None = None, **kwargs: Any) -> TypedIterator:
        """``ds.resume(state, **kwargs)`` as arrays (or batches), as :meth:`iter` gives them."""
        raw: RecordIterator = self.records.resume(state, **kwargs)  # type: ignore[attr-defined]
        return TypedIterator(raw, self, batch_size)

    # -- conversions ----------------------------------------------------------------

    def typed(self, raw: np.ndarray, index: int | str) -> np.ndarray:
        """The ``uint8`` view ``raw`` of record ``index`` as an array of this type."""
        n = raw.shape[0]
        if self._nbytes is not None:
            if n != self._nbytes:
                raise self._misfit(index, n)
            return raw.view(self.dtype).reshape(self.shape)  # type: ignore[arg-type]
        if n % self._itemsize:
            raise self._misfit(index, n)
        return raw.view(self.dtype)

    def stack(self, views: list[np.ndarray], where: Any) -> np.ndarray:
        """Fixed-shape records' ``uint8`` views as one ``(n, *shape)`` array (a copy);
        ``where(j)`` names the j-th record if it does not fit."""
        size = self._nbytes
        assert size is not None
        if not views:
            return np.empty((0, *self.shape), dtype=self.dtype)  # type: ignore[misc]
        lengths = np.fromiter(map(len, views), dtype=np.int64, count=len(views))
        bad = np.flatnonzero(lengths != size)
        if len(bad):
            raise self._misfit(where(int(bad[0])), int(lengths[bad[0]]))
        joined = bytearray().join(views)  # one copy, faster than np.concatenate of many small arrays
        return np.frombuffer(joined, dtype=self.dtype).reshape(len(views), *self.shape)  # type: ignore[misc]

    def _misfit(self, index: int | str, n: int) -> ShardFormatError:
        name = f"record {index}" if isinstance(index, int) else index
        if self._nbytes is not None:
            want = f"the {self._nbytes} bytes of one {self.kind.describe()}"
        else:
            want = f"a multiple of {self._itemsize} bytes ({self.dtype})"
        return ShardFormatError(f"{self._label}: {name} has {n} bytes, expected {want}")

    def _gather(self, indices: Sequence[int] | np.ndarray) -> np.ndarray | list[np.ndarray]:
        views = self.records.gather(indices)  # checks the indices
        n = len(self.records)
        idx = np.asarray(indices, dtype=np.int64).ravel() if len(views) else np.zeros(0, np.int64)
        if self._nbytes is None:
            return [self.typed(v, int(i) % n) for v, i in zip(views, idx.tolist())]
        return self.stack(views, lambda j: int(idx[j]) % n)

    def _run(self, start: int, stop: int) -> np.ndarray:
        """Fixed-shape records ``start..stop-1``: a view inside one shard, else stacked."""
        if start >= stop:
            return np.empty((0, *self.shape), dtype=self.dtype)  # type: ignore[misc]
        records = self.records
        first, lo = records.locate(start)
        last, hi = records.locate(stop - 1)
        if first == last:
            return self._shard_run(first, lo, hi + 1)
        records._source.about_to_map(list(range(first, last + 1)))
        starts = records._starts_list
        parts = [self._shard_run(k, lo if k == first else 0, hi + 1 if k == last else starts[k + 1] - starts[k])
                 for k in range(first, last + 1)]
        return np.concatenate(parts)

    def _shard_run(self, k: int, lo: int, hi: int) -> np.ndarray:
        """Records ``lo..hi-1`` of shard ``k`` (fixed shape): one view of its map."""
        size = self._nbytes
        assert size is not None
        shard = self.records.shard(k)
        known = self._gridded.get(k)
        if known is None or known[0] != id(shard):  # (no reference kept: the residency decides
            known = self._gridded[k] = (id(shard), self._on_grid(shard, size))  # when a map goes)
        if known[1]:  # every record of the shard has the size: record j starts at j * size
            begin = lo * size
        else:
            offsets = shard.offsets
            begin = int(offsets[lo - 1]) if lo else 0
            ends = offsets[lo:hi]
            bad = np.flatnonzero(ends - begin != size * np.arange(1, hi - lo + 1, dtype=np.int64))
            if len(bad):  # the first record of another size
                j = lo + int(bad[0])
                length = int(offsets[j]) - (int(offsets[j - 1]) if j else 0)
                raise self._misfit(int(self.records.record_starts[k]) + j, length)
        block = shard.payload[begin : begin + (hi - lo) * size]
        return block.view(self.dtype).reshape(hi - lo, *self.shape)  # type: ignore[misc]

    def _on_grid(self, shard: MappedShard, size: int) -> bool:
        """Whether every record of ``shard`` has ``size`` bytes (checked once a map)."""
        if len(self._gridded) >= 64:  # at most what a dataset keeps mapped
            self._gridded.clear()
        return bool(np.array_equal(shard.offsets, size * np.arange(1, len(shard.offsets) + 1, dtype=np.int64)))

    def __repr__(self) -> str:
        return f"TypedRecords({self._label}, {self.kind.describe()}, records={len(self.records)})"


class TypedIterator(Iterator[Any]):
    """A planned stream (``ds.iter``) as arrays, one record or one batch at a time."""

    def __init__(self, raw: RecordIterator, typed: TypedRecords, batch_size: int | None = None) -> None:
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int)
                                       or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        self.raw = raw
        self.plan = getattr(raw, "plan", None)  # (to name a record that does not fit)
        self._typed = typed
        self.batch_size = batch_size
        self._held = 0  # records read from the stream and not yet yielded in a batch
        if batch_size is None:
            self._items = self._records()
        elif typed.kind.fixed and hasattr(raw, "make_views"):
            self._items = self._fixed_batches(batch_size)
        else:
            self._items = self._batches(batch_size)

    @property
    def position(self) -> int:
        """Records of this epoch consumed so far (see ``RecordIterator.position``): for
        batches, the records of the batches yielded."""
        return self.raw.position - self._held

    def state(self) -> dict[str, Any]:
        """As ``RecordIterator.state``: ``ds.resume(state)`` continues after the last
        record yielded (for batches, after the last batch)."""
        state = self.raw.state()
        state["position"] -= self._held
        return state

    def __len__(self) -> int:
        """Records (or batches) left in this epoch."""
        left = len(self.raw) + self._held
        return left if self.batch_size is None else -(-left // self.batch_size)

    def __iter__(self) -> Iterator[Any]:  # noqa: PYI034 (the generator itself: no Python call per item)
        return self._items

    def __next__(self) -> Any:
        return next(self._items)

    def _where(self, position: int) -> str:
        """The record at stream position ``position``, named by its global index."""
        for ids in self.plan.records(position) if self.plan is not None else ():
            return f"record {int(ids[0])}"
        return f"the record at position {position}"

    def _records(self) -> Iterator[np.ndarray]:
        raw, typed = self.raw, self._typed
        fit = typed.typed
        for view in raw:
            try:
                yield fit(view, "")
            except ShardFormatError:
                raise typed._misfit(self._where(raw.position - 1), view.shape[0]) from None

    def _fixed_batches(self, size: int) -> Iterator[np.ndarray]:
        """Batches of fixed-shape records copied straight from the stream's blocks' bounds
        into each batch's array (no object per record, no second copy): a block fills the
        batch being assembled, which the next block finishes if this one ends first."""
        raw, typed = self.raw, self._typed
        batch = _Batch(typed, size)

        def make(payloads: list[np.ndarray], slots: np.ndarray, begins: np.ndarray, ends: np.ndarray) -> _Pieces:
            first = raw.position  # the block's first position: the previous block is done
            return _Pieces(payloads, slots, begins, ends, typed, batch, lambda j: self._where(first + j))

        raw.make_views = make
        for full in raw:
            self._held = batch.have
            if full is not None:
                yield full
                del full  # (not held here while the next batch is made)
        if batch.have:
            self._held = 0
            yield batch.take()

    def _batches(self, size: int) -> Iterator[Any]:
        raw, typed = self.raw, self._typed
        while True:
            at = raw.position
            views = list(islice(raw, size))
            if not views:
                return
            def where(j: int, at: int = at) -> str:
                return self._where(at + j)

            if typed.kind.fixed:
                yield typed.stack(views, where)
            else:
                yield [typed.typed(v, where(j)) if len(v) % typed._itemsize else v.view(typed.dtype)
                       for j, v in enumerate(views)]


class _Batch:
    """The batch a typed stream is assembling: a new ``(size, *shape)`` array (allocated
    as its first record comes) and how many records it holds (``have``)."""

    __slots__ = ("array", "dtype", "have", "shape", "size")

    def __init__(self, typed: TypedRecords, size: int) -> None:
        assert typed.shape is not None
        self.size, self.dtype, self.shape = size, typed.dtype, (size, *typed.shape)
        self.have = 0
        self.array: np.ndarray | None = None

    def open(self) -> np.ndarray:
        """The batch's array, allocated if it is not yet."""
        if self.array is None:
            self.array = np.empty(self.shape, dtype=self.dtype)
        return self.array

    def take(self) -> np.ndarray:
        """The records held, as a ``(have, *shape)`` array; the next batch starts empty."""
        assert self.array is not None
        out = self.array if self.have == self.size else self.array[: self.have]
        self.array = None
        self.have = 0
        return out


class _Pieces:
    """One block of a planned stream (its records' bounds in its shards' payloads) copied
    into fixed-shape batches: the ``RecordViews`` contract of :mod:`roxxel.read.views`,
    whose items are the batches ``batch`` completes (a block that ends before its batch
    does gives None for it last: the next block finishes it).
    ``__length_hint__`` counts the records not yet copied, which is how the stream's
    position is known.

    Within each batch's part of the block, records are grouped by slot (the window's
    shards in download order), in stream order within each group: a run of records
    stored back to back is one copy, and other records are one ``take`` a slot and
    batch. (When a batch's slots never go down in stream order, as in an unshuffled
    stream, that is the stream order itself.)

    Every bound is checked before the first batch is copied, as ``record_views`` checks
    them (IndexError); a record of another size raises the misfit error naming
    ``where(j)``, its j-th record.
    """

    __slots__ = ("_at", "_batch", "_grid", "_local", "_rows", "_runs", "_seg", "_seg_local", "_seg_slot",
                 "_seg_starts", "_size", "_sizes", "_slots")

    def __init__(
        self, payloads: list[np.ndarray], slots: np.ndarray, begins: np.ndarray, ends: np.ndarray,
        typed: TypedRecords, batch: _Batch, where: Callable[[int], str],
    ) -> None:
        size = typed._nbytes
        assert size is not None
        self._batch, self._slots, self._size = batch, slots, size
        self._sizes = [len(p) for p in payloads]
        if len(slots) and (int(slots.min()) < 0 or int(slots.max()) >= len(payloads)):
            raise IndexError(f"a block's slots must be in [0, {len(payloads)})")
        lengths = ends - begins
        if len(slots) and (int(lengths.min()) != size or int(lengths.max()) != size or int(begins.min()) < 0):
            self._outside(begins, ends)  # (raises if a record starts or ends outside its payload)
            bad = int(np.flatnonzero(lengths != size)[0])
            raise typed._misfit(where(bad), int(lengths[bad]))
        # (that no record ends past its payload is checked with the segments, at the first batch)
        self._rows: list[np.ndarray] | None
        self._local = begins // size
        self._grid = bool(np.array_equal(np.multiply(self._local, size, out=lengths), begins))
        if self._grid:  # record j of a shard's rows is its j-th record, as an array of the type
            shape = batch.shape[1:]
            self._rows = [p[: len(p) // size * size].view(typed.dtype).reshape(-1, *shape) for p in payloads]
        else:  # a record off the grid of its shard: rows of the record's size at every byte
            self._local = begins
            self._rows = [np.lib.stride_tricks.sliding_window_view(p, size) if len(p) >= size else
                          p[:0].reshape(0, size) for p in payloads]
        self._seg_starts: list[int] | None = None  # (see _segments: worked out at the first batch)
        self._seg_slot: list[int] = []
        self._seg_local: list[int] | np.ndarray = []
        self._runs = False
        self._seg = 0
        self._at = 0

    def __iter__(self) -> _Pieces:
        return self

    def __length_hint__(self) -> int:
        return len(self._slots) - self._at

    def __next__(self) -> np.ndarray | None:
        rows, at = self._rows, self._at
        n = len(self._slots)
        if rows is None or at >= n:
            raise StopIteration
        batch = self._batch
        have = batch.have
        if self._seg_starts is None:
            self._segments(have, batch.size)
        starts, seg_slot, seg_local = self._seg_starts, self._seg_slot, self._seg_local
        assert starts is not None
        stop = min(n, at + batch.size - have)
        j = self._seg
        if self._runs:
            while starts[j + 1] <= at:
                j += 1
            if not have and stop - at == batch.size and starts[j + 1] >= stop:  # a whole batch, one run
                first = seg_local[j] + at - starts[j]  # type: ignore[operator]
                self._seg, self._at = j, stop
                return rows[seg_slot[j]][first : first + batch.size].copy()
        dst = batch.open()
        if self._runs:  # runs of records stored back to back, possibly across batches
            while at < stop:
                while starts[j + 1] <= at:
                    j += 1
                end = min(starts[j + 1], stop)
                first = seg_local[j] + at - starts[j]  # type: ignore[operator]
                dst[have : have + end - at] = rows[seg_slot[j]][first : first + end - at]
                have += end - at
                at = end
        elif self._grid:  # a batch's records of one slot; its segments end where it does
            while at < stop:
                end = starts[j + 1]
                rows[seg_slot[j]].take(seg_local[at:end], 0, dst[have : have + end - at], "clip")  # (checked)
                have += end - at
                at = end
                j += 1
        else:
            dst = dst.reshape(batch.size, -1).view(np.uint8)  # (the rows here are bytes)
            while at < stop:
                end = starts[j + 1]
                dst[have : have + end - at] = rows[seg_slot[j]][seg_local[at:end]]  # (take would copy
                have += end - at  # the windows whole)
                at = end
                j += 1
        self._seg, self._at = j, at
        batch.have = have
        return batch.take() if have == batch.size else None

    def _segments(self, have: int, size: int) -> None:
        """Works out the block's segments, the batch being assembled holding ``have`` of
        its ``size`` records: runs of records stored back to back where they are few and
        keep each batch's grouping (``_runs``); otherwise each batch's records of each
        slot, in stream order (``_seg_local`` then holds every record, in that order).
        IndexError if a record ends past its payload."""
        slots, local = self._slots, self._local
        n = len(slots)
        head = min(n, 64)  # most of a block's first records in runs: worth looking for them
        if self._grid and (local[1:head] - local[: head - 1] == 1).sum() * 4 >= 3 * (head - 1):
            breaks = np.flatnonzero((slots[1:] != slots[:-1]) | (local[1:] - local[:-1] != 1)) + 1
            down = breaks[slots[breaks] < slots[breaks - 1]]  # a slot after a higher one...
            if len(breaks) <= n // 16 and not ((down + have) % size).any():  # ... only at a batch's start
                cuts = [0, *breaks.tolist()]
                self._seg_starts = [*cuts, n]
                self._seg_slot = slots[cuts].tolist()
                self._seg_local = local[cuts].tolist()
                self._runs = True
                tops = [lo + b - a - 1 for lo, a, b in zip(self._seg_local, cuts, self._seg_starts[1:])]
                self._check_ends(tops, self._seg_slot)
                return
        width = len(self._rows or ())
        first = min(size - have, n)  # the records of the batch being assembled, then whole batches
        counts = [first, *[size] * ((n - first) // size), *([(n - first) % size] if (n - first) % size else [])]
        edges = np.cumsum([0, *counts]).tolist()  # where each batch's records begin, and n
        parts = len(counts)
        per = (1 << 8) // width  # batches whose (batch, slot) keys fit in 8 bits
        if per and parts <= 16 * per:  # by batch then slot: radix sorts of 8-bit keys, per few batches
            narrow = slots.astype(np.uint8)
            key = np.repeat(((np.arange(parts) % per) * width).astype(np.uint8), counts)
            key += narrow
            order = np.empty(n, dtype=np.intp)
            for c in range(0, parts, per):
                lo, hi = edges[c], edges[min(c + per, parts)]
                order[lo:hi] = np.argsort(key[lo:hi], kind="stable")
                order[lo:hi] += lo
        else:
            part = np.repeat(np.arange(parts, dtype=np.int64), counts)  # each record's batch
            order = _stable_order(slots, width)
            order = order.take(_stable_order(part.take(order), parts))  # by batch, then slot
            narrow = slots
        sorted_slots = narrow.take(order)
        change = sorted_slots[1:] != sorted_slots[:-1]
        change[[e - 1 for e in edges[1:-1]]] = True  # a new batch starts a segment too
        cuts = np.flatnonzero(change) + 1
        self._seg_starts = [0, *cuts.tolist(), n]
        self._seg_slot = sorted_slots.take(self._seg_starts[:-1]).tolist()
        self._seg_local = local.take(order)
        self._check_ends(np.maximum.reduceat(self._seg_local, self._seg_starts[:-1]), self._seg_slot)

    def _check_ends(self, tops: np.ndarray | list[int], slots: list[int]) -> None:
        """IndexError unless the record ``tops[i]`` (the last of segment ``i``, a row or,
        off the grid, a byte offset) of each segment's slot ends inside its payload."""
        scale = self._size if self._grid else 1
        limits = np.asarray(self._sizes, dtype=np.int64).take(slots) - self._size  # the last start that fits
        if (np.asarray(tops, dtype=np.int64) * scale > limits).any():
            begins = self._local * scale
            self._outside(begins, begins + self._size)

    def _outside(self, begins: np.ndarray, ends: np.ndarray) -> None:
        """IndexError naming the block's first record outside its payload, if one is."""
        sizes = np.asarray(self._sizes, dtype=np.int64)[self._slots]
        bad = np.flatnonzero((begins < 0) | (begins > ends) | (ends > sizes))
        if len(bad):
            i = int(bad[0])
            raise IndexError(f"record {i} of a block: bounds [{int(begins[i])}, {int(ends[i])}) are outside "
                             f"its payload of {int(sizes[i])} bytes")

    def close(self) -> None:
        self._rows = None  # lets go of the maps
        self._at = len(self._slots)


def _stable_order(keys: np.ndarray, bound: int) -> np.ndarray:
    """The stable ascending order of ``keys`` (each in ``range(bound)``): a radix sort
    of 16-bit keys where they fit."""
    if bound <= 1 << 16:
        keys = keys.astype(np.uint16)
    return np.argsort(keys, kind="stable")
