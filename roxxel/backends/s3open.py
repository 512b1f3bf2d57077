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

Only what s3fs would send for the same options is sent, to where s3fs would send it, and
only where the meaning of the options is plain:

- **AWS's own endpoints** (no ``endpoint_url``): the credentials, region, addressing
  style and CA bundle s3fs's client would have are read as botocore reads them
  (:mod:`.aws_config`: ``key``/``secret``/``token``, else the environment, else the
  shared files' static keys, in botocore's order); the bucket is addressed as botocore
  addresses it (:mod:`.aws_endpoint`: virtual-hosted where its name is a DNS label,
  else by path), over TLS verified with the default context. Without a configured
  region, one unsigned HEAD at the global endpoint names the bucket's (kept for the
  process); an answer naming another region (301 PermanentRedirect, 400
  AuthorizationHeaderMalformed) is followed once. Anything botocore decides in other
  ways (SSO, assumed roles, web identity, credential processes, container or instance
  credentials, a proxy, ``AWS_ENDPOINT_URL``, FIPS, dual-stack or accelerated endpoints,
  another partition, settings this module does not know) goes through s3fs.
- **An explicit** ``endpoint_url`` (buckets are then addressed by path, as botocore does
  for any custom endpoint): credentials given as ``key``/``secret``/``token``, or else
  found by botocore's own credential chain; a region from ``client_kwargs`` or
  ``config_kwargs``, else botocore's configured one where botocore was asked for
  credentials, else ``us-east-1``; and no proxy.

Either way: no profile, anonymous access, requester-pays, extra request parameters,
forced virtual-host addressing, TLS options, or options added by fsspec's own
configuration (``FSSPEC_S3_*``). A GET answered with anything but 200 (a missing object,
a refused signature, a busy server) or that fails on the way is left to s3fs too, which
reports or retries it in its own way. Credentials never reach a log, an error or a repr.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import logging
import os
import re
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

from .base import TooLarge, Versioned
from .retry import DEFAULT_POLICY
from .watchdog import current_timeout

T = TypeVar("T")

if TYPE_CHECKING:  # imported where used: a fresh process imports only what its open needs
    from .aws_endpoint import Endpoint

__all__ = [
    "DeferredS3FileSystem",
    "canonical_query",
    "create_multipart",
    "deferred_s3",
    "ranged_request",
    "signed_get",
    "signed_head",
    "sigv4_headers",
]

log = logging.getLogger(__name__)

_PROTOCOLS = ("s3", "s3a")
_RANGED_LOCK = threading.Lock()  # guards DeferredS3FileSystem._ranged (see ranged_request)
_EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
_REDIRECTS = (301, 302, 307, 400)  # PermanentRedirect, AuthorizationHeaderMalformed: another region
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

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, Any]]]:
        # Only what it was given travels (a spawned worker, a Dask or Ray task): never the
        # signing templates ranged_request keeps, which hold credentials read from this
        # process's environment or files.
        return DeferredS3FileSystem, (self.url, self.storage_options)


def deferred_s3(url: str, storage_options: Mapping[str, Any]) -> tuple[DeferredS3FileSystem, str] | None:
    """A deferred filesystem and the path of ``url`` on it, for a plain ``s3://`` URL
    whose options :func:`signed_get` can serve; None otherwise (s3fs resolves it)."""
    protocol, sep, rest = url.partition("://")
    if not sep or protocol not in _PROTOCOLS or "::" in url or "?" in rest or not rest.strip("/"):
        return None
    if not _plain_options(storage_options):
        return None
    from .deferred import fsspec_untouched

    if not fsspec_untouched(_PROTOCOLS, protocol, "s3fs"):  # options from fsspec's configuration, another class
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
    ``max_bytes``. On AWS's endpoints, an answer that names the bucket's region (the
    configured one was wrong) is followed once, to that region."""
    return _signed(fs, path, "GET", lambda request: _send(request, max_bytes))


def signed_head(fs: DeferredS3FileSystem, path: str) -> dict[str, Any] | None:
    """What s3fs's ``info`` says of the object at ``path`` (name, size, ETag,
    LastModified, type "file") by one signed HEAD, or None where s3fs must answer (see
    the module docstring; a 403, which S3 gives for a missing key to a caller who may not
    list the bucket, among them). FileNotFoundError on a 404. Regions as
    :func:`signed_get`."""
    answer = _signed(fs, path, "HEAD", _send_head)
    if answer is False:
        raise FileNotFoundError(path)
    return None if answer is None else dict(answer, name=path)


def _signed(fs: DeferredS3FileSystem, path: str, method: str, send: Callable[[_Request], T | str | None]) -> T | None:
    """``send(request)`` of the signed request for ``path``; an answer naming another
    region (a str) is followed once, to that region. None where s3fs must answer."""
    try:
        request = _request(fs.storage_options, path)
    except Exception as exc:  # noqa: BLE001 - any of it means: go through s3fs
        log.debug("signed %s not possible (%s); going through s3fs", method, type(exc).__name__)
        return None
    for attempt in (1, 2):
        if request is None:
            return None
        answer = send(request)
        if not isinstance(answer, str):
            return answer
        request = request.in_region(answer) if attempt == 1 else None
    return None


def _other_region(request: _Request, response: http.client.HTTPResponse) -> str | None:
    """The region an AWS answer that is a redirect names, if not the request's (the
    response's body is read)."""
    if request.aws is None or response.status not in _REDIRECTS:
        return None
    from .aws_endpoint import region_hint

    hint = region_hint(response)
    return hint if hint is not None and hint != request.region else None


def _send_head(request: _Request) -> dict[str, Any] | str | bool | None:
    """The object's info, False on a 404, the region an AWS answer names (not the
    request's), or None."""
    try:
        conn = request.connection()
    except Exception as exc:  # noqa: BLE001 - any of it means: ask s3fs
        log.debug("signed HEAD not possible (%s); asking s3fs", type(exc).__name__)
        return None
    try:
        conn.request("HEAD", request.target, headers=request.headers(time.gmtime(), "HEAD"))
        response = conn.getresponse()
        response.read()  # (a HEAD's answer has no body)
        if response.status == 404:
            return False
        if response.status != 200:
            return _other_region(request, response)
        size = response.getheader("Content-Length") or ""
        if not size.isdigit():
            return None
        modified = response.getheader("Last-Modified")
        try:  # a datetime, as botocore parses it for s3fs
            import email.utils

            last = None if modified is None else email.utils.parsedate_to_datetime(modified)
        except (TypeError, ValueError):
            last = None
        return {"size": int(size), "type": "file", "ETag": response.getheader("ETag"), "LastModified": last}
    except Exception as exc:  # noqa: BLE001
        log.debug("signed HEAD failed (%s); asking s3fs", type(exc).__name__)
        return None
    finally:
        conn.close()


class _Request:
    """One GET to sign and send; ``aws`` is (bucket, key, addressing style) for AWS's
    own endpoints, None for an explicit ``endpoint_url`` (whose connection
    ``connect_url`` names). Its repr shows no credentials."""

    __slots__ = ("aws", "bucket_key", "cafile", "connect_url", "credentials", "region", "target", "timeout", "where")

    def __init__(self, where: Endpoint, target: str, region: str, credentials: tuple[str, str, str | None],
                 timeout: float | None, cafile: str | None = None, aws: tuple[str, str, str] | None = None,
                 connect_url: str | None = None, bucket_key: tuple[str, str] = ("", "")) -> None:
        self.where, self.target, self.region, self.credentials = where, target, region, credentials
        self.timeout, self.cafile, self.aws, self.connect_url = timeout, cafile, aws, connect_url
        self.bucket_key = aws[:2] if aws is not None else bucket_key

    def headers(self, now: time.struct_time, method: str = "GET", query: str = "",
                payload: str = _EMPTY_SHA256) -> dict[str, str]:
        """The request's headers, signed at ``now`` (for a GET, or ``method``; with the
        canonical ``query`` string and the ``payload``'s hash, see :func:`sigv4_headers`)."""
        return sigv4_headers(method, self.where.host, self.target, self.region, self.credentials, now, query, payload)

    def connection(self) -> http.client.HTTPConnection:
        if self.connect_url is not None:
            return _connect(urllib.parse.urlsplit(self.connect_url), self.timeout)
        from . import aws_endpoint

        return aws_endpoint.connect(self.where, self.timeout, self.cafile)

    @property
    def key(self) -> str:
        return self.bucket_key[1]

    def for_key(self, key: str) -> _Request:
        """The same GET for another object of the bucket."""
        bucket = self.bucket_key[0]
        if self.aws is not None:
            request = _aws_request(bucket, key, self.region, self.aws[2], self.credentials, self.timeout, self.cafile)
            assert request is not None  # the bucket's endpoint was made for this request
            return request
        target = f"{self.target[: len(self.target) - len(_quoted(*self.bucket_key))]}{_quoted(bucket, key)}"
        return _Request(self.where, target, self.region, self.credentials, self.timeout,
                        connect_url=self.connect_url, bucket_key=(bucket, key))

    def in_region(self, region: str) -> _Request | None:
        """The same GET to the bucket's ``region`` (remembered for the process)."""
        if self.aws is None:
            return None
        from . import aws_endpoint

        bucket, key, style = self.aws
        aws_endpoint.remember_region(bucket, region)
        return _aws_request(bucket, key, region, style, self.credentials, self.timeout, self.cafile)


def _send(request: _Request, max_bytes: int | None) -> Versioned | str | None:
    """The object, or the region an AWS answer names (not the request's), or None."""
    try:
        conn = request.connection()
    except Exception as exc:  # noqa: BLE001 - any of it means: read through s3fs
        log.debug("signed GET not possible (%s); reading through s3fs", type(exc).__name__)
        return None
    try:
        conn.request("GET", request.target, headers=request.headers(time.gmtime()))
        response = conn.getresponse()
        if response.status != 200:
            region = _other_region(request, response)
            if region is None:
                response.read(64 * 1024)
            return region
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


def ranged_request(fs: DeferredS3FileSystem, path: str) -> _Request | None:
    """The signed GET of ``path`` for a ranged read of a shard (:func:`.s3.read_signed_range`),
    or None where s3fs must read: the settings are resolved once per filesystem and
    bucket, and only static credentials are kept (given as ``key``/``secret`` with an
    explicit endpoint; on AWS's endpoints, :mod:`.aws_config` finds no other kind), so
    signing a part costs microseconds and never goes stale."""
    bucket, _, key = path.partition("/")
    with _RANGED_LOCK:
        templates = fs.__dict__.setdefault("_ranged", {})
        known = bucket in templates
        template = templates.get(bucket)
    if not known:  # resolved outside the lock: it may send a HEAD to find the region
        options = fs.storage_options
        static = _endpoint(options) is None or bool(options.get("key"))
        resolved = _request(options, path) if static else None
        with _RANGED_LOCK:
            template = templates.setdefault(bucket, resolved)
    if template is None or not key:
        return None
    return template if template.key == key else template.for_key(key)


def _request(options: Mapping[str, Any], path: str) -> _Request | None:
    bucket, _, key = path.partition("/")
    if not bucket or not key:
        return None
    config = options.get("config_kwargs") or {}
    # as for presigned downloads: a server silent this long fails the GET (and s3fs reads)
    timeout = config.get("read_timeout") or current_timeout(DEFAULT_POLICY.stall_timeout)
    timeout = None if timeout is None else float(timeout)
    endpoint = _endpoint(options)
    if endpoint is not None:
        return _endpoint_request(options, endpoint, bucket, key, timeout)
    from . import aws_endpoint
    from .aws_config import aws_settings

    settings = aws_settings(options)
    if settings is None:
        return None
    style, cafile = settings.addressing_style, settings.ca_bundle
    region = (aws_endpoint.known_region(bucket) or settings.region
              or aws_endpoint.bucket_region(bucket, style, timeout, cafile))
    if region is None:
        log.debug("the bucket's region is not known; reading through s3fs")
        return None
    return _aws_request(bucket, key, region, style, settings.credentials, timeout, cafile)


def _aws_request(bucket: str, key: str, region: str, style: str, credentials: tuple[str, str, str | None],
                 timeout: float | None, cafile: str | None) -> _Request | None:
    from . import aws_endpoint

    where = aws_endpoint.endpoint(bucket, region, style)
    if where is None:
        return None
    return _Request(where, aws_endpoint.target(where, bucket, key), region, credentials, timeout, cafile,
                    (bucket, key, style))


def _endpoint_request(options: Mapping[str, Any], endpoint: str, bucket: str, key: str,
                      timeout: float | None) -> _Request | None:
    if _proxied(endpoint):
        return None
    client = options.get("client_kwargs") or {}
    config = options.get("config_kwargs") or {}
    found = _credentials(options)
    if found is None:
        return None
    credentials, configured_region = found
    region = client.get("region_name") or config.get("region_name") or configured_region or "us-east-1"
    base = urllib.parse.urlsplit(endpoint)
    target = f"{base.path.rstrip('/')}{_quoted(bucket, key)}"
    default_port = {"http": ":80", "https": ":443"}.get(base.scheme, "")
    host = base.netloc[: -len(default_port)] if default_port and base.netloc.endswith(default_port) else base.netloc
    from .aws_endpoint import Endpoint

    where = Endpoint(base.scheme, host, True, (base.hostname or "", base.port or 0))
    return _Request(where, target, region, credentials, timeout, connect_url=f"{base.scheme}://{base.netloc}",
                    bucket_key=(bucket, key))


def _quoted(bucket: str, key: str) -> str:
    """The path of an object at an explicit endpoint (by path, as botocore addresses it)."""
    return "/" + urllib.parse.quote(f"{bucket}/{key}", safe="/~")


def sigv4_headers(method: str, host: str, target: str, region: str, credentials: tuple[str, str, str | None],
                  now: time.struct_time, query: str = "", payload: str = _EMPTY_SHA256) -> dict[str, str]:
    """The headers of an S3 request signed with AWS Signature Version 4 (header form, as
    botocore's ``S3SigV4Auth`` signs a ``GetObject``); ``target`` is the request path,
    already quoted; ``query`` the canonical query string (:func:`canonical_query`);
    ``payload`` the hex SHA-256 of the body (none, by default), or ``UNSIGNED-PAYLOAD``.
    Written out here because importing botocore's signer costs a fresh process more
    (~40 ms) than a warm open takes in all."""
    key, secret, token = credentials
    amz_date, day = time.strftime("%Y%m%dT%H%M%SZ", now), time.strftime("%Y%m%d", now)
    headers = {"host": host, "x-amz-content-sha256": payload, "x-amz-date": amz_date}
    if token:
        headers["x-amz-security-token"] = token
    names = sorted(headers)
    signed = ";".join(names)
    canonical = "\n".join([
        method, target, query, *(f"{n}:{headers[n].strip()}" for n in names), "", signed, payload,
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


def create_multipart(request: _Request) -> str:
    """The UploadId of a new multipart upload of the request's object, made by one POST
    signed here (``CreateMultipartUpload``); a refusal raises botocore's ClientError, as
    s3fs would."""
    conn = request.connection()
    try:
        conn.request("POST", f"{request.target}?uploads",
                     headers=request.headers(time.gmtime(), "POST", canonical_query({"uploads": ""})))
        response = conn.getresponse()
        body = response.read(1 << 20)
    finally:
        conn.close()
    if response.status != 200:
        from .multipart import _client_error

        raise _client_error(response.status, body, "CreateMultipartUpload")
    found = re.search(rb"<UploadId>([^<]+)</UploadId>", body)
    if found is None:
        raise http.client.HTTPException("a CreateMultipartUpload answer without an UploadId")
    import html  # (only here: a fresh process's import of roxxel does not pay for it)

    return html.unescape(found.group(1).decode())


def canonical_query(params: Mapping[str, str]) -> str:
    """The query string of ``params`` as Signature Version 4 signs it, and as it is sent:
    sorted by name, each name and value percent-encoded but for ``-_.~``."""
    return "&".join(f"{_encoded(k)}={_encoded(v)}" for k, v in sorted(params.items()))


def _encoded(text: str) -> str:
    return urllib.parse.quote(text, safe="-_.~")


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


def _after_fork_in_child() -> None:
    global _RANGED_LOCK
    _RANGED_LOCK = threading.Lock()  # the parent's may have been held by another thread


os.register_at_fork(after_in_child=_after_fork_in_child)
