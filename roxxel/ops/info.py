"""What a dataset holds, shard by shard, and how much of it the local cache has."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..manifest.compressions import COMPRESSIONS
from ._common import cache_directory, cached_checksums, existing_cache, load

__all__ = ["DatasetInfo", "ShardStatus", "info", "list_shards"]


@dataclass(frozen=True)
class DatasetInfo:
    """A manifest's summary; ``cached_*`` count this dataset's shards in the local cache."""

    url: str
    records: int
    shards: int
    stored_bytes: int
    raw_bytes: int
    compression: dict[str, int]  # "none" or "zstd" -> number of shards
    meta: dict[str, Any]
    fingerprint: str
    cache_dir: str
    cached_shards: int
    cached_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ShardStatus:
    """One shard of a manifest, and whether the local cache holds it."""

    uri: str
    records: int
    stored_size: int
    raw_size: int
    compression: str | None
    checksum: str
    cached: bool

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def info(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> DatasetInfo:
    """The summary of the dataset at ``url``; reads the manifest and lists the cache only.

    ``cache_dir`` defaults to the default cache (``$ROXXEL_CACHE_DIR`` or
    ``~/.cache/roxxel``); a missing cache directory counts as empty and is not created.
    """
    store, manifest = load(url, storage_options)
    table = manifest.shards
    cached = cached_checksums(existing_cache(cache_dir))
    hits = [c in cached for c in table.checksums.tolist()]
    raw_sizes = table.raw_size.tolist()
    names = Counter(COMPRESSIONS[code] or "none" for code in table.compression.tolist())
    return DatasetInfo(
        url=store.base_url,
        records=manifest.records,
        shards=len(table),
        stored_bytes=int(sum(table.stored_size.tolist())),
        raw_bytes=int(sum(raw_sizes)),
        compression=dict(sorted(names.items())),
        meta=dict(manifest.to_dict()["meta"]),
        fingerprint=manifest.fingerprint(),
        cache_dir=cache_directory(cache_dir),
        cached_shards=sum(hits),
        cached_bytes=sum(size for size, hit in zip(raw_sizes, hits) if hit),
    )


def list_shards(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[ShardStatus]:
    """Every shard of the dataset at ``url``, in manifest order, with its cache status."""
    _, manifest = load(url, storage_options)
    cached = cached_checksums(existing_cache(cache_dir))
    return [
        ShardStatus(
            uri=shard.uri,
            records=shard.records,
            stored_size=shard.stored_size,
            raw_size=shard.raw_size,
            compression=shard.compression,
            checksum=shard.checksum,
            cached=shard.checksum in cached,
        )
        for shard in manifest.shards
    ]
