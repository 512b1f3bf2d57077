"""A keyed pseudo-random permutation of ``range(n)`` that is evaluated at any index.

``Permutation(n, key)(i)`` costs O(1) per index and O(1) memory whatever ``n`` is, so a
stream can resume at any step without replaying or materializing the order. It is a
balanced Feistel network over the smallest even-bit power-of-two domain that holds
``n``, with cycle walking to stay inside ``range(n)``: a bijection by construction.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["Permutation"]

_ROUNDS = 6
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer: a fast, well-distributed 64-bit hash (wraps mod 2**64)."""
    x = x * _MIX1
    x ^= x >> np.uint64(27)
    x = x * _MIX2
    x ^= x >> np.uint64(31)
    return x


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
        bits = max(2, (n - 1).bit_length())
        bits += bits & 1
        self._half = np.uint64(bits // 2)
        self._mask = np.uint64((1 << (bits // 2)) - 1)
        seq = np.random.SeedSequence([int(k) for k in key])
        self._keys = seq.generate_state(_ROUNDS, dtype=np.uint64)

    def _encrypt(self, x: np.ndarray) -> np.ndarray:
        half, mask = self._half, self._mask
        left, right = x >> half, x & mask
        with np.errstate(over="ignore"):  # the mixing multiplies wrap mod 2**64 on purpose
            for k in self._keys:
                f = _mix((right ^ k) * _GOLDEN) & mask
                left, right = right, left ^ f
        return (left << half) | right

    def __call__(self, index: np.ndarray | int) -> np.ndarray:
        """Images of ``index`` (scalar or array, each in ``range(n)``) as int64."""
        idx = np.asarray(index, dtype=np.int64)
        shape = idx.shape
        idx = idx.reshape(-1)
        if idx.size and (int(idx.min()) < 0 or int(idx.max()) >= self.n):
            raise IndexError(f"permutation index out of range(0, {self.n})")
        if self.n <= 1:
            return idx.reshape(shape)
        y = self._encrypt(idx.astype(np.uint64))
        n = np.uint64(self.n)
        outside = y >= n
        while outside.any():
            y[outside] = self._encrypt(y[outside])
            outside = y >= n
        return y.astype(np.int64).reshape(shape)
