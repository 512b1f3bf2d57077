"""The public surface, pinned: a change to it must be deliberate, and made here too.

Public are the names in ``__all__`` of ``roxxel`` and of each subpackage: the names the
README's examples and prose use, and the classes the public API hands out or asks for
(``ds.manifest``, ``ds.shards``, ``ds.cache``; a backend given to ``backends.register``;
the reports of ``roxxel.ops``). Every other module is the implementation, imported by
roxxel (and its tests) from the module that defines each name, never through a package.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import subprocess
import sys

import pytest

ERRORS = [
    "AccessDeniedError",
    "CacheError",
    "ConflictError",
    "DatasetExistsError",
    "IntegrityError",
    "ManifestChangedError",
    "ManifestError",
    "NotFoundError",
    "ReceiptError",
    "ResumeError",
    "RoxxelError",
    "ShardFormatError",
    "SignatureError",
    "SignatureMissingError",
    "SigningKeyError",
    "SourceFormatError",
    "StorageError",
    "TransientStorageError",
    "UntrustedSignerError",
]

PUBLIC = {
    "roxxel": sorted([
        *ERRORS,
        "Dataset",
        "Manifest",
        "MappedShard",
        "Mixture",
        "Roxxel",
        "ShardInfo",
        "ShardWriter",
        "Writer",
        "__version__",
        "job_state",
        "mix",
        "open",
    ]),
    "roxxel.backends": [
        "Backend",
        "FsspecBackend",
        "PreconditionFailed",
        "RetryPolicy",
        "Store",
        "TooLarge",
        "Versioned",
        "register",
    ],
    "roxxel.cache": ["CachedShard", "ShardCache"],
    "roxxel.manifest": ["Manifest", "ShardInfo", "ShardTable"],
    "roxxel.format": ["MappedShard", "ShardWriter"],
    "roxxel.read": ["Dataset", "Mixture", "mix", "open"],
    "roxxel.build": ["Receipt", "commit", "write_part"],
    "roxxel.ops": [
        "BadShard",
        "BenchReport",
        "CacheGcReport",
        "CacheUsage",
        "CacheVerifyReport",
        "CachedShardInfo",
        "CopyReport",
        "DamagedShard",
        "DatasetInfo",
        "DatasetUsage",
        "MergeReport",
        "PlanSummary",
        "PruneReport",
        "RankSummary",
        "ShardStatus",
        "SignReport",
        "UnreferencedShard",
        "VerifyReport",
        "WarmReport",
        "bench",
        "cache_clear",
        "cache_gc",
        "cache_list",
        "cache_usage",
        "cache_verify",
        "copy",
        "info",
        "list_shards",
        "merge",
        "pack",
        "plan_summary",
        "prune",
        "sign",
        "verify",
        "verify_cache",
        "warm",
    ],
    "roxxel.cli": ["main"],
    "roxxel.imports": ["FORMATS", "Record", "Source", "Unit", "frame_fields", "open_source", "read_unit",
                       "split_fields"],
}

CLOUD_SDKS = ("s3fs", "gcsfs", "aiobotocore", "botocore")


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_all_is_the_pinned_surface(package: str) -> None:
    module = importlib.import_module(package)
    assert sorted(module.__all__) == PUBLIC[package]
    assert len(set(module.__all__)) == len(module.__all__)


@pytest.mark.parametrize("package", sorted(PUBLIC))
def test_every_public_name_imports(package: str) -> None:
    namespace: dict[str, object] = {}
    exec(f"from {package} import *", namespace)  # noqa: S102 - the star import users may write
    missing = [name for name in PUBLIC[package] if name not in namespace]
    assert not missing, f"{package}.__all__ names what it does not define: {missing}"
    module = importlib.import_module(package)
    for name in PUBLIC[package]:
        assert getattr(module, name) is namespace[name]


def test_the_readme_names_outside_all_exist() -> None:
    from roxxel.read import views

    assert isinstance(views.ACCELERATED, bool)
    assert importlib.util.find_spec("roxxel.torch") is not None
    assert importlib.util.find_spec("roxxel.jax") is not None
    assert importlib.util.find_spec("roxxel.dask") is not None
    assert importlib.util.find_spec("roxxel.ray") is not None


def test_import_roxxel_loads_no_cloud_sdk() -> None:
    """The cloud SDKs load only when a store of theirs is opened (fsspec imports them)."""
    code = (
        "import json, sys\n"
        "import roxxel\n"
        f"sdks = {CLOUD_SDKS!r}\n"
        "first = [m for m in sdks if m in sys.modules]\n"
        f"for package in {sorted(PUBLIC)!r}:\n"
        "    __import__(package)\n"
        "print(json.dumps([first, [m for m in sdks if m in sys.modules]]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    after_roxxel, after_packages = json.loads(out.stdout)
    assert after_roxxel == [], "import roxxel"
    assert after_packages == [], "importing every public package"
