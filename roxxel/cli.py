"""The ``roxxel`` console command for operators.

Each subcommand parses its arguments, calls one function of :mod:`roxxel.ops`, and
prints the result; all the work (and its tests) lives in the library. Results go to
stdout (``--json`` for scripts), logs and progress to stderr. Exit status: 0 success,
1 failure (one line saying what is wrong and what to do), 2 usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from fsspec.callbacks import Callback, NoOpCallback

from ._version import __version__
from .errors import (
    DatasetExistsError,
    IntegrityError,
    NotFoundError,
    RoxxelError,
    ShardFormatError,
)

__all__ = ["build_parser", "main", "parse_storage_options"]

log = logging.getLogger("roxxel.cli")

PROGRESS_INTERVAL_ENV = "ROXXEL_PROGRESS_INTERVAL"
_DEFAULT_PROGRESS_INTERVAL = 10.0

# --------------------------------------------------------------------------- options


def _storage_option(text: str) -> tuple[tuple[str, ...], Any]:
    """``key=value`` -> (key path, value); the value is JSON if it parses, else a string."""
    key, sep, raw = text.partition("=")
    path = tuple(key.strip().split("."))
    if not sep or not all(path):
        # The argument is not echoed: a mistyped one may hold a secret.
        problem = "no '='" if not sep else "an empty key"
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (nested keys with dots, e.g. client_kwargs.region_name=us-east-1), "
            f"got an argument with {problem}"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return path, value


def parse_storage_options(pairs: Sequence[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """Nested storage options from parsed ``-o`` pairs; ValueError (naming keys, never
    values) when one key is given both a value and nested keys."""
    options: dict[str, Any] = {}
    for path, value in pairs:
        node = options
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"storage option {'.'.join(path[:depth + 1])} is given a value and nested keys")
            node = child
        if isinstance(node.get(path[-1]), dict) and not isinstance(value, dict):
            raise ValueError(f"storage option {'.'.join(path)} is given a value and nested keys")
        node[path[-1]] = value
    return options


def _size(text: str) -> int:
    from .cache import parse_size

    try:
        size = parse_size(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("cache limit", "size")) from None
    assert size is not None
    return size


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


_positive = _int_at_least(1)
_non_negative = _int_at_least(0)
_MAX_RANK = 1 << 20


def _ranks(text: str) -> list[int]:
    """``3``, ``0,1,2``, ``0-7`` or ``0-3,8`` -> sorted distinct ranks."""
    ranks: set[int] = set()
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            if not 0 <= first <= last < _MAX_RANK:
                raise ValueError
            ranks.update(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ranks like 3, 0,1,2 or 0-7, got {text!r}"
        ) from None
    return sorted(ranks)


# -------------------------------------------------------------------------- progress


class _LogProgress(Callback):
    """Progress as a log line every ``interval`` seconds (for logs, CI, pipes)."""

    def __init__(self, desc: str, interval: float) -> None:
        super().__init__()
        self.desc, self.interval = desc, interval
        self.started = self.last = time.monotonic()

    def call(self, hook_name: str | None = None, **kwargs: Any) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            log.info("%s", self._line(now))

    def _line(self, now: float) -> str:
        elapsed = max(now - self.started, 1e-9)
        rate = self.value / elapsed
        text = f"{self.desc}: {_human(self.value)}"
        if self.size:
            text += f" of {_human(self.size)} ({100 * self.value // max(self.size, 1)}%)"
        text += f", {_human(rate)}/s"
        if self.size and rate > 0 and self.value < self.size:
            text += f", ETA {_duration((self.size - self.value) / rate)}"
        return text

    def finish(self) -> None:
        if self.value:
            log.info("%s in %s", self._line(time.monotonic()), _duration(time.monotonic() - self.started))


class _BarProgress(Callback):
    """A tqdm bar with bytes/s and ETA, on a terminal."""

    def __init__(self, desc: str) -> None:
        super().__init__()
        from tqdm import tqdm

        self.bar = tqdm(
            desc=desc, unit="B", unit_scale=True, unit_divisor=1024, file=sys.stderr,
            dynamic_ncols=True, leave=True,
        )
        _Handler.bar = self.bar

    def call(self, hook_name: str | None = None, **kwargs: Any) -> None:
        if self.size is not None and self.bar.total != self.size:
            self.bar.total = self.size
            self.bar.refresh()
        if self.value != self.bar.n:
            self.bar.update(self.value - self.bar.n)

    def finish(self) -> None:
        self.close()

    def close(self) -> None:
        if _Handler.bar is self.bar:
            _Handler.bar = None
        self.bar.close()


class _NoProgress(NoOpCallback):
    def finish(self) -> None:
        pass


def _progress(args: argparse.Namespace, desc: str) -> Any:
    """The progress callback for this run: a bar on a terminal, else periodic log lines."""
    if args.quiet:
        return _NoProgress()
    if sys.stderr.isatty():
        try:
            return _BarProgress(desc)
        except ImportError:  # tqdm is the optional "progress" extra
            pass
    try:
        interval = float(os.environ.get(PROGRESS_INTERVAL_ENV, _DEFAULT_PROGRESS_INTERVAL))
    except ValueError:
        interval = _DEFAULT_PROGRESS_INTERVAL
    return _LogProgress(desc, interval)


def _run_with_progress(args: argparse.Namespace, desc: str, fn: Callable[[Any], Any]) -> Any:
    progress = _progress(args, desc)
    try:
        result = fn(progress)
    except BaseException:
        progress.close()
        raise
    progress.finish()
    return result


# --------------------------------------------------------------------------- logging


class _Handler(logging.StreamHandler):
    """Log lines on stderr; printed above a progress bar when one is showing."""

    bar: Any = None

    def emit(self, record: logging.LogRecord) -> None:
        bar = _Handler.bar
        if bar is None:
            super().emit(record)
            return
        try:
            bar.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never fail the command
            self.handleError(record)


class _Formatter(logging.Formatter):
    def __init__(self, verbose: int) -> None:
        super().__init__()
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        level = "" if record.levelno == logging.INFO else f"{record.levelname.lower()}: "
        where = f"[{record.name}] " if self.verbose else ""
        text = f"roxxel: {level}{where}{message}"
        if record.exc_info and self.verbose:
            text += "\n" + self.formatException(record.exc_info)
        return text


def _configure_logging(verbose: int, quiet: int) -> None:
    handler = _Handler(sys.stderr)
    handler.setFormatter(_Formatter(verbose))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose >= 2 else logging.WARNING)
    level = logging.DEBUG if verbose else (logging.INFO, logging.WARNING, logging.ERROR)[min(quiet, 2)]
    logging.getLogger("roxxel").setLevel(level)


# ------------------------------------------------------------------------- formatting


def _human(n: float) -> str:
    """``n`` bytes as ``"1.5 MiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _when(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, sort_keys=False))


def _table(rows: list[list[str]], right: Sequence[int] = ()) -> None:
    """Print ``rows`` as columns separated by two spaces (numbers right-aligned)."""
    if not rows:
        return
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths))
        ]
        print("  ".join(cells).rstrip())


# ---------------------------------------------------------------------------- commands


def _merged(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``more`` merged over it, nested dicts merged key by key."""
    out = dict(base)
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out


def _cmd_info(args: argparse.Namespace) -> int:
    from .ops import info

    result = info(args.url, args.options, cache_dir=args.cache_dir)
    if args.json:
        _print_json(result.to_dict())
        return 0
    compression = ", ".join(f"{name} ({count} shards)" for name, count in result.compression.items())
    _table(
        [
            ["url", result.url],
            ["records", f"{result.records:,}"],
            ["shards", f"{result.shards:,}"],
            ["stored", f"{_human(result.stored_bytes)} ({result.stored_bytes:,} bytes)"],
            ["raw", f"{_human(result.raw_bytes)} ({result.raw_bytes:,} bytes)"],
            ["compression", compression or "-"],
            ["meta", json.dumps(result.meta, sort_keys=True)],
            ["fingerprint", result.fingerprint],
            ["cached", f"{result.cached_shards} of {result.shards} shards, "
                       f"{_human(result.cached_bytes)} (in {result.cache_dir})"],
        ]
    )
    return 0


def _cmd_ls(args: argparse.Namespace) -> int:
    from .ops import list_shards

    shards = list_shards(args.url, args.options, cache_dir=args.cache_dir)
    if args.json:
        _print_json([s.to_dict() for s in shards])
        return 0
    _table(
        [[s.uri, str(s.records), str(s.stored_size), s.checksum, "cached" if s.cached else "-"] for s in shards],
        right=(1, 2),
    )
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .ops import verify, verify_cache

    if args.remove_bad and not args.cache:
        raise _UsageError("--remove-bad only applies with --cache")
    if args.cache:
        report = _run_with_progress(
            args, "verify cache",
            lambda progress: verify_cache(
                args.url, args.options, cache_dir=args.cache_dir, workers=args.workers,
                remove_bad=args.remove_bad, progress=progress,
            ),
        )
    else:
        report = _run_with_progress(
            args, "verify",
            lambda progress: verify(args.url, args.options, workers=args.workers, progress=progress),
        )
    if args.json:
        _print_json(report.to_dict())
    else:
        for bad in report.bad:
            print(f"BAD {bad.uri}: {bad.problem}")
        where = "cached copies" if args.cache else "shards"
        skipped = f" ({report.not_cached} not cached, skipped)" if args.cache else ""
        if report.ok:
            print(f"ok: {report.checked} {where} verified, {_human(report.bytes)}{skipped}")
    if report.ok:
        return 0
    if args.cache:
        hint = "" if args.remove_bad else "; rerun with --remove-bad to drop them from the cache"
        raise _Failure(f"{len(report.bad)} of {report.checked} cached copies are bad{hint}")
    raise _Failure(f"{len(report.bad)} of {report.checked} shards are bad; "
                   "restore them from a good copy of the dataset")


def _cmd_warm(args: argparse.Namespace) -> int:
    from .ops import warm

    if args.rank is not None and args.world_size is None:
        raise _UsageError("--rank needs --world-size")
    if args.world_size is not None and args.rank is None:
        raise _UsageError("--world-size needs --rank (or use --all)")
    if args.rank is None and (args.seed is not None or args.epoch is not None):
        raise _UsageError("--seed and --epoch apply with --rank and --world-size")
    if args.rank is not None and args.rank[-1] >= args.world_size:
        raise _UsageError(f"--rank {args.rank[-1]} is not below --world-size {args.world_size}")
    report = _run_with_progress(
        args, "warm",
        lambda progress: warm(
            args.url, args.options, cache_dir=args.cache_dir, limit=args.limit, ranks=args.rank,
            world_size=args.world_size or 1, seed=args.seed or 0, epoch=args.epoch or 0,
            workers=args.workers, progress=progress,
        ),
    )
    line = (
        f"warmed {report.cache_dir}: {report.shards_fetched} shards fetched "
        f"({_human(report.bytes_downloaded)}), {report.shards_cached} already cached"
    )
    if report.shards_over_limit:
        line += f", {report.shards_over_limit} left out: they do not fit under --limit"
    print(line)
    return 0


def _cmd_pack(args: argparse.Namespace) -> int:
    from .ops import pack

    compression = None if args.compression == "none" else args.compression
    manifest = _run_with_progress(
        args, "pack",
        lambda progress: pack(
            args.inputs, args.url, args.options, format=args.format, shard_bytes=args.shard_bytes,
            compression=compression, meta=args.meta, mode=args.mode,
            progress=progress,
        ),
    )
    stored = int(sum(manifest.shards.stored_size.tolist()))
    print(f"packed {manifest.records} records into {len(manifest.shards)} shards "
          f"({_human(stored)} stored) at {args.url}")
    return 0


def _cmd_cp(args: argparse.Namespace) -> int:
    from .ops import copy

    report = _run_with_progress(
        args, "cp",
        lambda progress: copy(
            args.src, args.dst,
            src_options=_merged(args.options, args.src_options),
            dst_options=_merged(args.options, args.dst_options),
            overwrite=args.overwrite, workers=args.workers, progress=progress,
        ),
    )
    if not report.published:
        print(f"{report.dst} already holds this dataset ({report.shards} shards); nothing copied")
    else:
        print(f"copied {report.src} to {report.dst}: {report.copied} shards copied "
              f"({_human(report.bytes_copied)}), {report.kept} already there and verified")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from .ops import merge

    report = _run_with_progress(
        args, "merge",
        lambda progress: merge(
            args.sources, args.dest, args.options, meta=args.meta, overwrite=args.overwrite,
            workers=args.workers, progress=progress,
        ),
    )
    if not report.published:
        print(f"{report.dst} already holds this merged dataset ({report.shards} shards); nothing changed")
    else:
        print(f"merged {report.sources} datasets into {report.dst}: {report.records} records in "
              f"{report.shards} shards ({report.in_place} in place, {report.copied} copied, "
              f"{report.kept} already copied)")
    return 0


def _cmd_plan(args: argparse.Namespace) -> int:
    from .ops import plan_summary

    summary = plan_summary(
        args.url, args.options, seed=args.seed, epoch=args.epoch, world_size=args.world_size,
        window=args.window, lookahead=args.lookahead, cache_limit=args.cache_limit,
    )
    if args.json:
        _print_json(summary.to_dict())
    else:
        print(f"{summary.url}: {summary.records} records in {summary.shards} shards, "
              f"{_human(summary.stored_bytes)} stored; seed {summary.seed}, epoch {summary.epoch}, "
              f"world size {summary.world_size}, window {summary.window}, lookahead {summary.lookahead}")
        rows = [["rank", "records", "shards", "download", "peak cache", "first shards"]]
        for r in summary.ranks:
            rows.append([str(r.rank), str(r.records), str(r.shards), _human(r.download_bytes),
                         _human(r.peak_cache_bytes), ", ".join(r.first_shards)])
        _table(rows, right=(0, 1, 2))
        print(f"cache limit needed by ds.iter: {_human(summary.required_cache_limit)} "
              f"({summary.required_cache_limit} bytes = largest shard {summary.largest_shard_bytes} "
              f"x (window {summary.window} + lookahead {summary.lookahead}))")
    if summary.limit_ok is False:
        raise _Failure(
            f"--cache-limit {summary.cache_limit} bytes is too small: ds.iter needs at least "
            f"{summary.required_cache_limit} bytes; raise the limit or lower --window/--lookahead"
        )
    return 0


def _cmd_cache(args: argparse.Namespace) -> int:
    from .ops import cache_clear, cache_gc, cache_list, cache_usage

    if args.refresh and args.action != "gc":
        raise _UsageError("--refresh only applies to gc")
    if args.action == "du":
        usage = cache_usage(args.cache_dir)
        if args.json:
            _print_json(usage.to_dict())
            return 0
        rows = [["cached", "shards", "last opened", "dataset"]]
        for d in usage.datasets:
            rows.append([_human(d.cached_bytes), f"{d.cached_shards}/{d.shards}", _when(d.last_opened), d.url])
        if usage.unattributed_shards:
            rows.append([_human(usage.unattributed_bytes), str(usage.unattributed_shards), "-",
                         "(no dataset noted: removed by roxxel cache gc)"])
        rows.append([_human(usage.bytes), str(usage.shards), "-", f"total in {usage.cache_dir}"])
        _table(rows, right=(0, 1))
    elif args.action == "ls":
        shards = cache_list(args.cache_dir)
        if args.json:
            _print_json([s.to_dict() for s in shards])
            return 0
        _table([[s.checksum, str(s.size), _when(s.last_used), ", ".join(s.datasets) or "-"] for s in shards],
               right=(1,))
    else:
        if args.action == "gc":
            report = cache_gc(args.cache_dir, refresh=args.refresh, storage_options=args.options)
        else:
            report = cache_clear(args.cache_dir)
        if args.json:
            _print_json(report.to_dict())
            return 0
        line = (
            f"{args.action} {report.cache_dir}: removed {report.shards_removed} shards "
            f"({_human(report.bytes_freed)}), {report.temp_removed} stale temp files and "
            f"{report.notes_dropped} dataset notes; kept {report.shards_kept} shards"
        )
        print(line + (f" ({report.shards_in_use} in use by a process)" if report.shards_in_use else ""))
    return 0


# ------------------------------------------------------------------------------ parser

_EXAMPLES = {
    "info": "roxxel info s3://my-bucket/wiki",
    "ls": "roxxel ls gs://my-bucket/wiki --json",
    "verify": "roxxel verify s3://my-bucket/wiki --workers 8",
    "warm": "roxxel warm s3://my-bucket/wiki --rank 0-7 --world-size 64 --seed 42 --epoch 0 --limit 500GB",
    "pack": "roxxel pack corpus.jsonl s3://my-bucket/corpus --format jsonl --compression zstd",
    "cp": "roxxel cp s3://my-bucket/wiki gs://other-bucket/wiki",
    "merge": "roxxel merge s3://my-bucket/wiki/part-0 s3://my-bucket/wiki/part-1 s3://my-bucket/wiki",
    "cache": "roxxel cache du --cache-dir /nvme/roxxel",
    "plan": "roxxel plan s3://my-bucket/wiki --seed 42 --epoch 0 --world-size 8 --cache-limit 100GB",
}


class _UsageError(Exception):
    """A combination of arguments argparse cannot check; exit status 2."""


class _Failure(Exception):
    """The command ran and failed (for instance, bad shards); exit status 1."""


def _common_parsers() -> dict[str, argparse.ArgumentParser]:
    logs = argparse.ArgumentParser(add_help=False)
    group = logs.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="more log output (-vv: also the cloud libraries'); tracebacks on errors")
    group.add_argument("-q", "--quiet", action="count", default=0,
                       help="no progress, warnings and errors only (-qq: errors only)")
    storage = argparse.ArgumentParser(add_help=False)
    storage.add_argument("-o", "--option", dest="options", metavar="KEY=VALUE", action="append",
                         type=_storage_option, default=[],
                         help="a storage option for fsspec (repeatable); the value is parsed as JSON "
                              "if it can be, else taken as a string; nested keys with dots, e.g. "
                              "-o client_kwargs.region_name=us-east-1. Credentials also come from "
                              "the usual environment variables")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for scripts")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache-dir", metavar="DIR", default=None,
                       help="the node cache (default: $ROXXEL_CACHE_DIR or ~/.cache/roxxel)")
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=_positive, default=4, metavar="N",
                         help="shards transferred in parallel (default: 4)")
    return {"logs": logs, "storage": storage, "json": as_json, "cache": cache, "workers": workers}


def _add(sub: Any, name: str, summary: str, description: str, parents: list[argparse.ArgumentParser],
         handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name, help=summary, description=f"{summary}\n\n{description}".strip(),
        epilog=f"example:\n  {_EXAMPLES[name]}", parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, subparser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``roxxel`` command."""
    parser = argparse.ArgumentParser(
        prog="roxxel",
        description="Manage roxxel datasets (ROXXEL01 shards plus a JSON manifest, on S3, GCS, "
        "local disk or memory) and node caches.",
        epilog="Run 'roxxel COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--version", action="version", version=f"roxxel {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_parsers()
    _add_inspect_commands(sub, common)
    _add_transfer_commands(sub, common)
    _add_cache_command(sub, common)
    _add_plan_command(sub, common)
    return parser


def _add_inspect_commands(sub: Any, c: dict[str, argparse.ArgumentParser]) -> None:
    """info, ls and verify: reading a dataset."""
    logs, storage, as_json, cache, workers = c["logs"], c["storage"], c["json"], c["cache"], c["workers"]

    p = _add(sub, "info", "Summarize a dataset and how much of it is in the local cache.",
             "Prints records, shards, stored and raw bytes, compression, meta and the manifest\n"
             "fingerprint. Reads the manifest only.", [storage, cache, as_json, logs], _cmd_info)
    p.add_argument("url", help="the dataset URL (its prefix or its manifest.json)")

    p = _add(sub, "ls", "List a dataset's shards, one per line.",
             "Columns: URI, records, stored size in bytes, checksum, and 'cached' or '-'.",
             [storage, cache, as_json, logs], _cmd_ls)
    p.add_argument("url", help="the dataset URL")

    p = _add(sub, "verify", "Check every shard's size, checksum and footer.",
             "Downloads each shard (streamed: memory stays bounded, nothing is written to disk)\n"
             "and checks its size, checksum, raw size, offset table and footer against the\n"
             "manifest. With --cache, re-hashes the copies in the node cache instead.\n"
             "Exit status 1 and one 'BAD <uri>: <problem>' line per bad shard on failure.",
             [storage, cache, workers, as_json, logs], _cmd_verify)
    p.add_argument("url", help="the dataset URL")
    p.add_argument("--cache", action="store_true", help="check the cached copies instead of the store")
    p.add_argument("--remove-bad", action="store_true",
                   help="with --cache: remove bad cached copies, so they are downloaded again")


def _add_transfer_commands(sub: Any, c: dict[str, argparse.ArgumentParser]) -> None:
    """warm, pack, cp and merge: moving bytes."""
    logs, storage, cache, workers = c["logs"], c["storage"], c["cache"], c["workers"]

    p = _add(sub, "warm", "Fill the node cache with the shards a job will read first.",
             "With --rank and --world-size: the shards of those ranks' plans for --seed and\n"
             "--epoch (as ds.iter plans them), in the order they are first read; --rank takes\n"
             "a list or range (0-7) for the ranks of one node. Without --rank (or with --all):\n"
             "every shard. Skips cached shards; idempotent; safe while training processes\n"
             "read the same cache. With --limit, fetches only what fits under it, in order.",
             [storage, cache, workers, logs], _cmd_warm)
    p.add_argument("url", help="the dataset URL")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--rank", type=_ranks, metavar="R", help="rank(s): 3, 0,1,2 or 0-7")
    which.add_argument("--all", action="store_true", help="every shard, in stored order (the default)")
    p.add_argument("--world-size", type=_positive, metavar="W", help="number of ranks")
    p.add_argument("--seed", type=_non_negative, metavar="S", help="the stream seed (default 0)")
    p.add_argument("--epoch", type=_non_negative, metavar="E", help="the epoch (default 0)")
    p.add_argument("--limit", type=_size, metavar="BYTES", help="the cache limit, e.g. 500GB or 1.5TiB")

    p = _add(sub, "pack", "Pack local files into a dataset and publish it.",
             "Formats: files (each file one record; directories walked in sorted order),\n"
             "jsonl (each non-blank line one record; invalid JSON is an error naming the\n"
             "line), npy (each row of .npy arrays one record; dtype and row shape go to meta),\n"
             "rox (the records of .rox shards of the original Roxxel library). The manifest\n"
             "is published last: an error publishes nothing.",
             [storage, logs], _cmd_pack)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files or directories")
    p.add_argument("url", help="the dataset URL to create")
    p.add_argument("--format", choices=("files", "jsonl", "npy", "rox"), default="files",
                   help="how inputs become records (default: files)")
    p.add_argument("--shard-bytes", type=_size, default="64MiB", metavar="BYTES",
                   help="target shard size (default: 64MiB)")
    p.add_argument("--compression", choices=("none", "zstd"), default="none", help="shard compression")
    p.add_argument("--mode", choices=("create", "overwrite", "append"), default="create",
                   help="create (default: refuse an existing dataset), overwrite, or append")
    p.add_argument("--meta", metavar="KEY=VALUE", action="append", type=_storage_option, default=None,
                   help="a meta entry for the manifest (repeatable; JSON values, dotted keys)")

    p = _add(sub, "cp", "Copy a dataset between stores, verified and resumable.",
             "Copies every shard (checked against its checksum before it is uploaded, and read\n"
             "back after), then publishes the manifest last. Rerun after an interruption:\n"
             "shards already at the destination are re-hashed and kept. -o applies to both\n"
             "stores; --src-option and --dst-option to one side.",
             [storage, workers, logs], _cmd_cp)
    p.add_argument("src", metavar="SRC_URL", help="the dataset to copy")
    p.add_argument("dst", metavar="DST_URL", help="where to copy it")
    p.add_argument("--src-option", dest="src_options", metavar="KEY=VALUE", action="append",
                   type=_storage_option, default=[], help="a storage option for the source only")
    p.add_argument("--dst-option", dest="dst_options", metavar="KEY=VALUE", action="append",
                   type=_storage_option, default=[], help="a storage option for the destination only")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset at DST_URL")

    p = _add(sub, "merge", "Combine datasets written in parallel into one manifest.",
             "Sources at or below DEST_URL stay where they are (the manifest refers to them);\n"
             "other sources' shards are copied into DEST_URL/shards/. The same shard object\n"
             "listed twice is kept once; two objects with the same checksum (duplicates) or one\n"
             "object with two checksums (conflict) are errors. Idempotent.",
             [storage, workers, logs], _cmd_merge)
    p.add_argument("sources", nargs="+", metavar="URL", help="the datasets to merge, in order")
    p.add_argument("dest", metavar="DEST_URL", help="where to publish the merged manifest")
    p.add_argument("--meta", metavar="KEY=VALUE", action="append", type=_storage_option, default=None,
                   help="the merged meta (default: the sources' meta, which must agree)")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset at DEST_URL")


def _add_cache_command(sub: Any, c: dict[str, argparse.ArgumentParser]) -> None:
    """cache du|ls|gc|clear."""
    logs, storage, as_json, cache = c["logs"], c["storage"], c["json"], c["cache"]

    p = _add(sub, "cache", "Inspect and clean the node cache.",
             "du: bytes per dataset that used the cache. ls: every cached shard.\n"
             "gc: remove temp files of dead processes and shards no noted dataset needs\n"
             "(--refresh re-reads each dataset's manifest first). clear: remove every shard.\n"
             "Shards in use by a process are never removed.",
             [storage, cache, as_json, logs], _cmd_cache)
    p.add_argument("action", choices=("du", "ls", "gc", "clear"), help="what to do")
    p.add_argument("--refresh", action="store_true",
                   help="gc: re-read the manifests of the noted datasets first (needs their stores)")


def _add_plan_command(sub: Any, c: dict[str, argparse.ArgumentParser]) -> None:
    """plan: a dry run of an epoch."""
    logs, storage, as_json = c["logs"], c["storage"], c["json"]

    p = _add(sub, "plan", "Dry-run an epoch: what each rank fetches, downloads and caches.",
             "For each rank: records, shards, the first shards in fetch order, the stored bytes\n"
             "it downloads and the raw bytes its cache holds at most. With --cache-limit,\n"
             "exit status 1 if the limit is below what ds.iter requires.",
             [storage, as_json, logs], _cmd_plan)
    p.add_argument("url", help="the dataset URL")
    p.add_argument("--seed", type=_non_negative, default=0, metavar="S", help="the stream seed (default 0)")
    p.add_argument("--epoch", type=_non_negative, default=0, metavar="E", help="the epoch (default 0)")
    p.add_argument("--world-size", type=_positive, required=True, metavar="W", help="number of ranks")
    p.add_argument("--cache-limit", type=_size, metavar="BYTES", help="the cache limit to check")
    p.add_argument("--window", type=_positive, default=16, metavar="N", help="shuffle window (default 16)")
    p.add_argument("--lookahead", type=_non_negative, default=4, metavar="N",
                   help="prefetched shards (default 4)")


# -------------------------------------------------------------------------------- main

_EXISTS_HINTS = {
    "pack": "pass --mode overwrite to replace it or --mode append to add to it",
    "cp": "pass --overwrite to replace it",
    "merge": "pass --overwrite to replace it",
}


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _hint(exc: BaseException, command: str) -> str:
    if isinstance(exc, DatasetExistsError):
        return _EXISTS_HINTS.get(command, "")
    if isinstance(exc, NotFoundError):
        return "check the URL, and the storage options (-o) or credentials for that store"
    if isinstance(exc, (IntegrityError, ShardFormatError)) and command != "verify":
        return "run 'roxxel verify URL' to list the bad shards"
    return ""


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _configure_logging(args.verbose, args.quiet)
    try:
        for attr in ("options", "src_options", "dst_options", "meta"):
            pairs = getattr(args, attr, None)
            if pairs is not None:
                try:
                    setattr(args, attr, parse_storage_options(pairs))
                except ValueError as exc:
                    raise _UsageError(str(exc)) from None
        return args.handler(args)
    except _UsageError as exc:
        args.subparser.error(str(exc))  # exits with status 2
        return 2
    except _Failure as exc:
        print(f"roxxel: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("roxxel: interrupted", file=sys.stderr)
        return 130
    except (RoxxelError, OSError, ValueError) as exc:
        log.debug("traceback", exc_info=True)
        hint = _hint(exc, args.command)
        print(f"roxxel: error: {_one_line(exc)}" + (f"; {hint}" if hint else ""), file=sys.stderr)
        return 1
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        log.debug("traceback", exc_info=True)
        print(f"roxxel: error: a storage option is not accepted by this store: {_one_line(exc)}; "
              "check the -o options", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
