"""Pieces shared by the operations: loading a dataset, cache lookups, the default
number of worker threads.

Their parallel jobs run on :meth:`roxxel.workers.WorkerPool.run` and report progress
through :class:`roxxel.progress.Meter` into an fsspec ``Callback``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..backends import Store
from ..cache import ShardCache, default_directory
from ..manifest import Manifest
from ..manifest.io import dataset_store, read_manifest

__all__ = ["DEFAULT_WORKERS", "cache_directory", "cached_checksums", "existing_cache", "load"]

DEFAULT_WORKERS = 4


def load(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Store, Manifest]:
    """The store of the dataset at ``url`` and its validated manifest."""
    store = dataset_store(url, storage_options)
    return store, read_manifest(store)


def cache_directory(cache_dir: str | os.PathLike[str] | None) -> str:
    """The absolute cache directory ``cache_dir`` names (the default one if None)."""
    path = default_directory() if cache_dir is None else os.fspath(cache_dir)
    return os.path.abspath(os.path.expanduser(path))


def existing_cache(cache_dir: str | os.PathLike[str] | None) -> ShardCache | None:
    """The cache at ``cache_dir`` if that directory exists; None (creating nothing) if not."""
    directory = cache_directory(cache_dir)
    if not os.path.isdir(directory):
        return None
    return ShardCache(directory)


def cached_checksums(cache: ShardCache | None) -> dict[str, int]:
    """Checksum -> size in bytes of every shard published in ``cache`` (one directory scan)."""
    if cache is None:
        return {}
    return {entry.checksum: entry.size for entry in cache.entries()}
