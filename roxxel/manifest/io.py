"""Reading and publishing a dataset's manifest through a :class:`~roxxel.backends.Store`.

The manifest lives at ``<dataset url>/manifest.json``. Publishing it is the commit point
of a dataset: it is written last and atomically. A publish that depends on what it read
(a new dataset, an append, a merge or copy over an existing one) is a compare-and-swap
against the version that was read (DESIGN.md, invariant 9): the loser gets a
:class:`~roxxel.errors.ConflictError` or :class:`~roxxel.errors.DatasetExistsError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ..backends import Store, TooLarge
from ..backends.retry import call
from ..errors import ConflictError, DatasetExistsError, NotFoundError, StorageError
from ._json import MAX_MANIFEST_BYTES
from .schema import Manifest

__all__ = [
    "MANIFEST_KEY",
    "Snapshot",
    "dataset_store",
    "publish_manifest",
    "read_manifest",
    "read_snapshot",
    "require_conditional_writes",
    "try_read_manifest",
]

MANIFEST_KEY = "manifest.json"


class Snapshot(NamedTuple):
    """The manifest as read (None: no dataset yet) and the store's version of it."""

    manifest: Manifest | None
    version: str | None


def dataset_store(url: str, storage_options: Mapping[str, Any] | None = None, **store_kwargs: Any) -> Store:
    """The store of the dataset at ``url``: its prefix, or its ``manifest.json``."""
    url = str(url)
    stripped = url.rstrip("/")
    if stripped.endswith("/" + MANIFEST_KEY) or stripped == MANIFEST_KEY:
        stripped = stripped[: -len(MANIFEST_KEY)].rstrip("/") or "."
    return Store(stripped, storage_options, **store_kwargs)


def read_snapshot(store: Store) -> Snapshot:
    """The validated manifest and its version, read consistently (one request, or pinned
    to one version); ``Snapshot(None, None)`` when the dataset does not exist (yet)."""
    try:
        data, version = store.read_versioned(MANIFEST_KEY, max_bytes=MAX_MANIFEST_BYTES)
    except NotFoundError:
        return Snapshot(None, None)
    return Snapshot(Manifest.from_json(data, source=store.url(MANIFEST_KEY)), version)


def read_manifest(store: Store) -> Manifest:
    """The validated manifest of the dataset; NotFoundError naming the URL if none.

    For readers: the store's version of it is not asked for (on local disk and in
    memory that would hash the whole manifest); publishers use :func:`read_snapshot`."""
    return Manifest.from_json(_read_data(store, MANIFEST_KEY), source=store.url(MANIFEST_KEY))


def _read_data(store: Store, key: str) -> bytes:
    """``store.read_bytes(key)`` through the backend's ``read_data``, which reads the
    object as consistently (in one request, or pinned) but leaves out its version."""
    backend = store.backend
    read_data = getattr(backend, "read_data", None)
    if read_data is None:  # a registered backend that is not an FsspecBackend
        return store.read_bytes(key, max_bytes=MAX_MANIFEST_BYTES)
    path = store.path(key)

    def read() -> bytes:
        try:
            return read_data(path, MAX_MANIFEST_BYTES)
        except TooLarge as exc:
            raise StorageError(
                f"could not read {store.url(key)}: it is {exc.size} bytes, "
                f"more than the limit of {MAX_MANIFEST_BYTES} bytes"
            ) from None

    return call(read, op="read", url=store.url(key), policy=store.retry)


def try_read_manifest(store: Store) -> Manifest | None:
    """The manifest, or None when the dataset does not exist (yet)."""
    return read_snapshot(store).manifest


def require_conditional_writes(store: Store, *, single_writer: bool) -> None:
    """StorageError unless the store enforces conditional writes or the caller says it is
    the only writer: on a store that ignores preconditions, two writers could both
    "win" a publish and one would lose its records without an error."""
    if single_writer or store.conditional_writes_enforced():
        return
    raise StorageError(
        f"{store.base_url}: this store accepts conditional writes but does not enforce them "
        "(a probe write that had to fail succeeded), so a concurrent writer could not be "
        "detected and one writer's records could be lost. Publish there only if nothing else "
        "writes this dataset at the same time, and say so with single_writer=True "
        "(CLI: --single-writer)"
    )


def publish_manifest(
    store: Store, manifest: Manifest, *, replaces: Snapshot | None, single_writer: bool = False
) -> None:
    """Publish ``manifest`` atomically.

    ``replaces=None`` overwrites whatever is there (the last writer wins). Otherwise the
    publish succeeds only if the store still holds what ``replaces`` read: no manifest
    (create-only; DatasetExistsError if one appeared), or the manifest at
    ``replaces.version`` (ConflictError if another writer published since). On a store
    that does not enforce conditional writes this refuses, unless ``single_writer``:
    then no conditional write is sent or probed for, and the condition is checked by
    reading first, which is safe for one writer only.
    """
    data = manifest.to_json().encode("ascii")
    if replaces is None:
        store.put_bytes_overwrite(MANIFEST_KEY, data)
    elif single_writer:
        _publish_if_unchanged(store, data, replaces)
    else:
        require_conditional_writes(store, single_writer=False)
        if replaces.manifest is None:
            store.put_bytes_create_only(MANIFEST_KEY, data)
        elif replaces.version is not None:
            store.put_bytes_if_match(MANIFEST_KEY, data, replaces.version)
        else:
            raise StorageError(
                f"could not publish {store.url(MANIFEST_KEY)}: the store gave no version "
                "(ETag or generation) for the manifest that was read, so a concurrent writer "
                "could not be detected; publish with single_writer=True if nothing else "
                "writes this dataset meanwhile"
            )


def _publish_if_unchanged(store: Store, data: bytes, replaces: Snapshot) -> None:
    """For a single writer: re-read, compare, then put without a condition."""
    current = read_snapshot(store)
    if current.manifest != replaces.manifest:
        if replaces.manifest is None:
            raise DatasetExistsError(f"could not publish {store.url(MANIFEST_KEY)}: it already exists")
        raise ConflictError(
            f"could not publish {store.url(MANIFEST_KEY)}: it changed since it was read; "
            "nothing was published"
        )
    store.put_bytes_overwrite(MANIFEST_KEY, data)
