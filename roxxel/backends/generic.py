"""Any fsspec filesystem roxxel has no backend of its own for, through fsspec's
generic operations; also the base class of the specific backends, which override
what their store does better.

Without a store-specific precondition a generic store has no conditional writes:
:meth:`FsspecBackend.put_if_absent` checks, then writes (best effort), and
:meth:`FsspecBackend.put_if_match` raises NotImplementedError. A protocol can be given
a backend of its own with :func:`roxxel.backends.register`.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import re
from typing import Any, BinaryIO

from .base import Backend, ChunkReader, Versioned, check_size
from .readers import open_async_reader, open_file_reader

__all__ = ["UPLOAD_CHUNK_SIZE", "FsspecBackend", "base64_md5", "etag_md5", "read_whole"]

# Parts of multipart/resumable uploads: memory per upload stays near this, whatever the size.
UPLOAD_CHUNK_SIZE = 16 * 2**20


class FsspecBackend(Backend):
    """A store through fsspec's generic ``AbstractFileSystem`` operations."""

    def info(self, path: str) -> dict[str, Any]:
        self.fs.invalidate_cache(path)
        info = self.fs.info(path)
        if info.get("type") != "file":
            raise FileNotFoundError(f"{path} is a directory or prefix, not an object")
        return info

    def list_info(self, base: str) -> dict[str, dict[str, Any]]:
        self.fs.invalidate_cache(base)
        return self.fs.find(base, withdirs=False, detail=True)

    def reported_md5(self, info: dict[str, Any]) -> str | None:
        # an unknown store may report either, as S3 or as GCS does
        return etag_md5(info) or base64_md5(info)

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        return Versioned(read_whole(self.fs, path, max_bytes), None)

    def read_data(self, path: str, max_bytes: int | None) -> bytes:
        """:meth:`read` without the version, for readers that never publish: a store
        whose versions are content digests (local disk, memory) skips hashing."""
        return self.read(path, max_bytes).data

    def read_range(self, path: str, start: int, end: int) -> bytes:
        return self.fs.cat_file(path, start=start, end=end)

    def open_reader(self, path: str, offset: int) -> ChunkReader:
        if getattr(self.fs, "async_impl", False):
            return open_async_reader(self.fs, path, offset)
        return open_file_reader(self.fs, path, offset)

    def open(self, path: str) -> BinaryIO:
        return self.fs.open(path, "rb")

    def put_file(self, local_path: str, path: str) -> None:
        self.fs.put_file(local_path, path, chunksize=UPLOAD_CHUNK_SIZE)

    def put(self, path: str, data: bytes) -> None:
        self.fs.pipe_file(path, data)

    def put_if_absent(self, path: str, data: bytes) -> None:
        if self.fs.exists(path):
            raise FileExistsError(path)
        self.fs.pipe_file(path, data)

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        raise NotImplementedError("this store has no conditional writes")

    def delete(self, path: str) -> None:
        self.fs.rm_file(path)
        self.fs.invalidate_cache(path)

    def conditional_writes_enforced(self, root: str) -> bool:
        return False


def etag_md5(info: dict[str, Any]) -> str | None:
    """The MD5 an S3-style ETag is, if it is one (a multipart upload's "...-N" is not)."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"')
    return etag if re.fullmatch(r"[0-9a-f]{32}", etag) else None


def base64_md5(info: dict[str, Any]) -> str | None:
    """The MD5 of a GCS-style base64 ``md5Hash``, as hex."""
    md5 = info.get("md5Hash")
    if isinstance(md5, str):
        try:
            return base64.b64decode(md5, validate=True).hex()
        except (ValueError, binascii.Error):
            return None
    return None


def read_whole(fs: Any, path: str, max_bytes: int | None) -> bytes:
    """The whole object in one GET, bounded by the size its metadata gives just before.
    A body of another length (cut short, or the object replaced in between) raises
    IncompleteRead, a transient error: the caller's retry starts again from the metadata."""
    info = fs.info(path)
    size = int(info.get("size") or 0)
    check_size(size, max_bytes)
    data = fs.cat_file(path)
    if len(data) != size:
        raise http.client.IncompleteRead(data[:size], max(0, size - len(data)))
    return data
