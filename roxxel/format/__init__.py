"""ROXXEL01 shards: the only package that knows offsets and footers.

- :mod:`~roxxel.format.layout`: the byte layout, its arithmetic and its validation;
- :mod:`~roxxel.format.writer`: records to bytes, and the streaming :class:`ShardWriter`;
- :mod:`~roxxel.format.mapped`: the validated memory-mapped :class:`MappedShard`;
- :mod:`~roxxel.format.check`: :class:`ShardCheck`, the one streaming check of a shard's
  stored bytes against its manifest entry (size, checksum, bounded decompression,
  offsets, footer).
"""

from __future__ import annotations

from .mapped import MappedShard
from .writer import ShardWriter

__all__ = ["MappedShard", "ShardWriter"]
