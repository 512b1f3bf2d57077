"""Several writers and readers of one dataset at once (issue 15, items 1-3).

- Appenders in separate processes publish at the same moment, many times over, on local
  disk, S3 (moto) and GCS (fake-gcs-server): every append that reported success is in the
  final manifest, every loser got ConflictError, and its retry succeeded.
- ``cp`` and ``merge`` over an existing dataset lose to a writer that published between
  their read and their publish, and publish nothing.
- ``roxxel.open`` racing a stream of manifest replacements (longer and shorter) always
  returns the old or the new dataset, never an error.
- Stores that accept preconditions and ignore them (moto behind a layer that strips
  them; gcp-storage-emulator) are detected: create/append/merge/cp refuse unless the
  caller says it is the only writer.
"""

from __future__ import annotations

import importlib
import queue
import threading
import uuid
from typing import Any

import pytest

import roxxel
from roxxel.errors import ConflictError, DatasetExistsError, StorageError
from roxxel.manifest import Manifest, ShardInfo
from roxxel.manifest.io import MANIFEST_KEY, dataset_store, publish_manifest, read_manifest
from roxxel.ops import copy as copy_dataset
from roxxel.ops import merge as merge_datasets
from tests import servers
from tests.reliability_kit import forkserver

WRITERS = 4
TRIALS = 6


def _tag(writer: int, trial: int, attempt: int) -> bytes:
    return f"writer {writer} trial {trial} attempt {attempt}".encode()


def appender(url: str, options: dict[str, Any], writer: int, trials: int, barrier: Any, results: Any) -> None:
    """One of several processes that append to the same dataset at the same moment in
    every trial: each builds its Writer (reading the manifest), waits for the others,
    publishes, and on ConflictError appends again until it succeeds."""
    for trial in range(trials):
        target = f"{url}/t{trial}"
        outcome = "error"
        try:
            attempt = 0
            writer_ = roxxel.Writer(target, storage_options=options, mode="append")
            writer_.append(_tag(writer, trial, attempt))
            barrier.wait(timeout=120)
            while True:
                try:
                    writer_.close()
                    break
                except ConflictError:
                    outcome = "lost"
                    attempt += 1
                    if attempt > 3 * WRITERS:
                        raise
                    writer_ = roxxel.Writer(target, storage_options=options, mode="append")
                    writer_.append(_tag(writer, trial, attempt))
            results.put((trial, writer, "won" if outcome == "error" else outcome, attempt))
        except Exception as exc:  # reported to the parent, which fails the test
            results.put((trial, writer, f"error: {type(exc).__name__}: {exc}", -1))
            barrier.abort()
            return


@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_concurrent_appenders_lose_nothing(new_location, kind, tmp_path):
    url, options = new_location(kind)
    for trial in range(TRIALS):
        with roxxel.Writer(f"{url}/t{trial}", storage_options=options) as w:
            w.append(b"base")
    ctx = forkserver()
    barrier, results = ctx.Barrier(WRITERS), ctx.Queue()
    procs = [ctx.Process(target=appender, args=(url, options, i, TRIALS, barrier, results))
             for i in range(WRITERS)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=300) for _ in range(WRITERS * TRIALS)]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    errors = [o for o in outcomes if o[2].startswith("error")]
    assert not errors, errors
    for trial in range(TRIALS):
        with roxxel.open(f"{url}/t{trial}", storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
            records = [bytes(ds[i]) for i in range(len(ds))]
        mine = [o for o in outcomes if o[0] == trial]
        expected = [b"base"] + [_tag(w, trial, attempt) for _, w, _, attempt in mine]
        assert sorted(records) == sorted(expected), f"trial {trial}: {mine}"
        assert records[0] == b"base"
        assert any(o[2] == "won" for o in mine)
    # The publishes really raced: some appends lost their first compare-and-swap.
    assert any(o[2] == "lost" for o in outcomes), outcomes


@pytest.mark.parametrize("kind", ["local", "memory", "s3", "gcs"])
def test_an_append_that_lost_publishes_nothing(new_location, kind):
    url, options = new_location(kind)
    with roxxel.Writer(url, storage_options=options) as w:
        w.append(b"base")
    slow = roxxel.Writer(url, storage_options=options, mode="append")
    slow.append(b"slow")
    with roxxel.Writer(url, storage_options=options, mode="append") as fast:
        fast.append(b"fast")
    with pytest.raises(ConflictError, match="changed while this writer was appending.*nothing was published"):
        slow.close()
    manifest = read_manifest(dataset_store(url, options))
    assert manifest.records == 2
    with roxxel.Writer(url, storage_options=options, mode="append") as again:
        again.append(b"slow")
    assert read_manifest(dataset_store(url, options)).records == 3


@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_a_compare_and_swap_that_loses_the_last_moment_race_is_a_conflict(new_location, kind, monkeypatch, tmp_path):
    """Another writer publishes after this writer checked the manifest and before it
    wrote: only the store's precondition can catch that."""
    from roxxel import writer as writer_module

    url, options = new_location(kind)
    with roxxel.Writer(url, storage_options=options) as w:
        w.append(b"base")
    real = writer_module.publish_manifest
    interloped: list[bool] = []

    def interloper_first(store: Any, manifest: Any, **kwargs: Any) -> None:
        if not interloped:
            interloped.append(True)
            with roxxel.Writer(url, storage_options=options, mode="append") as other:
                other.append(b"interloper")
        real(store, manifest, **kwargs)

    monkeypatch.setattr(writer_module, "publish_manifest", interloper_first)
    late = roxxel.Writer(url, storage_options=options, mode="append")
    late.append(b"late")
    with pytest.raises(ConflictError):
        late.close()
    monkeypatch.undo()
    with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == [b"base", b"interloper"]


@pytest.mark.parametrize("operation", ["cp", "merge"])
@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_cp_and_merge_over_a_dataset_lose_to_a_concurrent_publish(new_location, kind, operation, monkeypatch, tmp_path):
    src, options = new_location(kind)
    dst, _ = new_location(kind)
    for url, record in ((src, b"source"), (dst, b"old destination")):
        with roxxel.Writer(url, storage_options=options) as w:
            w.append(record)
    module = importlib.import_module("roxxel.ops.copy" if operation == "cp" else "roxxel.ops.merge")
    real = module.copy_shard
    published: list[bool] = []

    def publish_meanwhile(*args: Any, **kwargs: Any) -> Any:
        if not published:
            published.append(True)
            with roxxel.Writer(dst, storage_options=options, mode="overwrite") as w:
                w.append(b"concurrent")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "copy_shard", publish_meanwhile)
    with pytest.raises(ConflictError, match="another writer changed it"):
        if operation == "cp":
            copy_dataset(src, dst, options, overwrite=True)
        else:
            merge_datasets([src], dst, options, overwrite=True)
    with roxxel.open(dst, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == [b"concurrent"]


def _manifest_of(url: str, options: dict[str, Any], shards: int) -> Manifest:
    """A valid manifest naming ``shards`` copies of one real shard (only opened, never read)."""
    with roxxel.Writer(url, storage_options=options) as w:
        w.append(b"x" * 100)
    shard = read_manifest(dataset_store(url, options)).shards[0]
    copies = [ShardInfo(uri=shard.uri if i == 0 else f"shards/copy-{i:05d}.rox", records=shard.records,
                        stored_size=shard.stored_size, raw_size=shard.raw_size,
                        compression=shard.compression, checksum=shard.checksum) for i in range(shards)]
    return Manifest.build(copies, {"padding": "p" * (shards % 7)})


@pytest.mark.parametrize("kind", ["local", "memory", "s3", "gcs"])
def test_open_racing_a_stream_of_publishes_never_errors(new_location, kind, tmp_path):
    url, options = new_location(kind)
    short, long = _manifest_of(url, options, 1), _manifest_of(f"{url}-long", options, 400)
    assert len(long.to_json()) > 20 * len(short.to_json())
    store = dataset_store(url, options)
    stop = threading.Event()
    failures: queue.Queue[BaseException] = queue.Queue()

    def publisher() -> None:
        try:
            while not stop.is_set():
                for manifest in (long, short):
                    publish_manifest(store, manifest, replaces=None)
        except BaseException as exc:  # noqa: BLE001 - reported to the test
            failures.put(exc)

    thread = threading.Thread(target=publisher, daemon=True)
    thread.start()
    seen = set()
    try:
        # At least 120 opens, and on until both versions were seen (a thread of this
        # process may not get the GIL for a while; 1,000 opens at the most).
        for opened in range(1, 1001):
            with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
                seen.add(len(ds))
            if opened >= 120 and len(seen) == 2:
                break
    finally:
        stop.set()
        thread.join(timeout=60)
    assert failures.empty(), failures.get()
    assert seen <= {short.records, long.records}
    assert len(seen) == 2, "the opens did race the publishes"


# -- stores that accept preconditions and ignore them -------------------------------------


@pytest.fixture(scope="module")
def careless_s3() -> Any:
    with servers.s3_server(honour_preconditions=False) as server:
        server.create_bucket("careless")
        yield server


@pytest.fixture(scope="module")
def careless_gcs() -> Any:
    with servers.gcs_emulator_server() as server:
        server.create_bucket("careless")
        yield server


@pytest.fixture(scope="module")
def half_careless_s3() -> Any:
    """Honours If-None-Match and ignores If-Match (as S3 itself did for months)."""
    with servers.s3_server(honour_preconditions="if-none-match-only") as server:
        server.create_bucket("careless")
        yield server


_CARELESS = {"s3-stripping-proxy": "careless_s3", "s3-ignoring-if-match": "half_careless_s3",
             "gcp-storage-emulator": "careless_gcs"}


@pytest.fixture(params=sorted(_CARELESS))
def careless(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    server = request.getfixturevalue(_CARELESS[request.param])
    return server.url("careless", f"t{uuid.uuid4().hex[:12]}/ds"), server.storage_options


def _refused_before_publishing(url: str, options: dict[str, Any], **kwargs: Any) -> None:
    """On S3 and GCS the probe answers in the background while the first shards are
    packed and uploaded: its refusal comes from the call that finishes a shard or from
    close(), and the dataset stays as it was (the shards uploaded meanwhile unreferenced)."""
    store = dataset_store(url, options)
    before = store.read_bytes(MANIFEST_KEY) if store.exists(MANIFEST_KEY) else None
    with (pytest.raises(StorageError, match="does not enforce them.*single_writer=True"),
          roxxel.Writer(url, storage_options=options, shard_bytes=4096, **kwargs) as w):
        w.extend([bytes([i]) * 1024 for i in range(40)])  # about ten shards finished
    after = store.read_bytes(MANIFEST_KEY) if store.exists(MANIFEST_KEY) else None
    assert after == before


def test_a_store_that_ignores_preconditions_is_refused(careless):
    url, options = careless
    _refused_before_publishing(url, options)
    with roxxel.Writer(url, storage_options=options, mode="overwrite") as w:  # needs no condition
        w.append(b"overwritten")
    _refused_before_publishing(url, options, mode="append")
    for make in (
        lambda: merge_datasets([url], url + "-merged", options),
        lambda: copy_dataset(url, url + "-copy", options),
    ):
        with pytest.raises(StorageError, match="does not enforce them"):
            make()
    fs = dataset_store(url, options).fs
    left = [p for p in fs.find(url.split("://", 1)[1].rsplit("/", 2)[0]) if ".roxxel-probe" in p]
    assert left == [], "the probe objects were deleted"


def test_a_single_writer_may_publish_on_such_a_store(careless, tmp_path):
    url, options = careless
    with roxxel.Writer(url, storage_options=options, single_writer=True) as w:
        w.append(b"one")
    with pytest.raises(DatasetExistsError):
        roxxel.Writer(url, storage_options=options, single_writer=True)
    with roxxel.Writer(url, storage_options=options, mode="append", single_writer=True) as w:
        w.append(b"two")
    copy_dataset(url, url + "-copy", options, single_writer=True)
    with roxxel.open(url + "-copy", storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == [b"one", b"two"]


def test_the_cli_refuses_such_a_store_unless_told_single_writer(careless, tmp_path, capsys):
    from roxxel.cli import main

    url, options = careless
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.txt").write_bytes(b"hello")
    args = ["pack", str(tmp_path / "in"), url, "-q"]
    for key in ("endpoint_url", "key", "secret", "token", "project"):
        if key in options:
            args += ["-o", f"{key}={options[key]}"]
    assert main(args) != 0
    assert "does not enforce them" in capsys.readouterr().err
    assert main([*args, "--single-writer"]) == 0


def test_processes_never_share_a_probe_verdict_across_stores(s3_server, careless_s3):
    """The verdict is per store: the honest server is not tarred by the careless one."""
    honest = dataset_store(s3_server.url("roxxel-tests", f"t{uuid.uuid4().hex[:8]}"), s3_server.storage_options)
    careless = dataset_store(careless_s3.url("careless", f"t{uuid.uuid4().hex[:8]}"), careless_s3.storage_options)
    assert careless.conditional_writes_enforced() is False
    assert honest.conditional_writes_enforced() is True


@pytest.mark.parametrize("kind", ["local", "s3", "gcs"])
def test_a_merge_in_place_loses_to_an_append_published_while_it_read(new_location, kind, monkeypatch, tmp_path):
    """``merge DEST PART DEST --overwrite`` (adding a part to a dataset in place) reads DEST
    as a source; an append published after that read must make the merge a conflict, not
    vanish under the merged manifest."""
    merge_module = importlib.import_module("roxxel.ops.merge")
    dst, options = new_location(kind)
    for url, record in ((dst, b"base"), (dst + "/part", b"part")):
        with roxxel.Writer(url, storage_options=options) as w:
            w.append(record)
    real = merge_module._entries

    def append_meanwhile(*args: Any, **kwargs: Any) -> Any:
        with roxxel.Writer(dst, storage_options=options, mode="append") as w:
            w.append(b"appended meanwhile")
        return real(*args, **kwargs)

    monkeypatch.setattr(merge_module, "_entries", append_meanwhile)
    with pytest.raises(ConflictError):
        merge_datasets([dst, dst + "/part"], dst, options, overwrite=True)
    with roxxel.open(dst, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == [b"base", b"appended meanwhile"]


@pytest.fixture(scope="module")
def rejecting_s3() -> Any:
    """Answers every conditional PUT 501 Not Implemented (some S3-compatible stores)."""
    with servers.s3_server(honour_preconditions="reject") as server:
        server.create_bucket("rejects")
        yield server


def test_a_store_that_rejects_conditional_writes_is_refused_or_used_by_a_single_writer(rejecting_s3, tmp_path):
    url = rejecting_s3.url("rejects", f"t{uuid.uuid4().hex[:12]}/ds")
    options = rejecting_s3.storage_options
    _refused_before_publishing(url, options)
    with roxxel.Writer(url, storage_options=options, single_writer=True) as w:
        w.append(b"one")
    with roxxel.Writer(url, storage_options=options, mode="append", single_writer=True) as w:
        w.append(b"two")
    with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == [b"one", b"two"]


@pytest.fixture(scope="module")
def lossy_s3() -> Any:
    """Performs the first conditional PUT of each key, then answers it 500: the client's
    own retry of a write that landed meets the precondition it just changed."""
    with servers.s3_server(honour_preconditions="lose-first-response") as server:
        server.create_bucket("lossy")
        yield server


def _held_probe(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """The writer's probe for conditional writes waits (a slow store) until the event."""
    from roxxel import writer as writer_module

    answer = threading.Event()
    real = writer_module.require_conditional_writes

    def held(store: Any, *, single_writer: bool) -> None:
        assert answer.wait(60), "the test never let the probe answer"
        real(store, single_writer=single_writer)

    monkeypatch.setattr(writer_module, "require_conditional_writes", held)
    return answer


def test_shards_go_up_while_the_probe_runs_and_the_publish_waits_for_it(s3_server, monkeypatch):
    url = s3_server.url("roxxel-tests", f"t{uuid.uuid4().hex[:12]}/ds")
    options = s3_server.storage_options
    answer = _held_probe(monkeypatch)
    store = dataset_store(url, options)
    w = roxxel.Writer(url, storage_options=options, shard_bytes=4096)
    w.extend([bytes([i]) * 1024 for i in range(12)])
    closing = threading.Thread(target=w.close)
    closing.start()
    for _ in range(600):  # every shard is uploaded without the probe's answer
        if len(store.list("shards")) >= 3:
            break
        closing.join(0.05)
    assert len(store.list("shards")) >= 3
    closing.join(0.5)
    assert closing.is_alive() and not store.exists(MANIFEST_KEY)  # the publish waits
    answer.set()
    closing.join(60)
    assert not closing.is_alive() and read_manifest(store).records == 12


def test_a_refusal_is_raised_by_the_next_shard_finished_after_the_answer(s3_server, monkeypatch):
    """Not only by close(): the extend that finishes a shard raises it, and the writer is
    aborted (it publishes nothing, and close() says so)."""
    from roxxel import writer as writer_module

    def refusing(store: Any, *, single_writer: bool) -> None:
        raise StorageError(f"{store.base_url}: conditional writes accepted but does not enforce them")

    monkeypatch.setattr(writer_module, "require_conditional_writes", refusing)
    url = s3_server.url("roxxel-tests", f"t{uuid.uuid4().hex[:12]}/ds")
    w = roxxel.Writer(url, storage_options=s3_server.storage_options, shard_bytes=4096)
    for _ in range(600):  # the probe's thread answers (without a request here)
        try:
            assert w._probe is not None
            w._probe.raise_if_refused()
        except StorageError:
            break
        threading.Event().wait(0.01)
    with pytest.raises(StorageError, match="does not enforce them"):
        w.extend([bytes([i]) * 1024 for i in range(12)])  # finishes shards
    with pytest.raises(ValueError, match="aborted"):
        w.close()
    assert not dataset_store(url, s3_server.storage_options).exists(MANIFEST_KEY)


def test_an_abort_does_not_wait_for_the_probe(s3_server, monkeypatch):
    url = s3_server.url("roxxel-tests", f"t{uuid.uuid4().hex[:12]}/ds")
    answer = _held_probe(monkeypatch)
    w = roxxel.Writer(url, storage_options=s3_server.storage_options, shard_bytes=4096)
    w.extend([bytes([i]) * 1024 for i in range(12)])
    aborting = threading.Thread(target=w.abort)
    aborting.start()
    aborting.join(30)
    stuck = aborting.is_alive()
    answer.set()
    assert not stuck, "abort() waited for the probe"
    assert not dataset_store(url, s3_server.storage_options).exists(MANIFEST_KEY)


def test_a_publish_whose_response_was_lost_counts_as_published(lossy_s3, tmp_path):
    url = lossy_s3.url("lossy", f"t{uuid.uuid4().hex[:12]}/ds")
    options = lossy_s3.storage_options
    with roxxel.Writer(url, storage_options=options) as w:   # create: If-None-Match
        w.append(b"one")
    with roxxel.Writer(url, storage_options=options, mode="append") as w:   # append: If-Match
        w.append(b"two")
    with roxxel.open(url, storage_options=options, cache_dir=str(tmp_path / "cache")) as ds:
        assert [bytes(r) for r in ds] == [b"one", b"two"]


def test_a_local_dataset_on_a_mount_whose_locks_stay_on_one_node_is_refused(tmp_path, monkeypatch):
    """flock on gcsfuse, s3fs-fuse, NFS with nolock/local_lock or Lustre with localflock
    does not exclude a writer on another node: such a mount is a store without enforced
    conditional writes."""
    from roxxel.backends import local as local_backend

    monkeypatch.setattr(local_backend, "mount_of", lambda path: ("fuse.gcsfuse", {"rw"}))
    url = str(tmp_path / "ds")
    with pytest.raises(StorageError, match="does not enforce them"):
        roxxel.Writer(url)
    with roxxel.Writer(url, single_writer=True) as w:
        w.append(b"alone")
    assert read_manifest(dataset_store(url)).records == 1


def test_a_manifest_read_without_a_version_is_refused_unless_single_writer(tmp_path, monkeypatch):
    """A store that enforces conditions but answers a read with no ETag or generation (a
    proxy that drops the header, say) gives nothing to compare: refused, not trusted."""
    from roxxel.backends import Store

    url = str(tmp_path / "ds")
    with roxxel.Writer(url) as w:
        w.append(b"one")
    real = Store.read_versioned
    monkeypatch.setattr(Store, "read_versioned",
                        lambda self, key, max_bytes=None: real(self, key, max_bytes)._replace(version=None))
    with pytest.raises(StorageError, match="gave no version .*single_writer=True"):
        with roxxel.Writer(url, mode="append") as w:
            w.append(b"two")
    with roxxel.Writer(url, mode="append", single_writer=True) as w:
        w.append(b"two")
    assert read_manifest(dataset_store(url)).records == 2


def test_the_probe_and_the_manifest_check_run_at_once_and_the_probe_speaks_first(rejecting_s3, monkeypatch):
    """Writer(...) checks for a manifest while it probes for conditional writes (each is
    round trips to a remote store): the probe is held until the manifest check has
    started (if they ran one after the other, the hold would run out). Where both fail,
    the probe's error is the one raised, as when it ran first."""
    from roxxel.backends.store import Store

    url = rejecting_s3.url("rejects", f"t{uuid.uuid4().hex[:12]}/ds")
    options = rejecting_s3.storage_options
    with roxxel.Writer(url, storage_options=options, single_writer=True) as w:
        w.append(b"one")  # a dataset there, on a store that rejects conditional writes

    checking, overlapped = threading.Event(), []
    real_probe, real_exists = Store.conditional_writes_enforced, Store.exists

    def probe(self: Store) -> bool:
        overlapped.append(checking.wait(30))
        return real_probe(self)

    def exists(self: Store, key: str) -> bool:
        checking.set()
        return real_exists(self, key)

    monkeypatch.setattr(Store, "conditional_writes_enforced", probe)
    monkeypatch.setattr(Store, "exists", exists)
    with pytest.raises(StorageError, match="does not enforce them"):
        roxxel.Writer(url, storage_options=options)  # not DatasetExistsError
    assert overlapped == [True]
