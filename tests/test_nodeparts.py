"""The node's count of parts in flight (roxxel.read.nodeparts): processes of a node that
split its budget use what the others leave of it."""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading
import time

import numpy as np
import pytest

from roxxel.read import nodeparts, parts
from roxxel.read.nodeparts import NodeParts
from roxxel.read.parts import PartEngine
from tests.test_parts import KIB, FakeStore, download

_FORK = multiprocessing.get_context("fork")


def _hold_a_row(path: str, total: int, count: int, ready, done) -> None:
    """(In a child process.) Join the count at ``path``, say ``count`` parts are in
    flight, and keep the row until ``done`` is set."""
    node = NodeParts.join(total, path)
    assert node is not None
    node.publish(count)
    ready.set()
    done.wait(30)


@pytest.fixture
def other_process(tmp_path, monkeypatch):
    """Start another process holding a row of the count at ``tmp_path/count`` with the
    count of parts it is given; it ends when the test does (or when told)."""
    monkeypatch.setattr(nodeparts, "_FRESH_SECONDS", 0.0)
    monkeypatch.setattr(nodeparts, "_REAP_SECONDS", 0.0)
    children = []

    def start(count: int, total: int = 8):
        ready, done = _FORK.Event(), _FORK.Event()
        child = _FORK.Process(target=_hold_a_row, args=(str(tmp_path / "count"), total, count, ready, done))
        child.start()
        assert ready.wait(30), "the other process never joined"
        children.append((child, done))
        return child, done

    yield start
    for child, done in children:
        done.set()
        child.join(30)


def test_a_process_sees_the_others_counts_and_not_its_own_nor_a_dead_one_s(tmp_path, other_process):
    path = str(tmp_path / "count")
    me = NodeParts.join(8, path)
    assert me is not None and me.others() == 0
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    me.publish(3)
    child, done = other_process(5)
    assert me.others() == 5  # (its own 3 are not among them)
    done.set()
    child.join(30)
    assert me.others() == 0  # its row cleared: its lock could be taken


def test_a_count_out_of_range_is_taken_as_at_most_the_budget(tmp_path, other_process):
    me = NodeParts.join(8, str(tmp_path / "count"))
    assert me is not None
    other_process(2**31 - 1)
    other_process(-5)
    assert me.others() == 8


@pytest.mark.parametrize("kind", ["symlink", "shared", "directory"])
def test_a_file_that_is_not_this_user_s_own_leaves_the_process_to_its_share(tmp_path, kind):
    path = tmp_path / "count"
    if kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(b"")
        path.symlink_to(tmp_path / "elsewhere")
    elif kind == "shared":
        path.write_bytes(b"")
        path.chmod(0o666)
    else:
        path.mkdir()
    assert NodeParts.join(8, str(path)) is None


def test_a_full_dev_shm_leaves_the_process_to_its_share(tmp_path, monkeypatch):
    """The file's pages are allocated when it is joined: where there is no room, the
    join fails then (and the process keeps its share), not a later store to the map."""
    def full(fd, offset, length):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", full)
    assert NodeParts.join(8, str(tmp_path / "count")) is None


def test_an_engine_at_its_limit_takes_what_the_node_s_others_leave(tmp_path, other_process):
    """Its share is 2 of the node's 6: alone on the node it has up to 6 parts in flight;
    with another process at 3, up to 3; and never more than its share while the store
    throttles it."""
    path = str(tmp_path / "count")
    node = NodeParts.join(6, path)
    data = np.random.default_rng(5).bytes(24 * 64 * KIB)

    def peak() -> int:
        e = PartEngine(parts=2, part_size=64 * KIB, max_bytes=6 * 64 * KIB, node=node)
        e.attach()
        store = FakeStore({"a": data}, delay=0.02)
        try:
            assert download(e, store, "a") == data
        finally:
            e.detach()
        return store.peak

    assert peak() == 6
    child, done = other_process(3, total=6)
    assert peak() == 3
    done.set()
    child.join(30)
    e = PartEngine(parts=2, part_size=64 * KIB, node=node)
    with e._cond:
        assert e._slots() == 6
        e.concurrency.throttled(e._clock())
        assert e._slots() == e.limit == 2


def test_an_engine_publishes_its_parts_in_flight(tmp_path):
    node = NodeParts.join(8, str(tmp_path / "count"))
    e = PartEngine(parts=4, part_size=64 * KIB, node=node)
    e.attach()
    store = FakeStore({"a": bytes(8 * 64 * KIB)})
    store.gate = threading.Event()
    got = threading.Thread(target=download, args=(e, store, "a"))
    got.start()
    try:
        deadline = time.monotonic() + 10
        while store.in_flight < 8 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert node._rows[node.row].tolist() == [os.getpid(), 8]  # (its 4 and the node's 4 others left)
    finally:
        store.gate.set()
        got.join(10)
        e.detach()
    assert node._rows[node.row, 1] == 0
