"""Opening an S3 dataset without s3fs: a deferred filesystem and one signed GET.

Importing s3fs (with aiobotocore and aiohttp) and creating its first client cost a
fresh process about 250 ms on the reference machine, while opening a dataset whose
shards are all cached needs one object from the store: its manifest. So an ``s3://``
URL resolves to a :class:`DeferredS3FileSystem`, which imports s3fs and builds the real
``S3FileSystem`` only when something needs it (a download, a listing, a write), and
:class:`~roxxel.backends.s3.S3Backend` reads whole objects, where the options allow it,
with :func:`signed_get`: one ``GetObject`` signed with AWS Signature Version 4
(:func:`sigv4_headers`, tested to give botocore's ``S3SigV4Auth`` signature) and sent
with :mod:`http.client`.

Only what s3fs would send for the same options is sent. The fast read is used only for
options whose meaning is plain: an explicit ``endpoint_url`` (buckets are then
addressed by path, as botocore does for any custom endpoint); credentials given as
``key``/``secret``/``token``, or else found by botocore's own credential chain (nothing
here reads credentials or endpoints from the environment); a region from
``client_kwargs`` or ``config_kwargs``, else botocore's configured one where botocore
was asked for credentials, else ``us-east-1``; and no proxy. Anything else (no
endpoint: AWS's own endpoints depend on settings this module does not repeat; a
profile, anonymous access, requester-pays, extra request parameters, virtual-host
addressing, TLS options) goes through s3fs as before. A GET answered with anything
but 200 (a missing object, a refused signature, a busy server) or that fails on the
way is left to s3fs too, which reports or retries it in its own way.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import time
import urllib.parse
from collections.abc import Mapping
from typing import Any

from .base import TooLarge, Versioned
from .retry import DEFAULT_POLICY
from .watchdog import current_timeout

__all__ = ["DeferredS3FileSystem", "deferred_s3", "sigv4_headers", "signed_get"]

log = logging.getLogger(__name__)

_PROTOCOLS = ("s3", "s3a")
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
# storage_options whose meaning signed_get reproduces, or that change nothing it sends
_OPTIONS = {"key", "secret", "token", "endpoint_url", "client_kwargs", "config_kwargs",
            "skip_instance_cache", "use_listings_cache", "listings_expiry_time", "max_concurrency",
            "default_block_size", "default_fill_cache", "default_cache_type", "anon"}
_CLIENT_KWARGS = {"endpoint_url", "region_name"}
_CONFIG_KWARGS = {  # botocore Config options that do not change what a GET returns
    "connect_timeout", "read_timeout", "retries", "max_pool_connections", "signature_version",
    "s3", "region_name", "user_agent", "user_agent_extra", "parameter_validation",
    "request_checksum_calculation", "response_checksum_validation",
}


class DeferredS3FileSystem:
    """An ``s3://`` filesystem not made yet: its arguments, and :meth:`materialize`."""

    protocol = _PROTOCOLS

    def __init__(self, url: str, storage_options: Mapping[str, Any]) -> None:
        self.url = url
        self.storage_options = dict(storage_options)

    def materialize(self) -> Any:
        """The real ``S3FileSystem`` (fsspec's cached instance for these options)."""
        from fsspec.core import url_to_fs

        return url_to_fs(self.url, **self.storage_options)[0]

    def __repr__(self) -> str:
        return "DeferredS3FileSystem()"  # the options may hold credentials


def deferred_s3(url: str, storage_options: Mapping[str, Any]) -> tuple[DeferredS3FileSystem, str] | None:
    """A deferred filesystem and the path of ``url`` on it, for a plain ``s3://`` URL
    whose options :func:`signed_get` can serve; None otherwise (s3fs resolves it)."""
    protocol, sep, rest = url.partition("://")
    if not sep or protocol not in _PROTOCOLS or "::" in url or "?" in rest or not rest.strip("/"):
        return None
    if _endpoint(storage_options) is None or not _plain_options(storage_options):
        return None
    from fsspec.registry import _registry

    registered = _registry.get(protocol)  # s3:// registered to another implementation
    if registered is not None and not (registered.__module__ or "").startswith("s3fs"):
        return None
    return DeferredS3FileSystem(url, storage_options), rest.rstrip("/")


def _endpoint(options: Mapping[str, Any]) -> str | None:
    client = options.get("client_kwargs") or {}
    endpoint = options.get("endpoint_url") or (client.get("endpoint_url") if isinstance(client, Mapping) else None)
    return endpoint if isinstance(endpoint, str) and endpoint else None


def _plain_options(options: Mapping[str, Any]) -> bool:
    if not set(options) <= _OPTIONS or options.get("anon"):
        return False
    client, config = options.get("client_kwargs") or {}, options.get("config_kwargs") or {}
    if not (isinstance(client, Mapping) and isinstance(config, Mapping)):
        return False
    if not (set(client) <= _CLIENT_KWARGS and set(config) <= _CONFIG_KWARGS):
        return False
    s3 = config.get("s3") or {}
    if not isinstance(s3, Mapping) or set(s3) - {"addressing_style"}:
        return False
    if s3.get("addressing_style") not in (None, "auto", "path"):
        return False
    if config.get("signature_version") not in (None, "s3v4", "v4"):
        return False
    if bool(options.get("key")) != bool(options.get("secret")):
        return False
    return all(isinstance(options.get(name) or "", str) for name in ("key", "secret", "token"))


def signed_get(fs: DeferredS3FileSystem, path: str, max_bytes: int | None) -> Versioned | None:
    """The object at ``path`` and its ETag by one signed GET, or None where s3fs must
    read it (see the module docstring); TooLarge, reading none of the body, past
    ``max_bytes``."""
    try:
        request = _signed_request(fs.storage_options, path)
        if request is None:
            return None
        url, headers, timeout = request
        parts = urllib.parse.urlsplit(url)
        conn = _connect(parts, timeout)
    except Exception as exc:  # noqa: BLE001 - any of it means: read through s3fs
        log.debug("signed GET not possible (%s); reading through s3fs", type(exc).__name__)
        return None
    try:
        conn.request("GET", parts.path, headers=headers)
        response = conn.getresponse()
        if response.status != 200:
            response.read(64 * 1024)
            return None
        size = int(response.getheader("Content-Length") or -1)
        if size < 0:
            return None
        if max_bytes is not None and size > max_bytes:
            raise TooLarge(size)
        data = response.read(size)
        if len(data) != size:
            return None
        return Versioned(data, response.getheader("ETag"))
    except TooLarge:
        raise
    except Exception as exc:  # noqa: BLE001
        log.debug("signed GET failed (%s); reading through s3fs", type(exc).__name__)
        return None
    finally:
        conn.close()


def _signed_request(options: Mapping[str, Any], path: str) -> tuple[str, dict[str, str], float | None] | None:
    endpoint = _endpoint(options)
    if endpoint is None or _proxied(endpoint):
        return None
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        return None
    client = options.get("client_kwargs") or {}
    config = options.get("config_kwargs") or {}
    found = _credentials(options)
    if found is None:
        return None
    credentials, configured_region = found
    region = client.get("region_name") or config.get("region_name") or configured_region or "us-east-1"
    base = urllib.parse.urlsplit(endpoint)
    quoted = urllib.parse.quote(f"{bucket}/{key}", safe="/~")
    target = f"{base.path.rstrip('/')}/{quoted}"
    default_port = {"http": ":80", "https": ":443"}.get(base.scheme, "")
    host = base.netloc[: -len(default_port)] if default_port and base.netloc.endswith(default_port) else base.netloc
    headers = sigv4_headers("GET", host, target, region, credentials, time.gmtime())
    # as for presigned downloads: a server silent this long fails the GET (and s3fs reads)
    timeout = config.get("read_timeout") or current_timeout(DEFAULT_POLICY.stall_timeout)
    return f"{base.scheme}://{base.netloc}{target}", headers, None if timeout is None else float(timeout)


def sigv4_headers(method: str, host: str, target: str, region: str, credentials: tuple[str, str, str | None],
                  now: time.struct_time) -> dict[str, str]:
    """The headers of an S3 request without a body signed with AWS Signature Version 4
    (header form, as botocore's ``S3SigV4Auth`` signs a ``GetObject``); ``target`` is the
    request path, already quoted. Written out here because importing botocore's signer
    costs a fresh process more (~40 ms) than a warm open takes in all."""
    key, secret, token = credentials
    amz_date, day = time.strftime("%Y%m%dT%H%M%SZ", now), time.strftime("%Y%m%d", now)
    headers = {"host": host, "x-amz-content-sha256": _EMPTY_SHA256, "x-amz-date": amz_date}
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join([
        method, target, "", *(f"{n}:{headers[n].strip()}" for n in names), "", signed, _EMPTY_SHA256,
    ])
    scope = f"{day}/{region}/s3/aws4_request"
    to_sign = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    signing_key = ("AWS4" + secret).encode()
    for part in (day, region, "s3", "aws4_request"):
        signing_key = hmac.new(signing_key, part.encode(), hashlib.sha256).digest()
    signature = hmac.new(signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
    headers["Authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={key}/{scope}, SignedHeaders={signed}, Signature={signature}"
    )
    return headers


def _credentials(options: Mapping[str, Any]) -> tuple[tuple[str, str, str | None], str | None] | None:
    """The credentials given, else those botocore's own chain finds, and the region
    botocore is configured with where it was asked (None: no credentials found)."""
    if options.get("key"):
        return (options["key"], options["secret"], options.get("token") or None), None
    import botocore.session

    session = botocore.session.Session()
    found = session.get_credentials()
    if found is None:
        return None
    frozen = found.get_frozen_credentials()
    return (frozen.access_key, frozen.secret_key, frozen.token or None), session.get_config_variable("region")


def _proxied(endpoint: str) -> bool:
    import urllib.request

    host = urllib.parse.urlsplit(endpoint).hostname or ""
    proxies = urllib.request.getproxies()
    if not any(k in proxies for k in ("http", "https", "all")):
        return False
    return not urllib.request.proxy_bypass(host)


def _connect(parts: urllib.parse.SplitResult, timeout: float | None) -> http.client.HTTPConnection:
    if parts.scheme == "http":
        return http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    if parts.scheme != "https":
        raise ValueError("not an http(s) endpoint")
    import botocore.httpsession  # noqa: F401 - the CA bundle botocore verifies with

    from .s3 import _ca_bundle, _tls_context

    return http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout,
                                       context=_tls_context(_ca_bundle()))

