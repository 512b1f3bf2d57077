"""``roxxel pack``: local files into a published dataset."""

from __future__ import annotations

import argparse

from ..formatting import human
from ..progress import run_with_progress

__all__ = ["cmd_pack"]


def cmd_pack(args: argparse.Namespace) -> int:
    from ...ops import pack

    manifest = run_with_progress(
        "pack", args.quiet, pack, args.inputs, args.url, args.options, format=args.format,
        shard_bytes=args.shard_bytes, compression=None if args.compression == "none" else args.compression,
        meta=args.meta, mode=args.mode,
    )
    stored = int(sum(manifest.shards.stored_size.tolist()))
    print(f"packed {manifest.records} records into {len(manifest.shards)} shards "
          f"({human(stored)} stored) at {args.url}")
    return 0
