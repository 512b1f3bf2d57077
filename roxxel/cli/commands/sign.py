"""``roxxel sign``: sign a published dataset's manifest."""

from __future__ import annotations

import argparse

from ..formatting import print_json

__all__ = ["cmd_sign"]


def cmd_sign(args: argparse.Namespace) -> int:
    from ...ops import sign

    report = sign(args.url, args.key, args.options)
    if args.json:
        print_json(report.to_dict())
    else:
        print(f"signed {report.url}: manifest {report.manifest}, key {report.key}; "
              f"signature at {report.signature_url}")
    return 0
