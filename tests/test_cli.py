"""The ``roxxel`` console script, run in subprocesses against the S3 and GCS servers.

Each command's success path and its failure paths (exit status and message). Datasets
that a test only reads are written in-process, which is faster than a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest

import roxxel
from roxxel.cli import main
from roxxel.cli.parser import build_parser
from roxxel.manifest.io import dataset_store, read_manifest

BUCKET = "roxxel-tests"  # created by the session fixtures in conftest.py
README = Path(__file__).resolve().parents[1] / "README.md"
SCRIPT = Path(sys.executable).with_name("roxxel")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "roxxel"]
COMMANDS = ("info", "ls", "verify", "sign", "prune", "warm", "pack", "cp", "merge", "cache", "plan")


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 1500)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url, options, recs, **kw):
    with roxxel.Writer(url, shard_bytes=8 * 1024, storage_options=options, **kw) as w:
        w.extend(recs)
    return w.manifest


@pytest.fixture
def env(s3_server, gcs_server, tmp_path):
    """The environment of a shell whose credentials reach both servers."""
    values = dict(os.environ)
    values.update(s3_server.env)
    values.update(gcs_server.env)
    values["ROXXEL_CACHE_DIR"] = str(tmp_path / "default-cache")  # never the user's cache
    values["ROXXEL_PROGRESS_INTERVAL"] = "0"  # a progress line per update, to test them
    return values


def s3_opts(server) -> list[str]:
    """The S3 server's storage options as -o arguments."""
    return ["-o", f"endpoint_url={server.endpoint}", "-o", "key=testing", "-o", "secret=testing",
            "-o", "client_kwargs.region_name=us-east-1"]


def unique(server, name: str = "ds") -> str:
    return server.url(BUCKET, f"cli-{uuid.uuid4().hex[:10]}/{name}")


def roxxel_cli(*args: str, env: dict, status: int = 0, cwd=None) -> subprocess.CompletedProcess:
    """Run the console script; check its exit status and that no traceback was printed."""
    result = subprocess.run(
        [*COMMAND, *args], env=env, capture_output=True, text=True, timeout=180, cwd=cwd,
    )
    assert result.returncode == status, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    return result


def error_line(result: subprocess.CompletedProcess) -> str:
    """The last line on stderr, which must be the one-line error."""
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("roxxel: error: "), result.stderr
    return lines[-1]


# ------------------------------------------------------------------- help and README


def readme_sections() -> dict[str, str]:
    text = README.read_text()
    start = text.index("## Command line")
    block = text[start : text.index("\n## ", start + 1)]
    parts = re.split(r"^### `roxxel (\w+)", block, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def help_text(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as stop:
        main([command, "--help"])
    assert stop.value.code == 0
    return capsys.readouterr().out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_and_readme_agree(command, capsys):
    sections = readme_sections()
    assert command in sections, f"README has no '### `roxxel {command}`' section"
    section = sections[command]
    text = help_text(command, capsys)
    example = re.search(r"^example:\n  (.+)$", text, flags=re.M).group(1)
    assert example in section, f"the --help example of {command} is not in the README: {example}"
    parser = build_parser()._subparsers._group_actions[0].choices[command]
    for action in parser._actions:
        for flag in action.option_strings:
            # -o/--option, -v and -q are the conventions every command shares.
            if flag.startswith("--") and flag not in ("--help", "--verbose", "--quiet", "--option"):
                assert flag in section, f"README section of roxxel {command} does not mention {flag}"


def test_the_console_script_lists_every_command(env):
    result = roxxel_cli("--help", env=env)
    for command in COMMANDS:
        assert re.search(rf"^\s+{command}\s", result.stdout, flags=re.M), command
    version = roxxel_cli("--version", env=env).stdout.strip()
    assert version.startswith(f"roxxel {roxxel.__version__} (records made in ")
    assert ("records made in C" in version) == roxxel.read.views.ACCELERATED


# -------------------------------------------------------------------- success paths


def test_pack_info_ls_verify_plan_on_s3_with_storage_options(s3_server, env, tmp_path):
    env = {k: v for k, v in env.items() if not k.startswith("AWS_ENDPOINT")}  # only -o reaches S3
    lines = [json.dumps({"i": i, "text": "x" * (i % 300)}) for i in range(400)]
    (tmp_path / "corpus.jsonl").write_text("\n".join(lines) + "\n")
    url = unique(s3_server)
    opts = s3_opts(s3_server)
    packed = roxxel_cli("pack", str(tmp_path / "corpus.jsonl"), url, "--format", "jsonl",
                        "--shard-bytes", "16KB", "--compression", "zstd", "--meta", "kind=\"jsonl\"",
                        *opts, env=env)
    assert packed.stdout.startswith("packed 400 records into ")
    assert "pack: " in packed.stderr and "/s" in packed.stderr  # periodic progress lines

    info = json.loads(roxxel_cli("info", url, "--json", *opts, env=env).stdout)
    assert info["records"] == 400 and info["meta"] == {"kind": "jsonl"}
    assert info["compression"] == {"zstd": info["shards"]} and info["cached_shards"] == 0
    text = roxxel_cli("info", url, *opts, env=env).stdout
    assert re.search(r"^records\s+400$", text, flags=re.M)

    shards = json.loads(roxxel_cli("ls", url, "--json", *opts, env=env).stdout)
    assert len(shards) == info["shards"] and all(not s["cached"] for s in shards)
    listing = roxxel_cli("ls", url, *opts, env=env).stdout.splitlines()
    assert [line.split()[0] for line in listing] == [s["uri"] for s in shards]
    assert listing[0].split()[3] == shards[0]["checksum"] and listing[0].split()[4] == "-"

    verified = roxxel_cli("verify", url, *opts, env=env)
    assert verified.stdout.startswith(f"ok: {info['shards']} shards verified")
    quiet = roxxel_cli("verify", url, "-q", "--json", *opts, env=env)
    assert quiet.stderr == "" and json.loads(quiet.stdout)["ok"] is True

    planned = json.loads(roxxel_cli("plan", url, "--seed", "1", "--epoch", "2", "--world-size", "2",
                                    "--json", *opts, env=env).stdout)
    assert [r["rank"] for r in planned["ranks"]] == [0, 1]
    assert sum(r["records"] for r in planned["ranks"]) == 400
    table = roxxel_cli("plan", url, "--world-size", "2", *opts, env=env).stdout
    assert "cache limit needed by ds.iter" in table


def test_warm_then_a_read_downloads_nothing(gcs_server, env, tmp_path):
    url = unique(gcs_server)
    options = gcs_server.storage_options
    recs = make_records(300)
    manifest = publish(url, options, recs, compression="zstd")
    cache = tmp_path / "cache"
    # Credentials and endpoint come from the environment only (STORAGE_EMULATOR_HOST).
    warmed = roxxel_cli("warm", url, "--rank", "1", "--world-size", "2", "--seed", "3", "--epoch", "1",
                        "--cache-dir", str(cache), "--workers", "2", env=env)
    assert re.match(r"warmed .*: \d+ shards fetched \(.*\), 0 already cached", warmed.stdout)
    assert "warm: " in warmed.stderr

    with roxxel.open(url, cache_dir=str(cache), storage_options=options) as ds:
        got = [bytes(r) for r in ds.iter(seed=3, epoch=1, rank=1, world_size=2)]
        assert ds.stats["shards_downloaded"] == 0 and ds.stats["bytes_downloaded"] == 0
    assert len(got) == 150 and set(got) <= set(recs)

    again = roxxel_cli("warm", url, "--rank", "1", "--world-size", "2", "--seed", "3", "--epoch", "1",
                       "--cache-dir", str(cache), env=env)
    assert re.match(r"warmed .*: 0 shards fetched", again.stdout)
    everything = roxxel_cli("warm", url, "--all", "--cache-dir", str(cache), "-q", env=env)
    assert f"already cached" in everything.stdout and everything.stderr == ""
    report = json.loads(roxxel_cli("warm", url, "--all", "--cache-dir", str(cache), "--json", env=env).stdout)
    assert report["shards_planned"] == report["shards_cached"] == len(manifest.shards)
    assert report["shards_fetched"] == 0 and report["bytes_downloaded"] == 0
    info = json.loads(roxxel_cli("info", url, "--cache-dir", str(cache), "--json", env=env).stdout)
    assert info["cached_shards"] == len(manifest.shards)
    assert roxxel_cli("verify", url, "--cache", "--cache-dir", str(cache), env=env).stdout.startswith(
        f"ok: {len(manifest.shards)} cached copies verified")


def test_cp_between_stores_with_options_per_side(s3_server, gcs_server, env, tmp_path):
    src = unique(s3_server)
    manifest = publish(src, s3_server.storage_options, make_records(150))
    bare = {k: v for k, v in env.items() if k not in ("AWS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST")}
    dst = unique(gcs_server)
    copied = roxxel_cli(
        "cp", src, dst, "--src-option", f"endpoint_url={s3_server.endpoint}",
        "--dst-option", f"endpoint_url={gcs_server.endpoint}", "--dst-option", "token=anon",
        "--dst-option", "project=test", env=bare,
    )
    assert f"{len(manifest.shards)} shards copied" in copied.stdout
    assert read_manifest(dataset_store(dst, gcs_server.storage_options)) == manifest

    again = roxxel_cli("cp", src, dst, env=env)  # both endpoints from the environment
    assert "already holds this dataset" in again.stdout
    report = json.loads(roxxel_cli("cp", src, dst, "--json", env=env).stdout)
    assert report["published"] is False and report["shards"] == len(manifest.shards) and report["copied"] == 0
    local = tmp_path / "copy"
    roxxel_cli("cp", dst, str(local), env=env)
    assert read_manifest(dataset_store(str(local))) == manifest

    other = unique(s3_server, "other")
    publish(other, s3_server.storage_options, make_records(20, seed=9))
    refused = roxxel_cli("cp", other, str(local), env=env, status=1)
    assert "a different dataset already exists" in error_line(refused)
    assert error_line(refused).endswith("pass --overwrite to replace it")
    roxxel_cli("cp", other, str(local), "--overwrite", env=env)


def test_merge_parts_in_place_and_refuse_duplicates(s3_server, env):
    base = unique(s3_server, "merged")
    options = s3_server.storage_options
    publish(f"{base}/part-0", options, make_records(50, seed=1))
    publish(f"{base}/part-1", options, make_records(50, seed=2))
    merged = roxxel_cli("merge", f"{base}/part-0", f"{base}/part-1", base, env=env)
    assert "100 records" in merged.stdout and "in place, 0 copied" in merged.stdout
    assert read_manifest(dataset_store(base, options)).records == 100
    again = roxxel_cli("merge", f"{base}/part-0", f"{base}/part-1", base, env=env)
    assert "already holds this merged dataset" in again.stdout
    report = json.loads(roxxel_cli("merge", f"{base}/part-0", f"{base}/part-1", base, "--json", env=env).stdout)
    assert report["published"] is False and report["records"] == 100 and report["sources"] == 2

    twin = unique(s3_server, "twin")
    roxxel_cli("cp", f"{base}/part-0", twin, "-q", env=env)
    refused = roxxel_cli("merge", f"{base}/part-0", twin, unique(s3_server, "dup"), env=env, status=1)
    assert "duplicate shards" in error_line(refused)


def test_pack_formats_and_cache_commands(env, tmp_path):
    old = roxxel.Roxxel(str(tmp_path / "old.rox"))
    old.write([b"a", b"bb", b"ccc"], max_shard_bytes=64)
    np.save(tmp_path / "x.npy", np.arange(12, dtype=np.int32).reshape(4, 3))
    rox, npy = str(tmp_path / "rox"), str(tmp_path / "npy")
    roxxel_cli("pack", str(tmp_path / "old.rox"), rox, "--format", "rox", env=env)
    packed = json.loads(roxxel_cli("pack", str(tmp_path / "x.npy"), npy, "--format", "npy", "--json",
                                   env=env).stdout)
    manifest = read_manifest(dataset_store(npy))
    assert manifest.meta == {"dtype": "<i4", "shape": [3]}
    assert packed == {"url": npy, "records": 4, "shards": 1, "stored_bytes": 4 * 12 + 4 * 8 + 24,
                      "raw_bytes": 4 * 12 + 4 * 8 + 24, "fingerprint": manifest.fingerprint()}

    cache = str(tmp_path / "cache")
    roxxel_cli("warm", rox, "--cache-dir", cache, env=env)
    roxxel_cli("warm", npy, "--cache-dir", cache, env=env)
    du = roxxel_cli("cache", "du", "--cache-dir", cache, env=env).stdout
    assert rox in du and npy in du and "total in" in du
    listed = json.loads(roxxel_cli("cache", "ls", "--cache-dir", cache, "--json", env=env).stdout)
    assert sorted(d for s in listed for d in s["datasets"]) == sorted([rox, npy])
    shutil.rmtree(npy)
    gc = roxxel_cli("cache", "gc", "--refresh", "--cache-dir", cache, env=env).stdout
    assert "removed 1 shards" in gc and "1 dataset notes" in gc
    cleared = roxxel_cli("cache", "clear", "--cache-dir", cache, env=env).stdout
    assert "removed 1 shards" in cleared
    usage = json.loads(roxxel_cli("cache", "du", "--cache-dir", cache, "--json", env=env).stdout)
    assert usage["shards"] == 0 and usage["datasets"] == []


# -------------------------------------------------------------------- failure paths


def test_verify_lists_a_corrupted_shard_and_fails(s3_server, env):
    url = unique(s3_server)
    manifest = publish(url, s3_server.storage_options, make_records(120))
    store = dataset_store(url, s3_server.storage_options)
    bad = str(manifest.shards.uris[1])
    data = bytearray(store.read_bytes(bad))
    data[10] ^= 0xFF
    store.put_bytes_overwrite(bad, bytes(data))
    result = roxxel_cli("verify", url, env=env, status=1)
    assert result.stdout.splitlines() == [f"BAD {bad}: checksum is " + result.stdout.split("checksum is ")[1].strip()]
    assert f"expected {manifest.shards.checksums[1]}" in result.stdout
    assert error_line(result) == (f"roxxel: error: 1 of {len(manifest.shards)} shards are bad; "
                                  "restore them from a good copy of the dataset")
    report = json.loads(roxxel_cli("verify", url, "--json", "-q", env=env, status=1).stdout)
    assert report["ok"] is False and [b["uri"] for b in report["bad"]] == [bad]


def test_a_missing_bucket_is_one_line_without_credentials(s3_server, env):
    opts = [o.replace("secret=testing", "secret=SuperSecret123") for o in s3_opts(s3_server)]
    result = roxxel_cli("info", "s3://no-such-bucket-roxxel/ds", *opts, env=env, status=1)
    line = error_line(result)
    assert "no-such-bucket-roxxel/ds/manifest.json" in line and "not found" in line
    assert line.endswith("check the URL, and the storage options (-o) or credentials for that store")
    assert len(result.stderr.strip().splitlines()) == 1
    assert "SuperSecret123" not in result.stderr + result.stdout


@pytest.mark.parametrize(
    ("args", "status", "message"),
    [
        (["info", "s3://b/ds", "-o", "novalue"], 2, "expected KEY=VALUE"),
        (["info", "s3://b/ds", "-o", "a=1", "-o", "a.b=2"], 2, "storage option a is given a value and nested keys"),
        (["warm", "s3://b/ds", "--rank", "2", "--world-size", "2"], 2, "--rank 2 is not below --world-size 2"),
        (["warm", "s3://b/ds", "--seed", "1"], 2, "--seed and --epoch apply with --rank"),
        (["warm", "s3://b/ds", "--rank", "0", "--all"], 2, "not allowed with argument"),
        (["plan", "s3://b/ds"], 2, "the following arguments are required: --world-size"),
        (["pack", "x", "s3://b/ds", "--shard-bytes", "lots"], 2, "size 'lots' is not valid"),
        (["bogus"], 2, "invalid choice"),
    ],
)
def test_usage_errors_exit_2(args, status, message, env):
    result = roxxel_cli(*args, env=env, status=status)
    assert message in result.stderr
    assert result.stderr.splitlines()[0].startswith("usage: roxxel")


def test_failures_exit_1_with_what_to_do(s3_server, env, tmp_path):
    bad_option = roxxel_cli("info", unique(s3_server), "-o", "bogus_option=1", env=env, status=1)
    assert "a storage option is not accepted by this store" in error_line(bad_option)
    assert error_line(bad_option).endswith("check the -o options")

    (tmp_path / "bad.jsonl").write_text('{"a": 1}\n{nope}\n')
    url = unique(s3_server)
    packed = roxxel_cli("pack", str(tmp_path / "bad.jsonl"), url, "--format", "jsonl", env=env, status=1)
    assert error_line(packed).endswith("bad.jsonl:2: invalid JSON line: Expecting property name "
                                       "enclosed in double quotes: line 1 column 2 (char 1)")
    assert not dataset_store(url, s3_server.storage_options).exists("manifest.json")

    local = str(tmp_path / "ds")
    publish(local, {}, make_records(50))
    existing = roxxel_cli("pack", str(tmp_path / "bad.jsonl"), local, env=env, status=1)
    assert error_line(existing).endswith("pass --mode overwrite to replace it or --mode append to add to it")
    small = roxxel_cli("plan", local, "--world-size", "2", "--cache-limit", "10KB", env=env, status=1)
    assert "--cache-limit 10000 bytes is too small: ds.iter needs at least" in error_line(small)
    no_cache = roxxel_cli("cache", "du", "--cache-dir", str(tmp_path / "nowhere"), env=env, status=1)
    assert "there is no cache at" in error_line(no_cache)


def test_a_terminal_gets_a_progress_bar(env, tmp_path):
    import fcntl
    import pty
    import select
    import struct
    import termios

    url = str(tmp_path / "ds")
    publish(url, {}, make_records(100))
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    process = subprocess.Popen([*COMMAND, "verify", url], env=env, stdout=subprocess.PIPE,
                               stderr=follower, stdin=subprocess.DEVNULL)
    os.close(follower)
    shown = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                shown += os.read(leader, 65536)
            except OSError:  # the terminal closed with the process
                break
        elif process.poll() is not None:
            break
    out = process.stdout.read()
    process.stdout.close()
    os.close(leader)
    assert process.wait(timeout=60) == 0 and out.startswith(b"ok: ")
    assert b"verify: 100%|" in shown and b"B/s]" in shown


def test_the_error_is_the_last_line_even_when_a_thread_logs_after_it(capsys):
    """A thread still at work when the command fails (a writer's probe for conditional
    writes, which once logged its answer below the error) logs nothing more."""
    import logging
    import threading

    from roxxel.cli.errors import print_error
    from roxxel.cli.logs import configure_logging

    configure_logging(0, 0)
    logged, failed = threading.Event(), threading.Event()

    def probe() -> None:
        logging.getLogger("roxxel.backends.base").info("before the error")
        logged.set()
        failed.wait(10)
        logging.getLogger("roxxel.backends.base").info("S3FileSystem bucket b: conditional writes enforced")

    thread = threading.Thread(target=probe)
    thread.start()
    assert logged.wait(10)
    assert capsys.readouterr().err == "roxxel: before the error\n"  # (logging goes to stderr until then)
    assert print_error("it failed", "do this") == 1
    failed.set()
    thread.join()
    assert capsys.readouterr().err.strip().splitlines() == ["roxxel: error: it failed; do this"]
