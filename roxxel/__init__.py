"""roxxel: object-store-aware shards for ML training data.

Pack records into ROXXEL01 shards, publish them with a manifest to S3, GCS, local disk
or memory, and stream them back through a node-local cache of memory-mapped shards.
"""

from ._version import __version__
from .read import Dataset, open
from .errors import (
    AccessDeniedError,
    CacheError,
    ConflictError,
    DatasetExistsError,
    IntegrityError,
    ManifestError,
    NotFoundError,
    ResumeError,
    RoxxelError,
    ShardFormatError,
    StorageError,
    TransientStorageError,
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
    "ManifestError",
    "Manifest",
    "MappedShard",
    "NotFoundError",
    "ResumeError",
    "Roxxel",
    "RoxxelError",
    "ShardFormatError",
    "ShardInfo",
    "ShardWriter",
    "StorageError",
    "TransientStorageError",
    "Writer",
    "__version__",
    "open",
]
