"""Building a dataset on many workers (Dask, Ray, any processes) in two phases.

Phase one, anywhere: :func:`write_part` packs and uploads one part's records and returns a
small :class:`Receipt`. Phase two, once: :func:`commit` publishes one manifest listing the
shards of one receipt per part, in part order. Each attempt at a part writes under names
of its own, so retries and speculative copies never overwrite one another, and what a
losing attempt wrote is never listed (``roxxel prune`` removes it later). The engines'
adapters are :func:`roxxel.dask.write` and :class:`roxxel.ray.Datasink`.
"""

from .commit import commit
from .parts import Receipt, write_part

__all__ = ["Receipt", "commit", "write_part"]
