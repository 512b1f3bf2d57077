"""roxxel.workers.WorkerPool: the one pool the downloader, the writer's uploads and the
operations' jobs run on (named threads, a stop event, errors through futures)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from roxxel.workers import Cancelled, WorkerPool


def alive(prefix: str) -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith(prefix)]


def test_threads_start_lazily_are_named_and_end_on_close():
    pool = WorkerPool(2, "test-pool")
    assert alive("test-pool") == []
    futures = [pool.submit(lambda i=i: (i, threading.current_thread().name)) for i in range(5)]
    results = [f.result() for f in futures]
    assert [i for i, _ in results] == list(range(5))
    assert {name for _, name in results} <= {"test-pool-0", "test-pool-1"}
    pool.close()
    pool.close()  # idempotent
    assert alive("test-pool") == []
    with pytest.raises(RuntimeError, match="test-pool: the pool is closed"):
        pool.submit(lambda: None)


def test_a_job_error_reaches_the_caller_as_the_original_exception_with_its_cause():
    def job():
        try:
            raise KeyError("inner")
        except KeyError as exc:
            raise OSError("outer") from exc

    with WorkerPool(1, "test-errors") as pool:
        with pytest.raises(OSError, match="outer") as info:
            pool.submit(job).result()
    assert isinstance(info.value.__cause__, KeyError)
    assert any(frame.name == "job" for frame in info.traceback)


def test_run_returns_results_in_item_order():
    with WorkerPool(3, "test-run") as pool:
        assert pool.run(lambda x: x * x, range(10)) == [x * x for x in range(10)]
        assert pool.run(str, []) == []


def test_run_raises_the_first_failure_at_once_and_stops_the_other_jobs():
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        if i == 1:
            raise ValueError("job 1 failed")
        while True:  # a long job, cut short between chunks
            pool.check()
            time.sleep(0.01)

    pool = WorkerPool(2, "test-fail")
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="job 1 failed"):
        pool.run(job, range(100))  # not held up by job 0, which never ends by itself
    assert time.monotonic() - t0 < 5
    assert pool.stopping
    assert {0, 1} <= set(started) and len(started) < 10  # the queued jobs were cancelled
    assert alive("test-fail") == []  # the running job saw check() raise, and ended


def test_close_stops_a_running_job_between_chunks_and_gives_up_on_a_stalled_one():
    pool = WorkerPool(2, "test-close")
    release = threading.Event()
    chunked = pool.submit(lambda: [pool.check() or time.sleep(0.01) for _ in iter(int, 1)])
    stalled = pool.submit(lambda: release.wait(30))
    time.sleep(0.1)
    t0 = time.monotonic()
    pool.close(timeout=0.5)
    assert time.monotonic() - t0 < 2
    with pytest.raises(Cancelled):
        chunked.result(5)
    assert len(alive("test-close")) == 1  # the stalled one, left to finish on its own: a daemon
    release.set()
    assert stalled.result(5) is True


def test_threads_end_when_the_main_thread_has_ended_without_close():
    script = textwrap.dedent(
        """
        from roxxel.workers import WorkerPool
        pool = WorkerPool(2, "forgotten")
        assert pool.submit(lambda: 7).result() == 7
        # no close(): interpreter exit must not hang
        """
    )
    t0 = time.monotonic()
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30)
    assert time.monotonic() - t0 < 20


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_afresh_and_a_closed_pool_stays_closed():
    # In a fresh interpreter: the test process may hold threads (JAX's) that make fork unsafe.
    script = textwrap.dedent(
        """
        import os
        from roxxel.workers import WorkerPool
        open_pool, closed_pool = WorkerPool(1, "p"), WorkerPool(1, "q")
        assert open_pool.submit(lambda: 1).result() == 1
        closed_pool.close()
        pid = os.fork()
        if pid == 0:  # the child: the parent's threads did not come along
            ok = open_pool.forked and open_pool.submit(lambda: 2).result(10) == 2
            try:
                closed_pool.submit(lambda: 3)
                ok = False
            except RuntimeError:
                pass
            open_pool.close()
            os._exit(0 if ok else 1)
        _, status = os.waitpid(pid, 0)
        open_pool.close()
        raise SystemExit(os.waitstatus_to_exitcode(status))
        """
    )
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)


def test_a_pool_s_threads_are_started_by_the_process_s_starting_thread_not_the_submitter(monkeypatch):
    """A thread's start waits for the new thread to take the GIL (milliseconds each while
    downloads run): a submitter starts none of a pool's threads, at most the process's
    starting thread (which ends once it has nothing left to start)."""
    starters: list[tuple[str, str]] = []  # (who started it, which)
    start = threading.Thread.start

    def recorded(self):
        starters.append((threading.current_thread().name, self.name))
        start(self)

    monkeypatch.setattr(threading.Thread, "start", recorded)
    pool = WorkerPool(4, name="roxxel-test-burst")
    together = threading.Barrier(5)
    try:
        futures = [pool.submit(lambda: together.wait(10)) for _ in range(4)]
        together.wait(10)  # (all four run at once: four threads)
        for future in futures:
            future.result(10)
        ours = [by for by, name in starters if name.startswith("roxxel-test-burst")]
        assert ours == ["roxxel-starter"] * 4
        assert {name for by, name in starters if by == threading.current_thread().name} <= {"roxxel-starter"}
        assert sorted(alive("roxxel-test-burst")) == [f"roxxel-test-burst-{i}" for i in range(4)]
    finally:
        pool.close()
    assert alive("roxxel-test-burst") == []


def test_close_waits_for_threads_being_started():
    """A pool closed while its threads are being started ends with none of them alive."""
    for i in range(20):
        pool = WorkerPool(8, name=f"roxxel-test-close-{i}")
        for _ in range(8):
            pool.submit(lambda: None)
        pool.close()
        assert alive(f"roxxel-test-close-{i}-") == []


def test_a_job_no_thread_can_run_fails_with_the_reason_instead_of_waiting_forever(monkeypatch):
    """Where no thread can be started (a process limit; interpreter shutdown), the jobs
    queued fail, naming why, rather than waiting for a thread that never comes."""
    start = threading.Thread.start

    def refused(self):
        if self.name.startswith("roxxel-test-refused"):
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refused)
    pool = WorkerPool(2, name="roxxel-test-refused")
    try:
        future = pool.submit(lambda: 1)
        with pytest.raises(RuntimeError, match="roxxel-test-refused: no thread to run the job: can't start new thread"):
            future.result(10)
    finally:
        pool.close()


def test_the_starting_thread_ends_once_it_has_nothing_left_to_start():
    pool = WorkerPool(2, name="roxxel-test-idle")
    try:
        assert pool.submit(lambda: 5).result(10) == 5
        deadline = time.monotonic() + 10
        while alive("roxxel-starter") and time.monotonic() < deadline:
            time.sleep(0.01)
        assert alive("roxxel-starter") == []
        assert pool.submit(lambda: 6).result(10) == 6  # (and is made again when needed)
    finally:
        pool.close()
