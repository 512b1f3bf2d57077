"""File-system primitives of the cache: private directories, safe opens, locks, temp files.

Every open of a path inside the cache uses ``O_NOFOLLOW | O_NONBLOCK`` and checks the
result with ``fstat``: a symlink is never followed and a FIFO never blocks. All locks are
``flock`` locks, so they belong to an open file description and vanish with the process
that held them, however it died.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import re
import stat
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from ..errors import CacheError

__all__ = [
    "TempFile",
    "clean_temp",
    "ensure_private_dir",
    "exclusive_lock",
    "fsync_dir",
    "open_regular",
    "same_file",
    "try_remove_unused",
]

log = logging.getLogger(__name__)

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_TEMP_SUFFIX = ".part"
_TEMP_RE = re.compile(r"([0-9]+)\.[A-Za-z0-9_]+\.part")  # "<pid>.<mkstemp letters>.part"
# open() errors meaning "something other than a readable file of ours is at this name":
# ELOOP a symlink (O_NOFOLLOW), ENXIO a socket, ENODEV a device, EACCES/EPERM unreadable.
_NOT_A_FILE = frozenset(
    {errno.ELOOP, errno.ENXIO, errno.ENODEV, errno.EACCES, errno.EPERM, errno.EOPNOTSUPP}
)


def ensure_private_dir(path: str) -> None:
    """Create ``path`` with mode 0700 if missing; then insist it is a real directory we own.

    Raises :class:`CacheError` naming the path if it is a symlink, not a directory, or
    owned by another user. Missing parents are created with the default mode.
    """
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise CacheError(f"cache directory {path} is a symlink; refusing to follow it")
    if not stat.S_ISDIR(st.st_mode):
        raise CacheError(f"cache directory {path} exists and is not a directory")
    if st.st_uid != os.getuid():
        raise CacheError(
            f"cache directory {path} is owned by uid {st.st_uid}, expected uid {os.getuid()}"
        )
    if st.st_mode & 0o022:
        log.warning("cache directory %s is writable by group or others (mode %o)",
                    path, stat.S_IMODE(st.st_mode))


def open_regular(path: str) -> int | None:
    """A read-only fd on the regular file we own at ``path``, or None if there is none.

    Symlinks, FIFOs, sockets, devices and other users' files count as absent (logged);
    a directory raises :class:`CacheError` naming the path, since nothing can replace it.
    """
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno not in _NOT_A_FILE:
            raise
        log.warning("ignoring %s in the cache: %s", path, exc.strerror)
        return None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise CacheError(f"{path} is a directory where a shard file belongs; remove it")
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid():
            log.warning("ignoring %s in the cache: not a regular file owned by uid %s",
                        path, os.getuid())
            os.close(fd)
            return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def same_file(fd: int, path: str) -> bool:
    """True if ``path`` (not followed) still names the file open on ``fd``."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _open_lock_file(path: str) -> int:
    """Open (creating) the lock file at ``path``, removing a non-file planted there."""
    try:
        fd = os.open(path, _LOCK_FLAGS, 0o600)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENXIO):
            raise
        fd = -1
    if fd >= 0 and stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    if fd >= 0:
        os.close(fd)
    log.warning("removing %s: a lock file must be a regular file", path)
    try:
        os.unlink(path)
    except IsADirectoryError as exc:
        raise CacheError(f"{path} is a directory where a lock file belongs") from exc
    except FileNotFoundError:
        pass
    return -1


@contextmanager
def exclusive_lock(path: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path``, blocking until it is free.

    The holder unlinks the file before releasing it, so lock files do not accumulate; a
    waiter that wakes on an unlinked file sees that the path names another file (or
    none) and locks again. A holder killed by any signal releases the lock.
    """
    while True:  # each retry means another holder finished: this cannot livelock
        fd = _open_lock_file(path)
        if fd < 0:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if same_file(fd, path):
                break
        except BaseException:
            _unlock_and_close(fd)
            raise
        # The file was unlinked by the holder we waited for; other waiters may still be
        # queued on it. Unlock explicitly, as below: a plain close leaves the lock held
        # while a child forked meanwhile keeps a copy of this descriptor, and those
        # waiters would wait forever.
        _unlock_and_close(fd)
    try:
        yield
    finally:
        with suppress(FileNotFoundError):
            os.unlink(path)
        # Unlock explicitly: a child forked meanwhile holds a copy of this descriptor, and
        # a plain close would leave the lock held until the child closes its copy too.
        _unlock_and_close(fd)


def _unlock_and_close(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def try_remove_unused(path: str, *companions: str) -> str:
    """Unlink the file at ``path`` unless a process holds a lock on it.

    Returns ``"removed"``, ``"in use"`` or ``"absent"``. ``companions`` (sidecar files)
    are unlinked first, while the exclusive lock is held. Only unlinks, never truncates:
    processes that mapped the file keep reading it.
    """
    fd = open_regular(path)
    if fd is None:
        return "absent"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "in use"
        if not same_file(fd, path):
            return "absent"
        for companion in companions:
            with suppress(FileNotFoundError, IsADirectoryError):  # (a planted directory stays)
                os.unlink(companion)
        os.unlink(path)
        return "removed"
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    """Make the entries of directory ``path`` durable (renames into it survive a crash)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class TempFile:
    """A new file in ``tmp_dir``, created exclusively, named ``<pid>.<random>.part``.

    It is share-locked for as long as this object lives, so :func:`clean_temp` in
    another process (even one in another PID namespace) leaves it alone.
    """

    def __init__(self, tmp_dir: str) -> None:
        fd, self.path = tempfile.mkstemp(
            prefix=f"{os.getpid()}.", suffix=_TEMP_SUFFIX, dir=tmp_dir
        )
        self._renamed = False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            self.file = os.fdopen(fd, "w+b")
        except BaseException:
            os.close(fd)
            os.unlink(self.path)
            raise

    def sync(self) -> None:
        """Flush and fsync the file's contents."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def open_shared(self) -> int:
        """A new read-only fd on this file, share-locked (the lock follows a rename)."""
        fd = os.open(self.path, _READ_FLAGS)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def rename(self, dst: str) -> None:
        """Atomically move the file to ``dst``, replacing any non-directory there.

        A symlink at ``dst`` is replaced itself, never followed; a directory raises
        :class:`CacheError` naming ``dst``. Locks on the file stay with it.
        """
        try:
            os.replace(self.path, dst)
        except IsADirectoryError as exc:
            raise CacheError(f"cannot publish {dst}: a directory is in the way") from exc
        self._renamed = True

    def discard(self) -> None:
        """Close the file and unlink it unless it was renamed (idempotent)."""
        self.file.close()
        if not self._renamed:
            with suppress(FileNotFoundError):
                os.unlink(self.path)


def pid_alive(pid: int) -> bool:
    """True if a process with this pid exists (in our PID namespace)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_temp(tmp_dir: str) -> int:
    """Remove temp files left by dead processes; returns how many were removed.

    A temp file is removed only if the pid in its name is dead and no process holds a
    lock on it. Files with other names are left alone.
    """
    removed = 0
    with os.scandir(tmp_dir) as entries:
        for entry in entries:
            match = _TEMP_RE.fullmatch(entry.name)
            if match is None or pid_alive(int(match[1])):
                continue
            if entry.is_symlink():
                with suppress(FileNotFoundError):
                    os.unlink(entry.path)
                removed += 1
            elif try_remove_unused(entry.path) == "removed":
                log.debug("removed stale temp file %s", entry.path)
                removed += 1
    return removed
