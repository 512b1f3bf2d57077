"""The ROXXEL01 byte layout: golden bytes, validation of hostile files, >4 GiB shards."""

from __future__ import annotations

import io
import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from roxxel.errors import ShardFormatError
from roxxel.format import MappedShard, ShardWriter
from roxxel.format.layout import FOOTER_SIZE, MAGIC, read_layout
from roxxel.format.writer import record_bytes


def golden_shard(records: list[bytes]) -> bytes:
    """A shard built byte by byte from the layout in DESIGN.md, independent of roxxel."""
    payload = b"".join(records)
    ends, total = [], 0
    for r in records:
        total += len(r)
        ends.append(total)
    index = b"".join(struct.pack("<q", e) for e in ends)
    return payload + index + struct.pack("<q", len(records)) + struct.pack("<q", total) + b"ROXXEL01"


def write_file(tmp_path, data: bytes, name: str = "s.rox") -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


RECORDS = [b"hello", b"", b"world!", bytes(range(256))]


def test_writer_output_is_byte_identical_to_the_golden_layout():
    buf = io.BytesIO()
    w = ShardWriter(buf)
    for r in RECORDS:
        w.append(r)
    layout = w.finish()
    assert buf.getvalue() == golden_shard(RECORDS)
    assert (layout.record_count, layout.payload_size) == (4, sum(map(len, RECORDS)))
    assert layout.file_size == len(buf.getvalue())


def test_golden_file_reads_back_every_record(tmp_path):
    path = write_file(tmp_path, golden_shard(RECORDS))
    with MappedShard(path) as shard:
        assert len(shard) == 4
        assert [bytes(shard[i]) for i in range(4)] == RECORDS
        assert bytes(shard[-1]) == RECORDS[-1]
        assert bytes(shard.payload) == b"".join(RECORDS)
        with pytest.raises(IndexError, match="record 4 out of range for 4 records"):
            shard[4]


def test_empty_shard_is_legal(tmp_path):
    path = write_file(tmp_path, golden_shard([]))
    with MappedShard(path) as shard:
        assert len(shard) == 0 and len(shard.payload) == 0


def test_writer_streams_payload_to_the_sink_as_records_arrive():
    sizes = []

    class Sink:
        def write(self, data):
            sizes.append(memoryview(data).nbytes)

    w = ShardWriter(Sink())
    w.append(b"x" * 1000)
    w.append(b"y" * 500)
    assert sizes == [1000, 500]  # nothing buffered: the payload is already out
    w.finish()
    assert sizes[2:] == [16, FOOTER_SIZE]


def test_record_bytes_accepts_every_record_type_and_names_the_bad_one():
    arr = np.arange(6, dtype=np.int16).reshape(2, 3)
    assert bytes(record_bytes(arr)) == arr.tobytes()
    assert bytes(record_bytes(arr[:, ::2])) == arr[:, ::2].tobytes()  # non-contiguous
    assert bytes(record_bytes("é")) == "é".encode()
    assert bytes(record_bytes(memoryview(b"ab"))) == b"ab"
    assert bytes(record_bytes(bytearray(b"ab"))) == b"ab"
    with pytest.raises(TypeError, match="record at position 7 is of type int"):
        record_bytes(5, 7)  # type: ignore[arg-type]


def footer(count: int, payload: int, magic: bytes = MAGIC) -> bytes:
    return struct.pack("<qq", count, payload) + magic


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"file size is 0 bytes, expected at least 24"),
        (b"x" * 23, r"file size is 23 bytes, expected at least 24"),
        (footer(0, 0, b"ROXXEL02"), r"magic is b'ROXXEL02', expected b'ROXXEL01'"),
        (footer(-1, 0), r"record count is -1, expected >= 0"),
        (footer(0, -8), r"payload size is -8, expected >= 0"),
        (footer(2**62, 0), r"file size is 24 bytes, expected 36893488147419103256"),
        (b"abc" + footer(0, 0), r"file size is 27 bytes, expected 24"),  # leading junk
        (golden_shard([b"ab"]) + b"\0", r"magic is"),  # trailing garbage
        (b"ab" + struct.pack("<q", 3) + footer(1, 2), r"offset\[0\] is 3, expected the payload size 2"),
        (b"ab" + struct.pack("<q", -1) + footer(1, 2), r"offset\[0\] is -1, expected >= 0"),
        (
            b"abc" + struct.pack("<qq", 2, 1) + footer(2, 3),
            r"offset\[1\] is 1, expected >= offset\[0\] = 2",
        ),
        (b"ab" + footer(0, 2), r"0 records but payload size 2"),
    ],
)
def test_every_violation_raises_shard_format_error_naming_file_and_field(tmp_path, data, message):
    path = write_file(tmp_path, data, "bad.rox")
    with pytest.raises(ShardFormatError, match=message) as info:
        MappedShard(path)
    assert "bad.rox" in str(info.value)
    with open(path, "rb") as f, pytest.raises(ShardFormatError, match=message):
        read_layout(f, len(data), path)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    payload=st.binary(max_size=64),
    offsets=st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=8),
    count=st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(0, 10)),
    payload_size=st.one_of(st.integers(min_value=-(2**63), max_value=2**63 - 1), st.integers(0, 80)),
    magic=st.one_of(st.just(MAGIC), st.binary(min_size=8, max_size=8)),
    tail=st.binary(max_size=3),
)
def test_arbitrary_bytes_either_open_cleanly_or_raise_shard_format_error(
    tmp_path, payload, offsets, count, payload_size, magic, tail
):
    data = payload + b"".join(struct.pack("<q", o) for o in offsets) + footer(count, payload_size, magic) + tail
    path = write_file(tmp_path, data, "h.rox")
    try:
        shard = MappedShard(path)
    except ShardFormatError:
        return
    with shard:
        total = 0
        for i in range(len(shard)):
            rec = shard[i]
            assert rec.nbytes >= 0
            total += rec.nbytes
        assert total == shard.layout.payload_size


@given(st.lists(st.binary(max_size=40), max_size=20))
def test_any_record_list_round_trips_through_writer_and_golden_bytes(records):
    buf = io.BytesIO()
    w = ShardWriter(buf)
    for r in records:
        w.append(r)
    w.finish()
    assert buf.getvalue() == golden_shard(records)


def test_shard_larger_than_4_gib_is_legal(tmp_path):
    """A sparse 5 GiB payload: 64-bit offsets, nothing read but the index."""
    big = 5 * 2**30
    path = tmp_path / "big.rox"
    with open(path, "wb") as f:
        f.truncate(big)  # sparse: no disk blocks
        f.seek(big)
        f.write(struct.pack("<qq", 2**32 + 7, big) + footer(2, big))
    with MappedShard(str(path)) as shard:
        assert len(shard) == 2
        assert shard.bounds(0) == (0, 2**32 + 7)
        assert shard.bounds(1) == (2**32 + 7, big)
        assert shard[1].nbytes == big - 2**32 - 7
        assert shard[1][-1] == 0


def test_close_keeps_handed_out_views_valid(tmp_path):
    path = write_file(tmp_path, golden_shard([b"abc", b"def"]))
    shard = MappedShard(path)
    rec = shard[1]
    shard.close()
    shard.close()  # idempotent
    assert bytes(rec) == b"def"


def test_records_are_views_of_the_map_not_copies(tmp_path):
    path = write_file(tmp_path, golden_shard([b"abc", b"def"]))
    with MappedShard(path) as shard:
        rec = shard[1]
        assert np.shares_memory(rec, shard.payload)
        assert not rec.flags.writeable
        assert not rec.flags.owndata


def test_a_directory_or_missing_path_is_an_os_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        MappedShard(str(tmp_path / "missing.rox"))
    with pytest.raises(IsADirectoryError):
        MappedShard(str(tmp_path))
    assert os.path.isdir(tmp_path)
