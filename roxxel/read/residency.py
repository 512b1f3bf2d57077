"""Shard residency: which shards are downloading, cached, mapped and needed next.

:class:`Residency` is the one owner of that state for the shards of a
:class:`~roxxel.read.catalog.ShardCatalog`: the background downloads in flight, the
cache handles (shared locks) and maps of the shards in use, the order the shards will
be used in (which guides the cache's eviction), and every decision that depends on the
cache limit (the lookahead, how many shards stay mapped, what a shuffle window or a
warm-up may hold), made with the rules of :mod:`roxxel.cache.sizing`. Datasets, their
iterators and ``warm`` use it through its public methods only.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import CancelledError

import numpy as np
from fsspec.callbacks import Callback

from .. import trace
from ..backends import Store
from ..cache import CachedShard, ShardCache
from ..cache.download import placement
from ..cache.sizing import fit_lookahead, mapped_at_most, prefix_that_fits
from ..errors import CacheError, ShardFormatError
from ..format import MappedShard
from ..progress import Meter
from ..workers import Cancelled
from .catalog import ShardCatalog
from .downloader import Downloader
from .head import HeadFetch, HeadRecords, after_head
from .partfetch import PartFetch, PartRecords
from .parts import PartEngine, Transfer, engine

__all__ = ["DEFAULT_DOWNLOAD_WORKERS", "DEFAULT_LOOKAHEAD", "Residency", "default_lookahead"]

log = logging.getLogger(__name__)

#: Seconds a download ahead of a reader waits, before its first record, for the one the
#: reader waits for first (:meth:`Residency._await_first`); downloads with no reader
#: behind them wait this long once.
_FIRST_GRACE = 0.25
#: How often at most a download ahead waiting for a first record's GETs looks again at
#: whether they show their store to be slow (_await_first).
_LEAD_SECONDS = 0.0125
#: How long after the reader has its first record's bytes the downloads ahead still wait
#: where the store's connections are fast, for it to hand the record over (_await_first).
_HANDOFF_SECONDS = 0.01
_POLL_SECONDS = 0.25  # how soon a reader waiting for a head notices the residency closing

DEFAULT_LOOKAHEAD = 4  # shards, at least
DEFAULT_DOWNLOAD_WORKERS = 4  # at least
#: Shards ahead at most by default: each one downloading takes a waiting thread.
MAX_DEFAULT_LOOKAHEAD = 32
# Mapped shards cost only address space and two descriptors each; keeping many makes
# random access cheap. Each one is locked in the cache while mapped.
MAPPED_SHARDS = 64

_LIVE: weakref.WeakSet[Residency] = weakref.WeakSet()


def default_lookahead(stored_sizes: np.ndarray, budget_bytes: int) -> int:
    """Shards to keep downloading ahead of the reader: enough that their parts fill the
    download engine's budget twice over (the link stays busy while the reader consumes),
    from :data:`DEFAULT_LOOKAHEAD` to :data:`MAX_DEFAULT_LOOKAHEAD`."""
    if len(stored_sizes) == 0:
        return DEFAULT_LOOKAHEAD
    typical = max(1, int(np.median(stored_sizes)))
    return int(min(MAX_DEFAULT_LOOKAHEAD, max(DEFAULT_LOOKAHEAD, -(-2 * budget_bytes // typical))))


def _after_fork_in_child() -> None:
    # A lock held by one of the parent's threads at the fork would stay locked forever;
    # the parent's download engine (its threads, its parts in flight) did not come along.
    for residency in list(_LIVE):
        residency._lock = threading.Lock()
        residency._first_cond = threading.Condition(residency._lock)
        residency._engine = residency._used_engine = None  # (the parent's: see parts.engine)
        residency._transfers = {}
        residency._wanted = set()
        residency._heads = {}  # (their reads' threads did not come along)
        residency._parts = {}


os.register_at_fork(after_in_child=_after_fork_in_child)


class Residency:
    """The shards of ``catalog`` as one reader (or several sharing it) holds them in ``cache``.

    Shards are the catalog's numbers. ``lookahead`` shards (by default 4, or from a remote store
    enough to keep the download engine's budget full, 4 to 32; an unchosen one shrinks to fit
    ``cache.limit``) are downloaded ahead of use by ``download_workers`` threads (default:
    one per shard of the lookahead), started lazily. From a remote store each shard is
    fetched as ranged parts by the process's :class:`~roxxel.read.parts.PartEngine`. At most 64 shards stay mapped (fewer under a cache limit,
    leaving room for one more download), the oldest unmapped first. ``what`` names the
    reader in messages. Raises :class:`~roxxel.errors.CacheError` stating the minimum if
    the limit cannot hold one shard, or the chosen lookahead.

    A mixture of datasets shares one residency: it adds every member's shards to one
    catalog (before the residency is made: the limit arithmetic is done then) and reads
    member ``m``'s shard ``k`` as the catalog's ``offset_m + k``. The
    order of next use is kept by checksum, as the cache is, so the order given by
    :meth:`expect` spans the members, and the limit arithmetic runs over all their shards.
    """

    def __init__(
        self,
        catalog: ShardCatalog,
        cache: ShardCache,
        *,
        lookahead: int | None = None,
        download_workers: int | None = None,
        what: str,
    ) -> None:
        self.catalog = catalog
        self.cache = cache
        self.chosen_lookahead = lookahead  # None: shrunk to fit the cache limit as needed
        self._what = what
        self._limit = cache.limit
        sizes = catalog.raw_sizes
        default = default_lookahead(catalog.stored_sizes, engine().budget) if catalog.remote else DEFAULT_LOOKAHEAD
        self.lookahead = fit_lookahead(self._limit, sizes, lookahead=lookahead,
                                       default=default, what=what)
        if download_workers is None:
            download_workers = max(DEFAULT_DOWNLOAD_WORKERS, self.lookahead)
        self.download_workers = download_workers
        self._max_mapped = mapped_at_most(self._limit, sizes, max(MAPPED_SHARDS, self.lookahead + 1))
        # what the limit allows to stay mapped (hold() may raise _max_mapped for a window
        # that fit_window checked)
        self._fits_mapped = self._max_mapped if self._limit is not None else len(catalog)
        self._downloader: Downloader | None = None
        self._handles: dict[int, CachedShard] = {}
        self._maps: dict[int, MappedShard] = {}
        self._mapped: deque[int] = deque()  # the mapped shards, oldest first
        self._next_use: dict[str, int] = {}  # checksum -> position in the current order
        # each shard's place in the order downloads were asked for (the part engine's
        # ticket when prefetch() last asked for it; -1: never): where no order of use is
        # given (a token stream's), downloads go in that order, not in the order their
        # threads happen to reach the engine
        self._asked = np.full(len(catalog), -1, dtype=np.int64)
        self._later: dict[str, int] = {}  # the same for the order after it
        self._unmapped: Callable[[int], object] = lambda k: None
        self._closed = False
        self._lock = threading.Lock()
        self._engine: PartEngine | None = None  # attached on the first download in parts
        self._used_engine: PartEngine | None = None  # kept after close, for stats
        self._transfers: dict[int, object] = {}  # shard -> its download in parts, while running
        self._wanted: set[int] = set()  # shards a reader is about to wait for (about_to_map)
        self._heads: dict[int, HeadFetch] = {}  # heads being fetched for downloads not yet started
        self._parts: dict[int, PartFetch] = {}  # a resume's first part, likewise
        self._mapped_any = False  # a reader has had a shard: its first record is no longer waited for
        self._first_asked = False  # the download a reader waits for first is with the engine
        self._led = False  # a reader's first records come from a head (no shard is its first)
        # the store of the GETs beside the engine that the reader's first record waits for
        # (a head's, a resume's part), until it has it (_await_first)
        self._lead: Store | None = None
        self._had_at: float | None = None  # when the reader had that record's bytes (_had_first)
        self._first_cond = threading.Condition(self._lock)  # (told when either changes, and on close)
        self._stats: dict[str, float] = {
            "shards_downloaded": 0, "bytes_downloaded": 0, "cache_hits": 0,
            "gets": 0, "retries": 0, "wait_seconds": 0.0, "head_bytes": 0,
        }
        # per shard of the catalog: downloads, cache hits, bytes downloaded (a mixture's
        # statistics per member)
        self._per_shard = np.zeros((len(catalog), 3), dtype=np.int64)
        _LIVE.add(self)

    # -- what the limit allows ---------------------------------------------------------

    @property
    def max_mapped(self) -> int | None:
        """How many shards one read may map at once: None without a cache limit."""
        return None if self._limit is None else self._max_mapped

    @property
    def mapping_cap(self) -> int:
        """How many shards the cache limit lets stay mapped at once (all of them without
        one), whatever :meth:`hold` asked for since."""
        return self._fits_mapped

    def fit_window(self, window: int) -> None:
        """Refuse (CacheError) a shuffle window whose shards, and a chosen lookahead, the
        cache limit cannot hold; shrink an unchosen lookahead to fit beside it."""
        chosen = self.chosen_lookahead
        fitted = fit_lookahead(
            self._limit, self.catalog.raw_sizes, held=window,
            lookahead=chosen, default=self.lookahead if chosen is None else chosen,
            what=f"{self._what} with window={window}", fix="lower window= or raise cache_limit",
        )
        if fitted < self.lookahead:
            self.lookahead = fitted
            if self._downloader is not None:
                self._downloader.lookahead = fitted

    def hold(self, shards: int) -> None:
        """Keep at least ``shards`` mapped at once (a shuffle window, a batch's shards)."""
        self._max_mapped = max(self._max_mapped, shards)

    def that_fit(self, shards: list[int]) -> list[int]:
        """The longest prefix of ``shards`` whose raw sizes fit under the cache limit
        together (all of them without one)."""
        if self._limit is None or not shards:
            return list(shards)
        sizes = self.catalog.raw_sizes[np.asarray(shards, dtype=np.int64)]
        return list(shards[: prefix_that_fits(self._limit, sizes)])

    # -- the order of use --------------------------------------------------------------

    def expect(self, shards: Iterable[int], then: Iterable[int] = ()) -> None:
        """The shards will be used in this order (eviction removes the one needed furthest
        ahead first); ``then`` is the order after that (the next epoch's), if known.
        Downloads queued for shards outside ``shards`` are dropped."""
        shards = list(shards)
        checksums = self.catalog.checksums
        order: dict[str, int] = {}
        for pos, k in enumerate(shards):
            order.setdefault(checksums[k], pos)
        self._later = {}
        for pos, k in enumerate(then, start=len(shards)):
            self._later.setdefault(checksums[k], pos)
        for checksum, pos in self._later.items():
            order.setdefault(checksum, pos)
        self._next_use = order  # replaced, never mutated: download threads may be reading it
        with self._lock:
            self._wanted.clear()  # what an abandoned order was about to map
        if self._downloader is not None:  # prefetches for an abandoned order free their slots
            self._downloader.retain(set(shards))

    def finished(self, shards: list[int]) -> None:
        """These shards are done with in the current order: their next use is in the order
        after it, if they are in it, else never (evicted first); under a cache limit they
        are unmapped so the cache may evict them (without one they stay for next time)."""
        checksums = self.catalog.checksums
        gone = {checksums[k] for k in shards}
        later = self._later
        order = {c: pos for c, pos in self._next_use.items() if c not in gone}
        order.update((c, later[c]) for c in gone if c in later)
        self._next_use = order
        if self._limit is not None:
            for k in shards:
                self.release(k)

    # -- downloads ---------------------------------------------------------------------

    def prefetch(self, upcoming: Iterable[int]) -> None:
        """Download the first ``lookahead`` unmapped shards of ``upcoming`` in the background
        (not one being mapped), in that order."""
        if self.lookahead > 0 and not self._closed:
            # (drawn from lazily, as claims make room: a shard the reader is mapping, whose
            # claim made it, is not asked for again; it would hold a place in the lookahead
            # that no claim frees, and a token stream, whose list holds the shards it maps
            # next, fetched shard by shard once the lookahead was full of them)
            wanted = (k for k in upcoming if k not in self._handles and k not in self._wanted)
            self._get_downloader().prefetch(self._ask(k) for k in wanted)

    def _ask(self, k: int) -> int:
        """``k``, noted as asked for now (see ``_asked``; only where it may download in parts)."""
        if self.catalog.remote:
            self._asked[k] = engine().ticket()
        return k

    def fetch_together(self, shards: Iterable[int]) -> None:
        """Download the unmapped ones of ``shards`` (all needed now) side by side."""
        missing = [k for k in shards if k not in self._handles]
        if len(missing) > 1 and not self._closed:
            self._get_downloader().fetch_now(missing)

    def about_to_map(self, shards: list[int]) -> None:
        """``shards`` are all needed now: their downloads go before any other, and start
        now, side by side (under a cache limit, several are fetched one at a time as they
        are mapped: they may not all fit)."""
        missing = [k for k in shards if k not in self._handles]
        with self._lock:
            self._wanted.update(missing)
            self._first_cond.notify_all()
        if missing and (self._limit is None or len(missing) == 1) and not self._closed:
            self._get_downloader().fetch_now(missing)

    def _get_downloader(self) -> Downloader:
        if self._downloader is None:
            checksums = self.catalog.checksums
            self._downloader = Downloader(self._prefetch_job, workers=self.download_workers,
                                          lookahead=self.lookahead,
                                          cached=lambda k: self.cache.contains(checksums[k]))
        return self._downloader

    def _cancel_check(self) -> Callable[[], None] | None:
        downloader = self._downloader
        return downloader.check_cancelled if downloader is not None else None

    def _prefetch_job(self, k: int, check_cancelled: Callable[[], None]) -> None:
        self._await_first(k)
        self._fetch(k, check_cancelled).close()

    def _await_first(self, k: int) -> None:
        """Before a reader's first record, a download ahead of it waits (a moment at most:
        :data:`_FIRST_GRACE`) until the one the reader waits for first is with the engine,
        unless it is that one: threads start downloads in any order, and parts on the wire
        are not taken back. (Shaped, 6 x 256 MiB: when the next shard's download came
        first, its parts took half the slots, the first shard's parts went at half the
        link, and the first record came after 1.1-1.5 s instead of 0.84.)

        Where the first record comes from GETs beside the engine (a head's, a resume's
        part), it waits until the reader has that record, unless those GETs show the
        store's connections to be slow
        (:meth:`~roxxel.read.parts.PartEngine.lead_check`), where the link needs the
        other downloads beside them.
        Where they are fast (loopback), the CPU is the limit: a dozen downloads starting
        beside them, each on a thread of its own, took it (and the GIL) from the reader,
        and the first record came 2-4 times later; and they wait :data:`_HANDOFF_SECONDS`
        more once the reader has the record's bytes, for it to hand the record over (the
        shard it reads next keeps the CPUs busy meanwhile)."""
        deadline = time.monotonic() + _FIRST_GRACE
        parts = engine()  # (not under the lock: a forked child makes its own)
        with self._first_cond:
            while not (self._mapped_any or self._first_asked or self._closed or k in self._wanted):
                now = time.monotonic()
                left = deadline - now
                if left > 0 and self._lead is not None:
                    check = parts.lead_check(self._lead)
                    if check == 0:
                        left = 0
                    elif self._had_at is not None:
                        left = min(left, self._had_at + _HANDOFF_SECONDS - now)
                    elif check is not None:  # (look again when the GETs may show it)
                        left = min(left, max(check, _LEAD_SECONDS))
                if left <= 0:  # no reader this soon: hold no download back again
                    self._first_asked = True
                    self._first_cond.notify_all()
                    return
                self._first_cond.wait(left)

    def _had_first(self) -> None:
        """The reader has its first record from GETs beside the engine, or will not: hold
        downloads back no more than a moment (:meth:`_await_first`)."""
        with self._lock:
            if self._had_at is None:
                self._had_at = time.monotonic()
            self._first_cond.notify_all()

    def _fetch(
        self,
        k: int,
        check_cancelled: Callable[[], None] | None,
        meter: Meter | None = None,
        *,
        urgent: bool = False,
    ) -> CachedShard:
        """Shard ``k`` in the cache (downloaded and verified if it was not), held.
        ``urgent``: a reader is waiting for it (its parts go first)."""

        def counted(sink: Callable[[bytes], object]) -> Callable[[bytes], None]:
            def write(chunk: bytes) -> None:
                sink(chunk)
                if check_cancelled is not None:
                    check_cancelled()
                with self._lock:
                    self._stats["bytes_downloaded"] += len(chunk)
                    self._per_shard[k, 2] += len(chunk)
                if meter is not None:
                    meter.add(len(chunk))

            return write

        def download(store: Store, key: str, size: int, sink: Callable[[bytes], object]) -> None:
            if not store.downloads_in_parts:
                store.stream(key, counted(sink), size=size)
                return
            parts = self._attached_engine()
            with self._lock:
                head = self._heads.pop(k, None)  # (its bytes go first, from the head's fetch)
                part_fetch = self._parts.pop(k, None)  # (its bytes are placed by the part's fetch)
            into, feed = placement(sink), counted(sink)  # (asked of the sink as it was given)
            if into is None:
                head = part_fetch = None
            if head is not None:
                feed = after_head(head, into, feed, check_cancelled)
            # a resume's first part: its bytes are left to its fetch, once the index says where
            given = part_fetch.span(check_cancelled) if part_fetch is not None else None
            with self._lock:  # told before its parts can be picked, not after (_started)
                waited = urgent or k in self._wanted
                # (a resume's first record comes from its part: no shard is its first, as for a head)
                self._led = self._led or (given is not None and not self._mapped_any)
                first = waited and not (self._mapped_any or self._led)

            def started(transfer: Transfer) -> None:
                self._started(k, transfer, urgent)
                if part_fetch is not None:
                    part_fetch.hand_to(parts, transfer)

            try:
                # (threads start downloads in any order: the reader's order decides which goes first)
                parts.download(store, key, size, feed, check_cancelled=check_cancelled,
                               on_start=started,
                               on_part=self._count_part, on_retry=self._count_retry,
                               order=self._order_of(k),
                               urgent=waited, first=first, into=into,
                               start=head.head.size if head is not None else 0, given=given)
            finally:
                with self._lock:
                    self._transfers.pop(k, None)
                    if part_fetch is not None and not part_fetch.given:  # (fetched twice: by the part's too)
                        self._stats["head_bytes"] += part_fetch.part_bytes

        try:
            handle, fetched = self.catalog.get(k, self.cache, download, self._next_use)
        finally:
            self._settle_head(k)
        with self._lock:
            self._stats["shards_downloaded" if fetched else "cache_hits"] += 1
            self._per_shard[k, 0 if fetched else 1] += 1
        return handle

    def _order_of(self, k: int) -> int | None:
        """When shard ``k`` is needed: its place in the order given (:meth:`expect`), else
        in the order downloads were asked for, if it was (``_asked``)."""
        order = self._next_use.get(self.catalog.checksums[k])
        if order is None and self._asked[k] >= 0:
            order = int(self._asked[k])
        return order

    def _attached_engine(self) -> PartEngine:
        with self._lock:
            if self._engine is None:
                self._engine = self._used_engine = engine()
                self._engine.attach()
            return self._engine

    def _started(self, k: int, transfer: object, urgent: bool) -> None:
        with self._lock:
            self._transfers[k] = transfer
            urgent = urgent or k in self._wanted
            if urgent and not self._first_asked and self._lead is None:  # (else: _had_first)
                self._first_asked = True
                self._first_cond.notify_all()
        if urgent and self._engine is not None:
            self._engine.hurry(transfer, first=not (self._mapped_any or self._led))

    def _count_part(self, nbytes: int, start: float, end: float) -> None:
        with self._lock:
            self._stats["gets"] += 1

    def _count_retry(self, exc: BaseException) -> None:
        with self._lock:
            self._stats["retries"] += 1

    def warm(
        self, shards: list[int], *, workers: int, progress: Callback | None = None
    ) -> dict[str, int]:
        """Fetch ``shards`` into the cache in that order on ``workers`` threads of their own,
        skipping cached ones and holding none. ``progress`` (an fsspec ``Callback``) gets
        the stored bytes of the shards not cached, then the bytes as they are downloaded.
        Returns ``shards_fetched``, ``shards_cached`` and ``bytes_downloaded``; the first
        failure stops the warm-up and is raised here."""
        self.expect(shards)
        checksums = self.catalog.checksums
        todo = [k for k in shards if not self.cache.contains(checksums[k])]
        meter = Meter(progress, sum(self.catalog.stored_size(k) for k in todo))
        before = self.stats
        ahead = 2 * workers
        downloader = Downloader(lambda k, check: self._fetch(k, check, meter).close(),
                                workers=workers, lookahead=ahead)
        try:
            for i, k in enumerate(todo):
                downloader.prefetch(todo[i : i + ahead])
                if not downloader.claim(k):  # not started yet: fetched here, now
                    self._fetch(k, downloader.check_cancelled, meter).close()
        finally:
            downloader.close()
        after = self.stats
        fetched = after["shards_downloaded"] - before["shards_downloaded"]
        return {
            "shards_fetched": fetched,
            "shards_cached": len(shards) - fetched,
            "bytes_downloaded": after["bytes_downloaded"] - before["bytes_downloaded"],
        }

    @property
    def stats(self) -> dict[str, float]:
        """Shards and bytes downloaded, shard loads served by the cache, GETs made and
        retried, the seconds readers waited for shards to arrive, and ``head_bytes``
        (bytes fetched beyond the shards' own: heads' record indexes, a resume's first
        part's, and that part where its shard's download could not take it); with
        ``link_bytes_per_second``, what this process's downloads achieved while any was
        running (all readers of the process together)."""
        with self._lock:
            stats = dict(self._stats)
        parts = self._used_engine
        busy = parts.stats["busy_seconds"] if parts is not None else 0.0
        stats["link_bytes_per_second"] = parts.stats["bytes"] / busy if parts is not None and busy else 0.0
        return stats

    def stats_of(self, first: int, stop: int) -> dict[str, int]:
        """Downloads, cache hits and bytes downloaded of shards ``first..stop-1``."""
        with self._lock:
            got = self._per_shard[first:stop].sum(axis=0).tolist()
        return {"shards_downloaded": got[0], "cache_hits": got[1], "bytes_downloaded": got[2]}

    # -- maps --------------------------------------------------------------------------

    def on_unmap(self, callback: Callable[[int], object]) -> None:
        """Call ``callback(k)`` whenever shard ``k`` is unmapped (before its cache handle
        is let go), whoever decided it. One listener: the record index over the catalog's
        shards (a mixture has one index over all its members' shards)."""
        self._unmapped = callback

    def map(self, k: int) -> MappedShard:
        """Shard ``k`` mapped, fetched into the cache first if needed (waiting for its
        background download if one is running), and held until :meth:`release`."""
        if self._closed:
            raise ValueError(f"{self._what} is closed")
        while len(self._mapped) >= self._max_mapped:  # unlock one before the cache needs room
            self.release(self._mapped[0])
        downloader = self._downloader
        with self._lock:
            self._wanted.add(k)  # a download of it that starts from now on is urgent too
            transfer = self._transfers.get(k)
            self._first_cond.notify_all()  # (its download may be waiting for the first: _await_first)
        if transfer is not None and self._engine is not None:
            self._engine.hurry(transfer, first=not (self._mapped_any or self._led))  # the reader waits for it
        waited, began = time.perf_counter(), time.perf_counter_ns()
        try:
            claimed = downloader is not None and downloader.claim(k)
            handle = self._fetch(k, downloader.check_cancelled if downloader is not None else None,
                                 urgent=True)
        except (Cancelled, CancelledError):
            raise ValueError(f"{self._what} was closed while a shard was being fetched") from None
        finally:
            with self._lock:
                self._stats["wait_seconds"] += time.perf_counter() - waited
                self._wanted.discard(k)
            tracer = trace.current()
            if tracer is not None:
                tracer.complete("wait for shard", "read", began, time.perf_counter_ns(),
                                shard=self.catalog.label(k))
        if claimed:  # the prefetch already counted this shard
            with self._lock:
                self._stats["cache_hits"] -= 1
                self._per_shard[k, 1] -= 1
        shard, handle = self._map_or_heal(k, handle)
        self._handles[k] = handle
        with self._lock:
            self._mapped_any = True
            self._first_cond.notify_all()
        self._maps[k] = shard
        self._mapped.append(k)
        return shard

    def first_records(self, k: int, *, lead: bool = True,
                      share: int = 1) -> Callable[[], HeadRecords | None] | None:
        """Ask for shard ``k``'s first records from its head (see :mod:`roxxel.read.head`),
        sooner than its map: their fetch starts now, and a function that waits for them
        is returned (it returns None if they could not be had: logged, and the shard's
        own download says what is wrong with it, if anything); or None at once where
        they would not come sooner (the shard is cached, or downloading already, has no
        head, or is not downloaded in parts). Ask before the shard's download starts
        (:meth:`about_to_map`): it then starts after the head's bytes, and takes them
        from the head's fetch. Asked before any shard is mapped (and ``lead``: its records
        are the reader's first), it makes the head the reader's first: no shard is then
        fetched as a first shard (alone, in pieces: :mod:`roxxel.read.parts`), only before
        the others, as any shard a reader waits for. ``share``: how many heads are asked
        for together (:class:`~roxxel.read.head.HeadFetch`)."""
        with self._lock:
            fetch = self._heads.get(k)  # (asked before, and no download took it yet)
            busy = self._closed or k in self._transfers
        if busy or self.cache.contains(self.catalog.checksums[k]):
            return None
        if fetch is None:
            with self._lock:
                leads = lead and not self._mapped_any
            fetch = self.catalog.fetch_head(k, share, leads=leads)
            if fetch is None:
                return None
            with self._lock:
                self._heads[k] = fetch
                # the reader's first records come from this head, no shard is its first: the
                # one it waits for next goes before the others, but not alone (a first
                # shard's pieces over half the slots, the others' held back until it is
                # checked), which would only idle the link (shaped 12 x 32 MiB: epochs
                # 2.7-4.5% longer; README, Cold reads from object stores)
                self._led = self._led or leads
                if leads:
                    self._lead = fetch.store
                    self._first_cond.notify_all()  # (downloads ahead waiting now wait for its record)
                self._stats["gets"] += fetch.gets
                self._stats["head_bytes"] += fetch.index_bytes
            if self.cache.contains(self.catalog.checksums[k]):  # (a download began and ended meanwhile:
                self._settle_head(k)  # none will take the fetch's bytes, which its records still serve)

        def wait() -> HeadRecords | None:
            began = time.perf_counter_ns()
            if not self._awaited(fetch):
                return None
            early = fetch.records()
            self._had_first()
            tracer = trace.current()
            if tracer is not None:
                tracer.complete("wait for head", "read", began, time.perf_counter_ns(),
                                shard=self.catalog.label(k), records=early.count if early else 0)
            return early

        return wait

    def part_records(self, k: int, record: int) -> Callable[[], PartRecords | None] | None:
        """Ask for the part of shard ``k`` that its record ``record`` lies in (see
        :mod:`roxxel.read.partfetch`: a resume's first record, inside the shard): its
        fetch starts now, and a function that waits for its records is returned (None if
        they could not be had: logged); or None at once where they would not come sooner
        (the shard is mapped, cached or downloading already, has no head or parts, or is
        not downloaded in parts). Ask before the shard's download starts: it then takes
        the part's bytes from the fetch."""
        with self._lock:
            busy = self._closed or k in self._transfers or k in self._maps
        if busy or self.cache.contains(self.catalog.checksums[k]):
            return None
        fetch = self.catalog.fetch_part(k, record)
        if fetch is None:
            return None
        with self._lock:
            self._parts[k] = fetch
            if not self._mapped_any:
                self._lead = fetch.store
                self._first_cond.notify_all()

        def wait() -> PartRecords | None:
            began = time.perf_counter_ns()
            if not self._awaited(fetch):
                return None
            got = fetch.records()
            self._had_first()
            with self._lock:  # (its parts' bytes count where the shard's download fetched them too)
                self._stats["gets"] += fetch.gets
                self._stats["head_bytes"] += fetch.index_bytes
            tracer = trace.current()
            if tracer is not None:
                tracer.complete("wait for part", "read", began, time.perf_counter_ns(),
                                shard=self.catalog.label(k), record=record)
            return got

        return wait

    def _awaited(self, fetch: HeadFetch | PartFetch) -> bool:
        """Wait for ``fetch`` to end: True; False once the residency closes."""
        while not fetch.done(_POLL_SECONDS):
            if self._closed:
                return False
        return True

    def first_bytes(self, k: int) -> Callable[[], np.ndarray | None] | None:
        """Shard ``k`` is read first, from its head's bytes if they come sooner than the
        shard (a token stream's first batches: :mod:`roxxel.read.tokens`): they are asked
        for now (:meth:`first_records`), and then the shard's download, before any other
        (:meth:`about_to_map`). Returns a function that waits for the head's bytes,
        checked (None if they could not be had), or None where they would not come sooner."""
        wait = None if k in self._maps else self.first_records(k)
        self.about_to_map([k])
        if wait is None:
            return None
        return lambda: None if (early := wait()) is None else early.payload

    def _settle_head(self, k: int) -> None:
        """Shard ``k``'s fetch has ended (in the cache, or failed): a head fetched for a
        download that did not take it is of no use to a later one, which starts from byte 0."""
        with self._lock:
            self._heads.pop(k, None)
            self._parts.pop(k, None)

    def _map_or_heal(self, k: int, handle: CachedShard) -> tuple[MappedShard, CachedShard]:
        """Map a cached shard; if its cached copy was damaged on disk since it was verified
        (the footer or offsets no longer check out), replace it with a fresh download."""
        try:
            return handle.map(), handle
        except ShardFormatError as damaged:
            handle.close()
            log.warning("cached copy of %s is damaged (%s); downloading it again",
                        self.catalog.label(k), damaged)
            try:
                self.cache.remove(self.catalog.checksums[k])
            except CacheError:  # another process has it open: it cannot be replaced now
                raise damaged from None
        except BaseException:
            handle.close()
            raise
        handle = self._fetch(k, self._cancel_check())
        try:
            return handle.map(), handle
        except BaseException:
            handle.close()
            raise

    def release(self, k: int) -> None:
        """Unmap shard ``k`` and let the cache evict it again (views stay valid)."""
        shard = self._maps.pop(k, None)
        if shard is not None:
            self._unmapped(k)
            shard.close()
        handle = self._handles.pop(k, None)
        if handle is not None:
            handle.close()
        try:
            self._mapped.remove(k)
        except ValueError:
            pass

    def close(self) -> None:
        """Stop the downloads and release every shard (idempotent); no shard is mapped
        or downloaded after it."""
        with self._lock:
            self._closed = True
            self._first_cond.notify_all()
        if self._downloader is not None:
            self._downloader.close()
            self._downloader = None
        for k in list(self._handles):
            self.release(k)
        with self._lock:
            parts, self._engine = self._engine, None
            self._wanted.clear()
            self._heads.clear()
            self._parts.clear()
        if parts is not None and parts.pid == os.getpid():
            parts.detach()
