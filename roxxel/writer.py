"""``roxxel.Writer``: pack records into shards and publish them as a dataset.

Records are streamed into a local staging shard (only the offsets stay in memory) whose
checksum is computed while it is written, and, for S3, the MD5 of each multipart part
too (:mod:`roxxel.staging`), so the upload is checked against the bytes packed without
hashing them again. A finished shard goes to a background upload thread of a
:class:`~roxxel.workers.WorkerPool` (compressed there with zstd if asked), while packing
goes on; staging is bounded, so ``append`` waits (on the uploads' futures) when uploads
fall behind. ``close()`` waits for every upload, checks each object in the store, and
publishes ``manifest.json`` last: the dataset becomes visible all at once, or not at all.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, replace
from functools import partial
from typing import Any

import numpy as np
import numpy.typing as npt
from fsspec.callbacks import Callback

from . import trace
from .backends import Store, gcs_upload, multipart
from .backends.gcs import GCSBackend
from .backends.growing import PartFeed
from .backends.s3 import S3Backend
from .backends.through import Revoked
from .errors import ConflictError, DatasetExistsError, IntegrityError, ManifestError
from .format.check import ShardCheck, ShardSpec
from .format.layout import FOOTER_SIZE
from .format.writer import Record, ShardWriter, record_bytes
from .manifest import Manifest, ShardInfo
from .manifest.checksums import DEFAULT_ALGORITHM, new_hasher, parse_checksum
from .manifest.compressions import COMPRESSIONS, describe
from .manifest.heads import HEAD_BYTES, index_start
from .manifest.parts import MAX_PARTS, MIN_PART_BYTES, part_digest, tiles
from .manifest.io import (
    MANIFEST_KEY,
    Snapshot,
    dataset_store,
    publish_manifest,
    read_snapshot,
    require_conditional_writes,
)
from .manifest.record_type import RecordType
from .manifest.signing import sign_manifest
from .manifest.signing_keys import PrivateKeyLike, load_private_key
from .progress import Meter
from .publishcheck import PublishCheck
from .staging import StagingFile, compress, make_staging_dir
from .workers import WorkerPool

__all__ = ["DEFAULT_SHARD_BYTES", "Writer"]

log = logging.getLogger(__name__)

DEFAULT_SHARD_BYTES = 64 << 20
_MODES = ("create", "overwrite", "append")
_SHARD_NAME = re.compile(r"^shards/(\d{5,})-\d{6,}-[0-9a-f]{12}\.rox(\.zst)?$")
_UPLOAD_ATTEMPTS = 3
_ROWS_BYTES = 64 << 20  # extend(array) makes rows contiguous this much at a time


@dataclass(frozen=True)
class _Staged:
    index: int
    path: str
    records: int
    payload_size: int  # the records' bytes
    raw_size: int
    raw_digest: str
    part_size: int | None = None  # the multipart parts whose MD5s were computed while packing
    part_md5s: tuple[bytes, ...] | None = None


class Writer:
    """Write a dataset of records to ``url`` (S3, GCS, local disk or memory).

    ``mode="create"`` refuses an existing dataset; ``"overwrite"`` replaces its manifest
    (old shard objects stay, unreferenced, so readers of the old version are not cut
    off); ``"append"`` publishes a manifest listing the old shards and then the new.
    Use as a context manager: a clean exit publishes, an exception publishes nothing.

    ``progress``, an fsspec ``Callback`` (for a bar, ``fsspec.callbacks.TqdmCallback``),
    counts the records' bytes: its size is the bytes appended so far (set every 4,096
    records and at each finished shard), its value the bytes of the shards uploaded, so
    the two meet when :meth:`close` has uploaded everything. It is called from the
    writer's threads, one call at a time; keep it quick.

    Concurrent writers: create and append publish by compare-and-swap, so of two writers
    one may get :class:`~roxxel.errors.DatasetExistsError` (create) or
    :class:`~roxxel.errors.ConflictError` (append) and publish nothing; an append that
    lost can simply be written again. On a store that does not enforce conditional
    writes, create and append refuse (publishing nothing) unless ``single_writer=True``
    says that nothing else writes this dataset meanwhile: at once on local disk; on S3
    and GCS, whose probe answers in the background, from the ``append``/``extend`` that
    finishes the next shard after its answer, or from :meth:`close` (the shards
    uploaded before it stay, unreferenced).

    At most ``max_staged_shards`` finished shards (default ``upload_workers + 1``) are
    staged for upload; past that, appending waits. ``upload_workers + 1`` of them (at
    most) go up at once: one more than the workers, so that a dataset's last, small
    shard does not wait for another's upload to end. (A large S3 or GCS shard goes up as
    it is packed, on a thread of its own besides, not one of the workers, which then
    only wait for it and, where its upload's answer did not confirm it, check it.)

    ``sign_with``, an Ed25519 private key (a ``cryptography`` key object, unencrypted PEM
    or OpenSSH key text, or the path of a key file), signs the dataset: the signature of
    the manifest's exact bytes is stored (under ``signatures/``, a name bound to those
    bytes) just before the manifest is published, so readers with ``trusted_keys`` never
    find the new manifest unsigned. The key is loaded here (a bad one fails before any
    upload) and is never logged or shown.

    With ``$ROXXEL_TRACE`` set (or tracing on: :mod:`roxxel.trace`), the writer records
    its set-up, the packing of each shard, waits for staging room, each shard's upload
    and check, each S3 or GCS part (and GCS's composes), and the publish, in a Chrome/Perfetto trace.

    ``dtype`` (a NumPy number type) and ``shape`` (None: 1-D records of any length)
    declare the records' type in the manifest's ``meta`` (``meta["dtype"]``,
    ``meta["shape"]``: see :mod:`roxxel.manifest.record_type`); readers get the records as
    arrays of it from ``ds.arrays``. A typed writer refuses records of another dtype,
    shape or size with a ValueError; appending to a typed dataset keeps its type.

    ``heads`` (default True): each shard of a new dataset, uncompressed and over 16 MiB,
    gets a head in the manifest (:mod:`roxxel.manifest.heads`), from which ``for r in
    ds`` and ``ds.iter`` serve their first records before the shard has arrived whole
    (about 165 bytes of manifest a shard), and the checksum of each of its 8 MiB parts
    (:mod:`roxxel.manifest.parts`: 32 bytes of manifest a part), from which a resume
    inside the shard serves its first record once that record's part is in. roxxel
    before heads refuses a manifest that has one, and roxxel before parts one with parts:
    ``heads=False`` writes neither, and an append adds neither, so a dataset stays
    readable by whatever read it.
    """

    def __init__(
        self,
        url: str,
        shard_bytes: int = DEFAULT_SHARD_BYTES,
        compression: str | None = None,
        storage_options: Mapping[str, Any] | None = None,
        meta: Mapping[str, Any] | None = None,
        mode: str = "create",
        *,
        upload_workers: int = 4,
        sign_with: PrivateKeyLike | None = None,
        max_staged_shards: int | None = None,
        staging_dir: str | None = None,
        progress: Callback | None = None,
        store: Store | None = None,
        single_writer: bool = False,
        dtype: npt.DTypeLike | None = None,
        shape: Sequence[int] | int | None = None,
        heads: bool = True,
    ) -> None:
        began = time.perf_counter_ns()
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {', '.join(_MODES)}; got {mode!r}")
        if compression not in COMPRESSIONS:
            raise ValueError(f"compression must be {describe()}, got {compression!r}")
        if isinstance(shard_bytes, bool) or not isinstance(shard_bytes, int) or shard_bytes <= FOOTER_SIZE:
            raise ValueError(f"shard_bytes must be an integer > {FOOTER_SIZE}, got {shard_bytes!r}")
        # the records' type, declared in meta (see roxxel.manifest.record_type)
        self.record_type: RecordType | None = None if dtype is None else RecordType.of(dtype, shape)
        if dtype is None and shape is not None:
            raise ValueError(f"shape {shape!r} needs a dtype: Writer(..., dtype=..., shape=...)")
        if self.record_type is not None and (mode != "append" or meta is not None):
            meta = _typed_meta(meta, self.record_type)  # (an append with meta=None keeps the dataset's)
        self.store = store if store is not None else dataset_store(url, storage_options)
        self.url = self.store.base_url
        self.shard_bytes = shard_bytes
        self.compression = compression
        self.mode = mode
        self.heads = heads
        self.single_writer = single_writer
        self._meta = meta
        self._signer = None if sign_with is None else load_private_key(sign_with)
        self._meter = None if progress is None else Meter(progress)
        self.manifest: Manifest | None = None

        for name, value in (("upload_workers", upload_workers), ("max_staged_shards", max_staged_shards or 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        self._max_staged = max_staged_shards or upload_workers + 1
        # (started when used) one more than the workers: the last, small shard goes up at once
        self._pool = WorkerPool(min(self._max_staged, upload_workers + 1), name="roxxel-upload")
        # S3 and GCS shards that go up as they are packed (_start_shard): each such upload waits on
        # its packer most of its life, so it has a thread of its own (the staged shards'
        # and the one being packed), not one of the upload workers
        self._growing_pool = WorkerPool(self._max_staged + 1, name="roxxel-upload-growing")
        self._probe: PublishCheck | None = None  # the probe for conditional writes (_prepare_publish)
        self._base, self._generation = self._prepare_publish()
        try:
            if (tracer := trace.configure()) is not None:
                tracer.complete("writer set-up", "write", began, time.perf_counter_ns(), mode=mode)
            self._staging = make_staging_dir(staging_dir)
            # MD5s of parts on two lanes (threads start only when used)
            self._md5_lanes = tuple(WorkerPool(1, name=f"roxxel-staging-md5-{i}") for i in range(2))
            # S3, GCS: the part threads and their connections stay from one shard to the next
            backend = self.store.backend
            release = (multipart.hold() if isinstance(backend, S3Backend)
                       else gcs_upload.hold() if isinstance(backend, GCSBackend) else None)
        except BaseException:
            if self._probe is not None:
                self._probe.close()
            raise
        lanes = (*self._md5_lanes, self._growing_pool, *(() if self._probe is None else (self._probe,)))
        # the shard being packed and going up as it is (S3, GCS): its feed, key and upload
        self._growing: tuple[PartFeed, str, Future[bool | None]] | None = None
        self._feeds: set[PartFeed] = set()  # feeds not finished: given up when the writer ends
        self._cleanup = weakref.finalize(self, _clean_up, self._staging, lanes, release, self._feeds)
        self._futures: list[Future[ShardInfo]] = []
        self._staged: list[Future[ShardInfo]] = []  # uploads not finished, in order
        self._uploaded: list[str] = []  # keys of objects this writer put, for abort
        self._lock = threading.Lock()
        self._current: tuple[ShardWriter, StagingFile, _Staged] | None = None
        self._next_index = 0
        self._shard_began = 0  # when the shard being packed was started (for the trace)
        self._records = 0
        self._bytes = 0
        self._state = "open"

    def _prepare_publish(self) -> tuple[Manifest | None, int]:
        """Check that the publish can succeed; returns the existing manifest (an append's
        base) and the generation of the new shard names. (A writer of one part of a build
        publishes nothing: ``roxxel.build`` skips this.)

        The manifest is checked here (one request). So is whether the store enforces
        conditional writes, where that takes no request (local disk, memory). On S3 and
        GCS that takes a probe (five round trips, and the cloud client made first): it
        goes on in the background while the first shards are packed and uploaded, and the
        publish waits for its answer (:meth:`_require_probe`). A refusal is raised by the
        call that finishes the next shard after it (``append``, ``extend``:
        :meth:`_check_probe`) or by ``close``; nothing is published, and the shards
        uploaded meanwhile stay unreferenced, as an aborted writer's do. If the
        manifest's check fails, the probe's error is the one raised."""
        if self.mode == "overwrite":
            base = self._existing_manifest()
            return base, _next_generation(base)
        probe = self._probe = PublishCheck(
            partial(require_conditional_writes, self.store, single_writer=self.single_writer),
            background=not self.single_writer and isinstance(self.store.backend, (S3Backend, GCSBackend)),
        )
        try:
            base = self._existing_manifest()
        except Exception:
            try:
                probe.require()
            finally:
                probe.close()
            raise
        except BaseException:
            probe.close()  # (an interrupt does not wait for the probe)
            raise
        return base, _next_generation(base)

    def _check_probe(self) -> None:
        """Raise the probe's refusal (a store that accepts conditional writes but does not
        enforce them) if it has answered so, aborting the writer; do not wait for it."""
        if self._probe is not None:
            try:
                self._probe.raise_if_refused()
            except BaseException:
                self._abort()
                raise

    def _require_probe(self) -> None:
        """Wait for the probe's answer (the publish begins with this) and raise its refusal."""
        if self._probe is not None:
            self._probe.require()

    def _existing_manifest(self) -> Manifest | None:
        if self.mode == "create":
            if self.store.exists(MANIFEST_KEY):
                raise DatasetExistsError(
                    f"a dataset already exists at {self.store.url(MANIFEST_KEY)}; "
                    "use mode='overwrite' to replace it or mode='append' to add to it"
                )
            return None
        try:
            base = read_snapshot(self.store).manifest
            if base is not None and self.mode == "append":
                self._adopt_record_type(base)
            elif self.mode == "append" and self.record_type is not None and self._meta is None:
                self._meta = self.record_type.to_meta()  # an append that creates the dataset declares it
            return base
        except ManifestError as exc:
            if self.mode == "append":
                raise
            log.warning("overwriting an unreadable manifest at %s: %s", self.url, exc)
            return None

    # -- appending -------------------------------------------------------------------

    def append(self, record: Record) -> None:
        """Add one record (bytes-like, ``str`` as UTF-8, or a NumPy array's bytes)."""
        if self._state != "open":
            raise ValueError(f"writer for {self.url} is {self._state}")
        if self.record_type is not None and isinstance(record, np.generic):
            record = np.asarray(record)  # one value: a record of shape ()
        data = record_bytes(record, self._records)
        if self.record_type is not None:
            _check_typed(record, data, self.record_type, self._records)
        current = self._current
        if current is None or (
            current[0].record_count and current[0].file_size_with(data.nbytes) > self.shard_bytes
        ):
            if current is not None:
                self._finish_shard()
            current = self._start_shard()
        current[0].append(data)
        self._records += 1
        self._bytes += data.nbytes
        if self._meter is not None and self._records % 4096 == 0:
            self._meter.set_total(self._bytes)

    def extend(self, records: Iterable[Record] | np.ndarray) -> None:
        """Add every record of ``records`` in order.

        An array of numbers of shape ``(n, ...)`` is n records, one a row, written in bulk
        (no Python loop per record); an array of ``str`` or ``bytes`` elements is n records
        as a list of them is. A typed writer takes only arrays of its dtype whose
        rows have its shape (any row shape for variable-length records), and refuses
        others with a ValueError naming both.
        """
        if isinstance(records, np.ndarray) and records.ndim >= 1 and (
            self.record_type is not None or records.dtype.kind in "biufc"
        ):  # (an array of str or bytes is records one by one, each its UTF-8 or its bytes, as ever)
            self._extend_rows(records)
            return
        for record in records:
            self.append(record)

    def _extend_rows(self, rows: np.ndarray) -> None:
        """The rows of ``rows`` as records: each shard gets as many as fit, in one write."""
        if self._state != "open":
            raise ValueError(f"writer for {self.url} is {self._state}")
        kind = self.record_type
        if kind is not None and (rows.dtype != kind.dtype or (kind.fixed and rows.shape[1:] != kind.shape)):
            raise ValueError(
                f"writer for {self.url} takes {kind.describe()} records, got an array of "
                f"{rows.dtype} of shape {rows.shape} (rows of shape {rows.shape[1:]})"
            )
        if rows.dtype.hasobject:
            raise TypeError(f"records must be arrays of numbers, got an array of {rows.dtype}")
        n = len(rows)
        size = rows.dtype.itemsize * (int(np.prod(rows.shape[1:])) if rows.ndim > 1 else 1)  # bytes a record
        flat = np.zeros(0, dtype=np.uint8)  # the records done..done+len(flat)//size, contiguous
        at = done = 0
        while done < n:
            current = self._current
            if current is None:
                current = self._start_shard()
            writer = current[0]
            room = (self.shard_bytes - writer.file_size) // (size + 8)  # an offset is 8 bytes
            if room < 1 and writer.record_count:
                self._finish_shard()
                continue
            if at == len(flat):  # a copy only where the rows are not contiguous, at most _ROWS_BYTES
                stop = min(n, done + max(_ROWS_BYTES // max(size, 1), 1))
                flat, at = np.ascontiguousarray(rows[done:stop]).reshape(-1).view(np.uint8), 0
            take = min(n - done, max(room, 1), (len(flat) - at) // size if size else n - done)
            writer.append_equal(memoryview(flat[at : at + take * size]), take)
            at += take * size
            done += take
            self._records += take
            self._bytes += take * size
        if self._meter is not None:
            self._meter.set_total(self._bytes)

    def _adopt_record_type(self, base: Manifest) -> None:
        """Appending: the records must be of the dataset's declared type, if any. (An
        untyped writer appends to a dataset whose meta declares no type roxxel reads, a
        structured dtype say, as it always did.)"""
        try:
            declared = RecordType.from_meta(base.meta, self.store.url(MANIFEST_KEY))
        except ManifestError:
            if self.record_type is not None:
                raise
            return
        if self.record_type is None:
            self.record_type = declared
        elif declared != self.record_type:
            have = "no record type" if declared is None else declared.describe()
            raise ValueError(
                f"{self.url} declares {have} in meta.dtype/meta.shape; this writer's records are "
                f"{self.record_type.describe()}: append records of the dataset's type"
            )

    def _start_shard(self) -> tuple[ShardWriter, StagingFile, _Staged]:
        index = self._next_index
        self._next_index += 1
        path = os.path.join(self._staging, f"{index:06d}.rox")
        # the stored bytes are these unless compressed: then _compress hashes the parts
        part_size = None if self.compression else self._growing_part_size()
        key = None if part_size is None else self._growing_key(index)
        feed = None if key is None or part_size is None else PartFeed(part_size)
        on_s3 = isinstance(self.store.backend, S3Backend)
        sink = StagingFile(path, part_size=part_size, part_md5s=on_s3,
                           part_crc32c=None if feed is None or on_s3 else gcs_upload.c_crc32c(),
                           md5_lanes=self._md5_lanes, on_part=None if feed is None else feed.written)
        staged = _Staged(index, path, 0, 0, 0, "")
        if feed is not None and key is not None:
            with self._lock:
                self._uploaded.append(key)
            self._feeds.add(feed)
            # (the job holds no reference to the writer, which a dropped writer's
            # finalizer needs: it gives the feed up, and so ends the job)
            store, feeds = self.store, self._feeds
            self._growing = (feed, key, self._growing_pool.submit(lambda: _put_growing(store, path, key, feed, feeds)))
        self._shard_began = time.perf_counter_ns()
        self._current = (ShardWriter(sink), sink, staged)
        return self._current

    def _growing_part_size(self) -> int | None:
        """The size of the parts of a shard that goes up as it is packed: on S3 and GCS,
        for shards large enough to go up in parts (multipart or composite uploads: the
        same limits); else None. On GCS, only with google_crc32c's C code (which checks
        the parts), and parts large enough that a shard of twice ``shard_bytes`` needs
        at most the 1,024 a composite upload takes (S3's 10,000 parts of 8 MiB hold any
        shard under 78 GiB)."""
        if isinstance(self.store.backend, GCSBackend):
            limits = multipart.limits()
            if self.shard_bytes < limits.threshold or gcs_upload.c_crc32c() is None:
                return None
            return gcs_upload.part_size_for(2 * self.shard_bytes, limits.part_size)
        return self._hashed_part_size()

    def _hashed_part_size(self) -> int | None:
        """The size of the multipart parts whose MD5s staging computes: S3, and shards
        large enough to go up in parts (:mod:`roxxel.backends.multipart`); else None."""
        if not isinstance(self.store.backend, S3Backend):
            return None
        limits = multipart.limits()
        return limits.part_size if self.shard_bytes >= limits.threshold else None

    def _finish_shard(self) -> None:
        assert self._current is not None
        writer, sink, staged = self._current
        self._current = None
        try:
            layout = writer.finish()
            digests = sink.finish()
        except BaseException:
            self._abort()  # the shard is lost: a later close() must not publish the others
            raise
        done = _Staged(staged.index, staged.path, layout.record_count, layout.payload_size,
                       digests.size, digests.hexdigest, digests.part_size, digests.part_md5s)
        growing, self._growing = self._growing, None
        if growing is not None:  # its upload is under way: now it can end
            try:
                growing[0].finished(digests.size, digests.part_md5s if digests.part_md5s is not None
                                    else digests.part_crc32cs)
            except ValueError:  # (digests that do not cover the file: never, but then)
                growing[0].give_up()  # it goes up as a finished shard does
        if self._meter is not None:
            self._meter.set_total(self._bytes)
        self._check_probe()
        if (tracer := trace.current()) is not None:
            tracer.complete("pack shard", "write", self._shard_began, time.perf_counter_ns(), shard=staged.index,
                            bytes=digests.size, records=layout.record_count)
            with tracer.span("wait for staging room", "write", shard=staged.index):
                self._wait_for_room()
        else:
            self._wait_for_room()
        key, grown = (None, None) if growing is None else growing[1:]
        future = self._pool.submit(lambda: self._upload(done, key, grown))
        self._futures.append(future)
        self._staged.append(future)

    def _wait_for_room(self) -> None:
        """Block until fewer than ``max_staged_shards`` finished shards wait for their
        upload; raise the error of a failed upload as soon as it fails."""
        while True:
            finished = [f for f in self._staged if f.done()]
            for future in finished:
                if not future.cancelled() and future.exception() is not None:
                    self._abort()
                    future.result()  # raises the upload's own exception
            self._staged = [f for f in self._staged if not f.done()]
            if len(self._staged) < self._max_staged:
                return
            wait(self._staged, return_when=FIRST_COMPLETED)

    # -- uploading (background threads) ------------------------------------------------

    def _upload(self, staged: _Staged, key: str | None = None,
                grown: Future[bool | None] | None = None) -> ShardInfo:
        """Upload the finished shard ``staged``; or, with ``grown`` (the upload of the
        shard as it was packed, to ``key``), wait for that upload, then check it."""
        began = time.perf_counter_ns()
        uploaded: bool | None = None
        if grown is not None:
            try:
                uploaded = grown.result()
            except Revoked as exc:  # given up: it outgrew its parts, and goes up finished
                log.info("%s goes up again from the finished file: %s", self.store.url(key or ""), exc)
        shard = self._upload_staged(staged, key, uploaded)
        if (tracer := trace.current()) is not None:
            tracer.complete("upload shard", "write", began, time.perf_counter_ns(), shard=staged.index,
                            bytes=shard.stored_size, growing=grown is not None)
        return shard

    def _writes_heads(self) -> bool:
        """Whether this writer's shards get heads (see the class docstring): with
        ``heads``, uncompressed, and not appended to a dataset that has shards."""
        appending = self.mode == "append" and self._base is not None and len(self._base.shards) > 0
        return self.heads and self.compression is None and not appending

    def _upload_staged(self, staged: _Staged, key: str | None = None, uploaded: bool | None = None) -> ShardInfo:
        """Upload the finished shard ``staged`` (to ``key``, if it was named before it was
        packed; unless ``uploaded`` already: see :meth:`_put_checked`), check it, and
        return its manifest entry."""
        path, stored_size, digest = staged.path, staged.raw_size, staged.raw_digest
        part_size, md5s = staged.part_size, staged.part_md5s
        suffix = ""
        if self.compression == "zstd":
            path, compressed = compress(staged.path, staged.raw_size, self._hashed_part_size())
            stored_size, digest = compressed.size, compressed.hexdigest
            part_size, md5s = compressed.part_size, compressed.part_md5s
            suffix = ".zst"
        if part_size is not None and md5s is not None:  # the upload is checked against them
            multipart.register_part_digests(path, part_size, md5s)
        head = shard_head(path, staged.records, stored_size) if self._writes_heads() else None
        if key is None:
            key = self._shard_key(staged.index, digest, suffix)
            with self._lock:
                self._uploaded.append(key)
        shard = ShardInfo(
            uri=key,
            records=staged.records,
            stored_size=stored_size,
            raw_size=staged.raw_size,
            compression=self.compression,
            checksum=f"{DEFAULT_ALGORITHM}:{digest}",
            head=head,
            parts=shard_parts(path, stored_size) if head is not None else None,
        )
        self._put_checked(path, shard, uploaded)
        for p in {path, staged.path}:
            os.unlink(p)
        if self._meter is not None:
            self._meter.add(staged.payload_size)
        return shard

    def _shard_key(self, index: int, digest: str, suffix: str) -> str:
        """The key of the writer's shard ``index`` (``roxxel.build`` names parts' shards)."""
        return f"shards/{self._generation:05d}-{index:06d}-{digest[:12]}.rox{suffix}"

    def _growing_key(self, index: int) -> str | None:
        """The key of shard ``index`` if it is to go up as it is packed, named before its
        digest is known: 12 random hex digits where the digest's first 12 would be, so
        that concurrent writers of the same generation never share a name. (None: a
        build's parts are named by their digests, which their receipts check.)"""
        return f"shards/{self._generation:05d}-{index:06d}-{secrets.token_hex(6)}.rox"

    def _put_checked(self, path: str, shard: ShardInfo, uploaded: bool | None = None) -> None:
        """Upload (unless ``uploaded`` is not None: the shard went up as it was packed,
        and ``uploaded`` is what :meth:`.Store.put_growing` answered), then check the
        object is exactly the shard its manifest entry will promise (the one shard check,
        where the store reports no MD5 to compare), unless the upload's own answer
        confirmed it (:meth:`.Store.put_file`); upload again if not."""
        key, spec = shard.uri, ShardSpec.of(shard, self.store.url(shard.uri))
        confirmed = bool(uploaded)
        for attempt in range(1, _UPLOAD_ATTEMPTS + 1):
            began = time.perf_counter_ns()
            tracer = trace.current()
            if not (uploaded is not None and attempt == 1):
                confirmed = self.store.put_file(path, key)
                if tracer is not None:
                    tracer.complete("put", "write", began, time.perf_counter_ns(), attempt=attempt)
                    began = time.perf_counter_ns()
            if confirmed:  # (by the answer the upload already had: no request)
                if tracer is not None:
                    tracer.complete("check", "write", began, began, by="the upload's answer")
                return
            try:
                self.store.check_upload(key, path, ShardCheck(spec, parse_checksum(shard.checksum)))
                if tracer is not None:
                    tracer.complete("check", "write", began, time.perf_counter_ns())
                return
            except IntegrityError as exc:
                if attempt == _UPLOAD_ATTEMPTS:
                    raise
                log.warning("uploading %s again (attempt %d): %s", self.store.url(key), attempt + 1, exc)

    # -- finishing ---------------------------------------------------------------------

    def close(self) -> Manifest:
        """Wait for every upload and publish the manifest; returns it (idempotent).

        If anything fails, nothing is published, the staged files are removed, and the
        original error is raised.
        """
        if self._state == "published":
            assert self.manifest is not None
            return self.manifest
        if self._state != "open":
            raise ValueError(f"writer for {self.url} is {self._state}")
        try:
            shards = self._upload_all()
            self._require_probe()  # nothing is published before the probe has answered
            began = time.perf_counter_ns()
            manifest = self._publish(shards)
            if (tracer := trace.current()) is not None:
                tracer.complete("publish", "write", began, time.perf_counter_ns(), shards=len(shards))
        except BaseException:
            self._abort()
            raise
        self._state = "published"
        self.manifest = manifest
        self._pool.close()
        self._growing_pool.close()
        self._cleanup()
        log.info("published %s: %d records in %d shards", self.url, manifest.records, len(manifest.shards))
        return manifest

    def _upload_all(self) -> list[ShardInfo]:
        """Finish the shard being packed and wait for every upload; the shards in order.
        (The commit of a build lists its parts' shards here instead: ``roxxel.build``.)"""
        if self._current is not None:
            self._finish_shard()
        return sorted((f.result() for f in self._futures), key=lambda s: s.uri)

    def _publish(self, shards: list[ShardInfo]) -> Manifest:
        if self.mode == "overwrite":
            manifest = Manifest.build(shards, self._meta)
            self._sign(manifest)
            publish_manifest(self.store, manifest, replaces=None)
            return manifest
        if self.mode == "append" and self._base is not None:
            current = read_snapshot(self.store)
            if current.manifest is None or current.manifest.fingerprint() != self._base.fingerprint():
                raise self._conflict()
            meta = self._base.meta if self._meta is None else self._meta
            if len(self._base.shards):  # (a build's parts have heads and parts: an append adds none)
                shards = [replace(shard, head=None, parts=None) for shard in shards]
            manifest = self._base.with_meta(meta).extended(shards)
        else:
            current = Snapshot(None, None)
            manifest = Manifest.build(shards, self._meta)
        self._sign(manifest)
        try:
            publish_manifest(self.store, manifest, replaces=current, single_writer=self.single_writer)
        except (DatasetExistsError, ConflictError) as exc:
            if self.mode != "append":
                raise
            if self._landed(manifest):
                return manifest
            raise self._conflict() from exc  # another appender published (or created) first
        return manifest

    def _sign(self, manifest: Manifest) -> None:
        """With ``sign_with``: store the signature of ``manifest``'s bytes before they are
        published. A publish that fails after it leaves a signature of bytes that were
        never published, which vouches for nothing else (see roxxel.manifest.signing)."""
        if self._signer is not None:
            data = manifest.to_json().encode("ascii")  # exactly the bytes publish_manifest writes
            sign_manifest(self.store, data, manifest, self._signer)

    def _landed(self, manifest: Manifest) -> bool:
        """Whether the published manifest begins with ours: our append landed although its
        answer said otherwise (a lost response retried inside the cloud client meets the
        condition it just changed) and another writer appended since. (An appender of
        byte-identical records at the same moment writes the same shard names, and is
        indistinguishable from ourselves here.)"""
        current = read_snapshot(self.store).manifest
        if current is None or len(current.shards) < len(manifest.shards):
            return False
        n = len(manifest.shards)
        return bool(
            (current.shards.uris[:n] == manifest.shards.uris).all()
            and (current.shards.checksums[:n] == manifest.shards.checksums).all()
        )

    def _conflict(self) -> ConflictError:
        return ConflictError(
            f"{self.store.url(MANIFEST_KEY)} changed while this writer was appending "
            "(another writer published first); nothing was published, write again"
        )

    def abort(self) -> None:
        """Publish nothing and remove the staged files (uploaded shards stay unreferenced)."""
        if self._state == "open":
            self._abort()

    def _give_up_growing(self) -> None:
        """Give up the upload of the shard being packed, if it goes up as it is packed:
        it aborts, and the pool's close waits for it."""
        if self._growing is not None:
            self._growing[0].give_up()
            self._growing = None

    def _abort(self) -> None:
        self._state = "aborted"
        if self._current is not None:
            self._current[1].close()
            self._current = None
        self._give_up_growing()
        self._growing_pool.close(wait=True)
        self._pool.close(wait=True)
        # Uploaded shard objects stay, unreferenced: a name made of a digest may be a
        # concurrent writer's of the same data, about to publish the very same key.
        if self._uploaded:
            log.info("aborted writer for %s left %d unreferenced shard objects under shards/",
                     self.url, len(self._uploaded))
        self._cleanup()

    def __enter__(self) -> Writer:
        return self

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if exc is None:
            self.close()
        else:
            self.abort()

    def __repr__(self) -> str:
        return f"Writer({self.url!r}, mode={self.mode!r}, state={self._state!r})"


def _typed_meta(meta: Mapping[str, Any] | None, kind: RecordType) -> Mapping[str, Any]:
    """``meta`` with ``kind`` declared in it; ValueError if ``meta`` declares another type."""
    declared = kind.to_meta()
    if meta is not None:
        given = RecordType.from_meta(meta, "given to the Writer")
        if given is not None and given != kind:
            raise ValueError(
                f"meta declares records of {given.describe()}, but dtype/shape say {kind.describe()}"
            )
        return {key: value for key, value in meta.items() if key not in ("dtype", "shape")} | declared
    return declared


def _check_typed(record: Record, data: memoryview, kind: RecordType, position: int) -> None:
    """ValueError unless ``record`` (an array of the dtype, or bytes) fits ``kind``."""
    if isinstance(record, np.ndarray):
        if record.dtype != kind.dtype or (kind.fixed and record.shape != kind.shape):
            raise ValueError(
                f"record at position {position} is {record.dtype} of shape {record.shape}; "
                f"this writer takes {kind.describe()}"
            )
        return
    want = kind.record_bytes
    if (data.nbytes != want) if want is not None else (data.nbytes % kind.dtype.itemsize):
        what = f"{want} bytes" if want is not None else f"a multiple of {kind.dtype.itemsize} bytes"
        raise ValueError(
            f"record at position {position} has {data.nbytes} bytes; {kind.describe()} records have {what}"
        )


def _next_generation(base: Manifest | None) -> int:
    """Shard names carry a generation one above any in the existing manifest, so a new
    writer never reuses (and overwrites) a name that a published manifest still lists."""
    if base is None:
        return 0
    found = [int(m.group(1)) for m in map(_SHARD_NAME.match, base.shards.uris.tolist()) if m]
    return max(found, default=-1) + 1


def _put_growing(store: Store, path: str, key: str, feed: PartFeed, feeds: set[PartFeed]) -> bool | None:
    """:meth:`.Store.put_growing` (traced), the feed forgotten once it is over."""
    began = time.perf_counter_ns()
    try:
        uploaded = store.put_growing(path, key, feed)
    finally:
        feeds.discard(feed)
    if uploaded is not None and (tracer := trace.current()) is not None:
        tracer.complete("put", "write", began, time.perf_counter_ns(), attempt=1, growing=True)
    return uploaded


def _clean_up(staging: str, lanes: Sequence[WorkerPool | PublishCheck],
              release_parts: Callable[[], None] | None, feeds: set[PartFeed]) -> None:
    """What a writer leaves when it ends, however it ends: the uploads of shards not
    finished given up, the staging folder removed, its MD5 and probe threads stopped,
    the S3 and GCS part threads released (see multipart.hold)."""
    for feed in list(feeds):
        feed.give_up()
    for lane in lanes:
        lane.close(wait=False)
    if release_parts is not None:
        release_parts()
    shutil.rmtree(staging, ignore_errors=True)


def shard_head(path: str, records: int, size: int) -> str | None:
    """The head (see :mod:`roxxel.manifest.heads`) of the uncompressed shard of
    ``records`` records and ``size`` bytes in the file at ``path``: the records that end
    within its first :data:`HEAD_BYTES`, read back from the file with its record index.
    None for a shard of two parts or fewer, which arrives whole about as soon; for one
    whose index is larger than a part (records of a few bytes), which a reader would
    wait for as long; and for one whose first record is larger than a part."""
    payload = index_start(records, size)
    if size <= 2 * HEAD_BYTES or payload < HEAD_BYTES or size - payload > HEAD_BYTES:
        return None
    with open(path, "rb") as f:
        index = _read_exactly(f.fileno(), payload, size, path)
        ends = np.frombuffer(index, dtype="<i8", count=records)
        count = int(np.searchsorted(ends, HEAD_BYTES, side="right"))
        end = int(ends[count - 1]) if count else 0
        if not end:
            return None
        first = _read_exactly(f.fileno(), 0, end, path)
    digests = []
    for data in (first, index):
        hasher = new_hasher(DEFAULT_ALGORITHM)
        hasher.update(data)
        digests.append(f"{DEFAULT_ALGORITHM}:{hasher.hexdigest()}")
    return f"{count}:{end}:{digests[0]}:{digests[1]}"


def shard_parts(path: str, size: int) -> str:
    """The parts (see :mod:`roxxel.manifest.parts`) of the shard of ``size`` bytes in the
    file at ``path``: of :data:`HEAD_BYTES` each (one download part), or more where a
    shard would have more than :data:`MAX_PARTS` of them, read back from the file."""
    part = max(HEAD_BYTES, MIN_PART_BYTES)
    # (a whole number of them: a reader places parts at 2 MiB boundaries)
    part *= max(1, -(-size // (part * MAX_PARTS)))
    with open(path, "rb") as f:
        digests = [part_digest(DEFAULT_ALGORITHM, _read_exactly(f.fileno(), a, b, path)) for a, b in tiles(size, part)]
    return f"{part}:{DEFAULT_ALGORITHM}:{''.join(digests)}"


def _read_exactly(fd: int, start: int, end: int, path: str) -> bytes:
    data = os.pread(fd, end - start, start)
    if len(data) != end - start:
        raise OSError(f"{path}: ends before byte {end}")
    return data
