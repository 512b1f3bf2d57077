"""Signing a published dataset, and what a copy or merge does with signatures.

:func:`sign` stores an Ed25519 signature of the dataset's manifest, as read now (see
:mod:`roxxel.manifest.signing` for the format and where it is stored). A copy whose
manifest bytes stay the same carries the source's signature along (:func:`carry_signature`);
a manifest that is rewritten (a merge, or a copy whose bytes change) is not covered by
any earlier signature: the result says it must be signed again, or is signed with the
key given to the copy or merge.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..backends import Store
from ..manifest import Manifest
from ..manifest.io import MANIFEST_KEY, dataset_store
from ..manifest.signing import (
    check_signable,
    find_signature,
    has_signatures,
    make_signature,
    read_manifest_bytes,
    sign_manifest,
    signature_key,
    write_signature,
)
from ..manifest.signing_keys import PrivateKeyLike, load_private_key

__all__ = [
    "COPIED",
    "RESIGN",
    "SIGNED",
    "UNCHANGED",
    "UNSIGNED",
    "SignReport",
    "carry_signature",
    "sign",
    "sign_held",
    "sign_published",
    "sources_signed",
]

log = logging.getLogger(__name__)

# What became of signatures in a copy or merge (CopyReport.signature, MergeReport.signature).
SIGNED = "signed"  # signed with the key the copy or merge was given
COPIED = "copied"  # the manifest's bytes are the source's: its signature was copied, still valid
UNSIGNED = "unsigned"  # nothing was signed before, nor is now
RESIGN = "must be signed again"  # a source was signed, the new manifest is not covered by it
UNCHANGED = "unchanged"  # nothing was published: the destination's signatures are as they were


@dataclass(frozen=True)
class SignReport:
    """What :func:`sign` did: which manifest bytes (``manifest``, their SHA-256) it
    signed, with which key (``key``, its public fingerprint), stored where."""

    url: str
    manifest: str
    key: str
    signature_url: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def sign(url: str, key: PrivateKeyLike, storage_options: Mapping[str, Any] | None = None) -> SignReport:
    """Sign the manifest of the dataset at ``url`` with the Ed25519 private ``key`` (a
    key object, PEM/OpenSSH text or a key file's path); SigningKeyError for a bad key,
    SignatureError for a manifest whose shard checksums are not cryptographic."""
    private = load_private_key(key)  # before any request: a bad key fails fast
    store = dataset_store(url, storage_options)
    data, manifest = read_manifest_bytes(store)
    signature = sign_manifest(store, data, manifest, private)
    return SignReport(store.base_url, signature.manifest, signature.key, store.url(signature_key(data)))


def sign_published(store: Store, manifest: Manifest, key: PrivateKeyLike) -> None:
    """Store the signature of the bytes :func:`~roxxel.manifest.io.publish_manifest`
    writes for ``manifest`` (before it is published: see roxxel.manifest.signing)."""
    check_signable(manifest, store.url(MANIFEST_KEY))
    data = manifest.to_json().encode("ascii")
    write_signature(store, data, make_signature(data, key))


def carry_signature(src: Store, src_data: bytes, dst: Store, manifest: Manifest) -> str:
    """Before ``manifest`` is published at ``dst``: copy the source's signature of its
    manifest bytes ``src_data`` if the published bytes will be the same and the
    signature verifies them (:data:`COPIED`); else :data:`RESIGN` if the source's
    manifest was signed, :data:`UNSIGNED` if not. A signature that does not match the
    bytes is never copied."""
    data = manifest.to_json().encode("ascii")
    signature = find_signature(src, src_data)
    if signature is None:
        return RESIGN if has_signatures(src) else UNSIGNED
    if data != src_data:
        log.warning("%s: the manifest is rewritten (its bytes differ from %s), so its signature "
                    "is not copied: sign the copy again", dst.url(MANIFEST_KEY), src.url(MANIFEST_KEY))
        return RESIGN
    write_signature(dst, data, signature)
    return COPIED


def sign_held(dst: Store, signer: Any | None, src: Store | None = None, src_data: bytes | None = None) -> str:
    """When ``dst`` already holds the dataset a copy or merge would publish (nothing is
    published): sign its manifest with ``signer`` if given (:data:`SIGNED`), else copy
    the source's signature of the same bytes if it has one and ``dst`` has none
    (:data:`COPIED`); else :data:`UNCHANGED`."""
    data, manifest = read_manifest_bytes(dst)
    if signer is not None:
        sign_manifest(dst, data, manifest, signer)
        return SIGNED
    if src is not None and src_data == data and find_signature(dst, data) is None:
        signature = find_signature(src, src_data)
        if signature is not None:
            write_signature(dst, data, signature)
            return COPIED
    return UNCHANGED


def sources_signed(*stores: Store) -> bool:
    """Whether any of ``stores`` holds a signature (of any version of its manifest)."""
    return any(has_signatures(store) for store in stores)

