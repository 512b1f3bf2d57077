"""Shard parts: the manifest field, the writer's parts, ``roxxel verify``'s check of them,
and a resume's first record served from its checked part before its shard is whole."""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import replace

import numpy as np
import pytest
from blake3 import blake3
from hypothesis import given, settings
from hypothesis import strategies as st

import roxxel
import roxxel.read.catalog
import roxxel.read.partfetch
import roxxel.read.parts
from roxxel.errors import ManifestError
from roxxel.manifest import Manifest
from roxxel.manifest._fields import check_parts, parts_column
from roxxel.manifest.heads import index_start
from roxxel.manifest.io import dataset_store, publish_manifest
from roxxel.manifest.parts import MAX_PARTS, Parts, PartsCheck, parse_parts
from roxxel.ops.verify import verify
from tests.test_heads import (HEAD, InParts, KeyGated, info, make_records, mixed, part_bytes, plan_records,
                              small_heads, two_sources, write)

__all__ = ["small_heads"]  # (the fixture, used by name)

P1 = "1" * 32


def parts_of(data: bytes, size: int) -> list[str]:
    return [blake3(data[a : a + size]).hexdigest()[:32] for a in range(0, len(data), size)]


# -- the manifest field ----------------------------------------------------------------

def test_parts_round_trip_and_a_manifest_without_them_is_unchanged():
    parts = f"262144:blake3:{P1 * 4}"  # (1 MiB in four parts)
    manifest = Manifest.build([info(parts=parts), info(uri="t.rox")])
    text = manifest.to_json()
    assert text.count('"parts":') == 1 and f'"checksum":"blake3:{"c" * 64}","parts":"{parts}"}}' in text
    again = Manifest.from_json(text)
    assert again == manifest and again.shards[0].parts == parts and again.shards[1].parts is None
    assert manifest.shards.to_list()[0]["parts"] == parts and "parts" not in manifest.shards.to_list()[1]
    assert '"parts"' not in Manifest.build([info(), info(uri="t.rox")]).to_json()
    parsed = parse_parts(parts)
    assert (parsed.size, parsed.algorithm, len(parsed), parsed.digest(3)) == (262144, "blake3", 4, P1)
    assert str(parsed) == parts
    assert list(parsed.covering(0, 1)) == [0] and list(parsed.covering(262143, 262145)) == [0, 1]
    assert list(parsed.covering(262144, 262144 * 2)) == [1] and parsed.span(range(3, 4), 1 << 20) == (786432, 1 << 20)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(parts="262144:blake3:12"), r"shard\.parts: expected '<part bytes>:<algorithm>:<32 hex digits a part>', "
                                         r"got '262144:blake3:12'"),
        (dict(parts=f"262144:md5:{P1 * 4}"), r"expected '<part bytes>:<algorithm>"),
        (dict(parts=f"262144:blake3:{P1 * 3}"), r"shard\.parts: expected 4 digests \(a part of 262144 bytes in "
                                                r"1048576\), got 3"),
        (dict(parts=f"1024:blake3:{P1 * 1024}"), r"shard\.parts: expected parts of at least 4096 bytes, got 1024"),
        (dict(parts=f"4096:blake3:{P1 * 256}", stored_size=64 << 20, raw_size=64 << 20),
         rf"shard\.parts: expected at most {MAX_PARTS} parts, got 16384 of 4096 bytes"),
        (dict(parts=f"262144:blake3:{P1 * 4}", compression="zstd", raw_size=2 << 20),
         r"shard\.parts: expected no parts on a shard stored with compression 'zstd'"),
    ],
)
def test_bad_parts_are_refused_naming_the_field_and_the_value(kw, message):
    with pytest.raises(ManifestError, match=message):
        info(**kw)


def test_bad_parts_in_a_manifest_name_their_shard():
    doc = Manifest.build([info(), info(uri="t.rox")]).to_dict()
    doc["shards"][1]["parts"] = f"262144:blake3:{P1 * 5}"
    with pytest.raises(ManifestError, match=r"manifest s3://b/ds: shards\[1\]\.parts: expected 4 digests"):
        Manifest.from_dict(doc, source="s3://b/ds")
    doc["shards"][1]["parts"] = ""
    with pytest.raises(ManifestError, match=r"shards\[1\]\.parts: expected a parts string \(or no parts field\)"):
        Manifest.from_dict(doc)


@pytest.mark.parametrize("bad", [P1 * 3 + "1" * 31 + "G", P1 * 3 + "1" * 31 + ":", P1 * 3 + "A" * 32, P1 * 5,
                                 "é" * 16 + P1 * 3 + "1" * 16])
def test_a_bad_value_among_good_ones_is_named_by_its_row(bad):
    doc = Manifest.build([info(uri=f"{i}.rox", parts=f"262144:blake3:{P1 * 4}") for i in range(5)]).to_dict()
    doc["shards"][3]["parts"] = f"262144:blake3:{bad}"
    with pytest.raises(ManifestError, match=r"shards\[3\]\.parts: expected"):
        Manifest.from_dict(doc)
    doc["shards"][3]["parts"] = f"131072:blake3:{P1 * 8}"  # (another part size: checked a row at a time)
    assert Manifest.from_dict(doc).shards[3].parts == f"131072:blake3:{P1 * 8}"


# -- the writer ------------------------------------------------------------------------

def test_the_writer_gives_parts_to_the_shards_it_gives_heads_to(tmp_path, small_heads):
    url = str(tmp_path / "ds")
    manifest = write(url, make_records(400), shard_bytes=5 * HEAD // 2)
    *full, last = manifest.shards
    assert len(full) > 1 and last.head is None and last.parts is None
    for shard in full:
        data = (tmp_path / "ds" / shard.uri).read_bytes()
        parts = parse_parts(shard.parts)
        assert shard.head and parts.size == HEAD and parts.algorithm == "blake3"
        assert [parts.digest(i) for i in range(len(parts))] == parts_of(data, HEAD) and len(parts) == 3
    plain = write(str(tmp_path / "plain"), make_records(400), shard_bytes=5 * HEAD // 2, heads=False)
    assert all(s.parts is None for s in plain.shards)
    with roxxel.Writer(url, shard_bytes=5 * HEAD // 2, mode="append") as w:
        w.extend(make_records(400, seed=1))
    assert [s.parts is not None for s in w.manifest.shards] == [s.parts is not None for s in manifest.shards] + [
        False] * (len(w.manifest.shards) - len(manifest.shards))  # (an append adds none)


def test_a_shard_that_would_have_too_many_parts_gets_parts_of_a_whole_multiple_of_a_head(
        tmp_path, small_heads, monkeypatch):
    """Past MAX_PARTS parts of a head each (a shard over 32 GiB at the defaults), the
    parts are whole multiples of it, so a reader still places them at 2 MiB boundaries,
    and as few as keep the count within MAX_PARTS."""
    monkeypatch.setattr(roxxel.writer, "MAX_PARTS", 2)  # (a shard of 2.5 heads: 3 parts, one too many)
    url = str(tmp_path / "ds")
    manifest = write(url, make_records(400), shard_bytes=5 * HEAD // 2)
    *full, last = manifest.shards
    assert full and last.parts is None  # (the last shard is too small for a head)
    for shard in full:
        data = (tmp_path / "ds" / shard.uri).read_bytes()
        parts = parse_parts(shard.parts)
        assert parts.size == 2 * HEAD and len(parts) == 2 and len(data) > 2 * HEAD
        assert [parts.digest(i) for i in range(2)] == parts_of(data, 2 * HEAD)
    assert verify(url).ok


# -- verify ----------------------------------------------------------------------------

def test_verify_checks_each_part_against_the_shard(tmp_path, small_heads):
    url = str(tmp_path / "ds")
    manifest = write(url, make_records(400), shard_bytes=5 * HEAD // 2)
    assert verify(url).ok
    first = manifest.shards[0]
    parts = parse_parts(first.parts)
    actual = parts.digest(1)
    wrong = replace(parts, digests=parts.digests[:32] + "0" * 32 + parts.digests[64:])
    publish_manifest(dataset_store(url, {}), manifest.with_shards([replace(first, parts=str(wrong)),
                                                                  *list(manifest.shards)[1:]]), replaces=None)
    report = verify(url)
    assert [b.uri for b in report.bad] == [first.uri]
    assert report.bad[0].problem == f"parts: part 1 hashes to blake3 {actual}..., the manifest says {'0' * 32}"


@pytest.mark.parametrize("chunk", [7, 4096, HEAD + 1, 1 << 20])
def test_a_parts_check_takes_the_shard_in_any_chunks(tmp_path, small_heads, chunk):
    first = write(str(tmp_path / "ds"), make_records(400), shard_bytes=5 * HEAD // 2).shards[0]
    data = (tmp_path / "ds" / first.uri).read_bytes()

    def problem(data: bytes) -> str | None:
        check = PartsCheck(parse_parts(first.parts))
        for a in range(0, len(data), chunk):
            check(data[a : a + chunk])
        return check.problem()

    assert problem(data) is None
    flipped = bytearray(data)
    flipped[2 * HEAD + 5] ^= 1
    assert re.fullmatch(r"parts: part 2 hashes to blake3 [0-9a-f]{32}\.\.\., the manifest says [0-9a-f]{32}",
                        problem(bytes(flipped)) or "")
    assert problem(data[:-1]) is not None and problem(data + b"x") is not None
    check = PartsCheck(Parts(len(data), "blake3", blake3(data).hexdigest()[:32]))  # (one part: the whole shard)
    check(data + b"x")
    extra = blake3(b"x").hexdigest()[:32]
    assert check.problem() == f"parts: part 1 hashes to blake3 {extra}..., the manifest says no part"


# -- a resume's first record -----------------------------------------------------------

def resumed_inside(tmp_path, url: str, recs: list[bytes], seed: int = 3):
    """A state inside the first window's last stage, at a position whose shard has a
    head (and parts, as the writer gives them), the records from there on, and that
    shard and record number."""
    manifest = roxxel.open(url).manifest
    with roxxel.open(url, cache_dir=str(tmp_path / "plain")) as ds:
        it = ds.iter(seed=seed)
        order = it.plan.window_order(0)
        for position in range(int(order.stage_starts[-2]) + 1, len(order)):
            slot, local = order.at(position, position + 1)
            shard = manifest.shards[int(order.shards[int(slot[0])])]
            if shard.head is not None:
                break
        state = {**it.state(), "position": position}
        rest = [bytes(r) for r in ds.resume(state)]
    assert rest == [recs[i] for ids in it.plan.records() for i in ids.tolist()][position:]
    return state, rest, shard, int(local[0])


@pytest.fixture
def small_pieces(monkeypatch):
    """The part engine cuts and places pieces at 64 KiB boundaries (2 MiB by default), so
    the resumed shard's download can leave a 64 KiB part of these tests to its fetch."""
    monkeypatch.setattr(roxxel.read.parts, "_SMALLEST_PIECE", HEAD)


def test_a_resume_has_its_first_record_from_its_part_before_its_shard_arrives(tmp_path, small_heads, small_pieces):
    url, recs = str(tmp_path / "ds"), make_records(400)
    write(url, recs, shard_bytes=5 * HEAD // 2)
    state, rest, shard, record = resumed_inside(tmp_path, url, recs)
    store = InParts(url)  # (no shard's read ends until release)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        resumed = ds.resume(state)
        assert bytes(next(resumed)) == rest[0]
        assert not store.release.is_set() and ds.stats["shards_downloaded"] == 0
        fetched = sorted((a, b) for kind, key, a, b in store.reads if kind == "head")
        payload = index_start(shard.records, shard.stored_size)
        parts = parse_parts(shard.parts)
        assert fetched[-1] == (payload, shard.stored_size)  # its index, and pieces of its part(s) only
        span = parts.span(parts.covering(fetched[0][0], fetched[-2][1]), shard.stored_size)
        assert fetched[0][0] == span[0] and fetched[-2][1] == span[1]
        assert sum(b - a for a, b in fetched[:-1]) == part_bytes(url, shard, record) - (shard.stored_size - payload)
        store.release.set()
        assert [rest[0]] + [bytes(r) for r in resumed] == rest
        # the shard's download left the part's bytes to the fetch: only the index came twice
        assert ds.stats["head_bytes"] == shard.stored_size - payload < part_bytes(url, shard, record)
        assert not any(a < span[1] and b > span[0] for kind, key, a, b in store.reads
                       if kind == "shard" and key == shard.uri)
        assert ds.stats["bytes_downloaded"] == sum(s.stored_size for s in roxxel.open(url).manifest.shards)
        state_after = ds.resume(state)
        assert [bytes(r) for r in state_after] == rest  # (cached now: no part asked for)
    assert {key for kind, key, _, _ in store.reads if kind == "head"} == {shard.uri}


def resumed_from_the_shard(tmp_path, url: str, recs: list[bytes], manifest: Manifest, caplog):
    """Publish ``manifest`` (with a field that does not check out) and resume inside its
    window, every shard's read held for 0.5 s: the first record comes once its shard has
    (not from a part), and the rest as uninterrupted. The store, that shard, the stats."""
    publish_manifest(dataset_store(url, {}), manifest, replaces=None)
    state, rest, shard, _ = resumed_inside(tmp_path, url, recs)
    store = InParts(url)
    with caplog.at_level(logging.WARNING, logger="roxxel"):
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            resumed = ds.resume(state)
            threading.Timer(0.5, store.release.set).start()
            assert bytes(next(resumed)) == rest[0] and store.release.is_set()
            assert [rest[0], *map(bytes, resumed)] == rest
            return store, shard, ds.stats


def test_a_part_that_does_not_match_is_not_served(tmp_path, small_heads, small_pieces, caplog):
    url, recs = str(tmp_path / "ds"), make_records(400)
    manifest = write(url, recs, shard_bytes=5 * HEAD // 2)
    shards = [s if s.parts is None else replace(s, parts=f"{HEAD}:blake3:" + "0" * len(parse_parts(s.parts).digests))
              for s in manifest.shards]
    store, shard, _ = resumed_from_the_shard(tmp_path, url, recs, manifest.with_shards(shards), caplog)
    assert any(f"a resume inside {store.url(shard.uri)} waits for the whole shard" in m
               and re.search(r"its part \d+ hashes to blake3 [0-9a-f]{32}\.\.\., the manifest's parts say 0{32}", m)
               for m in caplog.messages), caplog.messages


def test_a_resume_of_a_shard_without_parts_waits_for_it_whole(tmp_path, small_heads):
    url, recs = str(tmp_path / "ds"), make_records(400)
    manifest = write(url, recs, shard_bytes=5 * HEAD // 2)
    publish_manifest(dataset_store(url, {}), manifest.with_shards([replace(s, parts=None) for s in manifest.shards]),
                     replaces=None)
    state, rest, _, _ = resumed_inside(tmp_path, url, recs)
    store = KeyGated(url)
    store.open(*(s.uri for s in manifest.shards))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        assert [bytes(r) for r in ds.resume(state)] == rest
        assert ds.stats["head_bytes"] == 0
    assert not any(kind == "head" for kind, *_ in store.reads)


def test_typed_batches_resume_from_their_shards_not_a_part(tmp_path, small_heads, monkeypatch):
    url = str(tmp_path / "ds")
    rows = np.arange(40000 * 8, dtype=np.float32).reshape(-1, 8)
    with roxxel.Writer(url, shard_bytes=5 * HEAD // 2, dtype=np.float32, shape=(8,)) as w:
        w.extend(rows)
    state, rest, _, _ = resumed_inside(tmp_path, url, [r.tobytes() for r in rows])
    asked: list[int] = []

    class Counted(roxxel.read.catalog.PartFetch):
        def __init__(self, *args, **kw):
            asked.append(args[-1])
            super().__init__(*args, **kw)

    monkeypatch.setattr(roxxel.read.catalog, "PartFetch", Counted)
    for typed in (True, False):
        store = InParts(url)
        store.release.set()
        with roxxel.open(url, cache_dir=str(tmp_path / f"cache{typed}"), store=store) as ds:
            if typed:  # (a batch groups a block's records by shard: blocks must not depend on the resume)
                got = [row.tobytes() for batch in ds.arrays.resume(state, batch_size=64) for row in batch]
            else:
                got = [bytes(r) for r in ds.resume(state)]
        # (typed batches group a block's records by shard: the same records, in another order)
        assert (sorted(got) == sorted(rest) if typed else got == rest) and len(asked) == (0 if typed else 1)


def test_a_record_that_lies_in_more_parts_than_a_reader_fetches_apart_waits_for_its_shard(
        tmp_path, small_heads, monkeypatch, caplog):
    url = str(tmp_path / "ds")
    rng = np.random.default_rng(5)
    recs = [rng.integers(0, 256, size=20_000, dtype=np.uint8).tobytes() for _ in range(60)]
    write(url, recs, shard_bytes=5 * HEAD // 2)
    monkeypatch.setattr(roxxel.read.partfetch, "MAX_HEAD_BYTES", HEAD)  # (one part: a record across two is too large)
    manifest = roxxel.open(url).manifest
    with roxxel.open(url, cache_dir=str(tmp_path / "plain")) as ds:
        it = ds.iter(seed=3)
        order = it.plan.window_order(0)
        for position in range(1, len(order)):  # a position whose record straddles two parts
            slot, local = order.at(position, position + 1)
            shard = manifest.shards[int(order.shards[int(slot[0])])]
            record = int(local[0])
            begin, end = record * 20_000, (record + 1) * 20_000
            if shard.parts is not None and begin // HEAD != (end - 1) // HEAD:
                break
        state = {**it.state(), "position": position}
        rest = [bytes(r) for r in ds.resume(state)]
    store = InParts(url)
    store.release.set()
    with caplog.at_level(logging.DEBUG, logger="roxxel"):
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
            assert [bytes(r) for r in ds.resume(state)] == rest
            assert ds.stats["head_bytes"] == shard.stored_size - index_start(shard.records, shard.stored_size)
    assert any(f"record {record} lies in parts larger than a reader fetches apart" in m for m in caplog.messages)
    assert not any(r.levelno >= logging.WARNING for r in caplog.records)


def straddling(tmp_path, url: str, manifest) -> tuple[dict, list[bytes], object, int]:
    """A state at a position whose record (of 20,000 bytes) straddles two parts."""
    with roxxel.open(url, cache_dir=str(tmp_path / "plain")) as ds:
        it = ds.iter(seed=3)
        order = it.plan.window_order(0)
        for position in range(1, len(order)):
            slot, local = order.at(position, position + 1)
            shard = manifest.shards[int(order.shards[int(slot[0])])]
            record = int(local[0])
            if shard.parts is not None and record * 20_000 // HEAD != ((record + 1) * 20_000 - 1) // HEAD:
                break
        state = {**it.state(), "position": position}
        return state, [bytes(r) for r in ds.resume(state)], shard, record


def test_a_record_across_two_parts_is_served_from_both_and_the_shard_takes_them(tmp_path, small_heads,
                                                                                  small_pieces):
    url = str(tmp_path / "ds")
    rng = np.random.default_rng(5)
    manifest = write(url, [rng.integers(0, 256, size=20_000, dtype=np.uint8).tobytes() for _ in range(60)],
                     shard_bytes=5 * HEAD // 2)
    state, rest, shard, record = straddling(tmp_path, url, manifest)
    store = InParts(url)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        resumed = ds.resume(state)
        assert bytes(next(resumed)) == rest[0] and not store.release.is_set()  # (before any shard's read)
        store.release.set()
        assert [rest[0], *map(bytes, resumed)] == rest
        payload = index_start(shard.records, shard.stored_size)
        assert ds.stats["head_bytes"] == shard.stored_size - payload  # (the two parts: fetched once)
    a, b = record * 20_000 // HEAD * HEAD, (((record + 1) * 20_000 - 1) // HEAD + 1) * HEAD
    assert sum(y - x for kind, key, x, y in store.reads if kind == "head" and key == shard.uri and x < payload) \
        == min(b, shard.stored_size) - a  # (both parts, by the part's fetch)
    assert not any(x < b and y > a for kind, key, x, y in store.reads if kind == "shard" and key == shard.uri)


def test_an_index_that_does_not_check_out_leaves_the_resume_to_its_shard(tmp_path, small_heads, small_pieces,
                                                                          caplog):
    url, recs = str(tmp_path / "ds"), make_records(400)
    manifest = write(url, recs, shard_bytes=5 * HEAD // 2)
    wrong = [replace(s, head=s.head.rsplit(":", 1)[0] + ":" + "0" * 64) if s.head else s for s in manifest.shards]
    store, shard, stats = resumed_from_the_shard(tmp_path, url, recs, manifest.with_shards(wrong), caplog)
    assert stats["head_bytes"] == shard.stored_size - index_start(shard.records, shard.stored_size)
    assert any(f"a resume inside {store.url(shard.uri)} waits for the whole shard" in m and "(its record index)" in m
               for m in caplog.messages), caplog.messages
    fetched = sum(y - x for kind, key, x, y in store.reads if kind == "shard" and key == shard.uri)
    assert fetched == shard.stored_size  # (the shard's download fetched every byte: none was left to the part)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["262144:blake3:", "131072:blake3:", "262144:sha256:", "4095:blake3:",
                                            "262144:blake3:x", ""]),
                          st.integers(2, 6), st.sampled_from(["1", "f", "F", ":", "é", " "]),
                          st.integers(0, 200), st.booleans()),
                min_size=1, max_size=5))
def test_the_parts_column_accepts_exactly_the_rows_a_row_at_a_time_check_accepts(rows):
    """The column-wise check (``_parts_fast``) never accepts what the row check refuses."""
    values, sizes = [], []
    for prefix, count, odd, at, spoil in rows:
        digits = P1 * count
        if spoil:  # (one character changed, somewhere)
            at %= len(digits)
            digits = digits[:at] + odd + digits[at + 1 :]
        values.append(prefix + digits)
        sizes.append(1 << 20)
    table_sizes, codes = np.array(sizes, dtype=np.int64), np.zeros(len(values), dtype=np.int8)

    def row_ok(value: str) -> bool:
        try:
            check_parts(value, 1 << 20, None, "x")
        except ManifestError:
            return False
        return True

    try:
        parts_column(values, table_sizes, codes)
        accepted = True
    except ManifestError:
        accepted = False
    assert accepted == all(map(row_ok, values))


def test_a_mixture_resumed_inside_a_stage_has_its_first_record_from_its_part(tmp_path, small_heads, small_pieces):
    urls, recs = two_sources(tmp_path)
    with mixed(urls, [None, None], tmp_path / "plain") as m:  # (read locally, whole shards)
        it = m.iter(rank=0, world_size=1)
        p = it.plan
        everything = plan_records(p, recs)
        i = 0
        k = int(p.window_order(i, 0, 0).stage_starts[-2]) + 1  # source 0's record in its window's last stage
        position = int(p.schedule.position_of(i, k - int(p.base[i])))  # (where the stream reads it)
        assert 0 < position < p.length
        for _ in range(position):
            next(it)
        state = it.state()
    stores = [InParts(url) for url in urls]  # (no shard's read ends until release)
    with mixed(urls, stores, tmp_path / "cache") as m:
        resumed = m.resume(state)
        first = bytes(next(resumed))
        assert first == everything[position] and not any(s.release.is_set() for s in stores)
        for s in stores:
            s.release.set()
        assert [first, *map(bytes, resumed)] == everything[position:]
    assert any(kind == "head" for kind, *_ in stores[int(p.schedule.sources(position, position + 1)[0])].reads)
