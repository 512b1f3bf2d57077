"""Compatibility with the released Roxxel 0.3.0, run as itself.

``scripts/setup.sh`` unpacks the 0.3.0 wheel from PyPI (pinned by hash) into
``.venv/compat/roxxel-0.3.0``. Its package is also named ``roxxel``, so it runs only in
subprocesses with ``PYTHONPATH`` pointing there, never in this test process.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import roxxel

COMPAT = Path(__file__).resolve().parents[1] / ".venv" / "compat" / "roxxel-0.3.0"

# jax is installed here, and 0.3.0 yields jax arrays whenever it can import it: hide it,
# so its stream yields NumPy batches. Its status prints go to stdout; results go to files.
PRELUDE = textwrap.dedent(
    f"""
    import sys
    sys.modules["jax"] = None
    import json
    import numpy as np
    import roxxel
    assert roxxel.__file__.startswith({str(COMPAT)!r}), roxxel.__file__
    from roxxel import Roxxel
    """
)


@pytest.fixture
def old(tmp_path):
    """Run code under Roxxel 0.3.0 in ``tmp_path``; returns the runner."""
    if not (COMPAT / "roxxel.py").is_file():
        pytest.fail(f"Roxxel 0.3.0 is not unpacked at {COMPAT}: run scripts/setup.sh "
                    "(it fetches the released wheel once)")

    def run(code: str, cwd: Path = tmp_path) -> None:
        env = dict(os.environ, PYTHONPATH=str(COMPAT))
        out = subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(code)], cwd=cwd,
                             env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr[-3000:]

    return run


def listing(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def records(n: int, tag: str) -> list[bytes]:
    return [f"{tag}-{i}-".encode() * (1 + i % 5) for i in range(n)]


# -- writing to a glob -------------------------------------------------------------------


@pytest.mark.parametrize("max_shard_bytes", [None, 600], ids=["one-file", "sharded"])
def test_appending_to_what_030_wrote_keeps_every_index(old, tmp_path, max_shard_bytes):
    first, second = records(50, "old"), records(50, "new")
    old(f"""
        Roxxel("wiki_*.rox").write({first!r}, block_size=32, max_shard_bytes={max_shard_bytes!r})
        json.dump([bytes(r).hex() for r in Roxxel("wiki_*.rox")[:]], open("before.json", "w"))
    """)
    before = [bytes.fromhex(h) for h in json.loads((tmp_path / "before.json").read_text())]
    pattern = str(tmp_path / "wiki_*.rox")
    assert [bytes(r) for r in roxxel.Roxxel(pattern)] == before  # we read what 0.3.0 reads

    ds = roxxel.Roxxel(pattern)
    ds.write(second, block_size=32, max_shard_bytes=max_shard_bytes)
    assert bytes(ds[0]) == before[0]
    assert [bytes(ds[i]) for i in range(len(before))] == before  # no index shifted
    new_blocks = b"".join(bytes(r) for r in ds[len(before):])
    assert new_blocks.rstrip(b"\xff") == b"\xff".join(second)  # the new records follow
    # and 0.3.0 reads the appended dataset in the same order
    old("""json.dump([bytes(r).hex() for r in Roxxel("wiki_*.rox")[:]], open("after.json", "w"))""")
    after = [bytes.fromhex(h) for h in json.loads((tmp_path / "after.json").read_text())]
    assert after == [bytes(r) for r in ds]


# Each scenario: a pattern and the writes made, in order, through one Roxxel object.
SAME_CALLS = {
    "glob-one-file": ("wiki_*.rox", [dict(block_size=16), dict(block_size=16)]),
    "glob-sharded": ("wiki_*.rox", [dict(block_size=64, max_shard_bytes=300)] * 3),
    "glob-then-sharded": ("wiki_*.rox", [dict(block_size=8), dict(block_size=8, max_shard_bytes=200)]),
    "star-in-a-folder": ("shards/*.rox", [dict(block_size=32, max_shard_bytes=200)] * 2),
    "no-suffix": ("part-*", [dict(block_size=24, max_shard_bytes=250, separator=b"\n")]),
}


@pytest.mark.parametrize("scenario", SAME_CALLS, ids=list(SAME_CALLS))
def test_the_same_calls_write_the_same_files(old, tmp_path, scenario):
    pattern, calls = SAME_CALLS[scenario]
    mine, theirs = tmp_path / "roxxel", tmp_path / "030"
    for folder in (mine, theirs):
        (folder / "shards").mkdir(parents=True)
    batches = [records(20 + 7 * k, f"w{k}") for k in range(len(calls))]
    old(f"""
        ds = Roxxel({pattern!r})
        for recs, kwargs in zip({batches!r}, {calls!r}):
            ds.write(recs, **kwargs)
    """, cwd=theirs)
    ds = roxxel.Roxxel(str(mine / pattern))
    for recs, kwargs in zip(batches, calls):
        ds.write(recs, **kwargs)
    assert listing(mine).keys() == listing(theirs).keys()
    assert listing(mine) == listing(theirs)


# -- stream ------------------------------------------------------------------------------


TOKENS = 1600  # 100 blocks of 16 int32 tokens


@pytest.fixture
def token_files(old, tmp_path):
    """One file of 100 uniform blocks written by 0.3.0 (the layout its stream assumes),
    and the same records as a roxxel dataset on local disk."""
    blocks = [np.arange(16 * k, 16 * (k + 1), dtype=np.int32).tobytes() for k in range(100)]
    old(f"""Roxxel("tok.rox").write({blocks!r}, block_size=64, separator=b"")""")
    with roxxel.Writer(str(tmp_path / "remote")) as w:
        w.extend(blocks)
    return tmp_path / "tok.rox", str(tmp_path / "remote")


CASES = [  # seq_len, batch_size, seed, start_step
    (10, 7, 0, 0),  # 160 windows: 22 batches, 6 windows (240 bytes) left over
    (16, 4, 1, 0),  # 100 windows: 25 batches exactly
    (10, 7, 3, 5),
    (10, 7, 3, 21),
    (10, 7, 3, 22),  # at the end: nothing
    (10, 7, 3, 40),  # past the end: nothing
    (50, 40, 0, 0),  # one pass is less than a batch: nothing
]


def test_stream_is_one_pass_that_stops_where_030_stops(old, tmp_path, token_files):
    local, remote = token_files
    old(f"""
        ds = Roxxel("tok.rox")
        out = []
        for seq_len, batch_size, seed, start in {CASES!r}:
            batches = list(ds.stream(seq_len, batch_size, seed, start))
            out.append([len(batches), [b.shape for b in batches[:1]]])
            assert all(isinstance(b, np.ndarray) for b in batches)
        json.dump(out, open("stream.json", "w"))
    """)
    counts = json.loads((tmp_path / "stream.json").read_text())
    assert [c[0] for c in counts] == [22, 25, 17, 1, 0, 0, 0]  # the partial last batch is dropped
    with roxxel.open(remote, cache_dir=str(tmp_path / "cache")) as ds:
        for (seq_len, batch_size, seed, start), (count, shapes) in zip(CASES, counts):
            for name, stream in (
                ("Roxxel.stream", roxxel.Roxxel(local).stream(seq_len, batch_size, seed, start)),
                ("Dataset.stream", ds.stream(seq_len, batch_size, seed, start, rank=0, world_size=1)),
            ):
                got = list(itertools.islice(stream, count + 3))  # an endless stream fails, not hangs
                assert len(got) == count, (name, seq_len, batch_size, seed, start)
                assert [list(b.shape) for b in got[:1]] == shapes
                firsts = [int(row[0]) for b in got for row in b]
                assert len(set(firsts)) == len(firsts)  # one pass: no window twice
