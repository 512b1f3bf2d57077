"""A keyed pseudo-random permutation of ``range(n)`` that is evaluated at any index.

``Permutation(n, key)(i)`` costs O(1) per index and O(1) memory whatever ``n`` is, so a
stream can resume at any step without replaying or materializing the order.

It is a Feistel network over mixed radix (the FE1 construction): an integer
``x < a*b`` is the pair ``(x // b, x % b)`` and each round maps ``(l, r)`` to
``r * a + (l + F(r)) mod a``, then swaps the radices. Every round is a bijection of
``range(a*b)``, so the whole network is one by construction. With ``a*b`` only about
``sqrt(n)`` above ``n``, cycle walking (re-encrypting the rare images ``>= n``) almost
never runs twice.

The round function ``F`` of a round only ever sees values below that round's second
radix (about ``sqrt(n)``), so a call over many indices evaluates it once over that whole
range into a table and looks it up; for ``n <= 2**31`` every intermediate value then fits
in 32 bits, and the rounds run on ``uint32``. Both ways give the same images bit for bit
(``_hashed`` is the direct evaluation, kept as the reference the tests compare with).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

__all__ = ["Permutation"]

_ROUNDS = 4  # Luby-Rackoff: four rounds of a good round function give a strong PRP
_MUL1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's mixing constants
_MUL2 = np.uint64(0x94D049BB133111EB)
_U31, _U32 = np.uint64(31), np.uint64(32)
_PIECE = 8192  # indices encrypted at once
_TABLE_RADIX = 1 << 16  # radices up to this (n up to about 2**32) use tables of F
_NARROW = 1 << 31  # sizes up to this keep every value of the rounds below 2**32


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
        self._tables: list[np.ndarray] | None = None  # F of each round over its domain

    def _round_tables(self) -> list[np.ndarray]:
        """Each round's ``F`` over its whole domain (the round's second radix), as the
        rounds of :meth:`_encrypt` compute it, in the dtype the table rounds run on."""
        if self._tables is None:
            a, b = self._radices
            dtype = np.uint32 if self.n <= _NARROW else np.uint64
            tables = []
            for k in self._keys:
                h = np.arange(int(b), dtype=np.uint64) ^ k
                h *= _MUL1
                h ^= h >> _U31
                h *= _MUL2
                tables.append((((h >> _U32) * a) >> _U32).astype(dtype))
                a, b = b, a
            self._tables = tables
        return self._tables

    def _encrypt_tabled(self, x: np.ndarray) -> np.ndarray:
        """:meth:`_encrypt` of ``x`` (of the tables' dtype; overwritten) with ``F`` looked up."""
        dtype = x.dtype.type
        a, b = (dtype(r) for r in self._radices)
        left, right, tmp = np.empty_like(x), np.empty_like(x), np.empty_like(x)
        for table in self._round_tables():
            np.floor_divide(x, b, out=left)
            np.multiply(left, b, out=tmp)
            np.subtract(x, tmp, out=right)
            np.take(table, right, out=tmp, mode="clip")  # F(right) (right < len(table): no check)
            left += tmp  # < 2a; mod a as in _encrypt
            np.subtract(left, a, out=tmp)
            np.minimum(left, tmp, out=left)
            np.multiply(right, a, out=x)
            x += left
            a, b = b, a
        return x

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
        a, b = self._radices
        if max(a, b) <= _TABLE_RADIX and (self._tables is not None or 4 * len(idx) >= a + b):
            # (tables cost about a + b evaluations of F; uint32 rounds stay in L2 in larger pieces)
            narrow = self.n <= _NARROW
            x = idx.astype(np.uint32 if narrow else np.uint64)
            y = self._walked(x, self._encrypt_tabled, 4 * _PIECE if narrow else _PIECE)
        else:
            y = self._walked(idx.astype(np.uint64), self._encrypt, _PIECE)
        return y.astype(np.int64).reshape(shape)

    def _hashed(self, index: np.ndarray | int) -> np.ndarray:
        """:meth:`__call__` evaluating ``F`` directly, never from tables: the reference."""
        idx = np.asarray(index, dtype=np.int64)
        if self.n <= 1:
            return idx
        y = self._walked(idx.reshape(-1).astype(np.uint64), self._encrypt, _PIECE)
        return y.astype(np.int64).reshape(idx.shape)

    def _walked(self, x: np.ndarray, encrypt: Callable[[np.ndarray], np.ndarray], piece: int) -> np.ndarray:
        """The images of ``x`` (1-D, in range(n), overwritten) under the network, cycle
        walked into range(n)."""
        # In cache-sized pieces: each round's array passes then stay in L2.
        if len(x) <= piece:
            y = encrypt(x)
        else:
            y = np.concatenate([encrypt(x[i : i + piece]) for i in range(0, len(x), piece)])
        n = y.dtype.type(self.n)
        outside = y >= n
        while outside.any():
            y[outside] = encrypt(y[outside])
            outside = y >= n
        return y
