"""Mixtures: several datasets read as one weighted, deterministic, resumable stream.

:func:`mix` opens the sources' manifests and puts every shard of every source in one
:class:`~roxxel.read.catalog.ShardCatalog`, read through one
:class:`~roxxel.read.residency.Residency`: one cache (whose limit holds across the
sources), one downloader and one order of next use, so eviction removes the shard
needed furthest ahead whatever its source, and ``lookahead`` counts the mixture's
shards. The order each consumer reads is :class:`~roxxel.read.mixplan.MixturePlan`'s.
"""

from __future__ import annotations

import hashlib
import json
import weakref
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from fractions import Fraction
from itertools import chain
from typing import Any

import numpy as np
import numpy.typing as npt

from ..backends import Store
from ..cache import ShardCache
from ..errors import ResumeError
from ..format.layout import payload_size
from ..manifest import Manifest
from ..manifest.io import dataset_store, read_manifest
from ..planner import DEFAULT_WINDOW, HEADS_PLAN_VERSION, PLAN_VERSION, plan_version
from .catalog import ShardCatalog
from .iteration import detect_topology
from .mixiter import MixtureIterator
from .mixjob import (
    MIX_JOB_KIND,
    MixGeneration,
    MixState,
    elastic_segments,
    fold,
    mixture_job,
)
from .mixplan import MixSource, MixturePlan, Topology, pass_seed
from .mixspec import (
    MixtureSpec,
    is_spec_location,
    load_spec,
    spec_from_arguments,
)
from .mixstream import mixture_batches, stream_length
from .records import Records
from .residency import Residency
from .schedule import Schedule, integer_weights
from .tokens import TokenWindows

__all__ = ["Mixture", "MixtureIterator", "mix"]


def _check_version(version: int, what: str) -> None:
    """ResumeError unless ``version`` is a plan version this roxxel reads."""
    if version not in (PLAN_VERSION, HEADS_PLAN_VERSION):
        raise ResumeError(f"the {what} is of plan version {version}; this roxxel reads {PLAN_VERSION} "
                          f"and {HEADS_PLAN_VERSION}")


def mix(
    sources: Sequence[Any] | str | Mapping[str, Any],
    weights: Sequence[float] | None = None,
    *,
    seed: int | None = None,
    samples: int | None = None,
    policy: str | Sequence[str] | None = None,
    cache_dir: str | None = None,
    cache_limit: int | str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    lookahead: int | None = None,
    download_workers: int | None = None,
    verify: str = "changed",
) -> Mixture:
    """Several datasets read as one stream in fixed proportions (see the README's
    "Mixing datasets" for the exact semantics).

    ``sources`` is a list whose items are open datasets, URLs, or mappings ``{"url": ...,
    "weight": ..., "policy": ..., "storage_options": {...}}``; or the path or URL of a
    mixture JSON document (see :mod:`roxxel.read.mixspec`), or such a document as a dict.
    ``weights`` (any positive numbers; None: proportional to the sources' record counts,
    a shuffled union) and ``policy`` (``"stop"``, the default, or ``"repeat"``; one for
    all or one per source) apply to sources that do not say; ``seed`` (default 0) is the
    default of :meth:`Mixture.iter`'s and ``stream``'s. ``samples`` is the epoch's
    length in records over all consumers; by default the epoch ends where the first
    ``"stop"`` source runs out. ``storage_options`` are for every source (and the
    document) that has none of its own. The cache settings are :func:`roxxel.open`'s;
    with no ``cache_dir``, an open dataset's cache is used, else the default one.
    """
    if isinstance(sources, str) and is_spec_location(sources):
        spec = load_spec(sources, storage_options)
    elif isinstance(sources, Mapping) and "format" in sources:
        spec = MixtureSpec.from_json(json.dumps(sources), where="the mixture document")
    elif isinstance(sources, str):
        raise ValueError(f"{sources!r} is not a mixture document (a .json path or URL): "
                         "give a list of datasets or URLs")
    else:
        spec = spec_from_arguments(sources, weights, 0 if seed is None else seed, samples, policy)
    if isinstance(sources, (str, Mapping)):
        given = [name for name, v in (("weights", weights), ("policy", policy), ("seed", seed), ("samples", samples))
                 if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)} come(s) from the mixture document: set them there")
    stores = [src.dataset.store if src.dataset is not None else
              dataset_store(src.url, src.storage_options if src.storage_options is not None else storage_options)
              for src in spec.sources]

    def manifest_of(i: int) -> Manifest:
        given = spec.sources[i].dataset
        return given.manifest if given is not None else read_manifest(stores[i])

    if sum(store.downloads_in_parts for store in stores) > 1:  # remote: each read is a round trip
        with ThreadPoolExecutor(min(8, len(stores)), thread_name_prefix="roxxel-mix-open") as pool:
            manifests = list(pool.map(manifest_of, range(len(stores))))
    else:
        manifests = [manifest_of(i) for i in range(len(stores))]
    opened = list(zip(stores, manifests))
    if cache_dir is None:
        given = next((s.dataset for s in spec.sources if s.dataset is not None), None)
        if given is not None:
            cache_dir = given.cache.directory
            cache_limit = given.cache.limit if cache_limit is None else cache_limit
    cache = ShardCache(cache_dir, cache_limit, verify=verify)
    where = sources if isinstance(sources, str) else None
    return Mixture(spec, opened, cache, lookahead=lookahead, download_workers=download_workers, url=where)


class Mixture:
    """Datasets read as one stream: ``len``, ``iter``, ``resume``, ``stats``, ``close``.

    Made by :func:`mix`. ``weights`` are the exact shares the schedule realizes
    (fractions with the period as denominator); ``records`` indexes every source's
    records end to end (source ``i``'s record ``j`` is ``records[record_offsets[i] + j]``).
    """

    def __init__(
        self,
        spec: MixtureSpec,
        opened: list[tuple[Store, Manifest]],
        cache: ShardCache,
        *,
        lookahead: int | None = None,
        download_workers: int | None = None,
        url: str | None = None,
    ) -> None:
        self.spec = spec
        self.stores = [store for store, _ in opened]
        self.manifests = [manifest for _, manifest in opened]
        self.urls = [store.base_url for store in self.stores]
        #: the mixture document's location, or the sources' URLs: what messages name
        self.url = url if url is not None else "mixture of " + ", ".join(self.urls)
        counts = [np.asarray(m.shards.records, dtype=np.int64) for m in self.manifests]
        given = [s.weight for s in spec.sources]
        if any(w is None for w in given) and any(w is not None for w in given):
            raise ValueError(f"give every source a weight or none: {self.urls[given.index(None)]} has none")
        raw = [int(c.sum()) for c in counts] if given[0] is None else given
        if given[0] is None and min(raw) <= 0:
            empty = self.urls[raw.index(min(raw))]
            raise ValueError(f"{empty} has no records: it cannot be mixed")
        self.schedule = Schedule(integer_weights(raw))
        self.weights: tuple[Fraction, ...] = self.schedule.weights
        self.policies = tuple(s.policy or "stop" for s in spec.sources)
        self.seed, self.samples = spec.seed, spec.samples
        keys, seen = [], {}
        for m in self.manifests:  # a source's key comes from its manifest (twice the same: two keys)
            fp = m.fingerprint()
            seen[fp] = seen.get(fp, -1) + 1
            keys.append(int(hashlib.sha256(f"{fp}#{seen[fp]}".encode()).hexdigest()[:15], 16))
        heads = [m.shards.head_records for m in self.manifests]
        self._sources = [MixSource(c, k, p, h) for c, k, p, h in zip(counts, keys, self.policies, heads)]
        #: the version of this mixture's plans (:func:`roxxel.planner.plan_version`): 3 where a
        #: source's shards have heads, which then lead its windows as they do ``ds.iter``'s
        self.plan_version = max(plan_version(h) for h in heads)
        catalog = ShardCatalog()
        self.shard_offsets = [catalog.add(store, m.shards) for store, m in opened] + [len(catalog)]
        self.record_offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum([int(c.sum()) for c in counts], out=self.record_offsets[1:])
        self.residency = Residency(catalog, cache, lookahead=lookahead, download_workers=download_workers,
                                   what=self.url)
        self.records = Records(np.concatenate(counts), self.residency)
        self._iterators: weakref.WeakSet[MixtureIterator] = weakref.WeakSet()
        self._read = np.zeros(len(counts), dtype=np.int64)  # records read by ended iterators

    # -- what it is --------------------------------------------------------------------

    def fingerprint(self) -> str:
        """Identifies the mixture: its sources' manifests, weights, policies and ``samples``
        (a state also holds the seed it was read with)."""
        doc = {"sources": [m.fingerprint() for m in self.manifests], "weights": list(self.schedule.n),
               "policies": list(self.policies), "samples": self.samples}
        return "sha256:" + hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()

    def __len__(self) -> int:
        """Records in an epoch read by one consumer (world size 1, no workers)."""
        return self._plan(epoch=0, topology=Topology(0, 1, 0, 1), shuffle=True, window=DEFAULT_WINDOW,
                          remainder="pad").length

    def consumer_length(self, epoch: int, rank: int, world_size: int, worker: int, num_workers: int, *,
                        shuffle: bool = True, window: int = DEFAULT_WINDOW, remainder: str = "pad",
                        history: Sequence[MixGeneration] | None = None) -> int:
        """Records consumer ``(rank, worker)`` reads in ``epoch`` (what its ``iter`` yields),
        or after the job's earlier ``history`` on other topologies (see :mod:`roxxel.read.mixjob`)."""
        return self._plan(epoch=epoch, topology=Topology(rank, world_size, worker, num_workers),
                          shuffle=shuffle, window=window, remainder=remainder, history=history or None).length

    def iter_after(self, history: Sequence[MixGeneration], *, epoch: int, seed: int, shuffle: bool, window: int,
                   remainder: str, rank: int, world_size: int, worker: int, num_workers: int,
                   start: int = 0) -> MixtureIterator:
        """Consumer ``(rank, worker)``'s records after the job's ``history`` on other
        topologies (see :mod:`roxxel.read.mixjob`), from its position ``start``."""
        self.records._check_open()
        self.residency.fit_window(window * len(self._sources))
        topology = Topology(rank, world_size, worker, num_workers)
        p = self._plan(epoch=epoch, topology=topology, shuffle=shuffle, window=window, remainder=remainder,
                       seed=seed, history=tuple(history))
        if not 0 <= start <= p.length:
            raise ResumeError(f"position {start} is outside this consumer's {p.length} records")
        return self._iterator(p, self._state(p, seed=seed, position=start, since=0, history=tuple(history)))

    def job_at(self, positions: Sequence[int], *, world_size: int, num_workers: int, epoch: int, seed: int,
               shuffle: bool, window: int, remainder: str,
               history: Sequence[MixGeneration] | None = None) -> dict[str, Any]:
        """The job state of the consumers of ``world_size x num_workers`` at ``positions``
        (consumer ``rank * num_workers + worker``), after ``history``: what a loader that
        counts batches saves (see :func:`roxxel.job_state`)."""
        consumed = []
        for c, position in enumerate(positions):
            rank, worker = divmod(c, num_workers)
            p = self._plan(epoch=epoch, topology=Topology(rank, world_size, worker, num_workers), shuffle=shuffle,
                           window=window, remainder=remainder, seed=seed, history=history or None)
            consumed.append(tuple(p.consumed(min(position, p.length)).tolist()))
        current = MixGeneration(world_size, num_workers, tuple(positions), tuple(consumed), (0,) * len(positions))
        return {"kind": MIX_JOB_KIND, "version": 1, **self._state_header(), "seed": seed, "epoch": epoch,
                "shuffle": shuffle, "window": window, "remainder": remainder, "plan": self.plan_version,
                "lockstep": False, "generations": [g.to_dict() for g in (*(history or ()), current)]}

    def history_of(self, job: Mapping[str, Any], *, world_size: int, num_workers: int
                   ) -> tuple[int, tuple[MixGeneration, ...], bool]:
        """A mixture job state's epoch, the generations a consumer of ``world_size x
        num_workers`` continues after, and whether that is the job's own topology (then
        the last generation is its own, not among them)."""
        state = self._from_job(job, Topology(0, world_size, 0, num_workers), self._state_header())
        gens = tuple(MixGeneration.from_dict(g, len(self._sources)) for g in job["generations"])
        same = (gens[-1].world_size, gens[-1].num_workers) == (world_size, num_workers)
        return state.epoch, tuple(state.elastic or ()), same

    @property
    def cache(self) -> ShardCache:
        return self.residency.cache

    @property
    def lookahead(self) -> int:
        return self.residency.lookahead

    def to_json(self) -> str:
        """The mixture's JSON document (no credentials): see :mod:`roxxel.read.mixspec`."""
        return self.spec.to_json()

    # -- reading -----------------------------------------------------------------------

    def iter(
        self,
        seed: int | None = None,
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
    ) -> MixtureIterator:
        """This consumer's records of ``epoch``, as ``ds.iter`` gives a dataset's.

        ``seed`` defaults to the mixture's. The topology is detected as ``ds.iter``
        detects it. ``window`` shards of each source (default 16) are shuffled together,
        so the cache must hold a window of every source at once. ``start`` skips that many
        of this consumer's records at O(#shards) cost."""
        self.records._check_open()
        topology = Topology(*detect_topology(rank, world_size, worker, num_workers))
        window = window or DEFAULT_WINDOW
        self.residency.fit_window(window * len(self._sources))
        seed = self.seed if seed is None else seed
        p = self._plan(epoch=epoch, topology=topology, shuffle=shuffle, window=window, remainder=remainder,
                       seed=seed)
        if not 0 <= start <= p.length:
            raise ValueError(f"start must be in [0, {p.length}], got {start}")
        state = self._state(p, seed=seed, position=start, since=0)
        return self._iterator(p, state)

    def resume(
        self,
        state: Mapping[str, Any],
        *,
        allow_changes: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        worker: int | None = None,
        num_workers: int | None = None,
    ) -> MixtureIterator:
        """An iterator that continues right after the last record ``state`` counted.

        ResumeError if the state is another mixture's (naming what differs), another
        consumer's or another topology's. With ``allow_changes=True``, a state saved
        with other weights, policies or ``samples``, or with sources added or removed,
        continues from how many records of each source the consumer had read: a source
        kept continues where it was in its own order, so no record read before is read
        again in the epoch; a new source starts from its beginning."""
        self.records._check_open()
        topology = Topology(*detect_topology(rank, world_size, worker, num_workers))
        now = self._state_header()
        if isinstance(state, Mapping) and state.get("kind") == MIX_JOB_KIND:
            saved = self._from_job(state, topology, now)
        else:
            saved = MixState.from_dict(state)
            moved = (saved.world_size, saved.num_workers) != (topology.world_size, topology.num_workers)
            if moved and saved.world_size * saved.num_workers == 1:  # a lone consumer: its job
                saved = self._from_job(mixture_job([saved.to_dict()], MixState.from_dict, lockstep=False),
                                       topology, now)
        same = {k: getattr(saved, k) for k in now} == now
        _check_version(saved.plan, "state")
        if (saved.world_size, saved.num_workers) != (topology.world_size, topology.num_workers):
            raise ResumeError(
                f"the state was saved with world_size={saved.world_size}, num_workers={saved.num_workers}; "
                f"this process runs with world_size={topology.world_size}, num_workers={topology.num_workers}. "
                "To continue on another topology, resume from the job's state (roxxel.job_state of every "
                "consumer's state)"
            )
        if (saved.rank, saved.worker) != (topology.rank, topology.worker):
            raise ResumeError(f"the state is rank {saved.rank} worker {saved.worker}'s; "
                              f"this is rank {topology.rank} worker {topology.worker}")
        if saved.elastic and not same:
            raise ResumeError("the state continues a job on another topology: it resumes on the same mixture "
                              "only (" + _differences(saved, now, self.urls) + ")")
        if not same and not allow_changes:
            raise ResumeError(
                "the state belongs to another mixture: " + _differences(saved, now, self.urls)
                + "; resume with resume(state, allow_changes=True) to continue from the records of each "
                "source already read"
            )
        self.residency.fit_window(saved.window * len(self._sources))  # as iter() does
        common: dict[str, Any] = {"epoch": saved.epoch, "topology": topology, "shuffle": saved.shuffle,
                                  "window": saved.window, "remainder": saved.remainder, "seed": saved.seed,
                                  "version": saved.plan}  # (2: as a roxxel that did not plan with heads)
        if same:  # the same mixture: the same plan (a continuation's base is in the state)
            offset = saved.position - saved.since
            common["history"] = saved.elastic
            p = self._plan(done=saved.since, **common)
            if not 0 <= offset <= p.length:
                raise ResumeError(f"position {saved.position} is outside this consumer's epoch")
            base = np.asarray(saved.consumed, dtype=np.int64) - p.schedule.counts(offset)
            if (base < 0).any() or (saved.since == 0 and base.any()):
                raise ResumeError(f"the state's per-source counts {saved.consumed} do not match its position "
                                  f"{saved.position}")
            if saved.since:
                p = self._plan(base=base, done=saved.since, **common)
            return self._iterator(p, self._state(p, seed=saved.seed, position=saved.position, since=saved.since,
                                                 history=saved.elastic))
        base = _base_for(saved, self.manifests, now["sources"])
        p = self._plan(base=base, done=saved.position, **common)
        state = self._state(p, seed=saved.seed, position=saved.position, since=saved.position)
        return self._iterator(p, state)

    def stream(
        self,
        seq_len: int,
        batch_size: int = 32,
        seed: int | None = None,
        start_step: int = 0,
        dtype: npt.DTypeLike = np.int32,
        *,
        epochs: int | None = 1,
        rank: int | None = None,
        world_size: int | None = None,
        start_sample: int = 0,
        heads: bool = True,
    ) -> Iterator[np.ndarray]:
        """``(batch_size, seq_len)`` token batches whose rows follow the mixture's weights,
        as ``ds.stream`` gives a dataset's (see :mod:`roxxel.read.mixstream`). ``seed``
        defaults to the mixture's; ``epochs=None`` never ends (needed when every source
        repeats); ``start_step`` resumes at once; ``start_sample`` continues a job whose
        ranks have read that many samples in all, on any world size and batch size;
        ``heads=False``: the sources' heads do not lead their order (as ``ds.stream``)."""
        self.records._check_open()
        rank, world_size, _, _ = detect_topology(rank, world_size, 0, 1)
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
        seed = self.seed if seed is None else seed
        windows = []
        for i, m in enumerate(self.manifests):
            table, first = m.shards, self.shard_offsets[i]
            sizes = payload_size(table.raw_size, table.records)
            windows.append(TokenWindows(sizes, lambda k, first=first: self.records.shard(first + k).payload,
                                        seq_len, dtype, table.head_bytes if heads else None))
        per_epoch = stream_length(self.schedule, windows, self.policies)
        if epochs is not None and per_epoch == 0:
            raise ValueError("every source of this mixture repeats: its stream has no epochs; use epochs=None")
        steps = None if epochs is None else max(0, int(epochs) * per_epoch - start_sample) // (batch_size * world_size)
        seeds = [pass_seed(seed, src.key, 0, 0) for src in self._sources]
        residency = self.residency
        residency.hold(min(batch_size, residency.mapping_cap))
        offsets = self.shard_offsets

        def prefetch(per_source: list[np.ndarray]) -> None:
            residency.prefetch(chain.from_iterable((s + offsets[i]).tolist() for i, s in enumerate(per_source)))

        return self.records._track(mixture_batches(windows, seeds, self.schedule, batch_size, start_step,
                                                   steps=steps, shard=(rank, world_size), start_sample=start_sample,
                                                   prefetch=prefetch,
                                                   lead=lambda i, k: residency.first_bytes(offsets[i] + k)))

    def _from_job(self, job: Mapping[str, Any], topology: Topology, now: Mapping[str, Any]) -> MixState:
        """The state consumer ``topology`` continues from, given a mixture job state: its
        own on the job's last topology, else a fresh one after all the job's generations."""
        header = {k: job.get(k) for k in now}
        if header != now:
            raise ResumeError("the job state belongs to another mixture: " + ", ".join(
                f"{k} {job.get(k)!r} in the job, {now[k]!r} here" for k in now
                if k != "mixture" and job.get(k) != now[k])[:600])
        keys = {"kind", "version", "lockstep", "generations", "seed", "epoch", "shuffle", "window", "remainder",
                "plan", *now}
        if set(job) != keys or job.get("version") != 1:
            raise ResumeError(f"a mixture job state has the keys {sorted(keys)} and version 1, got "
                              f"{sorted(job)} version {job.get('version')!r}"[:400])
        raw = job["generations"]
        if not isinstance(raw, list) or not raw:
            raise ResumeError("a mixture job state's 'generations' must be a non-empty list")
        gens = tuple(MixGeneration.from_dict(g, len(self._sources), f"job state 'generations'[{i}]")
                     for i, g in enumerate(raw))
        fields_ = {k: job[k] for k in ("seed", "epoch", "shuffle", "window", "remainder", "plan")}
        base = MixState.from_dict({"kind": "roxxel-mixture-state", **now, **fields_, "position": 0, "rank": 0,
                                   "world_size": 1, "worker": 0, "num_workers": 1,
                                   "consumed": [0] * len(self._sources), "since": 0, "elastic": None})
        _check_version(base.plan, "job state")
        *history, last = gens
        if job["lockstep"] is True:
            last = self._exact(last, tuple(history), base)
        c = topology.rank * topology.num_workers + topology.worker
        if (last.world_size, last.num_workers) == (topology.world_size, topology.num_workers):
            return replace(base, position=last.positions[c], consumed=list(last.consumed[c]), since=last.since[c],
                           rank=topology.rank, world_size=topology.world_size, worker=topology.worker,
                           num_workers=topology.num_workers, elastic=tuple(history) or None)
        if base.plan != self.plan_version:
            raise ResumeError(f"the state is of plan version {base.plan}: it continues on its own topology only "
                              f"(world_size={last.world_size}, num_workers={last.num_workers}); on another, this "
                              f"roxxel continues plan version {self.plan_version}")
        return replace(base, rank=topology.rank, world_size=topology.world_size, worker=topology.worker,
                       num_workers=topology.num_workers, elastic=fold((*history, last)) or None)

    def _exact(self, last: MixGeneration, history: tuple[MixGeneration, ...], base: MixState) -> MixGeneration:
        """A lockstep generation with every consumer's position cut to its epoch's end
        (consumers may read a record fewer than the ones whose state was saved)."""
        positions, consumed = list(last.positions), list(last.consumed)
        for c in range(last.world_size * last.num_workers):
            rank, worker = divmod(c, last.num_workers)
            p = self._plan(epoch=base.epoch, topology=Topology(rank, last.world_size, worker, last.num_workers),
                           shuffle=base.shuffle, window=base.window, remainder=base.remainder, seed=base.seed,
                           history=history or None, version=base.plan)
            if positions[c] > p.length:
                positions[c] = p.length
                consumed[c] = tuple(p.consumed(p.length).tolist())
        return replace(last, positions=tuple(positions), consumed=tuple(consumed))

    def _plan(self, *, epoch: int, topology: Topology, shuffle: bool, window: int, remainder: str,
              seed: int | None = None, base: np.ndarray | None = None, done: int = 0,
              history: Sequence[MixGeneration] | None = None, version: int | None = None) -> MixturePlan:
        """The plan of consumer ``topology``; ``version`` 2 plans it without the sources'
        heads (a state saved by a roxxel that did not plan with them), by default as
        :attr:`plan_version` says."""
        if version is not None:
            _check_version(version, "state")
        seed = self.seed if seed is None else seed
        sources = self._sources
        if version == PLAN_VERSION:
            sources = [replace(src, heads=None) for src in sources]
        if not history:
            return MixturePlan(sources, self.schedule, seed=seed, epoch=epoch, topology=topology,
                               samples=self.samples, shuffle=shuffle, window=window, remainder=remainder,
                               base=base, done=done)
        first, fewest = elastic_segments(sources, history, seed=seed, epoch=epoch, topology=topology,
                                         shuffle=shuffle, window=window, remainder=remainder)
        left = None if self.samples is None else max(0, self.samples - sum(sum(g.positions) for g in history))
        return MixturePlan(sources, self.schedule, seed=seed, epoch=epoch, topology=topology, samples=left,
                           shuffle=shuffle, window=window, remainder=remainder, base=base, done=done,
                           first=first, fewest=fewest, generation=len(history))

    def _state_header(self) -> dict[str, Any]:
        return {"mixture": self.fingerprint(), "sources": [m.fingerprint() for m in self.manifests],
                "weights": list(self.schedule.n), "policies": list(self.policies), "samples": self.samples}

    def _state(self, p: MixturePlan, *, seed: int, position: int, since: int,
               history: tuple[MixGeneration, ...] | None = None) -> MixState:
        t = p.topology
        return MixState(**self._state_header(), seed=seed, epoch=p.epoch, position=position, rank=t.rank, world_size=t.world_size,
                        worker=t.worker, num_workers=t.num_workers, shuffle=p.shuffle, window=p.window,
                        remainder=p.remainder, consumed=p.consumed(position - since).tolist(), since=since,
                        elastic=history or None, plan=p.version)

    def _iterator(self, p: MixturePlan, state: MixState) -> MixtureIterator:
        it = MixtureIterator(self, p, state)
        self._iterators.add(it)
        return it

    # -- what happened -----------------------------------------------------------------

    @property
    def stats(self) -> dict[str, Any]:
        """The residency's statistics over all sources, and per source (``"sources"``, one
        dict each: ``url``, ``weight``, ``records`` read by this process's iterators,
        ``shards_downloaded``, ``cache_hits``, ``bytes_downloaded``), with the realized
        proportions of the records read (``"proportions"``)."""
        read = self._read.copy()
        for it in list(self._iterators):
            read += it.read_per_source()
        total = int(read.sum())
        per = []
        for i, url in enumerate(self.urls):
            entry = {"url": url, "weight": float(self.weights[i]), "records": int(read[i])}
            entry.update(self.residency.stats_of(self.shard_offsets[i], self.shard_offsets[i + 1]))
            per.append(entry)
        return {**self.residency.stats, "sources": per,
                "proportions": [float(r) / total if total else 0.0 for r in read.tolist()]}

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the downloads, unmap every shard and release the cache (idempotent). Open
        datasets given as sources stay open."""
        self.residency.close()
        self.records._close_records()

    def __enter__(self) -> Mixture:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled for DataLoader workers like a dataset: the same manifests, stores and
        cache settings (credentials included, for the worker's use only; never written)."""
        res = self.residency
        spec = MixtureSpec(tuple(replace(src, dataset=None) for src in self.spec.sources), self.spec.seed,
                           self.spec.samples)  # the open datasets given stay here: the copy needs only their manifests
        return (_unpickle_mixture, (spec, self.stores, self.manifests, self.cache.directory, self.cache.limit,
                                    res.chosen_lookahead, res.download_workers, self.cache.verify_mode, self.url))

    def __repr__(self) -> str:
        parts = ", ".join(f"{u} {float(w):.3g}" for u, w in zip(self.urls, self.weights))
        return f"Mixture({parts})"


def _unpickle_mixture(spec: MixtureSpec, stores: list[Store], manifests: list[Manifest], cache_dir: str,
                      cache_limit: int | None, lookahead: int | None, workers: int, verify: str,
                      url: str | None = None) -> Mixture:
    return Mixture(spec, list(zip(stores, manifests)), ShardCache(cache_dir, cache_limit, verify=verify),
                   lookahead=lookahead, download_workers=workers, url=url)


def _differences(saved: MixState, now: Mapping[str, Any], urls: list[str]) -> str:
    out = []
    if saved.sources != now["sources"]:
        gone = [fp for fp in saved.sources if fp not in now["sources"]]
        new = [urls[i] for i, fp in enumerate(now["sources"]) if fp not in saved.sources]
        out.append(f"sources differ ({len(gone)} of the state's are not here; new here: {new})")
    for name in ("weights", "policies", "samples"):
        if getattr(saved, name) != now[name]:
            out.append(f"{name} {getattr(saved, name)} in the state, {now[name]} here")
    return "; ".join(out) or "its fingerprint differs"


def _base_for(saved: MixState, manifests: list[Manifest], fingerprints: list[str]) -> np.ndarray:
    """Records of each current source the consumer had read, from a state of another
    mixture (matched by manifest fingerprint; a source new here starts at 0)."""
    counts: dict[str, list[int]] = {}
    for fp, n in zip(saved.sources, saved.consumed):
        counts.setdefault(fp, []).append(n)
    base = []
    for fp in fingerprints:
        got = counts.get(fp)
        base.append(got.pop(0) if got else 0)
    return np.asarray(base, dtype=np.int64)
