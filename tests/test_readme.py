"""Every ```python example in the README runs as written.

Examples that name ``s3://my-bucket`` or ``gs://my-bucket`` run against the loopback S3
and GCS servers, reached the way the README says users reach theirs: through the usual
environment variables, with no storage_options.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.servers import _clear_instance_caches

README = Path(__file__).resolve().parents[1] / "README.md"
EXAMPLES = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
BUCKET = "my-bucket"


def test_the_readme_has_examples():
    assert len(EXAMPLES) >= 10


def empty_bucket(server) -> None:
    fs = server.filesystem()
    if fs.exists(BUCKET):
        for path in fs.find(BUCKET):
            fs.rm_file(path)
    else:
        server.create_bucket(BUCKET)


@pytest.mark.parametrize("code", EXAMPLES, ids=[f"example{i}" for i in range(len(EXAMPLES))])
def test_readme_example_runs(code, tmp_path, monkeypatch, request):
    monkeypatch.chdir(tmp_path)
    for kind in ("s3", "gcs"):
        if f"{'s3' if kind == 's3' else 'gs'}://{BUCKET}" in code:
            server = request.getfixturevalue(f"{kind}_server")
            empty_bucket(server)
            for name, value in server.env.items():
                monkeypatch.setenv(name, value)
    _clear_instance_caches()  # filesystems are cached by arguments, not by environment
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})
    finally:
        _clear_instance_caches()
