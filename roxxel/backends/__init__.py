"""The storage boundary: a small store interface, one backend per kind of store, and
one wrapper that retries, watches and translates.

- :mod:`.base`: the interface (:class:`Backend`): what the wrapper needs from a store,
  operating on paths, once, raising the backend's own exceptions;
- one module per backend: :mod:`.local` (local disk), :mod:`.memory` (``memory://``),
  :mod:`.s3` (s3fs, with presigned direct GETs and conditional PUTs), :mod:`.gcs`
  (gcsfs, with generation preconditions) and :mod:`.generic` (any other fsspec
  filesystem), over the sequential readers of :mod:`.readers`; :func:`register` serves
  another protocol with a backend of its own (:func:`.registry.backend_for` picks one);
- :class:`Store`: everything roxxel reads or writes in a store goes through it. It takes
  keys relative to a dataset URL, retries transient failures (:class:`RetryPolicy`),
  cuts off stalled calls (:mod:`.watchdog`) and turns every backend exception into a
  :mod:`roxxel.errors` error chained to the original (:mod:`.errors`).

URLs, keys and the resolution of a URL to a filesystem live in :mod:`.urls`.
``storage_options`` are passed to fsspec untouched and never shown.

``__all__`` is the public surface: :class:`Store` and :class:`RetryPolicy`, and what a
backend given to :func:`register` is written with. The modules are the implementation.
"""

from __future__ import annotations

from .base import Backend, PreconditionFailed, TooLarge, Versioned
from .generic import FsspecBackend
from .registry import register
from .retry import RetryPolicy
from .store import Store

__all__ = [
    "Backend",
    "FsspecBackend",
    "PreconditionFailed",
    "RetryPolicy",
    "Store",
    "TooLarge",
    "Versioned",
    "register",
]
