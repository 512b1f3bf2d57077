"""The plan's faster computations give the plan the direct computation gives, bit for bit:
the permutation's table-driven rounds (``Permutation.__call__``) against its hashed rounds
(``Permutation._hashed``), the window head's ranking by a sort per stage against one
lexsort, and a stage's lookups as in-place ``take``s against fancy indexing, over many
seeds, sizes and topologies."""

from __future__ import annotations

import numpy as np
import pytest

import roxxel.planner
from roxxel.permute import Permutation
from roxxel.planner import plan


@pytest.mark.parametrize("n", [2, 3, 7, 100, 4097, 65_536, 79_245, 10**6, 2**31 - 5, 2**31 + 7, 3 * 10**9, 2**40])
def test_tabled_rounds_give_the_hashed_images(n):
    rng = np.random.default_rng(n)
    for key in ([0], [1, 2, 3], [7, 0, 1, 2, 5, 1, 0, 9]):
        p = Permutation(n, key)
        if n <= 100_000:
            idx = np.arange(n)
        else:  # a few runs and scattered indices, as a stream and a resume ask for them
            idx = np.concatenate([np.arange(5000), rng.integers(0, n, 20_000), np.arange(n - 3000, n)])
        assert np.array_equal(p(idx), p._hashed(idx))
        assert int(p(idx[-1])) == int(p._hashed(idx[-1]))  # a scalar
        if n <= 100_000:
            assert np.array_equal(np.sort(p(idx)), idx)


class _Hashed(Permutation):
    """The permutation as the planner computed it before tables: F hashed every time."""

    def __call__(self, index):
        return self._hashed(index)


def _lexsorted(values: np.ndarray, cuts: np.ndarray) -> np.ndarray:
    """The window head's order as the planner computed it before: one lexsort."""
    head = int(cuts[-1]) if len(cuts) else 0
    stage = np.searchsorted(cuts[:-1], np.arange(head), side="right") - 1
    return np.lexsort((values[:head], stage))


def _fancy_in_stage(self, k: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
    """A stage's elements as the planner computed them before: fancy indexing throughout."""
    st = self._tables(k)
    q = np.arange(lo, hi, dtype=np.int64)
    if isinstance(st.perm, np.ndarray):
        q = st.perm[q]
    elif st.perm is not None:
        q = st.perm(q)
    run = st.lut[q >> st.shift]
    over = q >= st.ends[run]
    while over.any():
        run += over
        over = q >= st.ends[run]
    if self.key is None:
        pick = q + st.add[run]
    else:
        pick = (q * st.stride[run] + st.add[run]) % st.n[run]
    return st.real[run], st.begin[run] + pick


def windows(p) -> list[tuple[np.ndarray, np.ndarray]]:
    out = []
    for w in range(p.num_windows):
        order = p.window_order(w)
        out.append(order.at(0, len(order)))
        lo = len(order) // 3
        out.append(order.at(lo, min(lo + 1000, len(order))))  # a block from mid-window, as a resume reads
    return out


def test_the_plan_is_the_one_the_direct_computation_gives(monkeypatch):
    rng = np.random.default_rng(18)
    configs = []
    for _ in range(60):
        counts = rng.integers(1, int(rng.choice([4, 60, 3000, 30_000])), size=int(rng.integers(1, 30)))
        world = int(rng.integers(1, 5))
        workers = int(rng.integers(1, 3))
        configs.append((counts, {
            "seed": int(rng.integers(0, 10**6)), "epoch": int(rng.integers(0, 3)), "world_size": world,
            "rank": int(rng.integers(0, world)), "num_workers": workers, "worker": int(rng.integers(0, workers)),
            "window": int(rng.choice([1, 3, 16, 64])), "remainder": str(rng.choice(["pad", "drop"])),
            "shuffle": bool(rng.random() < 0.9), "reshuffle": int(rng.choice([0, 0, 2])),
        }))
    fast = [windows(plan(counts, **kw)) for counts, kw in configs]
    monkeypatch.setattr(roxxel.planner, "Permutation", _Hashed)
    monkeypatch.setattr(roxxel.planner, "_rank_within", _lexsorted)
    monkeypatch.setattr(roxxel.planner.WindowOrder, "_in_stage", _fancy_in_stage)
    direct = [windows(plan(counts, **kw)) for counts, kw in configs]
    assert sum(len(w) for w in fast) > 100
    for got, want in zip(fast, direct):
        for (slot, local), (slot_ref, local_ref) in zip(got, want, strict=True):
            assert np.array_equal(slot, slot_ref) and np.array_equal(local, local_ref)
