"""roxxel: object-store-aware shards for ML training data.

Pack records into ROXXEL01 shards, publish them with a manifest to S3, GCS, local disk
or memory, and stream them back through a node-local cache of memory-mapped shards.

The public surface is ``__all__`` here and in the subpackages (``roxxel.backends``,
``cache``, ``manifest``, ``format``, ``read``, ``build``, ``imports``, ``ops``, ``cli``), plus
``roxxel.torch``, ``roxxel.jax``, ``roxxel.dask``, ``roxxel.ray`` and
``roxxel.read.views.ACCELERATED``; ``tests/test_public_api.py`` pins
it. The other modules are the implementation: importable, with no promise that their
names stay.
"""

from ._version import __version__
from .read import Dataset, Mixture, mix, open
from .read.jobstate import job_state
from .errors import (
    AccessDeniedError,
    CacheError,
    ConflictError,
    DatasetExistsError,
    IntegrityError,
    ManifestChangedError,
    ManifestError,
    NotFoundError,
    ReceiptError,
    ResumeError,
    RoxxelError,
    ShardFormatError,
    SignatureError,
    SignatureMissingError,
    SigningKeyError,
    SourceFormatError,
    StorageError,
    TransientStorageError,
    UntrustedSignerError,
)
from .format import MappedShard, ShardWriter
from .local import Roxxel
from .manifest import Manifest, ShardInfo
from .writer import Writer

__all__ = [
    "AccessDeniedError",
    "CacheError",
    "ConflictError",
    "Dataset",
    "DatasetExistsError",
    "IntegrityError",
    "Manifest",
    "ManifestChangedError",
    "ManifestError",
    "MappedShard",
    "Mixture",
    "NotFoundError",
    "ReceiptError",
    "ResumeError",
    "Roxxel",
    "RoxxelError",
    "ShardFormatError",
    "ShardInfo",
    "ShardWriter",
    "SignatureError",
    "SignatureMissingError",
    "SigningKeyError",
    "SourceFormatError",
    "StorageError",
    "TransientStorageError",
    "UntrustedSignerError",
    "Writer",
    "__version__",
    "job_state",
    "mix",
    "open",
]
