"""Signed manifests: a detached Ed25519 signature of a manifest's exact bytes.

A signature lives next to the manifest under a name bound to the bytes it signs::

    <dataset>/signatures/sha256-<hex SHA-256 of manifest.json's bytes>.sig

and holds one small JSON document (format ``roxxel-signature``, version 1)::

    {"format": "roxxel-signature", "version": 1, "algorithm": "ed25519",
     "key": "SHA256:<fingerprint of the signer's public key, as ssh-keygen -l prints it>",
     "public_key": "<base64 of the 32-byte raw Ed25519 public key>",
     "manifest": "sha256:<hex SHA-256 of manifest.json's bytes>",
     "signature": "<base64 of the 64-byte Ed25519 signature>"}

The signed message is ``b"roxxel-signature-v1\\n" + b"sha256:<hex>"``: the context string
keeps a roxxel signature from meaning anything else, and SHA-256 binds the exact bytes
of the manifest as published (whitespace included), so the signature of any other
manifest, an older one in particular, does not verify this one.

Why a name bound to the digest rather than one fixed ``manifest.json.sig``: the manifest
publish is the commit point (DESIGN.md, invariant 1), and a signature published under a
fixed name could not be published together with it. Written before the manifest, it
would not match the manifest still live; written after, a crash in between, or two
writers appending at once (one's signature landing after the other's manifest), would
leave a stale signature in place. Bound to the digest, a signature is written *before*
its manifest (a writer signs, then publishes): a reader with trusted keys never sees a
window in which a just-published manifest has no signature yet, a crash leaves at most
a signature of a manifest that was never published (harmless: it vouches only for those
exact bytes), and each manifest version keeps its own signature.

A reader with trusted keys (:func:`read_signed_manifest`) reads the manifest once, hashes
the bytes it read, reads the one signature named by that hash, verifies it and only then
parses those same bytes (invariant 10: what is verified is what is used). It refuses with
:class:`~roxxel.errors.SignatureMissingError` when no signature exists under the
dataset, :class:`~roxxel.errors.ManifestChangedError` when signatures exist but none for
these bytes, or the one there does not verify them, and
:class:`~roxxel.errors.UntrustedSignerError` when a valid signature was made with a key
that is not trusted. Every shard checksum must be cryptographic (:data:`CRYPTOGRAPHIC`):
the manifest vouches for the shards' bytes through them, and a signature covers every
byte only through a checksum nobody can forge.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from dataclasses import dataclass, field
from typing import Any

from ..backends import Store
from ..errors import (
    AccessDeniedError,
    ManifestChangedError,
    NotFoundError,
    SignatureError,
    SignatureMissingError,
    StorageError,
    UntrustedSignerError,
)
from .io import MANIFEST_KEY, _read_data
from .schema import Manifest
from .signing_keys import PrivateKeyLike, TrustedKeys, fingerprint, load_private_key

__all__ = [
    "CRYPTOGRAPHIC",
    "SIGNATURES_PREFIX",
    "Signature",
    "check_signable",
    "find_signature",
    "has_signatures",
    "make_signature",
    "manifest_digest",
    "read_manifest_bytes",
    "read_signed_manifest",
    "sign_manifest",
    "signature_key",
    "verify_signature",
    "write_signature",
]

log = logging.getLogger(__name__)

SIGNATURE_FORMAT = "roxxel-signature"
SIGNATURE_VERSION = 1
SIGNATURES_PREFIX = "signatures"
#: Checksum algorithms a signature can vouch through (collision-resistant hashes). Every
#: algorithm a manifest may name is one today; one added later (crc32c, xxhash) is not
#: unless it is listed here, and a manifest using it cannot be signed or trusted.
CRYPTOGRAPHIC = frozenset({"sha256", "blake2b", "blake3"})

_CONTEXT = b"roxxel-signature-v1\n"
_MAX_SIGNATURE_BYTES = 4096
_FIELDS = ("format", "version", "algorithm", "key", "public_key", "manifest", "signature")
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_KEY_RE = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
_SIGNATURE_NAME = re.compile(r"signatures/sha256-[0-9a-f]{64}\.sig")


def manifest_digest(data: bytes) -> str:
    """``"sha256:<hex>"`` of a manifest's exact bytes."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


def signature_key(data: bytes) -> str:
    """The key, under the dataset, of the signature of the manifest ``data``."""
    return f"{SIGNATURES_PREFIX}/sha256-{hashlib.sha256(data).hexdigest()}.sig"


def _message(digest: str) -> bytes:
    return _CONTEXT + digest.encode("ascii")


@dataclass(frozen=True)
class Signature:
    """A parsed signature file: who signed (``key``, ``public_key``), what (``manifest``,
    the digest of its bytes) and the signature bytes. All of it is public."""

    key: str
    public_key: bytes = field(repr=False)
    manifest: str
    signature: bytes = field(repr=False)

    def to_json(self) -> bytes:
        doc = {
            "format": SIGNATURE_FORMAT,
            "version": SIGNATURE_VERSION,
            "algorithm": "ed25519",
            "key": self.key,
            "public_key": base64.b64encode(self.public_key).decode("ascii"),
            "manifest": self.manifest,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        return (json.dumps(doc, separators=(",", ":")) + "\n").encode("ascii")

    @classmethod
    def from_json(cls, data: bytes) -> Signature:
        """The signature in ``data``; ValueError naming the field that is wrong."""
        try:
            doc = json.loads(data.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError("it is not ASCII JSON") from None
        if not isinstance(doc, dict):
            raise ValueError(f"expected a JSON object, got {type(doc).__name__}")  # noqa: TRY004
        if set(doc) != set(_FIELDS):
            raise ValueError(f"expected the fields {', '.join(_FIELDS)}; got {', '.join(sorted(map(str, doc)))}")
        if doc["format"] != SIGNATURE_FORMAT:
            raise ValueError(f"format is {str(doc['format'])[:40]!r}, expected {SIGNATURE_FORMAT!r}")
        if type(doc["version"]) is not int or doc["version"] != SIGNATURE_VERSION:
            raise ValueError(f"version {str(doc['version'])[:20]} is not supported (this roxxel reads version 1)")
        if doc["algorithm"] != "ed25519":
            raise ValueError(f"algorithm is {str(doc['algorithm'])[:40]!r}, expected 'ed25519'")
        for name, pattern in (("key", _KEY_RE), ("manifest", _DIGEST_RE)):
            if not isinstance(doc[name], str) or not pattern.fullmatch(doc[name]):
                raise ValueError(f"field {name!r} is not valid: {str(doc[name])[:80]!r}")
        return cls(doc["key"], _b64(doc, "public_key", 32), doc["manifest"], _b64(doc, "signature", 64))


def _b64(doc: dict[str, Any], name: str, size: int) -> bytes:
    value = doc[name]
    try:
        raw = base64.b64decode(value, validate=True) if isinstance(value, str) else b""
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise ValueError(f"field {name!r} is not the base64 of {size} bytes")
    return raw


def make_signature(data: bytes, private_key: PrivateKeyLike) -> Signature:
    """The signature of the manifest bytes ``data`` by ``private_key``."""
    key = load_private_key(private_key)
    public = key.public_key()
    digest = manifest_digest(data)
    return Signature(fingerprint(public), public.public_bytes_raw(), digest, key.sign(_message(digest)))


def check_signable(manifest: Manifest, url: str) -> None:
    """SignatureError (reason ``"weak checksum"``) unless every shard's checksum is one a
    signature can vouch through (:data:`CRYPTOGRAPHIC`)."""
    algorithms = {str(c).partition(":")[0] for c in set(manifest.shards.checksums.tolist())}
    weak = sorted(algorithms - CRYPTOGRAPHIC)
    if weak:
        raise SignatureError(
            url,
            f"shards use the checksum algorithm {', '.join(weak)}, which is not cryptographic: a "
            f"signed manifest would not vouch for their bytes (use one of {', '.join(sorted(CRYPTOGRAPHIC))})",
            reason="weak checksum",
        )


def write_signature(store: Store, data: bytes, signature: Signature) -> str:
    """Store ``signature`` of the manifest bytes ``data`` under its bound name; its key."""
    if signature.manifest != manifest_digest(data):
        raise ValueError("the signature is of other manifest bytes")  # a caller's mistake
    key = signature_key(data)
    store.put_bytes_overwrite(key, signature.to_json())
    log.info("wrote the signature of %s (key %s) to %s", store.url(MANIFEST_KEY), signature.key, store.url(key))
    return key


def sign_manifest(store: Store, data: bytes, manifest: Manifest, private_key: PrivateKeyLike) -> Signature:
    """Sign the manifest bytes ``data`` (which parse to ``manifest``) and store the
    signature; refuses a manifest with a non-cryptographic shard checksum."""
    check_signable(manifest, store.url(MANIFEST_KEY))
    signature = make_signature(data, private_key)
    write_signature(store, data, signature)
    return signature


def read_manifest_bytes(store: Store) -> tuple[bytes, Manifest]:
    """The manifest's bytes, read in one request (or pinned), and the manifest they
    parse to; NotFoundError naming the URL if there is none."""
    data = _read_data(store, MANIFEST_KEY)
    return data, Manifest.from_json(data, source=store.url(MANIFEST_KEY))


def _read_signature(store: Store, data: bytes) -> Signature | None:
    """The parsed signature stored for the manifest bytes ``data``; None if none.
    ManifestChangedError if the file there is no valid signature file."""
    key = signature_key(data)
    try:
        raw = store.read_bytes(key, max_bytes=_MAX_SIGNATURE_BYTES)
    except NotFoundError:
        return None
    except StorageError as exc:  # too large, a folder there, ...: whatever it is, no signature
        raise ManifestChangedError(
            store.base_url, f"{store.url(key)} is not a valid roxxel signature: {exc}"
        ) from None
    try:
        return Signature.from_json(raw)
    except (ValueError, RecursionError) as exc:  # (deeply nested JSON raises RecursionError)
        raise ManifestChangedError(
            store.base_url, f"{store.url(key)} is not a valid roxxel signature: {type(exc).__name__}"
            + (f": {exc}" if isinstance(exc, ValueError) else "")
        ) from None


def has_signatures(store: Store) -> bool | None:
    """Whether any signature file is stored under the dataset (None: the store refused
    to list them)."""
    try:
        keys = store.list(SIGNATURES_PREFIX)
    except NotFoundError:
        return False
    except AccessDeniedError:
        return None
    return any(_SIGNATURE_NAME.fullmatch(k) for k in keys)


def _genuine(signature: Signature, data: bytes) -> bool:
    """Whether ``signature`` is of the bytes ``data`` and verifies with its own key."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    digest = manifest_digest(data)
    if signature.manifest != digest:
        return False
    public = Ed25519PublicKey.from_public_bytes(signature.public_key)
    if fingerprint(public) != signature.key:
        return False
    try:
        public.verify(signature.signature, _message(digest))
    except InvalidSignature:
        return False
    return True


def find_signature(store: Store, data: bytes) -> Signature | None:
    """The signature stored for the manifest bytes ``data`` if it verifies them with its
    own public key (whoever that is), else None: for carrying a signature along with
    the very same bytes (``cp``), never one that does not match them."""
    try:
        signature = _read_signature(store, data)
    except ManifestChangedError as exc:
        log.warning("%s", exc)
        return None
    if signature is None or not _genuine(signature, data):
        return None
    return signature


def verify_signature(store: Store, data: bytes, trusted: TrustedKeys) -> Signature:
    """The signature of the manifest bytes ``data`` at ``store``, checked against the
    ``trusted`` keys; SignatureMissingError, ManifestChangedError or
    UntrustedSignerError naming the dataset otherwise (see the module docstring)."""
    url = store.base_url
    signature = _read_signature(store, data)
    if signature is None:
        listed = has_signatures(store)
        if listed:
            raise ManifestChangedError(
                url,
                f"{store.url(SIGNATURES_PREFIX)}/ holds signatures of other versions of the manifest, "
                f"none of the manifest as read now ({manifest_digest(data)}): it changed since it was "
                "signed (sign it again if the change is yours)",
            )
        unlisted = "" if listed is not None else " (the store refused to list signatures/)"
        raise SignatureMissingError(
            url, f"no signature of the manifest ({manifest_digest(data)}) at {store.url(signature_key(data))}"
            f"{unlisted}; sign it with 'roxxel sign'",
        )
    if not _genuine(signature, data):
        raise ManifestChangedError(
            url, f"the signature at {store.url(signature_key(data))} does not verify the manifest's bytes"
        )
    key = trusted.get(signature.key)
    if key is None or key.public_bytes_raw() != signature.public_key:
        raise UntrustedSignerError(
            url, f"it was signed by key {signature.key}, which is not among the {len(trusted)} trusted key(s)"
        )
    return signature


def read_signed_manifest(store: Store, trusted: TrustedKeys) -> tuple[Manifest, Signature]:
    """The dataset's manifest, read once, its exact bytes verified against ``trusted``
    keys before they are parsed, and its signature; SignatureError subclasses as
    :func:`verify_signature` raises them, or SignatureError (reason ``"weak checksum"``)
    for a manifest whose checksums a signature cannot vouch through."""
    data = _read_data(store, MANIFEST_KEY)
    signature = verify_signature(store, data, trusted)
    manifest = Manifest.from_json(data, source=store.url(MANIFEST_KEY))
    check_signable(manifest, store.base_url)
    return manifest, signature
