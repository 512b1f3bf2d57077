"""The roxxel exception tree.

Every error roxxel raises on purpose derives from :class:`RoxxelError`, and each one
also derives from the builtin exception it means, so callers that already catch
``FileNotFoundError`` or ``ValueError`` keep working::

    RoxxelError(Exception)
    ├── ShardFormatError(ValueError)      bytes of a shard break the ROXXEL01 layout
    ├── ManifestError(ValueError)         a manifest is malformed or unsupported
    ├── IntegrityError(ValueError)        stored bytes do not match their checksum or size
    ├── ResumeError(ValueError)           an iterator state does not fit this dataset/topology
    ├── ReceiptError(ValueError)          a build's part receipts are malformed, missing or disagree
    ├── SourceFormatError(ValueError)     a file being imported (MDS, LitData, tar, ...) is malformed
    ├── CacheError(OSError)               the node-local cache cannot be used as asked
    ├── SigningKeyError(ValueError)       a key cannot be used as given (a private key as trusted)
    ├── SignatureError(ValueError)        a dataset's signature refused (``reason`` says why)
    │   ├── SignatureMissingError         the manifest has no signature
    │   ├── ManifestChangedError          the signature does not verify the manifest's bytes
    │   └── UntrustedSignerError          a key that is not trusted signed it
    └── StorageError(OSError)             a store operation failed
        ├── NotFoundError(FileNotFoundError)
        ├── AccessDeniedError(PermissionError)
        ├── DatasetExistsError(FileExistsError)
        ├── ConflictError                 another writer published first (a compare-and-swap lost)
        └── TransientStorageError         retried, and still failing at the deadline

Messages name the URL or file, the field or offset, what was expected and what was
found. They never contain credentials.
"""

from __future__ import annotations

__all__ = [
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


class RoxxelError(Exception):
    """Base class of every error roxxel raises on purpose."""


class ShardFormatError(RoxxelError, ValueError):
    """A shard's bytes do not follow the ROXXEL01 layout."""


class ManifestError(RoxxelError, ValueError):
    """A manifest is malformed, inconsistent, unsafe or of an unsupported version."""


class IntegrityError(RoxxelError, ValueError):
    """Stored bytes do not match the size or checksum their manifest promises.

    Raised by the one shard check (:mod:`roxxel.format.check`), which also checks a
    shard's decompressed size and layout, it tells more: ``label`` names the shard,
    ``problem`` says what is wrong without naming it, and ``transient`` is True for a
    wrong size or checksum (bytes damaged on the way: reading them again may help), False
    for bytes that match their checksum yet are no valid shard (reading them again brings
    the same bytes). Raised elsewhere, all three are None.
    """

    label: str | None = None
    problem: str | None = None
    transient: bool | None = None

    @classmethod
    def of_shard(cls, label: str, problem: str, *, transient: bool) -> IntegrityError:
        """The error of the shard ``label``: the message is ``"<label>: <problem>"``."""
        error = cls(f"{label}: {problem}")
        error.label, error.problem, error.transient = label, problem, transient
        return error


class ResumeError(RoxxelError, ValueError):
    """A saved iterator state does not match this dataset or this topology."""


class ReceiptError(RoxxelError, ValueError):
    """The receipts of a build's parts cannot be committed: one is malformed, a part has
    none, or two receipts for one part disagree (``roxxel.build.commit``)."""


class SourceFormatError(RoxxelError, ValueError):
    """A file being imported (an MDS or LitData index or shard, a WebDataset tar, a Parquet
    or JSON lines file) is malformed, truncated, inconsistent with its index, or uses a
    feature roxxel does not read. The message names the file, the field and the value."""


class CacheError(RoxxelError, OSError):
    """The node-local cache cannot be used as asked (limit too small, bad directory)."""


class SigningKeyError(RoxxelError, ValueError):
    """A key cannot be used as given: not Ed25519, unreadable, encrypted, or a private
    key where only public keys are accepted. The message names the file, never the key."""


class SignatureError(RoxxelError, ValueError):
    """A dataset's manifest was refused by its signature check (or cannot be signed).

    ``reason`` is ``"missing"``, ``"manifest changed"`` or ``"untrusted signer"`` (one
    per subclass), or ``"weak checksum"`` for a manifest with a shard checksum that is
    not cryptographic, which a signature could not vouch for; ``url`` is the dataset's.
    The message starts with the URL and the reason; it never holds key material.
    """

    reason: str = "refused"

    def __init__(self, url: str, detail: str, *, reason: str | None = None) -> None:
        self.url, self.detail = url, detail
        if reason is not None:
            self.reason = reason
        super().__init__(f"{url}: signature refused ({self.reason}): {detail}")

    def __reduce__(self) -> tuple[object, ...]:  # picklable (a DataLoader worker's error)
        return type(self), (self.url, self.detail), self.__dict__


class SignatureMissingError(SignatureError):
    """The manifest has no signature (it was never signed, or not since it was written)."""

    reason = "missing"


class ManifestChangedError(SignatureError):
    """The signature does not verify the manifest's bytes: the manifest changed since it
    was signed, or the signature file was damaged or forged."""

    reason = "manifest changed"


class UntrustedSignerError(SignatureError):
    """The signature is valid, but made with a key that is not among the trusted keys."""

    reason = "untrusted signer"


class StorageError(RoxxelError, OSError):
    """An operation on a store (S3, GCS, local disk, memory) failed."""


class NotFoundError(StorageError, FileNotFoundError):
    """The object, bucket or dataset does not exist."""


class AccessDeniedError(StorageError, PermissionError):
    """The store refused access; the credentials are missing or lack a permission."""


class DatasetExistsError(StorageError, FileExistsError):
    """A dataset already exists where a new one was to be created."""


class ConflictError(StorageError):
    """Another writer changed the manifest between this writer's read and its publish;
    nothing was published, and writing again (after re-reading) is safe."""


class TransientStorageError(StorageError):
    """A transient failure (5xx, throttling, reset, timeout) outlived its retries."""
