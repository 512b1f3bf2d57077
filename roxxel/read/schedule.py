"""Which source each position of a mixture reads: a periodic low-discrepancy schedule.

The weights are made integers ``n_0 .. n_(S-1)`` adding up to the period ``P`` (see
:func:`integer_weights`), so source ``i``'s share is exactly ``w_i = n_i / P``. One period
of the schedule is Tijdeman's solution of the chairman assignment problem (R. Tijdeman,
"The chairman assignment problem", Discrete Mathematics 32, 1980): at step ``t``
(``t = 1 .. P``), among the sources whose deficit ``w_i * t - c_i`` is at least
``1 / (2S - 2)``, the source with the earliest deadline ``(c_i + 1 - 1/(2S-2)) / w_i`` is
chosen (``c_i``: how often it was chosen before; ties to the lower index). Tijdeman
proved that then ``|c_i(t) - w_i * t| <= 1 - 1/(2S - 2)`` for every source and every
``t``. After ``P`` steps every deficit is 0 again (``c_i(P)`` is within less than 1 of the
integer ``n_i``), so the schedule repeats with period ``P`` and the bound holds for every
prefix of the endless schedule. A run of ``B`` consecutive positions is the difference
of two prefixes, so in any run source ``i`` appears within less than 2 of ``w_i * B``
times (within 1 when ``B`` is a multiple of ``P``).

Everything about a position is computed from one period's table: which source it reads
and how many times each source was read before it, in O(S) per position or vectorized
over a block, without replaying the positions before it.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from functools import lru_cache

import numpy as np

__all__ = ["MAX_PERIOD", "Schedule", "integer_weights"]

#: Runs of positions up to this long are read from a tiled copy of the period, as views.
RUN = 1 << 17

#: The largest period: weights that are not fractions with a common denominator up to this
#: are rounded to multiples of ``1 / MAX_PERIOD`` (largest remainders).
MAX_PERIOD = 1 << 16


def integer_weights(weights: list[float] | list[int] | list[Fraction]) -> tuple[int, ...]:
    """``weights`` (positive) as integers with the same ratios where they are fractions
    with a common denominator of at most :data:`MAX_PERIOD` after normalizing (``0.5,
    0.3, 0.2`` gives ``5, 3, 2``), else rounded to multiples of ``1 / MAX_PERIOD`` by
    largest remainders, every weight kept at least ``1 / MAX_PERIOD``."""
    if not weights:
        raise ValueError("a mixture needs at least one source")
    for w in weights:
        if isinstance(w, (bool, np.bool_)) or not isinstance(w, numbers.Real) or not math.isfinite(w) or w <= 0:
            raise ValueError(f"weights must be positive finite numbers, got {w!r}")
    weights = [w if isinstance(w, Fraction) else Fraction(int(w) if isinstance(w, numbers.Integral) else float(w))
               for w in weights]
    total = sum(weights)
    shares = [Fraction(w) / total for w in weights]
    # a float such as 0.3 is the nearest binary fraction to 3/10: read it as the fraction
    # it was meant to be when one with a small denominator is that close
    nice = [s.limit_denominator(MAX_PERIOD) for s in shares]
    if all(abs(n - s) < Fraction(1, 1 << 40) for n, s in zip(nice, shares)):
        period = math.lcm(*(n.denominator for n in nice))
        if period <= MAX_PERIOD and sum(nice) == 1:
            ints = [int(n * period) for n in nice]
            return _reduced(ints)
    scaled = [s * (MAX_PERIOD - len(shares)) for s in shares]
    ints = [1 + math.floor(x) for x in scaled]
    short = MAX_PERIOD - sum(ints)
    by_remainder = sorted(range(len(ints)), key=lambda i: (-(scaled[i] - math.floor(scaled[i])), i))
    for i in by_remainder[:short]:
        ints[i] += 1
    return _reduced(ints)


def _reduced(ints: list[int]) -> tuple[int, ...]:
    g = math.gcd(*ints)
    return tuple(n // g for n in ints)


class Schedule:
    """The endless schedule of integer weights ``n`` (see the module docstring).

    ``table[p]`` is the source of period position ``p``; ``before[i][p]`` how many times
    source ``i`` comes in period positions ``0..p-1``; ``occurrences[i]`` its positions in
    the period, ascending. Memory is O(P * S) for period P and S sources.
    """

    def __init__(self, n: tuple[int, ...]) -> None:
        if not n or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in n) or sum(n) > MAX_PERIOD:
            raise ValueError(f"integer weights must be positive and add up to at most {MAX_PERIOD}, got {n!r}")
        self.n = n
        self.period = sum(n)
        self.table = _period_table(n)
        starts = np.zeros((len(n), self.period + 1), dtype=np.int32)  # P <= MAX_PERIOD
        for i in range(len(n)):
            np.cumsum(self.table == i, out=starts[i, 1:])
        self.before = starts
        self.occurrences = [np.flatnonzero(self.table == i) for i in range(len(n))]
        # the period repeated past RUN more positions: any run of RUN is one slice of it
        self._tiled = np.tile(self.table, -(-(self.period + RUN) // self.period))
        self._tiled.flags.writeable = False
        self._grouped: dict[tuple[int, int], np.ndarray] = {}
        self.weights = tuple(Fraction(k, self.period) for k in n)

    def sources(self, lo: int, hi: int) -> np.ndarray:
        """The source of each position ``lo..hi-1`` (a read-only view when the run is at
        most :data:`RUN` long)."""
        start = lo % self.period
        if hi - lo <= RUN:
            return self._tiled[start : start + hi - lo]
        return self.table[np.arange(lo, hi, dtype=np.int64) % self.period]

    def grouped(self, lo: int, hi: int) -> np.ndarray:
        """The positions ``0..hi-lo-1`` of the run ``lo..hi-1`` grouped by source (a stable
        sort of :meth:`sources`): the same for every run of that length at that phase of
        the period, so the last few are kept (read-only)."""
        key = (lo % self.period, hi - lo)
        order = self._grouped.get(key)
        if order is None:
            order = np.argsort(self.sources(lo, hi), kind="stable")
            order.flags.writeable = False
            if len(self._grouped) >= 8:
                del self._grouped[next(iter(self._grouped))]
            self._grouped[key] = order
        return order

    def counts(self, t: int) -> np.ndarray:
        """How many times each source comes in positions ``0..t-1``."""
        cycles, rest = divmod(t, self.period)
        return np.asarray(self.n, dtype=np.int64) * cycles + self.before[:, rest].astype(np.int64)

    def position_of(self, i: int, k: int) -> int:
        """The position of source ``i``'s ``k``-th occurrence (from 0)."""
        cycles, rest = divmod(k, self.n[i])
        return cycles * self.period + int(self.occurrences[i][rest])

    def positions_of(self, i: int, ks: np.ndarray) -> np.ndarray:
        """:meth:`position_of` for an array of occurrence numbers."""
        cycles, rest = np.divmod(np.asarray(ks, dtype=np.int64), self.n[i])
        return cycles * self.period + self.occurrences[i][rest]


@lru_cache(maxsize=16)
def _period_table(n: tuple[int, ...]) -> np.ndarray:
    """One period of Tijdeman's schedule for integer weights ``n``, in exact integers.

    With ``P = sum(n)`` and ``m = 2S - 2``: source ``i`` may be chosen at step ``t`` when
    ``m * (n_i * t - c_i * P) >= P``, and the eligible source with the smallest
    ``(m * (c_i + 1) - 1) / n_i`` is chosen."""
    s, period = len(n), sum(n)
    table = np.zeros(period, dtype=np.uint8 if s <= 256 else np.int64)
    if s == 1:
        return table
    m = 2 * s - 2
    chosen = [0] * s
    order = range(s)
    for t in range(1, period + 1):
        best, best_num, best_den = -1, 0, 1
        for i in order:
            ni, ci = n[i], chosen[i]
            if m * (ni * t - ci * period) >= period:
                num = m * (ci + 1) - 1
                if best < 0 or num * best_den < best_num * ni:
                    best, best_num, best_den = i, num, ni
        if best < 0:  # Tijdeman's theorem says some source is always eligible
            raise RuntimeError(f"no source eligible at step {t} of the schedule of weights {n}")
        chosen[best] += 1
        table[t - 1] = best
    return table
