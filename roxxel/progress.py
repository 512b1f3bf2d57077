"""Progress, reported through one interface: an fsspec :class:`~fsspec.callbacks.Callback`.

Everything in roxxel that moves bytes takes ``progress``, an fsspec ``Callback`` (for a
bar, ``fsspec.callbacks.TqdmCallback``): the writer, ``Dataset.warm`` and the operations
of :mod:`roxxel.ops`. Each sets the total with ``set_size`` and counts bytes done with
``relative_update``, from its worker threads, one call at a time. The library never
prints and never imports tqdm: the command line's bars and log lines are callbacks of
its own (``roxxel/cli/progress.py``).
"""

from __future__ import annotations

import threading

from fsspec.callbacks import Callback

__all__ = ["Meter"]


class Meter:
    """Byte counting into an optional fsspec callback, from any thread, one call at a time.

    ``total`` (if given) is set at once; :meth:`set_total` changes it later (a writer's
    total grows as records are appended).
    """

    def __init__(self, progress: Callback | None, total: int | None = None) -> None:
        self._callback = Callback.as_callback(progress)
        self._lock = threading.Lock()
        self.done = 0
        if total is not None:
            self._callback.set_size(total)

    def add(self, nbytes: int) -> None:
        """Count ``nbytes`` more done."""
        if nbytes:
            with self._lock:
                self.done += nbytes
                self._callback.relative_update(nbytes)

    def set_total(self, total: int) -> None:
        """The total is now ``total`` bytes."""
        with self._lock:
            self._callback.set_size(total)
