"""AWS's own S3 endpoints as botocore names them, and the region a bucket is in.

A bucket is addressed as botocore 1.43 addresses it for ``GetObject``: virtual-hosted
(``https://<bucket>.s3.<region>.amazonaws.com/<key>``) where its name is a DNS label
without dots, else (or with ``addressing_style = path``) by path
(``https://s3.<region>.amazonaws.com/<bucket>/<key>``); in ``us-east-1`` the domain is
``s3.amazonaws.com``, as botocore's default ``us_east_1_regional_endpoint`` (legacy) has
it. Names botocore treats otherwise (S3 Express ``--x-s3`` buckets, access point ARNs,
anything with ``--``) are not addressed here.

Where no region is configured, one unsigned ``HEAD`` of the bucket at the global
endpoint names it in ``x-amz-bucket-region`` (S3 answers so even with 301 or 403);
the answer is kept for the process (:func:`bucket_region`). :func:`region_hint` reads
the region S3 names when a request went to the wrong one.

:func:`_aws_endpoint` is the one place that names hosts; the tests point it at a
loopback server.
"""

from __future__ import annotations

import http.client
import logging
import os
import threading
import urllib.parse
from typing import NamedTuple

__all__ = ["Endpoint", "bucket_region", "connect", "endpoint", "known_region", "plain_region", "region_hint",
           "remember_region", "target"]

log = logging.getLogger(__name__)

# Checked with string methods, not regular expressions: compiling those costs a fresh
# process's first open more than the rest of its request.
# what botocore accepts as a bucket name (handlers.VALID_BUCKET), less ARNs and "--" names
_BUCKET_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-_")
# aws.isVirtualHostableS3Bucket(bucket, false): a lowercase DNS label, no dots
_LABEL_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-")
# AWS's commercial partition (botocore's endpoints.json regionRegex for "aws",
# ^(us|eu|ap|sa|ca|me|af|il|mx)\-\w+\-\d+$): China, GovCloud, the ISO and sovereign
# partitions have other domains
_PARTITION_PREFIXES = frozenset({"us", "eu", "ap", "sa", "ca", "me", "af", "il", "mx"})
_ERROR_BODY = 64 * 1024

_regions: dict[str, str] = {}  # bucket -> region, found in this process
_regions_lock = threading.Lock()


def _after_fork_in_child() -> None:
    global _regions_lock
    _regions_lock = threading.Lock()  # the parent's may have been held by another thread


os.register_at_fork(after_in_child=_after_fork_in_child)


class Endpoint(NamedTuple):
    """Where a request for a bucket goes: ``host`` is its ``Host`` header (and TLS
    name), ``address`` the (host, port) connected to, ``path_style`` whether the bucket
    leads the path."""

    scheme: str
    host: str
    path_style: bool
    address: tuple[str, int]


def plain_region(region: object) -> bool:
    """Whether ``region`` is a region of AWS's commercial partition (``*.amazonaws.com``)."""
    if not isinstance(region, str) or not region.isascii():
        return False
    parts = region.split("-")
    return (len(parts) == 3 and parts[0] in _PARTITION_PREFIXES and parts[1].isalpha() and parts[1].islower()
            and parts[2].isdigit())


def _plain_bucket(bucket: str) -> bool:
    return 0 < len(bucket) <= 255 and "--" not in bucket and set(bucket) <= _BUCKET_CHARACTERS


def _virtual_hostable(bucket: str) -> bool:
    return (3 <= len(bucket) <= 63 and set(bucket) <= _LABEL_CHARACTERS
            and bucket[0] != "-" and bucket[-1] != "-")


def _aws_endpoint(bucket: str, region: str | None, path_style: bool) -> Endpoint:
    """AWS's endpoint for ``bucket`` in ``region`` (None: the global endpoint)."""
    domain = "s3.amazonaws.com" if region in (None, "us-east-1") else f"s3.{region}.amazonaws.com"
    host = domain if path_style else f"{bucket}.{domain}"
    return Endpoint("https", host, path_style, (host, 443))


def endpoint(bucket: str, region: str | None, addressing_style: str) -> Endpoint | None:
    """The endpoint botocore would send a request for ``bucket`` to, or None for a
    bucket name it addresses in other ways."""
    if not _plain_bucket(bucket) or (region is not None and not plain_region(region)):
        return None
    path_style = addressing_style == "path" or not _virtual_hostable(bucket)
    return _aws_endpoint(bucket, region, path_style)


def target(where: Endpoint, bucket: str, key: str) -> str:
    """The request path of ``key`` (quoted as botocore quotes it)."""
    quoted = urllib.parse.quote(key, safe="/~")
    return f"/{urllib.parse.quote(bucket, safe='')}/{quoted}" if where.path_style else f"/{quoted}"


def connect(where: Endpoint, timeout: float | None, cafile: str | None) -> http.client.HTTPConnection:
    """A connection to the endpoint (not opened yet); https verifies ``host``'s
    certificate with the default context over ``cafile``."""
    host, port = where.address
    if where.scheme == "http":
        return http.client.HTTPConnection(host, port, timeout=timeout)
    if where.scheme != "https" or host != where.host:
        raise ValueError("not an https endpoint of its own host")
    from .s3 import _tls_context

    return http.client.HTTPSConnection(host, port, timeout=timeout, context=_tls_context(cafile))


def bucket_region(bucket: str, addressing_style: str, timeout: float | None, cafile: str | None) -> str | None:
    """The region ``bucket`` is in: found earlier in this process, else named by one
    unsigned HEAD at the global endpoint; None if that does not say."""
    with _regions_lock:
        if bucket in _regions:
            return _regions[bucket]
    where = endpoint(bucket, None, addressing_style)
    if where is None:
        return None
    conn = connect(where, timeout, cafile)
    try:
        conn.request("HEAD", target(where, bucket, "")[:-1] or "/", headers={"host": where.host})
        response = conn.getresponse()
        response.read()
        region = response.getheader("x-amz-bucket-region")
    finally:
        conn.close()
    if not plain_region(region):
        return None
    remember_region(bucket, region)  # type: ignore[arg-type]
    return region


def remember_region(bucket: str, region: str) -> None:
    """Keep ``bucket``'s region for this process."""
    with _regions_lock:
        _regions[bucket] = region


def known_region(bucket: str) -> str | None:
    """The region found for ``bucket`` in this process, if any."""
    with _regions_lock:
        return _regions.get(bucket)


def region_hint(response: http.client.HTTPResponse) -> str | None:
    """The region S3 names in an answer to a request sent to the wrong one (301
    PermanentRedirect, 400 AuthorizationHeaderMalformed, ...): the
    ``x-amz-bucket-region`` header, else the error document's ``<Region>``; the
    response's body is read (at most 64 KiB)."""
    region = response.getheader("x-amz-bucket-region")
    body = response.read(_ERROR_BODY)
    if not region:
        start = body.find(b"<Region>") + len(b"<Region>")
        end = body.find(b"</Region>", start)
        region = body[start:end].decode("ascii", "replace") if start >= len(b"<Region>") and end > 0 else None
    return region if plain_region(region) else None
