"""PyTorch integration: an ``IterableDataset`` over a roxxel dataset, and a ``DataLoader``
that can be checkpointed mid-epoch.

Each DataLoader worker of each rank reads its own slice of the epoch's plan (see
:mod:`roxxel.planner`): ranks come from ``torch.distributed`` (or ``RANK``/``WORLD_SIZE``),
workers from ``torch.utils.data.get_worker_info()``. Batches are made inside the workers
(``batch_size`` on the dataset, ``batch_size=None`` on the loader), so the k-th batch the
loader yields comes from worker ``k % num_workers`` (PyTorch's round-robin) and a count of
batches is enough to resume every worker exactly where it was.

The epoch and the resume point live in shared memory, so ``set_epoch`` and
``load_state_dict`` reach persistent workers too, under ``fork`` and ``spawn`` alike.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch.utils.data

from .errors import ResumeError
from .planner import DEFAULT_WINDOW, plan
from .read import dataset as _dataset
from .read import mixture as _mixture
from .read.iteration import detect_topology
from .read.mixspec import is_spec_location

__all__ = ["IterableRecords", "StatefulLoader", "default_collate_records"]


def default_collate_records(records: list[np.ndarray]) -> list[torch.Tensor]:
    """Each record as a ``uint8`` tensor (a copy: the tensors outlive the shard maps)."""
    return [torch.from_numpy(np.array(r)) for r in records]


class IterableRecords(torch.utils.data.IterableDataset):
    """Records of the dataset at ``url``, split across ranks and DataLoader workers.

    ``url`` may also be an open :class:`roxxel.Dataset`: the process that has it reads
    it, and each DataLoader worker reads a copy of it, as pickling makes one (the same
    manifest version, store and ``storage_options``, cache directory, limit and
    lookahead; its own threads and maps). Open options go with a URL only.
    ``transform(record)`` maps each ``uint8`` record view (copy what you keep: the view
    points into a shard that may be unmapped later). With ``batch_size``, lists of
    ``batch_size`` transformed records go through ``collate`` (default: a list of
    tensors); use the dataset with ``DataLoader(..., batch_size=None)`` or
    :class:`StatefulLoader`. ``open_kwargs`` go to :func:`roxxel.open`.
    """

    def __init__(
        self,
        url: str | os.PathLike[str] | _dataset.Dataset,
        *,
        batch_size: int | None = None,
        transform: Callable[[np.ndarray], Any] | None = None,
        collate: Callable[[list[Any]], Any] | None = None,
        seed: int = 0,
        shuffle: bool = True,
        window: int = DEFAULT_WINDOW,
        remainder: str = "pad",
        drop_last: bool = False,
        **open_kwargs: Any,
    ) -> None:
        super().__init__()
        if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
            raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
        # This process's dataset (None until opened from the URL), and the process it is for.
        self._ds: _dataset.Dataset | None = _given_dataset(url, open_kwargs)
        self._ds_pid = os.getpid()
        self.url: str = self._ds.url if self._ds is not None else os.fspath(url)  # type: ignore[arg-type]
        self.batch_size = batch_size
        self.transform = transform
        self.collate = collate or default_collate_records
        self.seed, self.shuffle, self.window, self.remainder = seed, shuffle, window, remainder
        self.drop_last = drop_last
        self._open_kwargs = open_kwargs
        # shared with worker processes: [epoch, batches of this epoch already consumed]
        self._shared = multiprocessing.Array("q", [0, 0], lock=False)

    # -- epochs and resume --------------------------------------------------------------

    @property
    def epoch(self) -> int:
        return int(self._shared[0])

    def set_epoch(self, epoch: int) -> None:
        """Read ``epoch`` next (each epoch has its own order); resets the resume point."""
        self._shared[0], self._shared[1] = int(epoch), 0

    def _resume_at(self, epoch: int, batches: int) -> None:
        self._shared[0], self._shared[1] = int(epoch), int(batches)

    # -- reading --------------------------------------------------------------------------

    def dataset(self) -> _dataset.Dataset:
        """The underlying :class:`roxxel.Dataset`, one per process: the one given, or
        opened from the URL on first use; in a worker process, a copy of the parent's
        (the same manifest version, its own threads and maps)."""
        if self._ds is None:
            opener = _mixture.mix if is_spec_location(self.url) else _dataset.open
            self._ds = opener(self.url, **self._open_kwargs)  # type: ignore[assignment]
        elif self._ds_pid != os.getpid():  # forked: the parent's threads are not here
            self._ds = _copy_for_this_process(self._ds)
        self._ds_pid = os.getpid()
        return self._ds

    def __setstate__(self, state: dict[str, Any]) -> None:
        # A pickled dataset (spawn) arrives as a fresh copy: this process's own.
        self.__dict__.update(state)
        self._ds_pid = os.getpid()

    def __iter__(self) -> Iterator[Any]:
        ds = self.dataset()
        rank, world_size, worker, num_workers = detect_topology(None, None, None, None)
        epoch, consumed = int(self._shared[0]), int(self._shared[1])
        start = 0
        if consumed:
            # The resumed loader asks worker 0 first; the interrupted one would have asked
            # worker `nxt`: each worker takes over the stream of the one `nxt` places on.
            per_worker = self._batches_per_worker(ds, rank, world_size, num_workers, epoch)
            taken, nxt = _batches_taken(consumed, per_worker)
            worker = (worker + nxt) % num_workers
            start = taken[worker] * (self.batch_size or 1)
        records = ds.iter(
            seed=self.seed, epoch=epoch, shuffle=self.shuffle, rank=rank, world_size=world_size,
            start=start, worker=worker, num_workers=num_workers, window=self.window,
            remainder=self.remainder,
        )
        transform = self.transform
        if self.batch_size is None:
            for record in records:
                yield transform(record) if transform is not None else record
            return
        batch: list[Any] = []
        for record in records:
            batch.append(transform(record) if transform is not None else record)
            if len(batch) == self.batch_size:
                yield self.collate(batch)
                batch = []
        if batch and not self.drop_last:
            yield self.collate(batch)

    def _batches_per_worker(
        self, ds: _dataset.Dataset, rank: int, world_size: int, num_workers: int, epoch: int
    ) -> list[int]:
        out = []
        for w in range(num_workers):
            if isinstance(ds, _mixture.Mixture):
                n = ds.consumer_length(epoch, rank, world_size, w, num_workers, shuffle=self.shuffle,
                                       window=self.window, remainder=self.remainder)
            else:
                n = plan(ds.manifest.shards.records, seed=self.seed, epoch=epoch, rank=rank,
                         world_size=world_size, worker=w, num_workers=num_workers, shuffle=self.shuffle,
                         window=self.window, remainder=self.remainder).num_records
            b = self.batch_size or 1
            out.append(n // b if self.drop_last else -(-n // b))
        return out


def _given_dataset(url: Any, open_kwargs: Mapping[str, Any]) -> _dataset.Dataset | None:
    """The open dataset passed as ``url``, or None for a URL; TypeError for anything else."""
    if isinstance(url, (_dataset.Dataset, _mixture.Mixture)):
        if open_kwargs:
            raise TypeError(
                f"IterableRecords got an open dataset and open options {sorted(open_kwargs)}: "
                "pass the dataset URL with the options, or a dataset opened with them"
            )
        return url
    if not isinstance(url, (str, os.PathLike)):
        raise TypeError(
            f"IterableRecords takes a dataset URL or an open roxxel.Dataset (from roxxel.open), "
            f"got {type(url).__name__}"
        )
    return None


def _fingerprint(ds: _dataset.Dataset | _mixture.Mixture) -> str:
    return ds.fingerprint() if isinstance(ds, _mixture.Mixture) else ds.manifest.fingerprint()


def _copy_for_this_process(ds: _dataset.Dataset) -> _dataset.Dataset:
    """``ds`` as a worker process gets it by pickling: the same manifest, store and cache
    settings, and none of its threads, maps or cache handles."""
    rebuild, args = ds.__reduce__()
    return rebuild(*args)


def _batches_taken(consumed: int, per_worker: list[int]) -> tuple[list[int], int]:
    """How many batches each worker had yielded when the loader had yielded ``consumed``,
    and which worker the loader would have asked next.

    PyTorch asks the workers round-robin and skips those that are done.
    """
    size = len(per_worker)
    taken, nxt, left = [0] * size, 0, consumed
    while left:
        active = [w for w in range(size) if taken[w] < per_worker[w]]
        if not active:
            raise ResumeError(f"{consumed} batches consumed, but this epoch has only {sum(per_worker)}")
        rounds = min(min(per_worker[w] - taken[w] for w in active), left // len(active)) if nxt == 0 else 0
        if rounds:  # whole rounds at once
            for w in active:
                taken[w] += rounds
            left -= rounds * len(active)
            continue
        w = next(u for u in [*range(nxt, size), *range(nxt)] if taken[u] < per_worker[u])
        taken[w] += 1
        left -= 1
        nxt = (w + 1) % size
    return taken, nxt


class StatefulLoader(torch.utils.data.DataLoader):
    """A ``DataLoader`` over :class:`IterableRecords` with ``state_dict``/``load_state_dict``.

    It counts the batches it yields; the state is ``{"epoch", "batches", "fingerprint",
    "world_size", "num_workers"}``. Loading a state makes the next iteration continue at
    the batch after the last one counted (in every worker), and an epoch iterated to its
    end moves the dataset to the next epoch.
    """

    def __init__(self, dataset: IterableRecords, **kwargs: Any) -> None:
        if not isinstance(dataset, IterableRecords):
            raise TypeError(f"StatefulLoader takes an IterableRecords, got {type(dataset).__name__}")
        if kwargs.setdefault("batch_size", None) is not None:
            raise ValueError("StatefulLoader batches in the dataset: set IterableRecords(batch_size=...)")
        super().__init__(dataset, **kwargs)
        self._batches = 0

    def __iter__(self) -> Iterator[Any]:
        records: IterableRecords = self.dataset  # type: ignore[assignment]
        self._batches = int(records._shared[1])
        for batch in super().__iter__():
            self._batches += 1
            yield batch
        records.set_epoch(records.epoch + 1)
        self._batches = 0

    def state_dict(self) -> dict[str, Any]:
        records: IterableRecords = self.dataset  # type: ignore[assignment]
        _, world_size, _, _ = detect_topology(None, None, 0, 1)
        return {
            "epoch": records.epoch,
            "batches": self._batches,
            "fingerprint": _fingerprint(records.dataset()),
            "world_size": world_size,
            "num_workers": max(self.num_workers, 1),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        records: IterableRecords = self.dataset  # type: ignore[assignment]
        fingerprint = _fingerprint(records.dataset())
        if state.get("fingerprint") != fingerprint:
            raise ResumeError(
                f"the loader state belongs to another dataset or version (fingerprint "
                f"{state.get('fingerprint')}); {records.url} has {fingerprint}"
            )
        _, world_size, _, _ = detect_topology(None, None, 0, 1)
        saved = (state.get("world_size"), state.get("num_workers"))
        if saved != (world_size, max(self.num_workers, 1)):
            raise ResumeError(
                f"the loader state was saved with world_size={saved[0]}, num_workers={saved[1]}; "
                f"this loader has world_size={world_size}, num_workers={max(self.num_workers, 1)}. "
                "Elastic resume is not supported: resume with the saved topology"
            )
        records._resume_at(int(state["epoch"]), int(state["batches"]))
        self._batches = int(state["batches"])
