"""The node-local shard cache shared by every process on a node.

Layout of the cache directory (each part mode 0700, owned by the user)::

    shards/<algo>-<hex>.rox   published raw (decompressed) ROXXEL01 files, named by the
                              verified checksum of their stored bytes
    digests/<algo>-<hex>      for compressed shards: the checksum of the raw file, so
                              verify() can re-hash it
    locks/<algo>-<hex>.lock   per-shard download locks (removed by their holder)
    locks/publish.lock        serializes "make room, then publish"
    tmp/<pid>.<random>.part   downloads in progress; never served, cleaned when the pid
                              is dead and nobody holds a lock on them

Locking protocol (all ``flock``, released by the kernel when a process dies):

* a reader opens ``shards/<name>`` and takes ``LOCK_SH`` on its own fd for as long as it
  uses the shard, then checks the path still names that file (an evictor may have
  unlinked it between the open and the lock);
* a downloader takes ``LOCK_EX`` on ``locks/<name>.lock`` (blocking), looks again,
  downloads into ``tmp/``, takes ``LOCK_SH`` on the finished temp file, and renames it
  into place under ``locks/publish.lock`` after evicting what the limit requires;
* an evictor removes a shard only if ``LOCK_EX | LOCK_NB`` on it succeeds, and only
  unlinks: mapped files stay readable.
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import suppress

from ..errors import CacheError
from .download import Fetch, ShardSpec, fetch_verified
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
from .names import ShardKey, parse_checksum, parse_size
from .shard import CachedShard
from .sizing import fit_lookahead, min_limit

__all__ = ["ShardCache"]

log = logging.getLogger(__name__)

ENV_DIR = "ROXXEL_CACHE_DIR"
_SUBDIRS = ("shards", "digests", "locks", "tmp")
_HASH_CHUNK = 1 << 20


def default_directory() -> str:
    """``$ROXXEL_CACHE_DIR`` if set and not empty, else ``~/.cache/roxxel`` (read now)."""
    return os.environ.get(ENV_DIR) or os.path.join(os.path.expanduser("~"), ".cache", "roxxel")


class ShardCache:
    """A directory of verified shards shared by every process of one user on a node.

    ``directory`` defaults to :func:`default_directory`. ``limit`` bounds the bytes of
    published shards: None (no bound), an int, or a string such as ``"50GB"`` (1000**n),
    ``"1.5GiB"`` or ``"10G"`` (1024**n); see :func:`~roxxel.cache.parse_size`. The limit
    is exceeded only by downloads in flight (in ``tmp/``) and, with a warning, when every
    cached shard is in use: the cache never deadlocks waiting for room.
    ``attempts`` is how many times a download whose size or checksum is wrong is made.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        limit: int | str | None = None,
        *,
        attempts: int = 3,
    ) -> None:
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ValueError(f"attempts is {attempts!r}, expected an int >= 1")
        path = default_directory() if directory is None else os.fspath(directory)
        self.directory = os.path.abspath(os.path.expanduser(path))
        self.limit = parse_size(limit)
        self.attempts = attempts
        ensure_private_dir(self.directory)
        for sub in _SUBDIRS:
            ensure_private_dir(self._sub(sub))
        self.clean_temp()

    def __repr__(self) -> str:
        return f"ShardCache({self.directory!r}, limit={self.limit!r})"

    # -- paths -------------------------------------------------------------------------

    def _sub(self, *parts: str) -> str:
        return os.path.join(self.directory, *parts)

    def _shard_path(self, key: ShardKey) -> str:
        return self._sub("shards", key.stem + ".rox")

    def _digest_path(self, key: ShardKey) -> str:
        return self._sub("digests", key.stem)

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

        If it is cached, it is returned without calling ``fetch``. Otherwise one process
        calls ``fetch(sink)``, which must pass the stored bytes to ``sink`` in chunks;
        the others wait for it. The bytes are verified (size, checksum, bounded zstd
        decompression, footer and ``record_count``) before anyone can see them; a wrong
        size or checksum is fetched again up to ``attempts`` times, then raises
        :class:`~roxxel.errors.IntegrityError` naming ``label``. Errors raised by
        ``fetch`` propagate unchanged. ``order_hint`` guides eviction (see
        :meth:`evict`). The caller must :meth:`CachedShard.close` the result.
        """
        key = parse_checksum(checksum)
        spec = ShardSpec(stored_size, raw_size, compression, record_count, label)
        shard = self._open_cached(key, spec.raw_size, label)
        if shard is not None:
            return shard
        with exclusive_lock(self._sub("locks", key.stem + ".lock")):
            shard = self._open_cached(key, spec.raw_size, label)
            if shard is None:
                shard = self._download(key, fetch, spec, order_hint)
        return shard

    def _open_cached(
        self, key: ShardKey, raw_size: int | None, label: str
    ) -> CachedShard | None:
        """The published file, share-locked and touched, or None if absent or unusable."""
        path = self._shard_path(key)
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
                    os.utime(fd)  # the last use, for least-recently-used eviction
                    return CachedShard(key.checksum, path, fd, label)
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        return None

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
        entries = scan_shards(self._sub("shards"))
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
        return try_remove_unused(self._shard_path(key), self._digest_path(key))

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
        return scan_shards(self._sub("shards"))

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
        one, to the raw checksum recorded at download time. Raises :class:`CacheError`
        if the shard is not cached.
        """
        key = parse_checksum(checksum)
        shard = self._open_cached(key, None, checksum)
        if shard is None:
            raise CacheError(f"{checksum} is not in the cache {self.directory}")
        with shard, shard.open() as f:
            hasher = key.new_hash()
            while chunk := f.read(_HASH_CHUNK):
                hasher.update(chunk)
            actual = f"{key.algorithm}:{hasher.hexdigest()}"
            expected = {key.checksum, self._read_digest(key)}
        if actual not in expected:
            log.warning("%s: cached file %s hashes to %s; it is corrupt", checksum,
                        shard.path, actual)
        return actual in expected

    def _read_digest(self, key: ShardKey) -> str | None:
        fd = open_regular(self._digest_path(key))
        if fd is None:
            return None
        with os.fdopen(fd, "rb") as f:
            text = f.read(256).decode("ascii", "replace").strip()
        with suppress(ValueError):
            return parse_checksum(text).checksum
        return None
