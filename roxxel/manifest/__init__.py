"""Dataset manifests: the schema, its strict JSON form, and the vocabulary it is written in.

- :mod:`~roxxel.manifest.schema`: the frozen dataclasses (:class:`Manifest`,
  :class:`ShardTable`, :class:`ShardInfo`) and their JSON; private to it, ``_json``
  (strict JSON parsing), ``_fields`` (each field's check) and ``_report`` (messages);
- the vocabulary, one home each: :mod:`~roxxel.manifest.checksums` (algorithms and the
  parser of checksum strings), :mod:`~roxxel.manifest.compressions`,
  :mod:`~roxxel.manifest.keys` (key safety) and :mod:`~roxxel.manifest.redaction`;
- :mod:`~roxxel.manifest.io`: reading and publishing a manifest through a store.
"""

from __future__ import annotations

from ._fields import MAX_COUNT, MAX_URI_LENGTH
from ._json import MAX_DEPTH, MAX_MANIFEST_BYTES
from .checksums import CHECKSUM_ALGORITHMS
from .compressions import COMPRESSIONS
from .schema import FORMAT_NAME, FORMAT_VERSION, Manifest, ShardInfo, ShardTable

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
