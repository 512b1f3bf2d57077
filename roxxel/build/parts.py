"""Phase one of a build: :func:`write_part` packs one part's records into shards, uploads
them, and hands back a :class:`Receipt`; it publishes nothing.

A part runs anywhere: an engine's task, a process, another machine. Its shards go through
the very path of :class:`roxxel.Writer` (staged on local disk with only one shard's offsets
in memory, checksummed while written, uploaded on background threads and checked in the
store), under names of the attempt's own: ``shards/part-<part>-<attempt>-<index>-<digest>``.
An engine that retries a task or runs a speculative copy of it gets a second set of
objects, never an overwrite of the first; the commit lists the shards of one attempt per
part, and those of the others stay unreferenced until ``roxxel prune`` removes them.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from fsspec.callbacks import Callback

from ..backends import Store
from ..errors import ReceiptError
from ..format.writer import Record
from ..manifest import Manifest, ShardInfo
from ..writer import DEFAULT_SHARD_BYTES, Writer

__all__ = ["Receipt", "write_part"]

log = logging.getLogger(__name__)

ATTEMPT_HEX = 16  # 64 random bits name an attempt
MAX_PART = 10**12 - 1
PART_SHARD_KEY = re.compile(  # ASCII digits only, and nothing after the name (\Z, not $)
    rf"shards/part-([0-9]{{6,12}})-([0-9a-f]{{{ATTEMPT_HEX}}})-([0-9]{{6,}})-([0-9a-f]{{12}})\.rox(?:\.zst)?\Z",
    re.ASCII,
)
_RECEIPT_KEYS = ("part", "attempt", "shards")
_SHARD_KEYS = ("uri", "records", "stored_size", "raw_size", "compression", "checksum")
_OPTIONAL_SHARD_KEYS = ("head", "parts")


@dataclass(frozen=True)
class Receipt:
    """What one attempt of one part uploaded: its part id, its attempt id and its shards
    (manifest entries, in order). Small, immutable, picklable and JSON-friendly
    (:meth:`to_dict` / :meth:`from_dict`); construction validates every field, and every
    shard must be named as a shard of this very part and attempt."""

    part: int
    attempt: str
    shards: tuple[ShardInfo, ...]

    def __post_init__(self) -> None:
        if isinstance(self.part, bool) or not isinstance(self.part, int) or not 0 <= self.part <= MAX_PART:
            raise ReceiptError(f"receipt.part: expected an integer in [0, {MAX_PART}], got {self.part!r}")
        if not isinstance(self.attempt, str) or not re.fullmatch(f"[0-9a-f]{{{ATTEMPT_HEX}}}", self.attempt):
            raise ReceiptError(
                f"receipt.attempt of part {self.part}: expected {ATTEMPT_HEX} lowercase hex digits, "
                f"got {self.attempt!r}"
            )
        if not isinstance(self.shards, tuple):
            raise ReceiptError(f"receipt.shards of part {self.part}: expected a tuple, got "
                               f"{type(self.shards).__name__}")
        for i, shard in enumerate(self.shards):
            if not isinstance(shard, ShardInfo):
                raise ReceiptError(f"receipt.shards[{i}] of part {self.part}: expected a ShardInfo, "
                                   f"got {type(shard).__name__}")
            m = PART_SHARD_KEY.match(shard.uri)
            if m is None or int(m.group(1)) != self.part or m.group(2) != self.attempt:
                raise ReceiptError(
                    f"receipt.shards[{i}].uri of part {self.part}: expected a shard of part "
                    f"{self.part}, attempt {self.attempt} (shards/part-{self.part:06d}-{self.attempt}-...), "
                    f"got {shard.uri!r}"
                )
            # the attempt's shards, every one, in the order written; each named by its digest
            if int(m.group(3)) != i:
                raise ReceiptError(
                    f"receipt.shards[{i}].uri of part {self.part}: expected the attempt's shard {i} "
                    f"(its shards in order, none left out), got shard {int(m.group(3))} ({shard.uri!r})"
                )
            digest = shard.checksum.split(":", 1)[-1]
            if not digest.startswith(m.group(4)):
                raise ReceiptError(
                    f"receipt.shards[{i}].checksum of part {self.part}: {shard.checksum!r} is not the "
                    f"checksum its name {shard.uri!r} was given when it was uploaded"
                )
        if len({s.uri for s in self.shards}) != len(self.shards):
            raise ReceiptError(f"receipt.shards of part {self.part}: a shard is listed twice")

    @property
    def records(self) -> int:
        """The number of records the part wrote."""
        return sum(s.records for s in self.shards)

    @property
    def stored_bytes(self) -> int:
        """The bytes of the part's shard objects in the store."""
        return sum(s.stored_size for s in self.shards)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; :meth:`from_dict` reads it back."""
        return {
            "part": self.part,
            "attempt": self.attempt,
            "shards": [_shard_dict(s) for s in self.shards],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Receipt:
        """The receipt ``data`` describes; ReceiptError naming the field for anything else
        (unknown or missing keys, wrong types, shards not of this part and attempt)."""
        _check_keys(data, _RECEIPT_KEYS, "receipt")
        shards = data["shards"]
        if not isinstance(shards, list):
            raise ReceiptError(f"receipt.shards: expected a list, got {type(shards).__name__}")
        infos = []
        for i, entry in enumerate(shards):
            _check_keys(entry, _SHARD_KEYS, f"receipt.shards[{i}]", _OPTIONAL_SHARD_KEYS)
            try:
                infos.append(ShardInfo(**entry))
            except ValueError as exc:
                raise ReceiptError(f"receipt.shards[{i}]: {exc}") from None
        return cls(part=data["part"], attempt=data["attempt"], shards=tuple(infos))


def _shard_dict(shard: ShardInfo) -> dict[str, Any]:
    entry = {key: getattr(shard, key) for key in _SHARD_KEYS}
    for key in _OPTIONAL_SHARD_KEYS:
        if getattr(shard, key) is not None:
            entry[key] = getattr(shard, key)
    return entry


def _check_keys(data: object, keys: tuple[str, ...], where: str, optional: tuple[str, ...] = ()) -> None:
    if not isinstance(data, Mapping):
        raise ReceiptError(f"{where}: expected an object, got {type(data).__name__}")
    if not set(keys) <= set(data) <= set(keys + optional):
        unknown = sorted(map(str, set(data) - set(keys) - set(optional)))
        missing = sorted(set(keys) - set(data))
        also = f" (and perhaps {list(optional)})" if optional else ""
        raise ReceiptError(f"{where}: expected the keys {list(keys)}{also}; unknown {unknown}, missing {missing}")


class _PartWriter(Writer):
    """A :class:`~roxxel.Writer` that uploads one part's shards under the attempt's names
    and publishes nothing: :meth:`finish` returns the shards instead."""

    def __init__(self, url: str, *, part: int, attempt: str, **kwargs: Any) -> None:
        self._part, self._attempt = part, attempt
        super().__init__(url, mode="overwrite", **kwargs)

    def _prepare_publish(self) -> tuple[Manifest | None, int]:
        return None, 0  # no manifest is read or published by a part

    def _shard_key(self, index: int, digest: str, suffix: str) -> str:
        return f"shards/part-{self._part:06d}-{self._attempt}-{index:06d}-{digest[:12]}.rox{suffix}"

    def _growing_key(self, index: int) -> None:
        return None  # the receipt checks each name against its shard's digest: packed first

    def _publish(self, shards: list[ShardInfo]) -> Manifest:
        raise TypeError("a part of a build publishes nothing: roxxel.build.commit publishes its receipt")

    def finish(self) -> list[ShardInfo]:
        """Upload what is left and wait for every upload; the part's shards in order."""
        try:
            shards = self._upload_all()
        except BaseException:
            self._abort()
            raise
        self._state = "uploaded"
        self._pool.close()
        self._cleanup()
        return shards


def write_part(
    records: Iterable[Record],
    url: str,
    *,
    part: int,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    compression: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    upload_workers: int = 4,
    staging_dir: str | None = None,
    progress: Callback | None = None,
    store: Store | None = None,
    heads: bool = True,
) -> Receipt:
    """Pack ``records`` (bytes-like, ``str`` as UTF-8, or NumPy arrays' bytes) into shards of
    the dataset at ``url`` and upload them, as part ``part`` (an integer >= 0: the commit
    orders parts by it) of a build; return the :class:`Receipt` that
    :func:`roxxel.build.commit` publishes. Nothing becomes visible until that commit.

    Every call is a new attempt with names of its own, so calling it again for the same
    part (a retry, a speculative copy) never disturbs what another attempt uploaded. On
    error nothing is returned, and what this attempt uploaded stays unreferenced (for
    ``roxxel prune``). ``shard_bytes``, ``compression``, ``upload_workers``,
    ``staging_dir``, ``progress`` (record bytes uploaded) and ``heads`` are the Writer's
    (a commit that appends drops the heads and parts).
    """
    receipt_part = Receipt(part=part, attempt="0" * ATTEMPT_HEX, shards=())  # validates part
    attempt = uuid.uuid4().hex[:ATTEMPT_HEX]
    writer = _PartWriter(
        url, part=receipt_part.part, attempt=attempt, shard_bytes=shard_bytes, compression=compression,
        storage_options=storage_options, upload_workers=upload_workers, staging_dir=staging_dir,
        progress=progress, store=store, heads=heads,
    )
    try:
        writer.extend(records)
    except BaseException:
        writer.abort()
        raise
    receipt = Receipt(part=part, attempt=attempt, shards=tuple(writer.finish()))
    log.info("wrote part %d (attempt %s) of %s: %d records in %d shards", part, attempt, writer.url,
             receipt.records, len(receipt.shards))
    return receipt
