"""URLs, store keys and filesystem resolution.

A *URL* names a dataset prefix (``s3://bucket/wiki``, ``gs://b/wiki``, ``memory://wiki``,
``file:///data/wiki`` or a plain local path). A *key* is a path relative to that prefix
(``manifest.json``, ``shards/000001.rox``). Keys may come from manifests, which are
untrusted, so :func:`check_key` refuses anything that could leave the prefix.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from fsspec import AbstractFileSystem
from fsspec.core import url_to_fs

from ..manifest.keys import check_key
from ..manifest.redaction import redact

__all__ = ["check_key", "join_url", "redact", "relative_key", "resolve", "without_masked"]


def resolve(
    url: str | os.PathLike[str], storage_options: Mapping[str, Any] | None = None
) -> tuple[AbstractFileSystem, str]:
    """Return the fsspec filesystem for ``url`` and the path of ``url`` on it.

    ``storage_options`` go to the filesystem constructor unchanged; credentials and
    endpoints are found by fsspec and the cloud SDKs, never by roxxel. Plain local paths,
    ``file://``, ``memory://``, ``s3://``, ``gs://`` and chained URLs all work. An
    ``s3://`` URL whose options allow it gives a
    :class:`~roxxel.backends.s3open.DeferredS3FileSystem`: s3fs is imported only when
    the S3 backend needs it, not to open a dataset whose shards are cached. Likewise a
    ``gs://`` URL with plain options gives a
    :class:`~roxxel.backends.gcsopen.DeferredGCSFileSystem`, and gcsfs waits.
    """
    from .gcsopen import deferred_gcs
    from .s3open import deferred_s3  # s3open imports .base, which imports this module

    url = os.fspath(url)
    options = dict(storage_options or {})
    deferred = deferred_s3(url, options) or deferred_gcs(url, options)
    if deferred is not None:
        return deferred  # type: ignore[return-value]
    return url_to_fs(url, **options)


def join_url(base: str, key: str) -> str:
    """``base`` and the safe relative ``key`` joined with exactly one ``/``."""
    return f"{base.rstrip('/')}/{check_key(key)}"


def relative_key(base: str, url: str) -> str:
    """The key of ``url`` under ``base`` (inverse of :func:`join_url`).

    Raises ValueError if ``url`` is not strictly below ``base``.
    """
    prefix = base.rstrip("/") + "/"
    if not url.startswith(prefix):
        raise ValueError(f"{redact(url)} is not inside {redact(base)}")
    return check_key(url[len(prefix):].rstrip("/"))


def without_masked(url: str) -> str:
    """A :func:`redact`-ed URL with the masked parts left out, so that it can be opened
    again with credentials from storage options or the environment."""
    if "***" not in url:
        return url
    parts = urlsplit(url)
    netloc = parts.netloc.partition("***@")[2] if parts.netloc.startswith("***@") else parts.netloc
    # redact() masks a whole query string ("?***"); older notes masked single parameters.
    query = "&".join(q for q in parts.query.split("&") if q and q != "***" and not q.endswith("=***"))
    return urlunsplit(parts._replace(netloc=netloc, query=query))
