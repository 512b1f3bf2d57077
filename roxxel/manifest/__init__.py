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

from .schema import Manifest, ShardInfo, ShardTable

__all__ = ["Manifest", "ShardInfo", "ShardTable"]
