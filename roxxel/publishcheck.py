"""Whether a writer's store can publish safely, found out while the writer works.

Before it publishes, a writer must know that its store enforces conditional writes
(:func:`roxxel.manifest.io.require_conditional_writes`): on S3 and GCS a probe of five
round trips, with the cloud client made first (:func:`roxxel.backends.base.probed_enforcement`).
A :class:`PublishCheck` runs such a check on a thread of its own, so that shards are packed
and uploaded meanwhile; where the answer costs no request (local disk, memory) it is found
at once. The writer asks :meth:`PublishCheck.raise_if_refused` at each finished shard (no
wait) and :meth:`PublishCheck.require` before it publishes (it waits).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import Future

from .workers import WorkerPool

__all__ = ["PublishCheck"]


class PublishCheck:
    """``check()`` (which raises if the store cannot publish safely), run in the
    background if ``background``, else at once (its error raised here)."""

    def __init__(self, check: Callable[[], None], *, background: bool) -> None:
        self._check = check
        self._pid = os.getpid()
        self._pool: WorkerPool | None = None
        self._future: Future[None] | None = None
        if not background:
            check()
            return
        self._pool = WorkerPool(1, name="roxxel-writer-probe")
        self._future = self._pool.submit(check)

    def raise_if_refused(self) -> bool:
        """Raise the check's error if it has answered with one; never waits. True if it
        has answered (either way)."""
        future = self._future
        if future is None or self._pid != os.getpid():
            return future is None
        if future.done():
            future.result()
            return True
        return False

    def require(self) -> None:
        """Wait for the answer and raise its error. In a forked child, whose copy of the
        check's thread did not come along, the check runs here."""
        if self._future is None:
            return
        if self._pid != os.getpid():
            self._check()
            return
        self._future.result()

    def close(self, wait: bool = False) -> None:
        """Stop the check's thread once its check is done (a check under way is left to
        end on its own: an interrupt does not wait for it)."""
        if self._pool is not None:
            self._pool.close(wait=wait)
