"""Checksums: the algorithms a manifest may name, and the one parser of checksum strings.

A checksum is ``"<algorithm>:<lowercase hex digest>"`` of a shard's stored bytes, for
example ``"sha256:<64 hex digits>"``. The cache derives its file names from parsed
checksums only, so no string from a manifest reaches a path unchecked.
"""

from __future__ import annotations

import hashlib
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "CHECKSUM_RE",
    "DEFAULT_ALGORITHM",
    "ChecksumError",
    "ShardKey",
    "parse_checksum",
]

#: Allowed checksum algorithms and the exact number of lowercase hex digits of each.
CHECKSUM_ALGORITHMS: Mapping[str, int] = MappingProxyType({"sha256": 64, "blake2b": 128})
#: The algorithm of the checksums roxxel writes.
DEFAULT_ALGORITHM = "sha256"

#: Matches exactly the valid checksum strings (for checking whole columns at once).
CHECKSUM_RE = re.compile(
    "|".join(f"({algorithm}):([0-9a-f]{{{n}}})" for algorithm, n in CHECKSUM_ALGORITHMS.items())
)


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

    def new_hash(self) -> hashlib._Hash:
        """A fresh hash object of this key's algorithm (blake2b: 64-byte digest)."""
        return hashlib.new(self.algorithm)


def parse_checksum(value: object) -> ShardKey:
    """The key of ``"sha256:<64 hex>"`` or ``"blake2b:<128 hex>"`` (lowercase, exact length).

    Anything else raises :class:`ChecksumError` (a ``ValueError``) saying what was expected.
    """
    match = CHECKSUM_RE.fullmatch(value) if isinstance(value, str) else None
    if match is not None:
        algorithm, digest = (group for group in match.groups() if group is not None)
        return ShardKey(algorithm, digest)
    if not isinstance(value, str) or ":" not in value:
        raise ChecksumError(value, "a checksum like 'sha256:<64 hex digits>'")
    algorithm, _, digest = value.partition(":")
    if algorithm not in CHECKSUM_ALGORITHMS:
        allowed = ", ".join(sorted(CHECKSUM_ALGORITHMS))
        raise ChecksumError(value, f"a checksum algorithm among {allowed}")
    length = CHECKSUM_ALGORITHMS[algorithm]
    if len(digest) != length:
        raise ChecksumError(value, f"{length} hex digits after '{algorithm}:'", len(digest))
    raise ChecksumError(value, "lowercase hex digits [0-9a-f]")
