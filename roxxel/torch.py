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

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch.utils.data

from .errors import ManifestError, ResumeError
from .manifest.signing_keys import load_trusted_keys
from .planner import DEFAULT_WINDOW, HEADS_PLAN_VERSION, plan_version
from .read import dataset as _dataset
from .read import mixture as _mixture
from .read.elastic import Generation, remaining, span
from .read.iteration import IterState, detect_topology
from .read.jobstate import Job
from .read.mixspec import is_spec_location
from .read.typed import TypedIterator, TypedRecords

__all__ = ["IterableRecords", "StatefulLoader", "default_collate_records", "stack_records"]


def default_collate_records(records: list[np.ndarray]) -> list[torch.Tensor]:
    """Each record as a tensor of its dtype (``uint8``, or a typed dataset's variable-length
    records' dtype): copies, as the tensors outlive the shard maps."""
    return [torch.from_numpy(_native(np.array(r))) for r in records]


def stack_records(records: list[np.ndarray]) -> torch.Tensor:
    """Fixed-shape records stacked into one ``(batch, *shape)`` tensor (a copy): the
    default collate of a typed dataset whose records have one shape."""
    return torch.from_numpy(_native(np.stack(records)))


def _native(a: np.ndarray) -> np.ndarray:
    """``a`` in this machine's byte order (torch takes no other)."""
    return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))


def _typed_stream(ds: Any, records: Iterator[np.ndarray], collate: Callable[[list[Any]], Any]) -> tuple[
    Iterator[Any], Callable[[list[Any]], Any]
]:
    """A typed dataset's records as arrays of its dtype and shape (see
    :mod:`roxxel.read.typed`), stacked by the default collate when their shape is fixed;
    other datasets' records (and a mixture's) as they are, as are the records of a
    dataset whose meta.dtype/meta.shape declare no type roxxel reads (with a warning)."""
    try:
        kind = getattr(ds, "record_type", None)
    except ManifestError as exc:  # e.g. a structured dtype from `roxxel pack --format npy`
        logging.getLogger(__name__).warning("reading the records of %s as uint8: %s", ds.url, exc)
        return records, collate
    if kind is None:
        return records, collate
    typed = TypedIterator(records, TypedRecords(ds, kind, ds.url))  # type: ignore[arg-type]
    return typed, stack_records if collate is default_collate_records and kind.fixed else collate


class IterableRecords(torch.utils.data.IterableDataset):
    """Records of the dataset at ``url``, split across ranks and DataLoader workers.

    ``url`` may also be an open :class:`roxxel.Dataset`: the process that has it reads
    it, and each DataLoader worker reads a copy of it, as pickling makes one (the same
    manifest version, store and ``storage_options``, cache directory, limit and
    lookahead; its own threads and maps). Open options go with a URL only. A
    :class:`roxxel.Mixture`, or the path or URL of a mixture document (``.json``), reads
    the same way; ``seed`` defaults to the mixture's own, and to 0 for a dataset.
    ``transform(record)`` maps each record view (``uint8``; for a typed dataset, an array of its
    dtype and shape: see :mod:`roxxel.read.typed`) (copy what you keep: the view
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
        seed: int | None = None,
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
        self._seed = seed
        self.shuffle, self.window, self.remainder = shuffle, window, remainder
        self.drop_last = drop_last
        if open_kwargs.get("trusted_keys") is not None:  # checked now, and picklable for spawned workers
            open_kwargs = {**open_kwargs, "trusted_keys": load_trusted_keys(open_kwargs["trusted_keys"])}
        self._open_kwargs = open_kwargs
        # shared with worker processes: [epoch, batches of this epoch already consumed]
        self._shared = multiprocessing.Array("q", [0, 0], lock=False)
        # (epoch, the generations before this one) after an elastic resume: set before the
        # workers start (they get it with the dataset), used for that epoch only
        self._elastic: tuple[int, tuple[Generation, ...]] | None = None
        self._left: tuple[Any, int] | None = None  # ((epoch, history), records they left)

    @property
    def seed(self) -> int:
        """The seed the epochs are planned with: the one given, else a mixture's own (its
        document's ``seed``), else 0."""
        if self._seed is not None:
            return self._seed
        if isinstance(self._ds, _mixture.Mixture) or is_spec_location(self.url):
            return self.dataset().seed  # type: ignore[union-attr]
        return 0

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
        history = self._history(epoch)
        if history and isinstance(ds, _mixture.Mixture):  # a mixture's elastic continuation
            records = ds.iter_after(history, epoch=epoch, seed=self.seed, shuffle=self.shuffle, window=self.window,
                                    remainder=self.remainder, rank=rank, world_size=world_size, worker=worker,
                                    num_workers=num_workers, start=start)
        elif history:  # an elastic continuation: this consumer's share of what was left
            state = IterState(
                seed=self.seed, epoch=epoch, position=start, rank=rank, world_size=world_size, worker=worker,
                num_workers=num_workers, shuffle=self.shuffle, window=self.window, remainder=self.remainder,
                fingerprint=_fingerprint(ds), plan=_plans_version(ds), elastic=history,
            )
            records = ds.resume(state.to_dict(), rank=rank, world_size=world_size, worker=worker,
                                num_workers=num_workers)
        else:
            records = ds.iter(
                seed=self.seed, epoch=epoch, shuffle=self.shuffle, rank=rank, world_size=world_size,
                start=start, worker=worker, num_workers=num_workers, window=self.window,
                remainder=self.remainder,
            )
        records, collate = _typed_stream(ds, records, self.collate)
        transform = self.transform
        if self.batch_size is None:
            for record in records:
                yield transform(record) if transform is not None else record
            return
        batch: list[Any] = []
        for record in records:
            batch.append(transform(record) if transform is not None else record)
            if len(batch) == self.batch_size:
                yield collate(batch)
                batch = []
        if batch and not self.drop_last:
            yield collate(batch)

    def _batches_per_worker(
        self, ds: _dataset.Dataset, rank: int, world_size: int, num_workers: int, epoch: int
    ) -> list[int]:
        out = []
        for n in self._records_per_worker(ds, rank, world_size, num_workers, epoch):
            b = self.batch_size or 1
            out.append(n // b if self.drop_last else -(-n // b))
        return out

    def _records_per_worker(
        self, ds: _dataset.Dataset | _mixture.Mixture, rank: int, world_size: int, num_workers: int, epoch: int
    ) -> list[int]:
        """How many records each worker of ``rank`` reads in ``epoch``: O(1) each for a
        dataset, once the length of its stream is known (O(#shards) after an elastic resume)."""
        if isinstance(ds, _mixture.Mixture):
            return [ds.consumer_length(epoch, rank, world_size, w, num_workers, shuffle=self.shuffle,
                                       window=self.window, remainder=self.remainder,
                                       history=self._history(epoch)) for w in range(num_workers)]
        history = self._history(epoch)
        if not history:
            total = int(ds.manifest.shards.records.sum())
        elif self._left is not None and self._left[0] == (epoch, history):
            total = self._left[1]
        else:
            _, segments = remaining(ds.manifest.shards.records, seed=self.seed, epoch=epoch, shuffle=self.shuffle,
                                    window=self.window, remainder=self.remainder, generations=history,
                                    heads=ds.manifest.shards.head_records)
            total = segments.total
            self._left = ((epoch, history), total)  # a state_dict asks for every rank's
        spans = [span(total, rank, world_size, w, num_workers, self.remainder) for w in range(num_workers)]
        return [hi - lo for lo, hi in spans]

    def _history(self, epoch: int) -> tuple[Generation, ...]:
        """The generations before this one in ``epoch`` (none unless resumed elastically)."""
        elastic = self._elastic
        return elastic[1] if elastic is not None and elastic[0] == epoch else ()

    def _job_state(self, batches: list[int], world_size: int, num_workers: int) -> dict[str, Any]:
        """The job state of this epoch when rank ``r`` has yielded ``batches[r]`` batches."""
        ds, epoch, b = self.dataset(), self.epoch, self.batch_size or 1
        positions: list[int] = []
        for rank, consumed in enumerate(batches):
            counts = self._records_per_worker(ds, rank, world_size, num_workers, epoch)
            per_worker = [n // b if self.drop_last else -(-n // b) for n in counts]
            taken, _ = _batches_taken(consumed, per_worker)
            positions.extend(min(t * b, n) for t, n in zip(taken, counts))
        if isinstance(ds, _mixture.Mixture):
            return ds.job_at(positions, world_size=world_size, num_workers=num_workers, epoch=epoch, seed=self.seed,
                             shuffle=self.shuffle, window=self.window, remainder=self.remainder,
                             history=self._history(epoch))
        generation = Generation(world_size, num_workers, tuple(positions))
        return Job(
            fingerprint=_fingerprint(ds), seed=self.seed, epoch=epoch, shuffle=self.shuffle, window=self.window,
            remainder=self.remainder, plan=_plans_version(ds),
            generations=(*self._history(epoch), generation),
        ).to_dict()


def _plans_version(ds: _dataset.Dataset | _mixture.Mixture) -> int:
    """The version of the plans this roxxel makes of ``ds`` (:func:`roxxel.planner.plan_version`)."""
    return ds.plan_version if isinstance(ds, _mixture.Mixture) else plan_version(ds.manifest.shards.head_records)


def _check_job_plan(ds: _dataset.Dataset | _mixture.Mixture, job: Mapping[str, Any]) -> None:
    """ResumeError unless a loader state's ``job`` was planned at the version this roxxel
    plans ``ds`` at: its position inside the epoch would name other records."""
    what = "mixture" if isinstance(ds, _mixture.Mixture) else "dataset"
    version = _plans_version(ds)
    if job.get("plan") != version:
        why = " (its shards' heads lead their windows)" if version == HEADS_PLAN_VERSION else ""
        raise ResumeError(
            f"the loader state's job is of plan version {job.get('plan')!r}; this roxxel plans this {what} at "
            f"version {version}{why}: inside the epoch, its position would name other records than the ones "
            "left. Start the epoch over, or resume with the roxxel that saved it"
        )


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
        """The loader's state: ``{"epoch", "batches", "fingerprint", "world_size",
        "num_workers"}`` and ``"job"``: the whole job's state (a dataset's or a mixture's: see
        :func:`roxxel.job_state`), from which :meth:`load_state_dict` resumes on any
        topology. With ``torch.distributed`` initialized on more than one rank this is a
        collective (each rank's batch count goes to every rank with ``all_gather_object``):
        call it on every rank, then save any one rank's result, rank 0's say. Without it,
        every rank is taken to have yielded as many batches as this one, as ranks stepping
        together do."""
        records: IterableRecords = self.dataset  # type: ignore[assignment]
        _, world_size, _, _ = detect_topology(None, None, 0, 1)
        ds = records.dataset()
        state = {
            "epoch": records.epoch,
            "batches": self._batches,
            "fingerprint": _fingerprint(ds),
            "world_size": world_size,
            "num_workers": max(self.num_workers, 1),
        }
        batches = [self._batches] * world_size
        dist = torch.distributed
        if world_size > 1 and dist.is_available() and dist.is_initialized():
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, self._batches)
            batches = [int(b) for b in gathered]
        state["job"] = records._job_state(batches, world_size, max(self.num_workers, 1))
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Continue from ``state`` (of :meth:`state_dict`): on the topology it was saved on,
        every worker where it was; on another, with its ``"job"``, the records the job had
        not read split over this topology's consumers (see :mod:`roxxel.read.elastic`).
        After an elastic resume, load a state before the loader's first iteration if it
        has persistent workers."""
        records: IterableRecords = self.dataset  # type: ignore[assignment]
        ds = records.dataset()
        fingerprint = _fingerprint(ds)
        if state.get("fingerprint") != fingerprint:
            raise ResumeError(
                f"the loader state belongs to another dataset or version (fingerprint "
                f"{state.get('fingerprint')}); {records.url} has {fingerprint}"
            )
        _, world_size, _, _ = detect_topology(None, None, 0, 1)
        num_workers = max(self.num_workers, 1)
        saved = (state.get("world_size"), state.get("num_workers"))
        same = saved == (world_size, num_workers)
        job = state.get("job")
        if not same and job is None:
            raise ResumeError(
                f"the loader state was saved with world_size={saved[0]}, num_workers={saved[1]}; "
                f"this loader has world_size={world_size}, num_workers={num_workers}, and the state has no "
                "job state (saved by an earlier roxxel): resume with the saved topology"
            )
        epoch, batches, history = int(state["epoch"]), int(state["batches"]), ()
        if job is not None and batches:
            _check_job_plan(ds, job)
        if job is not None and isinstance(ds, _mixture.Mixture):
            mine = {"seed": records.seed, "shuffle": records.shuffle, "window": records.window,
                    "remainder": records.remainder}
            for name, value in mine.items():
                if job.get(name) != value:
                    raise ResumeError(f"the loader state's job was read with {name}={job.get(name)!r}; "
                                      f"this loader's IterableRecords has {name}={value!r}")
            job_epoch, history, own = ds.history_of(job, world_size=world_size, num_workers=num_workers)
            if not own:  # a new generation: every consumer starts its share of what is left
                epoch, batches = job_epoch, 0
        elif job is not None:
            parsed = Job.from_dict(job)
            mine = {"seed": records.seed, "shuffle": records.shuffle, "window": records.window,
                    "remainder": records.remainder}
            for name, value in mine.items():
                if getattr(parsed, name) != value:
                    raise ResumeError(f"the loader state's job was read with {name}={getattr(parsed, name)!r}; "
                                      f"this loader's IterableRecords has {name}={value!r}")
            if same:
                history = parsed.generations[:-1]
            else:  # a new generation: every consumer starts its share of what is left
                shards = ds.manifest.shards
                begun = parsed.resume_state(shards.records, 0, world_size, 0, num_workers, shards.head_records)
                epoch, batches, history = parsed.epoch, 0, begun.elastic or ()
        elastic = (epoch, tuple(history)) if history else None
        if elastic != records._elastic and self.persistent_workers and self._iterator is not None:
            raise ResumeError("this loader's persistent workers have started: load an elastic state into a "
                              "new StatefulLoader, or before its first iteration")
        records._elastic = elastic
        records._resume_at(epoch, batches)
        self._batches = batches
