"""Elastic resume (issue 13): an epoch continued on other topologies, every record once."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import roxxel
import roxxel.writer
from roxxel.errors import ResumeError
from roxxel.planner import check_heads, plan
from roxxel.read.elastic import (
    EpochStream,
    Generation,
    Segments,
    consumer_plan,
    elastic_plan,
    remaining,
    window_key,
)
from roxxel.read.jobstate import Job

DATA = Path(__file__).parent / "data" / "elastic_v1"
N = 500


def ids_of(p) -> list[int]:
    return [int(i) for chunk in p.records() for i in chunk.tolist()]


def rid(record) -> int:
    """Records are 8-byte little-endian record numbers."""
    return int(np.frombuffer(bytes(record), "<i8")[0])


# -- the pure function ------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(0, 40), max_size=12),
    seed=st.integers(0, 2**32),
    shuffle=st.booleans(),
    window=st.integers(1, 5),
    remainder=st.sampled_from(["pad", "drop"]),
    topology=st.tuples(st.integers(1, 16), st.integers(1, 3)),
    data=st.data(),
)
def test_over_the_whole_stream_a_consumer_plan_is_the_planners(counts, seed, shuffle, window, remainder,
                                                               topology, data):
    world_size, num_workers = topology
    heads = draw_heads(data, counts)  # (heads lead windows: roxxel.planner, step 6)
    stream = EpochStream(counts, seed, 2, shuffle, check_heads(heads, np.asarray(counts, dtype=np.int64)))
    whole = Segments([(0, stream.total)])
    for rank in range(world_size):
        for worker in range(num_workers):
            theirs = plan(counts, seed=seed, epoch=2, rank=rank, world_size=world_size, worker=worker,
                          num_workers=num_workers, shuffle=shuffle, window=window, remainder=remainder,
                          heads=heads)
            key = window_key(seed, 2, 0, rank, world_size, worker, num_workers) if shuffle else None
            ours = consumer_plan(stream, whole, rank=rank, world_size=world_size, worker=worker,
                                 num_workers=num_workers, window=window, remainder=remainder, key=key)
            assert ids_of(ours) == ids_of(theirs)
            assert ours.window_sizes().tolist() == theirs.window_sizes().tolist()


def draw_heads(data, counts: list[int]) -> list[int] | None:
    """None, or how many records each shard's head holds (0 for none)."""
    if not data.draw(st.booleans(), label="with heads"):
        return None
    return [data.draw(st.integers(0, c), label="head") for c in counts]


def _generation_reads(counts, params, generations, topology, positions_from, read_all):
    """Every consumer's records of the next generation, and the Generation of where they stop."""
    world_size, num_workers = topology
    reads, positions = [], []
    for c in range(world_size * num_workers):
        rank, worker = divmod(c, num_workers)
        p = elastic_plan(counts, **params, generations=generations, rank=rank, world_size=world_size,
                         worker=worker, num_workers=num_workers)
        mine = ids_of(p)
        assert len(mine) == p.num_records
        at = len(mine) if read_all else positions_from[c % len(positions_from)] % (len(mine) + 1)
        reads.append(mine[:at])
        positions.append(at)
    return reads, Generation(world_size, num_workers, tuple(positions)), p.total


@settings(max_examples=120, deadline=None)
@given(
    counts=st.lists(st.integers(0, 60), max_size=10),
    seed=st.integers(0, 2**32),
    shuffle=st.booleans(),
    window=st.integers(1, 4),
    remainder=st.sampled_from(["pad", "drop"]),
    topologies=st.lists(st.tuples(st.integers(1, 16), st.integers(1, 3)), min_size=2, max_size=3),
    positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=20),
    data=st.data(),
)
def test_read_part_and_resumed_part_are_the_epoch_once(counts, seed, shuffle, window, remainder, topologies,
                                                        positions, data):
    """(W, workers, positions) -> (W', workers') [-> (W'', workers'')], W and W' in 1..16.

    Every record is read at exactly one real position, except those "drop" leaves at the
    end of each generation's stream; "pad" reads a record again only at pad positions,
    fewer than W_g in generation g."""
    params = {"seed": seed, "epoch": 1, "shuffle": shuffle, "window": window, "remainder": remainder,
              "heads": draw_heads(data, counts)}
    total = sum(counts)
    reads: list[int] = []
    generations: list[Generation] = []
    dropped = padded = 0
    for g, topology in enumerate(topologies):
        last = g == len(topologies) - 1
        got, generation, length = _generation_reads(counts, params, generations, topology, positions, last)
        if g == 0:
            assert length == total
        world = topology[0]
        per_rank = -(-length // world) if remainder == "pad" else length // world
        dropped += length - world * per_rank if remainder == "drop" else 0
        padded += world * per_rank - length if remainder == "pad" else 0
        reads += [i for r in got for i in r]
        generations.append(generation)
    seen = Counter(reads)
    if remainder == "drop":
        assert max(seen.values(), default=1) == 1  # nothing twice
        assert total - len(seen) == dropped  # and only the dropped tails missing
    else:
        assert set(seen) == set(range(total))  # everything at least once
        assert len(reads) - total <= padded  # again only at pad positions
        if len(topologies) == 1:
            assert len(reads) - total == padded


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(0, 60), min_size=1, max_size=8),
    seed=st.integers(0, 2**32),
    window=st.integers(1, 3),
    topologies=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 2)), min_size=2, max_size=2),
    positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=8),
    lockstep_at=st.integers(0, 100),
    data=st.data(),
)
def test_a_lockstep_job_is_cut_to_the_spans_of_the_plans_with_heads(counts, seed, window, topologies, positions,
                                                                     lockstep_at, data):
    """Job.exact counts what the generations left as the plans with heads do (where a head
    leads a window that wraps into pad positions, the real records left differ)."""
    heads = [data.draw(st.integers(0, c), label="head") for c in counts]
    params = {"seed": seed, "epoch": 1, "shuffle": True, "window": window, "remainder": "pad", "heads": heads}
    _, first, _ = _generation_reads(counts, params, [], topologies[0], positions, False)
    world, workers = topologies[1]
    job = Job(fingerprint="f", seed=seed, epoch=1, shuffle=True, window=window, remainder="pad", plan=3,
              generations=(first, Generation(world, workers, (lockstep_at,) * (world * workers))), lockstep=True)
    cut = job.exact(np.asarray(counts), np.asarray(heads)).generations[-1].positions
    for c, position in enumerate(cut):
        rank, worker = divmod(c, workers)
        mine = elastic_plan(counts, **params, generations=[first], rank=rank, world_size=world, worker=worker,
                            num_workers=workers)
        assert position == min(lockstep_at, mine.num_records)


def test_a_new_rank_reads_about_its_share_of_the_remaining_shards():
    counts = [1000] * 64
    params = {"seed": 1, "epoch": 0, "shuffle": True, "window": 4, "remainder": "pad", "heads": None}
    first = Generation(8, 2, tuple(range(100, 1700, 100)))
    _, left = remaining(counts, **params, generations=[first])
    for rank in range(5):
        p = elastic_plan(counts, **params, generations=[first], rank=rank, world_size=5, worker=0, num_workers=1)
        runs = np.unique(p.piece_shard).size
        assert runs <= 64 / 5 + 2 + 16 * 4  # its share, two shared at the ends, some windows' rests
        assert p.num_records == -(-left.total // 5)


# -- a dataset read with ds.iter -------------------------------------------------------------


@pytest.fixture(scope="module", params=["plain", "heads"])
def url(tmp_path_factory, request) -> str:
    """A dataset of N records (each starts with its number); "heads": records of 64 bytes
    in shards with heads (of 1,000 bytes: 15 records), which lead the windows' orders."""
    url = str(tmp_path_factory.mktemp("elastic") / "ds")
    if request.param == "plain":
        with roxxel.Writer(url, shard_bytes=600) as w:  # ~14 shards of ~36 records
            w.extend(np.array([i], dtype="<i8") for i in range(N))
        return url
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(roxxel.writer, "HEAD_BYTES", 1000)
        with roxxel.Writer(url, shard_bytes=3000) as w:  # ~12 shards of ~42 records
            w.extend(np.array([i] * 8, dtype="<i8") for i in range(N))
        assert sum(1 for s in w.manifest.shards if s.head) >= 10
    return url


def _read(its, counts) -> list[int]:
    out = []
    for it, k in zip(its, counts):
        for _ in range(k):
            out.append(rid(next(it)))
    return out


def test_ds_iter_resized_twice_reads_the_epoch_once(url, tmp_path):
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        its = [ds.iter(seed=3, rank=r, world_size=3, worker=w, num_workers=2, window=4)
               for r in range(3) for w in range(2)]
        read = _read(its, [17, 18, 20, 40, 23, 0])
        job = json.loads(json.dumps(roxxel.job_state([it.state() for it in reversed(its)])))
        assert len(job["generations"]) == 1 and len(json.dumps(job)) < 1000
        its = [ds.resume(job, rank=r, world_size=2, worker=w, num_workers=3) for r in range(2) for w in range(3)]
        lengths = [len(it) for it in its]
        assert max(lengths) - min(lengths) <= 1
        read += _read(its, [11, 0, 30, 12, 13, 5])
        states = [json.loads(json.dumps(it.state())) for it in its]
        assert all(len(s["elastic"]) == 1 for s in states)
        again = ds.resume(states[2], rank=0, world_size=2, worker=2, num_workers=3)  # a consumer, as before
        rest = [rid(r) for r in its[2]]
        assert [rid(r) for r in again] == rest
        read += rest
        states[2] = again.state()
        job = roxxel.job_state(states)
        assert len(job["generations"]) == 2
        its = [ds.resume(job, rank=r, world_size=4, worker=0, num_workers=1) for r in range(4)]
        assert len({len(it) for it in its}) == 1
        for it in its:
            read += [rid(r) for r in it]
    seen = Counter(read)
    assert set(seen) == set(range(N))
    # 500 on 3 ranks pads 1; what is left then is padded to a multiple of 4 at most
    assert len(read) - N <= 1 + 3 + 3 and all(v <= 2 for v in seen.values())


def test_a_job_state_resumes_each_consumer_where_it_was_on_its_topology(url, tmp_path):
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        its = [ds.iter(seed=4, rank=r, world_size=2, window=3, remainder="drop") for r in range(2)]
        _read(its, [30, 7])
        job = roxxel.job_state([it.state() for it in its])
        for r, it in enumerate(its):
            resumed = ds.resume(job, rank=r, world_size=2, worker=0, num_workers=1)
            assert resumed.state() == it.state()
            assert [rid(x) for x in resumed] == [rid(x) for x in it]


def test_one_consumers_state_is_enough_when_it_was_alone_or_all_read_as_much(url, tmp_path):
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        alone = ds.iter(seed=5, rank=0, world_size=1)
        read = _read([alone], [123])
        its = [ds.resume(alone.state(), rank=r, world_size=3, worker=0, num_workers=1) for r in range(3)]
        for it in its:
            read += [rid(x) for x in it]
        assert set(read) == set(range(N)) and len(read) == N + 1  # one pad: 377 records on 3 ranks

        its = [ds.iter(seed=5, rank=r, world_size=4) for r in range(4)]
        _read(its, [60] * 4)
        full = roxxel.job_state([it.state() for it in its])
        assert roxxel.job_state(its[2].state(), lockstep=True) == {**full, "lockstep": True}
        assert roxxel.job_state(full) == full  # a job state passes through
        with pytest.raises(ResumeError, match="rank 0 worker 0's is missing.*lockstep=True"):
            roxxel.job_state([its[1].state()])
        with pytest.raises(ResumeError, match="One consumer's state resumes that consumer only.*job_state"):
            ds.resume(its[1].state(), rank=0, world_size=2, worker=0, num_workers=1)


def test_a_lockstep_job_state_counts_shorter_consumers_as_done(url, tmp_path):
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        its = [ds.iter(seed=6, rank=0, world_size=1, worker=w, num_workers=3, window=2) for w in range(3)]
        assert [len(it) for it in its] == [166, 167, 167]
        read = [rid(x) for x in its[0]]
        read += _read(its[1:], [166, 166])
        job = roxxel.job_state(its[1].state(), lockstep=True)
        assert job["generations"][0]["positions"] == [166] * 3
        for r in range(2):
            read += [rid(x) for x in ds.resume(job, rank=r, world_size=2, worker=0, num_workers=1)]
        assert sorted(read) == list(range(N))


def test_states_that_disagree_or_belong_elsewhere_are_refused(url, tmp_path):
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        a = ds.iter(seed=1, rank=0, world_size=2).state()
        b = ds.iter(seed=2, rank=1, world_size=2).state()
        with pytest.raises(ResumeError, match="different streams: seed is 1 .* and 2"):
            roxxel.job_state([a, b])
        with pytest.raises(ResumeError, match="two states of rank 0 worker 0 at positions 0 and 5"):
            roxxel.job_state([a, {**a, "position": 5}])
        job = roxxel.job_state([a, {**b, "seed": 1}])
        with pytest.raises(ResumeError, match="another dataset or version"):
            ds.resume({**job, "fingerprint": "sha256:" + "0" * 64}, rank=0, world_size=3, worker=0, num_workers=1)
        bad = {**job, "generations": [{"world_size": 2, "num_workers": 1, "positions": [0, 10**6]}]}
        with pytest.raises(ResumeError, match="rank 1 worker 0's position 1000000 is past its 250 records"):
            ds.resume(bad, rank=0, world_size=3, worker=0, num_workers=1)
        with pytest.raises(ResumeError, match="'positions' must list 2 positions"):
            ds.resume({**job, "generations": [{"world_size": 2, "num_workers": 1, "positions": [0]}]},
                      rank=0, world_size=3, worker=0, num_workers=1)
        with pytest.raises(ResumeError, match="job state kind/version"):
            ds.resume({**job, "version": 99}, rank=0, world_size=3, worker=0, num_workers=1)
        assert "elastic" not in a  # states of a first topology are as before


# -- a state saved by this version -----------------------------------------------------------


def test_a_job_state_saved_by_roxxel_0_4_still_resumes(tmp_path):
    """tests/data/elastic_v1: a dataset, a job state after two generations (3x2 ranks x
    workers, then 2x3) and the records each consumer of 4x1 reads after it. Later versions
    must keep resuming from it to the same records (or change the plan version)."""
    shutil.copytree(DATA / "ds", tmp_path / "ds")
    expected = json.loads((DATA / "expected.json").read_text())
    job = json.loads((DATA / "job.json").read_text())
    consumer = json.loads((DATA / "consumer.json").read_text())
    with roxxel.open(str(tmp_path / "ds"), cache_dir=str(tmp_path / "cache")) as ds:
        got = [[rid(x) for x in ds.resume(job, rank=r, world_size=4, worker=0, num_workers=1)] for r in range(4)]
        assert got == expected["4x1"]
        every = Counter(expected["read"] + [i for r in got for i in r])
        assert set(every) == set(range(N)) and sum(every.values()) - N <= 1 + 1 + 3  # the pads
        rest = [rid(x) for x in ds.resume(consumer, rank=1, world_size=2, worker=2, num_workers=3)]
        assert rest == expected["consumer"]


def make_fixture(out: Path) -> None:  # pragma: no cover - run once by hand: python tests/test_elastic.py
    """Write tests/data/elastic_v1 (see the test above)."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with roxxel.Writer(str(out / "ds"), shard_bytes=600) as w:
        w.extend(np.array([i], dtype="<i8") for i in range(N))
    with roxxel.open(str(out / "ds"), cache_dir=str(out / "cache")) as ds:
        its = [ds.iter(seed=9, rank=r, world_size=3, worker=w, num_workers=2, window=4)
               for r in range(3) for w in range(2)]
        read = _read(its, [20, 31, 5, 40, 0, 13])
        job = roxxel.job_state([it.state() for it in its])
        its = [ds.resume(job, rank=r, world_size=2, worker=w, num_workers=3) for r in range(2) for w in range(3)]
        read += _read(its, [9, 0, 33, 12, 14, 50])
        consumer = its[5].state()
        job = roxxel.job_state([it.state() for it in its])
        expected = {
            "read": read,
            "4x1": [[rid(x) for x in ds.resume(job, rank=r, world_size=4, worker=0, num_workers=1)]
                    for r in range(4)],
            "consumer": [rid(x) for x in its[5]],
        }
    shutil.rmtree(out / "cache")
    (out / "job.json").write_text(json.dumps(job, indent=1) + "\n")
    (out / "consumer.json").write_text(json.dumps(consumer, indent=1) + "\n")
    (out / "expected.json").write_text(json.dumps(expected) + "\n")


if __name__ == "__main__":  # pragma: no cover
    make_fixture(DATA)


# -- token streams ------------------------------------------------------------------------------


def test_a_token_stream_continues_on_another_world_and_batch_size(tmp_path):
    url = str(tmp_path / "tokens")
    with roxxel.Writer(url, shard_bytes=4000) as w:  # int32 tokens numbered by their position
        w.extend(np.arange(i * 1000, (i + 1) * 1000, dtype=np.int32) for i in range(7))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        whole = [int(row[0]) for batch in ds.stream(10, 1, seed=3, rank=0, world_size=1) for row in batch]
        assert len(whole) == 700
        first = [int(row[0]) for r in range(2)
                 for _, batch in zip(range(5), ds.stream(10, 4, seed=3, rank=r, world_size=2)) for row in batch]
        samples = 5 * 2 * 4  # every rank took 5 steps of 2 ranks x 4
        rest = [int(row[0]) for r in range(3)
                for batch in ds.stream(10, 6, seed=3, rank=r, world_size=3, start_sample=samples) for row in batch]
    assert len(rest) == (700 - samples) // 18 * 18  # the samples short of a whole step are dropped
    assert sorted(first + rest) == sorted(whole[: len(first) + len(rest)])  # each sample once, in order


# -- PyTorch: StatefulLoader with DataLoader workers ---------------------------------------------


def _loader(url, tmp_path, workers, **kw):
    from roxxel.torch import IterableRecords, StatefulLoader

    records = IterableRecords(url, cache_dir=str(tmp_path / "cache"), batch_size=8, window=3, seed=2)
    return StatefulLoader(records, num_workers=workers, **kw)


def _ids(batch) -> list[int]:
    return [int(np.frombuffer(t.numpy().tobytes(), "<i8")[0]) for t in batch]


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_a_loaders_state_resumes_on_more_ranks_with_workers(url, tmp_path, monkeypatch, context):
    loader = _loader(url, tmp_path, 2, multiprocessing_context=context)
    read = []
    for batch in loader:
        read += _ids(batch)
        if len(read) == 7 * 8:
            break
    state = json.loads(json.dumps(loader.state_dict()))
    assert state["job"]["generations"][0]["positions"] == [32, 24]  # round-robin: 4 and 3 batches
    monkeypatch.setenv("WORLD_SIZE", "2")
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        resumed = _loader(url, tmp_path, 2, multiprocessing_context=context)
        resumed.load_state_dict(state)
        read += [i for batch in resumed for i in _ids(batch)]
    assert sorted(read) == list(range(N))  # 444 left: 222 a rank, no pad


def test_persistent_workers_read_the_rest_then_the_next_epoch_on_the_new_topology(url, tmp_path):
    loader = _loader(url, tmp_path, 0)
    read = [i for _, batch in zip(range(20), loader) for i in _ids(batch)]
    state = loader.state_dict()
    resumed = _loader(url, tmp_path, 3, persistent_workers=True, multiprocessing_context="fork")
    resumed.load_state_dict(state)
    read += [i for batch in resumed for i in _ids(batch)]
    assert sorted(read) == list(range(N))
    assert resumed.dataset.epoch == 1
    again = [i for batch in resumed for i in _ids(batch)]  # epoch 1, planned for 1 x 3 as usual
    assert sorted(again) == list(range(N))
    resumed.load_state_dict(state)  # the workers know this continuation already
    assert sorted(i for batch in resumed for i in _ids(batch)) == sorted(read[160:])
    loader = _loader(url, tmp_path, 0)
    next(iter(loader))
    with pytest.raises(ResumeError, match="persistent workers have started"):
        resumed.load_state_dict(loader.state_dict())  # another one they do not


def test_a_loader_resumed_elastically_resumes_again_on_its_topology(url, tmp_path):
    loader = _loader(url, tmp_path, 0)
    read = [i for _, batch in zip(range(9), loader) for i in _ids(batch)]
    resized = _loader(url, tmp_path, 2, multiprocessing_context="fork")
    resized.load_state_dict(loader.state_dict())
    read += [i for _, batch in zip(range(11), resized) for i in _ids(batch)]
    state = json.loads(json.dumps(resized.state_dict()))
    assert state["batches"] == 11 and len(state["job"]["generations"]) == 2
    again = _loader(url, tmp_path, 2, multiprocessing_context="fork")
    again.load_state_dict(state)  # the same topology: each worker where it was
    read += [i for batch in again for i in _ids(batch)]
    assert sorted(read) == list(range(N))


TORCHRUN = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import torch.distributed as dist
    from roxxel.torch import IterableRecords, StatefulLoader

    dist.init_process_group("gloo")
    url, cache, workers, batches, state_in, state_out = sys.argv[1:7]
    loader = StatefulLoader(IterableRecords(url, cache_dir=cache, batch_size=10, window=4, seed=7),
                            num_workers=int(workers))
    if state_in != "-":
        with open(state_in) as f:
            loader.load_state_dict(json.load(f))
    mine = []
    for batch in loader:
        mine += [int(np.frombuffer(t.numpy().tobytes(), "<i8")[0]) for t in batch]
        if int(batches) and len(mine) == 10 * int(batches):
            break
    state = loader.state_dict()  # a collective: every rank calls it, rank 0 saves it
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        with open(state_out, "w") as f:
            json.dump(state, f)
        print("RESULT " + json.dumps(gathered), flush=True)
    dist.destroy_process_group()
    """
)


def test_torchrun_three_ranks_then_two_then_four_cover_the_epoch_once(url, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    read: list[int] = []
    state = "-"
    # (ranks, workers, batches per rank): 3x2 reads 5 batches, 2x3 4 more, 4x1 the rest
    for step, (ranks, workers, batches) in enumerate([(3, 2, 5), (2, 3, 4), (4, 1, 0)]):
        out = subprocess.run(
            [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}", "--standalone",
             str(script), url, str(tmp_path / "cache"), str(workers), str(batches), state,
             str(tmp_path / f"state{step}.json")],
            capture_output=True, text=True, timeout=300, env=env, check=False,
        )
        assert out.returncode == 0, out.stderr[-3000:]
        line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
        per_rank = json.loads(line[len("RESULT "):])
        assert len(per_rank) == ranks
        if batches:
            assert [len(r) for r in per_rank] == [10 * batches] * ranks
        read += [i for r in per_rank for i in r]
        state = str(tmp_path / f"state{step}.json")
    seen = Counter(read)
    assert set(seen) == set(range(N))  # the whole epoch
    assert len(read) - N <= 1 + 1 + 3  # read again only at pad positions: 500 on 3 ranks, then 2, then 4
    job = json.loads((tmp_path / "state1.json").read_text())["job"]
    assert [(g["world_size"], g["num_workers"]) for g in job["generations"]] == [(3, 2), (2, 3)]
    done = json.loads(Path(state).read_text())  # the epoch was read to its end: the next one's start
    assert done["epoch"] == 1 and done["job"]["generations"] == [
        {"world_size": 4, "num_workers": 1, "positions": [0, 0, 0, 0]}]
