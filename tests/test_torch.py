"""PyTorch: IterableRecords and StatefulLoader with workers, fork/spawn, resume, torchrun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import roxxel
from roxxel.errors import ResumeError
from roxxel.torch import IterableRecords, StatefulLoader, _batches_taken

N = 600


def ids(batch) -> list[int]:
    """Records are 8-byte little-endian record numbers."""
    return [int(np.frombuffer(t.numpy().tobytes(), "<i8")[0]) for t in batch]


@pytest.fixture(scope="module")
def dataset_url(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("torchds") / "ds")
    with roxxel.Writer(url, shard_bytes=1024) as w:  # ~30 shards
        w.extend(np.array([i], dtype="<i8") for i in range(N))
    return url


def make(url, tmp_path, **kw) -> IterableRecords:
    return IterableRecords(url, cache_dir=str(tmp_path / "cache"), window=4, **kw)


@pytest.mark.parametrize(("workers", "context"), [(0, None), (2, "fork"), (2, "spawn")])
def test_an_epoch_is_every_record_once(dataset_url, tmp_path, workers, context):
    loader = DataLoader(make(dataset_url, tmp_path, batch_size=16), batch_size=None,
                        num_workers=workers, multiprocessing_context=context)
    seen = [i for batch in loader for i in ids(batch)]
    assert sorted(seen) == list(range(N))
    assert seen != list(range(N))  # shuffled


def test_per_record_mode_with_default_batching(dataset_url, tmp_path):
    records = make(dataset_url, tmp_path, transform=lambda r: int(np.frombuffer(r, "<i8")[0]))
    loader = DataLoader(records, batch_size=50, num_workers=2)
    seen = [int(i) for batch in loader for i in batch]
    assert sorted(seen) == list(range(N))


def test_persistent_workers_move_through_epochs(dataset_url, tmp_path):
    records = make(dataset_url, tmp_path, batch_size=20)
    loader = StatefulLoader(records, num_workers=2, persistent_workers=True)
    first = [i for b in loader for i in ids(b)]
    second = [i for b in loader for i in ids(b)]
    assert sorted(first) == sorted(second) == list(range(N))
    assert first != second  # epoch 1 has its own order
    assert records.epoch == 2


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_state_dict_resumes_mid_epoch_exactly(dataset_url, tmp_path, workers):
    full = [ids(b) for b in StatefulLoader(make(dataset_url, tmp_path, batch_size=16), num_workers=workers)]
    loader = StatefulLoader(make(dataset_url, tmp_path, batch_size=16), num_workers=workers)
    head = []
    for batch in loader:
        head.append(ids(batch))
        if len(head) == 11:
            break
    state = json.loads(json.dumps(loader.state_dict()))  # it survives a JSON checkpoint
    assert state["batches"] == 11
    fresh = StatefulLoader(make(dataset_url, tmp_path, batch_size=16), num_workers=workers)
    fresh.load_state_dict(state)
    tail = [ids(b) for b in fresh]
    assert head + tail == full


def test_a_state_for_another_topology_or_dataset_is_refused(dataset_url, tmp_path):
    loader = StatefulLoader(make(dataset_url, tmp_path, batch_size=16), num_workers=2)
    state = loader.state_dict()
    other = StatefulLoader(make(dataset_url, tmp_path, batch_size=16), num_workers=3)
    old = {k: v for k, v in state.items() if k != "job"}  # saved before elastic resume
    with pytest.raises(ResumeError, match="num_workers=2.*num_workers=3, and the state has no job state"):
        other.load_state_dict(old)
    with pytest.raises(ResumeError, match="another dataset or version"):
        loader.load_state_dict({**state, "fingerprint": "sha256:" + "0" * 64})


def test_round_robin_bookkeeping_with_uneven_workers():
    assert _batches_taken(0, [3, 2]) == ([0, 0], 0)
    assert _batches_taken(3, [3, 2]) == ([2, 1], 1)
    assert _batches_taken(5, [3, 2]) == ([3, 2], 0)
    assert _batches_taken(4, [1, 3, 3]) == ([1, 2, 1], 2)
    assert _batches_taken(6, [1, 3, 3]) == ([1, 3, 2], 2)
    with pytest.raises(ResumeError, match="only 5"):
        _batches_taken(6, [3, 2])


TORCHRUN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    import numpy as np
    import torch
    import torch.distributed as dist
    from torch.utils.data import DataLoader
    from roxxel.torch import IterableRecords

    dist.init_process_group("gloo")
    url, cache = sys.argv[1], sys.argv[2]
    records = IterableRecords(url, cache_dir=cache, batch_size=10, window=4)
    loader = DataLoader(records, batch_size=None, num_workers=2)
    mine = [int(np.frombuffer(t.numpy().tobytes(), "<i8")[0]) for b in loader for t in b]
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if dist.get_rank() == 0:
        print("RESULT " + json.dumps(gathered), flush=True)
    dist.destroy_process_group()
    """
)


def test_torchrun_three_ranks_two_workers_cover_the_epoch_once(dataset_url, tmp_path):
    script = tmp_path / "train.py"
    script.write_text(TORCHRUN_SCRIPT)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=3", "--standalone",
         str(script), dataset_url, str(tmp_path / "cache")],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(x for x in out.stdout.splitlines() if x.startswith("RESULT "))
    per_rank = json.loads(line[len("RESULT "):])
    assert [len(r) for r in per_rank] == [200, 200, 200]  # equal per rank
    union = [i for r in per_rank for i in r]
    assert sorted(union) == list(range(N))  # the whole epoch, no duplicates
    assert torch.__version__.startswith("2.13.0")


# -- an open dataset instead of a URL --------------------------------------------------------


@pytest.mark.parametrize("context", ["fork", "spawn"])
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_an_open_dataset_is_read_by_the_workers_every_record_once(new_location, tmp_path, kind, context):
    url, options = new_location(kind)
    with roxxel.Writer(url, shard_bytes=1024, storage_options=options) as w:
        w.extend(np.array([i], dtype="<i8") for i in range(N))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options) as ds:
        next(iter(ds))  # in use in the parent (threads, maps) before the workers start
        records = IterableRecords(ds, batch_size=16, window=4)
        assert records.url == ds.url
        loader = DataLoader(records, batch_size=None, num_workers=2, multiprocessing_context=context)
        seen = [i for batch in loader for i in ids(batch)]
        assert sorted(seen) == list(range(N))
        in_process = [i for batch in DataLoader(records, batch_size=None) for i in ids(batch)]
        assert records.dataset() is ds  # the process that has it reads it
        assert sorted(in_process) == list(range(N))


def test_an_open_dataset_with_open_options_or_a_wrong_type_is_refused(dataset_url, tmp_path):
    refused = r"open dataset and open options \['cache_dir'\]: pass the dataset URL"
    with roxxel.open(dataset_url, cache_dir=str(tmp_path / "cache")) as ds, pytest.raises(TypeError, match=refused):
        IterableRecords(ds, cache_dir=str(tmp_path / "other"))
    with pytest.raises(TypeError, match="takes a dataset URL or an open roxxel.Dataset .*got list"):
        IterableRecords([dataset_url])
