"""Finding, and on request deleting, shard objects that no manifest lists.

A writer that fails or is killed leaves the shards it uploaded; ``mode="overwrite"``
leaves the old version's shards, so that jobs reading it are not cut off. They cost
storage until someone removes them: :func:`prune` does, conservatively.

- Only objects under the dataset's ``shards/`` whose names roxxel's writer or merge
  give are candidates; nothing else under the prefix is ever touched: not the
  manifest, and not the signatures under ``signatures/``, which are part of the dataset.
- A shard is referenced if the dataset's manifest lists it, or the manifest of any
  prefix above it does (a merge in place lists its parts' shards from above). Manifest
  URIs are relative and have no ``..``, so no other manifest can name them. On local
  disk the walk up follows the real path, not a symlink's.
- An unreferenced shard is deleted only once both it and the newest of those manifests
  are older than ``older_than`` seconds (default one day): a job still reading the
  version an overwrite replaced, or a writer still uploading, is protected for that
  long after the overwrite or the upload.
- Deleting is opt-in (``delete=True``) and needs the dataset's own manifest. Before
  the first deletion every manifest is read again, and if one changed, nothing is
  deleted; each shard is looked at again just before it is deleted, and kept if it
  changed since it was listed (a writer re-uploading a shard of the same name).

What prune cannot see is a writer, ``cp`` or ``merge`` into the same dataset that has
run for longer than the grace period, or one that keeps a shard it finds already in
place: choose a grace period longer than your longest write, and do not prune a
dataset while a copy into it is being resumed.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from fsspec.callbacks import Callback
from fsspec.implementations.local import LocalFileSystem

from ..backends import Store
from ..errors import NotFoundError, StorageError
from ..manifest.checksums import CHECKSUM_ALGORITHMS
from ..manifest.io import MANIFEST_KEY, dataset_store, try_read_manifest

__all__ = ["PruneReport", "UnreferencedShard", "prune"]

log = logging.getLogger(__name__)

DEFAULT_GRACE = 24 * 3600.0
# shards/<generation>-<index>-<digest prefix>.rox[.zst] (Writer),
# shards/<algorithm>-<digest prefix>.rox[.zst] (merge, for the shards it copies in) and
# shards/part-<part>-<attempt>-<index>-<digest prefix>.rox[.zst] (roxxel.build.write_part)
SHARD_KEY = re.compile(  # ASCII digits only, and nothing after the name (\Z, not $)
    r"^shards/(?:\d{5,}-\d{6,}-[0-9a-f]{12}|(?:" + "|".join(CHECKSUM_ALGORITHMS) + r")-[0-9a-f]{32}"
    r"|part-\d{6,12}-[0-9a-f]{16}-\d{6,}-[0-9a-f]{12})\.rox(?:\.zst)?\Z",
    re.ASCII,
)

# What became of an unreferenced shard (UnreferencedShard.status).
RECENT = "kept: too recent"
UNKNOWN_AGE = "kept: age unknown"
COLLECTABLE = "would delete"
DELETED = "deleted"
CHANGED = "kept: changed since listed"
FAILED = "failed to delete"


@dataclass(frozen=True)
class UnreferencedShard:
    """A shard object no manifest lists: its key under the dataset, its size, how long
    it has been unreferenced at most (None if the store did not say when it was
    written), and what prune did with it (``status``, and ``error`` if it failed)."""

    key: str
    size: int
    age_seconds: float | None
    status: str
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class PruneReport:
    """What :func:`prune` found and did."""

    url: str
    manifests: list[str]  # the manifests whose references were counted
    referenced: int  # shard objects found that a manifest lists
    unreferenced: list[UnreferencedShard] = field(default_factory=list)
    older_than: float = DEFAULT_GRACE
    delete: bool = False

    def having(self, *statuses: str) -> list[UnreferencedShard]:
        return [s for s in self.unreferenced if s.status in statuses]

    @property
    def ok(self) -> bool:
        return not self.having(FAILED)

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, dict[str, int]] = {}
        for s in self.unreferenced:
            entry = counts.setdefault(s.status, {"shards": 0, "bytes": 0})
            entry["shards"] += 1
            entry["bytes"] += s.size
        return {
            "url": self.url,
            "manifests": self.manifests,
            "referenced": self.referenced,
            "older_than": self.older_than,
            "delete": self.delete,
            "ok": self.ok,
            "by_status": counts,
            "unreferenced": [s.to_dict() for s in self.unreferenced],
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
    those unreferenced for at least ``older_than`` seconds (see the module). A shard
    that fails to delete is reported, not raised; ``progress`` counts deleted bytes."""
    if isinstance(older_than, bool) or not isinstance(older_than, (int, float)) or not 0 <= older_than < float("inf"):
        raise ValueError(f"older_than must be a number of seconds >= 0, got {older_than!r}")
    store = dataset_store(url, storage_options)
    if isinstance(store.fs, LocalFileSystem):
        store = Store(os.path.realpath(store.root), fs=store.fs, retry=store.retry)
    found = _references(store)
    if delete and store.url(MANIFEST_KEY) not in found.fingerprints:
        raise NotFoundError(
            f"could not prune {store.base_url}: it has no {MANIFEST_KEY}, so every shard under it "
            "would count as unreferenced; prune deletes only from a published dataset"
        )
    now = time.time()
    listed: dict[str, tuple[int, float | None]] = {}
    referenced, unreferenced = 0, []
    for key, size, modified in store.list_info("shards"):
        if not SHARD_KEY.match(key):
            continue
        if key in found.keys:
            referenced += 1
            continue
        listed[key] = (size, modified)
        age = None if modified is None else max(0.0, now - max(modified, found.newest))
        status = UNKNOWN_AGE if age is None else (COLLECTABLE if age >= older_than else RECENT)
        unreferenced.append(UnreferencedShard(key, size, age, status))
    report = PruneReport(store.base_url, sorted(found.fingerprints), referenced, unreferenced,
                         float(older_than), delete)
    doomed = report.having(COLLECTABLE)
    if not delete or not doomed:
        return report
    if _references(store).fingerprints != found.fingerprints:
        raise StorageError(
            f"could not prune {store.base_url}: a manifest at or above it changed while its shards "
            "were being listed; nothing was deleted: run prune again"
        )
    callback = Callback.as_callback(progress)
    callback.set_size(sum(s.size for s in doomed))
    done = [_delete(store, shard, listed[shard.key], callback) if shard.status == COLLECTABLE else shard
            for shard in unreferenced]
    return replace(report, unreferenced=done)


def _delete(store: Store, shard: UnreferencedShard, listed: tuple[int, float | None], callback: Callback
            ) -> UnreferencedShard:
    """Delete ``shard`` unless it changed since it was listed (a new upload of the name)."""
    try:
        size, modified = store.stat(shard.key)
        # (a listing and a HEAD may round the time differently: a second is noise, a new
        # upload of the name is newer than the grace period by construction)
        if size != listed[0] or modified is None or listed[1] is None or modified - listed[1] > 1.0:
            log.warning("kept %s: it changed after it was listed", store.url(shard.key))
            return replace(shard, status=CHANGED)
        store.delete(shard.key)
    except NotFoundError:
        pass  # already gone
    except StorageError as exc:
        log.error("could not delete %s: %s", store.url(shard.key), exc)
        return replace(shard, status=FAILED, error=str(exc))
    log.info("deleted unreferenced shard %s (%d bytes)", store.url(shard.key), shard.size)
    callback.relative_update(shard.size)
    return replace(shard, status=DELETED)


@dataclass
class _Found:
    keys: set[str]  # keys under the dataset that a manifest lists
    fingerprints: dict[str, str]  # manifest URL -> fingerprint, of every manifest read
    newest: float  # when the newest of them was written (0 if none or unknown)


def _references(store: Store) -> _Found:
    """The keys under ``store`` that its manifest or one above it lists."""
    found = _Found(set(), {}, 0.0)
    below = ""  # the dataset's path relative to the prefix being read
    for root in [store.root, *_ancestors(store.root)]:
        here = store if root == store.root else Store(root, fs=store.fs, retry=store.retry)
        manifest = try_read_manifest(here)
        if manifest is not None:
            found.fingerprints[here.url(MANIFEST_KEY)] = manifest.fingerprint()
            modified = here.stat(MANIFEST_KEY)[1]
            found.newest = max(found.newest, modified or 0.0)
            for uri in manifest.shards.uris.tolist():
                if not below:
                    found.keys.add(uri)
                elif uri.startswith(below + "/"):
                    found.keys.add(uri[len(below) + 1 :])
        below = f"{root.rstrip('/').rpartition('/')[2]}/{below}".rstrip("/")
    return found


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
