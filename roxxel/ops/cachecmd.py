"""Inspecting and cleaning a node-local cache: usage per dataset, listing, gc, clear, verify.

The cache is content-addressed (shards are named by checksum), so to attribute shards to
datasets ``roxxel.open`` leaves a small note per dataset in ``<cache>/datasets/``: the
dataset's URL (redacted) and the checksums of its shards. :func:`cache_gc` keeps the
shards some note needs and removes the rest (never a shard a process is using).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsspec.callbacks import Callback

from ..backends.urls import without_masked
from ..cache import ShardCache
from ..cache.datasets import DATASETS_DIR, record_dataset_use
from ..cache.files import clean_temp, open_regular
from ..errors import CacheError, RoxxelError
from ..manifest.io import dataset_store, try_read_manifest
from ..progress import Meter
from ..workers import WorkerPool
from ._common import DEFAULT_WORKERS, cache_directory

__all__ = [
    "CacheGcReport",
    "CacheUsage",
    "CacheVerifyReport",
    "CachedShardInfo",
    "DamagedShard",
    "DatasetUsage",
    "cache_clear",
    "cache_gc",
    "cache_list",
    "cache_usage",
    "cache_verify",
]

log = logging.getLogger(__name__)

_MAX_NOTE_BYTES = 256 << 20


@dataclass(frozen=True)
class DatasetUsage:
    """One dataset that used this cache: how many of its shards are cached, and bytes."""

    url: str
    shards: int
    cached_shards: int
    cached_bytes: int
    last_opened: float  # when roxxel.open last opened it (seconds since the epoch)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CacheUsage:
    """The cache's shards and bytes, per dataset and in total.

    A shard shared by several datasets counts for each of them, and once in the totals.
    ``unattributed_*`` are shards no noted dataset needs (what :func:`cache_gc` removes).
    """

    cache_dir: str
    shards: int
    bytes: int
    datasets: list[DatasetUsage] = field(default_factory=list)
    unattributed_shards: int = 0
    unattributed_bytes: int = 0

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["datasets"] = [d.to_dict() for d in self.datasets]
        return out


@dataclass(frozen=True)
class CachedShardInfo:
    """One cached shard: checksum, raw size, last use, and the datasets that need it."""

    checksum: str
    size: int
    last_used: float
    datasets: list[str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CacheGcReport:
    """What :func:`cache_gc` or :func:`cache_clear` removed and kept."""

    cache_dir: str
    temp_removed: int
    shards_removed: int
    bytes_freed: int
    shards_kept: int  # needed by a noted dataset (gc) or in use
    shards_in_use: int  # would have been removed, but a process is using them
    notes_dropped: int  # dataset notes removed (gone or cleared)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class DamagedShard:
    """A cached file that no longer holds the bytes that were verified, and whether it
    was removed (so that the next reader fetches the shard again)."""

    checksum: str
    path: str
    size: int
    problem: str
    removed: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class CacheVerifyReport:
    """What :func:`cache_verify` found: ``checked`` files (``bytes`` re-hashed), the
    ``damaged`` ones; ``ok`` when there are none."""

    cache_dir: str
    checked: int
    bytes: int
    damaged: list[DamagedShard] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["damaged"] = [d.to_dict() for d in self.damaged]
        out["ok"] = self.ok
        return out


@dataclass(frozen=True)
class _Note:
    path: str
    url: str
    checksums: frozenset[str]
    mtime: float


def _open_cache(cache_dir: str | os.PathLike[str] | None) -> ShardCache:
    return ShardCache(_existing(cache_dir))


def _existing(cache_dir: str | os.PathLike[str] | None) -> str:
    directory = cache_directory(cache_dir)
    if not os.path.isdir(directory):
        raise CacheError(f"there is no cache at {directory}; pass the cache directory (--cache-dir)")
    return directory


def _open_cleaned(cache_dir: str | os.PathLike[str] | None) -> tuple[ShardCache, int]:
    """The cache, and how many temp files of dead processes were removed from it.

    Counted before ShardCache() is built, because its constructor cleans them silently.
    """
    directory = _existing(cache_dir)
    tmp = os.path.join(directory, "tmp")
    removed = clean_temp(tmp) if os.path.isdir(tmp) else 0
    return ShardCache(directory), removed


def _notes(cache: ShardCache) -> list[_Note]:
    """The dataset notes in the cache; unreadable ones are logged and skipped."""
    folder = os.path.join(cache.directory, DATASETS_DIR)
    try:
        names = sorted(os.listdir(folder))
    except FileNotFoundError:
        return []
    notes = []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(folder, name)
        fd = open_regular(path)
        if fd is None:
            continue
        try:
            with os.fdopen(fd, "rb") as f:
                mtime = os.fstat(f.fileno()).st_mtime
                doc = json.loads(f.read(_MAX_NOTE_BYTES))
            notes.append(_Note(path, str(doc["url"]), frozenset(map(str, doc["checksums"])), mtime))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("ignoring unreadable dataset note %s: %s", path, exc)
    return notes


def cache_usage(cache_dir: str | os.PathLike[str] | None = None) -> CacheUsage:
    """Bytes and shards in the cache, per dataset that used it (see :class:`CacheUsage`)."""
    cache = _open_cache(cache_dir)
    sizes = {e.checksum: e.size for e in cache.entries()}
    notes = _notes(cache)
    datasets = []
    attributed: set[str] = set()
    for note in sorted(notes, key=lambda n: n.url):
        present = [c for c in note.checksums if c in sizes]
        attributed.update(present)
        datasets.append(
            DatasetUsage(
                url=note.url,
                shards=len(note.checksums),
                cached_shards=len(present),
                cached_bytes=sum(sizes[c] for c in present),
                last_opened=note.mtime,
            )
        )
    orphans = [c for c in sizes if c not in attributed]
    return CacheUsage(
        cache_dir=cache.directory,
        shards=len(sizes),
        bytes=sum(sizes.values()),
        datasets=datasets,
        unattributed_shards=len(orphans),
        unattributed_bytes=sum(sizes[c] for c in orphans),
    )


def cache_list(cache_dir: str | os.PathLike[str] | None = None) -> list[CachedShardInfo]:
    """Every cached shard, most recently used first, with the datasets that need it."""
    cache = _open_cache(cache_dir)
    notes = _notes(cache)
    out = []
    for entry in sorted(cache.entries(), key=lambda e: (-e.mtime, e.checksum)):
        users = sorted({n.url for n in notes if entry.checksum in n.checksums})
        out.append(CachedShardInfo(entry.checksum, entry.size, entry.mtime, users))
    return out


def _refresh(cache: ShardCache, notes: list[_Note], storage_options: Mapping[str, Any] | None) -> tuple[list[_Note], int]:
    """Re-read each noted dataset's manifest: drop notes of datasets that are gone and
    renew those whose shards changed. A dataset that cannot be read is kept."""
    dropped = 0
    for note in notes:
        # A note never holds credentials: they come from storage_options or the environment.
        url = without_masked(note.url)
        try:
            manifest = try_read_manifest(dataset_store(url, storage_options))
        except (RoxxelError, OSError, ValueError) as exc:
            hint = " (its URL was noted without its credentials: pass them as options)" if url != note.url else ""
            log.warning("keeping %s: could not read its manifest: %s%s", note.url, exc, hint)
            continue
        if manifest is None:
            log.info("dropping %s: its manifest is gone", note.url)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(note.path)
            dropped += 1
        elif frozenset(manifest.shards.checksums.tolist()) != note.checksums:
            log.info("renewing %s: its manifest changed", note.url)
            record_dataset_use(cache, note.url, manifest)
    return _notes(cache), dropped


def cache_gc(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    refresh: bool = False,
    storage_options: Mapping[str, Any] | None = None,
) -> CacheGcReport:
    """Remove temp files of dead processes and every shard no noted dataset needs.

    With ``refresh``, each noted dataset's manifest is read again first (with
    ``storage_options``): datasets whose manifest is gone are forgotten, and changed
    ones are noted anew, so shards only their old versions used are removed too.
    Shards that a process is using are never removed.
    """
    cache, temp = _open_cleaned(cache_dir)
    notes = _notes(cache)
    dropped = 0
    if refresh:
        notes, dropped = _refresh(cache, notes, storage_options)
    needed: set[str] = set().union(*(n.checksums for n in notes)) if notes else set()
    removed = freed = kept = in_use = 0
    for entry in cache.entries():
        if entry.checksum in needed:
            kept += 1
            continue
        try:
            if cache.remove(entry.checksum):
                removed += 1
                freed += entry.size
        except CacheError:
            in_use += 1
            kept += 1
    return CacheGcReport(cache.directory, temp, removed, freed, kept, in_use, dropped)


def cache_clear(cache_dir: str | os.PathLike[str] | None = None) -> CacheGcReport:
    """Remove every shard no process is using, stale temp files and the dataset notes."""
    cache, temp = _open_cleaned(cache_dir)
    removed = freed = in_use = 0
    for entry in cache.entries():
        try:
            if cache.remove(entry.checksum):
                removed += 1
                freed += entry.size
        except CacheError:
            in_use += 1
    notes = _notes(cache)
    for note in notes:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(note.path)
    return CacheGcReport(cache.directory, temp, removed, freed, in_use, in_use, len(notes))


def cache_verify(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    repair: bool = True,
    workers: int = DEFAULT_WORKERS,
    progress: Callback | None = None,
) -> CacheVerifyReport:
    """Re-hash every cached shard, whatever its recorded identity says.

    A file must hash to the checksum its name holds or, decompressed from a zstd shard,
    to the digest recorded when it was downloaded. One that does not is reported and,
    with ``repair``, removed: unlinked (a process mapping it keeps its map), so the next
    reader fetches the shard again. A good file has its identity recorded anew, so that
    readers do not hash it again. Shards evicted meanwhile are skipped. ``progress``
    counts the bytes re-hashed; ``workers`` files are hashed at once.
    """
    cache = _open_cache(cache_dir)
    entries = cache.entries()
    meter = Meter(progress, sum(e.size for e in entries))
    jobs = WorkerPool(workers, "roxxel-cache-verify")

    def check(entry: Any) -> tuple[bool, DamagedShard | None]:
        jobs.check()
        try:
            problem = cache.reverify(entry.checksum, repair=repair)
        except CacheError:  # evicted since the scan: nothing left to serve
            return False, None
        finally:
            meter.add(entry.size)
        if problem is None:
            return True, None
        return True, DamagedShard(entry.checksum, cache.path_for(entry.checksum), entry.size, problem, repair)

    with jobs:
        results = jobs.run(check, entries)
    damaged = [d for _, d in results if d is not None]
    return CacheVerifyReport(cache.directory, sum(c for c, _ in results), meter.done, damaged)
