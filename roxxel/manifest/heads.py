"""A shard's head: its first records, by their number and their bytes, and the checksums
of those bytes and of its record index, so that a reader can serve those records before
the whole shard has arrived.

In a manifest, an uncompressed shard may carry, besides its whole-shard ``checksum``::

    "head": "<records>:<bytes>:<checksum of bytes [0, bytes)>:<checksum of the index and footer>"

for example ``"1024:8386560:blake3:<64 hex digits>:blake3:<64 hex digits>"``: the first
1,024 records end at byte 8,386,560. The record index and footer are the shard's last
``8 * records + 24`` bytes (ROXXEL01), so both ranges follow from the manifest alone. A
reader that fetched those two ranges and found their checksums can trust the head's
records, whatever the rest of the shard holds; the whole shard is still verified
against ``checksum`` before it is kept in a cache. The head's record count is in the
manifest so that a planner can tell which records come first without the shard
(:mod:`roxxel.planner`, step 6). Roxxel's writer gives a head to each shard of a new
dataset that is uncompressed and of more than two parts: the records that end within its
first :data:`HEAD_BYTES`. Older roxxel versions refuse the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..format.layout import FOOTER_SIZE, OFFSET_SIZE
from ._report import show
from .checksums import CHECKSUM_ALGORITHMS, ShardKey, parse_checksum

__all__ = ["HEAD_BYTES", "HEAD_RE", "Head", "HeadCheck", "head_problem", "index_start", "parse_head"]

#: The first bytes a head covers, as roxxel's writer chooses them: one download part.
HEAD_BYTES = 8 * 2**20

_CHECKSUM = "|".join(f"{algorithm}:[0-9a-f]{{{n}}}" for algorithm, n in CHECKSUM_ALGORITHMS.items())
_COUNT = "[1-9][0-9]{0,17}"  # (below 10**18: whole columns of them convert to int64)
#: Matches exactly the well-formed head strings (their sizes are checked apart).
HEAD_RE = re.compile(f"({_COUNT}):({_COUNT}):((?:{_CHECKSUM})):((?:{_CHECKSUM}))")


@dataclass(frozen=True)
class Head:
    """A parsed head: the first ``records`` records, which end at byte ``size``; the
    checksum ``first`` of bytes ``[0, size)``, and ``index`` of the record index and footer."""

    records: int
    size: int
    first: ShardKey
    index: ShardKey

    def __str__(self) -> str:
        return f"{self.records}:{self.size}:{self.first.checksum}:{self.index.checksum}"


def index_start(records: int, stored_size: int) -> int:
    """Where the record index of an uncompressed shard of ``records`` records and
    ``stored_size`` bytes begins: the size of its payload."""
    return stored_size - OFFSET_SIZE * records - FOOTER_SIZE


def parse_head(value: str) -> Head:
    """The head in ``value``; ``ValueError`` if it is not well formed."""
    match = HEAD_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError("expected '<records>:<bytes>:<checksum>:<checksum>'")
    return Head(int(match[1]), int(match[2]), parse_checksum(match[3]), parse_checksum(match[4]))


def head_problem(value: str, records: int, stored_size: int, compression: str | None) -> str | None:
    """What is wrong with ``value`` as the head of the shard described, or None."""
    try:
        head = parse_head(value)
    except ValueError as exc:
        return f"{exc}, got {show(value)}"
    if compression is not None:
        return f"expected no head on a shard stored with compression {compression!r}"
    if head.records > records:
        return f"expected a head of at most the shard's {records} records, got {head.records}"
    payload = index_start(records, stored_size)
    if head.size > payload:
        return f"expected a head of at most the payload's {max(payload, 0)} bytes, got {head.size}"
    return None


class HeadCheck:
    """A shard's head checked against the shard's stored bytes as they stream by in
    order (``roxxel verify``): call it with each chunk, then :meth:`problem`. For an
    uncompressed shard of ``records`` records and ``stored_size`` bytes."""

    def __init__(self, head: Head, records: int, stored_size: int) -> None:
        self.head = head
        self._payload = index_start(records, stored_size)
        self._end_at = self._payload + OFFSET_SIZE * (head.records - 1)  # where the head's last end offset is
        self._first = head.first.new_hash()
        self._index = head.index.new_hash()
        self._end = bytearray()
        self._pos = 0

    def __call__(self, chunk: bytes | memoryview) -> None:
        a, b = self._pos, self._pos + len(chunk)
        view = memoryview(chunk)
        if a < self.head.size:
            self._first.update(view[: min(b, self.head.size) - a])
        if b > self._payload:
            self._index.update(view[max(self._payload, a) - a :])
        lo, hi = max(a, self._end_at), min(b, self._end_at + OFFSET_SIZE)
        if lo < hi:
            self._end += view[lo - a : hi - a]
        self._pos = b

    def problem(self) -> str | None:
        """What the bytes streamed contradict in the head, or None."""
        head = self.head
        for what, hasher, expected in (
            (f"bytes [0, {head.size})", self._first, head.first),
            ("the record index and footer", self._index, head.index),
        ):
            got = hasher.hexdigest()
            if got != expected.hexdigest:
                return f"head: {what} hash to {expected.algorithm}:{got}, the manifest's head says {expected.checksum}"
        end = int.from_bytes(self._end, "little") if len(self._end) == OFFSET_SIZE else None
        if end != head.size:
            return f"head: record {head.records - 1} ends at byte {end}, the manifest's head says {head.size}"
        return None
