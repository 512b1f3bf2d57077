"""Checking every shard of a dataset against its manifest, in the store or in the cache.

:func:`verify` streams each shard object once, in chunks, through the one shard check
(:class:`~roxxel.format.check.ShardCheck`): its stored size and checksum, and (decompressing
zstd on the fly, bounded by the manifest's raw size) its raw size, its ROXXEL01 offset
table and its footer against the manifest's record count.
Memory per worker is one chunk plus the decompressor's window; nothing is written to
disk. :func:`verify_cache` re-hashes the node-local copies instead. With ``trusted_keys``,
both first check the manifest's signature (:mod:`roxxel.manifest.signing`) and check the
shards against the very bytes whose signature was verified.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fsspec.callbacks import Callback

from ..backends import Store
from ..cache import ShardCache
from ..errors import CacheError, IntegrityError, NotFoundError
from ..format.check import ShardCheck, ShardSpec
from ..manifest import Manifest
from ..manifest.checksums import parse_checksum
from ..manifest.heads import HeadCheck, parse_head
from ..manifest.parts import PartsCheck, parse_parts
from ..manifest.io import dataset_store
from ..manifest.signing import read_signed_manifest
from ..manifest.signing_keys import PublicKeyLike, TrustedKeys, load_trusted_keys
from ..progress import Meter
from ..workers import WorkerPool
from ._common import DEFAULT_WORKERS, cache_directory, load

__all__ = ["BadShard", "VerifyReport", "verify", "verify_cache"]


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
    ``signed_by`` is the fingerprint of the trusted key whose signature of the manifest
    was verified (None when no trusted keys were given).
    """

    url: str
    shards: int
    checked: int
    bytes: int
    bad: list[BadShard] = field(default_factory=list)
    not_cached: int = 0
    where: str = "store"  # "store", or the cache directory
    signed_by: str | None = None

    @property
    def ok(self) -> bool:
        return not self.bad

    def to_dict(self) -> dict[str, Any]:
        out = {k: v for k, v in self.__dict__.items() if k != "bad"}
        out["ok"] = self.ok
        out["bad"] = [b.to_dict() for b in self.bad]
        return out


def verify(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    workers: int = DEFAULT_WORKERS,
    progress: Callback | None = None,
    trusted_keys: TrustedKeys | Iterable[PublicKeyLike] | None = None,
) -> VerifyReport:
    """Download and check every shard of the dataset at ``url``; report the bad ones.

    Each object's size, checksum, raw size (zstd decompressed on the fly, never beyond
    the manifest's raw size), offset table and footer (record count as in the manifest)
    are checked, and its head and parts, if the manifest gives it them (their checksums,
    and where the head's records end); a missing object is bad too. Nothing is written to disk and memory
    stays bounded whatever the shard sizes. ``progress`` (an fsspec ``Callback``) gets
    the total stored bytes, then the bytes read as they arrive. Other storage errors
    (access denied, an endpoint down after retries) say nothing about the shards and
    are raised, stopping the verification. With ``trusted_keys`` (public keys, as
    :func:`roxxel.open` takes them), a manifest without a signature by one of them is
    refused first with a :class:`~roxxel.errors.SignatureError`, before any shard is read.
    """
    store, manifest, signed_by = _load(url, storage_options, trusted_keys)
    table = manifest.shards
    meter = Meter(progress, int(sum(table.stored_size.tolist())))
    jobs = WorkerPool(workers, "roxxel-verify")

    def check(k: int) -> BadShard | None:
        shard = table[k]
        check = ShardCheck(ShardSpec.of(shard, store.url(shard.uri)), parse_checksum(shard.checksum))
        extra = [HeadCheck(parse_head(shard.head), shard.records, shard.stored_size)] if shard.head else []
        extra += [PartsCheck(parse_parts(shard.parts))] if shard.parts else []

        def sink(chunk: bytes) -> None:
            jobs.check()
            check(chunk)
            for also in extra:
                also(chunk)
            meter.add(len(chunk))

        try:
            found = store.size(shard.uri)
            check.expect_stored_size(found)
            store.stream(shard.uri, sink, size=found)
            check.finish()
            problem = next((p for also in extra if (p := also.problem()) is not None), None)
            if problem is not None:
                return BadShard(shard.uri, shard.checksum, problem)
        except IntegrityError as exc:
            if exc.problem is None:  # not the shard check's: the store's own error
                raise
            return BadShard(shard.uri, shard.checksum, exc.problem)
        except NotFoundError as exc:
            return BadShard(shard.uri, shard.checksum, str(exc))
        return None

    with jobs:
        results = jobs.run(check, range(len(table)))
    bad = [r for r in results if r is not None]
    return VerifyReport(
        url=store.base_url,
        shards=len(table),
        checked=len(table),
        bytes=meter.done,
        bad=bad,
        signed_by=signed_by,
    )


def _load(
    url: str, storage_options: Mapping[str, Any] | None, trusted_keys: TrustedKeys | Iterable[PublicKeyLike] | None
) -> tuple[Store, Manifest, str | None]:
    """The store and manifest, as :func:`load`; with ``trusted_keys``, the manifest read
    once and its signature verified, and the signer's fingerprint."""
    if trusted_keys is None:
        return (*load(url, storage_options), None)
    trusted = load_trusted_keys(trusted_keys)  # before any request: a private key fails fast
    store = dataset_store(url, storage_options)
    manifest, signature = read_signed_manifest(store, trusted)
    return store, manifest, signature.key


def verify_cache(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    workers: int = DEFAULT_WORKERS,
    remove_bad: bool = False,
    progress: Callback | None = None,
    trusted_keys: TrustedKeys | Iterable[PublicKeyLike] | None = None,
) -> VerifyReport:
    """Re-hash the cached copies of the shards of the dataset at ``url``.

    Shards not in the cache are counted as ``not_cached`` and skipped. A cached file
    whose size differs from the manifest's raw size, or whose bytes no longer hash to
    what was verified at download, is bad; with ``remove_bad`` it is also removed from
    the cache (unless a process is using it), so the next reader downloads it again.
    ``progress`` counts the raw bytes re-hashed. ``trusted_keys``: as :func:`verify`.
    """
    store, manifest, signed_by = _load(url, storage_options, trusted_keys)
    cache = ShardCache(cache_directory(cache_dir))
    sizes = {entry.checksum: entry.size for entry in cache.entries()}
    table = manifest.shards
    wanted: dict[str, int] = {}
    for k, checksum in enumerate(table.checksums.tolist()):
        wanted.setdefault(checksum, k)
    present = [k for checksum, k in wanted.items() if checksum in sizes]
    meter = Meter(progress, sum(sizes[str(table.checksums[k])] for k in present))
    jobs = WorkerPool(workers, "roxxel-verify-cache")

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

    with jobs:
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
        signed_by=signed_by,
    )
