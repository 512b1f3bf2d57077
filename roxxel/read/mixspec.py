"""A mixture written down: its sources, weights, policies, seed and epoch length.

The JSON form lets a team version a mixture next to its datasets::

    {"format": "roxxel-mixture", "version": 1, "seed": 0, "samples": null,
     "sources": [{"url": "s3://bucket/web", "weight": 0.7, "policy": "repeat"},
                 {"url": "../code", "weight": 0.3}]}

A relative ``url`` is resolved against the document's own location. The document never
holds credentials: a ``storage_options`` key in it is refused; they are given to
:func:`roxxel.mix` (for every source, or per source in Python).
"""

from __future__ import annotations

import json
import math
import numbers
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import fsspec
import numpy as np

from ..errors import ManifestError

__all__ = ["FORMAT", "POLICIES", "MixtureSpec", "SourceSpec", "is_spec_location", "load_spec"]

FORMAT = "roxxel-mixture"
VERSION = 1
POLICIES = ("stop", "repeat")
_DOC_KEYS = {"format", "version", "seed", "samples", "sources"}
_SOURCE_KEYS = {"url", "weight", "policy"}


@dataclass(frozen=True)
class SourceSpec:
    """One source: a URL (or, in Python only, an open dataset), its weight (None: from
    the record counts), its policy when it runs out within an epoch, and the
    ``storage_options`` for its store (never written to JSON)."""

    url: str | None
    weight: float | None = None
    policy: str | None = None
    storage_options: Mapping[str, Any] | None = field(default=None, repr=False, compare=False)
    dataset: Any = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class MixtureSpec:
    sources: tuple[SourceSpec, ...]
    seed: int = 0
    samples: int | None = None

    def to_json(self) -> str:
        """The JSON document (URLs, weights, policies, seed, samples; no credentials)."""
        if any(s.url is None for s in self.sources):
            raise ValueError("a mixture of open datasets has no JSON form: give its sources as URLs")
        doc = {
            "format": FORMAT, "version": VERSION, "seed": self.seed, "samples": self.samples,
            "sources": [
                {k: v for k, v in (("url", s.url), ("weight", s.weight), ("policy", s.policy)) if v is not None}
                for s in self.sources
            ],
        }
        return json.dumps(doc, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "<mixture>", base: str | None = None) -> MixtureSpec:
        """Parse and validate a mixture document; ``where`` names it in errors, and
        relative source URLs are resolved against ``base`` (the document's folder)."""
        try:
            doc = json.loads(text, parse_constant=_refuse_constant)
        except (ValueError, UnicodeDecodeError) as exc:
            raise ManifestError(f"{where}: not a JSON mixture document: {exc}") from exc
        if not isinstance(doc, dict):
            raise ManifestError(f"{where}: a mixture document is a JSON object, got {type(doc).__name__}")
        if "storage_options" in doc:
            raise ManifestError(f"{where}: a mixture document never holds credentials (field 'storage_options'): "
                                "give storage_options to roxxel.mix")
        unknown = set(doc) - _DOC_KEYS
        if unknown:
            raise ManifestError(f"{where}: unknown field(s) {sorted(unknown)}; expected {sorted(_DOC_KEYS)}")
        if doc.get("format") != FORMAT:
            raise ManifestError(f"{where}: field 'format' must be {FORMAT!r}, got {doc.get('format')!r}")
        if doc.get("version") != VERSION or isinstance(doc.get("version"), bool):
            raise ManifestError(f"{where}: field 'version' must be {VERSION}, got {doc.get('version')!r}")
        seed = _int_field(doc.get("seed", 0), f"{where}: field 'seed'", low=0)
        samples = doc.get("samples")
        if samples is not None:
            samples = _int_field(samples, f"{where}: field 'samples'", low=1)
        raw = doc.get("sources")
        if not isinstance(raw, list) or not raw:
            raise ManifestError(f"{where}: field 'sources' must be a non-empty list, got {raw!r}")
        sources = []
        for i, entry in enumerate(raw):
            what = f"{where}: sources[{i}]"
            if not isinstance(entry, dict):
                raise ManifestError(f"{what} must be an object, got {type(entry).__name__}")
            if "storage_options" in entry:
                raise ManifestError(f"{what}: a mixture document never holds credentials (field "
                                    "'storage_options'): give storage_options to roxxel.mix")
            bad = set(entry) - _SOURCE_KEYS
            if bad:
                raise ManifestError(f"{what}: unknown field(s) {sorted(bad)}; expected {sorted(_SOURCE_KEYS)}")
            url = entry.get("url")
            if not isinstance(url, str) or not url:
                raise ManifestError(f"{what}: field 'url' must be a non-empty string, got {url!r}")
            sources.append(SourceSpec(
                url=_resolve(url, base, where),
                weight=check_weight(entry.get("weight"), f"{what}: field 'weight'", exc=ManifestError),
                policy=check_policy(entry.get("policy"), f"{what}: field 'policy'", exc=ManifestError),
            ))
        weighted = [s.weight is not None for s in sources]
        if any(weighted) and not all(weighted):
            raise ManifestError(f"{where}: sources[{weighted.index(False)}]: field 'weight' is missing; give every "
                                "source a weight or none (none: weights from the record counts)")
        return cls(tuple(sources), seed=seed, samples=samples)


def check_weight(value: object, what: str, exc: type[Exception] = ValueError) -> float | int | None:
    """A weight: a positive finite real number (NumPy's included, bool not)."""
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or value <= 0:
        raise exc(f"{what} must be a positive number, got {value!r}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def check_policy(value: object, what: str, exc: type[Exception] = ValueError) -> str | None:
    if value is not None and value not in POLICIES:
        raise exc(f"{what} must be one of {list(POLICIES)}, got {value!r}")
    return value  # type: ignore[return-value]


def _int_field(value: object, what: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ManifestError(f"{what} must be an integer >= {low}, got {value!r}")
    return value


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _resolve(url: str, base: str | None, where: str = "<mixture>") -> str:
    """``url`` relative to the document's folder ``base``; a relative URL never leaves the
    document's bucket (or, on local disk, it stays a relative path resolved as written)."""
    if base is None or "://" in url or url.startswith("/"):
        return url
    if "://" in base:
        scheme, rest = base.split("://", 1)
        bucket = rest.split("/", 1)[0]
        joined = posixpath.normpath(posixpath.join(rest, url))
        if joined.split("/", 1)[0] != bucket:
            raise ManifestError(f"{where}: source URL {url!r} leaves the document's bucket {scheme}://{bucket}")
        return f"{scheme}://{joined}"
    return posixpath.normpath(posixpath.join(base, url))


def is_spec_location(value: object) -> bool:
    """Whether ``value`` names a mixture document (a path or URL ending in ``.json``
    that is not a dataset's manifest)."""
    return isinstance(value, str) and value.endswith(".json") and not value.endswith("manifest.json")


def load_spec(location: str, storage_options: Mapping[str, Any] | None = None) -> MixtureSpec:
    """Read the mixture document at ``location`` (a local path or any fsspec URL)."""
    try:
        with fsspec.open(location, "rb", **dict(storage_options or {})) as f:
            text = f.read(1 << 20)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot read the mixture document {location}: {exc}") from exc
    base = location.rsplit("/", 1)[0] if "/" in location else "."
    return MixtureSpec.from_json(text, where=location, base=base)


def spec_from_arguments(
    sources: Sequence[Any], weights: Sequence[float] | None, seed: int, samples: int | None,
    policy: str | Sequence[str] | None,
) -> MixtureSpec:
    """A spec from :func:`roxxel.mix`'s arguments (see its docstring)."""
    if isinstance(sources, (str, bytes)) or not isinstance(sources, Sequence) or not sources:
        raise ValueError("sources must be a non-empty list of datasets, URLs or mappings")
    if weights is not None and len(weights) != len(sources):
        raise ValueError(f"{len(weights)} weights for {len(sources)} sources")
    policies: Sequence[str | None]
    if policy is None or isinstance(policy, str):
        policies = [policy] * len(sources)
    else:
        policies = list(policy)
        if len(policies) != len(sources):
            raise ValueError(f"{len(policies)} policies for {len(sources)} sources")
    out = []
    for i, src in enumerate(sources):
        weight = weights[i] if weights is not None else None
        pol = policies[i]
        if isinstance(src, Mapping):
            unknown = set(src) - {"url", "weight", "policy", "storage_options"}
            if unknown:
                raise ValueError(f"sources[{i}]: unknown key(s) {sorted(unknown)}")
            if not isinstance(src.get("url"), str):
                raise TypeError(f"sources[{i}]: 'url' must be a string, got {src.get('url')!r}")
            weight = src.get("weight", weight)
            pol = src.get("policy", pol)
            out.append(SourceSpec(src["url"], check_weight(weight, f"sources[{i}] weight"),
                                  check_policy(pol, f"sources[{i}] policy"), src.get("storage_options")))
        elif isinstance(src, str):
            out.append(SourceSpec(src, check_weight(weight, f"weights[{i}]"), check_policy(pol, f"policy[{i}]")))
        elif hasattr(src, "manifest") and hasattr(src, "store"):
            out.append(SourceSpec(src.url, check_weight(weight, f"weights[{i}]"),
                                  check_policy(pol, f"policy[{i}]"), dataset=src))
        else:
            raise TypeError(f"sources[{i}] must be a Dataset, a URL or a mapping, got {type(src).__name__}")
    given = [s.weight is not None for s in out]
    if any(given) and not all(given):
        missing = [i for i, g in enumerate(given) if not g]
        raise ValueError(f"give every source a weight or none (sources {missing} have none)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise ValueError(f"samples must be a positive integer, got {samples!r}")
    return MixtureSpec(tuple(out), seed=seed, samples=samples)
