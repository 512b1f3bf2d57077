"""A small pool of background threads that run jobs and hand back their results.

Used by the writer to upload finished shards while the caller packs the next ones, and
by the reader to download shards ahead of use.
Threads start lazily, are named, end on :meth:`close` and also when the main thread has
ended (they are daemons that poll their queue with a timeout), so a forgotten ``close()``
never hangs interpreter exit. Results and errors travel back through futures, with the
original exception intact.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

__all__ = ["WorkerPool"]

log = logging.getLogger(__name__)

_POLL_SECONDS = 0.5


class WorkerPool:
    """Run callables on up to ``workers`` named daemon threads."""

    def __init__(self, workers: int, name: str) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self._size = workers
        self._name = name
        self._reset()

    def _reset(self) -> None:
        self._pid = os.getpid()
        self._jobs: queue.Queue[tuple[Future[Any], Callable[[], Any]] | None] = queue.Queue()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._grow = threading.Lock()

    @property
    def forked(self) -> bool:
        """Whether this process is a fork of the one that made the pool (whose threads
        did not come along)."""
        return self._pid != os.getpid()

    def submit(self, fn: Callable[[], Any]) -> Future[Any]:
        """Queue ``fn``; its future holds its result or the exception it raised."""
        if self.forked:
            self._reset()  # start afresh in the child; the parent's queue is not ours
        if self._stop.is_set():
            raise RuntimeError(f"{self._name}: the pool is closed")
        with self._grow:  # callers may submit from several threads
            if len(self._threads) < self._size:
                name = f"{self._name}-{len(self._threads)}"
                t = threading.Thread(target=self._run, name=name, daemon=True)
                self._threads.append(t)
                t.start()
        future: Future[Any] = Future()
        self._jobs.put((future, fn))
        return future

    def _run(self) -> None:
        main = threading.main_thread()
        while not self._stop.is_set() and main.is_alive():
            try:
                job = self._jobs.get(timeout=_POLL_SECONDS)
            except queue.Empty:
                continue
            if job is None:  # close() wakes every thread with one of these
                return
            future, fn = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(fn())
            except BaseException as exc:  # handed to the caller through the future
                future.set_exception(exc)

    def cancel_pending(self) -> None:
        """Cancel the queued jobs that have not started."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job[0].cancel()

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the threads after their current job (idempotent); queued jobs are cancelled.

        With ``timeout``, waits at most that long in all: a thread still inside a job
        then (a stalled request) is left to finish on its own; it is a daemon.
        """
        if self.forked:
            self._reset()
            self._stop.set()
            return
        self.cancel_pending()
        self._stop.set()
        for _ in self._threads:
            self._jobs.put(None)
        if wait:
            deadline = None if timeout is None else time.monotonic() + timeout
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
            stuck = [t.name for t in self._threads if t.is_alive() and t is not threading.current_thread()]
            if stuck:
                log.warning("%s: %d thread(s) still busy after %.1f s; leaving them to finish",
                            self._name, len(stuck), timeout)
