"""Token streams: fixed-length windows cut from shard payloads, served in a seeded order.

Each shard's payload is read as a flat array of ``dtype`` tokens and cut into
non-overlapping windows of ``seq_len`` tokens; windows never cross a shard boundary, and
a shard's last ``ntokens % seq_len`` tokens (and trailing bytes short of one token) are
not used. Windows are numbered across shards. Epoch ``e`` visits the shards that hold
windows in the order of a keyed permutation of ``(seed, e)``, in groups of
``DEFAULT_WINDOW`` (16) shards, and each group's windows in the staged order of
:class:`roxxel.planner.WindowOrder` (keyed by ``(seed, e, group)``): the group's first
samples come from its first shard alone, the others join one by one within the first
eighth of the group, and the group is then mixed as ``ds.iter``'s windows are (0.96 of a
uniform permutation's mix). So a remote stream's first batch waits for one shard, not
for ``batch_size`` shards from anywhere in the dataset, and a batch never needs more
than a group's shards. Where the manifest gives shards heads (``heads``: the bytes each
head holds), a group is led as a window of ``ds.iter`` is (:mod:`roxxel.planner`, step
6): the windows that lie wholly in the head of its first shard that has any are moved
to the front, and its first samples come from them alone. A first batch that lies in
them is served from the head, checked, before the shard arrives (``lead`` in
:func:`token_batches`); the group's other windows join as before. A local copy
(:class:`roxxel.Roxxel`, which has no manifest) has no heads, so its order is the same
as a remote one's only for a dataset without them (or with ``heads=False``).

Sample ``j`` of the endless stream is the ``j % N``-th sample of epoch ``j // N``, and
step ``s`` is samples ``s*B .. s*B+B-1``, so any step is computed directly: resuming
costs O(#shards + batch), not O(steps). A stream of ``E`` epochs is
the endless one's first ``E*N // B`` steps: a batch may hold the end of one epoch and
the start of the next, and the samples short of a whole batch after the last epoch are
dropped (as Roxxel 0.3.0 drops the bytes short of a batch at the end of its one pass).

Rows within a batch are ordered by their position in the dataset, which lets each
shard's rows be gathered with one vectorized copy; which windows form a batch is what
the seed decides.
"""

from __future__ import annotations

import itertools
from bisect import bisect_right
from collections.abc import Callable, Iterator

import numpy as np
import numpy.typing as npt

from ..permute import Permutation
from ..planner import DEFAULT_WINDOW, WindowOrder

__all__ = ["TokenWindows", "token_batches"]


class TokenWindows:
    """The windows of ``seq_len`` tokens of ``dtype`` in a sequence of shard payloads.

    ``payload(k)`` returns shard ``k``'s payload as a ``uint8`` array; it is only called
    for shards that a batch needs. ``sizes`` are the payload sizes in bytes; ``heads``,
    if given, the bytes of each shard's head (0 for none), whose whole windows lead its
    group (:attr:`head_windows`).
    """

    def __init__(
        self,
        sizes: npt.ArrayLike,
        payload: Callable[[int], np.ndarray],
        seq_len: int,
        dtype: npt.DTypeLike,
        heads: npt.ArrayLike | None = None,
    ) -> None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)) or seq_len < 1:
            raise ValueError(f"seq_len must be a positive integer, got {seq_len!r}")
        self.dtype = np.dtype(dtype)
        self.seq_len = int(seq_len)
        window_bytes = self.seq_len * self.dtype.itemsize
        counts = np.asarray(sizes, dtype=np.int64) // window_bytes
        self.starts = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.starts[1:])
        #: each shard's windows that lie wholly in its head (None: no heads)
        self.head_windows = None
        if heads is not None:
            self.head_windows = np.minimum(np.asarray(heads, dtype=np.int64) // window_bytes, counts)
        self._payload = payload
        self._starts_list: list[int] = self.starts.tolist()
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None
        # (shard, its head's bytes as windows, or a function that waits for those bytes): see lead_with
        self._head: tuple[int, np.ndarray | Callable[[], np.ndarray | None]] | None = None

    def __len__(self) -> int:
        return int(self.starts[-1])

    def _windows_of(self, k: int) -> np.ndarray:
        payload = self._payload(k)
        last = self._last
        if last is not None and last[0] == k and last[1] is payload:
            return last[2]
        # Only the last shard's view is kept, and only while its owner hands out the same
        # payload: the owner decides how long a shard stays mapped.
        view = self._as_windows(payload, int(self.starts[k + 1] - self.starts[k]))
        self._last = (k, payload, view)
        return view

    def _as_windows(self, payload: np.ndarray, count: int) -> np.ndarray:
        """The first ``count`` windows of ``payload`` (``uint8``), as a view."""
        raw = payload[: count * self.seq_len * self.dtype.itemsize]
        return raw.view(self.dtype).reshape(count, self.seq_len)

    def in_head(self, k: int, windows: np.ndarray) -> bool:
        """Whether the global ``windows`` (some) all lie in shard ``k``'s head."""
        if self.head_windows is None or not len(windows):
            return False
        local = windows - self.starts[k]
        return bool(np.all((local >= 0) & (local < self.head_windows[k])))

    def shards_of(self, windows: np.ndarray) -> np.ndarray:
        """The distinct shards holding ``windows``, in ascending order."""
        return np.unique(np.searchsorted(self.starts, windows, side="right") - 1)

    def gather(self, windows: np.ndarray, out: np.ndarray) -> None:
        """Copy the sorted global ``windows`` into the rows of ``out``, shard by shard."""
        starts = self._starts_list
        if len(starts) == 2:  # one shard: its window numbers are global
            self._take(0, windows, out)
            return
        first = bisect_right(starts, int(windows[0])) - 1
        last = bisect_right(starts, int(windows[-1])) - 1
        if first == last:  # the common case: one vectorized copy
            self._take(first, windows - starts[first] if first else windows, out)
            return
        shard_ids = np.searchsorted(self.starts, windows, side="right") - 1
        cuts = np.flatnonzero(shard_ids[1:] != shard_ids[:-1]) + 1
        bounds = [0, *cuts.tolist(), len(windows)]
        for a, b in zip(bounds[:-1], bounds[1:]):
            k = int(shard_ids[a])
            self._take(k, windows[a:b] - starts[k], out[a:b])

    def lead_with(self, k: int, head: Callable[[], np.ndarray | None]) -> None:
        """Serve shard ``k``'s windows from the bytes ``head()`` returns (its head's first
        bytes, checked; it waits for them, or returns None if they could not be had) for
        as long as the windows asked of it lie in them; then from ``payload(k)``."""
        self._head = (k, head)

    def _from_head(self, k: int, local: np.ndarray) -> np.ndarray | None:
        """Shard ``k``'s head as windows, if it is leading and holds every one of ``local``."""
        if self._head is None or self._head[0] != k:
            return None
        last = int(local.max())
        if self.head_windows is None or last >= int(self.head_windows[k]):
            self._head = None  # the shard is read whole from here on
            return None
        got = self._head[1]
        if callable(got):
            first = got()
            if first is None:  # (logged where it was fetched: the shard serves them)
                self._head = None
                return None
            window_bytes = self.seq_len * self.dtype.itemsize
            got = self._as_windows(first, min(len(first) // window_bytes, int(self.starts[k + 1] - self.starts[k])))
            self._head = (k, got)
        if last < len(got):
            return got
        self._head = None
        return None

    def _take(self, k: int, local: np.ndarray, out: np.ndarray) -> None:
        windows = self._from_head(k, local)
        if windows is None:
            windows = self._windows_of(k)
        # mode="clip" skips numpy's buffered bounds-checked path; the indices are in range
        windows.take(local, axis=0, out=out, mode="clip")


class _EpochOrder:
    """Window ids of consecutive samples of the endless stream, a block at a time.

    ``counts`` are the shards' window counts, ``heads`` their windows in their heads (see
    the module; None: no heads). Epoch ``e``'s shard order and group boundaries cost
    O(#shards), once per epoch; a group's staged order O(group^2), once per group; a
    block of samples O(block) wherever it lies, so resuming stays O(1) in the step.
    """

    BLOCK = 1 << 13  # samples planned at once (several steps)

    def __init__(self, counts: np.ndarray, seed: int, group: int = DEFAULT_WINDOW,
                 heads: np.ndarray | None = None) -> None:
        self.counts = np.asarray(counts, dtype=np.int64)
        self.heads = heads
        self.starts = np.zeros(len(self.counts) + 1, dtype=np.int64)
        np.cumsum(self.counts, out=self.starts[1:])
        self.n, self.seed, self.group = int(self.starts[-1]), seed, group
        self._holding = np.flatnonzero(self.counts)  # shards with at least one window
        self._epoch: tuple[int, np.ndarray, np.ndarray] | None = None  # (epoch, shards, group edges)
        self._orders: dict[tuple[int, int], WindowOrder] = {}  # (epoch, group) -> its order

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """Epoch ``epoch``'s shards in visiting order, and where each group starts."""
        if self._epoch is None or self._epoch[0] != epoch:
            shards = self._holding
            if len(shards) > 1:
                shards = shards[Permutation(len(shards), [self.seed, epoch, 0])(np.arange(len(shards)))]
            ends = np.cumsum(self.counts[shards])
            edges = np.concatenate([[0], ends[self.group - 1 :: self.group]])
            if edges[-1] != self.n:
                edges = np.append(edges, self.n)
            self._epoch = (epoch, shards, edges.astype(np.int64))
        return self._epoch[1], self._epoch[2]

    def _group_order(self, epoch: int, g: int, shards: np.ndarray) -> WindowOrder:
        order = self._orders.get((epoch, g))
        if order is None:
            mine = shards[g * self.group : (g + 1) * self.group]
            order = WindowOrder(mine, np.zeros(len(mine), dtype=np.int64), self.counts[mine],
                                key=(self.seed, epoch, 1, g), heads=self.heads)
            if len(self._orders) >= 2:  # the group being read and the next one
                del self._orders[next(iter(self._orders))]
            self._orders[(epoch, g)] = order
        return order

    def _locate(self, sample: int) -> tuple[int, int, int, WindowOrder]:
        """Sample ``sample``'s epoch, group, position in its group, and the group's order."""
        epoch, pos = divmod(sample, self.n)
        shards, edges = self._epoch_plan(epoch)
        g = int(np.searchsorted(edges, pos, side="right")) - 1
        return epoch, g, pos - int(edges[g]), self._group_order(epoch, g, shards)

    def shards_ahead(self, sample: int) -> np.ndarray:
        """The shards samples from ``sample`` on read, in the order they open, to the end
        of the next group of the epoch: the ones to download next."""
        epoch, g, at, order = self._locate(sample)
        giving = order.shards[order.slots_from(at)].tolist()
        shards = self._epoch_plan(epoch)[0]
        if (g + 1) * self.group < len(shards):  # the next group's, as it opens them
            giving += self._group_order(epoch, g + 1, shards).shards.tolist()
        return np.asarray(list(dict.fromkeys(giving)), dtype=np.int64)  # (a head's shard is in two slots)

    def lead(self, sample: int) -> int | None:
        """The shard whose head sample ``sample`` is read from, if its group is led by one
        and the sample lies in the positions its head has alone; else None."""
        _, _, at, order = self._locate(sample)
        return int(order.shards[0]) if order.from_head and at < int(order.stage_starts[1]) else None

    def windows(self, first: int, count: int) -> np.ndarray:
        """Window ids of samples ``first .. first+count-1``."""
        out = np.empty(count, dtype=np.int64)
        filled = 0
        while filled < count:
            _, _, lo, order = self._locate(first + filled)
            take = min(count - filled, len(order) - lo)
            slot, local = order.at(lo, lo + take)
            out[filled : filled + take] = self.starts[order.shards[slot]] + local
            filled += take
        return out


def token_batches(
    windows: TokenWindows,
    batch_size: int,
    seed: int,
    start_step: int = 0,
    *,
    epochs: int | None = 1,
    shard: tuple[int, int] = (0, 1),
    prefetch: Callable[[np.ndarray], None] | None = None,
    start_sample: int = 0,
    lead: Callable[[int], Callable[[], np.ndarray | None] | None] | None = None,
) -> Iterator[np.ndarray]:
    """``(batch_size, seq_len)`` batches from step ``start_step`` on.

    The stream covers ``epochs`` epochs and stops, or never ends with ``epochs=None``.
    Its batches are those of the endless stream, cut off before the first one that would
    reach past the last epoch: ``epochs * len(windows) // (batch_size * world_size)``
    steps per rank, the same on every rank. ``shard=(rank, world_size)`` gives rank
    ``rank`` every ``world_size``-th global batch, so ranks see disjoint batches of one
    shared order. ``prefetch``, if given, is called before the current batch is gathered
    with the shards of the next batch, then those its group reads from there on, in the
    order they open, and the next group's (see the module docstring).

    ``start_sample`` shifts the stream: step ``s`` of rank ``r`` is samples
    ``start_sample + (s*world_size + r)*batch_size`` on, and the stream has
    ``(epochs * len(windows) - start_sample) // (batch_size * world_size)`` steps. A job
    whose ranks have all taken ``s`` steps has read the samples before
    ``start_sample + s*world_size*batch_size``, whatever its topology: passing that as
    ``start_sample`` (and ``start_step=0``) continues on any world size and batch size
    with every sample of the endless stream once (elastic resume).

    ``lead``, if given, is called before anything is prefetched with the shard whose head
    the first batch lies in (see the module), if it does: it returns a function that
    waits for the head's bytes (:meth:`TokenWindows.lead_with`), or None.
    """
    _check_stream_arguments(batch_size, seed, start_step, epochs)
    if isinstance(start_sample, bool) or not isinstance(start_sample, (int, np.integer)) or start_sample < 0:
        raise ValueError(f"start_sample must be an integer >= 0, got {start_sample!r}")
    start_sample = int(start_sample)
    rank, world = shard
    n = len(windows)
    if n == 0:
        raise ValueError(
            f"no complete window of seq_len={windows.seq_len} {windows.dtype} tokens in the data"
        )
    order = _EpochOrder(np.diff(windows.starts), int(seed), heads=windows.head_windows)
    batches = _sorted_batches(order, int(start_step), batch_size, rank, world, start_sample)
    if epochs is not None:
        steps = max(0, int(epochs) * n - start_sample) // (batch_size * world)
        batches = itertools.islice(batches, max(0, steps - int(start_step)))
    picked = next(batches, None)
    step = int(start_step)
    if picked is not None:
        ask_lead(windows, order, start_sample + (step * world + rank) * batch_size, picked, lead)
    while picked is not None:
        upcoming = next(batches, None)
        step += 1
        if prefetch is not None and upcoming is not None:
            ahead = order.shards_ahead(start_sample + (step * world + rank) * batch_size)
            prefetch(np.concatenate([windows.shards_of(upcoming), ahead]))
        out = np.empty((batch_size, windows.seq_len), dtype=windows.dtype)
        windows.gather(picked, out)
        yield out
        picked = upcoming


def ask_lead(windows: TokenWindows, order: _EpochOrder, sample: int, picked: np.ndarray,
             lead: Callable[[int], Callable[[], np.ndarray | None] | None] | None) -> None:
    """Before anything is prefetched: if the windows ``picked`` of ``windows`` (a first
    batch's, from sample ``sample`` on, in ``order``) all lie in the head that leads
    their group, ask ``lead`` for its bytes and serve them from there."""
    if lead is None or windows.head_windows is None:
        return
    k = order.lead(sample)
    if k is not None and windows.in_head(k, picked) and (head := lead(k)) is not None:
        windows.lead_with(k, head)


def _check_stream_arguments(batch_size: int, seed: int, start_step: int, epochs: int | None) -> None:
    checks = [("batch_size", batch_size, 1), ("seed", seed, 0), ("start_step", start_step, 0)]
    if epochs is not None:
        checks.append(("epochs", epochs, 1))
    for name, value, low in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            hint = " (or None for an endless stream)" if name == "epochs" else ""
            raise ValueError(f"{name} must be an integer >= {low}{hint}, got {value!r}")


def _sorted_batches(
    order: _EpochOrder, step: int, batch_size: int, rank: int, world: int, start_sample: int = 0
) -> Iterator[np.ndarray]:
    """This rank's window ids of each step from ``step`` on, each step's ascending.

    Steps are planned several at a time (up to a permutation block's or an epoch's
    worth of samples), so that numpy's per-call cost is shared between them.
    """
    steps = max(1, min(_EpochOrder.BLOCK, order.n) // (batch_size * world))
    while True:
        if world == 1:  # this rank's samples of consecutive steps are consecutive
            picked = order.windows(start_sample + step * batch_size, steps * batch_size).reshape(steps, batch_size)
        else:
            picked = np.stack([order.windows(start_sample + ((step + j) * world + rank) * batch_size, batch_size)
                               for j in range(steps)])
        picked.sort(axis=1)
        yield from picked
        step += steps
