"""The ``roxxel`` command as a process: importing its ``__main__`` modules runs nothing,
and a reader of its output that goes away (``roxxel ls URL | head``) ends it quietly."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import roxxel
from roxxel.cli import EXIT_BROKEN_PIPE

SCRIPT = os.path.join(os.path.dirname(sys.executable), "roxxel")
COMMAND = [SCRIPT] if os.path.exists(SCRIPT) else [sys.executable, "-m", "roxxel"]


def test_importing_the_main_modules_does_not_run_the_command():
    code = textwrap.dedent(
        """
        import roxxel.__main__, roxxel.cli.__main__
        print("still here")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                            check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "still here\n", "")


@pytest.mark.parametrize("module", ["roxxel", "roxxel.cli"])
def test_python_dash_m_still_runs_the_command(module):
    result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"roxxel {roxxel.__version__}")


@pytest.fixture(scope="module")
def many_shards(tmp_path_factory) -> str:
    url = str(tmp_path_factory.mktemp("pipe") / "ds")
    with roxxel.Writer(url, shard_bytes=256) as w:  # ~600 shards: ls prints far more than a pipe holds
        w.extend(np.full(64, i % 256, dtype=np.uint8) for i in range(2000))
    return url


def run_into_closed_pipe(*args: str) -> tuple[int, bytes]:
    """Run ``roxxel *args`` with stdout a pipe whose reader is gone before it writes."""
    read, write = os.pipe()
    os.close(read)  # like `| head` once head has exited
    try:
        process = subprocess.Popen([*COMMAND, *args], stdout=write, stderr=subprocess.PIPE,
                                   stdin=subprocess.DEVNULL)
    finally:
        os.close(write)
    _, stderr = process.communicate(timeout=120)
    return process.returncode, stderr


@pytest.mark.parametrize("command", ["ls", "info"])
def test_a_reader_that_goes_away_ends_the_command_quietly(many_shards, command):
    status, stderr = run_into_closed_pipe(command, many_shards, "--json")
    assert stderr == b""
    assert status == EXIT_BROKEN_PIPE == 141  # what a shell reports for git or coreutils


def test_help_into_a_closed_pipe_is_quiet_too():
    status, stderr = run_into_closed_pipe("--help")
    assert stderr == b""
    assert status in (0, EXIT_BROKEN_PIPE)  # argparse itself ignores a failed write


def test_head_reads_the_first_bytes_and_nothing_is_printed_on_stderr(many_shards):
    shell = f"{' '.join(map(repr, COMMAND))} ls {many_shards!r} | head -c 10; echo \" ${{PIPESTATUS[0]}}\""
    result = subprocess.run(["bash", "-c", shell], capture_output=True, text=True, timeout=120, check=False)
    assert result.stderr == ""
    assert len(result.stdout.split(" ")[0]) == 10
    assert result.stdout.split(" ")[-1].strip() in ("0", "141")  # 0 if it all fit in the pipe first
