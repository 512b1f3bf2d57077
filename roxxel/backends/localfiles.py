"""Atomic writes on a local filesystem: a temporary file in the target's directory,
made durable, then linked or renamed into place. Readers see the old file, the new
file, or nothing; never a partial one.
"""

from __future__ import annotations

import os
import secrets
import shutil
from typing import BinaryIO, Callable

__all__ = ["TEMP_PREFIX", "copy_replace", "write_new", "write_replace"]

TEMP_PREFIX = ".roxxel-tmp-"
_COPY_CHUNK = 8 * 2**20


def write_new(path: str, data: bytes) -> None:
    """Create ``path`` holding ``data``; raise FileExistsError if ``path`` exists.

    ``os.link`` refuses an existing target, so two concurrent writers cannot both win.
    """
    temp = _write_temp(path, lambda f: f.write(data))
    try:
        os.link(temp, path)
    finally:
        os.unlink(temp)


def write_replace(path: str, data: bytes) -> None:
    """Atomically make ``path`` hold ``data``, replacing any previous file."""
    _replace_with(path, lambda f: f.write(data))


def copy_replace(source: str, path: str) -> None:
    """Atomically make ``path`` a copy of the local file ``source``."""
    with open(source, "rb") as src:
        _replace_with(path, lambda f: shutil.copyfileobj(src, f, _COPY_CHUNK))


def _replace_with(path: str, fill: Callable[[BinaryIO], object]) -> None:
    temp = _write_temp(path, fill)
    try:
        os.replace(temp, path)
    except BaseException:
        os.unlink(temp)
        raise


def _write_temp(path: str, fill: Callable[[BinaryIO], object]) -> str:
    """Write a durable temporary file next to ``path`` and return its name."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    temp = os.path.join(folder, f"{TEMP_PREFIX}{os.path.basename(path)}.{secrets.token_hex(8)}")
    # os.open with 0o666 honours the umask (mkstemp would force 0o600 on a shared dataset).
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            fill(f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        os.unlink(temp)
        raise
    return temp
