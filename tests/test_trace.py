"""roxxel.trace: Chrome/Perfetto traces, off by default, one file per process, merged."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import roxxel
from roxxel import trace
from roxxel.cli import main

PHASE_FIELDS = {
    "X": {"name", "cat", "ph", "ts", "dur", "pid", "tid"},
    "i": {"name", "cat", "ph", "ts", "s", "pid", "tid"},
    "C": {"name", "ph", "ts", "pid", "args"},
    "M": {"name", "ph", "pid", "args"},
}


@pytest.fixture(autouse=True)
def no_tracer(monkeypatch):
    """Every test starts and ends with tracing off and no ROXXEL_TRACE."""
    monkeypatch.delenv(trace.ENV, raising=False)
    monkeypatch.setattr(trace, "_tracer", None)
    yield
    monkeypatch.setattr(trace, "_tracer", None)


def load(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    assert set(document) >= {"traceEvents"}
    events = document["traceEvents"]
    for event in events:
        assert PHASE_FIELDS[event["ph"]] <= set(event), event
        assert isinstance(event["pid"], int)
        if "ts" in event:
            assert isinstance(event["ts"], (int, float)) and event["ts"] > 1.5e15  # wall clock, in µs
    return events


def test_events_are_written_in_trace_event_format(tmp_path):
    path = tmp_path / "run.json"
    t = trace.start(path)
    assert trace.current() is t
    t.label(rank=3, worker=1)
    with t.span("get part", "download", shard=7) as span:
        span.args["bytes"] = np.int64(8 << 20)  # NumPy scalars become JSON numbers
    start = t.now()
    t.complete("record", "consume", start, start + 2_500, index=5)
    t.instant("stall", "download", shard=7, name="an arg may be called name")
    t.counter("in flight", bytes=1024, parts=2)
    assert trace.stop() == str(path.with_name("run.json.%d.json" % os.getpid()))  # rank 3 is no main process
    assert trace.current() is None

    events = load(path.with_name(f"run.json.{os.getpid()}.json"))
    by_phase = {}
    for event in events:
        by_phase.setdefault(event["ph"], []).append(event)
    span, record = by_phase["X"]
    assert (span["name"], span["cat"], span["args"]) == ("get part", "download", {"shard": 7, "bytes": 8 << 20})
    assert record["dur"] == 2.5 and record["args"] == {"index": 5}
    assert by_phase["i"][0]["s"] == "t" and by_phase["i"][0]["name"] == "stall"
    assert by_phase["C"][0]["args"] == {"bytes": 1024, "parts": 2}
    names = {e["name"]: e["args"] for e in by_phase["M"]}
    assert names["process_name"]["name"] == f"roxxel rank 3 worker 1 (pid {os.getpid()})"
    assert names["process_labels"]["labels"] == "rank 3, worker 1"
    assert span["ts"] <= record["ts"] <= by_phase["i"][0]["ts"]


def test_a_span_that_raises_is_recorded_with_the_error_type(tmp_path):
    t = trace.start(tmp_path / "t.json")
    with pytest.raises(KeyError), t.span("read", "consume"):
        raise KeyError("s3://bucket/secret?X-Amz-Signature=abc")
    [event] = [e for e in t.to_json()["traceEvents"] if e["ph"] == "X"]
    assert event["args"] == {"error": "KeyError"}  # the type only: a message may hold a URL


def test_off_by_default_and_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert trace.current() is None
    assert trace.configure() is None  # no path, no ROXXEL_TRACE
    assert trace.stop() is None
    url = str(tmp_path / "ds")
    with roxxel.Writer(url) as w:
        w.extend([b"a", b"bc"])
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == [b"a", b"bc"]
    assert trace.current() is None
    assert not list(tmp_path.glob("*.json"))


def test_the_environment_variable_is_read_at_open_not_at_import(tmp_path):
    path = tmp_path / "env.json"
    code = (
        "import roxxel, roxxel.trace as t, sys\n"
        "assert t.current() is None, 'read at import'\n"
        "tracer = t.configure()\n"  # what roxxel.open calls
        "assert tracer is not None and tracer.template == sys.argv[1]\n"
        "tracer.instant('opened')\n"
    )
    env = {**os.environ, trace.ENV: str(path)}
    subprocess.run([sys.executable, "-c", code, str(path)], env=env, check=True, timeout=120)
    assert [e["name"] for e in load(path) if e["ph"] == "i"] == ["opened"]  # written at exit


def test_open_reads_the_environment_variable(tmp_path, monkeypatch):
    url = str(tmp_path / "ds")
    with roxxel.Writer(url) as w:
        w.append(b"x")
    monkeypatch.setenv(trace.ENV, str(tmp_path / "open.json"))
    assert trace.current() is None
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")):
        pass
    assert trace.current().template == str(tmp_path / "open.json")


def test_an_explicit_path_wins_and_a_second_one_keeps_the_first(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv(trace.ENV, str(tmp_path / "env.json"))
    first = trace.configure(tmp_path / "arg.json")
    assert first.template == str(tmp_path / "arg.json")
    assert trace.configure(tmp_path / "other.json") is first  # one file per process
    assert "already tracing" in caplog.text


def test_the_bound_drops_and_counts(tmp_path):
    path = tmp_path / "bound.json"
    t = trace.start(path, max_events=10)
    for i in range(25):
        t.instant("tick", i=i)
    trace.stop()
    with open(path, encoding="utf-8") as f:
        document = json.load(f)
    ticks = [e for e in document["traceEvents"] if e["name"] == "tick"]
    assert [e["args"]["i"] for e in ticks] == list(range(10))
    assert document["otherData"]["roxxel_trace"]["dropped"] == 15
    assert any("15 events dropped" in e["name"] for e in document["traceEvents"])


def test_the_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "atomic.json"
    t = trace.start(path)
    t.instant("first")
    t.flush()
    before = path.read_bytes()
    t.instant("second")
    real_replace = os.replace
    seen = []

    def replace(src, dst):
        # at the rename: the new file is whole, and the old one is still in place
        seen.append([e["name"] for e in load(src) if e["ph"] == "i"])
        assert open(dst, "rb").read() == before
        raise OSError("disk full")

    monkeypatch.setattr(trace.os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        t.flush()
    assert seen == [["first", "second"]]
    assert path.read_bytes() == before  # the old file, whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["atomic.json"]  # no temp file left
    monkeypatch.setattr(trace.os, "replace", real_replace)
    t.flush()
    assert [e["name"] for e in load(path) if e["ph"] == "i"] == ["first", "second"]


def test_threads_get_their_own_tids_and_names(tmp_path):
    t = trace.start(tmp_path / "threads.json")
    barrier = threading.Barrier(4)

    def work():
        barrier.wait()  # all four alive at once: distinct native ids
        with t.span("work", "test"):
            pass

    threads = [threading.Thread(target=work, name=f"roxxel-download-{i}") for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    events = t.to_json()["traceEvents"]
    tids = {e["tid"] for e in events if e["ph"] == "X"}
    assert len(tids) == 4
    names = {e["tid"]: e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert sorted(names[tid] for tid in tids) == [f"roxxel-download-{i}" for i in range(4)]


def test_path_substitution(tmp_path):
    t = trace.Tracer(str(tmp_path / "trace-{rank}-{worker}-{pid}.json"))
    assert t.output_path() == str(tmp_path / f"trace-0-main-{os.getpid()}.json")
    t.label(rank=2, worker=5)
    assert t.output_path() == str(tmp_path / f"trace-2-5-{os.getpid()}.json")
    plain = trace.Tracer(str(tmp_path / "plain.json"))
    assert plain.output_path() == str(tmp_path / "plain.json")
    plain.label(worker=0)
    assert plain.output_path() == str(tmp_path / f"plain.json.{os.getpid()}.json")


def _child_records(queue) -> None:
    t = trace.current()
    assert t is not None  # inherited through the fork
    t.label(worker=0)
    with t.span("child work", "test"):
        pass
    queue.put(os.getpid())


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
def test_a_forked_worker_writes_its_own_file_and_merge_shows_both(tmp_path, capsys):
    path = tmp_path / "job.json"
    t = trace.start(path)
    with t.span("parent work", "test"):
        pass
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_child_records, args=(queue,))
    child.start()
    child_pid = queue.get(timeout=60)
    child.join(timeout=60)
    assert child.exitcode == 0
    trace.stop()
    child_file = tmp_path / f"job.json.{child_pid}.json"
    child_events = load(child_file)  # written when the multiprocessing child ended
    assert [e["name"] for e in child_events if e["ph"] == "X"] == ["child work"]  # not the parent's
    assert [e["name"] for e in load(path) if e["ph"] == "X"] == ["parent work"]

    out = tmp_path / "merged.json"
    assert main(["trace-merge", str(out), str(path), str(child_file)]) == 0
    assert "2 files" in capsys.readouterr().out
    merged = load(out)
    spans = {e["name"]: e for e in merged if e["ph"] == "X"}
    assert {name: e["pid"] for name, e in spans.items()} == {"parent work": os.getpid(), "child work": child_pid}
    parent_span, child_span = spans["parent work"], spans["child work"]
    assert child_span["ts"] >= parent_span["ts"] + parent_span["dur"]  # one clock: the child ran after
    names = {e["args"]["name"] for e in merged if e["name"] == "process_name"}
    assert names == {f"roxxel (pid {os.getpid()})", f"roxxel worker 0 (pid {child_pid})"}


def test_merge_renumbers_pids_that_two_files_share(tmp_path):
    files = []
    for node in range(2):  # the same pid on two nodes
        t = trace.Tracer(str(tmp_path / f"node{node}.json"))
        t.label(rank=node)
        t.instant("step", node=node)
        files.append(t.flush())
    out = tmp_path / "all.json"
    assert trace.merge(out, files) == {"files": 2, "events": sum(len(load(f)) for f in files)}
    steps = [e for e in load(out) if e["name"] == "step"]
    assert len({e["pid"] for e in steps}) == 2
    assert sorted(e["args"]["node"] for e in steps) == [0, 1]


def test_merge_refuses_a_file_that_is_no_trace(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"events": 1}')
    assert main(["trace-merge", str(tmp_path / "out.json"), str(bad)]) == 1
    assert "is not a trace" in capsys.readouterr().err
    assert not (tmp_path / "out.json").exists()


def test_threads_recording_at_once_keep_the_bound_exactly(tmp_path):
    t = trace.start(tmp_path / "busy.json", max_events=2500)

    def work():
        for i in range(1000):
            t.counter("n", i=i)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    document = t.to_json()
    assert sum(e["ph"] == "C" for e in document["traceEvents"]) == 2500
    assert document["otherData"]["roxxel_trace"]["dropped"] == 1500


def test_close_writes_only_what_is_new(tmp_path):
    path = tmp_path / "once.json"
    t = trace.Tracer(str(path))
    t.close()
    assert not path.exists()  # nothing recorded, no file
    t.instant("a")
    t.close()
    inode = path.stat().st_ino
    t.close()  # atexit and multiprocessing's finalizer may both call it
    assert path.stat().st_ino == inode  # not written again
    t.instant("b")
    t.close()
    assert path.stat().st_ino != inode
    assert [e["name"] for e in load(path) if e["ph"] == "i"] == ["a", "b"]
