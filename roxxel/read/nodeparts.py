"""The parts in flight of every roxxel process of a node, so that one can use what the
others leave of the node's budget.

The processes that share a node (torchrun's local ranks, DataLoader workers) each start
with their share of the node's parts in flight (:func:`roxxel.workers.node_share`). A
share is right while they all download alike, but the work is rarely split alike: the
shards are in one cache, each downloaded by whichever process asks for it first, so one
process may be downloading a 256 MiB shard while the three others wait for it (4
DataLoader workers reading one such shard through the shaping proxy: 44-45% of the best
client, each process having 8 of the node's 32 parts in flight).

So each process also writes how many parts' worth of the budget it uses (its parts in
flight, or the bytes it holds in parts, if more) to a small file that every roxxel
process of the user on the node opens (``/dev/shm/roxxel-parts-v1-<uid>``, or
``$ROXXEL_NODE_COUNT``): :class:`NodeParts`. A process that has its share in flight may
start more while the node's total stays under the budget (:meth:`PartEngine._slots
<roxxel.read.parts.PartEngine>`); the others always have their own share. Before it
starts one past its share, a process writes its new count and reads the others' again
(:meth:`NodeParts.claim`): of two that look at once, one at least sees the other.

The file has a row for each process (its pid, for whoever reads the file, and its
count); a process holds a lock (``lockf``) on its row for as long as it lives, so a row
whose lock can be taken is a dead process's, and is cleared (at most once a second, by
the next process that counts). The file, its map and their descriptors are never
closed: closing any descriptor of a file lets go of every lock the process holds on it
(a DataLoader worker forked from a process that had one would lose its own row). A file
that is not the user's own regular file (logged as a warning), no ``/dev/shm``, no room
in it or no free row leave each process to its share. A row's count is taken as at
most the budget: the file is the user's own, but its bytes are treated as hostile all
the same (a process of the user that truncated it would crash the others that have it
mapped, as any of its processes could harm them anyway).
"""

from __future__ import annotations

import errno
import fcntl
import logging
import mmap
import os
import stat
import threading
import time
from collections.abc import Callable

import numpy as np

__all__ = ["ENV_NODE_COUNT", "ROWS", "NodeParts", "node_parts_file"]

log = logging.getLogger(__name__)

ROWS = 256  # processes of a user on a node that can take part (others keep their share)
_ROW_BYTES = 8  # (int32 pid, int32 parts' worth of the budget in use)
_REAP_SECONDS = 1.0  # how often dead processes' rows are looked for, at most
#: How long a sum of the other processes' counts is used again: each of a process's idle
#: connection threads asks on every part's end, and a part takes milliseconds at least.
_FRESH_SECONDS = 0.002


#: The environment variable naming the file where a node's processes count their parts
#: in flight (default: in ``/dev/shm``), or ``off``: each keeps its share alone.
ENV_NODE_COUNT = "ROXXEL_NODE_COUNT"

# Every descriptor and map of a count's file this process made, kept until it ends (see the
# module: closing one, even a forked child's copy, lets go of the process's row lock).
_KEPT: list[object] = []
# This process's row in each file it joined: a second join would take the same row again
# (the process's own lock does not keep it out), and the two would write over each other.
_JOINED: dict[tuple[int, str], NodeParts] = {}


def node_parts_file() -> str | None:
    """Where this user's processes on this node count their parts: ``$ROXXEL_NODE_COUNT``,
    else in ``/dev/shm`` (memory: never a shared filesystem, whose locks would join the
    nodes); None where there is none (``off``, no ``/dev/shm``)."""
    chosen = os.environ.get(ENV_NODE_COUNT, "").strip()
    if chosen:
        return None if chosen.lower() == "off" else chosen
    if not os.access("/dev/shm", os.W_OK | os.X_OK):
        return None
    return os.path.join("/dev/shm", f"roxxel-parts-v1-{os.getuid()}")


class NodeParts:
    """This process's row in the node's count of parts in flight (see the module).

    ``total`` is the node's budget of parts in flight. :meth:`publish` writes this
    process's count, :meth:`others` sums the other processes'. Made by :meth:`join`,
    once per process and file (a lock on the file is the process's, not the object's:
    the process has one row).
    """

    def __init__(self, path: str, fd: int, rows: mmap.mmap, row: int, total: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path, self.total, self.row = path, total, row
        self._fd, self._map = fd, rows  # (both kept open for the process's life: see join)
        self._rows = np.frombuffer(rows, dtype=np.int32).reshape(ROWS, 2)
        self._clock = clock
        self._reaped = clock()
        self._summed = (-1.0, 0)  # (when, the others' parts then)
        self._published = 0
        self._lock = threading.Lock()  # (one reaper at a time)

    @classmethod
    def join(cls, total: int, path: str | None = None) -> NodeParts | None:
        """This process's row in the file at ``path`` (default :func:`node_parts_file`),
        claimed now, or the one it claimed before; None where there is none to be had."""
        path = path or node_parts_file()
        if path is None:
            return None
        joined = _JOINED.get((os.getpid(), path))
        if joined is not None:
            return joined
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            planted = exc.errno in (errno.EACCES, errno.ELOOP, errno.EISDIR)  # (another's, a link, a directory)
            _alone(path, exc, logging.WARNING if planted else logging.DEBUG)
            return None
        _KEPT.append(fd)  # (never closed: see the module)
        try:
            info = os.fstat(fd)
            # (one link only: a name in the shared directory made a hard link to another of
            # the user's files would have us write into that file)
            if (not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077
                    or info.st_nlink != 1):
                _alone(path, "not a regular file of this user's alone", logging.WARNING)
                return None
            # (zeros: a row of no process) Its pages are allocated now, not on the first
            # store to the map: on a full /dev/shm (a container's 64 MiB, say, filled by
            # DataLoader workers' tensors), that store would kill the process (SIGBUS);
            # this fails instead (ENOSPC). (No posix_fallocate, as on macOS: a plain size.)
            allocate = getattr(os, "posix_fallocate", None)
            if allocate is not None:
                allocate(fd, 0, ROWS * _ROW_BYTES)
            elif info.st_size < ROWS * _ROW_BYTES:
                os.ftruncate(fd, ROWS * _ROW_BYTES)
            rows = mmap.mmap(fd, ROWS * _ROW_BYTES)  # (it holds a descriptor of its own)
        except OSError as exc:
            _alone(path, exc, logging.DEBUG)
            return None
        _KEPT.append(rows)
        for row in range(ROWS):
            if _try_lock(fd, row):
                node = _JOINED[os.getpid(), path] = cls(path, fd, rows, row, total)
                node._rows[row] = (os.getpid(), 0)
                return node
        _alone(path, "every row taken", logging.DEBUG)
        return None

    def publish(self, parts: int) -> None:
        """This process uses ``parts`` of the budget now (a store to shared memory)."""
        self._published = parts
        self._rows[self.row, 1] = parts

    def claim(self, parts: int) -> bool:
        """Publish ``parts`` (more than now) if the node's total stays within the budget,
        looking at the others' counts after writing it; else leave the count as it was."""
        before = self._published
        self.publish(parts)
        if parts + self._sum() <= self.total:
            return True
        self.publish(before)
        return False

    def others(self) -> int:
        """The other processes' counts (each taken as 0 to ``total``; dead processes'
        rows cleared first, at most once a second), summed at most every 2 ms."""
        now = self._clock()
        when, others = self._summed
        if 0 <= now - when < _FRESH_SECONDS:
            return others
        if now - self._reaped >= _REAP_SECONDS:
            self._reap()
        others = self._sum()
        self._summed = (now, others)
        return others

    def _sum(self) -> int:
        counts = np.clip(self._rows[:, 1], 0, self.total)
        return int(counts.sum()) - int(counts[self.row])

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


def _alone(path: str, why: object, level: int) -> None:
    log.log(level, "%s: no count of the node's parts in flight (%s): this process keeps its share "
            "of the node's budget", path, why)


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
