"""Ed25519 keys for signed manifests: loading them, and naming them by fingerprint.

Keys come from the ``cryptography`` package (no cryptography is done here), given as key
objects, as PEM or OpenSSH text (``bytes``, or a ``str`` that starts like one), or as a
path to a file holding such text. Signing needs a private key (:func:`load_private_key`);
trusting needs public keys only (:func:`load_trusted_keys`): a private key offered as a
trusted key is refused, because whoever gets that list (a config file, a job spec) would
get the power to sign.

A key is named by its fingerprint, ``"SHA256:<base64>"`` as ``ssh-keygen -l`` prints it
for the same key (SHA-256 of the OpenSSH public key blob, unpadded base64). Fingerprints
are public; key material never appears in an error message, a log line or a repr: errors
name the file a key came from, and what is wrong with it, never its bytes.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Union

from ..errors import SigningKeyError

if TYPE_CHECKING:  # cryptography is imported only when a key is used
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

__all__ = [
    "PrivateKeyLike",
    "PublicKeyLike",
    "TrustedKeys",
    "fingerprint",
    "load_private_key",
    "load_public_key",
    "load_trusted_keys",
]

#: What ``sign_with`` accepts: a key object, PEM/OpenSSH text, or the path of a key file.
PrivateKeyLike = Union["Ed25519PrivateKey", bytes, str, "os.PathLike[str]"]
#: What a trusted key may be: a public key object, PEM/OpenSSH text, or a file's path.
PublicKeyLike = Union["Ed25519PublicKey", bytes, str, "os.PathLike[str]"]

_MAX_KEY_FILE = 64 * 1024  # a key file is a few hundred bytes; refuse reading a huge file
_TEXT_STARTS = (b"-----BEGIN ", b"ssh-ed25519 ")


def fingerprint(public_key: Ed25519PublicKey) -> str:
    """``"SHA256:<unpadded base64>"`` of the key's OpenSSH blob (as ``ssh-keygen -l``)."""
    from cryptography.hazmat.primitives import serialization

    line = public_key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    blob = base64.b64decode(line.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def _material(key: bytes | str | os.PathLike[str], role: str) -> tuple[bytes, str]:
    """The key text and where it came from (a path, or "the given bytes")."""
    if isinstance(key, bytes):
        return key, f"the {role} given as bytes"
    if isinstance(key, str) and key.lstrip().encode("ascii", "replace").startswith(_TEXT_STARTS):
        return key.strip().encode("ascii", "replace"), f"the {role} given as text"
    if not isinstance(key, (str, os.PathLike)):
        raise SigningKeyError(
            f"a {role} must be an Ed25519 key object, PEM or OpenSSH key text, or the path of a "
            f"key file; got a {type(key).__name__}"
        )
    path = os.fspath(key)
    try:
        with open(path, "rb") as f:
            data = f.read(_MAX_KEY_FILE + 1)
    except OSError as exc:
        if isinstance(key, str) and not os.path.lexists(path):  # perhaps key text: never echo it
            raise SigningKeyError(
                f"the {role} given as a str is neither PEM or OpenSSH key text nor the path of an existing "
                "file"
            ) from None
        raise SigningKeyError(f"could not read the {role} file {path}: {exc.strerror or exc}") from None
    if len(data) > _MAX_KEY_FILE:
        raise SigningKeyError(f"{path} is not a key file: it is over {_MAX_KEY_FILE} bytes")
    return data, path


def load_private_key(key: PrivateKeyLike) -> Ed25519PrivateKey:
    """The Ed25519 private key ``key`` is, holds or names (an unencrypted PEM PKCS#8 or
    OpenSSH private key); SigningKeyError naming where it came from otherwise. An
    encrypted key file must be loaded by the caller (with its passphrase) and passed as
    the key object."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PrivateKey,
        Ed25519PublicKey,
    )

    if isinstance(key, Ed25519PrivateKey):
        return key
    if isinstance(key, Ed25519PublicKey):
        raise SigningKeyError("signing needs the Ed25519 private key; got a public key")
    data, where = _material(key, "signing key")
    try:
        if data.lstrip().startswith(b"-----BEGIN OPENSSH PRIVATE KEY-----"):
            loaded = serialization.load_ssh_private_key(data, password=None)
        elif b"PRIVATE KEY-----" in data:
            loaded = serialization.load_pem_private_key(data, password=None)
        elif b"PUBLIC KEY-----" in data or data.lstrip().startswith(b"ssh-"):
            raise SigningKeyError(f"{where} is a public key; signing needs the private key")
        else:
            raise SigningKeyError(f"{where} is not a PEM or OpenSSH private key")
    except SigningKeyError:
        raise
    except TypeError:  # cryptography: a password is needed
        raise SigningKeyError(
            f"{where} is encrypted; load it with cryptography's load_pem_private_key (or "
            "load_ssh_private_key) and its passphrase, and pass the key object"
        ) from None
    except (ValueError, UnsupportedAlgorithm) as exc:  # never chained: it may quote the input
        raise SigningKeyError(f"{where} could not be loaded as a private key ({type(exc).__name__})") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise SigningKeyError(f"{where} is a {_kind(loaded)} key; roxxel signs with Ed25519 keys only")
    return loaded


def load_public_key(key: PublicKeyLike) -> Ed25519PublicKey:
    """The Ed25519 public key ``key`` is, holds or names (PEM ``PUBLIC KEY`` or an
    OpenSSH ``ssh-ed25519`` line). A private key, in any form, is refused with
    SigningKeyError: trusted keys are public keys only."""
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    if isinstance(key, Ed25519PublicKey):
        return key
    if _is_private_key_object(key):
        raise SigningKeyError(
            "trusted keys must be public keys; got a private key (pass key.public_key() instead, "
            "and keep the private key with the publisher only)"
        )
    data, where = _material(key, "trusted key")
    if b"PRIVATE KEY" in data:
        raise SigningKeyError(
            f"{where} holds a private key; trusted keys must be public keys only (keep the private "
            "key with the publisher, and give readers its public key)"
        )
    try:
        if data.lstrip().startswith(b"ssh-"):
            loaded = serialization.load_ssh_public_key(data.strip())
        elif b"-----BEGIN PUBLIC KEY-----" in data:
            loaded = serialization.load_pem_public_key(data)
        else:
            raise SigningKeyError(f"{where} is not a PEM or OpenSSH public key")
    except SigningKeyError:
        raise
    except (ValueError, UnsupportedAlgorithm):  # never chained: it may quote the input
        raise SigningKeyError(f"{where} could not be loaded as a public key") from None
    if not isinstance(loaded, Ed25519PublicKey):
        raise SigningKeyError(f"{where} is a {_kind(loaded)} key; roxxel trusts Ed25519 keys only")
    return loaded


def _is_private_key_object(key: object) -> bool:
    from cryptography.hazmat.primitives.asymmetric import types

    return isinstance(key, types.PrivateKeyTypes.__args__)  # type: ignore[attr-defined]


def _kind(key: object) -> str:
    return type(key).__name__.removeprefix("_").replace("PrivateKey", "").replace("PublicKey", "") or "non-Ed25519"


class TrustedKeys:
    """The public keys a reader trusts, by fingerprint. Its repr counts them and shows
    nothing of them."""

    def __init__(self, keys: Iterable[Ed25519PublicKey]) -> None:
        self._keys = {fingerprint(key): key for key in keys}
        if not self._keys:
            raise SigningKeyError("trusted_keys is empty: no signature could ever be trusted")

    def get(self, key_fingerprint: str) -> Ed25519PublicKey | None:
        """The trusted key with this fingerprint, or None."""
        return self._keys.get(key_fingerprint)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)

    def __repr__(self) -> str:
        return f"TrustedKeys({len(self._keys)} keys)"

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled (for DataLoader workers) as the keys' raw public bytes: public keys only."""
        from cryptography.hazmat.primitives import serialization

        raw = [key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
               for key in self._keys.values()]
        return (_trusted_from_raw, (raw,))


def _trusted_from_raw(raw: list[bytes]) -> TrustedKeys:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import (
        Ed25519PublicKey as Key,
    )

    return TrustedKeys(Key.from_public_bytes(b) for b in raw)


def load_trusted_keys(keys: TrustedKeys | PublicKeyLike | Iterable[PublicKeyLike]) -> TrustedKeys:
    """The trusted keys of ``keys``: one key or an iterable of them (objects, PEM/OpenSSH
    text or paths, see :func:`load_public_key`). SigningKeyError for a private key, a
    key that is not Ed25519, an unreadable file, or no key at all."""
    if isinstance(keys, TrustedKeys):
        return keys
    if isinstance(keys, (bytes, str, os.PathLike)) or not isinstance(keys, Iterable):
        keys = [keys]  # type: ignore[list-item]
    return TrustedKeys(load_public_key(key) for key in keys)
