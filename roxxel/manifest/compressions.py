"""Compressions: the one list of what a shard's stored bytes may be compressed with."""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["COMPRESSIONS", "COMPRESSION_CODES", "describe"]

#: The compressions a manifest may name; ``None`` means stored uncompressed. A shard's
#: code in ``ShardTable.compression`` is its index here.
COMPRESSIONS: tuple[str | None, ...] = (None, "zstd")
COMPRESSION_CODES = {name: code for code, name in enumerate(COMPRESSIONS)}


def describe(names: Iterable[str | None] = COMPRESSIONS, null: str = "None") -> str:
    """``"None or 'zstd'"``: the allowed values, for messages (``null`` names ``None``)."""
    return " or ".join(null if name is None else repr(name) for name in names)
