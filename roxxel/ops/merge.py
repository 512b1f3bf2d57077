"""Merging datasets written by parallel writers into one manifest.

A source *in place* lives at the destination or below it, on the same filesystem
(``DEST/part-0``, ``DEST/part-1``, ...): its shards stay where they are and the merged
manifest names them by their path relative to ``DEST`` (``part-0/shards/...``). Any
other source's shards are copied (verified) into ``DEST/shards/`` under names derived
from their checksums. The manifest is published last.

Shards are identified by the object they are in. The same object listed twice (a source
given twice) is kept once; the same object with two different checksums is a conflict;
two different objects with the same checksum are duplicates (the merged dataset would
hold those records twice). Both raise :class:`ManifestError` before anything is written.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from fsspec.callbacks import Callback

from ..backends import Store
from ..errors import IntegrityError, ManifestError
from ..manifest import Manifest, ShardInfo
from ..manifest.io import (
    MANIFEST_KEY,
    dataset_store,
    publish_manifest,
    read_manifest,
)
from ..manifest.signing_keys import PrivateKeyLike, load_private_key
from ..progress import Meter
from ..workers import WorkerPool
from ._common import DEFAULT_WORKERS, holds_already, read_destination
from .copy import copy_shard
from .sign import RESIGN, SIGNED, UNSIGNED, sign_held, sign_published, sources_signed

__all__ = ["MergeReport", "merge"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MergeReport:
    """What :func:`merge` did. ``published`` is False when the destination already held
    this exact merged dataset. ``signature``: the merged manifest is new, so no source's
    signature covers it: ``"signed"`` (with ``sign_with``), ``"must be signed again"``
    (a source or the destination was signed), ``"unsigned"`` or ``"unchanged"``."""

    dst: str
    sources: int
    shards: int
    records: int
    in_place: int  # shards referenced where they are
    copied: int  # shards uploaded into DEST/shards/
    kept: int  # shards to copy that were already there, verified
    bytes_copied: int
    published: bool
    signature: str = UNSIGNED

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class _Entry:
    source: Store
    src_key: str
    shard: ShardInfo  # with the URI it gets in the merged manifest
    in_place: bool


def _prefix_in(dst: Store, src: Store) -> str | None:
    """``src``'s path relative to ``dst`` ("" if the same) if it is in place, else None."""
    same_fs = type(src.fs) is type(dst.fs) and src.fs.protocol == dst.fs.protocol
    if not same_fs:
        return None
    if src.root == dst.root:
        return ""
    base = dst.root.rstrip("/") + "/"
    return src.root[len(base):] if src.root.startswith(base) else None


def _copy_key(shard: ShardInfo) -> str:
    algorithm, _, digest = shard.checksum.partition(":")
    suffix = ".rox.zst" if shard.compression == "zstd" else ".rox"
    return f"shards/{algorithm}-{digest[:32]}{suffix}"


def _merged_meta(sources: list[tuple[Store, Manifest]]) -> dict[str, Any]:
    first_store, first = sources[0]
    for store, manifest in sources[1:]:
        if manifest.meta != first.meta:
            raise ManifestError(
                f"the sources disagree on meta: {first_store.base_url} has "
                f"{json.dumps(dict(first.meta), sort_keys=True)[:200]}, {store.base_url} has "
                f"{json.dumps(dict(manifest.meta), sort_keys=True)[:200]}; give the merged meta explicitly"
            )
    return dict(first.meta)


def _entries(dst: Store, sources: list[tuple[Store, Manifest]]) -> list[_Entry]:
    """The merged shard list; ManifestError on conflicting or duplicate shards."""
    entries: list[_Entry] = []
    by_object: dict[str, str] = {}  # source object -> checksum
    by_checksum: dict[str, str] = {}  # checksum -> source object
    for store, manifest in sources:
        prefix = _prefix_in(dst, store)
        skipped = 0
        for shard in manifest.shards:
            where = store.url(shard.uri)
            seen = by_object.get(where)
            if seen == shard.checksum:
                skipped += 1
                continue
            if seen is not None:
                raise ManifestError(
                    f"conflicting shards: {where} is listed with checksum {seen} and with "
                    f"{shard.checksum}; one of the manifests is stale, verify the sources"
                )
            other = by_checksum.get(shard.checksum)
            if other is not None:
                raise ManifestError(
                    f"duplicate shards: {other} and {where} have the same checksum "
                    f"{shard.checksum}, so the merged dataset would hold their records twice; "
                    "merge each dataset once"
                )
            by_object[where] = shard.checksum
            by_checksum[shard.checksum] = where
            uri = _copy_key(shard) if prefix is None else "/".join(p for p in (prefix, shard.uri) if p)
            entries.append(_Entry(store, shard.uri, _with_uri(shard, uri), prefix is not None))
        if skipped:
            log.warning("%s: %d shards are listed by an earlier source too; kept once", store.base_url, skipped)
    return entries


def _with_uri(shard: ShardInfo, uri: str) -> ShardInfo:
    return replace(shard, uri=uri)


def _sources(
    urls: Sequence[str], storage_options: Mapping[str, Any] | None, dst: Store, existing: Manifest | None
) -> list[tuple[Store, Manifest]]:
    """Each source's store and manifest. The destination as a source (a merge in place)
    is the very manifest the publish compares against: read twice, a publish between the
    two reads would vanish under the merge."""
    sources = []
    for url in urls:
        store = dataset_store(url, storage_options)
        same = existing is not None and (type(store.fs), store.root) == (type(dst.fs), dst.root)
        sources.append((store, existing if same else read_manifest(store)))
    return sources


def merge(
    src_urls: Sequence[str],
    dst_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    workers: int = DEFAULT_WORKERS,
    staging_dir: str | None = None,
    progress: Callback | None = None,
    single_writer: bool = False,
    sign_with: PrivateKeyLike | None = None,
) -> MergeReport:
    """Publish at ``dst_url`` one dataset holding the shards of ``src_urls``, in order.

    See the module docstring for which shards stay in place and which are copied, and
    for duplicates. ``meta`` is the merged meta; by default the sources' meta, which must
    then be equal. In-place shards are checked to exist with their stored size; copied
    ones are verified (see :func:`roxxel.ops.copy`). Idempotent: if ``dst_url`` already
    holds exactly the merged manifest nothing is written; a different dataset there
    raises DatasetExistsError unless ``overwrite``. ``progress`` counts bytes copied.
    The publish is a compare-and-swap against the destination manifest read at the start:
    ConflictError (or DatasetExistsError) if another writer published there meanwhile;
    on a store that does not enforce conditional writes it refuses unless ``single_writer``.
    ``sign_with`` (an Ed25519 private key, see :class:`roxxel.Writer`) signs the merged
    manifest; without it, a merge of signed datasets reports that it must be signed again.
    """
    if not src_urls:
        raise ValueError("merge needs at least one source dataset")
    signer = None if sign_with is None else load_private_key(sign_with)
    dst = dataset_store(dst_url, storage_options)
    snapshot = read_destination(dst, overwrite=overwrite, single_writer=single_writer)
    existing = None if snapshot is None else snapshot.manifest
    sources = _sources(src_urls, storage_options, dst, existing)
    merged_meta = dict(meta) if meta is not None else _merged_meta(sources)
    entries = _entries(dst, sources)
    manifest = Manifest.build([e.shard for e in entries], merged_meta)
    in_place = [e for e in entries if e.in_place]
    to_copy = [e for e in entries if not e.in_place]
    report = dict(
        dst=dst.base_url, sources=len(sources), shards=len(entries), records=manifest.records,
        in_place=len(in_place),
    )
    if holds_already(dst, existing, manifest, overwrite=overwrite):
        log.info("%s already holds this merged dataset; nothing to do", dst.base_url)
        return MergeReport(**report, copied=0, kept=len(to_copy), bytes_copied=0, published=False,
                           signature=sign_held(dst, signer))

    jobs = WorkerPool(workers, "roxxel-merge")

    def check_in_place(entry: _Entry) -> None:
        jobs.check()
        found = dst.size(entry.shard.uri)
        if found != entry.shard.stored_size:
            raise IntegrityError(
                f"{dst.url(entry.shard.uri)}: object is {found} bytes, expected "
                f"{entry.shard.stored_size} from {entry.source.url(MANIFEST_KEY)}"
            )

    with jobs:
        jobs.run(check_in_place, in_place)
        meter = Meter(progress, sum(e.shard.stored_size for e in to_copy))
        staging = tempfile.mkdtemp(prefix="roxxel-merge-", dir=staging_dir)
        try:
            copied = jobs.run(
                lambda e: copy_shard(
                    e.source, e.src_key, dst, e.shard.uri, e.shard, staging_dir=staging, jobs=jobs, meter=meter
                ),
                to_copy,
            )
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    if signer is not None:
        sign_published(dst, manifest, signer)
        signature = SIGNED
    else:
        signature = RESIGN if sources_signed(dst, *(store for store, _ in sources)) else UNSIGNED
    publish_manifest(dst, manifest, replaces=snapshot, single_writer=single_writer)
    return MergeReport(
        **report,
        copied=sum(copied),
        kept=len(copied) - sum(copied),
        bytes_copied=sum(e.shard.stored_size for e, c in zip(to_copy, copied) if c),
        published=True,
        signature=signature,
    )
