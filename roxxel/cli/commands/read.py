"""``roxxel info``, ``ls``, ``verify`` and ``prune``: reading (and tidying) a dataset."""

from __future__ import annotations

import argparse
import json

from ..errors import Failure, UsageError
from ..formatting import human, print_json, table
from ..progress import run_with_progress

__all__ = ["cmd_info", "cmd_ls", "cmd_prune", "cmd_verify"]


def cmd_info(args: argparse.Namespace) -> int:
    from ...ops import info

    result = info(args.url, args.options, cache_dir=args.cache_dir)
    if args.json:
        print_json(result.to_dict())
        return 0
    compression = ", ".join(f"{name} ({count} shards)" for name, count in result.compression.items())
    table(
        [
            ["url", result.url],
            ["records", f"{result.records:,}"],
            ["shards", f"{result.shards:,}"],
            ["stored", f"{human(result.stored_bytes)} ({result.stored_bytes:,} bytes)"],
            ["raw", f"{human(result.raw_bytes)} ({result.raw_bytes:,} bytes)"],
            ["compression", compression or "-"],
            ["meta", json.dumps(result.meta, sort_keys=True)],
            ["fingerprint", result.fingerprint],
            ["cached", f"{result.cached_shards} of {result.shards} shards, "
                       f"{human(result.cached_bytes)} (in {result.cache_dir})"],
        ]
    )
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from ...ops import list_shards

    shards = list_shards(args.url, args.options, cache_dir=args.cache_dir)
    if args.json:
        print_json([s.to_dict() for s in shards])
        return 0
    table(
        [[s.uri, str(s.records), str(s.stored_size), s.checksum, "cached" if s.cached else "-"] for s in shards],
        right=(1, 2),
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ...ops import verify, verify_cache

    if args.remove_bad and not args.cache:
        raise UsageError("--remove-bad only applies with --cache")
    if args.cache:
        report = run_with_progress(
            "verify cache", args.quiet, verify_cache, args.url, args.options,
            cache_dir=args.cache_dir, workers=args.workers, remove_bad=args.remove_bad,
            trusted_keys=args.trusted_keys,
        )
    else:
        report = run_with_progress("verify", args.quiet, verify, args.url, args.options, workers=args.workers,
                                   trusted_keys=args.trusted_keys)
    if args.json:
        print_json(report.to_dict())
    else:
        if report.signed_by is not None:
            print(f"signature: ok, the manifest is signed by trusted key {report.signed_by}")
        for bad in report.bad:
            print(f"BAD {bad.uri}: {bad.problem}")
        where = "cached copies" if args.cache else "shards"
        skipped = f" ({report.not_cached} not cached, skipped)" if args.cache else ""
        if report.ok:
            print(f"ok: {report.checked} {where} verified, {human(report.bytes)}{skipped}")
    if report.ok:
        return 0
    if args.cache:
        hint = "" if args.remove_bad else "; rerun with --remove-bad to drop them from the cache"
        raise Failure(f"{len(report.bad)} of {report.checked} cached copies are bad{hint}")
    raise Failure(f"{len(report.bad)} of {report.checked} shards are bad; "
                  "restore them from a good copy of the dataset")


def cmd_prune(args: argparse.Namespace) -> int:
    from ...ops import prune
    from ...ops.prune import COLLECTABLE, FAILED

    report = run_with_progress("prune", args.quiet, prune, args.url, args.options,
                               older_than=args.older_than, delete=args.delete)
    if args.json:
        print_json(report.to_dict())
    else:
        rows = [[s.key, str(s.size), "?" if s.age_seconds is None else _age(s.age_seconds), s.status]
                for s in report.unreferenced]
        if rows:
            table(rows, right=(1, 2))
        total = sum(s.size for s in report.unreferenced)
        print(f"{len(report.unreferenced)} unreferenced shard objects ({human(total)}) under {report.url}; "
              f"{report.referenced} referenced by {len(report.manifests)} manifest(s)")
        for status, entry in report.to_dict()["by_status"].items():
            print(f"  {status}: {entry['shards']} ({human(entry['bytes'])})")
        if not report.delete and report.having(COLLECTABLE):
            print(f"unreferenced for over {_age(report.older_than)}: pass --delete to delete them")
    if not report.ok:
        raise Failure(f"{len(report.having(FAILED))} shard objects could not be deleted; "
                      "see the errors above and run prune again")
    return 0


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"
