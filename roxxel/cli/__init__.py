"""The ``roxxel`` console command for operators.

Each subcommand parses its arguments, calls one function of :mod:`roxxel.ops`, and
prints the result; all the work (and its tests) lives in the library. Results go to
stdout (``--json`` for scripts), logs and progress to stderr. Exit status: 0 success,
1 failure (one line saying what is wrong and what to do), 2 usage error, 141 when the
reader of stdout went away (``roxxel ls URL | head``), silently, as git and coreutils.

Modules: :mod:`.parser` (commands, options, help), :mod:`.commands` (one handler per
command), :mod:`.options` (argument types), :mod:`.progress` and :mod:`.logs` (stderr),
:mod:`.formatting` (stdout), :mod:`.errors` (exit statuses and one-line errors).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

from ..errors import RoxxelError
from .errors import Failure, UsageError, hint, one_line, print_error
from .logs import configure_logging
from .options import resolve_storage_options
from .parser import build_parser

__all__ = ["main"]

log = logging.getLogger(__name__)

# git and coreutils are killed by SIGPIPE when their reader goes away, which a shell
# reports as 128 + 13. Python ignores SIGPIPE, so the same status is returned instead
# (and the command's cleanup still runs).
EXIT_BROKEN_PIPE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 failure, 2 usage, 141
    stdout closed by its reader)."""
    try:
        try:
            return _run(argv)
        finally:  # (also after --help): a reader that went away shows here, not at exit
            sys.stdout.flush()
    except BrokenPipeError:
        return _reader_gone()


def _reader_gone() -> int:
    """Exit quietly after the reader of stdout closed it (``roxxel info URL | head``)."""
    # Output still buffered would fail again when the interpreter flushes it at exit.
    try:
        stdout = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real file: nothing to silence
        return EXIT_BROKEN_PIPE
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, stdout)
    finally:
        os.close(devnull)
    return EXIT_BROKEN_PIPE


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    configure_logging(args.verbose, args.quiet)
    try:
        resolve_storage_options(args)
        return args.handler(args)
    except UsageError as exc:
        args.subparser.error(str(exc))  # exits with status 2
        return 2
    except Failure as exc:
        return print_error(one_line(exc))
    except KeyboardInterrupt:
        print("roxxel: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        raise  # the reader of stdout went away: see main
    except (RoxxelError, OSError, ValueError) as exc:
        log.debug("traceback", exc_info=True)
        return print_error(one_line(exc), hint(exc, args.command))
    except TypeError as exc:
        if "unexpected keyword argument" not in str(exc):
            raise
        log.debug("traceback", exc_info=True)
        return print_error(f"a storage option is not accepted by this store: {one_line(exc)}",
                           "check the -o options")

