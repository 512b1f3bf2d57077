"""Which file was verified: a cached shard's identity, recorded when its bytes were hashed.

A published shard is never modified by roxxel (its last use is noted on its record, not on
the shard), so its identity, ``(inode, size, mtime_ns, ctime_ns)``, stays what it was when
it was verified until something else writes to it, replaces it or changes its metadata.
Any write changes ``ctime``, even one that restores ``mtime`` afterwards. The record is a
small JSON file written atomically (temp file, then rename); a missing or malformed one
means "not verified". The device is left out on purpose: the record lives on the same
file system as the shard, and some (overlay, NFS) renumber devices across reboots.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

from ..errors import CacheError
from ..manifest.checksums import ShardKey
from .files import TempFile, open_regular

__all__ = ["FileIdentity", "hash_fd", "read_identity", "write_identity"]

_VERSION = 1
_MAX_RECORD = 4096
_HASH_CHUNK = 4 << 20  # large reads: hashing runs without the GIL, one syscall per chunk


@dataclass(frozen=True)
class FileIdentity:
    """What identifies one version of a file: inode, size and both times in nanoseconds."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int

    @classmethod
    def of(cls, fd: int) -> FileIdentity:
        """The identity of the file open on ``fd``, now."""
        st = os.fstat(fd)
        return cls(st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def to_json(self) -> bytes:
        return json.dumps({"version": _VERSION, **asdict(self)}).encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> FileIdentity | None:
        """The identity in a record, or None if it is not a record of this version."""
        try:
            doc = json.loads(data)
        except ValueError:
            return None
        fields = ("ino", "size", "mtime_ns", "ctime_ns")
        if not isinstance(doc, dict) or doc.get("version") != _VERSION or set(doc) != {"version", *fields}:
            return None
        values = [doc[f] for f in fields]
        if any(isinstance(v, bool) or not isinstance(v, int) for v in values):
            return None
        return cls(*values)


def read_identity(path: str, *, touch_if: FileIdentity | None = None) -> FileIdentity | None:
    """The identity recorded at ``path`` (None if there is no valid record). If it is
    ``touch_if``, the record's mtime is set to now: the shard's last use, for eviction."""
    try:
        fd = open_regular(path)
    except CacheError:  # a directory planted there: no record
        return None
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        identity = FileIdentity.from_json(f.read(_MAX_RECORD))
        if identity is not None and identity == touch_if:
            os.utime(f.fileno())
    return identity


def write_identity(path: str, identity: FileIdentity, tmp_dir: str) -> None:
    """Record ``identity`` at ``path`` atomically (readers see the old record or the new).

    Not fsynced: after a crash the record may be lost or empty, and then the shard is
    hashed again; it can never name a file that was not verified.
    """
    temp = TempFile(tmp_dir)
    try:
        temp.file.write(identity.to_json())
        temp.file.flush()
        temp.rename(path)
    finally:
        temp.discard()


def hash_fd(fd: int, key: ShardKey) -> str:
    """``"<algorithm>:<hex>"`` of the whole file open on ``fd`` (read with ``pread``: the
    descriptor's offset is left alone), in ``key``'s algorithm."""
    hasher = key.new_hash()
    buffer = bytearray(_HASH_CHUNK)
    view = memoryview(buffer)
    offset = 0
    while n := os.preadv(fd, [buffer], offset):
        hasher.update(view[:n])
        offset += n
    return f"{key.algorithm}:{hasher.hexdigest()}"
