"""Opening a GCS dataset without gcsfs: a deferred filesystem, its URLs and its headers.

Importing gcsfs (with aiohttp and google-cloud-storage) and making its client cost a
fresh process 400-500 ms, while opening a dataset needs one object from the store, its
manifest, and a cold read needs only ranged GETs, which :mod:`.gcs` already sends with
:mod:`http.client`. So a ``gs://`` URL whose options are plain resolves to a
:class:`DeferredGCSFileSystem`, which imports gcsfs and makes the real
``GCSFileSystem`` only when something needs it (a listing, a write, a GET that did not
answer 200); until then :class:`~roxxel.backends.gcs.GCSBackend` reads the manifest
with one JSON-API media GET and the shards' parts with ranged GETs of the same URL
(``{location}/download/storage/v1/b/{bucket}/o/{name}?alt=media``, the URL gcsfs's
``fs.url`` gives), with the headers gcsfs's credentials would add.

Only what gcsfs would send for the same options is sent, to where gcsfs would send it:

- **Where**: ``endpoint_url``, else ``STORAGE_EMULATOR_HOST`` (``http://`` added to a bare
  host, as gcsfs does), else ``https://storage.googleapis.com``. On Google's endpoint, a
  bucket that gcsfs's zonal-aware class would read over gRPC (its storage layout says
  ``zone``) is left to gcsfs.
- **Who**: ``token="anon"`` sends no credentials. ``token=None`` (gcsfs's default) and
  ``token="google_default"`` use the Application Default Credentials that
  ``google.auth.default()`` finds, with the scope of ``access`` (gcsfs's default
  ``full_control``), refreshed as gcsfs refreshes them (five minutes before they expire)
  by a small :mod:`http.client` transport (:class:`AuthTransport`), so neither
  ``requests`` nor gcsfs is imported. gcsfs tries the same call first for
  ``token=None``; where it finds nothing, fails, or finds a project other than a
  ``project`` given (gcsfs would then try its token cache, the metadata server or
  anonymous access), the URL is left to gcsfs, so the identity is always the one gcsfs
  would use.
- **Not plain** (gcsfs resolves it): any other token (a file, a dict, a credentials
  object, ``"cache"``, ``"cloud"``, ``"browser"``), ``requester_pays``, ``session_kwargs``,
  ``consistency``, ``version_aware``, unknown keys, options from fsspec's configuration
  (``FSSPEC_GCS_*``), ``gs://`` registered to another implementation, URLs with a query,
  a fragment or a chain, a client certificate configured for Google's mTLS endpoint,
  another universe domain, and, for ADC, a proxy or CA bundle configured for
  ``requests`` (which gcsfs refreshes tokens with).

Credentials never reach a log, an error, a repr or a pickle: a pickled deferred
filesystem carries the URL and the options it was given, never the credentials object.
"""

from __future__ import annotations

import datetime
import functools
import http.client
import json
import logging
import os
import ssl
import threading
import urllib.parse
import urllib.request
from collections.abc import Mapping
from typing import Any

__all__ = ["AuthTransport", "DeferredGCSFileSystem", "deferred_gcs"]

log = logging.getLogger(__name__)

_PROTOCOLS = ("gs", "gcs")
# storage_options whose meaning the plain GETs reproduce, or that change nothing they send
_OPTIONS = {"token", "project", "access", "endpoint_url", "skip_instance_cache", "use_listings_cache",
            "listings_expiry_time", "cache_timeout", "block_size", "default_location"}
_TOKENS = (None, "anon", "google_default")
_ACCESS = ("read_only", "read_write", "full_control")  # gcsfs's GCSFileSystem.scopes
_GOOGLE = "https://storage.googleapis.com"
_REFRESH_BUFFER = 300.0  # seconds before expiry a token is refreshed (gcsfs's LOCAL_REFRESH_BUFFER)
_AUTH_TIMEOUT = 120.0  # a token request without a timeout of its own (as google.auth's transports)
_LAYOUT_TIMEOUT = 10.0
# environment variables that change how requests (gcsfs's token transport) connects
_REQUESTS_ENV = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")
_CERT_CONFIGS = ("GOOGLE_API_CERTIFICATE_CONFIG", "CLOUDSDK_CONTEXT_AWARE_CERTIFICATE_CONFIG_FILE_PATH")
# environment variables google.auth.default() reads: a lookup is kept while they are unchanged
_ADC_ENV = ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG", "GOOGLE_CLOUD_PROJECT", "GCLOUD_PROJECT",
            "GCE_METADATA_HOST", "GCE_METADATA_IP", "NO_GCE_CHECK")
# (scope, project wanted, those variables) -> the credentials found, or the exception raised:
# each open would otherwise read the files (or ask the metadata server) again, and where
# nothing is found, pay the search before gcsfs pays it too
_ADC: dict[tuple[str | None, ...], Any] = {}
_ADC_LOCK = threading.Lock()
_REFRESHING = threading.Lock()  # one refresh at a time: filesystems share the credentials found


class DeferredGCSFileSystem:
    """A ``gs://`` filesystem not made yet: its arguments, the URLs and headers of plain
    GETs gcsfs would send (:meth:`media_url`, :meth:`headers`), and :meth:`materialize`."""

    protocol = _PROTOCOLS

    def __init__(self, url: str, storage_options: Mapping[str, Any]) -> None:
        self.url = url
        self.storage_options = dict(storage_options)
        self._lock = threading.Lock()  # guards _credentials, _resolved, _layouts
        self._credentials: Any = None
        self._resolved = self.storage_options.get("token") == "anon"
        self._layouts: dict[str, bool] = {}

    def materialize(self) -> Any:
        """The real ``GCSFileSystem`` (fsspec's cached instance for these options)."""
        from fsspec.core import url_to_fs

        return url_to_fs(self.url, **self.storage_options)[0]

    @property
    def location(self) -> str:
        """``http[s]://host[:port]`` of the JSON API, as gcsfs finds it (read each time,
        as gcsfs reads ``STORAGE_EMULATOR_HOST`` each time)."""
        return _location(self.storage_options)

    def media_url(self, path: str) -> str:
        """The URL of a whole-object GET of ``path`` (``bucket/name``): gcsfs's ``fs.url``."""
        bucket, _, name = path.partition("/")
        return f"{self.location}/download/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}?alt=media"

    def metadata_url(self, path: str) -> str:
        """The URL of the JSON API's object resource of ``path`` (what gcsfs's ``info`` GETs)."""
        bucket, _, name = path.partition("/")
        return f"{self.location}/storage/v1/b/{bucket}/o/{urllib.parse.quote(name, safe='')}"

    def headers(self) -> dict[str, str]:
        """The headers gcsfs's credentials would add to a request (none for anonymous
        access), refreshed first where the token expires within five minutes; safe to
        call from many threads (one refreshes, the others wait for it). Raises where
        the credentials cannot be found or refreshed: the caller reads through gcsfs."""
        credentials = self._resolve()
        out: dict[str, str] = {}
        if credentials is None:
            return out
        if not _fresh(credentials):
            with _REFRESHING:
                if not _fresh(credentials):
                    log.debug("refreshing the GCS access token")
                    credentials.refresh(AuthTransport())
        credentials.apply(out)
        return out

    def json_readable(self, bucket: str) -> bool:
        """Whether gcsfs reads the objects of ``bucket`` with the JSON API (False: a zonal
        bucket, which gcsfs's zonal-aware class reads over gRPC). Asked once per bucket,
        and only on Google's endpoint with that class enabled; an answer that says
        nothing (no permission, an error) means JSON, as it does for gcsfs."""
        if not _zonal_class_enabled() or not self.location.startswith(_GOOGLE):
            return True
        with self._lock:
            known = self._layouts.get(bucket)
        if known is not None:
            return known
        readable, definite = _layout_says_json(self, bucket)
        if definite:
            with self._lock:
                self._layouts[bucket] = readable
        return readable

    def _resolve(self) -> Any:
        """The credentials object (None: anonymous), found once."""
        if self._resolved:
            return self._credentials
        with self._lock:
            if not self._resolved:
                self._credentials = _default_credentials(self.storage_options)
                self._resolved = True
            return self._credentials

    def __repr__(self) -> str:
        return "DeferredGCSFileSystem()"  # the options may name a project; the credentials stay out

    def __reduce__(self) -> tuple[type, tuple[str, dict[str, Any]]]:
        # Only what it was given travels (a spawned worker, a Dask or Ray task), never the
        # credentials object found in this process: the receiver finds its own.
        return DeferredGCSFileSystem, (self.url, self.storage_options)


def deferred_gcs(url: str, storage_options: Mapping[str, Any]) -> tuple[DeferredGCSFileSystem, str] | None:
    """A deferred filesystem and the path of ``url`` on it, for a ``gs://``/``gcs://`` URL
    whose options are plain (see the module docstring); None otherwise (gcsfs resolves
    it). For ``token`` None or ``"google_default"``, the Application Default Credentials
    are looked up here: None where there are none."""
    protocol, sep, rest = url.partition("://")
    if not sep or protocol not in _PROTOCOLS or "::" in url or "?" in rest or "#" in rest:
        return None
    if not rest.strip("/") or not _plain_options(storage_options):
        return None
    from .deferred import fsspec_untouched

    if not fsspec_untouched(_PROTOCOLS, protocol, "gcsfs"):  # options from fsspec's configuration, another class
        return None
    location = _location(storage_options)
    if location.startswith("https://") and _client_certificate_configured():
        return None  # gcsfs would present it (and may use the mTLS endpoint)
    if location.startswith(_GOOGLE) and os.environ.get("GOOGLE_CLOUD_UNIVERSE_DOMAIN", "googleapis.com") != (
        "googleapis.com"
    ):
        return None
    fs = DeferredGCSFileSystem(url, storage_options)
    if storage_options.get("token") != "anon":
        try:
            fs._resolve()
        except Exception as exc:  # noqa: BLE001 - nothing found, or found otherwise: gcsfs decides
            log.debug("no Application Default Credentials to use (%s); opening through gcsfs",
                      type(exc).__name__)
            return None
    return fs, rest.rstrip("/")


def _plain_options(options: Mapping[str, Any]) -> bool:
    if not set(options) <= _OPTIONS:
        return False
    token = options.get("token")
    if not (token is None or isinstance(token, str)) or token not in _TOKENS:
        return False
    if options.get("access", "full_control") not in _ACCESS:
        return False
    endpoint = options.get("endpoint_url")
    if endpoint is not None and not (isinstance(endpoint, str) and endpoint.startswith(("http://", "https://"))):
        return False
    project = options.get("project")
    return project is None or isinstance(project, str)


def _location(options: Mapping[str, Any]) -> str:
    """gcsfs's ``_location``: the endpoint given, else the emulator's, else Google's."""
    endpoint = options.get("endpoint_url")
    if endpoint:
        return str(endpoint)
    emulator = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if emulator not in ("", "default"):
        return emulator if emulator.startswith(("http://", "https://")) else f"http://{emulator}"
    return _GOOGLE


def _client_certificate_configured() -> bool:
    """Whether google-auth might tell gcsfs to present a client certificate (answered
    without importing it; True where in doubt)."""
    explicit = os.environ.get("GOOGLE_API_USE_CLIENT_CERTIFICATE", "").strip().lower()
    if explicit:
        return explicit != "false"
    configs = [os.environ.get(name) for name in _CERT_CONFIGS]
    configs.append(os.path.join(os.path.expanduser("~"), ".config", "gcloud", "certificate_config.json"))
    return any(path and os.path.exists(path) for path in configs)


def _zonal_class_enabled() -> bool:
    """Whether gcsfs's ``GCSFileSystem`` is its zonal-aware class (as gcsfs decides on import)."""
    return os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "true").lower() in ("true", "1")


def _default_credentials(options: Mapping[str, Any]) -> Any:
    """The credentials gcsfs's ``google_default`` connection would find; raises where it
    would fail, or where gcsfs would use other ones (``token=None`` and a ``project``
    other than ADC's: gcsfs moves on to its token cache)."""
    if _proxied() or any(os.environ.get(name) for name in _REQUESTS_ENV):
        raise LookupError("requests would refresh tokens through settings of its own")
    scope = "https://www.googleapis.com/auth/devstorage." + options.get("access", "full_control")
    wanted = options.get("project", os.environ.get("GCSFS_DEFAULT_PROJECT", ""))
    key = (scope, wanted, *(os.environ.get(name) for name in _ADC_ENV))
    with _ADC_LOCK:
        found = _ADC.get(key)
    if found is None:
        try:
            found = _look_up(scope, wanted)
        except Exception as exc:  # noqa: BLE001 - kept (by its name alone: its frames may hold a key)
            found = LookupError(f"{type(exc).__name__} while looking for them")
        with _ADC_LOCK:
            found = _ADC.setdefault(key, found)
    if isinstance(found, Exception):  # a kept failure, not a wrong argument
        raise LookupError("no default credentials gcsfs would use") from found  # noqa: TRY004
    return found


def _look_up(scope: str, wanted: str | None) -> Any:
    import google.auth

    credentials, project = google.auth.default(scopes=[scope], request=AuthTransport())
    if wanted and wanted != project:
        raise LookupError("a project other than the default credentials' one")
    if credentials is None:
        raise LookupError("no default credentials")
    return credentials


def _fresh(credentials: Any) -> bool:
    """gcsfs's ``_credentials_valid``: valid, and not expiring within five minutes."""
    if not credentials.valid:
        return False
    expiry = credentials.expiry
    if not expiry:
        return True
    left = expiry.replace(tzinfo=datetime.timezone.utc) - datetime.datetime.now(datetime.timezone.utc)
    return left.total_seconds() > _REFRESH_BUFFER


def _proxied() -> bool:
    proxies = urllib.request.getproxies()
    return any(k in proxies for k in ("http", "https", "all"))


def _layout_says_json(fs: DeferredGCSFileSystem, bucket: str) -> tuple[bool, bool]:
    """(JSON-readable, whether the answer is definite) from the bucket's storage layout
    (the JSON API's ``getStorageLayout``, what gcsfs asks over gRPC)."""
    url = f"{fs.location}/storage/v1/b/{urllib.parse.quote(bucket, safe='')}/storageLayout"
    try:
        status, body = _get(url, fs.headers(), _LAYOUT_TIMEOUT)
    except Exception as exc:  # noqa: BLE001 - gcsfs then reads with the JSON API too
        log.debug("no storage layout for a GCS bucket (%s)", type(exc).__name__)
        return True, False
    if status in (401, 403, 404):
        return True, True  # as gcsfs: not found or not allowed means a plain bucket
    if status != 200:
        return True, False
    try:
        layout = json.loads(body)
    except ValueError:
        return True, False
    zonal = isinstance(layout, dict) and layout.get("locationType") == "zone"
    return not zonal, True


def _get(url: str, headers: Mapping[str, str], timeout: float) -> tuple[int, bytes]:
    response = AuthTransport()(url, "GET", headers=dict(headers), timeout=timeout)
    return response.status, response.data


def _connection(url: str, timeout: float | None) -> tuple[http.client.HTTPConnection, str]:
    parts = urllib.parse.urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "http":
        return http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=timeout), target
    if parts.scheme != "https":
        raise ValueError("not an http(s) URL")
    return http.client.HTTPSConnection(parts.hostname or "", parts.port, timeout=timeout,
                                       context=_auth_tls()), target


@functools.lru_cache(maxsize=1)
def _auth_tls() -> ssl.SSLContext:
    """The certificates ``requests`` (gcsfs's transport for google.auth) trusts: certifi's
    bundle where it is installed, as requests uses it; else the system's."""
    try:
        import certifi
    except ImportError:
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


class _Response:
    """A ``google.auth.transport.Response``: status, headers (case-insensitive), body."""

    def __init__(self, status: int, headers: Any, data: bytes) -> None:
        self.status, self.headers, self.data = status, headers, data


class AuthTransport:
    """A ``google.auth.transport.Request`` on :mod:`http.client`, for google.auth's own
    requests (token refreshes, the metadata server): one connection per request, closed
    after it. google.auth's ``requests`` transport would import ``requests`` (~100 ms)."""

    def __call__(self, url: str, method: str = "GET", body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None,
                 **kwargs: Any) -> _Response:
        from google.auth import exceptions

        try:
            conn, target = _connection(url, _AUTH_TIMEOUT if timeout is None else timeout)
            try:
                conn.request(method, target, body=body, headers=dict(headers or {}))
                response = conn.getresponse()
                return _Response(response.status, response.headers, response.read())
            finally:
                conn.close()
        except (OSError, http.client.HTTPException, ValueError) as exc:
            raise exceptions.TransportError(f"{type(exc).__name__} during a google-auth request") from exc


def _after_fork_in_child() -> None:
    global _ADC_LOCK, _REFRESHING
    _ADC_LOCK, _REFRESHING = threading.Lock(), threading.Lock()  # a parent's thread may have held them


os.register_at_fork(after_in_child=_after_fork_in_child)
