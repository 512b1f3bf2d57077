"""The download engine: shards as ranged parts under one budget (roxxel.read.parts)."""

from __future__ import annotations

import contextlib
import io
import itertools
import threading
import time

import numpy as np
import pytest

import roxxel
from roxxel.backends import Store
from roxxel.backends.base import copy_into
from roxxel.backends.through import Revoked, Through
from roxxel.errors import IntegrityError, NotFoundError, StorageError
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
        self.hold: dict[tuple[str, int], threading.Event] = {}  # parts held until set
        self.fail: dict[tuple[str, int], BaseException] = {}
        self.trickle = False  # placed parts arrive piece by piece, not all at once

    def read_part(self, key, start, end, into, *, on_failure=None):
        with self.lock:
            self.in_flight += 1
            self.peak = max(self.peak, self.in_flight)
            self.calls.append((key, start, end))
        try:
            if self.gate is not None:
                assert self.gate.wait(10), "gate never opened"
            if (key, start) in self.hold:
                assert self.hold[key, start].wait(10), "part never released"
            time.sleep(self.delay)
            error = self.fail.get((key, start))
            if error is not None:
                raise error
            data = self.objects[key][start:end]
            if self.trickle and isinstance(into, Through):  # as a socket gives the body
                into.receive(io.BytesIO(data).readinto, len(data))
            else:
                copy_into(data, into)  # (into: a buffer, or a Through for a placed part)
            return into if isinstance(into, Through) else into[: len(data)]
        finally:
            with self.lock:
                self.in_flight -= 1


class FilePlacement:
    """A :class:`~roxxel.read.parts.Placement` over a bytearray, recording each write
    (offset, length, writing thread) and refusing to be written to once ``ended``."""

    def __init__(self, size: int) -> None:
        self.data = bytearray(size)
        self.writes: list[tuple[int, int, str]] = []
        self.claimed = False
        self.ended = False
        self.late: list[int] = []  # offsets written after the download returned

    def claim(self) -> None:
        self.claimed = True

    def write(self, offset, data):
        if self.ended:
            self.late.append(offset)
        self.data[offset : offset + len(data)] = data
        self.writes.append((offset, len(data), threading.current_thread().name))

    @contextlib.contextmanager
    def view(self, offset, end):
        with memoryview(self.data)[offset:end] as view:
            yield view


def read_through(store: Store, key: str, start: int, end: int, block: int) -> tuple[bytes, int]:
    """Bytes ``[start, end)`` of ``key`` as a placed part receives them (through a
    :class:`Through` with a buffer of ``block`` bytes), and how many writes they took."""
    got = bytearray(end - start)
    writes = []

    def write(offset, data):
        writes.append(offset)
        got[offset : offset + len(data)] = data

    through = Through(memoryview(bytearray(block)), write, end - start)
    assert store.read_part(key, start, end, through) is through
    return bytes(got), len(writes)


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


def test_a_download_from_a_start_fetches_and_feeds_only_the_rest(engine):
    data = np.random.default_rng(2).bytes(300 * KIB + 5)
    store = FakeStore({"a": data})
    got = bytearray()
    engine.download(store, "a", len(data), got.extend, start=70 * KIB, first=True, urgent=True)
    assert bytes(got) == data[70 * KIB :]
    assert min(s for _, s, e in store.calls) == 70 * KIB and max(e for _, s, e in store.calls) == len(data)
    placed, store.calls = FilePlacement(len(data)), []
    engine.download(store, "a", len(data), lambda view: None, start=70 * KIB, into=placed)
    assert bytes(placed.data[70 * KIB :]) == data[70 * KIB :] and not any(placed.data[: 70 * KIB])
    with pytest.raises(ValueError, match=r"start must be in \[0, 307205\], got 307206"):
        engine.download(store, "a", len(data), got.extend, start=len(data) + 1)


def test_a_download_from_a_start_still_places_its_pieces_at_aligned_offsets(monkeypatch):
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 32 * KIB)
    transfer = parts.Transfer(FakeStore({}), "a", 1000 * KIB, 256 * KIB, 1, start=70 * KIB)
    assert transfer.bounds[0] == (70 * KIB, 256 * KIB)  # up to the first part boundary, then whole parts
    assert transfer.bounds[1:] == [(256 * KIB, 512 * KIB), (512 * KIB, 768 * KIB), (768 * KIB, 1000 * KIB)]
    transfer.split(16, 32 * KIB)  # (the first shard a reader waits for: in pieces)
    assert transfer.bounds[0] == (70 * KIB, 96 * KIB)
    assert all(a % (32 * KIB) == 0 and b - a == 64 * KIB for a, b in transfer.bounds[1:-1])
    assert transfer.bounds[-1][1] == 1000 * KIB
    assert all(b == c for (_, b), (c, _) in zip(transfer.bounds, transfer.bounds[1:]))  # they tile the rest


def test_bytes_given_to_the_caller_are_not_fetched_and_are_fed_in_their_turn(engine):
    data = np.random.default_rng(3).bytes(1000 * KIB + 7)
    store = FakeStore({"a": data})
    placed, got, given = FilePlacement(len(data)), bytearray(), []

    def started(transfer):
        given.append(transfer.given)
        transfer.split(12, 32 * KIB)  # (cut in pieces as a first shard is: the given bytes stay whole)
        assert (128 * KIB, 256 * KIB) in transfer.bounds
        threading.Timer(0.2, engine.fill, (transfer, memoryview(data)[128 * KIB : 256 * KIB])).start()

    engine.download(store, "a", len(data), lambda view: got.extend(view), into=placed, on_start=started,
                    given=(128 * KIB, 256 * KIB), urgent=True, first=True)
    assert bytes(got) == data and bytes(placed.data) == data and given == [(128 * KIB, 256 * KIB)]
    fetched = sorted((s, e) for _, s, e in store.calls)
    assert not any(s < 256 * KIB and e > 128 * KIB for s, e in fetched)  # none of the given bytes
    assert sum(e - s for s, e in fetched) == len(data) - 128 * KIB
    assert any(e - s < 64 * KIB for s, e in fetched)  # (and the rest went in pieces)
    assert engine._reserved == 0 and engine._in_flight == 0


def test_unaligned_bytes_are_not_given_and_a_failed_fill_fails_the_download(engine, monkeypatch):
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 32 * KIB)
    data = np.random.default_rng(4).bytes(512 * KIB)
    store = FakeStore({"a": data})
    given = []
    for bad in ((100 * KIB, 164 * KIB), (128 * KIB, 170 * KIB), (0, 600 * KIB)):  # (the last: past the end)
        store.calls = []
        assert download(engine, store, "a", into=FilePlacement(len(data)), given=bad,
                        on_start=lambda transfer: given.append(transfer.given)) == data
        assert sum(e - s for _, s, e in store.calls) == len(data)  # (every byte fetched)
    assert download(engine, store, "a", given=(0, 64 * KIB),  # (not placed: nothing given)
                    on_start=lambda transfer: given.append(transfer.given)) == data
    assert given == [None] * 4
    with pytest.raises(StorageError, match="injected"):
        download(engine, store, "a", into=FilePlacement(len(data)), given=(256 * KIB, 512 * KIB),
                 on_start=lambda transfer: engine.fill(transfer, StorageError("injected")))
    assert engine._reserved == 0  # (the bytes given were never counted against the budget)


class FullDisk(FilePlacement):
    def write(self, offset, data):
        if offset == 128 * KIB:
            raise OSError(28, "No space left on device")
        super().write(offset, data)


def test_a_given_fill_that_cannot_be_written_or_comes_late_fails_or_is_dropped(engine):
    data = np.random.default_rng(5).bytes(512 * KIB)
    store = FakeStore({"a": data})
    with pytest.raises(OSError, match="No space left"):  # (raised by the download, not a hang)
        download(engine, store, "a", into=FullDisk(len(data)), given=(128 * KIB, 192 * KIB),
                 on_start=lambda transfer: engine.fill(transfer, memoryview(data)[128 * KIB : 192 * KIB]))
    with pytest.raises(ValueError, match=r"a: 10 bytes given for \[131072, 196608\)"):
        download(engine, store, "a", into=FilePlacement(len(data)), given=(128 * KIB, 192 * KIB),
                 on_start=lambda transfer: engine.fill(transfer, memoryview(data)[:10]))
    placed, transfers = FilePlacement(len(data)), []

    def cancel():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        engine.download(store, "a", len(data), lambda view: None, into=placed, given=(128 * KIB, 192 * KIB),
                        on_start=transfers.append, check_cancelled=cancel)
    placed.ended = True
    engine.fill(transfers[0], memoryview(data)[128 * KIB : 192 * KIB])  # (after the download ended)
    deadline = time.monotonic() + 10
    while engine._in_flight and time.monotonic() < deadline:  # (parts in flight give their bytes back as they land)
        time.sleep(0.01)
    assert placed.late == [] and engine._in_flight == 0 and engine._reserved == 0


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
    size = 1024 * KIB  # 16 parts each: neither finishes first by being smaller
    store = FakeStore({"early": b"e" * size, "late": b"l" * size})
    store.gate = threading.Event()
    transfers = {}
    registered = threading.Event()
    finished: list[str] = []

    def fetch(key, **kwargs):
        download(engine, store, key, **kwargs)
        finished.append(key)

    threads = [
        threading.Thread(target=fetch, args=("early",)),
        threading.Thread(target=fetch, args=("late",),
                         kwargs={"on_start": lambda t: (transfers.setdefault("late", t), registered.set())}),
    ]
    threads[0].start()
    while len(store.calls) < engine.limit:  # every slot taken by "early", held at the gate
        time.sleep(0.001)
    threads[1].start()
    assert registered.wait(5)
    engine.hurry(transfers["late"])
    store.gate.set()
    for t in threads:
        t.join(10)
    # Without the hurry, the next parts sent would all be "early"'s (asked for first); with
    # it, "late"'s go first, "early" keeping at most half the slots.
    after = [key for key, _, _ in store.calls[engine.limit:]]
    assert after[0] == "late" and after[: engine.limit].count("late") >= engine.limit // 2
    assert sorted(finished) == ["early", "late"]


def test_while_a_reader_waits_other_shards_get_half_the_slots(engine):
    store = FakeStore({"waited": b"w" * (1024 * KIB), "a": b"a" * (1024 * KIB), "b": b"b" * (1024 * KIB)})
    store.gate = threading.Event()
    threads = [threading.Thread(target=download, args=(engine, store, k),
                                kwargs={"on_start": engine.hurry} if k == "waited" else {})
               for k in ("waited", "a", "b")]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while engine._in_flight < engine.limit and time.monotonic() < deadline:
        time.sleep(0.001)
    with engine._cond:
        others = sum(t.in_flight for t in engine._transfers if not t.urgent)
    assert engine._in_flight == engine.limit and others <= engine.limit // 2
    store.gate.set()
    for t in threads:
        t.join(10)


def test_once_a_waited_shard_s_parts_are_all_in_flight_the_others_take_every_slot(engine):
    """Holding slots back helps a waited-for shard only while it has parts to send: once
    they are all in flight, idle slots would only leave the link idle."""
    store = FakeStore({"waited": b"w" * (128 * KIB), "a": b"a" * (1024 * KIB), "b": b"b" * (1024 * KIB)})
    store.gate = threading.Event()
    threads = [threading.Thread(target=download, args=(engine, store, k),
                                kwargs={"on_start": engine.hurry} if k == "waited" else {})
               for k in ("waited", "a", "b")]
    threads[0].start()
    deadline = time.monotonic() + 5
    while len(store.calls) < 2 and time.monotonic() < deadline:  # its two parts, held
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while engine._in_flight < engine.limit and time.monotonic() < deadline:
        time.sleep(0.001)
    with engine._cond:
        waited = [t for t in engine._transfers if t.urgent]
        others = sum(t.in_flight for t in engine._transfers if not t.urgent)
    assert len(waited) == 1 and waited[0].in_flight == 2  # its two parts
    assert engine._in_flight == engine.limit and others == engine.limit - 2 > engine.limit // 2
    store.gate.set()
    for t in threads:
        t.join(10)


def test_a_reader_s_first_shard_is_urgent_before_any_part_is_picked(engine):
    """Told at download() (not by a hurry after it started), the first shard's parts go
    first even when every slot is free to others at that moment."""
    store = FakeStore({"a": b"a" * (1024 * KIB), "b": b"b" * (1024 * KIB), "first": b"f" * (1024 * KIB)})
    store.gate = threading.Event()
    threads = [threading.Thread(target=download, args=(engine, store, k), kwargs=kw) for k, kw in
               (("a", {}), ("b", {}), ("first", {"urgent": True, "first": True}))]
    threads[0].start()
    threads[1].start()
    while len(store.calls) < engine.limit:  # every slot taken by the others, held at the gate
        time.sleep(0.001)
    threads[2].start()
    while not any(t.key == "first" for t in engine._transfers):
        time.sleep(0.001)
    store.gate.set()
    for t in threads:
        t.join(10)
    after = [key for key, _, _ in store.calls[engine.limit:]]
    # once the gate opens, the slots that free up go to the first shard (asked for last),
    # the others waiting until it has arrived
    assert after[: engine.limit] == ["first"] * engine.limit


def test_the_first_shard_a_reader_waits_for_comes_in_smaller_pieces(monkeypatch):
    """Its parts not yet taken are cut into up to half the slots' worth of pieces, so it
    arrives over more connections, and a first shard of less than one round of parts,
    counted alone in the taper, into its share of every slot; other shards keep whole
    parts."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 32 * KIB)
    e = PartEngine(parts=16, part_size=256 * KIB)
    e.attach()
    rng = np.random.default_rng(2)
    store = FakeStore({"other": rng.bytes(64 * 256 * KIB), "first": rng.bytes(1024 * KIB)}, delay=0.005)
    try:
        other = threading.Thread(target=download, args=(e, store, "other"))
        other.start()
        while len(store.calls) < 4:
            time.sleep(0.001)
        assert download(e, store, "first", urgent=True, first=True) == store.objects["first"]
        other.join(10)
    finally:
        e.detach()
    pieces = sorted((a, b) for key, a, b in store.calls if key == "first")
    assert pieces[0][0] == 0 and pieces[-1][1] == 1024 * KIB and all(
        b == c for (_, b), (c, _) in zip(pieces, pieces[1:]))  # they tile the shard
    assert len(pieces) >= 16 and {b - a for a, b in pieces} <= {32 * KIB, 64 * KIB}  # (its share of 16 slots, tapering)
    last = max(i for i, (key, _, _) in enumerate(store.calls) if key == "first")
    assert {b - a for key, a, b in store.calls[:last] if key == "other"} == {256 * KIB}


def test_once_the_first_shard_s_pieces_are_on_the_wire_the_others_get_a_quarter_of_the_slots(monkeypatch):
    """None before (its pieces go first), a quarter after: its check still needs a CPU
    that every other part in flight would share."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 16 * KIB)
    e = PartEngine(parts=8, part_size=64 * KIB)
    e.attach()
    store = FakeStore({"first": b"f" * (64 * KIB), "a": b"a" * (1024 * KIB)})
    store.gate = threading.Event()
    try:
        other = threading.Thread(target=download, args=(e, store, "a"))
        first = threading.Thread(target=download, args=(e, store, "first"),
                                 kwargs={"urgent": True, "first": True})
        first.start()
        deadline = time.monotonic() + 5
        while len(store.calls) < 4 and time.monotonic() < deadline:  # its 4 pieces of 16 KiB, held
            time.sleep(0.001)
        other.start()
        deadline = time.monotonic() + 5
        while len(store.calls) < 6 and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.1)  # (whatever else could start)
        assert [k for k, _, _ in store.calls[:4]] == ["first"] * 4
        assert [k for k, _, _ in store.calls[4:]] == ["a", "a"]  # 8 // 4
        store.gate.set()
        first.join(10)
        other.join(10)
    finally:
        store.gate.set()
        e.detach()


def test_other_shards_placed_parts_are_checked_only_after_the_first_shard(monkeypatch):
    """They hold no memory while they wait, and their check would share the CPU with
    the one the first record waits for."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 16 * KIB)
    e = PartEngine(parts=8, part_size=64 * KIB)
    e.attach()
    store = FakeStore({"first": b"f" * (64 * KIB), "a": b"a" * (128 * KIB)})
    store.hold[("first", 48 * KIB)] = threading.Event()  # the first shard's last piece, late
    fed: list[str] = []
    try:
        first = threading.Thread(target=e.download,
                                 args=(store, "first", 64 * KIB, lambda b: fed.append("first")),
                                 kwargs={"urgent": True, "first": True, "into": FilePlacement(64 * KIB)})
        other = threading.Thread(target=e.download, args=(store, "a", 128 * KIB, lambda b: fed.append("a")),
                                 kwargs={"into": FilePlacement(128 * KIB)})
        first.start()
        deadline = time.monotonic() + 5
        while len(store.calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        other.start()

        def landed() -> list:
            with e._cond:
                return [r for t in e._transfers if t.key == "a" for r in t.results.values()]

        while sum(r for r in landed() if isinstance(r, int)) < 128 * KIB and time.monotonic() < deadline:
            time.sleep(0.001)
        time.sleep(0.1)  # (time for a consumer that would take them)
        assert all(isinstance(r, int) for r in landed()) and sum(landed()) == 128 * KIB  # all placed
        assert "a" not in fed
        store.hold["first", 48 * KIB].set()
        first.join(10)
        other.join(10)
    finally:
        store.hold["first", 48 * KIB].set()
        e.detach()
    assert fed.index("a") > max(i for i, k in enumerate(fed) if k == "first")


def test_other_shards_are_checked_again_once_a_first_shard_fails(monkeypatch):
    """A first shard whose download raises ends like any other: the checks it held back
    go on."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 16 * KIB)
    e = PartEngine(parts=8, part_size=64 * KIB)
    e.attach()
    store = FakeStore({"first": b"f" * (64 * KIB), "a": b"a" * (128 * KIB)})
    store.hold[("first", 48 * KIB)] = threading.Event()
    store.fail[("first", 48 * KIB)] = NotFoundError("gone")
    got = bytearray()
    errors: list[BaseException] = []

    def first():
        try:
            e.download(store, "first", 64 * KIB, lambda b: None, urgent=True, first=True,
                       into=FilePlacement(64 * KIB))
        except NotFoundError as exc:
            errors.append(exc)

    try:
        threads = [threading.Thread(target=first),
                   threading.Thread(target=e.download, args=(store, "a", 128 * KIB, got.extend),
                                    kwargs={"into": FilePlacement(128 * KIB)})]
        threads[0].start()
        deadline = time.monotonic() + 5
        while len(store.calls) < 4 and time.monotonic() < deadline:
            time.sleep(0.001)
        threads[1].start()
        store.hold["first", 48 * KIB].set()  # its last piece fails
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)
    finally:
        store.hold["first", 48 * KIB].set()
        e.detach()
    assert len(errors) == 1 and bytes(got) == store.objects["a"]


def test_the_last_parts_are_cut_finer_to_fill_idle_slots(monkeypatch):
    """Fewer parts left than free slots (the end of an epoch): the rest of an object goes
    in pieces, spread over the idle connections, and still arrives whole and in order."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 32 * KIB)
    e = PartEngine(parts=8, part_size=256 * KIB)
    e.attach()
    data = np.random.default_rng(3).bytes(512 * KIB + 5)  # 3 parts for 8 slots
    store = FakeStore({"tail": data}, delay=0.01)
    try:
        assert download(e, store, "tail") == data
    finally:
        e.detach()
    pieces = sorted((a, b) for _, a, b in store.calls)
    assert len(pieces) >= 8 and max(b - a for a, b in pieces) < 256 * KIB
    assert pieces[0][0] == 0 and pieces[-1][1] == len(data)
    assert all(x[1] == y[0] for x, y in itertools.pairwise(pieces))  # they tile the object


def test_the_parts_issued_last_are_cut_to_the_rest_s_share_of_a_slot(monkeypatch):
    """Less than one round of parts left to issue (a slot for each): the rest goes in
    pieces of its share of a slot, so the last parts end together instead of one whole
    part's time apart; before that, parts stay whole."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 32 * KIB)
    e = PartEngine(parts=4, part_size=256 * KIB)
    transfer = parts.Transfer(FakeStore({}), "a", 2048 * KIB, 256 * KIB, 1)  # 8 parts
    e._transfers.append(transfer)
    e._in_flight = 4  # no slot free: only the taper can cut
    with e._cond:
        transfer.issued = 4  # 1 MiB left: one round of 4 slots, not less
        e._spread(transfer, e.limit)
        assert [b - a for a, b in transfer.bounds] == [256 * KIB] * 8
        transfer.issued = 5  # 768 KiB left: pieces of 192 KiB
        e._spread(transfer, e.limit)
    assert transfer.bounds[:5] == [(a, a + 256 * KIB) for a in range(0, 1280 * KIB, 256 * KIB)]
    assert transfer.bounds[5:] == [(a, a + 192 * KIB) for a in range(1280 * KIB, 2048 * KIB, 192 * KIB)]


def test_a_first_shard_s_last_round_is_cut_to_its_share_of_a_slot_whatever_follows(monkeypatch):
    """The first shard a reader waits for counts alone in the taper: its last parts end
    together even when other shards' parts are still to come."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 32 * KIB)
    e = PartEngine(parts=4, part_size=256 * KIB)
    first = parts.Transfer(FakeStore({}), "first", 2048 * KIB, 256 * KIB, 1)  # 8 parts
    after = parts.Transfer(FakeStore({}), "after", 8192 * KIB, 256 * KIB, 2)  # 32 more
    first.first = first.urgent = True
    e._transfers += [first, after]
    e._in_flight = 4
    with e._cond:
        first.issued = 5  # 768 KiB of it left: pieces of 192 KiB
        e._spread(first, e.limit)
        e._spread(after, e.limit)
    assert first.bounds[5:] == [(a, a + 192 * KIB) for a in range(1280 * KIB, 2048 * KIB, 192 * KIB)]
    assert {b - a for a, b in after.bounds} == {256 * KIB}  # (the rest of the epoch: whole parts)


def test_the_taper_does_not_count_the_bytes_the_caller_places(monkeypatch):
    """The bytes a download leaves to its caller (given) are no part to issue: with them,
    a whole round is left; without them, less, and the rest is cut to its share of a
    slot around them."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 32 * KIB)
    e = PartEngine(parts=4, part_size=256 * KIB)
    transfer = parts.Transfer(FakeStore({}), "a", 2048 * KIB, 256 * KIB, 1)  # 8 parts
    transfer.given = (1792 * KIB, 2048 * KIB)  # the last part: the caller's
    e._transfers.append(transfer)
    e._in_flight = 4  # no slot free: only the taper can cut
    with e._cond:
        transfer.issued = 4  # 1 MiB left, 768 KiB of it to fetch: less than a round of 4 slots
        e._spread(transfer, e.limit)
    assert transfer.bounds[4:] == [*((a, a + 192 * KIB) for a in range(1024 * KIB, 1792 * KIB, 192 * KIB)),
                                   (1792 * KIB, 2048 * KIB)]


@pytest.mark.parametrize(("given", "issued", "left"), [
    (None, 2, (6, 1536)),  # nothing the caller's
    ((1280 * KIB, 1536 * KIB), 2, (5, 1280)),  # the caller's part is ahead: not counted
    ((1280 * KIB, 1536 * KIB), 5, (2, 512)),  # the first not issued: not counted
    ((256 * KIB, 512 * KIB), 2, (6, 1536)),  # passed already: nothing to take off
    ((256 * KIB, 512 * KIB), 8, (0, 0)),  # everything issued
])
def test_what_is_left_to_issue_leaves_out_the_caller_s_bytes(given, issued, left):
    transfer = parts.Transfer(FakeStore({}), "a", 2048 * KIB, 256 * KIB, 1)  # 8 parts
    transfer.given, transfer.issued = given, issued
    assert (transfer.parts_left(), transfer.bytes_left() // KIB) == left


@pytest.mark.parametrize("free", [0, 4])  # the last round's taper; the spread over idle slots
def test_parts_stay_whole_at_the_end_where_a_get_has_shown_fast_connections(monkeypatch, free):
    """Once a GET from a store has moved a whole part's worth in less than the taper's
    time, the end is not cut (each cut is one more GET, and a part left to itself at the
    end arrives that soon anyway); while its GETs have only shown slow connections, it
    is, as before any has been seen."""
    monkeypatch.setattr(parts, "_SMALLEST_PIECE", 32 * KIB)
    monkeypatch.setattr(parts, "_RATE_BYTES", 64 * KIB)
    for seconds, cut in ((None, True), (0.2, True), (0.05, False)):  # a part took: unknown, 0.2 s, 0.05 s
        e = PartEngine(parts=4, part_size=256 * KIB)
        transfer = parts.Transfer(FakeStore({}), "a", 2048 * KIB, 256 * KIB, 1)
        if seconds is not None:
            e._moved(transfer.store, 256 * KIB, seconds)
        e._transfers.append(transfer)
        e._in_flight = 4 - free
        with e._cond:
            transfer.issued = 5  # 3 parts left, 768 KiB: less than a round, fewer than 4 free slots
            e._spread(transfer, e.limit)
        assert (transfer.bounds[5:] != [(a, a + 256 * KIB) for a in range(1280 * KIB, 2048 * KIB, 256 * KIB)]) == cut
        assert not cut or max(b - a for a, b in transfer.bounds[5:]) <= 192 * KIB


def test_how_fast_a_store_s_connections_go_is_learnt_from_its_gets_of_a_mib_or_more(monkeypatch):
    """The engine's parts and the GETs beside it (outside) both count, first byte
    included, each for its own store; a GET too small to tell, or one that failed, does
    not."""
    now = [0.0]
    e = PartEngine(parts=4, clock=lambda: now[0])  # (8 MiB parts: a whole one in 0.1 s is 84 MB/s)
    fast, slow = FakeStore({}), FakeStore({})
    with e.outside(2048 * KIB, fast):
        now[0] += 0.01
    assert e._rates[fast] == pytest.approx(2048 * KIB / 0.01)
    assert not e._slow(fast) and e._slow(slow)  # (one store's fast GET says nothing of another's)
    with e.outside(2048 * KIB, slow):
        now[0] += 0.1
    with e.outside(64 * KIB, slow):  # (too small: mostly the first byte's wait)
        now[0] += 0.0001
    with pytest.raises(OSError), e.outside(4096 * KIB, slow):
        now[0] += 0.001
        raise OSError("dropped")
    assert e._rates[slow] == pytest.approx(2048 * KIB / 0.1) and e._slow(slow)
    monkeypatch.setattr(parts, "_RATE_BYTES", 64 * KIB)
    e = PartEngine(parts=4, part_size=256 * KIB)
    e.attach()
    store = FakeStore({"a": np.random.default_rng(9).bytes(1024 * KIB)}, delay=0.01)
    try:
        assert download(e, store, "a") == store.objects["a"]
    finally:
        e.detach()
    assert 0 < e._rates[store] <= 256 * KIB / 0.01  # (each part waited its delay at least)


def test_placed_parts_are_written_where_they_belong_by_connection_threads(engine):
    data = np.random.default_rng(4).bytes(1000 * KIB + 3)
    store = FakeStore({"a": data}, delay=0.005)
    place = FilePlacement(len(data))
    got = bytearray()
    engine.download(store, "a", len(data), got.extend, into=place)
    assert place.claimed and bytes(place.data) == data
    assert bytes(got) == data  # the sink is fed what was read back, in order
    offsets = sorted(offset for offset, _, _ in place.writes)
    assert offsets == [a for _, a, _ in sorted(store.calls, key=lambda c: c[1])]  # a write per part
    assert all(name.startswith("roxxel-part-") for _, _, name in place.writes)
    assert engine._reserved == 0


def test_placed_parts_are_received_through_a_few_reused_blocks(monkeypatch):
    """A placed part is written as it arrives, a block at a time at block-aligned offsets,
    through block buffers the engine reuses (as many as parts were in flight at once),
    not through a buffer of the part's size."""
    monkeypatch.setattr(parts, "_BLOCK", 16 * KIB)
    made = []
    real = parts._part_buffer
    monkeypatch.setattr(parts, "_part_buffer", lambda size: made.append(size) or real(size))
    e = PartEngine(parts=4, part_size=64 * KIB)
    e.attach()
    data = np.random.default_rng(6).bytes(40 * 64 * KIB + 5)  # 41 parts
    store = FakeStore({"a": data}, delay=0.002)
    store.trickle = True
    place = FilePlacement(len(data))
    got = bytearray()
    try:
        e.download(store, "a", len(data), got.extend, into=place)
    finally:
        e.detach()
    assert bytes(got) == data and bytes(place.data) == data
    assert sorted(offset for offset, _, _ in place.writes) == list(range(0, len(data), 16 * KIB))
    assert all(n == 16 * KIB for offset, n, _ in place.writes if offset + 16 * KIB <= len(data))
    assert made.count(16 * KIB) <= e.concurrency.maximum and 64 * KIB not in made  # no part-sized buffer


def test_a_block_that_arrives_after_its_download_ended_is_refused(engine):
    place = FilePlacement(64 * KIB)
    transfer = parts.Transfer(FakeStore({}), "a", 64 * KIB, 64 * KIB, 1)
    transfer.into = place
    transfer.done = True
    with pytest.raises(Revoked, match=r"^a: bytes from 4096 arrived after its download ended$"):
        engine._place(transfer, 4096, memoryview(b"x" * 16))
    assert place.writes == [] and transfer.writing == 0


def test_a_placement_that_cannot_give_its_bytes_back_fails_the_download_cleanly(engine):
    class Gone(FilePlacement):
        def view(self, offset, end):
            raise OSError(f"bytes [{offset}, {end}) are gone")

    store = FakeStore({"a": b"z" * (128 * KIB)})
    with pytest.raises(OSError, match=r"bytes \[0, \d+\) are gone"):
        engine.download(store, "a", 128 * KIB, lambda b: None, into=Gone(128 * KIB))
    assert not engine._transfers
    deadline = time.monotonic() + 5
    while engine._in_flight and time.monotonic() < deadline:  # (parts still in flight land)
        time.sleep(0.01)
    assert engine._in_flight == 0 and engine._reserved == 0


def test_placed_parts_do_not_hold_the_budget_while_an_earlier_part_is_late(engine):
    """Parts that arrived ahead of a late one are in their placement, not in buffers: the
    rest of the object goes on being fetched instead of waiting for the late part."""
    data = np.random.default_rng(5).bytes(32 * 64 * KIB)  # 32 parts; the budget is 8
    for placed in (False, True):
        store = FakeStore({"a": data})
        store.hold[("a", 0)] = threading.Event()
        into = FilePlacement(len(data)) if placed else None
        budget = engine.budget // engine.part_size
        thread = threading.Thread(target=engine.download, args=(store, "a", len(data), lambda b: None),
                                  kwargs={"into": into})
        thread.start()
        deadline = time.monotonic() + 5
        while len(store.calls) < (32 if placed else budget) and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)  # (whatever else could still be sent)
        sent = len(store.calls)
        store.hold["a", 0].set()
        thread.join(10)
        assert sent == (32 if placed else budget)


def test_no_part_is_written_to_its_placement_after_the_download_ended(engine):
    store = FakeStore({"a": b"x" * (1024 * KIB)})
    store.gate = threading.Event()
    place = FilePlacement(1024 * KIB)

    class Stop(Exception):
        pass

    def check():
        if len(store.calls) >= engine.limit:  # every slot holds a part at the gate
            raise Stop

    with pytest.raises(Stop):
        engine.download(store, "a", 1024 * KIB, lambda b: None, check_cancelled=check, into=place)
    place.ended = True
    store.gate.set()  # the parts in flight land now
    deadline = time.monotonic() + 5
    while engine._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(store.calls) == engine.limit and engine._in_flight == 0
    assert place.writes == [] and place.late == [] and engine._reserved == 0


def test_a_download_that_ends_waits_for_a_part_being_written_to_its_placement(engine):
    """The caller closes (or publishes) the file once download() returns: a write still
    going on then would land in a closed, reused or published file."""
    writing, release = threading.Event(), threading.Event()

    class Slow(FilePlacement):
        def write(self, offset, data):
            writing.set()
            assert release.wait(10)
            super().write(offset, data)

    place = Slow(512 * KIB)
    store = FakeStore({"a": b"y" * (512 * KIB)})
    outcome: list[BaseException] = []

    told = threading.Event()

    def run():
        def check():
            if writing.is_set():
                told.set()
                raise KeyboardInterrupt  # as a Ctrl-C in the reader's thread would

        try:
            engine.download(store, "a", 512 * KIB, lambda b: None, check_cancelled=check, into=place)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    assert writing.wait(5) and told.wait(5)  # the reader has been told to stop
    thread.join(0.3)
    assert thread.is_alive() and not outcome  # held until the write is over
    release.set()
    thread.join(10)
    place.ended = True
    assert len(outcome) == 1 and isinstance(outcome[0], KeyboardInterrupt)
    deadline = time.monotonic() + 5
    while engine._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert place.late == [] and not engine._transfers and engine._reserved == 0


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


def test_a_connection_thread_runs_its_parts_store_calls_on_one_helper_not_a_thread_a_part(tmp_path, monkeypatch):
    store = Store(str(tmp_path))
    data = np.random.default_rng(7).bytes(40 * 64)
    (tmp_path / "obj").write_bytes(data)
    calls: list[tuple[threading.Thread, threading.Thread]] = []  # (connection thread, where it ran)
    run = store._run

    def recorded(op, key, fn, **kwargs):
        owner = threading.current_thread()

        def call():
            calls.append((owner, threading.current_thread()))
            return fn()

        return run(op, key, call, **kwargs)

    monkeypatch.setattr(store, "_run", recorded)
    engine = PartEngine(parts=2, part_size=64)
    engine.attach()
    try:
        got = bytearray()
        engine.download(store, "obj", len(data), got.extend)
        assert bytes(got) == data
    finally:
        engine.detach()
    helpers: dict[threading.Thread, set[threading.Thread]] = {}
    for owner, ran_on in calls:
        helpers.setdefault(owner, set()).add(ran_on)
    assert len(calls) == 40 and 1 <= len(helpers) <= 2
    for owner, ran_on in helpers.items():
        assert len(ran_on) == 1 and owner not in ran_on  # one helper each, not a thread a call
        helper = next(iter(ran_on))
        helper.join(2)
        assert not helper.is_alive()  # it ended with its connection thread


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


def test_an_error_outside_the_request_reaches_the_reader_instead_of_hanging_it(engine, monkeypatch):
    store = FakeStore({"a": b"q" * (256 * KIB)})
    real, calls = engine._fetch, []

    def failing(transfer, i):
        calls.append(i)
        if len(calls) == 2:
            raise MemoryError("no room for a part buffer (injected)")
        return real(transfer, i)

    monkeypatch.setattr(engine, "_fetch", failing)
    with pytest.raises(MemoryError, match="injected"):
        download(engine, store, "a")
    deadline = time.monotonic() + 5
    while engine._in_flight and time.monotonic() < deadline:
        time.sleep(0.01)
    assert engine._in_flight == 0 and engine._reserved == 0


_FORK_CHILD = """
import os, sys, threading
import numpy as np
import roxxel
from roxxel.backends import Store
from roxxel.read import parts
from tests.faults import FaultyFileSystem, faulty_url

url, cache = sys.argv[1], sys.argv[2]
parts._ENGINE = parts.PartEngine(parts=4, part_size=64 * 1024)
store = Store(faulty_url(url), fs=FaultyFileSystem(latency=0.01))
ds = roxxel.open(url, cache_dir=cache, store=store, lookahead=4)
it = iter(ds)
for _ in range(5):
    next(it)
assert parts._ENGINE._in_flight == 4  # every slot of the parent's engine busy at the fork
pid = os.fork()
if pid == 0:
    done, out = threading.Event(), {}

    def run():
        try:
            out["n"] = sum(1 for _ in ds)
        finally:
            done.set()

    threading.Thread(target=run, daemon=True).start()
    os._exit(0 if done.wait(20) and out.get("n") == len(ds) else 3)
_, status = os.waitpid(pid, 0)
ds.close()
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_a_forked_child_downloads_with_an_engine_of_its_own(tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    url = str(tmp_path / "ds")
    rng = np.random.default_rng(0)
    with roxxel.Writer(url, shard_bytes=600 * KIB) as w:
        w.extend(rng.bytes(10 * KIB) for _ in range(400))
    repo = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _FORK_CHILD, url, str(tmp_path / "cache")],
                         cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


def test_downloads_ahead_of_a_reader_wait_for_the_one_it_waits_for_first(tmp_path, monkeypatch):
    # Threads start downloads in any order, and parts on the wire are not taken back:
    # when the thread with the reader's first shard is a moment late, the lookahead's
    # downloads must still reach the engine after it.
    from roxxel.read.residency import _FIRST_GRACE
    from tests.faults import FaultyFileSystem, faulty_url

    url = str(tmp_path / "ds")
    rng = np.random.default_rng(3)
    with roxxel.Writer(url, shard_bytes=300 * KIB) as w:
        w.extend(rng.bytes(10 * KIB) for _ in range(150))
    monkeypatch.setattr(parts, "_ENGINE", PartEngine(parts=4, part_size=64 * KIB))
    registered: list[str] = []
    download = PartEngine.download
    with roxxel.open(url, cache_dir=str(tmp_path / "peek")) as peek:
        shards = peek.manifest.shards.uris.tolist()

    def recorded(self, store, key, *args, **kwargs):
        if key.endswith(shards[0]):
            time.sleep(_FIRST_GRACE / 3)  # the other threads are at work meanwhile
        registered.append(key)
        return download(self, store, key, *args, **kwargs)

    monkeypatch.setattr(PartEngine, "download", recorded)
    store = Store(faulty_url(url), fs=FaultyFileSystem(latency=0.002))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), store=store, lookahead=4) as ds:
        first = next(iter(ds))
        assert bytes(first) == bytes(ds[0])
    assert len(shards) >= 4 and len(registered) >= 2
    assert registered[0].endswith(shards[0]), registered[:3]


def test_a_refused_connection_is_retried_and_leaves_the_direct_path_on(tmp_path):
    import socket

    import s3fs

    from roxxel.backends import s3 as s3_backend
    from tests.servers import s3_storage_options

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    fs = s3fs.S3FileSystem(skip_instance_cache=True, **s3_storage_options(f"http://127.0.0.1:{port}"))
    with pytest.raises(ConnectionRefusedError):
        s3_backend.read_direct_range(fs, "bucket/key", 0, 10, memoryview(bytearray(10)))
    assert not s3_backend.refused(fs)  # a blip of the network, not a store that does not fit


def test_a_warm_cache_starts_no_download_thread(tmp_path):
    from tests.reliability_kit import check_all, write

    url = str(tmp_path / "ds")
    write(url, 300, shard_bytes=4 * KIB)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        check_all(ds.iter(seed=1), 300)
    before = {t for t in threading.enumerate() if t.name.startswith("roxxel-download")}
    with roxxel.open(url, cache_dir=str(tmp_path / "cache")) as ds:
        it = ds.iter(seed=2)
        seen = [next(it)]
        started = {t for t in threading.enumerate() if t.name.startswith("roxxel-download")} - before
        check_all(seen + list(it), 300)
        assert ds.stats["shards_downloaded"] == 0 and ds.stats["cache_hits"] == ds.num_shards
    assert started == set()  # every shard of the window was cached: nothing to start


def test_the_parts_in_flight_can_be_set_for_a_node(monkeypatch):
    monkeypatch.setattr(parts, "_ENGINE", None)
    monkeypatch.setenv("ROXXEL_PARTS_IN_FLIGHT", "48")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert parts.engine().limit == 24  # the node's 48, shared by its 2 local ranks
    monkeypatch.setattr(parts, "_ENGINE", None)
    monkeypatch.setenv("ROXXEL_PARTS_IN_FLIGHT", "lots")
    with pytest.raises(ValueError, match=r"ROXXEL_PARTS_IN_FLIGHT is 'lots', expected a whole number"):
        parts.engine()
    monkeypatch.setattr(parts, "_ENGINE", None)


def test_an_uncompressed_shard_is_placed_in_its_temp_file_and_still_verified(tmp_path, small_parts,
                                                                               monkeypatch):
    """Its parts are written into the cache's temp file by the connection threads, and
    the check reads them back: a shard whose bytes differ from the manifest's is still
    refused, naming the shard, and leaves no temp file. A zstd shard, whose cached file
    is not its stored bytes, is written by the check as before."""
    from roxxel.cache import download as cache_download

    claimed: list[str] = []
    real_claim = cache_download.Spool.claim

    def claim(self):
        claimed.append(self._spec.label)
        real_claim(self)

    monkeypatch.setattr(cache_download.Spool, "claim", claim)
    rng = np.random.default_rng(8)
    records = [rng.bytes(int(n)) for n in rng.integers(1000, 60_000, size=80)]
    with s3_server(fast_ranges=True) as server:
        options = server.storage_options
        server.create_bucket("placed")
        for name, compression in (("plain", None), ("zstd", "zstd")):
            with roxxel.Writer(f"s3://placed/{name}", storage_options=options, shard_bytes=1 * 2**20,
                               compression=compression) as w:
                w.extend(records)
            with roxxel.open(f"s3://placed/{name}", storage_options=options,
                             cache_dir=str(tmp_path / name)) as ds:
                assert [bytes(r) for r in ds] == records
                if name == "plain":
                    shards, first = ds.num_shards, str(ds.manifest.shards.uris[0])
        assert shards > 1 and len(claimed) == shards and all("/plain/" in c for c in claimed)
        fs = server.filesystem()
        path = f"placed/plain/{first}"
        stored = bytearray(fs.cat_file(path))
        stored[len(stored) // 2] ^= 0xFF  # same size, one byte changed
        fs.pipe_file(path, bytes(stored))
        cache = tmp_path / "corrupt"
        with roxxel.open("s3://placed/plain", storage_options=options, cache_dir=str(cache)) as ds, \
                pytest.raises(IntegrityError, match=r"checksum is .*expected"):
            ds[0]
    assert not [p for p in cache.rglob("*.part")]


# -- fast connections, a first record's GETs, wake-ups ----------------------------------


def fast(engine: PartEngine, store: FakeStore) -> FakeStore:
    """``store``, its connections shown fast to ``engine`` (a part in no time)."""
    engine._rates[store] = float("inf")
    return store


def held_peak(e: PartEngine, store: FakeStore, data: bytes) -> int:
    """How many of ``store``'s parts ``e`` has in flight at once, all held: waited for
    until no more start, then let go (the download checked)."""
    store.gate = threading.Event()
    got = bytearray()
    reader = threading.Thread(target=e.download, args=(store, "a", len(data), got.extend))
    reader.start()
    try:
        deadline = time.monotonic() + 10
        seen = -1
        while seen != store.in_flight and time.monotonic() < deadline:  # (until none starts for 0.3 s)
            seen = store.in_flight
            time.sleep(0.3)
        return store.in_flight
    finally:
        store.gate.set()
        reader.join(10)
        assert bytes(got) == data


def test_where_connections_are_fast_the_cpus_bound_the_parts_in_flight():
    """On loopback the CPUs, not the link, are the limit: ``cpu_parts`` in flight at most,
    the node's other processes' parts counted against them; on a slow store, the limit."""
    data = np.random.default_rng(21).bytes(2048 * KIB)
    e = PartEngine(parts=8, part_size=64 * KIB, cpu_parts=3)
    e.attach()
    try:
        assert held_peak(e, fast(e, FakeStore({"a": data})), data) == 3
        assert held_peak(e, FakeStore({"a": data}), data) == 8  # (nothing shown yet: maybe slow)
    finally:
        e.detach()
    unbound = PartEngine(parts=8, part_size=64 * KIB)  # (no cpu_parts: the limit, however fast)
    unbound.attach()
    try:
        assert held_peak(unbound, fast(unbound, FakeStore({"a": data})), data) == 8
    finally:
        unbound.detach()


def test_the_cpus_parts_are_the_node_s(tmp_path):
    """With the node's count, what the node's other processes use comes off ``cpu_parts``
    (one part at least)."""
    from roxxel.read.nodeparts import NodeParts

    node = NodeParts.join(16, str(tmp_path / "count"))
    e = PartEngine(parts=8, part_size=64 * KIB, node=node, cpu_parts=4)
    store = fast(e, FakeStore({"a": b"x" * 256 * KIB}))
    with e._cond:
        e._transfers.append(parts.Transfer(store, "a", 256 * KIB, 64 * KIB, 1))
        assert e._slots() == 4
        node.others = lambda: 3  # (another process has 3 parts in flight)
        assert e._slots() == 1
        node.others = lambda: 9
        assert e._slots() == 1
        e._rates.clear()  # (slow after all: the node's budget, less the others')
        assert e._slots() == 8


@pytest.mark.parametrize("slow", [False, True])
def test_parts_leave_a_first_record_s_gets_room(slow):
    """While GETs a first record waits for are in flight beside the engine (``outside(first=)``):
    no part where the store's connections are fast, or until the GETs have taken longer
    than a fast connection would; then, on a slow store, half the slots; and on any
    store once ``_LEAD_HOLD_SECONDS`` have passed."""
    now = [0.0]
    e = PartEngine(parts=8, part_size=1024 * KIB, clock=lambda: now[0])  # (a fast connection: 0.1 s for 1 MiB)
    data = np.random.default_rng(22).bytes(8192 * KIB)
    store = FakeStore({"a": data})
    if not slow:
        fast(e, store)
    store.gate = threading.Event()
    e.attach()
    got = bytearray()

    def calls_after(seconds: float, expected: int) -> int:
        now[0] = seconds
        with e._cond:
            e._cond.notify_all()
        deadline = time.monotonic() + 10
        while len(store.calls) < expected and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        return len(store.calls)

    try:
        with e.outside(64 * KIB, store, first=True):
            reader = threading.Thread(target=e.download, args=(store, "a", len(data), got.extend))
            reader.start()
            time.sleep(0.2)
            assert store.calls == []  # (held back: fast, or maybe so for now)
            assert calls_after(0.1, 4 if slow else 0) == (4 if slow else 0)  # (a fast connection's time)
            assert calls_after(parts._LEAD_HOLD_SECONDS, 4) == 4  # (held no longer)
        store.gate.set()
        reader.join(10)
        assert bytes(got) == data and store.peak <= 8
    finally:
        store.gate.set()
        e.detach()


def test_an_event_wakes_one_connection_thread_not_all(monkeypatch):
    """Each event (a part landing, one consumed) wakes one waiting connection thread, and
    one that picks a part wakes the next: with 32 threads and room for 4 parts, a
    download of 64 parts takes a few picks a part, not one for every idle thread at
    every event (about 1,900 here, which on loopback cost a quarter more CPU)."""
    monkeypatch.setattr(parts, "_POLL_SECONDS", 30.0)  # (the picks of threads that look again by themselves)
    data = np.random.default_rng(23).bytes(64 * 16 * KIB)
    e = PartEngine(parts=32, part_size=16 * KIB, max_bytes=4 * 16 * KIB)
    picks = [0]
    pick = e._pick

    def counted():
        picks[0] += 1
        return pick()

    e._pick = counted
    e.attach()
    try:
        store = FakeStore({"a": data}, delay=0.002)
        assert download(e, store, "a") == data and store.peak == 4
    finally:
        e.detach()
    assert picks[0] <= 6 * 64 + 2 * 32


def test_a_first_record_s_gets_show_a_store_slow_once_in_flight_longer_than_a_fast_connection_takes():
    """Before any GET from a store has moved enough to tell, GETs a first record waits for
    that have been in flight longer than a fast connection takes for 1 MiB (12.5 ms with
    8 MiB parts) say it is slow (``lead_check`` 0, else the seconds until they may); a
    GET that told says what it told (fast: None)."""
    now = [0.0]
    e = PartEngine(parts=4, clock=lambda: now[0])
    store, other = FakeStore({}), FakeStore({})
    assert e.lead_check(store) == pytest.approx(0.0125)  # (nothing in flight, nothing known)
    with e.outside(64 * KIB, store, first=True):
        now[0] += 0.011
        assert e.lead_check(store) == pytest.approx(0.0015)
        now[0] += 0.001
        assert e.lead_check(store) == pytest.approx(0.001)  # (a millisecond at least: 0 says slow)
        now[0] += 0.001
        assert e.lead_check(store) == 0 and e.lead_check(other) == pytest.approx(0.0125)
    with e.outside(2048 * KIB, store):  # (2 MiB in 10 ms: a part would take 40 ms)
        now[0] += 0.01
    with e.outside(64 * KIB, store, first=True):
        now[0] += 1.0
        assert e.lead_check(store) is None  # (known fast: a first byte that long is the server's)
    with e.outside(2048 * KIB, other):  # (2 MiB in 0.2 s: slow)
        now[0] += 0.2
    assert e.lead_check(other) == 0


def test_a_first_record_s_fetch_holds_parts_back_between_its_gets_and_not_for_long():
    """A fetch a first record waits for (``lead``: a resume's index, then its part's GETs)
    holds parts back between its GETs too, on a fast store; and no hold lasts longer than
    ``_LEAD_HOLD_SECONDS``, whatever the GETs: one stuck in a retry's backoff holds no
    part back, not even one a consumer waits for, for longer."""
    now = [0.0]
    e = PartEngine(parts=8, part_size=64 * KIB, clock=lambda: now[0])
    data = np.random.default_rng(24).bytes(512 * KIB)
    store = fast(e, FakeStore({"a": data}))
    e.attach()
    got = bytearray()
    try:
        end = e.lead(store)
        reader = threading.Thread(target=e.download, args=(store, "a", len(data), got.extend))
        reader.start()
        time.sleep(0.2)
        assert store.calls == []  # (no GET of the fetch in flight, and still none)
        now[0] += parts._LEAD_HOLD_SECONDS
        with e._cond:
            e._cond.notify_all()
        reader.join(10)
        assert bytes(got) == data  # (held no longer than that)
        end()
        end()  # (once: a second call does nothing)
        assert e._leads == []
    finally:
        e.detach()


def test_threads_asked_for_while_another_caller_starts_them_are_started():
    """A download that asks for threads while another caller is starting them, after
    that caller's last look, still gets them: it looks again."""
    e = PartEngine(parts=2, part_size=64 * KIB)
    e.attach()
    data = np.random.default_rng(25).bytes(256 * KIB)
    store = FakeStore({"a": data})
    start_threads = e._start_threads
    got = bytearray()
    reader = threading.Thread(target=e.download, args=(store, "a", len(data), got.extend))

    def late() -> None:  # (the starting caller's look: nothing to start, as a download arrives)
        e._start_threads = start_threads
        with e._cond:
            e._start_asked = False
        reader.start()
        deadline = time.monotonic() + 10
        while not (e._transfers and e._start_asked) and time.monotonic() < deadline:
            time.sleep(0.01)  # (its own ask found the starting taken)

    e._start_threads = late
    try:
        placeholder = parts.Transfer(store, "b", 1, 64 * KIB, 0, lock=e._lock)  # (for the first look)
        placeholder.done = True  # (none of its parts is picked)
        with e._cond:
            e._transfers.append(placeholder)
        e._ensure_threads()
        with e._cond:
            del e._transfers[0]
        reader.join(10)
        assert not reader.is_alive() and bytes(got) == data
    finally:
        e.detach()
