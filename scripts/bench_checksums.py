"""Checksum algorithms side by side: what verifying a download costs, per GB, on this machine.

Two measurements, in one run, so the rows compare like with like:

1. **Hashing alone.** Each algorithm over ``--gib`` GiB (default 1) fed in 8 MiB pieces,
   the size of the download engine's parts. The pieces are slices of a 256 MiB pool of
   random bytes, more than the CPU caches hold, as arriving data is. Rows: sha256 and
   blake2b (hashlib), blake3 on one thread (what roxxel writes and verifies) and in its
   multi-threaded mode (``max_threads=AUTO``), xxh3-128 (``xxhash``) and crc32c
   (``google-crc32c``). The last two are measured for comparison only: roxxel does not
   accept them (see the README's "Checksums").
2. **The check as the cache runs it.** ``cache.download.fetch_verified`` over a 256 MiB
   (``--shard-mib``) uncompressed shard read from the page cache in 8 MiB pieces: the one
   shard check (``format.check.ShardCheck``: size, checksum, offsets, footer) writing the
   raw bytes to a temp file, which is fsynced. One row per algorithm (xxh3-128 and crc32c
   through a bench-only key; ShardCheck only asks a key for a hasher), and a row of the
   same reads, writes and fsync without any check, for scale. Writing and fsyncing the
   temp file costs kernel time that moves a lot with the machine's load, so the CPU time
   spent inside the hasher's ``update`` calls is also measured on its own (the process's
   CPU clock around each call): "of which hashing".

Each figure is the median of ``--rounds`` rounds (default 3), the algorithms taking turns
within a round. "GB/s" is wall-clock throughput (GB = 10^9 bytes); "core-s/GB" is the
process's CPU time per GB, summed over its threads, which is what verifying takes away from
a training job; "cores at 2.6 GB/s" is that cost at the loopback link rate of issue 17.
On a shared machine the wall-clock figures move with the load; the CPU figures much less.
Part 2's whole-pipeline figures are noisier than part 1's: they include writing and
fsyncing the temp file (kernel time, counted to this process).

Usage: ``.venv/bin/python scripts/bench_checksums.py`` (default options, about a minute);
``--quick`` is a smoke test. Prints a table and writes ``bench-out/checksums.txt`` and
``bench-out/checksums.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchkit import REPO, MiB

from roxxel.cache.download import fetch_verified
from roxxel.cache.files import TempFile
from roxxel.format import ShardWriter
from roxxel.format.check import ShardSpec
from roxxel.manifest.checksums import DEFAULT_ALGORITHM, Hasher, ShardKey, new_hasher

PIECE = 8 * MiB  # the download engine's part size
POOL = 256 * MiB
LINK_GBPS = 2.6  # issue 17's loopback read rate
GB = 1e9


class _Crc32c:
    """google-crc32c as a hasher. Its ``update`` takes bytes only (not a memoryview, which
    is what ShardCheck passes on), so a view over a whole bytes object is unwrapped."""

    def __init__(self) -> None:
        import google_crc32c

        self._crc = google_crc32c.Checksum()

    def update(self, data: Any) -> None:
        if isinstance(data, memoryview):
            whole = isinstance(data.obj, bytes) and data.nbytes == len(data.obj)
            data = data.obj if whole else bytes(data)
        self._crc.update(data)

    def hexdigest(self) -> str:
        return self._crc.digest().hex()


def _blake3_threads() -> Hasher:
    from blake3 import blake3

    return blake3(max_threads=blake3.AUTO)


def _xxh3_128() -> Hasher:
    import xxhash

    return xxhash.xxh3_128()


@dataclass(frozen=True)
class Candidate:
    name: str
    new: Callable[[], Hasher]
    in_roxxel: bool  # an algorithm manifests may name
    module: str  # what must be importable


CANDIDATES = [
    Candidate("sha256", lambda: new_hasher("sha256"), True, "hashlib"),
    Candidate("blake2b", lambda: new_hasher("blake2b"), True, "hashlib"),
    Candidate("blake3", lambda: new_hasher("blake3"), True, "blake3"),
    Candidate("blake3 (multi-threaded)", _blake3_threads, False, "blake3"),
    Candidate("xxh3-128", _xxh3_128, False, "xxhash"),
    Candidate("crc32c", _Crc32c, False, "google_crc32c"),
]


def available(candidate: Candidate) -> bool:
    try:
        __import__(candidate.module)
    except ImportError:
        return False
    return True


class _Metered:
    """A hasher that adds the process CPU time of each ``update`` to ``cpu``."""

    def __init__(self, hasher: Hasher) -> None:
        self.hasher, self.cpu = hasher, 0.0

    def update(self, data: Any) -> None:
        c0 = time.process_time()
        self.hasher.update(data)
        self.cpu += time.process_time() - c0

    def hexdigest(self) -> str:
        return self.hasher.hexdigest()


@dataclass(frozen=True)
class _BenchKey(ShardKey):
    """A key whose hasher is any candidate's, metered (ShardCheck asks its key for the
    hasher); ``made`` keeps the hashers it made."""

    factory: Callable[[], Hasher] = new_hasher  # type: ignore[assignment]
    made: list[_Metered] = field(default_factory=list)

    def new_hash(self) -> Hasher:
        hasher = _Metered(self.factory())
        self.made.append(hasher)
        return hasher


def timed(fn: Callable[[], object], key: _BenchKey | None = None) -> tuple[float, float, float]:
    """(wall seconds, CPU seconds of this process, of which in ``key``'s hashers) of one
    call of ``fn``."""
    if key is not None:
        key.made.clear()
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    return wall, cpu, sum(h.cpu for h in key.made) if key is not None else 0.0


def hash_alone(candidate: Candidate, pieces: list[bytes], count: int) -> Callable[[], object]:
    def run() -> str:
        hasher = candidate.new()
        for i in range(count):
            hasher.update(pieces[i % len(pieces)])
        return hasher.hexdigest()

    return run


def make_shard(path: Path, mib: int) -> tuple[int, int]:
    """A valid ROXXEL01 shard of ``mib`` MiB of 256 KiB random records: (size, records)."""
    pool = os.urandom(MiB + 4096)
    records = mib * 4
    with open(path, "wb") as f:
        writer = ShardWriter(f)
        for i in range(records):
            start = (i * 977) % 4096
            writer.append(pool[start + (i % 4) * 256 * 1024 :][: 256 * 1024])
        writer.finish()
    return path.stat().st_size, records


def digest_of(path: Path, new: Callable[[], Hasher]) -> str:
    hasher = new()
    with open(path, "rb") as f:
        while piece := f.read(PIECE):
            hasher.update(piece)
    return hasher.hexdigest()


def reading(path: Path) -> Callable[[Callable[[bytes], None]], None]:
    """A ``fetch`` streaming the file in 8 MiB pieces (from the page cache, once warm)."""

    def fetch(sink: Callable[[bytes], None]) -> None:
        with open(path, "rb") as f:
            while piece := f.read(PIECE):
                sink(piece)

    return fetch


def check_run(key: ShardKey, path: Path, spec: ShardSpec, tmp_dir: str) -> Callable[[], object]:
    def run() -> None:
        temp, _ = fetch_verified(key, reading(path), spec, tmp_dir, attempts=1)
        temp.discard()

    return run


def copy_run(path: Path, tmp_dir: str) -> Callable[[], object]:
    """The same reads, writes and fsync as a check, without it."""

    def run() -> None:
        temp = TempFile(tmp_dir)
        try:
            reading(path)(temp.file.write)
            temp.sync()
        finally:
            temp.discard()

    return run


def median_of(samples: list[tuple[float, ...]]) -> list[float]:
    return [statistics.median(column) for column in zip(*samples)]


def row(name: str, nbytes: int, wall: float, cpu: float, hashing: float | None = None) -> dict[str, Any]:
    """A table row; ``cores_at_link`` is hashing's share where ``hashing`` is given."""
    gb = nbytes / GB
    out = {
        "name": name,
        "bytes": nbytes,
        "wall_s": round(wall, 4),
        "cpu_s": round(cpu, 4),
        "gb_per_s": round(gb / wall, 3),
        "core_s_per_gb": round(cpu / gb, 4),
        "cores_at_link": round((cpu if hashing is None else hashing) / gb * LINK_GBPS, 3),
    }
    if hashing is not None:
        out["hashing_cpu_s"] = round(hashing, 4)
        out["hashing_core_s_per_gb"] = round(hashing / gb, 4)
    return out


def table(title: str, rows: list[dict[str, Any]], note: dict[str, str], *, hashing: bool = False) -> list[str]:
    """Rows as text; with ``hashing``, a column of the CPU spent in the hasher, and the
    cores at the link rate are hashing's."""
    head = f"{'':34}{'GB/s':>8}{'core-s/GB':>11}"
    head += f"{'of which hashing':>18}" if hashing else ""
    head += f"{f'cores at {LINK_GBPS} GB/s':>18}" + (" (hashing)" if hashing else "")
    lines = [title, head]
    for r in rows:
        name = r["name"] + note.get(r["name"], "")
        if "gb_per_s" not in r:
            lines.append(f"{name:34}{r['missing']:>37}")
            continue
        line = f"{name:34}{r['gb_per_s']:8.2f}{r['core_s_per_gb']:11.3f}"
        if hashing:
            line += f"{r['hashing_core_s_per_gb']:18.3f}" if "hashing_core_s_per_gb" in r else f"{'-':>18}"
            line += f"{r['cores_at_link']:18.2f}" if "hashing_core_s_per_gb" in r else f"{'-':>18}"
        else:
            line += f"{r['cores_at_link']:18.2f}"
        lines.append(line)
    return lines


def versions() -> dict[str, str]:
    import ssl

    out = {"python": platform.python_version(), "openssl": ssl.OPENSSL_VERSION}
    for dist in ("blake3", "xxhash", "google-crc32c"):
        try:
            from importlib.metadata import version

            out[dist] = version(dist)
        except Exception:  # noqa: BLE001 - a missing package is reported as such
            out[dist] = "not installed"
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=1.0, help="bytes hashed per round, in GiB")
    parser.add_argument("--shard-mib", type=int, default=256, help="the checked shard's size, in MiB")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where the shard and temp files go (default: a temp dir)")
    parser.add_argument("--out", default=str(REPO / "bench-out"), help="where results are written")
    parser.add_argument("--quick", action="store_true", help="smoke test: 64 MiB, a 16 MiB shard, 1 round")
    opts = parser.parse_args()
    if opts.quick:
        opts.gib, opts.shard_mib, opts.rounds = 1 / 16, 16, 1

    present = [c for c in CANDIDATES if available(c)]
    missing = [c for c in CANDIDATES if not available(c)]
    note = {DEFAULT_ALGORITHM: " (roxxel's default)"}
    load_before = os.getloadavg()

    # 1. hashing alone
    pool = os.urandom(POOL)
    pieces = [pool[i : i + PIECE] for i in range(0, POOL, PIECE)]
    del pool
    count = max(1, round(opts.gib * (1 << 30) / PIECE))
    samples: dict[str, list[tuple[float, ...]]] = {c.name: [] for c in present}
    for c in present:  # warm up: imports, thread pools
        hash_alone(c, pieces, 2)()
    for _ in range(opts.rounds):
        for c in present:
            samples[c.name].append(timed(hash_alone(c, pieces, count))[:2])
    alone = [row(c.name, count * PIECE, *median_of(samples[c.name])) for c in present]
    alone += [{"name": c.name, "missing": f"not installed (pip install {c.module})"} for c in missing]
    del pieces

    # 2. the check as the cache runs it
    with tempfile.TemporaryDirectory(dir=opts.dir) as tmp:
        shard = Path(tmp) / "shard.rox"
        size, records = make_shard(shard, opts.shard_mib)
        spec = ShardSpec(size, size, None, records, str(shard))
        no_check = "no check (read, write, fsync)"
        runs: dict[str, tuple[Callable[[], object], _BenchKey | None]] = {no_check: (copy_run(shard, tmp), None)}
        for c in present:
            key = _BenchKey(c.name, digest_of(shard, c.new), c.new)
            runs[c.name] = (check_run(key, shard, spec, tmp), key)
        for run, _key in runs.values():  # warm up, and the shard's pages in the page cache
            run()
        checked: dict[str, list[tuple[float, float, float]]] = {name: [] for name in runs}
        for _ in range(opts.rounds):
            for name, (run, key) in runs.items():
                checked[name].append(timed(run, key))
    check_rows = []
    for name, samples_of in checked.items():
        wall, cpu, hashing = median_of(samples_of)
        check_rows.append(row(name, size, wall, cpu, None if name == no_check else hashing))

    load_after = os.getloadavg()
    header = [
        f"bench_checksums: {cpu_model()}, {os.cpu_count()} cores, load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after; median of {opts.rounds} rounds",
        "versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"command: .venv/bin/python scripts/bench_checksums.py {' '.join(sys.argv[1:])}".rstrip(),
    ]
    lines = header + [""]
    lines += table(f"1. hashing alone: {count * PIECE / (1 << 30):.2f} GiB in 8 MiB pieces", alone, note)
    lines += [""]
    lines += table(f"2. cache download check: ShardCheck over a {size / MiB:.0f} MiB uncompressed shard "
                   "(8 MiB pieces from the page cache -> temp file, fsync)", check_rows, note, hashing=True)
    text = "\n".join(lines)
    print(text)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "checksums.txt").write_text(text + "\n")
    doc = {
        "header": header,
        "rounds": opts.rounds,
        "link_gb_per_s": LINK_GBPS,
        "hashing_alone": alone,
        "cache_check": check_rows,
        "in_roxxel": {c.name: c.in_roxxel for c in CANDIDATES},
        "default": DEFAULT_ALGORITHM,
    }
    (out / "checksums.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwritten: {out / 'checksums.txt'}, {out / 'checksums.json'}")


if __name__ == "__main__":
    main()
