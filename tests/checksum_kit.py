"""Reference digests for every checksum algorithm roxxel knows, computed without roxxel
(hashlib and the blake3 package directly), so a test of roxxel's hashing cannot pass
whatever roxxel computes."""

from __future__ import annotations

import hashlib

import blake3

from roxxel.manifest.checksums import CHECKSUM_ALGORITHMS

_REFERENCE = {
    "sha256": lambda data: hashlib.sha256(data).hexdigest(),
    "blake2b": lambda data: hashlib.blake2b(data).hexdigest(),
    "blake3": lambda data: blake3.blake3(data).hexdigest(),
}
assert set(_REFERENCE) == set(CHECKSUM_ALGORITHMS), "a new algorithm needs its reference here"

#: Every algorithm, in a fixed order (for parametrize).
ALGORITHMS = sorted(CHECKSUM_ALGORITHMS)


def reference_checksum(data: bytes, algorithm: str) -> str:
    """``"<algorithm>:<hex>"`` of ``data``."""
    return f"{algorithm}:{_REFERENCE[algorithm](data)}"
