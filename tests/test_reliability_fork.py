"""Fork: a dataset created (and in use, downloads in flight) before a fork either works in
the child, or fails there at once with a message that says what to do. Covers a bare
``os.fork`` and PyTorch DataLoader workers started with ``fork``, on local disk and S3.

Each scenario runs in its own interpreter, so a hang is contained and timed.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.reliability_kit import write

REPO = Path(__file__).resolve().parents[1]
N = 600
HANG = 8.0  # seconds after which the child counts as hung
FAIL_FAST = 5.0
# "fails at once with a message that says what to do": it must name fork and a remedy
ADVICE = re.compile(r"(?is)fork.*(spawn|forkserver|after (the )?fork|re-?open|pickl)")

rel = pytest.mark.reliability

FORKED = textwrap.dedent(
    """
    import json, os, sys, time
    import roxxel
    from roxxel.backends import Store
    from tests.faults import FaultyFileSystem, faulty_url
    from tests.reliability_kit import check_record

    url, options, cache_dir, kind, hang = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
    # slow reads on local disk, so downloads are in flight at the fork (S3 is slow enough)
    store = Store(faulty_url(url), fs=FaultyFileSystem(latency=0.005), chunk_size=1024) if kind == "local" else None
    ds = roxxel.open(url, cache_dir=cache_dir, storage_options=options, store=store, lookahead=4)
    it = iter(ds)
    for _ in range(30):
        check_record(next(it))
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        started = time.monotonic()
        try:
            seen = sorted(check_record(r) for r in ds)
            outcome = {"outcome": "ok" if seen == list(range(len(ds))) else "wrong records"}
        except BaseException as exc:
            outcome = {"outcome": "error", "type": type(exc).__name__, "message": str(exc)}
        outcome["seconds"] = time.monotonic() - started
        os.write(write, json.dumps(outcome).encode())
        os._exit(0)
    os.close(write)
    deadline = time.monotonic() + hang
    while time.monotonic() < deadline:
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        print(json.dumps({"outcome": "hang", "seconds": hang}))
        sys.exit(0)
    print(os.read(read, 1 << 20).decode() or json.dumps({"outcome": "child died"}))
    ds.close()
    """
)

LOADER = textwrap.dedent(
    """
    import json, sys, time
    import numpy as np
    from torch.utils.data import DataLoader
    from roxxel.torch import IterableRecords
    from tests.reliability_kit import check_record

    url, options, cache_dir, kind, hang = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], float(sys.argv[5])
    records = IterableRecords(url, batch_size=16, window=4, cache_dir=cache_dir, storage_options=options,
                              transform=lambda r: check_record(r), collate=list)
    first = iter(records)  # used in the parent before the workers fork: opened, downloading
    for _ in range(3):
        next(first)
    loader = DataLoader(records, batch_size=None, num_workers=2, multiprocessing_context="fork", timeout=hang)
    started = time.monotonic()
    try:
        seen = sorted(i for batch in loader for i in batch)
        outcome = {"outcome": "ok" if seen == list(range(len(records.dataset()))) else "wrong records"}
    except BaseException as exc:
        message = str(exc)
        timed_out = "timed out" in message
        outcome = {"outcome": "hang" if timed_out else "error", "type": type(exc).__name__, "message": message}
    outcome["seconds"] = time.monotonic() - started
    print(json.dumps(outcome))
    """
)


def run(script: str, url: str, options: dict, cache_dir: Path, kind: str) -> dict:
    env = dict(os.environ, PYTHONPATH=str(REPO), GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    proc = subprocess.run(
        [sys.executable, "-c", script, url, json.dumps(options), str(cache_dir), kind, str(HANG)],
        capture_output=True, text=True, cwd=REPO, env=env, timeout=HANG + 60,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def judge(outcome: dict) -> None:
    if outcome["outcome"] == "ok":
        return
    assert outcome["outcome"] == "error", f"the child {outcome['outcome']}: {outcome}"
    assert outcome["seconds"] < FAIL_FAST, f"failed, but only after {outcome['seconds']:.1f}s: {outcome}"
    assert ADVICE.search(outcome["message"]), f"the message does not say what to do: {outcome['message']}"


def dataset(new_location, kind: str) -> tuple[str, dict]:
    url, options = new_location(kind)
    write(url, N, shard_bytes=4096, storage_options=options)
    return url, options


@rel("fork", "os.fork while a dataset ({kind}) is being read and shards are downloading: the child reads the whole dataset, or fails at once saying what to do")
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_os_fork_with_downloads_in_flight(new_location, tmp_path, kind, reliability):
    url, options = dataset(new_location, kind)
    outcome = run(FORKED, url, options, tmp_path / "cache", kind)
    reliability.note(json.dumps(outcome)[:200])
    judge(outcome)


@rel("fork", "PyTorch DataLoader with 2 fork workers over an IterableRecords ({kind}) already iterated in the parent: every record once, or an immediate error saying what to do")
@pytest.mark.parametrize("kind", ["local", "s3"])
def test_dataloader_fork_workers_after_use_in_the_parent(new_location, tmp_path, kind, reliability):
    url, options = dataset(new_location, kind)
    outcome = run(LOADER, url, options, tmp_path / "cache", kind)
    reliability.note(json.dumps(outcome)[:200])
    judge(outcome)
