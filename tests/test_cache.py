"""The node-local shard cache: names, verification, locking, eviction, crash safety."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from roxxel.cache import CachedShard, ShardCache
from roxxel.cache.names import parse_size
from roxxel.cache import download as download_module
from roxxel.cache import files as files_module
from roxxel.cache import store as store_module
from roxxel.errors import CacheError, IntegrityError
from roxxel.format import ShardWriter
from tests.checksum_kit import ALGORITHMS, reference_checksum

REPO = Path(__file__).resolve().parents[1]
LABEL = "s3://bucket/ds/shard-00001.rox"


# -- helpers -------------------------------------------------------------------------


def make_shard(records: list[bytes]) -> bytes:
    buf = io.BytesIO()
    writer = ShardWriter(buf)
    for record in records:
        writer.append(record)
    writer.finish()
    return buf.getvalue()


def numbered_shard(i: int, pad: int = 37) -> bytes:
    """Shards of equal size and distinct content."""
    return make_shard([bytes([i % 256]) * 100, f"record-{i:06d}".encode(), b"z" * pad])


def digest(data: bytes, algorithm: str = "sha256") -> str:
    return reference_checksum(data, algorithm)


class Remote:
    """A shard as a store holds it, and a ``fetch`` that streams it in small chunks."""

    def __init__(self, raw: bytes, *, compress: bool = False, algorithm: str = "sha256"):
        self.raw = raw
        self.stored = (
            zstandard.ZstdCompressor(write_content_size=True).compress(raw) if compress else raw
        )
        self.compression = "zstd" if compress else None
        self.checksum = digest(self.stored, algorithm)
        self.calls = 0
        self.serve: list[bytes] = []  # bytes served per call (last repeats); default stored
        self.during = None  # called once all bytes were handed to the sink

    def fetch(self, sink) -> None:
        data = self.serve[min(self.calls, len(self.serve) - 1)] if self.serve else self.stored
        self.calls += 1
        for start in range(0, len(data), 64):
            sink(data[start : start + 64])
        if self.during is not None:
            self.during()

    def get(self, cache: ShardCache, **overrides) -> CachedShard:
        args = dict(
            stored_size=len(self.stored),
            raw_size=len(self.raw),
            compression=self.compression,
            record_count=footer_count(self.raw),
            label=LABEL,
        )
        args.update(overrides)
        fetch = args.pop("fetch", self.fetch)
        return cache.get(self.checksum, fetch, **args)


def footer_count(raw: bytes) -> int:
    return int.from_bytes(raw[-24:-16], "little", signed=True)


def file_bytes(directory: Path) -> int:
    total = 0
    for entry in os.scandir(directory):
        st = entry.stat(follow_symlinks=False)
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"


@pytest.fixture
def cache(cache_dir: Path) -> ShardCache:
    return ShardCache(cache_dir)


class Blocked(Exception):
    """Not an OSError, so code that handles failed opens cannot swallow it."""


@contextmanager
def deadline(seconds: int) -> Iterator[None]:
    """Turn a hang (a blocking open of a FIFO, a lock never released) into a failure."""

    def fail(*_: object) -> None:
        raise Blocked(f"still blocked after {seconds} s")

    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# -- the directory -------------------------------------------------------------------


def test_directory_comes_from_the_environment_at_construction(tmp_path, monkeypatch):
    monkeypatch.setenv("ROXXEL_CACHE_DIR", str(tmp_path / "from-env"))
    cache = ShardCache()
    assert cache.directory == str(tmp_path / "from-env")
    assert stat.S_IMODE(os.stat(cache.directory).st_mode) == 0o700
    monkeypatch.setenv("ROXXEL_CACHE_DIR", str(tmp_path / "changed"))
    assert ShardCache().directory == str(tmp_path / "changed")


def test_directory_defaults_to_home_cache(tmp_path, monkeypatch):
    monkeypatch.delenv("ROXXEL_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    cache = ShardCache()
    assert cache.directory == str(tmp_path / ".cache" / "roxxel")
    for sub in ("", "shards", "tmp", "locks"):
        assert stat.S_IMODE(os.stat(os.path.join(cache.directory, sub)).st_mode) == 0o700


def test_refuses_a_symlinked_directory(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(CacheError, match="link is a symlink"):
        ShardCache(tmp_path / "link")


def test_refuses_a_file_as_directory(tmp_path):
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(CacheError, match="file exists and is not a directory"):
        ShardCache(tmp_path / "file")


def test_refuses_a_planted_symlink_subdirectory(tmp_path):
    (tmp_path / "c").mkdir(mode=0o700)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "c" / "shards").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(CacheError, match="shards is a symlink"):
        ShardCache(tmp_path / "c")


def test_refuses_a_directory_of_another_user(tmp_path):
    if os.getuid() == 0:
        foreign = tmp_path / "foreign"
        foreign.mkdir(mode=0o700)
        os.chown(foreign, 4321, 4321)
    else:
        foreign = Path("/")
    with pytest.raises(CacheError, match=r"owned by uid \d+, expected uid"):
        ShardCache(foreign)


# -- limits and checksums ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("50GB", 50 * 1000**3),
        ("1.5 GiB", 3 * 2**29),
        ("500MB", 500 * 1000**2),
        ("10G", 10 * 2**30),
        ("2KiB", 2048),
        (" 3 kb ", 3000),
        ("1TB", 10**12),
        ("4T", 4 * 2**40),
        ("1024", 1024),
        ("7B", 7),
        (4096, 4096),
        (None, None),
    ],
)
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@given(
    n=st.integers(min_value=1, max_value=10**6),
    unit=st.sampled_from(
        ["", "B", "KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB", "K", "M", "G", "T"]
    ),
    space=st.sampled_from(["", " "]),
)
def test_parse_size_units(n, unit, space):
    power = "KMGT".index(unit[0]) + 1 if unit[:1] in ("K", "M", "G", "T") else 0
    base = 1000 if unit.endswith("B") and "i" not in unit and power else 1024
    assert parse_size(f"{n}{space}{unit}") == n * base**power
    assert parse_size(f"{n}{space}{unit.lower()}") == n * base**power


@pytest.mark.parametrize("bad", ["", "abc", "-5GB", "5 XB", "1e3", "5GBs", "0", 0, -1, True, 1.5])
def test_parse_size_rejects_with_the_value(bad, tmp_path):
    with pytest.raises(ValueError, match=repr(bad).replace(".", r"\.").replace("(", r"\(")):
        parse_size(bad)
    with pytest.raises(ValueError):
        ShardCache(tmp_path / "c", limit=bad)
    assert not (tmp_path / "c").exists()


@pytest.mark.parametrize(
    "bad",
    [
        "sha256:" + "A" * 64,  # uppercase
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "blake2b:" + "a" * 64,
        "blake3:" + "a" * 128,
        "blake3:" + "A" * 64,
        "blake3-" + "a" * 64,
        "md5:" + "a" * 32,
        "sha256:../../../../etc/passwd",
        "sha256-" + "a" * 64,
        " sha256:" + "a" * 64,
        "sha256:" + "a" * 64 + "\n",
        None,
    ],
)
def test_bad_checksums_are_refused_before_any_file_is_named(cache, cache_dir, bad):
    calls = []
    with pytest.raises(ValueError, match="checksum"):
        cache.get(bad, calls.append, stored_size=1, raw_size=1, record_count=0, label=LABEL)
    assert calls == []
    assert list((cache_dir / "shards").iterdir()) == []
    assert list((cache_dir / "locks").iterdir()) == []


def test_check_limit_states_the_minimum(cache_dir):
    small = ShardCache(cache_dir, limit="1000")
    assert ShardCache.min_limit(300, 3) == 1200
    with pytest.raises(CacheError, match="at least 1200 bytes"):
        small.check_limit(300, 3)
    small.check_limit(250, 3)
    ShardCache(cache_dir).check_limit(10**15, 100)  # no limit, nothing to check


# -- getting shards ------------------------------------------------------------------


def test_get_names_the_file_by_checksum_and_serves_hits_without_fetching(cache, cache_dir):
    remote = Remote(numbered_shard(1))
    with remote.get(cache, label="s3://b/../../../../tmp/evil.rox") as shard:
        hexdigest = remote.checksum.split(":")[1]
        assert shard.path == str(cache_dir / "shards" / f"sha256-{hexdigest}.rox")
        with shard.map() as mapped:
            assert bytes(mapped[1]) == b"record-000001"
    assert remote.calls == 1
    with remote.get(cache) as again, again.open() as f:
        assert f.read() == remote.raw
    assert remote.calls == 1
    assert cache.contains(remote.checksum)
    assert not os.path.exists("/tmp/evil.rox")


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "zstd"])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_every_algorithm_is_verified_and_named_by_its_digest(cache, cache_dir, algorithm, compress):
    remote = Remote(make_shard([b"x" * 700, b"record", b"z" * 40]), compress=compress, algorithm=algorithm)
    hexdigest = remote.checksum.partition(":")[2]
    wrong = remote.stored[:-1] + bytes([remote.stored[-1] ^ 1])
    remote.serve = [wrong, remote.stored]  # the first download is corrupt, the second right
    with remote.get(cache) as shard:
        assert os.path.basename(shard.path) == f"{algorithm}-{hexdigest}.rox"
        assert shard.path == cache.path_for(remote.checksum)
        assert bytes(shard.map()[1]) == b"record"
    assert remote.calls == 2
    assert [e.checksum for e in cache.entries()] == [remote.checksum]
    assert cache.verify(remote.checksum)  # hashed again from disk, in the same algorithm
    with open(shard.path, "r+b") as f:
        f.write(b"\xff")
    assert not cache.verify(remote.checksum)

    other = Remote(numbered_shard(3), compress=compress, algorithm=algorithm)
    bad = other.stored[:-1] + bytes([other.stored[-1] ^ 1])
    other.serve = [bad]
    with pytest.raises(IntegrityError) as caught:
        other.get(cache)
    message = str(caught.value)
    assert message.startswith(f"{LABEL}: checksum is {digest(bad, algorithm)}, expected {other.checksum}")
    assert not cache.contains(other.checksum)


def test_compressed_shard_is_cached_decompressed(cache):
    remote = Remote(make_shard([b"abc" * 1000] * 20), compress=True)
    assert len(remote.stored) < len(remote.raw)
    with remote.get(cache) as shard:
        assert shard.size == len(remote.raw)
        mapped = shard.map()
        assert len(mapped) == 20 and bytes(mapped[19]) == b"abc" * 1000
    assert cache.verify(remote.checksum)


def test_a_bad_download_is_fetched_again(cache):
    remote = Remote(numbered_shard(4))
    flipped = bytearray(remote.stored)
    flipped[5] ^= 1
    remote.serve = [bytes(flipped), remote.stored]
    with remote.get(cache) as shard:
        assert shard.map()[0][5] == 4
    assert remote.calls == 2


class _FullDisk:
    """A temp file whose writes (or fsync) fail as on a full disk."""

    def __init__(self, real, fail_sync: bool) -> None:
        self._real, self._fail_sync = real, fail_sync

    def __getattr__(self, name):
        return getattr(self._real, name)

    def write(self, data) -> int:
        if self._fail_sync:
            return self._real.write(data)
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        self._real.flush()
        if self._fail_sync:
            raise OSError(errno.EDQUOT, "Disk quota exceeded")


@pytest.mark.parametrize("compress", [False, True], ids=["stored", "zstd"])
@pytest.mark.parametrize("fail_sync", [False, True], ids=["write", "flush"])
def test_a_full_disk_is_a_cache_error_naming_shard_and_directory(
    cache, cache_dir, monkeypatch, compress, fail_sync
):
    # A zstd shard is decompressed as it arrives: its one temp file holds the raw bytes.
    first_failing = 0
    remote = Remote(make_shard([b"abc" * 1000] * 20), compress=compress)
    real_init = files_module.TempFile.__init__
    made = []

    def init(self, tmp_dir):
        real_init(self, tmp_dir)
        made.append(self)
        if len(made) > first_failing:
            self.file = _FullDisk(self.file, fail_sync)

    monkeypatch.setattr(download_module.TempFile, "__init__", init)
    with pytest.raises(CacheError) as info:
        remote.get(cache)
    message = str(info.value)
    assert f"could not write {LABEL} into the cache directory {cache_dir / 'tmp'}" in message
    assert "bytes free there; this shard needs" in message and "free some space" in message
    assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
    assert len(made) == first_failing + 1  # it failed in the file it was meant to
    assert remote.calls == 1  # not fetched again: the store was not at fault
    assert list((cache_dir / "tmp").iterdir()) == []
    assert not cache.contains(remote.checksum)


def test_persistent_mismatch_names_label_and_both_digests(cache, cache_dir):
    remote = Remote(numbered_shard(5))
    wrong = remote.stored[:-1] + b"!"
    remote.serve = [wrong]
    with pytest.raises(IntegrityError) as info:
        remote.get(cache)
    message = str(info.value)
    assert LABEL in message and remote.checksum in message and digest(wrong) in message
    assert "3 attempts" in message
    assert remote.calls == 3
    assert list((cache_dir / "tmp").iterdir()) == []
    assert not cache.contains(remote.checksum)


def test_short_download_names_both_sizes(cache):
    remote = Remote(numbered_shard(6))
    remote.serve = [remote.stored[:-10]]
    n = len(remote.stored)
    with pytest.raises(IntegrityError, match=rf"{LABEL}: stored size is {n - 10} bytes, expected {n}"):
        remote.get(cache)


def test_excess_bytes_are_refused_as_soon_as_they_arrive(cache, cache_dir):
    remote = Remote(numbered_shard(7))
    accepted = []

    def endless(sink):  # a hostile store that never stops sending
        while True:
            sink(b"x" * 10)
            accepted.append(10)
            assert len(accepted) < 10_000, "the sink kept accepting bytes"

    with pytest.raises(IntegrityError, match=f"more than {len(remote.stored)} bytes"):
        remote.get(cache, fetch=endless)
    assert sum(accepted) <= 3 * len(remote.stored)
    assert list((cache_dir / "tmp").iterdir()) == []


def test_excess_bytes_are_refused_even_if_fetch_swallows_the_refusal(cache):
    remote = Remote(numbered_shard(8))

    def stubborn(sink):
        for _ in range(3):
            try:
                sink(remote.stored + b"extra")
            except IntegrityError:
                pass

    with pytest.raises(IntegrityError, match="more than"):
        remote.get(cache, fetch=stubborn)


def test_fetch_errors_propagate_unchanged_and_leave_no_temp_files(cache, cache_dir):
    remote = Remote(numbered_shard(9))
    error = ConnectionResetError("peer reset")

    def failing(sink):
        sink(remote.stored[:50])
        raise error

    with pytest.raises(ConnectionResetError) as info:
        remote.get(cache, fetch=failing)
    assert info.value is error
    assert list((cache_dir / "tmp").iterdir()) == []
    assert not cache.contains(remote.checksum)
    with remote.get(cache):  # the caller's retry works
        pass


def test_partial_downloads_are_never_visible(cache, cache_dir):
    remote = Remote(numbered_shard(10))
    seen = []
    remote.during = lambda: seen.append(
        (cache.contains(remote.checksum), len(list((cache_dir / "tmp").iterdir())))
    )
    with remote.get(cache):
        pass
    assert seen == [(False, 1)]


def test_zstd_frame_declaring_another_size_is_refused_before_decompressing(cache, monkeypatch):
    remote = Remote(numbered_shard(11), compress=True)

    def no_decompression(*args, **kwargs):
        raise AssertionError("decompression started")

    monkeypatch.setattr(zstandard, "ZstdDecompressor", no_decompression)
    raw_size = len(remote.raw) + 8
    with pytest.raises(
        IntegrityError,
        match=f"declares {len(remote.raw)} bytes of content, expected raw size {raw_size}",
    ):
        remote.get(cache, raw_size=raw_size)


def test_decompression_is_bounded_by_raw_size(cache, cache_dir, monkeypatch):
    raw = numbered_shard(12)
    bomb = zstandard.ZstdCompressor(write_content_size=False).compress(raw + bytes(20 << 20))
    remote = Remote(raw)
    remote.stored, remote.compression = bomb, "zstd"
    remote.checksum = digest(bomb)
    largest = []

    class Watched(files_module.TempFile):
        def discard(self) -> None:
            if not self.file.closed:
                largest.append(self.file.seek(0, os.SEEK_END))
            super().discard()

    monkeypatch.setattr(download_module, "TempFile", Watched)
    with pytest.raises(IntegrityError, match=f"more than {len(raw)} bytes"):
        remote.get(cache)
    assert max(largest) <= max(len(raw), len(bomb))
    assert list((cache_dir / "tmp").iterdir()) == []


def test_footer_record_count_must_match(cache):
    remote = Remote(numbered_shard(13))
    with pytest.raises(IntegrityError, match=f"{LABEL}: footer says 3 records, expected 4"):
        remote.get(cache, record_count=4)
    # The bytes matched their checksum: fetching them again would bring the same bytes.
    assert remote.calls == 1


def test_bytes_that_are_not_a_shard_are_refused(cache):
    remote = Remote(b"definitely not a roxxel shard, though the checksum matches")
    with pytest.raises(IntegrityError, match="magic"):
        remote.get(cache, record_count=0)
    assert not cache.contains(remote.checksum)


def test_sizes_and_compression_are_validated(cache):
    remote = Remote(numbered_shard(14))
    with pytest.raises(ValueError, match="compression is 'gzip'"):
        remote.get(cache, compression="gzip")
    with pytest.raises(ValueError, match="stored_size is True"):
        remote.get(cache, stored_size=True)
    with pytest.raises(ValueError, match="raw_size 5 differs from stored_size"):
        remote.get(cache, raw_size=5)
    assert remote.calls == 0


# -- cached shards and their locks ---------------------------------------------------


def test_a_held_shard_cannot_be_removed(cache):
    remote = Remote(numbered_shard(15))
    remote.get(cache).close()
    shard = remote.get(cache)  # a cache hit holds its lock too
    assert remote.calls == 1
    with pytest.raises(CacheError, match="in use"):
        cache.remove(remote.checksum)
    assert cache.clear() == 0
    shard.close()
    shard.close()  # idempotent
    with pytest.raises(ValueError, match="closed"):
        shard.map()
    assert cache.remove(remote.checksum) is True
    assert cache.remove(remote.checksum) is False


def test_maps_survive_eviction_because_files_are_only_unlinked(cache):
    remote = Remote(numbered_shard(16))
    with remote.get(cache) as shard:
        mapped = shard.map()
    assert cache.clear() == 1
    assert not cache.contains(remote.checksum)
    assert bytes(mapped[1]) == b"record-000016"


def test_a_shard_evicted_between_open_and_lock_is_fetched_again(cache, monkeypatch):
    remote = Remote(numbered_shard(17))
    remote.get(cache).close()
    real_open = store_module.open_regular
    raced = []

    def open_then_lose_the_race(path):
        fd = real_open(path)
        if fd is not None and not raced:
            raced.append(path)
            os.unlink(path)  # an evictor in another process got in first
        return fd

    monkeypatch.setattr(store_module, "open_regular", open_then_lose_the_race)
    with remote.get(cache) as shard:
        assert raced
        assert remote.calls == 2
        assert os.stat(shard.path).st_ino == os.fstat(shard._fd).st_ino
        assert len(shard.map()) == 3


def test_cached_shards_cannot_be_pickled(cache):
    import pickle

    with Remote(numbered_shard(18)).get(cache) as shard, pytest.raises(TypeError):
        pickle.dumps(shard)


# -- eviction ------------------------------------------------------------------------


def test_limit_holds_while_shards_stream_through_and_the_held_one_stays(cache_dir):
    # Large enough that most of an in-flight download is on disk, past write buffers (the
    # download writes whole 2 MiB blocks, holding back what does not fill one).
    remotes = [Remote(numbered_shard(i, pad=5 * 2**20)) for i in range(20)]
    size = len(remotes[0].raw)
    limit = 2 * size
    cache = ShardCache(cache_dir, limit=limit)
    peaks = []

    def measure():
        peaks.append(file_bytes(cache_dir / "shards") + file_bytes(cache_dir / "tmp"))

    held = remotes[0].get(cache)
    for remote in remotes[1:]:
        remote.during = measure
        with remote.get(cache) as shard:
            assert bytes(shard.map()[1]) == remote.raw[100:113]
        assert cache.usage() <= limit
        measure()
    assert max(peaks) <= limit + size
    assert max(peaks) > limit  # the in-flight shard was measured
    assert cache.contains(remotes[0].checksum)
    assert bytes(held.map()[1]) == b"record-000000"
    held.close()


def _fill(cache: ShardCache, remotes: list[Remote]) -> None:
    for remote in remotes:
        remote.get(cache).close()


def test_eviction_follows_the_read_order(cache_dir):
    a, b, c, d, e = (Remote(numbered_shard(i)) for i in range(5))
    cache = ShardCache(cache_dir, limit=3 * len(a.raw))
    _fill(cache, [a, b, c])
    hint = {a.checksum: 5, b.checksum: 1, d.checksum: 0}  # c is not needed again
    d.get(cache, order_hint=hint).close()
    assert {x.checksum for x in cache.entries()} == {a.checksum, b.checksum, d.checksum}
    ranks = {a.checksum: 9, b.checksum: 2, d.checksum: 4, e.checksum: 0}
    e.get(cache, order_hint=ranks.get).close()  # a callable works too; a is furthest
    assert {x.checksum for x in cache.entries()} == {b.checksum, d.checksum, e.checksum}


def test_eviction_without_order_is_least_recently_used(cache_dir):
    a, b, c, d = (Remote(numbered_shard(i)) for i in range(4))
    cache = ShardCache(cache_dir, limit=3 * len(a.raw))
    _fill(cache, [a, b, c])
    # The last use is noted on the shard's record of verification, never on the shard.
    records = {r: cache_dir / "verified" / (r.checksum.replace(":", "-") + ".json") for r in (a, b, c)}
    for remote, when in ((a, 1000), (b, 3000), (c, 2000)):
        os.utime(records[remote], (when, when))
    shard_a = os.stat(cache.path_for(a.checksum))
    a.get(cache).close()  # a use makes a the most recent
    assert os.stat(records[a]).st_mtime > 3000
    assert os.stat(cache.path_for(a.checksum)).st_mtime_ns == shard_a.st_mtime_ns
    d.get(cache).close()
    assert {x.checksum for x in cache.entries()} == {a.checksum, b.checksum, d.checksum}
    assert a.calls == 1


def test_a_full_cache_of_shards_in_use_proceeds_with_a_warning(cache_dir, caplog):
    a, b = Remote(numbered_shard(1)), Remote(numbered_shard(2))
    cache = ShardCache(cache_dir, limit=len(a.raw))
    with a.get(cache), caplog.at_level(logging.WARNING, logger="roxxel.cache"):
        with b.get(cache):
            assert cache.contains(a.checksum) and cache.contains(b.checksum)
    assert "every other cached shard is in use" in caplog.text


def test_evict_makes_room_on_request(cache_dir):
    remotes = [Remote(numbered_shard(i)) for i in range(3)]
    size = len(remotes[0].raw)
    cache = ShardCache(cache_dir, limit=3 * size)
    _fill(cache, remotes)
    assert cache.evict(0) == 0
    assert cache.evict(2 * size) == 2 * size
    assert cache.usage() == size
    assert ShardCache(cache_dir).evict(10**9) == 0  # without a limit nothing is evicted


def test_entries_usage_and_clear(cache):
    remotes = [Remote(numbered_shard(i)) for i in range(3)]
    _fill(cache, remotes)
    entries = cache.entries()
    assert sorted(c for c, _, _ in entries) == sorted(r.checksum for r in remotes)
    assert cache.usage() == sum(len(r.raw) for r in remotes)
    assert all(isinstance(mtime, float) for _, _, mtime in entries)
    assert cache.clear() == 3
    assert cache.usage() == 0 and cache.entries() == []


# -- hostile cache contents ----------------------------------------------------------


def test_a_planted_symlink_is_neither_followed_nor_served(cache, tmp_path):
    remote = Remote(numbered_shard(20))
    target = tmp_path / "outside.rox"
    target.write_bytes(remote.raw)  # even a perfect copy must not be served through it
    os.symlink(target, cache.path_for(remote.checksum))
    assert not cache.contains(remote.checksum)
    with remote.get(cache) as shard:
        assert not os.path.islink(shard.path)
        assert len(shard.map()) == 3
    assert remote.calls == 1
    assert target.read_bytes() == remote.raw


def test_a_planted_fifo_does_not_block(cache):
    remote = Remote(numbered_shard(21))
    os.mkfifo(cache.path_for(remote.checksum))
    with deadline(10):
        assert not cache.contains(remote.checksum)
        with remote.get(cache) as shard:
            assert stat.S_ISREG(os.stat(shard.path).st_mode)


def test_a_planted_directory_is_reported(cache):
    remote = Remote(numbered_shard(22))
    path = cache.path_for(remote.checksum)
    os.mkdir(path)
    with pytest.raises(CacheError, match=f"{path} is a directory"):
        remote.get(cache)
    assert remote.calls == 0


def test_planted_lock_symlink_is_not_followed(cache, cache_dir, tmp_path):
    remote = Remote(numbered_shard(23))
    victim = tmp_path / "victim"
    victim.write_bytes(b"keep")
    os.symlink(victim, cache_dir / "locks" / f"sha256-{remote.checksum[7:]}.lock")
    with remote.get(cache):
        pass
    assert victim.read_bytes() == b"keep"


def test_a_wrong_sized_file_at_the_name_is_replaced(cache):
    remote = Remote(numbered_shard(24))
    Path(cache.path_for(remote.checksum)).write_bytes(b"junk")
    with remote.get(cache) as shard:
        assert shard.size == len(remote.raw)
    assert remote.calls == 1


def test_on_disk_corruption_is_caught_by_verify_and_never_served(cache):
    remote = Remote(numbered_shard(25))
    remote.get(cache).close()
    path = cache.path_for(remote.checksum)
    assert cache.verify(remote.checksum)
    with open(path, "r+b") as f:  # someone flips a payload byte
        f.write(b"\xff")
    assert not cache.verify(remote.checksum)
    with remote.get(cache) as shard:  # changed since verified: hashed, removed, fetched again
        assert bytes(shard.map()[0]) == bytes([25]) * 100
    assert remote.calls == 2
    with pytest.raises(CacheError, match="not in the cache"):
        cache.verify(digest(b"other"))


def test_verify_catches_corruption_of_a_compressed_shard(cache):
    remote = Remote(make_shard([b"q" * 500] * 4), compress=True)
    remote.get(cache).close()
    assert cache.verify(remote.checksum)
    with open(cache.path_for(remote.checksum), "r+b") as f:
        f.write(b"Q")
    assert not cache.verify(remote.checksum)


# -- temp files ----------------------------------------------------------------------


def test_clean_temp_removes_only_files_of_dead_processes(cache, cache_dir):
    tmp = cache_dir / "tmp"
    stale = tmp / f"{dead_pid()}.abc123.part"
    stale.write_bytes(b"partial")
    mine = tmp / f"{os.getpid()}.def456.part"
    mine.write_bytes(b"in flight")
    foreign = tmp / "notes.txt"
    foreign.write_bytes(b"not ours")
    assert cache.clean_temp() == 1
    assert not stale.exists() and mine.exists() and foreign.exists()


def test_clean_temp_spares_a_locked_file_even_if_its_pid_looks_dead(cache, cache_dir):
    import fcntl

    held = cache_dir / "tmp" / f"{dead_pid()}.ghi789.part"  # a live owner in another pid ns
    held.write_bytes(b"in flight")
    with open(held, "rb") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_SH)
        assert cache.clean_temp() == 0
    assert cache.clean_temp() == 1


# -- several processes ---------------------------------------------------------------

CHILD = r"""
import json, sys, time
from roxxel.cache import ShardCache

args = json.loads(sys.argv[1])
cache = ShardCache(args["dir"])

def fetch(sink):
    with open(args["counter"], "ab") as f:
        f.write(b"x")
    with open(args["remote"], "rb") as f:
        data = f.read()
    sink(data[: len(data) // 2])
    if args["hang"]:
        print("blocked", flush=True)
        sys.stdin.readline()  # never answered: the parent kills us here
    time.sleep(0.3)  # keep the others waiting on the lock
    sink(data[len(data) // 2 :])

print("ready", flush=True)
sys.stdin.readline()  # start together
with cache.get(args["checksum"], fetch, stored_size=args["size"], raw_size=args["size"],
               record_count=3, label="test://shard") as shard:
    print(json.dumps({"second": bytes(shard.map()[1]).decode()}), flush=True)
"""


def _child(tmp_path: Path, cache_dir: Path, remote: Remote, *, hang: bool) -> subprocess.Popen:
    source = tmp_path / "remote.rox"
    source.write_bytes(remote.stored)
    args = {
        "dir": str(cache_dir),
        "counter": str(tmp_path / "fetches"),
        "remote": str(source),
        "checksum": remote.checksum,
        "size": len(remote.stored),
        "hang": hang,
    }
    return subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def test_four_processes_download_a_shard_once(tmp_path, cache_dir):
    remote = Remote(numbered_shard(30))
    ShardCache(cache_dir)
    children = [_child(tmp_path, cache_dir, remote, hang=False) for _ in range(4)]
    try:
        for child in children:
            assert child.stdout.readline() == "ready\n"
        for child in children:
            child.stdin.write("go\n")
            child.stdin.flush()
        results = [json.loads(child.communicate(timeout=30)[0]) for child in children]
    finally:
        for child in children:
            child.kill()
            child.wait()
    assert results == [{"second": "record-000030"}] * 4
    assert (tmp_path / "fetches").read_bytes() == b"x"
    assert [c.returncode for c in children] == [0] * 4


def test_a_download_killed_midway_leaves_nothing_that_blocks_or_passes(tmp_path, cache_dir):
    remote = Remote(numbered_shard(31))
    ShardCache(cache_dir)
    child = _child(tmp_path, cache_dir, remote, hang=True)
    try:
        assert child.stdout.readline() == "ready\n"
        child.stdin.write("go\n")
        child.stdin.flush()
        assert child.stdout.readline() == "blocked\n"  # holding the lock, half written
        leftovers = os.listdir(cache_dir / "tmp")
        assert len(leftovers) == 1 and leftovers[0].startswith(f"{child.pid}.")
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    started = time.monotonic()
    cache = ShardCache(cache_dir)
    cache.clean_temp()  # what a later process's first ShardCache of the directory does
    assert os.listdir(cache_dir / "tmp") == []
    assert not cache.contains(remote.checksum)
    with deadline(10), remote.get(cache) as shard:
        assert bytes(shard.map()[1]) == b"record-000031"
    assert time.monotonic() - started < 5
    assert remote.calls == 1


def test_map_uses_the_locked_file_even_if_the_path_is_swapped(cache: ShardCache, tmp_path: Path) -> None:
    remote = Remote(numbered_shard(1))
    with remote.get(cache) as shard:
        impostor = tmp_path / "impostor.rox"
        impostor.write_bytes(numbered_shard(2))
        os.replace(impostor, shard.path)  # someone swaps the file after our lock
        with shard.map() as mapped:
            assert bytes(mapped[1]) == b"record-000001"


def test_waiters_on_an_unlinked_lock_file_are_let_go_while_a_forked_child_holds_copies(tmp_path, monkeypatch):
    """A lock holder unlinks the lock file, then unlocks; each waiter queued on the old
    file then gets it, sees it is stale, and must unlock it too: a child forked at that
    moment holds a copy of the descriptor, and a plain close would leave the remaining
    waiters queued forever (a DataLoader's fork workers hung so)."""
    import threading

    from roxxel.cache import files

    kept = []  # descriptors a forked child would still have open
    real_close = files.os.close
    monkeypatch.setattr(files.os, "close", lambda fd: (kept.append(files.os.dup(fd)), real_close(fd)))
    path = str(tmp_path / "publish.lock")
    entered = []
    holder = files.exclusive_lock(path)
    holder.__enter__()
    waiters = []
    for name in ("b", "c", "d"):
        def wait(name=name):
            with files.exclusive_lock(path):
                entered.append(name)
        waiters.append(threading.Thread(target=wait, daemon=True))
    for t in waiters:
        t.start()
    time.sleep(0.2)  # all three queued on the file the holder will unlink
    holder.__exit__(None, None, None)
    for t in waiters:
        t.join(5)
    try:
        assert sorted(entered) == ["b", "c", "d"]
    finally:
        for fd in kept:
            real_close(fd)


# -- how a download is written -------------------------------------------------------


@given(st.lists(st.integers(1, 5 * 2**20), min_size=1, max_size=12), st.integers(0, 2**32))
def test_downloads_are_written_in_whole_2_mib_blocks_at_2_mib_offsets(sizes, seed):
    """Whatever the pieces the bytes arrive in, the temp file gets whole 2 MiB blocks at
    2 MiB offsets (so the page cache holds it in huge folios), then the rest; nothing is
    lost or reordered."""
    from roxxel.cache.download import _Aligned

    data = np.random.default_rng(seed).bytes(sum(sizes))
    writes: list[bytes] = []
    aligned = _Aligned(lambda view: writes.append(bytes(view)))
    position = 0
    for size in sizes:
        aligned(data[position : position + size])
        position += size
    aligned.flush()
    aligned.close()
    assert b"".join(writes) == data
    block = 2 * 2**20
    assert all(len(w) % block == 0 for w in writes[:-1])  # so every write starts on a block


# -- placement: a downloader in parts writes the shard into its temp file itself --------


class PlacingRemote(Remote):
    """A ``fetch`` that writes the stored bytes into the temp file through the sink's
    placement, 64 bytes at a time from the end backwards (as parts land out of order),
    then feeds the sink views of what was placed, in order (as the download engine does)."""

    def fetch(self, sink) -> None:
        self.calls += 1
        spool = download_module.placement(sink)
        assert spool is not None
        spool.claim()
        self.spool = spool
        data = self.stored
        for start in reversed(range(0, len(data), 64)):
            spool.write(start, memoryview(data[start : start + 64]))
        for pos in range(0, len(data), 100):
            with spool.view(pos, min(pos + 100, len(data))) as view:
                sink(view)


def test_a_shard_being_downloaded_is_hashed_on_the_threads_its_size_and_the_node_allow(cache, monkeypatch):
    asked, made = [], []
    real = download_module.ShardCheck

    def check(*args, **kwargs):
        made.append(kwargs.get("threads"))
        return real(*args, **kwargs)

    monkeypatch.setattr(download_module, "node_share", lambda: 3)
    monkeypatch.setattr(download_module, "check_threads", lambda size, share: asked.append((size, share)) or 2)
    monkeypatch.setattr(download_module, "ShardCheck", check)
    remote = PlacingRemote(make_shard([b"abc" * 1000] * 20))
    with remote.get(cache) as shard, shard.open() as f:
        assert f.read() == remote.raw
    assert asked == [(len(remote.stored), 3)] and made == [2]


def test_a_placed_shard_is_checked_from_what_was_written_and_not_written_twice(cache, monkeypatch):
    remote = PlacingRemote(make_shard([b"abc" * 1000] * 20))
    writes = []
    real = download_module._Aligned.__call__

    def counting(self, data):
        writes.append(len(data))
        real(self, data)

    monkeypatch.setattr(download_module._Aligned, "__call__", counting)
    with remote.get(cache) as shard, shard.open() as f:
        assert f.read() == remote.raw
    assert writes == []  # the check wrote nothing: the bytes were placed
    with pytest.raises(RuntimeError, match="after its download had ended"):
        remote.spool.write(0, memoryview(b"late"))  # closed once fetch returned


def test_a_placed_shard_whose_bytes_differ_is_refused_and_leaves_no_temp_file(cache, cache_dir):
    remote = PlacingRemote(make_shard([b"abc" * 1000] * 20))
    good = remote.stored
    remote.stored = good[:100] + bytes([good[100] ^ 1]) + good[101:]
    with pytest.raises(IntegrityError, match="checksum is"):
        remote.get(cache, stored_size=len(good))
    assert list((cache_dir / "tmp").iterdir()) == []
    assert not cache.contains(remote.checksum)


def test_a_full_disk_while_placing_a_part_is_a_cache_error_naming_shard_and_directory(cache, cache_dir,
                                                                                        monkeypatch):
    remote = PlacingRemote(make_shard([b"abc" * 1000] * 20))

    def full(fd, data, offset):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(download_module, "_pwrite", full)
    with pytest.raises(CacheError) as info:
        remote.get(cache)
    assert f"could not write {LABEL} into the cache directory {cache_dir / 'tmp'}" in str(info.value)
    assert info.value.errno == errno.ENOSPC and remote.calls == 1
    assert list((cache_dir / "tmp").iterdir()) == []


def test_closing_a_spool_waits_for_a_write_under_way_and_refuses_later_ones(tmp_path, monkeypatch):
    import threading

    from roxxel.format.check import ShardSpec

    spec = ShardSpec(label=LABEL, stored_size=8, raw_size=8, record_count=0, compression=None)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    spool = download_module.Spool(fd, spec, str(tmp_path))
    os.close(fd)  # the spool writes through a descriptor of its own
    spool.claim()
    started, release = threading.Event(), threading.Event()
    real = download_module._pwrite

    def slow(fd, data, offset):
        started.set()
        assert release.wait(5)
        return real(fd, data, offset)

    monkeypatch.setattr(download_module, "_pwrite", slow)
    writer = threading.Thread(target=spool.write, args=(0, memoryview(b"abcd")))
    closer = threading.Thread(target=spool.close)
    writer.start()
    assert started.wait(5)
    closer.start()
    closer.join(0.3)
    assert closer.is_alive()  # the write under way ends first
    release.set()
    closer.join(5)
    writer.join(5)
    monkeypatch.undo()
    assert not closer.is_alive()
    assert (tmp_path / "f").read_bytes() == b"abcd"
    with pytest.raises(RuntimeError, match="after its download had ended"):
        spool.write(4, memoryview(b"efgh"))
    assert (tmp_path / "f").read_bytes() == b"abcd"
    spool.close()  # idempotent


def test_a_spool_refuses_misuse_and_a_file_that_cannot_give_bytes_back(tmp_path):
    from roxxel.format.check import ShardSpec

    spec = ShardSpec(label=LABEL, stored_size=8, raw_size=8, record_count=0, compression=None)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o600)
    spool = download_module.Spool(fd, spec, str(tmp_path))
    with pytest.raises(RuntimeError, match=f"{LABEL}: a part written to an unclaimed temp file"):
        spool.write(0, memoryview(b"abcd"))
    spool.claim()
    with pytest.raises(ValueError, match=rf"{LABEL}: bytes \[6, 10\) are past its stored size 8"):
        spool.write(6, memoryview(b"abcd"))
    spool.write(0, memoryview(b"abcd"))
    with spool.view(1, 4) as view, spool.view(4, 4) as empty:
        assert bytes(view) == b"bcd" and len(empty) == 0
    with pytest.raises(CacheError, match=rf"^{LABEL}: its temp file in {tmp_path} ends at byte 4, "
                                         r"before byte 8, where bytes were written \(was it truncated\?\)"):
        with spool.view(4, 8):
            pass
    spool.close()
    with pytest.raises(CacheError, match=f"could not map {LABEL} back from its temp file in {tmp_path}: "):
        with spool.view(0, 4):  # (its descriptor is closed)
            pass
    os.close(fd)
    fd = os.open(tmp_path / "g", os.O_RDWR | os.O_CREAT, 0o600)
    fed = download_module.Spool(fd, spec, str(tmp_path))
    os.close(fd)
    fed.fed = True  # the sink had bytes already
    with pytest.raises(RuntimeError, match=f"{LABEL}: the download wrote bytes before claiming"):
        fed.claim()
    fed.close()
