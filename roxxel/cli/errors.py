"""How a command fails: usage errors (exit status 2) and one-line failures (exit status 1)."""

from __future__ import annotations

import sys

from ..errors import (
    DatasetExistsError,
    IntegrityError,
    ManifestChangedError,
    NotFoundError,
    ShardFormatError,
    SignatureMissingError,
    UntrustedSignerError,
)
from .logs import fall_silent

__all__ = ["Failure", "UsageError", "hint", "one_line", "print_error"]


class UsageError(Exception):
    """A combination of arguments argparse cannot check; exit status 2."""


class Failure(Exception):
    """The command ran and failed (for instance, bad shards); exit status 1."""


_EXISTS_HINTS = {
    "pack": "pass --mode overwrite to replace it or --mode append to add to it",
    "cp": "pass --overwrite to replace it",
    "merge": "pass --overwrite to replace it",
}


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line (its type name when it has none)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def hint(exc: BaseException, command: str) -> str:
    """What to do about ``exc`` raised by ``command``, or ``""``."""
    if isinstance(exc, DatasetExistsError):
        return _EXISTS_HINTS.get(command, "")
    if isinstance(exc, NotFoundError):
        return "check the URL, and the storage options (-o) or credentials for that store"
    if isinstance(exc, SignatureMissingError):
        return "if you publish it, sign it: roxxel sign URL --key KEY"
    if isinstance(exc, ManifestChangedError):
        return "do not use it unless you know who changed it; its publisher can sign it again"
    if isinstance(exc, UntrustedSignerError):
        return "trust that key only if you know it is the publisher's (--trusted-key FILE)"
    if isinstance(exc, (IntegrityError, ShardFormatError)) and command != "verify":
        return "run 'roxxel verify URL' to list the bad shards"
    return ""


def print_error(message: str, what_to_do: str = "") -> int:
    """Print the one-line error on stderr, as the command's last word; returns the exit
    status, 1."""
    fall_silent()
    print(f"roxxel: error: {message}" + (f"; {what_to_do}" if what_to_do else ""), file=sys.stderr)
    return 1
