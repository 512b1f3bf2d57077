"""``roxxel pack``: local files into a published dataset."""

from __future__ import annotations

import argparse
from typing import Any

from ..formatting import human, print_json
from ..options import merged
from ..progress import run_with_progress

__all__ = ["cmd_pack"]


def cmd_pack(args: argparse.Namespace) -> int:
    from ...manifest.redaction import redact
    from ...ops import pack

    manifest = run_with_progress(
        "pack", args.quiet, pack, args.inputs, args.url, args.options, format=args.format,
        shard_bytes=args.shard_bytes, compression=None if args.compression == "none" else args.compression,
        meta=args.meta, mode=args.mode, single_writer=args.single_writer,
        workers=args.workers, scheduler=args.scheduler, **_import_arguments(args),
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


def _import_arguments(args: argparse.Namespace) -> dict[str, Any]:
    """pack's source_options and import_options from the import flags that were given."""
    given = {"field": args.field, "decode": args.decode, "rows": args.rows,
             "per_member": args.per_member or None}
    options = {key: value for key, value in given.items() if value is not None}
    out: dict[str, Any] = {}
    if options:
        out["import_options"] = options
    if args.source_options is not None:
        out["source_options"] = merged(args.options, args.source_options)
    return out
