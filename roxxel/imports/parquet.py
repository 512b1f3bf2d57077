"""Parquet files, through pyarrow (the ``imports`` extra): one record per row.

Row groups are the units of parallel work; each is read in batches of ``batch_rows``
rows at most (fewer where rows are large: about 16 MiB a batch), never whole. What a
record is:

- ``field="col"``: that column's value: ``binary``/``string`` (and their large and
  fixed-size forms) as bytes (strings UTF-8; ``record == "bytes"``); a number or bool as
  a 0-d array, a list of numbers as a 1-D array, a fixed-size list as an array of that
  length, with ``meta["dtype"]`` (and ``meta["shape"]`` when fixed; ``record == "array"``).
  A null value raises SourceFormatError naming the file, row group, row and column;
- ``field=None, rows="json"``: the row as a UTF-8 JSON object (dates and times as ISO
  text, decimals as text; binary columns cannot be JSON and are refused; ``record ==
  "json"``);
- ``field=None, rows="arrow"``: the row as an Arrow IPC stream holding the schema and one
  one-row record batch (``pyarrow.ipc.open_stream(record).read_all()`` reads it back;
  ``record == "arrow"``).

All files must have the same schema. ``meta["import"]["schema"]`` is its text form.
"""

from __future__ import annotations

import datetime
import decimal
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..errors import SourceFormatError
from ._common import Record, Source, Unit, check_choice, locate, open_stream, spec

__all__ = ["batch_records", "describe", "described_meta", "read_unit", "source"]

FORMAT = "parquet"
SUFFIXES = (".parquet", ".pq")
DEFAULT_BATCH_ROWS = 1024  # rows a batch reads at most
BATCH_BYTES = 16 << 20  # and about this many bytes (from the row group's uncompressed size)
_ROWS = ("json", "arrow")


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as exc:  # pragma: no cover - the extra is installed in the tests
        raise ImportError("reading Parquet needs pyarrow: pip install 'roxxel[imports]'") from exc
    return pyarrow


def source(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    field: str | None = None,
    rows: str = "json",
    batch_rows: int = DEFAULT_BATCH_ROWS,
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """The Parquet files ``inputs`` (files, or directories of ``*.parquet`` files)."""
    pa = _pyarrow()
    check_choice("rows", rows, _ROWS)
    if isinstance(batch_rows, bool) or not isinstance(batch_rows, int) or batch_rows < 1:
        raise ValueError(f"batch_rows must be a positive integer, got {batch_rows!r}")
    units: list[Unit] = []
    schema = None
    first = ""
    for url, key, size in locate(inputs, storage_options, SUFFIXES):
        probe = Unit(FORMAT, url, key, 0, size)
        with open_stream(probe, storage_options) as f:
            try:
                metadata = pa.parquet.ParquetFile(f).metadata
            except (pa.ArrowException, OSError) as exc:
                raise SourceFormatError(f"{probe.label}: not a readable Parquet file: {exc}") from exc
        file_schema = metadata.schema.to_arrow_schema()
        if schema is None:
            schema, first = file_schema, probe.label
            kind, dtype, shape = describe(schema, field, rows, first)
        elif not file_schema.equals(schema):
            raise SourceFormatError(f"{probe.label}: schema differs from {first}'s:\n{file_schema}\nvs\n{schema}")
        for group in range(metadata.num_row_groups):
            rg = metadata.row_group(group)
            stored = sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))
            units.append(Unit(FORMAT, url, key, len(units), int(stored), part=group,
                              spec=spec(field=field, rows=rows, batch_rows=batch_rows, rows_in_group=rg.num_rows,
                                        row_bytes=max(1, rg.total_byte_size // max(rg.num_rows, 1)))))
    if schema is None:
        raise FileNotFoundError("no Parquet files in the inputs")
    meta = described_meta({"format": FORMAT, "record": kind, "schema": str(schema)}, field, dtype, shape)
    return Source(FORMAT, tuple(units), meta, storage_options)


def described_meta(info: dict[str, Any], field: str | None, dtype: str | None, shape: list[int] | None
                   ) -> dict[str, Any]:
    """The dataset ``meta`` of records :func:`describe` described: the dtype and shape
    when the records are typed, and ``info`` (with the field, if one) under ``import``."""
    meta: dict[str, Any] = {}
    if field is not None:
        info["field"] = field
    if dtype is not None:
        meta["dtype"] = dtype
        if shape is not None:
            meta["shape"] = shape
    meta["import"] = info
    return meta


def describe(schema: Any, field: str | None, rows: str, label: str) -> tuple[str, str | None, list[int] | None]:
    """(record kind, dtype, fixed shape) of the records, or ValueError/SourceFormatError."""
    pa = _pyarrow()
    types = pa.types
    if field is None:
        if rows == "json":
            for f in schema:
                if _binary(f.type):
                    raise SourceFormatError(f"{label}: column {f.name!r} is {f.type}: binary cannot be JSON; "
                                            "use rows='arrow', or field= to take one column")
        return rows, None, None
    if field not in schema.names:
        raise ValueError(f"{label}: no column {field!r}; the columns are {', '.join(schema.names)}")
    kind = schema.field(field).type
    if _binary(kind) or types.is_string(kind) or types.is_large_string(kind):
        return "bytes", None, None
    if types.is_boolean(kind) or types.is_integer(kind) or types.is_floating(kind):
        return "array", np.dtype(kind.to_pandas_dtype()).str, []
    if types.is_fixed_size_list(kind) and _number(kind.value_type):
        return "array", np.dtype(kind.value_type.to_pandas_dtype()).str, [kind.list_size]
    if (types.is_list(kind) or types.is_large_list(kind)) and _number(kind.value_type):
        return "array", np.dtype(kind.value_type.to_pandas_dtype()).str, None
    raise SourceFormatError(f"{label}: column {field!r} is {kind}, which is not bytes, text, a number or a list "
                            "of numbers; import whole rows (rows='json' or 'arrow') instead")


def _binary(kind: Any) -> bool:
    types = _pyarrow().types
    return bool(types.is_binary(kind) or types.is_large_binary(kind) or types.is_fixed_size_binary(kind))


def _number(kind: Any) -> bool:
    types = _pyarrow().types
    return bool(types.is_boolean(kind) or types.is_integer(kind) or types.is_floating(kind))


def read_unit(unit: Unit, storage_options: Mapping[str, Any] | None = None) -> Iterator[Record]:
    """The records of one row group, in order."""
    pa = _pyarrow()
    options = unit.options
    field, rows = options["field"], options["rows"]
    label = unit.label
    count = 0
    with open_stream(unit, storage_options) as f:
        try:
            # batches of about BATCH_BYTES whatever the rows' size (1024 rows of 250 KiB images
            # would hold 250 MB), read through a buffer rather than whole column chunks
            rows_per_batch = max(1, min(options["batch_rows"], BATCH_BYTES // options.get("row_bytes", 1)))
            pf = pa.parquet.ParquetFile(f, buffer_size=1 << 20)
            batches = pf.iter_batches(batch_size=rows_per_batch, row_groups=[unit.part],
                                      columns=None if field is None else [field])
            for batch in batches:
                yield from batch_records(batch, field, rows, label, count)
                count += batch.num_rows
        except (pa.ArrowException, OSError) as exc:
            from ..errors import StorageError

            if isinstance(exc, StorageError):
                raise
            raise SourceFormatError(f"{label}: unreadable after {count} rows: {exc}") from exc
        except ValueError as exc:
            if isinstance(exc, SourceFormatError):
                raise
            raise SourceFormatError(f"{label}: row {count}+: cannot be JSON: {exc}") from None
    if count != options["rows_in_group"]:
        raise SourceFormatError(f"{label}: read {count} rows, the file's metadata says {options['rows_in_group']}")


def batch_records(batch: Any, field: str | None, rows: str, label: str, start: int) -> Iterator[Record]:
    """The records of an Arrow record batch: ``field``'s values (the batch's only column,
    or its column of that name), or each row as JSON or as a one-row Arrow IPC stream.
    ``start`` is the batch's first row, for messages."""
    pa = _pyarrow()
    if field is not None:
        column = batch.column(0) if batch.num_columns == 1 else batch.column(field)
        yield from _column(column, field, label, start)
    elif rows == "json":
        for row in batch.to_pylist():
            yield json.dumps(row, ensure_ascii=False, allow_nan=False, separators=(",", ":"),
                             default=_json_default).encode("utf-8")
    else:
        for i in range(batch.num_rows):
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch.slice(i, 1))
            yield sink.getvalue().to_pybytes()


def _column(array: Any, field: str, label: str, start: int) -> Iterator[Record]:
    pa = _pyarrow()
    if array.null_count:
        row = start + next(i for i, v in enumerate(array.is_valid().to_pylist()) if not v)
        raise SourceFormatError(f"{label}: row {row}: column {field!r} is null")
    kind = array.type
    types = pa.types
    if types.is_string(kind) or types.is_large_string(kind):
        for value in array.to_pylist():
            yield value.encode("utf-8")
    elif _binary(kind):
        yield from array.to_pylist()
    elif _number(kind):
        values = array.to_numpy(zero_copy_only=False)
        for value in values:
            yield np.asarray(value).reshape(())
    else:  # lists of numbers: a null inside one would turn it into floats
        if array.flatten().null_count:
            row = start + next(i for i, v in enumerate(array) if v.values.null_count)
            raise SourceFormatError(f"{label}: row {row}: column {field!r} holds a null inside its list")
        for value in array:
            yield np.asarray(value.values.to_numpy(zero_copy_only=False))


def _json_default(value: Any) -> Any:
    if isinstance(value, (datetime.date, datetime.time, datetime.datetime)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    raise TypeError(f"a {type(value).__name__} is not JSON")

