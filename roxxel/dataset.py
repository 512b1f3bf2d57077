"""``roxxel.open``: a dataset in an object store, read through the node-local cache.

Opening reads the manifest only; ``len`` and shard boundaries come from it. A record
access maps its shard, fetching it into the cache first if needed (blocking on that one
shard only); iteration keeps the next shards arriving in the background. Every shard is
verified (size, checksum, bounded decompression, footer) before it is mapped.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from concurrent.futures import CancelledError
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from .backends import Store
from .cache import CachedShard, ShardCache, fit_lookahead, record_dataset_use, shards_that_fit
from .downloader import DownloadCancelled, Downloader
from .errors import CacheError, ShardFormatError
from .format import FOOTER_SIZE, OFFSET_SIZE, MappedShard, parse_footer
from .iteration import IterState, RecordIterator, check_resumable, detect_topology, new_state
from .manifest import COMPRESSIONS, Manifest, ShardTable
from .manifest.io import dataset_store, read_manifest
from .planner import DEFAULT_WINDOW
from .records import ShardedRecords
from .tokens import TokenWindows, token_batches
from .views import RecordViews

__all__ = ["Dataset", "open"]

log = logging.getLogger(__name__)

DEFAULT_LOOKAHEAD = 4
DEFAULT_DOWNLOAD_WORKERS = 4
MAPPED_SHARDS = 64


def open(  # noqa: A001 - the public name is roxxel.open
    url: str,
    cache_dir: str | None = None,
    cache_limit: int | str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    lookahead: int | None = None,
    download_workers: int = DEFAULT_DOWNLOAD_WORKERS,
    store: Store | None = None,
    verify: str = "changed",
) -> Dataset:
    """Open the dataset at ``url`` (its prefix or its ``manifest.json``).

    Only the manifest is read. ``cache_dir`` defaults to ``$ROXXEL_CACHE_DIR`` or
    ``~/.cache/roxxel``; ``cache_limit`` (bytes, or a string like ``"50GB"``) bounds it.
    ``lookahead`` shards (default 4, fewer if ``cache_limit`` needs it) are fetched ahead
    of iteration by ``download_workers`` threads. A limit below the largest shard (what
    one read maps), or below what a chosen ``lookahead`` needs, raises
    :class:`~roxxel.errors.CacheError` stating the minimum. A cached shard is hashed
    again before it is mapped when it changed since it was verified (``verify="changed"``)
    or, with ``verify="always"``, also the first time this process maps it.
    """
    store = store if store is not None else dataset_store(url, storage_options)
    manifest = read_manifest(store)
    cache = ShardCache(cache_dir, cache_limit, verify=verify)
    ds = Dataset(store, manifest, cache, lookahead=lookahead, download_workers=download_workers)
    record_dataset_use(cache, store.base_url, manifest)
    return ds


_LIVE: weakref.WeakSet[Dataset] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by one of the parent's threads at the fork would stay locked forever.
    for ds in list(_LIVE):
        ds._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


class Dataset(ShardedRecords):
    """The records of a published dataset; ``ds[i]`` is a zero-copy ``uint8`` view.

    Mapped shards hold a shared lock in the cache, so no process evicts them while they
    are in use; at most 64 shards stay mapped (fewer if ``cache_limit`` is small), the
    oldest unmapped first. Views already handed out stay valid after their shard is
    unmapped.
    """

    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        cache: ShardCache,
        *,
        lookahead: int | None = None,
        download_workers: int = DEFAULT_DOWNLOAD_WORKERS,
    ) -> None:
        self.store = store
        self.url = store.base_url
        self.manifest = manifest
        self.cache = cache
        self._chosen_lookahead = lookahead  # None: shrunk to fit the cache limit as needed
        self.lookahead = fit_lookahead(cache.limit, manifest.shards.raw_size, lookahead=lookahead,
                                       default=DEFAULT_LOOKAHEAD, what=self.url)
        self._download_workers = download_workers
        self._set_shards(manifest.shards.records)
        self._handles: dict[int, CachedShard] = {}
        self._mapped: deque[int] = deque()
        # Mapped shards cost only address space and two descriptors each; keeping many
        # makes random access cheap. Each one is locked in the cache while mapped.
        self._max_mapped = max(MAPPED_SHARDS, self.lookahead + 1)
        if cache.limit is not None and len(manifest.shards):
            # Leave the cache room for one more shard than this dataset keeps mapped (and
            # so locked), or no download could make room by evicting.
            fits = shards_that_fit(cache.limit, manifest.shards.raw_size)
            self._max_mapped = max(1, min(self._max_mapped, fits - 1))
        self._mapping_cap = self._max_mapped if cache.limit is not None else self.num_shards
        self._downloader: Downloader | None = None
        self._next_use: dict[str, int] = {}
        self._later: dict[str, int] = {}
        self._footers: dict[int, tuple[int, int]] = {}
        self._lock = threading.Lock()
        self._stats = {"shards_downloaded": 0, "bytes_downloaded": 0, "cache_hits": 0}
        _LIVE.add(self)
        self._on_bytes: Callable[[int], object] | None = None  # set by warm()

    # -- metadata ----------------------------------------------------------------------

    @property
    def shards(self) -> ShardTable:
        """Per-shard metadata from the manifest (NumPy columns)."""
        return self.manifest.shards

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.manifest.meta

    @property
    def stats(self) -> dict[str, int]:
        """Shards and bytes this dataset downloaded, and shard loads served by the cache."""
        with self._lock:
            return dict(self._stats)

    # -- fetching ----------------------------------------------------------------------

    def _fetch_to_cache(self, k: int) -> CachedShard:
        """Shard ``k`` in the cache (downloaded and verified if it was not), held."""
        table = self.manifest.shards
        uri = str(table.uris[k])
        downloader = self._downloader
        on_bytes = self._on_bytes
        fetched = False

        def fetch(sink: Any) -> None:
            nonlocal fetched
            fetched = True

            def guarded(chunk: bytes) -> None:
                if downloader is not None:
                    downloader.check_cancelled()
                sink(chunk)
                with self._lock:
                    self._stats["bytes_downloaded"] += len(chunk)
                if on_bytes is not None:
                    on_bytes(len(chunk))

            self.store.stream(uri, guarded, size=int(table.stored_size[k]))

        handle = self.cache.get(
            str(table.checksums[k]),
            fetch,
            stored_size=int(table.stored_size[k]),
            raw_size=int(table.raw_size[k]),
            compression=COMPRESSIONS[int(table.compression[k])],
            record_count=int(table.records[k]),
            label=self.store.url(uri),
            order_hint=self._next_use,
        )
        with self._lock:
            self._stats["shards_downloaded" if fetched else "cache_hits"] += 1
        return handle

    def _prefetch_job(self, k: int) -> None:
        self._fetch_to_cache(k).close()

    def warm(
        self,
        shards: Iterable[int] | None = None,
        *,
        workers: int = DEFAULT_DOWNLOAD_WORKERS,
        progress: Callable[[int], object] | None = None,
    ) -> dict[str, int]:
        """Fetch ``shards`` (default: all, in stored order) into the cache, in that order.

        Shards already cached are skipped. The others are downloaded by ``workers``
        threads, started in the given order, verified, published and released at once:
        none stays mapped or held. ``progress(nbytes)`` is called from those threads for
        every chunk downloaded. Safe while other processes use the same cache (each shard
        is downloaded once per node); not while this object is being iterated. Returns
        ``shards_fetched``, ``shards_cached`` (found in the cache) and ``bytes_downloaded``.
        The first failure stops the warm-up and is raised here.
        """
        self._check_open()
        n = self.num_shards
        order = list(dict.fromkeys(range(n) if shards is None else (int(k) for k in shards)))
        for k in order:
            if not 0 <= k < n:
                raise IndexError(f"shard index {k} out of range for {n} shards")
        self._set_order(order)
        checksums = self.manifest.shards.checksums
        todo = [k for k in order if not self.cache.contains(str(checksums[k]))]
        before = self.stats
        ahead = 2 * workers
        downloader = Downloader(self._prefetch_job, workers=workers, lookahead=ahead)
        previous, self._downloader, self._on_bytes = self._downloader, downloader, progress
        try:
            for i, k in enumerate(todo):
                downloader.prefetch(todo[i : i + ahead])
                downloader.claim(k)
        finally:
            downloader.close()
            self._downloader, self._on_bytes = previous, None
        after = self.stats
        fetched = after["shards_downloaded"] - before["shards_downloaded"]
        return {
            "shards_fetched": fetched,
            "shards_cached": len(order) - fetched,
            "bytes_downloaded": after["bytes_downloaded"] - before["bytes_downloaded"],
        }

    def _get_downloader(self) -> Downloader:
        if self._downloader is None:
            self._downloader = Downloader(
                self._prefetch_job, workers=self._download_workers, lookahead=self.lookahead
            )
        return self._downloader

    def _prefetch(self, upcoming: Iterable[int]) -> None:
        if self.lookahead > 0:
            self._get_downloader().prefetch(k for k in upcoming if not self.is_mapped(k))

    def _mappable_parts(self, idx: np.ndarray) -> list[np.ndarray]:
        """Under a cache limit, runs of ``idx`` that touch at most as many shards as this
        dataset keeps mapped, so that a block's maps never pin more than the cache holds."""
        if self.cache.limit is None:
            return [idx]
        cap = self._max_mapped
        shard_ids = (np.searchsorted(self.record_starts, idx, side="right") - 1).tolist()
        cuts, seen = [], set()
        for i, k in enumerate(shard_ids):
            if k not in seen and len(seen) == cap:
                cuts.append(i)
                seen = set()
            seen.add(k)
        return np.split(idx, cuts)

    def _about_to_map(self, shards: list[int]) -> None:
        if self.cache.limit is None:  # (under a limit, one at a time: they may not all fit)
            self._fetch_in_parallel(shards)

    def _fetch_in_parallel(self, shards: Iterable[int]) -> None:
        """Download the unmapped ones of ``shards`` (all needed now) side by side."""
        missing = [k for k in shards if not self.is_mapped(k)]
        if len(missing) > 1:
            self._get_downloader().fetch_now(missing)

    def _set_order(self, shards: Iterable[int], then: Iterable[int] = ()) -> None:
        """Tell the cache the order shards will be used in (for furthest-next-use
        eviction); ``then`` is the order after that (the next epoch's), if known."""
        shards = list(shards)
        checksums = self.manifest.shards.checksums
        order: dict[str, int] = {}
        for pos, k in enumerate(shards):
            order.setdefault(str(checksums[k]), pos)
        self._later = {}
        for pos, k in enumerate(then, start=len(shards)):
            self._later.setdefault(str(checksums[k]), pos)
        for checksum, pos in self._later.items():
            order.setdefault(checksum, pos)
        self._next_use = order  # replaced, never mutated: download threads may be reading it
        if self._downloader is not None:  # prefetches for an abandoned order free their slots
            self._downloader.retain(set(shards))

    def _load_shard(self, k: int) -> MappedShard:
        while len(self._mapped) >= self._max_mapped:  # unlock one before the cache needs room
            self.release(self._mapped[0])
        try:
            claimed = self._downloader is not None and self._downloader.claim(k)
            handle = self._fetch_to_cache(k)
        except (DownloadCancelled, CancelledError):
            raise ValueError(f"{self!r} was closed while a shard was being fetched") from None
        if claimed:  # the prefetch already counted this shard
            with self._lock:
                self._stats["cache_hits"] -= 1
        shard, handle = self._map_or_heal(k, handle)
        self._handles[k] = handle
        self._mapped.append(k)
        return shard

    def _map_or_heal(self, k: int, handle: CachedShard) -> tuple[MappedShard, CachedShard]:
        """Map a cached shard; if its cached copy was damaged on disk since it was verified
        (the footer or offsets no longer check out), replace it with a fresh download."""
        try:
            return handle.map(), handle
        except ShardFormatError as damaged:
            handle.close()
            log.warning("cached copy of %s is damaged (%s); downloading it again",
                        self.store.url(str(self.manifest.shards.uris[k])), damaged)
            try:
                self.cache.remove(str(self.manifest.shards.checksums[k]))
            except CacheError:  # another process has it open: it cannot be replaced now
                raise damaged from None
        except BaseException:
            handle.close()
            raise
        handle = self._fetch_to_cache(k)
        try:
            return handle.map(), handle
        except BaseException:
            handle.close()
            raise

    def _hold_at_least(self, shards: int) -> None:
        """Keep at least ``shards`` mapped at once, for shuffle windows (the lookahead's
        shards are prefetched into the cache, not mapped)."""
        self._max_mapped = max(self._max_mapped, shards)

    def _release_window(self, shards: list[int]) -> None:
        """A shuffle window is done with these shards: with a cache limit, unmap them so the
        cache may evict them (without one, they stay mapped for the next epoch)."""
        if self.cache.limit is not None:
            for k in shards:
                self.release(k)

    def _forget_order(self, shards: list[int]) -> None:
        """These shards are done with in the current order: their next use is in the order
        after it, if they are in it, else never (evicted first)."""
        checksums = self.manifest.shards.checksums
        gone = {str(checksums[k]) for k in shards}
        later = self._later
        order = {c: pos for c, pos in self._next_use.items() if c not in gone}
        order.update((c, later[c]) for c in gone if c in later)
        self._next_use = order

    def release(self, k: int) -> None:
        """Unmap shard ``k`` and let the cache evict it again (views stay valid)."""
        super().release(k)
        handle = self._handles.pop(k, None)
        if handle is not None:
            handle.close()
        try:
            self._mapped.remove(k)
        except ValueError:
            pass

    # -- reading -----------------------------------------------------------------------

    def _stored_blocks(self) -> Iterator[RecordViews]:
        """Every record in stored order, with the next shards downloading meanwhile."""
        self._set_order(range(self.num_shards))
        return super()._stored_blocks()

    def _next_in_stored_order(self, k: int) -> MappedShard:
        n = self.num_shards
        if k:  # (the first shard downloads alone: the first record comes sooner)
            self._prefetch(range(k + 1, n))  # before blocking on shard k: they overlap
        shard = self.shard(k)
        if not k:
            self._prefetch(range(1, n))
        return shard

    def iter(
        self,
        seed: int = 0,
        epoch: int = 0,
        shuffle: bool = True,
        rank: int | None = None,
        world_size: int | None = None,
        start: int = 0,
        *,
        worker: int | None = None,
        num_workers: int | None = None,
        window: int | None = None,
        remainder: str = "pad",
    ) -> RecordIterator:
        """This consumer's records of ``epoch`` in a planned order (see :mod:`roxxel.planner`).

        Rank and world size default to ``torch.distributed`` when it is initialized, else
        to ``RANK``/``WORLD_SIZE``; the worker to PyTorch's DataLoader worker info.
        ``window`` shards (default 16) are shuffled together and must fit in the cache;
        ``remainder`` is ``"pad"`` (every record at least once, a few twice) or ``"drop"``.
        ``start`` skips that many of this consumer's records at O(#shards) cost.
        """
        self._check_open()
        self._check_window(window or DEFAULT_WINDOW)
        state = new_state(
            self, seed=seed, epoch=epoch, shuffle=shuffle, rank=rank, world_size=world_size,
            worker=worker, num_workers=num_workers, window=window, remainder=remainder, position=start,
        )
        return RecordIterator(self, state, self._track)

    def _check_window(self, window: int) -> None:
        """Refuse a shuffle window whose shards (and a chosen lookahead) the cache limit
        cannot hold; shrink an unchosen lookahead to fit beside it."""
        chosen = self._chosen_lookahead
        fitted = fit_lookahead(
            self.cache.limit, self.manifest.shards.raw_size, held=window,
            lookahead=chosen, default=self.lookahead if chosen is None else chosen,
            what=f"{self.url} with window={window}", fix="lower window= or raise cache_limit",
        )
        if fitted < self.lookahead:
            self.lookahead = fitted
            if self._downloader is not None:
                self._downloader.lookahead = fitted

    def resume(
        self,
        state: Mapping[str, Any],
        *,
        rank: int | None = None,
        world_size: int | None = None,
        worker: int | None = None,
        num_workers: int | None = None,
    ) -> RecordIterator:
        """An iterator that continues right after the last record ``state`` counted.

        The topology is detected as in :meth:`iter` unless given. ResumeError if the state
        belongs to another dataset (manifest fingerprint), or to another rank, worker,
        world size or worker count (elastic resume is not supported).
        """
        self._check_open()
        saved = IterState.from_dict(state)
        check_resumable(self, saved, detect_topology(rank, world_size, worker, num_workers))
        return RecordIterator(self, saved, self._track)

    def stream(
        self,
        seq_len: int,
        batch_size: int = 32,
        seed: int = 42,
        start_step: int = 0,
        dtype: npt.DTypeLike = np.int32,
        *,
        epochs: int | None = 1,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Iterator[np.ndarray]:
        """``(batch_size, seq_len)`` token batches, as ``Roxxel.stream`` gives locally.

        The payloads are read as ``dtype`` tokens cut into windows of ``seq_len`` (see
        :mod:`roxxel.tokens`); all ranks share one seeded order and rank ``r`` of ``w``
        takes every ``w``-th batch of it, so ranks never see the same window in an epoch.
        The stream stops after ``epochs`` epochs (default 1), every rank after the same
        number of batches, or never with ``epochs=None``. ``start_step`` resumes at once.
        Shards are fetched as batches need them, the next batch's shards in the background.
        """
        self._check_open()
        rank, world_size, _, _ = detect_topology(rank, world_size, 0, 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        table = self.manifest.shards
        payload_sizes = table.raw_size - OFFSET_SIZE * table.records - FOOTER_SIZE
        windows = TokenWindows(payload_sizes, lambda k: self.shard(k).payload, seq_len, dtype)
        self._hold_at_least(min(batch_size, self._mapping_cap))
        return self._track(
            token_batches(
                windows, batch_size, seed, start_step, epochs=epochs,
                shard=(rank, world_size), prefetch=lambda shards: self._prefetch(shards.tolist()),
            )
        )

    def fetch(self, i: int) -> bytes:
        """Record ``i`` read with ranged GETs, without downloading its whole shard.

        For inspecting huge remote datasets. Uses the cached or mapped shard when there is
        one; zstd shards cannot be read by range and are downloaded whole. The footer and
        offsets are validated, but a ranged read is not covered by the shard checksum.
        """
        self._check_open()
        n = self._n
        if not -n <= i < n:
            raise IndexError(f"record index {i} out of range for {n} records")
        k, j = self.locate(i + n if i < 0 else i)
        table = self.manifest.shards
        if self.is_mapped(k) or table.compression[k] != 0 or self.cache.contains(str(table.checksums[k])):
            return bytes(self.shard(k).view(j))
        uri = str(table.uris[k])
        payload_size = self._footer(k)
        lo = payload_size + OFFSET_SIZE * (j - 1 if j else j)
        ends = np.frombuffer(self.store.read_range(uri, lo, payload_size + OFFSET_SIZE * (j + 1)), "<i8")
        start, end = (int(ends[0]), int(ends[1])) if j else (0, int(ends[0]))
        if not 0 <= start <= end <= payload_size:
            raise ShardFormatError(
                f"{self.store.url(uri)}: record {j} spans [{start}, {end}), "
                f"expected 0 <= start <= end <= payload size {payload_size}"
            )
        return self.store.read_range(uri, start, end)

    def _footer(self, k: int) -> int:
        """Payload size of uncompressed shard ``k``, from its validated footer."""
        cached = self._footers.get(k)
        if cached is None:
            table = self.manifest.shards
            uri, size = str(table.uris[k]), int(table.stored_size[k])
            label = self.store.url(uri)
            if size < FOOTER_SIZE:
                parse_footer(b"", size, label)
            layout = parse_footer(self.store.read_range(uri, size - FOOTER_SIZE, size), size, label)
            if layout.record_count != int(table.records[k]):
                raise ShardFormatError(
                    f"{label}: footer record count is {layout.record_count}, "
                    f"expected {int(table.records[k])} from the manifest"
                )
            cached = self._footers[k] = (layout.payload_size, layout.record_count)
        return cached[0]

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the downloader, unmap every shard and release the cache (idempotent)."""
        if self._downloader is not None:
            self._downloader.close()
            self._downloader = None
        self._close_records()  # ends live iterators too

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled for DataLoader workers: the same manifest (the same dataset version),
        store and cache settings; the copy opens lazily, with its own threads and maps.
        The store carries the storage_options it was given, credentials included: a worker
        needs them. roxxel never writes this pickle anywhere."""
        return (
            _unpickle_dataset,
            (self.store, self.manifest, self.cache.directory, self.cache.limit,
             self._chosen_lookahead, self._download_workers, self.cache.verify_mode),
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"records={self._n}"
        return f"Dataset({self.url!r}, shards={self.num_shards}, {state})"


def _unpickle_dataset(
    store: Store, manifest: Manifest, cache_dir: str, cache_limit: int | None, lookahead: int | None,
    workers: int, verify: str = "changed",
) -> Dataset:
    return Dataset(store, manifest, ShardCache(cache_dir, cache_limit, verify=verify),
                   lookahead=lookahead, download_workers=workers)
