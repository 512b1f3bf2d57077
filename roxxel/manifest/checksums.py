"""Checksums: the algorithms a manifest may name, and the one parser of checksum strings.

A checksum is ``"<algorithm>:<lowercase hex digest>"`` of a shard's stored bytes, for
example ``"blake3:<64 hex digits>"``. The cache derives its file names from parsed
checksums only, so no string from a manifest reaches a path unchecked.

The algorithm table is also the one place that knows how to make a hasher
(:func:`new_hasher`): the writers, the streaming shard check and the cache's re-hash all
go through it. Every algorithm here is cryptographic, so a signed manifest vouches for
its shards' bytes, and a checksum can name a file in a cache shared by many datasets.
roxxel writes BLAKE3 (one thread, several GB/s a core, see the README's measurements);
sha256 and blake2b manifests stay readable and are verified as before.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Protocol

# Imported with roxxel (under a millisecond), never on first use: the first use is in a
# download thread, and a process that forks while a thread imports a module leaves the
# child waiting for that import forever (a DataLoader's fork workers hung so).
from blake3 import blake3

from ..workers import usable_cpus

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "CHECKSUM_RE",
    "DEFAULT_ALGORITHM",
    "THREADED_CHECK_BYTES",
    "ChecksumError",
    "Hasher",
    "ShardKey",
    "check_threads",
    "new_hasher",
    "parse_checksum",
]


class Hasher(Protocol):
    """What every checksum algorithm's hash object offers."""

    def update(self, data: Any, /) -> object: ...

    def hexdigest(self) -> str: ...


def _blake3(threads: int) -> Hasher:
    # One thread by default: the downloader already hashes shards side by side on its own
    # threads, and what verifying costs is counted in core-seconds, which threads do not
    # lower. More where a check's latency counts (see check_threads). A hasher of several
    # threads has a pool of its own: blake3.AUTO would share Rayon's global pool, which a
    # forked child (a DataLoader worker) inherits without its threads.
    return blake3(max_threads=max(1, threads))


# The table: each algorithm's digest in lowercase hex digits, and how to make its hasher
# (of at most so many threads: only blake3 uses more than one).
_ALGORITHMS: Mapping[str, tuple[int, Callable[[int], Hasher]]] = MappingProxyType(
    {
        "sha256": (64, lambda threads: hashlib.sha256()),
        "blake2b": (128, lambda threads: hashlib.blake2b()),  # a 64-byte digest
        "blake3": (64, _blake3),  # a 32-byte digest
    }
)

#: Bytes from which a shard being downloaded is hashed on several threads (check_threads).
THREADED_CHECK_BYTES = 16 * 2**20


def check_threads(size: int, share: int = 1) -> int:
    """Threads to hash a shard of ``size`` stored bytes being downloaded: up to 4 (this
    process's CPUs, divided between the ``share`` processes of the node that download
    too, allowing) from :data:`THREADED_CHECK_BYTES` on, else one. The first
    record and an epoch's last shard wait for that in-order check; with one thread, on
    loopback, it ended 0.1 s after a 256 MiB shard's last part had landed (the epoch of
    one such shard: 0.42 and 0.37 s with one, 0.37 and 0.34 s with several, medians of
    6 fresh-process runs in each of two rounds, for the same CPU time). Smaller shards
    keep one: a pool of threads each is not worth its start for them."""
    if size < THREADED_CHECK_BYTES:
        return 1
    return max(1, min(4, usable_cpus() // max(1, share)))


#: Allowed checksum algorithms and the exact number of lowercase hex digits of each.
CHECKSUM_ALGORITHMS: Mapping[str, int] = MappingProxyType({name: n for name, (n, _) in _ALGORITHMS.items()})
#: The algorithm of the checksums roxxel writes.
DEFAULT_ALGORITHM = "blake3"

#: Matches exactly the valid checksum strings (for checking whole columns at once).
CHECKSUM_RE = re.compile(
    "|".join(f"({algorithm}):([0-9a-f]{{{n}}})" for algorithm, n in CHECKSUM_ALGORITHMS.items())
)


def new_hasher(algorithm: str, threads: int = 1) -> Hasher:
    """A fresh hash object of ``algorithm``, one of :data:`CHECKSUM_ALGORITHMS`; its
    ``hexdigest()`` has exactly the digits that algorithm's checksums have. ``threads``:
    at most that many hash one update (blake3 only).

    Any other name raises ``ValueError`` naming the allowed ones.
    """
    entry = _ALGORITHMS.get(algorithm) if isinstance(algorithm, str) else None
    if entry is None:
        allowed = ", ".join(sorted(_ALGORITHMS))
        raise ValueError(f"checksum algorithm {algorithm!r} is not one of {allowed}")
    return entry[1](threads)


class ChecksumError(ValueError):
    """A string that is not a valid checksum: ``expected`` says what was expected and
    ``digits`` how many hex digits came, when their number was what was wrong."""

    def __init__(self, value: object, expected: str, digits: int | None = None) -> None:
        self.value, self.expected, self.digits = value, expected, digits
        got = reprlib.repr(value) if digits is None else f"{digits}: {reprlib.repr(value)}"
        super().__init__(f"checksum is not valid: expected {expected}, got {got}")


@dataclass(frozen=True)
class ShardKey:
    """A validated checksum: the identity of one shard's stored bytes."""

    algorithm: str
    hexdigest: str

    @property
    def checksum(self) -> str:
        """The checksum string, ``"<algorithm>:<hex>"``."""
        return f"{self.algorithm}:{self.hexdigest}"

    @property
    def stem(self) -> str:
        """The base of every cache file name for this shard, ``"<algorithm>-<hex>"``."""
        return f"{self.algorithm}-{self.hexdigest}"

    def new_hash(self, threads: int = 1) -> Hasher:
        """A fresh hash object of this key's algorithm (:func:`new_hasher`)."""
        return new_hasher(self.algorithm, threads)


_EXAMPLE = f"a checksum like '{DEFAULT_ALGORITHM}:<{CHECKSUM_ALGORITHMS[DEFAULT_ALGORITHM]} hex digits>'"


def parse_checksum(value: object) -> ShardKey:
    """The key of ``"blake3:<64 hex>"``, ``"sha256:<64 hex>"`` or ``"blake2b:<128 hex>"``
    (lowercase, exact length).

    Anything else raises :class:`ChecksumError` (a ``ValueError``) saying what was expected.
    """
    match = CHECKSUM_RE.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        algorithm, digest = (group for group in match.groups() if group is not None)
        return ShardKey(algorithm, digest)
    if not isinstance(value, str) or ":" not in value:
        raise ChecksumError(value, _EXAMPLE)
    algorithm, _, digest = value.partition(":")
    if algorithm not in CHECKSUM_ALGORITHMS:
        allowed = ", ".join(sorted(CHECKSUM_ALGORITHMS))
        raise ChecksumError(value, f"a checksum algorithm among {allowed}")
    length = CHECKSUM_ALGORITHMS[algorithm]
    if len(digest) != length:
        raise ChecksumError(value, f"{length} hex digits after '{algorithm}:'", len(digest))
    raise ChecksumError(value, "lowercase hex digits [0-9a-f]")
