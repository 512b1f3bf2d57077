"""How many shards a limited cache holds, and the lookahead that fits under it.

One rule, used by ``roxxel.open``, ``ds.iter``, the dataset's mapping cap and
``roxxel plan``: a reader that maps ``held`` shards at once and prefetches ``lookahead``
more needs room for that many shards whichever they are, so the sum of the sizes of the
``held + lookahead`` largest shards (of all of them when there are fewer). A limit at
least the dataset's total raw size therefore always fits. A lookahead the caller did not
choose shrinks to fit the limit; only a limit that cannot hold what one read maps is
refused.
"""

from __future__ import annotations

import logging
from typing import NoReturn

import numpy as np
import numpy.typing as npt

from ..errors import CacheError

__all__ = [
    "fit_lookahead", "fitted_lookahead", "mapped_at_most", "min_limit", "prefix_that_fits", "required_bytes",
    "required_shards", "shards_that_fit",
]

log = logging.getLogger(__name__)


def _largest_first(raw_sizes: npt.ArrayLike) -> np.ndarray:
    sizes = np.asarray(raw_sizes, dtype=np.int64).ravel()
    if len(sizes) and int(sizes.min()) < 0:
        raise ValueError(f"shard sizes must be >= 0, got {int(sizes.min())}")
    return np.sort(sizes)[::-1]


def required_bytes(raw_sizes: npt.ArrayLike, shards: int) -> int:
    """Bytes a cache needs to hold any ``shards`` of these shards at once: the sum of the
    ``shards`` largest raw sizes (of all of them when there are fewer)."""
    if isinstance(shards, bool) or not isinstance(shards, (int, np.integer)) or shards < 0:
        raise ValueError(f"shards is {shards!r}, expected an int >= 0")
    return int(_largest_first(raw_sizes)[: int(shards)].sum())


def required_shards(total: int, *, held: int, lookahead: int | None) -> int:
    """How many of ``total`` shards a reader needs room for: the ``held`` it maps at once
    plus a chosen ``lookahead`` (an unchosen one, None, shrinks to fit the limit instead)."""
    return min(total, held + (lookahead or 0))


def shards_that_fit(limit: int, raw_sizes: npt.ArrayLike) -> int:
    """How many shards always fit in ``limit`` bytes, whichever they are: the largest
    ``n`` with ``required_bytes(raw_sizes, n) <= limit``."""
    totals = np.cumsum(_largest_first(raw_sizes))
    return int(np.searchsorted(totals, limit, side="right"))


def mapped_at_most(limit: int | None, raw_sizes: npt.ArrayLike, wanted: int) -> int:
    """How many shards a reader may keep mapped (and so locked in the cache) at once:
    ``wanted``, or fewer under ``limit`` so that the cache keeps room for one more shard
    than are locked (else no download could make room by evicting); at least 1."""
    sizes = np.asarray(raw_sizes)
    if limit is None or not len(sizes):
        return wanted
    return max(1, min(wanted, shards_that_fit(limit, sizes) - 1))


def prefix_that_fits(limit: int, raw_sizes: npt.ArrayLike) -> int:
    """How many of these shards, taken in order, fit in ``limit`` bytes together: the
    longest prefix whose sizes sum to at most ``limit`` (a warm-up fetches no more)."""
    totals = np.cumsum(np.asarray(raw_sizes, dtype=np.int64).ravel())
    return int(np.searchsorted(totals, limit, side="right"))


def fitted_lookahead(limit: int | None, raw_sizes: npt.ArrayLike, *, held: int, default: int) -> int:
    """The lookahead an unchosen ``default`` becomes under ``limit`` with ``held`` shards
    mapped: ``default``, or fewer if that many more shards do not fit (never below 0)."""
    sizes = np.asarray(raw_sizes)
    if limit is None or not len(sizes):
        return default
    fits = shards_that_fit(limit, sizes)
    if fits >= len(sizes):  # the whole dataset fits: nothing is ever evicted
        return default
    return max(0, min(default, fits - held))


def fit_lookahead(
    limit: int | None,
    raw_sizes: npt.ArrayLike,
    *,
    lookahead: int | None,
    default: int,
    held: int = 1,
    what: str,
    fix: str = "raise cache_limit",
) -> int:
    """The lookahead a reader of ``what`` mapping ``held`` shards at once uses under ``limit``.

    ``lookahead=None`` (not chosen) is ``default``, shrunk to fit the limit (logged at
    INFO). A chosen lookahead is kept if it fits. Raises :class:`CacheError` stating the
    minimum limit when the ``held`` shards do not fit, or the chosen lookahead does not.
    """
    sizes = np.asarray(raw_sizes)
    if limit is None or not len(sizes):
        return default if lookahead is None else lookahead
    held = required_shards(len(sizes), held=held, lookahead=None)
    if lookahead is not None:
        count = required_shards(len(sizes), held=held, lookahead=lookahead)
        if required_bytes(sizes, count) <= limit:
            return lookahead
        _refuse(limit, sizes, count, f"{what} with lookahead={lookahead}",
                f"{held} mapped + {lookahead} prefetched",
                f"{fix}, lower lookahead, or leave lookahead unset to fit it to the limit")
    if required_bytes(sizes, held) > limit:
        why = "one read maps a whole shard" if held == 1 else f"up to {held} shards are mapped at once"
        _refuse(limit, sizes, held, what, why, fix)
    fitted = fitted_lookahead(limit, sizes, held=held, default=default)
    if fitted < default:
        log.info("%s: lookahead shrunk from %d to %d shard(s) to fit cache_limit %d bytes "
                 "(%d of its largest shards fit; pass lookahead= to choose it)",
                 what, default, fitted, limit, shards_that_fit(limit, sizes))
    return fitted


def _refuse(limit: int, sizes: np.ndarray, count: int, what: str, why: str, fix: str) -> NoReturn:
    need = required_bytes(sizes, count)
    which = "its largest shard" if count == 1 else f"its {count} largest shards"
    raise CacheError(
        f"cache limit {limit} bytes is too small for {what}: at least {need} bytes are needed "
        f"({which}: {why}); {fix}"
    )


def min_limit(largest_shard_raw_size: int, lookahead: int) -> int:
    """The smallest limit for shards of up to ``largest_shard_raw_size`` bytes read with
    a chosen ``lookahead``: the rule above when every shard is that large."""
    if largest_shard_raw_size < 0 or lookahead < 0:
        raise ValueError(
            f"largest shard size {largest_shard_raw_size} and lookahead {lookahead} must be >= 0"
        )
    return required_bytes([largest_shard_raw_size] * (lookahead + 1), lookahead + 1)
