"""Build a roxxel dataset from Ray Data: ``dataset.write_datasink(roxxel.ray.Datasink(url))``.

Each write task is one part of the build (:func:`roxxel.build.write_part`, part id = the
task's index); when every task is done, Ray calls the sink's ``on_write_complete`` on the
driver, which commits the receipts once (:func:`roxxel.build.commit`, in task order) and
keeps the published manifest in ``sink.manifest``. A task Ray retries writes under names
of its own, and Ray hands the driver one result per task: what the other attempts
uploaded is never listed (``roxxel prune`` removes it). Ray Data keeps rows in order only
with ``DataContext.get_current().execution_options.preserve_order = True``.

``Datasink`` is made when first asked for, so that ``import roxxel.ray`` does not import
Ray; without Ray it raises ImportError naming the extra (``pip install roxxel[ray]``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from .build.commit import check_destination, commit
from .build.parts import Receipt, write_part
from .build.rows import Encode, pick_column, row_records
from .format.writer import Record
from .manifest.redaction import redact
from .writer import DEFAULT_SHARD_BYTES

__all__ = ["Datasink"]  # noqa: F822 - made on first access, by __getattr__

log = logging.getLogger(__name__)

_made: dict[str, type] = {}


def __getattr__(name: str) -> Any:
    if name != "Datasink":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if name not in _made:
        _made[name] = _make_datasink()
    return _made[name]


def _make_datasink() -> type:
    try:
        from ray.data import Datasink as RayDatasink
        from ray.data.block import BlockAccessor
    except ImportError as exc:
        raise ImportError("roxxel.ray needs Ray Data: pip install roxxel[ray]") from exc

    class Datasink(RayDatasink):  # type: ignore[misc,valid-type]
        """A Ray Data sink that publishes a roxxel dataset at ``url``.

        Rows become records as in :func:`roxxel.dask.write`: the one column (or
        ``column``) of bytes or str, or ``encode(row)`` of each row (a dict). ``mode``,
        ``meta``, ``single_writer``, ``shard_bytes``, ``compression`` and
        ``upload_workers`` are :class:`roxxel.Writer`'s. After ``write_datasink``,
        ``manifest`` is the published manifest.
        """

        def __init__(
            self,
            url: str,
            *,
            storage_options: Mapping[str, Any] | None = None,
            mode: str = "create",
            meta: Mapping[str, Any] | None = None,
            shard_bytes: int = DEFAULT_SHARD_BYTES,
            compression: str | None = None,
            column: str | None = None,
            encode: Encode | None = None,
            single_writer: bool = False,
            upload_workers: int = 4,
        ) -> None:
            if column is not None and encode is not None:
                raise ValueError("roxxel.ray.Datasink: give column or encode, not both")
            self.url = url
            self.storage_options = dict(storage_options or {})
            self.mode, self.meta, self.single_writer = mode, meta, single_writer
            self.column, self.encode = column, encode
            self.writing = {"shard_bytes": shard_bytes, "compression": compression,
                            "upload_workers": upload_workers}
            self.manifest = None

        def on_write_start(self, schema: Any = None) -> None:
            check_destination(self.url, mode=self.mode, storage_options=self.storage_options,
                              single_writer=self.single_writer)
            if schema is not None and getattr(schema, "names", None) is not None:
                pick_column(list(schema.names), self.column, self.encode, "roxxel.ray.Datasink")

        def write(self, blocks: Iterable[Any], ctx: Any) -> Receipt:
            return write_part(self._records(blocks), self.url, part=ctx.task_idx,
                              storage_options=self.storage_options, **self.writing)

        def _records(self, blocks: Iterable[Any]) -> Iterator[Record]:
            for block in blocks:
                accessor = BlockAccessor.for_block(block)
                if accessor.num_rows() == 0:
                    continue
                column = pick_column(accessor.column_names(), self.column, self.encode, "roxxel.ray.Datasink")
                if column is not None:
                    yield from accessor.to_arrow().column(column).to_pylist()
                else:
                    yield from row_records(accessor.iter_rows(public_row_format=True), None, self.encode)

        def on_write_complete(self, write_result: Any) -> None:
            receipts = getattr(write_result, "write_returns", write_result)
            self.manifest = commit(self.url, list(receipts), mode=self.mode, meta=self.meta,
                                   storage_options=self.storage_options, single_writer=self.single_writer)
            log.info("Ray wrote %d parts of %s", len(receipts), redact(self.url))

    Datasink.__module__ = __name__
    Datasink.__qualname__ = "Datasink"
    return Datasink
