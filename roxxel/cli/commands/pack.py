"""``roxxel pack``: local files into a published dataset."""

from __future__ import annotations

import argparse

from ..formatting import human, print_json
from ..progress import run_with_progress

__all__ = ["cmd_pack"]


def cmd_pack(args: argparse.Namespace) -> int:
    from ...manifest.redaction import redact
    from ...ops import pack

    manifest = run_with_progress(
        "pack", args.quiet, pack, args.inputs, args.url, args.options, format=args.format,
        shard_bytes=args.shard_bytes, compression=None if args.compression == "none" else args.compression,
        meta=args.meta, mode=args.mode, single_writer=args.single_writer,
        workers=args.workers, scheduler=args.scheduler,
    )
    stored = int(sum(manifest.shards.stored_size.tolist()))
    if args.json:
        print_json({"url": redact(args.url), "records": manifest.records, "shards": len(manifest.shards),
                    "stored_bytes": stored, "raw_bytes": int(sum(manifest.shards.raw_size.tolist())),
                    "fingerprint": manifest.fingerprint()})
        return 0
    print(f"packed {manifest.records} records into {len(manifest.shards)} shards "
          f"({human(stored)} stored) at {redact(args.url)}")
    return 0
