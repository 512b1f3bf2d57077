"""Shared fixtures. Read this before writing a test that touches a store.

``dataset_location``  (function scope, parametrized ``local``, ``memory``, ``s3``, ``gcs``)
    yields a :class:`Location` ``(url, storage_options)`` naming a fresh, empty dataset
    prefix; unpack it (``url, options = dataset_location``) and pass both to roxxel
    (``Store(url, options)``, ``roxxel.open(url, storage_options=options)``). Its
    ``.kind`` says which store it is, for the rare test that must differ. A test that uses
    it runs four times; the servers start only if an ``s3``/``gcs`` case is collected.
``new_location(kind)``
    makes another fresh prefix on the store of ``kind`` (for copy/merge tests).
``s3_server``, ``gcs_server``  (session scope)
    the running emulators (:class:`tests.servers.Server`: ``endpoint``,
    ``storage_options``, ``create_bucket``, ``reset``); started once per session.

``reliability``
    for tests marked ``@pytest.mark.reliability(category, what)``: ``reliability.note(text)``
    adds a measured detail to the reliability summary (see ``tests/reliability_report.py``,
    which also writes the README's reliability table).

Objects written in ``memory://`` do not leak between tests: the in-memory filesystem is
emptied after every test. Nothing here reaches the internet.
"""

from __future__ import annotations

import logging
import os

# Read by gcsfs when it is imported, and by botocore: set before anything imports them.
os.environ["GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"] = "false"
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
# The tests' processes count their parts in flight apart from the user's other roxxel
# processes (a benchmark running beside them, say): roxxel.read.nodeparts.
if "ROXXEL_NODE_COUNT" not in os.environ:
    import atexit
    import shutil
    import tempfile

    _count_dir = tempfile.mkdtemp(prefix="roxxel-tests-")
    atexit.register(shutil.rmtree, _count_dir, ignore_errors=True)
    os.environ["ROXXEL_NODE_COUNT"] = os.path.join(_count_dir, "node-count")

import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from typing import Any, NamedTuple  # noqa: E402

import pytest  # noqa: E402

from tests import servers  # noqa: E402
from tests.reliability_report import (  # noqa: E402,F401 - hooks and fixture of the reliability table
    pytest_collection_finish,
    pytest_configure,
    pytest_deselected,
    pytest_runtest_makereport,
    pytest_sessionfinish,
    pytest_terminal_summary,
    reliability,
)

STORE_KINDS = ("local", "memory", "s3", "gcs")
_SESSION_BUCKET = "roxxel-tests"


class Location(NamedTuple):
    """A dataset URL and the storage_options that reach it."""

    url: str
    storage_options: dict[str, Any]

    @property
    def kind(self) -> str:
        """``local``, ``memory``, ``s3`` or ``gcs``."""
        scheme = self.url.split("://", 1)[0] if "://" in self.url else "local"
        return {"gs": "gcs", "file": "local"}.get(scheme, scheme)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[servers.Server]:
    with servers.s3_server() as server:
        server.create_bucket(_SESSION_BUCKET)
        yield server


@pytest.fixture(scope="session")
def gcs_server() -> Iterator[servers.Server]:
    with servers.gcs_server() as server:
        server.create_bucket(_SESSION_BUCKET)
        yield server


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """A test that runs the CLI (``roxxel.cli.main`` configures logging for the process)
    leaves the root logger's handlers and the levels as it found them."""
    root, ours = logging.getLogger(), logging.getLogger("roxxel")
    saved = (root.handlers[:], root.level, ours.level)
    yield
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])
    ours.setLevel(saved[2])


@pytest.fixture(autouse=True)
def _empty_memory_filesystem() -> Iterator[None]:
    yield
    from fsspec.implementations.memory import MemoryFileSystem

    MemoryFileSystem.store.clear()
    MemoryFileSystem.pseudo_dirs.clear()
    MemoryFileSystem.pseudo_dirs.append("")


@pytest.fixture
def new_location(request: pytest.FixtureRequest, tmp_path) -> Callable[[str], Location]:
    """A factory: ``new_location(kind)`` -> a fresh, empty :class:`Location`."""

    def make(kind: str) -> Location:
        unique = f"t{uuid.uuid4().hex[:12]}"
        if kind == "local":
            return Location(str(tmp_path / unique / "ds"), {})
        if kind == "memory":
            return Location(f"memory://{unique}/ds", {})
        if kind in ("s3", "gcs"):
            server = request.getfixturevalue(f"{kind}_server")
            return Location(server.url(_SESSION_BUCKET, f"{unique}/ds"), server.storage_options)
        raise ValueError(f"unknown store kind {kind!r}; expected one of {STORE_KINDS}")

    return make


@pytest.fixture(params=STORE_KINDS)
def dataset_location(request: pytest.FixtureRequest, new_location) -> Location:
    """A fresh, empty dataset prefix on each kind of store: ``(url, storage_options)``."""
    return new_location(request.param)
