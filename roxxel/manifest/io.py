"""Reading and publishing a dataset's manifest through a :class:`~roxxel.backends.Store`.

The manifest lives at ``<dataset url>/manifest.json``. Publishing it is the commit point
of a dataset: it is written last, atomically, and (for new datasets) create-only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..backends import Store
from ..errors import NotFoundError
from .schema import MAX_MANIFEST_BYTES, Manifest

__all__ = ["MANIFEST_KEY", "dataset_store", "publish_manifest", "read_manifest", "try_read_manifest"]

MANIFEST_KEY = "manifest.json"


def dataset_store(url: str, storage_options: Mapping[str, Any] | None = None, **store_kwargs: Any) -> Store:
    """The store of the dataset at ``url``: its prefix, or its ``manifest.json``."""
    url = str(url)
    stripped = url.rstrip("/")
    if stripped.endswith("/" + MANIFEST_KEY) or stripped == MANIFEST_KEY:
        stripped = stripped[: -len(MANIFEST_KEY)].rstrip("/") or "."
    return Store(stripped, storage_options, **store_kwargs)


def read_manifest(store: Store) -> Manifest:
    """The validated manifest of the dataset; NotFoundError naming the URL if none."""
    data = store.read_bytes(MANIFEST_KEY, max_bytes=MAX_MANIFEST_BYTES)
    return Manifest.from_json(data, source=store.url(MANIFEST_KEY))


def try_read_manifest(store: Store) -> Manifest | None:
    """The manifest, or None when the dataset does not exist (yet)."""
    try:
        return read_manifest(store)
    except NotFoundError:
        return None


def publish_manifest(store: Store, manifest: Manifest, *, create_only: bool) -> None:
    """Publish ``manifest`` atomically; with ``create_only``, DatasetExistsError if one is there."""
    data = manifest.to_json().encode("ascii")
    if create_only:
        store.put_bytes_create_only(MANIFEST_KEY, data)
    else:
        store.put_bytes_overwrite(MANIFEST_KEY, data)
