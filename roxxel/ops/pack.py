"""Packing inputs into a dataset: local files, NumPy arrays or old ``.rox`` shards, and the
formats of :mod:`roxxel.imports` (JSON lines, MDS, LitData, WebDataset, Parquet), local or
in a store.

Every input format becomes records appended to one :class:`roxxel.Writer`, so the result
is published all at once (manifest last) or not at all: any error, such as an invalid
JSON line, publishes nothing and removes the shards already uploaded.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from fsspec.callbacks import Callback

from ..format import MappedShard
from ..imports import Unit, open_source, read_unit
from ..local import Roxxel
from ..manifest import Manifest
from ..progress import Meter
from ..writer import DEFAULT_SHARD_BYTES, Writer

__all__ = ["FORMATS", "IMPORT_FORMATS", "pack"]

log = logging.getLogger(__name__)

#: The formats read by roxxel.imports (jsonl among them).
IMPORT_FORMATS = ("jsonl", "mds", "litdata", "wds", "parquet")
FORMATS = ("files", "jsonl", "npy", "rox", "mds", "litdata", "wds", "parquet")
_REPORT_EVERY = 1 << 20  # bytes between progress updates


def _walk(paths: Sequence[str], suffix: str | None = None) -> list[str]:
    """The files named by ``paths``, directories walked recursively in sorted order."""
    found: list[str] = []
    for path in paths:
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(
                    os.path.join(root, name)
                    for name in sorted(files)
                    if suffix is None or name.endswith(suffix)
                )
        elif os.path.exists(path):
            found.append(path)
        else:
            raise FileNotFoundError(f"input {path} does not exist")
    return found


# Each reader yields (record or None, input bytes consumed): None advances progress only.


def _file_records(paths: list[str]) -> Iterator[tuple[bytes | None, int]]:
    for path in paths:
        with open(path, "rb") as f:
            data = f.read()
        yield data, len(data)


def _unit_records(storage_options: Mapping[str, Any] | None, units: list[Unit]) -> Iterator[tuple[Any, int]]:
    """The records of units of an import; a unit's stored bytes count once it is read."""
    for unit in units:
        for record in read_unit(unit, storage_options):
            yield record, 0
        yield None, unit.size


def _npy_arrays(paths: list[str]) -> tuple[list[np.ndarray], dict[str, Any]]:
    arrays = []
    dtype: np.dtype[Any] | None = None
    shape: tuple[int, ...] | None = None
    for path in paths:
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except ValueError as exc:
            raise ValueError(f"{path}: not a .npy array roxxel can pack: {exc}") from exc
        if not isinstance(array, np.ndarray):
            raise ValueError(f"{path}: expected one .npy array, got {type(array).__name__}")
        if array.ndim == 0:
            raise ValueError(f"{path}: expected an array with rows, got a scalar")
        if dtype is None:
            dtype, shape = array.dtype, array.shape[1:]
        elif (array.dtype, array.shape[1:]) != (dtype, shape):
            raise ValueError(
                f"{path}: rows are {array.dtype} of shape {list(array.shape[1:])}, expected "
                f"{dtype} of shape {list(shape or ())} like {paths[0]}"
            )
        arrays.append(array)
    # The .npy header's own spelling of the dtype: a string, or a list for structured ones.
    descr = None if dtype is None else json.loads(json.dumps(np.lib.format.dtype_to_descr(dtype)))
    meta = {} if dtype is None else {"dtype": descr, "shape": list(shape or ())}
    return arrays, meta


def _npy_file_records(paths: list[str]) -> Iterator[tuple[Any, int]]:
    return _npy_records([np.load(p, mmap_mode="r", allow_pickle=False) for p in paths])


def _npy_records(arrays: list[np.ndarray]) -> Iterator[tuple[Any, int]]:
    for array in arrays:
        for row in array:
            row = np.ascontiguousarray(row)
            yield row, row.nbytes


def _rox_records(paths: list[str]) -> Iterator[tuple[Any, int]]:
    for path in paths:
        with MappedShard(path) as shard:
            for i in range(len(shard)):
                record = shard.view(i)
                yield record, record.nbytes
            yield None, shard.layout.file_size - shard.layout.payload_size


def _rox_paths(inputs: Sequence[str]) -> list[str]:
    """Shard files of old datasets: files, directories, globs or ``data.rox`` numbered sets."""
    paths: list[str] = []
    for spec in inputs:
        if os.path.isdir(spec):
            paths.extend(_walk([spec], ".rox"))
        else:
            found = Roxxel(spec).paths
            if not found:
                raise FileNotFoundError(f"input {spec} names no .rox shard files")
            paths.extend(found)
    return paths


def pack(
    inputs: Sequence[str | os.PathLike[str]],
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    format: str = "files",  # noqa: A002 - the CLI's --format
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    compression: str | None = None,
    meta: Mapping[str, Any] | None = None,
    mode: str = "create",
    progress: Callback | None = None,
    single_writer: bool = False,
    workers: int | None = None,
    scheduler: str | None = None,
    source_options: Mapping[str, Any] | None = None,
    import_options: Mapping[str, Any] | None = None,
) -> Manifest:
    """Pack ``inputs`` into a dataset at ``url`` and publish it; returns its manifest.

    ``format``:
      - ``"files"``: each file is one record (directories are walked recursively, in
        sorted order); names are not stored.
      - ``"jsonl"``: each non-blank line, without its line ending, is one record; every
        line must be valid JSON (ValueError naming the file and line number otherwise);
        directories are listed for ``*.jsonl``/``*.json``/``*.ndjson`` (and ``.gz``).
      - ``"npy"``: each row of each ``.npy`` array (memory-mapped, never loaded whole) is
        one record; all arrays must share dtype and row shape, which go to ``meta`` as
        ``{"dtype": "<f4", "shape": [...]}``.
      - ``"rox"``: the records of ROXXEL01 shards of the original Roxxel library (files,
        directories, globs or ``data.rox`` standing for ``data_0000.rox``, ...), in order.
      - ``"mds"``, ``"litdata"`` (one directory), ``"wds"``, ``"parquet"`` and ``"jsonl"``
        (files or directories): read by :func:`roxxel.imports.open_source`, local or in a
        store (``source_options``: the inputs' storage options, default
        ``storage_options``), with the format's ``import_options`` (``field``, ``decode``,
        ``per_member``, ``rows``, ...); what a record is goes to ``meta["import"]``.
    ``meta`` is merged over the format's meta (None: when appending, the dataset keeps
    its meta). ``mode`` and ``single_writer`` are the Writer's (``create``, ``overwrite``,
    ``append``). ``progress`` (an fsspec ``Callback``) counts input bytes.

    With ``workers`` (a local Dask cluster of that many processes) or ``scheduler`` (the
    address of a running Dask scheduler, whose workers must see the same input paths),
    consecutive inputs are grouped into parts packed on the workers and committed once,
    in input order (:func:`roxxel.dask.write_parts`; needs ``roxxel[dask]``); progress
    then counts the records' bytes as the workers upload them.
    """
    if format not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}; got {format!r}")
    if import_options and format not in IMPORT_FORMATS:
        raise ValueError(f"import_options are for the formats {', '.join(IMPORT_FORMATS)}, not {format!r}")
    names = [os.fspath(p) for p in inputs]
    if not names:
        raise ValueError("no inputs to pack")
    format_meta: dict[str, Any] = {}
    if format == "files":
        paths = _walk(names)
        read_paths: Callable[[list[str]], Iterator[tuple[Any, int]]] = _file_records
        total = sum(os.path.getsize(p) for p in paths)
    elif format in IMPORT_FORMATS:
        source = open_source(format, names, storage_options if source_options is None else source_options,
                             **dict(import_options or {}))
        format_meta = dict(source.meta)
        paths = list(source.units)  # units of work: a file or a row group each
        read_paths = functools.partial(_unit_records, source.storage_options)
        total = source.size
    elif format == "npy":
        paths = _walk(names, ".npy")
        arrays, format_meta = _npy_arrays(paths)
        read_paths = _npy_file_records
        total = sum(a.nbytes for a in arrays)
    else:
        paths = _rox_paths(names)
        read_paths = _rox_records
        total = sum(os.path.getsize(p) for p in paths)
    meta = None if meta is None and not format_meta else {**format_meta, **dict(meta or {})}
    if workers is not None or scheduler is not None:
        return _pack_on_dask(read_paths, paths, url, storage_options, total=total, workers=workers,
                             scheduler=scheduler, shard_bytes=shard_bytes, compression=compression, meta=meta,
                             mode=mode, progress=progress, single_writer=single_writer)
    records = read_paths(paths)
    meter = Meter(progress, total)
    pending = 0
    with Writer(
        url,
        shard_bytes=shard_bytes,
        compression=compression,
        storage_options=storage_options,
        meta=meta,
        mode=mode,
        single_writer=single_writer,
    ) as writer:
        for record, nbytes in records:
            if record is not None:
                writer.append(record)
            pending += nbytes
            if pending >= _REPORT_EVERY:
                meter.add(pending)
                pending = 0
        meter.add(pending)
    return writer.close()  # already published by the with block; returns the manifest


def _pack_on_dask(
    read_paths: Callable[[list[str]], Iterator[tuple[Any, int]]],
    paths: list[str],
    url: str,
    storage_options: Mapping[str, Any] | None,
    *,
    total: int,
    workers: int | None,
    scheduler: str | None,
    progress: Callback | None,
    **writing: Any,
) -> Manifest:
    """The inputs in parts of consecutive files, each packed by a Dask task, one commit."""
    from ..dask import dask_client, write_parts

    callback = Callback.as_callback(progress)
    callback.set_size(total)
    with dask_client(workers=workers, scheduler=scheduler) as client:
        slots = max(1, sum(client.nthreads().values()))
        part_bytes = max(writing["shard_bytes"], total // (4 * slots))
        sizes = {id(p): p.size if isinstance(p, Unit) else os.path.getsize(p) for p in paths}
        parts = _group(paths, [sizes[id(p)] for p in paths], part_bytes)
        log.info("packing %d inputs in %d parts on %d Dask worker threads", len(paths), len(parts), slots)
        # the bar counts the inputs' bytes (as a local pack does), a part's when it is done:
        # the bytes uploaded are another measure (compressed inputs, framing, headers)
        manifest = write_parts(parts, functools.partial(_records_only, read_paths), url,
                               storage_options=storage_options, client=client,
                               on_part=lambda r: callback.relative_update(sum(sizes[id(p)] for p in parts[r.part])),
                               **writing)
    return manifest


def _group(paths: list[str], sizes: list[int], part_bytes: int) -> list[list[str]]:
    """Consecutive paths in groups of about ``part_bytes`` (a bigger file is a group alone)."""
    groups: list[list[str]] = []
    current: list[str] = []
    held = 0
    for path, size in zip(paths, sizes):
        if current and held + size > part_bytes:
            groups.append(current)
            current, held = [], 0
        current.append(path)
        held += size
    if current:
        groups.append(current)
    return groups


def _records_only(read_paths: Callable[[list[str]], Iterator[tuple[Any, int]]], paths: list[str]) -> Iterator[Any]:
    """A part's records (the readers also yield progress-only entries: None)."""
    return (record for record, _ in read_paths(paths) if record is not None)
