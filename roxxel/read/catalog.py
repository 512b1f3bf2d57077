"""The shards a reader may need: where each one is stored and what it must be.

A :class:`ShardCatalog` numbers the shards of one or more datasets end to end, so that
one :class:`~roxxel.read.residency.Residency` can serve them all: shard ``g`` of the
catalog is shard ``g - offset`` of the dataset added at ``offset``. A shard's identity
in the cache is its checksum, never its number, so two datasets sharing a shard share
its cached copy.
"""

from __future__ import annotations

import logging
from bisect import bisect_right
from collections.abc import Callable

import numpy as np

from ..backends import Store
from ..cache import CachedShard, ShardCache
from ..cache.evict import OrderHint
from ..manifest import ShardTable
from ..manifest.compressions import COMPRESSIONS
from ..manifest.heads import parse_head
from ..manifest.parts import parse_parts
from .head import HeadFetch
from .partfetch import PartFetch

__all__ = ["Download", "ShardCatalog"]

log = logging.getLogger(__name__)

#: ``download(store, key, stored_size, sink)``: feed the object's bytes to ``sink`` in order.
Download = Callable[[Store, str, int, Callable[[bytes], object]], object]


class ShardCatalog:
    """The shards of the datasets added, numbered end to end in the order added."""

    def __init__(self) -> None:
        self._parts: list[tuple[Store, ShardTable]] = []
        self._starts = [0]
        self.raw_sizes = np.zeros(0, dtype=np.int64)
        self.stored_sizes = np.zeros(0, dtype=np.int64)
        self.checksums: list[str] = []

    @classmethod
    def of(cls, store: Store, table: ShardTable) -> ShardCatalog:
        """The catalog of one dataset's shards (numbered as in its manifest)."""
        catalog = cls()
        catalog.add(store, table)
        return catalog

    def add(self, store: Store, table: ShardTable) -> int:
        """Add a dataset's shards; returns the number its shard 0 has in the catalog."""
        offset = self._starts[-1]
        self._parts.append((store, table))
        self._starts.append(offset + len(table))
        self.raw_sizes = np.concatenate([self.raw_sizes, np.asarray(table.raw_size, dtype=np.int64)])
        self.stored_sizes = np.concatenate([self.stored_sizes, np.asarray(table.stored_size, dtype=np.int64)])
        self.checksums.extend(str(c) for c in table.checksums)
        return offset

    def __len__(self) -> int:
        return self._starts[-1]

    @property
    def remote(self) -> bool:
        """Whether any of the datasets is on a store whose shards download as ranged parts
        (:attr:`~roxxel.backends.Store.downloads_in_parts`)."""
        return any(store.downloads_in_parts for store, _ in self._parts)

    def _part(self, g: int) -> tuple[Store, ShardTable, int]:
        p = bisect_right(self._starts, g) - 1
        store, table = self._parts[p]
        return store, table, g - self._starts[p]

    def stored_size(self, g: int) -> int:
        """Shard ``g``'s size in the store, in bytes."""
        _, table, k = self._part(g)
        return int(table.stored_size[k])

    def label(self, g: int) -> str:
        """Shard ``g``'s URL, for messages."""
        store, table, k = self._part(g)
        return store.url(str(table.uris[k]))

    def fetch_head(self, g: int, share: int = 1, *, leads: bool = False) -> HeadFetch | None:
        """Shard ``g``'s head being fetched (see :mod:`roxxel.read.head`), if its manifest
        entry gives it one and its store downloads shards in parts (elsewhere a whole
        shard comes as soon as its head would); else None. ``share`` and ``leads``: as
        :class:`HeadFetch` takes them."""
        store, table, k = self._part(g)
        text = str(table.heads[k])
        if not text or not store.downloads_in_parts:
            return None
        records, size, head = int(table.records[k]), int(table.stored_size[k]), parse_head(text)
        if not HeadFetch.fits(records, size, head):
            log.debug("%s: its head is too large to fetch apart", store.url(str(table.uris[k])))
            return None
        return HeadFetch(store, str(table.uris[k]), records, size, head, share=share, leads=leads)

    def fetch_part(self, g: int, record: int) -> PartFetch | None:
        """The part that record ``record`` of shard ``g`` lies in being fetched (see
        :mod:`roxxel.read.partfetch`), if its manifest entry gives it a head and
        parts and its store downloads shards in parts; else None."""
        store, table, k = self._part(g)
        head, parts = str(table.heads[k]), str(table.parts[k])
        if not head or not parts or not store.downloads_in_parts:
            return None
        records, size, split = int(table.records[k]), int(table.stored_size[k]), parse_parts(parts)
        if not PartFetch.fits(records, size, split):
            log.debug("%s: its parts are too large to fetch apart", store.url(str(table.uris[k])))
            return None
        return PartFetch(store, str(table.uris[k]), records, size, parse_head(head), split, record)

    def get(
        self, g: int, cache: ShardCache, download: Download, order_hint: OrderHint
    ) -> tuple[CachedShard, bool]:
        """Shard ``g`` in ``cache``, held, and whether it was downloaded (else it was cached).

        If it must be downloaded, ``download(store, key, stored_size, sink)`` feeds its
        stored bytes to ``sink`` in order (it may raise to stop)."""
        store, table, k = self._part(g)
        uri, size = str(table.uris[k]), int(table.stored_size[k])
        fetched = False

        def fetch(sink: Callable[[bytes], object]) -> None:
            nonlocal fetched
            fetched = True
            download(store, uri, size, sink)

        handle = cache.get(
            self.checksums[g],
            fetch,
            stored_size=size,
            raw_size=int(table.raw_size[k]),
            compression=COMPRESSIONS[int(table.compression[k])],
            record_count=int(table.records[k]),
            label=store.url(uri),
            order_hint=order_hint,
        )
        return handle, fetched
