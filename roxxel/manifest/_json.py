"""Strict JSON: a manifest's text parsed refusing what JSON readers disagree about
(duplicate keys, NaN and infinities, numbers that overflow a float, nesting too deep,
text that is not UTF-8, documents too large)."""

from __future__ import annotations

import json
import math
from typing import Any

from ..errors import ManifestError
from ._report import error, show

__all__ = ["MAX_DEPTH", "MAX_MANIFEST_BYTES", "parse_json"]

MAX_MANIFEST_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 64  # levels of JSON nesting; the document object itself is level 1


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise error("", f"expected unique keys in every object, got {show(key)} twice")
            seen.add(key)
    return obj


def _refuse_constant(name: str) -> float:
    raise error("", f"expected finite numbers, got {name}")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise error("", f"expected finite numbers, got {show(text)}, which overflows a float")
    return number


def parse_json(data: str | bytes) -> object:
    """The JSON value in ``data``, refusing oversized, non-UTF-8 or ambiguous documents."""
    limit = f"at most {MAX_MANIFEST_BYTES} bytes (MAX_MANIFEST_BYTES)"
    if isinstance(data, str):
        if len(data) > MAX_MANIFEST_BYTES:  # checked before encoding a huge string
            raise error("", f"expected {limit}, got {len(data)} characters")
        try:
            raw = data.encode("utf-8")
        except UnicodeEncodeError as exc:
            detail = f"expected UTF-8 text, got an unencodable character at {exc.start}"
            raise error("", detail) from exc
    elif isinstance(data, (bytes, bytearray, memoryview)):
        raw = bytes(data)
    else:
        raise TypeError(f"from_json() takes str or bytes, not {type(data).__name__}")
    if len(raw) > MAX_MANIFEST_BYTES:
        raise error("", f"expected {limit}, got {len(raw)} bytes")
    try:
        text = data if isinstance(data, str) else raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error("", f"expected UTF-8 text, got an invalid byte at offset {exc.start}") from exc
    try:
        return json.loads(
            text,
            object_pairs_hook=_unique_keys,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
        )
    except ManifestError:
        raise
    except RecursionError as exc:
        detail = f"expected at most {MAX_DEPTH} levels of nesting, got too many to parse"
        raise error("", detail) from exc
    except ValueError as exc:
        raise error("", f"expected a JSON document, got invalid JSON: {exc}") from exc
