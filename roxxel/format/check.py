"""The one streaming check of a shard's stored bytes against what its manifest promises.

:class:`ShardCheck` is fed a shard's stored bytes in order, as they arrive from a store,
and checks them without holding more than a chunk: the stored size (more bytes than
promised are refused as soon as they arrive), the checksum, and, unless told not to,
the raw bytes: a zstd frame's declared content size before anything is decompressed,
decompression bounded by the manifest's raw size, then the offset table and the footer
as they pass, and the footer's record count. The cache's downloads, ``roxxel verify``,
``roxxel cp`` and the writer's upload check all run it; every problem is an
:class:`~roxxel.errors.IntegrityError` naming the shard, the field, and the expected and
found values (and telling, in its ``transient``, whether reading again may help).

Each stored byte is hashed once; raw bytes are hashed only when the caller asks for their
digest (the cache records it for a compressed shard). Where the payload passes, the raw
check only counts it: it parses the offset table (8 bytes a record) and the footer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import zstandard

from ..errors import IntegrityError, ShardFormatError
from ..manifest.compressions import COMPRESSIONS, describe
from .layout import OFFSET_DTYPE, OFFSET_SIZE, parse_footer, payload_size

if TYPE_CHECKING:
    from ..manifest import ShardInfo
    from ..manifest.checksums import ShardKey

__all__ = ["ShardCheck", "ShardSpec"]

Output = Callable[[Any], object]

#: Enough bytes of a zstd frame to read its declared content size (ZSTD_FRAMEHEADERSIZE_MAX).
_FRAME_HEADER_MAX = 18
_WRITE_SIZE = 1 << 20


@dataclass(frozen=True)
class ShardSpec:
    """What the manifest promises about one shard; ``label`` (its URL) names it in errors."""

    stored_size: int
    raw_size: int
    compression: str | None
    record_count: int
    label: str

    @classmethod
    def of(cls, shard: ShardInfo, label: str) -> ShardSpec:
        """What the manifest entry ``shard`` promises; ``label`` names it in errors."""
        return cls(shard.stored_size, shard.raw_size, shard.compression, shard.records, label)

    def __post_init__(self) -> None:
        for name in ("stored_size", "raw_size", "record_count"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"{self.label}: {name} is {value!r}, expected an int >= 0")
        if self.compression not in COMPRESSIONS:
            raise ValueError(
                f"{self.label}: compression is {self.compression!r}, expected {describe(COMPRESSIONS)}"
            )
        if self.compression is None and self.raw_size != self.stored_size:
            raise ValueError(
                f"{self.label}: raw_size {self.raw_size} differs from stored_size "
                f"{self.stored_size} for an uncompressed shard"
            )


class _Bad(Exception):
    """A problem with the raw bytes, before it is told with the shard's label."""


class ShardCheck:
    """Check one shard's stored bytes as they arrive: call it with each chunk, in order,
    then :meth:`finish`.

    ``key`` is the manifest's checksum (:class:`~roxxel.manifest.checksums.ShardKey`).
    ``raw(chunk)``, if given, receives the raw bytes as they are checked (decompressed for
    a zstd shard, never past the raw size). ``layout=False`` checks the stored size and
    checksum only, decompressing nothing (``cp``: a copy's layout is ``verify``'s to
    check). ``raw_digest=True`` makes :meth:`finish` return the digest of the raw bytes
    (with ``key``'s algorithm): hashed as they pass for a zstd shard, the checksum itself
    for an uncompressed one, so no byte is hashed twice. ``threads``: at most that many
    hash the stored bytes (:func:`~roxxel.manifest.checksums.check_threads`).

    A chunk past the stored size raises at once; every other problem is kept and raised
    by :meth:`finish`, size and checksum first: a checksum mismatch explains a broken
    layout, not the other way round.
    """

    def __init__(
        self,
        spec: ShardSpec,
        key: ShardKey,
        *,
        raw: Output | None = None,
        layout: bool = True,
        raw_digest: bool = False,
        threads: int = 1,
    ) -> None:
        self.spec, self.key = spec, key
        self.received = 0
        self._raw_digest = raw_digest
        self._hash = key.new_hash(threads)
        self._overflow = False
        self._problem: str | None = None
        self._raw: _RawCheck | None = None
        self._unzstd: Any = None
        self._header = b""  # a zstd frame's first bytes, until its header can be read
        if layout:
            try:
                hashed = key if raw_digest and spec.compression is not None else None
                self._raw = _RawCheck(spec.raw_size, spec.record_count, raw, hashed)
            except _Bad as exc:
                self._problem = str(exc)

    @property
    def refused(self) -> bool:
        """True once more bytes arrived than the stored size (and were refused)."""
        return self._overflow

    def _fail(self, problem: str, *, transient: bool) -> IntegrityError:
        return IntegrityError.of_shard(self.spec.label, problem, transient=transient)

    def expect_stored_size(self, size: int) -> None:
        """Raise the stored-size problem now if the store says the object is ``size`` bytes."""
        if size != self.spec.stored_size:
            raise self._fail(f"stored size is {size} bytes, expected {self.spec.stored_size}", transient=True)

    def __call__(self, chunk: Any) -> None:
        view = memoryview(chunk)
        limit = self.spec.stored_size
        self.received += view.nbytes
        if self.received > limit:
            self._overflow = True
        if self._overflow:
            raise self._too_many()
        self._hash.update(view)
        if self._raw is not None and self._problem is None:
            # Hashing goes on after a layout problem: a wrong checksum explains more.
            try:
                self._feed(view)
            except _Bad as exc:
                self._problem = str(exc)
            except zstandard.ZstdError as exc:
                self._problem = f"zstd decompression failed: {exc}"

    def _too_many(self) -> IntegrityError:
        limit = self.spec.stored_size
        return self._fail(
            f"stored size is more than {limit} bytes (at least {self.received} arrived), expected {limit}",
            transient=True,
        )

    def _feed(self, view: memoryview) -> None:
        if self.spec.compression is None:
            self._raw.write(view)  # type: ignore[union-attr]
        elif self._unzstd is not None:
            self._unzstd.write(view)
        else:
            self._header += view
            if len(self._header) >= _FRAME_HEADER_MAX:
                self._start_decompressing()

    def _start_decompressing(self) -> None:
        """Check the frame's declared content size, then decompress what has come."""
        header, self._header = self._header, b""
        try:
            declared = zstandard.get_frame_parameters(header[:_FRAME_HEADER_MAX]).content_size
        except zstandard.ZstdError as exc:
            raise _Bad(f"not a zstd frame: {exc}") from exc
        raw_size = self.spec.raw_size
        if declared not in (zstandard.CONTENTSIZE_UNKNOWN, raw_size):
            raise _Bad(f"zstd frame declares {declared} bytes of content, expected raw size {raw_size}")
        self._unzstd = zstandard.ZstdDecompressor().stream_writer(
            self._raw, write_size=_WRITE_SIZE, closefd=False
        )
        self._unzstd.write(header)

    def finish(self) -> str | None:
        """Raise :class:`~roxxel.errors.IntegrityError` unless every check passed.

        Returns the ``"<algorithm>:<hex>"`` digest of the raw bytes when ``raw_digest``
        was asked for, else None.
        """
        spec, key = self.spec, self.key
        if self._overflow:
            raise self._too_many()
        if self.received != spec.stored_size:
            raise self._fail(f"stored size is {self.received} bytes, expected {spec.stored_size}", transient=True)
        found = self._hash.hexdigest()
        if found != key.hexdigest:
            raise self._fail(f"checksum is {key.algorithm}:{found}, expected {key.checksum}", transient=True)
        if self._raw is not None and self._problem is None:
            try:
                if spec.compression is not None:
                    if self._unzstd is None:
                        self._start_decompressing()
                    self._unzstd.flush()
                self._raw.finish()
            except _Bad as exc:
                self._problem = str(exc)
            except zstandard.ZstdError as exc:
                self._problem = f"zstd decompression failed: {exc}"
        if self._problem is not None:
            raise self._fail(self._problem, transient=False)
        if not self._raw_digest:
            return None
        if spec.compression is None:
            return key.checksum
        return None if self._raw is None else self._raw.digest()


class _RawCheck:
    """Fed a shard's raw bytes in order; checks the offset table and footer as they pass.

    The manifest's raw size and record count fix where the payload, the offsets and the
    footer must lie, so only the offset being parsed (8 bytes) and the footer are held.
    Bytes past the raw size are refused before they reach ``out``.
    """

    def __init__(self, raw_size: int, records: int, out: Output | None, key: ShardKey | None) -> None:
        self.raw_size, self.records, self.out = raw_size, records, out
        self.payload = payload_size(raw_size, records)
        if self.payload < 0:
            raise _Bad(
                f"raw size {raw_size} bytes cannot hold {records} records: the offsets and "
                f"footer alone take {raw_size - self.payload} bytes"
            )
        self.index_end = self.payload + OFFSET_SIZE * records
        self.hash = None if key is None else key.new_hash()
        self.algorithm = None if key is None else key.algorithm
        self.pos = 0
        self.carry = b""
        self.seen = 0  # offsets parsed so far
        self.last = 0
        self.offsets_problem: str | None = None  # told after the footer's, which explains more
        self.footer = bytearray()

    def write(self, data: Any) -> int:
        n = len(data) if not isinstance(data, memoryview) else data.nbytes
        start, end = self.pos, self.pos + n
        if end > self.raw_size:
            raise _Bad(f"decompresses to more than {self.raw_size} bytes, expected raw size {self.raw_size}")
        if self.out is not None:
            self.out(data)
        if self.hash is not None:
            self.hash.update(data)
        lo, hi = max(start, self.payload), min(end, self.index_end)
        if lo < hi and self.offsets_problem is None:
            try:
                self._offsets(self.carry + bytes(data[lo - start : hi - start]))
            except _Bad as exc:
                self.offsets_problem = str(exc)
        lo = max(start, self.index_end)
        if lo < end:
            self.footer += data[lo - start :]
        self.pos = end
        return n

    def _offsets(self, data: bytes) -> None:
        whole = len(data) - len(data) % OFFSET_SIZE
        self.carry = data[whole:]
        if not whole:
            return
        values = np.frombuffer(data[:whole], dtype=OFFSET_DTYPE)
        previous = np.concatenate(([self.last], values[:-1]))
        drops = np.flatnonzero(values < previous)
        if len(drops):
            i = int(drops[0])
            index = self.seen + i
            if index == 0:
                raise _Bad(f"offset[0] is {int(values[0])}, expected >= 0")
            raise _Bad(
                f"offset[{index}] is {int(values[i])}, expected >= offset[{index - 1}] = "
                f"{int(previous[i])} (offsets must not decrease)"
            )
        self.seen += len(values)
        self.last = int(values[-1])

    def finish(self) -> None:
        if self.pos != self.raw_size:
            raise _Bad(f"decompresses to {self.pos} bytes, expected raw size {self.raw_size}")
        try:
            layout = parse_footer(bytes(self.footer), self.raw_size, "footer")
        except ShardFormatError as exc:
            raise _Bad(str(exc)) from exc
        if layout.record_count != self.records:
            raise _Bad(f"footer says {layout.record_count} records, expected {self.records}")
        if self.offsets_problem is not None:
            raise _Bad(self.offsets_problem)
        if self.records and self.last != self.payload:
            raise _Bad(
                f"offset[{self.records - 1}] is {self.last}, expected the payload size {self.payload}"
            )

    def digest(self) -> str | None:
        return None if self.hash is None else f"{self.algorithm}:{self.hash.hexdigest()}"

