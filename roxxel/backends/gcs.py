"""GCS through gcsfs: generations as versions, ``ifGenerationMatch`` uploads, and
downloads as one ranged GET per chunk.

A whole object is read with one GET after its metadata bounds the size; the version is
the generation the body itself came with (``x-goog-generation``), as the object may
have been replaced since the metadata. Small objects are written with one multipart
upload carrying ``ifGenerationMatch`` (0 to create). Whether the server enforces it is
probed once per process and bucket (:func:`.base.probed_enforcement`):
gcp-storage-emulator, for one, accepts it and ignores it.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from .base import (
    ChunkReader,
    PreconditionFailed,
    Versioned,
    check_size,
    probed_enforcement,
)
from .errors import http_status
from .generic import FsspecBackend, base64_md5
from .readers import RangeReader

__all__ = ["GCSBackend"]


class GCSBackend(FsspecBackend):
    """GCS through gcsfs."""

    def reported_md5(self, info: dict[str, Any]) -> str | None:
        return base64_md5(info)

    def read(self, path: str, max_bytes: int | None) -> Versioned:
        info = self.info(path)
        check_size(int(info.get("size") or 0), max_bytes)  # before the body is read
        if not int(info.get("size") or 0):  # GCS answers a range of an empty object 416
            headers, data = self.fs.call("GET", self.fs.url(path))
        else:  # bounded even if the object grew since the metadata: one byte past the limit
            bound = {} if max_bytes is None else {"Range": f"bytes=0-{max_bytes}"}
            headers, data = self.fs.call("GET", self.fs.url(path), headers=bound)
        check_size(len(data), max_bytes)
        # The body's own generation: the object may have been replaced since info().
        generation = headers.get("x-goog-generation")
        return Versioned(data, None if generation is None else str(generation))

    def open_reader(self, path: str, offset: int) -> ChunkReader:
        # gcsfs has no streaming open_async: one ranged GET per chunk.
        return RangeReader(self.fs, path, offset)

    def put(self, path: str, data: bytes) -> None:
        self._upload(path, data, None)

    def put_if_absent(self, path: str, data: bytes) -> None:
        try:
            self._upload(path, data, "0")
        except PreconditionFailed:
            raise FileExistsError(path) from None

    def put_if_match(self, path: str, data: bytes, version: str) -> None:
        self._upload(path, data, version)

    def _upload(self, path: str, data: bytes, generation: str | None) -> None:
        """One multipart upload (gcsfs's simple upload, with any generation precondition)."""
        bucket, key, _ = self.fs.split_path(path)
        boundary = f"roxxel-{uuid.uuid4().hex}"
        body = b"".join((
            f"--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n".encode(),
            json.dumps({"name": key}).encode(),
            f"\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n".encode(),
            data,
            f"\r\n--{boundary}--\r\n".encode(),
        ))
        params = {} if generation is None else {"ifGenerationMatch": generation}
        try:
            self.fs.call(
                "POST", f"{self.fs._location}/upload/storage/v1/b/{bucket}/o",
                uploadType="multipart", data=body, json_out=True,
                headers={"Content-Type": f'multipart/related; boundary="{boundary}"'}, **params,
            )
        except (FileExistsError, OSError) as exc:
            if generation is not None and (isinstance(exc, FileExistsError) or http_status(exc) == 412):
                raise PreconditionFailed(path) from exc
            raise
        finally:
            self.fs.invalidate_cache(path)

    def conditional_writes_enforced(self, root: str) -> bool:
        return probed_enforcement(self, root)
