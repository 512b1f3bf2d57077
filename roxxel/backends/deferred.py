"""Backends over a filesystem not made yet: S3 and GCS datasets open without importing
s3fs or gcsfs (:mod:`.s3open`, :mod:`.gcsopen`).

A deferred filesystem holds the URL and ``storage_options`` it was resolved from and
makes the real one with ``materialize()``. :class:`DeferringBackend` makes it on first
use of :attr:`~DeferringBackend.fs`, once (the download engine's threads may all ask at
once), and gives a forked child a deferred filesystem of its own (a DataLoader worker
makes its client only if it needs one). :func:`fsspec_untouched` is the check both
openers make first: that fsspec itself would give the library's own filesystem for the
protocol, with no options added by its configuration.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable
from typing import Any, ClassVar

from fsspec import AbstractFileSystem

from .base import Backend
from .generic import FsspecBackend

__all__ = ["DeferringBackend", "fsspec_untouched"]

_MATERIALIZING: dict[type, threading.Lock] = {}  # one a kind of deferred filesystem
_LOCKS_LOCK = threading.Lock()


def _materializing(kind: type) -> threading.Lock:
    with _LOCKS_LOCK:
        return _MATERIALIZING.setdefault(kind, threading.Lock())


def _after_fork_in_child() -> None:
    global _LOCKS_LOCK
    _LOCKS_LOCK = threading.Lock()  # a lock a parent's thread held at the fork stays locked
    _MATERIALIZING.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


class DeferringBackend(FsspecBackend):
    """A backend whose filesystem may be a deferred one (of ``deferred_type``: it has
    ``url``, ``storage_options`` and ``materialize()``) until something needs the real one."""

    deferred_type: ClassVar[type]

    @property
    def fs(self) -> AbstractFileSystem:
        """The real filesystem, made (and its library imported) on first use, once."""
        if isinstance(self._fs, self.deferred_type):
            with _materializing(self.deferred_type):  # (making gcsfs's client never waits for s3fs's)
                if isinstance(self._fs, self.deferred_type):
                    self._deferred = self._fs
                    self._fs = self._fs.materialize()
        return self._fs

    @fs.setter
    def fs(self, fs: AbstractFileSystem) -> None:
        self._fs = fs

    def deferred(self) -> Any | None:
        """The deferred filesystem while the real one is not made yet, else None (read
        once: another thread may make it meanwhile)."""
        fs = self._fs
        return fs if isinstance(fs, self.deferred_type) else None

    def deferred_source(self) -> Any | None:
        """The deferred filesystem this backend began with, whether or not the real one is
        made since (its URL, options and signing templates stay valid), else None."""
        return self.deferred() or getattr(self, "_deferred", None)

    def info(self, path: str) -> dict[str, Any]:
        deferred = self.deferred()
        if deferred is not None:
            info = self.deferred_info(deferred, path)  # (FileNotFoundError for a 404)
            if info is not None:
                return info
        return super().info(path)

    def deferred_info(self, deferred: Any, path: str) -> dict[str, Any] | None:
        """What :meth:`info` answers, found through the deferred filesystem by one request
        of roxxel's own, or None where the real filesystem must answer."""
        return None

    def forked(self) -> Backend:
        deferred = self.deferred_source()
        if deferred is None:
            return super().forked()
        # A forked child makes its own filesystem only if it needs one.
        return type(self)(self.deferred_type(deferred.url, deferred.storage_options))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self._fs).__name__})"


def fsspec_untouched(protocols: Iterable[str], protocol: str, package: str) -> bool:
    """Whether fsspec would make ``package``'s own filesystem for ``protocol`` with no
    options of its own: no configuration for any of ``protocols`` (``FSSPEC_S3_*``, a
    config file), and the protocol not registered to another implementation (a class,
    or a class path not imported yet)."""
    from fsspec.config import conf
    from fsspec.registry import _registry, known_implementations

    if any(conf.get(name) for name in protocols):
        return False
    registered = _registry.get(protocol)
    if registered is not None and not _of(registered.__module__ or "", package):
        return False
    known = known_implementations.get(protocol, {}).get("class", f"{package}.")
    return _of(str(known), package)


def _of(name: str, package: str) -> bool:
    """Whether the module or class path ``name`` is in ``package``."""
    return name == package or name.startswith(f"{package}.")
