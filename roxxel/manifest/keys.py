"""Key safety: the one rule for keys (paths relative to a dataset's prefix).

Shard URIs in a manifest and every key a store is asked for follow it. Keys may come
from manifests, which are untrusted, so anything that could address something outside
the prefix, or be read differently by another tool, is refused.
"""

from __future__ import annotations

import re

__all__ = ["KEY_RE", "check_key", "key_problem"]

_SCHEME = r"[A-Za-z][A-Za-z0-9+.\-]*:"
_SEGMENT = r"(?!\.\.?(?:/|\Z))[^/\\\x00-\x1f\x7f-\x9f\ud800-\udfff]+"
#: Matches exactly the safe keys (for checking whole columns at once).
KEY_RE = re.compile(rf"(?!{_SCHEME})(?!.*::){_SEGMENT}(?:/{_SEGMENT})*", re.DOTALL)
# Checked in this order to explain a key that KEY_RE refused.
_PROBLEMS = (
    (re.compile(r"[\x00-\x1f\x7f-\x9f]"), "a path without control characters"),
    (re.compile(r"[\ud800-\udfff]"), "a path without unpaired surrogates"),
    (re.compile(r"\\"), "a path without backslashes"),
    (re.compile(r"\A/"), "a path relative to the manifest, not an absolute one"),
    (re.compile(rf"\A{_SCHEME}"), "a path relative to the manifest, not a URL with a scheme"),
    (re.compile("::"), "a path without '::' (fsspec URL chaining)"),
    (re.compile(r"//|/\Z"), "a path without empty segments ('//' or a trailing '/')"),
    (re.compile(r"(?:\A|/)\.\.?(?:/|\Z)"), "a path without '.' or '..' segments"),
)


def key_problem(key: str) -> str | None:
    """None if ``key`` is safe, else what a safe key would be ("a path without ...").

    A safe key is non-empty and relative, uses ``/`` separators, and has no empty, ``.``
    or ``..`` segment, no leading scheme (``s3:``), no ``::``, no backslash, no control
    character and no unpaired surrogate; so joining it to a prefix can never address
    anything outside that prefix.
    """
    if not key:
        return "a non-empty relative path"
    if KEY_RE.fullmatch(key) is not None:
        return None
    for pattern, what in _PROBLEMS:
        if pattern.search(key):
            return what
    return "a safe relative path"


def check_key(key: str) -> str:
    """Return ``key`` if it is safe (see :func:`key_problem`), else raise ValueError
    naming it; TypeError if it is not a ``str``."""
    if not isinstance(key, str):
        raise TypeError(f"store key must be a str, got {type(key).__name__}")
    problem = key_problem(key)
    if problem is not None:
        raise ValueError(f"invalid store key {key!r}: expected {problem}")
    return key
