"""The storage boundary: URL -> fsspec filesystem, retries and error translation.

Everything roxxel reads or writes in a store goes through :class:`Store`, which takes
keys relative to a dataset URL, retries transient failures (:class:`RetryPolicy`) and
turns every backend exception into a :mod:`roxxel.errors` error chained to the original.
``storage_options`` are passed to fsspec untouched and never shown.
"""

from __future__ import annotations

from .errors import Kind, classify
from .retry import DEFAULT_POLICY, NO_RETRY, RetryPolicy
from .store import DEFAULT_CHUNK_SIZE, MANIFEST_MAX_BYTES, Store
from .urls import check_key, join_url, redact, relative_key, resolve, without_masked

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_POLICY",
    "Kind",
    "MANIFEST_MAX_BYTES",
    "NO_RETRY",
    "RetryPolicy",
    "Store",
    "check_key",
    "classify",
    "join_url",
    "redact",
    "relative_key",
    "resolve",
    "without_masked",
]
