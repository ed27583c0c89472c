"""Fetch a tokenized training corpus of the context-extension stage into ``resources/extension-data/{name}``.

``python -m ctxscale.extension_data --spec JSON --out DIR``

The spec is one entry of the config's ``extension_data`` (``repo_id``, ``revision``, ``files``, ``split``,
``column``). Only the parquet files of the split are fetched (``files``, a glob in the repository), at the
pinned revision, with ``huggingface_hub`` into ``DIR.partial`` and renamed when complete, like a checkpoint
(:func:`ctxscale.download.fetch_snapshot`). Nothing is decoded here: ``ctxscale.extend`` reads the parquet
files memory-mapped, one row group at a time, so a corpus is never materialised in memory.

The paper's corpus, ``emozilla/pg_books-tokenized-bos-eos-chunked-65536`` (PG-19 books tokenized with the
Llama tokenizer, BOS/EOS added, cut into rows of exactly 65,536 tokens), is 136 parquet shards under
``data/``; the hub lists 10K-100K rows, and its parquet conversion's shards are about 140 MB each, so expect
roughly 19 GB on disk (an estimate from the listing; the job's log prints the real size).
"""

from __future__ import annotations

import argparse
import fnmatch
import logging
import sys
from pathlib import Path

from ctxscale.download import fetch_snapshot
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_json_option, setup_logging

log = logging.getLogger("ctxscale.extension_data")


def fetch_corpus(spec: dict, out: Path) -> Path:
    """Download the parquet files of one ``extension_data`` entry into ``out``; returns ``out``."""
    out = Path(out)
    pattern = spec.get("files", "data/*.parquet")
    if out.is_dir() and any(out.rglob("*.parquet")):
        log.info("%s already present at %s", spec["repo_id"], out)
        return out

    def select(files: list[str]) -> list[str]:
        chosen = [f for f in files if fnmatch.fnmatch(f, pattern)]
        if not chosen:
            raise UserError(f"{spec['repo_id']}@{spec.get('revision', 'main')} has no file matching {pattern!r} "
                            "(extension_data.<name>.files)")
        return chosen

    fetch_snapshot(spec["repo_id"], spec.get("revision", "main"), out, select, repo_type="dataset")
    shards = sorted(out.rglob("*.parquet"))
    size = sum(p.stat().st_size for p in shards)
    log.info("%s: %d parquet files, %.2f GB", spec["repo_id"], len(shards), size / 1e9)
    return out


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxscale.extension_data", description=__doc__.splitlines()[0])
    parser.add_argument("--spec", required=True, help="JSON: one entry of the config's extension_data")
    parser.add_argument("--out", required=True, type=Path, help="destination folder")
    args = parser.parse_args(argv)
    setup_logging()
    spec = parse_json_option(args.spec, "--spec")
    if "repo_id" not in spec:
        raise UserError("--spec needs repo_id (the Hugging Face dataset repository)")
    fetch_corpus(spec, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
