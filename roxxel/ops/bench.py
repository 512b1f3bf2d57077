"""``roxxel bench``: this node against this dataset, so a user knows where the time goes.

Three measurements of the same dataset, one after the other:

1. **link**: the best a client does here, the dataset's shards fetched as ranged GETs
   of ``part_size`` bytes, ``parallel`` in flight over kept-alive connections, bytes
   dropped. On S3 they are GETs of URLs s3fs presigned, read with :mod:`http.client`
   (as roxxel's own downloads); on other stores, fsspec ``cat_file`` ranges on threads.
2. **cold**: ``roxxel.open`` with default options on a fresh, empty cache directory,
   then ``ds.iter(seed=0)``, one epoch or until ``max_bytes`` of records were read.
3. **warm**: the same again on the cache the cold read filled.

Each reports the open, the time to the first record and the epoch's MB/s apart, and
:func:`advice` turns the numbers into what to change.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import os
import shutil
import statistics
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from fsspec import AbstractFileSystem
from fsspec.callbacks import Callback

from .. import trace
from ..backends import Store
from ..errors import StorageError
from ..manifest import Manifest
from ..progress import Meter
from ..read import open as open_dataset
from ..read.views import ACCELERATED
from ._common import load

__all__ = ["BenchReport", "LinkResult", "ReadResult", "advice", "bench"]

log = logging.getLogger(__name__)

MiB = 1 << 20
DEFAULT_MAX_BYTES = 2 * 10**9
DEFAULT_PART_SIZE = 8 * MiB
DEFAULT_PARALLEL = 32
_SIGN_SECONDS = 3600
_BUFFER = MiB
_SHORT = 1.0  # seconds: a shorter measurement is mostly start-up and noise


@dataclass(frozen=True)
class LinkResult:
    """The raw link: ``bytes`` of shards in ``parts`` ranged GETs, ``parallel`` at a time."""

    method: str  # "presigned GETs (http.client)" or "fsspec cat_file"
    shards: int
    parts: int
    part_size: int
    parallel: int
    bytes: int
    seconds: float
    first_byte_seconds: float  # from the start to the first byte of any part
    per_connection_mb_per_s: float  # the median part's bytes over its time

    @property
    def mb_per_s(self) -> float:
        return _rate(self.bytes, self.seconds)


@dataclass(frozen=True)
class ReadResult:
    """One read through roxxel: open, first record and the epoch, timed apart."""

    cache: str  # "cold" or "warm"
    open_seconds: float  # roxxel.open: the manifest
    first_record_seconds: float  # from ds.iter() to the first record
    seconds: float  # from ds.iter() to the last record read
    records: int
    record_bytes: int
    whole_epoch: bool  # False: stopped at max_bytes
    downloaded_bytes: int  # stored bytes of the shards that entered the cache meanwhile

    @property
    def mb_per_s(self) -> float:
        """Records read, in MB/s over the epoch's time."""
        return _rate(self.record_bytes, self.seconds)

    @property
    def download_mb_per_s(self) -> float:
        return _rate(self.downloaded_bytes, self.seconds)


@dataclass(frozen=True)
class BenchReport:
    """The three measurements, their ratios to the link, and what to change."""

    url: str
    shards: int
    stored_bytes: int
    max_bytes: int
    link: LinkResult
    cold: ReadResult
    warm: ReadResult
    advice: list[str] = field(default_factory=list)

    @property
    def cold_ratio(self) -> float:
        """Cold records MB/s over link MB/s."""
        return _ratio(self.cold.mb_per_s, self.link.mb_per_s)

    @property
    def cold_download_ratio(self) -> float:
        """Cold download MB/s (stored bytes) over link MB/s."""
        return _ratio(self.cold.download_mb_per_s, self.link.mb_per_s)

    @property
    def warm_ratio(self) -> float:
        return _ratio(self.warm.mb_per_s, self.link.mb_per_s)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["link"]["mb_per_s"] = self.link.mb_per_s
        for name, result in (("cold", self.cold), ("warm", self.warm)):
            out[name]["mb_per_s"] = result.mb_per_s
            out[name]["download_mb_per_s"] = result.download_mb_per_s
        out["ratios"] = {"cold": self.cold_ratio, "cold_download": self.cold_download_ratio, "warm": self.warm_ratio}
        return out


def _rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6 if seconds > 0 else 0.0


def _ratio(a: float, b: float) -> float:
    return a / b if b > 0 else 0.0


def bench(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    part_size: int = DEFAULT_PART_SIZE,
    parallel: int = DEFAULT_PARALLEL,
    scratch_dir: str | os.PathLike[str] | None = None,
    progress: Callback | None = None,
) -> BenchReport:
    """Measure the link, a cold read and a warm read of the dataset at ``url``.

    At most about ``max_bytes`` are read in each measurement. The cold and warm reads use
    a fresh cache directory made inside ``scratch_dir`` (default: the system's temporary
    directory; choose the disk training caches on) and removed at the end. ``progress``
    (an fsspec ``Callback``) counts the bytes of the three measurements.
    Raises roxxel's errors (NotFoundError for a missing dataset) before anything is read.
    """
    if max_bytes <= 0 or part_size <= 0 or parallel <= 0:
        raise ValueError("max_bytes, part_size and parallel must be positive")
    store, manifest = load(url, storage_options)
    if manifest.records == 0:
        raise ValueError(f"{store.base_url} has no records: there is nothing to measure")
    meter = Meter(progress)
    chosen = _link_shards(manifest, max_bytes)
    raw = int(manifest.shards.raw_size.sum())
    meter.set_total(sum(int(manifest.shards.stored_size[k]) for k in chosen) + 2 * min(raw, max_bytes))
    with _phase("link"):
        link = measure_link(store, manifest, chosen, part_size=part_size, parallel=parallel, meter=meter)
    scratch = tempfile.mkdtemp(prefix="roxxel-bench-", dir=scratch_dir)
    try:
        with _phase("cold read"):
            cold = _read(url, storage_options, manifest, scratch, max_bytes, "cold", meter)
        with _phase("warm read"):
            warm = _read(url, storage_options, manifest, scratch, max_bytes, "warm", meter)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    report = BenchReport(url=store.base_url, shards=len(manifest.shards), stored_bytes=int(manifest.shards.stored_size.sum()),
                         max_bytes=max_bytes, link=link, cold=cold, warm=warm)
    return replace(report, advice=advice(report))


def _phase(name: str) -> contextlib.AbstractContextManager[Any]:
    """A span of the whole measurement ``name`` in the trace, if tracing is on."""
    tracer = trace.current()
    return tracer.span(f"bench: {name}", "bench") if tracer is not None else contextlib.nullcontext()


def _link_shards(manifest: Manifest, max_bytes: int) -> list[int]:
    """The first shards, in stored order, whose stored bytes reach ``max_bytes`` (one at least)."""
    chosen, total = [], 0
    for k, size in enumerate(manifest.shards.stored_size.tolist()):
        if total >= max_bytes:
            break
        if size:
            chosen.append(k)
            total += size
    return chosen


# -- the link ---------------------------------------------------------------------------


def measure_link(store: Store, manifest: Manifest, shards: list[int], *, part_size: int, parallel: int,
                 meter: Meter | None = None) -> LinkResult:
    """Fetch ``shards`` as ranged GETs of ``part_size``, ``parallel`` in flight; bytes dropped."""
    fs = store.fs
    paths = [store.path(manifest.shards.uris[k]) for k in shards]
    sizes = [int(manifest.shards.stored_size[k]) for k in shards]
    client = _Presigned.for_store(fs, paths) or _FsspecRanges(fs)
    jobs = [(i, start, min(start + part_size, size)) for i, size in enumerate(sizes) for start in range(0, size, part_size)]
    first_byte: list[float] = []
    part_rates: list[float] = []
    lock = threading.Lock()
    started = time.perf_counter()

    def fetch(job: tuple[int, int, int]) -> int:
        i, start, end = job
        began = time.perf_counter()
        tracer = trace.current()
        t0 = tracer.now() if tracer is not None else 0

        def first() -> None:
            with lock:
                first_byte.append(time.perf_counter() - started)

        got = client.get(paths[i], start, end, first, meter)
        if got != end - start:
            raise StorageError(f"a ranged GET of {store.url(manifest.shards.uris[shards[i]])} bytes "
                               f"[{start}, {end}) returned {got} bytes")
        elapsed = time.perf_counter() - began
        with lock:
            part_rates.append(_rate(got, elapsed))
        if tracer is not None:
            tracer.complete("link GET", "bench", t0, tracer.now(), shard=shards[i], offset=start, bytes=got)
        return got

    with ThreadPoolExecutor(parallel, thread_name_prefix="roxxel-bench-link") as pool:
        total = sum(pool.map(fetch, jobs))
    seconds = time.perf_counter() - started
    client.close()
    return LinkResult(
        method=client.method, shards=len(shards), parts=len(jobs), part_size=part_size, parallel=parallel,
        bytes=total, seconds=seconds, first_byte_seconds=min(first_byte, default=0.0),
        per_connection_mb_per_s=statistics.median(part_rates) if part_rates else 0.0,
    )


class _Presigned:
    """Ranged GETs of URLs s3fs presigned, one kept-alive connection per thread."""

    method = "presigned GETs (http.client)"

    def __init__(self, fs: AbstractFileSystem, urls: dict[str, urllib.parse.SplitResult]) -> None:
        self._urls = urls
        self._local = threading.local()
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()
        config = getattr(fs, "config_kwargs", None) or {}
        self._timeout = float(config.get("read_timeout") or 60)

    @classmethod
    def for_store(cls, fs: AbstractFileSystem, paths: list[str]) -> _Presigned | None:
        """The client for an S3 filesystem that signs plain http(s) URLs; None otherwise
        (or if the first GET is refused: then fsspec reads)."""
        if type(fs).__name__ != "S3FileSystem" or getattr(fs, "requester_pays", False):
            return None
        try:
            urls = {p: urllib.parse.urlsplit(fs.sign(p, expiration=_SIGN_SECONDS)) for p in dict.fromkeys(paths)}
        except Exception:  # noqa: BLE001 - cannot presign: read through fsspec
            return None
        if any(u.scheme not in ("http", "https") or not u.hostname for u in urls.values()):
            return None
        client = cls(fs, urls)
        try:
            client.get(paths[0], 0, 1, lambda: None, None)
        except Exception as exc:  # noqa: BLE001 - a refused signature, a proxy, TLS: fsspec instead
            client.close()
            # the type only: a message may hold the presigned URL
            log.info("presigned GETs failed here (%s); the link is measured through fsspec", type(exc).__name__)
            return None
        return client

    def _connection(self, parts: urllib.parse.SplitResult) -> http.client.HTTPConnection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            if parts.scheme == "http":
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=self._timeout)
            else:
                import ssl

                context = ssl.create_default_context(cafile=os.environ.get("AWS_CA_BUNDLE") or None)
                conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=self._timeout, context=context)
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def get(self, path: str, start: int, end: int, first: Any, meter: Meter | None) -> int:
        parts = self._urls[path]
        conn = self._connection(parts)
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request("GET", target, headers={"Range": f"bytes={start}-{end - 1}"})
        response = conn.getresponse()
        if response.status != 206:
            response.read()
            # the presigned URL holds a signature: never in a message
            raise StorageError(f"a presigned ranged GET of bytes [{start}, {end}) of s3://{path} "
                               f"answered HTTP {response.status}")
        buffer = getattr(self._local, "buffer", None)
        if buffer is None:
            buffer = self._local.buffer = memoryview(bytearray(_BUFFER))
        got = 0
        while n := response.readinto(buffer):
            if not got:
                first()
            got += n
            if meter is not None:
                meter.add(n)
        return got

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                conn.close()


class _FsspecRanges:
    """Ranged reads through fsspec's ``cat_file``, for stores other than S3."""

    method = "fsspec cat_file"

    def __init__(self, fs: AbstractFileSystem) -> None:
        self._fs = fs

    def get(self, path: str, start: int, end: int, first: Any, meter: Meter | None) -> int:
        got = len(self._fs.cat_file(path, start=start, end=end))
        first()  # the whole part at once: its first byte cannot be seen apart
        if meter is not None:
            meter.add(got)
        return got

    def close(self) -> None:
        pass


# -- reads through roxxel -----------------------------------------------------------------


def _read(url: str, storage_options: Mapping[str, Any] | None, manifest: Manifest, cache_dir: str,
          max_bytes: int, label: str, meter: Meter) -> ReadResult:
    """``roxxel.open`` with default options, then ``ds.iter(seed=0)`` up to ``max_bytes``."""
    began = time.perf_counter()
    with open_dataset(url, cache_dir=cache_dir, storage_options=storage_options) as ds:
        opened = time.perf_counter()
        before = _cached_stored_bytes(ds, manifest)
        records = nbytes = 0
        first = None
        iter_started = time.perf_counter()
        whole = True
        for record in ds.iter(seed=0):
            if first is None:
                first = time.perf_counter()
                if (tracer := trace.current()) is not None:
                    tracer.instant(f"bench: {label} read's first record", "bench")
            records += 1
            nbytes += record.nbytes
            meter.add(record.nbytes)
            if nbytes >= max_bytes:
                whole = records == len(ds)
                break
        ended = time.perf_counter()
        downloaded = _cached_stored_bytes(ds, manifest) - before
    return ReadResult(
        cache=label, open_seconds=opened - began, first_record_seconds=(first or ended) - iter_started,
        seconds=ended - iter_started, records=records, record_bytes=nbytes, whole_epoch=whole,
        downloaded_bytes=downloaded,
    )


def _cached_stored_bytes(ds: Any, manifest: Manifest) -> int:
    """Stored bytes of this dataset's shards published in ``ds``'s cache."""
    stored = dict(zip(manifest.shards.checksums.tolist(), manifest.shards.stored_size.tolist()))
    return sum(stored.get(entry.checksum, 0) for entry in ds.cache.entries())


# -- what to change -----------------------------------------------------------------------


#: A link that this many transfers at once fill (one connection carries its share) is
#: not reached by more: a store on the same host or a fast LAN, where the CPU is the limit
#: (README, "Cold reads from object stores": 8 parts in flight against 32 on loopback).
_FEW_TRANSFERS = 8


def advice(report: BenchReport) -> list[str]:
    """What the numbers say to change, most important first; each line names its evidence."""
    link, cold, warm = report.link, report.cold, report.warm
    lines: list[str] = []
    whole_dataset = link.shards == report.shards
    more = "a larger dataset" if whole_dataset and cold.whole_epoch else "a larger --max-bytes"
    if link.seconds < _SHORT or cold.seconds < _SHORT:
        lines.append(
            f"these measurements are short (link {link.seconds:.2f} s, cold read {cold.seconds:.2f} s): "
            f"the ratios below are noisy; measure more bytes ({more})"
        )
    if link.parts < link.parallel:
        lines.append(
            f"the link was measured with {link.parts} part{'s' * (link.parts != 1)}, fewer than the "
            f"{link.parallel} it may have in "
            f"flight: it is underestimated; measure more bytes ({more}) or lower --part-size"
        )
    if not cold.whole_epoch:
        lines.append(
            f"the reads stopped after {cold.record_bytes / 1e6:.0f} MB (--max-bytes): the open and the first "
            "window weigh more than in a whole epoch; raise --max-bytes for the steady state"
        )
    needed = link.mb_per_s / link.per_connection_mb_per_s if link.per_connection_mb_per_s > 0 else 0.0
    if needed > 1.5:
        lines.append(
            f"one connection carried about {link.per_connection_mb_per_s:.0f} MB/s and the link "
            f"{link.mb_per_s:.0f} MB/s with {link.parallel} parts in flight: reaching it takes about "
            f"{needed:.0f} or more transfers at once"
        )
    if report.cold_download_ratio < 0.8 and cold.downloaded_bytes and 0 < needed <= _FEW_TRANSFERS:
        few = max(1, round(needed))
        lines.append(
            f"cold downloads reached {report.cold_download_ratio:.0%} of the link "
            f"({cold.download_mb_per_s:.0f} of {link.mb_per_s:.0f} MB/s), which about {few} "
            f"{'transfer at once fills' if few == 1 else 'transfers at once fill'}: more parts in flight than "
            f"that only cost this node's CPU; try fewer (ROXXEL_PARTS_IN_FLIGHT={_FEW_TRANSFERS}, 32 by default)"
        )
    elif report.cold_download_ratio < 0.8 and cold.downloaded_bytes:
        lines.append(
            f"cold downloads reached {report.cold_download_ratio:.0%} of the link "
            f"({cold.download_mb_per_s:.0f} of {link.mb_per_s:.0f} MB/s): raise the parts in flight "
            "(ROXXEL_PARTS_IN_FLIGHT, 32 by default) if the link needs more transfers than that, "
            "and check per-connection throughput above"
        )
    elif cold.downloaded_bytes:
        lines.append(f"cold downloads reached {report.cold_download_ratio:.0%} of the link: the download path "
                     "keeps up with this link")
    if cold.seconds > 0 and cold.first_record_seconds > 0.25 * cold.seconds:
        lines.append(
            f"the cold read waited {cold.first_record_seconds:.2f} s for its first record, "
            f"{cold.first_record_seconds / cold.seconds:.0%} of its time: a record is served only once its shard "
            "is downloaded whole and verified, so this wait grows with the shard size and with the shards "
            "a first window (ds.iter(window=...)) fetches together"
        )
    if warm.mb_per_s < max(link.mb_per_s, cold.mb_per_s):
        cause = "records are made in Python (roxxel._cviews is not available)" if not ACCELERATED else (
            "reading is CPU-bound here (record views, page faults, re-hashing of changed files)"
        )
        lines.append(
            f"warm reads ({warm.mb_per_s:.0f} MB/s) are slower than the "
            f"{'link' if link.mb_per_s >= cold.mb_per_s else 'cold read'}: {cause}; a faster network "
            "will not help until the consumer is faster"
        )
    if warm.open_seconds > 0.5:
        lines.append(f"opening took {warm.open_seconds:.2f} s even warm: the manifest read dominates (a large "
                     "manifest, or a slow first request to the store)")
    return lines
