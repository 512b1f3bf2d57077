"""The ``roxxel`` argument parser: commands, their options, help texts and examples."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any, NamedTuple

from .._version import __version__
from ..manifest.compressions import COMPRESSIONS
from .commands import (
    cmd_bench,
    cmd_cache,
    cmd_cp,
    cmd_info,
    cmd_ls,
    cmd_merge,
    cmd_pack,
    cmd_plan,
    cmd_prune,
    cmd_sign,
    cmd_trace_merge,
    cmd_verify,
    cmd_warm,
)
from .options import non_negative, positive, ranks, seconds, size, storage_option

__all__ = ["build_parser"]

_EXAMPLES = {
    "info": "roxxel info s3://my-bucket/wiki",
    "ls": "roxxel ls gs://my-bucket/wiki --json",
    "verify": "roxxel verify s3://my-bucket/wiki --workers 8 --trusted-key publisher.pub",
    "sign": "roxxel sign s3://my-bucket/wiki --key ~/.keys/publisher.pem",
    "warm": "roxxel warm s3://my-bucket/wiki --rank 0-7 --world-size 64 --seed 42 --epoch 0 --limit 500GB",
    "pack": "roxxel pack corpus.jsonl s3://my-bucket/corpus --format jsonl --compression zstd",
    "cp": "roxxel cp s3://my-bucket/wiki gs://other-bucket/wiki",
    "merge": "roxxel merge s3://my-bucket/wiki/part-0 s3://my-bucket/wiki/part-1 s3://my-bucket/wiki",
    "cache": "roxxel cache du --cache-dir /nvme/roxxel",
    "plan": "roxxel plan s3://my-bucket/wiki --seed 42 --epoch 0 --world-size 8 --cache-limit 100GB",
    "prune": "roxxel prune s3://my-bucket/wiki --older-than 7d --delete",
    "bench": "roxxel bench s3://my-bucket/wiki --max-bytes 4GB --trace bench.json",
    "trace-merge": "roxxel trace-merge all.json run.json run.json.*.json",
}


class _Parents(NamedTuple):
    """Options several commands share, as argparse parent parsers."""

    logs: argparse.ArgumentParser
    storage: argparse.ArgumentParser
    json: argparse.ArgumentParser
    cache: argparse.ArgumentParser
    workers: argparse.ArgumentParser


def _common_parsers() -> _Parents:
    logs = argparse.ArgumentParser(add_help=False)
    group = logs.add_argument_group("output")
    group.add_argument("-v", "--verbose", action="count", default=0,
                       help="more log output (-vv: also the cloud libraries'); tracebacks on errors")
    group.add_argument("-q", "--quiet", action="count", default=0,
                       help="no progress, warnings and errors only (-qq: errors only)")
    storage = argparse.ArgumentParser(add_help=False)
    storage.add_argument("-o", "--option", dest="options", metavar="KEY=VALUE", action="append",
                         type=storage_option, default=[],
                         help="a storage option for fsspec (repeatable); the value is parsed as JSON "
                              "if it can be, else taken as a string; nested keys with dots, e.g. "
                              "-o client_kwargs.region_name=us-east-1. Credentials also come from "
                              "the usual environment variables")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print JSON for scripts")
    cache = argparse.ArgumentParser(add_help=False)
    cache.add_argument("--cache-dir", metavar="DIR", default=None,
                       help="the node cache (default: $ROXXEL_CACHE_DIR or ~/.cache/roxxel)")
    workers = argparse.ArgumentParser(add_help=False)
    workers.add_argument("--workers", type=positive, default=4, metavar="N",
                         help="shards transferred in parallel (default: 4)")
    return _Parents(logs=logs, storage=storage, json=as_json, cache=cache, workers=workers)


def _add(sub: Any, name: str, summary: str, description: str, parents: list[argparse.ArgumentParser],
         handler: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    parser = sub.add_parser(
        name, help=summary, description=f"{summary}\n\n{description}".strip(),
        epilog=f"example:\n  {_EXAMPLES[name]}", parents=parents,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, subparser=parser)
    return parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``roxxel`` command."""
    parser = argparse.ArgumentParser(
        prog="roxxel",
        description="Manage roxxel datasets (ROXXEL01 shards plus a JSON manifest, on S3, GCS, "
        "local disk or memory) and node caches.",
        epilog="Run 'roxxel COMMAND --help' for a command's options and an example.",
    )
    from ..read.views import ACCELERATED

    views = "records made in C" if ACCELERATED else "records made in Python: roxxel._cviews is not available"
    parser.add_argument("--version", action="version", version=f"roxxel {__version__} ({views})")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    common = _common_parsers()
    for add_commands in (_add_read_commands, _add_sign_command, _add_warm_command, _add_pack_command,
                         _add_copy_commands,
                         _add_cache_command, _add_plan_command, _add_bench_commands):
        add_commands(sub, common)
    return parser


def _add_read_commands(sub: Any, c: _Parents) -> None:
    """info, ls and verify: reading a dataset."""
    p = _add(sub, "info", "Summarize a dataset and how much of it is in the local cache.",
             "Prints records, shards, stored and raw bytes, compression, meta and the manifest\n"
             "fingerprint. Reads the manifest only.", [c.storage, c.cache, c.json, c.logs], cmd_info)
    p.add_argument("url", help="the dataset URL (its prefix or its manifest.json)")

    p = _add(sub, "ls", "List a dataset's shards, one per line.",
             "Columns: URI, records, stored size in bytes, checksum, and 'cached' or '-'.",
             [c.storage, c.cache, c.json, c.logs], cmd_ls)
    p.add_argument("url", help="the dataset URL")

    p = _add(sub, "verify", "Check every shard's size, checksum and footer.",
             "Downloads each shard (streamed: memory stays bounded, nothing is written to disk)\n"
             "and checks its size, checksum, raw size, offset table and footer against the\n"
             "manifest. With --cache, re-hashes the copies in the node cache instead.\n"
             "With --trusted-key, first checks the manifest's signature: a dataset whose\n"
             "signature is missing, does not verify the manifest (it changed), or is by a\n"
             "key not given is refused before any shard is read (exit status 1).\n"
             "Exit status 1 and one 'BAD <uri>: <problem>' line per bad shard on failure.",
             [c.storage, c.cache, c.workers, c.json, c.logs], cmd_verify)
    p.add_argument("url", help="the dataset URL")
    p.add_argument("--cache", action="store_true", help="check the cached copies instead of the store")
    p.add_argument("--remove-bad", action="store_true",
                   help="with --cache: remove bad cached copies, so they are downloaded again")
    p.add_argument("--trusted-key", dest="trusted_keys", metavar="FILE", action="append", default=None,
                   help="an Ed25519 public key file (PEM or OpenSSH .pub) whose signature of the manifest "
                        "is required (repeatable: any one of them)")

    p = _add(sub, "prune", "List (and with --delete, delete) shard objects no manifest lists.",
             "Failed or killed writers, and overwrites, leave shard objects that no manifest\n"
             "lists. Candidates are objects under the dataset's shards/ with names roxxel\n"
             "gives; a shard listed by the dataset's manifest, or by a manifest above it (a\n"
             "merge in place), is kept. --delete deletes the shards unreferenced for at least\n"
             "--older-than: the shard and the newest of those manifests both that old. Choose\n"
             "it longer than your longest write, cp or merge into the dataset. Without\n"
             "--delete, only lists. Exit status 1 if a deletion failed.",
             [c.storage, c.json, c.logs], cmd_prune)
    p.add_argument("url", help="the dataset URL")
    p.add_argument("--older-than", type=seconds, default=86400.0, metavar="AGE",
                   help="delete only shards unreferenced for at least AGE: 7d, 12h, 30m, 90s or 0 "
                        "(default: 1d)")
    p.add_argument("--delete", action="store_true", help="delete them (default: only list)")


def _add_sign_command(sub: Any, c: _Parents) -> None:
    """sign: a signature of a dataset's manifest."""
    p = _add(sub, "sign", "Sign a dataset's manifest with an Ed25519 private key.",
             "Stores a signature of the manifest's exact bytes, as read now, under the\n"
             "dataset's signatures/ (see the README, 'Signed datasets'). Readers that pass\n"
             "trusted_keys to roxxel.open, or --trusted-key to roxxel verify, then accept it.\n"
             "Refuses a manifest whose shard checksums are not cryptographic. The key file\n"
             "(unencrypted PEM or OpenSSH) is read here and never printed or logged.",
             [c.storage, c.json, c.logs], cmd_sign)
    p.add_argument("url", help="the dataset URL")
    p.add_argument("--key", required=True, metavar="FILE", help="the Ed25519 private key file")


def _add_warm_command(sub: Any, c: _Parents) -> None:
    """warm: filling the node cache."""
    p = _add(sub, "warm", "Fill the node cache with the shards a job will read first.",
             "With --rank and --world-size: the shards of those ranks' plans for --seed and\n"
             "--epoch (as ds.iter plans them), in the order they are first read; --rank takes\n"
             "a list or range (0-7) for the ranks of one node. Without --rank (or with --all):\n"
             "every shard. Skips cached shards; idempotent; safe while training processes\n"
             "read the same cache. With --limit, fetches only what fits under it, in order.",
             [c.storage, c.cache, c.workers, c.json, c.logs], cmd_warm)
    p.add_argument("url", help="the dataset URL, or a mixture document (.json): its sources, in one cache")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--rank", type=ranks, metavar="R", help="rank(s): 3, 0,1,2 or 0-7")
    which.add_argument("--all", action="store_true", help="every shard, in stored order (the default)")
    p.add_argument("--world-size", type=positive, metavar="W", help="number of ranks")
    p.add_argument("--seed", type=non_negative, metavar="S", help="the stream seed (default 0; a mixture's own)")
    p.add_argument("--epoch", type=non_negative, metavar="E", help="the epoch (default 0)")
    p.add_argument("--limit", type=size, metavar="BYTES", help="the cache limit, e.g. 500GB or 1.5TiB")


def _add_pack_command(sub: Any, c: _Parents) -> None:
    """pack: files into a dataset."""
    p = _add(sub, "pack", "Pack files, or another format's dataset, into a dataset and publish it.",
             "Formats: files (each file one record; directories walked in sorted order),\n"
             "jsonl (each non-blank line one record, or --field's value; invalid JSON is an\n"
             "error naming the line), npy (each row of .npy arrays one record; dtype and row\n"
             "shape go to meta), rox (the records of .rox shards of the original Roxxel\n"
             "library); imports, local or in a store (--source-option): mds (a MosaicML\n"
             "directory), litdata (a LitData optimized directory), wds (WebDataset tar\n"
             "shards), parquet. What a record is goes to meta.import (see the README,\n"
             "'Importing'). The manifest is published last: an error publishes nothing.",
             [c.storage, c.json, c.logs], cmd_pack)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="input files or directories")
    p.add_argument("url", help="the dataset URL to create")
    p.add_argument("--format", choices=("files", "jsonl", "npy", "rox", "mds", "litdata", "wds", "parquet"),
                   default="files", help="how inputs become records (default: files)")
    p.add_argument("--shard-bytes", type=size, default="64MiB", metavar="BYTES",
                   help="target shard size (default: 64MiB)")
    p.add_argument("--compression", choices=[name or "none" for name in COMPRESSIONS], default="none",
                   help="shard compression")
    p.add_argument("--mode", choices=("create", "overwrite", "append"), default="create",
                   help="create (default: refuse an existing dataset), overwrite, or append")
    p.add_argument("--meta", metavar="KEY=VALUE", action="append", type=storage_option, default=None,
                   help="a meta entry for the manifest (repeatable; JSON values, dotted keys)")
    p.add_argument("--single-writer", action="store_true",
                   help="publish even on a store that does not enforce conditional writes "
                        "(you promise nothing else writes this dataset meanwhile)")
    imports = p.add_argument_group("imports (jsonl, mds, litdata, wds, parquet)")
    imports.add_argument("--field", metavar="NAME", default=None,
                         help="one field per record: an MDS column, a LitData field, a tar member's "
                              "extension, a Parquet column or a JSON key (default: whole samples)")
    imports.add_argument("--decode", choices=("raw", "natural"), default=None,
                         help="mds, litdata: a field's stored bytes (raw, the default) or its natural "
                              "type (arrays with their dtype in meta; whole samples as JSON)")
    imports.add_argument("--per-member", action="store_true",
                         help="wds: every tar member is a record (default: one record per sample)")
    imports.add_argument("--rows", choices=("json", "arrow"), default=None,
                         help="parquet without --field: each row as a JSON object (default) or an "
                              "Arrow IPC stream")
    imports.add_argument("--source-option", dest="source_options", metavar="KEY=VALUE", action="append",
                         type=storage_option, default=None,
                         help="a storage option for the inputs only (repeatable; merged over -o)")
    engine = p.add_mutually_exclusive_group()
    engine.add_argument("--workers", type=positive, default=None, metavar="N",
                        help="pack on a local Dask cluster of N worker processes (roxxel[dask])")
    engine.add_argument("--scheduler", metavar="ADDRESS", default=None,
                        help="pack on the running Dask scheduler at ADDRESS (tcp://host:8786); its "
                             "workers must see the inputs at the same paths")


def _add_copy_commands(sub: Any, c: _Parents) -> None:
    """cp and merge: datasets between stores."""
    p = _add(sub, "cp", "Copy a dataset between stores, verified and resumable.",
             "Copies every shard (checked against its checksum before it is uploaded, and read\n"
             "back after), then publishes the manifest last. Rerun after an interruption:\n"
             "shards already at the destination are re-hashed and kept. -o applies to both\n"
             "stores; --src-option and --dst-option to one side.",
             [c.storage, c.workers, c.json, c.logs], cmd_cp)
    p.add_argument("src", metavar="SRC_URL", help="the dataset to copy")
    p.add_argument("dst", metavar="DST_URL", help="where to copy it")
    p.add_argument("--src-option", dest="src_options", metavar="KEY=VALUE", action="append",
                   type=storage_option, default=[], help="a storage option for the source only")
    p.add_argument("--dst-option", dest="dst_options", metavar="KEY=VALUE", action="append",
                   type=storage_option, default=[], help="a storage option for the destination only")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset at DST_URL")
    p.add_argument("--single-writer", action="store_true",
                   help="publish even on a store that does not enforce conditional writes "
                        "(you promise nothing else writes this dataset meanwhile)")
    p.add_argument("--sign-with", metavar="FILE", default=None,
                   help="sign the copy with this Ed25519 private key file (without it, the source's "
                        "signature is copied when the manifest's bytes are unchanged)")

    p = _add(sub, "merge", "Combine datasets written in parallel into one manifest.",
             "Sources at or below DEST_URL stay where they are (the manifest refers to them);\n"
             "other sources' shards are copied into DEST_URL/shards/. The same shard object\n"
             "listed twice is kept once; two objects with the same checksum (duplicates) or one\n"
             "object with two checksums (conflict) are errors. Idempotent.",
             [c.storage, c.workers, c.json, c.logs], cmd_merge)
    p.add_argument("sources", nargs="+", metavar="URL", help="the datasets to merge, in order")
    p.add_argument("dest", metavar="DEST_URL", help="where to publish the merged manifest")
    p.add_argument("--meta", metavar="KEY=VALUE", action="append", type=storage_option, default=None,
                   help="the merged meta (default: the sources' meta, which must agree)")
    p.add_argument("--overwrite", action="store_true", help="replace a different dataset at DEST_URL")
    p.add_argument("--single-writer", action="store_true",
                   help="publish even on a store that does not enforce conditional writes "
                        "(you promise nothing else writes this dataset meanwhile)")
    p.add_argument("--sign-with", metavar="FILE", default=None,
                   help="sign the merged manifest with this Ed25519 private key file (no source's "
                        "signature covers a merged manifest)")


def _add_cache_command(sub: Any, c: _Parents) -> None:
    """cache du|ls|gc|clear|verify."""
    p = _add(sub, "cache", "Inspect, clean and check the node cache.",
             "du: bytes per dataset that used the cache. ls: every cached shard.\n"
             "gc: remove temp files of dead processes and shards no noted dataset needs\n"
             "(--refresh re-reads each dataset's manifest first). clear: remove every shard.\n"
             "Shards in use by a process are never removed by gc or clear.\n"
             "verify: re-hash every cached shard and remove those that no longer match what\n"
             "was verified (exit status 1 and one 'BAD <path>: <problem>' line for each).",
             [c.storage, c.cache, c.json, c.logs], cmd_cache)
    p.add_argument("action", choices=("du", "ls", "gc", "clear", "verify"), help="what to do")
    p.add_argument("--refresh", action="store_true",
                   help="gc: re-read the manifests of the noted datasets first (needs their stores)")


def _add_plan_command(sub: Any, c: _Parents) -> None:
    """plan: a dry run of an epoch."""
    p = _add(sub, "plan", "Dry-run an epoch: what each rank fetches, downloads and caches.",
             "For each rank: records, shards, the first shards in fetch order, the stored bytes\n"
             "it downloads and the raw bytes its cache holds at most. With --cache-limit,\n"
             "exit status 1 if the limit is below what ds.iter requires.",
             [c.storage, c.json, c.logs], cmd_plan)
    p.add_argument("url", help="the dataset URL, or a mixture document (.json): per rank and source")
    p.add_argument("--seed", type=non_negative, default=None, metavar="S",
                   help="the stream seed (default 0; a mixture's own)")
    p.add_argument("--epoch", type=non_negative, default=0, metavar="E", help="the epoch (default 0)")
    p.add_argument("--world-size", type=positive, required=True, metavar="W", help="number of ranks")
    p.add_argument("--cache-limit", type=size, metavar="BYTES", help="the cache limit to check")
    p.add_argument("--window", type=positive, default=16, metavar="N", help="shuffle window (default 16)")
    p.add_argument("--lookahead", type=non_negative, default=None, metavar="N",
                   help="prefetched shards (default 4, fewer if --cache-limit needs it)")


def _add_bench_commands(sub: Any, c: _Parents) -> None:
    """bench and trace-merge: where the time goes."""
    p = _add(sub, "bench", "Measure this node against a dataset: the link, a cold and a warm read.",
             "1. link: the dataset's shards as ranged GETs (--part-size, --parallel in flight,\n"
             "   kept-alive connections; presigned GETs on S3), bytes dropped: the best a client\n"
             "   does here. 2. cold: roxxel.open with default options on a fresh cache, then\n"
             "   ds.iter(seed=0). 3. warm: the same on that cache. Each reads one epoch or\n"
             "   --max-bytes, and reports the open, the first record and MB/s apart, as a share\n"
             "   of the link; then what to change. The temporary cache is removed at the end.",
             [c.storage, c.json, c.logs], cmd_bench)
    p.add_argument("url", help="the dataset URL")
    p.add_argument("--max-bytes", type=size, default="2GB", metavar="BYTES",
                   help="read at most about this much in each measurement (default: 2GB)")
    p.add_argument("--part-size", type=size, default="8MiB", metavar="BYTES",
                   help="the link's ranged GETs (default: 8MiB)")
    p.add_argument("--parallel", type=positive, default=32, metavar="N",
                   help="the link's GETs in flight (default: 32)")
    p.add_argument("--scratch-dir", metavar="DIR", default=None,
                   help="where the temporary cache is made (default: the system's temporary "
                        "directory; choose the disk training caches on)")
    p.add_argument("--trace", metavar="PATH", default=None,
                   help="also write a Chrome/Perfetto trace of the run to PATH")

    p = _add(sub, "trace-merge", "Merge trace files of several processes into one.",
             "Trace files come from roxxel.open(..., trace=PATH) or ROXXEL_TRACE=PATH, one per\n"
             "process (rank, DataLoader worker). The merged file shows them all in one view\n"
             "(https://ui.perfetto.dev or chrome://tracing).",
             [c.logs], cmd_trace_merge)
    p.add_argument("out", metavar="OUT", help="the merged trace to write")
    p.add_argument("inputs", nargs="+", metavar="IN", help="trace files to merge")
