"""The inactivity timeout of downloads: its default (the README's), and a body that goes
silent is cut off after the configured timeout and resumed, on both S3 read paths."""

from __future__ import annotations

import dataclasses
import http.client
import io
import itertools
import re
import threading
import time
from pathlib import Path

import pytest

import roxxel
from roxxel.backends import RetryPolicy, Store
from roxxel.backends.retry import DEFAULT_POLICY
from roxxel.backends import s3 as s3_module
from roxxel.backends.through import Revoked, Through
from roxxel.backends.watchdog import StallError, current, partnered, watched
from roxxel.read.parts import PartEngine
from tests.reliability_kit import FAST, check_all, write
from tests.test_parts import FilePlacement

README = Path(__file__).resolve().parents[1] / "README.md"
SERVER_STALL = 30.0  # seconds the faulty server holds a body back
BOUND = 15.0  # a cut-off stall ends well before the server would have resumed


def test_the_default_stall_timeout_is_the_one_the_readme_states():
    stated = re.search(r"receives\s+nothing\s+for\s+(\d+)\s+s\s+\(`RetryPolicy\.stall_timeout`", README.read_text())
    assert stated is not None, "the README no longer states the inactivity timeout"
    assert DEFAULT_POLICY.stall_timeout == RetryPolicy().stall_timeout == float(stated.group(1)) == 30.0


def test_uploads_keep_their_longer_allowance():
    assert RetryPolicy().upload_timeout == 120.0
    with pytest.raises(ValueError, match="upload_timeout must be > 0 or None"):
        RetryPolicy(upload_timeout=0)


def test_a_slow_but_steady_call_is_not_cut_off():
    def steady() -> str:
        for _ in range(10):  # 1 s in all, never silent for 0.3 s
            time.sleep(0.1)
            current().beat()
        return "done"

    assert watched(steady, 0.3) == "done"


def test_a_call_is_cut_off_once_silent_for_the_timeout():
    release = threading.Event()

    def goes_quiet() -> None:
        for _ in range(5):
            time.sleep(0.1)
            current().beat()
        release.wait(30)

    started = time.monotonic()
    with pytest.raises(StallError, match=r"no data for 0\.3 s"):
        watched(goes_quiet, 0.3)
    elapsed = time.monotonic() - started
    release.set()
    assert 0.5 < elapsed < BOUND  # after its last byte, not after its start


def test_a_partnered_thread_runs_its_calls_on_one_helper_and_a_stalled_call_keeps_its_own():
    release = threading.Event()

    def where() -> threading.Thread:
        return threading.current_thread()

    def stalls() -> threading.Thread:
        release.wait(10)
        return threading.current_thread()

    me = threading.current_thread()
    with partnered():
        first, second = watched(where, 5.0), watched(where, 5.0)
        assert first is second and first is not me and first.name == "roxxel-store-call"
        with pytest.raises(StallError):
            watched(stalls, 0.2)  # given up on: its helper is still in the call
        third = watched(where, 5.0)
        assert third is not first and third.is_alive()  # a new helper for the next call
        release.set()
        first.join(2)
        assert not first.is_alive()  # the abandoned call returned: its retired helper ended
        assert watched(where, 5.0) is third
    third.join(2)
    assert not third.is_alive()  # the helper ends with the ``with``
    assert watched(where, 5.0) is not third  # outside it, a thread a call, as before


def test_a_partnered_call_that_raises_leaves_its_helper_for_the_next():
    failed_on: list[threading.Thread] = []

    def fails() -> None:
        failed_on.append(threading.current_thread())
        raise ConnectionError("reset")

    def where() -> threading.Thread:
        return threading.current_thread()

    with partnered():
        with pytest.raises(ConnectionError, match="reset"):
            watched(fails, 5.0)
        assert watched(where, 5.0) is failed_on[0] is not threading.current_thread()


def test_a_partnered_helper_outlives_the_main_thread_s_end_until_its_owner_is_done():
    # A non-daemon thread may go on partnered after the main thread has ended: its next
    # call must not wait for a helper that went away by itself.
    script = """
import threading, time
from roxxel.backends.watchdog import partnered, watched

def owner():
    with partnered():
        first = watched(threading.current_thread, 5.0)
        time.sleep(0.5)  # the main thread ends meanwhile
        started = time.monotonic()
        second = watched(threading.current_thread, 2.0)
        print("same" if second is first else "other", round(time.monotonic() - started, 1))

threading.Thread(target=owner).start()
"""
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["same", "0.0"]


def test_an_unseen_transfer_gets_time_for_its_size():
    def one_request() -> str:
        current().unseen(2**20)  # 1 MiB arriving at once: 1 s more
        time.sleep(0.6)
        return "done"

    assert watched(one_request, 0.3) == "done"


class Trickle(io.RawIOBase):
    """A body that gives at most ``step`` bytes a read, as a socket does."""

    def __init__(self, data: bytes, step: int) -> None:
        self.data, self.step, self.pos = data, step, 0

    def readinto(self, view) -> int:
        n = min(len(view), self.step, len(self.data) - self.pos)
        view[:n] = self.data[self.pos : self.pos + n]
        self.pos += n
        return n


def test_a_range_received_through_a_small_buffer_is_handed_on_in_whole_blocks():
    data = bytes(range(256)) * 40 + b"end"  # 10,243 bytes
    writes: list[tuple[int, bytes]] = []
    through = Through(memoryview(bytearray(4096)), lambda offset, block: writes.append((offset, bytes(block))),
                      len(data))
    through.receive(Trickle(data, 1000).readinto, len(data))
    assert [(offset, len(block)) for offset, block in writes] == [(0, 4096), (4096, 4096), (8192, 2051)]
    assert b"".join(block for _, block in writes) == data
    with pytest.raises(http.client.IncompleteRead):  # a body that ends first
        Through(memoryview(bytearray(4096)), lambda *a: None, 100).receive(Trickle(b"x" * 50, 7).readinto, 100)


def test_an_abandoned_attempt_hands_on_nothing_once_its_retry_began():
    """A part's first attempt stalls and is given up on; when it wakes up, after the
    retry has delivered the part, its bytes are refused: nothing lands after read_part
    returned."""
    store = Store("memory://through-stall", retry=dataclasses.replace(FAST, stall_timeout=0.3))
    data = bytes(range(256)) * 64  # 16 KiB
    wake, refused = threading.Event(), []
    calls = 0

    def read_range_into(path, start, end, into):
        nonlocal calls
        calls += 1
        if calls == 1:
            into.put(0, memoryview(data[:4096]))
            wake.wait(10)  # silent: the watchdog gives up on it
            try:
                into.put(4096, memoryview(b"!" * 4096))
            except Revoked as exc:
                refused.append(exc)
            return 0
        return into.copy(data[start:end])

    store._backend.read_range_into = read_range_into
    writes: list[tuple[int, int, str]] = []
    through = Through(memoryview(bytearray(4096)),
                      lambda offset, block: writes.append((offset, len(block), threading.current_thread().name)),
                      len(data))
    assert store.read_part("obj", 0, len(data), through) is not through  # the retry's own
    delivered = list(writes)
    wake.set()
    deadline = time.monotonic() + 5
    while not refused and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(refused) == 1 and writes == delivered  # refused, and nothing written after
    assert delivered[0][:2] == (0, 4096) and delivered[-1][:2] == (0, len(data))


def test_a_revoked_range_waits_for_a_write_under_way():
    entered, release = threading.Event(), threading.Event()
    done: list[str] = []

    def write(offset, block):
        entered.set()
        assert release.wait(10)
        done.append("write")

    through = Through(memoryview(bytearray(16)), write, 16)
    writer = threading.Thread(target=through.put, args=(0, memoryview(b"x" * 16)))
    writer.start()
    assert entered.wait(5)
    revoker = threading.Thread(target=lambda: (through.revoke(), done.append("revoked")))
    revoker.start()
    revoker.join(0.2)
    assert revoker.is_alive() and done == []  # still waiting for the write
    release.set()
    writer.join(5)
    revoker.join(5)
    assert done == ["write", "revoked"]
    with pytest.raises(Revoked, match="bytes from 0 of an attempt given up on"):
        through.put(0, memoryview(b"y" * 16))


def test_a_through_needs_a_buffer():
    with pytest.raises(ValueError, match="a Through needs a buffer of at least one byte"):
        Through(memoryview(b""), lambda *a: None, 10)


def test_two_retries_that_race_get_distinct_attempts_and_only_the_last_writes():
    """A retry abandoned while it waited for a write under way, and the retry after it:
    each has its own attempt number, so the earlier one's bytes are refused."""
    entered, release = threading.Event(), threading.Event()
    writes: list[int] = []

    def write(offset, block):
        if offset == 0:
            entered.set()
            assert release.wait(10)
        writes.append(offset)

    first = Through(memoryview(bytearray(8)), write, 64)
    writer = threading.Thread(target=first.put, args=(0, memoryview(b"x" * 8)))
    writer.start()
    assert entered.wait(5)
    retries: list[Through] = []
    racing = [threading.Thread(target=lambda: retries.append(first.retry())) for _ in range(2)]
    for thread in racing:
        thread.start()
    time.sleep(0.1)
    assert not retries  # both wait for the write under way
    release.set()
    for thread in (writer, *racing):
        thread.join(5)
    assert len(retries) == 2
    outcomes = []
    for attempt in retries:
        try:
            attempt.put(8, memoryview(b"y" * 8))
            outcomes.append("wrote")
        except Revoked:
            outcomes.append("refused")
    assert sorted(outcomes) == ["refused", "wrote"] and writes == [0, 8]


def test_writing_what_arrived_is_not_silence_of_the_store():
    """A block's write to a slow local disk takes longer than the stall timeout: the
    store call it belongs to is not cut off for it."""
    def slow_write(offset, block):
        time.sleep(0.6)

    def call() -> str:
        through = Through(memoryview(bytearray(4)), slow_write, 8)
        through.copy(b"abcdefgh")
        return "done"

    assert watched(call, 0.3) == "done"


def test_an_attempt_whose_bytes_are_no_longer_wanted_is_not_retried():
    store = Store("memory://revoked", retry=FAST)
    calls: list[int] = []

    def read_range_into(path, start, end, into):
        calls.append(start)
        raise Revoked("the download ended")

    store._backend.read_range_into = read_range_into
    with pytest.raises(Revoked, match="the download ended"):
        store.read_part("obj", 0, 10, Through(memoryview(bytearray(4)), lambda *a: None, 10))
    assert calls == [0]


def test_a_block_an_abandoned_attempt_still_receives_into_is_not_reused():
    """The engine's block buffer went to a part's first attempt, which stalled and was
    given up on (it may go on receiving into it): the part arrives through the retry,
    and that block never goes back to the pool."""
    store = Store("memory://blocks", retry=dataclasses.replace(FAST, stall_timeout=0.3))
    data = bytes(range(256)) * 1024  # 256 KiB: one part
    wake, given = threading.Event(), []
    calls = itertools.count()

    def read_range_into(path, start, end, into):
        if next(calls) == 0:
            given.append(into.buffer.obj)  # the engine's block
            wake.wait(10)  # silent: given up on
            return 0
        return into.copy(data[start:end])

    store._backend.read_range_into = read_range_into
    engine = PartEngine(parts=1, part_size=256 * 1024)
    engine.attach()
    place = FilePlacement(len(data))
    got = bytearray()
    try:
        engine.download(store, "obj", len(data), got.extend, into=place)
        assert bytes(got) == data and bytes(place.data) == data
        assert len(given) == 1 and all(block is not given[0] for block in engine._blocks)
    finally:
        wake.set()
        engine.detach()


@pytest.fixture(scope="module")
def faulty_s3():
    from tests import faulty_s3 as module

    # The client's own read timeout is far longer than the stall: only roxxel's cuts it off.
    with module.running("stalls", read_timeout=120) as running:
        yield running


@pytest.mark.parametrize("path", ["direct", "s3fs"])
def test_a_silent_s3_body_is_retried_after_the_configured_timeout(faulty_s3, tmp_path, monkeypatch, path):
    server, options = faulty_s3
    url = f"s3://stalls/{tmp_path.name}/ds"
    server.configure()
    write(url, 200, shard_bytes=64 * 1024, storage_options=options)
    if path == "s3fs":  # the streaming GET through aiohttp, watched piece by piece
        monkeypatch.setattr(s3_module, "open_direct", lambda *args: None)
    store = Store(url, options, retry=dataclasses.replace(FAST, stall_timeout=1.0))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        server.configure(rate=1.0, kinds=["stallbody"], methods=["GET"], stall_seconds=SERVER_STALL, limit=1)
        started = time.monotonic()
        check_all(ds, 200)
    assert server.counts()["injected"] == {"stallbody": 1}
    assert time.monotonic() - started < BOUND
