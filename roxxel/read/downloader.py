"""Background downloads of the shards a reader will need next.

A :class:`Downloader` runs ``fetch(k, check_cancelled)`` for upcoming shards on a few background threads,
in the order they are asked for, never more than ``lookahead`` ahead of the reader: at
most ``lookahead`` shards are downloading or downloaded and not yet claimed (so a cache
limit that holds them holds what was fetched ahead), and each one claimed makes room
for the next upcoming one at once, not at the next window (no waves).
The reader claims a shard with :meth:`Downloader.claim`: it blocks only on that one
shard, and an error from the background fetch is raised there, in the reader's thread,
as the original exception. The threads are a :class:`~roxxel.workers.WorkerPool`'s; this
module adds the reader's policy: one fetch per shard, a lookahead, claims, and dropping
the fetches of an abandoned order.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future

from ..workers import WorkerPool

__all__ = ["Downloader"]

log = logging.getLogger(__name__)

CLOSE_TIMEOUT = 1.0  # seconds close() waits for running fetches


class Downloader:
    """Prefetch shards with ``fetch(k, check_cancelled)`` on ``workers`` threads, at most
    ``lookahead`` queued.

    ``fetch`` should call ``check_cancelled()`` (this downloader's :meth:`check_cancelled`)
    between chunks so that :meth:`close` does not wait for whole shards to finish.
    """

    def __init__(
        self,
        fetch: Callable[[int, Callable[[], None]], None],
        *,
        workers: int,
        lookahead: int,
        cached: Callable[[int], bool] | None = None,
    ) -> None:
        if isinstance(lookahead, bool) or not isinstance(lookahead, int) or lookahead < 0:
            raise ValueError(f"lookahead must be an integer >= 0, got {lookahead!r}")
        self._fetch = fetch
        self.lookahead = lookahead
        self._pool = WorkerPool(workers, name="roxxel-download")
        self._pending: OrderedDict[int, Future[None]] = OrderedDict()
        # ``cached(k)``: shard k needs no fetch; it is pending without a thread (a warm
        # cache starts no thread per shard of a window)
        self._cached = cached
        self._instant: set[int] = set()
        self._upcoming: Iterator[int] = iter(())
        self._lock = threading.RLock()  # (reentrant: _refill is called with it held)

    def _after_fork(self) -> None:
        """In a forked child the parent's fetches will never finish here: forget them."""
        if self._pool.forked:
            self._lock = threading.RLock()
            self._pending = OrderedDict()
            self._instant = set()
            self._upcoming = iter(())

    def prefetch(self, upcoming: Iterable[int]) -> None:
        """Fetch the shards of ``upcoming`` in order from now on, at most ``lookahead``
        ahead of the reader (it is drawn from lazily, as room frees up)."""
        self._after_fork()
        if self._pool.stopping or self.lookahead == 0:
            return
        with self._lock:
            self._upcoming = iter(upcoming)
            self._refill()

    def _refill(self) -> None:
        """Start upcoming fetches while fewer than ``lookahead`` are unclaimed."""
        with self._lock:
            while len(self._pending) < self.lookahead and not self._pool.stopping:
                k = next(self._upcoming, None)
                if k is None:
                    return
                if k not in self._pending:
                    try:
                        self._submit(k)
                    except RuntimeError:  # the pool closed meanwhile
                        return

    def _submit(self, k: int) -> None:
        if self._cached is not None and self._cached(k):
            done: Future[None] = Future()
            done.set_result(None)
            self._pending[k] = done
            self._instant.add(k)
            return
        self._pending[k] = self._pool.submit(lambda: self._fetch(k, self.check_cancelled))

    def fetch_now(self, shards: Iterable[int]) -> None:
        """Start fetching ``shards`` (needed right now) in parallel, ahead of any prefetch
        submitted later, whatever the lookahead."""
        self._after_fork()
        if self._pool.stopping:
            return
        with self._lock:
            for k in shards:
                if k not in self._pending:
                    self._submit(k)

    def retain(self, shards: set[int]) -> None:
        """Forget fetches of shards outside ``shards`` (a new read order): queued ones are
        cancelled, finished ones dropped (their shards stay in the cache)."""
        self._after_fork()
        with self._lock:
            for k in [k for k in self._pending if k not in shards]:
                future = self._pending[k]
                if future.cancel() or future.done():
                    del self._pending[k]
                    self._instant.discard(k)

    def claim(self, k: int) -> bool:
        """Wait for a background fetch of shard ``k``, if one was started, and forget it.

        Returns whether there was one. One still queued is cancelled instead (the caller,
        who needs the shard now, fetches it itself) and False returned. Re-raises the
        fetch's exception, if it failed.
        """
        self._after_fork()
        with self._lock:
            future = self._pending.pop(k, None)
            instant = k in self._instant
            self._instant.discard(k)
        if future is None:
            return False
        if instant:  # it was in the cache: the caller maps it (a cache hit)
            self._refill()
            return False
        started = not future.cancel()
        self._refill()
        if not started:
            return False
        future.result()
        return True

    def check_cancelled(self) -> None:
        """Raise :class:`~roxxel.workers.Cancelled` if the downloader is closing."""
        self._pool.check()

    @property
    def in_flight(self) -> int:
        with self._lock:
            return sum(not f.done() for f in self._pending.values())

    def close(self) -> None:
        """Cancel queued fetches, interrupt running ones and join the threads (idempotent)."""
        self._after_fork()
        # Fetches notice the pool stopping between chunks; a request that is stalled
        # inside the store is not waited out (its thread is a daemon).
        self._pool.close(wait=True, timeout=CLOSE_TIMEOUT)
        with self._lock:
            for future in self._pending.values():
                future.cancel()
            self._pending.clear()
            self._instant.clear()
