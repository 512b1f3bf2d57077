"""moto's S3 server behind a fault-injecting WSGI middleware, for end-to-end S3 faults.

Run as ``python -m tests.faulty_s3 PORT`` (see :func:`start`). Faults are configured at
run time by POSTing JSON to ``/__faults__``::

    {"rate": 0.05, "kinds": ["slowdown", "500", "cut"], "methods": ["GET"], "seed": 1,
     "stall_seconds": 10, "limit": null}

and ``GET /__faults__`` returns the requests seen and the faults injected (both reset by
every POST). Kinds: ``slowdown`` (503 SlowDown), ``500`` (InternalError), ``cut`` (a GET
body cut in half after a full Content-Length header, then the connection closed),
``stall`` (the request hangs for ``stall_seconds`` before it is served) and ``stallbody``
(a GET body sends its first half, then nothing for ``stall_seconds``, then the rest);
``limit`` caps the faults injected. Only requests
for objects (``/bucket/key...``) are faulted; moto's own API is left alone. The n-th
request of a method is faulted when a hash of (seed, method, n) falls below ``rate``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

__all__ = ["FaultMiddleware", "FaultyS3", "running", "start"]

REPO = Path(__file__).resolve().parents[1]
_ERRORS = {
    "slowdown": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
    "500": ("500 Internal Server Error", "InternalError", "We encountered an internal error."),
}


class FaultMiddleware:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.lock = threading.Lock()
        self.configure({})

    def configure(self, config: dict[str, Any]) -> None:
        with self.lock:
            self.config = {"rate": 0.0, "kinds": [], "methods": ["GET"], "seed": 0, "stall_seconds": 5.0,
                           "limit": None}
            self.config.update(config)
            self.requests: Counter = Counter()
            self.injected: Counter = Counter()

    def _decide(self, method: str, path: str) -> str | None:
        with self.lock:
            self.requests[method] += 1
            n = self.requests[method]
            config = self.config
            if method not in config["methods"] or not config["kinds"] or path.count("/") < 2:
                return None
            if config["limit"] is not None and sum(self.injected.values()) >= config["limit"]:
                return None
            key = repr((config["seed"], method, n)).encode()
            draw = int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") / 2**64
            if draw >= config["rate"]:
                return None
            kinds = config["kinds"]
            kind = kinds[int(draw / config["rate"] * len(kinds)) % len(kinds)]
            self.injected[kind] += 1
            return kind

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path, method = environ.get("PATH_INFO", ""), environ["REQUEST_METHOD"]
        if path == "/__faults__":
            if method == "POST":
                length = int(environ.get("CONTENT_LENGTH") or 0)
                self.configure(json.loads(environ["wsgi.input"].read(length) or b"{}"))
            with self.lock:
                body = json.dumps({"requests": self.requests, "injected": self.injected}).encode()
            start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        if path.startswith("/moto-api"):
            return self.app(environ, start_response)
        kind = self._decide(method, path)
        if kind in _ERRORS:
            length = int(environ.get("CONTENT_LENGTH") or 0)
            if length:
                environ["wsgi.input"].read(length)
            status, code, message = _ERRORS[kind]
            body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
                    f"<Message>{message}</Message><RequestId>fault</RequestId></Error>").encode()
            start_response(status, [("Content-Type", "application/xml"), ("Content-Length", str(len(body))),
                                    ("Connection", "close")])
            return [body]
        if kind == "stall":
            time.sleep(float(self.config["stall_seconds"]))
        if kind == "stallbody" and method == "GET":
            return self._stalled_body(environ, start_response)
        if kind == "cut" and method == "GET":
            captured: dict[str, Any] = {}

            def keep(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                captured["status"], captured["headers"] = status, headers
                return lambda data: None

            body = b"".join(self.app(environ, keep))
            if len(body) > 1 and captured["status"].startswith("2"):
                headers = [(k, v) for k, v in captured["headers"] if k.lower() not in ("content-length", "connection")]
                headers += [("Content-Length", str(len(body))), ("Connection", "close")]
                start_response(captured["status"], headers)
                return [body[: len(body) // 2]]
            start_response(captured["status"], captured["headers"])
            return [body]
        return self.app(environ, start_response)

    def _stalled_body(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        body = b"".join(self.app(environ, start_response))
        stall = float(self.config["stall_seconds"])

        def chunks() -> Iterator[bytes]:
            yield body[: len(body) // 2]
            time.sleep(stall)
            yield body[len(body) // 2 :]

        return chunks()


def serve(port: int) -> None:
    from moto.moto_server.werkzeug_app import (
        DomainDispatcherApplication,
        MotoRequestHandler,
        create_backend_app,
    )
    from werkzeug.serving import make_server

    app = FaultMiddleware(DomainDispatcherApplication(create_backend_app))
    make_server("127.0.0.1", port, app, True, request_handler=MotoRequestHandler).serve_forever()


class FaultyS3:
    """A running faulty S3 server (a subprocess); ``endpoint`` and ``configure``."""

    def __init__(self, process: subprocess.Popen, endpoint: str) -> None:
        self.process, self.endpoint = process, endpoint

    def configure(self, **config: Any) -> None:
        request = urllib.request.Request(self.endpoint + "/__faults__", data=json.dumps(config).encode(),
                                         method="POST")
        urllib.request.urlopen(request, timeout=5).read()

    def counts(self) -> dict[str, dict[str, int]]:
        return json.loads(urllib.request.urlopen(self.endpoint + "/__faults__", timeout=5).read())

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)


def start(timeout: float = 30.0) -> FaultyS3:
    from tests.servers import _die_with_parent, free_port

    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(REPO), AWS_EC2_METADATA_DISABLED="true")
    process = subprocess.Popen([sys.executable, "-m", "tests.faulty_s3", str(port)], cwd=REPO, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None)
    server = FaultyS3(process, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the faulty S3 server exited with {process.returncode}")
        try:
            server.counts()
            return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"the faulty S3 server did not start within {timeout}s")


@contextlib.contextmanager
def running(bucket: str, read_timeout: float) -> Iterator[tuple[FaultyS3, dict[str, Any]]]:
    """A faulty S3 server with ``bucket`` created, and storage options for it whose client
    read timeout is ``read_timeout`` (uncached filesystems); stopped on exit."""
    import fsspec

    from tests.servers import _clear_instance_caches, s3_storage_options

    server = start()
    options = s3_storage_options(server.endpoint, read_timeout=read_timeout) | {"skip_instance_cache": True}
    try:
        fsspec.filesystem("s3", **options).call_s3("create_bucket", Bucket=bucket)
        yield server, options
    finally:
        server.stop()
        _clear_instance_caches()


if __name__ == "__main__":
    serve(int(sys.argv[1]))
