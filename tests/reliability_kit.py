"""Shared pieces of the reliability tests: self-checking records, datasets, cache
inspection, and the child processes of the crash loops and concurrency tests.

Children run in processes forked from a forkserver that has roxxel preloaded (see
:func:`forkserver`), so starting one costs milliseconds instead of an interpreter start;
they are module-level functions here so that the forkserver can import them.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import multiprocessing
import os
import stat
import struct
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import roxxel
from roxxel.backends import RetryPolicy, Store

_HEADER = struct.Struct("<qq")
FAST = RetryPolicy(base_delay=0.001, max_delay=0.01, deadline=10.0)


# -- records that check themselves ---------------------------------------------------------


def make_record(index: int, version: int = 0) -> bytes:
    """Record ``index`` of dataset version ``version``: a header naming both, then a body
    derived from them, so any reader can tell a right record from a wrong or torn one."""
    header = _HEADER.pack(index, version)
    size = (index * 7919 + version * 31) % 600 + 1
    seed = hashlib.blake2b(header, digest_size=32).digest()
    return header + (seed * (size // 32 + 1))[:size]


def check_record(record: Any, version: int | None = None) -> int:
    """The index of ``record``; AssertionError if it is not exactly a record of ``version``."""
    data = bytes(record)
    assert len(data) > _HEADER.size, f"record of {len(data)} bytes is too short"
    index, found = _HEADER.unpack_from(data)
    assert version is None or found == version, f"record {index} is of version {found}, expected {version}"
    assert data == make_record(index, found), f"record {index} (version {found}) is corrupt"
    return index


def records(n: int, version: int = 0) -> Iterator[bytes]:
    return (make_record(i, version) for i in range(n))


def write(url: str, n: int, *, version: int = 0, shard_bytes: int = 8192, mode: str = "create",
          store: Store | None = None, **kw: Any) -> roxxel.Manifest:
    with roxxel.Writer(url, shard_bytes=shard_bytes, mode=mode, store=store,
                       meta={"version": version, "records": n}, **kw) as w:
        w.extend(records(n, version))
    assert w.manifest is not None
    return w.manifest


def check_all(ds: Iterable[Any], n: int, version: int | None = None) -> None:
    """Every record of ``ds`` is right and the epoch is exactly records 0..n-1."""
    seen = [check_record(r, version) for r in ds]
    assert sorted(seen) == list(range(n)), f"{len(seen)} records, {len(set(seen))} distinct, expected {n}"


# -- looking at a cache ----------------------------------------------------------------------


def files(folder: Path | str) -> list[str]:
    try:
        return sorted(os.listdir(folder))
    except FileNotFoundError:
        return []


def regular_bytes(folder: Path | str) -> int:
    total = 0
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode):
            total += st.st_size
    return total


def lock_is_free(path: Path | str) -> bool:
    """True if nobody holds a flock on the file at ``path`` (or it is gone)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return True
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def check_cache(cache_dir: Path | str, manifest: roxxel.Manifest) -> dict[str, int]:
    """A cache left by killed processes: after a new ShardCache cleans up, nothing in
    ``tmp/``, no lock held, and every published shard is one of ``manifest``'s and
    re-hashes to its verified digest. Returns counts for the report."""
    from roxxel.cache import ShardCache

    cache_dir = Path(cache_dir)
    cache = ShardCache(cache_dir)
    cache.clean_temp()  # what a new process's first ShardCache of the directory does
    leftovers = files(cache_dir / "tmp")
    assert leftovers == [], f"temp files survived the cleanup: {leftovers}"
    held = [name for name in files(cache_dir / "locks") if not lock_is_free(cache_dir / "locks" / name)]
    assert held == [], f"locks still held after every process died: {held}"
    known = set(manifest.shards.checksums.tolist())
    entries = cache.entries()
    for entry in entries:
        assert entry.checksum in known, f"{entry.checksum} in the cache is not a shard of the dataset"
        assert cache.verify(entry.checksum), f"cached shard {entry.checksum} is corrupt"
    for name in files(cache_dir / "datasets"):
        json.loads((cache_dir / "datasets" / name).read_text())  # notes are whole JSON or absent
    return {"shards": len(entries), "stale_locks": len(files(cache_dir / "locks"))}


# -- processes -------------------------------------------------------------------------------

_CONTEXT: list[Any] = []


def forkserver() -> Any:
    """A multiprocessing context whose children fork from a server with roxxel imported."""
    if not _CONTEXT:
        ctx = multiprocessing.get_context("forkserver")
        # pytest too: each child re-runs the main module (pytest's, under pytest)
        preload = ["roxxel", "roxxel.ops", "tests.faults", "tests.reliability_kit", "pytest"]
        ctx.set_forkserver_preload(preload)
        first = ctx.Process(target=_nothing, daemon=True)  # start the server now, not in a timed run
        first.start()
        first.join()
        _CONTEXT.append(ctx)
    return _CONTEXT[0]


def _nothing() -> None:
    pass


def _faulty_store(url: str, latency: float, chunk_size: int) -> Store:
    from tests.faults import FaultyFileSystem, faulty_url

    fs = FaultyFileSystem(latency=latency)
    return Store(faulty_url(url), fs=fs, retry=FAST, chunk_size=chunk_size)


def writer_child(url: str, n: int, version: int, shard_bytes: int, staging: str, compression: Any) -> None:
    """Publish version ``version`` of the dataset at ``url`` (replacing the previous one)."""
    write(url, n, version=version, shard_bytes=shard_bytes, mode="overwrite", staging_dir=staging,
          compression=compression, upload_workers=2)


def reader_child(url: str, cache_dir: str, limit: int | None, seed: int, progress: Any,
                 latency: float = 0.0) -> None:
    """Read a shuffled epoch, checking every record; ``progress`` counts records read."""
    store = _faulty_store(url, latency, 4096) if latency else None
    with roxxel.open(url, cache_dir=cache_dir, cache_limit=limit, lookahead=2, store=store) as ds:
        for record in ds.iter(seed=seed, window=2):
            check_record(record)
            progress.value += 1


def warm_child(url: str, cache_dir: str, limit: int | None, latency: float = 0.0) -> None:
    """``roxxel.ops.warm`` every shard (that fits under ``limit``) into the cache."""
    from roxxel.ops import warm

    from tests.faults import faulty_url

    if latency:
        warm(faulty_url(url), {"latency": latency}, cache_dir=cache_dir, limit=limit, workers=2)
    else:
        warm(url, cache_dir=cache_dir, limit=limit, workers=2)


class _LineLog(logging.Handler):
    """Appends ``"<pid> <message>"`` lines to one file shared by several processes."""

    def __init__(self, path: str) -> None:
        super().__init__(logging.DEBUG)
        self.path = path

    def emit(self, record: logging.LogRecord) -> None:
        line = f"{os.getpid()} {time.monotonic():.6f} {record.getMessage()}\n".encode()
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)  # one O_APPEND write per line: lines never interleave
        finally:
            os.close(fd)


class _UnlinkLog:
    """Stands in for the ``os`` module inside :mod:`roxxel.cache.files`, noting every
    unlink of a published shard just before it happens (the evictor holds the shard's
    exclusive lock then, so the unlink is certain)."""

    def __init__(self, handler: logging.Handler) -> None:
        self._handler = handler

    def __getattr__(self, name: str) -> Any:
        return getattr(os, name)

    def unlink(self, path: Any, *args: Any, **kwargs: Any) -> None:
        name = os.fspath(path)
        if os.path.basename(os.path.dirname(name)) == "shards" and name.endswith(".rox"):
            stem = os.path.basename(name)[: -len(".rox")]
            self._handler.emit(logging.makeLogRecord({"msg": "unlinking " + stem.replace("-", ":", 1)}))
        os.unlink(path, *args, **kwargs)


def log_cache_events(path: str) -> None:
    """Record this process's downloads, publishes and shard unlinks, and every roxxel
    warning, in the file ``path`` shared by several processes."""
    from roxxel.cache import files as cache_files

    handler = _LineLog(path)
    cache_files.os = _UnlinkLog(handler)  # type: ignore[attr-defined]
    logger = logging.getLogger("roxxel.cache.store")
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    logger.propagate = False  # its warnings reach the handler here, once
    warnings = logging.getLogger("roxxel")
    warnings.setLevel(logging.WARNING)
    warnings.addHandler(handler)


def concurrent_reader(url: str, cache_dir: str, limit: int, seed: int,
                      events: str, result: str, latency: float) -> None:
    """One of several readers on a shared cache: a whole epoch in its own shuffled order
    (``seed``), every record checked."""
    log_cache_events(events)
    store = _faulty_store(url, latency, 2048)
    seen = []
    with roxxel.open(url, cache_dir=cache_dir, cache_limit=limit, lookahead=1,
                     download_workers=1, store=store) as ds:
        for record in ds.iter(seed=seed, rank=0, world_size=1, window=1, worker=0, num_workers=1):
            seen.append(check_record(record))
        stats = ds.stats
    Path(result).write_text(json.dumps({"seen": seen, **stats}))


def concurrent_warm(url: str, cache_dir: str, limit: int, events: str, result: str, latency: float) -> None:
    from roxxel.ops import warm

    from tests.faults import faulty_url

    log_cache_events(events)
    report = warm(faulty_url(url), {"latency": latency}, cache_dir=cache_dir, limit=limit, workers=2)
    Path(result).write_text(json.dumps(report.to_dict()))


# -- work under a memory limit -----------------------------------------------------------------


def limited(limit_bytes: int, how: str, url: str, cache_dir: str, result: str) -> None:
    """Read from the dataset at ``url`` under an address-space limit of ``limit_bytes``
    and write what happened (error type and message, or "ok") to ``result`` as JSON.

    ``how``: ``getitem`` (ds[0]), ``iter`` (first record of a shuffled ds.iter),
    ``plain`` (first record of iter(ds)), ``stream`` (first batch of ds.stream).
    """
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))
    started = time.monotonic()
    outcome: dict[str, Any] = {"error": None}
    try:
        with roxxel.open(url, cache_dir=cache_dir, lookahead=0) as ds:
            if how == "getitem":
                ds[0]
            elif how == "iter":
                next(iter(ds.iter(seed=0)))
            elif how == "plain":
                next(iter(ds))
            elif how == "stream":
                next(ds.stream(seq_len=4, batch_size=2))
            else:
                raise ValueError(how)
    except BaseException as exc:  # reported to the test, which judges it
        outcome = {"error": type(exc).__name__, "roxxel": isinstance(exc, roxxel.RoxxelError),
                   "message": str(exc)[:500]}
    outcome["seconds"] = time.monotonic() - started
    outcome["tmp"] = files(Path(cache_dir) / "tmp")
    outcome["shards"] = files(Path(cache_dir) / "shards")
    Path(result).write_text(json.dumps(outcome))
