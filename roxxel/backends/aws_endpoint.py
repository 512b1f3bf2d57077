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
import re
import threading
import urllib.parse
from typing import NamedTuple

from .aws_config import plain_region

__all__ = ["Endpoint", "bucket_region", "connect", "endpoint", "known_region", "region_hint", "remember_region", "target"]

log = logging.getLogger(__name__)

# what botocore accepts as a bucket name (handlers.VALID_BUCKET), less ARNs and "--" names
_BUCKET = re.compile(r"[a-zA-Z0-9.\-_]{1,255}\Z")
# aws.isVirtualHostableS3Bucket(bucket, false): a lowercase DNS label, no dots
_VIRTUAL = re.compile(r"[a-z0-9][a-z0-9\-]{1,61}[a-z0-9]\Z")
_REGION_ELEMENT = re.compile(rb"<Region>([a-z0-9\-]{1,40})</Region>")
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


def _aws_endpoint(bucket: str, region: str | None, path_style: bool) -> Endpoint:
    """AWS's endpoint for ``bucket`` in ``region`` (None: the global endpoint)."""
    domain = "s3.amazonaws.com" if region in (None, "us-east-1") else f"s3.{region}.amazonaws.com"
    host = domain if path_style else f"{bucket}.{domain}"
    return Endpoint("https", host, path_style, (host, 443))


def endpoint(bucket: str, region: str | None, addressing_style: str) -> Endpoint | None:
    """The endpoint botocore would send a request for ``bucket`` to, or None for a
    bucket name it addresses in other ways."""
    if "--" in bucket or not _BUCKET.match(bucket) or (region is not None and not plain_region(region)):
        return None
    path_style = addressing_style == "path" or not _VIRTUAL.match(bucket)
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
        found = _REGION_ELEMENT.search(body)
        region = found.group(1).decode() if found else None
    return region if plain_region(region) else None
