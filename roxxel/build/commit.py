"""Phase two of a build: :func:`commit` publishes one manifest listing the shards of every
part's receipt, in the order of the part ids.

It runs once, on the driver, and holds only receipts. It refuses (ReceiptError, nothing
published) when a part has no receipt or two receipts for one part disagree; then it
checks that every listed shard object is in the store with its size, and publishes
exactly as :class:`roxxel.Writer` does: create-only, overwrite, or an append by
compare-and-swap on the manifest (DESIGN.md, invariant 9). A commit that lost a race
(ConflictError) can simply be run again with the same receipts.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from ..backends import Store
from ..errors import DatasetExistsError, IntegrityError, ReceiptError
from ..format.layout import payload_size
from ..manifest import Manifest, ShardInfo
from ..manifest.io import MANIFEST_KEY, dataset_store, require_conditional_writes
from ..manifest.record_type import RecordType
from ..writer import Writer
from .parts import Receipt

__all__ = ["MODES", "check_destination", "commit"]

log = logging.getLogger(__name__)

MODES = ("create", "overwrite", "append")
_CHECK_WORKERS = 16


def check_destination(
    url: str,
    *,
    mode: str = "create",
    storage_options: Mapping[str, Any] | None = None,
    single_writer: bool = False,
    store: Store | None = None,
) -> None:
    """Fail before a build uploads anything if its commit could not succeed: a bad mode, a
    dataset already at ``url`` for ``mode="create"``, or a store that does not enforce
    conditional writes (unless ``single_writer``) for create and append."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    store = store if store is not None else dataset_store(url, storage_options)
    if mode != "overwrite":
        require_conditional_writes(store, single_writer=single_writer)
    if mode == "create" and store.exists(MANIFEST_KEY):
        raise DatasetExistsError(
            f"a dataset already exists at {store.url(MANIFEST_KEY)}; "
            "use mode='overwrite' to replace it or mode='append' to add to it"
        )


def chosen_receipts(receipts: Iterable[Receipt | Mapping[str, Any]], parts: int | None = None) -> list[Receipt]:
    """One receipt per part, in part order. Dicts are read with :meth:`Receipt.from_dict`;
    equal receipts for a part count once. ReceiptError if two for a part disagree, or a
    part in ``range(parts)`` (``parts`` None: up to the highest part id seen) has none."""
    if parts is not None and (isinstance(parts, bool) or not isinstance(parts, int) or parts < 0):
        raise ValueError(f"parts must be an integer >= 0, got {parts!r}")
    by_part: dict[int, Receipt] = {}
    for receipt in receipts:
        if isinstance(receipt, Mapping):
            receipt = Receipt.from_dict(receipt)
        elif not isinstance(receipt, Receipt):
            raise ReceiptError(f"expected Receipt objects (or their to_dict()), got {type(receipt).__name__}")
        seen = by_part.setdefault(receipt.part, receipt)
        if seen != receipt:
            raise ReceiptError(
                f"two receipts for part {receipt.part} disagree (attempts {seen.attempt} and "
                f"{receipt.attempt}: {len(seen.shards)} and {len(receipt.shards)} shards); "
                "pass exactly one receipt per part: nothing was published"
            )
    expected = parts if parts is not None else max(by_part, default=-1) + 1
    inside = sum(1 for p in by_part if p < expected)  # (a few missing named: a hostile part id may be 10**12)
    missing = list(itertools.islice((p for p in range(expected) if p not in by_part), 11)) if inside < expected else []
    extra = sorted(p for p in by_part if p >= expected)
    if missing or extra:
        what = f"no receipt for part(s) {_few(missing)}" if missing else ""
        if extra:
            what += ("; " if what else "") + f"receipts for part(s) {_few(extra)} beyond the {expected} expected"
        raise ReceiptError(f"cannot commit a build of {expected} parts: {what}; nothing was published")
    return [by_part[p] for p in range(expected)]


def _few(ids: list[int]) -> str:
    shown = ", ".join(map(str, ids[:10]))
    return shown + (" and more" if len(ids) > 10 else "")


class _Committer(Writer):
    """A :class:`~roxxel.Writer` that packs nothing: its publish lists the receipts' shards,
    after checking each object is in the store with its size."""

    def __init__(self, url: str, shards: list[ShardInfo], **kwargs: Any) -> None:
        self._receipt_shards = shards
        super().__init__(url, upload_workers=_CHECK_WORKERS, **kwargs)

    def _upload_all(self) -> list[ShardInfo]:
        kind = self.record_type  # the dataset's (an append) or meta's declared type, if any
        if kind is None and self._meta:
            kind = RecordType.from_meta(self._meta, "the meta given to commit")
        if kind is not None:
            for shard in self._receipt_shards:
                self._check_type(shard, kind)
        self._pool.run(self._check_object, self._receipt_shards)
        return self._receipt_shards

    def _check_type(self, shard: ShardInfo, kind: RecordType) -> None:
        """ReceiptError unless the shard's payload can hold records of ``kind`` (exactly,
        for a fixed shape): a part written untyped must not join a typed dataset."""
        payload = int(payload_size(np.asarray([shard.raw_size]), np.asarray([shard.records]))[0])
        item = kind.dtype.itemsize
        fits = payload == shard.records * kind.record_bytes if kind.fixed else payload % item == 0
        if not fits:
            raise ReceiptError(
                f"{self.store.url(shard.uri)}: {shard.records} records in a payload of {payload} bytes are not "
                f"{kind.describe()} records, which {self.url} holds; nothing was published"
            )

    def _check_object(self, shard: ShardInfo) -> None:
        self._pool.check()
        found = self.store.size(shard.uri)
        if found != shard.stored_size:
            raise IntegrityError(
                f"{self.store.url(shard.uri)}: object is {found} bytes, its part's receipt says "
                f"{shard.stored_size}; nothing was published"
            )


def commit(
    url: str,
    receipts: Iterable[Receipt | Mapping[str, Any]],
    *,
    mode: str = "create",
    meta: Mapping[str, Any] | None = None,
    parts: int | None = None,
    storage_options: Mapping[str, Any] | None = None,
    single_writer: bool = False,
    store: Store | None = None,
) -> Manifest:
    """Publish at ``url`` the dataset made of the parts' shards, in part order; returns the
    published manifest.

    ``receipts`` are what :func:`write_part` returned (or their ``to_dict()``), exactly one
    per part from 0 to ``parts - 1`` (``parts`` None: up to the highest part id given);
    equal duplicates count once. ReceiptError, publishing nothing, if a part is missing or
    two receipts for one part disagree; IntegrityError if a listed shard object is missing
    or of another size. ``mode``, ``meta`` and ``single_writer`` are the Writer's: a create
    loses to an existing dataset (DatasetExistsError), an append to a concurrent publish
    (ConflictError: commit again with the same receipts), and with ``meta=None`` an append
    keeps the dataset's meta.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    chosen = chosen_receipts(receipts, parts)
    shards = [shard for receipt in chosen for shard in receipt.shards]
    committer = _Committer(url, shards, mode=mode, meta=meta, storage_options=storage_options,
                           single_writer=single_writer, store=store)
    manifest = committer.close()
    log.info("committed %d parts to %s", len(chosen), committer.url)
    return manifest
