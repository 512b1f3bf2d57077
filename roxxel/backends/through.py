"""A part's bytes handed on as they arrive, through a small buffer.

Where a downloaded range goes on to a file (a shard's temp file in the cache), a buffer of
the whole range only holds the bytes on their way: with 32 parts of 8 MiB in flight,
fresh part buffers cost the kernel more (zeroing their pages) than the bytes' copies, a
third of a loopback read's CPU. A :class:`Through` stands in for that buffer wherever a
backend reads a range (``read_range_into``'s ``into``): the body is received into a
buffer of a fraction of the range's size, reused from one block to the next, and each
block is handed on at its offset as soon as it is full.

An attempt abandoned on a stall (:func:`.watchdog.watched`) may still be receiving. Each
attempt has a number, given out under a lock; :meth:`Through.retry` gives the next
attempt a number and a buffer of its own, and refuses every earlier attempt's writes
from then on (:class:`Revoked`), once a write under way has ended. So when the last
attempt has returned, nothing more of the range is written by any other, and
:meth:`Through.revoke` refuses them all (after the last has failed). The time spent
writing, or waiting for an earlier attempt's write, is local work, not the store's
silence: the stall clock is paused meanwhile.
"""

from __future__ import annotations

import http.client
import mmap
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .watchdog import PIECE_SIZE, current, fill

__all__ = ["Revoked", "Through", "receive"]


class Revoked(RuntimeError):
    """An attempt's bytes are no longer wanted: a later attempt has replaced it, or the
    download it was for has ended."""


class _Gate:
    """Which attempt of a :class:`Through` may write, and how many writes are under way."""

    def __init__(self) -> None:
        self.cond = threading.Condition(threading.Lock())
        self.current = 0
        self.writing = 0

    def advance(self) -> int:
        """A new attempt's number: every earlier one's writes are refused from now on;
        returns once no write is under way."""
        with self.cond:
            self.current += 1
            number = self.current
            with _local_work():
                while self.writing:
                    self.cond.wait()
        return number


@contextmanager
def _local_work() -> Iterator[None]:
    """The stall clock of the watched call on this thread (if any) paused meanwhile."""
    progress = current()
    if progress is None:
        yield
        return
    with progress.paused():
        yield


class Through:
    """Where the ``size`` bytes of a range go as they arrive: received through ``buffer``
    and handed on, a buffer at a time, to ``write(offset, block)``, the offset counted
    from the range's start (see the module). ``len()`` is ``size``."""

    def __init__(self, buffer: memoryview, write: Callable[[int, memoryview], object], size: int,
                 *, _gate: _Gate | None = None, _number: int = 0) -> None:
        if not len(buffer):
            raise ValueError("a Through needs a buffer of at least one byte")
        self.buffer, self.size = buffer, size
        self._write = write
        self._gate = _Gate() if _gate is None else _gate
        self._number = _number

    def __len__(self) -> int:
        return self.size

    def revoke(self) -> None:
        """Refuse the writes of every attempt so far from now on (returns once a write
        under way has ended)."""
        self._gate.advance()

    def retry(self) -> Through:
        """The range again, for another attempt, with a buffer of its own (an abandoned
        attempt may still be receiving into the earlier one); the earlier attempts'
        writes are refused."""
        number = self._gate.advance()
        buffer = mmap.mmap(-1, len(self.buffer), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)  # (not the heap)
        return Through(memoryview(buffer), self._write, self.size, _gate=self._gate, _number=number)

    def put(self, offset: int, block: memoryview) -> None:
        """Hand ``block`` on at ``offset``; Revoked if a later attempt has begun."""
        gate = self._gate
        with gate.cond:
            if gate.current != self._number:
                raise Revoked(f"bytes from {offset} of an attempt given up on")
            gate.writing += 1
        try:
            with _local_work():
                self._write(offset, block)
        finally:
            with gate.cond:
                gate.writing -= 1
                if not gate.writing:
                    gate.cond.notify_all()

    def receive(self, readinto: Callable[[memoryview], int | None], size: int) -> None:
        """The first ``size`` bytes of the range from ``readinto`` (an HTTP body's), in
        pieces of at most :data:`.watchdog.PIECE_SIZE`, each reported to the watchdog,
        handed on a buffer at a time; IncompleteRead if the body ends first."""
        progress = current()
        buffer, got = self.buffer, 0
        while got < size:
            block = min(len(buffer), size - got)
            filled = 0
            while filled < block:
                n = readinto(buffer[filled : min(block, filled + PIECE_SIZE)])
                if not n:
                    raise http.client.IncompleteRead(b"", size - got - filled)
                filled += n
                if progress is not None:
                    progress.beat()
            self.put(got, buffer[:block])
            got += block

    def copy(self, data: bytes) -> int:
        """Hand on what of ``data`` (the range's bytes, received whole) fits; returns
        ``len(data)``."""
        n = min(len(data), self.size)
        if n:
            self.put(0, memoryview(data)[:n])
        return len(data)


def receive(readinto: Callable[[memoryview], int | None], into: memoryview | Through, size: int) -> None:
    """The first ``size`` bytes of a body from ``readinto`` into ``into``, a buffer
    (:func:`.watchdog.fill`) or a :class:`Through`."""
    if isinstance(into, Through):
        into.receive(readinto, size)
    else:
        fill(readinto, into[:size])
