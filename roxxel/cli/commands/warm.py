"""``roxxel warm``: fill the node cache in plan order."""

from __future__ import annotations

import argparse

from ..errors import UsageError
from ..formatting import human, print_json
from ..progress import run_with_progress

__all__ = ["cmd_warm"]


def _check_ranks(args: argparse.Namespace) -> None:
    if args.rank is not None and args.world_size is None:
        raise UsageError("--rank needs --world-size")
    if args.world_size is not None and args.rank is None:
        raise UsageError("--world-size needs --rank (or use --all)")
    if args.rank is None and (args.seed is not None or args.epoch is not None):
        raise UsageError("--seed and --epoch apply with --rank and --world-size")
    if args.rank is not None and args.rank[-1] >= args.world_size:
        raise UsageError(f"--rank {args.rank[-1]} is not below --world-size {args.world_size}")


def cmd_warm(args: argparse.Namespace) -> int:
    from ...ops import warm

    _check_ranks(args)
    report = run_with_progress(
        "warm", args.quiet, warm, args.url, args.options, cache_dir=args.cache_dir, limit=args.limit,
        ranks=args.rank, world_size=args.world_size or 1, seed=args.seed, epoch=args.epoch or 0,
        workers=args.workers,
    )
    if args.json:
        print_json(report.to_dict())
        return 0
    line = (
        f"warmed {report.cache_dir}: {report.shards_fetched} shards fetched "
        f"({human(report.bytes_downloaded)}), {report.shards_cached} already cached"
    )
    if report.shards_over_limit:
        line += f", {report.shards_over_limit} left out: they do not fit under --limit"
    print(line)
    return 0
