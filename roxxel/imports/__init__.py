"""Imports: the records of datasets in other formats, read without those formats' code.

One module per format: :mod:`.mds` (MosaicML streaming directories), :mod:`.litdata`
(LitData optimized directories), :mod:`.webdataset` (tar shards), :mod:`.parquet` and
:mod:`.jsonl`. Each reads local paths or store URLs (through :class:`roxxel.backends.Store`,
with ``storage_options``), streams (never a whole file in memory: one record at a time,
plus one file's offsets), and treats every byte and index field as hostile: a bad offset,
a truncated file or a lying index raises :class:`roxxel.errors.SourceFormatError` naming
the file, the field and the value.

Every import is a :class:`Source`: its ``units`` (one per file, or per Parquet row group)
are small picklable descriptors without credentials, read by :func:`read_unit` anywhere
(a Dask or Ray task, another process); its ``meta`` (for the dataset's manifest) says
what a record is under ``meta["import"]["record"]``:

- ``"bytes"``: one field's bytes; ``"array"``: one field's values as a NumPy array whose
  dtype (and shape, when fixed) are ``meta["dtype"]``/``meta["shape"]``;
- ``"fields"``: a whole sample, ``[uint64 LE size per field][the fields' bytes]`` with the
  field names in ``meta["import"]["fields"]`` (:func:`split_fields` reads it back);
- ``"json"``: a whole sample or row as one UTF-8 JSON object;
- ``"arrow"``: a Parquet row as an Arrow IPC stream of one one-row record batch;
- ``"member"``: one member of a tar file.

Iterating a source yields its records in order::

    source = roxxel.imports.open_source("mds", "s3://bucket/mds", field="tokens", decode="natural")
    with roxxel.Writer("s3://bucket/rox", meta=source.meta) as writer:
        writer.extend(source)

Nothing here ever unpickles: pickled columns are only ever copied as bytes.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from . import jsonl, litdata, mds, parquet, webdataset
from ._common import Record, Source, Unit, frame_fields, split_fields

__all__ = ["FORMATS", "Record", "Source", "Unit", "frame_fields", "open_source", "read_unit", "split_fields"]

_MODULES = {"mds": mds, "litdata": litdata, "wds": webdataset, "parquet": parquet, "jsonl": jsonl}
#: The formats :func:`open_source` reads.
FORMATS = tuple(_MODULES)


def open_source(
    format: str,
    inputs: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    storage_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Source:
    """The source of ``format`` at ``inputs``: its units and meta (reads indexes and
    listings only, no records).

    ``mds`` and ``litdata`` take one directory; ``wds``, ``parquet`` and ``jsonl`` take
    files or directories (listed recursively, in natural order). ``options`` are the
    format's: ``field`` and ``decode`` (mds, litdata), ``field`` and ``per_member`` (wds),
    ``field``, ``rows`` and ``batch_rows`` (parquet), ``field`` (jsonl).
    """
    if format not in _MODULES:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    module = _MODULES[format]
    accepted = [name for name, p in inspect.signature(module.source).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "storage_options"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"{format} takes the options {', '.join(accepted)}; not {', '.join(unknown)}")
    if format in ("mds", "litdata"):
        if not isinstance(inputs, (str, os.PathLike)):
            if len(inputs) != 1:
                raise ValueError(f"{format} reads one directory, got {len(inputs)} inputs")
            inputs = inputs[0]
        return module.source(os.fspath(inputs), storage_options=storage_options, **options)
    names = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not names:
        raise ValueError("no inputs to import")
    return module.source(names, storage_options=storage_options, **options)


def read_unit(unit: Unit, storage_options: Mapping[str, Any] | None = None) -> Iterator[Record]:
    """The records of one unit of a :class:`Source`, in order (runs in any process)."""
    module = _MODULES.get(unit.format)
    if module is None:
        raise ValueError(f"unit of unknown format {unit.format!r}")
    return module.read_unit(unit, storage_options)
