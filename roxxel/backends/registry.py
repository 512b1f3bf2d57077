"""Which backend serves a filesystem: a protocol given one with :func:`register`, else
local disk, memory, S3 (s3fs, or deferred: :mod:`.s3open`), GCS (gcsfs, or
deferred: :mod:`.gcsopen`), else the generic fsspec backend."""

from __future__ import annotations

from collections.abc import Callable

from fsspec import AbstractFileSystem

from .base import Backend
from .gcs import GCSBackend
from .gcsopen import DeferredGCSFileSystem
from .generic import FsspecBackend
from .local import LocalBackend
from .memory import MemoryBackend
from .s3 import S3Backend
from .s3open import DeferredS3FileSystem

__all__ = ["backend_for", "register"]

# protocol -> the backend of a store roxxel does not know itself
_REGISTRY: dict[str, Callable[[AbstractFileSystem], Backend]] = {}


def register(protocol: str, factory: Callable[[AbstractFileSystem], Backend]) -> None:
    """Serve the fsspec protocol ``protocol`` with ``factory(fs)``, a :class:`.Backend`
    (usually a subclass of :class:`.FsspecBackend` that adds the store's conditional
    writes, and says in ``conditional_writes_enforced`` whether they hold)."""
    _REGISTRY[protocol] = factory


def backend_for(fs: AbstractFileSystem) -> Backend:
    """The backend of ``fs``'s kind of store."""
    if isinstance(fs, DeferredS3FileSystem) and not _REGISTRY.keys() & set(fs.protocol):
        return S3Backend(fs)  # type: ignore[arg-type]
    if isinstance(fs, DeferredGCSFileSystem) and not _REGISTRY.keys() & set(fs.protocol):
        return GCSBackend(fs)  # type: ignore[arg-type]
    protocols = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    for name in protocols:
        if name in _REGISTRY:
            return _REGISTRY[name](fs)
    names = set(protocols)
    if names & {"file", "local"}:
        return LocalBackend(fs)
    if "memory" in names:
        return MemoryBackend(fs)
    if names & {"s3", "s3a"} and hasattr(fs, "_call_s3"):
        return S3Backend(fs)
    if names & {"gs", "gcs"} and hasattr(fs, "_location"):
        return GCSBackend(fs)
    return FsspecBackend(fs)
