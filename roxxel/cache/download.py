"""Fetching one shard into a verified, decompressed temp file.

The stored bytes are hashed and counted as they arrive and refused as soon as there are
too many; a zstd frame is checked against the promised raw size before it is
decompressed, and decompression never writes more than that size; the raw file's
ROXXEL01 footer and offsets are validated. Only then does the caller publish it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

import zstandard

from ..errors import CacheError, IntegrityError, RoxxelError, ShardFormatError
from ..format import read_layout
from .files import TempFile
from .names import ShardKey

__all__ = ["Fetch", "Sink", "ShardSpec", "fetch_verified"]

log = logging.getLogger(__name__)

Sink = Callable[[bytes], None]
Fetch = Callable[[Sink], object]

_CHUNK = 1 << 20
_FRAME_HEADER_MAX = 18  # ZSTD_FRAMEHEADERSIZE_MAX: enough to read the declared content size
_COMPRESSIONS = (None, "zstd")


@dataclass(frozen=True)
class ShardSpec:
    """What the manifest promises about one shard; ``label`` (its URI) names it in errors."""

    stored_size: int
    raw_size: int
    compression: str | None
    record_count: int
    label: str

    def __post_init__(self) -> None:
        for field in ("stored_size", "raw_size", "record_count"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.label}: {field} is {value!r}, expected an int >= 0")
        if self.compression not in _COMPRESSIONS:
            raise ValueError(
                f"{self.label}: compression is {self.compression!r}, expected None or 'zstd'"
            )
        if self.compression is None and self.raw_size != self.stored_size:
            raise ValueError(
                f"{self.label}: raw_size {self.raw_size} differs from stored_size "
                f"{self.stored_size} for an uncompressed shard"
            )


class _Mismatch(IntegrityError):
    """The fetched bytes are not the promised ones; fetching again may help."""


class _HashingSink:
    """The ``sink`` handed to ``fetch``: writes, hashes and counts, refusing excess bytes."""

    def __init__(self, temp: TempFile, key: ShardKey, spec: ShardSpec, tmp_dir: str) -> None:
        self._file = temp.file
        self._where = (spec, tmp_dir)
        self._hash = key.new_hash()
        self._limit = spec.stored_size
        self.received = 0
        self.overflow = False
        self.closed = False

    def __call__(self, chunk: bytes) -> None:
        if self.closed:
            raise RuntimeError("the download sink was called after fetch returned")
        view = memoryview(chunk)
        self.received += view.nbytes
        if self.received > self._limit:
            self.overflow = True
        if self.overflow:
            raise _Mismatch(f"more than {self._limit} bytes arrived, expected {self._limit}")
        self._hash.update(view)
        with writing_locally(*self._where):  # a full disk is not the store's fault
            self._file.write(view)

    def check(self, key: ShardKey, label: str) -> None:
        """Raise :class:`_Mismatch` unless exactly ``limit`` bytes of the right digest came."""
        if self.overflow:
            raise _Mismatch(
                f"{label}: stored size is more than {self._limit} bytes "
                f"(at least {self.received} arrived), expected {self._limit}"
            )
        if self.received != self._limit:
            raise _Mismatch(
                f"{label}: stored size is {self.received} bytes, expected {self._limit}"
            )
        actual = self._hash.hexdigest()
        if actual != key.hexdigest:
            raise _Mismatch(
                f"{label}: checksum is {key.algorithm}:{actual}, expected {key.checksum}"
            )


@contextlib.contextmanager
def writing_locally(spec: ShardSpec, tmp_dir: str) -> Iterator[None]:
    """Turn an OSError of writing ``spec``'s shard into the cache into a
    :class:`CacheError` that names the shard and the directory (and, for a full disk,
    the free space and what the shard needs)."""
    try:
        yield
    except RoxxelError:
        raise
    except OSError as exc:
        message = f"could not write {spec.label} into the cache directory {tmp_dir}: {exc.strerror or exc}"
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            with contextlib.suppress(OSError):
                free = shutil.disk_usage(tmp_dir).free
                message += f" ({free:,} bytes free there"
                need = spec.stored_size + (spec.raw_size if spec.compression else 0)
                message += f"; this shard needs {need:,} while it is verified)"
            message += "; free some space, or set a cache_limit that fits"
        raise CacheError(exc.errno, message) from exc


def _receive(key: ShardKey, fetch: Fetch, spec: ShardSpec, temp: TempFile, tmp_dir: str) -> None:
    """Run ``fetch`` into ``temp``; errors of ``fetch`` itself propagate unchanged."""
    sink = _HashingSink(temp, key, spec, tmp_dir)
    try:
        fetch(sink)
    except Exception:
        if not sink.overflow:
            raise
        # fetch passed on (or wrapped) the sink's refusal; check() below says why.
    finally:
        sink.closed = True
    sink.check(key, spec.label)
    with writing_locally(spec, tmp_dir):
        temp.file.flush()


def _decompress(
    stored: TempFile, spec: ShardSpec, tmp_dir: str, key: ShardKey
) -> tuple[TempFile, str]:
    """Decompress ``stored`` into a new temp file of exactly ``raw_size`` bytes.

    Returns the file and the digest (``key``'s algorithm) of the raw bytes.
    """
    src = stored.file
    src.seek(0)
    try:
        declared = zstandard.get_frame_parameters(src.read(_FRAME_HEADER_MAX)).content_size
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{spec.label}: not a zstd frame: {exc}") from exc
    if declared not in (zstandard.CONTENTSIZE_UNKNOWN, spec.raw_size):
        raise IntegrityError(
            f"{spec.label}: zstd frame declares {declared} bytes of content, "
            f"expected raw size {spec.raw_size}"
        )
    src.seek(0)
    raw = TempFile(tmp_dir)
    try:
        digest = _copy_bounded(src, raw, spec, key)
    except BaseException:
        raw.discard()
        raise
    return raw, digest


def _copy_bounded(src: BinaryIO, raw: TempFile, spec: ShardSpec, key: ShardKey) -> str:
    """Stream-decompress ``src`` into ``raw``; never writes more than ``raw_size`` bytes."""
    hasher = key.new_hash()
    dctx = zstandard.ZstdDecompressor()
    written = 0
    try:
        with dctx.stream_reader(src, read_across_frames=True, closefd=False) as reader:
            while chunk := reader.read(min(_CHUNK, spec.raw_size - written + 1)):
                if written + len(chunk) > spec.raw_size:
                    raise IntegrityError(
                        f"{spec.label}: decompresses to more than {spec.raw_size} bytes, "
                        f"expected raw size {spec.raw_size}"
                    )
                raw.file.write(chunk)
                hasher.update(chunk)
                written += len(chunk)
    except zstandard.ZstdError as exc:
        raise IntegrityError(f"{spec.label}: zstd decompression failed: {exc}") from exc
    if written != spec.raw_size:
        raise IntegrityError(
            f"{spec.label}: decompresses to {written} bytes, expected raw size {spec.raw_size}"
        )
    raw.file.flush()
    return f"{key.algorithm}:{hasher.hexdigest()}"


def _check_layout(raw: TempFile, spec: ShardSpec) -> None:
    """Validate the raw shard's footer and offsets and its record count."""
    raw.file.seek(0)
    try:
        layout, _ = read_layout(raw.file, spec.raw_size, spec.label)
    except ShardFormatError as exc:
        raise IntegrityError(str(exc)) from exc
    if layout.record_count != spec.record_count:
        raise IntegrityError(
            f"{spec.label}: footer says {layout.record_count} records, "
            f"expected {spec.record_count}"
        )


def _attempt(
    key: ShardKey, fetch: Fetch, spec: ShardSpec, tmp_dir: str
) -> tuple[TempFile, str | None]:
    with writing_locally(spec, tmp_dir):
        stored = TempFile(tmp_dir)
    raw, raw_digest = stored, None
    try:
        _receive(key, fetch, spec, stored, tmp_dir)
        if spec.compression == "zstd":
            with writing_locally(spec, tmp_dir):
                raw, raw_digest = _decompress(stored, spec, tmp_dir, key)
            stored.discard()
        _check_layout(raw, spec)
        with writing_locally(spec, tmp_dir):
            raw.sync()
    except BaseException:
        stored.discard()
        raw.discard()
        raise
    return raw, raw_digest


def fetch_verified(
    key: ShardKey, fetch: Fetch, spec: ShardSpec, tmp_dir: str, attempts: int
) -> tuple[TempFile, str | None]:
    """Fetch, verify and decompress one shard into a synced temp file in ``tmp_dir``.

    Returns the raw file, share-locked, and for a compressed shard the digest of its raw
    bytes (else None); the caller publishes or discards it. A wrong size or checksum is
    fetched again, up to ``attempts`` times in all, then raises
    :class:`~roxxel.errors.IntegrityError` naming the label and the expected and actual
    values. Bytes that matched their checksum but do not decompress to a valid shard of
    the promised size raise at once: fetching them again would bring the same bytes.
    Errors raised by ``fetch`` propagate unchanged. No temp file survives an error.
    """
    for attempt in range(1, attempts + 1):
        try:
            return _attempt(key, fetch, spec, tmp_dir)
        except _Mismatch as exc:
            if attempt == attempts:
                raise IntegrityError(f"{exc} (gave up after {attempts} attempts)") from exc
            log.warning("%s (attempt %d of %d; fetching again)", exc, attempt, attempts)
    raise ValueError(f"attempts is {attempts}, expected >= 1")
