"""Argument types: ``-o KEY=VALUE`` storage options, sizes, counts and rank lists."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

from ..cache.names import parse_size
from .errors import UsageError

__all__ = [
    "OPTION_ATTRS",
    "merged",
    "non_negative",
    "parse_storage_options",
    "positive",
    "ranks",
    "resolve_storage_options",
    "seconds",
    "size",
    "storage_option",
]

#: The ``args`` attributes that hold parsed ``KEY=VALUE`` pairs, nested by main().
OPTION_ATTRS = ("options", "src_options", "dst_options", "meta", "source_options")
_MAX_RANK = 1 << 20


def storage_option(text: str) -> tuple[tuple[str, ...], Any]:
    """``key=value`` -> (key path, value); the value is JSON if it parses, else a string."""
    key, sep, raw = text.partition("=")
    path = tuple(key.strip().split("."))
    if not sep or not all(path):
        # The argument is not echoed: a mistyped one may hold a secret.
        problem = "no '='" if not sep else "an empty key"
        raise argparse.ArgumentTypeError(
            f"expected KEY=VALUE (nested keys with dots, e.g. client_kwargs.region_name=us-east-1), "
            f"got an argument with {problem}"
        )
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return path, value


def parse_storage_options(pairs: Sequence[tuple[tuple[str, ...], Any]]) -> dict[str, Any]:
    """Nested storage options from parsed ``-o`` pairs; ValueError (naming keys, never
    values) when one key is given both a value and nested keys."""
    options: dict[str, Any] = {}
    for path, value in pairs:
        node = options
        for depth, part in enumerate(path[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ValueError(f"storage option {'.'.join(path[:depth + 1])} is given a value and nested keys")
            node = child
        if isinstance(node.get(path[-1]), dict) and not isinstance(value, dict):
            raise ValueError(f"storage option {'.'.join(path)} is given a value and nested keys")
        node[path[-1]] = value
    return options


def resolve_storage_options(args: argparse.Namespace) -> None:
    """Replace the ``KEY=VALUE`` pairs in ``args`` by nested dicts; UsageError on a conflict."""
    for attr in OPTION_ATTRS:
        pairs = getattr(args, attr, None)
        if pairs is not None:
            try:
                setattr(args, attr, parse_storage_options(pairs))
            except ValueError as exc:
                raise UsageError(str(exc)) from None


def merged(base: dict[str, Any], more: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``more`` merged over it, nested dicts merged key by key."""
    out = dict(base)
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def size(text: str) -> int:
    """``"500GB"``, ``"1.5TiB"`` or a number of bytes -> bytes."""
    try:
        parsed = parse_size(text.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).replace("cache limit", "size")) from None
    assert parsed is not None  # only None parses to None
    return parsed


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def seconds(text: str) -> float:
    """``"1d"``, ``"12h"``, ``"30m"``, ``"90s"`` or a number of seconds -> seconds (>= 0)."""
    raw = text.strip().lower()
    unit = _UNITS.get(raw[-1:], None)
    try:
        value = float(raw[:-1] if unit else raw) * (unit or 1)
    except ValueError:
        value = -1.0
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a duration like 1d, 12h, 30m, 90s or 0, got {text!r}")
    return value


def _int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


positive = _int_at_least(1)
non_negative = _int_at_least(0)


def ranks(text: str) -> list[int]:
    """``3``, ``0,1,2``, ``0-7`` or ``0-3,8`` -> sorted distinct ranks."""
    found: set[int] = set()
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            first, last = int(lo), int(hi) if dash else int(lo)
            if not 0 <= first <= last < _MAX_RANK:
                raise ValueError
            found.update(range(first, last + 1))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected ranks like 3, 0,1,2 or 0-7, got {text!r}"
        ) from None
    return sorted(found)
