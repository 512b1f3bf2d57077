"""A mixture consumer's state, a mixture job's checkpoint, and the plans that continue
it on another topology.

A mixture consumer reads, from each source, a prefix of that source's own plan for it
(:mod:`roxxel.read.mixplan`). So what a job has read of a ``"stop"`` source is exactly a
:class:`~roxxel.read.elastic.Generation` of that source's plans, whose positions are the
consumers' per-source counts: :mod:`roxxel.read.elastic` re-partitions what is left of
it over the new topology, every record once. A ``"repeat"`` source reads its records
again by design: on the new topology it starts a pass of its own (its windows keyed by
the generation). The schedule of sources starts over with the generation, so every new
consumer carries the weights exactly from its first record on. With ``samples=``, what
the job has not read of it is split over the new consumers.

A job state keeps, per generation (topology), each consumer's position, records read of
each source and (after a continuation with changes) where its schedule started:
O(generations x consumers x sources) integers, never per record.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..errors import ResumeError
from ..planner import PLAN_VERSION
from .elastic import Generation, consumer_plan, consumers_of, remaining, window_key
from .mixplan import MixSource, Topology, pass_seed

__all__ = ["MIX_JOB_KIND", "MixGeneration", "MixState", "elastic_segments", "mixture_job"]

MIX_JOB_KIND = "roxxel.mixture-job"
MIX_JOB_VERSION = 1
_LARGEST = 1 << 62


@dataclass(frozen=True)
class MixGeneration:
    """A topology a mixture job ran on, and where each consumer (``rank * num_workers +
    worker``) was: its position, its records of each source, and where its schedule
    started (0, or a continuation with changes)."""

    world_size: int
    num_workers: int
    positions: tuple[int, ...]
    consumed: tuple[tuple[int, ...], ...]
    since: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"world_size": self.world_size, "num_workers": self.num_workers, "positions": list(self.positions),
                "consumed": [list(c) for c in self.consumed], "since": list(self.since)}

    @classmethod
    def from_dict(cls, data: Any, sources: int, where: str = "generation") -> MixGeneration:
        keys = {"world_size", "num_workers", "positions", "consumed", "since"}
        if not isinstance(data, Mapping) or set(data) != keys:
            raise ResumeError(f"{where} must have the keys {sorted(keys)}, got {data!r}"[:300])
        w, n = data["world_size"], data["num_workers"]
        for name, v in (("world_size", w), ("num_workers", n)):
            if isinstance(v, bool) or not isinstance(v, int) or not 1 <= v <= 1 << 20:
                raise ResumeError(f"{where} field {name!r} must be an integer in [1, 2**20], got {v!r}")
        consumers = w * n
        for name in ("positions", "since"):
            v = data[name]
            if not isinstance(v, list) or len(v) != consumers or not all(_count(x) for x in v):
                raise ResumeError(f"{where} field {name!r} must be {consumers} integers in [0, 2**62)"[:300])
        rows = data["consumed"]
        if not isinstance(rows, list) or len(rows) != consumers or not all(
            isinstance(r, list) and len(r) == sources and all(_count(x) for x in r) for r in rows
        ):
            raise ResumeError(f"{where} field 'consumed' must be {consumers} lists of {sources} integers in [0, 2**62)")
        return cls(w, n, tuple(data["positions"]), tuple(tuple(r) for r in rows), tuple(data["since"]))


def _count(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < _LARGEST


def fold(generations: Sequence[MixGeneration]) -> tuple[MixGeneration, ...]:
    """The generations in which some consumer read something (the others changed nothing)."""
    return tuple(g for g in generations if any(g.positions))


def mixture_job(states: Iterable[Mapping[str, Any]], parse: Any, *, lockstep: bool) -> dict[str, Any]:
    """A mixture job state from its consumers' states (``parse``: ``MixState.from_dict``);
    see :func:`roxxel.job_state`."""
    parsed = [parse(s) for s in states]
    shared = ("mixture", "sources", "weights", "policies", "seed", "samples", "epoch", "world_size", "num_workers",
              "shuffle", "window", "remainder", "plan", "elastic")
    rows, filled = consumers_of(parsed, shared, lambda s: (s.position, tuple(s.consumed), s.since),
                                lockstep=lockstep)
    first = parsed[0]
    current = MixGeneration(first.world_size, first.num_workers, tuple(r[0] for r in rows),
                            tuple(r[1] for r in rows), tuple(r[2] for r in rows))
    return {"kind": MIX_JOB_KIND, "version": MIX_JOB_VERSION,
            **{k: getattr(first, k) for k in shared if k not in ("world_size", "num_workers", "elastic")},
            "lockstep": filled, "generations": [*(g.to_dict() for g in first.elastic or ()), current.to_dict()]}


def elastic_segments(
    sources: Sequence[MixSource], history: Sequence[MixGeneration], *, seed: int, epoch: int, topology: Topology,
    shuffle: bool, window: int, remainder: str,
) -> tuple[list[Any | None], list[int | None]]:
    """For consumer ``topology`` after the job's ``history``: each ``"stop"`` source's
    first segment (its share of what the generations left of the source) and the fewest
    records any consumer of the topology gets of it; None for ``"repeat"`` sources."""
    first: list[Any | None] = []
    fewest: list[int | None] = []
    t = topology
    for i, src in enumerate(sources):
        if src.policy != "stop":
            first.append(None)
            fewest.append(None)
            continue
        gens = [Generation(g.world_size, g.num_workers, tuple(row[i] for row in g.consumed)) for g in history]
        source_seed = pass_seed(seed, src.key, epoch, 0)  # the seed of the source's own plans
        stream, segments = remaining(src.counts, seed=source_seed, epoch=0, shuffle=shuffle, window=window,
                                     remainder=remainder, generations=gens, heads=src.heads)
        key = window_key(source_seed, 0, len(gens), t.rank, t.world_size, t.worker, t.num_workers) \
            if shuffle else None
        first.append(consumer_plan(stream, segments, rank=t.rank, world_size=t.world_size, worker=t.worker,
                                   num_workers=t.num_workers, window=window, remainder=remainder, key=key))
        total = segments.total
        per_rank = -(-total // t.world_size) if remainder == "pad" else total // t.world_size
        fewest.append(per_rank // t.num_workers)
    return first, fewest


@dataclass(frozen=True)
class MixState:
    """Where a consumer is in a mixture's epoch, and what that is a function of."""

    mixture: str  # the mixture's fingerprint
    sources: list[str]  # the sources' manifest fingerprints
    weights: list[int]
    policies: list[str]
    seed: int
    samples: int | None
    epoch: int
    position: int  # records read in this epoch, before the continuation included
    rank: int
    world_size: int
    worker: int
    num_workers: int
    shuffle: bool
    window: int
    remainder: str
    consumed: list[int]  # records of each source read in this epoch
    since: int  # the epoch position where this mixture's schedule started (0, or a resume with changes)
    plan: int = PLAN_VERSION
    # after an elastic resume, the job's generations before this topology's (mixjob); the
    # position and counts above are then this generation's
    elastic: tuple[MixGeneration, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        data = {"kind": "roxxel-mixture-state", **asdict(self)}
        data["elastic"] = None if self.elastic is None else [g.to_dict() for g in self.elastic]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MixState:
        if not isinstance(data, Mapping) or data.get("kind") != "roxxel-mixture-state":
            raise ResumeError("not a mixture iterator's state (no 'kind': 'roxxel-mixture-state'); "
                              "a dataset's state resumes with ds.resume")
        names = {f.name for f in fields(cls)}
        if "elastic" not in data:  # saved before elastic resume of mixtures
            data = {**data, "elastic": None}
        got = set(data) - {"kind"}
        if got != names:
            raise ResumeError(f"mixture state must have the keys {sorted(names)}, got {sorted(got)}")
        ints = ("seed", "epoch", "position", "rank", "world_size", "worker", "num_workers", "window", "since", "plan")
        for name in ints:
            v = data[name]
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < _LARGEST:
                raise ResumeError(f"mixture state field {name!r} must be an integer in [0, 2**62), got {v!r}")
        if data["window"] < 1:
            raise ResumeError(f"mixture state field 'window' must be at least 1, got {data['window']!r}")
        if data["samples"] is not None and (isinstance(data["samples"], bool) or not isinstance(data["samples"], int)):
            raise ResumeError(f"mixture state field 'samples' must be an integer or null, got {data['samples']!r}")
        for name, kind in (("mixture", str), ("remainder", str), ("shuffle", bool)):
            if not isinstance(data[name], kind):
                raise ResumeError(f"mixture state field {name!r} must be {kind.__name__}, got {data[name]!r}")
        lists = {"sources": str, "weights": int, "policies": str, "consumed": int}
        size = len(data["sources"]) if isinstance(data["sources"], list) else -1
        for name, kind in lists.items():
            v = data[name]
            if not isinstance(v, list) or len(v) != size or not all(
                isinstance(x, kind) and not isinstance(x, bool) and (kind is str or 0 <= x < _LARGEST) for x in v
            ):
                raise ResumeError(f"mixture state field {name!r} must be a list of {size} {kind.__name__}, got {v!r}")
        history = data["elastic"]
        if history is not None and not isinstance(history, list):
            raise ResumeError(f"mixture state field 'elastic' must be a list or null, got {history!r}"[:300])
        gens = None if history is None else tuple(
            MixGeneration.from_dict(g, size, f"mixture state field 'elastic'[{i}]") for i, g in enumerate(history))
        return cls(**{name: data[name] for name in names if name != "elastic"}, elastic=gens or None)
