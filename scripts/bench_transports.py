"""Shard-download transports side by side: roxxel's own, obstore's, plain http.client.

Issue 17, item 4. The same bytes (default 4 objects x 64 MiB) are fetched as 8 MiB
ranged parts with 32 in flight, from S3 (moto, serving ranges properly) and from GCS
(fake-gcs-server), each straight on loopback and behind ``tests/shaping_proxy.py``
(30 ms to each response's first byte, 25 MB/s per connection, a 400 MB/s link: a real
store's link in miniature). Transports:

- ``roxxel``: :meth:`roxxel.backends.Store.read_part` on 32 threads, as the download
  engine calls it (retries, the stall watchdog, length checks). On S3 that is a
  presigned ranged GET on kept-alive http.client connections; on GCS whatever
  ``GCSBackend.read_range`` does (see ``roxxel-gcsfs`` for gcsfs's ``cat_file``);
- ``roxxel-gcsfs`` (GCS): the same wrapper over gcsfs ``cat_file(start, end)``, the
  generic fsspec backend's ``read_range``;
- ``obstore-threads``: ``obstore.get_range`` on 32 threads (it releases the GIL);
- ``obstore-async``: ``obstore.get_range_async``, 32 at once on one asyncio loop;
- ``obstore-ranges``: one ``obstore.get_ranges`` per object (no coalescing) on one
  thread per object; obstore runs at most 10 requests of each call at once;
- ``http.client`` (GCS): ``GET {endpoint}/storage/v1/b/{bucket}/o/{name}?alt=media`` with
  a Range header on one kept-alive connection per thread, headers from gcsfs's
  credentials object (none against the emulator; a bearer token on real GCS).

Each transport runs once untimed (connections, imports), then ``--repeat`` times; the
table gives the best MB/s (MB = 10^6 bytes) and the median CPU seconds per GB of this
process (``getrusage``: the servers and the proxy are other processes), with the load
average next to them. The 2-core machine is shared: figures move between runs.

obstore reads GCS through the XML API (``GET {base_url}/{bucket}/{name}``), which
fake-gcs-server answers only for requests to its ``-public-host`` (by default
``storage.googleapis.com``): the server here is started with ``-public-host 127.0.0.1``
(any port, so through the proxy too), otherwise as ``tests.servers.gcs_server()`` does.

Usage: ``.venv/bin/python scripts/bench_transports.py [--stores s3 gcs] [--links direct
shaped] [--objects 4] [--mib 64] [--repeat 3] [--json out.json]`` (``--quick``: 2 x 16 MiB,
one repetition, a smoke test).
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import inspect
import json
import os
import resource
import statistics
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any

from benchkit import MiB, bench_storage_options

from roxxel.backends import FsspecBackend, Store
from tests import servers, shaping_proxy

BUCKET = "bench-transports"
PART = 8 * MiB
IN_FLIGHT = 32
SHAPING = {"latency": 0.03, "conn_rate": 25e6, "link_rate": 400e6}

Part = tuple[str, int, int]  # key, start, end


@dataclass
class Row:
    store: str
    link: str
    transport: str
    mb_s: float
    cpu_s_per_gb: float
    seconds: float
    load: float
    note: str = ""


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- transports: each is set up once and then fetches lists of parts -------------------


class ThreadTransport:
    """``read(key, start, end) -> bytes`` run on ``IN_FLIGHT`` threads."""

    def __init__(self, read: Callable[[str, int, int], Any]) -> None:
        self.read_one = read
        self.pool = ThreadPoolExecutor(IN_FLIGHT)

    def run(self, parts: list[Part]) -> int:
        return sum(self.pool.map(lambda p: len(self.read_one(*p)), parts))

    def close(self) -> None:
        self.pool.shutdown()


class AsyncTransport:
    """``obstore.get_range_async``, ``IN_FLIGHT`` at once, on one event loop."""

    def __init__(self, store: Any) -> None:
        import obstore

        self.store, self.get = store, obstore.get_range_async
        self.loop = asyncio.new_event_loop()

    def run(self, parts: list[Part]) -> int:
        async def main() -> int:
            gate = asyncio.Semaphore(IN_FLIGHT)

            async def one(key: str, a: int, b: int) -> int:
                async with gate:
                    return len(await self.get(self.store, key, start=a, end=b))

            return sum(await asyncio.gather(*(one(*p) for p in parts)))

        return self.loop.run_until_complete(main())

    def read_one(self, key: str, a: int, b: int) -> Any:
        async def one() -> Any:
            return await self.get(self.store, key, start=a, end=b)

        return self.loop.run_until_complete(one())

    def close(self) -> None:
        self.loop.close()


class RangesTransport:
    """One ``obstore.get_ranges`` per object (no coalescing), each on a thread of its own."""

    def __init__(self, store: Any) -> None:
        import obstore

        self.store, self.get_ranges = store, obstore.get_ranges

    def ranges(self, ps: list[Part]) -> list[Any]:
        return self.get_ranges(self.store, ps[0][0], starts=[a for _, a, _ in ps],
                               ends=[b for _, _, b in ps], coalesce=0)

    def run(self, parts: list[Part]) -> int:
        by_key: dict[str, list[Part]] = {}
        for p in parts:
            by_key.setdefault(p[0], []).append(p)
        with ThreadPoolExecutor(len(by_key)) as pool:
            return sum(pool.map(lambda ps: sum(len(g) for g in self.ranges(ps)), by_key.values()))

    def read_one(self, key: str, a: int, b: int) -> Any:
        return self.ranges([(key, a, b)])[0]

    def close(self) -> None:
        pass


def roxxel_transport(url: str, options: dict[str, Any], *, gcsfs: bool = False) -> ThreadTransport:
    store = Store(url, options)
    if gcsfs:  # the generic backend: read_range is fs.cat_file(path, start, end)
        store._backend = FsspecBackend(store.backend.fs)
    if "into" not in inspect.signature(store.read_part).parameters:
        return ThreadTransport(store.read_part)
    local = threading.local()  # read_part(key, start, end, into): one buffer per thread

    def read(key: str, a: int, b: int) -> Any:
        buf = getattr(local, "buf", None)
        if buf is None or len(buf) < b - a:
            buf = local.buf = memoryview(bytearray(b - a))
        return store.read_part(key, a, b, buf)

    return ThreadTransport(read)


def gcs_http_transport(endpoint: str, options: dict[str, Any]) -> ThreadTransport:
    """Ranged JSON-API media GETs, one kept-alive connection per thread."""
    fs = Store(f"gs://{BUCKET}", options).backend.fs
    parts = urllib.parse.urlsplit(endpoint)
    local = threading.local()

    def read(key: str, a: int, b: int) -> bytes:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
        headers = {"Range": f"bytes={a}-{b - 1}"}
        fs.credentials.apply(headers)  # a bearer token on real GCS, nothing for "anon"
        name = urllib.parse.quote(key, safe="")
        conn.request("GET", f"/storage/v1/b/{BUCKET}/o/{name}?alt=media", headers=headers)
        response = conn.getresponse()
        data = response.read()
        if response.status != 206 or len(data) != b - a:
            raise OSError(f"HTTP {response.status}, {len(data)} bytes for [{a}, {b})")
        return data

    return ThreadTransport(read)


def obstore_store(kind: str, endpoint: str) -> Any:
    from obstore.store import GCSStore, S3Store

    client = {"allow_http": True, "timeout": "120s"}
    if kind == "s3":
        return S3Store(BUCKET, endpoint=endpoint, access_key_id="testing", secret_access_key="testing",
                       region="us-east-1", client_options=client)
    # anonymous, as gcsfs's token="anon"; on real GCS: credentials, or a credential_provider
    return GCSStore(BUCKET, base_url=endpoint, skip_signature=True, client_options=client)


def transports(kind: str, endpoint: str) -> dict[str, Callable[[], Any]]:
    options = bench_storage_options(endpoint) if kind == "s3" else servers.gcs_storage_options(endpoint)
    url = f"{'s3' if kind == 's3' else 'gs'}://{BUCKET}"
    made: dict[str, Callable[[], Any]] = {"roxxel": lambda: roxxel_transport(url, options)}
    if kind == "gcs":
        made["roxxel-gcsfs"] = lambda: roxxel_transport(url, options, gcsfs=True)
        made["http.client"] = lambda: gcs_http_transport(endpoint, options)
    try:
        import obstore  # noqa: F401
    except ImportError:
        return made

    def threads() -> ThreadTransport:
        import obstore

        store = obstore_store(kind, endpoint)
        return ThreadTransport(lambda key, a, b: obstore.get_range(store, key, start=a, end=b))

    made["obstore-threads"] = threads
    made["obstore-async"] = lambda: AsyncTransport(obstore_store(kind, endpoint))
    made["obstore-ranges"] = lambda: RangesTransport(obstore_store(kind, endpoint))
    return made


# -- servers --------------------------------------------------------------------------


def fake_gcs_for_obstore() -> servers.Server:
    """fake-gcs-server as ``tests.servers.start_gcs`` starts it, also answering the XML
    API (``/{bucket}/{name}``) on 127.0.0.1 at any port."""
    binary = servers.fake_gcs_binary()
    return servers._start(
        "gcs",
        lambda port: [
            binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1", "-port", str(port),
            "-external-url", f"http://127.0.0.1:{port}", "-public-host", "127.0.0.1",
            "-log-level", "error",
        ],
        "/storage/v1/b",
        servers.gcs_storage_options,
        30.0,
        implementation="fake-gcs-server",
    )


@contextmanager
def server(kind: str, keys: list[str], size: int) -> Iterator[servers.Server]:
    srv = servers.s3_server(fast_ranges=True) if kind == "s3" else fake_gcs_for_obstore()
    with srv:
        srv.create_bucket(BUCKET)
        fs = srv.filesystem()
        if kind == "s3":
            fs = type(fs)(skip_instance_cache=True, **bench_storage_options(srv.endpoint))
        data = os.urandom(size)
        for key in keys:
            fs.pipe_file(f"{BUCKET}/{key}", data)
        srv.data = data  # type: ignore[attr-defined]
        yield srv


def check(transport: Any, parts: list[Part], data: bytes, name: str) -> None:
    """The transport returns the right bytes (the first and the last part)."""
    for key, a, b in (parts[0], parts[-1]):
        if bytes(transport.read_one(key, a, b)) != data[a:b]:
            raise SystemExit(f"{name}: wrong bytes for {key} [{a}, {b})")


def measure(name: str, transport: Any, parts: list[Part], total: int, repeat: int) -> tuple[float, float, float, float]:
    transport.run(parts)  # warm: connections, first requests
    best, cpus, loads, secs = 0.0, [], [], []
    for _ in range(repeat):
        loads.append(os.getloadavg()[0])
        c0, t0 = cpu_seconds(), time.perf_counter()
        got = transport.run(parts)
        t1, c1 = time.perf_counter(), cpu_seconds()
        if got != total:
            raise SystemExit(f"{name}: {got} bytes, expected {total}")
        secs.append(t1 - t0)
        best = max(best, total / (t1 - t0) / 1e6)
        cpus.append((c1 - c0) / (total / 1e9))
    return best, statistics.median(cpus), min(secs), statistics.mean(loads)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stores", nargs="+", default=["s3", "gcs"], choices=["s3", "gcs"])
    parser.add_argument("--links", nargs="+", default=["direct", "shaped"], choices=["direct", "shaped"])
    parser.add_argument("--transports", nargs="+", default=None, help="only these (names as in the table)")
    parser.add_argument("--objects", type=int, default=4)
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the rows here")
    parser.add_argument("--quick", action="store_true", help="2 x 16 MiB, one repetition")
    args = parser.parse_args(argv)
    if args.quick:
        args.objects, args.mib, args.repeat = 2, 16, 1
    size = args.mib * MiB
    keys = [f"shards/shard-{i:05d}.rxl" for i in range(args.objects)]
    parts = [(k, a, min(a + PART, size)) for k in keys for a in range(0, size, PART)]
    total = args.objects * size
    rows: list[Row] = []
    print(f"{args.objects} x {args.mib} MiB, {PART // MiB} MiB parts, {IN_FLIGHT} in flight; "
          f"shaped: {SHAPING}", flush=True)
    for kind in args.stores:
        with server(kind, keys, size) as srv:
            port = urllib.parse.urlsplit(srv.endpoint).port
            for link in args.links:
                proxy = shaping_proxy.start(port, **SHAPING) if link == "shaped" else None
                try:
                    endpoint = proxy.endpoint if proxy is not None else srv.endpoint
                    for name, make in transports(kind, endpoint).items():
                        if args.transports and name not in args.transports:
                            continue
                        transport = make()
                        try:
                            check(transport, parts, srv.data, f"{kind} {name}")
                            mb_s, cpu, secs, load = measure(name, transport, parts, total, args.repeat)
                        except Exception as exc:  # noqa: BLE001 - reported as a row
                            print(f"{kind:4} {link:7} {name:16} FAILED: {type(exc).__name__}: "
                                  f"{str(exc).splitlines()[0][:200]}", flush=True)
                            rows.append(Row(kind, link, name, 0.0, 0.0, 0.0, os.getloadavg()[0],
                                            f"failed: {type(exc).__name__}"))
                            continue
                        finally:
                            transport.close()
                        row = Row(kind, link, name, mb_s, cpu, secs, load)
                        rows.append(row)
                        print(f"{kind:4} {link:7} {name:16} {mb_s:7.0f} MB/s  {cpu:5.2f} CPU-s/GB  "
                              f"(best {secs:.2f} s, load {load:.1f})", flush=True)
                finally:
                    if proxy is not None:
                        proxy.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
