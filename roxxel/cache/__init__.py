"""Node-local shard cache: content-addressed names, cross-process locking, atomic
publish, eviction.

:class:`ShardCache` is the entry point; see :mod:`roxxel.cache.store` for the layout of
the cache directory and the locking protocol.
"""

from __future__ import annotations

from .datasets import DATASETS_DIR, record_dataset_use
from .download import Fetch, Sink
from .evict import CacheEntry, OrderHint
from .names import parse_size
from .shard import CachedShard
from .sizing import fit_lookahead, min_limit, required_bytes, shards_that_fit
from .store import ENV_DIR, ShardCache, default_directory

__all__ = [
    "DATASETS_DIR",
    "ENV_DIR",
    "CacheEntry",
    "CachedShard",
    "Fetch",
    "OrderHint",
    "ShardCache",
    "Sink",
    "default_directory",
    "fit_lookahead",
    "min_limit",
    "parse_size",
    "record_dataset_use",
    "required_bytes",
    "shards_that_fit",
]
