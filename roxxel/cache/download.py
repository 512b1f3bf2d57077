"""Fetching one shard into a verified, decompressed temp file.

The stored bytes go through :class:`~roxxel.format.check.ShardCheck` as they arrive: counted
and refused as soon as there are too many, hashed, and (a zstd frame's declared size
checked first) decompressed on the fly, never past the promised raw size, into the temp
file, whose ROXXEL01 offsets and footer are checked as they pass. Only a file that
passed every check is handed to the caller to publish.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import shutil
import time
from collections.abc import Callable, Iterator

from .. import trace
from ..errors import CacheError, IntegrityError, RoxxelError
from ..format.check import ShardCheck, ShardSpec
from ..manifest.checksums import ShardKey
from .files import TempFile

__all__ = ["Fetch", "Sink", "fetch_verified"]

log = logging.getLogger(__name__)

Sink = Callable[[bytes], None]
Fetch = Callable[[Sink], object]


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
                message += f"; this shard needs {spec.raw_size:,} while it is verified)"
            message += "; free some space, or set a cache_limit that fits"
        raise CacheError(exc.errno, message) from exc


class _Sink:
    """The ``sink`` handed to ``fetch``: the shard check, writing the raw bytes to the
    temp file; refuses to be called after ``fetch`` returned."""

    def __init__(self, check: ShardCheck) -> None:
        self.check = check
        self.closed = False

    def __call__(self, chunk: bytes) -> None:
        if self.closed:
            raise RuntimeError("the download sink was called after fetch returned")
        self.check(chunk)


def _attempt(key: ShardKey, fetch: Fetch, spec: ShardSpec, tmp_dir: str) -> tuple[TempFile, str | None]:
    """One download of the shard into a temp file; errors of ``fetch`` propagate unchanged."""
    with writing_locally(spec, tmp_dir):
        raw = TempFile(tmp_dir)
    try:

        def write(data: bytes) -> None:
            with writing_locally(spec, tmp_dir):  # a full disk is not the store's fault
                raw.file.write(data)

        check = ShardCheck(spec, key, raw=write, raw_digest=spec.compression is not None)
        sink = _Sink(check)
        try:
            fetch(sink)
        except Exception:
            if not check.refused:
                raise
            # fetch passed on (or wrapped) the check's refusal; finish() below says why.
        finally:
            sink.closed = True
        raw_digest = check.finish()
        tracer = trace.current()
        began = time.perf_counter_ns()
        with writing_locally(spec, tmp_dir):
            raw.sync()
        if tracer is not None:
            tracer.complete("fsync", "cache", began, time.perf_counter_ns(), shard=spec.label)
    except BaseException:
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
        except IntegrityError as exc:
            if exc.transient is not True:  # not the shard check's, or final
                raise
            if attempt == attempts:
                raise IntegrityError(f"{exc} (gave up after {attempts} attempts)") from exc
            log.warning("%s (attempt %d of %d; fetching again)", exc, attempt, attempts)
    raise ValueError(f"attempts is {attempts}, expected >= 1")
