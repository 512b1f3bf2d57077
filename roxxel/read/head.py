"""A shard's first records before the whole shard has arrived, vouched for by its head.

The first record of ``for r in ds`` waits for the first shard, and a large one takes the
link's time to arrive whole (256 MiB through a 400 MB/s link: 0.7 s), however soon its
first bytes come. When the manifest gives the shard a head (:mod:`roxxel.manifest.heads`:
the number of its first records, the byte where they end, and the checksums of those
bytes and of its record index), a :class:`HeadFetch` fetches those bytes, as pieces of
:data:`PIECE`, and the record index, side by side on threads of its own, from the moment
the reader asks, before the shard's download has started. Those GETs count against the
process's :class:`~roxxel.read.parts.PartEngine` (its share of the node's parts in
flight: :meth:`~roxxel.read.parts.PartEngine.outside`), and are never more than its
limit: under a small share the pieces are fewer and larger. Once both are in and match
their checksums (and the index the footer, the manifest and the head), the head's
records are the reader's (:class:`HeadRecords`, from memory: one part's worth at most).
The shard's download starts after the head's bytes and takes them from here as the
start of the shard (:func:`after_head`), once they match their checksum (else it reads
them again), so no byte is fetched twice but the index; the shard is verified and
cached as before. Nothing the reader gets was not checked. A head of more than
:data:`MAX_HEAD_BYTES` (or an index of more), which roxxel's writer never makes, is not
fetched: the manifest is not trusted with the reader's memory.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, wait
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from .. import trace
from ..backends import Store
from ..errors import IntegrityError, RoxxelError, ShardFormatError
from ..format.layout import FOOTER_SIZE, OFFSET_DTYPE, check_offsets, parse_footer
from ..manifest.checksums import ShardKey
from ..manifest.heads import HEAD_BYTES, Head, index_start
from .parts import PartEngine, Placement
from .parts import engine as process_engine

__all__ = ["MAX_HEAD_BYTES", "PIECE", "HeadFetch", "HeadRecords", "after_head", "checked_offsets", "on_thread",
           "on_threads", "read_beside"]

log = logging.getLogger(__name__)
T = TypeVar("T")

#: The head's bytes are fetched as pieces of this size, side by side. Shaped (30 ms to
#: the first byte, 25 MB/s a connection), 8 MiB as 1 MiB pieces came in 89-96 ms, as
#: 2 MiB ones in 172-283 ms, beside the shard's own parts.
PIECE = 2**20
#: The largest head (and record index) a reader fetches: twice what roxxel's writer makes.
MAX_HEAD_BYTES = 2 * HEAD_BYTES
_POLL_SECONDS = 0.25  # how soon a download waiting for a head's bytes notices cancellation


@dataclass(frozen=True)
class HeadRecords:
    """The first ``count`` records of a shard (its head's): ``payload`` holds their bytes
    and ``offsets`` the end offset of every record of the shard, both checked."""

    payload: np.ndarray
    offsets: np.ndarray
    count: int


class HeadFetch:
    """The head of ``key``, an uncompressed shard of ``records`` records and
    ``stored_size`` bytes in ``store`` (as its manifest says, with ``head``), being
    fetched on threads of its own from construction on: its bytes (:meth:`prefix`), and
    its records once checked (:meth:`records`). ``gets`` and ``index_bytes`` say what
    it asked the store for besides the shard's own bytes' worth. ``share``: how many
    heads are asked for together (a mixture's sources'): they split the engine's limit,
    each making two GETs at least (a piece and the index). ``leads``: a reader's first
    record is the head's (the engine's parts leave its GETs room: ``outside(first=)``)."""

    @staticmethod
    def fits(records: int, stored_size: int, head: Head) -> bool:
        """Whether the head (and the index) of a shard of ``records`` records and
        ``stored_size`` bytes are small enough to fetch apart (:data:`MAX_HEAD_BYTES`)."""
        return max(head.size, stored_size - index_start(records, stored_size)) <= MAX_HEAD_BYTES

    def __init__(self, store: Store, key: str, records: int, stored_size: int, head: Head,
                 engine: PartEngine | None = None, share: int = 1, leads: bool = False) -> None:
        self.store, self.key, self.stored_size, self.head = store, key, stored_size, head
        self._records, self._leads = records, leads
        self._first = bytearray(head.size)
        self._index = bytearray(stored_size - index_start(records, stored_size))
        # its GETs count against the part engine's limit and budget (this process's share
        # of the node's), and are no more than the limit: fewer, larger pieces under a small
        # one; ``share`` heads asked together (a mixture's sources') split it between them
        self._engine = process_engine() if engine is None else engine
        piece = max(PIECE, -(-head.size // max(1, (self._engine.limit - share) // share)))
        self._starts = list(range(0, head.size, piece))
        self.gets, self.index_bytes = len(self._starts) + 1, len(self._index)
        self._lock = threading.RLock()  # (records() checks what _whole() assembles, both under it)
        self._got: dict[int, bytearray] = {}  # id(buffer) -> its bytes, once in (see _whole)
        self._checked: tuple[HeadRecords | None] | None = None
        self._first_checked: tuple[bytearray | BaseException] | None = None
        index_at = index_start(records, stored_size)
        ended = self._engine.lead(store) if leads else None  # (until its last GET ends)
        reads = on_threads([(self._read, (self._index, 0, index_at, stored_size)),
                            *((self._read, (self._first, a, a, min(a + piece, head.size))) for a in self._starts)])
        self._index_read, self._reads = reads[0], reads[1:]
        if ended is not None:
            left = [len(reads)]
            count = threading.Lock()

            def one_done(_: Future[memoryview]) -> None:
                with count:
                    left[0] -= 1
                    last = left[0] == 0
                if last:
                    ended()

            for read in reads:
                read.add_done_callback(one_done)

    def _read(self, into: bytearray, at: int, start: int, end: int) -> memoryview:
        """Bytes ``[start, end)`` of the shard, read into ``into`` at ``at``; the view of
        them: of ``into``, or of a buffer of their own if an attempt failed (one given up
        on may still write into ``into`` there: see :meth:`_whole`)."""
        began = time.perf_counter_ns()
        got = self.read(start, end, memoryview(into)[at : at + end - start])
        if (tracer := trace.current()) is not None:
            tracer.complete("head part", "download", began, time.perf_counter_ns(), key=self.key,
                            offset=start, bytes=end - start)
        return got

    def read(self, start: int, end: int, into: memoryview) -> memoryview:
        """Bytes ``[start, end)`` of the shard: :func:`read_beside`."""
        return read_beside(self._engine, self.store, self.key, start, end, into, first=self._leads)

    def done(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for every read to end; whether they have."""
        reads = (*self._reads, self._index_read)
        return not wait(reads, timeout).not_done

    def prefix(self) -> bytearray | None:
        """The head's bytes (waiting for them), once they match the head's checksum: the
        start of the shard; None if a read of them failed or they do not match (logged
        by :meth:`records`)."""
        got = self._checked_first()
        return None if isinstance(got, BaseException) else got

    def _checked_first(self) -> bytearray | BaseException:
        """The head's bytes, checked, or the error that stopped them (computed once)."""
        with self._lock:
            if self._first_checked is None:
                try:
                    first = self._whole(self._first, self._starts, self._reads)
                    what = f"{self.store.url(self.key)}: bytes [0, {self.head.size}) (its head)"
                    _check(first, self.head.first, what)
                    self._first_checked = (first,)
                except (RoxxelError, OSError) as exc:
                    self._first_checked = (exc,)
            return self._first_checked[0]

    def _whole(self, buffer: bytearray, starts: list[int], reads: list[Future[memoryview]]) -> bytearray:
        """The bytes read into ``buffer`` at ``starts``, once every read has succeeded
        (raising the first failure): ``buffer`` itself, unless an attempt was given up on
        (it may still write into the buffer it was given); then a fresh copy, those
        bytes from the retry's buffer."""
        with self._lock:
            got = self._got.get(id(buffer))
            if got is None:
                views = [read.result() for read in reads]
                got = buffer
                if any(view.obj is not buffer for view in views):
                    got = bytearray(len(buffer))
                    for at, view in zip(starts, views):
                        got[at : at + len(view)] = view
                self._got[id(buffer)] = got
            return got

    def records(self) -> HeadRecords | None:
        """The head's records, checked (waiting for every read); None if they could not
        be had (logged once)."""
        with self._lock:
            if self._checked is None:
                self._checked = (self._check_all(),)
            return self._checked[0]

    def _check_all(self) -> HeadRecords | None:
        try:
            index = self._whole(self._index, [0], [self._index_read])
            offsets = checked_offsets(index, self.head, self._records, self.stored_size, self.store.url(self.key))
            first = self._checked_first()
            if isinstance(first, BaseException):
                raise first
            payload = np.frombuffer(first, dtype=np.uint8)
            payload.setflags(write=False)  # (the records' views are read-only, as a shard's map)
            return HeadRecords(payload, offsets, self.head.records)
        except (RoxxelError, OSError) as exc:
            log.warning("the first records of %s wait for the whole shard: %s", self.store.url(self.key), exc)
            return None


def checked_offsets(index: bytearray | memoryview, head: Head, records: int, size: int, label: str) -> np.ndarray:
    """The end offsets in ``index`` (the record index and footer of the shard ``label``
    of ``records`` records and ``size`` bytes), checked against ``head``, the footer
    and the manifest."""
    payload_size = index_start(records, size)
    _check(index, head.index, f"{label}: bytes [{payload_size}, {size}) (its record index)")
    layout = parse_footer(bytes(index[-FOOTER_SIZE:]), size, label)
    if layout.record_count != records or layout.payload_size != payload_size:
        raise ShardFormatError(
            f"{label}: footer says {layout.record_count} records in {layout.payload_size} "
            f"payload bytes, expected {records} in {payload_size} from the manifest"
        )
    offsets = np.frombuffer(bytes(index), dtype=OFFSET_DTYPE, count=records)
    check_offsets(offsets, layout, label)
    end = int(offsets[head.records - 1])
    if end != head.size:
        raise ShardFormatError(f"{label}: record {head.records - 1} ends at byte {end}, "
                               f"expected {head.size} from the manifest's head")
    return offsets


def after_head(fetch: HeadFetch, into: Placement, sink: Callable[[memoryview], object],
               check_cancelled: Callable[[], None] | None) -> Callable[[memoryview], None]:
    """``sink`` (a shard's download's, from the head's end on), first fed the head's
    bytes: from ``fetch`` once they match their checksum, else read again from the
    store; written to ``into`` (the shard's temp file, where the download places the
    rest) before they are fed."""
    fed = False

    def feed(chunk: memoryview) -> None:
        nonlocal fed
        if not fed:
            while not fetch.done(_POLL_SECONDS):
                if check_cancelled is not None:
                    check_cancelled()
            first: memoryview | bytearray | None = fetch.prefix()
            if first is None:  # (a buffer of its own: read_part may hand back another)
                first = fetch.read(0, fetch.head.size, memoryview(bytearray(fetch.head.size)))
            into.write(0, memoryview(first))
            sink(memoryview(first))
            fed = True
        sink(chunk)

    return feed


def read_beside(engine: PartEngine, store: Store, key: str, start: int, end: int, into: memoryview, *,
                first: bool = False) -> memoryview:
    """Bytes ``[start, end)`` of ``key`` (``Store.read_part``) read beside the part
    ``engine``: counted against its limit and budget while in flight, its throttled
    retries slowing the engine down as a part's do. ``first``: a reader's first record
    waits for them (:meth:`~roxxel.read.parts.PartEngine.outside`)."""
    with engine.outside(end - start, store, first=first):
        return store.read_part(key, start, end, into, on_failure=engine.retried)


def on_thread(work: Callable[..., T], *args: object) -> Future[T]:
    """``work(*args)`` running on a daemon thread of its own: its future (:func:`on_threads`)."""
    return on_threads([(work, args)])[0]


def on_threads(calls: Sequence[tuple[Callable[..., T], tuple[object, ...]]]) -> list[Future[T]]:
    """Each ``work(*args)`` of ``calls`` running on a daemon thread of its own (one stalled
    in the store never holds the interpreter's exit, as a pool's thread would): their
    futures. The caller starts the first thread, and each thread the next before its
    call: a thread's start waits for the new one to take the GIL, up to milliseconds
    while downloads run, and the caller (a reader before its first record) has other
    things to start."""
    futures: list[Future[T]] = [Future() for _ in calls]

    def run(i: int) -> None:
        if i + 1 < len(calls):
            start(i + 1)
        work, args = calls[i]
        try:
            got = work(*args)
        except BaseException as exc:  # noqa: BLE001 - handed to whoever waits, raised there
            futures[i].set_exception(exc)
        else:
            futures[i].set_result(got)

    def start(i: int) -> None:
        try:
            threading.Thread(target=run, args=(i,), name="roxxel-head", daemon=True).start()
        except RuntimeError as exc:  # (no thread to be had: the calls not started fail with it)
            for future in futures[i:]:
                future.set_exception(exc)

    if calls:
        start(0)
    return futures


def _check(data: bytearray, expected: ShardKey, what: str) -> None:
    hasher = expected.new_hash()
    hasher.update(data)
    got = hasher.hexdigest()
    if got != expected.hexdigest:
        raise IntegrityError(f"{what}: {expected.algorithm} is {got}, expected {expected.hexdigest} "
                             "from the manifest's head")
