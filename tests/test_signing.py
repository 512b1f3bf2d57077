"""Signed manifests: Writer(sign_with=...), roxxel.open(trusted_keys=...), roxxel sign and
roxxel verify --trusted-key, and what cp, merge and prune do with signatures.

Every refusal (missing, manifest changed, untrusted signer) and a tampered shard are
checked on local disk, memory, S3 and GCS (the ``dataset_location`` fixture).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import roxxel
from roxxel import ops
from roxxel.cli import main
from roxxel.errors import (
    IntegrityError,
    ManifestChangedError,
    SignatureError,
    SignatureMissingError,
    SigningKeyError,
    UntrustedSignerError,
)
from roxxel.manifest import signing
from roxxel.manifest.io import (
    MANIFEST_KEY,
    dataset_store,
    publish_manifest,
    read_manifest,
)
from roxxel.manifest.signing_keys import fingerprint, load_private_key, load_trusted_keys
from roxxel.ops.sign import COPIED, RESIGN, SIGNED, UNSIGNED


def make_records(n: int, seed: int = 0) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 600)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url, options, recs, **kw):
    with roxxel.Writer(url, shard_bytes=4096, storage_options=options, **kw) as w:
        w.extend(recs)
    return w.manifest


def pem_private(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def pem_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def ssh_public(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def secrets_of(key: Ed25519PrivateKey) -> list[str]:
    """Every form of the private key that must never show: PEM body, raw hex and base64."""
    raw = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                            serialization.NoEncryption())
    body = "".join(pem_private(key).decode().splitlines()[1:-1])
    return [body, body[:24], raw.hex(), base64.b64encode(raw).decode()[:24]]


@pytest.fixture(scope="module")
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def other_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def test_a_signed_dataset_opens_with_its_trusted_key(dataset_location, key, tmp_path):
    url, options = dataset_location
    recs = make_records(40)
    publish(url, options, recs, sign_with=key)
    store = dataset_store(url, options)
    data = store.read_bytes(MANIFEST_KEY)
    sig_key = f"signatures/sha256-{hashlib.sha256(data).hexdigest()}.sig"
    assert store.list("signatures") == [sig_key]
    doc = signing.Signature.from_json(store.read_bytes(sig_key))
    assert doc.manifest == "sha256:" + hashlib.sha256(data).hexdigest()
    assert doc.key == fingerprint(key.public_key())
    (tmp_path / "pub.pem").write_bytes(pem_public(key))
    # a key object, PEM public key text, an OpenSSH public key line and a file's path
    for trusted in ([key.public_key()], [pem_public(key)], [ssh_public(key)], [tmp_path / "pub.pem"],
                    str(tmp_path / "pub.pem")):
        with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options,
                         trusted_keys=trusted) as ds:
            assert [bytes(r) for r in ds] == recs


def test_each_refusal_names_itself_and_the_url(dataset_location, key, other_key, tmp_path):
    url, options = dataset_location
    manifest = publish(url, options, make_records(30))
    store = dataset_store(url, options)

    def open_signed(*trusted):
        return roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options,
                           trusted_keys=[k.public_key() for k in trusted])

    with pytest.raises(SignatureMissingError, match=r"signature refused \(missing\)") as missing:
        open_signed(key)
    assert missing.value.reason == "missing" and missing.value.url == store.base_url
    assert store.base_url in str(missing.value)

    assert ops.sign(url, key, options).key == fingerprint(key.public_key())
    with pytest.raises(UntrustedSignerError, match=r"signature refused \(untrusted signer\)") as untrusted:
        open_signed(other_key)
    assert fingerprint(key.public_key()) in str(untrusted.value) and store.base_url in str(untrusted.value)
    open_signed(other_key, key).close()  # any one trusted key will do

    # the manifest changed after it was signed (a new version, not signed)
    old = store.read_bytes(MANIFEST_KEY)
    publish_manifest(store, manifest.with_meta({"changed": True}), replaces=None)
    with pytest.raises(ManifestChangedError, match=r"signature refused \(manifest changed\)") as changed:
        open_signed(key)
    assert changed.value.reason == "manifest changed" and store.base_url in str(changed.value)

    # the old signature put under the new manifest's name does not verify it
    new = store.read_bytes(MANIFEST_KEY)
    store.put_bytes_overwrite(signing.signature_key(new), store.read_bytes(signing.signature_key(old)))
    with pytest.raises(ManifestChangedError, match="does not verify the manifest"):
        open_signed(key)
    store.put_bytes_overwrite(signing.signature_key(new), b'{"format": "roxxel-signature"}')
    with pytest.raises(ManifestChangedError, match="not a valid roxxel signature"):
        open_signed(key)

    # signing the new version again makes it acceptable; the old bytes' signature stays
    ops.sign(url, key, options)
    with open_signed(key) as ds:
        assert ds.meta == {"changed": True}


def test_a_tampered_shard_is_caught_through_the_signed_checksum(dataset_location, key, tmp_path):
    url, options = dataset_location
    manifest = publish(url, options, make_records(40), sign_with=key)
    store = dataset_store(url, options)
    uri = str(manifest.shards.uris[1])
    data = bytearray(store.read_bytes(uri, max_bytes=None))
    data[5] ^= 0xFF  # same size: only the checksum can tell
    store.put_bytes_overwrite(uri, bytes(data))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options,
                     trusted_keys=[key.public_key()]) as ds:  # the manifest itself is intact
        first = int(manifest.shards.records[0])
        with pytest.raises(IntegrityError, match="checksum"):
            ds[first]
        # no ranged read bypasses the checksum of a signed dataset: fetch and payload
        # read through the verified cache, and refuse the tampered shard as well
        with pytest.raises(IntegrityError, match="checksum"):
            ds.fetch(first)
        with pytest.raises(IntegrityError, match="checksum"):
            ds.payload().read()
    report = ops.verify(url, options, trusted_keys=[key.public_key()])
    assert report.signed_by == fingerprint(key.public_key())
    assert [b.uri for b in report.bad] == [uri]


def test_a_hostile_signature_file_is_refused_as_a_changed_manifest(tmp_path, key):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(10), sign_with=key)
    store = dataset_store(url)
    sig_key = f"signatures/sha256-{hashlib.sha256(store.read_bytes(MANIFEST_KEY)).hexdigest()}.sig"
    for hostile in (b"[" * 4000, b"x" * 10_000):  # nested past the recursion limit; over the size limit
        store.put_bytes_overwrite(sig_key, hostile)
        with pytest.raises(ManifestChangedError, match="is not a valid roxxel signature"):
            roxxel.open(url, cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()])


def test_key_text_that_is_no_key_is_never_echoed(key):
    raw = base64.b64encode(key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                             serialization.NoEncryption())).decode()
    with pytest.raises(SigningKeyError) as refused:
        load_private_key(raw)
    assert raw not in str(refused.value) and "neither PEM or OpenSSH key text" in str(refused.value)


def test_the_bytes_verified_are_the_bytes_used(tmp_path, key, monkeypatch):
    """Invariant 10: the manifest is read once; a new manifest published between that read
    and the signature's is not what the reader gets."""
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(20), sign_with=key)
    store = dataset_store(url)
    signed = read_manifest(store)
    swapped = []
    real = signing.Store.read_bytes

    def read_bytes(self, k, max_bytes=None):
        if k.startswith("signatures/") and not swapped:  # right after the manifest was read
            publish_manifest(store, signed.with_meta({"evil": 1}), replaces=None)
            swapped.append(k)
        return real(self, k, max_bytes=max_bytes)

    monkeypatch.setattr(signing.Store, "read_bytes", read_bytes)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()]) as ds:
        assert swapped and ds.manifest == signed and ds.meta == {}
    assert read_manifest(store).meta == {"evil": 1}


def test_the_writer_stores_the_signature_before_it_publishes(tmp_path, key, monkeypatch):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(10), sign_with=key)
    seen = []
    real = roxxel.writer.publish_manifest

    def publish_checked(store, manifest, **kw):
        seen.append(store.exists(signing.signature_key(manifest.to_json().encode("ascii"))))
        return real(store, manifest, **kw)

    monkeypatch.setattr(roxxel.writer, "publish_manifest", publish_checked)
    publish(url, {}, make_records(10, seed=1), sign_with=key, mode="append")
    assert seen == [True]
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()]) as ds:
        assert len(ds) == 20


def test_trusted_keys_are_public_keys_only(tmp_path, key):
    (tmp_path / "private.pem").write_bytes(pem_private(key))
    ssh_private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
    for given in (key, pem_private(key), ssh_private, tmp_path / "private.pem", pem_private(key).decode()):
        with pytest.raises(SigningKeyError, match="public keys") as refused:
            load_trusted_keys([given])
        assert not any(s in str(refused.value) for s in secrets_of(key))
    with pytest.raises(SigningKeyError, match="private key"):
        roxxel.open(str(tmp_path / "nowhere"), trusted_keys=[key])  # refused before any request
    with pytest.raises(SigningKeyError, match="empty"):
        load_trusted_keys([])
    rsa_public = rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key()
    with pytest.raises(SigningKeyError, match="Ed25519"):
        load_trusted_keys([rsa_public.public_bytes(serialization.Encoding.PEM,
                                                   serialization.PublicFormat.SubjectPublicKeyInfo)])
    with pytest.raises(SigningKeyError, match="could not read the trusted key file"):
        load_trusted_keys([tmp_path / "missing.pub"])
    with pytest.raises(SigningKeyError, match="public key; signing needs the private key"):
        roxxel.Writer(str(tmp_path / "ds"), sign_with=pem_public(key))
    assert repr(load_trusted_keys([key.public_key()])) == "TrustedKeys(1 keys)"


def test_keys_never_appear_in_logs_reprs_or_errors(tmp_path, key, other_key, caplog):
    caplog.set_level(logging.DEBUG)
    url = str(tmp_path / "ds")
    (tmp_path / "key.pem").write_bytes(pem_private(key))
    shown = []
    with roxxel.Writer(url, sign_with=tmp_path / "key.pem") as w:
        w.append(b"record")
        shown.append(repr(w))
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()]) as ds:
        shown.append(repr(ds))
    try:
        roxxel.open(url, cache_dir=str(tmp_path / "cache"), trusted_keys=[other_key.public_key()])
    except UntrustedSignerError as exc:
        shown.append(str(exc))
    assert len(shown) == 3
    text = "\n".join(shown) + caplog.text
    assert "signature" in caplog.text  # the signing was logged, the key was not
    for secret in secrets_of(key) + secrets_of(other_key):
        assert secret not in text


def test_a_weak_checksum_cannot_be_signed_or_trusted(tmp_path, key, monkeypatch):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(10), sign_with=key)
    monkeypatch.setattr(signing, "CRYPTOGRAPHIC", frozenset({"sha256"}))  # as if blake3 were not
    with pytest.raises(SignatureError, match=r"\(weak checksum\).*blake3") as weak:
        roxxel.open(url, cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()])
    assert weak.value.reason == "weak checksum"
    with pytest.raises(SignatureError, match="not cryptographic"):
        ops.sign(url, key)


def test_cli_sign_and_verify(tmp_path, key, other_key, capsys):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(30))
    (tmp_path / "key.pem").write_bytes(pem_private(key))
    (tmp_path / "key.pub").write_bytes(ssh_public(key))
    (tmp_path / "other.pub").write_bytes(pem_public(other_key))

    def run(*argv):
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    status, out, err = run("verify", url, "-q", "--trusted-key", str(tmp_path / "key.pub"))
    assert status == 1 and "signature refused (missing)" in err and url in err and "roxxel sign" in err
    status, out, err = run("sign", url, "--key", str(tmp_path / "key.pem"))
    assert status == 0 and out.startswith(f"signed {url}: manifest sha256:")
    assert fingerprint(key.public_key()) in out
    status, out, err = run("verify", url, "-q", "--trusted-key", str(tmp_path / "key.pub"))
    assert status == 0
    assert out.splitlines()[0] == f"signature: ok, the manifest is signed by trusted key {fingerprint(key.public_key())}"
    status, out, err = run("verify", url, "-q", "--trusted-key", str(tmp_path / "other.pub"))
    assert status == 1 and "signature refused (untrusted signer)" in err
    status, out, err = run("verify", url, "-q", "--cache", "--cache-dir", str(tmp_path / "c"),
                           "--trusted-key", str(tmp_path / "other.pub"), "--trusted-key", str(tmp_path / "key.pub"))
    assert status == 0 and "signature: ok" in out
    status, out, err = run("sign", url, "--key", str(tmp_path / "key.pub"))
    assert status == 1 and "is a public key" in err
    status, out, err = run("verify", url, "-q", "--trusted-key", str(tmp_path / "key.pem"))
    assert status == 1 and "holds a private key" in err
    for secret in secrets_of(key):
        assert secret not in err
    publish_manifest(dataset_store(url), read_manifest(dataset_store(url)).with_meta({"x": 1}), replaces=None)
    status, out, err = run("verify", url, "-q", "--trusted-key", str(tmp_path / "key.pub"))
    assert status == 1 and "signature refused (manifest changed)" in err


@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_cp_keeps_a_valid_signature(kind, new_location, key, tmp_path):
    (src, options), (dst, dst_options) = new_location(kind), new_location(kind)
    recs = make_records(30)
    publish(src, options, recs, sign_with=key)
    report = ops.copy(src, dst, options)
    assert report.signature == COPIED
    with roxxel.open(dst, cache_dir=str(tmp_path / "cache"), storage_options=dst_options,
                     trusted_keys=[key.public_key()]) as ds:
        assert [bytes(r) for r in ds] == recs
    assert ops.copy(src, dst, options).signature == "unchanged"


def test_cp_of_unsigned_or_rewritten_manifests(tmp_path, key, other_key, capsys):
    a, b, c, d = (str(tmp_path / n) for n in "abcd")
    publish(a, {}, make_records(10))
    assert ops.copy(a, b).signature == UNSIGNED
    assert ops.copy(a, b, sign_with=key).signature == SIGNED  # a rerun with a key signs the copy held
    roxxel.open(b, cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()]).close()
    assert ops.copy(a, c, sign_with=key).signature == SIGNED
    roxxel.open(c, cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()]).close()
    # a signed source whose manifest bytes are not the ones the copy publishes (here:
    # indented JSON, as another tool might write it): its signature is not carried
    store = dataset_store(a)
    pretty = json.dumps(json.loads(store.read_bytes(MANIFEST_KEY)), indent=1).encode()
    store.put_bytes_overwrite(MANIFEST_KEY, pretty)
    ops.sign(a, other_key)
    roxxel.open(a, cache_dir=str(tmp_path / "cache"), trusted_keys=[other_key.public_key()]).close()
    assert main(["cp", a, d, "-q"]) == 0
    out = capsys.readouterr().out
    assert "NOT SIGNED" in out and f"roxxel sign {d}" in out
    with pytest.raises(SignatureMissingError):
        roxxel.open(d, cache_dir=str(tmp_path / "cache"), trusted_keys=[other_key.public_key()])


@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_merge_says_the_result_must_be_signed_again(kind, new_location, key, tmp_path, capsys):
    url, options = new_location(kind)
    for i in range(2):
        publish(f"{url}/part-{i}", options, make_records(20, seed=i), sign_with=key)
    report = ops.merge([f"{url}/part-{i}" for i in range(2)], url, options)
    assert report.published and report.signature == RESIGN
    with pytest.raises(SignatureMissingError):
        roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options, trusted_keys=[key.public_key()])
    if kind == "local":  # the CLI says it; and signs with --sign-with
        (tmp_path / "key.pem").write_bytes(pem_private(key))
        assert main(["merge", f"{url}/part-0", f"{url}/part-1", f"{url}-2", "-q"]) == 0
        out = capsys.readouterr().out
        assert "NOT SIGNED" in out and f"roxxel sign {url}-2 --key KEY" in out
        assert main(["merge", f"{url}/part-0", f"{url}/part-1", f"{url}-3", "-q",
                     "--sign-with", str(tmp_path / "key.pem")]) == 0
        assert "signed with the given key" in capsys.readouterr().out
        roxxel.open(f"{url}-3", cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()]).close()
    # rerun with a key on the merge already there: nothing is published, and it is signed
    signed = ops.merge([f"{url}/part-{i}" for i in range(2)], url, options, sign_with=key, overwrite=True)
    assert signed.signature == SIGNED
    roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options,
                trusted_keys=[key.public_key()]).close()


def test_merge_of_unsigned_datasets_is_just_unsigned(tmp_path):
    for i in range(2):
        publish(str(tmp_path / f"p{i}"), {}, make_records(10, seed=i))
    assert ops.merge([str(tmp_path / "p0"), str(tmp_path / "p1")], str(tmp_path / "m")).signature == UNSIGNED


def test_prune_keeps_the_signatures(tmp_path, key):
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(20), sign_with=key)
    publish(url, {}, make_records(20, seed=1), sign_with=key, mode="overwrite")
    store = dataset_store(url)
    signatures = store.list("signatures")
    assert len(signatures) == 2
    report = ops.prune(url, older_than=0, delete=True)
    assert report.having("deleted")  # the first version's shards are gone
    assert store.list("signatures") == signatures
    roxxel.open(url, cache_dir=str(tmp_path / "cache"), trusted_keys=[key.public_key()]).close()


def test_signing_keys_in_their_usual_files(tmp_path, key):
    """An OpenSSH private key (ssh-keygen's format) signs; an encrypted one is refused with
    what to do; a non-Ed25519 key is refused; none of them is quoted."""
    url = str(tmp_path / "ds")
    publish(url, {}, make_records(5))
    ssh_private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                    serialization.NoEncryption())
    (tmp_path / "id_ed25519").write_bytes(ssh_private)
    report = ops.sign(url, tmp_path / "id_ed25519")
    assert report.key == fingerprint(key.public_key())
    roxxel.open(url, cache_dir=str(tmp_path / "cache"), trusted_keys=[ssh_public(key)]).close()
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"passphrase"))
    (tmp_path / "encrypted.pem").write_bytes(encrypted)
    with pytest.raises(SigningKeyError, match=r"encrypted\.pem is encrypted; load it with") as refused:
        ops.sign(url, tmp_path / "encrypted.pem")
    assert "BEGIN" not in str(refused.value)
    rsa_private = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    with pytest.raises(SigningKeyError, match="Ed25519 keys only"):
        roxxel.Writer(str(tmp_path / "other"), sign_with=rsa_private)
    with pytest.raises(SigningKeyError, match="not a PEM or OpenSSH private key"):
        ops.sign(url, b"not a key")
