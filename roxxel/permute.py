"""A keyed pseudo-random permutation of ``range(n)`` that is evaluated at any index.

``Permutation(n, key)(i)`` costs O(1) per index and O(1) memory whatever ``n`` is, so a
stream can resume at any step without replaying or materializing the order.

It is a Feistel network over mixed radix (the FE1 construction): an integer
``x < a*b`` is the pair ``(x // b, x % b)`` and each round maps ``(l, r)`` to
``r * a + (l + F(r)) mod a``, then swaps the radices. Every round is a bijection of
``range(a*b)``, so the whole network is one by construction. With ``a*b`` only about
``sqrt(n)`` above ``n``, cycle walking (re-encrypting the rare images ``>= n``) almost
never runs twice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

__all__ = ["Permutation"]

_ROUNDS = 4  # Luby-Rackoff: four rounds of a good round function give a strong PRP
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's mixing constants
_MUL2 = np.uint64(0x94D049BB133111EB)
_U31, _U32 = np.uint64(31), np.uint64(32)
_PIECE = 8192  # indices encrypted at once


class Permutation:
    """A bijection of ``range(n)`` determined by ``n`` and an integer key sequence.

    The key is turned into round keys by ``np.random.SeedSequence``, so equal inputs give
    equal permutations in every process, on every machine.
    """

    def __init__(self, n: int, key: Sequence[int]) -> None:
        if n < 0:
            raise ValueError(f"permutation size must be >= 0, got {n}")
        if n > 2**62:
            raise ValueError(f"permutation size must be <= 2**62, got {n}")
        self.n = n
        a = math.isqrt(max(n - 1, 0)) + 1  # a*b >= n, both < 2**32
        b = max(1, -(-n // a))
        self._radices = (np.uint64(a), np.uint64(b))
        seq = np.random.SeedSequence([int(k) for k in key])
        self._keys = seq.generate_state(_ROUNDS, dtype=np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        a, b = self._radices
        for k in self._keys:
            left = x // b
            right = x - left * b
            h = right ^ k
            h *= _MUL1  # wraps mod 2**64 on purpose
            h ^= h >> _U31
            h *= _MUL2
            f = ((h >> _U32) * a) >> _U32  # F(r) in range(a), without a division
            left += f  # < 2a; mod a: below a, left - a wraps around above left
            left = np.minimum(left, left - a)
            x = right * a + left
            a, b = b, a
        return x

    def __call__(self, index: np.ndarray | int) -> np.ndarray:
        """Images of ``index`` (scalar or array, each in ``range(n)``) as int64."""
        idx = np.asarray(index, dtype=np.int64)
        shape = idx.shape
        idx = idx.reshape(-1)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            raise IndexError(f"permutation index out of range(0, {self.n})")
        if self.n <= 1:
            return idx.reshape(shape)
        x = idx.astype(np.uint64)
        # In cache-sized pieces: each round's dozen array passes then stay in L2.
        y = np.concatenate([self._encrypt(x[i : i + _PIECE]) for i in range(0, len(x), _PIECE)] or [x])
        n = np.uint64(self.n)
        outside = y >= n
        while outside.any():
            y[outside] = self._encrypt(y[outside])
            outside = y >= n
        return y.astype(np.int64).reshape(shape)
