"""The manifest's vocabulary has one home each (roxxel.manifest.checksums, compressions,
keys, redaction): every user of a word agrees with its home."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import roxxel
from roxxel.backends import Store, urls
from roxxel.cache import names
from roxxel.cache.names import key_from_filename
from roxxel.errors import ManifestError
from roxxel.format.check import ShardSpec
from roxxel.manifest import ShardInfo, checksums, keys, redaction
from roxxel.manifest.checksums import (
    CHECKSUM_ALGORITHMS,
    DEFAULT_ALGORITHM,
    ChecksumError,
    ShardKey,
    new_hasher,
    parse_checksum,
)
from roxxel.manifest.compressions import COMPRESSIONS
from roxxel.manifest.keys import check_key
from roxxel.manifest.redaction import redact
from tests.checksum_kit import ALGORITHMS, reference_checksum

GOOD = "sha256:" + "ab" * 32


def shard(**changes) -> ShardInfo:
    fields = dict(uri="shards/a.rox", records=1, stored_size=40, raw_size=40, compression=None, checksum=GOOD)
    return ShardInfo(**{**fields, **changes})


def test_one_definition_each():
    assert urls.check_key is keys.check_key and urls.redact is redaction.redact
    assert names.CHECKSUM_ALGORITHMS is checksums.CHECKSUM_ALGORITHMS


KEYS = [
    "shards/a.rox", "a", "x/y/z.rox.zst", ".hidden", "a..b", "ünïcode/ß",  # safe
    "", "/abs", "s3://b/k", "c:x", "a::b", "a\\b", "a//b", "a/", "./a", "a/../b", "..",
    "a\x00b", "a\x7fb", "a\x85b", "a\ud800b",  # unsafe
]


@pytest.mark.parametrize("key", KEYS)
def test_store_keys_and_shard_uris_follow_one_rule(key):
    try:
        check_key(key)
        safe_key = True
    except ValueError as exc:
        assert str(exc).startswith(f"invalid store key {key!r}: expected ")
        safe_key = False
    try:
        shard(uri=key)
        safe_uri = True
    except ManifestError:
        safe_uri = False
    assert safe_key == safe_uri == (keys.key_problem(key) is None)


@given(st.text(max_size=40))
@example("?0")  # a safe key with a "?": shown whole, not taken for a query string
def test_a_safe_key_never_leaves_its_prefix(key):
    if keys.key_problem(key) is not None:
        return
    segments = key.split("/")
    assert "" not in segments and "." not in segments and ".." not in segments
    assert "\\" not in key and "::" not in key and not re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", key)
    assert not any(ord(ch) < 0x20 or 0x7F <= ord(ch) <= 0x9F or 0xD800 <= ord(ch) <= 0xDFFF for ch in key)
    assert Store("memory://vocabulary").url(key) == "memory://vocabulary/" + key


@pytest.mark.parametrize("text, masked", [
    ("https://user:pw@h/x?a=1&X-Amz-Signature=abc", "https://***@h/x?***"),
    ("s3://key:secret@bucket/ds", "s3://***@bucket/ds"),
    ("could not read gs://b/o?X-Goog-Signature=s and s3://k:s@b/x: Forbidden", "could not read gs://b/o?*** and s3://***@b/x: Forbidden"),
    ("/data/ds/manifest.json?versionId=3", "/data/ds/manifest.json?***"),
    ("a message without URLs? none", "a message without URLs? none"),
    ("cut off;token=abc&sig=def", "cut off;token=***&sig=***"),
])
def test_one_redaction_rule(text, masked):
    assert redact(text) == masked


def test_manifest_messages_and_store_urls_are_redacted_alike():
    source = "https://user:secret@host/ds/manifest.json?X-Amz-Signature=abc&versionId=3"
    with pytest.raises(ManifestError) as caught:
        roxxel.Manifest.from_json("[]", source=source)
    assert str(caught.value).startswith(f"manifest {redact(source)}: ")
    assert "secret" not in str(caught.value) and "versionId" not in str(caught.value)


def test_one_checksum_parser():
    assert parse_checksum(GOOD) == ShardKey("sha256", "ab" * 32)
    blake = "blake2b:" + "0" * 128
    assert parse_checksum(blake).stem == "blake2b-" + "0" * 128
    assert parse_checksum("blake3:" + "cd" * 32) == ShardKey("blake3", "cd" * 32)
    assert CHECKSUM_ALGORITHMS == {"sha256": 64, "blake2b": 128, "blake3": 64}
    for algorithm, digits in CHECKSUM_ALGORITHMS.items():
        key = parse_checksum(f"{algorithm}:{'1' * digits}")
        assert key.checksum == f"{algorithm}:{'1' * digits}" and key.stem == f"{algorithm}-{'1' * digits}"
        assert key_from_filename(f"{key.stem}.rox") == key
        assert len(key.new_hash().hexdigest()) == digits
        shard(checksum=key.checksum)  # a manifest entry may name it
        with pytest.raises(ChecksumError, match=rf"expected {digits} hex digits after '{algorithm}:', got {digits - 1}"):
            parse_checksum(f"{algorithm}:{'1' * (digits - 1)}")
        with pytest.raises(ManifestError, match=rf"checksum: expected {digits} hex digits after '{algorithm}:', got {digits + 1}"):
            shard(checksum=f"{algorithm}:{'1' * (digits + 1)}")
        with pytest.raises(ChecksumError, match=r"expected lowercase hex digits \[0-9a-f\]"):
            parse_checksum(f"{algorithm}:{'A' * digits}")
        assert key_from_filename(f"{algorithm}-{'1' * (digits - 1)}.rox") is None
    with pytest.raises(ValueError, match="a checksum algorithm among blake2b, blake3, sha256"):
        parse_checksum("md5:" + "0" * 32)
    with pytest.raises(ChecksumError, match=r"expected a checksum like 'blake3:<64 hex digits>', got 'abc'"):
        parse_checksum("abc")
    assert key_from_filename("md5-" + "0" * 32 + ".rox") is None


# Published test vectors (FIPS 180-2; RFC 7693's BLAKE2b-512 of "abc"; the first two cases
# of the BLAKE3 team's test_vectors.json), so the table's constructors are the algorithms
# they are named after.
VECTORS = {
    ("sha256", b"abc"): "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
    ("blake2b", b"abc"): "ba80a53f981c4d0d6a2797b69f12f6e94c212f14685ac4b74b12bb6fdbffa2d1"
                         "7d87c5392aab792dc252d5de4533cc9518d38aa8dbf1925ab92386edd4009923",
    ("blake3", b""): "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262",
    ("blake3", b"\x00"): "2d3adedff11b61f14c886e35afa036736dcd87a74d27b5c1510225d0f592e213",
}


@pytest.mark.parametrize("algorithm, data", sorted(VECTORS))
def test_every_algorithm_is_the_one_it_is_named_after(algorithm, data):
    hasher = new_hasher(algorithm)
    hasher.update(data)
    assert hasher.hexdigest() == VECTORS[algorithm, data]


@given(st.sampled_from(ALGORITHMS), st.binary(max_size=9000), st.lists(st.integers(0, 9000), max_size=6))
def test_new_hasher_fed_in_pieces_is_the_reference(algorithm, data, cuts):
    hasher = new_hasher(algorithm)
    bounds = [0, *sorted(cuts), len(data)]
    for lo, hi in zip(bounds, bounds[1:]):
        hasher.update(memoryview(data)[lo:max(lo, hi)])
    assert f"{algorithm}:{hasher.hexdigest()}" == reference_checksum(data, algorithm)


def test_the_default_is_blake3_and_unknown_algorithms_are_refused():
    assert DEFAULT_ALGORITHM == "blake3"
    for bad in ("md5", "SHA256", "xxh3-128", "", None):
        with pytest.raises(ValueError, match=r"checksum algorithm .* is not one of blake2b, blake3, sha256"):
            new_hasher(bad)  # type: ignore[arg-type]


def test_import_roxxel_imports_every_hasher_so_no_thread_imports_one():
    """A process that forks while one of its threads imports a module leaves the child
    waiting for that module forever: the first hasher is made in a download thread, so
    its module must already be imported."""
    code = "import sys, roxxel\nprint('blake3' in sys.modules)\n"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True"]


def test_one_list_of_compressions(tmp_path):
    for compression in COMPRESSIONS:
        stored = 40 if compression is None else 30
        shard(compression=compression, stored_size=stored)
        ShardSpec(stored, 40, compression, 1, "x")
        roxxel.Writer(str(tmp_path / f"ds-{compression}"), compression=compression).abort()
    with pytest.raises(ManifestError, match="expected null or 'zstd', got 'gzip'"):
        shard(compression="gzip")
    with pytest.raises(ValueError, match="compression is 'gzip', expected None or 'zstd'"):
        ShardSpec(40, 40, "gzip", 1, "x")
    with pytest.raises(ValueError, match="compression must be None or 'zstd', got 'gzip'"):
        roxxel.Writer(str(tmp_path / "ds-gzip"), compression="gzip")
