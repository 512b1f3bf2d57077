"""``roxxel cache du|ls|gc|clear|verify``: inspect, clean and check the node cache."""

from __future__ import annotations

import argparse

from ..errors import Failure, UsageError
from ..formatting import human, print_json, table, when
from ..progress import run_with_progress

__all__ = ["cmd_cache"]


def cmd_cache(args: argparse.Namespace) -> int:
    if args.refresh and args.action != "gc":
        raise UsageError("--refresh only applies to gc")
    if args.action == "du":
        _du(args)
    elif args.action == "ls":
        _ls(args)
    elif args.action == "verify":
        _verify(args)
    else:
        _clean(args)
    return 0


def _du(args: argparse.Namespace) -> None:
    from ...ops import cache_usage

    usage = cache_usage(args.cache_dir)
    if args.json:
        print_json(usage.to_dict())
        return
    rows = [["cached", "shards", "last opened", "dataset"]]
    for d in usage.datasets:
        rows.append([human(d.cached_bytes), f"{d.cached_shards}/{d.shards}", when(d.last_opened), d.url])
    if usage.unattributed_shards:
        rows.append([human(usage.unattributed_bytes), str(usage.unattributed_shards), "-",
                     "(no dataset noted: removed by roxxel cache gc)"])
    rows.append([human(usage.bytes), str(usage.shards), "-", f"total in {usage.cache_dir}"])
    table(rows, right=(0, 1))


def _ls(args: argparse.Namespace) -> None:
    from ...ops import cache_list

    shards = cache_list(args.cache_dir)
    if args.json:
        print_json([s.to_dict() for s in shards])
        return
    table([[s.checksum, str(s.size), when(s.last_used), ", ".join(s.datasets) or "-"] for s in shards],
          right=(1,))


def _clean(args: argparse.Namespace) -> None:
    """gc or clear."""
    from ...ops import cache_clear, cache_gc

    if args.action == "gc":
        report = cache_gc(args.cache_dir, refresh=args.refresh, storage_options=args.options)
    else:
        report = cache_clear(args.cache_dir)
    if args.json:
        print_json(report.to_dict())
        return
    line = (
        f"{args.action} {report.cache_dir}: removed {report.shards_removed} shards "
        f"({human(report.bytes_freed)}), {report.temp_removed} stale temp files and "
        f"{report.notes_dropped} dataset notes; kept {report.shards_kept} shards"
    )
    print(line + (f" ({report.shards_in_use} in use by a process)" if report.shards_in_use else ""))


def _verify(args: argparse.Namespace) -> None:
    """Re-hash every cached file; remove the damaged ones; exit status 1 if there were any."""
    from ...ops import cache_verify

    report = run_with_progress("cache verify", args.quiet, cache_verify, args.cache_dir)
    if args.json:
        print_json(report.to_dict())
    else:
        for bad in report.damaged:
            print(f"BAD {bad.path}: {bad.problem}; removed")
        if report.ok:
            print(f"ok: {report.checked} cached shards verified, {human(report.bytes)} in {report.cache_dir}")
    if not report.ok:
        raise Failure(f"{len(report.damaged)} of {report.checked} cached shards were damaged and were "
                      "removed; they will be downloaded again when read")
