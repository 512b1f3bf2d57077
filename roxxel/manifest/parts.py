"""A shard's parts: a checksum of each part of its stored bytes, so that a reader can
trust one part before the whole shard has arrived.

In a manifest, an uncompressed shard may carry, besides its whole-shard ``checksum``::

    "parts": "<part bytes>:<algorithm>:<32 hex digits of each part's digest>"

for example ``"8388608:blake3:<32 hex digits><32 hex digits>..."``. The parts tile the
shard's stored bytes: part ``i`` is bytes ``[i * size, min((i + 1) * size, stored_size))``,
so there are exactly ``ceil(stored_size / size)`` of them, in order. Each part's digest
is the first 16 bytes (128 bits) of its algorithm's digest of those bytes: what a part
check needs is that no other bytes have that digest (second-preimage resistance, 128
bits here); collisions would only serve the writer, who signs the manifest anyway. At
8 MiB parts that is 32 manifest bytes a part: about 4 bytes a MiB of data, an eighth of
what whole digests would take.

A reader resuming inside a shard fetches the part its first record lies in, checks it,
and serves that record before the shard is whole (:mod:`roxxel.read.partfetch`, with
the record index the shard's head vouches for); the whole shard is still verified against
``checksum`` before it is kept in a cache, and ``roxxel verify`` checks every part.
Roxxel's writer gives parts to the shards it gives heads to. Older roxxel versions
refuse the field.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

from ._report import show
from .checksums import CHECKSUM_ALGORITHMS, new_hasher

__all__ = ["DIGEST_HEX", "MAX_PARTS", "MIN_PART_BYTES", "PARTS_RE", "Parts", "PartsCheck", "part_digest",
           "parse_parts", "parts_problem", "tiles"]

#: Hex digits of each part's digest in the field (128 bits).
DIGEST_HEX = 32
#: The most parts a shard's field may list (a 32 GiB shard in 8 MiB parts; 128 KiB of field).
MAX_PARTS = 4096
#: The smallest part a manifest may name.
MIN_PART_BYTES = 4096

_ALGORITHM = "|".join(CHECKSUM_ALGORITHMS)
#: Matches exactly the well-formed parts strings (their counts are checked apart).
PARTS_RE = re.compile(f"([1-9][0-9]{{0,17}}):({_ALGORITHM}):((?:[0-9a-f]{{{DIGEST_HEX}}})+)")


def part_digest(algorithm: str, data: bytes | bytearray | memoryview) -> str:
    """The digest of one part as the field holds it: the first 128 bits of
    ``algorithm``'s digest of ``data``, in lowercase hex."""
    hasher = new_hasher(algorithm)
    hasher.update(data)
    return hasher.hexdigest()[:DIGEST_HEX]


@dataclass(frozen=True)
class Parts:
    """Parsed parts: each of ``size`` bytes (the last one what is left), and their
    digests, :data:`DIGEST_HEX` hex digits each, one after the other."""

    size: int
    algorithm: str
    digests: str

    def __len__(self) -> int:
        return len(self.digests) // DIGEST_HEX

    def __str__(self) -> str:
        return f"{self.size}:{self.algorithm}:{self.digests}"

    def digest(self, i: int) -> str:
        """Part ``i``'s digest."""
        return self.digests[i * DIGEST_HEX : (i + 1) * DIGEST_HEX]

    def covering(self, start: int, end: int) -> range:
        """The parts that bytes ``[start, end)`` lie in (one, for an empty range)."""
        return range(start // self.size, max(start, end - 1) // self.size + 1)

    def span(self, parts: range, stored_size: int) -> tuple[int, int]:
        """The bytes ``[start, end)`` that ``parts`` cover in a shard of ``stored_size`` bytes."""
        return parts.start * self.size, min(parts.stop * self.size, stored_size)

    def problem(self, i: int, data: bytes | bytearray | memoryview) -> str | None:
        """What is wrong with ``data`` as part ``i``'s bytes, or None."""
        got = part_digest(self.algorithm, data)
        if got != self.digest(i):
            return f"its part {i} hashes to {self.algorithm} {got}..., the manifest's parts say {self.digest(i)}..."
        return None


def parse_parts(value: str) -> Parts:
    """The parts in ``value``; ``ValueError`` if it is not well formed."""
    match = PARTS_RE.fullmatch(value) if isinstance(value, str) else None
    if match is None:
        raise ValueError(f"expected '<part bytes>:<algorithm>:<{DIGEST_HEX} hex digits a part>'")
    return Parts(int(match[1]), match[2], match[3])


def parts_problem(value: str, stored_size: int, compression: str | None) -> str | None:
    """What is wrong with ``value`` as the parts of the shard described, or None."""
    try:
        parts = parse_parts(value)
    except ValueError as exc:
        return f"{exc}, got {show(value)}"
    if compression is not None:
        return f"expected no parts on a shard stored with compression {compression!r}"
    if parts.size < MIN_PART_BYTES:
        return f"expected parts of at least {MIN_PART_BYTES} bytes, got {parts.size}"
    count = -(-stored_size // parts.size)
    if count > MAX_PARTS:
        return f"expected at most {MAX_PARTS} parts, got {count} of {parts.size} bytes"
    if len(parts) != count:
        return f"expected {count} digests (a part of {parts.size} bytes in {stored_size}), got {len(parts)}"
    return None


def tiles(stored_size: int, size: int) -> Iterator[tuple[int, int]]:
    """The parts ``[start, end)`` of ``size`` bytes that tile ``stored_size`` bytes."""
    return ((a, min(a + size, stored_size)) for a in range(0, stored_size, size))


class PartsCheck:
    """A shard's parts checked against its stored bytes as they stream by in order
    (``roxxel verify``): call it with each chunk, then :meth:`problem`."""

    def __init__(self, parts: Parts) -> None:
        self.parts = parts
        self._hasher = new_hasher(parts.algorithm)
        self._i = 0
        self._filled = 0
        self._first: str | None = None

    def __call__(self, chunk: bytes | memoryview) -> None:
        view, size = memoryview(chunk), self.parts.size
        while len(view):
            take = min(len(view), size - self._filled)
            self._hasher.update(view[:take])
            self._filled += take
            view = view[take:]
            if self._filled == size:
                self._end_part()

    def _end_part(self) -> None:
        got = self._hasher.hexdigest()[:DIGEST_HEX]
        if self._first is None and (self._i >= len(self.parts) or got != self.parts.digest(self._i)):
            expected = self.parts.digest(self._i) if self._i < len(self.parts) else "no part"
            self._first = (f"parts: part {self._i} hashes to {self.parts.algorithm} {got}..., "
                           f"the manifest says {expected}")
        self._i += 1
        self._filled = 0
        self._hasher = new_hasher(self.parts.algorithm)

    def problem(self) -> str | None:
        """What the bytes streamed contradict in the parts, or None."""
        if self._filled:
            self._end_part()
        if self._first is None and self._i != len(self.parts):
            return f"parts: the bytes make {self._i} parts, the manifest lists {len(self.parts)}"
        return self._first
