"""The download engine: shards as ranged parts under one budget (roxxel.read.parts)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

import roxxel
from roxxel.backends import Store
from roxxel.errors import IntegrityError, NotFoundError
from roxxel.read import parts
from roxxel.read.parts import Concurrency, PartEngine
from tests.servers import s3_server
from tests.shaping_proxy import start as shaping_proxy

KIB = 1024


class FakeStore:
    """A store whose objects are byte strings; ``read_part`` records what is in flight,
    and may be held (``gate``) or made to fail."""

    def __init__(self, objects: dict[str, bytes], delay: float = 0.0) -> None:
        self.objects = objects
        self.delay = delay
        self.lock = threading.Lock()
        self.in_flight = 0
        self.peak = 0
        self.calls: list[tuple[str, int, int]] = []
        self.gate: threading.Event | None = None
        self.fail: dict[tuple[str, int], BaseException] = {}

    def read_part(self, key, start, end, into, *, on_failure=None):
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.calls.append((key, start, end))
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "gate never opened"
            time.sleep(self.delay)
            error = self.fail.get((key, start))
            if error is not None:
                raise error
            data = self.objects[key][start:end]
            into[: len(data)] = data
            return into[: len(data)]
        finally:
            with self.lock:
                self.in_flight -= 1


def download(engine: PartEngine, store: FakeStore, key: str, **kwargs) -> bytes:
    got = bytearray()
    engine.download(store, key, len(store.objects[key]), got.extend, **kwargs)
    return bytes(got)


@pytest.fixture
def engine():
    e = PartEngine(parts=8, part_size=64 * KIB)
    e.attach()
    yield e
    e.detach()


def test_one_object_is_fetched_as_parts_in_flight_together_and_fed_in_order(engine):
    data = np.random.default_rng(1).bytes(1000 * KIB + 7)
    store = FakeStore({"a": data}, delay=0.02)
    assert download(engine, store, "a") == data
    bounds = sorted((s, e) for _, s, e in store.calls)
    assert bounds[0] == (0, 64 * KIB) and bounds[-1][1] == len(data) and len(bounds) == 16
    assert all(b[1] == c[0] for b, c in zip(bounds, bounds[1:]))  # parts tile the object
    assert store.peak >= 4  # several ranged GETs of one object at once


def test_parts_in_flight_never_exceed_the_limit_and_the_budget(engine):
    objects = {f"k{i}": np.random.default_rng(i).bytes(512 * KIB) for i in range(6)}
    store = FakeStore(objects, delay=0.01)
    results: dict[str, bytes] = {}
    seen_reserved = []

    def consume(key):
        results[key] = download(engine, store, key)

    threads = [threading.Thread(target=consume, args=(k,)) for k in objects]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        seen_reserved.append(engine._reserved)
        time.sleep(0.001)
    for t in threads:
        t.join()
    assert results == objects
    assert store.peak <= engine.limit
    # the budget, plus at most one part that a consumer waits for per object
    assert max(seen_reserved) <= engine.budget + len(objects) * engine.part_size
    assert engine._reserved == 0


def test_a_hurried_download_goes_before_earlier_ones(engine):
    store = FakeStore({"early": b"e" * (2048 * KIB), "late": b"l" * (256 * KIB)})
    store.gate = threading.Event()
    done: list[str] = []
    started = threading.Event()

    def fetch(key, on_start=None):
        download(engine, store, key, on_start=on_start)
        done.append(key)

    transfers = {}
    early = threading.Thread(target=fetch, args=("early",))
    early.start()
    late = threading.Thread(target=fetch, args=("late", lambda t: (transfers.setdefault("late", t), started.set())))
    late.start()
    assert started.wait(5)
    engine.hurry(transfers["late"])
    while len(store.calls) < engine.limit:  # the first parts are taken while the gate is shut
        time.sleep(0.001)
    store.gate.set()
    early.join(10)
    late.join(10)
    # after the parts already in flight, the hurried object's parts went first
    order = [key for key, _, _ in store.calls[engine.limit:]]
    later_late = [i for i, key in enumerate(order) if key == "late"]
    assert done == ["late", "early"] or (later_late and max(later_late) < order.index("early"))


def test_a_failed_part_is_raised_after_the_parts_before_it(engine):
    data = bytes(range(256)) * 1024  # 256 KiB: four parts
    store = FakeStore({"a": data})
    store.fail[("a", 128 * KIB)] = NotFoundError("gone")
    got = bytearray()
    with pytest.raises(NotFoundError, match="gone"):
        engine.download(store, "a", len(data), got.extend)
    assert bytes(got) == data[: 128 * KIB]
    assert not engine._transfers
    deadline = time.monotonic() + 5  # parts still in flight give their bytes back as they land
    while engine._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine._reserved == 0


def test_a_cancelled_download_stops_waiting_and_frees_its_budget(engine):
    store = FakeStore({"a": b"x" * (1024 * KIB)})
    store.gate = threading.Event()

    class Stop(Exception):
        pass

    calls = []

    def check():
        calls.append(1)
        if len(calls) > 2:
            raise Stop

    with pytest.raises(Stop):
        engine.download(store, "a", 1024 * KIB, lambda b: None, check_cancelled=check)
    store.gate.set()
    deadline = time.monotonic() + 5
    while engine._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine._in_flight == 0 and engine._reserved == 0


def test_threads_stop_when_the_last_reader_detaches():
    engine = PartEngine(parts=4, part_size=64 * KIB)
    engine.attach()
    store = FakeStore({"a": b"y" * (300 * KIB)})
    assert download(engine, store, "a") == store.objects["a"]
    assert any(t.name.startswith("roxxel-part-") and t.is_alive() for t in engine._threads)
    threads = list(engine._threads)
    engine.detach()
    assert not any(t.is_alive() for t in threads)


def test_concurrency_climbs_while_throughput_grows_and_halves_when_throttled():
    c = Concurrency(8, maximum=32, step=8, interval=1.0)
    now = 0.0
    c.transferred(now, 0, True)  # the clock starts

    def second(rate_per_part, saturated=True):
        nonlocal now
        for _ in range(8):  # (steps exact in binary: the interval ends on the last)
            now += 0.125
            c.transferred(now, int(rate_per_part * c.limit / 8), saturated)

    second(1e6)  # the first interval sets the baseline and raises
    assert c.limit == 16
    second(1e6)  # 16 parts carry twice the bytes: worth it, raise again
    assert c.limit == 24
    second(16e6 / 24)  # 24 parts carry no more than 16 did: back to 16 and stay
    assert c.limit == 16
    second(1e6)
    assert c.limit == 16
    c.throttled(now)
    assert c.limit == 8
    c.throttled(now + 0.1)  # the same burst of refusals halves once
    assert c.limit == 8
    second(1e6)  # held for a while after throttling
    assert c.limit == 8


def test_concurrency_does_not_grow_when_the_limit_is_not_the_bottleneck():
    c = Concurrency(8, maximum=32)
    for i in range(50):
        c.transferred(i * 0.1, 10**6, saturated=False)
    assert c.limit == 8


def test_node_share_divides_the_budget_between_local_ranks(monkeypatch):
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert parts.node_share() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "")
    assert parts.node_share() == 1


@pytest.fixture
def small_parts(monkeypatch):
    """The process's engine with 256 KiB parts, so that a small shard has many."""
    engine = PartEngine(parts=8, part_size=256 * KIB)
    monkeypatch.setattr(parts, "_ENGINE", engine)
    return engine


def test_s3_shards_through_a_shaped_link_arrive_as_parallel_ranged_gets(tmp_path, small_parts, monkeypatch):
    from roxxel.backends import s3 as s3_backend

    live = {"now": 0, "peak": 0}
    lock = threading.Lock()
    real = s3_backend.S3Backend.read_range_into

    def counting(self, path, start, end, into):
        with lock:
            live["now"] += 1
            live["peak"] = max(live["peak"], live["now"])
        try:
            return real(self, path, start, end, into)
        finally:
            with lock:
                live["now"] -= 1

    monkeypatch.setattr(s3_backend.S3Backend, "read_range_into", counting)
    rng = np.random.default_rng(7)
    records = [rng.bytes(int(n)) for n in rng.integers(1000, 60_000, size=120)]
    with s3_server(fast_ranges=True) as server, \
            shaping_proxy(int(server.endpoint.rsplit(":", 1)[1]), latency=0.03, conn_rate=20e6) as proxy:
        options = dict(server.storage_options, endpoint_url=proxy.endpoint)
        server.create_bucket("parts")
        url = "s3://parts/ds"
        with roxxel.Writer(url, storage_options=options, shard_bytes=2 * 2**20) as w:
            w.extend(records)
        with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
            assert [bytes(r) for r in ds] == records
            stats = ds.stats
        shards = ds.num_shards
    assert stats["gets"] >= shards * 4  # ~2 MiB shards in 256 KiB parts
    assert stats["bytes_downloaded"] == sum(int(s) for s in ds.manifest.shards.stored_size)
    assert live["peak"] >= 4


def test_a_part_that_comes_back_short_is_fetched_again_then_refused(tmp_path):
    store = Store(str(tmp_path))
    (tmp_path / "obj").write_bytes(b"z" * 100)
    engine = PartEngine(parts=2, part_size=64)
    engine.attach()
    try:
        got = bytearray()
        engine.download(store, "obj", 100, got.extend)
        assert bytes(got) == b"z" * 100
        (tmp_path / "obj").write_bytes(b"z" * 90)  # truncated under the manifest's size
        from roxxel.backends.retry import RetryPolicy

        store.retry = RetryPolicy(max_attempts=2, base_delay=0.0)
        with pytest.raises(IntegrityError, match=r"bytes \[64, 100\) came back short every time"):
            engine.download(store, "obj", 100, bytearray().extend)
    finally:
        engine.detach()


def test_a_trace_shows_each_part_and_the_parts_in_flight(engine, tmp_path):
    import json

    from roxxel import trace

    store = FakeStore({"a": b"t" * (256 * KIB)}, delay=0.01)
    trace.start(tmp_path / "run.json")
    try:
        download(engine, store, "a")
    finally:
        path = trace.stop()
    events = json.loads(open(path).read())["traceEvents"]
    parts_seen = [e for e in events if e.get("name") == "part" and e.get("ph") == "X"]
    assert sorted(e["args"]["offset"] for e in parts_seen) == [0, 64 * KIB, 128 * KIB, 192 * KIB]
    assert all(e["args"]["bytes"] == 64 * KIB and e["dur"] >= 0 for e in parts_seen)
    assert any(e.get("ph") == "C" and "parts_in_flight" in e.get("args", {}) for e in events)


def test_slowdown_answers_are_retried_and_halve_the_parts_in_flight(tmp_path, monkeypatch):
    from roxxel.backends import RetryPolicy
    from tests.faults import Fault, FaultyFileSystem, Scripted, faulty_url
    from tests.reliability_kit import check_all, write

    engine = PartEngine(parts=16, part_size=4 * KIB)
    monkeypatch.setattr(parts, "_ENGINE", engine)
    url = str(tmp_path / "ds")
    write(url, 300, shard_bytes=16 * KIB)
    plan = Scripted(script=[("cat_file", "*/shards/*", Fault("slowdown"))] * 3)
    store = Store(faulty_url(url), fs=FaultyFileSystem(plan), retry=RetryPolicy(base_delay=0.001))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store) as ds:
        check_all(ds.iter(seed=2), 300)
        stats = ds.stats
    assert plan.injected["slowdown"] == 3
    assert stats["retries"] == 3 and engine.stats["throttled"] == 3
    assert engine.concurrency.history[0][1] == 8  # halved once for the burst
    assert engine.limit <= 8


def test_open_with_trace_records_parts_waits_and_blocks_of_records(tmp_path, monkeypatch):
    import json

    from roxxel import trace
    from tests.faults import FaultyFileSystem, NoFaults, faulty_url
    from tests.reliability_kit import check_all, write

    monkeypatch.setattr(parts, "_ENGINE", PartEngine(parts=4, part_size=4 * KIB))
    url = str(tmp_path / "ds")
    write(url, 200, shard_bytes=16 * KIB)
    store = Store(faulty_url(url), fs=FaultyFileSystem(NoFaults()))
    try:
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store,
                         trace=tmp_path / "run.json") as ds:
            check_all(ds.iter(seed=3, rank=0, world_size=1), 200)
    finally:
        path = trace.stop()
    events = json.loads(open(path).read())["traceEvents"]
    names = {e.get("name") for e in events}
    assert {"part", "wait for shard", "records", "downloads"} <= names
    records = [e for e in events if e.get("name") == "records"]
    assert sum(e["args"]["records"] for e in records) == 200
    assert any(e.get("ph") == "M" and "rank 0" in json.dumps(e.get("args", {})) for e in events)
