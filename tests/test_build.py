"""roxxel.build: write_part on any worker, commit once (issue 14, item 1).

Parts upload through the Writer's verified path under names of their attempt; the commit
lists one receipt per part in part order, refuses a missing part or disagreeing receipts,
and publishes by compare-and-swap. What a losing attempt wrote is never listed, and prune
finds and removes it.
"""

from __future__ import annotations

import importlib
import json
import pickle
import subprocess
import sys
from typing import Any

import numpy as np
import pytest

import roxxel
from roxxel import ops
from roxxel.build import Receipt, commit, write_part
from roxxel.build.commit import check_destination
from roxxel.errors import (
    ConflictError,
    DatasetExistsError,
    IntegrityError,
    NotFoundError,
    ReceiptError,
)
from roxxel.manifest.io import MANIFEST_KEY, dataset_store, read_manifest

commit_module = importlib.import_module("roxxel.build.commit")  # (roxxel.build.commit is the function)

SHARD = 4096


def records_of(part: int, n: int = 40) -> list[bytes]:
    rng = np.random.default_rng(part)
    return [f"part {part} record {i} ".encode() + rng.bytes(int(rng.integers(1, 400))) for i in range(n)]


def read_all(url: str, options: dict[str, Any], cache) -> list[bytes]:
    with roxxel.open(url, storage_options=options, cache_dir=str(cache)) as ds:
        return [bytes(r) for r in ds]


def shard_keys(url: str, options: dict[str, Any]) -> set[str]:
    return {key for key, _, _ in dataset_store(url, options).list_info("shards")}


def test_parts_written_in_any_order_are_committed_in_part_order(dataset_location, tmp_path):
    url, options = dataset_location
    receipts = {p: write_part(records_of(p), url, part=p, shard_bytes=SHARD, storage_options=options,
                              compression="zstd" if p == 1 else None)
                for p in (2, 0, 3, 1)}
    assert all(len(r.shards) > 1 for r in receipts.values())  # several shards per part
    assert not dataset_store(url, options).exists(MANIFEST_KEY)  # parts publish nothing
    # receipts travel as pickles or JSON between workers and the driver
    travelled = [pickle.loads(pickle.dumps(receipts[3])), json.loads(json.dumps(receipts[0].to_dict())),
                 receipts[2], Receipt.from_dict(receipts[1].to_dict())]
    manifest = commit(url, travelled, meta={"source": "test"}, storage_options=options)
    assert manifest.shards.uris.tolist() == [s.uri for p in range(4) for s in receipts[p].shards]
    assert manifest.meta == {"source": "test"}
    assert read_manifest(dataset_store(url, options)) == manifest
    assert read_all(url, options, tmp_path / "cache") == [r for p in range(4) for r in records_of(p)]
    assert ops.verify(url, options).ok


@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_losing_attempts_are_never_listed_and_prune_removes_them(new_location, kind, tmp_path):
    url, options = new_location(kind)
    first = write_part(records_of(0), url, part=0, shard_bytes=SHARD, storage_options=options)
    speculative = write_part(records_of(0), url, part=0, shard_bytes=SHARD, storage_options=options)
    assert first.attempt != speculative.attempt
    assert not {s.uri for s in first.shards} & {s.uri for s in speculative.shards}

    def dies_midway():
        yield from records_of(1)[:30]
        raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"):
        write_part(dies_midway(), url, part=1, shard_bytes=SHARD, storage_options=options)
    retried = write_part(records_of(1), url, part=1, shard_bytes=SHARD, storage_options=options)
    manifest = commit(url, [speculative, retried], storage_options=options)

    listed = set(manifest.shards.uris.tolist())
    assert listed == {s.uri for s in speculative.shards + retried.shards}
    orphans = shard_keys(url, options) - listed
    first_uris = {s.uri for s in first.shards}
    assert first_uris <= orphans
    # and what the failed attempt uploaded before it died (its abort may cancel some uploads)
    assert all(k.startswith("shards/part-000001-") for k in orphans - first_uris)
    report = ops.prune(url, options, older_than=0)
    assert {s.key for s in report.unreferenced} == orphans and report.referenced == len(listed)
    pruned = ops.prune(url, options, older_than=0, delete=True)
    assert len(pruned.having("deleted")) == len(orphans)
    assert shard_keys(url, options) == listed
    assert read_all(url, options, tmp_path / "cache") == records_of(0) + records_of(1)


def test_commit_refuses_a_missing_part_or_disagreeing_receipts_and_publishes_nothing(tmp_path):
    url = str(tmp_path / "ds")
    r0, r2 = (write_part(records_of(p), url, part=p, shard_bytes=SHARD) for p in (0, 2))
    r1a, r1b = (write_part(records_of(1), url, part=1, shard_bytes=SHARD) for _ in range(2))
    with pytest.raises(ReceiptError, match=r"no receipt for part\(s\) 1; nothing was published"):
        commit(url, [r0, r2])
    with pytest.raises(ReceiptError, match=r"no receipt for part\(s\) 3"):
        commit(url, [r0, r1a, r2], parts=4)
    with pytest.raises(ReceiptError, match=r"receipts for part\(s\) 2 beyond the 2 expected"):
        commit(url, [r0, r1a, r2], parts=2)
    with pytest.raises(ReceiptError, match=f"two receipts for part 1 disagree .*{r1a.attempt}.*{r1b.attempt}"):
        commit(url, [r0, r1a, r2, r1b])
    assert not dataset_store(url).exists(MANIFEST_KEY)
    # the same receipt twice (a result delivered twice) counts once
    manifest = commit(url, [r2, r1a, r0, r1a.to_dict()], parts=3)
    assert manifest.records == 120


def test_commit_refuses_a_shard_object_that_is_gone_or_changed(tmp_path):
    url = str(tmp_path / "ds")
    receipt = write_part(records_of(0), url, part=0, shard_bytes=SHARD)
    store = dataset_store(url)
    store.delete(receipt.shards[-1].uri)
    with pytest.raises(NotFoundError):
        commit(url, [receipt])
    store.put_bytes_overwrite(receipt.shards[-1].uri, b"short")
    with pytest.raises(IntegrityError, match=r"object is 5 bytes, its part's receipt says \d+"):
        commit(url, [receipt])
    assert not store.exists(MANIFEST_KEY)


def test_receipts_are_validated_strictly():
    receipt = write_part([b"a", b"b"], "memory://strict/ds", part=7)
    data = receipt.to_dict()
    assert Receipt.from_dict(data) == receipt and receipt.records == 2
    bad: list[tuple[dict[str, Any], str]] = [
        ({**data, "extra": 1}, r"unknown \['extra'\]"),
        ({k: v for k, v in data.items() if k != "attempt"}, r"missing \['attempt'\]"),
        ({**data, "part": True}, "receipt.part: expected an integer"),
        ({**data, "part": -1}, "receipt.part: expected an integer"),
        ({**data, "part": 8}, "expected a shard of part 8"),
        ({**data, "attempt": "XYZ"}, "receipt.attempt of part 7"),
        ({**data, "shards": "none"}, "receipt.shards: expected a list"),
        ({**data, "shards": [{**data["shards"][0], "records": "2"}]}, r"receipt.shards\[0\]"),
        ({**data, "shards": [{**data["shards"][0], "uri": "../elsewhere.rox"}]}, r"receipt.shards\[0\]"),
        ({**data, "shards": [data["shards"][0]] * 2}, "its shards in order, none left out"),
        ({**data, "shards": [{**data["shards"][0], "checksum": "blake3:" + "0" * 64}]},
         r"is not the checksum its name .* was given"),
        ({**data, "shards": [{**data["shards"][0], "uri": data["shards"][0]["uri"] + "\n"}]},
         r"receipt.shards\[0\]"),
    ]
    several = write_part([bytes(300) for _ in range(9)], "memory://strict/ds", part=3, shard_bytes=1024).to_dict()
    assert len(several["shards"]) >= 3
    for dropped in ({**several, "shards": several["shards"][1:]},  # the first left out
                    {**several, "shards": several["shards"][::-1]}):  # out of order
        with pytest.raises(ReceiptError, match="its shards in order, none left out"):
            Receipt.from_dict(dropped)
    for value, message in bad:
        with pytest.raises(ReceiptError, match=message):
            Receipt.from_dict(value)
    with pytest.raises(ReceiptError, match="receipt.part"):
        write_part([b"x"], "memory://strict/ds", part=-2)
    with pytest.raises(ReceiptError, match="expected Receipt objects"):
        commit("memory://strict/ds", ["not a receipt"])


@pytest.mark.parametrize("kind", ["s3", "gcs"])
def test_modes_and_compare_and_swap(new_location, kind, monkeypatch, tmp_path):
    url, options = new_location(kind)
    base = [write_part(records_of(p), url, part=p, shard_bytes=SHARD, storage_options=options) for p in (0, 1)]
    commit(url, base, meta={"v": 1}, storage_options=options)
    with pytest.raises(DatasetExistsError):
        check_destination(url, mode="create", storage_options=options)
    with pytest.raises(DatasetExistsError):
        commit(url, base, storage_options=options)
    more = [write_part(records_of(p + 10), url, part=p, shard_bytes=SHARD, storage_options=options)
            for p in (0, 1)]
    manifest = commit(url, more, mode="append", storage_options=options)
    assert manifest.meta == {"v": 1}
    expected = [r for p in (0, 1, 10, 11) for r in records_of(p)]
    assert read_all(url, options, tmp_path / "c1") == expected

    # Another writer publishes between the commit's read of the manifest and its publish.
    real = commit_module._Committer._upload_all
    raced: list[bool] = []

    def interloper_first(self: Any) -> Any:
        if not raced:
            raced.append(True)
            with roxxel.Writer(url, storage_options=options, mode="append") as other:
                other.append(b"interloper")
        return real(self)

    monkeypatch.setattr(commit_module._Committer, "_upload_all", interloper_first)
    late = [write_part(records_of(20), url, part=0, shard_bytes=SHARD, storage_options=options)]
    with pytest.raises(ConflictError, match="nothing was published"):
        commit(url, late, mode="append", storage_options=options)
    assert read_all(url, options, tmp_path / "c2") == [*expected, b"interloper"]
    commit(url, late, mode="append", storage_options=options)  # the same receipts, committed again
    assert read_all(url, options, tmp_path / "c3") == [*expected, b"interloper", *records_of(20)]

    manifest = commit(url, more[:1], mode="overwrite", meta={"v": 2}, storage_options=options)
    assert (manifest.records, manifest.meta) == (40, {"v": 2})
    assert read_all(url, options, tmp_path / "c4") == records_of(10)


def test_a_part_holds_one_shards_offsets_and_stages_on_disk(tmp_path, monkeypatch):
    """Many small records in big shards: the part's memory is its current shard's offsets,
    and the staging folder is gone once the receipt is returned."""
    from roxxel.build import parts

    staging = tmp_path / "staging"
    staging.mkdir()
    seen: list[int] = []
    real = parts._PartWriter._finish_shard

    def spy(self: Any) -> None:
        seen.append(self._current[0].record_count)
        real(self)

    monkeypatch.setattr(parts._PartWriter, "_finish_shard", spy)
    receipt = write_part((b"%d" % i for i in range(5000)), str(tmp_path / "ds"), part=0, shard_bytes=16 << 10,
                         staging_dir=str(staging))
    assert sum(seen) == 5000 and len(seen) == len(receipt.shards) > 3
    assert list(staging.iterdir()) == []


def test_the_engines_are_imported_lazily_and_named_when_missing():
    code = (
        "import sys\n"
        "import roxxel.dask, roxxel.ray\n"
        "assert not {'dask', 'ray', 'distributed'} & set(sys.modules), 'an engine was imported'\n"
        "sys.modules.update(dict.fromkeys(['dask', 'ray', 'ray.data', 'distributed']))\n"
        "for name, call in [('ray', lambda: roxxel.ray.Datasink),\n"
        "                   ('dask', lambda: roxxel.dask.write([], 'memory://x/ds'))]:\n"
        "    try:\n"
        "        call()\n"
        "    except ImportError as exc:\n"
        "        print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == [
        "roxxel.ray needs Ray Data: pip install roxxel[ray]",
        "roxxel.dask needs Dask: pip install roxxel[dask]",
    ]


def test_a_huge_part_id_is_refused_at_once():
    receipt = write_part([b"x"], "memory://huge/ds", part=10**12 - 1)
    with pytest.raises(ReceiptError, match=r"no receipt for part\(s\) 0, 1, 2, .* and more; nothing was published"):
        commit("memory://huge/ds", [receipt])  # counted, never listed: no list of 10**12 part ids


def test_a_build_never_adds_records_of_another_type_to_a_typed_dataset():
    url = "memory://typed/ds"
    with roxxel.Writer(url, dtype="<f4", shape=4) as w:
        w.extend(np.zeros((3, 4), dtype="<f4"))
    untyped = write_part([b"abc", b"hello world!"], url, part=0)
    with pytest.raises(ReceiptError, match=r"are not float32 .* records, which .* holds; nothing was published"):
        commit(url, [untyped], mode="append")
    fitting = write_part([np.ones(4, dtype="<f4").tobytes()] * 2, url, part=0)
    assert commit(url, [fitting], mode="append").records == 5
    with pytest.raises(ReceiptError, match="nothing was published"):
        commit("memory://typed/new", [write_part([b"abc"], "memory://typed/new", part=0)],
               meta={"dtype": "<i4", "shape": [2]})
