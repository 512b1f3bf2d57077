"""The read path: a published dataset read through the node-local cache.

``dataset`` is the user-facing :class:`Dataset` (and :func:`open`); ``records`` indexes
records across shards; ``residency`` owns which shards are downloading, cached, mapped
and needed next (with ``catalog``, what they are and where, and ``downloader``, the
background downloads); ``iteration`` walks a planned epoch; ``views`` makes many
records' views at once; ``tokens`` cuts payloads into token windows; ``ranged`` reads
single records by range; ``elastic`` and ``jobstate`` continue an epoch on another
topology; ``typed`` reads a typed dataset's arrays, ``payload`` its payload as a file;
``schedule``, ``mixplan``, ``mixspec``, ``mixture``, ``mixiter``, ``mixjob`` and
``mixstream`` read several datasets as one weighted stream.
"""

from .dataset import Dataset, open
from .mixture import Mixture, mix

__all__ = ["Dataset", "Mixture", "mix", "open"]
