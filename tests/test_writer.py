"""roxxel.Writer against local disk, memory://, S3 (moto) and GCS (emulator)."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import numpy as np
import pytest
import zstandard
from fsspec.callbacks import Callback

import roxxel
from roxxel.backends import Store
from roxxel.errors import AccessDeniedError, DatasetExistsError
from roxxel.format import MappedShard
from roxxel.manifest import Manifest
from roxxel import ops
from roxxel.manifest.io import dataset_store, publish_manifest, read_manifest
from tests.checksum_kit import ALGORITHMS, reference_checksum


def records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(0, 3000)), dtype=np.uint8).tobytes() for _ in range(n)]


def read_back(url: str, options: dict) -> tuple[Manifest, list[bytes]]:
    """Every record of the dataset, checking every shard's size and checksum."""
    store = dataset_store(url, options)
    manifest = read_manifest(store)
    out: list[bytes] = []
    for info in manifest.shards:
        data = store.read_bytes(info.uri, max_bytes=None)
        assert len(data) == info.stored_size
        assert reference_checksum(data, "blake3") == info.checksum  # the writer's default
        if info.compression == "zstd":
            assert zstandard.get_frame_parameters(data).content_size == info.raw_size
            data = zstandard.ZstdDecompressor().decompress(data)
        assert len(data) == info.raw_size
        with tempfile.NamedTemporaryFile(suffix=".rox") as f:
            f.write(data)
            f.flush()
            with MappedShard(f.name) as shard:
                assert len(shard) == info.records
                out.extend(bytes(shard[i]) for i in range(len(shard)))
    return manifest, out


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_round_trip_on_every_store(dataset_location, compression):
    url, options = dataset_location
    recs = records(300)
    with roxxel.Writer(url, shard_bytes=64 * 1024, compression=compression,
                       storage_options=options, meta={"dtype": "uint8"}) as w:
        w.extend(recs[:100])
        for r in recs[100:]:
            w.append(r)
    manifest, got = read_back(url, options)
    assert got == recs
    assert manifest == w.manifest
    assert manifest.records == 300 and len(manifest.shards) > 3
    assert dict(manifest.meta) == {"dtype": "uint8"}
    uris = manifest.shards.uris.tolist()
    assert uris == sorted(uris) and all(u.startswith("shards/00000-") for u in uris)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_dataset_of_any_algorithm_reads_and_verifies(tmp_path, algorithm):
    """Datasets written before BLAKE3 was the default (sha256, blake2b) stay readable:
    their checksums are verified, in their own algorithm, on download and by ``verify``."""
    url = str(tmp_path / "ds")
    recs = records(120)
    with roxxel.Writer(url, shard_bytes=16 * 1024, compression="zstd") as w:
        w.extend(recs)
    assert {c.partition(":")[0] for c in w.manifest.shards.checksums.tolist()} == {"blake3"}
    store = dataset_store(url)
    shards = [dataclasses.replace(info, checksum=reference_checksum(store.read_bytes(info.uri), algorithm))
              for info in w.manifest.shards]
    publish_manifest(store, Manifest.build(shards, w.manifest.meta), replaces=None)
    assert ops.verify(url).ok
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == recs
    names = sorted(p.name for p in (tmp_path / "cache" / "shards").iterdir())
    assert names == sorted(f"{algorithm}-{info.checksum.partition(':')[2]}.rox" for info in shards)
    corrupt = shards[1].uri
    data = bytearray(store.read_bytes(corrupt))
    data[-1] ^= 1
    store.put_bytes_overwrite(corrupt, bytes(data))
    [bad] = ops.verify(url).bad
    assert (bad.uri, bad.problem) == (corrupt, f"checksum is {reference_checksum(bytes(data), algorithm)}, "
                                               f"expected {shards[1].checksum}")


def test_accepts_str_and_numpy_and_rejects_other_types(tmp_path):
    url = str(tmp_path / "ds")
    with pytest.raises(TypeError, match="record at position 2 is of type dict"):
        with roxxel.Writer(url) as w:
            w.append("text")
            w.append(np.arange(3, dtype=np.int64))
            w.append({"not": "a record"})  # type: ignore[arg-type]
    assert not os.path.exists(os.path.join(url, "manifest.json"))
    with roxxel.Writer(url) as w:
        w.extend(["text", np.arange(3, dtype=np.int64), b""])
    assert read_back(url, {})[1] == [b"text", np.arange(3, dtype=np.int64).tobytes(), b""]


def test_create_refuses_an_existing_dataset_and_overwrite_keeps_old_shards(dataset_location):
    url, options = dataset_location
    with roxxel.Writer(url, storage_options=options) as w:
        w.extend([b"v1-a", b"v1-b"])
    old = w.manifest
    with pytest.raises(DatasetExistsError, match=r"a dataset already exists at .*manifest\.json"):
        roxxel.Writer(url, storage_options=options)
    with roxxel.Writer(url, storage_options=options, mode="overwrite") as w2:
        w2.append(b"v2")
    manifest, got = read_back(url, options)
    assert got == [b"v2"]
    assert manifest.shards.uris[0].startswith("shards/00001-")  # a new generation
    store = dataset_store(url, options)
    assert store.exists(old.shards.uris[0])  # readers of v1 are not cut off


def test_append_lists_old_then_new_shards_and_keeps_meta(dataset_location):
    url, options = dataset_location
    with roxxel.Writer(url, storage_options=options, meta={"v": 1}) as w:
        w.extend([b"a", b"b"])
    with roxxel.Writer(url, storage_options=options, mode="append", shard_bytes=30) as w2:
        w2.extend([b"c", b"d"])
    manifest, got = read_back(url, options)
    assert got == [b"a", b"b", b"c", b"d"]
    assert dict(manifest.meta) == {"v": 1}
    assert manifest.shards.uris.tolist() == sorted(manifest.shards.uris.tolist())
    assert manifest.shards[0].uri == w.manifest.shards[0].uri


def test_append_to_a_missing_dataset_creates_it(tmp_path):
    url = str(tmp_path / "new")
    with roxxel.Writer(url, mode="append") as w:
        w.append(b"first")
    assert read_back(url, {})[1] == [b"first"]


def test_a_losing_writer_never_deletes_shards_the_winner_published(tmp_path):
    """Two writers of the same data get the same shard names; the one that fails to
    publish (or raises) must leave those objects to the winner's manifest."""
    url = str(tmp_path / "ds")
    recs = records(60)
    loser = roxxel.Writer(url, shard_bytes=4096)
    loser.extend(recs)
    with roxxel.Writer(url, shard_bytes=4096) as winner:
        winner.extend(recs)
    with pytest.raises(DatasetExistsError):
        loser.close()
    assert read_back(url, {})[1] == recs  # every shard the manifest names is still there


def test_shard_names_are_deterministic(new_location):
    a, b = new_location("memory"), new_location("memory")
    for loc in (a, b):
        with roxxel.Writer(loc.url, shard_bytes=4096) as w:
            w.extend(records(50, seed=3))
    assert w.manifest is not None
    assert read_manifest(dataset_store(a.url, {})).shards.uris.tolist() == w.manifest.shards.uris.tolist()


def test_exception_in_the_block_publishes_nothing_and_cleans_up(dataset_location, tmp_path):
    url, options = dataset_location
    staging = tmp_path / "staging"
    staging.mkdir()
    with pytest.raises(RuntimeError, match="boom"):
        with roxxel.Writer(url, storage_options=options, shard_bytes=2048, staging_dir=str(staging)) as w:
            w.extend(records(100))
            time.sleep(0.2)
            raise RuntimeError("boom")
    store = dataset_store(url, options)
    assert not store.exists("manifest.json")
    assert store.list() == [k for k in store.list() if k.startswith("shards/")]  # no manifest
    # Uploaded shards stay, unreferenced: a concurrent writer of the same data may publish them.
    assert os.listdir(staging) == []


class FailingStore(Store):
    """Refuses the n-th upload as a permanent error, or blocks uploads until released."""

    def __init__(self, *args, fail_at: int | None = None, gate: threading.Event | None = None, **kw):
        super().__init__(*args, **kw)
        self.fail_at, self.gate, self.calls = fail_at, gate, 0

    def put_file(self, local_path, key):
        self.calls += 1
        if self.gate is not None:
            self.gate.wait(30)
        if self.fail_at is not None and self.calls >= self.fail_at:
            raise AccessDeniedError(f"access denied to {self.url(key)}; check your credentials")
        super().put_file(local_path, key)


def test_a_failed_upload_publishes_nothing_and_raises_the_original_error(tmp_path):
    url = str(tmp_path / "ds")
    store = FailingStore(url, fail_at=2)
    with pytest.raises(AccessDeniedError, match=r"access denied to .*shards/00000-000001-"):
        with roxxel.Writer(url, shard_bytes=1024, store=store) as w:
            w.extend(records(200))
    assert not os.path.exists(os.path.join(url, "manifest.json"))


def test_append_waits_when_uploads_fall_behind(tmp_path):
    gate = threading.Event()
    staging = tmp_path / "staging"
    staging.mkdir()
    store = FailingStore(str(tmp_path / "ds"), gate=gate)
    w = roxxel.Writer(store.base_url, shard_bytes=1024, store=store, upload_workers=1,
                      max_staged_shards=2, staging_dir=str(staging))
    appended = []

    def produce():
        for r in records(400):
            w.append(r)
            appended.append(1)

    t = threading.Thread(target=produce)
    t.start()
    time.sleep(1.0)
    stuck_at = len(appended)
    (stage,) = os.listdir(staging)
    staged = os.listdir(staging / stage)
    assert stuck_at < 400  # append is blocked, not filling the disk
    assert len(staged) <= 3  # two finished shards waiting + the one being packed
    gate.set()
    t.join(30)
    w.close()
    assert read_back(store.base_url, {})[1] == records(400)


class Recorder(Callback):
    """Every (size, value) a callback was told, and the threads that told it."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int | None, int]] = []
        self.threads: set[str] = set()

    def call(self, hook_name=None, **kwargs) -> None:
        self.seen.append((self.size, self.value))
        self.threads.add(threading.current_thread().name)


@pytest.mark.parametrize("compression", [None, "zstd"])
def test_progress_is_an_fsspec_callback_counting_bytes_appended_then_uploaded(tmp_path, compression):
    progress = Recorder()
    recs = records(50)
    with roxxel.Writer(str(tmp_path / "ds"), shard_bytes=8192, compression=compression,
                       progress=progress) as w:
        w.extend(recs)
    total = sum(map(len, recs))
    assert len(w.manifest.shards) > 2
    assert progress.size == progress.value == total  # the records' bytes, compressed or not
    sizes = [size for size, _ in progress.seen]
    assert sizes == sorted(sizes)  # the size grows as records are appended
    assert all(size is not None and value <= size for size, value in progress.seen)
    values = {value for _, value in progress.seen}
    assert len(values) > 2  # counted shard by shard, as uploads finish
    assert any(name.startswith("roxxel-upload-") for name in progress.threads)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(mode="merge"), "mode must be one of create, overwrite, append; got 'merge'"),
        (dict(compression="gzip"), "compression must be None or 'zstd', got 'gzip'"),
        (dict(shard_bytes=10), "shard_bytes must be an integer > 24, got 10"),
    ],
)
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        roxxel.Writer(str(tmp_path / "ds"), **kwargs)


KILLED_WRITER = textwrap.dedent(
    """
    import os, sys, json
    import roxxel
    url, options = sys.argv[1], json.loads(sys.argv[2])
    w = roxxel.Writer(url, shard_bytes=256 * 1024, storage_options=options, mode="overwrite")
    print("started", flush=True)
    while True:  # never finishes: killed while packing and uploading
        w.append(os.urandom(4096))
    """
)


@pytest.mark.parametrize("kind", ["local", "s3"])
def test_sigkill_while_uploading_leaves_the_previous_version(new_location, kind):
    import json

    url, options = new_location(kind)
    with roxxel.Writer(url, storage_options=options) as w:
        w.extend([b"v1"] * 10)
    env = dict(os.environ, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false")
    proc = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, url, json.dumps(options)],
                            stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"started"
        store = dataset_store(url, options)
        deadline = time.monotonic() + 60
        while len(store.list("shards")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)  # wait until uploads are under way
        assert len(store.list("shards")) >= 3
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    manifest, got = read_back(url, options)
    assert manifest == w.manifest and got == [b"v1"] * 10


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"upload_workers": 0}, "upload_workers must be a positive integer, got 0"),
    ({"upload_workers": True}, "upload_workers must be a positive integer, got True"),
    ({"max_staged_shards": -1}, "max_staged_shards must be a positive integer, got -1"),
    ({"max_staged_shards": 2.5}, "max_staged_shards must be a positive integer, got 2.5"),
])
def test_bad_upload_settings_are_refused_before_anything_starts(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        roxxel.Writer(str(tmp_path / "ds"), **kwargs)
    assert not (tmp_path / "ds").exists()
