"""``roxxel cp`` and ``merge``: datasets copied between stores, or combined into one."""

from __future__ import annotations

import argparse

from ..formatting import human, print_json
from ..options import merged
from ..progress import run_with_progress

__all__ = ["cmd_cp", "cmd_merge"]


def cmd_cp(args: argparse.Namespace) -> int:
    from ...ops import copy

    report = run_with_progress(
        "cp", args.quiet, copy, args.src, args.dst,
        src_options=merged(args.options, args.src_options), dst_options=merged(args.options, args.dst_options),
        overwrite=args.overwrite, workers=args.workers, single_writer=args.single_writer,
        sign_with=args.sign_with,
    )
    if args.json:
        print_json(report.to_dict())
    elif not report.published:
        print(f"{report.dst} already holds this dataset ({report.shards} shards); nothing copied")
    else:
        print(f"copied {report.src} to {report.dst}: {report.copied} shards copied "
              f"({human(report.bytes_copied)}), {report.kept} already there and verified")
        _signature_note(report.signature, report.dst)
    return 0


def cmd_merge(args: argparse.Namespace) -> int:
    from ...ops import merge

    report = run_with_progress(
        "merge", args.quiet, merge, args.sources, args.dest, args.options,
        meta=args.meta, overwrite=args.overwrite, workers=args.workers, single_writer=args.single_writer,
        sign_with=args.sign_with,
    )
    if args.json:
        print_json(report.to_dict())
    elif not report.published:
        print(f"{report.dst} already holds this merged dataset ({report.shards} shards); nothing changed")
    else:
        print(f"merged {report.sources} datasets into {report.dst}: {report.records} records in "
              f"{report.shards} shards ({report.in_place} in place, {report.copied} copied, "
              f"{report.kept} already copied)")
        _signature_note(report.signature, report.dst)
    return 0


def _signature_note(status: str, dst: str) -> None:
    """One line on what became of signatures, when there is something to say."""
    from ...ops.sign import COPIED, RESIGN, SIGNED

    if status == COPIED:
        print("signature: copied; the manifest's bytes are unchanged, so it is still valid")
    elif status == SIGNED:
        print("signature: the new manifest is signed with the given key")
    elif status == RESIGN:
        print(f"signature: NOT SIGNED: the source was signed, but its signature does not cover this new "
              f"manifest; sign it again: roxxel sign {dst} --key KEY")
