"""A shard's first records before the whole shard has arrived, vouched for by its head.

The first record of ``for r in ds`` waits for the first shard, and a large one takes the
link's time to arrive whole (256 MiB through a 400 MB/s link: 0.7 s), however fast its
first part comes. When the manifest gives the shard a head (:mod:`roxxel.manifest.heads`:
the checksums of its first bytes and of its record index), :func:`fetch_head` fetches
those two ranges side by side, the first bytes as pieces of :data:`PIECE`, checks each
against its checksum and the index against the footer and the manifest, and returns
the records that lie wholly in the first bytes. The whole shard is downloaded and
verified into the cache as before; these bytes are held in memory (one part's worth),
never cached. Nothing is returned that was not checked.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..backends import Store
from ..errors import IntegrityError, ShardFormatError
from ..format.layout import FOOTER_SIZE, OFFSET_DTYPE, check_offsets, parse_footer
from ..manifest.checksums import ShardKey, new_hasher
from ..manifest.heads import Head, index_start

__all__ = ["PIECE", "HeadRecords", "fetch_head"]

#: The first bytes are fetched as pieces of this size, side by side: at 25 MB/s a
#: connection, 8 MiB as four pieces come in a quarter of one part's time.
PIECE = 2 * 2**20


@dataclass(frozen=True)
class HeadRecords:
    """The first ``count`` records of a shard (its head's): ``payload`` holds their bytes
    and ``offsets`` the end offset of every record of the shard, both checked; fetched
    in ``gets`` requests of ``nbytes`` in all."""

    payload: np.ndarray
    offsets: np.ndarray
    count: int
    gets: int
    nbytes: int


def fetch_head(store: Store, key: str, records: int, stored_size: int, head: Head) -> HeadRecords:
    """The ``head``'s records of ``key``, an uncompressed shard of ``records`` records and
    ``stored_size`` bytes, as its manifest says.

    Raises :class:`~roxxel.errors.IntegrityError` if a range does not match its checksum,
    :class:`~roxxel.errors.ShardFormatError` if the index does not describe the shard
    the manifest does, and the store's errors as they come."""
    label = store.url(key)
    payload_size = index_start(records, stored_size)
    first, index = bytearray(head.size), bytearray(stored_size - payload_size)
    pieces = [(first, a, min(a + PIECE, head.size), a) for a in range(0, head.size, PIECE)]
    pieces.append((index, payload_size, stored_size, 0))

    def read_piece(into: bytearray, start: int, end: int, at: int) -> None:
        # (the store's fast path, as the shard's own parts take; a retry's bytes come
        # back in a buffer of their own)
        view = memoryview(into)[at : at + end - start]
        got = store.read_part(key, start, end, view)
        if got.obj is not into:
            view[:] = got

    with ThreadPoolExecutor(len(pieces), thread_name_prefix="roxxel-head") as pool:
        for read in [pool.submit(read_piece, *piece) for piece in pieces]:
            read.result()
    _check(index, head.index, f"{label}: bytes [{payload_size}, {stored_size}) (its record index)")
    _check(first, head.first, f"{label}: bytes [0, {head.size}) (its head)")
    layout = parse_footer(index[-FOOTER_SIZE:], stored_size, label)
    if layout.record_count != records or layout.payload_size != payload_size:
        raise ShardFormatError(
            f"{label}: footer says {layout.record_count} records in {layout.payload_size} "
            f"payload bytes, expected {records} in {payload_size} from the manifest"
        )
    offsets = np.frombuffer(index, dtype=OFFSET_DTYPE, count=records)
    check_offsets(offsets, layout, label)
    if int(offsets[head.records - 1]) != head.size:
        raise ShardFormatError(
            f"{label}: record {head.records - 1} ends at byte {int(offsets[head.records - 1])}, "
            f"expected {head.size} from the manifest's head"
        )
    return HeadRecords(np.frombuffer(first, dtype=np.uint8), offsets, head.records,
                       gets=len(pieces), nbytes=len(first) + len(index))


def _check(data: bytes | bytearray, expected: ShardKey, what: str) -> None:
    hasher = new_hasher(expected.algorithm)
    hasher.update(data)
    got = hasher.hexdigest()
    if got != expected.hexdigest:
        raise IntegrityError(f"{what}: {expected.algorithm} is {got}, expected {expected.hexdigest} "
                             "from the manifest's head")
