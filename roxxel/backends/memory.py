"""fsspec's ``memory://`` filesystem: one dict per process, so one process-wide lock
makes its check-then-set writes atomic; versions are content digests."""

from __future__ import annotations

import threading
from typing import Any

from .base import PreconditionFailed, Versioned, check_size, digest
from .generic import FsspecBackend

__all__ = ["MemoryBackend"]

_MEMORY_LOCK = threading.Lock()


class MemoryBackend(FsspecBackend):
    """fsspec's memory filesystem."""

    downloads_in_parts = False

    def reported_md5(self, info: dict[str, Any]) -> str | None:
        return None  # no checksum in its metadata: uploads are read back

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        data = self.read_data(path, max_bytes)
        return Versioned(data, digest(data))

    def read_data(self, path: str, max_bytes: int | None) -> bytes:
        data = self.fs.cat_file(path)
        check_size(len(data), max_bytes)
        return data

    def put_file(self, local_path: str, path: str) -> None:
        # AbstractFileSystem.put_file would commit a partial object on a read error.
        with open(local_path, "rb") as f:
            self.fs.pipe_file(path, f.read())

    def put(self, path: str, data: bytes) -> None:
        with _MEMORY_LOCK:
            self.fs.pipe_file(path, data)

    def put_if_absent(self, path: str, data: bytes) -> None:
        with _MEMORY_LOCK:
            if self.fs.isfile(path):
                raise FileExistsError(path)
            self.fs.pipe_file(path, data)

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        with _MEMORY_LOCK:
            current = digest(self.fs.cat_file(path)) if self.fs.isfile(path) else None
            if current != version:
                raise PreconditionFailed(path)
            self.fs.pipe_file(path, data)

    def conditional_writes_enforced(self, root: str) -> bool:
        return True
