"""Local disk: versions are content digests, and writes are atomic through the
filesystem itself.

Every write goes to a durable temporary file in the target's directory, then is
linked (create only: ``os.link`` refuses an existing target, so two writers cannot both
win) or renamed into place: readers see the old file, the new file, or nothing, never a
partial one. A compare-and-swap holds an exclusive ``flock`` on a lock file beside the
object (``.roxxel-lock-<name>``) across read, compare and rename, taken by every
roxxel writer of that object.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
from collections.abc import Callable, Iterator
from typing import Any, BinaryIO

from .base import (
    HIDDEN_PREFIX,
    ChunkReader,
    PreconditionFailed,
    Versioned,
    check_size,
    digest,
)
from .generic import FsspecBackend
from .readers import open_file_reader

logger = logging.getLogger(__name__)

__all__ = ["LOCK_PREFIX", "TEMP_PREFIX", "LocalBackend", "copy_replace", "file_lock", "write_new",
           "write_replace"]

TEMP_PREFIX = HIDDEN_PREFIX + "tmp-"
LOCK_PREFIX = HIDDEN_PREFIX + "lock-"
_COPY_CHUNK = 8 * 2**20


class LocalBackend(FsspecBackend):
    """fsspec's local filesystem."""

    paths_are_local = True
    downloads_in_parts = False

    def reported_md5(self, info: dict[str, Any]) -> str | None:
        return None  # no checksum in its metadata: uploads are read back

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        data = self.read_data(path, max_bytes)
        return Versioned(data, digest(data))

    def read_data(self, path: str, max_bytes: int | None) -> bytes:
        with open(path, "rb") as f:
            check_size(os.fstat(f.fileno()).st_size, max_bytes)
            data = f.read() if max_bytes is None else f.read(max_bytes + 1)
        check_size(len(data), max_bytes)
        return data

    def open_reader(self, path: str, offset: int) -> ChunkReader:
        return open_file_reader(self.fs, path, offset)

    def put_file(self, local_path: str, path: str) -> None:
        copy_replace(local_path, path)

    def put(self, path: str, data: bytes) -> None:
        with file_lock(path):
            write_replace(path, data)

    def put_if_absent(self, path: str, data: bytes) -> None:
        write_new(path, data)

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        with file_lock(path):
            try:
                with open(path, "rb") as f:
                    current = digest(f.read())
            except FileNotFoundError:
                current = None
            if current != version:
                raise PreconditionFailed(path)
            write_replace(path, data)

    def conditional_writes_enforced(self, root: str) -> bool:
        mount = mount_of(root)
        if mount is None:
            return True
        fstype, options = mount
        if node_local_locks(fstype, options):
            logger.info("%s is on %s (%s): its locks do not reach other nodes", root, fstype,
                        ",".join(sorted(options & _LOCAL_LOCK_OPTIONS)) or "no lock option")
            return False
        return True


# Mount options under which flock reaches no other node (NFS, Lustre).
_LOCAL_LOCK_OPTIONS = {"nolock", "local_lock=flock", "local_lock=all", "localflock"}


def node_local_locks(fstype: str, options: set[str]) -> bool:
    """Whether ``flock`` on a filesystem of type ``fstype`` mounted with ``options`` can
    exclude writers on other nodes: not on FUSE mounts (gcsfuse, s3fs-fuse, ...), nor on
    NFS or Lustre mounted with node-local locks. (NFS otherwise turns flock into POSIX
    locks its server grants; Lustre with ``flock``, likewise.)"""
    if fstype.startswith("fuse") or fstype in ("9p", "virtiofs"):
        return True
    if fstype in ("nfs", "nfs4", "lustre"):
        return bool(options & _LOCAL_LOCK_OPTIONS) or (fstype == "lustre" and "flock" not in options)
    return False


def mount_of(path: str, mounts: str | None = None) -> tuple[str, set[str]] | None:
    """The filesystem type and mount options of the mount that holds ``path``: the longest
    mount point of ``mounts`` (default: Linux's /proc/self/mounts) that contains its real
    path; None where that is not known."""
    if mounts is None:
        try:
            with open("/proc/self/mounts", encoding="utf-8", errors="replace") as f:
                mounts = f.read()
        except OSError:
            return None
    real, best = os.path.realpath(path), None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        point = fields[1].replace("\\040", " ")
        inside = real == point or real.startswith(point.rstrip("/") + "/")
        if inside and (best is None or len(point) > len(best[0])):
            best = (point, fields[2], set(fields[3].split(",")))
    return None if best is None else (best[1], best[2])


@contextlib.contextmanager
def file_lock(path: str) -> Iterator[None]:
    """An exclusive lock on ``<dir>/.roxxel-lock-<name>``, shared by every roxxel process
    that writes ``path``."""
    folder, name = os.path.split(path)
    os.makedirs(folder or ".", exist_ok=True)
    # flock needs no write access: read-only, so other users of a shared folder can lock it
    fd = os.open(os.path.join(folder, LOCK_PREFIX + name), os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)



def write_new(path: str, data: bytes) -> None:
    """Create ``path`` holding ``data``; raise FileExistsError if ``path`` exists.

    ``os.link`` refuses an existing target, so two concurrent writers cannot both win.
    """
    temp = _write_temp(path, lambda f: f.write(data))
    try:
        os.link(temp, path)
    finally:
        os.unlink(temp)


def write_replace(path: str, data: bytes) -> None:
    """Atomically make ``path`` hold ``data``, replacing any previous file."""
    _replace_with(path, lambda f: f.write(data))


def copy_replace(source: str, path: str) -> None:
    """Atomically make ``path`` a copy of the local file ``source``."""
    with open(source, "rb") as src:
        _replace_with(path, lambda f: shutil.copyfileobj(src, f, _COPY_CHUNK))


def _replace_with(path: str, fill: Callable[[BinaryIO], object]) -> None:
    temp = _write_temp(path, fill)
    try:
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def _write_temp(path: str, fill: Callable[[BinaryIO], object]) -> str:
    """Write a durable temporary file next to ``path`` and return its name."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f"{TEMP_PREFIX}{os.path.basename(path)}.{secrets.token_hex(8)}")
    # os.open with 0o666 honours the umask (mkstemp would force 0o600 on a shared dataset).
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(temp)
        raise
    return temp
