"""A job's checkpoint: its consumers' iterator states merged into one small dict.

``job_state(states)`` takes the states of every consumer (rank x DataLoader worker) of one
topology and returns a JSON-ready dict of O(world_size x num_workers) integers per
generation (see :mod:`roxxel.read.elastic`), from which ``ds.resume`` continues the epoch
on any topology. On the same topology each consumer continues exactly where it was.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import ResumeError
from ..planner import plan_version
from .elastic import Generation, consumers_of, fold, remaining, span
from .iteration import IterState
from .mixjob import MIX_JOB_KIND, MixState, mixture_job

__all__ = ["JOB_KIND", "Job", "job_state"]

JOB_KIND = "roxxel.job"
JOB_VERSION = 1
_SHARED = ("fingerprint", "seed", "epoch", "shuffle", "window", "remainder", "plan")
_TYPES = {"fingerprint": str, "seed": int, "epoch": int, "shuffle": bool, "window": int, "remainder": str,
          "plan": int, "lockstep": bool}


@dataclass(frozen=True)
class Job:
    """An epoch's stream parameters and its generations, the last one current.
    ``lockstep``: the last generation's positions were filled in from some consumers'
    (see :func:`job_state`): a consumer whose span is shorter is at its end."""

    fingerprint: str
    seed: int
    epoch: int
    shuffle: bool
    window: int
    remainder: str
    plan: int
    generations: tuple[Generation, ...]
    lockstep: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {"kind": JOB_KIND, "version": JOB_VERSION, **{k: getattr(self, k) for k in _SHARED},
                "lockstep": self.lockstep, "generations": [g.to_dict() for g in self.generations]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Job:
        keys = {"kind", "version", *_SHARED, "lockstep", "generations"}
        if not isinstance(data, Mapping) or set(data) != keys:
            got = sorted(data) if isinstance(data, Mapping) else type(data).__name__
            raise ResumeError(f"a job state must have the keys {sorted(keys)}, got {got}")
        if data["kind"] != JOB_KIND or data["version"] != JOB_VERSION:
            raise ResumeError(
                f"job state kind/version {data['kind']!r}/{data['version']!r}: this roxxel reads "
                f"{JOB_KIND!r} version {JOB_VERSION}"
            )
        for name, kind in _TYPES.items():
            value = data[name]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ResumeError(f"job state field {name!r} must be {kind.__name__}, got {value!r}")
        gens = data["generations"]
        if not isinstance(gens, list) or not gens:
            raise ResumeError(f"job state field 'generations' must be a non-empty list, got {gens!r}"[:300])
        generations = tuple(Generation.from_dict(g, f"job state field 'generations'[{i}]")
                            for i, g in enumerate(gens))
        return cls(**{k: data[k] for k in _SHARED}, generations=generations, lockstep=data["lockstep"])

    def consumer_state(self, rank: int, worker: int, position: int, topology: Generation,
                       history: tuple[Generation, ...]) -> IterState:
        return IterState(
            seed=self.seed, epoch=self.epoch, position=position, rank=rank, world_size=topology.world_size,
            worker=worker, num_workers=topology.num_workers, shuffle=self.shuffle, window=self.window,
            remainder=self.remainder, fingerprint=self.fingerprint, plan=self.plan, elastic=history or None,
        )

    def exact(self, counts: np.ndarray, heads: np.ndarray | None) -> Job:
        """This job with a lockstep generation's positions cut to each consumer's span
        (``counts`` and ``heads``: the shards', as the planner's)."""
        if not self.lockstep:
            return self
        *history, last = self.generations
        if history:
            _, segments = remaining(counts, seed=self.seed, epoch=self.epoch, shuffle=self.shuffle,
                                    window=self.window, remainder=self.remainder, generations=history,
                                    heads=heads)
            total = segments.total
        else:
            total = int(np.asarray(counts, dtype=np.int64).sum())
        positions = []
        for c, p in enumerate(last.positions):
            rank, worker = divmod(c, last.num_workers)
            lo, hi = span(total, rank, last.world_size, worker, last.num_workers, self.remainder)
            positions.append(min(p, hi - lo))
        gens = (*history, Generation(last.world_size, last.num_workers, tuple(positions)))
        return Job(**{k: getattr(self, k) for k in _SHARED}, generations=gens, lockstep=False)

    def resume_state(self, counts: np.ndarray, rank: int, world_size: int, worker: int, num_workers: int,
                     heads: np.ndarray | None) -> IterState:
        """The state consumer ``(rank, worker)`` of ``world_size x num_workers`` continues
        from (``counts`` and ``heads``: the shards', as the planner's)."""
        job = self.exact(counts, heads)
        *history, last = job.generations
        if not (0 <= rank < world_size and 0 <= worker < num_workers):
            raise ResumeError(f"rank {rank} worker {worker} is not a consumer of world_size={world_size}, "
                              f"num_workers={num_workers}")
        if (last.world_size, last.num_workers) == (world_size, num_workers):
            return job.consumer_state(rank, worker, last.positions[rank * num_workers + worker], last,
                                      tuple(history))
        if job.plan != plan_version(heads):
            raise ResumeError(
                f"the job state is of plan version {job.plan}; this roxxel resumes plan version "
                f"{plan_version(heads)} on another topology only: resume on world_size={last.world_size}, "
                f"num_workers={last.num_workers}, or with the roxxel that saved it"
            )
        topology = Generation(world_size, num_workers, (0,) * (world_size * num_workers))
        return job.consumer_state(rank, worker, 0, topology, fold(job.generations))


def job_state(states: Mapping[str, Any] | Iterable[Mapping[str, Any]], *, lockstep: bool = False) -> dict[str, Any]:
    """One JSON-ready state for a whole job, from its consumers' ``it.state()`` dicts.

    ``states`` are the states of every consumer (rank x worker) of one topology, in any
    order, or a job state (returned as it is). With ``lockstep=True`` the consumers not
    given are taken to have read as many records as the ones given (which must agree), or
    all of theirs if they have fewer: true of synchronous training where every consumer
    takes the same number of records per step. The result resumes with
    ``ds.resume(job, rank=..., world_size=..., worker=..., num_workers=...)`` on any
    topology. ResumeError if the states belong to different epochs, datasets, streams or
    topologies, or if a consumer is missing (without ``lockstep``). The states of a
    mixture's consumers give a mixture job state, which ``mixture.resume`` continues
    the same way (see :mod:`roxxel.read.mixjob`).
    """
    if isinstance(states, Mapping):
        if states.get("kind") == JOB_KIND:
            return Job.from_dict(states).to_dict()
        if states.get("kind") == MIX_JOB_KIND:
            return dict(states)  # checked against its mixture when it resumes
        states = [states]
    states = list(states)
    if states and isinstance(states[0], Mapping) and states[0].get("kind") == "roxxel-mixture-state":
        return mixture_job(states, MixState.from_dict, lockstep=lockstep)  # (see roxxel.read.mixjob)
    parsed = [IterState.from_dict(s) for s in states]
    rows, filled = consumers_of(parsed, (*_SHARED, "world_size", "num_workers", "elastic"),
                                lambda s: (s.position,), lockstep=lockstep)
    first = parsed[0]
    generation = Generation(first.world_size, first.num_workers, tuple(r[0] for r in rows))
    job = Job(**{k: getattr(first, k) for k in _SHARED}, generations=(*(first.elastic or ()), generation),
              lockstep=filled)
    return job.to_dict()


def resume_state(
    state: Mapping[str, Any], fingerprint: str, url: str, counts: np.ndarray, now: tuple[int, int, int, int],
    heads: np.ndarray | None,
) -> IterState:
    """The state a consumer of topology ``now`` (rank, world_size, worker, num_workers)
    continues from: ``state`` is a job state or one consumer's state. A consumer's state
    resumes that consumer; on another topology only if it was the only consumer.
    ``counts`` and ``heads`` are the shards' (the planner's)."""
    rank, world_size, worker, num_workers = now
    if isinstance(state, Mapping) and state.get("kind") == JOB_KIND:
        job = Job.from_dict(state)
    else:
        saved = IterState.from_dict(state)
        if (saved.world_size, saved.num_workers) == (world_size, num_workers) or saved.world_size * saved.num_workers > 1:
            return saved  # check_resumable says what is wrong with it, if anything
        job = Job.from_dict(job_state([saved.to_dict()]))
    if job.fingerprint != fingerprint:
        raise ResumeError(
            f"the job state belongs to another dataset or version (manifest fingerprint "
            f"{job.fingerprint}); {url} has {fingerprint}"
        )
    return job.resume_state(counts, rank, world_size, worker, num_workers, heads)
