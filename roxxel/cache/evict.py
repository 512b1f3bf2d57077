"""Which cached shards exist, and in which order to evict them.

Pure functions over a directory listing: no locks are taken here. The cache removes the
shards in the order given by :func:`eviction_order`, skipping those in use.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping
from typing import NamedTuple, Union

from .names import key_from_filename

__all__ = ["CacheEntry", "OrderHint", "eviction_order", "scan_shards"]

#: Next-use position of a shard (by checksum) in the caller's read order: a mapping or a
#: callable. Smaller is sooner; None or missing means the shard is not needed again.
OrderHint = Union[Mapping[str, int], Callable[[str], Union[int, None]]]


class CacheEntry(NamedTuple):
    """One published shard: its checksum, size in bytes, and last use (``st_mtime``)."""

    checksum: str
    size: int
    mtime: float


def scan_shards(shards_dir: str, records_dir: str | None = None) -> list[CacheEntry]:
    """The regular files in ``shards_dir`` whose names are shard names.

    Other entries (symlinks, directories, foreign names) are not shards and not counted.
    A shard's last use is the mtime of its record of verification in ``records_dir``
    (``<name>.json``), which readers touch; without one (never verified by this
    release), the shard's own mtime, which older releases touched.
    """
    used = _mtimes(records_dir) if records_dir is not None else {}
    found = []
    with os.scandir(shards_dir) as entries:
        for entry in entries:
            key = key_from_filename(entry.name)
            if key is None:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:  # evicted by another process meanwhile
                continue
            if stat.S_ISREG(st.st_mode):
                last = used.get(key.stem + ".json", st.st_mtime)
                found.append(CacheEntry(key.checksum, st.st_size, last))
    return found


def _mtimes(directory: str) -> dict[str, float]:
    """Name -> mtime of the regular files in ``directory`` (empty if it is missing)."""
    out = {}
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    out[entry.name] = st.st_mtime
    except FileNotFoundError:
        pass
    return out


def eviction_order(
    entries: list[CacheEntry], order_hint: OrderHint | None
) -> list[CacheEntry]:
    """``entries`` sorted most-evictable first.

    With an ``order_hint``: shards never needed again first, then the one whose next use
    is furthest away (Belady's choice); ties go to the least recently used. Without one:
    least recently used first.
    """
    if order_hint is None:
        return sorted(entries, key=lambda e: (e.mtime, e.checksum))
    lookup = order_hint.get if isinstance(order_hint, Mapping) else order_hint

    def rank(entry: CacheEntry) -> tuple[int, int, float, str]:
        position = lookup(entry.checksum)
        if position is None:
            return (0, 0, entry.mtime, entry.checksum)
        return (1, -position, entry.mtime, entry.checksum)

    return sorted(entries, key=rank)
