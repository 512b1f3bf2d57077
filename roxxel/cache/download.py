"""Fetching one shard into a verified, decompressed temp file.

The stored bytes go through :class:`~roxxel.format.check.ShardCheck` as they arrive: counted
and refused as soon as there are too many, hashed, and (a zstd frame's declared size
checked first) decompressed on the fly, never past the promised raw size, into the temp
file, whose ROXXEL01 offsets and footer are checked as they pass. Only a file that
passed every check is handed to the caller to publish.

An uncompressed shard's stored bytes are its cached file, so a downloader that fetches
it in parts may write them into the temp file itself, where they arrive
(:func:`placement`); the sink then only checks what it is fed, in order, and writes
nothing. The check is the same either way.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import mmap
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator

from .. import trace
from ..errors import CacheError, IntegrityError, RoxxelError
from ..format.check import ShardCheck, ShardSpec
from ..manifest.checksums import ShardKey, check_threads
from ..workers import node_share
from .files import TempFile

__all__ = ["Fetch", "Sink", "Spool", "fetch_verified", "placement"]

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


_BLOCK = 2 * 2**20  # a huge page (x86-64, arm64 with 4 KiB pages)
_pwrite = os.pwrite  # (the spool's writes; a name of this module's, so tests can stand in for it)


class _Aligned:
    """Writes to a temp file in whole 2 MiB blocks at 2 MiB offsets (the last one aside),
    whatever the sizes the bytes come in: the page cache then keeps the shard in 2 MiB
    folios, which a map reads with one fault and one TLB entry per 2 MiB instead of per
    4 KiB (written 1 MiB at a time, none of a shard was in huge pages; random reads of a
    typed epoch ran several points slower, and mapping a shard cost 512 times the faults).
    Only what does not fill a block is copied, into a buffer of one block."""

    def __init__(self, write: Callable[[memoryview], object]) -> None:
        self._write = write
        self._buffer: mmap.mmap | None = None
        self._held = 0

    def __call__(self, data: bytes) -> None:
        view = memoryview(data).cast("B")
        if self._held:
            assert self._buffer is not None
            take = min(len(view), _BLOCK - self._held)
            self._buffer[self._held : self._held + take] = view[:take]
            self._held += take
            view = view[take:]
            if self._held < _BLOCK:
                return
            self._write(memoryview(self._buffer))
            self._held = 0
        whole = len(view) - len(view) % _BLOCK
        if whole:
            self._write(view[:whole])
        rest = len(view) - whole
        if rest:
            if self._buffer is None:  # an anonymous map, not the heap (see read/parts.py)
                self._buffer = mmap.mmap(-1, _BLOCK, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            self._buffer[:rest] = view[whole:]
            self._held = rest

    def flush(self) -> None:
        """Write what is held (the file's last, partial block)."""
        if self._held:
            assert self._buffer is not None
            self._write(memoryview(self._buffer)[: self._held])
            self._held = 0

    def close(self) -> None:
        """Let go of the buffer (unmapped once no view of it is left: an error's traceback
        may still hold the last one written)."""
        self._buffer = None


class Spool:
    """An uncompressed shard's temp file, for a downloader that writes the parts itself
    (a :class:`~roxxel.read.parts.Placement`): once it is claimed, the sink writes
    nothing and only checks the bytes it is fed (viewed here, through a map, in order).

    It writes through a descriptor of its own, which :meth:`close` closes only once no
    write is under way, and refuses any write after that: whatever a downloader does
    once the fetch is over, no byte lands in the file after it was checked, nor in
    another file that took the descriptor's number."""

    def __init__(self, fd: int, spec: ShardSpec, tmp_dir: str) -> None:
        self._spec, self._tmp_dir = spec, tmp_dir
        with writing_locally(spec, tmp_dir):
            self._fd = os.dup(fd)
        self._cond = threading.Condition()
        self._writing = 0
        self._closed = False
        self.claimed = False
        self.fed = False  # the sink has had bytes: too late to claim

    def claim(self) -> None:
        if self.fed:
            raise RuntimeError(f"{self._spec.label}: the download wrote bytes before claiming its temp file")
        self.claimed = True

    def write(self, offset: int, data: memoryview) -> None:
        if not self.claimed:
            raise RuntimeError(f"{self._spec.label}: a part written to an unclaimed temp file")
        if offset < 0 or offset + len(data) > self._spec.stored_size:
            raise ValueError(f"{self._spec.label}: bytes [{offset}, {offset + len(data)}) are past "
                             f"its stored size {self._spec.stored_size}")
        with self._cond:
            if self._closed:
                raise RuntimeError(f"{self._spec.label}: a part arrived after its download had ended")
            self._writing += 1
        try:
            with writing_locally(self._spec, self._tmp_dir):  # a full disk is not the store's fault
                while data:
                    n = _pwrite(self._fd, data, offset)
                    if n <= 0:
                        raise OSError(errno.EIO, f"a write at byte {offset} wrote nothing")
                    data, offset = data[n:], offset + n
        finally:
            with self._cond:
                self._writing -= 1
                self._cond.notify_all()

    @contextlib.contextmanager
    def view(self, offset: int, end: int) -> Iterator[memoryview]:
        """Bytes ``[offset, end)``, written already, through a read-only map of the file
        (checked where they are, not copied back); CacheError if the file cannot give
        them (a map refused, or a file cut short by something else). As with any map of
        a file, a read error of the disk under it, or the file cut short while it is
        read, is a SIGBUS rather than an exception (the cache's shards are read through
        maps too)."""
        if end <= offset:
            yield memoryview(b"")
            return
        spec = self._spec
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            size = os.fstat(self._fd).st_size
            mapped = None if size < end else mmap.mmap(self._fd, end - start, access=mmap.ACCESS_READ, offset=start)
        except OSError as exc:
            raise CacheError(exc.errno, f"could not map {spec.label} back from its temp file in "
                                        f"{self._tmp_dir}: {exc.strerror or exc}") from exc
        if mapped is None:
            raise CacheError(f"{spec.label}: its temp file in {self._tmp_dir} ends at byte {size}, "
                             f"before byte {end}, where bytes were written (was it truncated?)")
        try:
            with memoryview(mapped) as whole, whole[offset - start :] as view:
                yield view
        finally:
            try:
                mapped.close()
            except BufferError:  # a view still held (an error's traceback): unmapped when it goes
                pass

    def close(self) -> None:
        """No write from now on: wait for those under way (even on Ctrl-C, raised after),
        then close the descriptor. Idempotent."""
        interrupted: KeyboardInterrupt | None = None
        with self._cond:
            if self._closed and self._fd < 0:
                return
            self._closed = True
            while self._writing:
                try:
                    self._cond.wait()
                except KeyboardInterrupt as exc:
                    interrupted = exc
            fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)
        if interrupted is not None:
            raise interrupted


def placement(sink: Callable[[bytes], object]) -> Spool | None:
    """The temp file a downloader in parts may write ``sink``'s shard into, if it may
    (an uncompressed shard being fetched into the cache), else None. Only the sink
    :func:`fetch_verified` hands to ``fetch`` has one: a sink wrapped by the caller
    must be asked before it is wrapped."""
    return sink.spool if isinstance(sink, _Sink) else None


class _Sink:
    """The ``sink`` handed to ``fetch``: the shard check, writing the raw bytes to the
    temp file unless they were placed there (``spool``); refuses to be called after
    ``fetch`` returned."""

    def __init__(self, check: ShardCheck, spool: Spool | None) -> None:
        self.check, self.spool = check, spool
        self.closed = False

    def __call__(self, chunk: bytes) -> None:
        if self.closed:
            raise RuntimeError("the download sink was called after fetch returned")
        if self.spool is not None:
            self.spool.fed = True
        self.check(chunk)


def _attempt(key: ShardKey, fetch: Fetch, spec: ShardSpec, tmp_dir: str) -> tuple[TempFile, str | None]:
    """One download of the shard into a temp file; errors of ``fetch`` propagate unchanged."""
    with writing_locally(spec, tmp_dir):
        raw = TempFile(tmp_dir)

    def write(data: memoryview) -> None:
        with writing_locally(spec, tmp_dir):  # a full disk is not the store's fault
            raw.file.write(data)

    aligned = _Aligned(write)
    spool: Spool | None = None

    def output(data: memoryview) -> None:
        if spool is None or not spool.claimed:
            aligned(data)

    try:
        if spec.compression is None:
            spool = Spool(raw.file.fileno(), spec, tmp_dir)
        check = ShardCheck(spec, key, raw=output, raw_digest=spec.compression is not None,
                           threads=check_threads(spec.stored_size, node_share()))
        sink = _Sink(check, spool)
        try:
            fetch(sink)
        except Exception:
            if not check.refused:
                raise
            # fetch passed on (or wrapped) the check's refusal; finish() below says why.
        finally:
            sink.closed = True
            if spool is not None:
                spool.close()  # no part lands in the file after this
        raw_digest = check.finish()
        aligned.flush()
        tracer = trace.current()
        began = time.perf_counter_ns()
        with writing_locally(spec, tmp_dir):
            raw.sync()
        if tracer is not None:
            tracer.complete("fsync", "cache", began, time.perf_counter_ns(), shard=spec.label)
    except BaseException:
        if spool is not None:
            spool.close()
        raw.discard()
        raise
    finally:
        aligned.close()
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
