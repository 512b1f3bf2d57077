"""The shaping proxy (tests/shaping_proxy.py) carries bytes intact and imposes what it is
told: first-byte latency per response, a per-connection rate and a link-wide rate. The
bounds checked are lower bounds the token buckets guarantee, never speeds of this machine."""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests import shaping_proxy

BODY = bytes(range(256)) * (16 * 1024)  # 4 MiB


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        self.send_response(200)
        self.send_header("Content-Length", str(len(BODY)))
        self.end_headers()
        self.wfile.write(BODY)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def origin():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()


def _get(port: int, requests: int = 1) -> tuple[float, list[float]]:
    """Total seconds for ``requests`` GETs on one kept-alive connection, and each one's
    time to its first byte."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    firsts, started = [], time.monotonic()
    for _ in range(requests):
        t0 = time.monotonic()
        conn.request("GET", "/")
        response = conn.getresponse()
        firsts.append(time.monotonic() - t0)
        assert response.read() == BODY
    conn.close()
    return time.monotonic() - started, firsts


def test_bytes_pass_intact_and_each_response_waits_for_its_latency(origin):
    with shaping_proxy.start(origin, latency=0.2) as proxy:
        _, firsts = _get(proxy.port, requests=3)
    assert min(firsts) >= 0.2, firsts  # every response on the kept-alive connection


def test_one_connection_is_held_to_its_rate(origin):
    with shaping_proxy.start(origin, conn_rate=8e6) as proxy:
        elapsed, _ = _get(proxy.port)
    # 4 MiB at 8 MB/s, less one buffer of burst: at least 0.49 s.
    assert elapsed >= (len(BODY) - 256 * 1024) / 8e6, elapsed


def test_connections_share_the_link_rate(origin):
    with shaping_proxy.start(origin, conn_rate=None, link_rate=16e6) as proxy:
        started = time.monotonic()
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda _: _get(proxy.port), range(4)))
        elapsed = time.monotonic() - started
    # 16 MiB over one 16 MB/s link, less one buffer of burst.
    assert elapsed >= (4 * len(BODY) - 256 * 1024) / 16e6, elapsed
