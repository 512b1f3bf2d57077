"""Mixtures: the schedule's bound, the per-consumer plan, resume, policies, JSON, stores, torch."""

from __future__ import annotations

import collections
import itertools
import json
import os
import subprocess
import sys
import textwrap
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import roxxel
from roxxel.errors import ManifestError, ResumeError
from roxxel.read.mixplan import MixSource, MixturePlan, Topology
from roxxel.read.mixspec import MixtureSpec
from roxxel.read.schedule import MAX_PERIOD, Schedule, integer_weights

# -- the schedule ----------------------------------------------------------------------------


def _prefix_counts(schedule: Schedule, length: int) -> np.ndarray:
    """counts[i, t]: how often source i comes in positions 0..t-1, for t = 0..length."""
    srcs = schedule.sources(0, length)
    out = np.zeros((len(schedule.n), length + 1), dtype=np.int64)
    for i in range(len(schedule.n)):
        np.cumsum(srcs == i, out=out[i, 1:])
    return out


weights_strategy = st.lists(
    st.one_of(st.integers(1, 1000), st.floats(0.001, 1000, allow_nan=False, allow_infinity=False)),
    min_size=1, max_size=7,
)


@settings(max_examples=60, deadline=None)
@given(weights=weights_strategy, offset=st.integers(0, 10**12))
def test_every_prefix_is_within_one_and_every_run_within_two_of_its_share(weights, offset):
    schedule = Schedule(integer_weights(weights))
    length = min(2 * schedule.period + 7, 20_000)
    counts = _prefix_counts(schedule, length)
    w = np.asarray([float(x) for x in schedule.weights])[:, None]
    t = np.arange(length + 1)
    prefix = np.abs(counts - w * t)
    assert prefix.max() < 1 - 1 / (2 * len(weights) - 2) + 1e-9 if len(weights) > 1 else prefix.max() == 0
    for b in sorted({1, 2, 3, 7, 64, schedule.period, length // 3, length}):
        if 0 < b <= length:
            runs = counts[:, b:] - counts[:, :-b]
            assert np.abs(runs - w * b).max() < 2
    # a position far away is the same function of the position: counts without replay
    far = offset * schedule.period + 5
    assert schedule.counts(far).sum() == far
    assert np.array_equal(schedule.counts(far) - schedule.counts(offset * schedule.period),
                          schedule.counts(5))


def test_integer_weights_read_decimal_weights_as_the_fractions_meant():
    assert integer_weights([0.5, 0.3, 0.2]) == (5, 3, 2)
    assert integer_weights([7, 2, 1]) == (7, 2, 1)
    assert integer_weights([2, 2]) == (1, 1)
    odd = integer_weights([1, 1e-9])  # a weight below 1/MAX_PERIOD keeps the smallest share
    assert sum(odd) == MAX_PERIOD and min(odd) == 1
    with pytest.raises(ValueError, match="positive finite"):
        integer_weights([1, 0])
    with pytest.raises(ValueError, match="positive finite"):
        integer_weights([1, float("nan")])


def test_schedule_positions_and_counts_agree():
    s = Schedule((5, 3, 2))
    srcs = s.sources(0, 100)
    for i in range(3):
        positions = np.flatnonzero(srcs == i)
        assert [s.position_of(i, k) for k in range(len(positions))] == positions.tolist()
        assert s.positions_of(i, np.arange(len(positions))).tolist() == positions.tolist()


# -- the per-consumer plan (pure) ------------------------------------------------------------


def _sources(sizes, policies, shard=37):
    out = []
    for k, (n, policy) in enumerate(zip(sizes, policies)):
        counts = np.full(n // shard, shard, dtype=np.int64)
        if n % shard:
            counts = np.append(counts, n % shard)
        out.append(MixSource(counts, key=1000 + k, policy=policy))
    return out


def _consumer_sequence(sources, n, topology, samples=None, epoch=0):
    p = MixturePlan(sources, Schedule(n), seed=3, epoch=epoch, topology=topology, samples=samples,
                    shuffle=True, window=4, remainder="pad")
    srcs, per = p.records(0, p.length)
    return p, srcs, per


@settings(max_examples=25, deadline=None)
@given(
    weights=st.lists(st.integers(1, 9), min_size=2, max_size=4),
    world_size=st.integers(1, 4),
    workers=st.integers(1, 3),
    b=st.integers(1, 200),
)
def test_every_consumer_carries_the_mix_in_every_run_and_consumers_are_disjoint(weights, world_size, workers, b):
    n = integer_weights(weights)
    sizes = [600 + 50 * i for i in range(len(n))]
    sources = _sources(sizes, ["stop"] * len(n))
    share = np.asarray([float(Fraction(k, sum(n))) for k in n])
    lengths, seen = set(), [collections.Counter() for _ in n]
    for rank in range(world_size):
        for worker in range(workers):
            p, srcs, per = _consumer_sequence(sources, n, Topology(rank, world_size, worker, workers))
            lengths.add(p.length)
            onehot = np.stack([srcs == i for i in range(len(n))]).astype(np.int64)
            cum = np.concatenate([np.zeros((len(n), 1), dtype=np.int64), np.cumsum(onehot, axis=1)], axis=1)
            if 0 < b <= p.length:
                runs = cum[:, b:] - cum[:, :-b]
                assert np.abs(runs - share[:, None] * b).max() < 2
            for i, ids in enumerate(per):
                assert len(ids) == int(onehot[i].sum())
                seen[i].update(ids.tolist())
    assert len(lengths) == 1  # every consumer reads as many records
    for i, counter in enumerate(seen):  # within a pass, no record twice (pad's wrap aside)
        repeats = sum(c - 1 for c in counter.values())
        assert repeats <= world_size  # "pad" wraps a rank's span around: fewer than world_size
        assert max(counter) < sizes[i]


@pytest.mark.parametrize("world_size", [1, 2, 3, 7])
def test_world_sizes_equal_counts_disjoint_and_deterministic_across_processes(world_size):
    sources = _sources([3000, 2000, 500], ["stop", "stop", "repeat"])
    n = integer_weights([0.5, 0.3, 0.2])
    sequences = []
    for rank in range(world_size):
        _p, srcs, per = _consumer_sequence(sources, n, Topology(rank, world_size, 0, 1))
        sequences.append((srcs, per))
    assert len({len(s) for s, _ in sequences}) == 1
    for i in (0, 1):  # the stop sources: no record read by two ranks (pad's wrap aside)
        ids = np.concatenate([per[i] for _, per in sequences])
        assert len(ids) - len(np.unique(ids)) < world_size
        # and each rank reads (so downloads) about 1/world_size of the source's shards
        starts = np.concatenate([[0], np.cumsum(sources[i].counts)])
        for _, per in sequences:
            shards = np.unique(np.searchsorted(starts, per[i], side="right") - 1)
            assert len(shards) <= -(-len(sources[i].counts) // world_size) + 2
    digest = json.dumps([[s.tolist(), [x.tolist() for x in per]] for s, per in sequences])
    code = textwrap.dedent(f"""
        import json, numpy as np
        from roxxel.read.mixplan import MixSource, MixturePlan, Topology
        from roxxel.read.schedule import Schedule, integer_weights
        def src(n, policy, key):
            c = np.full(n // 37, 37, dtype=np.int64)
            return MixSource(np.append(c, n % 37) if n % 37 else c, key=key, policy=policy)
        sources = [src(3000, "stop", 1000), src(2000, "stop", 1001), src(500, "repeat", 1002)]
        out = []
        for rank in range({world_size}):
            p = MixturePlan(sources, Schedule(integer_weights([0.5, 0.3, 0.2])), seed=3, epoch=0,
                            topology=Topology(rank, {world_size}, 0, 1), samples=None, shuffle=True,
                            window=4, remainder="pad")
            s, per = p.records(0, p.length)
            out.append([s.tolist(), [x.tolist() for x in per]])
        print(json.dumps(out))
    """)
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == digest


def test_the_epoch_ends_where_the_first_stop_source_runs_out_and_repeat_sources_repeat():
    sources = _sources([1000, 90], ["stop", "repeat"])
    p, _srcs, per = _consumer_sequence(sources, (1, 1), Topology(0, 1, 0, 1))
    assert p.length == 2000  # source 0 reads all 1000 records: the epoch ends before its 1001st
    assert len(per[0]) == 1000 and sorted(per[0].tolist()) == list(range(1000))
    # the repeat source made 11+ passes, each one all of its records, each reshuffled
    passes = [per[1][k : k + 90] for k in range(0, len(per[1]) - 90, 90)]
    assert all(sorted(x.tolist()) == list(range(90)) for x in passes)
    assert len({tuple(x.tolist()) for x in passes}) == len(passes)
    stop_both = _sources([1000, 90], ["stop", "stop"])
    p2, _, per2 = _consumer_sequence(stop_both, (1, 1), Topology(0, 1, 0, 1))
    assert len(per2[1]) == 90 and p2.length < 200
    p3, _, _per3 = _consumer_sequence(sources, (1, 1), Topology(0, 1, 0, 1), samples=301)
    assert p3.length == 301
    with pytest.raises(ValueError, match="all repeat needs samples="):
        _consumer_sequence(_sources([100, 90], ["repeat", "repeat"]), (1, 1), Topology(0, 1, 0, 1))


# -- datasets --------------------------------------------------------------------------------


def _write(url, n, tag, options=None, shard_bytes=2048):
    with roxxel.Writer(url, shard_bytes=shard_bytes, storage_options=options or {}) as w:
        w.extend(f"{tag}{i:06d}".encode() for i in range(n))


@pytest.fixture
def three(new_location, tmp_path):
    """Three sources: on the S3 server, the GCS server and local disk."""
    locs = [new_location("s3"), new_location("gcs"), new_location("local")]
    for (url, opts), n, tag in zip(locs, (1200, 600, 150), "abc"):
        _write(url, n, tag, opts)
    return locs


def _names(records):
    return [bytes(r).decode() for r in records]


def test_one_mixture_over_s3_gcs_and_local_resumes_anywhere_exactly(three, tmp_path):
    sources = [{"url": u, "storage_options": o} for u, o in three]
    with roxxel.mix(sources, [0.5, 0.3, 0.2], policy=["stop", "stop", "repeat"],
                    cache_dir=str(tmp_path / "cache")) as m:
        epoch = _names(m.iter(seed=5))
        assert len(epoch) == len(m)
        counts = collections.Counter(x[0] for x in epoch)
        assert counts["b"] == 600 and len({x for x in epoch if x[0] == "b"}) == 600
        assert abs(counts["a"] - 0.5 * len(epoch)) < 1 and abs(counts["c"] - 0.2 * len(epoch)) < 1
        for cut in (0, 1, 333, len(epoch) - 1, len(epoch)):
            it = m.iter(seed=5)
            head = [bytes(next(it)).decode() for _ in range(cut)]
            state = json.loads(json.dumps(it.state()))
            assert state["consumed"] == [sum(1 for x in head if x[0] == t) for t in "abc"]
            assert head + _names(m.resume(state)) == epoch
        assert _names(m.iter(seed=5, start=333)) == epoch[333:]
        stats = m.stats
        assert [s["url"] for s in stats["sources"]] == [u for u, _ in three]
        assert all(s["shards_downloaded"] >= 1 for s in stats["sources"])
        assert abs(stats["proportions"][0] - 0.5) < 0.01
        assert _names(m.iter(seed=5, epoch=1)) != epoch


def test_a_state_of_another_mixture_is_refused_naming_what_differs(three, tmp_path):
    sources = [{"url": u, "storage_options": o} for u, o in three]
    cache = str(tmp_path / "cache")
    with roxxel.mix(sources, [0.5, 0.3, 0.2], cache_dir=cache) as m:
        it = m.iter()
        head = [bytes(next(it)).decode() for _ in range(200)]
        state = it.state()
    with roxxel.mix(sources, [0.6, 0.2, 0.2], cache_dir=cache) as other:
        with pytest.raises(ResumeError, match=r"weights \[5, 3, 2\] in the state, \[3, 1, 1\] here"):
            other.resume(state)
        rest = _names(other.resume(state, allow_changes=True))
        # no record read before is read again in the epoch
        assert not set(head) & set(rest)
        assert all(x not in head for x in rest)
    with roxxel.mix(sources[:2], [0.5, 0.5], cache_dir=cache) as fewer:
        with pytest.raises(ResumeError, match="sources differ"):
            fewer.resume(state)
        rest = _names(fewer.resume(state, allow_changes=True))
        assert not set(head) & set(rest) and {x[0] for x in rest} <= {"a", "b"}
    with roxxel.mix(sources, [0.5, 0.3, 0.2], cache_dir=cache) as same:
        with pytest.raises(ResumeError, match="rank 0 worker 0's; this is rank 1"):
            same.resume(state, rank=1, world_size=1)
        with pytest.raises(ResumeError, match="not a mixture iterator's state"):
            same.resume({"seed": 0})


def test_the_mixture_document_resolves_relative_urls_and_never_holds_credentials(tmp_path):
    for name, n in (("web", 300), ("code", 100)):
        _write(str(tmp_path / "data" / name), n, name[0])
    doc = {"format": "roxxel-mixture", "version": 1, "seed": 7, "samples": 200,
           "sources": [{"url": "data/web", "weight": 3}, {"url": "data/code", "weight": 1, "policy": "repeat"}]}
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(doc))
    with roxxel.mix(str(path), cache_dir=str(tmp_path / "cache")) as m:
        assert len(m) == 200 and m.seed == 7
        assert collections.Counter(x[0] for x in _names(m.iter())) == {"w": 150, "c": 50}
        again = json.loads(m.to_json())
        assert again["sources"][0]["url"] == str(tmp_path / "data" / "web")
    for bad, message in (
        ({**doc, "storage_options": {"key": "secret"}}, "never holds credentials"),
        ({**doc, "sources": [{"url": "x", "storage_options": {}}]}, r"sources\[0\]: a mixture document never"),
        ({**doc, "weights": [1]}, r"unknown field\(s\) \['weights'\]"),
        ({**doc, "version": 2}, "field 'version' must be 1, got 2"),
        ({**doc, "sources": [{"url": "x", "weight": -1}]}, r"sources\[0\]: field 'weight' must be a positive"),
        ({**doc, "sources": [{"url": "x", "policy": "loop"}]}, r"field 'policy' must be one of"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ManifestError, match=message):
            roxxel.mix(str(path))


def _size_of(folder) -> int:
    total = 0
    for p in folder.rglob("*"):
        try:
            total += p.stat().st_size if p.is_file() else 0
        except FileNotFoundError:  # evicted, or a download's temporary file renamed meanwhile
            pass
    return total


def test_cache_limit_holds_across_sources(tmp_path):
    for name, n in (("a", 3000), ("b", 3000)):
        _write(str(tmp_path / name), n, name, shard_bytes=4096)
    cache = tmp_path / "cache"
    shard = max(os.path.getsize(p) for p in (tmp_path / "a").rglob("*.rox"))
    limit = 12 * shard
    with roxxel.mix([str(tmp_path / "a"), str(tmp_path / "b")], cache_dir=str(cache), cache_limit=limit) as m:
        published = in_all = 0
        for k, _ in enumerate(m.iter(window=2)):
            if k % 100 == 0:
                published = max(published, _size_of(cache / "shards"))
                in_all = max(in_all, _size_of(cache / "shards") + _size_of(cache / "tmp"))
        # the limit holds across the sources, as for one dataset (test_dataset.py): published
        # shards and downloads in flight together exceed it by the downloads in flight at most
        assert published <= in_all <= limit + max(m.lookahead, 1) * shard, (published, in_all, m.lookahead)
        assert m.stats["shards_downloaded"] > 12  # it had to evict to get through the epoch


def test_weights_none_is_a_shuffled_union(tmp_path):
    for name, n in (("a", 500), ("b", 250)):
        _write(str(tmp_path / name), n, name)
    with roxxel.mix([str(tmp_path / "a"), str(tmp_path / "b")], cache_dir=str(tmp_path / "c")) as m:
        got = _names(m.iter())
        assert m.weights == (Fraction(2, 3), Fraction(1, 3))
        assert sorted(got) == sorted([f"a{i:06d}" for i in range(500)] + [f"b{i:06d}" for i in range(250)])


TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from roxxel.torch import IterableRecords, StatefulLoader

    dist.init_process_group("gloo")
    doc, cache = sys.argv[1], sys.argv[2]
    records = IterableRecords(doc, cache_dir=cache, batch_size=8, window=4,
                              collate=lambda rs: [bytes(r).decode() for r in rs])
    loader = StatefulLoader(records, num_workers=2)
    mine = [x for batch in loader for x in batch]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(gathered), flush=True)
    dist.destroy_process_group()
    """
)


def test_torchrun_three_ranks_two_workers_over_a_three_source_mixture(tmp_path):
    for name, n in (("web", 900), ("code", 600), ("math", 120)):
        _write(str(tmp_path / name), n, name[0])
    doc = {"format": "roxxel-mixture", "version": 1, "seed": 1,
           "sources": [{"url": "web", "weight": 0.5}, {"url": "code", "weight": 0.3},
                       {"url": "math", "weight": 0.2, "policy": "repeat"}]}
    (tmp_path / "mix.json").write_text(json.dumps(doc))
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=3", "--standalone",
         str(script), str(tmp_path / "mix.json"), str(tmp_path / "cache")],
        check=False, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    per_rank = json.loads(line[len("RESULT "):])
    assert len({len(r) for r in per_rank}) == 1 and len(per_rank[0]) > 0
    web = [x for r in per_rank for x in r if x[0] == "w"]
    code = [x for r in per_rank for x in r if x[0] == "c"]
    assert len(set(web)) == len(web) and len(set(code)) >= len(code) - 3  # pad's wrap aside
    for r in per_rank:  # every rank carries the mix
        c = collections.Counter(x[0] for x in r)
        assert abs(c["w"] - 0.5 * len(r)) < 4 and abs(c["m"] - 0.2 * len(r)) < 4


def test_token_streams_over_a_mixture_carry_the_weights_split_ranks_and_resume(tmp_path):
    for name, base, n in (("a", 0, 60), ("b", 10**6, 30)):
        with roxxel.Writer(str(tmp_path / name), shard_bytes=4096) as w:
            w.extend(np.arange(base + i * 64, base + (i + 1) * 64, dtype=np.int32) for i in range(n))
    with roxxel.mix([str(tmp_path / "a"), str(tmp_path / "b")], [0.75, 0.25], cache_dir=str(tmp_path / "c")) as m:
        batches = list(m.stream(16, batch_size=8, seed=1))
        assert batches[0].shape == (8, 16) and batches[0].dtype == np.int32
        for b in batches:  # every batch carries the mix: 6 rows of a, 2 of b
            assert int((b[:, 0] >= 10**6).sum()) == 2
        firsts = [int(r[0]) for b in batches for r in b]
        assert len(set(firsts)) == len(firsts)  # one epoch: no window twice
        resumed = list(m.stream(16, batch_size=8, seed=1, start_step=5))
        assert len(resumed) == len(batches) - 5
        assert all(np.array_equal(x, y) for x, y in zip(batches[5:], resumed))
        ranks = [[int(r[0]) for b in m.stream(16, batch_size=4, seed=1, rank=r, world_size=2) for r in b]
                 for r in range(2)]
        assert len(ranks[0]) == len(ranks[1]) > 0 and not set(ranks[0]) & set(ranks[1])


def test_roxxel_plan_and_warm_take_a_mixture_document(tmp_path, capsys):
    from roxxel.cli import main

    for name, n in (("web", 3000), ("code", 1000)):
        _write(str(tmp_path / name), n, name[0], shard_bytes=4096)
    doc = tmp_path / "mix.json"
    doc.write_text(json.dumps({"format": "roxxel-mixture", "version": 1,
                               "sources": [{"url": "web", "weight": 3}, {"url": "code", "weight": 1}]}))
    assert main(["plan", str(doc), "--world-size", "2", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert [[s["records"] for s in r["sources"]] for r in summary["ranks"]] == [[1500, 500], [1500, 500]]
    rank0 = summary["ranks"][0]["sources"]
    assert main(["warm", str(doc), "--cache-dir", str(tmp_path / "c"), "--rank", "0", "--world-size", "2",
                 "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["shards_fetched"] == sum(s["shards"] for s in rank0)
    with roxxel.mix(str(doc), cache_dir=str(tmp_path / "c")) as m:  # rank 0 then reads from the cache only
        list(m.iter(rank=0, world_size=2))
        assert m.stats["shards_downloaded"] == 0


JAX_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    import roxxel
    from roxxel.jax import global_batches

    with roxxel.mix([sys.argv[1], sys.argv[2]], [0.75, 0.25], cache_dir=sys.argv[3]) as m:
        local = list(m.stream(seq_len=16, batch_size=4, seed=3))
        arrays = list(global_batches(iter(local)))
    assert len(arrays) == len(local) > 0
    for a, b in zip(arrays, local):
        assert a.shape == (4, 16) and np.array_equal(np.asarray(a), b)
        assert int((np.asarray(a)[:, 0] >= 10**6).sum()) == 1  # every global batch carries the mix
    print("OK", len(arrays))
    """
)


def test_the_jax_helper_takes_a_mixture_stream(tmp_path):
    for name, base, n in (("a", 0, 48), ("b", 10**6, 16)):
        with roxxel.Writer(str(tmp_path / name), shard_bytes=4096) as w:
            w.extend(np.arange(base + i * 64, base + (i + 1) * 64, dtype=np.int32) for i in range(n))
    script = tmp_path / "jax_mix.py"
    script.write_text(JAX_SCRIPT)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, str(script), str(tmp_path / "a"), str(tmp_path / "b"),
                          str(tmp_path / "cache")], check=False, capture_output=True, text=True, env=env,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("OK ")


def _decoded(records):  # a module-level function: spawned workers unpickle it
    return [bytes(r).decode() for r in records]


@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, "fork"), (2, "spawn")])
def test_stateful_loader_over_a_mixture_resumes_mid_epoch_exactly(tmp_path, workers, context):
    from roxxel.torch import IterableRecords, StatefulLoader

    for name, n in (("a", 900), ("b", 400), ("c", 90)):
        _write(str(tmp_path / name), n, name)

    def loader():
        m = roxxel.mix([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")], [0.5, 0.3, 0.2],
                       policy=["stop", "stop", "repeat"], cache_dir=str(tmp_path / "cache"))
        records = IterableRecords(m, batch_size=16, collate=_decoded)
        return StatefulLoader(records, num_workers=workers, multiprocessing_context=context)

    full = list(loader())
    assert sum(map(len, full)) > 0
    head, it = [], iter(loader_ := loader())
    for batch in it:
        head.append(batch)
        if len(head) == 7:
            break
    state = json.loads(json.dumps(loader_.state_dict()))
    del it
    fresh = loader()
    fresh.load_state_dict(state)
    assert head + list(fresh) == full
    names = [x for b in full for x in b]
    assert len({x for x in names if x[0] == "b"}) == sum(1 for x in names if x[0] == "b")


def test_the_documents_seed_is_the_default_everywhere_and_arguments_do_not_override_it(tmp_path, capsys):
    from roxxel.cli import main
    from roxxel.torch import IterableRecords

    for name, n in (("web", 600), ("code", 200)):
        _write(str(tmp_path / name), n, name[0])
    doc = tmp_path / "mix.json"
    doc.write_text(json.dumps({"format": "roxxel-mixture", "version": 1, "seed": 7,
                               "sources": [{"url": "web", "weight": 3}, {"url": "code", "weight": 1}]}))
    cache = str(tmp_path / "cache")
    with roxxel.mix(str(doc), cache_dir=cache) as m:
        own = _names(m.iter())
        assert own == _names(m.iter(seed=7)) != _names(m.iter(seed=0))
    records = IterableRecords(str(doc), cache_dir=cache, collate=_decoded)
    assert records.seed == 7 and [_names([r])[0] for r in records] == own
    assert main(["plan", str(doc), "--world-size", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 7
    for extra in ({"seed": 3}, {"samples": 10}, {"weights": [1, 1]}):
        with pytest.raises(ValueError, match="come.* from the mixture document"):
            roxxel.mix(str(doc), **extra)


def test_hostile_documents_states_and_weights_are_refused_clearly(tmp_path):
    for name, n in (("a", 300), ("b", 100)):
        _write(str(tmp_path / name), n, name)
    doc = {"format": "roxxel-mixture", "version": 1,
           "sources": [{"url": "a"}, {"url": "b", "weight": 3}]}
    path = tmp_path / "mix.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ManifestError, match=r"sources\[0\]: field 'weight' is missing"):
        roxxel.mix(str(path))
    with pytest.raises(ManifestError, match="leaves the document's bucket s3://b"):
        MixtureSpec.from_json(json.dumps({**doc, "sources": [{"url": "../../other/x"}]}), base="s3://b/docs")
    srcs = [str(tmp_path / "a"), str(tmp_path / "b")]
    with roxxel.mix(srcs, [np.float32(0.75), np.int64(1)], cache_dir=str(tmp_path / "c")) as m:
        assert m.weights == (Fraction(3, 7), Fraction(4, 7))
        it = m.iter()
        next(it)
        state = it.state()
        for field, value in (("consumed", [10**30, 0]), ("consumed", [-1, 0]), ("window", 2**62),
                             ("position", -5), ("window", 0)):
            with pytest.raises(ResumeError, match=f"field '{field}'"):
                m.resume({**state, field: value}, allow_changes=True)
    largest = max(os.path.getsize(f) for f in tmp_path.glob("[ab]/**/*.rox"))
    with roxxel.mix(srcs, cache_dir=str(tmp_path / "c2"), cache_limit=2 * largest) as small:
        with pytest.raises(roxxel.CacheError, match="lower window= or raise cache_limit"):
            small.resume({**state, "window": 64, "mixture": "sha256:other"}, allow_changes=True)


def test_a_repeat_source_keeps_each_ranks_share_of_its_shards_pass_after_pass():
    sources = _sources([4000, 37 * 12], ["stop", "repeat"])
    for rank in range(4):
        p, _, per = _consumer_sequence(sources, (1, 1), Topology(rank, 4, 0, 1))
        n = int(p.per_pass[1])
        assert len(per[1]) > 5 * n  # several passes of the small source
        passes = [per[1][k : k + n] for k in range(0, len(per[1]) - n + 1, n)]
        assert all(sorted(x.tolist()) == sorted(passes[0].tolist()) for x in passes)  # the same records
        assert len({tuple(x.tolist()) for x in passes}) == len(passes)  # each pass reshuffled
        starts = np.concatenate([[0], np.cumsum(sources[1].counts)])
        shards = np.unique(np.searchsorted(starts, per[1], side="right") - 1)
        assert len(shards) <= 12 // 4 + 2


# -- elastic resume (issue 13) ------------------------------------------------------------------


@pytest.fixture(scope="module")
def elastic_mixture(tmp_path_factory):
    root = tmp_path_factory.mktemp("elastic")
    for name, n in (("a", 1500), ("b", 700), ("c", 60)):
        with roxxel.Writer(str(root / name), shard_bytes=2048) as w:
            w.extend(f"{name}{i:05d}".encode() for i in range(n))
    m = roxxel.mix([str(root / "a"), str(root / "b"), {"url": str(root / "c"), "policy": "repeat"}],
                   [0.5, 0.3, 0.2], cache_dir=str(root / "cache"))
    yield m
    m.close()


def _job(m, generations, remainder):
    now = m._state_header()
    return {"kind": "roxxel.mixture-job", "version": 1, **now, "seed": 0, "epoch": 0, "shuffle": True,
            "window": 4, "remainder": remainder, "plan": 2, "lockstep": False,
            "generations": [g.to_dict() for g in generations]}


@settings(max_examples=30, deadline=None)
@given(
    topologies=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 3)), min_size=2, max_size=3),
    fractions=st.lists(st.floats(0, 1), min_size=40, max_size=40),
    remainder=st.sampled_from(["pad", "drop"]),
)
def test_a_resized_mixture_reads_every_record_of_its_stop_sources_at_most_once(
    elastic_mixture, topologies, fractions, remainder
):
    from roxxel.read.mixjob import MixGeneration

    m, history, read, spare = elastic_mixture, [], [[], []], iter(fractions)
    for g, (world, workers) in enumerate(topologies):
        last = g == len(topologies) - 1
        positions, consumed, since = [], [], []
        for rank in range(world):
            for worker in range(workers):
                p = m._plan(epoch=0, topology=Topology(rank, world, worker, workers), shuffle=True, window=4,
                            remainder=remainder, seed=0, history=tuple(history) or None)
                upto = p.length if last else int(next(spare) * p.length)
                srcs, per = p.records(0, upto)
                for i in (0, 1):
                    read[i].extend(per[i].tolist())
                positions.append(upto)
                consumed.append(tuple(p.consumed(upto).tolist()))
                since.append(0)
                if last:  # every consumer of a generation reads as many records
                    assert p.length == m._plan(epoch=0, topology=Topology(0, world, 0, workers), shuffle=True,
                                               window=4, remainder=remainder, seed=0,
                                               history=tuple(history) or None).length
        history.append(MixGeneration(world, workers, tuple(positions), tuple(consumed), tuple(since)))
    for i, n in ((0, 1500), (1, 700)):
        counts = collections.Counter(read[i])
        twice = sum(c - 1 for c in counts.values())
        pads = sum(w for w, _ in topologies)  # "pad" wraps fewer than world_size records per generation
        assert twice == 0 if remainder == "drop" else twice < pads
        assert max(counts) < n
    # the source that ends the epoch is read to its end, but for what the last topology's
    # consumers could not share evenly and what "drop" leaves of each generation
    world, workers = topologies[-1]
    assert len(set(read[1])) >= 700 - world * workers - sum(w for w, _ in topologies)


def test_a_mixture_job_resized_twice_reads_its_stop_source_exactly_once(elastic_mixture):
    m = elastic_mixture
    read = []

    def run(job, world, workers, take):
        states = []
        for rank in range(world):
            for worker in range(workers):
                it = (m.iter(rank=rank, world_size=world, worker=worker, num_workers=workers) if job is None else
                      m.resume(job, rank=rank, world_size=world, worker=worker, num_workers=workers))
                got = _names(it) if take is None else [bytes(next(it)).decode() for _ in range(take(rank, worker))]
                read.extend(got)
                states.append(it.state())
        return json.loads(json.dumps(roxxel.job_state(states)))

    job = run(None, 3, 2, lambda r, w: 40 + 7 * (r + w))
    same = m.resume(job, rank=1, world_size=3, worker=1, num_workers=2)
    assert same.position == 54  # the same topology: that consumer's own state
    job = run(job, 2, 3, lambda r, w: 30 + 5 * w)
    run(job, 4, 1, None)
    b = [x for x in read if x[0] == "b"]
    assert sorted(b) == [f"b{i:05d}" for i in range(700)]  # every record once: pad wraps nothing here
    a = [x for x in read if x[0] == "a"]
    assert len(a) == len(set(a))
    with pytest.raises(ResumeError, match="belongs to another mixture: weights"):
        roxxel.mix([m.urls[0], m.urls[1], {"url": m.urls[2], "policy": "repeat"}], [0.6, 0.2, 0.2],
                   cache_dir=m.cache.directory).resume(job, rank=0, world_size=1)


def test_a_lone_consumers_mixture_state_resumes_on_more_ranks_and_lockstep_fills_the_rest(elastic_mixture):
    m = elastic_mixture
    it = m.iter(rank=0, world_size=1)
    head = [bytes(next(it)).decode() for _ in range(300)]
    state = it.state()
    rest = [x for r in range(2) for x in _names(m.resume(state, rank=r, world_size=2))]
    b = [x for x in head + rest if x[0] == "b"]
    assert sorted(b) == [f"b{i:05d}" for i in range(700)]
    ranks = [m.iter(rank=r, world_size=2) for r in range(2)]
    for r in ranks:
        for _ in range(100):
            next(r)
    job = roxxel.job_state([ranks[0].state()], lockstep=True)  # every rank read as many records
    assert job["lockstep"] is True
    assert m.resume(job, rank=1, world_size=2).position == 100
    with pytest.raises(ResumeError, match="rank 1 worker 0's is missing"):
        roxxel.job_state([ranks[0].state()])
    with pytest.raises(ResumeError, match="rank 7 worker 0 is no consumer of world_size=2"):
        roxxel.job_state([ranks[0].state(), {**ranks[1].state(), "rank": 7}])


@pytest.mark.parametrize(("before", "after"), [(2, 3), (3, 0)])
def test_stateful_loader_over_a_mixture_resumes_on_another_worker_count(tmp_path, before, after):
    from roxxel.torch import IterableRecords, StatefulLoader

    for name, n in (("a", 900), ("b", 400), ("c", 90)):
        _write(str(tmp_path / name), n, name)

    def loader(workers):
        m = roxxel.mix([str(tmp_path / "a"), str(tmp_path / "b"), str(tmp_path / "c")], [0.5, 0.3, 0.2],
                       policy=["stop", "stop", "repeat"], cache_dir=str(tmp_path / "cache"))
        records = IterableRecords(m, batch_size=16, collate=_decoded)
        return StatefulLoader(records, num_workers=workers, multiprocessing_context="fork" if workers else None)

    first = loader(before)
    head = []
    for batch in first:
        head.extend(batch)
        if len(head) >= 16 * 9:
            break
    state = json.loads(json.dumps(first.state_dict()))
    assert state["job"]["kind"] == "roxxel.mixture-job"
    second = loader(after)
    second.load_state_dict(state)
    tail = [x for batch in second for x in batch]
    b = [x for x in head + tail if x[0] == "b"]
    assert sorted(b) == [f"b{i:06d}" for i in range(400)]  # the stop source that ends it: each record once
    a = [x for x in head + tail if x[0] == "a"]
    assert len(a) == len(set(a))


def test_a_mixture_token_stream_continues_on_another_world_and_batch_size(tmp_path):
    for name, base, n in (("a", 0, 60), ("b", 10**6, 30)):
        with roxxel.Writer(str(tmp_path / name), shard_bytes=4096) as w:
            w.extend(np.arange(base + i * 64, base + (i + 1) * 64, dtype=np.int32) for i in range(n))
    with roxxel.mix([str(tmp_path / "a"), str(tmp_path / "b")], [0.75, 0.25], cache_dir=str(tmp_path / "c")) as m:
        epoch = [int(r[0]) for b in m.stream(16, batch_size=1, seed=2) for r in b]  # every sample once
        assert len(epoch) == len(set(epoch))
        first = [[int(r[0]) for b in itertools.islice(m.stream(16, batch_size=4, seed=2, rank=r, world_size=2), 5)
                  for r in b] for r in range(2)]
        done = 5 * 2 * 4  # both ranks took 5 steps of 4
        rest = [[int(r[0]) for b in m.stream(16, batch_size=6, seed=2, rank=r, world_size=3, start_sample=done)
                 for r in b] for r in range(3)]
        read = [x for part in (*first, *rest) for x in part]
        assert len(read) == len(set(read)) and set(read) <= set(epoch)
        assert len(epoch) - len(read) < 3 * 6  # what no whole step of the new topology could hold
        assert sorted(first[0] + first[1]) == sorted(epoch[:done])  # the same global samples


def test_malformed_integer_weights_and_job_states_are_refused(elastic_mixture):
    with pytest.raises(ValueError, match=r"integer weights must be positive and add up to at most 65536"):
        Schedule((3, 0))
    with pytest.raises(ValueError, match=r"integer weights must be positive and add up to at most 65536"):
        Schedule((MAX_PERIOD, 1))
    m = elastic_mixture
    job = roxxel.job_state([m.iter(rank=r, world_size=2).state() for r in range(2)])
    with pytest.raises(ResumeError, match="a mixture job state has the keys"):
        m.resume({**job, "extra": 1}, rank=0, world_size=3)
    with pytest.raises(ResumeError, match="'generations' must be a non-empty list"):
        m.resume({**job, "generations": []}, rank=0, world_size=3)
    with pytest.raises(ResumeError, match="position 1000000000 is outside this consumer.s"):
        m.iter_after((), epoch=0, seed=0, shuffle=True, window=16, remainder="pad", rank=0, world_size=1,
                     worker=0, num_workers=1, start=10**9)
