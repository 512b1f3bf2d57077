"""The storage boundary: a small store interface, one backend per kind of store, and
one wrapper that retries, watches and translates.

- :mod:`.base`: the interface (:class:`Backend`): what the wrapper needs from a store,
  operating on paths, once, raising the backend's own exceptions;
- one module per backend: :mod:`.local` (local disk), :mod:`.memory` (``memory://``),
  :mod:`.s3` (s3fs, with presigned direct GETs and conditional PUTs), :mod:`.gcs`
  (gcsfs, with generation preconditions) and :mod:`.generic` (any other fsspec
  filesystem), over the sequential readers of :mod:`.readers`; :func:`register` serves
  another protocol with a backend of its own (:func:`backend_for` picks one);
- :class:`Store`: everything roxxel reads or writes in a store goes through it. It takes
  keys relative to a dataset URL, retries transient failures (:class:`RetryPolicy`),
  cuts off stalled calls (:mod:`.watchdog`) and turns every backend exception into a
  :mod:`roxxel.errors` error chained to the original (:mod:`.errors`).

URLs, keys and the resolution of a URL to a filesystem live in :mod:`.urls`.
``storage_options`` are passed to fsspec untouched and never shown.
"""

from __future__ import annotations

from .base import Backend, PreconditionFailed, TooLarge, Versioned
from .errors import Kind, classify
from .generic import FsspecBackend
from .registry import backend_for, register
from .retry import DEFAULT_POLICY, NO_RETRY, RetryPolicy
from .store import DEFAULT_CHUNK_SIZE, MANIFEST_MAX_BYTES, Store
from .urls import check_key, join_url, redact, relative_key, resolve, without_masked

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_POLICY",
    "MANIFEST_MAX_BYTES",
    "NO_RETRY",
    "Backend",
    "FsspecBackend",
    "Kind",
    "PreconditionFailed",
    "RetryPolicy",
    "Store",
    "TooLarge",
    "Versioned",
    "backend_for",
    "check_key",
    "classify",
    "join_url",
    "redact",
    "register",
    "relative_key",
    "resolve",
    "without_masked",
]
