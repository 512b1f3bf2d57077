"""``roxxel bench`` (this node against a dataset) and ``roxxel trace-merge`` (one view
of the trace files of several processes)."""

from __future__ import annotations

import argparse

from ..formatting import human, print_json
from ..progress import run_with_progress

__all__ = ["cmd_bench", "cmd_trace_merge"]


def cmd_bench(args: argparse.Namespace) -> int:
    from ... import trace
    from ...ops.bench import bench

    if args.trace:
        trace.start(args.trace)
    try:
        report = run_with_progress(
            "bench", args.quiet, bench, args.url, args.options, max_bytes=args.max_bytes,
            part_size=args.part_size, parallel=args.parallel, scratch_dir=args.scratch_dir,
        )
    finally:
        written = trace.stop() if args.trace else None
    if args.json:
        out = report.to_dict()
        if written:
            out["trace"] = written
        print_json(out)
        return 0
    link, cold, warm = report.link, report.cold, report.warm
    print(f"{report.url}: {report.shards} shards, {human(report.stored_bytes)} stored; "
          f"at most {human(report.max_bytes)} read per measurement")
    print(f"link  {link.mb_per_s:8.1f} MB/s  {human(link.bytes)} in {link.seconds:.2f} s: {link.parts} parts of "
          f"{human(link.part_size)}, {link.parallel} in flight, {link.method}; first byte after "
          f"{link.first_byte_seconds * 1000:.0f} ms, {link.per_connection_mb_per_s:.1f} MB/s per connection")
    for result, ratio in ((cold, report.cold_ratio), (warm, report.warm_ratio)):
        line = (f"{result.cache:5s} {result.mb_per_s:8.1f} MB/s  = {ratio:.0%} of the link; open "
                f"{result.open_seconds * 1000:.0f} ms, first record after {result.first_record_seconds * 1000:.0f} ms, "
                f"{result.records} records ({human(result.record_bytes)}) in {result.seconds:.2f} s"
                + ("" if result.whole_epoch else ", stopped at --max-bytes"))
        if result.downloaded_bytes:
            line += (f"; downloaded {human(result.downloaded_bytes)} at {result.download_mb_per_s:.1f} MB/s "
                     f"= {result.download_mb_per_s / link.mb_per_s if link.mb_per_s else 0:.0%} of the link")
        print(line)
    if report.advice:
        print("what to change:")
        for item in report.advice:
            print(f"  - {item}")
    if written:
        print(f"trace: {written}")
    return 0


def cmd_trace_merge(args: argparse.Namespace) -> int:
    from ... import trace

    counts = trace.merge(args.out, args.inputs)
    print(f"wrote {args.out}: {counts['events']} events from {counts['files']} files")
    return 0
