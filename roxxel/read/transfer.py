"""What the part engine (:mod:`roxxel.read.parts`) keeps of each download, and how many
parts it keeps in flight.

- :class:`Transfer`: one object being downloaded, cut into parts (``bounds``), with the
  parts handed to connections, in flight and consumed, the results waiting for the
  consumer, and the bytes its caller places itself (``given``); guarded by the engine's lock.
- :class:`Concurrency`: the limit on parts in flight, a hill climb on throughput,
  halved when the store throttles. Pure: time and bytes are given to it.
- :class:`Placement`: where a download's parts are written as they arrive.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Protocol

from ..backends import Store

__all__ = ["Concurrency", "Placement", "Transfer"]

log = logging.getLogger(__name__)


class Placement(Protocol):
    """Where a download's parts are written as they arrive (the file the object will be
    kept in): :meth:`write` is called from connection threads, for disjoint ranges,
    never after the download has ended; :meth:`view` by the consumer, for bytes written."""

    def claim(self) -> None:
        """The parts will be written here (before any byte reaches the sink)."""

    def write(self, offset: int, data: memoryview) -> None:
        """Write ``data`` at ``offset``."""

    def view(self, offset: int, end: int) -> AbstractContextManager[memoryview]:
        """Bytes ``[offset, end)``, all written, as a view valid inside the ``with``."""


@dataclass
class Concurrency:
    """The number of parts in flight: a hill climb on throughput, halved on throttling.

    Every ``interval`` seconds in which the limit was the bottleneck (parts were waiting
    for a slot), the throughput of that interval is compared with the best seen at the
    previous limit: a gain of ``gain`` or more raises the limit by ``step`` (up to
    ``maximum``); no gain after a raise takes it back and stops climbing. A throttled
    request halves it (down to ``minimum``) and holds it there for ``hold`` seconds.
    Pure: time and bytes are given to it.
    """

    limit: int
    minimum: int = 2
    maximum: int = 64
    step: int = 8
    gain: float = 1.10
    interval: float = 1.0
    hold: float = 5.0
    _since: float | None = None
    _bytes: int = 0
    _saturated: bool = False
    _previous: tuple[int, float] | None = None  # (limit, throughput) before the last raise
    _climbing: bool = True
    _held_until: float = 0.0
    history: list[tuple[float, int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.limit = max(self.minimum, min(self.limit, self.maximum))

    def transferred(self, now: float, nbytes: int, saturated: bool) -> None:
        """``nbytes`` arrived at ``now``; ``saturated``: parts were waiting for a slot."""
        if self._since is None:
            self._since = now
        self._bytes += nbytes
        self._saturated = self._saturated or saturated
        elapsed = now - self._since
        if elapsed < self.interval:
            return
        rate = self._bytes / elapsed
        self._since, self._bytes, saturated, self._saturated = now, 0, self._saturated, False
        if now < self._held_until or not saturated:
            return
        previous = self._previous
        if previous is not None and previous[0] < self.limit and rate < previous[1] * self.gain:
            self._set(now, previous[0])  # the raise did not pay: back, and stay
            self._climbing, self._previous = False, None
        elif self._climbing and self.limit < self.maximum:
            self._previous = (self.limit, rate)
            self._set(now, min(self.maximum, self.limit + self.step))
        else:
            self._previous = None

    def holding(self, now: float) -> bool:
        """Whether the store throttled us lately: the limit is held where it was halved to."""
        return now < self._held_until

    def throttled(self, now: float) -> None:
        """The store asked us to slow down (HTTP 503 SlowDown, 429)."""
        if now < self._held_until and self.history and self.history[-1][0] >= now - 0.5:
            return  # one burst of refusals halves once
        self._previous, self._climbing = None, False
        self._held_until = now + self.hold
        self._set(now, max(self.minimum, self.limit // 2))

    def _set(self, now: float, limit: int) -> None:
        if limit != self.limit:
            self.limit = limit
            self.history.append((now, limit))
            del self.history[:-100]  # the recent changes are enough to see what happened
            log.debug("download concurrency now %d parts in flight", limit)


class Transfer:
    """One object being downloaded as parts (guarded by the engine's lock)."""

    def __init__(self, store: Store, key: str, size: int, part_size: int, ticket: int, start: int = 0,
                 lock: threading.Lock | None = None) -> None:
        self.store, self.key, self.size = store, key, size
        self.bounds = _tiles(start, size, part_size, part_size) or [(start, start)]
        self.ticket = ticket
        self.order: float = ticket  # when it is needed (the reader's order), if told
        self.urgent = False
        self.first = False  # the first shard its reader waits for (the first record)
        self.issued = 0  # parts handed to connections
        self.in_flight = 0  # parts being fetched now
        self.consumed = 0  # parts handed to the sink
        self.results: dict[int, memoryview | int | BaseException] = {}  # (int: bytes placed)
        self.done = False  # the consumer has stopped: drop whatever still arrives
        self.into: Placement | None = None
        self.writing = 0  # connection threads writing a part to ``into`` now
        self.on_part: Callable[[int, float, float], object] | None = None
        self.on_retry: Callable[[BaseException], object] | None = None
        self.given: tuple[int, int] | None = None  # bytes the caller places (download(given=))
        # what the caller's fill gave: kept apart from ``results`` until the consumer gets to
        # them, since the bounds not issued yet may be cut again (split), which moves indices
        self.given_result: int | BaseException | None = None
        # its consumer waits on this (on ``lock``, the engine's), told when a part of it lands
        self.landed = threading.Condition(lock)

    def skip_given(self) -> None:
        """Issue no connection the bytes the caller places: step past them."""
        while self.issued < len(self.bounds) and self.bounds[self.issued] == self.given:
            self.issued += 1

    def split(self, parts: int, smallest: int) -> None:
        """Cut the parts not yet issued into about ``parts`` pieces of a whole number of
        ``smallest`` bytes (never larger than they were): the first shard a reader waits
        for comes sooner over more connections. Only parts no connection has taken
        change."""
        rest = [bound for bound in self.bounds[self.issued :] if bound != self.given]
        if not rest:
            return
        largest = max(b - a for a, b in rest)
        total = sum(b - a for a, b in rest)
        piece = min(largest, max(smallest, -(-total // max(1, parts))))
        piece = -(-piece // smallest) * smallest  # (placed where it starts: an aligned write)
        if piece >= largest:
            return
        start, end = rest[0][0], rest[-1][1]
        given = self.given if self.given in self.bounds[self.issued :] else None
        if given is None:
            self.bounds[self.issued :] = _tiles(start, end, piece, smallest)
        else:  # (the bytes the caller places stay one bound, cut around)
            self.bounds[self.issued :] = [*_tiles(start, given[0], piece, smallest), given,
                                          *_tiles(given[1], end, piece, smallest)]

    def parts_left(self) -> int:
        """The parts still to hand to connections (not the bytes the caller places)."""
        return max(0, len(self.bounds) - self.issued - self._given_ahead())

    def bytes_left(self) -> int:
        """The bytes still to hand to connections (not those the caller places)."""
        if self.issued >= len(self.bounds):
            return 0
        given = self.given
        placed = given[1] - given[0] if given is not None and self._given_ahead() else 0
        return self.bounds[-1][1] - self.bounds[self.issued][0] - placed

    def _given_ahead(self) -> int:
        """1 if the bytes the caller places are among the bounds not issued yet, else 0."""
        given = self.given
        if given is None or self.issued >= len(self.bounds):
            return 0
        return int(given[0] >= self.bounds[self.issued][0])

    def priority(self) -> tuple[bool, float, int]:
        return (not self.urgent, self.order, self.ticket)

    def nbytes(self, i: int) -> int:
        a, b = self.bounds[i]
        return b - a


def _tiles(start: int, end: int, size: int, align: int) -> list[tuple[int, int]]:
    """``[start, end)`` in pieces of ``size`` from the first multiple of ``align`` on
    (before it, one piece up to it): a download that starts past a shard's head still
    writes its pieces where 2 MiB boundaries are (see
    :data:`roxxel.read.parts._SMALLEST_PIECE`)."""
    cuts = [start, *range(-(-start // align) * align, end, size), end]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if a < b]
