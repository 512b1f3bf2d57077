"""Cutting off store calls that stall.

A request that stops making progress (a server that accepted the connection and then
went quiet, a stuck mount) would otherwise block its thread for as long as the client
libraries' own timeouts allow, which can be minutes. :func:`watched` runs a call on a
helper thread and gives up on it with :class:`StallError`, a ``TimeoutError`` that the
retry loop treats as transient, once it has been silent for ``timeout`` seconds. The
abandoned call keeps its thread (a daemon) until it returns on its own; ``on_abandon``
then cleans up after it. A thread that makes many calls (a download engine's connection
thread: a call a part) keeps one helper for them inside :func:`partnered`, instead of
starting one a call.

Silence is measured from the last sign of progress: the readers of a download body
call :meth:`Progress.beat` on :func:`current` progress for every piece they receive, so
a slow but steady body is never cut off, and a body that stops is cut off ``timeout``
seconds after its last byte. A call that reports nothing (a metadata request) is
silent from its start. A transfer whose bytes arrive all at once (one ranged read)
announces them with :meth:`Progress.unseen` and gets one more second per MiB.
"""

from __future__ import annotations

import http.client
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from typing import Any, TypeVar

__all__ = [
    "PIECE_SIZE", "UNSEEN_RATE", "Progress", "StallError", "current", "current_timeout",
    "fill", "partnered", "read_in_pieces", "watched",
]

T = TypeVar("T")

UNSEEN_RATE = 2**20  # bytes/s allowed to a transfer whose progress cannot be seen
PIECE_SIZE = 2**20  # bytes read between two progress reports, where a read blocks until full
_JOIN_SECONDS = 1.0  # how long a partnered thread waits for its idle helper to end

_local = threading.local()


class StallError(TimeoutError):
    """A store call made no progress within its inactivity timeout."""


class Progress:
    """When a watched call last showed progress. Written by the call's threads, read by
    the watchdog: single attribute stores, so no lock is needed."""

    def __init__(self) -> None:
        self._last = time.monotonic()
        self._grace = 0.0
        self._paused = 0

    def beat(self) -> None:
        """Bytes arrived just now."""
        self._grace = 0.0
        self._last = time.monotonic()

    @contextmanager
    def paused(self) -> Iterator[None]:
        """The call does local work (writes what it received to a file) for a while: that
        is no silence of the store's; the clock starts again from its end."""
        self._paused += 1
        try:
            yield
        finally:
            self._paused -= 1
            self.beat()

    def unseen(self, nbytes: int) -> None:
        """The next ``nbytes`` arrive all at once: allow them time at :data:`UNSEEN_RATE`."""
        self._grace = nbytes / UNSEEN_RATE

    def deadline(self, timeout: float) -> float:
        """The :func:`time.monotonic` time at which the call counts as stalled."""
        if self._paused:
            return time.monotonic() + timeout
        return self._last + self._grace + timeout


def current() -> Progress | None:
    """The progress of the watched call running on this thread (None if there is none)."""
    watch = getattr(_local, "watch", None)
    return None if watch is None else watch[0]


def current_timeout(default: float | None) -> float | None:
    """The inactivity timeout of the watched call running on this thread (None: it waits
    forever), or ``default`` outside a watched call."""
    watch = getattr(_local, "watch", None)
    return default if watch is None else watch[1]


def read_in_pieces(read: Callable[[int], bytes], size: int) -> list[bytes]:
    """Up to ``size`` bytes from ``read`` in pieces of at most :data:`PIECE_SIZE`, each
    reported to the watchdog (empty only at the end of the object)."""
    progress = current()
    parts = []
    while size > 0:
        data = read(min(size, PIECE_SIZE))
        if not data:
            break
        parts.append(data)
        size -= len(data)
        if progress is not None:
            progress.beat()
    return parts


def fill(readinto: Callable[[memoryview], int | None], view: memoryview) -> None:
    """Fill ``view`` from ``readinto`` (an HTTP body's) in pieces of at most
    :data:`PIECE_SIZE`, each reported to the watchdog; IncompleteRead if the body ends
    first."""
    progress = current()
    size, got = len(view), 0
    while got < size:
        n = readinto(view[got : got + PIECE_SIZE])
        if not n:
            raise http.client.IncompleteRead(b"", size - got)
        got += n
        if progress is not None:
            progress.beat()


@contextmanager
def _watching(progress: Progress | None, timeout: float | None) -> Iterator[None]:
    outer = getattr(_local, "watch", None)
    _local.watch = (progress, timeout)
    try:
        yield
    finally:
        _local.watch = outer


def watched(
    fn: Callable[[], T], timeout: float | None, on_abandon: Callable[[], Any] | None = None
) -> T:
    """``fn()``, or StallError once it has shown no progress for ``timeout`` seconds
    (None: wait as long as it takes)."""
    if timeout is None:
        with _watching(None, None):
            return fn()
    future: Future[T] = Future()
    progress = Progress()

    def run() -> None:
        try:
            with _watching(progress, timeout):
                future.set_result(fn())
        except BaseException as exc:  # handed to the waiting caller
            future.set_exception(exc)

    partner = getattr(_local, "partner", None)
    if partner is not None:
        partner.run(run)
    else:
        threading.Thread(target=run, name="roxxel-store-call", daemon=True).start()
    try:
        while True:
            try:
                return future.result(max(0.0, progress.deadline(timeout) - time.monotonic()))
            except FutureTimeout:
                if progress.deadline(timeout) > time.monotonic():
                    continue  # progress since the wait began
                if on_abandon is not None:
                    future.add_done_callback(lambda _: on_abandon())
                raise StallError(f"no data for {timeout:g} s (inactivity timeout)") from None
    finally:
        if partner is not None and not future.done():
            partner.abandon()  # (given up on, or interrupted: the helper is the call's until it returns)


class _Helper:
    """A thread that runs the calls it is given, one after another, until it is retired."""

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._serve, name="roxxel-store-call", daemon=True)
        self.thread.start()

    def give(self, job: Callable[[], None]) -> None:
        self._jobs.put(job)

    def retire(self) -> None:
        """End once the call under way (if any) has returned."""
        self._jobs.put(None)

    def _serve(self) -> None:
        # (A blocking wait: its owner always retires it, and as a daemon it never holds
        # up the interpreter's exit.)
        while (job := self._jobs.get()) is not None:
            job()  # (sets its future, whatever happens)


class _Partner:
    """The helper kept by one thread for its watched calls (see :func:`partnered`)."""

    def __init__(self) -> None:
        self._helper: _Helper | None = None
        self._pid = os.getpid()

    def run(self, job: Callable[[], None]) -> None:
        """Run ``job`` on the helper, after the call before it (which has returned, or
        was given up on: then :meth:`abandon` has let that helper go)."""
        helper = self._helper
        if helper is None or self._pid != os.getpid():  # (a forked child has none of its threads)
            helper, self._pid = _Helper(), os.getpid()
            self._helper = helper
        helper.give(job)

    def abandon(self) -> None:
        """The call under way was given up on: its helper ends once it returns, and the
        next call gets a new one."""
        helper, self._helper = self._helper, None
        if helper is not None:
            helper.retire()

    def close(self) -> None:
        """Retire the helper, and wait a little for it to end (it is idle: a call given up
        on took its helper with it)."""
        helper, self._helper = self._helper, None
        if helper is None or self._pid != os.getpid():
            return
        helper.retire()
        helper.thread.join(_JOIN_SECONDS)


@contextmanager
def partnered() -> Iterator[None]:
    """Inside the ``with``, the watched calls this thread makes run on one helper thread
    kept for it, not on a new thread each. A call given up on keeps its helper until it
    returns, as always, and the next call gets a new one. The idle helper ends with the
    ``with``; one still in a call given up on ends when that call returns."""
    # A thread's start waits for the new thread to take the GIL, and a download engine's
    # connection thread makes a call a part: 19 helpers were started for one connection
    # thread's 20 parts in the test of this, and about 110 an epoch of 12 x 32 MiB.
    outer = getattr(_local, "partner", None)
    partner = _local.partner = _Partner()
    try:
        yield
    finally:
        _local.partner = outer
        partner.close()
