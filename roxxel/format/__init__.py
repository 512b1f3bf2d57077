"""ROXXEL01 shards: the only package that knows offsets and footers.

- :mod:`~roxxel.format.layout`: the byte layout, its arithmetic and its validation;
- :mod:`~roxxel.format.writer`: records to bytes, and the streaming :class:`ShardWriter`;
- :mod:`~roxxel.format.mapped`: the validated memory-mapped :class:`MappedShard`;
- :mod:`~roxxel.format.check`: :class:`ShardCheck`, the one streaming check of a shard's
  stored bytes against its manifest entry (size, checksum, bounded decompression,
  offsets, footer).
"""

from __future__ import annotations

from .check import ShardCheck, ShardSpec
from .layout import (
    FOOTER_SIZE,
    MAGIC,
    OFFSET_SIZE,
    ShardLayout,
    check_offsets,
    footer_span,
    max_records,
    offsets_span,
    parse_footer,
    payload_size,
    read_footer,
    read_layout,
    shard_size,
)
from .mapped import MappedShard, int_sequence
from .writer import Record, ShardWriter, record_bytes

__all__ = [
    "FOOTER_SIZE",
    "MAGIC",
    "OFFSET_SIZE",
    "MappedShard",
    "Record",
    "ShardCheck",
    "ShardLayout",
    "ShardSpec",
    "ShardWriter",
    "check_offsets",
    "footer_span",
    "int_sequence",
    "max_records",
    "offsets_span",
    "parse_footer",
    "payload_size",
    "read_footer",
    "read_layout",
    "record_bytes",
    "shard_size",
]
