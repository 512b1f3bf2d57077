"""Uploads through a link shaped like a real object store's: roxxel's writer against the
best upload client, for the same bytes, in the same run (issue 17, uploads).

moto runs on loopback behind ``tests/shaping_proxy.py``. By default the proxy adds 30 ms
to each response's first byte and allows 25 MB/s per connection and 400 MB/s for the whole
link, in both directions, so one connection gets 1/16 of the link, as on S3.

For each dataset (default: 4 shards of 64 MiB, and 1 shard of 256 MiB):

- **roxxel**: ``roxxel.Writer`` with default options (but ``shard_bytes``) in a fresh
  process (``import roxxel`` done), through the proxy, timed end to end from the call to
  ``Writer(...)`` to ``close()`` returning: its set-up (s3fs imported and its client made,
  the probe for conditional writes, the check that no manifest exists), then packing,
  hashing, staging, uploading, checking and the manifest. The set-up is also reported on
  its own, and the writing alone (first ``append`` to ``close()``), since the best client
  makes its client before it is timed and needs no probe. With the child's peak RSS
  (VmHWM) and its RSS before the first record (the record pool of the generator).
- **its uploads**: ``Store.put_file`` and ``check_upload`` of the same files, 4 at once
  (the writer's ``upload_workers``), in a fresh process whose client is made first.
- **best client**: local files of exactly the shards' stored sizes, written before timing,
  uploaded as multipart uploads of ``--part-mib`` (8) MiB parts, ``--parallel`` (32) in
  flight over all files, each thread on a kept-alive ``http.client`` connection to
  presigned ``UploadPart`` URLs (no payload hashing), the body sent with ``sendfile``:
  the cheapest client there is in CPU, which matters when the server shares 2 cores. Its
  uploads are created at once, and each is completed as soon as its last part is in,
  while the other files' parts go on.
  ``--boto3`` also times boto3's ``upload_part`` from a thread pool.
- **server limit**: the best client again, straight to moto, unshaped. When it is not
  well above the shaped figure, the server, not the link, is the limit.

``--gcs`` runs the GCS line instead: fake-gcs-server (a fresh one per round, warmed by an
untimed upload of as many bytes: see ``gcs_round``) behind the same proxy; the writer and
``Store.put_file`` as above, to ``gs://``; the best client a parallel composite upload by
the same cheapest means (``--parallel`` media uploads of ``--part-mib`` MiB parts from
``sendfile``, one compose per file, the parts deleted); and gcsfs's own ``put_file``
(roxxel's GCS uploads before composite uploads), 4 at once.
fake-gcs-server reads one request body at a time, which a real store's front ends do
not: a relay between the proxy and the server takes every body as the proxy delivers it.
It also hashes and copies every byte it takes (and again to compose), about 2 CPU-seconds
per 269 MB, so on 2 cores the server can be the limit: compare with the unshaped figure,
or narrow the link (``--link-mbps 48 --conn-mbps 3``) to see the clients' parallelism.

Usage: ``.venv/bin/python scripts/bench_upload.py [--datasets 4x64 1x256] [--latency 0.03]
[--conn-mbps 25] [--link-mbps 400] [--boto3] [--gcs]``; results under ``bench-out/`` if ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchkit import REPO, MiB, bench_storage_options

from tests import servers, shaping_proxy

BUCKET = "upl"

_CHILD = """
import json, sys, time
sys.path.insert(0, sys.argv[5])
from benchkit import MiB, RecordSource

def rss(field):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(field))

url, options, shards, shard_mib = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
import roxxel
if int(sys.argv[6]):
    from roxxel.backends import multipart
    multipart.configure(parts_in_flight=int(sys.argv[6]))
source = RecordSource(shards * shard_mib * MiB, 1024, 15 * 1024, seed=shards)
before = rss("VmRSS:")
t0, c0 = time.perf_counter(), time.process_time()
with roxxel.Writer(url, shard_bytes=shard_mib * MiB, storage_options=options) as writer:
    made = time.perf_counter()
    writer.extend(source)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
stored = [int(s) for s in writer.manifest.shards.stored_size.tolist()]
print(json.dumps({"seconds": seconds, "setup": made - t0, "cpu": cpu, "sizes": stored, "rss_before": before,
                  "rss_peak": rss("VmHWM:")}))
"""


_PUT_CHILD = """
import json, sys, time
from concurrent.futures import ThreadPoolExecutor
from roxxel.backends import Store

class NoReadBack:
    def __call__(self, chunk):
        raise AssertionError("read back")
    finish = __call__

url, options, parts_in_flight, files = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
if parts_in_flight:
    from roxxel.backends import multipart
    multipart.configure(parts_in_flight=parts_in_flight)
store = Store(url, options)
store.exists("warm-up")  # the client is made, as the best client's is before it is timed
t0, c0 = time.perf_counter(), time.process_time()

def put(path):
    key = path.rsplit("/", 1)[-1]
    store.put_file(path, key)
    store.check_upload(key, path, NoReadBack())

with ThreadPoolExecutor(4) as pool:  # the writer's upload_workers
    list(pool.map(put, files))
print(json.dumps({"seconds": time.perf_counter() - t0, "cpu": time.process_time() - c0}))
"""


def run_put_file(url: str, options: dict[str, Any], files: list[str],
                 parts_in_flight: int | None = None) -> tuple[float, float]:
    """Seconds for ``Store.put_file`` and ``check_upload`` of ready files, 4 at once,
    with default options in a fresh process: roxxel's uploads without the packing."""
    out = subprocess.run([sys.executable, "-c", _PUT_CHILD, url, json.dumps(options), str(parts_in_flight or 0), *files],
                         capture_output=True, text=True, cwd=REPO, check=False)
    if out.returncode:
        raise RuntimeError(f"the uploads failed:\n{out.stderr[-3000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["seconds"], result["cpu"]


def run_writer(url: str, options: dict[str, Any], shards: int, shard_mib: int,
               parts_in_flight: int | None = None) -> dict[str, Any]:
    """One writer run with default options in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, url, json.dumps(options), str(shards), str(shard_mib),
         str(REPO / "scripts"), str(parts_in_flight or 0)],
        capture_output=True, text=True, cwd=REPO, check=False,
    )
    if out.returncode:
        raise RuntimeError(f"the writer failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def boto_client(endpoint: str, parallel: int) -> Any:
    import boto3
    import botocore.config

    return boto3.client(
        "s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
        region_name="us-east-1",
        config=botocore.config.Config(max_pool_connections=parallel + 4, read_timeout=600,
                                      retries={"total_max_attempts": 2, "mode": "standard"}),
    )


def best_client(endpoint: str, bucket: str, files: list[str], part: int, parallel: int,
                boto3_parts: bool = False) -> float:
    """Seconds to upload every file as multipart uploads, ``parallel`` parts in flight:
    the uploads created at once, and each completed as soon as its last part is in,
    while the other files' parts go on."""
    client = boto_client(endpoint, parallel)
    keys = [f"best/{os.path.basename(f)}" for f in files]
    pool = ThreadPoolExecutor(parallel)
    started = time.perf_counter()  # the client is made; every request counts
    uploads = list(pool.map(lambda k: client.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"], keys))
    jobs = [(i, n, start, min(part, os.path.getsize(f) - start))
            for i, f in enumerate(files) for n, start in enumerate(range(0, os.path.getsize(f), part), 1)]
    left = {i: sum(1 for j, *_ in jobs if j == i) for i in range(len(files))}
    etags: dict[int, dict[int, str]] = {i: {} for i in range(len(files))}
    lock = threading.Lock()

    def landed(i: int, n: int, etag: str) -> None:
        """Part ``n`` of file ``i`` is in: the file's last completes its upload."""
        with lock:
            etags[i][n] = etag
            left[i] -= 1
            last = left[i] == 0
        if last:
            parts = [{"PartNumber": k, "ETag": e} for k, e in sorted(etags[i].items())]
            client.complete_multipart_upload(Bucket=bucket, Key=keys[i], UploadId=uploads[i],
                                             MultipartUpload={"Parts": parts})
    urls = {(i, n): client.generate_presigned_url(
                "upload_part", ExpiresIn=3600,
                Params={"Bucket": bucket, "Key": keys[i], "UploadId": uploads[i], "PartNumber": n})
            for i, n, _, _ in jobs}
    local = threading.local()

    def send_presigned(job: tuple[int, int, int, int]) -> None:
        i, n, start, length = job
        parts = urllib.parse.urlsplit(urls[i, n])
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(parts.netloc, timeout=600)
        conn = local.conn
        conn.putrequest("PUT", f"{parts.path}?{parts.query}", skip_accept_encoding=True)
        conn.putheader("Content-Length", str(length))
        conn.endheaders()
        with open(files[i], "rb") as f:
            sent = conn.sock.sendfile(f, start, length)
        response = conn.getresponse()
        response.read()
        if response.status != 200 or sent != length:
            raise RuntimeError(f"UploadPart {keys[i]} #{n}: status {response.status}, {sent} bytes sent")
        landed(i, n, response.getheader("ETag"))

    def send_boto3(job: tuple[int, int, int, int]) -> None:
        i, n, start, length = job
        with open(files[i], "rb") as f:
            f.seek(start)
            data = f.read(length)
        landed(i, n, client.upload_part(Bucket=bucket, Key=keys[i], UploadId=uploads[i], PartNumber=n,
                                        Body=data)["ETag"])

    with pool:
        list(pool.map(send_boto3 if boto3_parts else send_presigned, jobs))
    return time.perf_counter() - started


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Bench:
    """The servers and options of one benchmark run."""

    s3: Any
    proxy: Any
    shaped: dict[str, Any]
    args: argparse.Namespace
    tmp: str

    def round(self, spec: str, files: list[str], writer_first: bool) -> dict[str, float]:
        """One round of every client on dataset ``spec``; ``files`` (the shards' sizes,
        random bytes) are made after the first writer run."""
        shards, shard_mib = (int(x) for x in spec.split("x"))
        part, pid = self.args.part_mib * MiB, self.s3.process.pid
        self.s3.reset()
        self.s3.create_bucket(BUCKET)
        one: dict[str, float] = {}

        def writer() -> None:
            cpu0 = cpu_seconds(pid)
            w = run_writer(f"s3://{BUCKET}/d{spec}", self.shaped, shards, shard_mib, self.args.parts_in_flight)
            one.update(writer_s=w["seconds"], writer_setup_s=w["setup"], writing_s=w["seconds"] - w["setup"],
                       writer_cpu=w["cpu"], rss_peak=w["rss_peak"],
                       rss_before=w["rss_before"], moto_cpu_writer=cpu_seconds(pid) - cpu0, bytes=sum(w["sizes"]))
            for k, size in enumerate(w["sizes"] if not files else []):
                files.append(os.path.join(self.tmp, f"{spec}-{k}"))
                with open(files[-1], "wb") as f:
                    f.write(os.urandom(size))

        def best() -> None:
            cpu0, own0 = cpu_seconds(pid), time.process_time()
            one["best_s"] = best_client(self.proxy.endpoint, BUCKET, files, part, self.args.parallel)
            one.update(moto_cpu_best=cpu_seconds(pid) - cpu0, best_cpu=time.process_time() - own0)

        def put_file() -> None:
            one["put_file_s"], one["put_file_cpu"] = run_put_file(
                f"s3://{BUCKET}/p{spec}", self.shaped, files, self.args.parts_in_flight)

        for step in (writer, best, put_file) if writer_first or not files else (put_file, best, writer):
            step()
        if self.args.boto3:
            one["boto3_s"] = best_client(self.proxy.endpoint, BUCKET, files, part, self.args.parallel, boto3_parts=True)
        one["server_s"] = best_client(self.s3.endpoint, BUCKET, files, part, self.args.parallel)
        one["load"] = os.getloadavg()[0]
        return one


def summarize(spec: str, rounds: list[dict[str, float]], shards: int, boto3: bool) -> dict[str, Any]:
    """Print the best of ``rounds`` and return it as a row."""
    total = rounds[0]["bytes"]

    def rate(name: str) -> float:
        return total / min(r[name] for r in rounds) / 1e6

    def cpu(name: str) -> str:
        return f"{min(r[name] for r in rounds):.2f}"

    writer, put, best, server = rate("writer_s"), rate("put_file_s"), rate("best_s"), rate("server_s")
    peak, before = max(r["rss_peak"] for r in rounds), max(r["rss_before"] for r in rounds)
    row = {"dataset": spec, "bytes": total, "shards": shards, "writer_mbps": writer, "put_file_mbps": put,
           "best_mbps": best, "server_mbps": server, "ratio": writer / best,
           "writer_rss_peak_mib": peak / MiB, "writer_rss_before_mib": before / MiB, "rounds": rounds}
    print(f"{spec} MiB ({shards} shards, {total / 1e6:.0f} MB), best of {len(rounds)}:")
    print(f"  best client  {best:6.0f} MB/s through the link (its CPU {cpu('best_cpu')} s, moto's "
          f"{cpu('moto_cpu_best')} s); unshaped {server:.0f} MB/s")
    if boto3:
        row["boto3_mbps"] = rate("boto3_s")
        print(f"  boto3 parts  {row['boto3_mbps']:6.0f} MB/s through the link")
    print(f"  roxxel       {writer:6.0f} MB/s = {writer / best:4.0%} of the best client end to end (its CPU "
          f"{cpu('writer_cpu')} s, packing included, moto's {cpu('moto_cpu_writer')} s); "
          f"writer peak RSS {peak / MiB:.0f} MiB ({before / MiB:.0f} MiB before the first record)")
    if all("writing_s" in r for r in rounds):
        writing = rate("writing_s")
        setups = sorted(r["writer_setup_s"] * 1000 for r in rounds)
        row.update(writing_mbps=writing, writing_ratio=writing / best, writer_setup_ms=setups)
        print(f"    of which   set-up {setups[0]:.0f}-{setups[-1]:.0f} ms (Writer(...): the manifest check; the "
              f"conditional-write probe, with the cloud client it makes, goes on during the writing); writing alone {writing:.0f} MB/s = "
              f"{writing / best:4.0%} of the best client")
    print(f"  its uploads  {put:6.0f} MB/s = {put / best:4.0%} of the best client (Store.put_file + "
          f"check_upload of the same files, 4 at once; its CPU {cpu('put_file_cpu')} s)", flush=True)
    if all("writing_s" in r for r in rounds):
        # each round's own ratios (the same load for both sides), as well as the best of each
        def per_round(name: str) -> str:
            ratios = sorted(r["best_s"] / r[name] for r in rounds)
            return f"{ratios[0]:.0%}-{ratios[-1]:.0%} (median {statistics.median(ratios):.0%})"

        row["round_ratios"] = {name: sorted(r["best_s"] / r[name] for r in rounds)
                               for name in ("writer_s", "writing_s", "put_file_s")}
        print(f"  per round    end to end {per_round('writer_s')}, writing alone {per_round('writing_s')}, "
              f"uploads alone {per_round('put_file_s')} of the same round's best client")
    if all("load" in r for r in rounds):
        loads = ", ".join(f"{r['load']:.1f}" for r in rounds)
        print(f"  load average (1 min) after each round: {loads}")
    print(flush=True)
    return row


# -- GCS ---------------------------------------------------------------------------------


def _gcs_request(conn: http.client.HTTPConnection, method: str, target: str, body: Any = None,
                 headers: dict[str, str] | None = None) -> bytes:
    conn.request(method, target, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    if response.status not in (200, 204):
        raise RuntimeError(f"{method} {target}: HTTP {response.status} {data[:200]!r}")
    return data


def gcs_best_client(endpoint: str, bucket: str, files: list[str], part: int, parallel: int) -> float:
    """Seconds to upload every file as a parallel composite upload by the cheapest
    client there is: ``parallel`` media uploads of ``part``-byte parts in flight over all
    files, each from a thread's kept-alive ``http.client`` connection with the body sent
    by ``sendfile``, then one compose per 32 parts (two levels past 32), then the parts
    deleted, ``parallel`` at once (what gsutil/gcloud do, minus their CPU)."""
    netloc = urllib.parse.urlsplit(endpoint).netloc
    local = threading.local()
    quote = functools.partial(urllib.parse.quote, safe="")

    def conn() -> http.client.HTTPConnection:
        if getattr(local, "conn", None) is None:
            local.conn = http.client.HTTPConnection(netloc, timeout=600)
        return local.conn

    def send(job: tuple[int, int, int, int]) -> None:
        i, n, start, length = job
        c = conn()
        c.putrequest("POST", f"/upload/storage/v1/b/{bucket}/o?uploadType=media&name={quote(f'best/.p{i}-{n:04d}')}",
                     skip_accept_encoding=True)
        c.putheader("Content-Length", str(length))
        c.putheader("Content-Type", "application/octet-stream")
        c.endheaders()
        with open(files[i], "rb") as f:
            sent = c.sock.sendfile(f, start, length)
        response = c.getresponse()
        data = response.read()
        if response.status != 200 or sent != length:
            raise RuntimeError(f"part {i}/{n}: HTTP {response.status} {data[:200]!r}, {sent} bytes sent")

    def compose(name: str, sources: list[str]) -> None:
        body = json.dumps({"sourceObjects": [{"name": s} for s in sources],
                           "destination": {"contentType": "application/octet-stream"}})
        _gcs_request(conn(), "POST", f"/storage/v1/b/{bucket}/o/{quote(name)}/compose", body,
                     {"Content-Type": "application/json"})

    def delete(name: str) -> None:
        _gcs_request(conn(), "DELETE", f"/storage/v1/b/{bucket}/o/{quote(name)}")

    jobs = [(i, n, start, min(part, os.path.getsize(f) - start))
            for i, f in enumerate(files) for n, start in enumerate(range(0, os.path.getsize(f), part), 1)]
    started = time.perf_counter()
    with ThreadPoolExecutor(parallel) as pool:
        list(pool.map(send, jobs))
        temporary: list[str] = []
        finals: list[tuple[str, list[str]]] = []
        middles: list[tuple[str, list[str]]] = []
        for i, f in enumerate(files):
            sources = [f"best/.p{i}-{n:04d}" for j, n, _, _ in jobs if j == i]
            temporary += sources
            if len(sources) > 32:
                groups = [sources[k:k + 32] for k in range(0, len(sources), 32)]
                middles += [(f"best/.p{i}-c{k}", g) for k, g in enumerate(groups)]
                sources = [name for name, _ in middles[-len(groups):]]
                temporary += sources
            finals.append((f"best/{os.path.basename(f)}", sources))
        list(pool.map(lambda m: compose(*m), middles))
        list(pool.map(lambda m: compose(*m), finals))
        list(pool.map(delete, temporary))
    return time.perf_counter() - started


def gcsfs_put_files(options: dict[str, Any], bucket: str, files: list[str]) -> float:
    """Seconds for gcsfs's own ``put_file`` of every file, 4 at once (roxxel's GCS
    uploads before composite uploads: one resumable upload each, its chunks in sequence)."""
    import fsspec

    fs = fsspec.filesystem("gs", skip_instance_cache=True, **options)
    fs.exists(f"{bucket}/warm-up")
    started = time.perf_counter()
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda f: fs.put_file(f, f"{bucket}/gcsfs/{os.path.basename(f)}", chunksize=16 * MiB), files))
    return time.perf_counter() - started


# fake-gcs-server reads the body of one request at a time: through a shaped link, parallel
# parts would then arrive one after the other (the kernel buffers the first few MiB of
# each). A real store's front ends take every body at once. This relay, between the proxy
# and the server, takes each body as fast as the proxy delivers it and hands it on as
# the server reads; responses pass straight through.
_RELAY = """
import asyncio, sys

async def pipe(reader, writer, drain):
    try:
        while data := await reader.read(1 << 18):
            writer.write(data)
            if drain:
                await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()

async def handle(client_r, client_w):
    server_r, server_w = await asyncio.open_connection("127.0.0.1", int(sys.argv[1]), limit=1 << 18)
    server_w.transport.set_write_buffer_limits(high=1 << 40)
    await asyncio.gather(pipe(client_r, server_w, False), pipe(server_r, client_w, True))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", 0, limit=1 << 18, backlog=1024)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()

asyncio.run(main())
"""


@contextlib.contextmanager
def gcs_relay(target_port: int) -> Iterator[int]:
    """A relay in front of ``target_port`` (see ``_RELAY``); yields its port."""
    process = subprocess.Popen([sys.executable, "-c", _RELAY, str(target_port)], stdout=subprocess.PIPE)
    try:
        line = process.stdout.readline() if process.stdout else b""
        if not line.strip().isdigit():
            raise RuntimeError(f"the relay did not start (printed {line!r})")
        yield int(line)
    finally:
        process.kill()
        process.wait()


def gcs_round(args: argparse.Namespace, spec: str, files: list[str], warm: list[str], tmp: str,
              writer_first: bool) -> dict[str, float]:
    """One round of every GCS client on dataset ``spec`` against a fresh fake-gcs-server
    behind a fresh shaping proxy (fake-gcs-server's batch delete deletes nothing, so a
    reset could not empty it), with a relay that takes request bodies at once (``_RELAY``)
    between the proxy and the server. Before anything is timed, the best client uploads
    ``warm`` (files as large as the dataset) through all three, untimed: a fresh
    fake-gcs-server spends more CPU on the first bytes it takes (its heap grows), and on 2
    cores whichever client went first paid for it (a real store has no such start)."""
    from tests.servers import gcs_storage_options

    shards, shard_mib = (int(x) for x in spec.split("x"))
    part = args.part_mib * MiB
    one: dict[str, float] = {}
    with servers.gcs_server() as gcs:
        gcs.create_bucket(BUCKET)
        port, pid = int(gcs.endpoint.rsplit(":", 1)[1]), gcs.process.pid
        with gcs_relay(port) as relay, shaping_proxy.start(
                relay, latency=args.latency, conn_rate=args.conn_mbps * 1e6, link_rate=args.link_mbps * 1e6) as proxy:
            shaped = gcs_storage_options(proxy.endpoint)
            gcs_best_client(proxy.endpoint, BUCKET, warm, part, args.parallel)

            def writer() -> None:
                cpu0 = cpu_seconds(pid)
                w = run_writer(f"gs://{BUCKET}/d{spec}", shaped, shards, shard_mib, args.parts_in_flight)
                one.update(writer_s=w["seconds"], writer_setup_s=w["setup"], writing_s=w["seconds"] - w["setup"],
                           writer_cpu=w["cpu"], rss_peak=w["rss_peak"],
                           rss_before=w["rss_before"], moto_cpu_writer=cpu_seconds(pid) - cpu0, bytes=sum(w["sizes"]))
                for k, size in enumerate(w["sizes"] if not files else []):
                    files.append(os.path.join(tmp, f"gcs-{spec}-{k}"))
                    with open(files[-1], "wb") as f:
                        f.write(os.urandom(size))

            def best() -> None:
                cpu0, own0 = cpu_seconds(pid), time.process_time()
                one["best_s"] = gcs_best_client(proxy.endpoint, BUCKET, files, part, args.parallel)
                one.update(moto_cpu_best=cpu_seconds(pid) - cpu0, best_cpu=time.process_time() - own0)

            def put_file() -> None:
                one["put_file_s"], one["put_file_cpu"] = run_put_file(
                    f"gs://{BUCKET}/p{spec}", shaped, files, args.parts_in_flight)

            for step in (writer, best, put_file) if writer_first or not files else (put_file, best, writer):
                step()
            one["gcsfs_s"] = gcsfs_put_files(shaped, BUCKET, files)
        one["server_s"] = gcs_best_client(gcs.endpoint, BUCKET, files, part, args.parallel)
    return one


def gcs_main(args: argparse.Namespace) -> list[dict[str, Any]]:
    """The GCS line: fake-gcs-server behind the proxy; roxxel's writer and its uploads
    against the best parallel composite upload client, and gcsfs's put_file."""
    os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.datasets:
            rounds: list[dict[str, float]] = []
            files: list[str] = []
            shards, shard_mib = (int(x) for x in spec.split("x"))
            warm = [os.path.join(tmp, f"warm-{spec}-{k}") for k in range(shards)]
            for name in warm:
                with open(name, "wb") as f:
                    f.write(os.urandom(shard_mib * MiB))
            for n in range(args.repeat):
                one = gcs_round(args, spec, files, warm, tmp, writer_first=n % 2 == 0)
                rounds.append(one)
                total = one["bytes"]
                print(f"  GCS {spec} round {n + 1}: roxxel {total / one['writer_s'] / 1e6:.0f} MB/s, its uploads "
                      f"{total / one['put_file_s'] / 1e6:.0f} MB/s, best client {total / one['best_s'] / 1e6:.0f} MB/s, "
                      f"gcsfs put_file {total / one['gcsfs_s'] / 1e6:.0f} MB/s, unshaped "
                      f"{total / one['server_s'] / 1e6:.0f} MB/s; load {os.getloadavg()[0]:.1f}", flush=True)
            print("GCS (fake-gcs-server; 'moto' below means the server):")
            row = summarize(spec, rounds, len(files), False)
            row["store"], row["gcsfs_mbps"] = "gcs", total / min(r["gcsfs_s"] for r in rounds) / 1e6
            print(f"  gcsfs        {row['gcsfs_mbps']:6.0f} MB/s = {row['gcsfs_mbps'] / row['best_mbps']:4.0%} of the "
                  "best client (put_file, 4 at once: roxxel's GCS uploads before)\n", flush=True)
            results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["4x64", "1x256"], metavar="NxMIB")
    parser.add_argument("--latency", type=float, default=0.03, help="seconds to each response's first byte")
    parser.add_argument("--conn-mbps", type=float, default=25.0, help="MB/s per connection and direction")
    parser.add_argument("--link-mbps", type=float, default=400.0, help="MB/s per direction for the whole link")
    parser.add_argument("--part-mib", type=int, default=8)
    parser.add_argument("--parallel", type=int, default=32)
    parser.add_argument("--repeat", type=int, default=2,
                        help="rounds, alternating the order (an even number gives each client first place as often: "
                             "a fresh server's first client pays its first-touch costs); the best is kept")
    parser.add_argument("--parts-in-flight", type=int, default=None,
                        help="the writer's multipart.configure(parts_in_flight=...) (default: roxxel's)")
    parser.add_argument("--boto3", action="store_true", help="also time boto3 upload_part from threads")
    parser.add_argument("--out", help="also write the results as JSON to this file (e.g. bench-out/upload.json)")
    parser.add_argument("--gcs", action="store_true",
                        help="the GCS line instead: fake-gcs-server, the best parallel composite upload client")
    args = parser.parse_args(argv)
    print(f"link: {args.latency * 1000:.0f} ms to first byte, {args.conn_mbps:g} MB/s per connection, "
          f"{args.link_mbps:g} MB/s link; best client: {args.parallel} x {args.part_mib} MiB parts in flight; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.gcs:  # the GCS line
        gcs_results = gcs_main(args)
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(gcs_results, indent=2) + "\n")
        return 0
    results = []
    with servers.s3_server() as s3, tempfile.TemporaryDirectory() as tmp:
        port = int(s3.endpoint.rsplit(":", 1)[1])
        with shaping_proxy.start(port, latency=args.latency, conn_rate=args.conn_mbps * 1e6,
                                 link_rate=args.link_mbps * 1e6) as proxy:
            bench = Bench(s3, proxy, bench_storage_options(proxy.endpoint), args, tmp)
            for spec in args.datasets:
                rounds: list[dict[str, float]] = []
                files: list[str] = []
                for n in range(args.repeat):
                    one = bench.round(spec, files, writer_first=n % 2 == 0)
                    rounds.append(one)
                    total = one["bytes"]
                    print(f"  {spec} round {n + 1}: roxxel {total / one['writer_s'] / 1e6:.0f} MB/s, its uploads "
                          f"{total / one['put_file_s'] / 1e6:.0f} MB/s, best client "
                          f"{total / one['best_s'] / 1e6:.0f} MB/s, unshaped {total / one['server_s'] / 1e6:.0f} MB/s; "
                          f"load {os.getloadavg()[0]:.1f}", flush=True)
                results.append(summarize(spec, rounds, len(files), args.boto3))
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
