"""The one pool of background threads: jobs run on it and hand back their results.

Every background thread of roxxel's own runs on a :class:`WorkerPool`, each user keeping its policy on top:
the reader's downloader (shards in order of next use, claimed by the reader, cancelled
when the order changes), the writer's uploads (staging bounded by blocking on the
uploads' futures) and the operations' parallel jobs (:meth:`WorkerPool.run`: results in
order, the first failure stops the rest).

Threads start lazily, on the process's one starting thread rather than the submitter's
(:func:`start_soon`: a thread's start waits for it to take the GIL, up to milliseconds
each while downloads run), are named, and end on :meth:`WorkerPool.close` and also when the
main thread has ended (they are daemons that wait on their queue with a timeout), so a
forgotten ``close()`` never hangs interpreter exit. A pool that is stopping makes
:meth:`WorkerPool.check` raise :class:`Cancelled` inside its running jobs, so they stop
between chunks instead of finishing whole shards. Results and errors travel back to the
caller through futures: ``Future.result()`` raises the job's own exception, with its
traceback and cause.
"""

from __future__ import annotations

import logging
import os
import queue
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import Any, TypeVar

__all__ = ["Cancelled", "PartThreads", "WorkerPool", "node_share", "start_soon", "usable_cpus"]


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def node_share() -> int:
    """How many processes of this node share it (its link, its CPUs): torchrun's local
    world size (``LOCAL_WORLD_SIZE``) times the DataLoader workers of this process's
    loader, if this is one of its workers. Read when it is needed, never at import."""
    local = os.environ.get("LOCAL_WORLD_SIZE", "")
    share = int(local) if local.isdigit() and int(local) > 0 else 1
    torch = sys.modules.get("torch")
    info = None
    if torch is not None and hasattr(torch, "utils"):
        info = torch.utils.data.get_worker_info()
    if info is not None:
        share *= max(1, info.num_workers)
    return share


log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

_POLL_SECONDS = 0.5  # how soon an idle thread notices that the main thread has ended


class _Starter:
    """The process's one thread that starts other threads (:func:`start_soon`): made when
    there are starts to make, and ending once there are none left (it stops as the
    threads it started do, and never holds up exit); a forked child makes its own."""

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # (in a child: a lock a parent's thread held at the fork would stay locked, and
        # the parent's starting thread did not come along)
        self._lock = threading.Lock()
        self._starts: deque[Callable[[], None]] = deque()
        self._running = False  # the starting thread is alive (or about to be)

    def soon(self, start: Callable[[], None]) -> None:
        with self._lock:
            self._starts.append(start)
            if self._running:
                return  # (it takes this one before it ends: _serve looks under the lock)
            self._running = True
        try:
            threading.Thread(target=self._serve, name="roxxel-starter", daemon=True).start()
        except BaseException:
            with self._lock:  # (no starting thread: the starts asked for meanwhile run here)
                others = [s for s in self._starts if s is not start]
                self._starts.clear()
                self._running = False
            for other in others:
                try:
                    other()
                except BaseException:  # noqa: BLE001 - each owner's jobs fail with their reason
                    log.exception("roxxel: starting a thread failed")
            raise

    def _serve(self) -> None:
        while True:
            with self._lock:
                if not self._starts:
                    self._running = False
                    return
                start = self._starts.popleft()
            try:
                start()
            except BaseException:  # noqa: BLE001 - the next owner's threads must still start
                log.exception("roxxel: starting a thread failed")


_STARTER = _Starter()


def start_soon(start: Callable[[], None]) -> None:
    """Call ``start`` (which starts threads) on the process's one starting thread, after
    those asked for before it, instead of on the caller's: a thread's start waits for the
    new thread to take the GIL, which takes up to milliseconds each while downloads run
    (a reader starting a dozen download threads before its first record waited 10-50 ms
    on loopback). ``start`` must not raise what its owner needs to see: it is logged.
    The starting thread is made when there is a start to make and ends once there is none
    left; RuntimeError if it cannot be made."""
    _STARTER.soon(start)


class Cancelled(Exception):
    """Raised inside a job by :meth:`WorkerPool.check` once its pool is stopping.

    The pool's users catch it (or let its future carry it to a caller that is itself
    closing): it never reaches the user as such.
    """


class WorkerPool:
    """Run callables on up to ``workers`` named daemon threads (``name-0``, ``name-1``, ...).

    Also a context manager that closes the pool on exit.
    """

    def __init__(self, workers: int, name: str) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self._size = workers
        self._name = name
        self._reset(stopped=False)

    def _reset(self, *, stopped: bool) -> None:
        self._pid = os.getpid()
        self._jobs: queue.Queue[tuple[Future[Any], Callable[[], Any]] | None] = queue.Queue()
        self._stop = threading.Event()
        if stopped:
            self._stop.set()
        self._threads: list[threading.Thread] = []  # (those started: close() joins them)
        self._grow = threading.Lock()
        self._wanted = 0  # threads the jobs submitted call for (one a job, up to the size)
        self._made = 0  # threads made, started or about to be
        self._starting = False  # the starting thread has been asked to start them (_more)
        self._started = threading.Condition(self._grow)  # told when it is done (close waits for it)

    def _after_fork(self) -> None:
        # The parent's threads did not come along, and its queue is not ours: start
        # afresh in the child, closed if the pool was closed in the parent.
        if self.forked:
            self._reset(stopped=self._stop.is_set())

    @property
    def forked(self) -> bool:
        """Whether this process is a fork of the one that made the pool (whose threads
        did not come along)."""
        return self._pid != os.getpid()

    @property
    def stopping(self) -> bool:
        """Whether :meth:`close` has begun: nothing more may be submitted."""
        return self._stop.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the pool is stopping (call it between chunks)."""
        if self._stop.is_set():
            raise Cancelled(f"{self._name}: stopping")

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue ``fn``; its future holds its result or the exception it raised."""
        self._after_fork()
        if self._stop.is_set():
            raise RuntimeError(f"{self._name}: the pool is closed")
        future: Future[T] = Future()
        self._jobs.put((future, fn))
        with self._grow:  # callers may submit from several threads
            self._wanted = min(self._size, self._wanted + 1)
            start = not self._starting and self._made < self._wanted
            self._starting = self._starting or start
        if start:
            try:
                start_soon(self._more)
            except RuntimeError:  # (no starting thread to be had: this one tries, failing the jobs if it cannot)
                self._more()
        return future

    def _more(self) -> None:
        """(On the starting thread.) Start threads until there are as many as the jobs
        submitted call for, or the pool stops."""
        try:
            while True:
                with self._grow:
                    if self._made >= self._wanted or self._stop.is_set() or self.forked:
                        self._starting = False
                        self._started.notify_all()
                        return
                    name = f"{self._name}-{self._made}"
                    self._made += 1
                thread = threading.Thread(target=self._serve, name=name, daemon=True)
                thread.start()
                with self._grow:
                    self._threads.append(thread)
        except BaseException as exc:
            with self._grow:  # (no thread to be had: the next submit asks again)
                self._made = len(self._threads)
                self._starting = False
                self._started.notify_all()
                stranded = not any(t.is_alive() for t in self._threads)
            if stranded:  # (no thread will take the jobs queued: they fail with the reason)
                self._fail_pending(exc)
            raise

    def _fail_pending(self, exc: BaseException) -> None:
        """Fail the queued jobs that have not started with ``exc`` (no thread to run them)."""
        for future in self._take_pending():
            if future.set_running_or_notify_cancel():
                error = RuntimeError(f"{self._name}: no thread to run the job: {exc}")
                error.__cause__ = exc
                future.set_exception(error)

    def _take_pending(self) -> Iterator[Future[Any]]:
        """The futures of the queued jobs that have not started, taken off the queue."""
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                yield job[0]

    def run(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        """``fn(item)`` for every item, started in order; the results in item order.

        The first failure (the first in item order among the jobs done when it happens)
        is raised as soon as it happens, without waiting for long jobs before it: the
        pool is closed first, which cancels the jobs not started and makes :meth:`check`
        raise in the running ones, and waits for them to end.
        """
        futures: list[Future[R]] = []
        try:
            for item in items:
                futures.append(self.submit(lambda item=item: fn(item)))
            wait(futures, return_when=FIRST_EXCEPTION)
            for future in futures:
                if future.done() and not future.cancelled() and future.exception() is not None:
                    future.result()  # raises the job's own exception
            return [future.result() for future in futures]
        except BaseException:
            self.close(wait=True)
            raise

    def _serve(self) -> None:
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
        for future in self._take_pending():
            future.cancel()

    def close(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop the threads after their current job (idempotent): running jobs see
        :meth:`check` raise, queued jobs are cancelled.

        With ``timeout``, waits at most that long in all: a thread still inside a job
        then (a stalled request) is left to finish on its own; it is a daemon.
        """
        if self.forked:
            self._reset(stopped=True)
            return
        self._stop.set()
        self.cancel_pending()
        deadline = None if timeout is None else time.monotonic() + timeout
        if wait:  # (threads being started are started, or not, before they are joined)
            with self._grow:
                self._started.wait_for(lambda: not self._starting, timeout)
        for _ in range(self._made):  # (one a thread, started or about to be)
            self._jobs.put(None)
        if not wait:
            return
        me = threading.current_thread()
        for t in self._threads:
            if t is not me:
                t.join(None if deadline is None else max(0.0, deadline - time.monotonic()))
        stuck = [t.name for t in self._threads if t.is_alive() and t is not me]
        if stuck:
            log.warning("%s: %d thread(s) still busy after %.1f s; leaving them to finish",
                        self._name, len(stuck), timeout)

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class PartThreads:
    """The part threads of one kind of upload in a process (S3 multipart, GCS composite):
    made on first use, one :class:`WorkerPool` per size of the budget, and stopped when
    the last upload running ends (:meth:`started` / :meth:`ended`, or :meth:`hold` to keep
    them, with the connections they keep alive, from one upload to the next). A forked
    child starts with none."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._reset()
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        # (in a child: a lock a parent's thread held at the fork would stay locked, and
        # the parent's threads did not come along)
        self._lock = threading.Lock()
        self._pools: dict[int, WorkerPool] = {}
        self._running = 0

    def pool(self, slots: int) -> WorkerPool:
        """The threads of a budget of ``slots`` parts in flight (lazy daemons)."""
        with self._lock:
            pool = self._pools.get(slots)
            if pool is None or pool.stopping or pool.forked:
                pool = self._pools[slots] = WorkerPool(slots, name=self._name)
            return pool

    def started(self) -> None:
        """An upload begins (its parts may use the threads until :meth:`ended`)."""
        with self._lock:
            self._running += 1

    def ended(self) -> None:
        """An upload is over; the last one running stops the threads (each kept-alive
        connection goes with its thread)."""
        with self._lock:
            self._running -= 1
            idle = list(self._pools.values()) if self._running == 0 else []
            if idle:
                self._pools.clear()
        for pool in idle:
            pool.close(wait=True, timeout=1.0)

    def hold(self) -> Callable[[], None]:
        """Keep the threads between uploads until the function returned is called (once;
        later calls, and calls in a forked child, do nothing)."""
        self.started()
        released = threading.Event()
        pid = os.getpid()

        def release() -> None:
            if not released.is_set() and pid == os.getpid():  # (a forked child's count starts at 0)
                released.set()
                self.ended()

        return release
