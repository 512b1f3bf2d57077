"""Checking every shard of a dataset against its manifest, in the store or in the cache.

:func:`verify` streams each shard object once, in chunks, and checks its stored size and
checksum, and (decompressing zstd on the fly, bounded by the manifest's raw size) its
raw size, its ROXXEL01 offset table and its footer against the manifest's record count.
Memory per worker is one chunk plus the decompressor's window; nothing is written to
disk. :func:`verify_cache` re-hashes the node-local copies instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zstandard
from fsspec.callbacks import Callback

from ..cache import ShardCache
from ..cache.names import parse_checksum
from ..errors import CacheError, NotFoundError, ShardFormatError
from ..format import FOOTER_SIZE, OFFSET_SIZE, parse_footer
from ..manifest import ShardInfo
from ._common import DEFAULT_WORKERS, Jobs, Meter, cache_directory, load

__all__ = ["BadShard", "VerifyReport", "verify", "verify_cache"]

_WRITE_SIZE = 1 << 20


@dataclass(frozen=True)
class BadShard:
    """A shard that failed verification, and why (one line naming what was expected)."""

    uri: str
    checksum: str
    problem: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class VerifyReport:
    """The outcome of a verification: ``ok`` when no shard is bad.

    ``checked`` shards (``bytes`` read) were examined; for a cache verification,
    ``not_cached`` shards of the manifest were not in the cache and were skipped.
    """

    url: str
    shards: int
    checked: int
    bytes: int
    bad: list[BadShard] = field(default_factory=list)
    not_cached: int = 0
    where: str = "store"  # "store", or the cache directory

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "bad"}
        out["ok"] = self.ok
        out["bad"] = [b.to_dict() for b in self.bad]
        return out


class _Bad(Exception):
    """What is wrong with one shard; becomes a :class:`BadShard`."""


class _RawCheck:
    """Fed a shard's raw bytes in order; checks the offset table and footer as they pass.

    The manifest's raw size and record count fix where the payload, the offsets and the
    footer must lie, so only the offset being parsed (8 bytes) and the footer are held.
    """

    def __init__(self, raw_size: int, records: int, label: str) -> None:
        self.raw_size, self.records, self.label = raw_size, records, label
        self.payload = raw_size - OFFSET_SIZE * records - FOOTER_SIZE
        if self.payload < 0:
            raise _Bad(
                f"raw size {raw_size} bytes cannot hold {records} records: the offsets and "
                f"footer alone take {OFFSET_SIZE * records + FOOTER_SIZE} bytes"
            )
        self.index_end = self.payload + OFFSET_SIZE * records
        self.pos = 0
        self.carry = b""
        self.seen = 0  # offsets parsed so far
        self.last = 0
        self.footer = bytearray()

    def write(self, data: bytes) -> int:
        n = len(data)
        start, end = self.pos, self.pos + n
        if end > self.raw_size:
            raise _Bad(f"decompresses to more than {self.raw_size} bytes, expected raw size {self.raw_size}")
        lo, hi = max(start, self.payload), min(end, self.index_end)
        if lo < hi:
            self._offsets(self.carry + bytes(data[lo - start : hi - start]))
        lo = max(start, self.index_end)
        if lo < end:
            self.footer += data[lo - start :]
        self.pos = end
        return n

    def _offsets(self, data: bytes) -> None:
        whole = len(data) - len(data) % OFFSET_SIZE
        self.carry = data[whole:]
        if not whole:
            return
        values = np.frombuffer(data[:whole], dtype="<i8")
        previous = np.concatenate(([self.last], values[:-1]))
        drops = np.flatnonzero(values < previous)
        if len(drops):
            i = int(drops[0])
            index = self.seen + i
            if index == 0:
                raise _Bad(f"offset[0] is {int(values[0])}, expected >= 0")
            raise _Bad(
                f"offset[{index}] is {int(values[i])}, expected >= offset[{index - 1}] = "
                f"{int(previous[i])} (offsets must not decrease)"
            )
        self.seen += len(values)
        self.last = int(values[-1])

    def finish(self) -> None:
        if self.pos != self.raw_size:
            raise _Bad(f"decompresses to {self.pos} bytes, expected raw size {self.raw_size}")
        if self.records and self.last != self.payload:
            raise _Bad(
                f"offset[{self.records - 1}] is {self.last}, expected the payload size {self.payload}"
            )
        try:
            layout = parse_footer(bytes(self.footer), self.raw_size, "footer")
        except ShardFormatError as exc:
            raise _Bad(str(exc)) from exc
        if layout.record_count != self.records:
            raise _Bad(f"footer says {layout.record_count} records, expected {self.records}")


class _StoredCheck:
    """The sink :meth:`Store.stream` feeds: hashes, counts, and passes raw bytes on."""

    def __init__(self, shard: ShardInfo, label: str, jobs: Jobs, meter: Meter) -> None:
        self.shard, self.jobs, self.meter = shard, jobs, meter
        self.key = parse_checksum(shard.checksum)
        self.hash = self.key.new_hash()
        self.size = 0
        self.layout_problem: str | None = None
        self.raw: _RawCheck | None = None
        self.unzstd: Any = None
        try:
            self.raw = _RawCheck(shard.raw_size, shard.records, label)
        except _Bad as exc:
            self.layout_problem = str(exc)
        if self.raw is not None and shard.compression == "zstd":
            self.unzstd = zstandard.ZstdDecompressor().stream_writer(self.raw, write_size=_WRITE_SIZE)

    def __call__(self, chunk: bytes) -> None:
        self.jobs.check()
        self.size += len(chunk)
        if self.size > self.shard.stored_size:
            raise _Bad(f"stored size is more than {self.shard.stored_size} bytes, expected {self.shard.stored_size}")
        self.hash.update(chunk)
        self.meter.add(len(chunk))
        if self.layout_problem is None:
            # Keep hashing after a layout problem: a wrong checksum explains more.
            try:
                (self.unzstd or self.raw).write(chunk)
            except _Bad as exc:
                self.layout_problem = str(exc)
            except zstandard.ZstdError as exc:
                self.layout_problem = f"zstd decompression failed: {exc}"

    def finish(self) -> None:
        if self.size != self.shard.stored_size:
            raise _Bad(f"stored size is {self.size} bytes, expected {self.shard.stored_size}")
        actual = f"{self.key.algorithm}:{self.hash.hexdigest()}"
        if actual != self.key.checksum:
            raise _Bad(f"checksum is {actual}, expected {self.key.checksum}")
        if self.layout_problem is None:
            try:
                if self.unzstd is not None:
                    self.unzstd.flush()
                self.raw.finish()  # type: ignore[union-attr]
            except _Bad as exc:
                self.layout_problem = str(exc)
            except zstandard.ZstdError as exc:
                self.layout_problem = f"zstd decompression failed: {exc}"
        if self.layout_problem is not None:
            raise _Bad(self.layout_problem)


def verify(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Callback | None = None,
) -> VerifyReport:
    """Download and check every shard of the dataset at ``url``; report the bad ones.

    Each object's size, checksum, raw size (zstd decompressed on the fly, never beyond
    the manifest's raw size), offset table and footer (record count as in the manifest)
    are checked; a missing object is bad too. Nothing is written to disk and memory
    stays bounded whatever the shard sizes. ``progress`` (an fsspec ``Callback``) gets
    the total stored bytes, then the bytes read as they arrive. Other storage errors
    (access denied, an endpoint down after retries) say nothing about the shards and
    are raised, stopping the verification.
    """
    store, manifest = load(url, storage_options)
    table = manifest.shards
    meter = Meter(progress, int(sum(table.stored_size.tolist())))
    jobs = Jobs(workers, "roxxel-verify")

    def check(k: int) -> BadShard | None:
        shard = table[k]
        label = store.url(shard.uri)
        try:
            found = store.size(shard.uri)
            if found != shard.stored_size:
                raise _Bad(f"stored size is {found} bytes, expected {shard.stored_size}")
            sink = _StoredCheck(shard, label, jobs, meter)
            store.stream(shard.uri, sink, size=found)
            sink.finish()
        except _Bad as exc:
            return BadShard(shard.uri, shard.checksum, str(exc))
        except NotFoundError as exc:
            return BadShard(shard.uri, shard.checksum, str(exc))
        return None

    results = jobs.run(check, range(len(table)))
    bad = [r for r in results if r is not None]
    return VerifyReport(
        url=store.base_url,
        shards=len(table),
        checked=len(table),
        bytes=meter.done,
        bad=bad,
    )


def verify_cache(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = DEFAULT_WORKERS,
    remove_bad: bool = False,
    progress: Callback | None = None,
) -> VerifyReport:
    """Re-hash the cached copies of the shards of the dataset at ``url``.

    Shards not in the cache are counted as ``not_cached`` and skipped. A cached file
    whose size differs from the manifest's raw size, or whose bytes no longer hash to
    what was verified at download, is bad; with ``remove_bad`` it is also removed from
    the cache (unless a process is using it), so the next reader downloads it again.
    ``progress`` counts the raw bytes re-hashed.
    """
    store, manifest = load(url, storage_options)
    cache = ShardCache(cache_directory(cache_dir))
    sizes = {entry.checksum: entry.size for entry in cache.entries()}
    table = manifest.shards
    wanted: dict[str, int] = {}
    for k, checksum in enumerate(table.checksums.tolist()):
        wanted.setdefault(checksum, k)
    present = [k for checksum, k in wanted.items() if checksum in sizes]
    meter = Meter(progress, sum(sizes[str(table.checksums[k])] for k in present))
    jobs = Jobs(workers, "roxxel-verify-cache")

    def check(k: int) -> BadShard | None:
        jobs.check()
        shard = table[k]
        size = sizes[shard.checksum]
        problem = None
        try:
            if size != shard.raw_size:
                problem = f"cached file is {size} bytes, expected raw size {shard.raw_size}"
            elif not cache.verify(shard.checksum):
                problem = f"cached file {cache.path_for(shard.checksum)} no longer hashes to what was verified; it is corrupt on disk"
        except CacheError:  # evicted since the scan: nothing left to check
            return None
        finally:
            meter.add(size)
        if problem is None:
            return None
        if remove_bad:
            try:
                cache.remove(shard.checksum)
                problem += "; removed from the cache"
            except CacheError:
                problem += "; in use by a process, not removed"
        return BadShard(shard.uri, shard.checksum, problem)

    results = jobs.run(check, present)
    bad = [r for r in results if r is not None]
    return VerifyReport(
        url=store.base_url,
        shards=len(table),
        checked=len(present),
        bytes=meter.done,
        bad=bad,
        not_cached=len(wanted) - len(present),
        where=cache.directory,
    )
