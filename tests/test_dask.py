"""roxxel.dask.write on a distributed.LocalCluster of 2 worker processes (issue 14, item 2):
bags and dataframes to S3, GCS and local disk, a worker killed in the middle of the job,
and ``roxxel pack --workers/--scheduler``.

The cluster starts once per session (the fixture below) and stops at its end.
"""

from __future__ import annotations

import collections
import os
import signal
import threading
import time
from typing import Any

import dask.bag as db
import dask.dataframe as dd
import distributed
import pandas as pd
import pytest
from fsspec.callbacks import Callback

import roxxel
import roxxel.dask
from roxxel import ops
from roxxel.build.parts import PART_SHARD_KEY
from roxxel.errors import DatasetExistsError
from roxxel.manifest.io import dataset_store, read_manifest


@pytest.fixture(scope="session")
def dask_client():
    cluster = distributed.LocalCluster(
        n_workers=2, processes=True, threads_per_worker=1, dashboard_address=":0", memory_limit="2GiB",
    )
    # not the default client: other tests' Dask code (the README's) keeps its local scheduler
    client = distributed.Client(cluster, set_as_default=False)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


def read_all(url: str, options: dict[str, Any], cache) -> list[bytes]:
    with roxxel.open(url, storage_options=options, cache_dir=str(cache)) as ds:
        return [bytes(r) for r in ds]


def record(i: int) -> bytes:
    return b"record %06d " % i + bytes([i % 251]) * (i % 300)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_a_bag_is_written_in_partition_order(dask_client, new_location, kind, tmp_path):
    url, options = new_location(kind)
    bag = db.from_sequence(range(600), npartitions=6).map(record)
    seen: list[int] = []
    progress = _Counting(seen)
    manifest = roxxel.dask.write(bag, url, storage_options=options, shard_bytes=16 << 10, meta={"by": "dask"},
                                 progress=progress, client=dask_client)
    assert manifest.records == 600 and manifest.meta == {"by": "dask"}
    parts = [int(PART_SHARD_KEY.match(uri).group(1)) for uri in manifest.shards.uris.tolist()]
    assert parts == sorted(parts) and set(parts) == set(range(6))
    assert read_all(url, options, tmp_path / "cache") == [record(i) for i in range(600)]
    # progress came from both worker processes' uploads
    deadline = time.monotonic() + 30
    while sum(seen) < sum(len(record(i)) for i in range(600)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sum(seen) == sum(len(record(i)) for i in range(600))
    with pytest.raises(DatasetExistsError):
        roxxel.dask.write(bag, url, storage_options=options, client=dask_client)


class _Counting(Callback):
    def __init__(self, seen: list[int]) -> None:
        super().__init__()
        self.seen = seen

    def relative_update(self, inc: int = 1) -> None:
        self.seen.append(inc)
        super().relative_update(inc)


def encode_row(row: dict[str, Any]) -> bytes:
    return f"{row['name']}={row['value']}".encode()


def test_dataframes_one_column_or_rows_encoded(dask_client, tmp_path):
    frame = pd.DataFrame({"name": [f"n{i}" for i in range(100)], "value": range(100)})
    df = dd.from_pandas(frame, npartitions=4)
    url = str(tmp_path / "encoded")
    roxxel.dask.write(df, url, encode=encode_row, client=dask_client)
    assert read_all(url, {}, tmp_path / "c1") == [f"n{i}={i}".encode() for i in range(100)]
    url = str(tmp_path / "column")
    roxxel.dask.write(df, url, column="name", shard_bytes=256, client=dask_client)
    assert read_all(url, {}, tmp_path / "c2") == [f"n{i}".encode() for i in range(100)]
    with pytest.raises(ValueError, match=r"rows have 2 columns \['name', 'value'\].*column=.*encode="):
        roxxel.dask.write(df, str(tmp_path / "neither"), client=dask_client)
    url = str(tmp_path / "series")
    roxxel.dask.write(df["name"], url, mode="overwrite", client=dask_client)
    assert read_all(url, {}, tmp_path / "c3") == [f"n{i}".encode() for i in range(100)]


def slow_record(i: int, marks: str) -> bytes:
    """A record that takes a while, marking which worker process made it."""
    open(os.path.join(marks, str(os.getpid())), "a").close()
    time.sleep(0.01)
    return record(i)


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(dask_client, new_location, tmp_path, kind):
    url, options = new_location(kind)
    marks = tmp_path / "marks"
    marks.mkdir()
    n, parts = 1200, 8
    bag = db.from_sequence(range(n), npartitions=parts).map(slow_record, str(marks))
    pids = dask_client.run(os.getpid)
    victim = next(iter(pids.values()))
    result: dict[str, Any] = {}

    def job() -> None:
        try:
            result["manifest"] = roxxel.dask.write(bag, url, storage_options=options, shard_bytes=4 << 10,
                                                   client=dask_client)
        except BaseException as exc:  # noqa: BLE001 - reported below
            result["error"] = exc

    thread = threading.Thread(target=job)
    thread.start()
    deadline = time.monotonic() + 60
    while not (marks / str(victim)).exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert (marks / str(victim)).exists(), "the victim worker never started a task"
    os.kill(victim, signal.SIGKILL)
    thread.join(timeout=300)
    assert not thread.is_alive() and "error" not in result, result
    assert result["manifest"].records == n
    assert collections.Counter(read_all(url, options, tmp_path / "cache")) == collections.Counter(
        record(i) for i in range(n)
    )
    assert dask_client.run(os.getpid).keys() and victim not in dask_client.run(os.getpid).values()
    # the killed attempt's uploads, if any, are not listed; prune sees exactly those
    listed = set(read_manifest(dataset_store(url, options)).shards.uris.tolist())
    report = ops.prune(url, options, older_than=0)
    assert not {s.key for s in report.unreferenced} & listed
    assert report.referenced == len(listed)


def test_pack_on_an_existing_scheduler_and_on_local_workers(dask_client, tmp_path, capsys):
    from roxxel.cli import main

    inputs = tmp_path / "in"
    inputs.mkdir()
    lines = [f'{{"i": {i}}}' for i in range(300)]
    for f in range(5):
        (inputs / f"{f}.jsonl").write_text("\n".join(lines[f * 60:(f + 1) * 60]) + "\n")
    address = dask_client.scheduler_info()["address"]
    url = str(tmp_path / "packed")
    assert main(["pack", str(inputs), url, "--format", "jsonl", "--scheduler", address, "--shard-bytes", "1024",
                 "--quiet"]) == 0
    assert read_all(url, {}, tmp_path / "c1") == [line.encode() for line in lines]
    seen: list[int] = []
    counting = _Counting(seen)
    ops.pack([str(inputs)], str(tmp_path / "counted"), format="jsonl", scheduler=address, shard_bytes=256,
             progress=counting)
    total = sum(p.stat().st_size for p in inputs.iterdir())
    assert counting.size == total and sum(seen) == total
    assert len(seen) > 2  # the workers' uploads as they happened, then the line ends at the end
    (inputs / "9.jsonl").write_text('{"fine": 1}\nnot json\n')
    with pytest.raises(ValueError, match=r"9.jsonl:2: invalid JSON line"):
        ops.pack([str(inputs)], str(tmp_path / "broken"), format="jsonl", scheduler=address, shard_bytes=1024)
    assert not os.path.exists(tmp_path / "broken" / "manifest.json")  # an error publishes nothing
    (inputs / "9.jsonl").unlink()
    url = str(tmp_path / "packed-local")
    assert main(["pack", str(inputs), url, "--format", "jsonl", "--workers", "2", "--quiet"]) == 0
    assert read_all(url, {}, tmp_path / "c2") == [line.encode() for line in lines]
    capsys.readouterr()
