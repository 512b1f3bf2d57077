"""JAX: local NumPy batches become global arrays sharded over the devices (CPU)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import roxxel

SCRIPT = textwrap.dedent(
    """
    import sys
    import jax
    import numpy as np
    import roxxel
    from roxxel.jax import global_batches

    assert len(jax.devices()) == 2, jax.devices()
    with roxxel.open(sys.argv[1], cache_dir=sys.argv[2]) as ds:
        local = list(__import__("itertools").islice(ds.stream(seq_len=16, batch_size=4, seed=3), 3))
        arrays = list(global_batches(iter(local)))
    for a, b in zip(arrays, local):
        assert a.shape == (4, 16) and a.dtype == np.int32
        assert np.array_equal(np.asarray(a), b)
        shards = sorted((s.index[0].start, s.device.id) for s in a.addressable_shards)
        assert shards == [(0, 0), (2, 1)], shards  # rows 0-1 on device 0, rows 2-3 on device 1
    print("OK", len(arrays))
    """
)


def test_global_batches_shard_the_batch_axis_over_devices(tmp_path):
    url = str(tmp_path / "ds")
    with roxxel.Writer(url) as w:
        w.append(np.arange(10_000, dtype=np.int32))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT, url, str(tmp_path / "cache")],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "OK 3"
