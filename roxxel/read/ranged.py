"""Single records read with ranged GETs, without downloading their whole shard.

For inspecting huge remote datasets (``ds.fetch(i)``). The footer and the record's
offsets are validated, but a ranged read is not covered by the shard checksum.
"""

from __future__ import annotations

import numpy as np

from ..backends import Store
from ..errors import ShardFormatError
from ..format.layout import FOOTER_SIZE, footer_span, offsets_span, parse_footer
from ..manifest import ShardTable

__all__ = ["RangedReader"]


class RangedReader:
    """Records of the uncompressed shards of ``table`` in ``store``, read by range."""

    def __init__(self, store: Store, table: ShardTable) -> None:
        self.store = store
        self.table = table
        self._payload_sizes: dict[int, int] = {}

    def record(self, k: int, j: int) -> bytes:
        """Record ``j`` of shard ``k`` (which must be stored uncompressed)."""
        uri = str(self.table.uris[k])
        payload_size = self._payload_size(k)
        ends = np.frombuffer(self.store.read_range(uri, *offsets_span(payload_size, j)), "<i8")
        start, end = (int(ends[0]), int(ends[1])) if j else (0, int(ends[0]))
        if not 0 <= start <= end <= payload_size:
            raise ShardFormatError(
                f"{self.store.url(uri)}: record {j} spans [{start}, {end}), "
                f"expected 0 <= start <= end <= payload size {payload_size}"
            )
        return self.store.read_range(uri, start, end)

    def _payload_size(self, k: int) -> int:
        """Payload size of shard ``k``, from its validated footer (read once)."""
        cached = self._payload_sizes.get(k)
        if cached is None:
            table = self.table
            uri, size = str(table.uris[k]), int(table.stored_size[k])
            label = self.store.url(uri)
            if size < FOOTER_SIZE:
                parse_footer(b"", size, label)
            layout = parse_footer(self.store.read_range(uri, *footer_span(size)), size, label)
            if layout.record_count != int(table.records[k]):
                raise ShardFormatError(
                    f"{label}: footer record count is {layout.record_count}, "
                    f"expected {int(table.records[k])} from the manifest"
                )
            cached = self._payload_sizes[k] = layout.payload_size
        return cached
