"""Copying a dataset between stores (S3 to GCS, a bucket to local disk, ...).

Shards are copied first, each one verified against its checksum before it is uploaded
and read back after; the manifest is published last, so the destination dataset appears
complete or not at all. An interrupted copy resumes: a destination object that already has the shard's
size is re-read and re-hashed, and kept if its checksum is right. Re-hashing costs a
read of the destination, but unlike a progress marker it cannot be fooled by an object
that was changed or cut short after the marker was written.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from fsspec.callbacks import Callback

from ..backends import Store
from ..errors import (
    DatasetExistsError,
    IntegrityError,
    NotFoundError,
)
from ..format.check import ShardCheck, ShardSpec
from ..manifest import Manifest, ShardInfo
from ..manifest.checksums import parse_checksum
from ..manifest.io import (
    MANIFEST_KEY,
    dataset_store,
    publish_manifest,
)
from ..manifest.signing import read_manifest_bytes
from ..manifest.signing_keys import PrivateKeyLike, load_private_key
from ..progress import Meter
from ..workers import WorkerPool
from ._common import DEFAULT_WORKERS, holds_already, read_destination
from .sign import SIGNED, UNSIGNED, carry_signature, sign_held, sign_published

__all__ = ["CopyReport", "copy", "copy_shard"]

log = logging.getLogger(__name__)

#: Reads of a source shard, and uploads of it, before a checksum mismatch is final.
ATTEMPTS = 3


@dataclass(frozen=True)
class CopyReport:
    """What :func:`copy` did. ``published`` is False when the destination already held
    this exact dataset (nothing was written). ``signature`` is what became of the
    source's signature (:mod:`roxxel.ops.sign`): ``"copied"`` (the manifest's bytes are
    unchanged, its signature still valid), ``"signed"`` (with ``sign_with``),
    ``"must be signed again"``, ``"unsigned"`` or ``"unchanged"``."""

    src: str
    dst: str
    shards: int
    copied: int  # shard objects uploaded
    kept: int  # already at the destination with the right checksum
    bytes_copied: int
    published: bool
    signature: str = UNSIGNED

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _checked(
    store: Store, key: str, shard: ShardInfo, jobs: WorkerPool, out: Callable[[bytes], object] | None = None
) -> tuple[ShardCheck, Callable[[bytes], None]]:
    """The one shard check of the object ``key``, and the sink that feeds it (then ``out``).

    Only the stored size and checksum are checked: the layout is ``verify``'s to check,
    and decompressing here would slow every copy.
    """
    check = ShardCheck(ShardSpec.of(shard, store.url(key)), parse_checksum(shard.checksum), layout=False)

    def sink(chunk: bytes) -> None:
        jobs.check()
        check(chunk)
        if out is not None:
            out(chunk)

    return check, sink


def _has_copy(store: Store, key: str, shard: ShardInfo, jobs: WorkerPool) -> bool:
    """True if ``key`` holds exactly the shard's bytes (re-hashed); False if not there."""
    check, sink = _checked(store, key, shard, jobs)
    try:
        check.expect_stored_size(store.size(key))
        store.stream(key, sink, size=shard.stored_size)
        check.finish()
    except NotFoundError:
        return False
    except IntegrityError as exc:  # the shard check's, or the object shrank while being read
        log.info("%s", exc)
        return False
    return True


class _OnceMeter:
    """Counts at most one shard's size into ``meter``, however often it is read."""

    def __init__(self, meter: Meter, size: int) -> None:
        self.meter, self.left = meter, size

    def add(self, nbytes: int) -> None:
        counted = min(nbytes, self.left)
        self.left -= counted
        self.meter.add(counted)


def _stage(src: Store, key: str, shard: ShardInfo, path: str, jobs: WorkerPool, meter: _OnceMeter) -> None:
    """Download the shard to ``path`` and check it; a wrong read is read again, since
    bytes can be corrupted in transit; a source that stays wrong raises IntegrityError."""
    for attempt in range(1, ATTEMPTS + 1):
        with open(path, "wb") as f:

            def out(chunk: bytes) -> None:
                f.write(chunk)
                meter.add(len(chunk))

            check, sink = _checked(src, key, shard, jobs, out)
            try:
                src.stream(key, sink)
                check.finish()
                return
            except IntegrityError as exc:
                if exc.problem is None:  # not the shard check's: the store's own error
                    raise
                problem = exc.problem
        if attempt == ATTEMPTS:
            raise IntegrityError(
                f"{src.url(key)}: {problem} (read {ATTEMPTS} times); the source is corrupt, "
                "nothing was copied over it"
            )
        log.warning("%s: %s; reading it again (attempt %d of %d)", src.url(key), problem, attempt, ATTEMPTS)


def copy_shard(
    src: Store,
    src_key: str,
    dst: Store,
    dst_key: str,
    shard: ShardInfo,
    *,
    staging_dir: str,
    jobs: WorkerPool,
    meter: Meter,
) -> bool:
    """Make ``dst_key`` hold the shard at ``src_key``; True if it was uploaded, False if
    the destination already held those exact bytes.

    The bytes are staged in ``staging_dir`` and verified (size, checksum) before the
    upload, so a bad source never lands at the destination; after the upload the object
    is read back and re-hashed, so a copy corrupted on the way is uploaded again (even
    where the store's answer to the upload confirms the object is the staged file: the
    checksum was checked on the bytes as they were staged, not on the file since). Either
    check failing ``ATTEMPTS`` times raises IntegrityError naming the object.
    """
    if _has_copy(dst, dst_key, shard, jobs):
        meter.add(shard.stored_size)
        return False
    fd, path = tempfile.mkstemp(prefix="shard-", dir=staging_dir)
    os.close(fd)
    try:
        _stage(src, src_key, shard, path, jobs, _OnceMeter(meter, shard.stored_size))
        for attempt in range(1, ATTEMPTS + 1):
            dst.put_file(path, dst_key)
            if _has_copy(dst, dst_key, shard, jobs):
                return True
            if attempt < ATTEMPTS:
                log.warning("%s: the uploaded object does not match its checksum; uploading it "
                            "again (attempt %d of %d)", dst.url(dst_key), attempt, ATTEMPTS)
        raise IntegrityError(
            f"{dst.url(dst_key)}: the uploaded object does not match size {shard.stored_size} "
            f"and checksum {shard.checksum} after {ATTEMPTS} uploads"
        )
    finally:
        os.unlink(path)


def copy(
    src_url: str,
    dst_url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    src_options: Mapping[str, Any] | None = None,
    dst_options: Mapping[str, Any] | None = None,
    overwrite: bool = False,
    workers: int = DEFAULT_WORKERS,
    staging_dir: str | None = None,
    progress: Callback | None = None,
    single_writer: bool = False,
    sign_with: PrivateKeyLike | None = None,
) -> CopyReport:
    """Copy the dataset at ``src_url`` to ``dst_url``, verifying every shard; resumable.

    ``storage_options`` apply to both stores unless ``src_options`` / ``dst_options``
    are given for one side. Shards keep their relative URIs; the manifest is published
    last, create-only: an existing different dataset at ``dst_url`` raises
    DatasetExistsError unless ``overwrite``. Each shard is checked before its upload and
    read back after it (see :func:`copy_shard`). Rerunning a finished copy changes nothing;
    rerunning an interrupted one copies only the shards missing or wrong at the
    destination. Shards are staged on local disk (``staging_dir``, default the system
    temp dir; up to ``workers`` shards at a time). ``progress`` counts stored bytes.
    The publish is a compare-and-swap against the destination manifest read at the start:
    ConflictError (or DatasetExistsError) if another writer published there meanwhile;
    on a store that does not enforce conditional writes it refuses unless ``single_writer``.
    The source's signature of its manifest is copied when the published manifest has the
    same bytes (still valid); otherwise the report says it must be signed again, or
    ``sign_with`` (an Ed25519 private key, see :class:`roxxel.Writer`) signs the copy.
    """
    signer = None if sign_with is None else load_private_key(sign_with)
    src = dataset_store(src_url, storage_options if src_options is None else src_options)
    dst = dataset_store(dst_url, storage_options if dst_options is None else dst_options)
    if src.base_url == dst.base_url and type(src.fs) is type(dst.fs) and src.root == dst.root:
        raise ValueError(f"source and destination are the same dataset: {src.base_url}")
    src_data, manifest = read_manifest_bytes(src)
    snapshot = read_destination(dst, overwrite=overwrite, single_writer=single_writer)
    existing = None if snapshot is None else snapshot.manifest
    if holds_already(dst, existing, manifest, overwrite=overwrite):
        log.info("%s already holds this dataset; nothing to copy", dst.base_url)
        n = len(manifest.shards)
        signature = sign_held(dst, signer, src, src_data)  # a rerun with --sign-with still signs
        return CopyReport(src.base_url, dst.base_url, n, 0, n, 0, published=False, signature=signature)
    table = manifest.shards
    if existing is not None:
        _refuse_live_clashes(existing, manifest, dst)
    meter = Meter(progress, int(sum(table.stored_size.tolist())))
    jobs = WorkerPool(workers, "roxxel-copy")
    staging = tempfile.mkdtemp(prefix="roxxel-copy-", dir=staging_dir)
    try:
        with jobs:
            copied = jobs.run(
                lambda shard: copy_shard(
                    src, shard.uri, dst, shard.uri, shard, staging_dir=staging, jobs=jobs, meter=meter
                ),
                list(table),
            )
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    if signer is not None:
        sign_published(dst, manifest, signer)
    signature = SIGNED if signer is not None else carry_signature(src, src_data, dst, manifest)
    publish_manifest(dst, manifest, replaces=snapshot, single_writer=single_writer)
    n_copied = sum(copied)
    return CopyReport(
        src=src.base_url,
        dst=dst.base_url,
        shards=len(table),
        copied=n_copied,
        kept=len(table) - n_copied,
        bytes_copied=sum(s.stored_size for s, c in zip(table, copied) if c),
        published=True,
        signature=signature,
    )


def _refuse_live_clashes(existing: Manifest, incoming: Manifest, dst: Store) -> None:
    """DatasetExistsError if a shard URI of the published destination would get other
    bytes: readers of the live dataset would see them before the new manifest lands."""
    live = dict(zip(existing.shards.uris.tolist(), existing.shards.checksums.tolist()))
    for uri, checksum in zip(incoming.shards.uris.tolist(), incoming.shards.checksums.tolist()):
        if live.get(uri, checksum) != checksum:
            raise DatasetExistsError(
                f"{dst.url(uri)} is listed by the dataset published at {dst.url(MANIFEST_KEY)} "
                f"with checksum {live[uri]}; the copy has {checksum} there. Overwriting it would "
                "change a shard under live readers: copy to a new destination instead"
            )
