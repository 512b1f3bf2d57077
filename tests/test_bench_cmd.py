"""``roxxel bench``: the link, a cold and a warm read of a dataset, and what to change.

Against moto on loopback and a local directory. No assertion on a duration or a rate:
only that each is measured, reported, and consistent with the bytes moved.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
from fsspec.callbacks import Callback

import roxxel
from roxxel.cli import main
from roxxel.cli.parser import build_parser
from roxxel.ops.bench import BenchReport, bench

BUCKET = "roxxel-tests"  # created by the session fixture in conftest.py
README = Path(__file__).resolve().parents[1] / "README.md"
SCRIPT = Path(sys.executable).with_name("roxxel")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "roxxel"]
N = 300


def write(url: str, options=None) -> roxxel.Manifest:
    rng = np.random.default_rng(0)
    with roxxel.Writer(url, shard_bytes=64 * 1024, storage_options=options) as w:
        w.extend(rng.integers(0, 256, size=int(rng.integers(100, 2000)), dtype=np.uint8) for _ in range(N))
    return w.manifest


@pytest.fixture
def s3_dataset(s3_server):
    url = s3_server.url(BUCKET, f"bench-{uuid.uuid4().hex[:10]}/ds")
    return url, s3_server.storage_options, write(url, s3_server.storage_options)


@pytest.fixture
def local_dataset(tmp_path):
    url = str(tmp_path / "ds")
    return url, write(url)


def s3_opts(server) -> list[str]:
    return ["-o", f"endpoint_url={server.endpoint}", "-o", "key=testing", "-o", "secret=testing",
            "-o", "client_kwargs.region_name=us-east-1"]


def raw_bytes(manifest) -> int:
    return int(manifest.shards.raw_size.sum())


def check_report(report: dict, manifest, *, method: str, whole: bool) -> None:
    stored = int(manifest.shards.stored_size.sum())
    assert report["shards"] == len(manifest.shards) and report["stored_bytes"] == stored
    link = report["link"]
    assert link["method"] == method
    assert link["bytes"] == sum(int(manifest.shards.stored_size[k]) for k in range(link["shards"]))
    assert link["parts"] >= link["shards"] >= 1 and link["seconds"] > 0 and link["mb_per_s"] > 0
    for name in ("cold", "warm"):
        read = report[name]
        assert read["cache"] == name and read["whole_epoch"] is whole
        for key in ("open_seconds", "first_record_seconds", "seconds"):
            assert read[key] >= 0
        assert read["first_record_seconds"] <= read["seconds"]
        assert read["mb_per_s"] == pytest.approx(read["record_bytes"] / read["seconds"] / 1e6)
    cold, warm = report["cold"], report["warm"]
    assert (cold["records"], cold["record_bytes"]) == (warm["records"], warm["record_bytes"])  # the same reads
    assert warm["downloaded_bytes"] == 0  # served by the cache the cold read filled
    if whole:
        assert cold["records"] == N and cold["record_bytes"] == sum(
            int(manifest.shards.raw_size[k]) for k in range(len(manifest.shards))
        ) - sum(8 * int(manifest.shards.records[k]) + 24 for k in range(len(manifest.shards)))
        assert cold["downloaded_bytes"] == stored  # every shard, once
    ratios = report["ratios"]
    assert ratios["cold"] == pytest.approx(cold["mb_per_s"] / link["mb_per_s"])
    assert ratios["warm"] == pytest.approx(warm["mb_per_s"] / link["mb_per_s"])
    assert ratios["cold_download"] == pytest.approx(cold["download_mb_per_s"] / link["mb_per_s"])
    assert isinstance(report["advice"], list) and all(isinstance(line, str) for line in report["advice"])


def test_bench_on_s3_prints_the_three_measurements_and_the_ratios(s3_server, s3_dataset, capsys):
    url, _, manifest = s3_dataset
    assert main(["bench", url, *s3_opts(s3_server), "-q"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].startswith(f"{url}: {len(manifest.shards)} shards")
    link = next(line for line in lines if line.startswith("link "))
    assert "presigned GETs (http.client)" in link and "per connection" in link and "first byte after" in link
    for name in ("cold", "warm"):
        line = next(line for line in lines if line.startswith(name))
        assert re.search(r"MB/s += \d+% of the link; open \d+ ms, first record after \d+ ms", line), line
        assert f"{N} records" in line
    assert "downloaded" in next(line for line in lines if line.startswith("cold"))
    assert "downloaded" not in next(line for line in lines if line.startswith("warm"))
    if "what to change:" in out:
        assert lines[lines.index("what to change:") + 1].startswith("  - ")


def test_bench_json_on_s3(s3_server, s3_dataset, capsys):
    url, _, manifest = s3_dataset
    assert main(["bench", url, *s3_opts(s3_server), "--json", "--part-size", "16KiB", "--parallel", "4"]) == 0
    report = json.loads(capsys.readouterr().out)
    check_report(report, manifest, method="presigned GETs (http.client)", whole=True)
    assert report["link"]["part_size"] == 16 * 1024 and report["link"]["parallel"] == 4
    assert report["link"]["parts"] > len(manifest.shards)  # shards of 64 KiB in 16 KiB parts


def test_bench_of_a_local_directory_stops_at_max_bytes(local_dataset, tmp_path, capsys):
    url, manifest = local_dataset
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    assert main(["bench", url, "--json", "--max-bytes", "100KiB", "--scratch-dir", str(scratch)]) == 0
    report = json.loads(capsys.readouterr().out)
    check_report(report, manifest, method="fsspec cat_file", whole=False)
    assert report["max_bytes"] == 100 * 1024
    assert report["cold"]["record_bytes"] >= 100 * 1024 > report["cold"]["record_bytes"] - 2000
    assert report["link"]["bytes"] >= 100 * 1024  # shards up to max_bytes, whole
    assert any("--max-bytes" in line for line in report["advice"])
    assert list(scratch.iterdir()) == []  # the temporary cache is gone


def test_the_library_function_reports_progress_and_a_dataclass(local_dataset):
    url, manifest = local_dataset

    class Count(Callback):
        pass

    progress = Count()
    report = bench(url, progress=progress)
    assert isinstance(report, BenchReport)
    assert report.cold.whole_epoch and report.cold.records == N
    assert progress.value == report.link.bytes + report.cold.record_bytes + report.warm.record_bytes
    assert progress.size >= progress.value - 2 * report.cold.record_bytes  # link + up to max_bytes twice
    assert report.to_dict()["advice"] == report.advice


def test_bench_writes_a_trace_of_the_link(local_dataset, tmp_path, capsys):
    url, manifest = local_dataset
    path = tmp_path / "bench-trace.json"
    assert main(["bench", url, "--trace", str(path), "-q"]) == 0
    assert f"trace: {path}" in capsys.readouterr().out
    with open(path, encoding="utf-8") as f:
        events = json.load(f)["traceEvents"]
    phases = [e["name"] for e in events if e["ph"] == "X" and e["name"].startswith("bench: ")]
    assert phases == ["bench: link", "bench: cold read", "bench: warm read"]
    firsts = [e["name"] for e in events if e["ph"] == "i" and e["name"].startswith("bench: ")]
    assert firsts == ["bench: cold read's first record", "bench: warm read's first record"]
    gets = [e for e in events if e["ph"] == "X" and e["name"] == "link GET"]
    assert sum(e["args"]["bytes"] for e in gets) == int(manifest.shards.stored_size.sum())
    from roxxel import trace

    assert trace.current() is None  # the command turned it off again


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_missing_dataset_is_one_line_and_exit_status_1(where, s3_server, tmp_path):
    env = {**os.environ, "ROXXEL_CACHE_DIR": str(tmp_path / "cache")}
    if where == "local":
        url, options = str(tmp_path / "nothing-here"), []
    else:
        url, options = s3_server.url(BUCKET, f"missing-{uuid.uuid4().hex[:8]}"), s3_opts(s3_server)
    result = subprocess.run([*COMMAND, "bench", url, *options], env=env, capture_output=True, text=True,
                            timeout=180, check=False)
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("roxxel: error: ") and "manifest.json" in last
    assert "check the URL" in last
    assert "testing" not in result.stderr  # no credentials in the message


def test_an_empty_dataset_is_a_clear_failure(tmp_path, capsys):
    url = str(tmp_path / "empty")
    with roxxel.Writer(url):
        pass
    assert main(["bench", url]) == 1
    assert "has no records: there is nothing to measure" in capsys.readouterr().err


def test_bad_arguments_are_usage_errors(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["bench", "/x", "--parallel", "0"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit) as stop:
        main(["bench", "/x", "--max-bytes", "lots"])
    assert stop.value.code == 2


@pytest.mark.parametrize("command", ["bench", "trace-merge"])
def test_help_and_readme_agree(command, capsys):
    text = README.read_text()
    start = text.index("## Where the time goes")
    section = text[start:text.index("\n## ", start + 1)]
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = capsys.readouterr().out
    example = re.search(r"^example:\n  (.+)$", help_text, flags=re.M).group(1)
    assert example in section
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and flag not in ("--help", "--verbose", "--quiet", "--option"):
                assert flag in section, f"the README's 'Where the time goes' does not mention {flag}"


def test_bench_on_gcs_reads_the_link_through_fsspec(gcs_server):
    url = gcs_server.url(BUCKET, f"bench-{uuid.uuid4().hex[:10]}/ds")
    manifest = write(url, gcs_server.storage_options)
    report = bench(url, gcs_server.storage_options, part_size=16 * 1024, parallel=4)
    check_report(report.to_dict(), manifest, method="fsspec cat_file", whole=True)


@pytest.mark.parametrize("per_connection, says", [
    (500.0, "which about 2 transfers at once fill: more parts in flight than that only cost this node's CPU; "
            "try fewer (ROXXEL_PARTS_IN_FLIGHT=8, 32 by default)"),  # 2 transfers fill the link
    (2000.0, "which about 1 transfer at once fills"),
    (25.0, "raise the parts in flight (ROXXEL_PARTS_IN_FLIGHT, 32 by default)"),  # 40 are needed
])
def test_slow_cold_downloads_get_advice_that_fits_the_link(per_connection, says):
    from roxxel.ops.bench import BenchReport, LinkResult, ReadResult, advice

    link = LinkResult("presigned GETs (http.client)", 4, 128, 8 << 20, 32, 10**9, 1.0, 0.03, per_connection)
    cold = ReadResult("cold", 0.01, 0.1, 2.5, 1000, 10**9, True, 10**9)  # 400 of 1000 MB/s
    warm = ReadResult("warm", 0.01, 0.01, 0.1, 1000, 10**9, True, 0)
    lines = advice(BenchReport("s3://b/d", 4, 10**9, 2 * 10**9, link, cold, warm))
    slow = [line for line in lines if line.startswith("cold downloads reached 40% of the link")]
    assert len(slow) == 1 and says in slow[0], lines
