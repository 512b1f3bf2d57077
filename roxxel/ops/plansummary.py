"""A dry run of an epoch: what each rank will fetch, download and hold in its cache.

Computed from the manifest alone with the same planner ``ds.iter`` uses, so the numbers
match what training will do; nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..cache.names import parse_size
from ..cache.sizing import fitted_lookahead, required_bytes, required_shards
from ..planner import DEFAULT_WINDOW, Plan, plan
from ..read.residency import DEFAULT_LOOKAHEAD
from ._common import load

__all__ = ["PlanSummary", "RankSummary", "plan_summary"]


@dataclass(frozen=True)
class RankSummary:
    """One rank's epoch: its records and shards, the first shards it fetches, the stored
    bytes it downloads (distinct shards), and the raw bytes its cache holds at most."""

    rank: int
    records: int
    shards: int
    first_shards: list[str]
    download_bytes: int
    raw_bytes: int
    peak_cache_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PlanSummary:
    """Every rank's :class:`RankSummary`, and the cache limit roxxel requires.

    ``required_cache_limit`` is what ``ds.iter`` demands of a limited cache: room for its
    ``required_shards`` largest shards, a shuffle window's (``window`` of them at most)
    plus a chosen lookahead (an unchosen one shrinks to fit the limit; ``lookahead`` is
    what it comes to). ``limit_ok`` says whether ``cache_limit`` (if given) meets it.
    """

    url: str
    seed: int
    epoch: int
    world_size: int
    window: int
    lookahead: int
    shards: int
    records: int
    stored_bytes: int
    largest_shard_bytes: int
    required_cache_limit: int
    required_shards: int
    cache_limit: int | None
    ranks: list[RankSummary] = field(default_factory=list)

    @property
    def limit_ok(self) -> bool | None:
        return None if self.cache_limit is None else self.cache_limit >= self.required_cache_limit

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["limit_ok"] = self.limit_ok
        out["ranks"] = [r.to_dict() for r in self.ranks]
        return out


def _peak(p: Plan, raw: np.ndarray, lookahead: int) -> int:
    """Raw bytes held at once: a window's shards plus the next ``lookahead`` prefetched."""
    order = p.shard_order.tolist()
    position = {k: i for i, k in enumerate(order)}
    peak = 0
    for w in range(p.num_windows):
        shards = p.window_shards(w).tolist()
        furthest = max(position[k] for k in shards)
        held = set(shards).union(order[furthest + 1 : furthest + 1 + lookahead])
        peak = max(peak, int(sum(int(raw[k]) for k in held)))
    return peak


def plan_summary(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    seed: int = 0,
    epoch: int = 0,
    world_size: int = 1,
    window: int = DEFAULT_WINDOW,
    lookahead: int | None = None,
    cache_limit: int | str | None = None,
    show: int = 3,
) -> PlanSummary:
    """Summarize the epoch ``(seed, epoch)`` of every rank of ``world_size``.

    Reads the manifest only. ``window`` and ``lookahead`` are the reader's (``ds.iter``
    and ``roxxel.open`` defaults: None is the default lookahead, shrunk to fit
    ``cache_limit``); ``show`` is how many first shard URIs to list per rank.
    """
    store, manifest = load(url, storage_options)
    table = manifest.shards
    raw, stored = table.raw_size, table.stored_size
    largest = int(raw.max()) if len(table) else 0
    limit = parse_size(cache_limit)
    held = required_shards(len(table), held=window, lookahead=None)
    required = required_shards(len(table), held=held, lookahead=lookahead)
    if lookahead is None:
        lookahead = fitted_lookahead(limit, raw, held=held, default=DEFAULT_LOOKAHEAD)
    ranks = []
    for rank in range(world_size):
        p = plan(table.records, seed=seed, epoch=epoch, rank=rank, world_size=world_size, window=window)
        order = p.shard_order
        ranks.append(
            RankSummary(
                rank=rank,
                records=p.num_records,
                shards=len(order),
                first_shards=[str(table.uris[k]) for k in order[:show].tolist()],
                download_bytes=int(sum(stored[order].tolist())),
                raw_bytes=int(sum(raw[order].tolist())),
                peak_cache_bytes=_peak(p, raw, lookahead),
            )
        )
    return PlanSummary(
        url=store.base_url,
        seed=seed,
        epoch=epoch,
        world_size=world_size,
        window=window,
        lookahead=lookahead,
        shards=len(table),
        records=manifest.records,
        stored_bytes=int(sum(stored.tolist())),
        largest_shard_bytes=largest,
        required_cache_limit=required_bytes(raw, required),
        required_shards=required,
        cache_limit=limit,
        ranks=ranks,
    )
