"""A resume's first record before its shard has arrived, vouched for by its part.

A resume inside a window waits for the shard its first record lies in (see
:mod:`roxxel.read.iteration`), and a large one takes the link's time to arrive whole
(256 MiB through a 400 MB/s link: 0.7 s). Where the manifest gives the shard a head and
parts (:mod:`roxxel.manifest.parts`: a checksum of each 8 MiB part), a :class:`PartFetch`
fetches the shard's record index (checked against the head, the footer and the
manifest), then the part or two that the record lies in, as pieces side by side, and
checks each part against its checksum: the records wholly inside are the reader's
(:class:`PartRecords`). Its GETs count against the process's part engine as a head's do
(:meth:`~roxxel.read.parts.PartEngine.outside`). The shard's download waits for the
index to say where those parts are (:meth:`PartFetch.span`: one small GET's time), and
the engine then issues no connection their bytes (``PartEngine.download(given=)``): the
fetch places them in the shard's temp file once checked (:meth:`PartFetch.hand_to`; read
again if they could not be had), so no byte is fetched twice but the index's (where the
parts lie at 2 MiB boundaries, as roxxel's writer makes them; else the download fetches
them too); the shard is verified and cached as before. Nothing the reader gets was not
checked.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import wait

import numpy as np

from ..backends import Store
from ..errors import IntegrityError, RoxxelError
from ..manifest.heads import Head, index_start
from ..manifest.parts import Parts
from .head import MAX_HEAD_BYTES, PIECE, checked_offsets, on_thread, on_threads, read_beside
from .parts import PartEngine, Transfer
from .parts import engine as process_engine
from .views import RecordViews, record_views

__all__ = ["PartFetch", "PartRecords"]

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.25  # how soon a download waiting for the parts' span notices cancellation


class PartRecords:
    """Records of a shard from one or two of its parts (a :class:`PartFetch`'s): bytes
    ``[start, start + len(payload))`` of the shard in ``payload``, and the end offset of
    every record of the shard in ``offsets``, all checked."""

    def __init__(self, payload: np.ndarray, start: int, offsets: np.ndarray) -> None:
        self.payload, self.start, self.offsets = payload, start, offsets

    def _begins(self, records: np.ndarray) -> np.ndarray:
        return np.where(records > 0, self.offsets[np.maximum(records - 1, 0)], 0)

    def holds(self, records: np.ndarray) -> np.ndarray:
        """Which of ``records`` (record numbers in the shard) lie wholly in the payload."""
        return (self._begins(records) >= self.start) & (self.offsets[records] <= self.start + len(self.payload))

    def views(self, records: np.ndarray) -> RecordViews:
        """``records`` (all held), as views of the payload."""
        begins, ends = self._begins(records) - self.start, self.offsets[records] - self.start
        return record_views([self.payload], np.zeros(len(records), dtype=np.int64), begins, ends)


class PartFetch:
    """The parts that record ``record`` of ``key`` lies in, with the shard's record index,
    fetched on threads of their own from construction on (an uncompressed shard of
    ``records`` records and ``stored_size`` bytes in ``store``, whose manifest entry
    gives it ``head`` and ``parts``; see the module). ``gets`` says how many GETs it
    made, ``index_bytes`` and ``part_bytes`` how many bytes of the index and the parts
    it fetched, and ``given`` whether the shard's download took the parts' from it."""

    @staticmethod
    def fits(records: int, stored_size: int, parts: Parts) -> bool:
        """Whether a part (and the index) of a shard of ``records`` records and
        ``stored_size`` bytes are small enough to fetch apart (:data:`MAX_HEAD_BYTES`)."""
        return max(parts.size, stored_size - index_start(records, stored_size)) <= MAX_HEAD_BYTES

    def __init__(self, store: Store, key: str, records: int, stored_size: int, head: Head, parts: Parts,
                 record: int, engine: PartEngine | None = None) -> None:
        self.store, self.key, self.stored_size = store, key, stored_size
        self._records, self._head, self._parts, self._record = records, head, parts, record
        self._engine = process_engine() if engine is None else engine
        self.gets = self.index_bytes = self.part_bytes = 0
        self._lock = threading.Lock()  # (the span, the download told of it, and who places the bytes)
        self._span: tuple[int, int] | None = None  # the parts' bytes, once the index says where
        self._spanned = threading.Event()  # set once the span is known, or will never be
        self._download: tuple[PartEngine, Transfer] | None = None  # (the engine, its transfer of the shard)
        self.given = False  # the download takes the parts' bytes from here
        self._fetched: tuple[bytearray | None] | None = None  # the parts' bytes checked (None: not had)
        self._end_lead = self._engine.lead(store)  # (until its parts are checked: _fetch)
        self._result = on_thread(self._fetch)
        if self._result.done():  # (no thread to be had, say)
            self._end_lead()
        self._checked: tuple[PartRecords | None] | None = None

    def read(self, start: int, end: int, into: memoryview, *, first: bool = True) -> memoryview:
        """Bytes ``[start, end)`` of the shard: :func:`~roxxel.read.head.read_beside`, as a
        leading head's (``first``: a resume's first record waits for them)."""
        return read_beside(self._engine, self.store, self.key, start, end, into, first=first)

    def span(self, check_cancelled: Callable[[], None] | None = None) -> tuple[int, int] | None:
        """The bytes ``[start, end)`` of the shard that the parts are, waiting for the
        index to say (``check_cancelled`` is called meanwhile and may raise); None if it
        could not (the index failed its checks, or the record lies in too many parts)."""
        while not self._spanned.wait(_POLL_SECONDS):
            if check_cancelled is not None:
                check_cancelled()
        return self._span

    def hand_to(self, engine: PartEngine, transfer: Transfer) -> None:
        """The shard's download has started (``transfer``, of ``engine``), asked to leave
        :meth:`span` to this fetch: where it did (``transfer.given``), the fetch places
        those bytes there once it has them."""
        with self._lock:
            self._download = (engine, transfer)
            self.given = self._span is not None and transfer.given == self._span
            fill = self.given and self._fetched is not None
        if fill:
            on_thread(self._fill)

    def _fill(self) -> None:
        """Place the parts' bytes in the shard's download: the checked ones, else read again
        (or the error that stopped that, raised by the download in their turn)."""
        assert self._download is not None and self._span is not None and self._fetched is not None
        engine, transfer = self._download
        data, (start, end) = self._fetched[0], self._span
        try:
            got = memoryview(data) if data is not None else self.read(start, end, memoryview(bytearray(end - start)),
                                                                      first=False)  # (for the shard's download)
        except BaseException as exc:  # noqa: BLE001 - handed to the download, raised there
            engine.fill(transfer, exc)
            return
        engine.fill(transfer, got)

    def _fetch(self) -> PartRecords | None:
        try:
            return self._fetch_parts()
        finally:
            self._spanned.set()  # (known by now, or never)
            self._end_lead()

    def _fetch_parts(self) -> PartRecords | None:
        label, size, parts = self.store.url(self.key), self.stored_size, self._parts
        at = index_start(self._records, size)
        self.gets, self.index_bytes = 1, size - at
        offsets = checked_offsets(self.read(at, size, memoryview(bytearray(size - at))), self._head,
                                  self._records, size, label)
        record = self._record
        begin, end = (int(offsets[record - 1]) if record else 0), int(offsets[record])
        covering = parts.covering(begin, end)
        start, stop = parts.span(covering, size)
        if stop - start > MAX_HEAD_BYTES:  # (a record of several parts: the shard comes as soon)
            log.debug("%s: record %d lies in parts larger than a reader fetches apart", label, record)
            return None
        with self._lock:
            self._span, self.part_bytes = (start, stop), stop - start
        self._spanned.set()
        checked: bytearray | None = None
        try:
            checked = self._parts_of(label, covering, start, stop)
        finally:
            with self._lock:
                self._fetched = (checked,)
                fill = self.given
            if fill:
                self._fill()
        payload = np.frombuffer(checked, dtype=np.uint8)
        payload.setflags(write=False)  # (the records' views are read-only, as a shard's map)
        return PartRecords(payload, start, offsets)

    def _parts_of(self, label: str, covering: range, start: int, stop: int) -> bytearray:
        """Bytes ``[start, stop)``, the parts ``covering``, fetched as pieces side by side
        and each part checked."""
        parts, size = self._parts, self.stored_size
        buffer = bytearray(stop - start)
        piece = max(PIECE, -(-(stop - start) // max(1, self._engine.limit - 1)))
        starts = list(range(start, stop, piece))
        ends = [min(a + piece, stop) for a in starts]
        self.gets = 1 + len(starts)
        reads = on_threads([(self.read, (a, b, memoryview(buffer)[a - start : b - start]))
                            for a, b in zip(starts, ends)])
        views = [r.result() for r in reads]
        if any(view.obj is not buffer for view in views):  # (an attempt given up on may still write there)
            buffer = bytearray(stop - start)
            for a, view in zip(starts, views):
                buffer[a - start : a - start + len(view)] = view
        for i in covering:
            a, b = parts.span(range(i, i + 1), size)
            problem = parts.problem(i, memoryview(buffer)[a - start : b - start])
            if problem is not None:
                raise IntegrityError(f"{label}: {problem}")
        return buffer

    def done(self, timeout: float | None = None) -> bool:
        """Wait up to ``timeout`` seconds for the fetch to end; whether it has."""
        return not wait([self._result], timeout).not_done

    def records(self) -> PartRecords | None:
        """The part's records, checked (waiting for them); None if they could not be
        had (logged once)."""
        if self._checked is None:
            try:
                self._checked = (self._result.result(),)
            except (RoxxelError, OSError) as exc:
                log.warning("a resume inside %s waits for the whole shard: %s", self.store.url(self.key), exc)
                self._checked = (None,)
        return self._checked[0]
