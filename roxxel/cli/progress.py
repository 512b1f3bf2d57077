"""Progress of a command: a tqdm bar on a terminal, else a log line every few seconds.

The library reports progress through an fsspec callback; these are the CLI's callbacks.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, TypeVar

from fsspec.callbacks import Callback, NoOpCallback

from .formatting import duration, human
from .logs import Handler

__all__ = ["PROGRESS_INTERVAL_ENV", "progress_callback", "run_with_progress"]

# The command's own lines all come from one logger, named after the command.
log = logging.getLogger("roxxel.cli")

PROGRESS_INTERVAL_ENV = "ROXXEL_PROGRESS_INTERVAL"
_DEFAULT_PROGRESS_INTERVAL = 10.0

T = TypeVar("T")


class _LogProgress(Callback):
    """Progress as a log line every ``interval`` seconds (for logs, CI, pipes)."""

    def __init__(self, desc: str, interval: float) -> None:
        super().__init__()
        self.desc, self.interval = desc, interval
        self.started = self.last = time.monotonic()

    def call(self, hook_name: str | None = None, **kwargs: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.info("%s", self._line(now))

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.value / elapsed
        text = f"{self.desc}: {human(self.value)}"
        if self.size:
            text += f" of {human(self.size)} ({100 * self.value // max(self.size, 1)}%)"
        text += f", {human(rate)}/s"
        if self.size and rate > 0 and self.value < self.size:
            text += f", ETA {duration((self.size - self.value) / rate)}"
        return text

    def finish(self) -> None:
        if self.value:
            log.info("%s in %s", self._line(time.monotonic()), duration(time.monotonic() - self.started))


class _BarProgress(Callback):
    """A tqdm bar with bytes/s and ETA, on a terminal."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        from tqdm import tqdm

        self.bar = tqdm(
            desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
            dynamic_ncols=True, leave=True,
        )
        Handler.bar = self.bar

    def call(self, hook_name: str | None = None, **kwargs: Any) -> None:
        if self.size is not None and self.bar.total != self.size:
            self.bar.total = self.size
            self.bar.refresh()
        if self.value != self.bar.n:
            self.bar.update(self.value - self.bar.n)

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        if Handler.bar is self.bar:
            Handler.bar = None
        self.bar.close()


class _NoProgress(NoOpCallback):
    def finish(self) -> None:
        pass


def progress_callback(desc: str, quiet: int) -> Any:
    """The progress callback for this run: a bar on a terminal, else periodic log lines;
    none with ``-q``. Call ``finish()`` on success, ``close()`` on failure."""
    if quiet:
        return _NoProgress()
    if sys.stderr.isatty():
        try:
            return _BarProgress(desc)
        except ImportError:  # tqdm is the optional "progress" extra
            pass
    try:
        interval = float(os.environ.get(PROGRESS_INTERVAL_ENV, _DEFAULT_PROGRESS_INTERVAL))
    except ValueError:
        interval = _DEFAULT_PROGRESS_INTERVAL
    return _LogProgress(desc, interval)


def run_with_progress(desc: str, quiet: int, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, progress=callback, **kwargs)`` with this run's progress callback."""
    progress = progress_callback(desc, quiet)
    try:
        result = fn(*args, progress=progress, **kwargs)
    except BaseException:
        progress.close()
        raise
    progress.finish()
    return result
