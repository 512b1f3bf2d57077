"""roxxel.ops.plan_summary: a dry run of an epoch that matches the planner."""

from __future__ import annotations

import numpy as np

import roxxel
from roxxel import ops
from roxxel.planner import plan


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 1500)), dtype=np.uint8).tobytes() for _ in range(n)]


def test_the_summary_matches_each_rank_plan(tmp_path):
    url = str(tmp_path / "ds")
    with roxxel.Writer(url, shard_bytes=8 * 1024, compression="zstd") as w:
        w.extend(make_records(300))
    table = w.manifest.shards
    summary = ops.plan_summary(url, seed=5, epoch=1, world_size=3, window=4, lookahead=2, show=2)
    assert (summary.shards, summary.records, summary.world_size) == (len(table), 300, 3)
    assert summary.largest_shard_bytes == int(table.raw_size.max())
    assert summary.required_cache_limit == int(np.sort(table.raw_size)[-6:].sum())  # the 4 + 2 largest
    assert summary.limit_ok is None
    for r in summary.ranks:
        p = plan(table.records, seed=5, epoch=1, rank=r.rank, world_size=3, window=4)
        order = p.shard_order
        assert r.records == p.num_records == 100
        assert r.shards == len(order)
        assert r.first_shards == [str(table.uris[k]) for k in order[:2]]
        assert r.download_bytes == int(table.stored_size[order].sum())
        assert r.raw_bytes == int(table.raw_size[order].sum())
        biggest_window = max(int(table.raw_size[p.window_shards(w)].sum()) for w in range(p.num_windows))
        assert biggest_window <= r.peak_cache_bytes <= r.raw_bytes
    assert summary.to_dict()["ranks"][0]["rank"] == 0


def test_a_cache_limit_is_checked_against_what_iter_requires(tmp_path):
    url = str(tmp_path / "ds")
    with roxxel.Writer(url, shard_bytes=8 * 1024) as w:
        w.extend(make_records(100))
    need = ops.plan_summary(url, world_size=2).required_cache_limit
    assert ops.plan_summary(url, world_size=2, cache_limit=need).limit_ok is True
    assert ops.plan_summary(url, world_size=2, cache_limit=need - 1).limit_ok is False
    assert ops.plan_summary(url, world_size=2, cache_limit="1GB").cache_limit == 10**9
