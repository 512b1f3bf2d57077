"""A TCP proxy on loopback that makes a local server behave like a real object store's link.

A real S3/GCS connection delivers roughly 50-100 MB/s after tens of milliseconds to the
first byte, and a node reaches its link speed only with many connections at once; on
loopback one connection runs at GB/s. Between a client and a loopback server this proxy
adds, in both directions:

- ``latency``: seconds before the first byte of each response (after a request, the first
  bytes the server sends back are held this long; later bytes of the same response flow);
- ``conn_rate``: a token bucket per connection and direction, in bytes per second;
- ``link_rate``: one token bucket per direction shared by every connection (the node's NIC).

Run it as a subprocess (so it does not share the GIL with the client)::

    with start(target_port=9000, latency=0.03, conn_rate=25e6, link_rate=400e6) as proxy:
        endpoint = proxy.endpoint          # http://127.0.0.1:PORT, forwarding to :9000

or ``python -m tests.shaping_proxy --target-port 9000 --latency 0.03 ...``, which prints
its port on the first line of stdout. Buffers are 256 KiB; one proxy carries > 2 GB/s on
the reference machine, well above the rates it is used to impose.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import time
from dataclasses import dataclass

__all__ = ["Proxy", "start"]

_BUFFER = 256 * 1024
_HOST = "127.0.0.1"


class Bucket:
    """A token bucket: ``take(n)`` waits until ``n`` bytes may pass at ``rate`` bytes/s
    (with a burst of one buffer). ``rate`` None lets everything through at once."""

    def __init__(self, rate: float | None) -> None:
        self.rate = rate
        self.tokens = float(_BUFFER)
        self.stamp = time.monotonic()

    async def take(self, n: int) -> None:
        if self.rate is None:
            return
        now = time.monotonic()
        self.tokens = min(float(_BUFFER), self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        if self.tokens < 0:  # in debt: wait until it is paid back
            await asyncio.sleep(-self.tokens / self.rate)


@dataclass
class _Shaping:
    latency: float
    conn_rate: float | None
    up_link: Bucket
    down_link: Bucket


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, buckets: list[Bucket],
                latency: float, state: dict[str, bool], upstream: bool) -> None:
    try:
        while True:
            data = await reader.read(_BUFFER)
            if not data:
                break
            if upstream:
                state["awaiting_response"] = True
            elif state["awaiting_response"]:
                state["awaiting_response"] = False
                if latency:
                    await asyncio.sleep(latency)
            for bucket in buckets:
                await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(target_port: int, shaping: _Shaping, port: int) -> None:
    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(_HOST, target_port, limit=_BUFFER)
        except OSError:
            client_w.close()
            return
        state = {"awaiting_response": False}
        up = [Bucket(shaping.conn_rate), shaping.up_link]
        down = [Bucket(shaping.conn_rate), shaping.down_link]
        await asyncio.gather(
            _pipe(client_r, server_w, up, 0.0, state, upstream=True),
            _pipe(server_r, client_w, down, shaping.latency, state, upstream=False),
        )

    server = await asyncio.start_server(handle, _HOST, port, limit=_BUFFER, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


@dataclass
class Proxy:
    """A running proxy subprocess; ``stop()`` (or leaving ``with``) kills it."""

    port: int
    process: subprocess.Popen

    @property
    def endpoint(self) -> str:
        return f"http://{_HOST}:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)

    def __enter__(self) -> Proxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start(target_port: int, *, latency: float = 0.0, conn_rate: float | None = None,
          link_rate: float | None = None) -> Proxy:
    """Start a proxy to ``127.0.0.1:target_port`` in a subprocess; rates in bytes/s."""
    argv = [sys.executable, "-m", "tests.shaping_proxy", "--target-port", str(target_port),
            "--latency", str(latency)]
    if conn_rate is not None:
        argv += ["--conn-rate", str(conn_rate)]
    if link_rate is not None:
        argv += ["--link-rate", str(link_rate)]
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    line = process.stdout.readline() if process.stdout else b""
    if not line.strip().isdigit():
        process.kill()
        raise RuntimeError(f"shaping proxy did not start (printed {line!r})")
    return Proxy(int(line), process)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds to each response's first byte")
    parser.add_argument("--conn-rate", type=float, default=None, help="bytes/s per connection and direction")
    parser.add_argument("--link-rate", type=float, default=None, help="bytes/s per direction, all connections")
    args = parser.parse_args(argv)
    shaping = _Shaping(args.latency, args.conn_rate, Bucket(args.link_rate), Bucket(args.link_rate))
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(args.target_port, shaping, args.port))


if __name__ == "__main__":
    main()
