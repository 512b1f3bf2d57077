"""Finding, and on request deleting, shard objects that no manifest lists.

A writer that fails or is killed leaves the shards it uploaded; ``mode="overwrite"``
leaves the old version's shards, so that jobs reading it are not cut off. They cost
storage until someone removes them: :func:`prune` does, conservatively.

- Only objects under the dataset's ``shards/`` whose names roxxel's writer or merge
  could have given are candidates; nothing else under the prefix is ever touched.
- A shard is referenced if the dataset's manifest lists it, or the manifest of any
  prefix above it does (a merge in place lists its parts' shards from above). Manifest
  URIs are relative and have no ``..``, so no other manifest can name them.
- An unreferenced shard is deleted only once it is older than ``older_than`` seconds
  (default one day): a writer still uploading the next version, or a job still reading
  an overwritten one, is protected by that grace period.
- Deleting is opt-in (``delete=True``); before the first deletion every manifest is
  read again, and if one changed meanwhile nothing is deleted.
"""

from __future__ import annotations

import logging
import posixpath
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fsspec.callbacks import Callback

from ..backends import Store
from ..errors import RoxxelError
from ..manifest.io import MANIFEST_KEY, dataset_store, try_read_manifest

__all__ = ["PruneReport", "UnreferencedShard", "prune"]

log = logging.getLogger(__name__)

DEFAULT_GRACE = 24 * 3600.0
# shards/<generation>-<index>-<digest prefix>.rox[.zst] (Writer) and
# shards/<algorithm>-<digest prefix>.rox[.zst] (merge, for shards it copies in)
SHARD_KEY = re.compile(r"^shards/(?:\d{5,}-\d{6,}-[0-9a-f]{12}|[a-z0-9]+-[0-9a-f]{32})\.rox(?:\.zst)?$")


class ManifestChanged(RoxxelError):
    """A manifest changed while unreferenced shards were being collected."""


@dataclass(frozen=True)
class UnreferencedShard:
    """A shard object no manifest lists: its key under the dataset, size and age."""

    key: str
    size: int
    age_seconds: float | None  # None when the store did not say when it was written
    deleted: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` found and did. ``collectable`` shards are unreferenced and
    older than the grace period; they were deleted if ``deleted`` says so."""

    url: str
    manifests: list[str]  # the manifests whose references were counted
    referenced: int  # shard objects found that a manifest lists
    unreferenced: list[UnreferencedShard] = field(default_factory=list)
    older_than: float = DEFAULT_GRACE
    delete: bool = False

    @property
    def collectable(self) -> list[UnreferencedShard]:
        return [s for s in self.unreferenced if s.age_seconds is not None and s.age_seconds >= self.older_than]

    @property
    def deleted(self) -> list[UnreferencedShard]:
        return [s for s in self.unreferenced if s.deleted]

    def to_dict(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "manifests": self.manifests,
            "referenced": self.referenced,
            "older_than": self.older_than,
            "delete": self.delete,
            "unreferenced": [s.to_dict() for s in self.unreferenced],
            "collectable": len(self.collectable),
            "collectable_bytes": sum(s.size for s in self.collectable),
            "deleted": len(self.deleted),
            "deleted_bytes": sum(s.size for s in self.deleted),
        }


def prune(
    url: str,
    storage_options: Mapping[str, Any] | None = None,
    *,
    older_than: float = DEFAULT_GRACE,
    delete: bool = False,
    progress: Callback | None = None,
) -> PruneReport:
    """Find the dataset's shard objects that no manifest lists; with ``delete``, delete
    those older than ``older_than`` seconds. ``progress`` counts deleted bytes."""
    if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not older_than >= 0:
        raise ValueError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
    store = dataset_store(url, storage_options)
    references, fingerprints = _references(store)
    now = time.time()
    found = store.list_info("shards")
    referenced = 0
    unreferenced = []
    for key, size, modified in found:
        if not SHARD_KEY.match(key):
            continue
        if key in references:
            referenced += 1
            continue
        age = None if modified is None else max(0.0, now - modified)
        unreferenced.append(UnreferencedShard(key, size, age))
    report = PruneReport(store.base_url, sorted(fingerprints), referenced, unreferenced, float(older_than), delete)
    if not delete or not report.collectable:
        return report
    if _references(store)[1] != fingerprints:
        raise ManifestChanged(
            f"a manifest at or above {store.base_url} changed while its shards were being listed; "
            "nothing was deleted: run prune again"
        )
    callback = Callback.as_callback(progress)
    callback.set_size(sum(s.size for s in report.collectable))
    collect = {s.key for s in report.collectable}
    done = []
    for shard in unreferenced:
        if shard.key in collect:
            store.delete(shard.key)
            log.info("deleted unreferenced shard %s (%d bytes)", store.url(shard.key), shard.size)
            callback.relative_update(shard.size)
            shard = UnreferencedShard(shard.key, shard.size, shard.age_seconds, deleted=True)
        done.append(shard)
    return PruneReport(store.base_url, report.manifests, referenced, done, float(older_than), delete)


def _references(store: Store) -> tuple[set[str], dict[str, str]]:
    """Keys under ``store`` that a manifest lists (its own, or one above it), and the
    fingerprint of each manifest read, by URL."""
    keys: set[str] = set()
    fingerprints: dict[str, str] = {}
    below = ""  # the dataset's path relative to the prefix being read
    for root in [store.root, *_ancestors(store.root)]:
        here = store if root == store.root else Store(root, fs=store.fs, retry=store.retry)
        manifest = try_read_manifest(here)
        if manifest is not None:
            fingerprints[here.url(MANIFEST_KEY)] = manifest.fingerprint()
            for uri in manifest.shards.uris.tolist():
                if not below:
                    keys.add(uri)
                elif uri.startswith(below + "/"):
                    keys.add(uri[len(below) + 1 :])
        below = f"{root.rstrip('/').rpartition('/')[2]}/{below}".rstrip("/")
    return keys, fingerprints


def _ancestors(root: str) -> list[str]:
    """The filesystem paths above ``root``, nearest first: up to ``/`` for a path that
    starts there (local disk, memory), else up to the bucket (S3, GCS)."""
    if root.startswith("/"):
        out = []
        path = root.rstrip("/") or "/"
        while (parent := posixpath.dirname(path)) != path:
            out.append(parent)
            path = parent
        return out
    parts = root.strip("/").split("/")
    return ["/".join(parts[:n]) for n in range(len(parts) - 1, 0, -1)]
