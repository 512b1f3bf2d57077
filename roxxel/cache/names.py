"""Names in the cache: the file names derived from checksums, and size limits (parsed
here; what a limit must hold is decided in :mod:`roxxel.cache.sizing`).

Nothing here touches the file system. Every name the cache creates comes from a
checksum that passed :func:`roxxel.manifest.checksums.parse_checksum`, so no string from
a manifest can reach a path unchecked.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Mapping

from ..manifest.checksums import CHECKSUM_ALGORITHMS, ShardKey

__all__ = ["key_from_filename", "parse_size"]

_FILE_RE = re.compile(rf"({'|'.join(CHECKSUM_ALGORITHMS)})-([0-9a-f]+)\.rox")
_SIZE_RE = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([A-Za-z]*)\s*")
_UNITS: Mapping[str, int] = MappingProxyType(
    {
        "": 1, "B": 1,
        "KB": 1000, "MB": 1000**2, "GB": 1000**3, "TB": 1000**4,
        "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3, "TIB": 1024**4,
        "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4,
    }
)  # fmt: skip


def key_from_filename(name: str) -> ShardKey | None:
    """The key of a published shard file name ``"<algorithm>-<hex>.rox"``, else None."""
    match = _FILE_RE.fullmatch(name)
    if match is None or len(match[2]) != CHECKSUM_ALGORITHMS[match[1]]:
        return None
    return ShardKey(match[1], match[2])


def parse_size(value: int | str | None) -> int | None:
    """Parse a cache limit into bytes; None stays None (no limit).

    Accepts a positive int, or a string of a number and a unit, case-insensitive:
    no unit or ``B`` = bytes; ``KB``, ``MB``, ``GB``, ``TB`` are decimal (1000**n);
    ``KiB``, ``MiB``, ``GiB``, ``TiB`` and the single letters ``K``, ``M``, ``G``, ``T``
    are binary (1024**n). ``"1.5 GiB"`` is 1610612736. Fractions of a byte round down.
    Anything else raises ``ValueError`` naming the value.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(
            f"cache limit {value!r} is not valid; expected bytes or a string like '50GB'"
        )
    if isinstance(value, int):
        size = value
    else:
        match = _SIZE_RE.fullmatch(value)
        unit = match[2].upper() if match else None
        if match is None or unit not in _UNITS:
            raise ValueError(
                f"cache limit {value!r} is not valid; expected a number and a unit, "
                "like '500MB', '50GB' (1000**n) or '1.5GiB', '10G' (1024**n)"
            )
        try:
            size = int(Decimal(match[1]) * _UNITS[unit])
        except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
            raise ValueError(f"cache limit {value!r} is not a number") from exc
    if size <= 0:
        raise ValueError(f"cache limit {value!r} is {size} bytes; expected a positive size")
    return size
