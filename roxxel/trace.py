"""Where the time goes: a process-wide tracer writing Chrome/Perfetto traces.

Off by default, and then it costs one function call per instrumented place::

    from roxxel import trace

    if (t := trace.current()) is not None:
        with t.span("get part", "download", shard=k, offset=start, bytes=n):
            ...

Turn it on with ``roxxel.open(url, trace="run.json")`` or the environment variable
``ROXXEL_TRACE=run.json``, which is read when a dataset is opened (:func:`configure`),
never when roxxel is imported. Open the file in https://ui.perfetto.dev or
``chrome://tracing``. Each process (every rank, every DataLoader worker) writes a file
of its own: put ``{pid}``, ``{rank}`` or ``{worker}`` in the path
(``trace-{rank}-{worker}.json``), or leave them out and the main process writes the
path itself while every other process writes ``<path>.<pid>.json``. Merge them into one
view with ``roxxel trace-merge all.json run.json*`` (:func:`merge`). Timestamps are wall
clock microseconds, so the processes of a node (and of nodes with synchronised clocks)
line up.

The API, for the code that records (all of it thread-safe):

- :func:`current` -> the :class:`Tracer` or None (tracing off);
- :func:`configure` (``path=None``): called where a dataset is opened; ``path`` or
  ``$ROXXEL_TRACE`` starts tracing; :func:`start` / :func:`stop` do it directly;
- ``t.span(name, cat, **args)``: a context manager recording one complete ("X") event on
  the calling thread; ``args`` may be added to inside (``with ... as s: s.args["n"] = 3``);
- ``t.complete(name, cat, start, end, **args)``: a span measured elsewhere, ``start`` and
  ``end`` being :func:`time.perf_counter_ns` values (``t.now()``);
- ``t.instant(name, cat, **args)``: a point in time ("i"), for instance a stall noticed;
- ``t.counter(name, **values)``: a counter track ("C"), e.g. ``bytes_in_flight=...``;
- ``t.label(rank=..., worker=...)``: names this process in the view ("M" metadata);
- ``t.flush()`` writes everything recorded so far (atomically, temp file + rename);
  the file is also written at interpreter exit and when a multiprocessing child ends.

Events are buffered in memory, at most ``max_events`` (default 1,000,000, about 150 MB):
later ones are dropped and counted (the count is in the file's ``otherData`` and shown
as an instant event at the end). Recording one costs about a microsecond or two, and
writing a million a few seconds: trace parts, blocks of records and waits, not every
record.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

__all__ = [
    "ENV",
    "MAX_EVENTS",
    "Span",
    "Tracer",
    "configure",
    "current",
    "merge",
    "start",
    "stop",
    "write_atomically",
]

log = logging.getLogger(__name__)

#: The environment variable naming the trace file; read by :func:`configure`.
ENV = "ROXXEL_TRACE"
#: Events kept in memory per process; more are dropped (and counted).
MAX_EVENTS = 1_000_000

# An event as buffered: (phase, name, category, start ns, duration ns, tid, args, scope).
# Tuples, not dicts: a million of them must fit in memory.
_Event = tuple[str, str, str, int, int, int, "dict[str, Any] | None", str]


class Span:
    """One complete event being measured; ``args`` may be added to until it ends."""

    __slots__ = ("_tracer", "name", "cat", "args", "start")

    def __init__(self, tracer: Tracer, name: str, cat: str, args: dict[str, Any]) -> None:
        self._tracer, self.name, self.cat, self.args = tracer, name, cat, args
        self.start = 0

    def __enter__(self) -> Span:
        self.start = time.perf_counter_ns()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: Any) -> None:
        end = time.perf_counter_ns()
        if exc_type is not None:
            self.args["error"] = exc_type.__name__  # the type only: messages may hold URLs
        tracer = self._tracer
        tracer._add(("X", self.name, self.cat, self.start, end - self.start, tracer._tid(), self.args or None, ""))


class Tracer:
    """The events of one process, buffered, written to one Trace Event Format file.

    ``path`` may hold ``{pid}``, ``{rank}`` and ``{worker}``, filled in when it is
    written (see :meth:`output_path`). Use :func:`start`/:func:`current` rather than
    constructing one: there is one tracer per process.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_events: int = MAX_EVENTS,
                 _offset: int | None = None) -> None:
        if max_events < 0:
            raise ValueError(f"max_events must be >= 0, got {max_events}")
        self.template = os.fspath(path)
        self.max_events = max_events
        self.pid = os.getpid()
        self.rank: int | None = None
        self.worker: int | None = None
        self.dropped = 0
        self._events: list[_Event] = []
        self._threads: dict[int, str] = {}
        self._local = threading.local()
        self._lock = threading.Lock()
        # perf_counter_ns to wall-clock ns: one offset per process, so processes line up
        self._wall_minus_perf = time.time_ns() - time.perf_counter_ns() if _offset is None else _offset
        self._exit_hooks = False
        self._written: tuple[int, int] | None = None  # (events, dropped) in the file last written

    # -- recording ------------------------------------------------------------------

    @staticmethod
    def now() -> int:
        """The clock of :meth:`complete`: :func:`time.perf_counter_ns`."""
        return time.perf_counter_ns()

    def span(self, name: str, cat: str = "roxxel", /, **args: Any) -> Span:
        """A context manager recording ``name`` from entry to exit on this thread."""
        return Span(self, name, cat, args)

    def complete(self, name: str, cat: str, start: int, end: int, /, **args: Any) -> None:
        """A span measured elsewhere: ``start``/``end`` are ``perf_counter_ns`` values."""
        self._add(("X", name, cat, start, max(0, end - start), self._tid(), args or None, ""))

    def instant(self, name: str, cat: str = "roxxel", /, *, scope: str = "t", **args: Any) -> None:
        """A point in time; ``scope`` "t" (thread), "p" (process) or "g" (global)."""
        if scope not in ("t", "p", "g"):
            raise ValueError(f"scope must be 't', 'p' or 'g', got {scope!r}")
        self._add(("i", name, cat, time.perf_counter_ns(), 0, self._tid(), args or None, scope))

    def counter(self, name: str, /, **values: float) -> None:
        """Values of a counter track named ``name`` from now on (one series per key)."""
        self._add(("C", name, "counter", time.perf_counter_ns(), 0, self._tid(), values, ""))

    def label(self, *, rank: int | None = None, worker: int | None = None) -> None:
        """Name this process in the view by its rank and DataLoader worker."""
        with self._lock:
            if rank is not None:
                self.rank = int(rank)
            if worker is not None:
                self.worker = int(worker)

    def _tid(self) -> int:
        try:
            return self._local.tid  # type: ignore[no-any-return]
        except AttributeError:
            tid = threading.get_native_id()
            self._local.tid = tid
            with self._lock:
                self._threads[tid] = threading.current_thread().name
            return tid

    def _add(self, event: _Event) -> None:
        with self._lock:
            if not self._exit_hooks:
                self._register_exit()
            if len(self._events) < self.max_events:
                self._events.append(event)
            else:
                self.dropped += 1

    def _register_exit(self) -> None:
        # Here, at the first event, not at start: a multiprocessing child clears the
        # finalizers it inherits after the fork, and does not run atexit handlers.
        self._exit_hooks = True
        atexit.register(self.close)
        mp_util = sys.modules.get("multiprocessing.util")
        if mp_util is not None:
            mp_util.Finalize(None, self.close, exitpriority=100)

    # -- writing ----------------------------------------------------------------------

    def output_path(self) -> str:
        """The file this process writes: the template with ``{pid}``, ``{rank}`` and
        ``{worker}`` filled in ("main" for a process that is no worker); without them,
        the path itself for the main process and ``<path>.<pid>.json`` for others."""
        worker = "main" if self.worker is None else str(self.worker)
        rank = self.rank if self.rank is not None else _env_rank()
        fields = {"pid": str(self.pid), "rank": "0" if rank is None else str(rank), "worker": worker}
        if any("{" + key + "}" in self.template for key in fields):
            path = self.template
            for key, value in fields.items():
                path = path.replace("{" + key + "}", value)
            return path
        if self.worker is None and rank in (None, 0) and not _in_child():
            return self.template
        return f"{self.template}.{self.pid}.json"

    def to_json(self) -> dict[str, Any]:
        """The trace so far as a Trace Event Format object."""
        lines, other = self._snapshot()
        return {"traceEvents": [json.loads(line) for line in lines], "displayTimeUnit": "ms", "otherData": other}

    def flush(self) -> str:
        """Write everything recorded so far to :meth:`output_path`, atomically (a temp
        file renamed into place); returns the path. Recording goes on."""
        path = self.output_path()
        lines, other = self._snapshot()
        write_atomically(path, lines, other)
        counts = other["roxxel_trace"]
        self._written = (counts["events"], counts["dropped"])
        return path

    def _snapshot(self) -> tuple[Iterator[str], dict[str, Any]]:
        """The events recorded so far as JSON texts (made one by one: a million dicts
        would not fit) and the file's ``otherData``."""
        with self._lock:
            events, threads, dropped = list(self._events), dict(self._threads), self.dropped
            rank, worker = self.rank, self.worker
        other = {"roxxel_trace": {"pid": self.pid, "rank": rank, "worker": worker, "host": socket.gethostname(),
                                  "events": len(events), "dropped": dropped, "max_events": self.max_events}}
        return self._lines(events, threads, dropped, rank, worker), other

    def _lines(self, events: list[_Event], threads: dict[int, str], dropped: int,
               rank: int | None, worker: int | None) -> Iterator[str]:
        offset, pid = self._wall_minus_perf, self.pid
        metadata: list[tuple[str, int, dict[str, Any]]] = [
            ("process_name", 0, {"name": _process_name(rank, worker, pid)}),
            ("process_sort_index", 0, {"sort_index": (rank or 0) * 1000 + (0 if worker is None else worker + 1)}),
        ]
        labels = [f"{k} {v}" for k, v in (("rank", rank), ("worker", worker)) if v is not None]
        if labels:
            metadata.append(("process_labels", 0, {"labels": ", ".join(labels)}))
        metadata.extend(("thread_name", tid, {"name": name}) for tid, name in threads.items())
        for name, tid, args in metadata:
            yield _dumps({"ph": "M", "name": name, "pid": pid, "tid": tid, "args": args})
        # Written by hand, with each name encoded once: json.dumps of a dict per event
        # would make writing a million events take many seconds at exit.
        encoded: dict[str, str] = {}
        for phase, name, cat, start, dur, tid, args, scope in events:
            ns = start + offset
            text = (f'{{"ph":"{phase}","name":{encoded.get(name) or encoded.setdefault(name, _dumps(name))},'
                    f'"cat":{encoded.get(cat) or encoded.setdefault(cat, _dumps(cat))},"pid":{pid},"tid":{tid},'
                    f'"ts":{ns // 1000}.{ns % 1000:03d}')
            if phase == "X":
                text += f',"dur":{dur // 1000}.{dur % 1000:03d}'
            elif phase == "i":
                text += f',"s":"{scope}"'
            if args:
                text += ',"args":{' + ",".join(
                    f"{encoded.get(k) or encoded.setdefault(k, _dumps(k))}:{v if type(v) is int else _dumps(v)}"
                    for k, v in args.items()
                ) + "}"
            yield text + "}"
        if dropped:
            yield _dumps({"ph": "i", "name": f"trace full: {dropped} events dropped", "cat": "trace", "pid": pid,
                          "tid": 0, "s": "p", "ts": (time.perf_counter_ns() + offset) / 1000})

    def empty(self) -> bool:
        """Whether nothing was recorded (nor dropped)."""
        with self._lock:
            return not self._events and not self.dropped

    def close(self) -> None:
        """Write the file (if anything was recorded); idempotent, never raises."""
        if os.getpid() != self.pid:  # an atexit handler inherited by os.fork()
            return
        with self._lock:
            current = (len(self._events), self.dropped)
        if current == (0, 0) or current == self._written:  # nothing, or nothing new
            return
        try:
            path = self.flush()
        except Exception:  # noqa: BLE001 - at exit: a trace must never fail the job
            log.warning("could not write the roxxel trace %s", self.template, exc_info=True)
        else:
            log.debug("roxxel trace written to %s", path)

    def _forked(self) -> Tracer:
        """A tracer for a forked child: same path, clock and labels, no events."""
        child = Tracer(self.template, max_events=self.max_events, _offset=self._wall_minus_perf)
        child.rank, child.worker = self.rank, self.worker
        return child


def _process_name(rank: int | None, worker: int | None, pid: int) -> str:
    parts = ["roxxel"]
    if rank is not None:
        parts.append(f"rank {rank}")
    if worker is not None:
        parts.append(f"worker {worker}")
    return " ".join(parts) + f" (pid {pid})"


def _jsonable(value: Any) -> Any:
    """A value json cannot encode as itself: a NumPy scalar's Python value, else its str."""
    if hasattr(value, "item"):  # NumPy scalars
        return value.item()
    return str(value)


_ENCODER = json.JSONEncoder(separators=(",", ":"), default=_jsonable)  # one: made per call, it is slow
_dumps = _ENCODER.encode


def _env_rank() -> int | None:
    raw = os.environ.get("RANK")
    try:
        return int(raw) if raw else None
    except ValueError:
        return None


def _in_child() -> bool:
    mp = sys.modules.get("multiprocessing")
    return mp is not None and mp.parent_process() is not None


def write_atomically(path: str, events: Iterable[str], other: Any) -> None:
    """A trace of ``events`` (each one JSON text) and ``otherData`` at ``path``, written
    to a temp file in the same directory and renamed into place: a reader sees a whole
    file or none."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write('{"traceEvents":[\n')
            for n, event in enumerate(events):
                if n:
                    f.write(",\n")
                f.write(event)
            f.write('\n],"displayTimeUnit":"ms","otherData":')
            f.write(_dumps(other))
            f.write("}\n")
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except FileNotFoundError:
            pass
        raise


# -- the process-wide tracer ------------------------------------------------------------

_tracer: Tracer | None = None
_state_lock = threading.Lock()


def current() -> Tracer | None:
    """The process's tracer, or None when tracing is off (the default)."""
    return _tracer


def start(path: str | os.PathLike[str], *, max_events: int = MAX_EVENTS) -> Tracer:
    """Turn tracing on for this process, writing to ``path``. Tracing already on keeps
    its tracer (and its path): one file per process."""
    global _tracer
    with _state_lock:
        if _tracer is None:
            _tracer = Tracer(path, max_events=max_events)
        elif _tracer.template != os.fspath(path):
            log.warning("roxxel is already tracing to %s; not also to %s", _tracer.template, os.fspath(path))
        return _tracer


def configure(path: str | os.PathLike[str] | None = None) -> Tracer | None:
    """Where a dataset is opened: start tracing to ``path``, or to ``$ROXXEL_TRACE`` when
    ``path`` is None and the variable is set (and not empty); returns :func:`current`."""
    chosen = os.fspath(path) if path is not None else os.environ.get(ENV, "")
    if chosen:
        return start(chosen)
    return _tracer


def stop() -> str | None:
    """Write the trace and turn tracing off; the path written, or None (nothing was on
    or recorded)."""
    global _tracer
    with _state_lock:
        tracer, _tracer = _tracer, None
    if tracer is None:
        return None
    return None if tracer.empty() else tracer.flush()


def _after_fork_in_child() -> None:
    global _tracer, _state_lock
    _state_lock = threading.Lock()
    if _tracer is not None:
        _tracer = _tracer._forked()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# -- merging ----------------------------------------------------------------------------


def merge(out: str | os.PathLike[str], inputs: Sequence[str | os.PathLike[str]]) -> dict[str, int]:
    """Write one trace at ``out`` holding the events of the trace files ``inputs``.

    Process ids that two inputs share (processes of different nodes) are renumbered so
    each input stays its own process in the view. Returns counts of files and events.
    ValueError names an input that is not a trace.
    """
    events: list[dict[str, Any]] = []
    other: list[Any] = []
    used: set[int] = set()
    for source in inputs:
        loaded = _load_trace(os.fspath(source))
        trace_events = loaded["traceEvents"] if isinstance(loaded, Mapping) else loaded
        pids = {e.get("pid") for e in trace_events if isinstance(e.get("pid"), int)}
        renumber = {pid: _free_pid(pid, used) for pid in sorted(pids)}
        used.update(renumber.values())
        for event in trace_events:
            if isinstance(event.get("pid"), int):
                event = {**event, "pid": renumber[event["pid"]]}
            events.append(event)
        if isinstance(loaded, Mapping) and "otherData" in loaded:
            other.append(loaded["otherData"])
    write_atomically(os.fspath(out), map(_dumps, events), {"merged": other})
    return {"files": len(inputs), "events": len(events)}


def _free_pid(pid: int, used: set[int]) -> int:
    while pid in used:
        pid += 1 << 22  # above Linux's pid_max: cannot clash with a real pid
    return pid


def _load_trace(path: str) -> Any:
    try:
        with open(path, encoding="utf-8") as f:
            loaded = json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not a trace: invalid JSON ({exc})") from None
    events: Iterable[Any] | None = loaded.get("traceEvents") if isinstance(loaded, dict) else loaded
    if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
        raise ValueError(f"{path} is not a trace: expected a list of events or an object with 'traceEvents'")
    return loaded
