"""S3 over TLS: both read paths (presigned GETs and s3fs) verify the server's certificate,
and a certificate that does not check out is a prompt error, never a retry loop or a
read without verification.

moto serves HTTPS on loopback with certificates made here; ``AWS_CA_BUNDLE`` is how
botocore, s3fs and roxxel's direct path are told to trust them.
"""

from __future__ import annotations

import datetime
import ipaddress
import uuid
from pathlib import Path

import pytest

import roxxel
from roxxel.backends import Store
from roxxel.backends.s3 import DirectReader, open_direct, refused
from roxxel.errors import StorageError
from tests import servers

cryptography = pytest.importorskip("cryptography")  # moto[server] depends on it
from cryptography import x509  # noqa: E402
from cryptography.hazmat.primitives import hashes, serialization  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.x509.oid import NameOID  # noqa: E402

BUCKET = "roxxel-tls"


def certificate(folder: Path, name: str, host: str) -> tuple[str, str]:
    """A self-signed certificate for ``host`` (an IP address or a DNS name), and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"roxxel test {name}")])
    try:
        alt: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        alt = x509.DNSName(host)
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


@pytest.fixture(scope="module")
def tls_s3(tmp_path_factory):
    """An HTTPS moto server with a certificate for 127.0.0.1, that certificate's path, and
    a dataset on it (written while trusting the certificate)."""
    folder = tmp_path_factory.mktemp("tls")
    cert, key = certificate(folder, "loopback", "127.0.0.1")
    with servers.s3_server(tls=(cert, key)) as server:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_CA_BUNDLE", cert)
            server.create_bucket(BUCKET)
            url = server.url(BUCKET, f"ds-{uuid.uuid4().hex[:8]}")
            with roxxel.Writer(url, shard_bytes=64 * 1024, storage_options=options(server)) as w:
                w.extend(record(i) for i in range(3000))
        yield server, cert, url


def options(server) -> dict:
    return server.storage_options | {"skip_instance_cache": True}


def record(i: int) -> bytes:
    return f"record {i} ".encode() * (i % 17 + 1)


def test_with_the_certificate_trusted_shards_arrive_by_verified_direct_gets(tls_s3, tmp_path, monkeypatch):
    server, cert, url = tls_s3
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)
    with roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options(server)) as ds:
        assert ds.num_shards > 5
        got = [bytes(r) for r in ds.iter(seed=3)]
        assert sorted(got) == sorted(record(i) for i in range(3000))
        assert ds.stats["shards_downloaded"] == ds.num_shards
        assert not refused(ds.store.fs)  # no fallback to s3fs was needed
    store = Store(url, options(server))
    reader = open_direct(store.fs, store.path(ds.manifest.shards.uris[0]), 0)
    assert isinstance(reader, DirectReader)  # the direct path took TLS, verified, in its stride
    reader.close()
    assert not refused(store.fs)


def test_an_untrusted_certificate_fails_fast_on_both_paths(tls_s3, tmp_path, monkeypatch):
    server, _, url = tls_s3
    monkeypatch.delenv("AWS_CA_BUNDLE", raising=False)  # botocore's own bundle: not ours
    store = Store(url, options(server))
    assert open_direct(store.fs, store.path("manifest.json"), 0) is None
    assert refused(store.fs)  # the direct path is off for this store, not retried per read
    with pytest.raises(StorageError, match=r"manifest\.json: the server's TLS certificate did not verify") as caught:
        roxxel.open(url, cache_dir=str(tmp_path / "cache"), storage_options=options(server))
    # Not retried (retries took 15 s here before certificate errors were told apart): a
    # retried error would be a TransientStorageError saying how many attempts it made.
    assert "attempt" not in str(caught.value)
    assert "CERTIFICATE_VERIFY_FAILED" in str(caught.value) and "AWS_CA_BUNDLE" in str(caught.value)
    assert type(caught.value) is StorageError  # not a TransientStorageError
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").rglob("*.rox*"))


def test_a_certificate_for_another_host_is_refused_by_the_direct_path(tmp_path, monkeypatch):
    cert, key = certificate(tmp_path, "elsewhere", "storage.invalid")
    monkeypatch.setenv("AWS_CA_BUNDLE", cert)  # trusted, but names another host
    with servers.s3_server(tls=(cert, key)) as server:
        store = Store(server.url(BUCKET, "x"), options(server))
        assert open_direct(store.fs, store.path("anything"), 0) is None
        assert refused(store.fs)
