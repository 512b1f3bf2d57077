"""The node-local shard cache shared by every process on a node.

Layout of the cache directory (each part mode 0700, owned by the user)::

    shards/<algo>-<hex>.rox   published raw (decompressed) ROXXEL01 files, named by the
                              verified checksum of their stored bytes
    digests/<algo>-<hex>      for compressed shards: the checksum of the raw file, so
                              verify() can re-hash it
    verified/<algo>-<hex>.json the identity (inode, size, mtime_ns, ctime_ns) the shard
                              file had when it was verified; its mtime is the shard's
                              last use (the shard itself is never touched)
    locks/<algo>-<hex>.lock   per-shard download locks (removed by their holder)
    locks/publish.lock        serializes "make room, then publish"
    tmp/<pid>.<random>.part   downloads in progress; never served, cleaned when the pid
                              is dead and nobody holds a lock on them

Locking protocol (all ``flock``, released by the kernel when a process dies):

* a reader opens ``shards/<name>`` and takes ``LOCK_SH`` on its own fd for as long as it
  uses the shard, then checks the path still names that file (an evictor may have
  unlinked it between the open and the lock), and that the file is the one that was
  verified (its identity matches ``verified/<name>.json``);
* a file that is not (changed since, written by an older release, or under
  ``verify="always"`` not yet hashed by this process) is hashed again under
  ``locks/<name>.lock`` (``LOCK_EX``, blocking): if it still matches, its identity is
  recorded anew; if not, it is unlinked (processes mapping it keep their maps) and
  fetched again;
* a downloader takes ``LOCK_EX`` on ``locks/<name>.lock`` (blocking), looks again,
  downloads into ``tmp/``, takes ``LOCK_SH`` on the finished temp file, renames it
  into place under ``locks/publish.lock`` after evicting what the limit requires, then
  records the published file's identity;
* an evictor removes a shard only if ``LOCK_EX | LOCK_NB`` on it succeeds, and only
  unlinks: mapped files stay readable.
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import suppress

from ..errors import CacheError
from ..format.check import ShardSpec
from ..manifest.checksums import ShardKey, parse_checksum
from .download import Fetch, fetch_verified
from .evict import CacheEntry, OrderHint, eviction_order, scan_shards
from .files import (
    TempFile,
    clean_temp,
    ensure_private_dir,
    exclusive_lock,
    fsync_dir,
    open_regular,
    same_file,
    try_remove_unused,
)
from .identity import FileIdentity, hash_fd, read_identity, write_identity
from .names import parse_size
from .shard import CachedShard
from .sizing import fit_lookahead, min_limit

__all__ = ["ShardCache"]

log = logging.getLogger(__name__)

ENV_DIR = "ROXXEL_CACHE_DIR"
#: ``verify=`` values: re-hash a cached file when its identity "changed" since it was
#: verified, or "always" on its first use in this process as well.
VERIFY_MODES = ("changed", "always")
_SUBDIRS = ("shards", "digests", "verified", "locks", "tmp")

# (path, identity) of the cached files this process hashed or downloaded itself: under
# verify="always", those need no second hash. A forked child inherits the parent's.
_HASHED_HERE: set[tuple[str, FileIdentity]] = set()
# (pid, directory) of the caches whose tmp/ this process has cleaned (a forked child
# has another pid, so it cleans again)
_CLEANED: set[tuple[int, str]] = set()


def default_directory() -> str:
    """``$ROXXEL_CACHE_DIR`` if set and not empty, else ``~/.cache/roxxel`` (read now)."""
    return os.environ.get(ENV_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "roxxel")


class ShardCache:
    """A directory of verified shards shared by every process of one user on a node.

    ``directory`` defaults to :func:`default_directory`. ``limit`` bounds the bytes of
    published shards: None (no bound), an int, or a string such as ``"50GB"`` (1000**n),
    ``"1.5GiB"`` or ``"10G"`` (1024**n); see :func:`~roxxel.cache.names.parse_size`. The limit
    is exceeded only by downloads in flight (in ``tmp/``) and, with a warning, when every
    cached shard is in use: the cache never deadlocks waiting for room.
    ``attempts`` is how many times a download whose size or checksum is wrong is made.
    ``verify`` says when a cached file is hashed again before it is handed out:
    ``"changed"`` (when its identity differs from the one recorded at verification, or
    none was recorded) or ``"always"`` (also on its first use in this process).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        limit: int | str | None = None,
        *,
        attempts: int = 3,
        verify: str = "changed",
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts is {attempts!r}, expected an int >= 1")
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify is {verify!r}, expected one of {', '.join(map(repr, VERIFY_MODES))}")
        self.verify_mode = verify
        path = default_directory() if directory is None else os.fspath(directory)
        self.directory = os.path.abspath(os.path.expanduser(path))
        self.limit = parse_size(limit)
        self.attempts = attempts
        ensure_private_dir(self.directory)
        for sub in _SUBDIRS:
            ensure_private_dir(self._sub(sub))
        # Temp files of dead processes are cleaned by a process's first cache of a
        # directory; later ones (every roxxel.open) would only find the same files.
        first = (os.getpid(), self.directory)
        if first not in _CLEANED:
            self.clean_temp()
            _CLEANED.add(first)

    def __repr__(self) -> str:
        return f"ShardCache({self.directory!r}, limit={self.limit!r})"

    # -- paths -------------------------------------------------------------------------

    def _sub(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def _shard_path(self, key: ShardKey) -> str:
        return self._sub("shards", key.stem + ".rox")

    def _digest_path(self, key: ShardKey) -> str:
        return self._sub("digests", key.stem)

    def _record_path(self, key: ShardKey) -> str:
        return self._sub("verified", key.stem + ".json")

    def _lock_path(self, key: ShardKey) -> str:
        return self._sub("locks", key.stem + ".lock")

    def path_for(self, checksum: str) -> str:
        """Where the shard with this checksum is (or would be) published."""
        return self._shard_path(parse_checksum(checksum))

    # -- getting shards ----------------------------------------------------------------

    def get(
        self,
        checksum: str,
        fetch: Fetch,
        *,
        stored_size: int,
        raw_size: int,
        compression: str | None = None,
        record_count: int,
        label: str,
        order_hint: OrderHint | None = None,
    ) -> CachedShard:
        """The shard whose stored bytes have ``checksum``, downloaded once per node.

        If it is cached, and is the file that was verified (see ``verify``), it is
        returned without calling ``fetch``; a cached file that changed since and no
        longer hashes to what was verified is removed, with a warning. Otherwise one
        process calls ``fetch(sink)``, which must pass the stored bytes to ``sink`` in chunks;
        the others wait for it. The bytes are verified (size, checksum, bounded zstd
        decompression, footer and ``record_count``) before anyone can see them; a wrong
        size or checksum is fetched again up to ``attempts`` times, then raises
        :class:`~roxxel.errors.IntegrityError` naming ``label``. Errors raised by
        ``fetch`` propagate unchanged. ``order_hint`` guides eviction (see
        :meth:`evict`). The caller must :meth:`CachedShard.close` the result.
        """
        key = parse_checksum(checksum)
        spec = ShardSpec(stored_size, raw_size, compression, record_count, label)
        shard = self._open_cached(key, spec, may_hash=False)
        if shard is not None:
            return shard
        with exclusive_lock(self._lock_path(key)):
            shard = self._open_cached(key, spec, may_hash=True)
            if shard is None:
                shard = self._download(key, fetch, spec, order_hint)
        return shard

    def _open_cached(self, key: ShardKey, spec: ShardSpec, *, may_hash: bool) -> CachedShard | None:
        """The published file, share-locked, if it is the file that was verified.

        One that is not is hashed again if ``may_hash`` (the caller holds the shard's
        lock), and removed if it no longer matches. None if absent or unusable.
        """
        path = self._shard_path(key)
        fd = self._open_locked(path, spec.raw_size, spec.label)
        if fd is None:
            return None
        try:
            if self._trusted(key, fd) or (may_hash and self._rehash(key, fd, spec) is None):
                return CachedShard(key.checksum, path, fd, spec.label)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def _open_locked(self, path: str, raw_size: int | None, label: str) -> int | None:
        """A share-locked fd on the file published at ``path``, or None if there is none
        (or it is not ``raw_size`` bytes: it will be replaced)."""
        fd = open_regular(path)
        if fd is None:
            return None
        try:
            size = os.fstat(fd).st_size
            if raw_size is not None and size != raw_size:
                log.warning("%s: cached file %s is %s bytes, expected %s; fetching it again",
                            label, path, size, raw_size)
            else:
                fcntl.flock(fd, fcntl.LOCK_SH)
                if same_file(fd, path):  # else evicted between our open and our lock
                    return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

    def _trusted(self, key: ShardKey, fd: int) -> bool:
        """True if the file on ``fd`` is the one that was verified (and, under
        ``verify="always"``, was hashed by this process); then notes its use."""
        identity = FileIdentity.of(fd)
        if read_identity(self._record_path(key), touch_if=identity) != identity:
            return False
        return self.verify_mode == "changed" or (self._shard_path(key), identity) in _HASHED_HERE

    def _rehash(self, key: ShardKey, fd: int, spec: ShardSpec | None, *, repair: bool = True) -> str | None:
        """Hash the file on ``fd`` again, holding the shard's lock: None if it still holds
        the verified bytes (its identity is recorded anew), else what is wrong; with
        ``repair`` a bad file is unlinked, if the path still names it."""
        path, label = self._shard_path(key), spec.label if spec else key.checksum
        before = FileIdentity.of(fd)
        expected = self._expected_digest(key, spec)
        actual = hash_fd(fd, key)
        if actual == expected and FileIdentity.of(fd) == before:
            self._record(key, before)
            log.debug("%s: re-verified cached file %s", label, path)
            return None
        if expected is None:
            problem = "no checksum of its decompressed bytes is recorded"
        elif actual != expected:
            problem = f"hashes to {actual}, expected {expected}"
        else:
            problem = "it was modified while it was being hashed"
        action = "not removed" if not repair else "removing it" + ("; it will be fetched again" if spec else "")
        log.warning("%s: cached file %s changed since it was verified: %s; %s", label, path, problem, action)
        if repair and same_file(fd, path):  # (no publisher can race us: we hold the shard's lock)
            with suppress(FileNotFoundError, IsADirectoryError):
                os.unlink(self._record_path(key))
            with suppress(FileNotFoundError):
                os.unlink(path)
        return problem

    def _record(self, key: ShardKey, identity: FileIdentity) -> None:
        """Record that the shard file with ``identity`` was verified. Best effort: a file
        without a record is only hashed again when it is next used."""
        path = self._record_path(key)
        try:
            write_identity(path, identity, self._sub("tmp"))
        except OSError as exc:  # CacheError too: a directory planted at the record's name
            log.warning("%s: could not record its verification in %s (%s); it will be hashed "
                        "again when it is next used", key.checksum, path, exc)
        _HASHED_HERE.add((self._shard_path(key), identity))

    def _expected_digest(self, key: ShardKey, spec: ShardSpec | None) -> str | None:
        """What the cached (raw) file must hash to: the checksum itself for an uncompressed
        shard, the digest recorded at download for a compressed one (None if missing);
        without a spec, whichever applies (a digest is recorded only for compressed ones)."""
        if spec is not None and spec.compression is None:
            return key.checksum
        digest = self._read_digest(key)
        return digest if digest is not None or spec is not None else key.checksum

    def _download(
        self, key: ShardKey, fetch: Fetch, spec: ShardSpec, order_hint: OrderHint | None
    ) -> CachedShard:
        log.debug("%s: downloading %s", spec.label, key.checksum)
        raw, raw_digest = fetch_verified(key, fetch, spec, self._sub("tmp"), self.attempts)
        fd = -1
        try:
            if raw_digest is not None:
                self._write_digest(key, raw_digest)
            fd = raw.open_shared()  # held across the rename: no evictor can take it
            self._publish(raw, key, spec.raw_size, order_hint)
            self._record(key, FileIdentity.of(fd))  # after the rename, which changes the ctime
        except BaseException:
            if fd >= 0:
                os.close(fd)
            raise
        finally:
            raw.discard()
        log.debug("%s: cached %s (%s bytes)", spec.label, key.checksum, spec.raw_size)
        return CachedShard(key.checksum, self._shard_path(key), fd, spec.label)

    def _write_digest(self, key: ShardKey, raw_digest: str) -> None:
        temp = TempFile(self._sub("tmp"))
        try:
            temp.file.write(raw_digest.encode("ascii") + b"\n")
            temp.sync()
            temp.rename(self._digest_path(key))
        finally:
            temp.discard()

    def _publish(
        self, raw: TempFile, key: ShardKey, size: int, order_hint: OrderHint | None
    ) -> None:
        with exclusive_lock(self._sub("locks", "publish.lock")):
            if self.limit is not None:
                self._make_room(self.limit, size, order_hint)
            raw.rename(self._shard_path(key))
        fsync_dir(self._sub("shards"))

    # -- eviction ----------------------------------------------------------------------

    def evict(self, need_bytes: int = 0, order_hint: OrderHint | None = None) -> int:
        """Evict unused shards until ``need_bytes`` more fit under the limit.

        Victims: shards never needed again per ``order_hint`` (a mapping or callable
        checksum -> next-use position, smaller is sooner), then the one needed furthest
        in the future; without a hint, the least recently used. Shards in use by any
        process are skipped; if that leaves too little room, a warning is logged and the
        call returns anyway. Returns the bytes freed (0 without a limit).
        """
        if self.limit is None:
            return 0
        with exclusive_lock(self._sub("locks", "publish.lock")):
            return self._make_room(self.limit, need_bytes, order_hint)

    def _make_room(self, limit: int, need: int, order_hint: OrderHint | None) -> int:
        entries = self.entries()
        excess = sum(e.size for e in entries) + need - limit
        freed = 0
        for entry in eviction_order(entries, order_hint) if excess > 0 else ():
            if freed >= excess:
                break
            outcome = self._remove(parse_checksum(entry.checksum))
            if outcome != "in use":  # "absent": another process evicted it meanwhile
                log.debug("evicted %s (%s bytes)", entry.checksum, entry.size)
                freed += entry.size
        if freed < excess:
            log.warning("cache %s will exceed its limit of %s bytes by %s: every other "
                        "cached shard is in use", self.directory, limit, excess - freed)
        return freed

    def _remove(self, key: ShardKey) -> str:
        return try_remove_unused(self._shard_path(key), self._digest_path(key), self._record_path(key))

    def check_limit(self, largest_shard_raw_size: int, lookahead: int) -> None:
        """Raise :class:`CacheError` stating the minimum if the limit cannot hold the
        largest shard times ``lookahead + 1`` (the shard in use plus those prefetched)."""
        sizes = [largest_shard_raw_size] * (lookahead + 1)
        fit_lookahead(self.limit, sizes, lookahead=lookahead, default=lookahead, what=self.directory)

    min_limit = staticmethod(min_limit)

    # -- inspection and maintenance ----------------------------------------------------

    def contains(self, checksum: str) -> bool:
        """True if a shard with this checksum is published (a regular file we own)."""
        fd = open_regular(self._shard_path(parse_checksum(checksum)))
        if fd is None:
            return False
        os.close(fd)
        return True

    def entries(self) -> list[CacheEntry]:
        """The published shards: ``(checksum, size, mtime)``, mtime being the last use."""
        return scan_shards(self._sub("shards"), self._sub("verified"))

    def usage(self) -> int:
        """Bytes of published shards (downloads in progress excluded)."""
        return sum(entry.size for entry in self.entries())

    def remove(self, checksum: str) -> bool:
        """Remove one shard; False if it was not cached. Raises :class:`CacheError` if a
        process is using it."""
        key = parse_checksum(checksum)
        outcome = self._remove(key)
        if outcome == "in use":
            raise CacheError(f"{self._shard_path(key)} is in use by a process; not removed")
        return outcome == "removed"

    def clear(self) -> int:
        """Remove every shard not in use and stale temp files; returns shards removed."""
        removed = 0
        for entry in self.entries():
            if self._remove(parse_checksum(entry.checksum)) == "removed":
                removed += 1
            else:
                log.info("not removing %s: in use", entry.checksum)
        self.clean_temp()
        return removed

    def clean_temp(self) -> int:
        """Remove temp files of dead processes from ``tmp/``; returns how many."""
        return clean_temp(self._sub("tmp"))

    def verify(self, checksum: str) -> bool:
        """Re-hash a cached shard: True if its bytes are still those that were verified.

        For an uncompressed shard the file must hash to ``checksum``; for a compressed
        one, to the raw checksum recorded at download time. Changes nothing (see
        :meth:`reverify`). Raises :class:`CacheError` if the shard is not cached.
        """
        key = parse_checksum(checksum)
        fd = self._open_locked(self._shard_path(key), None, checksum)
        if fd is None:
            raise CacheError(f"{checksum} is not in the cache {self.directory}")
        try:
            actual = hash_fd(fd, key)
        finally:
            os.close(fd)
        expected = self._expected_digest(key, None)
        if actual != expected:
            log.warning("%s: cached file %s hashes to %s, expected %s; it is corrupt",
                        checksum, self._shard_path(key), actual, expected)
        return actual == expected

    def reverify(self, checksum: str, *, repair: bool = True) -> str | None:
        """Re-hash a cached shard under its lock, whatever its recorded identity says.

        Returns None if it still holds the verified bytes (its identity is recorded anew,
        so readers need not hash it again), else what is wrong; with ``repair`` the bad
        file is then unlinked (processes that map it keep their maps), so the next reader
        fetches it again. Raises :class:`CacheError` if the shard is not cached.
        """
        key = parse_checksum(checksum)
        with exclusive_lock(self._lock_path(key)):
            fd = self._open_locked(self._shard_path(key), None, checksum)
            if fd is None:
                raise CacheError(f"{checksum} is not in the cache {self.directory}")
            try:
                return self._rehash(key, fd, None, repair=repair)
            finally:
                os.close(fd)

    def _read_digest(self, key: ShardKey) -> str | None:
        fd = open_regular(self._digest_path(key))
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            text = f.read(256).decode("ascii", "replace").strip()
        with suppress(ValueError):
            return parse_checksum(text).checksum
        return None
