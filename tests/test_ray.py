"""roxxel.ray.Datasink: Ray Data's write_datasink publishes a roxxel dataset (issue 14,
item 3), on a local Ray instance (num_cpus=2) started once for this module and shut down
at its end. Ray is heavy: two tests."""

from __future__ import annotations

import collections
from typing import Any

import pytest
import ray

import roxxel
import roxxel.ray
from roxxel import ops
from roxxel.build.parts import PART_SHARD_KEY
from roxxel.errors import DatasetExistsError


@pytest.fixture(scope="module")
def ray_instance():
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=256 << 20, log_to_driver=False,
             configure_logging=False)
    try:
        yield
    finally:
        ray.shutdown()


def read_all(url: str, options: dict[str, Any], cache) -> list[bytes]:
    with roxxel.open(url, storage_options=options, cache_dir=str(cache)) as ds:
        return [bytes(r) for r in ds]


def record(i: int) -> bytes:
    return b"ray record %05d " % i + bytes([i % 199]) * (i % 250)


def test_write_datasink_publishes_in_task_order(ray_instance, new_location, tmp_path):
    url, options = new_location("s3")
    context = ray.data.DataContext.get_current()
    dataset = ray.data.from_items([{"data": record(i)} for i in range(400)]).repartition(5)
    sink = roxxel.ray.Datasink(url, storage_options=options, shard_bytes=8 << 10, meta={"by": "ray"})
    context.execution_options.preserve_order = True
    try:
        dataset.write_datasink(sink)
    finally:
        context.execution_options.preserve_order = False
    assert sink.manifest.records == 400 and sink.manifest.meta == {"by": "ray"}
    parts = [int(PART_SHARD_KEY.match(uri).group(1)) for uri in sink.manifest.shards.uris.tolist()]
    assert parts == sorted(parts) and len(set(parts)) > 1
    assert read_all(url, options, tmp_path / "cache") == [record(i) for i in range(400)]
    assert ops.verify(url, options).ok
    with pytest.raises(DatasetExistsError):
        dataset.write_datasink(roxxel.ray.Datasink(url, storage_options=options))


def encode(row: dict[str, Any]) -> str:
    return f"{row['name']}:{row['n']}"


def test_rows_encoded_and_appended_on_gcs(ray_instance, new_location, tmp_path):
    url, options = new_location("gcs")
    first = ray.data.from_items([{"name": f"a{i}", "n": i} for i in range(50)])
    first.write_datasink(roxxel.ray.Datasink(url, storage_options=options, encode=encode))
    more = ray.data.range(30).map(lambda row: {"name": "b", "n": row["id"]})
    sink = roxxel.ray.Datasink(url, storage_options=options, encode=encode, mode="append")
    more.write_datasink(sink)
    assert sink.manifest.records == 80
    got = read_all(url, options, tmp_path / "cache")
    assert collections.Counter(got[:50]) == collections.Counter(f"a{i}:{i}".encode() for i in range(50))
    assert collections.Counter(got[50:]) == collections.Counter(f"b:{i}".encode() for i in range(30))
    with pytest.raises(ValueError, match=r"rows have 2 columns .*column=.*encode="):
        first.write_datasink(roxxel.ray.Datasink(url, storage_options=options, mode="overwrite"))
