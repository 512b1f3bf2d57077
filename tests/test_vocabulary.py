"""The manifest's vocabulary has one home each (roxxel.manifest.checksums, compressions,
keys, redaction): every user of a word agrees with its home."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

import roxxel
from roxxel.backends import Store, urls
from roxxel.cache import names
from roxxel.cache.names import key_from_filename
from roxxel.errors import ManifestError
from roxxel.format.check import ShardSpec
from roxxel.manifest import ShardInfo, checksums, keys, redaction
from roxxel.manifest.checksums import CHECKSUM_ALGORITHMS, ChecksumError, ShardKey, parse_checksum
from roxxel.manifest.compressions import COMPRESSIONS
from roxxel.manifest.keys import check_key
from roxxel.manifest.redaction import redact

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
    for algorithm, digits in CHECKSUM_ALGORITHMS.items():
        key = parse_checksum(f"{algorithm}:{'1' * digits}")
        assert key_from_filename(f"{key.stem}.rox") == key
        assert len(key.new_hash().hexdigest()) == digits
    with pytest.raises(ChecksumError, match=r"expected 64 hex digits after 'sha256:', got 63"):
        parse_checksum("sha256:" + "0" * 63)
    with pytest.raises(ManifestError, match=r"checksum: expected 64 hex digits after 'sha256:', got 63"):
        shard(checksum="sha256:" + "0" * 63)
    with pytest.raises(ValueError, match="a checksum algorithm among blake2b, sha256"):
        parse_checksum("md5:" + "0" * 32)
    assert key_from_filename("md5-" + "0" * 32 + ".rox") is None


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
