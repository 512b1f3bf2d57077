"""Filling a node's cache before a job starts, in the order its ranks will read.

The shards come from the same cache and downloader as training reads (verified, then
published atomically), so warming is idempotent, skips what is cached, and is safe to
run while training processes read the same cache: each shard is downloaded once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fsspec.callbacks import Callback

from ..manifest import Manifest
from ..planner import plan
from ..read import open as open_dataset
from ..read.mixspec import is_spec_location
from ._common import DEFAULT_WORKERS

__all__ = ["WarmReport", "warm", "warm_order"]


@dataclass(frozen=True)
class WarmReport:
    """What :func:`warm` did: shards planned, fetched, found cached, and left out."""

    url: str
    cache_dir: str
    shards_planned: int  # distinct shards the plan (or --all) needs
    shards_fetched: int
    shards_cached: int  # already in the cache (or fetched meanwhile by another process)
    shards_over_limit: int  # needed, but beyond what fits under the limit
    bytes_downloaded: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def warm_order(
    manifest: Manifest,
    *,
    ranks: Sequence[int] | None = None,
    world_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
) -> list[int]:
    """The shards to fetch, in the order they are first needed.

    ``ranks=None``: every shard, in stored order. Otherwise the shards of those ranks'
    plans for ``(seed, epoch, world_size)`` (as ``ds.iter`` plans them), interleaved
    rank by rank, so each rank's first shards come first (a node runs several ranks).
    """
    if ranks is None:
        return list(range(len(manifest.shards)))
    if not ranks:
        raise ValueError("ranks must name at least one rank")
    counts = manifest.shards.records
    orders = [
        plan(counts, seed=seed, epoch=epoch, rank=r, world_size=world_size).shard_order.tolist()
        for r in ranks
    ]
    merged: dict[int, None] = {}
    for position in range(max(map(len, orders), default=0)):
        for order in orders:
            if position < len(order):
                merged.setdefault(int(order[position]))
    return list(merged)


def warm(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    limit: int | str | None = None,
    ranks: Sequence[int] | None = None,
    world_size: int = 1,
    seed: int | None = None,
    epoch: int = 0,
    workers: int = DEFAULT_WORKERS,
    progress: Callback | None = None,
) -> WarmReport:
    """Fill the node cache with the shards of the dataset at ``url`` in plan order (or of
    the mixture whose JSON document ``url`` is: every source's shards, or those ranks'
    mixture plans, into one cache). ``seed`` defaults to 0, or to a mixture's own.

    The shards are those of :func:`warm_order` (all of them if ``ranks`` is None).
    With ``limit`` (the cache limit, bytes or ``"50GB"``), only the longest prefix of
    that order whose raw sizes fit under it is fetched: warming never evicts a shard it
    will need sooner to make room for one needed later. Shards already cached are
    skipped; ``workers`` threads download the others, started in order. ``progress``
    (an fsspec ``Callback``) gets the stored bytes to download, then bytes as they come.
    """
    if is_spec_location(url):  # a mixture document: its sources' shards, in one cache
        return _warm_mixture(url, storage_options, cache_dir=cache_dir, limit=limit, ranks=ranks,
                             world_size=world_size, seed=seed, epoch=epoch, workers=workers, progress=progress)
    with open_dataset(url, cache_dir, limit, storage_options, lookahead=0) as ds:
        order = warm_order(ds.manifest, ranks=ranks, world_size=world_size, seed=seed or 0, epoch=epoch)
        chosen = ds.residency.that_fit(order)
        counts = ds.warm(chosen, workers=workers, progress=progress)
        return WarmReport(
            url=ds.url,
            cache_dir=ds.cache.directory,
            shards_planned=len(order),
            shards_fetched=counts["shards_fetched"],
            shards_cached=counts["shards_cached"],
            shards_over_limit=len(order) - len(chosen),
            bytes_downloaded=counts["bytes_downloaded"],
        )


def _warm_mixture(doc: str, storage_options: Mapping[str, Any] | None, *, cache_dir: str | os.PathLike[str] | None,
                  limit: int | str | None, ranks: Sequence[int] | None, world_size: int, seed: int | None, epoch: int,
                  workers: int, progress: Callback | None) -> WarmReport:
    from ..read.mixture import mix
    from .mixsummary import mixture_warm_order

    cache = None if cache_dir is None else os.fspath(cache_dir)
    with mix(doc, storage_options=storage_options, cache_dir=cache, cache_limit=limit, lookahead=0) as m:
        order = mixture_warm_order(m, ranks, world_size, seed, epoch)
        chosen = m.residency.that_fit(order)
        counts = m.residency.warm(chosen, workers=workers, progress=progress)
        return WarmReport(url=doc, cache_dir=m.cache.directory, shards_planned=len(order),
                          shards_fetched=counts["shards_fetched"], shards_cached=counts["shards_cached"],
                          shards_over_limit=len(order) - len(chosen), bytes_downloaded=counts["bytes_downloaded"])
