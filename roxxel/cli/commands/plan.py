"""``roxxel plan``: a dry run of an epoch for every rank."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from ..errors import Failure
from ..formatting import human, print_json, table

if TYPE_CHECKING:
    from ...ops import PlanSummary

__all__ = ["cmd_plan"]


def cmd_plan(args: argparse.Namespace) -> int:
    from ...ops import plan_summary
    from ...read.mixspec import is_spec_location

    if is_spec_location(args.url):
        return _plan_mixture(args)
    summary = plan_summary(
        args.url, args.options, seed=0 if args.seed is None else args.seed, epoch=args.epoch, world_size=args.world_size,
        window=args.window, lookahead=args.lookahead, cache_limit=args.cache_limit,
    )
    if args.json:
        print_json(summary.to_dict())
    else:
        _print_summary(summary)
    if summary.limit_ok is False:
        raise Failure(
            f"--cache-limit {summary.cache_limit} bytes is too small: ds.iter needs at least "
            f"{summary.required_cache_limit} bytes; raise the limit or lower --window/--lookahead"
        )
    return 0


def _plan_mixture(args: argparse.Namespace) -> int:
    from ...ops.mixsummary import mixture_plan_summary

    summary = mixture_plan_summary(args.url, args.options, seed=args.seed, epoch=args.epoch,
                                   world_size=args.world_size, window=args.window)
    if args.json:
        print_json(summary)
        return 0
    weights = ", ".join(f"{w:.3g} {p}" for w, p in zip(summary["weights"], summary["policies"]))
    print(f"{summary['mixture']}: seed {summary['seed']}, epoch {summary['epoch']}, world size "
          f"{summary['world_size']}; weights {weights}")
    rows = [["rank", "source", "records", "shards", "download"]]
    for r in summary["ranks"]:
        for s in r["sources"]:
            rows.append([str(r["rank"]), s["url"], str(s["records"]), str(s["shards"]), human(s["download_bytes"])])
    table(rows, right=(0, 2, 3))
    return 0


def _print_summary(summary: PlanSummary) -> None:
    print(f"{summary.url}: {summary.records} records in {summary.shards} shards, "
          f"{human(summary.stored_bytes)} stored; seed {summary.seed}, epoch {summary.epoch}, "
          f"world size {summary.world_size}, window {summary.window}, lookahead {summary.lookahead}")
    rows = [["rank", "records", "shards", "download", "peak cache", "first shards"]]
    for r in summary.ranks:
        rows.append([str(r.rank), str(r.records), str(r.shards), human(r.download_bytes),
                     human(r.peak_cache_bytes), ", ".join(r.first_shards)])
    table(rows, right=(0, 1, 2))
    print(f"cache limit needed by ds.iter: {human(summary.required_cache_limit)} "
          f"({summary.required_cache_limit} bytes = its {summary.required_shards} largest shards: "
          f"a window of up to {summary.window} shards, plus the lookahead if one is chosen)")
