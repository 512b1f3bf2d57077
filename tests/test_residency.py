"""Shard residency (roxxel.read.residency): one owner of what is downloading, cached,
mapped and needed next, usable by several datasets at once; and the read path's
structure (no import cycle)."""

from __future__ import annotations

import ast
import gc
import pathlib
import weakref

import numpy as np
import pytest

import roxxel
from roxxel.backends import Store
from roxxel.cache import ShardCache
from roxxel.cache.sizing import required_bytes
from roxxel.errors import CacheError
from roxxel.manifest.io import dataset_store, read_manifest
from roxxel.read.catalog import ShardCatalog
from roxxel.read.parts import PartEngine
from roxxel.read.residency import Residency


def make_records(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, size=int(rng.integers(1, 2000)), dtype=np.uint8).tobytes() for _ in range(n)]


def publish(url: str, recs: list[bytes]) -> None:
    with roxxel.Writer(url, shard_bytes=16 * 1024) as w:
        w.extend(recs)


@pytest.fixture
def two_datasets(tmp_path):
    """Two published datasets, each with several shards, and their records."""
    out = []
    for seed in (1, 2):
        url, recs = str(tmp_path / f"ds{seed}"), make_records(120, seed)
        publish(url, recs)
        store = dataset_store(url, None)
        out.append((store, read_manifest(store), recs))
    return out


def test_one_residency_serves_the_shards_of_two_datasets(two_datasets, tmp_path):
    catalog = ShardCatalog()
    offsets = [catalog.add(store, manifest.shards) for store, manifest, _ in two_datasets]
    assert offsets == [0, len(two_datasets[0][1].shards)]
    residency = Residency(catalog, ShardCache(tmp_path / "cache"), what="a mixture")
    unmapped: list[int] = []
    residency.on_unmap(unmapped.append)
    try:
        for (_, manifest, recs), offset in zip(two_datasets, offsets):
            last = len(manifest.shards) - 1
            shard = residency.map(offset + last)  # the member's last shard
            first = int(manifest.shards.record_starts[last])
            assert bytes(shard.view(0)) == recs[first]
        residency.release(offsets[1])  # not mapped: nothing to tell
        residency.release(offsets[1] + len(two_datasets[1][1].shards) - 1)
        assert unmapped == [offsets[1] + len(two_datasets[1][1].shards) - 1]
        assert residency.stats["shards_downloaded"] == 2
    finally:
        residency.close()
    with pytest.raises(ValueError, match="a mixture is closed"):
        residency.map(0)


def test_warm_and_the_limit_arithmetic_run_over_the_whole_catalog(two_datasets, tmp_path):
    catalog = ShardCatalog()
    for store, manifest, _ in two_datasets:
        catalog.add(store, manifest.shards)
    sizes = catalog.raw_sizes
    limit = required_bytes(sizes, 4)
    residency = Residency(catalog, ShardCache(tmp_path / "cache", limit), what="a mixture")
    try:
        order = list(range(len(catalog)))[::-1]  # the second dataset's shards first
        fits = residency.that_fit(order)
        assert fits == order[: len(fits)] and int(sizes[fits].sum()) <= limit < int(sizes[order[: len(fits) + 1]].sum())
        counts = residency.warm(fits, workers=2)
        assert counts["shards_fetched"] == len(fits) and residency.cache.usage() == int(sizes[fits].sum())
        assert residency.warm(fits, workers=2)["shards_cached"] == len(fits)
    finally:
        residency.close()


def test_a_dataset_reads_its_shards_through_its_residency_only(two_datasets, tmp_path):
    store, _, recs = two_datasets[0]
    with roxxel.open(store.base_url, cache_dir=str(tmp_path / "cache")) as ds:
        assert bytes(ds[len(recs) - 1]) == recs[-1]
        last = ds.num_shards - 1
        assert ds.is_mapped(last)
        ds.residency.release(last)  # the residency decides: the dataset's index hears of it
        assert not ds.is_mapped(last)
        assert bytes(ds[len(recs) - 1]) == recs[-1]
        assert ds.stats == ds.residency.stats


def _imports(path: pathlib.Path, package: str) -> set[str]:
    """Modules of ``package`` that the module at ``path`` imports (at any level)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 1:
            found.add(f"{package}.{node.module}" if node.module else package)
    return found


def test_the_read_path_has_no_import_cycle():
    folder = pathlib.Path(roxxel.__file__).parent / "read"
    graph = {f"roxxel.read.{p.stem}": _imports(p, "roxxel.read") for p in folder.glob("*.py") if p.stem != "__init__"}
    done: set[str] = set()

    def visit(module: str, path: tuple[str, ...]) -> None:
        assert module not in path, f"import cycle: {' -> '.join((*path, module))}"
        if module in done:
            return
        for imported in graph.get(module, ()):
            visit(imported, (*path, module))
        done.add(module)

    for module in graph:
        visit(module, ())


def test_a_dataset_dropped_without_close_lets_go_of_its_shards_at_once(two_datasets, tmp_path):
    store, _, recs = two_datasets[0]
    cache_dir = str(tmp_path / "cache")
    checksum = str(read_manifest(store).shards.checksums[0])
    gc.disable()  # no cycle may keep it: reference counting alone must free it
    try:
        ds = roxxel.open(store.base_url, cache_dir=cache_dir)
        assert bytes(ds[0]) == recs[0]
        with pytest.raises(CacheError, match="in use"):
            ShardCache(cache_dir).remove(checksum)
        alive = weakref.ref(ds)
        del ds
        assert alive() is None
        assert ShardCache(cache_dir).remove(checksum)  # its lock went with it
    finally:
        gc.enable()


def test_a_shard_being_mapped_is_not_asked_for_ahead_again(two_datasets, tmp_path):
    # A token stream asks ahead, at every batch, for the shards it maps next. Mapping one
    # claims its download, which makes room in the lookahead; that room must go to the
    # next shard, not to the one being mapped (whose place no later claim would free: the
    # lookahead filled with such shards, and a stream fetched shard by shard).
    store, manifest, _ = two_datasets[0]
    catalog = ShardCatalog()
    catalog.add(store, manifest.shards)
    assert len(manifest.shards) > 3
    residency = Residency(catalog, ShardCache(tmp_path / "cache"), lookahead=2, what="a dataset")
    try:
        residency.prefetch([0, 1, 2])
        residency.prefetch([0, 1, 2])  # asked again, as the next batch asks: 0 and 1 are in the lookahead
        residency.map(0)
        residency.map(1)
        residency._downloader._pending[2].result(timeout=10)  # shard 2 is being fetched ahead (KeyError: not)
        assert residency.cache.contains(catalog.checksums[2])
    finally:
        residency.close()


class _InParts(Store):
    """A local dataset read as a store that downloads shards in parts."""

    @property
    def downloads_in_parts(self) -> bool:
        return True


def test_downloads_with_no_order_given_go_in_the_order_they_were_asked_for(tmp_path, monkeypatch):
    # (a token stream gives no order of use: its downloads' threads reach the part engine
    # in any order, and the engine serves them in the order they were asked for instead)
    url = str(tmp_path / "ds")
    publish(url, make_records(120, 3))
    store = _InParts(url)
    manifest = read_manifest(store)
    catalog = ShardCatalog()
    catalog.add(store, manifest.shards)
    orders: dict[str, float | None] = {}
    download = PartEngine.download

    def recorded(self, store, key, size, sink, **kw):
        orders[key] = kw.get("order")
        return download(self, store, key, size, sink, **kw)

    monkeypatch.setattr(PartEngine, "download", recorded)
    residency = Residency(catalog, ShardCache(tmp_path / "cache"), lookahead=4, what="a dataset")
    try:
        asked = [3, 1, 2, 0]
        residency.prefetch(asked)
        for k in asked:
            residency.map(k)
    finally:
        residency.close()
    got = [orders[str(manifest.shards.uris[k])] for k in asked]
    assert None not in got and got == sorted(got)
