"""The original local API, ``roxxel.Roxxel``, on files compatible with Roxxel 0.1/0.3."""

from __future__ import annotations

import gc
import logging
import os
import struct

import numpy as np
import pytest

from roxxel import DatasetExistsError, Roxxel, ShardFormatError
from tests.test_format import golden_shard


def listing(folder) -> dict[str, bytes]:
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


def test_round_trip_of_every_record_type(tmp_path):
    arr = np.arange(5, dtype=np.float32)
    ds = Roxxel(tmp_path / "data.rox")
    assert len(ds) == 0
    ds.write([b"bytes", bytearray(b"ba"), memoryview(b"mv"), "strß", arr, b""])
    assert len(ds) == 6
    got = [bytes(r) for r in ds]
    assert got == [b"bytes", b"ba", b"mv", "strß".encode(), arr.tobytes(), b""]
    assert np.array_equal(ds[4].view(np.float32), arr)
    assert ds[0].dtype == np.uint8


def test_files_we_write_are_byte_identical_to_the_original_layout(tmp_path):
    records = [b"alpha", b"", b"gamma" * 10]
    Roxxel(tmp_path / "d.rox").write(records)
    assert (tmp_path / "d.rox").read_bytes() == golden_shard(records)


def test_files_written_by_old_releases_read_here(tmp_path):
    """0.1 wrote single files, 0.3 numbered shards; both are this exact layout."""
    (tmp_path / "v01.rox").write_bytes(golden_shard([b"one", b"two"]))
    (tmp_path / "wiki_0000.rox").write_bytes(golden_shard([b"a", b"b"]))
    (tmp_path / "wiki_0001.rox").write_bytes(golden_shard([b"c"]))
    (tmp_path / "wiki_0010.rox").write_bytes(golden_shard([b"d"]))
    assert [bytes(r) for r in Roxxel(tmp_path / "v01.rox")] == [b"one", b"two"]
    wiki = Roxxel(str(tmp_path / "wiki_*.rox"))
    # natural order: 0010 comes after 0001, and 10000 would come after 9999
    assert [bytes(r) for r in wiki] == [b"a", b"b", b"c", b"d"]
    explicit = Roxxel([tmp_path / "wiki_0001.rox", tmp_path / "v01.rox"])
    assert [bytes(r) for r in explicit] == [b"c", b"one", b"two"]


def test_indexing_negative_slices_lists_and_errors(tmp_path):
    ds = Roxxel(str(tmp_path / "s_*.rox"))
    recs = [bytes([i]) * (i % 7) for i in range(40)]
    ds.write(recs, max_shard_bytes=100)
    assert len(ds.paths) > 3
    assert bytes(ds[-1]) == recs[-1] and bytes(ds[-40]) == recs[0]
    assert bytes(ds[np.int64(5)]) == recs[5]
    assert [bytes(r) for r in ds[3:30:4]] == recs[3:30:4]
    assert [bytes(r) for r in ds[::-1]] == recs[::-1]
    idx = [39, 0, 17, -2, 17]
    assert [bytes(r) for r in ds[idx]] == [recs[i] for i in idx]
    assert [bytes(r) for r in ds[np.array(idx)]] == [recs[i] for i in idx]
    assert ds[[]] == []
    with pytest.raises(IndexError, match="record index 40 out of range for 40 records"):
        ds[40]
    with pytest.raises(IndexError, match="record index -41 out of range for 40 records"):
        ds[[1, -41]]
    with pytest.raises(TypeError, match="got float"):
        ds[1.5]  # type: ignore[index]


@pytest.mark.parametrize("by_table", [True, False], ids=["offsets-table", "shard-by-shard"])
def test_gathers_read_every_record_both_ways(tmp_path, monkeypatch, by_table):
    # A gather reads bounds from one table of the involved shards' offsets, or, when
    # those shards are much larger than the gather, shard by shard: both must agree.
    import roxxel.read.records

    if not by_table:
        monkeypatch.setattr(roxxel.read.records, "_CONCAT_FACTOR", 0)
        monkeypatch.setattr(roxxel.read.records, "_CONCAT_SLACK", 0)
    ds = Roxxel(str(tmp_path / "g_*.rox"))
    recs = [bytes([i % 251]) * (i % 13) for i in range(300)]
    ds.write(recs, max_shard_bytes=200)
    assert ds.num_shards > 10
    rng = np.random.default_rng(7)
    for size in (1, 2, 37, 300, 1000):
        idx = rng.integers(-300, 300, size=size)
        assert [bytes(r) for r in ds[idx]] == [recs[i] for i in idx.tolist()]
    first_of_each = np.asarray(ds.record_starts[:-1])  # record 0 of every shard, and the last
    idx = np.concatenate([first_of_each, first_of_each - 1, [-1]])[1:]
    assert [bytes(r) for r in ds[idx]] == [recs[i] for i in idx.tolist()]
    assert all(r.base is not None and not r.flags.writeable for r in ds[idx])


def test_one_shard_indexing_survives_unmapping_and_refuses_out_of_range(tmp_path):
    # One shard has a lookup path of its own; it must follow the shard being unmapped.
    ds = Roxxel(tmp_path / "one.rox")
    recs = [bytes([i]) * (i % 5 + 1) for i in range(30)]
    ds.write(recs)
    assert ds.num_shards == 1
    assert [bytes(ds[i]) for i in range(-30, 30)] == recs + recs
    view = ds[7]
    ds.release(0)
    assert not ds.is_mapped(0)
    assert bytes(view) == recs[7]  # handed-out views stay valid
    assert bytes(ds[0]) == recs[0] and bytes(ds[-1]) == recs[-1] and ds.is_mapped(0)
    for bad in (30, -31):
        with pytest.raises(IndexError, match=f"record index {bad} out of range for 30 records"):
            ds[bad]
    ds.close()
    with pytest.raises(ValueError, match="closed"):
        ds[0]


def test_sharding_respects_max_shard_bytes_and_never_splits_a_record(tmp_path):
    ds = Roxxel(tmp_path / "base.rox")
    recs = [os.urandom(n) for n in (10, 300, 20, 20, 20, 1000, 5)]
    written = ds.write(recs, max_shard_bytes=200)
    names = [os.path.basename(p) for p in written]
    assert names[:3] == ["base_0000.rox", "base_0001.rox", "base_0002.rox"]
    for p in written:
        size = os.path.getsize(p)
        with open(p, "rb") as f:
            count = struct.unpack("<q", f.read()[-24:-16])[0]
        assert size <= 200 or count == 1  # an oversized record gets a shard of its own
    assert [bytes(r) for r in Roxxel(tmp_path / "base.rox")] == recs  # reopen by plain path
    ds.write([b"tail"], max_shard_bytes=200)
    assert bytes(Roxxel(str(tmp_path / "base_*.rox"))[-1]) == b"tail"


def test_block_mode_packs_the_stream_into_uniform_blocks(tmp_path):
    ds = Roxxel(tmp_path / "blocks.rox")
    ds.write([b"hello", b"world", b"!"], block_size=4)
    blocks = [bytes(r) for r in ds]
    assert all(len(b) == 4 for b in blocks)
    assert b"".join(blocks) == b"hello\xffworld\xff!\xff\xff\xff\xff"[:16]
    ds2 = Roxxel(str(tmp_path / "sep_*.rox"))
    ds2.write(["ab", "cd"], block_size=3, separator=b"|", max_shard_bytes=24 + 2 * 11)
    assert [bytes(r) for r in ds2] == [b"ab|", b"cd|"]
    assert len(ds2.paths) == 1
    with pytest.raises(ValueError, match="block_size must be a positive integer, got 0"):
        ds2.write([b"x"], block_size=0)


def test_append_extends_the_last_shard(tmp_path):
    ds = Roxxel(tmp_path / "a.rox")
    ds.write([b"first"])
    ds.write([b"second", b"third"])
    assert (tmp_path / "a.rox").read_bytes() == golden_shard([b"first", b"second", b"third"])
    assert [os.path.basename(n) for n in os.listdir(tmp_path)] == ["a.rox"]


def test_a_glob_continues_the_numbered_series_already_there(tmp_path):
    (tmp_path / "wiki_en_0000.rox").write_bytes(golden_shard([b"a", b"b"]))
    (tmp_path / "wiki_en_0001.rox").write_bytes(golden_shard([b"c"]))
    ds = Roxxel(str(tmp_path / "wiki_*.rox"))
    assert ds.write([b"d"]) == [str(tmp_path / "wiki_en_0001.rox")]  # the last shard grows
    ds.write([b"e" * 40, b"f" * 40], max_shard_bytes=80)
    assert sorted(os.listdir(tmp_path)) == [f"wiki_en_000{k}.rox" for k in range(4)]
    assert [bytes(r) for r in Roxxel(str(tmp_path / "wiki_*.rox"))] == [
        b"a", b"b", b"c", b"d", b"e" * 40, b"f" * 40]


@pytest.mark.parametrize("max_shard_bytes", [None, 100])
def test_a_write_that_would_shift_existing_records_is_refused(tmp_path, max_shard_bytes):
    # 0.3.0 names new files wiki_base.rox / wiki_base_0000.rox: both sort before wiki_zzz.rox
    (tmp_path / "wiki_zzz.rox").write_bytes(golden_shard([b"z"]))
    (tmp_path / "wiki_base_0000.rox").write_bytes(golden_shard([b"y"]))  # not last: not continued
    before = listing(tmp_path)
    ds = Roxxel(str(tmp_path / "wiki_*.rox"))
    with pytest.raises(DatasetExistsError, match=r"would sort before existing files .*wiki_zzz\.rox"):
        ds.write([b"new"], max_shard_bytes=max_shard_bytes)
    assert listing(tmp_path) == before and [bytes(r) for r in ds] == [b"y", b"z"]


def test_a_pattern_that_would_not_read_back_the_new_shard_is_refused(tmp_path):
    ds = Roxxel(str(tmp_path / "x_?.rox"))  # 0.3.0 would write x_base.rox, which x_?.rox misses
    with pytest.raises(ValueError, match=r"next shard would be '.*x_base\.rox', which the pattern does not match"):
        ds.write([b"a"])
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("failure", ["iterator", "bad record"])
def test_a_failing_append_leaves_existing_files_untouched(tmp_path, failure):
    ds = Roxxel(str(tmp_path / "p_*.rox"))
    ds.write([os.urandom(50) for _ in range(10)], max_shard_bytes=200)
    before = listing(tmp_path)

    def records():
        yield b"new" * 30
        yield b"more" * 30
        if failure == "iterator":
            raise RuntimeError("source died")
        yield 12345  # not a record

    with pytest.raises((RuntimeError, TypeError), match="source died|record at position 2 is of type int"):
        ds.write(records(), max_shard_bytes=200)
    assert listing(tmp_path) == before  # same files, same bytes, no temp files left
    assert len(ds) == 10


def test_empty_records_are_stored_not_dropped(tmp_path):
    ds = Roxxel(tmp_path / "e.rox")
    ds.write([b"", b"x", b""])
    assert len(ds) == 3 and [r.nbytes for r in ds] == [0, 1, 0]


def test_writing_nothing_creates_nothing(tmp_path):
    assert Roxxel(tmp_path / "n.rox").write([]) == []
    assert os.listdir(tmp_path) == []


def test_status_goes_to_logging_not_stdout(tmp_path, capsys, caplog):
    with caplog.at_level(logging.INFO, logger="roxxel"):
        Roxxel(tmp_path / "l.rox").write([b"a", b"b"])
    assert capsys.readouterr().out == ""
    assert "wrote 2 records" in caplog.text


def test_raw_data_is_a_zero_copy_view_of_the_payload(tmp_path):
    ds = Roxxel(tmp_path / "r.rox")
    ds.write([np.arange(10, dtype=np.int32), np.arange(5, dtype=np.int32)])
    raw = ds.raw_data
    assert np.array_equal(raw.view(np.int32), np.r_[np.arange(10), np.arange(5)])
    assert np.shares_memory(ds[1], raw)
    multi = Roxxel(str(tmp_path / "m_*.rox"))
    multi.write([b"a" * 50, b"b" * 50], max_shard_bytes=80)
    with pytest.raises(ValueError, match="raw_data needs exactly one shard, this dataset has 2"):
        multi.raw_data
    assert [bytes(p) for p in multi.payloads] == [b"a" * 50, b"b" * 50]


def test_context_manager_closes_and_views_survive(tmp_path):
    with Roxxel(tmp_path / "c.rox") as ds:
        ds.write([b"keep"])
        rec = ds[0]
    assert bytes(rec) == b"keep"
    with pytest.raises(ValueError, match="closed"):
        len(ds)


def test_close_ends_live_iterators_and_lets_go_of_their_maps(tmp_path):
    ds = Roxxel(tmp_path / "it.rox")
    ds.write([bytes([i % 256]) * 10 for i in range(1000)])
    it, at = iter(ds), ds.iter_at(list(range(999, -1, -1)))
    taken = [next(it) for _ in range(5)] + [next(at)]
    ds.close()
    assert list(it) == [] and list(at) == []  # the rest of a block is not served once closed
    del taken[1:]
    assert bytes(taken[0]) == bytes([0]) * 10  # records already handed out stay valid
    del taken
    gc.collect()
    with open("/proc/self/maps") as f:
        assert str(tmp_path / "it.rox") not in f.read()


def test_a_corrupt_file_is_reported_by_name(tmp_path):
    (tmp_path / "bad.rox").write_bytes(b"not a shard at all, clearly" * 2)
    with pytest.raises(ShardFormatError, match=r"bad\.rox: magic is"):
        Roxxel(tmp_path / "bad.rox")


def rss_anon_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_touching_every_record_of_1_gb_does_not_grow_anonymous_memory(tmp_path):
    """Reads are views of the page cache: RssAnon stays flat while 1 GiB is touched."""
    n, rec = 16384, 65536  # 1 GiB payload, sparse on disk
    path = tmp_path / "big.rox"
    with open(path, "wb") as f:
        f.truncate(n * rec)
        f.seek(n * rec)
        f.write((np.arange(1, n + 1, dtype="<i8") * rec).tobytes())
        f.write(struct.pack("<qq", n, n * rec) + b"ROXXEL01")
    ds = Roxxel(path)
    first = ds[0]
    before = rss_anon_kib()
    checksum, kept = 0, []
    for i in range(n):
        r = ds[i]
        checksum += int(r[::4096].sum())  # touch every page of the record
        kept.append(r)  # a copying reader would now hold 1 GiB
    grown = rss_anon_kib() - before
    assert checksum == 0
    assert np.shares_memory(first, ds.raw_data)
    assert grown < 64 * 1024, f"RssAnon grew by {grown} KiB while touching 1 GiB"
