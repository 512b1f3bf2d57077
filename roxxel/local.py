"""The original local API: ``roxxel.Roxxel`` over ``*.rox`` shard files on disk.

Compatible with Roxxel 0.1 and 0.3 (same files, same calls), with these deliberate
differences where the old releases misbehaved:

- ``write`` is all-or-nothing: every shard it creates or extends is staged under a
  temporary name and renamed into place only after all records were written, so a
  failing write (a bad record, a full disk, an exception from the iterator) leaves the
  existing files byte for byte as they were.
- Empty records are stored (as zero-length records), never silently dropped.
- Status messages go through ``logging`` (logger ``roxxel.local``), never ``print``.
- A write to a glob pattern never shifts existing records' indices: it continues the
  numbered series its files end with, names new files as 0.3.0 does otherwise, and
  refuses a file that would sort before existing ones.
- ``stream`` ends after one pass as 0.3.0's does, but in its own order (windows of a
  keyed permutation, not 0.3.0's shuffled records joined into batches).
"""

from __future__ import annotations

import fnmatch
import glob
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from array import array
from typing import Union

import numpy as np
import numpy.typing as npt

from .format.layout import FOOTER_SIZE, ShardLayout, read_footer, read_layout
from .format.writer import Record, ShardWriter, record_bytes
from .errors import DatasetExistsError
from .read.payload import PayloadFile, mapped_parts
from .read.records import LocalShards, Records
from .read.tokens import TokenWindows, token_batches

__all__ = ["Roxxel"]

log = logging.getLogger(__name__)

PathLike = Union[str, "os.PathLike[str]"]
_GLOB_CHARS = re.compile(r"[*?\[]")
_SUFFIX = ".rox"
_SERIES = re.compile(r"^(.*)_(\d{4,})" + re.escape(_SUFFIX) + "$")


def _natural_key(path: str) -> list[object]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path)]


class Roxxel(Records):
    """Records in local ROXXEL01 shards: ``Roxxel("data.rox")``, ``Roxxel("wiki_*.rox")``
    or ``Roxxel([path, ...])``.

    A plain path that does not exist stands for the numbered shards ``data_0000.rox``,
    ``data_0001.rox``, ... that ``write(..., max_shard_bytes=...)`` creates from it; a
    pattern writes as :meth:`write` says (0.3.0's names, or the series already there).
    ``ds[i]`` is a zero-copy ``numpy.uint8`` view into the memory-mapped shard.
    """

    def __init__(self, path: PathLike | Sequence[PathLike]) -> None:
        if isinstance(path, (str, os.PathLike)):
            self._spec: str | None = os.fspath(path)
            self._explicit: list[str] | None = None
        else:
            self._spec = None
            self._explicit = [os.fspath(p) for p in path]
        self._paths = self._discover()
        self._files = LocalShards(self._paths)
        super().__init__([_layout(p).record_count for p in self._paths], self._files)

    # -- which files ---------------------------------------------------------------

    @property
    def paths(self) -> list[str]:
        """The shard files, in record order."""
        return list(self._paths)

    def _base(self) -> str:
        """Path prefix of a plain path's numbered shards: ``data.rox`` gives ``data``."""
        return (self._spec or "").removesuffix(_SUFFIX)

    def _numbered(self) -> list[str]:
        base = self._base()
        pattern = re.compile(re.escape(os.path.basename(base)) + r"_(\d{4,})" + re.escape(_SUFFIX) + "$")
        folder = os.path.dirname(base) or "."
        try:
            names = os.listdir(folder)
        except FileNotFoundError:
            return []
        found = [os.path.join(os.path.dirname(base), n) for n in names if pattern.match(n)]
        return sorted(found, key=_natural_key)

    def _single_file_mode(self) -> bool:
        return self._spec is not None and not _GLOB_CHARS.search(self._spec) and (
            os.path.exists(self._spec) or not self._numbered()
        )

    def _discover(self) -> list[str]:
        if self._explicit is not None:
            return list(self._explicit)
        assert self._spec is not None
        if _GLOB_CHARS.search(self._spec):
            return sorted(glob.glob(self._spec), key=_natural_key)
        if os.path.exists(self._spec):
            return [self._spec]
        return self._numbered()

    def _refresh(self) -> None:
        self._release_all()
        self._paths = self._files.paths = self._discover()
        self._set_counts([_layout(p).record_count for p in self._paths])

    @property
    def raw_data(self) -> np.ndarray:
        """The payload of a one-shard dataset as a flat ``uint8`` view (zero-copy).

        Datasets of several shards have one payload per file: use :attr:`payloads`.
        """
        if self.num_shards != 1:
            raise ValueError(
                f"raw_data needs exactly one shard, this dataset has {self.num_shards}; "
                "use .payloads for one flat view per shard"
            )
        return self.shard(0).payload

    def payload(self) -> PayloadFile:
        """Every shard's payload end to end as one read-only seekable binary file, read
        from the maps (see :mod:`roxxel.read.payload`)."""
        self._check_open()
        sizes = [_layout(p).payload_size for p in self._paths]
        name = self._spec if self._spec is not None else repr(self)
        return PayloadFile(sizes, mapped_parts(lambda k: self.shard(k).payload, sizes, name), name)

    @property
    def payloads(self) -> list[np.ndarray]:
        """Each shard's payload as a flat ``uint8`` view (zero-copy), in order."""
        return [self.shard(k).payload for k in range(self.num_shards)]

    def stream(
        self,
        seq_len: int,
        batch_size: int = 32,
        seed: int = 42,
        start_step: int = 0,
        dtype: npt.DTypeLike = np.int32,
        *,
        epochs: int | None = 1,
    ) -> Iterator[np.ndarray]:
        """``(batch_size, seq_len)`` token batches in a seeded order, for ``epochs`` epochs.

        The payloads are read as ``dtype`` tokens and cut into windows of ``seq_len``;
        each epoch visits every window once in an order fixed by ``(seed, epoch)``. The
        stream stops after ``epochs`` epochs (default 1, one pass as in Roxxel 0.3.0;
        the windows short of a whole batch at the end are dropped), or never ends with
        ``epochs=None``. ``start_step=s`` yields exactly what an uninterrupted stream
        yields from step ``s`` on, at once (no replay). See :mod:`roxxel.read.tokens`.
        """
        self._check_open()
        sizes = [_layout(p).payload_size for p in self._paths]
        windows = TokenWindows(sizes, lambda k: self.shard(k).payload, seq_len, dtype)
        return token_batches(windows, batch_size, seed, start_step, epochs=epochs)

    # -- writing -------------------------------------------------------------------

    def write(
        self,
        records: Iterable[Record],
        max_shard_bytes: int | None = None,
        *,
        block_size: int | None = None,
        separator: bytes = b"\xff",
    ) -> list[str]:
        """Append ``records`` to the dataset; returns the files created or extended.

        Without ``max_shard_bytes`` a plain path is one file that grows. With it, records
        go to numbered shards ``data_0000.rox``, ... of at most ``max_shard_bytes`` bytes
        each (a record larger than that gets a shard of its own; nothing is split or
        dropped). A glob pattern continues the numbered series that sorts last among its
        files; with none, files are named as Roxxel 0.3.0 names them (``wiki_*.rox``:
        ``wiki_base.rox``, or ``wiki_base_0000.rox``, ... with ``max_shard_bytes``).
        Existing records keep their indices: a write whose files would sort before
        existing ones raises :class:`~roxxel.DatasetExistsError` naming them.
        With ``block_size`` (the 0.3 block mode), each record followed by
        ``separator`` is appended to one byte stream that is cut into records of exactly
        ``block_size`` bytes; the last block is padded with the separator.

        All or nothing: on any error no file is created or changed.
        """
        if max_shard_bytes is not None and (
            isinstance(max_shard_bytes, bool) or max_shard_bytes <= FOOTER_SIZE
        ):
            raise ValueError(f"max_shard_bytes must be an integer > {FOOTER_SIZE}, got {max_shard_bytes!r}")
        if block_size is not None:
            records = _blocks(records, block_size, separator)
        if self._spec is None:
            raise ValueError("write() needs a path or glob pattern, not a list of paths")
        if _GLOB_CHARS.search(self._spec):
            targets, continue_last = _glob_targets(self._spec, self._discover(), max_shard_bytes)
        elif max_shard_bytes is None and self._single_file_mode():
            targets, continue_last = iter([self._spec]), os.path.exists(self._spec)
        else:
            existing = self._numbered()
            start = _shard_number(existing[-1]) if existing else 0
            targets = _series(self._base(), start)
            continue_last = bool(existing)
        written = _write_staged(records, targets, continue_last, max_shard_bytes)
        self._refresh()
        log.info("wrote %d records into %s", written.records, ", ".join(written.paths))
        return written.paths

    # -- lifetime ------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the shards (idempotent). Views already handed out stay valid."""
        self._close_records()

    def __enter__(self) -> Roxxel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        where = self._spec if self._spec is not None else f"{len(self._paths)} paths"
        n = "closed" if self._closed else self._n
        return f"Roxxel({where!r}, shards={len(self._paths)}, records={n})"


# -- helpers -----------------------------------------------------------------------


def _layout(path: str) -> ShardLayout:
    with open(path, "rb") as f:
        return read_footer(f.fileno(), path)[0]


def _shard_number(path: str) -> int:
    return int(re.search(r"_(\d+)" + re.escape(_SUFFIX) + "$", path).group(1))  # type: ignore[union-attr]


def _series(base: str, start: int) -> Iterator[str]:
    """``base_0000.rox``, ``base_0001.rox``, ... from number ``start`` on (0.3.0's names)."""
    k = start
    while True:
        yield f"{base}_{k:04d}{_SUFFIX}"
        k += 1


def _glob_targets(
    pattern: str, existing: list[str], max_shard_bytes: int | None
) -> tuple[Iterator[str], bool]:
    """Where a write to ``pattern`` goes, given the files it matches in read order.

    A numbered series ``x_0007.rox`` that sorts last among them is continued (its last
    shard grows while it has room). Otherwise files are named as Roxxel 0.3.0 names
    them: each ``*`` and ``?`` of the pattern becomes ``base``, giving one file
    (``wiki_*.rox`` -> ``wiki_base.rox``) or, with ``max_shard_bytes``, the series
    ``wiki_base_0000.rox``, ... Either way every new record sorts after every existing
    one: a name that would not is refused, never written.
    """
    numbered = _SERIES.match(existing[-1]) if existing else None
    if numbered:
        targets = _series(numbered.group(1), int(numbered.group(2)))
    else:
        named = pattern.replace("*", "base").replace("?", "base")
        targets = iter([named]) if max_shard_bytes is None else _series(named.removesuffix(_SUFFIX), 0)
    # A first target that exists is the last file (_in_order refuses any other): continue it.
    return _in_order(targets, pattern, existing), True


def _in_order(targets: Iterator[str], pattern: str, existing: list[str]) -> Iterator[str]:
    """``targets``, each checked to be read back by ``pattern`` after every existing file."""
    last = existing[-1] if existing else None
    for target in targets:
        if not fnmatch.fnmatchcase(target, pattern):
            raise ValueError(
                f"cannot write to {pattern!r}: the next shard would be {target!r}, which the "
                "pattern does not match; write through a pattern with one '*' or a plain path"
            )
        if last is None or _natural_key(target) > _natural_key(last):
            yield target
        elif os.path.abspath(target) == os.path.abspath(last):
            yield target  # the last existing shard, continued
        else:
            after = [p for p in existing if _natural_key(p) >= _natural_key(target)]
            raise DatasetExistsError(
                f"cannot write to {pattern!r}: the next shard {target!r} would sort before "
                f"existing files {after!r} and shift their records' indices; rename them or "
                "write through another pattern"
            )


def _blocks(records: Iterable[Record], block_size: int, separator: bytes) -> Iterator[bytes]:
    """The 0.3 block mode: records + separators as one stream, cut into equal blocks."""
    if isinstance(block_size, bool) or not isinstance(block_size, int) or block_size < 1:
        raise ValueError(f"block_size must be a positive integer, got {block_size!r}")
    sep = bytes(separator)
    buf = bytearray()
    for pos, record in enumerate(records):
        buf += record_bytes(record, pos)
        buf += sep
        while len(buf) >= block_size:
            yield bytes(buf[:block_size])
            del buf[:block_size]
    if buf:
        pad = (sep or b"\x00") * (block_size // max(len(sep), 1) + 1)
        buf += pad[: block_size - len(buf)]
        yield bytes(buf)


class _NothingWritten(Exception):
    """No record came: the staged files are dropped and nothing changes."""


class _Written:
    def __init__(self) -> None:
        self.paths: list[str] = []
        self.records = 0


def _write_staged(
    records: Iterable[Record], targets: Iterator[str], continue_last: bool, limit: int | None
) -> _Written:
    """Write records into staged temp files, then rename them all into place."""
    staged: list[tuple[str, str]] = []  # (temp path, final path)
    done = _Written()
    f = None
    try:
        target = next(targets)
        writer, f = _open_staged(target, continue_last, staged)
        for pos, record in enumerate(records):
            data = record_bytes(record, pos)
            if limit is not None and writer.record_count and (
                writer.file_size_with(data.nbytes) > limit
            ):
                writer.finish()
                f.close()
                target = next(targets)
                writer, f = _open_staged(target, False, staged)
            writer.append(data)
            done.records += 1
        writer.finish()
        f.close()
        if not done.records:
            raise _NothingWritten
    except BaseException as exc:
        if f is not None:
            f.close()  # idempotent: the last shard's file may be closed already
        for temp, _ in staged:
            _remove_quietly(temp)
        if isinstance(exc, _NothingWritten):
            return done
        raise
    for temp, final in staged:
        os.replace(temp, final)
        done.paths.append(final)
    return done


def _open_staged(target: str, continue_existing: bool, staged: list[tuple[str, str]]):
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(prefix="." + os.path.basename(target) + ".", suffix=".tmp", dir=folder)
    staged.append((temp, target))
    f = os.fdopen(fd, "wb", buffering=1 << 20)
    offsets = None
    if continue_existing and os.path.exists(target):
        with open(target, "rb") as src:
            size = os.fstat(src.fileno()).st_size
            layout, table = read_layout(src, size, target)
            src.seek(0)
            _copy_exact(src, f, layout.payload_size)
        offsets = array("q")
        offsets.frombytes(table.astype("=i8").tobytes())
        os.fchmod(f.fileno(), os.stat(target).st_mode & 0o777)
    else:
        os.fchmod(f.fileno(), 0o644)
    return ShardWriter(f, offsets=offsets), f


def _copy_exact(src, dst, n: int) -> None:
    while n:
        chunk = src.read(min(n, 8 << 20))
        if not chunk:
            raise OSError(f"{src.name}: file ended {n} bytes early while copying")
        dst.write(chunk)
        n -= len(chunk)


def _remove_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
