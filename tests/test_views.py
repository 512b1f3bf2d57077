"""record_views: the C extension and its pure-Python twin keep one contract."""

from __future__ import annotations

import gc
import mmap
import operator
import os
import sys
import weakref
from itertools import chain

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roxxel.read import views as views_module
from roxxel.read.views import PyViews, record_views

try:
    from roxxel._cviews import views as c_views
except ImportError:  # pragma: no cover - only where the extension could not be built
    c_views = None

# scripts/test.sh builds the extension and sets this, so the C twin is never skipped there.
_REQUIRED = os.environ.get("ROXXEL_REQUIRE_CVIEWS") == "1"

IMPLEMENTATIONS = [
    pytest.param(PyViews, id="python"),
    pytest.param(
        c_views,
        id="c",
        marks=pytest.mark.skipif(c_views is None and not _REQUIRED, reason="roxxel._cviews was not built"),
    ),
]


def i64(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.int64)


def payloads() -> list[np.ndarray]:
    a = np.frombuffer(b"hello world", dtype=np.uint8)  # read-only
    b = np.arange(20, dtype=np.uint8)  # writeable
    return [a, b]


def test_the_extension_is_built_where_the_suite_requires_it() -> None:
    if _REQUIRED:
        assert c_views is not None, "roxxel._cviews did not build: is a C compiler installed?"
        assert views_module.ACCELERATED
    else:
        assert views_module.ACCELERATED == (c_views is not None)


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_records_are_views_of_their_bases(make) -> None:
    bases = payloads()
    out = list(make(bases, i64([0, 1, 0, 1, 1]), i64([0, 3, 6, 0, 20]), i64([5, 7, 11, 0, 20])))
    assert [bytes(r) for r in out] == [b"hello", bytes([3, 4, 5, 6]), b"world", b"", b""]
    for r, k in zip(out, [0, 1, 0, 1, 1]):
        assert r.dtype == np.uint8 and r.ndim == 1 and r.flags.c_contiguous
        assert np.shares_memory(r, bases[k]) or r.size == 0
        assert r.flags.writeable == bases[k].flags.writeable
    out[1][0] = 99  # a writeable base gives writeable views of the same memory
    assert bases[1][3] == 99
    with pytest.raises(ValueError):
        out[0][0] = 1


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_length_hint_counts_what_is_left_and_close_ends_it(make) -> None:
    it = make(payloads(), i64([0, 0, 0]), i64([0, 1, 2]), i64([1, 2, 3]))
    assert operator.length_hint(it) == 3
    records = iter(it)
    next(records)
    assert operator.length_hint(it) == 2
    it.close()
    assert operator.length_hint(it) == 0
    assert list(records) == []
    it.close()  # idempotent


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_flattened_by_chain_the_position_is_the_hint(make) -> None:
    bases = payloads()
    blocks = [make(bases, i64([1] * 4), i64(list(range(0, 8, 2))), i64(list(range(2, 10, 2)))) for _ in range(2)]
    stream = chain.from_iterable(blocks)
    got = [bytes(next(stream)) for _ in range(5)]
    assert got[4] == bytes([0, 1])
    assert operator.length_hint(blocks[0]) == 0 and operator.length_hint(blocks[1]) == 3


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_bad_slots_and_bounds_raise_before_any_record(make) -> None:
    bases = payloads()
    cases = [
        (i64([0, 2]), i64([0, 0]), i64([1, 1]), r"record 1: slot 2 is not one of the 2 bases"),
        (i64([0, -1]), i64([0, 0]), i64([1, 1]), r"record 1: slot -1 is not one of the 2 bases"),
        (i64([0, 0]), i64([0, 5]), i64([1, 12]), r"record 1: bounds \[5, 12\) are outside base 0 of 11 bytes"),
        (i64([1]), i64([-1]), i64([2]), r"record 0: bounds \[-1, 2\) are outside base 1 of 20 bytes"),
        (i64([1]), i64([5]), i64([4]), r"record 0: bounds \[5, 4\) are outside base 1 of 20 bytes"),
        (i64([0]), i64([2**62]), i64([2**62 + 1]), r"record 0: bounds .* outside base 0 of 11 bytes"),
    ]
    for slots, begins, ends, message in cases:
        with pytest.raises(IndexError, match=message):
            make(bases, slots, begins, ends)


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_wrong_types_and_lengths_are_refused(make) -> None:
    bases = payloads()
    with pytest.raises(TypeError, match="slots must be a 1-d contiguous array of native int64, got format 'i'"):
        make(bases, np.zeros(1, dtype=np.int32), i64([0]), i64([1]))
    with pytest.raises(TypeError, match="ends must be a 1-d contiguous array of native int64, got format 'l' with 2"):
        make(bases, i64([0]), i64([0]), np.zeros((1, 1), dtype=np.int64))
    with pytest.raises(TypeError, match="begins must be a 1-d contiguous array of native int64"):
        make(bases, i64([0, 0]), i64([0, 9, 1, 9])[::2], i64([1, 2]))  # strided
    with pytest.raises(TypeError, match="begins must be a 1-d contiguous array of native int64"):
        make(bases, i64([0]), np.zeros(1, dtype=">i8"), i64([1]))  # not native
    with pytest.raises(TypeError):
        make(bases, [0], [0], [1])  # lists are not buffers
    with pytest.raises(TypeError, match="base 1 must be a 1-d contiguous np.uint8 array"):
        make([bases[0], np.zeros(4, dtype=np.int16)], i64([0]), i64([0]), i64([1]))
    with pytest.raises(TypeError, match="base 0 must be a 1-d contiguous np.uint8 array"):
        make([np.arange(10, dtype=np.uint8)[::2]], i64([0]), i64([0]), i64([1]))
    with pytest.raises(TypeError, match="base 0 must be a 1-d contiguous np.uint8 array"):
        make([b"bytes are not arrays"], i64([0]), i64([0]), i64([1]))
    with pytest.raises(ValueError, match="one length, got 2, 1 and 1"):
        make(bases, i64([0, 0]), i64([0]), i64([1]))


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_the_columns_are_copied_when_the_iterator_is_made(make) -> None:
    # Checked once, so read from copies: changing the caller's arrays afterwards must
    # change nothing (in C, a bound changed after the check would point anywhere).
    bases = payloads()
    slots, begins, ends = i64([0, 0]), i64([0, 6]), i64([5, 11])
    it = make(bases, slots, begins, ends)
    slots[1], begins[1], ends[1] = 7, 2**40, 2**41
    assert [bytes(r) for r in it] == [b"hello", b"world"]


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_records_are_plain_arrays_whatever_the_base_subclass(make, tmp_path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"0123456789")
    base = np.memmap(path, dtype=np.uint8, mode="r")
    (record,) = make([base], i64([0]), i64([2]), i64([5]))
    assert type(record) is np.ndarray and bytes(record) == b"234"
    del record, base


@pytest.mark.skipif(c_views is None, reason="roxxel._cviews was not built")
def test_the_twins_word_their_errors_alike() -> None:
    bases = payloads()
    calls = [
        (bases, i64([0, 5]), i64([0, 0]), i64([1, 1])),
        (bases, i64([0]), i64([3]), i64([99])),
        (bases, np.zeros(2, dtype=np.int16), i64([0, 0]), i64([1, 1])),
        ([bases[0], np.zeros((2, 2), dtype=np.uint8)], i64([0]), i64([0]), i64([1])),
        (bases, i64([0]), i64([0, 1]), i64([1])),
    ]
    for args in calls:
        messages = []
        for make in (PyViews, c_views):
            with pytest.raises(Exception) as info:
                make(*args)
            messages.append((type(info.value), str(info.value).replace("roxxel._cviews", "")))
        assert messages[0] == messages[1]


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_empty(make) -> None:
    it = make([], i64([]), i64([]), i64([]))
    assert operator.length_hint(it) == 0 and list(it) == []


@pytest.mark.parametrize("make", IMPLEMENTATIONS)
def test_views_keep_the_memory_alive_and_the_iterator_lets_go_when_done(make, tmp_path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 16)
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    base = np.frombuffer(mm, dtype=np.uint8)
    it = make([base], i64([0, 0]), i64([0, 256]), i64([4, 260]))
    first = next(iter(it))
    del base
    gc.collect()
    with pytest.raises(BufferError):  # the iterator and the view both hold the map
        mm.close()
    assert bytes(next(iter(it))) == bytes([0, 1, 2, 3])
    assert list(it) == []  # exhausted: the iterator let go of its base
    with pytest.raises(BufferError):  # the view still holds it
        mm.close()
    assert bytes(first) == bytes([0, 1, 2, 3])
    del first
    gc.collect()
    mm.close()  # nothing holds the map any more


@pytest.mark.skipif(c_views is None, reason="roxxel._cviews was not built")
def test_the_c_iterator_leaks_no_references() -> None:
    base = np.arange(100, dtype=np.uint8)
    slots, begins, ends = i64([0] * 50), i64(list(range(50))), i64(list(range(1, 51)))
    before = sys.getrefcount(base), sys.getrefcount(slots)
    for _ in range(1000):
        records = list(c_views([base], slots, begins, ends))
        del records
        it = c_views([base], slots, begins, ends)
        next(it)
        del it
        with pytest.raises(IndexError):
            c_views([base], slots, begins, ends + 100)
    assert (sys.getrefcount(base), sys.getrefcount(slots)) == before
    ref = weakref.ref(it_holder := np.arange(3, dtype=np.uint8))
    it = c_views([it_holder], i64([0]), i64([0]), i64([1]))
    del it_holder
    assert ref() is not None
    del it
    assert ref() is None


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 64), min_size=1, max_size=5),
    picks=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 10**6), st.integers(0, 10**6)), max_size=40),
)
def test_both_twins_give_the_same_records(sizes: list[int], picks: list[tuple[int, int, int]]) -> None:
    bases = [np.arange(n, dtype=np.uint8) + k for k, n in enumerate(sizes)]
    rows = []
    for s, x, y in picks:
        s %= len(bases)
        n = len(bases[s])
        a, b = sorted((x % (n + 1), y % (n + 1)))
        rows.append((s, a, b))
    slots, begins, ends = (i64([r[c] for r in rows]) for c in range(3))
    want = [bytes(bases[s][a:b]) for s, a, b in rows]
    assert [bytes(r) for r in PyViews(bases, slots, begins, ends)] == want
    assert [bytes(r) for r in record_views(bases, slots, begins, ends)] == want
