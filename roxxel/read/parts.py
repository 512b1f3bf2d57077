"""Shard downloads as ranged parts under one budget per process.

One connection of a real object store delivers roughly 50-100 MB/s after tens of
milliseconds to the first byte; a node reaches its link only with many ranged GETs in
flight. A :class:`PartEngine` splits each object into parts (8 MiB by default) and runs
them on one pool of connection threads, whatever the number of shards being downloaded
or of threads waiting for them:

- **One budget.** At most :attr:`PartEngine.limit` parts are in flight, and the bytes
  in flight plus those received into memory but not yet consumed stay under as many
  parts' worth (:attr:`PartEngine.budget`; a part written to its placement holds none);
  only the part a consumer is waiting for next may go past it (one part per object at
  most), so the budget can never stall a download.
- **Priority by next use.** Objects are served in the order they are needed (their
  position in the reader's order, else the order their downloads were asked for), except
  that one a reader is blocked on (:meth:`PartEngine.hurry`) goes first, and the others'
  parts get at most half the slots while it has parts left to send; an object's parts
  go in order.
- **The first record in about one small part's time.** The first shard a reader waits
  for is fetched alone, its parts cut into pieces (of 2 MiB or more) over up to half the
  slots: at 25 MB/s a connection, 16 pieces of a 32 MiB shard fill a 400 MB/s link by
  themselves; on loopback nothing competes with them, or with its check, for the CPU.
  The others start on a quarter of the slots once its pieces are all on the wire, and
  take the rest once its last byte has been checked. A reader whose first records come
  from a shard's head (:mod:`roxxel.read.head`) has no first shard: holding the others
  back then only idles the link.
- **No idle slots at the end.** When fewer parts are left to issue than slots are free
  (a small dataset), the rest of an object is cut finer, so the last shards too arrive
  over many connections; when less than one round of parts is left (a slot for each),
  the rest goes in pieces of its share of a slot, so the last parts of an epoch end
  together, not one whole part's time apart. The first shard a reader waits for counts
  alone there: its own last parts end together too (and one of less than a round goes
  in its share of every slot). Neither cut is made where a store's connections are
  fast: once a GET from it has moved a whole part's worth in less than a tenth of a
  second (loopback, a store in the same rack), a part left to itself at the end arrives
  about that soon (what the others no longer take of the link goes to it), so cutting
  would save less than that, and every cut is one more GET.
- **Few connections where they are fast.** Once a GET from every store being read has
  gone at a rate that moves a whole part in less than a tenth of a second (loopback, a
  store in the same rack), the CPUs that check and keep the bytes are the limit, not the link: at most
  :data:`CPU_PARTS` parts a CPU are in flight then (the node's, shared through its count;
  :meth:`PartEngine._cpu_bound`). On loopback every client tried moved the same bytes
  faster with 2-4 connections than with 32, and so did the engine.
- **A first record's GETs go first.** While GETs a reader's first record waits for are in
  flight beside the engine (a shard's head, a resume's part: :meth:`PartEngine.outside`
  with ``first=True``), parts leave them room (:meth:`PartEngine._lead_cap`).
- **Refilled as parts complete**, not in waves: a connection thread takes the next part
  as soon as its last one is done. An event that frees a slot wakes one waiting thread,
  which wakes the next once it has picked a part, and a part's landing wakes its own
  consumer only: 32 threads and a dozen consumers woken at every landing cost a cold
  epoch on loopback about a quarter more CPU.
- **In order to the consumer.** :meth:`PartEngine.download` hands an object's bytes to
  its sink in order, part by part, so the caller hashes the in-order prefix as it
  arrives (the cache publishes a shard only once it is whole and verified, as always).
- **Placed where they belong.** Given a :class:`Placement` (the cache's temp file of the
  shard), each part is written there at its offset by the thread that fetches it, a
  block of 2 MiB at a time as it arrives, through one of the engine's block buffers,
  reused (:class:`~roxxel.backends.through.Through`: no buffer of a whole part, whose
  fresh pages the kernel must zero); the consumer then checks the in-order prefix where
  it is, through a read-only map of the file (no copy back). The bytes waiting for the
  consumer (parts that came in ahead of a late one) are then in the page cache, where
  they were going anyway, not in part buffers: they hold none of the budget, so the
  link stays full behind a slow part, and there are only as many block buffers as parts
  in flight. While a first shard is being fetched and checked, the placed parts of
  shards no reader waits for wait to be checked, so their checks do not take the CPU
  (and the GIL) from the one the first record waits for. No part is written once its
  download has ended.
- **Bytes the caller has** are not fetched again: a download may start past them (a
  shard's head, ``start=``: :mod:`roxxel.read.head`) or leave a range of them to its
  caller, who places them once it has them (a resume's first part, ``given=`` and
  :meth:`PartEngine.fill`: :mod:`roxxel.read.partfetch`); either way the consumer takes
  them in their turn, with the rest.
- **Adaptive.** :class:`Concurrency` raises the limit while throughput grows with it and
  halves it when the store throttles (HTTP 503 SlowDown, 429).
- **Shared fairly on a node.** Processes that share a node's link (torchrun's local ranks,
  DataLoader workers) split the node's budget between them instead of multiplying it:
  :func:`node_share`. Each also writes its parts in flight to a count the node's
  processes share (:mod:`roxxel.read.nodeparts`), and one that has its share in flight
  may start more while the node's total stays under the budget: a shard one process
  downloads while the others wait for it then comes over the node's connections, not
  over that one's share of them. The GETs a reader makes beside the engine (a shard's
  head) count against its limit and budget while they are in flight
  (:meth:`PartEngine.outside`).

Each part is one :meth:`~roxxel.backends.Store.read_part`, with that wrapper's retries,
stall detection, length checks and error translation. The engine's threads start with
the first download after a reader attaches (:meth:`PartEngine.attach`) and stop when the
last one detaches, when the process forks (the child makes its own) and at interpreter
exit.
"""

from __future__ import annotations

import itertools
import mmap
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .. import trace
from ..backends import Store
from ..backends.errors import throttled
from ..backends.through import Revoked, Through
from ..backends.watchdog import partnered
from ..workers import node_share, usable_cpus
from .nodeparts import NodeParts
from .transfer import Concurrency, Placement, Transfer

__all__ = [
    "DEFAULT_PARTS_IN_FLIGHT",
    "DEFAULT_PART_SIZE",
    "ENV_PARTS",
    "Concurrency",
    "PartEngine",
    "Placement",
    "Transfer",
    "engine",
    "node_parts",
    "node_share",
]

DEFAULT_PART_SIZE = 8 * 2**20
#: Parts in flight a CPU where a store's connections are fast (:meth:`PartEngine._cpu_bound`).
CPU_PARTS = 2
#: Parts in flight per node to start with: 32 connections of 50-100 MB/s each carry a
#: link of 1.6-3.2 GB/s; :class:`Concurrency` raises it (to 2x) while throughput grows.
DEFAULT_PARTS_IN_FLIGHT = 32
#: Parts are cut into pieces of a whole number of this (the first shard a reader waits
#: for, the last parts): over 30 ms to first byte and 25 MB/s a connection, 2 MiB take
#: 114 ms, almost four times the latency; and a placed piece, written where it starts,
#: then fills whole 2 MiB folios of the page cache (see ``_Aligned`` in
#: :mod:`roxxel.cache.download`: a shard written 1 MiB at a time was in none).
_SMALLEST_PIECE = 2 * 2**20
_BLOCK = 2 * 2**20  # bytes of a placed part received before they are written (see _Aligned)
#: The end of what there is to fetch is cut finer (:meth:`PartEngine._spread`) only while
#: one whole part may take this long on one connection of its store: a part left to itself
#: at the end then arrives about that soon after the others, so cutting would save less,
#: and each cut is another GET (on loopback, where the CPU is the limit, cutting made 2.3
#: times as many GETs and a 12 x 32 MiB epoch 12% longer; through the shaping proxy, at 25
#: MB/s a connection, a part takes a third of a second and cutting saves 2-3% of an epoch).
_TAPER_SECONDS = 0.1
#: A GET this large or larger tells how fast one connection can go (smaller ones mostly
#: wait for their first byte; parts smaller than this, as in tests, never tell).
_RATE_BYTES = 2**20
_POLL_SECONDS = 0.25  # how soon waiting threads notice cancellation or the main thread's end
#: The longest parts are held back for a first record's GETs (_lead_cap).
_LEAD_HOLD_SECONDS = 0.25
_CLOSE_TIMEOUT = 1.0  # seconds the last reader's close waits for parts in flight


class PartEngine:
    """Download objects as ranged parts on one pool of connection threads (see the module).

    ``parts`` is the starting number of parts in flight (adapted by :class:`Concurrency`
    up to ``max_parts``, by default twice as many), ``part_size`` the size of a part;
    the bytes in flight or received into memory and not yet consumed stay under
    :attr:`budget`, at most ``max_bytes`` (by default ``max_parts`` parts). ``node``: the
    node's count of its processes' parts in flight, in which this one takes part; it may
    then have more than its limit in flight while the others leave room (:meth:`_slots`).
    """

    def __init__(
        self,
        *,
        parts: int = DEFAULT_PARTS_IN_FLIGHT,
        max_parts: int | None = None,
        part_size: int = DEFAULT_PART_SIZE,
        max_bytes: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        node: NodeParts | None = None,
        cpu_parts: int | None = None,
    ) -> None:
        for name, value in (("parts", parts), ("part_size", part_size)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        max_parts = 2 * parts if max_parts is None else max_parts
        self.part_size = part_size
        self.max_bytes = max_parts * part_size if max_bytes is None else max_bytes
        self.concurrency = Concurrency(parts, minimum=min(2, parts), maximum=max(parts, max_parts))
        self._clock = clock
        self._node = node  # the node's count of parts in flight, if this process takes part (_slots)
        # parts in flight at most where connections are fast (_cpu_bound): the node's, if it counts
        self.cpu_parts = cpu_parts
        self._publishing = threading.Lock()  # (outside() publishes without the engine's lock)
        self.pid = os.getpid()  # a forked child makes its own engine (engine())
        # The lock, and the connection threads' condition: a part may be picked. Each is
        # woken alone (_wake), and one that picks a part wakes the next, so an event wakes
        # as many as can pick, not every thread: at 32 threads (and a consumer a shard)
        # woken at every part's landing and consumption, a cold epoch on loopback took a
        # quarter more CPU. A transfer's consumer waits on its own ``landed``.
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._transfers: list[Transfer] = []
        self._tickets = itertools.count(1)  # (next() needs no lock: a reader takes one while the threads hold it)
        self._in_flight = 0
        # GETs of this process's in flight beside the engine's, by their bytes (outside():
        # appended and removed without the lock, which 32 connection threads contend for)
        self._outside: list[int] = []
        # those of them a reader's first record waits for, by their store and start (likewise)
        self._leading: list[tuple[Store, float]] = []
        # fetches a first record waits for under way (lead()), by their store and start (likewise)
        self._leads: list[tuple[Store, float]] = []
        self._wake: float | None = None  # when parts held back for them may go (_lead_cap)
        self._reserved = 0  # bytes in flight plus received and not consumed (unless placed)
        self._free: list[mmap.mmap] = []  # part buffers to reuse (as many as were in use at once)
        self._blocks: list[mmap.mmap] = []  # block buffers of placed parts to reuse (as many)
        self._threads: list[threading.Thread] = []
        self._starting = threading.Lock()  # held by the caller starting threads (_ensure_threads)
        self._start_asked = False  # threads were asked for since that caller last looked
        self._users = 0
        self._generation = 0  # bumped on stop: threads of an older generation end
        self.stats = {"gets": 0, "bytes": 0, "retries": 0, "throttled": 0, "busy_seconds": 0.0}
        self._busy_since: float | None = None
        # per store, the most bytes a second one GET from it (of _RATE_BYTES or more) has
        # moved, its first byte's wait included: what one connection can do at least (_slow)
        self._rates: weakref.WeakKeyDictionary[Store, float] = weakref.WeakKeyDictionary()

    @property
    def limit(self) -> int:
        """Parts in flight at most, now."""
        return self.concurrency.limit

    @property
    def budget(self) -> int:
        """Bytes in flight plus received into memory and not yet consumed at most, now: as
        many parts as the limit, never more than ``max_bytes``."""
        return min(self.max_bytes, self.limit * self.part_size)

    # -- users -------------------------------------------------------------------------

    def attach(self) -> None:
        """A reader will download through this engine (its threads may run)."""
        with self._cond:
            self._users += 1

    def detach(self) -> None:
        """A reader is done; the last one stops the threads, waiting up to a second for
        a part in flight (a thread still fetching one is a daemon and ends with it)."""
        with self._cond:
            self._users = max(0, self._users - 1)
            stopped = self._stop_threads() if self._users == 0 and not self._transfers else []
        deadline = time.monotonic() + _CLOSE_TIMEOUT
        for thread in stopped:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _stop_threads(self) -> list[threading.Thread]:
        """Tell the threads to end and let go of the spare buffers (under the lock);
        returns the threads."""
        stopped, self._threads = self._threads, []
        self._free, self._blocks = [], []
        self._generation += 1
        self._cond.notify_all()
        return stopped

    # -- downloading -------------------------------------------------------------------

    def download(
        self,
        store: Store,
        key: str,
        size: int,
        sink: Callable[[memoryview], object],
        *,
        check_cancelled: Callable[[], None] | None = None,
        on_start: Callable[[Transfer], object] | None = None,
        on_part: Callable[[int, float, float], object] | None = None,
        on_retry: Callable[[BaseException], object] | None = None,
        order: float | None = None,
        urgent: bool = False,
        first: bool = False,
        into: Placement | None = None,
        start: int = 0,
        given: tuple[int, int] | None = None,
    ) -> Transfer:
        """Feed the ``size`` bytes of ``key`` to ``sink`` in order, fetched as parts.

        Blocks the calling thread until the last part is consumed; ``check_cancelled`` is
        called while waiting and may raise to stop. ``on_start(transfer)`` is called
        once the download is queued (:meth:`hurry` takes that handle). ``on_part(nbytes, start, end)`` is
        called for each part fetched (from a connection thread), ``on_retry(exc)`` for
        each failed attempt that is retried. ``order`` is when the object is needed (a
        position in its reader's order; objects needed sooner go first), by default the
        order downloads were asked for. ``urgent`` (``first``): a reader already waits for
        it (for its first record), as :meth:`hurry` would say, but known before any of its
        parts can be picked. A part's error is raised here, at that part,
        after the parts before it were consumed. Exceptions of ``sink`` propagate.

        ``into``: each part is written there at its offset as it arrives (see the
        module), and ``sink`` is fed the bytes placed, through a view of them it must not
        keep past the call. Once this returns (or raises), nothing more is written to ``into``.

        ``start``: only bytes ``[start, size)`` are fetched and fed (the caller has the
        others: a shard's head, :mod:`roxxel.read.head`).

        ``given``: bytes ``[a, b)`` that no connection fetches: the caller places them
        (:meth:`fill`: a resume's first part, fetched and checked apart,
        :mod:`roxxel.read.partfetch`), and they are fed in their turn. Only where the
        transfer has ``into`` and they lie at 2 MiB boundaries (or end at the object's
        end): ``transfer.given`` (``on_start`` has it) says whether they are the caller's.
        """
        if not 0 <= start <= size:
            raise ValueError(f"start must be in [0, {size}], got {start!r}")
        with self._cond:
            transfer = Transfer(store, key, size, self.part_size, next(self._tickets), start, self._lock)
            transfer.on_part, transfer.on_retry = on_part, on_retry
            if into is not None:
                into.claim()
                transfer.into = into
                if given is not None:
                    self._give(transfer, *given)
            if order is not None:
                transfer.order = order
            transfer.urgent = urgent
            if urgent and first:
                self._first(transfer)
        try:  # (registered inside: whatever interrupts it, _finish takes it out again)
            with self._cond:
                self._transfers.append(transfer)
                self._cond.notify()
            if on_start is not None:
                on_start(transfer)
            self._ensure_threads()
            i = 0
            while i < self._parts_of(transfer):  # (a hurried transfer's may be cut finer)
                data = self._wait_for(transfer, i, check_cancelled)
                i += 1
                if isinstance(data, BaseException):
                    raise data
                if isinstance(data, int):
                    start = transfer.bounds[i - 1][0]
                    i = self._placed_run(transfer, i)  # (and the placed parts landed after it)
                    self._feed_placed(transfer, start, transfer.bounds[i - 1][1], sink)
                elif data:
                    sink(data)
                self._recycle(data)
        finally:
            with self._cond:
                self._finish(transfer)
        return transfer

    def _placed_run(self, transfer: Transfer, i: int) -> int:
        """Take parts ``i``, ``i + 1``... that are placed already (consumed now, checked
        together: fewer, larger hashes, each a chance for the consumer to wait for the
        GIL behind every connection thread); returns the index after the last."""
        with self._cond:
            while isinstance(transfer.results.get(i), int):
                del transfer.results[i]
                i += 1
            transfer.consumed = max(transfer.consumed, i)
        return i

    def _feed_placed(self, transfer: Transfer, pos: int, end: int,
                     sink: Callable[[memoryview], object]) -> None:
        """Feed bytes ``[pos, end)``, written to the transfer's placement, to ``sink``
        in one call, through a view of them where they are (no copy, no buffer)."""
        assert transfer.into is not None
        if pos >= end:
            return
        with transfer.into.view(pos, end) as view:
            sink(view)

    def ticket(self) -> int:
        """A place in the order downloads were asked for, taken now: what a download
        given it as its ``order`` is served by (those given none take theirs when they
        reach the engine)."""
        return next(self._tickets)

    def hurry(self, transfer: Transfer | None, *, first: bool = False) -> None:
        """A reader is blocked on this download: its parts go before everyone else's;
        ``first``: the reader has nothing yet (its first record waits for it)."""
        if transfer is None:
            return
        with self._cond:
            transfer.urgent = True
            if first and not transfer.first:
                self._first(transfer)
            self._cond.notify()
            transfer.landed.notify_all()  # (its placed parts are not held back now: _deferred)

    def _first(self, transfer: Transfer) -> None:
        """(Lock held.) ``transfer`` is the first shard its reader waits for: the rest of
        it goes on up to half the slots, in pieces of at least :data:`_SMALLEST_PIECE`,
        so the first record comes in about one small part's time rather than a whole
        part's at a fraction of the link (the others wait until its pieces are all on the
        wire, and their checks until it is done: :meth:`_pick`, :meth:`_deferred`)."""
        transfer.first = True
        transfer.split(max(1, self.limit // 2), min(self.part_size, _SMALLEST_PIECE))

    def _parts_of(self, transfer: Transfer) -> int:
        with self._cond:
            return len(transfer.bounds)

    def _wait_for(
        self, transfer: Transfer, i: int, check_cancelled: Callable[[], None] | None
    ) -> memoryview | int | BaseException:
        while True:
            with self._cond:
                if transfer.given_result is not None and transfer.bounds[i] == transfer.given:
                    transfer.results[i], transfer.given_result = transfer.given_result, None
                if i in transfer.results and not self._deferred(transfer, transfer.results[i]):
                    data = transfer.results.pop(i)
                    transfer.consumed = i + 1
                    # (a placed part's went back when it was; the caller's never counted)
                    if not isinstance(data, int) and transfer.bounds[i] != transfer.given:
                        self._reserved -= transfer.nbytes(i)
                        self._publish()
                    self._cond.notify()  # the budget has room again
                    return data
                transfer.landed.wait(_POLL_SECONDS)
            if check_cancelled is not None:
                check_cancelled()

    def _deferred(self, transfer: Transfer, data: memoryview | int | BaseException) -> bool:
        """(Lock held.) A placed part of a shard no reader waits for waits to be checked
        while a first shard (of any reader of this process) is being fetched and checked:
        it holds no memory, and its check would share the CPU (and the GIL) with the one
        the first record waits for."""
        if not isinstance(data, int) or transfer.first or transfer.urgent:
            return False
        return any(t.first and not t.done for t in self._transfers)

    def _finish(self, transfer: Transfer) -> None:
        transfer.done = True
        interrupted: KeyboardInterrupt | None = None
        while transfer.writing:  # a part being written to its placement: let it end first,
            try:  # even on Ctrl-C, since the caller closes the file next
                transfer.landed.wait()
            except KeyboardInterrupt as exc:  # raised once the writes are over
                interrupted = exc
        for i in list(transfer.results):
            dropped = transfer.results.pop(i)
            if not isinstance(dropped, int):
                self._reserved -= transfer.nbytes(i)
            self._keep(dropped)
        self._publish()
        # parts still in flight give their bytes back when they land (see _run)
        if transfer in self._transfers:
            self._transfers.remove(transfer)
        self._cond.notify()
        if transfer.first:  # (the others' placed parts wait for it to be done: _deferred)
            for other in self._transfers:
                other.landed.notify_all()
        if self._users == 0 and not self._transfers:
            self._stop_threads()
        if interrupted is not None:
            raise interrupted

    @contextmanager
    def outside(self, nbytes: int, store: Store, *, first: bool = False) -> Iterator[None]:
        """One GET of ``nbytes`` from ``store`` made beside the engine (a shard's head: see
        :mod:`roxxel.read.head`) counts against its limit and budget while it is in
        flight: the engine starts no part in its slot. It is not held back (it is what a
        first record waits for). ``first``: a reader's first record waits for it, and parts
        leave it room while it is in flight (:meth:`_lead_cap`). How fast it was tells how
        fast the store's connections are (:meth:`_slow`)."""
        began = self._clock()
        lead = (store, began)
        self._outside.append(nbytes)  # (atomic: the GIL's)
        if first:
            self._leading.append(lead)
        self._publish()
        try:
            yield
            self._moved(store, nbytes, self._clock() - began)
        finally:
            self._outside.remove(nbytes)
            if first:
                self._leading.remove(lead)
            self._publish()
            with self._cond:  # (it may have held a part back: its slot, its bytes, a lead's room)
                self._cond.notify()

    def lead(self, store: Store) -> Callable[[], None]:
        """A fetch that a reader's first record waits for has begun from ``store`` (a
        head's GETs, a resume's record index and then its part's): until the function
        returned is called (once), parts leave its GETs room (:meth:`_lead_cap`), between
        them too (a resume's part was read beside the pieces of its whole shard, which had
        started once its index was in)."""
        lead = (store, self._clock())
        self._leads.append(lead)  # (atomic: the GIL's)
        ended: list[bool] = []

        def end() -> None:
            if not ended:  # (once: a second call does nothing)
                ended.append(True)
                self._leads.remove(lead)
                with self._cond:
                    self._cond.notify()

        return end

    def _give(self, transfer: Transfer, start: int, end: int) -> None:
        """(Lock held, the transfer new.) Bytes ``[start, end)`` are the caller's to place
        (``download(given=)``), if they lie at 2 MiB boundaries (or end at its end)."""
        smallest = min(self.part_size, _SMALLEST_PIECE)
        bounds = transfer.bounds
        if (transfer.into is None or not bounds[0][0] <= start < end <= bounds[-1][1]
                or start % smallest or (end % smallest and end != bounds[-1][1])):
            return
        cut: list[tuple[int, int]] = []
        for a, b in bounds:
            if b <= start or a >= end:
                cut.append((a, b))
                continue
            if a < start:
                cut.append((a, start))
            if (start, end) not in cut:
                cut.append((start, end))
            if b > end:
                cut.append((end, b))
        transfer.bounds, transfer.given = cut, (start, end)
        transfer.skip_given()

    def fill(self, transfer: Transfer, data: memoryview | BaseException) -> None:
        """The bytes ``download(given=)`` left to the caller (``transfer.given``), placed
        where they belong, or the error that stopped the caller from having them (raised
        by the download in their turn); nothing once the download has ended."""
        assert transfer.given is not None
        start, end = transfer.given
        if not isinstance(data, BaseException) and len(data) != end - start:
            data = ValueError(f"{transfer.key}: {len(data)} bytes given for [{start}, {end})")
        if not isinstance(data, BaseException):
            try:
                self._place(transfer, start, data)
            except Revoked:
                return
            except BaseException as exc:  # noqa: BLE001 - a full disk, say: raised by the download
                data = exc
        with self._cond:
            if transfer.done:
                return
            transfer.given_result = data if isinstance(data, BaseException) else end - start
            transfer.landed.notify_all()

    def retried(self, exc: BaseException) -> None:
        """A GET of this process's failed and is retried (a part's, or one made beside the
        engine: :meth:`outside`); one the store throttled (HTTP 503 SlowDown, 429)
        halves the limit (:class:`Concurrency`)."""
        with self._cond:
            self.stats["retries"] += 1
            if throttled(exc):
                self.stats["throttled"] += 1
                self.concurrency.throttled(self._clock())

    def _slots(self) -> int:
        """(Lock held.) The parts this process may have in flight now: its limit, or, with
        a node's count (``node``) and unless the store throttled it lately, what the
        node's other processes leave of the node's budget, if that is more (a part past
        the limit is then claimed in the count first: :meth:`_claim`)."""
        node = self._node
        others = 0 if node is None else node.others()
        if node is None or self.concurrency.holding(self._clock()):
            slots = self.limit
        else:
            slots = max(self.limit, node.total - others)
        if self._cpu_bound():
            slots = min(slots, max(1, self.cpu_parts - others))
        return slots

    def _cpu_bound(self) -> bool:
        """(Lock held.) Whether every store being read from has shown fast connections
        (:meth:`_slow`), and the engine has a ``cpu_parts``: its CPUs, not the link, are
        then the limit. On loopback, on 2 cores, every client moved the same bytes
        faster with fewer connections (one that hashes and keeps them, 32 MiB shards:
        0.24 s with 2, 0.26 with 4, 0.32 with 32), and the engine's epochs took 0.24 s
        with 4 parts in flight and 0.29 s with 32 (1 x 256 MiB; README, Cold reads)."""
        if self.cpu_parts is None:
            return False
        alive = [t for t in self._transfers if not t.done]
        return bool(alive) and not any(self._slow(t.store) for t in alive)

    def _used(self, nbytes: int = 0) -> int:
        """The parts' worth of the node's budget this process uses (with a part of
        ``nbytes`` more): its parts and GETs in flight, or the bytes they and the parts
        received and not consumed hold, if more."""
        outside = self._outside[:]
        in_flight = self._in_flight + len(outside) + (nbytes > 0)
        return max(in_flight, -(-(self._reserved + sum(outside) + nbytes) // self.part_size))

    def _publish(self) -> None:
        """Tell the node's count what this process uses now (:meth:`outside` calls this
        without the engine's lock)."""
        if self._node is not None:
            with self._publishing:
                self._node.publish(self._used())

    def _claim(self, nbytes: int) -> bool:
        """(Lock held.) Whether a part of ``nbytes`` may start as far as the node is
        concerned: always within this process's limit; past it, only if the node's
        total stays within the budget with it, counted again after writing it."""
        if self._node is None or self._in_flight + len(self._outside) < self.limit:
            return True
        with self._publishing:
            return self._node.claim(self._used(nbytes))

    def _ensure_threads(self) -> None:
        """Start connection threads up to the slots (more when the node leaves room: a
        thread a part in flight), unless another caller is starting them (who then looks
        again). Not under the engine's lock: a thread's start waits for the new thread to
        take the GIL (about a millisecond each while GETs are running: 32 took 10-20 ms
        at a cold start on loopback), and meanwhile the threads already started pick
        parts."""
        while True:
            with self._cond:
                self._start_asked = True  # (seen by whoever starts them, now or after us)
            if not self._starting.acquire(blocking=False):
                return
            try:
                self._start_threads()
            finally:
                self._starting.release()
            with self._cond:
                if not self._start_asked:
                    return  # (no one asked while it ran: else look again)

    def _start_threads(self) -> None:
        """(``_starting`` held.) :meth:`_ensure_threads`'s starts."""
        while True:
            with self._cond:
                self._start_asked = False
                self._threads = [t for t in self._threads if t.is_alive()]
                if len(self._threads) >= self._slots() or not self._transfers:
                    return
                generation, name = self._generation, f"roxxel-part-{len(self._threads)}"
            thread = threading.Thread(target=self._run, args=(generation,), daemon=True, name=name)
            thread.start()
            with self._cond:
                if generation == self._generation:  # (else it ends at once: the engine stopped)
                    self._threads.append(thread)

    def _pick(self) -> tuple[Transfer, int] | None:
        """The next part to fetch, if the limit and the budget allow one: in order of
        priority; once the budget is full, only a part some consumer is waiting for."""
        outside = self._outside[:]
        slots = self._slots()
        if self._in_flight + len(outside) >= slots:
            return None
        leading = self._leading[:]
        if (leading or self._leads) and self._in_flight >= self._lead_cap(leading, slots):
            return None
        # While a reader waits for a shard that has parts left to send, the others' parts
        # get at most half the slots: on a link (or a server) shared by every connection,
        # fewer of them leave the waited-for parts more of it, and the record comes
        # sooner; half still fill a link whose connections each carry a sixteenth of it,
        # as on S3. Once its parts are all on the wire, idle slots would only idle the
        # link (a shaped 12 x 32 MiB epoch went from about 80% of the best client to
        # about 90%). The first shard a reader waits for holds the others back entirely
        # until its pieces are all on the wire, then to a quarter of the slots until its
        # last byte has been checked, which takes a CPU the others' parts share where
        # the CPU is the limit (on loopback, letting them take every slot made the
        # first record 2-3 times later; the figures for a quarter are in the README,
        # "Cold reads from object stores").
        waited = [t for t in self._transfers
                  if t.urgent and not t.done and (t.first or t.issued < len(t.bounds))]
        first = [t for t in waited if t.first]
        if not first:
            cap = slots // 2
        else:
            cap = 0 if any(t.issued < len(t.bounds) for t in first) else slots // 4
        others = sum(t.in_flight for t in self._transfers if not t.urgent) if waited else 0
        full = False
        held = self._reserved + sum(outside)  # bytes of parts in flight or not consumed, and of the GETs outside
        budget = min(self.max_bytes, slots * self.part_size)
        for transfer in sorted(self._transfers, key=Transfer.priority):
            i = transfer.issued
            if transfer.done or i >= len(transfer.bounds):
                continue
            if waited and not transfer.urgent and others >= cap:
                return None  # (the urgent ones sort first: nothing after this one is)
            if i == transfer.consumed or (not full and held + transfer.nbytes(i) <= budget):
                if not self._claim(transfer.nbytes(i)):
                    return None  # (another process took the room first)
                self._spread(transfer, slots)
                return transfer, i  # (a part its consumer waits for goes even past the budget)
            full = True  # nothing jumps this transfer's turn but a part being waited for
        return None

    def _lead_cap(self, leading: list[tuple[Store, float]], slots: int) -> int:
        """(Lock held.) How many parts may be in flight beside a first record's GETs
        (``leading``: their stores and when they began; a head's, a resume's part), and
        between them while a fetch of such GETs is under way (:meth:`lead`).
        Parts in every slot would take the share of the link (or on loopback, of the
        CPU) those GETs need: the first record came 2-4 times later. So none unless the
        GETs show their store to be slow (:meth:`_leads_slowly`); then half the slots,
        as while a reader waits for a shard (:meth:`_pick`). A quarter brought the first
        record 10-15 ms sooner through the shaping proxy, but the parts held back then
        started their first bytes' wait only once the GETs had ended: epochs 1.5-2%
        longer (4 and 3 alternating runs)."""
        if self._leads_slowly(leading):
            return slots // 2
        now, grace = self._clock(), self._lead_grace()
        # (no longer than _LEAD_HOLD_SECONDS: a GET stuck in a retry's backoff or a stall
        # holds no part back, not even one a consumer waits for, for longer)
        until = min(began for _, began in (*leading, *self._leads[:])) + _LEAD_HOLD_SECONDS
        if now >= until:
            return slots // 2
        wakes = [until, *(began + grace for store, began in leading if store not in self._rates)]
        self._wake = min(wakes) if self._wake is None else min(self._wake, *wakes)  # (look again then)
        return 0

    def _lead_grace(self) -> float:
        """Seconds a fast connection (:meth:`_slow`) takes for :data:`_RATE_BYTES`: 12.5 ms
        with parts of 8 MiB."""
        return _TAPER_SECONDS * _RATE_BYTES / self.part_size

    def _leads_slowly(self, leading: list[tuple[Store, float]]) -> bool:
        """Whether GETs a first record waits for (``leading``: their stores and when they
        began) show a store's connections to be slow: a GET from it large enough to
        tell was (:meth:`_moved`, and none was fast), or, where none has been, one of
        them has been in flight longer than a fast connection takes for
        :data:`_RATE_BYTES` (:meth:`_lead_grace`). Through the shaping proxy the first
        byte alone takes 30 ms; on loopback a head's 1 MiB pieces take 2-8 ms."""
        if any(store in self._rates and self._slow(store) for store, _ in self._leads[:]):
            return True
        now, grace = self._clock(), self._lead_grace()
        for store, began in leading:
            if store in self._rates:
                if self._slow(store):
                    return True
            elif now - began >= grace:
                return True
        return False

    def lead_check(self, store: Store) -> float | None:
        """For a reader's first record from GETs beside the engine from ``store``: 0 if they
        show its connections to be slow (as GETs from it have shown or, where none has
        moved enough to tell, those in flight now do: :meth:`_leads_slowly`), None if
        GETs from it have shown them fast, else the seconds until they may show it."""
        if store in self._rates:
            return 0.0 if self._slow(store) else None
        leading = [lead for lead in self._leading[:] if lead[0] is store]
        if self._leads_slowly(leading):
            return 0.0
        grace, now = self._lead_grace(), self._clock()
        return max(0.001, min((began + grace - now for _, began in leading), default=grace))  # (0: slow)

    def _spread(self, transfer: Transfer, slots: int) -> None:
        """(Lock held.) Near the end of what there is to fetch (over ``slots``: see
        :meth:`_slots`), cut ``transfer``'s rest
        finer, so that the last shards too arrive over many connections, not one part's,
        and the last parts end together rather than one part's time apart:

        - slots would stay idle, since fewer parts are left to issue than slots are
          free (a small dataset): spread the rest over the free slots;
        - less than one round of parts is left to issue (a slot for each): pieces of
          the rest's share of a slot, so the parts issued last are the smallest. The
          first shard a reader waits for counts alone: its last parts too should end
          together, whatever comes after it.

        Neither once a GET from its store has shown that a whole part takes less than
        :data:`_TAPER_SECONDS` on one connection (:meth:`_slow`)."""
        if not self._slow(transfer.store):
            return
        smallest = min(self.part_size, _SMALLEST_PIECE)
        free = slots - self._in_flight - len(self._outside)
        alive = [t for t in self._transfers if not t.done]
        left = sum(t.parts_left() for t in alive)
        if 0 < left < free:
            transfer.split(transfer.parts_left() * free // left, smallest)
        span = transfer.bytes_left()
        rest = span if transfer.first else sum(t.bytes_left() for t in alive)
        if 0 < rest < slots * self.part_size and transfer.parts_left():
            piece = max(smallest, rest // slots)
            transfer.split(-(-span // piece), smallest)

    def _moved(self, store: Store, nbytes: int, seconds: float) -> None:
        """One GET from ``store`` moved ``nbytes`` in ``seconds``: how fast its connections
        can go, if it was large enough to tell (called without the lock from
        :meth:`outside`: two GETs that end together may keep the slower's rate, which only
        leaves the cuts on until another GET raises it)."""
        if nbytes >= _RATE_BYTES and seconds > 0:
            rate = nbytes / seconds
            if rate > self._rates.get(store, 0.0):
                self._rates[store] = rate

    def _slow(self, store: Store) -> bool:
        """Whether a whole part may take :data:`_TAPER_SECONDS` or more on one connection
        of ``store``, as far as its GETs have shown (before any has: yes)."""
        return self.part_size >= self._rates.get(store, 0.0) * _TAPER_SECONDS

    def _waiting(self) -> bool:
        return any(not t.done and t.issued < len(t.bounds) for t in self._transfers)

    def _run(self, generation: int) -> None:
        with partnered():  # (the store calls of its parts on one helper, not one thread a part)
            self._serve(generation)

    def _serve(self, generation: int) -> None:
        main = threading.main_thread()
        while True:
            with self._cond:
                picked = None
                while picked is None:
                    if generation != self._generation or not main.is_alive():
                        return
                    if self._users == 0 and not self._transfers:  # nobody left to serve
                        return
                    picked = self._pick()
                    if picked is None:
                        wake, self._wake = self._wake, None  # (a part held back until then: _lead_cap)
                        left = _POLL_SECONDS if wake is None else min(_POLL_SECONDS, max(0.0, wake - self._clock()))
                        self._cond.wait(left)
                transfer, i = picked
                self._cond.notify()  # (the next thread may pick one too)
                transfer.issued = i + 1
                transfer.skip_given()
                transfer.in_flight += 1
                self._in_flight += 1
                self._reserved += transfer.nbytes(i)
                self._publish()
                if self._busy_since is None:
                    self._busy_since = self._clock()
            tracer = trace.current()
            start, began = self._clock(), time.perf_counter_ns()
            result: memoryview | int | BaseException
            try:  # whatever happens, the part gets a result and its slot back
                result = self._fetch(transfer, i)
                if tracer is not None:
                    a, b = transfer.bounds[i]
                    tracer.complete("part", "download", began, time.perf_counter_ns(), key=transfer.key,
                                    offset=a, bytes=b - a, ok=not isinstance(result, BaseException))
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
                result = exc
            end = self._clock()
            with self._cond:
                self._in_flight -= 1
                transfer.in_flight -= 1
                if transfer.done or isinstance(result, int):  # dropped, or placed: in no buffer
                    self._reserved -= transfer.nbytes(i)
                self._publish()
                if transfer.done:
                    self._keep(result)
                else:
                    transfer.results[i] = result
                nbytes = _size(result)
                if not isinstance(result, BaseException):
                    self._moved(transfer.store, nbytes, end - start)
                    self.stats["gets"] += 1
                    self.stats["bytes"] += nbytes
                    # (the limit is what holds parts back only while none are borrowed)
                    saturated = self._waiting() and self._in_flight <= self.limit and not self._cpu_bound()
                    self.concurrency.transferred(end, nbytes, saturated=saturated)
                if tracer is not None:
                    node = {} if self._node is None else {"node_others": self._node.others()}
                    tracer.counter("downloads", parts_in_flight=self._in_flight, limit=self.limit,
                                   bytes_held=self._reserved, **node)  # (the node's other processes' parts)
                if self._in_flight == 0 and self._busy_since is not None:
                    self.stats["busy_seconds"] += end - self._busy_since
                    self._busy_since = None
                transfer.landed.notify_all()
                self._cond.notify()  # (its slot is free)
            if transfer.on_part is not None and not isinstance(result, BaseException):
                transfer.on_part(nbytes, start, end)
            if not isinstance(result, BaseException):
                self._ensure_threads()  # the limit may have grown

    def _fetch(self, transfer: Transfer, i: int) -> memoryview | int | BaseException:
        a, b = transfer.bounds[i]

        def failed(exc: BaseException) -> None:
            self.retried(exc)
            if transfer.on_retry is not None:
                transfer.on_retry(exc)

        if transfer.into is not None:
            return self._fetch_placed(transfer, a, b, failed)
        try:
            with self._cond:
                buffer = self._free.pop() if self._free else None
            if buffer is None:  # (a piece touches only the pages it fills)
                buffer = _part_buffer(self.part_size)
            return transfer.store.read_part(transfer.key, a, b, memoryview(buffer), on_failure=failed)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            return exc  # (the buffer is dropped: an abandoned attempt may still write to it)

    def _fetch_placed(self, transfer: Transfer, a: int, b: int,
                      failed: Callable[[BaseException], None]) -> int | BaseException:
        """Bytes ``[a, b)`` written to the transfer's placement as they arrive, a block
        of :data:`_BLOCK` at a time through a block buffer of the engine's (few, reused:
        fresh part buffers were a third of a loopback read's CPU, the kernel zeroing
        their pages); returns the number of bytes placed."""
        with self._cond:
            block = self._blocks.pop() if self._blocks else None
        if block is None:
            block = _part_buffer(_BLOCK)
        through = Through(memoryview(block), lambda offset, data: self._place(transfer, a + offset, data), b - a)
        try:
            placed = transfer.store.read_part(transfer.key, a, b, through, on_failure=failed)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            return exc  # (the block is dropped: an abandoned attempt may still receive into it)
        if placed is through:  # (else a retry had its own: the first may still receive into it)
            with self._cond:
                if self._threads:
                    self._blocks.append(block)
        return b - a

    def _place(self, transfer: Transfer, offset: int, data: memoryview) -> None:
        """Write ``data`` to the transfer's placement at ``offset``; Revoked once the
        download has ended (nothing is written after that)."""
        assert transfer.into is not None
        with self._cond:
            if transfer.done:
                raise Revoked(f"{transfer.key}: bytes from {offset} arrived after its download ended")
            transfer.writing += 1
        try:
            transfer.into.write(offset, data)
        finally:
            with self._cond:
                transfer.writing -= 1
                if transfer.done:
                    transfer.landed.notify_all()  # (_finish waits for the writes to end)

    def _recycle(self, data: memoryview | int | BaseException) -> None:
        """Keep a consumed part's buffer for the next part (fresh pages cost the kernel
        more than the bytes' copy), unless the view is not of one of ours."""
        with self._cond:
            self._keep(data)

    def _keep(self, data: memoryview | int | BaseException) -> None:
        """:meth:`_recycle` with the lock held; not once the threads stopped (the memory
        goes with them)."""
        ours = isinstance(data, memoryview) and isinstance(data.obj, mmap.mmap) and len(data.obj) == self.part_size
        if ours and self._threads:
            self._free.append(data.obj)


def _size(result: memoryview | int | BaseException) -> int:
    """The bytes a part's result holds (or placed)."""
    if isinstance(result, BaseException):
        return 0
    return result if isinstance(result, int) else len(result)


def _part_buffer(size: int) -> mmap.mmap:
    """A buffer for one part: a private anonymous map, not the heap (a freed 8 MiB
    bytearray raises glibc's mmap threshold, so later ones come from per-thread arenas that
    keep the memory: the process's RSS grew by ~0.5 MB per dataset opened and closed), in
    huge pages where the kernel gives them on request (a fresh buffer then fills at ~9 GB/s
    here, against ~1.8 GB/s for a shared map faulted in 4 KiB pages)."""
    buffer = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        buffer.madvise(mmap.MADV_HUGEPAGE)
    return buffer


_ENGINE: PartEngine | None = None
_ENGINE_LOCK = threading.Lock()


#: The environment variable that sets a node's starting parts in flight (read when a
#: process makes its engine): for a link that needs more connections than 32, or fewer.
ENV_PARTS = "ROXXEL_PARTS_IN_FLIGHT"


def node_parts() -> int:
    """The node's starting parts in flight: ``$ROXXEL_PARTS_IN_FLIGHT``, else 32."""
    value = os.environ.get(ENV_PARTS, "").strip()
    if not value:
        return DEFAULT_PARTS_IN_FLIGHT
    if not value.isdigit() or int(value) < 1:
        raise ValueError(f"{ENV_PARTS} is {value!r}, expected a whole number of parts >= 1")
    return int(value)


def engine() -> PartEngine:
    """This process's engine, made on first use with the node's budget
    (:func:`node_parts`) divided by :func:`node_share` (at least 4 parts in flight), and
    taking part in the node's count of parts in flight (:mod:`roxxel.read.nodeparts`),
    so that it may use what the node's other processes leave of the budget; where
    connections are fast, :data:`CPU_PARTS` a CPU of the node's."""
    global _ENGINE
    with _ENGINE_LOCK:
        if _ENGINE is None or _ENGINE.pid != os.getpid():
            total, share = node_parts(), node_share()
            parts = max(4, -(-total // share))
            node = NodeParts.join(total)
            # the node's CPUs: this process's (its affinity) times the processes that share
            # the node (each may be pinned to its own), at most the machine's
            node_cpus = min(os.cpu_count() or usable_cpus(), usable_cpus() * share)
            cpus = CPU_PARTS * node_cpus  # (shared through the node's count; else each process's share)
            _ENGINE = PartEngine(parts=parts, max_bytes=max(2 * parts, total) * DEFAULT_PART_SIZE, node=node,
                                 cpu_parts=cpus if node is not None else max(1, cpus // share))
        return _ENGINE


def _after_fork_in_child() -> None:
    global _ENGINE, _ENGINE_LOCK
    _ENGINE, _ENGINE_LOCK = None, threading.Lock()  # the parent's threads did not come along


os.register_at_fork(after_in_child=_after_fork_in_child)
