"""Pieces shared by the operations: loading a dataset, the destination of a copy or
merge, cache lookups, the default number of worker threads.

Their parallel jobs run on :meth:`roxxel.workers.WorkerPool.run` and report progress
through :class:`roxxel.progress.Meter` into an fsspec ``Callback``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from ..backends import Store
from ..cache import ShardCache
from ..cache.store import default_directory
from ..errors import DatasetExistsError, ManifestError
from ..manifest import Manifest
from ..manifest.io import (
    MANIFEST_KEY,
    Snapshot,
    dataset_store,
    read_manifest,
    read_snapshot,
    require_conditional_writes,
)

__all__ = [
    "DEFAULT_WORKERS",
    "cache_directory",
    "cached_checksums",
    "existing_cache",
    "holds_already",
    "load",
    "read_destination",
]

DEFAULT_WORKERS = 4


def load(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Store, Manifest]:
    """The store of the dataset at ``url`` and its validated manifest."""
    store = dataset_store(url, storage_options)
    return store, read_manifest(store)


def read_destination(dst: Store, *, overwrite: bool, single_writer: bool) -> Snapshot | None:
    """The destination's manifest and version, which a copy or merge publishes against by
    compare-and-swap; None if it is unreadable and ``overwrite`` (then it is replaced
    unconditionally). Refuses at once, before anything is copied, a store that does not
    enforce conditional writes unless ``single_writer``."""
    require_conditional_writes(dst, single_writer=single_writer)
    try:
        return read_snapshot(dst)
    except ManifestError:
        if not overwrite:
            raise
        return None


def holds_already(dst: Store, existing: Manifest | None, incoming: Manifest, *, overwrite: bool) -> bool:
    """True if ``dst`` already holds exactly ``incoming`` (nothing to do); DatasetExistsError
    if it holds another dataset and not ``overwrite``."""
    if existing is None:
        return False
    if existing == incoming:
        return True
    if not overwrite:
        raise DatasetExistsError(
            f"a different dataset already exists at {dst.url(MANIFEST_KEY)}; "
            "choose another destination, or overwrite it"
        )
    return False


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
