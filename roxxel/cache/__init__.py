"""Node-local shard cache: content-addressed names, cross-process locking, atomic
publish, eviction.

:class:`ShardCache` is the entry point; see :mod:`roxxel.cache.store` for the layout of
the cache directory and the locking protocol.
"""

from __future__ import annotations

from .shard import CachedShard
from .store import ShardCache

__all__ = ["CachedShard", "ShardCache"]
