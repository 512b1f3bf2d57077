"""Translation of fsspec, botocore, aiohttp, gcsfs and google-auth errors: the one place.

:func:`classify` decides what a backend exception means (missing, denied, exists,
transient, unreachable or permanent) by walking it and its ``__cause__``/``__context__``
chain, because s3fs and gcsfs re-raise botocore and HTTP errors as plain ``OSError``.
:func:`translate` builds the matching roxxel error; callers chain it with
``raise ... from exc``.

Backend modules are looked up in ``sys.modules`` instead of being imported: an exception
of a library that was never imported cannot occur, and roxxel stays cheap to import.
"""

from __future__ import annotations

import asyncio
import enum
import http.client
import ssl
import sys
from collections.abc import Iterator, Mapping
from types import ModuleType

from ..errors import (
    AccessDeniedError,
    DatasetExistsError,
    NotFoundError,
    StorageError,
    TransientStorageError,
)
from .urls import redact

__all__ = ["HTTPStatusError", "Kind", "classify", "describe", "http_status", "throttled", "translate"]

_DETAIL_LIMIT = 300
_NOT_FOUND_CODES = {"NoSuchKey", "NoSuchBucket", "NotFound", "NoSuchVersion"}
_DENIED_CODES = {
    "AccessDenied", "AllAccessDisabled", "InvalidAccessKeyId", "SignatureDoesNotMatch",
    "ExpiredToken", "InvalidToken", "AccountProblem", "InvalidClientTokenId",
    "UnrecognizedClientException",
}
_TRANSIENT_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestTimeout", "InternalError", "ServiceUnavailable",
    "RequestThrottled", "BandwidthLimitExceeded", "ConditionalRequestConflict",
}
_THROTTLE_CODES = {
    "SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
    "TooManyRequestsException", "RequestThrottled", "BandwidthLimitExceeded",
}


class HTTPStatusError(Exception):
    """An HTTP error answer to a request roxxel made itself (a direct ranged GET); its
    meaning comes from the status, as for the cloud clients' errors."""

    def __init__(self, status: int, what: str) -> None:
        super().__init__(f"HTTP {status} for {what}")
        self.status = status


class Kind(enum.Enum):
    """What a backend failure means for the caller."""

    NOT_FOUND = "not found"
    DENIED = "access denied"
    EXISTS = "already exists"
    TRANSIENT = "transient"
    UNREACHABLE = "endpoint unreachable"
    PERMANENT = "failed"

    @property
    def retryable(self) -> bool:
        return self in (Kind.TRANSIENT, Kind.UNREACHABLE)


def classify(exc: BaseException) -> Kind:
    """The meaning of ``exc``: the first decisive exception in its chain wins."""
    for link in _chain(exc):
        kind = _classify_one(link)
        if kind is not None:
            return kind
    return Kind.PERMANENT


def translate(
    exc: BaseException,
    kind: Kind,
    op: str,
    url: str,
    *,
    attempts: int = 1,
    elapsed: float = 0.0,
) -> StorageError:
    """The roxxel error for ``exc``; its message names ``op`` and ``url``, never credentials."""
    where = f"could not {op} {redact(url)}"
    detail = describe(exc)
    if kind is Kind.NOT_FOUND:
        return NotFoundError(f"{where}: not found ({detail})")
    if kind is Kind.DENIED:
        return AccessDeniedError(
            f"{where}: access denied ({detail}); check the credentials and the "
            "storage_options given for this store (or the file permissions, for local paths)"
        )
    if kind is Kind.EXISTS:
        return DatasetExistsError(f"{where}: it already exists")
    if kind.retryable:
        hint = "; is the endpoint right and the server up?" if kind is Kind.UNREACHABLE else ""
        return TransientStorageError(
            f"{where}: {kind.value}, still failing after {attempts} attempt(s) "
            f"over {elapsed:.1f}s ({detail}){hint}"
        )
    if any(_bad_certificate(link) for link in _chain(exc)):
        return StorageError(
            f"{where}: the server's TLS certificate did not verify ({detail}); if the store "
            "uses a private CA, point AWS_CA_BUNDLE (S3) at it"
        )
    return StorageError(f"{where}: {detail}")


def describe(exc: BaseException) -> str:
    """A short, single-line, redacted ``Type: message`` for ``exc``."""
    text = " ".join(str(exc).split())
    if len(text) > _DETAIL_LIMIT:
        text = text[: _DETAIL_LIMIT - 3] + "..."
    name = type(exc).__name__
    return f"{name}: {redact(text)}" if text else name


def http_status(exc: BaseException) -> int | None:
    """The HTTP status that ``exc`` or its chain carries (botocore's ClientError, gcsfs's
    HttpError, aiohttp's ClientResponseError), or None."""
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if isinstance(response, Mapping):
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if isinstance(status, int):
                return status
        for name in ("code", "status"):
            value = getattr(link, name, None)
            if isinstance(value, int) and not isinstance(value, bool) and 100 <= value < 600:
                return value
    return None


def throttled(exc: BaseException) -> bool:
    """Whether ``exc`` is the store asking the client to slow down (HTTP 429, 503, or an
    S3 error code such as SlowDown)."""
    if http_status(exc) in (429, 503):
        return True
    for link in _chain(exc):
        response = getattr(link, "response", None)
        if isinstance(response, Mapping) and response.get("Error", {}).get("Code") in _THROTTLE_CODES:
            return True
    return False


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen and len(seen) < 16:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


# A TLS connection cut short (mid-handshake or mid-body): as transient as a reset.
_TLS_DROPS = (ssl.SSLEOFError, ssl.SSLZeroReturnError, ssl.SSLSyscallError)


def _bad_certificate(exc: BaseException) -> bool:
    """Whether ``exc`` is, or wraps, a TLS certificate that did not verify: a
    configuration error that no retry mends (botocore files it as a connection error)."""
    kwargs = getattr(exc, "kwargs", None)  # botocore's SSLError(error=...)
    inner = kwargs.get("error") if isinstance(kwargs, Mapping) else None
    links = [*_chain(inner)] if isinstance(inner, BaseException) else []
    for link in (exc, *links):
        if isinstance(link, ssl.SSLCertVerificationError):
            return True
        if isinstance(getattr(link, "certificate_error", None), ssl.SSLCertVerificationError):
            return True  # aiohttp's ClientConnectorCertificateError
    return False


def _classify_one(exc: BaseException) -> Kind | None:
    if _bad_certificate(exc):
        return Kind.PERMANENT
    if isinstance(exc, FileNotFoundError):
        return Kind.NOT_FOUND
    if isinstance(exc, PermissionError):
        return Kind.DENIED
    if isinstance(exc, FileExistsError):
        return Kind.EXISTS
    if isinstance(exc, ConnectionRefusedError):
        return Kind.UNREACHABLE
    if isinstance(exc, HTTPStatusError):
        return from_http_status(exc.status)
    for classifier in (_botocore, _aiohttp, _gcsfs, _google, _requests):
        kind = classifier(exc)
        if kind is not None:
            return kind
    if isinstance(
        exc, (ConnectionError, TimeoutError, asyncio.TimeoutError, http.client.IncompleteRead, *_TLS_DROPS)
    ):
        return Kind.TRANSIENT
    if isinstance(exc, ssl.SSLError) and "BAD_RECORD_MAC" in str(exc):
        return Kind.TRANSIENT  # a record damaged in transit
    if type(exc) is OSError and str(exc).startswith("Forbidden"):
        return Kind.DENIED  # gcsfs turns HTTP 403 into a bare OSError("Forbidden: ...")
    return None


def from_http_status(status: object, code: str = "") -> Kind:
    """The meaning of an HTTP status (and S3-style error code) in a response."""
    try:
        number = int(status)  # type: ignore[call-overload]
    except (TypeError, ValueError):
        number = 0
    if number == 404 or code in _NOT_FOUND_CODES:
        return Kind.NOT_FOUND
    if number in (401, 403) or code in _DENIED_CODES:
        return Kind.DENIED
    if number == 501:  # Not Implemented: no retry changes that
        return Kind.PERMANENT
    if number in (408, 429) or number >= 500 or code in _TRANSIENT_CODES:
        return Kind.TRANSIENT
    return Kind.PERMANENT


def _module(name: str) -> ModuleType | None:
    return sys.modules.get(name)


def _types(module: ModuleType, *names: str) -> tuple[type, ...]:
    return tuple(t for t in (getattr(module, n, None) for n in names) if isinstance(t, type))


def _botocore(exc: BaseException) -> Kind | None:
    m = _module("botocore.exceptions")
    if m is None:
        return None
    if isinstance(exc, m.ClientError):
        response = getattr(exc, "response", None) or {}
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return from_http_status(status, str(response.get("Error", {}).get("Code", "")))
    if isinstance(exc, _types(
        m, "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
        "UnauthorizedSSOTokenError", "TokenRetrievalError", "SSOTokenLoadError",
    )):
        return Kind.DENIED
    if isinstance(exc, m.ConnectTimeoutError):
        return Kind.TRANSIENT  # also an EndpointConnectionError: a slow server, not a dead one
    if isinstance(exc, m.EndpointConnectionError):
        return Kind.UNREACHABLE
    if isinstance(exc, _types(
        m, "ConnectionError", "HTTPClientError", "IncompleteReadError", "ResponseStreamingError",
    )):
        return Kind.TRANSIENT
    if isinstance(exc, m.BotoCoreError):
        return Kind.PERMANENT
    return None


def _aiohttp(exc: BaseException) -> Kind | None:
    m = _module("aiohttp")
    if m is None:
        return None
    if isinstance(exc, m.ClientResponseError):
        return from_http_status(exc.status)
    if isinstance(exc, _types(m, "ClientConnectorDNSError")):
        return Kind.UNREACHABLE
    if isinstance(exc, m.ClientConnectorError):
        refused = isinstance(getattr(exc, "os_error", None), ConnectionRefusedError)
        return Kind.UNREACHABLE if refused else Kind.TRANSIENT
    if isinstance(exc, (m.ClientPayloadError, m.ClientConnectionError)):
        return Kind.TRANSIENT
    if isinstance(exc, m.ClientError):
        return Kind.PERMANENT
    return None


def _gcsfs(exc: BaseException) -> Kind | None:
    m = _module("gcsfs.retry")
    if m is None:
        return None
    if isinstance(exc, m.HttpError):
        return from_http_status(exc.code)
    if isinstance(exc, m.ChecksumError):
        return Kind.TRANSIENT  # corrupted in transit: a fresh download may succeed
    return None


def _google(exc: BaseException) -> Kind | None:
    auth = _module("google.auth.exceptions")
    if auth is not None and isinstance(exc, auth.GoogleAuthError):
        if isinstance(exc, _types(auth, "TransportError")):
            return Kind.TRANSIENT
        if isinstance(exc, auth.RefreshError) and getattr(exc, "retryable", False):
            return Kind.TRANSIENT
        return Kind.DENIED
    api = _module("google.api_core.exceptions")
    if api is not None:
        if isinstance(exc, api.RetryError):
            return Kind.TRANSIENT
        if isinstance(exc, api.GoogleAPICallError):
            return from_http_status(exc.code)
    return None


def _requests(exc: BaseException) -> Kind | None:
    m = _module("requests.exceptions")
    if m is None or not isinstance(exc, m.RequestException):
        return None
    if isinstance(exc, (m.ConnectionError, m.Timeout, m.ChunkedEncodingError)):
        return Kind.TRANSIENT  # gcsfs raises requests' ProxyError for HTTP 502
    if isinstance(exc, m.HTTPError) and exc.response is not None:
        return from_http_status(exc.response.status_code)
    return Kind.PERMANENT
