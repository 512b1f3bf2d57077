"""Records from an engine's rows: one column of bytes or str, or each row encoded by a
function of the user's (``encode(row) -> bytes``). Shared by the Dask and Ray adapters."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from ..format.writer import Record

__all__ = ["Encode", "pick_column", "row_records"]

Encode = Callable[[Mapping[str, Any]], Record]


def pick_column(columns: Sequence[str], column: str | None, encode: Encode | None, where: str) -> str | None:
    """The column whose values are the records (None when ``encode`` makes them): ``column``
    if given, else the only column. ValueError naming ``where`` and the columns otherwise."""
    if encode is not None:
        if column is not None:
            raise ValueError(f"{where}: give column or encode, not both")
        return None
    if column is not None:
        if column not in columns:
            raise ValueError(f"{where}: no column {column!r}; the columns are {list(columns)}")
        return column
    if len(columns) != 1:
        raise ValueError(
            f"{where}: rows have {len(columns)} columns {list(columns)}; name the one holding the "
            "records with column=..., or turn each row into bytes with encode=..."
        )
    return columns[0]


def row_records(rows: Iterable[Mapping[str, Any]], column: str | None, encode: Encode | None) -> Iterator[Record]:
    """Each row's record: ``encode(row)``, or the row's ``column``."""
    if encode is not None:
        return (encode(row) for row in rows)
    if column is None:
        raise ValueError("row_records needs a column or an encode function")
    return (row[column] for row in rows)
