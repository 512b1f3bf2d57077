"""Many records' zero-copy views at once: the innermost loop of every bulk read.

``record_views(bases, slots, begins, ends)`` is an iterator over
``bases[slots[i]][begins[i]:ends[i]]``: ``np.uint8`` views of shard payloads, read-only
when the payload is. Every slot and bound is checked before the first record is
yielded; a bad one raises IndexError and yields nothing. The iterator lets go of its
bases once exhausted or closed, and its length hint (``operator.length_hint``) is the
number of records left, which is how a stream knows its position without counting.

Two implementations share that contract and its tests: the C extension
``roxxel._cviews``, built at install time where a C compiler is at hand, and
:class:`PyViews`, used where it is not. ``ACCELERATED`` says which one this process
runs. Records are the same objects either way; the C one makes bulk reads two to three
times as fast, which matters when a record costs less than the loop around it.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from typing import Protocol

import numpy as np

__all__ = ["ACCELERATED", "BLOCK", "PyViews", "RecordViews", "closing", "record_views", "stored_blocks"]

BLOCK = 1 << 14  # records per block of views: bounds the bounds arrays, whatever the shard


class RecordViews(Protocol):
    """What :func:`record_views` returns."""

    def __iter__(self) -> Iterator[np.ndarray]: ...

    def __length_hint__(self) -> int: ...

    def close(self) -> None: ...


class PyViews:
    """The pure-Python twin of ``roxxel._cviews.views``."""

    __slots__ = ("_cursor", "_records", "_slots")

    def __init__(
        self, bases: Sequence[np.ndarray], slots: np.ndarray, begins: np.ndarray, ends: np.ndarray
    ) -> None:
        bases = list(bases)
        for k, base in enumerate(bases):
            if not (isinstance(base, np.ndarray) and base.ndim == 1 and base.dtype == np.uint8
                    and base.flags.c_contiguous):
                raise TypeError(f"base {k} must be a 1-d contiguous np.uint8 array, got {type(base)!r}")
            if type(base) is not np.ndarray:
                bases[k] = base.view(np.ndarray)  # as the C twin: plain arrays, not subclasses
        slots, begins, ends = (_int64s(a, name) for a, name in ((slots, "slots"), (begins, "begins"), (ends, "ends")))
        if not len(slots) == len(begins) == len(ends):
            raise ValueError(
                f"slots, begins and ends must have one length, got {len(slots)}, {len(begins)} and {len(ends)}"
            )
        _check_records(bases, slots, begins, ends)
        # Copies, as Python ints; the begins' iterator is the cursor: how far it has got is
        # how far the records have.
        self._slots = slots.tolist()
        self._cursor = iter(begins.tolist())
        self._records = _slice_all(bases, self._slots, self._cursor, ends.tolist())

    def __iter__(self) -> Iterator[np.ndarray]:
        return self._records

    def __next__(self) -> np.ndarray:
        return next(self._records)

    def __length_hint__(self) -> int:
        return self._cursor.__length_hint__() if self._slots else 0

    def close(self) -> None:
        self._slots.clear()  # ends the loop, even one running in another thread right now
        try:
            self._records.close()
        except ValueError:  # running in another thread: it ends at its next step
            pass


def _slice_all(
    bases: list[np.ndarray], slots: list[int], begins: Iterator[int], ends: list[int]
) -> Iterator[np.ndarray]:
    for s, b, e in zip(slots, begins, ends):
        yield bases[s][b:e]


def _int64s(a: object, name: str) -> np.ndarray:
    """``a`` as a 1-d int64 array, if it exports a 1-d contiguous native int64 buffer."""
    view = memoryview(a)  # type: ignore[arg-type]  # TypeError for lists, as in C
    fmt = view.format.lstrip("@=" + ("<" if sys.byteorder == "little" else ">"))
    if view.ndim != 1 or view.itemsize != 8 or fmt not in ("q", "l") or not view.c_contiguous:
        raise TypeError(
            f"{name} must be a 1-d contiguous array of native int64, got format "
            f"'{view.format}' with {view.ndim} dimension(s)"
        )
    return np.frombuffer(view, dtype=np.int64)


def _check_records(bases: list[np.ndarray], slots: np.ndarray, begins: np.ndarray, ends: np.ndarray) -> None:
    """IndexError naming the first record whose slot or bounds are bad, as the C twin does."""
    if not len(slots):
        return
    sizes = np.array([len(b) for b in bases], dtype=np.int64)
    bad_slot = (slots < 0) | (slots >= len(bases))
    size = sizes[np.where(bad_slot, 0, slots)] if len(bases) else np.zeros_like(slots)
    bad = np.flatnonzero(bad_slot | (begins < 0) | (begins > ends) | (ends > size))
    if not len(bad):
        return
    i = int(bad[0])
    s, b, e = int(slots[i]), int(begins[i]), int(ends[i])
    if bad_slot[i]:
        raise IndexError(f"record {i}: slot {s} is not one of the {len(bases)} bases")
    raise IndexError(f"record {i}: bounds [{b}, {e}) are outside base {s} of {int(sizes[s])} bytes")


try:
    from .._cviews import views as _c_views
except ImportError:  # built without a C compiler: the twin below does the same, slower
    _c_views = None

ACCELERATED = _c_views is not None


def record_views(
    bases: Sequence[np.ndarray], slots: np.ndarray, begins: np.ndarray, ends: np.ndarray
) -> RecordViews:
    """Records ``bases[slots[i]][begins[i]:ends[i]]``, i = 0..n-1, as views (see the module)."""
    if _c_views is not None:
        return _c_views(bases, slots, begins, ends)  # type: ignore[no-any-return]
    return PyViews(bases, slots, begins, ends)


def closing(blocks: Iterator[RecordViews]) -> Iterator[RecordViews]:
    """``blocks``; closed early (as ``close()`` of a dataset does), it closes the block
    being read, so the maps that block holds go with it."""
    block: RecordViews | None = None
    try:
        for block in blocks:
            yield block
    finally:
        if block is not None:
            block.close()


_ZERO_SLOTS = np.zeros(BLOCK, dtype=np.int64)
_ZERO_SLOTS.flags.writeable = False


def stored_blocks(payload: np.ndarray, offsets: np.ndarray, first: int = 0) -> Iterator[RecordViews]:
    """One shard's records in stored order from record ``first`` on, as blocks of at
    most :data:`BLOCK` views.

    The bounds are copied out of ``offsets`` (which may lie in the shard's map), so the
    blocks hold the map through ``payload`` alone."""
    for lo in range(first, len(offsets), BLOCK):
        hi = min(lo + BLOCK, len(offsets))
        ends = offsets[lo:hi].astype(np.int64)
        begins = np.empty_like(ends)
        begins[1:] = ends[:-1]
        begins[:1] = offsets[lo - 1] if lo else 0
        yield record_views((payload,), _ZERO_SLOTS[: hi - lo], begins, ends)
