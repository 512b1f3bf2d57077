"""roxxel.staging: a staged shard is written as given, and hashed in the same pass (the
manifest's checksum of the whole file, and the MD5 of each multipart part), whatever
the sizes of the writes, the parts and the chunks, on MD5 lanes or inline."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roxxel import staging
from roxxel.manifest.checksums import DEFAULT_ALGORITHM, new_hasher
from roxxel.staging import StagingFile
from roxxel.workers import WorkerPool


@pytest.fixture(scope="module")
def lanes() -> Iterator[tuple[WorkerPool, ...]]:
    pools = tuple(WorkerPool(1, name=f"test-md5-{i}") for i in range(2))
    yield pools
    for pool in pools:
        pool.close()


def expected_parts(data: bytes, part_size: int) -> tuple[bytes, ...]:
    return tuple(hashlib.md5(data[i : i + part_size]).digest() for i in range(0, max(len(data), 1), part_size))


def write_in_pieces(sink: StagingFile, data: bytes, cuts: list[int]) -> None:
    at = 0
    for cut in sorted(cuts):
        sink.write(memoryview(data)[at:cut])
        at = cut
    sink.write(data[at:])


@settings(max_examples=25, deadline=None)
@given(
    size=st.integers(0, 3 * staging.CHUNK + 5000),
    part_size=st.sampled_from([777, staging.CHUNK - 1, staging.CHUNK, staging.CHUNK + 3, 2 * staging.CHUNK]),
    cuts=st.lists(st.integers(0, 3 * staging.CHUNK + 5000), max_size=6),
    on_lanes=st.booleans(),
    md5s=st.booleans(),
    crc32cs=st.booleans(),
)
def test_digests_are_those_of_the_bytes_written(tmp_path_factory, lanes, size, part_size, cuts, on_lanes, md5s,
                                                crc32cs) -> None:
    import google_crc32c

    data = np.random.default_rng(size).bytes(size)
    path = str(tmp_path_factory.mktemp("staged") / "shard.rox")
    sink = StagingFile(path, part_size=part_size, md5_lanes=lanes if on_lanes else (), part_md5s=md5s,
                       part_crc32c=google_crc32c if crc32cs else None)
    write_in_pieces(sink, data, [c for c in cuts if c <= size])
    assert sink.size == size
    digests = sink.finish()

    with open(path, "rb") as f:
        assert f.read() == data
    hasher = new_hasher(DEFAULT_ALGORITHM)
    hasher.update(data)
    assert (digests.size, digests.hexdigest, digests.part_size) == (size, hasher.hexdigest(), part_size)
    assert digests.part_md5s == (expected_parts(data, part_size) if md5s else None)
    if crc32cs:  # (GCS's parts: the same parts, each one's CRC32C)
        assert digests.part_crc32cs == tuple(google_crc32c.value(data[i : i + part_size])
                                             for i in range(0, max(len(data), 1), part_size))
    else:
        assert digests.part_crc32cs is None


def test_without_a_part_size_no_md5_is_computed(tmp_path, monkeypatch) -> None:
    def no_md5(*args: object) -> None:
        raise AssertionError("an MD5 was computed")

    monkeypatch.setattr(staging.hashlib, "md5", no_md5)
    sink = StagingFile(str(tmp_path / "s"))
    sink.write(b"x" * (staging.CHUNK + 1))
    digests = sink.finish()
    assert (digests.size, digests.part_size, digests.part_md5s) == (staging.CHUNK + 1, None, None)


def test_chunks_waiting_for_their_md5_are_bounded(tmp_path, monkeypatch) -> None:
    """Memory does not grow with the file: the MD5 lanes are held up until 3 chunks wait
    for them, and write() waits once CHUNKS_IN_FLIGHT (3) are pending (counted, not
    timed: without the bound, more than 3 would be pending before the lanes go on)."""
    monkeypatch.setattr(staging, "CHUNKS_IN_FLIGHT", 3)
    pending = peak = 0
    held, lock = threading.Event(), threading.Lock()
    lanes = tuple(WorkerPool(1, name=f"test-md5-held-{i}") for i in range(2))
    real_submit = [lane.submit for lane in lanes]

    def counting(submit):  # type: ignore[no-untyped-def]
        def wrapped(fn):  # type: ignore[no-untyped-def]
            nonlocal pending, peak
            with lock:
                pending += 1
                peak = max(peak, pending)
                if pending >= 3:
                    held.set()

            def job():  # type: ignore[no-untyped-def]
                nonlocal pending
                held.wait(10)
                result = fn()
                with lock:
                    pending -= 1
                return result

            return submit(job)

        return wrapped

    for lane, submit in zip(lanes, real_submit):
        monkeypatch.setattr(lane, "submit", counting(submit))
    try:
        data = np.random.default_rng(0).bytes(20 * staging.CHUNK)
        sink = StagingFile(str(tmp_path / "s"), part_size=staging.CHUNK, md5_lanes=lanes)
        sink.write(data)
        assert sink.finish().part_md5s == expected_parts(data, staging.CHUNK)
    finally:
        for lane in lanes:
            lane.close()
    assert peak <= 3


def test_close_gives_up_and_finish_refuses_after(tmp_path) -> None:
    sink = StagingFile(str(tmp_path / "s"), part_size=1000)
    sink.write(b"abc")
    sink.close()
    sink.close()  # idempotent
    with pytest.raises(ValueError, match="is closed"):
        sink.finish()
