"""Stub modules that let ``import streaming`` (mosaicml-streaming) work in the tests.

``import streaming`` imports its vision and text datasets, which import ``torchvision``
and ``transformers``. PyPI's torchvision wheels do not load next to the CPU torch the
tests pin (scripts/setup.sh uninstalls torchvision), and transformers is a large install
the tests do not need (mosaicml-streaming is installed with ``--no-deps``). Writing and
reading MDS files uses neither, so a few names are enough. Tests only: the library never
imports these peers.
"""

from __future__ import annotations

import sys
import types
from typing import Any


def _module(name: str, **attrs: Any) -> None:
    if name in sys.modules:
        return
    module = types.ModuleType(name)
    module.__path__ = []  # a package, so submodules can be registered under it
    module.__dict__.update(attrs)
    sys.modules[name] = module


class _Stub:
    """Stands for a class the stubbed packages export; using it is an error."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        raise RuntimeError(f"{type(self).__name__} is a test stub (tests/peer_stubs.py)")


def _to_tensor(*args: Any, **kwargs: Any) -> Any:
    raise RuntimeError("torchvision.transforms.functional.to_tensor is a test stub (tests/peer_stubs.py)")


def install() -> None:
    """Register the stubs in ``sys.modules`` unless the real modules are importable."""
    try:
        import torchvision  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or installed but broken (built for another torch)
        for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
            del sys.modules[name]
        _module("torchvision")
        _module("torchvision.datasets", VisionDataset=type("VisionDataset", (_Stub,), {}),
                CIFAR10=type("CIFAR10", (_Stub,), {}))
        _module("torchvision.transforms")
        _module("torchvision.transforms.functional", to_tensor=_to_tensor)
    try:
        import transformers  # noqa: F401
    except ImportError:
        _module("transformers")
        _module("transformers.feature_extraction_utils", BatchFeature=type("BatchFeature", (dict,), {}))
        _module("transformers.tokenization_utils_base", BatchEncoding=type("BatchEncoding", (dict,), {}))
        _module("transformers.models")
        _module("transformers.models.auto")
        _module("transformers.models.auto.tokenization_auto", AutoTokenizer=type("AutoTokenizer", (_Stub,), {}))


def streaming() -> Any:
    """``import streaming`` with the stubs installed first."""
    install()
    import streaming as module

    return module
