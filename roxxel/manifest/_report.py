"""How a manifest's problems are told: one ManifestError naming the manifest's URL
(redacted), the field path (``shards[3].checksum``), what was expected and what came."""

from __future__ import annotations

import reprlib
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from ..errors import ManifestError
from .redaction import redact

__all__ = ["error", "expected", "member", "reporting_source", "row", "show"]

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 80
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 6
_REPR.maxlevel = 3

# Validation runs inside dataclass constructors, which cannot take the manifest's URL
# as an argument; from_json/from_dict publish it here so every message can name it.
_SOURCE: ContextVar[str | None] = ContextVar("roxxel_manifest_source", default=None)


@contextmanager
def reporting_source(source: str | None) -> Iterator[None]:
    token = _SOURCE.set(None if source is None else redact(source))
    try:
        yield
    finally:
        _SOURCE.reset(token)


def show(value: object) -> str:
    """A repr of ``value`` of at most 80 characters, cheap even for huge values."""
    text = _REPR.repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def error(path: str, detail: str) -> ManifestError:
    source = _SOURCE.get()
    where = "manifest" if source is None else f"manifest {source}"
    return ManifestError(f"{where}: {path}: {detail}" if path else f"{where}: {detail}")


def expected(path: str, what: str, value: object) -> ManifestError:
    return error(path, f"expected {what}, got {show(value)}")


def member(path: str, key: object) -> str:
    """The path of member ``key`` of the object at ``path``."""
    if isinstance(key, str) and key.isidentifier():
        return f"{path}.{key}" if path else key
    return f"{path}[{show(key)}]"


def row(index: int, name: str) -> str:
    return f"shards[{index}].{name}"
