"""roxxel.ops.prune and ``roxxel prune``: shard objects no manifest lists are found, and
deleted only when asked, only when old enough, and never when a manifest lists them."""

from __future__ import annotations

import datetime
import json
import os
import time
from typing import Any

import pytest
from fsspec.callbacks import Callback

import roxxel
from roxxel import ops
from roxxel.backends.store import modified_time
from roxxel.cli import main
from roxxel.errors import NotFoundError, StorageError
from roxxel.manifest.io import dataset_store, read_manifest
from roxxel.ops.prune import CHANGED, COLLECTABLE, DELETED, FAILED, RECENT, SHARD_KEY
from tests.test_ops_verify import make_records as records
from tests.test_ops_verify import publish as write


class Boom(Exception):
    pass


def shard_keys(store) -> set[str]:
    return {k for k in store.list("shards") if SHARD_KEY.match(k)}


class Total(Callback):
    def call(self, *args, **kwargs):
        pass


def test_orphans_of_an_overwrite_and_an_aborted_writer_are_found_then_deleted(dataset_location, tmp_path):
    url, options = dataset_location
    write(url, options, records(60, 1))
    v2 = records(80, 2)
    write(url, options, v2, mode="overwrite")
    with pytest.raises(Boom):
        with roxxel.Writer(url, shard_bytes=8 * 1024, storage_options=options, mode="overwrite") as w:
            w.extend(records(60, 3))
            raise Boom
    store = dataset_store(url, options)
    store.put_bytes_overwrite("shards/notes.txt", b"not a shard")  # never a candidate
    store.put_bytes_overwrite("other/0001-000001-0123456789ab.rox", b"outside shards/")
    live = set(read_manifest(store).shards.uris.tolist())
    orphans = shard_keys(store) - live
    assert len(orphans) >= 5  # at least the first version's shards

    young = ops.prune(url, options)  # default grace: one day
    assert {s.key for s in young.unreferenced} == orphans and young.referenced == len(live)
    assert young.having(RECENT) == young.unreferenced
    assert all(s.age_seconds is not None and s.age_seconds < 600 for s in young.unreferenced)

    dry = ops.prune(url, options, older_than=0)
    assert {s.key for s in dry.having(COLLECTABLE)} == orphans
    assert shard_keys(store) == orphans | live  # a dry run deletes nothing

    progress = Total()
    done = ops.prune(url, options, older_than=0, delete=True, progress=progress)
    assert {s.key for s in done.having(DELETED)} == orphans and done.ok
    assert progress.size == progress.value == sum(s.size for s in done.unreferenced) > 0
    assert shard_keys(store) == live
    assert store.exists("shards/notes.txt") and store.exists("other/0001-000001-0123456789ab.rox")
    assert done.to_dict()["by_status"] == {DELETED: {"shards": len(orphans), "bytes": progress.value}}
    with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == v2
    assert ops.prune(url, options, older_than=0).unreferenced == []


def test_shards_a_manifest_above_lists_are_kept(tmp_path):
    dest = str(tmp_path / "merged")
    parts = [f"{dest}/part-{i}" for i in range(2)]
    for i, part in enumerate(parts):
        write(part, {}, records(40, 10 + i))
    ops.merge(parts, dest)  # in place: the merged manifest lists part-0/shards/...
    with roxxel.open(dest, cache_dir=str(tmp_path / "c")) as ds:
        whole = [bytes(r) for r in ds]
    old_part0 = set(read_manifest(dataset_store(parts[0])).shards.uris.tolist())
    write(parts[0], {}, records(30, 20), mode="overwrite")  # part-0's own manifest drops them
    report = ops.prune(parts[0], older_than=0, delete=True)
    assert report.unreferenced == []
    assert len(report.manifests) == 2  # part-0's and the merged one above it
    assert old_part0 <= shard_keys(dataset_store(parts[0]))
    with roxxel.open(dest, cache_dir=str(tmp_path / "c2")) as ds:
        assert [bytes(r) for r in ds] == whole


def overwritten(folder, seed: int) -> tuple[str, Any, list[str]]:
    """A local dataset written twice (the second time with ``mode="overwrite"``): its URL,
    its store, and the first version's shards, which no manifest lists any more."""
    url = str(folder / "ds")
    write(url, {}, records(50, seed))
    write(url, {}, records(50, seed + 1), mode="overwrite")
    store = dataset_store(url)
    return url, store, sorted(shard_keys(store) - set(read_manifest(store).shards.uris.tolist()))


def age(path: str, days: float) -> None:
    then = time.time() - days * 86400
    os.utime(path, (then, then))


def test_the_grace_period_counts_from_the_shard_and_from_the_newest_manifest(tmp_path, monkeypatch):
    url, store, orphans = overwritten(tmp_path, 4)
    old = orphans[: len(orphans) // 2]
    # Only mtimes can be set back here; the inode change time, which modified_time also
    # takes on local disk, is now: tell the store's stat to ignore it for this test.
    import roxxel.backends.store as store_module

    real = store_module.modified_time
    monkeypatch.setattr(store_module, "modified_time", lambda info: real({k: v for k, v in info.items() if k != "created"}))
    for key in old:
        age(store.path(key), 2)
    # The overwrite that orphaned them is minutes old: a job reading the old version is safe.
    report = ops.prune(url, delete=True)
    assert report.having(DELETED) == [] and len(report.having(RECENT)) == len(orphans)
    age(store.path("manifest.json"), 1.5)
    report = ops.prune(url, delete=True)  # default: unreferenced for over one day
    assert sorted(s.key for s in report.having(DELETED)) == old
    assert shard_keys(store) - set(read_manifest(store).shards.uris.tolist()) == set(orphans) - set(old)


def test_a_shard_uploaded_again_after_listing_is_kept(tmp_path, monkeypatch):
    url, store, orphans = overwritten(tmp_path, 13)
    real = type(store).list_info

    def list_then_reupload(self, prefix=""):
        found = real(self, prefix)
        time.sleep(1.1)
        store.put_bytes_overwrite(orphans[0], store.read_bytes(orphans[0], max_bytes=None))  # a writer rerun
        return found

    monkeypatch.setattr(type(store), "list_info", list_then_reupload)
    report = ops.prune(url, older_than=0, delete=True)
    assert [s.key for s in report.having(CHANGED)] == [orphans[0]]
    assert sorted(s.key for s in report.having(DELETED)) == orphans[1:]
    assert store.exists(orphans[0])


def test_a_failed_deletion_is_reported_and_fails_the_command(tmp_path, monkeypatch, capsys):
    url, store, orphans = overwritten(tmp_path, 15)
    victim = orphans[0]
    real = type(store).delete

    def delete(self, key):
        if key == victim:
            raise StorageError(f"could not delete {key}: access denied")
        real(self, key)

    monkeypatch.setattr(type(store), "delete", delete)
    assert main(["prune", url, "--older-than", "0", "--delete", "-q"]) == 1
    captured = capsys.readouterr()
    assert f"{victim}" in captured.out and "failed to delete" in captured.out
    assert "1 shard objects could not be deleted" in captured.err
    report = ops.prune(url, older_than=0, delete=True)
    assert [(s.key, s.status) for s in report.having(FAILED)] == [(victim, FAILED)] and not report.ok
    assert "access denied" in report.having(FAILED)[0].error


def test_a_dataset_reached_through_a_symlink_counts_the_manifests_above_its_real_path(tmp_path):
    dest = str(tmp_path / "merged")
    parts = [f"{dest}/part-{i}" for i in range(2)]
    for i, part in enumerate(parts):
        write(part, {}, records(40, 30 + i))
    ops.merge(parts, dest)
    write(parts[0], {}, records(30, 40), mode="overwrite")
    os.symlink(parts[0], tmp_path / "alias")
    report = ops.prune(str(tmp_path / "alias"), older_than=0, delete=True)
    assert report.unreferenced == [] and len(report.manifests) == 2


def test_shard_names_roxxel_does_not_give_are_never_candidates():
    assert SHARD_KEY.match("shards/00001-000002-0123456789ab.rox")
    for algorithm in ("sha256", "blake2b", "blake3"):  # the names merge gives the shards it copies
        assert SHARD_KEY.match(f"shards/{algorithm}-" + "a" * 32 + ".rox.zst")
    for name in ("shards/train-" + "a" * 32 + ".rox", "shards/00001-000002-0123456789ab.rox.bak",
                 "shards/sub/00001-000002-0123456789ab.rox", "00001-000002-0123456789ab.rox"):
        assert not SHARD_KEY.match(name), name


def test_a_manifest_changed_meanwhile_stops_every_deletion(tmp_path, monkeypatch):
    url, store, _ = overwritten(tmp_path, 6)
    before = shard_keys(store)
    real = type(store).list_info

    def list_then_publish(self, prefix=""):
        found = real(self, prefix)
        write(url, {}, records(10, 8), mode="append")  # a writer publishes while we list
        return found

    monkeypatch.setattr(type(store), "list_info", list_then_publish)
    with pytest.raises(StorageError, match="changed while its shards were being listed; nothing was deleted"):
        ops.prune(url, older_than=0, delete=True)
    assert before <= shard_keys(store)


def test_a_prefix_without_a_manifest_has_only_unreferenced_shards(tmp_path):
    url = str(tmp_path / "ds")
    with pytest.raises(Boom):
        with roxxel.Writer(url, shard_bytes=4096) as w:
            w.extend(records(80, 9))
            raise Boom
    report = ops.prune(url, older_than=0)
    assert report.manifests == [] and report.referenced == 0
    assert {s.key for s in report.unreferenced} == shard_keys(dataset_store(url))
    with pytest.raises(NotFoundError, match="has no manifest.json, so every shard under it"):
        ops.prune(url, older_than=0, delete=True)  # a copy being resumed, a dataset being written
    assert {s.key for s in report.unreferenced} == shard_keys(dataset_store(url))


def test_bad_grace_periods_are_refused(tmp_path):
    for bad in (-1, float("nan"), True, "1d"):
        with pytest.raises(ValueError, match="older_than must be a number of seconds >= 0"):
            ops.prune(str(tmp_path), older_than=bad)


def test_modified_times_of_every_backend_are_read():
    moment = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    stamp = moment.timestamp()
    assert modified_time({"LastModified": moment}) == stamp  # S3
    assert modified_time({"mtime": moment, "updated": "2020-01-01T00:00:00Z"}) == stamp  # GCS
    assert modified_time({"updated": "2026-01-02T03:04:05.000Z"}) == stamp
    assert modified_time({"mtime": stamp - 50, "created": stamp}) == stamp  # local: cp -p kept an old mtime
    assert modified_time({"mtime": stamp}) == stamp
    assert modified_time({"created": stamp}) == stamp  # memory
    assert modified_time({"mtime": moment.replace(tzinfo=None)}) == stamp  # naive: UTC
    assert modified_time({"size": 3}) is None and modified_time({"updated": "soon"}) is None


def test_the_command_lists_then_deletes(tmp_path, capsys):
    url, store, orphan_list = overwritten(tmp_path, 11)
    orphans = set(orphan_list)
    assert main(["prune", url, "-q"]) == 0
    out = capsys.readouterr().out
    assert f"{len(orphans)} unreferenced shard objects" in out and f"  {RECENT}: {len(orphans)}" in out
    assert "pass --delete" not in out
    assert main(["prune", url, "--older-than", "0", "-q"]) == 0
    out = capsys.readouterr().out
    assert f"  {COLLECTABLE}: {len(orphans)}" in out and "pass --delete to delete them" in out
    assert shard_keys(store) >= orphans
    assert main(["prune", url, "--older-than", "0s", "--delete", "--json", "-q"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["by_status"][DELETED]["shards"] == len(orphans) and report["ok"] is True
    assert not shard_keys(store) & orphans
    with pytest.raises(SystemExit):
        main(["prune", url, "--older-than", "soon"])
    assert "expected a duration like 1d" in capsys.readouterr().err
