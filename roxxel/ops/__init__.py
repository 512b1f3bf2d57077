"""Operations on datasets and node caches, as library functions; ``roxxel`` CLI runs them.

Each takes the dataset URL(s) and ``storage_options`` (passed to fsspec untouched), and
those that move bytes take ``progress``, an fsspec :class:`~fsspec.callbacks.Callback`
(for instance ``fsspec.callbacks.TqdmCallback``): ``set_size(total)`` once, then
``relative_update(nbytes)`` from worker threads, serialized. They return small report
dataclasses with ``to_dict()``, and raise :mod:`roxxel.errors` errors.

- :func:`info`, :func:`list_shards`: a manifest's summary and shards, with cache status
- :func:`verify`, :func:`verify_cache`: check every shard in the store, or in the cache
- :func:`warm`: fill the node cache in plan order
- :func:`pack`: files, JSON lines, ``.npy`` rows or old ``.rox`` shards into a dataset
- :func:`copy`: copy a dataset between stores, verified and resumable
- :func:`merge`: one manifest over datasets written in parallel
- :func:`cache_usage`, :func:`cache_list`, :func:`cache_gc`, :func:`cache_clear`,
  :func:`cache_verify`
- :func:`plan_summary`: a dry run of an epoch for every rank
- :func:`prune`: find (and delete) shard objects no manifest lists
- :func:`sign`: sign a dataset's manifest with an Ed25519 key (see :mod:`roxxel.manifest.signing`)
- :func:`bench`: this node against a dataset: the raw link, a cold and a warm read
"""

from __future__ import annotations

from .bench import BenchReport, bench
from .cachecmd import (
    CacheGcReport,
    CacheUsage,
    CacheVerifyReport,
    CachedShardInfo,
    DamagedShard,
    DatasetUsage,
    cache_clear,
    cache_gc,
    cache_list,
    cache_usage,
    cache_verify,
)
from .copy import CopyReport, copy
from .info import DatasetInfo, ShardStatus, info, list_shards
from .merge import MergeReport, merge
from .pack import pack
from .plansummary import PlanSummary, RankSummary, plan_summary
from .prune import PruneReport, UnreferencedShard, prune
from .sign import SignReport, sign
from .verify import BadShard, VerifyReport, verify, verify_cache
from .warm import WarmReport, warm

__all__ = [
    "BadShard",
    "BenchReport",
    "CacheGcReport",
    "CacheUsage",
    "CacheVerifyReport",
    "CachedShardInfo",
    "CopyReport",
    "DamagedShard",
    "DatasetInfo",
    "DatasetUsage",
    "MergeReport",
    "PlanSummary",
    "PruneReport",
    "RankSummary",
    "ShardStatus",
    "SignReport",
    "UnreferencedShard",
    "VerifyReport",
    "WarmReport",
    "bench",
    "cache_clear",
    "cache_gc",
    "cache_list",
    "cache_usage",
    "cache_verify",
    "copy",
    "info",
    "list_shards",
    "merge",
    "pack",
    "plan_summary",
    "prune",
    "sign",
    "verify",
    "verify_cache",
    "warm",
]
