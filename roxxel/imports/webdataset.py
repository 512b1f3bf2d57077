"""WebDataset tar shards: POSIX tar files (optionally gzip-compressed), read as streams
(:mod:`._tar`: one member in memory at a time).

As in WebDataset, a sample is a run of consecutive members whose names share a key (the
name up to the first dot of its last segment); the rest of the name is the field
(``jpg``, ``cls``, ``json``). Members that are not regular files, or have no dot, are
skipped, as WebDataset skips them. What a record is:

- default: one record per sample, framed as ``[uint64 LE size per field][the fields']``
  with the field names in ``meta["import"]["fields"]``: ``"__key__"`` (the sample key,
  UTF-8) first, then the member fields in sorted order (``record == "fields"``;
  :func:`roxxel.imports.split_fields` reads it back). The fields are those of the first
  sample unless ``fields`` names them; every sample must have exactly those, or
  SourceFormatError names the file, the key and the fields;
- ``field="jpg"``: that member of each sample (``record == "bytes"``);
- ``per_member=True``: every member is a record of its own, in tar order
  (``record == "member"``; the names are not kept).

One unit per tar file. ``max_member_bytes`` refuses a member a tar header says is larger.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from ..errors import SourceFormatError
from ._binary import decompressed
from ._common import Record, Source, Unit, frame_fields, locate, open_stream, spec
from ._tar import regular_members

__all__ = ["read_unit", "source"]

FORMAT = "wds"
SUFFIXES = (".tar", ".tar.gz", ".tgz")
KEY = "__key__"
DEFAULT_MAX_MEMBER_BYTES = 1 << 30
_SPLIT = re.compile(r"^((?:.*/|)[^.]+)[.]([^/]*)$")


def source(
    inputs: Sequence[str | os.PathLike[str]],
    *,
    field: str | None = None,
    per_member: bool = False,
    fields: Sequence[str] | None = None,
    max_member_bytes: int = DEFAULT_MAX_MEMBER_BYTES,
    storage_options: Mapping[str, Any] | None = None,
) -> Source:
    """The tar shards ``inputs`` (files, or directories of ``*.tar``/``*.tar.gz`` files)."""
    if per_member and (field is not None or fields is not None):
        raise ValueError("per_member=True takes every member: it cannot be combined with field or fields")
    if field is not None and fields is not None:
        raise ValueError("give field (one member per sample) or fields (whole samples), not both")
    located = locate(inputs, storage_options, SUFFIXES)
    options: dict[str, Any] = {"field": field, "per_member": per_member, "max_member_bytes": max_member_bytes}
    info: dict[str, Any] = {"format": FORMAT}
    if per_member:
        info["record"] = "member"
    elif field is not None:
        info.update(field=field, record="bytes")
    else:
        if fields is None:
            first = Unit(FORMAT, *located[0], 0, spec=spec(**options)) if located else None
            fields = [] if first is None else _first_fields(first, storage_options)
        names = sorted(set(fields))
        if len(names) != len(fields) or KEY in names or not all(isinstance(n, str) and n for n in names):
            raise ValueError(f"fields must be distinct non-empty member fields (not {KEY!r}), got {list(fields)!r}")
        options["fields"] = names
        info.update(fields=[KEY, *names], record="fields")
    units = tuple(
        Unit(FORMAT, url, key, number, size, spec=spec(**options))
        for number, (url, key, size) in enumerate(located)
    )
    return Source(FORMAT, units, {"import": info}, storage_options)


def read_unit(unit: Unit, storage_options: Mapping[str, Any] | None = None) -> Iterator[Record]:
    """The records of one tar file, in order."""
    options = unit.options
    label = unit.label
    members = _members(unit, storage_options, options["max_member_bytes"])
    if options["per_member"]:
        for _, _, data in members:
            yield data
        return
    field, fields = options["field"], options.get("fields")
    for key, sample in _samples(members, label):
        if field is not None:
            if field not in sample:
                raise SourceFormatError(f"{label}: sample {key!r} has no {field!r} member "
                                        f"(it has {', '.join(sorted(sample))})")
            yield sample[field]
            continue
        if sorted(sample) != fields:
            raise SourceFormatError(f"{label}: sample {key!r} has fields {sorted(sample)}, expected {fields}")
        yield frame_fields([key.encode("utf-8"), *(sample[name] for name in fields)])


def _first_fields(unit: Unit, storage_options: Mapping[str, Any] | None) -> list[str]:
    for _, sample in _samples(_members(unit, storage_options, unit.options["max_member_bytes"]), unit.label):
        return sorted(sample)
    return []


def _members(unit: Unit, storage_options: Mapping[str, Any] | None, limit: int) -> Iterator[tuple[str, str, bytes]]:
    """``(key, field, bytes)`` of each regular member with a ``key.field`` name, in order."""
    label = unit.label
    with open_stream(unit, storage_options) as f:
        stream = decompressed(f, "gz", label) if f.peek(2)[:2] == b"\x1f\x8b" else f
        for name, data in regular_members(stream, label, limit):
            match = _SPLIT.match(name)
            if match is not None:
                yield match.group(1), match.group(2), data


def _samples(members: Iterator[tuple[str, str, bytes]], label: str) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(key, {field: bytes})`` of each run of consecutive members sharing a key."""
    key: str | None = None
    sample: dict[str, bytes] = {}
    for member_key, name, data in members:
        if member_key != key:
            if key is not None:
                yield key, sample
            key, sample = member_key, {}
        if name in sample:
            raise SourceFormatError(f"{label}: sample {key!r} has two {name!r} members")
        sample[name] = data
    if key is not None:
        yield key, sample
