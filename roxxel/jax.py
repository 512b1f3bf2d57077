"""JAX integration: each process's NumPy batches as global ``jax.Array``s.

In a multi-host JAX job every process reads its own rank's batches (``ds.stream`` or
``ds.iter`` with ``rank=jax.process_index()``, ``world_size=jax.process_count()``);
:func:`global_batches` stitches them into arrays sharded over all devices along the
batch axis, with ``jax.make_array_from_process_local_data``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec, Sharding

__all__ = ["batch_sharding", "global_batches"]


def batch_sharding(axis: str = "data") -> NamedSharding:
    """Every device of every process on one mesh axis; batches split along it."""
    mesh = Mesh(np.array(jax.devices()), (axis,))
    return NamedSharding(mesh, PartitionSpec(axis))


def global_batches(
    batches: Iterable[np.ndarray], sharding: Sharding | None = None
) -> Iterator[jax.Array]:
    """Yield one global array per local batch; the global batch axis is
    ``process_count()`` times the local one. ``sharding`` defaults to
    :func:`batch_sharding`. The local batch size must divide evenly over this
    process's devices."""
    sharding = sharding or batch_sharding()
    processes = jax.process_count()
    for local in batches:
        shape = (local.shape[0] * processes, *local.shape[1:])
        yield jax.make_array_from_process_local_data(sharding, local, shape)
