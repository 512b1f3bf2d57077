"""Cutting off store calls that stall.

A request that stops making progress (a server that accepted the connection and then
went quiet, a stuck mount) would otherwise block its thread for as long as the client
libraries' own timeouts allow, which can be minutes. :func:`watched` runs a call on a
helper thread and gives up on it after ``timeout`` seconds with :class:`StallError`, a
``TimeoutError`` that the retry loop treats as transient. The abandoned call keeps its
thread (a daemon) until it returns on its own; ``on_abandon`` then cleans up after it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, TypeVar

__all__ = ["StallError", "watched"]

T = TypeVar("T")


class StallError(TimeoutError):
    """A store call made no progress within its inactivity timeout."""


def watched(
    fn: Callable[[], T], timeout: float | None, on_abandon: Callable[[], Any] | None = None
) -> T:
    """``fn()``, or StallError if it has not returned after ``timeout`` seconds (None: wait)."""
    if timeout is None:
        return fn()
    future: Future[T] = Future()

    def run() -> None:
        try:
            future.set_result(fn())
        except BaseException as exc:  # handed to the waiting caller
            future.set_exception(exc)

    threading.Thread(target=run, name="roxxel-store-call", daemon=True).start()
    try:
        return future.result(timeout)
    except FutureTimeout:
        if on_abandon is not None:
            future.add_done_callback(lambda _: on_abandon())
        raise StallError(f"no response within {timeout:g} s (inactivity timeout)") from None
