"""The node's count of parts in flight (roxxel.read.nodeparts): processes of a node that
split its budget use what the others leave of it."""

from __future__ import annotations

import errno
import multiprocessing
import os
import re
import threading
import time

import numpy as np
import pytest

from roxxel.read import nodeparts, parts
from roxxel.read.nodeparts import NodeParts
from roxxel.read.parts import PartEngine
from tests.test_parts import KIB, FakeStore, download

_FORK = multiprocessing.get_context("fork")
_inherited: list[NodeParts] = []  # what a forked child has of its parent's (a test's)


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


def test_a_process_has_one_row_however_often_it_joins(tmp_path):
    path = str(tmp_path / "count")
    assert NodeParts.join(8, path) is NodeParts.join(8, path)


def test_a_count_out_of_range_is_taken_as_at_most_the_budget(tmp_path, other_process):
    me = NodeParts.join(8, str(tmp_path / "count"))
    assert me is not None
    other_process(2**31 - 1)
    other_process(-5)
    assert me.others() == 8


@pytest.mark.parametrize("kind", ["symlink", "hard link", "shared", "directory"])
def test_a_file_that_is_not_this_user_s_own_leaves_the_process_to_its_share(tmp_path, kind, caplog):
    path = tmp_path / "count"
    if kind == "hard link":
        (tmp_path / "elsewhere").write_bytes(b"precious")
        (tmp_path / "elsewhere").chmod(0o600)
        os.link(tmp_path / "elsewhere", path)
    elif kind == "symlink":
        (tmp_path / "elsewhere").write_bytes(b"")
        path.symlink_to(tmp_path / "elsewhere")
    elif kind == "shared":
        path.write_bytes(b"")
        path.chmod(0o666)
    else:
        path.mkdir()
    with caplog.at_level("WARNING", logger="roxxel.read.nodeparts"):
        assert NodeParts.join(8, str(path)) is None
    assert any(re.search(rf"{re.escape(str(path))}: no count of the node's parts in flight \(.*\): this process "
                         r"keeps its share of the node's budget", m) for m in caplog.messages), caplog.messages
    if kind == "hard link":
        assert (tmp_path / "elsewhere").read_bytes() == b"precious"


def test_the_count_is_in_dev_shm_unless_the_environment_says_where_or_off(monkeypatch, tmp_path):
    monkeypatch.delenv(nodeparts.ENV_NODE_COUNT, raising=False)
    assert nodeparts.node_parts_file() in (None, f"/dev/shm/roxxel-parts-v1-{os.getuid()}")
    monkeypatch.setenv(nodeparts.ENV_NODE_COUNT, str(tmp_path / "here"))
    assert nodeparts.node_parts_file() == str(tmp_path / "here")
    monkeypatch.setenv(nodeparts.ENV_NODE_COUNT, "off")
    assert nodeparts.node_parts_file() is None and NodeParts.join(8) is None


def test_the_process_s_engine_takes_part_in_the_node_s_count(monkeypatch, tmp_path):
    monkeypatch.setenv(nodeparts.ENV_NODE_COUNT, str(tmp_path / "count"))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(parts, "_ENGINE", None)
    e = parts.engine()
    assert e._node is not None and e._node.path == str(tmp_path / "count") and e._node.total == 32
    assert e.limit == 8 and e.max_bytes == 32 * parts.DEFAULT_PART_SIZE  # (its share; the node's when it borrows)
    monkeypatch.setattr(parts, "_ENGINE", None)
    monkeypatch.setenv(nodeparts.ENV_NODE_COUNT, "off")
    assert parts.engine()._node is None
    monkeypatch.setattr(parts, "_ENGINE", None)


def test_no_free_row_leaves_the_process_to_its_share(tmp_path, other_process, monkeypatch):
    monkeypatch.setattr(nodeparts, "ROWS", 2)
    other_process(1)
    other_process(1)
    assert NodeParts.join(8, str(tmp_path / "count")) is None


def _join_and_drop_the_inherited(path: str, row, ready, done) -> None:
    """(In a forked child.) Join, then let go of the NodeParts inherited from the parent,
    as a worker's garbage collector would (its map holds a descriptor of the file)."""
    import gc

    node = NodeParts.join(8, path)
    row.value = node.row
    _inherited.clear()
    gc.collect()
    ready.set()
    done.wait(30)


def test_a_forked_child_keeps_its_row_when_what_it_inherited_is_freed(tmp_path):
    path = str(tmp_path / "count")
    parent = NodeParts.join(8, path)
    _inherited.append(parent)  # (only the child lets go of it)
    row, ready, done = _FORK.Value("i", -1), _FORK.Event(), _FORK.Event()
    child = _FORK.Process(target=_join_and_drop_the_inherited, args=(path, row, ready, done))
    child.start()
    try:
        assert ready.wait(30)
        assert row.value not in (-1, parent.row)
        assert not nodeparts._try_lock(parent._fd, row.value)  # the child still holds its row
    finally:
        done.set()
        child.join(30)
    assert nodeparts._try_lock(parent._fd, row.value)  # (and lets go when it ends)
    nodeparts._unlock(parent._fd, row.value)
    _inherited.clear()


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


def test_a_claim_past_the_budget_is_taken_back(tmp_path, other_process):
    me = NodeParts.join(8, str(tmp_path / "count"))
    me.publish(2)
    other_process(5)
    assert not me.claim(4)  # 4 + 5 > 8: the count stays at 2
    assert me._rows[me.row, 1] == 2
    assert me.claim(3) and me._rows[me.row, 1] == 3


def test_a_get_beside_the_engine_is_counted_while_in_flight(tmp_path):
    node = NodeParts.join(8, str(tmp_path / "count"))
    e = PartEngine(parts=4, part_size=64 * KIB, node=node)
    with e.outside(64 * KIB, FakeStore({})):
        assert node._rows[node.row, 1] == 1
    assert node._rows[node.row, 1] == 0


def test_a_trace_shows_the_node_s_other_processes_parts(tmp_path, other_process):
    import json

    from roxxel import trace

    node = NodeParts.join(8, str(tmp_path / "count"))
    other_process(3)
    trace.start(tmp_path / "run.json")
    try:
        e = PartEngine(parts=4, part_size=64 * KIB, node=node)
        e.attach()
        try:
            download(e, FakeStore({"a": bytes(4 * 64 * KIB)}), "a")
        finally:
            e.detach()
    finally:
        path = trace.stop()
    events = json.loads(open(path).read())["traceEvents"]
    counters = [ev["args"] for ev in events if ev.get("ph") == "C" and ev.get("name") == "downloads"]
    assert counters and all(args["node_others"] == 3 for args in counters)
