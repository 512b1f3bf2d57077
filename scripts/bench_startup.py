"""Start-up costs: import, open, first record and resume, each from a fresh process.

A moto S3 server runs on loopback (a subprocess); one dataset is written to it (by
default 16 shards of 4 MiB of 1-15 KiB incompressible records) and warmed into a cache
directory, so every figure below is for a warm cache: what a job pays when it starts
again on a node that already holds its shards. Each figure is the median of
``--runs`` fresh processes (rounds alternate between roxxel and MosaicML, so a burst
of load from other processes hits both), with default options:

- **import**: ``import roxxel``;
- **first open**: the first ``roxxel.open(url, storage_options=..., cache_dir=...)`` of
  the process, with whatever it imports on the way (the S3 signer, s3fs if needed);
- **second open**: another ``roxxel.open`` of the same dataset in the same process;
- **first record warm**: a fresh process, from the call to ``roxxel.open`` to the first
  record of ``ds.iter()``;
- **resume**: a fresh process, from the call to ``roxxel.open`` to the first record of
  ``ds.resume(state)``, with the state a ``ds.iter()`` gave after ``--resume-at`` records.

With ``--mosaic PYTHON`` (a separate virtualenv with mosaicml-streaming; see below), the
same records are written as MDS (``MDSWriter``, the same shard size), uploaded to the
same server and warmed into their own local directory, and the same figures are taken
for ``StreamingDataset(remote=..., local=...)`` with its defaults: import, construction,
the first sample of ``iter(ds)``, and a resume (``load_state_dict`` of
``state_dict(--resume-at)``, then the first sample). torchvision is replaced by stubs,
as PEER-LIBRARIES.md describes. MosaicML reads a warm local index without contacting
the store; roxxel reads the manifest from the store on every open (a dataset may have
been appended to), so its figures include one GET.

With ``--aws``, the timed roxxel processes open the dataset as a user on AWS would:
no ``endpoint_url``, credentials and region from the environment (``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY``, ``AWS_DEFAULT_REGION``; with ``--aws-mode head``, no region,
so each fresh process finds the bucket's by one HEAD; with ``--aws-mode s3fs``,
``AWS_ENDPOINT_URL`` is also set to the server, which the fast path leaves to s3fs: what
every open without ``endpoint_url`` cost before). They reach moto through the test
seam: right after ``import roxxel`` (so the import figure is unchanged),
``roxxel.backends.aws_endpoint._aws_endpoint`` is patched to connect to the loopback
server, keeping AWS's ``Host`` header, addressing and signature. Warming the cache and
taking the iteration state still use the explicit endpoint. These figures are labelled
"AWS endpoints through a loopback seam": moto's answers, not AWS's network.

Bytecode is written and warmed first (``PYTHONDONTWRITEBYTECODE`` is dropped for the
children): an installed package has it; the import figures would otherwise count
compiling roxxel's sources.

Usage: ``.venv/bin/python scripts/bench_startup.py [--runs 5] [--mosaic .venv-bench/bin/python]
[--aws [--aws-mode env|head|s3fs]]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchkit import REPO, MiB, RecordSource, bench_storage_options, bytecode_env

import roxxel
from tests import servers

_ROXXEL_CHILD = r"""
import json, sys, time
T = time.perf_counter
t0 = T()
import roxxel
t_import = T()
url, options, cache_dir, mode, state = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
out = {"import": t_import - t0}
if len(sys.argv) > 6:  # --aws: AWS's endpoints, connected to the loopback server (the test seam)
    from roxxel.backends import aws_endpoint
    _real, _port = aws_endpoint._aws_endpoint, int(sys.argv[6])
    aws_endpoint._aws_endpoint = lambda b, r, p: _real(b, r, p)._replace(scheme="http", address=("127.0.0.1", _port))
t = T()
ds = roxxel.open(url, storage_options=options, cache_dir=cache_dir)
out["open"] = T() - t
if mode == "first":
    next(iter(ds.iter()))
    out["first"] = T() - t
    ds.close()
    t = T()
    ds = roxxel.open(url, storage_options=options, cache_dir=cache_dir)
    out["open2"] = T() - t
elif mode == "resume":
    next(ds.resume(json.loads(state)))
    out["resume"] = T() - t
elif mode == "state":
    it = ds.iter()
    for _ in range(int(state)):
        next(it)
    out["state"] = it.state()
elif mode == "warm":
    ds.warm()
ds.close()
out["modules"] = sorted({m.split(".")[0] for m in sys.modules} & {"s3fs", "aiohttp", "aiobotocore", "botocore", "gcsfs"})
print(json.dumps(out))
"""

_STUBS = r"""
import importlib.machinery, sys, types
def _stub_torchvision():
    # streaming imports streaming.vision, which needs two names from torchvision (a PyPI
    # torchvision does not load next to the CPU torch); stubs are enough for MDS.
    names = ["torchvision", "torchvision.datasets", "torchvision.transforms", "torchvision.transforms.functional"]
    mods = {n: types.ModuleType(n) for n in names}
    for n, m in mods.items():
        m.__spec__ = importlib.machinery.ModuleSpec(n, None)
    mods["torchvision.datasets"].VisionDataset = type("VisionDataset", (), {})
    mods["torchvision.transforms.functional"].to_tensor = lambda x: x
    mods["torchvision"].datasets = mods["torchvision.datasets"]
    mods["torchvision"].transforms = mods["torchvision.transforms"]
    mods["torchvision.transforms"].functional = mods["torchvision.transforms.functional"]
    sys.modules.update(mods)
_stub_torchvision()
"""

_MOSAIC_WRITE = _STUBS + r"""
sys.path.insert(0, sys.argv[1])
from benchkit import RecordSource
from streaming import MDSWriter
total, shard_bytes, out = int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with MDSWriter(out=out, columns={"data": "bytes"}, size_limit=shard_bytes) as writer:
    for record in RecordSource(total, 1024, 15 * 1024, seed=1):
        writer.write({"data": bytes(record)})
"""

_MOSAIC_CHILD = _STUBS + r"""
import json, time
T = time.perf_counter
t0 = T()
import streaming
t_import = T()
remote, local, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
out = {"import": t_import - t0}
t = T()
ds = streaming.StreamingDataset(remote=remote, local=local, batch_size=1)
out["open"] = T() - t
if mode == "first":
    next(iter(ds))
    out["first"] = T() - t
elif mode == "resume":
    ds.load_state_dict(json.loads(arg))
    next(iter(ds))
    out["resume"] = T() - t
elif mode == "state":
    out["state"] = ds.state_dict(int(arg), from_beginning=False)
elif mode == "warm":
    n = sum(1 for _ in ds)
    out["records"] = n
print(json.dumps(out))
"""


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = bytecode_env()
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


def run(python: str, code: str, args: list[str], env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([python, "-c", code, *args], capture_output=True, text=True, env=env, timeout=600, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    lines = done.stdout.strip().splitlines()
    return json.loads(lines[-1]) if lines else {}


def median_ms(results: list[dict[str, Any]], key: str) -> str:
    values = [r[key] * 1000 for r in results]
    return f"{statistics.median(values):6.1f} ms (min {min(values):.1f}, max {max(values):.1f})"


class Roxxel:
    """roxxel's children: a warm cache, a saved iteration state, then one round per call."""

    def __init__(self, url: str, options: dict[str, Any], cache_dir: str, args: argparse.Namespace,
                 aws_endpoint: str | None = None) -> None:
        self.env, self.args = child_env(), [url, json.dumps(options), cache_dir]
        run(sys.executable, _ROXXEL_CHILD, [*self.args, "warm", ""], self.env)  # also writes bytecode
        state = run(sys.executable, _ROXXEL_CHILD, [*self.args, "state", str(args.resume_at)], self.env)["state"]
        self.state = json.dumps(state)
        self.label, self.extra = "", []
        if aws_endpoint is not None:  # the timed processes: no endpoint_url, AWS's settings from the environment
            self.label = " on AWS endpoints through a loopback seam"
            self.env = {k: v for k, v in child_env().items() if not k.startswith("AWS_") and "proxy" not in k.lower()}
            self.env.update(AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
                            AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
            if args.aws_mode != "head":
                self.env["AWS_DEFAULT_REGION"] = "us-east-1"
            self.label += {
                "env": " (credentials and region from the environment)",
                "head": " (credentials from the environment, the region by one HEAD)",
                "s3fs": " (AWS_ENDPOINT_URL set: the fast path steps aside, s3fs opens)",
            }[args.aws_mode]
            if args.aws_mode == "s3fs":
                self.env["AWS_ENDPOINT_URL"] = aws_endpoint
            self.args, self.extra = [url, json.dumps({}), cache_dir], [aws_endpoint.rsplit(":", 1)[1]]
        self.firsts: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []

    def round(self) -> None:
        self.firsts.append(run(sys.executable, _ROXXEL_CHILD, [*self.args, "first", "", *self.extra], self.env))
        self.resumes.append(run(sys.executable, _ROXXEL_CHILD, [*self.args, "resume", self.state, *self.extra],
                                self.env))

    def report(self) -> dict[str, float]:
        firsts, resumes = self.firsts, self.resumes
        print(f"roxxel{self.label} (warm cache, fresh processes, median of {len(firsts)}):")
        print(f"  import roxxel                 {median_ms(firsts, 'import')}")
        print(f"  first open                    {median_ms(firsts, 'open')}")
        print(f"  second open, same process     {median_ms(firsts, 'open2')}")
        print(f"  first record warm (from open) {median_ms(firsts, 'first')}")
        print(f"  resume (open to first record) {median_ms(resumes, 'resume')}")
        print(f"  imported by then: {', '.join(firsts[-1]['modules']) or 'none of s3fs, aiohttp, aiobotocore, botocore'}")
        return {k: statistics.median(r[k] for r in rs) for k, rs in (("first", firsts), ("resume", resumes))}


class Mosaic:
    """MosaicML Streaming's children on the same records, written as MDS and uploaded."""

    def __init__(self, python: str, s3: servers.Server, total: int, shard_bytes: int, work: Path,
                 args: argparse.Namespace) -> None:
        mds = work / "mds-out"
        run(python, _MOSAIC_WRITE, [str(REPO / "scripts"), str(total), str(shard_bytes), str(mds)], child_env())
        s3.filesystem().put(str(mds) + "/", "bench/mds/", recursive=True)
        self.python, self.env = python, child_env({**s3.env, "S3_ENDPOINT_URL": s3.endpoint})
        self.args = ["s3://bench/mds", str(work / "mds-local")]
        self.samples = run(python, _MOSAIC_CHILD, [*self.args, "warm", ""], self.env)["records"]
        state = run(python, _MOSAIC_CHILD, [*self.args, "state", str(args.resume_at)], self.env)["state"]
        self.state = json.dumps(state)
        self.firsts: list[dict[str, Any]] = []
        self.resumes: list[dict[str, Any]] = []

    def round(self) -> None:
        self.firsts.append(run(self.python, _MOSAIC_CHILD, [*self.args, "first", ""], self.env))
        self.resumes.append(run(self.python, _MOSAIC_CHILD, [*self.args, "resume", self.state], self.env))

    def report(self) -> dict[str, float]:
        firsts, resumes = self.firsts, self.resumes
        print(f"MosaicML Streaming, StreamingDataset(remote=..., local=...) ({self.samples} samples; "
              f"warm local directory, fresh processes, median of {len(firsts)}):")
        print(f"  import streaming              {median_ms(firsts, 'import')}")
        print(f"  construction                  {median_ms(firsts, 'open')}")
        print(f"  first sample warm (from construction) {median_ms(firsts, 'first')}")
        print(f"  resume (construction to first sample) {median_ms(resumes, 'resume')}")
        return {k: statistics.median(r[k] for r in rs) for k, rs in (("first", firsts), ("resume", resumes))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shards", type=int, default=16)
    parser.add_argument("--shard-mib", type=int, default=4)
    parser.add_argument("--runs", type=int, default=5, help="fresh processes per figure")
    parser.add_argument("--resume-at", type=int, default=1000, help="records read before the state is taken")
    parser.add_argument("--mosaic", metavar="PYTHON", help="a python with mosaicml-streaming installed")
    parser.add_argument("--aws", action="store_true",
                        help="time roxxel's opens without endpoint_url, on AWS's endpoints through a loopback seam")
    parser.add_argument("--aws-mode", choices=["env", "head", "s3fs"], default="env",
                        help="with --aws: the region from AWS_DEFAULT_REGION, or found by one HEAD per process, "
                        "or AWS_ENDPOINT_URL set (s3fs opens: the cost before)")
    args = parser.parse_args(argv)
    total, shard_bytes = args.shards * args.shard_mib * MiB, args.shard_mib * MiB
    with servers.s3_server() as s3, tempfile.TemporaryDirectory(prefix="bench-startup-") as tmp:
        work = Path(tmp)
        s3.create_bucket("bench")
        options = bench_storage_options(s3.endpoint)
        url = "s3://bench/roxxel"
        with roxxel.Writer(url, shard_bytes=shard_bytes, storage_options=options) as writer:
            writer.extend(RecordSource(total, 1024, 15 * 1024, seed=1))
        print(f"{writer.manifest.records} records in {len(writer.manifest.shards)} shards "
              f"of {args.shard_mib} MiB on moto (loopback)\n")
        ours = Roxxel(url, options, str(work / "cache"), args, s3.endpoint if args.aws else None)
        theirs = Mosaic(args.mosaic, s3, total, shard_bytes, work, args) if args.mosaic else None
        for _ in range(args.runs):  # rounds alternate, so a burst of load hits both sides
            ours.round()
            if theirs is not None:
                theirs.round()
        mine = ours.report()
        if theirs is not None:
            other = theirs.report()
            print("\nroxxel / MosaicML: first record "
                  f"{mine['first'] / other['first']:.2f}x, resume {mine['resume'] / other['resume']:.2f}x")
    print(f"\nload average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
