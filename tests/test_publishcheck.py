"""The writer's check that its store can publish safely, run while the writer works."""

from __future__ import annotations

import os
import threading

import pytest

from roxxel.errors import StorageError
from roxxel.publishcheck import PublishCheck


def test_a_check_in_the_background_never_makes_the_shard_boundary_wait():
    gate = threading.Event()

    def check() -> None:
        assert gate.wait(30)
        raise StorageError("does not enforce them")

    pending = PublishCheck(check, background=True)
    try:
        assert pending.raise_if_refused() is False  # not answered yet: no wait, no error
        gate.set()
        with pytest.raises(StorageError, match="does not enforce them"):
            pending.require()
        with pytest.raises(StorageError, match="does not enforce them"):
            pending.raise_if_refused()
    finally:
        gate.set()
        pending.close()


def test_a_check_that_costs_no_request_answers_at_once():
    with pytest.raises(StorageError, match="refused"):
        PublishCheck(lambda: (_ for _ in ()).throw(StorageError("refused")), background=False)
    done = PublishCheck(lambda: None, background=False)
    assert done.raise_if_refused() is True
    done.require()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork() is POSIX's")
def test_a_forked_child_runs_the_check_itself_instead_of_waiting_on_its_parent_s_thread():
    parent, gate = os.getpid(), threading.Event()
    ran_in: list[int] = []

    def check() -> None:
        ran_in.append(os.getpid())
        if os.getpid() == parent:
            assert gate.wait(30)

    pending = PublishCheck(check, background=True)
    pid = os.fork()
    if pid == 0:  # the child: the parent's check thread did not come along
        code = 1
        try:
            waiter = threading.Thread(target=pending.require, daemon=True)
            waiter.start()
            waiter.join(10)
            code = 5 if waiter.is_alive() else (0 if ran_in and ran_in[-1] == os.getpid() else 3)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    gate.set()
    pending.require()
    pending.close()
    assert os.waitstatus_to_exitcode(status) == 0
