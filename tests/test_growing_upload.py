"""Large shards go up to S3 while they are packed (roxxel.backends.growing), against moto
on loopback: each part as soon as it is in the staged file, the object checked against
the packed bytes, and nothing left behind when the writer gives up.

Order is observed by holding the record source, never by timing: the records of a shard
after its first part wait until that part is on the wire, which happens only if parts go
up before the shard is finished.
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import fsspec
import numpy as np
import pytest

import roxxel
from roxxel.backends import multipart
from roxxel.backends.growing import PartFeed
from roxxel.backends.through import Revoked
from roxxel.errors import AccessDeniedError, IntegrityError
from tests.faults import client_error
from tests.test_multipart_upload import (  # noqa: F401 - limits and bucket are fixtures
    PART,
    Requests,
    bucket,
    flip,
    limits,
    make_store,
    mib_records,
    multipart_etag,
    pending_uploads,
    shard_of,
)

MiB = 2**20
GROWING_NAME = re.compile(r"shards/00000-(\d{6})-([0-9a-f]{12})\.rox")


def held_until(event: threading.Event, records: list[bytes], hold_at: int, waited: list[bool]) -> Iterator[bytes]:
    """``records``, the one at ``hold_at`` given only once ``event`` is set (or after 30
    s); whether it was set is appended to ``waited``."""
    for i, record in enumerate(records):
        if i == hold_at:
            waited.append(event.wait(30))
        yield record


def part_started(monkeypatch: pytest.MonkeyPatch, shard: int, number: int) -> threading.Event:
    """An event set when part ``number`` of shard ``shard`` is sent."""
    started = threading.Event()
    real = multipart._put_part

    def put(fs: Any, url: str, *args: Any) -> Any:
        if shard_of(url) == (shard, number):
            started.set()
        return real(fs, url, *args)

    monkeypatch.setattr(multipart, "_put_part", put)
    return started


def test_a_large_shards_first_part_goes_up_before_the_shard_is_packed(limits, s3_server, bucket, tmp_path,
                                                                       monkeypatch) -> None:
    """Shard 0's 11th record is given only once its first part is on the wire (a part of
    5 MiB, the upload made at 10 MiB); the object is the packed bytes, its ETag the
    packed parts', and it reads back. The next shard ends between one part and the
    threshold: it goes up in one PUT."""
    started, waited = part_started(monkeypatch, 0, 1), []
    records = mib_records(18)  # a shard of 11 records (3 parts of 5 MiB), and one of 7
    store = make_store(s3_server, bucket)
    with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
        writer.extend(held_until(started, records, hold_at=10, waited=waited))
    assert waited == [True]
    first, second = writer.manifest.shards.uris.tolist()
    match = GROWING_NAME.fullmatch(first)
    assert match is not None
    digest = writer.manifest.shards[0].checksum.split(":")[1]
    assert not digest.startswith(match.group(2))  # named before the digest was known
    data = store.read_bytes(first, None)
    assert store.backend.info(store.path(first))["ETag"].strip('"') == multipart_etag(data, PART)
    assert re.fullmatch(r"[0-9a-f]{32}", store.backend.info(store.path(second))["ETag"].strip('"'))  # one PUT
    assert pending_uploads(store, bucket) == []
    with roxxel.open(store.base_url, storage_options=s3_server.storage_options,
                     cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def test_a_part_changed_in_the_file_before_it_went_up_is_never_published(limits, s3_server, bucket,
                                                                          monkeypatch) -> None:
    """The object is checked against the MD5s computed as the bytes were packed: a byte
    flipped in the staged file before its part is sent fails the check of the upload
    and of each upload of the finished file after it, and nothing is published."""
    store = make_store(s3_server, bucket)
    writer = roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store)
    real = PartFeed.written

    def flipping(self: PartFeed, end: int) -> None:
        if end == PART:
            flip(os.path.join(writer._staging, "000000.rox"), 1000)
        real(self, end)

    monkeypatch.setattr(PartFeed, "written", flipping)
    message = r"shards/00000-000000-[0-9a-f]{12}\.rox: uploaded object has multipart ETag [0-9a-f]{32}-3, expected"
    with pytest.raises(IntegrityError, match=message), writer:
        writer.extend(mib_records(11))
    assert not store.exists("manifest.json")
    assert pending_uploads(store, bucket) == []


def test_a_writer_aborted_mid_shard_leaves_no_pending_upload(limits, s3_server, bucket, monkeypatch) -> None:
    """An error in the records once a part of the shard being packed is on the wire:
    the writer aborts, the shard's multipart upload is aborted, nothing is published."""
    started = part_started(monkeypatch, 0, 1)
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs, monkeypatch)

    def records() -> Iterator[bytes]:
        yield from mib_records(11)
        started.wait(30)
        raise RuntimeError("the records ran out")

    with pytest.raises(RuntimeError, match="the records ran out"), \
            roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
        writer.extend(records())
    assert started.is_set()
    assert requests.calls["create_multipart_upload"] == 1
    assert requests.calls["abort_multipart_upload"] == 1
    assert requests.calls["complete_multipart_upload"] == 0
    assert pending_uploads(store, bucket) == []
    assert not store.exists("manifest.json")


def test_a_writer_dropped_mid_shard_gives_its_upload_up(limits, s3_server, bucket, monkeypatch) -> None:
    """A writer neither closed nor aborted, once collected: the feed of its open shard is
    given up and the shard's multipart upload aborted."""
    started = part_started(monkeypatch, 0, 1)
    store = make_store(s3_server, bucket)
    writer = roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store)
    writer.extend(mib_records(11))
    assert started.wait(30)
    del writer
    gc.collect()
    deadline = time.monotonic() + 30
    while pending_uploads(store, bucket) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert pending_uploads(store, bucket) == []


def test_a_refused_part_fails_the_writer_and_aborts_the_upload(limits, s3_server, bucket, monkeypatch) -> None:
    store = make_store(s3_server, bucket)

    def fail(method: str, number: int, attempt: int) -> BaseException | None:
        return client_error(403, "AccessDenied", "UploadPart") if number == 2 else None

    requests = Requests(store.fs, monkeypatch, fail=fail)
    with pytest.raises(AccessDeniedError, match=r"could not upload s3://mp-.*/ds/shards/00000-000000-"), \
            roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
        writer.extend(mib_records(11))
    assert requests.calls["abort_multipart_upload"] == 1
    assert requests.calls["complete_multipart_upload"] == 0
    assert pending_uploads(store, bucket) == []
    assert not store.exists("manifest.json")


def test_an_upload_failed_transiently_is_retried_whole_from_the_parts_written(limits, s3_server, bucket, tmp_path,
                                                                              monkeypatch) -> None:
    """Part 2 fails (503) every time it is sent in the first upload: that upload is
    aborted, and the store's retry makes a second one, which sends every part written
    by then and the rest as they come."""
    store = make_store(s3_server, bucket)
    sends = multipart._PART_ATTEMPTS

    def fail(method: str, number: int, attempt: int) -> BaseException | None:
        if number == 2 and attempt <= sends:
            return client_error(503, "SlowDown", "UploadPart")
        return None

    requests = Requests(store.fs, monkeypatch, fail=fail)
    records = mib_records(11)
    with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
        writer.extend(records)
    assert requests.calls["create_multipart_upload"] == 2
    assert requests.calls["abort_multipart_upload"] == 1
    assert requests.calls["complete_multipart_upload"] == 1
    assert requests.attempts[2] == sends + 1
    assert pending_uploads(store, bucket) == []
    with roxxel.open(store.base_url, storage_options=s3_server.storage_options,
                     cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def test_a_shard_past_10000_parts_goes_up_finished(limits, s3_server, bucket, tmp_path, monkeypatch,
                                                    caplog) -> None:
    """A shard that outgrows the parts it was begun with (one record larger than 10,000
    parts; 1 here) gives its growing upload up before it sends a part S3 would refuse,
    and goes up finished, in one larger part."""
    monkeypatch.setattr(multipart, "_MAX_PARTS", 1)
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs, monkeypatch)
    records = mib_records(11)
    with caplog.at_level("INFO", logger="roxxel.writer"), \
            roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
        writer.extend(records)
    assert re.search(r"shards/00000-000000-[0-9a-f]{12}\.rox goes up again from the finished file: the upload "
                     r"of .* was given up: the file outgrew 1 parts of 5242880 bytes", caplog.text)
    assert max(requests.attempts) == 1  # no part number past the limit was ever sent
    assert requests.calls["abort_multipart_upload"] == 1  # the growing one
    assert requests.calls["complete_multipart_upload"] == 1
    (uri,) = writer.manifest.shards.uris.tolist()
    assert store.backend.info(store.path(uri))["ETag"].strip('"').endswith("-1")
    with roxxel.open(store.base_url, storage_options=s3_server.storage_options,
                     cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def test_the_parts_of_a_build_are_still_named_by_their_digests() -> None:
    from roxxel.build.parts import _PartWriter

    assert _PartWriter._growing_key(object.__new__(_PartWriter), 0) is None


def test_a_feed_refuses_digests_that_do_not_cover_the_file() -> None:
    feed = PartFeed(PART)
    with pytest.raises(ValueError, match="2 part digests do not cover 16777216 bytes in parts of 5242880"):
        feed.finished(16 * MiB, [b"\0" * 16] * 2)
    with pytest.raises(ValueError, match="part_size must be at least 5242880 bytes"):
        PartFeed(MiB)


def test_a_feed_given_up_before_the_upload_began_raises_revoked(limits, s3_server, bucket, tmp_path) -> None:
    store = make_store(s3_server, bucket)
    path = tmp_path / "growing"
    path.write_bytes(np.random.default_rng(0).bytes(PART))
    feed = PartFeed(PART)
    feed.written(PART)
    feed.give_up()
    with pytest.raises(Revoked, match="given up"):
        store.put_growing(str(path), "growing.bin", feed)
    assert pending_uploads(store, bucket) == []


def test_a_shard_that_fails_to_finish_aborts_the_writer_and_its_upload(limits, s3_server, bucket,
                                                                      monkeypatch) -> None:
    """The staged file cannot be finished (a full disk) once parts of it are up: the
    shard's upload is aborted, and a close() after the error publishes nothing (the
    other shards without this one would be a dataset missing records)."""
    import errno

    from roxxel.staging import StagingFile

    started = part_started(monkeypatch, 1, 1)
    store = make_store(s3_server, bucket)
    requests = Requests(store.fs, monkeypatch)
    real = StagingFile.finish

    def finish(self: StagingFile) -> Any:
        if self.path.endswith("000001.rox"):
            assert started.wait(30)
            raise OSError(errno.ENOSPC, "No space left on device (injected)")
        return real(self)

    monkeypatch.setattr(StagingFile, "finish", finish)
    writer = roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store)
    with pytest.raises(OSError, match="No space left"):
        writer.extend(mib_records(24))
    with pytest.raises(ValueError, match="is aborted"):
        writer.close()
    assert requests.calls["abort_multipart_upload"] >= 1
    assert pending_uploads(store, bucket) == []
    assert not store.exists("manifest.json")


def signed_parts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bool, int]]:
    """For each part PUT from a part thread, whether its headers were signed here, and
    its part number."""
    seen: list[tuple[bool, int]] = []
    real = multipart._put_part

    def put(fs: Any, url: str, *args: Any) -> Any:
        number = int(re.search(r"partNumber=(\d+)", url).group(1))  # type: ignore[union-attr]
        seen.append((len(args) > 5 and args[5] is not None, number))
        return real(fs, url, *args)

    monkeypatch.setattr(multipart, "_put_part", put)
    return seen


def test_a_writer_from_storage_options_signs_its_upload_without_s3fs(limits, s3_server, bucket, tmp_path,
                                                                      monkeypatch) -> None:
    """A dataset written from plain storage options: the growing upload is made, and its
    parts sent, by requests signed here: s3fs is made (for the probe, the completion)
    only once the first part is on the wire; the upload completes through s3fs, leaves
    nothing pending, and reads back."""
    from roxxel.backends import growing
    from roxxel.backends.s3open import DeferredS3FileSystem

    seen = signed_parts(monkeypatch)
    started, waited = part_started(monkeypatch, 0, 1), []
    made = []
    real_create, real_materialize = growing.create_multipart, DeferredS3FileSystem.materialize

    def materialize(self: DeferredS3FileSystem) -> Any:
        waited.append(started.wait(30))
        return real_materialize(self)

    monkeypatch.setattr(growing, "create_multipart", lambda request: made.append(request) or real_create(request))
    monkeypatch.setattr(DeferredS3FileSystem, "materialize", materialize)
    url = f"s3://{bucket}/signed"
    records = mib_records(11)
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=s3_server.storage_options) as writer:
        writer.extend(records)
    assert len(made) == 1 and sorted(seen) == [(True, 1), (True, 2), (True, 3)]
    assert waited and all(waited)
    assert pending_uploads(make_store(s3_server, bucket), bucket) == []
    with roxxel.open(url, storage_options=s3_server.storage_options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


@pytest.mark.parametrize("refused", ["create", "part"])
def test_a_store_refusing_requests_signed_here_gets_them_through_s3fs(refused, limits, s3_server, bucket, tmp_path,
                                                                       monkeypatch) -> None:
    """The store refuses (403) the creation signed here, or the first part signed here:
    the upload is made, or the parts sent, through s3fs, and so are the next shard's (the
    refusal is remembered); the dataset is whole."""
    from roxxel.backends import growing

    seen = signed_parts(monkeypatch)
    made: list[Any] = []
    real_create = growing.create_multipart

    def create(request: Any) -> str:
        made.append(request)
        if refused == "create":
            raise client_error(403, "SignatureDoesNotMatch", "CreateMultipartUpload")
        return real_create(request)

    monkeypatch.setattr(growing, "create_multipart", create)
    if refused == "part":
        real = growing._SignedUpload._send_signed

        async def send(self: Any, number: int, *args: Any) -> Any:
            if number == 1:
                raise client_error(403, "SignatureDoesNotMatch", "UploadPart")
            return await real(self, number, *args)
        monkeypatch.setattr(growing._SignedUpload, "_send_signed", send)
    remembered, real_refused = threading.Event(), growing._refused

    def refusal(*args: Any) -> None:
        real_refused(*args)
        remembered.set()

    monkeypatch.setattr(growing, "_refused", refusal)
    url = f"s3://{bucket}/refused"
    records = mib_records(22)  # two shards of 3 parts: the first refused, the next the s3fs way
    waited: list[bool] = []
    with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=s3_server.storage_options,
                       upload_workers=1, max_staged_shards=1) as writer:
        # (the next shard begins once the refusal is known: its upload would go at once)
        writer.extend(held_until(remembered, records, hold_at=11, waited=waited))
    assert waited == [True]
    assert len(made) == 1  # the second shard's upload not even tried signed
    if refused == "create":  # every part presigned by botocore
        assert sorted(seen) == [(False, 1), (False, 1), (False, 2), (False, 2), (False, 3), (False, 3)]
    else:  # the refused part sent again presigned by botocore (the others as they went), the next shard's too
        assert (False, 1) in seen[:4] and (True, 1) not in seen and len(seen) == 6
        assert all(not signed for signed, _ in seen[-3:])
    store = make_store(s3_server, bucket)
    assert pending_uploads(store, bucket) == []
    with roxxel.open(url, storage_options=s3_server.storage_options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def test_a_growing_signed_upload_publishes_whole_through_injected_faults(limits, tmp_path, monkeypatch) -> None:
    """moto behind a proxy that answers 20% of PUTs and POSTs (creations, parts,
    completions, the manifest) with 503 SlowDown or 500: each is sent again (a part on
    its own, or the whole upload), and the dataset publishes complete and correct, with
    no multipart upload left pending."""
    from tests import faulty_s3

    seen = signed_parts(monkeypatch)
    with faulty_s3.running("growfaults", read_timeout=5) as (server, options):
        url = "s3://growfaults/ds"
        records = mib_records(33)
        server.configure(rate=0.2, kinds=["slowdown", "500"], methods=["PUT", "POST"], seed=5)
        with roxxel.Writer(url, shard_bytes=12 * MiB, storage_options=options) as writer:
            writer.extend(records)
        counts = server.counts()
        server.configure()
        assert sum(counts["injected"].values()) >= 3
        assert any(signed for signed, _ in seen)  # (the signed path, under the faults)
        fs = fsspec.filesystem("s3", **options)
        assert fs.call_s3("list_multipart_uploads", Bucket="growfaults").get("Uploads", []) == []
        with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
            assert [bytes(ds[i]) for i in range(len(ds))] == records


def test_only_s3_and_gcs_take_an_upload_of_a_file_being_written(tmp_path) -> None:
    from roxxel.backends.store import Store

    store = Store(str(tmp_path / "ds"))
    with pytest.raises(TypeError, match="only S3 and GCS take an upload of a file still being written"):
        store.put_growing(str(tmp_path / "x"), "shards/x.rox", PartFeed(PART))


class _Answering:
    """A one-request HTTP server on loopback answering ``status`` with ``body``."""

    def __init__(self, status: int, body: bytes) -> None:
        import http.server

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.handle_request, daemon=True).start()

    def request(self) -> Any:
        from roxxel.backends.s3open import _endpoint_request

        options = {"key": "AKID", "secret": "SECRET"}
        return _endpoint_request(options, f"http://127.0.0.1:{self.server.server_port}", "bkt", "ds/x.rox", 5.0)


@pytest.mark.parametrize(("status", "body", "error", "message"), [
    (200, b"<InitiateMultipartUploadResult><Bucket>bkt</Bucket></InitiateMultipartUploadResult>",
     "HTTPException", "a CreateMultipartUpload answer without an UploadId"),
    (403, b"<Error><Code>SignatureDoesNotMatch</Code><Message>no</Message></Error>",
     "ClientError", r"\(SignatureDoesNotMatch\) when calling the CreateMultipartUpload operation: no"),
])
def test_a_signed_create_that_gives_no_upload_raises(status, body, error, message) -> None:
    from roxxel.backends.s3open import create_multipart

    server = _Answering(status, body)
    try:
        with pytest.raises(Exception, match=message) as raised:
            create_multipart(server.request())
        assert type(raised.value).__name__ == error
    finally:
        server.server.server_close()


def test_a_signed_create_unescapes_the_upload_id() -> None:
    from roxxel.backends.s3open import create_multipart

    server = _Answering(200, b"<InitiateMultipartUploadResult><UploadId>a&amp;b~c</UploadId></InitiateMultipartUploadResult>")
    try:
        assert create_multipart(server.request()) == "a&b~c"
    finally:
        server.server.server_close()


def asked_about(monkeypatch: pytest.MonkeyPatch, store: Any) -> list[str]:
    """The paths whose info (a HEAD) ``store``'s backend is asked for."""
    asked: list[str] = []
    real = type(store.backend).info

    def info(self: Any, path: str) -> Any:
        asked.append(path)
        return real(self, path)

    monkeypatch.setattr(type(store.backend), "info", info)
    return asked


def completions_answer_another_etag(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every multipart completion's answer names an ETag of no bytes sent."""
    real = multipart._Upload.call

    async def another_etag(self: Any, method: str, **kwargs: Any) -> Any:
        response = await real(self, method, **kwargs)
        if method == "complete_multipart_upload":
            response = {**response, "ETag": '"' + "0" * 32 + '-3"'}
        return response

    monkeypatch.setattr(multipart._Upload, "call", another_etag)


def test_an_upload_its_completion_confirmed_is_not_asked_about_again(limits, s3_server, bucket, tmp_path,
                                                                     monkeypatch) -> None:
    """The completion of a multipart upload answers with the object's ETag, which S3
    makes of the parts it holds: when that is the ETag of the packed parts, the object
    is the packed bytes, and no HEAD asks again. A shard sent in one PUT is still
    checked by one; and so is a finished file's multipart upload whose answer names
    another ETag."""
    store = make_store(s3_server, bucket)
    asked = asked_about(monkeypatch, store)
    records = mib_records(18)  # a shard in 3 parts, then one of 7 MiB (one PUT)
    with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
        writer.extend(records)
    grown, small = writer.manifest.shards.uris.tolist()
    assert store.path(grown) not in asked and asked.count(store.path(small)) == 1
    data = store.read_bytes(grown, None)
    assert store.backend.info(store.path(grown))["ETag"].strip('"') == multipart_etag(data, PART)

    # Store.put_file of a finished file in parts: confirmed, unless the answer says otherwise
    path = tmp_path / "finished"
    path.write_bytes(data)
    assert store.put_file(path, "finished-1") is True
    completions_answer_another_etag(monkeypatch)
    assert store.put_file(path, "finished-2") is False
    store.check_upload("finished-2", path, None)  # the object is whole all the same: the HEAD says so
    small_file = tmp_path / "small"
    small_file.write_bytes(b"x" * MiB)
    assert store.put_file(small_file, "small") is False  # one PUT: its answer is not compared
    with roxxel.open(store.base_url, storage_options=s3_server.storage_options,
                     cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(ds[i]) for i in range(len(ds))] == records


def test_a_completion_answering_another_etag_is_checked_by_a_head(limits, s3_server, bucket, monkeypatch) -> None:
    """The writer trusts the completion's answer only when it names the packed parts'
    ETag: answered another, the shard is asked about (a HEAD), found whole, and
    published."""
    store = make_store(s3_server, bucket)
    asked = asked_about(monkeypatch, store)
    completions_answer_another_etag(monkeypatch)
    with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store) as writer:
        writer.extend(mib_records(11))
    (grown,) = writer.manifest.shards.uris.tolist()
    assert asked.count(store.path(grown)) == 1


def test_a_shards_upload_while_packed_never_waits_for_an_upload_worker(limits, s3_server, bucket,
                                                                        monkeypatch) -> None:
    """With one upload worker, shard 0's upload is completed only once shard 1's first
    part is on the wire: shard 1 goes up as it is packed although shard 0's upload, and
    the job that waits to check it, are not over (the uploads of shards being packed have
    threads of their own)."""
    started, waited = part_started(monkeypatch, 1, 1), []
    real = multipart._Upload.complete

    async def complete(self: Any, etags: list[str], expected: str) -> bool:
        if "-000000-" in self.key:
            waited.append(await asyncio.to_thread(started.wait, 30))
        return await real(self, etags, expected)

    monkeypatch.setattr(multipart._Upload, "complete", complete)
    store = make_store(s3_server, bucket)
    records = mib_records(24)  # two shards in 3 parts each, and one of 2 MiB
    with roxxel.Writer(store.base_url, shard_bytes=12 * MiB, store=store, upload_workers=1) as writer:
        writer.extend(records)
    assert waited == [True]
    assert len(writer.manifest.shards) == 3 and pending_uploads(store, bucket) == []
