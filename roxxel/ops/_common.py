"""Pieces shared by the operations: progress metering, parallel jobs, cache lookups.

Progress is reported through an fsspec :class:`~fsspec.callbacks.Callback` (``set_size``
once, then ``relative_update(nbytes)``), so any fsspec callback works, including
``fsspec.callbacks.TqdmCallback``. The library never prints and never imports tqdm.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, wait
from typing import Any, TypeVar

from fsspec.callbacks import Callback

from ..backends import Store
from ..cache import ShardCache, default_directory
from ..manifest import Manifest
from ..manifest.io import dataset_store, read_manifest
from ..workers import WorkerPool

__all__ = ["Cancelled", "Jobs", "Meter", "cached_checksums", "cache_directory", "load"]

T = TypeVar("T")
R = TypeVar("R")

DEFAULT_WORKERS = 4


class Cancelled(Exception):
    """Raised inside a job when its batch is being abandoned (never reaches the caller)."""


class Meter:
    """Thread-safe byte counting into an optional fsspec callback."""

    def __init__(self, progress: Callback | None, total: int) -> None:
        self._callback = Callback.as_callback(progress)
        self._lock = threading.Lock()
        self.done = 0
        self._callback.set_size(total)

    def add(self, nbytes: int) -> None:
        if nbytes:
            with self._lock:
                self.done += nbytes
                self._callback.relative_update(nbytes)


class Jobs:
    """Run ``fn(item)`` for each item on ``workers`` named threads, started in order.

    :meth:`run` returns the results in item order, or raises a failure as soon as one
    happens (the first in item order among those done), cancelling what has not started; running jobs see :meth:`check` raise
    :class:`Cancelled` at their next chunk, so an interrupt does not wait for whole shards.
    """

    def __init__(self, workers: int, name: str) -> None:
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        self.workers = workers
        self.name = name
        self._stop = threading.Event()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the batch is being abandoned."""
        if self._stop.is_set():
            raise Cancelled(self.name)

    def run(self, fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
        pool = WorkerPool(self.workers, name=self.name)
        futures: list[Future[R]] = []
        try:
            for item in items:
                futures.append(pool.submit(lambda item=item: fn(item)))
            wait(futures, return_when=FIRST_EXCEPTION)  # not held up by long jobs before it
            for future in futures:
                if future.done() and future.exception() is not None:
                    raise future.exception()  # type: ignore[misc]
            return [future.result() for future in futures]
        except BaseException:
            self._stop.set()
            raise
        finally:
            pool.close(wait=True)


def load(url: str, storage_options: Mapping[str, Any] | None) -> tuple[Store, Manifest]:
    """The store of the dataset at ``url`` and its validated manifest."""
    store = dataset_store(url, storage_options)
    return store, read_manifest(store)


def cache_directory(cache_dir: str | os.PathLike[str] | None) -> str:
    """The absolute cache directory ``cache_dir`` names (the default one if None)."""
    path = default_directory() if cache_dir is None else os.fspath(cache_dir)
    return os.path.abspath(os.path.expanduser(path))


def existing_cache(cache_dir: str | os.PathLike[str] | None) -> ShardCache | None:
    """The cache at ``cache_dir`` if that directory exists; None (creating nothing) if not."""
    directory = cache_directory(cache_dir)
    if not os.path.isdir(directory):
        return None
    return ShardCache(directory)


def cached_checksums(cache: ShardCache | None) -> dict[str, int]:
    """Checksum -> size in bytes of every shard published in ``cache`` (one directory scan)."""
    if cache is None:
        return {}
    return {entry.checksum: entry.size for entry in cache.entries()}
