"""The handlers of the ``roxxel`` subcommands: each calls one :mod:`roxxel.ops` function
and prints its result, and returns the exit status."""

from __future__ import annotations

from .bench import cmd_bench, cmd_trace_merge
from .cache import cmd_cache
from .copy import cmd_cp, cmd_merge
from .pack import cmd_pack
from .plan import cmd_plan
from .read import cmd_info, cmd_ls, cmd_prune, cmd_verify
from .sign import cmd_sign
from .warm import cmd_warm

__all__ = ["cmd_bench", "cmd_cache", "cmd_cp", "cmd_info", "cmd_ls", "cmd_merge", "cmd_pack", "cmd_plan", "cmd_prune", "cmd_sign", "cmd_trace_merge", "cmd_verify", "cmd_warm"]
