"""A small cache_limit adapts the lookahead instead of refusing (issue 15, item 8).

One rule sizes a limited cache everywhere (roxxel.cache.sizing): a reader mapping ``held``
shards and prefetching ``lookahead`` needs room for that many of the largest shards.
"""

from __future__ import annotations

import logging
import re
import pickle

import numpy as np
import pytest

import roxxel
from roxxel import ops
from roxxel.cache.sizing import fit_lookahead, required_bytes, shards_that_fit
from roxxel.cache.sizing import mapped_at_most, prefix_that_fits
from roxxel.errors import CacheError


def records(n: int, size: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=size, dtype=np.uint8).tobytes() for _ in range(n)]


@pytest.fixture
def ten_shards(tmp_path) -> tuple[str, list[bytes], np.ndarray]:
    """The issue's dataset: 10 shards of about 1 MB, about 10 MB in all."""
    url = str(tmp_path / "ds")
    recs = records(990, 10_000)
    with roxxel.Writer(url, shard_bytes=1_000_000) as w:
        w.extend(recs)
    sizes = w.manifest.shards.raw_size
    assert len(sizes) == 10
    return url, recs, sizes


def reads_every_record(ds, recs: list[bytes], **iter_args) -> None:
    assert all(bytes(ds[i]) == recs[i] for i in range(len(recs)))
    assert [bytes(r) for r in ds] == recs
    assert sorted(bytes(r) for r in ds.iter(seed=3, **iter_args)) == sorted(recs)


def test_a_limit_of_two_shards_opens_with_a_shrunk_lookahead(ten_shards, tmp_path, caplog):
    url, recs, sizes = ten_shards
    limit = required_bytes(sizes, 2)
    with caplog.at_level(logging.INFO, logger="roxxel.cache"):
        ds = roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=limit)
    with ds:
        assert ds.lookahead == 1
        reads_every_record(ds, recs, window=1)
    shrunk = [r for r in caplog.records if re.search(r"lookahead shrunk from \d+ to 1 ", r.getMessage())]
    assert shrunk and shrunk[0].levelno == logging.INFO


def test_a_limit_that_holds_the_whole_dataset_is_accepted(ten_shards, tmp_path):
    url, recs, sizes = ten_shards
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=int(sizes.sum())) as ds:
        assert ds.lookahead == 4  # nothing is ever evicted: no reason to shrink it
        reads_every_record(ds, recs)  # the default window of 16 > 10 shards


def test_a_limit_below_one_shard_is_refused_stating_the_minimum(ten_shards, tmp_path):
    url, _, sizes = ten_shards
    largest = int(sizes.max())
    with pytest.raises(CacheError, match=rf"cache limit {largest - 1} bytes is too small for {url}: "
                                         rf"at least {largest} bytes are needed \(its largest shard"):
        roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=largest - 1)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=largest) as ds:
        assert ds.lookahead == 0
        assert bytes(ds[989]) == ten_shards[1][989]


def test_a_chosen_lookahead_is_kept_or_refused_never_shrunk(ten_shards, tmp_path):
    url, _, sizes = ten_shards
    limit = required_bytes(sizes, 2)
    with pytest.raises(CacheError, match=rf"with lookahead=4: at least {required_bytes(sizes, 5)} bytes"):
        roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=limit, lookahead=4)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=limit, lookahead=1) as ds:
        assert ds.lookahead == 1
        with pytest.raises(CacheError, match=rf"with lookahead=1: at least {required_bytes(sizes, 3)} bytes"):
            ds.iter(window=2)


def test_a_window_shrinks_an_unchosen_lookahead_and_refuses_what_cannot_fit(ten_shards, tmp_path, caplog):
    url, recs, sizes = ten_shards
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=required_bytes(sizes, 5)) as ds:
        assert ds.lookahead == 4
        with caplog.at_level(logging.INFO, logger="roxxel.cache"):
            assert sorted(bytes(r) for r in ds.iter(seed=1, window=3)) == sorted(recs)
        assert ds.lookahead == 2
        assert "lookahead shrunk from 4 to 2" in caplog.text
        need = required_bytes(sizes, 6)
        with pytest.raises(CacheError, match=rf"window=6: at least {need} bytes are needed .*lower window="):
            ds.iter(window=6)


def test_a_pickled_dataset_fits_its_lookahead_again(ten_shards, tmp_path):
    url, recs, sizes = ten_shards
    limit = required_bytes(sizes, 3)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), cache_limit=limit) as ds, \
            pickle.loads(pickle.dumps(ds)) as copy:
        assert copy.lookahead == ds.lookahead == 2
        assert bytes(copy[5]) == recs[5]


def test_plan_requires_what_iter_requires(ten_shards):
    url, _, sizes = ten_shards
    whole = ops.plan_summary(url, world_size=1, cache_limit=int(sizes.sum()))
    assert whole.limit_ok is True and whole.lookahead == 4
    assert whole.required_cache_limit == int(sizes.sum()) and whole.required_shards == 10
    small = ops.plan_summary(url, world_size=1, window=2, cache_limit=required_bytes(sizes, 3))
    assert small.limit_ok is True and small.lookahead == 1
    assert small.required_cache_limit == required_bytes(sizes, 2)
    chosen = ops.plan_summary(url, world_size=1, window=2, lookahead=4, cache_limit=required_bytes(sizes, 3))
    assert chosen.limit_ok is False and chosen.required_cache_limit == required_bytes(sizes, 6)


@pytest.mark.parametrize(("limit", "fit"), [(0, 0), (49, 0), (50, 1), (89, 1), (90, 2), (109, 2), (110, 3), (119, 3), (120, 4), (10**9, 4)])
def test_shards_that_fit_counts_the_largest_first(limit, fit):
    sizes = [10, 50, 20, 40]
    assert shards_that_fit(limit, sizes) == fit
    assert required_bytes(sizes, fit) <= limit
    assert fit == len(sizes) or required_bytes(sizes, fit + 1) > limit


def test_fit_lookahead_without_a_limit_or_shards_keeps_the_lookahead():
    assert fit_lookahead(None, [10**12], lookahead=None, default=4, what="x") == 4
    assert fit_lookahead(None, [10**12], lookahead=7, default=4, what="x") == 7
    assert fit_lookahead(10, [], lookahead=None, default=4, what="x") == 4


def test_mapped_shards_leave_room_for_one_more_download():
    sizes = [10, 50, 20, 40]  # the largest first: 50, 40, 20, 10
    assert mapped_at_most(None, sizes, 64) == 64 and mapped_at_most(10, [], 64) == 64
    assert mapped_at_most(120, sizes, 64) == 3  # all 4 fit: one is left for a download
    assert mapped_at_most(110, sizes, 64) == 2 and mapped_at_most(110, sizes, 1) == 1
    assert mapped_at_most(50, sizes, 64) == 1  # never below one: a read maps a shard


def test_a_warm_up_takes_the_longest_prefix_that_fits():
    assert prefix_that_fits(60, [10, 50, 20]) == 2
    assert prefix_that_fits(59, [10, 50, 20]) == 1
    assert prefix_that_fits(5, [10]) == 0 and prefix_that_fits(5, []) == 0
