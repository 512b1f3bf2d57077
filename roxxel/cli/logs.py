"""Log lines on stderr, ``roxxel: ...``, printed above a progress bar when one shows."""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["Handler", "configure_logging", "fall_silent"]


class Handler(logging.StreamHandler):
    """Log lines on stderr; printed above a progress bar when one is showing."""

    #: The tqdm bar showing now, set by the progress bar itself.
    bar: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        bar = Handler.bar
        if bar is None:
            super().emit(record)
            return
        try:
            bar.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never fail the command
            self.handleError(record)


class _Formatter(logging.Formatter):
    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        where = f"[{record.name}] " if self.verbose else ""
        text = f"roxxel: {level}{where}{message}"
        if record.exc_info and self.verbose:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(verbose: int, quiet: int) -> None:
    """Route all logging to stderr: roxxel's at INFO (DEBUG with -v, less with -q), other
    libraries' at WARNING (DEBUG with -vv)."""
    handler = Handler(sys.stderr)
    handler.setFormatter(_Formatter(verbose))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    level = logging.DEBUG if verbose else (logging.INFO, logging.WARNING, logging.ERROR)[min(quiet, 2)]
    logging.getLogger("roxxel").setLevel(level)


def fall_silent() -> None:
    """Log nothing more on stderr (the command's one-line error is its last word: a thread
    still at work, a writer's probe for conditional writes say, would log below it)."""
    for handler in logging.getLogger().handlers:
        if isinstance(handler, Handler):
            handler.setLevel(logging.CRITICAL + 1)
