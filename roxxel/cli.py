"""The ``roxxel`` console command for operators."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ._version import __version__

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="roxxel",
        description="Manage roxxel datasets: ROXXEL01 shards plus a JSON manifest, "
        "on S3, GCS, local disk or memory.",
    )
    parser.add_argument("--version", action="version", version=f"roxxel {__version__}")
    parser.add_subparsers(dest="command", metavar="COMMAND")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0  # pragma: no cover - no subcommands yet


if __name__ == "__main__":
    sys.exit(main())
