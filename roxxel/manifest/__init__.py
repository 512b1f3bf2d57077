"""Dataset manifests: the schema, its JSON form and its validation.

Reading and publishing manifests through a store will live beside the schema; this
package re-exports the public names of :mod:`roxxel.manifest.schema`.
"""

from __future__ import annotations

from .schema import (
    CHECKSUM_ALGORITHMS,
    COMPRESSIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    MAX_COUNT,
    MAX_DEPTH,
    MAX_MANIFEST_BYTES,
    MAX_URI_LENGTH,
    Manifest,
    ShardInfo,
    ShardTable,
)

__all__ = [
    "CHECKSUM_ALGORITHMS",
    "COMPRESSIONS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MAX_COUNT",
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
    "MAX_URI_LENGTH",
    "Manifest",
    "ShardInfo",
    "ShardTable",
]
