"""Build a roxxel dataset from a Dask collection: ``roxxel.dask.write(collection, url)``.

Each partition is one part of the build (:func:`roxxel.build.write_part` in a Dask task,
on whichever worker runs it); the driver collects one receipt per partition and commits
once (:func:`roxxel.build.commit`), in partition order. A task that Dask retries (its
worker died) or runs twice writes under names of its own; Dask hands the driver the
result of one run per task, and what the others uploaded is never listed (``roxxel
prune`` removes it). Needs Dask: ``pip install roxxel[dask]``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

from fsspec.callbacks import Callback

from .build.commit import check_destination, commit
from .build.parts import Receipt, write_part
from .build.rows import Encode, pick_column, row_records
from .format.writer import Record
from .manifest import Manifest
from .manifest.redaction import redact
from .progress import Meter
from .writer import DEFAULT_SHARD_BYTES

__all__ = ["dask_client", "write", "write_parts"]

log = logging.getLogger(__name__)

_NEEDS = "roxxel.dask needs Dask: pip install roxxel[dask]"


def _import_dask() -> Any:
    try:
        import dask
    except ImportError as exc:
        raise ImportError(_NEEDS) from exc
    return dask


def write(
    collection: Any,
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    mode: str = "create",
    meta: Mapping[str, Any] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    compression: str | None = None,
    column: str | None = None,
    encode: Encode | None = None,
    single_writer: bool = False,
    upload_workers: int = 4,
    progress: Callback | None = None,
    client: Any = None,
) -> Manifest:
    """Write the records of ``collection`` to a dataset at ``url`` and publish it; returns
    the published manifest. Records keep the collection's order.

    ``collection`` is a ``dask.bag.Bag`` of records (bytes-like, ``str`` as UTF-8, NumPy
    arrays), or a ``dask.dataframe`` DataFrame or Series: its one column (or ``column``)
    of bytes or str, or each row (a dict) turned into a record by ``encode`` (also applied
    to a bag's items if given). It runs on ``client`` or the default ``distributed``
    client, else on Dask's current scheduler. ``mode``, ``meta``, ``single_writer``,
    ``shard_bytes``, ``compression`` and ``upload_workers`` are :class:`roxxel.Writer`'s.
    ``progress`` (an fsspec ``Callback``) counts the records' bytes uploaded, on every
    worker (a task that is run again counts again).
    """
    _import_dask()
    import dask.bag
    import dask.dataframe

    if isinstance(collection, dask.bag.Bag):
        records_of: Callable[[Any], Iterable[Record]] = (
            _identity if encode is None else functools.partial(_mapped, encode)
        )
    elif isinstance(collection, dask.dataframe.DataFrame):
        picked = pick_column([str(c) for c in collection.columns], column, encode, "roxxel.dask.write")
        records_of = functools.partial(_frame_records, picked, encode)
    elif isinstance(collection, dask.dataframe.Series):
        records_of = _identity if encode is None else functools.partial(_mapped, encode)
    else:
        raise TypeError(
            f"roxxel.dask.write takes a dask.bag.Bag or a dask.dataframe DataFrame or Series, "
            f"got {type(collection).__name__}"
        )
    return write_parts(
        collection.to_delayed(), records_of, url, storage_options=storage_options, mode=mode, meta=meta,
        shard_bytes=shard_bytes, compression=compression, single_writer=single_writer,
        upload_workers=upload_workers, progress=progress, client=client,
    )


def write_parts(
    parts: Sequence[Any],
    records_of: Callable[[Any], Iterable[Record]],
    url: str,
    *,
    storage_options: Mapping[str, Any] | None = None,
    mode: str = "create",
    meta: Mapping[str, Any] | None = None,
    shard_bytes: int = DEFAULT_SHARD_BYTES,
    compression: str | None = None,
    single_writer: bool = False,
    upload_workers: int = 4,
    progress: Callback | None = None,
    client: Any = None,
    on_part: Callable[[Receipt], object] | None = None,
) -> Manifest:
    """Part ``i`` of the dataset holds the records ``records_of(parts[i])``, written in a
    Dask task; then one commit. ``parts`` are picklable values or Dask ``Delayed`` objects
    (computed first, in the task's inputs), ``records_of`` a picklable function (a
    module-level function or a ``functools.partial`` of one). Any iterable of records
    plugs in: an import's reader, a file list's contents. ``on_part(receipt)`` is called
    on the driver as each part is done (``roxxel pack`` counts its inputs' bytes so). The
    other arguments are :func:`write`'s."""
    dask = _import_dask()
    check_destination(url, mode=mode, storage_options=storage_options, single_writer=single_writer)
    options = dict(storage_options or {})
    writing = {"shard_bytes": shard_bytes, "compression": compression, "upload_workers": upload_workers}
    client = client if client is not None else _default_client()
    topic = f"roxxel-build-{uuid.uuid4().hex}"
    meter = Meter(progress)
    # Without distributed, tasks run in this process (threads) and count straight into the meter.
    local_meter = None if client is not None else meter
    tasks = [
        dask.delayed(_write_task, pure=False)(part, records_of, url, i, options, writing, topic, local_meter)
        for i, part in enumerate(parts)
    ]
    log.info("writing %d parts of %s on %s", len(tasks), redact(url), "distributed" if client else "dask")
    receipts = _run(dask, tasks, client, topic, meter, on_part)
    return commit(url, receipts, parts=len(tasks), mode=mode, meta=meta, storage_options=options,
                  single_writer=single_writer)


def _run(dask: Any, tasks: list[Any], client: Any, topic: str, meter: Meter,
         on_part: Callable[[Receipt], object] | None = None) -> list[Receipt]:
    done = on_part if on_part is not None else (lambda receipt: None)
    if client is None:
        receipts = list(dask.compute(*tasks))
        for receipt in receipts:
            done(receipt)
        return receipts
    from distributed import as_completed

    client.subscribe_topic(topic, lambda event: meter.add(int(event[1])))
    futures = client.compute(tasks)
    try:
        receipts = []
        for future in as_completed(futures, loop=client.loop):
            receipts.append(future.result())
            done(receipts[-1])
        return receipts
    except BaseException:
        client.cancel(futures)
        raise
    finally:
        client.unsubscribe_topic(topic)


@contextlib.contextmanager
def dask_client(*, workers: int | None = None, scheduler: str | None = None) -> Iterator[Any]:
    """A ``distributed.Client``: of a local cluster of ``workers`` processes (one thread
    each), started here and stopped on exit, or of the running scheduler at ``scheduler``
    (left running)."""
    if (workers is None) == (scheduler is None):
        raise ValueError("give exactly one of workers (a local cluster) and scheduler (an address)")
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(f"{_NEEDS} (it includes dask.distributed)") from exc
    if scheduler is not None:
        with distributed.Client(scheduler) as client:
            yield client
        return
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    with distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        yield client


def _default_client() -> Any:
    try:
        from distributed import default_client
    except ImportError:
        return None
    try:
        return default_client()
    except ValueError:  # no client: Dask's own scheduler
        return None


class _WorkerProgress(Callback):
    """Sends the bytes a part uploaded to the driver, as events of the Dask worker."""

    def __init__(self, worker: Any, topic: str) -> None:
        super().__init__()
        self._worker, self._topic = worker, topic

    def set_size(self, size: int) -> None:
        pass  # the driver knows (or not) the total

    def relative_update(self, inc: int = 1) -> None:
        self._worker.log_event(self._topic, int(inc))


def _write_task(
    part: Any,
    records_of: Callable[[Any], Iterable[Record]],
    url: str,
    index: int,
    options: dict[str, Any],
    writing: dict[str, Any],
    topic: str,
    local_meter: Meter | None,
) -> Receipt:
    progress: Callback | None = None
    if local_meter is not None:
        progress = _MeterCallback(local_meter)
    else:
        try:
            from distributed import get_worker

            progress = _WorkerProgress(get_worker(), topic)
        except (ImportError, ValueError):
            progress = None
    return write_part(records_of(part), url, part=index, storage_options=options, progress=progress, **writing)


class _MeterCallback(Callback):
    def __init__(self, meter: Meter) -> None:
        super().__init__()
        self._meter = meter

    def set_size(self, size: int) -> None:
        pass

    def relative_update(self, inc: int = 1) -> None:
        self._meter.add(int(inc))


def _identity(records: Iterable[Record]) -> Iterable[Record]:
    return records


def _mapped(encode: Encode, items: Iterable[Any]) -> Iterable[Record]:
    return (encode(item) for item in items)


def _frame_records(column: str | None, encode: Encode | None, frame: Any) -> Iterable[Record]:
    """A pandas partition's records: its column's values, or each row (a dict) encoded."""
    if encode is None:
        return iter(frame[column])
    names = [str(c) for c in frame.columns]
    rows = (dict(zip(names, values)) for values in frame.itertuples(index=False, name=None))
    return row_records(rows, None, encode)
