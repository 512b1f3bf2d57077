"""``roxxel.open``: a dataset in an object store, read through the node-local cache.

Opening reads the manifest only; ``len`` and shard boundaries come from it. A record
access maps its shard, fetching it into the cache first if needed (blocking on that one
shard only); iteration keeps the next shards arriving in the background. Every shard is
verified (size, checksum, bounded decompression, footer) before it is mapped.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import numpy.ma  # noqa: F401 - see below
import numpy.random  # noqa: F401 - see below
import numpy.typing as npt
from fsspec.callbacks import Callback

from .. import trace as tracing
from ..backends import Store
from ..cache import ShardCache
from ..cache.datasets import record_dataset_use
from ..format.layout import payload_size
from ..manifest import Manifest, ShardTable
from ..manifest.compressions import COMPRESSIONS
from ..manifest.io import dataset_store, read_manifest
from ..manifest.signing import read_signed_manifest
from ..manifest.signing_keys import PublicKeyLike, TrustedKeys, load_trusted_keys
from ..planner import DEFAULT_WINDOW, plan_version
from .catalog import ShardCatalog
from .iteration import (
    IterState,
    RecordIterator,
    check_resumable,
    detect_topology,
    new_state,
)
from .jobstate import resume_state
from .ranged import RangedReader
from .records import Records
from .residency import DEFAULT_DOWNLOAD_WORKERS, Residency
from .tokens import TokenWindows, token_batches
from .typed import RecordType, TypedRecords, declared_type
from .payload import DEFAULT_READAHEAD, PayloadFile, dataset_payload

__all__ = ["Dataset", "open"]

# numpy.random (the planner's SeedSequence) and numpy.ma (np.unique's masked-array check)
# are imported here, not lazily by NumPy in the first ds.iter or ds.resume: every
# shuffled read needs them within milliseconds of the import, and a lazy import would
# cost the first record about 12 ms (measured: scripts/bench_startup.py).


def open(  # noqa: A001 - the public name is roxxel.open
    url: str,
    cache_dir: str | None = None,
    cache_limit: int | str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    *,
    lookahead: int | None = None,
    download_workers: int | None = None,
    store: Store | None = None,
    verify: str = "changed",
    trace: str | os.PathLike[str] | None = None,
    trusted_keys: TrustedKeys | Iterable[PublicKeyLike] | None = None,
) -> Dataset:
    """Open the dataset at ``url`` (its prefix or its ``manifest.json``).

    Only the manifest is read. ``cache_dir`` defaults to ``$ROXXEL_CACHE_DIR`` or
    ``~/.cache/roxxel``; ``cache_limit`` (bytes, or a string like ``"50GB"``) bounds it.
    ``lookahead`` shards (default 4, or from a remote store enough to keep the download
    budget full, 4 to 32; fewer if ``cache_limit`` needs it) are fetched ahead of
    iteration by ``download_workers`` threads (default: one per shard of the lookahead).
    A limit below the largest shard (what one read maps), or below what a chosen
    ``lookahead`` needs, raises :class:`~roxxel.errors.CacheError` stating the minimum. A
    cached shard is hashed again before it is mapped when it changed since it was
    verified (``verify="changed"``) or, with ``verify="always"``, also the first time this
    process maps it. ``trace`` (or ``$ROXXEL_TRACE``) writes a Chrome/Perfetto trace of
    this process's downloads and reads there (see :mod:`roxxel.trace`).

    With ``trusted_keys`` (Ed25519 public keys: ``cryptography`` key objects, PEM or
    OpenSSH public key text, or paths of such files; a private key is refused with
    :class:`~roxxel.errors.SigningKeyError`), the manifest must carry a signature by one
    of them over the exact bytes read (read once: those bytes are verified, then
    parsed), or the dataset is refused with :class:`~roxxel.errors.SignatureMissingError`,
    :class:`~roxxel.errors.ManifestChangedError` or
    :class:`~roxxel.errors.UntrustedSignerError` naming the URL. The shards' checksums,
    which the signed manifest holds, then vouch for every byte read.
    """
    trusted = None if trusted_keys is None else load_trusted_keys(trusted_keys)
    tracing.configure(trace)
    store = store if store is not None else dataset_store(url, storage_options)
    manifest = read_manifest(store) if trusted is None else read_signed_manifest(store, trusted)[0]
    cache = ShardCache(cache_dir, cache_limit, verify=verify)
    ds = Dataset(store, manifest, cache, lookahead=lookahead, download_workers=download_workers)
    # a signed dataset's bytes are all vouched for by its checksums: no ranged reads, which
    # no checksum covers (ds.fetch and ds.payload read through the verified cache instead)
    ds.verified_only = trusted is not None
    record_dataset_use(cache, store.base_url, manifest)
    return ds


class Dataset(Records):
    """The records of a published dataset; ``ds[i]`` is a zero-copy ``uint8`` view.

    Its shards are held by a :class:`~roxxel.read.residency.Residency`: mapped shards hold
    a shared lock in the cache, so no process evicts them while they are in use; at most
    64 shards stay mapped (fewer if ``cache_limit`` is small), the oldest unmapped first.
    Views already handed out stay valid after their shard is unmapped.
    """

    #: Read every byte through the verified cache (set by ``open(trusted_keys=...)``).
    verified_only = False

    def __init__(
        self,
        store: Store,
        manifest: Manifest,
        cache: ShardCache,
        *,
        lookahead: int | None = None,
        download_workers: int | None = None,
    ) -> None:
        self.store = store
        self.url = store.base_url
        self.manifest = manifest
        self.residency = Residency(
            ShardCatalog.of(store, manifest.shards), cache,
            lookahead=lookahead, download_workers=download_workers, what=self.url,
        )
        super().__init__(manifest.shards.records, self.residency)
        self._ranged = RangedReader(store, manifest.shards)

    # -- metadata ----------------------------------------------------------------------

    @property
    def shards(self) -> ShardTable:
        """Per-shard metadata from the manifest (NumPy columns)."""
        return self.manifest.shards

    @property
    def meta(self) -> Mapping[str, Any]:
        return self.manifest.meta

    @property
    def cache(self) -> ShardCache:
        return self.residency.cache

    @property
    def lookahead(self) -> int:
        """Shards downloaded ahead of use (fitted to the cache limit unless chosen)."""
        return self.residency.lookahead

    @property
    def stats(self) -> dict[str, float]:
        """Shards and bytes this dataset downloaded, shard loads served by the cache, GETs
        and retries, seconds readers waited for shards, and the process's download rate
        while any ran (see :attr:`Residency.stats <roxxel.read.residency.Residency.stats>`)."""
        return self.residency.stats

    @property
    def record_type(self) -> RecordType | None:
        """The records' dtype and shape as the manifest declares them (``meta["dtype"]``,
        ``meta["shape"]``), or None; ManifestError naming the field if they are invalid."""
        return declared_type(self.manifest, self.store)

    @property
    def arrays(self) -> TypedRecords:
        """The records as arrays of the declared :attr:`record_type` (see
        :mod:`roxxel.read.typed`): ``ds.arrays[i]``, ``ds.arrays[a:b]``, ``ds.arrays.iter()``.
        ValueError for a dataset that declares none: use ``ds.as_arrays(dtype, shape)``."""
        typed = self.__dict__.get("_arrays")  # one per dataset: the manifest never changes
        if typed is None:
            kind = self.record_type
            if kind is None:
                raise ValueError(
                    f"{self.url} declares no record dtype (meta.dtype): read its records as arrays "
                    "with ds.as_arrays(dtype, shape), or write it with Writer(..., dtype=..., shape=...)"
                )
            typed = self.__dict__["_arrays"] = TypedRecords(self, kind, self.url)
        return typed

    def warm(
        self,
        shards: Iterable[int] | None = None,
        *,
        workers: int = DEFAULT_DOWNLOAD_WORKERS,
        progress: Callback | None = None,
    ) -> dict[str, int]:
        """Fetch ``shards`` (default: all, in stored order) into the cache, in that order.

        Shards already cached are skipped. The others are downloaded by ``workers``
        threads, started in the given order, verified, published and released at once:
        none stays mapped or held. ``progress``, an fsspec ``Callback`` (for a bar,
        ``fsspec.callbacks.TqdmCallback``), gets the stored bytes of the shards not cached
        with ``set_size``, then each chunk downloaded with ``relative_update``. Safe while other processes use the same cache (each shard
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
        return self.residency.warm(order, workers=workers, progress=progress)

    # -- reading -----------------------------------------------------------------------

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
        self.residency.fit_window(window or DEFAULT_WINDOW)
        state = new_state(
            self.manifest.fingerprint(), seed=seed, epoch=epoch, shuffle=shuffle, rank=rank, world_size=world_size,
            worker=worker, num_workers=num_workers, window=window, remainder=remainder, position=start,
            plan=plan_version(self.manifest.shards.head_records),
        )
        return self._iterator(state)

    def _iterator(self, state: IterState) -> RecordIterator:
        shards = self.manifest.shards
        return RecordIterator(self, self.residency, shards.records, state, self._track, shards.head_records)

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

        ``state`` is one consumer's ``it.state()``, or a whole job's
        :func:`roxxel.job_state`. The topology is detected as in :meth:`iter` unless given.
        A job state resumes on any topology: on the one it was saved on, each consumer
        continues where it was; on another, the records the job has not read are split over
        the new consumers (see :mod:`roxxel.read.elastic` for the guarantee). One
        consumer's state resumes that consumer only (or any topology, if it was the only
        one). ResumeError if the state belongs to another dataset (manifest fingerprint),
        or to another consumer of its topology.
        """
        self._check_open()
        now = detect_topology(rank, world_size, worker, num_workers)
        fingerprint = self.manifest.fingerprint()
        shards = self.manifest.shards
        saved = resume_state(state, fingerprint, self.url, shards.records, now, shards.head_records)
        check_resumable(saved, fingerprint, self.url, now)
        self.residency.fit_window(saved.window)  # as ds.iter does: the window must fit the cache
        return self._iterator(saved)

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
        start_sample: int = 0,
        heads: bool = True,
    ) -> Iterator[np.ndarray]:
        """``(batch_size, seq_len)`` token batches, as ``Roxxel.stream`` gives locally
        (for a dataset whose shards have heads, with ``heads=False``).

        The payloads are read as ``dtype`` tokens cut into windows of ``seq_len`` (see
        :mod:`roxxel.read.tokens`); all ranks share one seeded order and rank ``r`` of ``w``
        takes every ``w``-th batch of it, so ranks never see the same window in an epoch.
        The stream stops after ``epochs`` epochs (default 1), every rank after the same
        number of batches, or never with ``epochs=None``. ``start_step`` resumes at once.
        ``start_sample`` continues a job that has read that many samples of the stream, on
        any world size and batch size: after ``s`` steps on every rank, a job has read
        ``start_sample + s * world_size * batch_size`` (see :func:`roxxel.read.tokens.token_batches`).
        Shards are fetched as batches need them, the next batch's shards in the background.
        Where the manifest gives shards heads, each group of shards is led by the windows
        in a head and the first batch is served from it (see :mod:`roxxel.read.tokens`);
        ``heads=False`` orders the stream as roxxel did before it used them (to continue a
        job begun then: the order differs).
        """
        self._check_open()
        rank, world_size, _, _ = detect_topology(rank, world_size, 0, 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        table = self.manifest.shards
        payload_sizes = payload_size(table.raw_size, table.records)
        windows = TokenWindows(payload_sizes, lambda k: self.shard(k).payload, seq_len, dtype,
                               table.head_bytes if heads else None)
        residency = self.residency
        residency.hold(min(batch_size, residency.mapping_cap))
        return self._track(
            token_batches(
                windows, batch_size, seed, start_step, epochs=epochs,
                shard=(rank, world_size), prefetch=lambda shards: residency.prefetch(shards.tolist()),
                start_sample=start_sample, lead=residency.first_bytes,
            )
        )

    def payload(self, *, readahead: int = DEFAULT_READAHEAD) -> PayloadFile:
        """The records' bytes end to end, across shards, as a read-only seekable binary
        file (``read``, ``readinto``, ``seek``, ``tell``, ``read_at(offset, length)``).

        Cached shards are read from their maps; uncompressed shards not in the cache with
        ranged GETs of at least ``readahead`` bytes (not covered by the shard checksum; a
        dataset opened with ``trusted_keys`` fetches them into the verified cache instead);
        zstd shards are fetched into the cache whole. See :mod:`roxxel.read.payload`.
        """
        self._check_open()
        return dataset_payload(self, readahead)

    def fetch(self, i: int) -> bytes:
        """Record ``i`` read with ranged GETs, without downloading its whole shard.

        For inspecting huge remote datasets. Uses the cached or mapped shard when there is
        one; zstd shards cannot be read by range and are downloaded whole. The footer and
        offsets are validated, but a ranged read is not covered by the shard checksum: a
        dataset opened with ``trusted_keys`` is read through the verified cache instead.
        """
        self._check_open()
        n = self._n
        if not -n <= i < n:
            raise IndexError(f"record index {i} out of range for {n} records")
        k, j = self.locate(i + n if i < 0 else i)
        table = self.manifest.shards
        stored_plain = COMPRESSIONS[int(table.compression[k])] is None and not self.verified_only
        if self.is_mapped(k) or not stored_plain or self.cache.contains(str(table.checksums[k])):
            return bytes(self.shard(k).view(j))
        return self._ranged.record(k, j)

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the downloads, unmap every shard and release the cache (idempotent)."""
        self.residency.close()
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
        tracer = tracing.current()
        return (
            _unpickle_dataset,
            (self.store, self.manifest, self.cache.directory, self.cache.limit,
             self.residency.chosen_lookahead, self.residency.download_workers, self.cache.verify_mode,
             None if tracer is None else tracer.template, self.verified_only),
        )

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"records={self._n}"
        return f"Dataset({self.url!r}, shards={self.num_shards}, {state})"


def _unpickle_dataset(
    store: Store, manifest: Manifest, cache_dir: str, cache_limit: int | None, lookahead: int | None,
    workers: int, verify: str = "changed", trace: str | None = None, verified_only: bool = False,
) -> Dataset:
    tracing.configure(trace)  # a spawned worker traces where its parent does
    ds = Dataset(store, manifest, ShardCache(cache_dir, cache_limit, verify=verify),
                 lookahead=lookahead, download_workers=workers)
    ds.verified_only = verified_only
    return ds