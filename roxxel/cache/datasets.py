"""Notes of which datasets use a cache, so ``roxxel cache du/gc`` can attribute its
content-addressed shards to datasets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os

from ..manifest.redaction import redact
from ..manifest import Manifest
from .files import TempFile, ensure_private_dir
from .store import ShardCache

__all__ = ["DATASETS_DIR", "record_dataset_use"]

log = logging.getLogger(__name__)

#: Folder of the cache directory where open() notes which shards each dataset uses.
DATASETS_DIR = "datasets"


def record_dataset_use(cache: ShardCache, url: str, manifest: Manifest) -> None:
    """Note in the cache which shards the dataset at ``url`` uses (for ``roxxel cache``).

    One JSON file per dataset URL and shard list, ``datasets/<hash of url>.<hash of
    checksums>.json``, holding the URL (redacted: never credentials) and the checksums.
    A newer shard list of the same URL replaces the older file. Best effort: a failure
    here only loses that attribution, so it is logged, never raised.
    """
    shown = redact(url)
    checksums = manifest.shards.checksums.tolist()
    stem = hashlib.sha256(shown.encode("utf-8")).hexdigest()[:32]
    version = hashlib.sha256("\n".join(checksums).encode("ascii")).hexdigest()[:16]
    folder = os.path.join(cache.directory, DATASETS_DIR)
    name = f"{stem}.{version}.json"
    path = os.path.join(folder, name)
    try:
        ensure_private_dir(folder)
        try:
            os.utime(path, follow_symlinks=False)  # known: only note the last use
            return
        except FileNotFoundError:
            pass
        doc = {
            "url": shown,
            "records": manifest.records,
            "raw_bytes": int(manifest.shards.raw_size.sum()),
            "checksums": checksums,
        }
        temp = TempFile(os.path.join(cache.directory, "tmp"))
        try:
            temp.file.write(json.dumps(doc).encode("utf-8"))
            temp.file.flush()
            temp.rename(path)
        finally:
            temp.discard()
        for other in os.listdir(folder):
            if other.startswith(stem + ".") and other != name:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(os.path.join(folder, other))
    except OSError as exc:
        log.warning("could not note the use of %s in the cache %s: %s", shown, cache.directory, exc)
