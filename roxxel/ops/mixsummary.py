"""A mixture's epoch, dry-run: what each rank reads and fetches of each source."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ..planner import DEFAULT_WINDOW
from ..read.mixiter import upcoming_shards
from ..read.mixplan import Topology
from ..read.mixture import Mixture, mix

__all__ = ["mixture_plan_summary", "mixture_warm_order"]


def mixture_warm_order(m: Mixture, ranks: Sequence[int] | None, world_size: int, seed: int | None,
                       epoch: int, window: int = DEFAULT_WINDOW) -> list[int]:
    """The mixture's shards (numbered across its sources) to fetch, in the order first
    needed: every shard of every source with ``ranks=None``, else those ranks' mixture
    plans interleaved rank by rank."""
    if ranks is None:
        return list(range(m.shard_offsets[-1]))
    if not ranks:
        raise ValueError("ranks must name at least one rank")
    orders = []
    for r in ranks:
        p = m._plan(epoch=epoch, topology=Topology(r, world_size, 0, 1), shuffle=True, window=window,
                    remainder="pad", seed=seed)
        orders.append(upcoming_shards(p, p.consumed(0), m.shard_offsets))
    merged: dict[int, None] = {}
    for position in range(max(map(len, orders), default=0)):
        for order in orders:
            if position < len(order):
                merged.setdefault(order[position])
    return list(merged)


def mixture_plan_summary(doc: str, storage_options: Mapping[str, Any] | None = None, *, seed: int | None = None,
                         epoch: int = 0, world_size: int = 1, window: int = DEFAULT_WINDOW) -> dict[str, Any]:
    """For each rank of ``world_size`` and each source of the mixture document ``doc``:
    records read in ``epoch``, distinct shards and their stored bytes (what the rank
    downloads of that source, at most)."""
    with mix(doc, storage_options=storage_options, lookahead=0) as m:
        ranks = []
        for r in range(world_size):
            p = m._plan(epoch=epoch, topology=Topology(r, world_size, 0, 1), shuffle=True, window=window,
                        remainder="pad", seed=seed)
            shards = np.asarray(upcoming_shards(p, p.consumed(0), m.shard_offsets), dtype=np.int64)
            read = p.consumed(p.length) - p.base
            per_source = []
            for i, url in enumerate(m.urls):
                lo, hi = m.shard_offsets[i], m.shard_offsets[i + 1]
                mine = shards[(shards >= lo) & (shards < hi)] - lo
                stored = int(np.asarray(m.manifests[i].shards.stored_size, dtype=np.int64)[mine].sum())
                per_source.append({"url": url, "records": int(read[i]), "shards": len(mine),
                                   "download_bytes": stored})
            ranks.append({"rank": r, "records": p.length, "sources": per_source})
        return {"mixture": doc, "seed": m.seed if seed is None else seed, "epoch": epoch, "world_size": world_size,
                "weights": [float(w) for w in m.weights], "policies": list(m.policies), "ranks": ranks}
