"""The parts in flight of every roxxel process of a node, so that one can use what the
others leave of the node's budget.

The processes that share a node (torchrun's local ranks, DataLoader workers) each start
with their share of the node's parts in flight (:func:`roxxel.workers.node_share`). A
share is right while they all download alike, but the work is rarely split alike: the
shards are in one cache, each downloaded by whichever process asks for it first, so one
process may be downloading a 256 MiB shard while the three others wait for it (4
DataLoader workers reading one such shard through the shaping proxy: 44-45% of the best
client, each process having 8 of the node's 32 parts in flight).

So each process also writes how many parts it has in flight to a small file that every
roxxel process of the user on the node opens (in ``/dev/shm``, else the temp directory):
:class:`NodeParts`. A process that has its share in flight may start more while the
node's total stays under its budget (:meth:`PartEngine._slots
<roxxel.read.parts.PartEngine>`); the others always have their own share. The counts are
read without a lock: two processes that look at once may both take the same free slots,
for as long as a part takes (they see each other's counts at their next part).

The file has a row for each process (its pid and its parts in flight); a process holds a
lock (``lockf``) on its row for as long as it lives, so a row whose lock can be taken is
a dead process's, and is cleared (at most once a second). A file that is not the user's
own regular file, or no free row, leaves the process to its share alone. A row's count
is taken at most as the budget: the file is the user's own, but its bytes are treated as
hostile all the same.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable

import numpy as np

__all__ = ["ROWS", "NodeParts", "node_parts_file"]

log = logging.getLogger(__name__)

ROWS = 256  # processes of a user on a node that can take part (others keep their share)
_ROW_BYTES = 8  # (int32 pid, int32 parts in flight)
_REAP_SECONDS = 1.0  # how often dead processes' rows are looked for, at most
#: How long a sum of the other processes' counts is used again: each of a process's idle
#: connection threads asks on every part's end, and a part takes milliseconds at least.
_FRESH_SECONDS = 0.002


def node_parts_file() -> str:
    """Where this user's processes on this node count their parts: in ``/dev/shm`` (memory)
    where it can be written, else the temp directory."""
    directory = "/dev/shm" if os.access("/dev/shm", os.W_OK | os.X_OK) else tempfile.gettempdir()
    return os.path.join(directory, f"roxxel-parts-{os.getuid()}")


class NodeParts:
    """This process's row in the node's count of parts in flight (see the module).

    ``total`` is the node's budget of parts in flight. :meth:`publish` writes this
    process's count, :meth:`others` sums the other processes'. Made by :meth:`join`,
    once per process and file (a lock on the file is the process's, not the object's).
    """

    def __init__(self, path: str, fd: int, rows: mmap.mmap, row: int, total: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.total, self.row = path, total, row
        self._fd, self._map = fd, rows  # (both kept open for the process's life: see join)
        self._rows = np.frombuffer(rows, dtype=np.int32).reshape(ROWS, 2)
        self._clock = clock
        self._reaped = clock()
        self._summed = (-1.0, 0)  # (when, the others' parts then)
        self._lock = threading.Lock()  # (one reaper at a time)

    @classmethod
    def join(cls, total: int, path: str | None = None) -> NodeParts | None:
        """This process's row in the file at ``path`` (default :func:`node_parts_file`),
        claimed now; None where there is none to be had (logged at debug level). The file
        and its lock stay open until the process ends: closing any descriptor of the
        file would let go of the process's lock on its row."""
        path = path or node_parts_file()
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            log.debug("%s: no count of the node's parts in flight (%s): this process keeps its share", path, exc)
            return None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
                raise OSError(errno.EPERM, "not a regular file of this user's alone")
            # (zeros: a row of no process) Its pages are allocated now, not on the first
            # store to the map: on a full /dev/shm (a container's 64 MiB, say, filled by
            # DataLoader workers' tensors), that store would kill the process (SIGBUS);
            # this fails instead (ENOSPC).
            os.posix_fallocate(fd, 0, ROWS * _ROW_BYTES)
            rows = mmap.mmap(fd, ROWS * _ROW_BYTES)
        except OSError as exc:
            os.close(fd)
            log.debug("%s: no count of the node's parts in flight (%s): this process keeps its share", path, exc)
            return None
        for row in range(ROWS):
            if _try_lock(fd, row):
                node = cls(path, fd, rows, row, total)
                node._rows[row] = (os.getpid(), 0)
                return node
        log.debug("%s: every row taken: this process keeps its share of the node's parts", path)
        rows.close()
        os.close(fd)
        return None

    def publish(self, parts: int) -> None:
        """This process has ``parts`` in flight now (a store to shared memory: no lock)."""
        self._rows[self.row, 1] = parts

    def others(self) -> int:
        """The other processes' parts in flight (each row's count taken as 0 to ``total``;
        dead processes' rows cleared first, at most once a second)."""
        now = self._clock()
        when, others = self._summed
        if 0 <= now - when < _FRESH_SECONDS:
            return others
        if now - self._reaped >= _REAP_SECONDS:
            self._reap()
        counts = np.clip(self._rows[:, 1], 0, self.total)
        others = int(counts.sum()) - int(counts[self.row])
        self._summed = (now, others)
        return others

    def _reap(self) -> None:
        """Clear the rows of processes that ended (their lock could be taken)."""
        if not self._lock.acquire(blocking=False):
            return
        try:
            self._reaped = self._clock()
            for row in np.flatnonzero(self._rows[:, 1]).tolist():
                if row != self.row and _try_lock(self._fd, row):
                    self._rows[row] = 0
                    _unlock(self._fd, row)
        finally:
            self._lock.release()


def _try_lock(fd: int, row: int) -> bool:
    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, _ROW_BYTES, row * _ROW_BYTES, os.SEEK_SET)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _unlock(fd: int, row: int) -> None:
    fcntl.lockf(fd, fcntl.LOCK_UN, _ROW_BYTES, row * _ROW_BYTES, os.SEEK_SET)
