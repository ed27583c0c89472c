"""Loading a dataset's train and test splits from the Hugging Face Hub, with the train subsample of the large
splits.

``datasets.load_dataset`` loads parquet data only (current ``datasets`` refuses loading scripts). If a default
revision (:mod:`ctxscale.datasets.registry`) turns out to be script-only, loading retries once on
``refs/convert/parquet`` with a warning; a revision asked for explicitly (``--revision``) is never replaced. The
commit the data came from is read from the ``datasets`` cache path and recorded in the manifest as
``source.resolved_revision``.

Train splits above a size threshold are subsampled with ``random.Random(seed).sample(range(n), k)``: WMT above
300k rows to 300k, deepmind-math above 1M rows to 300k. For deepmind-math this is exactly the official draw
(``random.seed(global_seed); random.sample(...)``); for WMT the official code drew from the advancing global RNG,
which cannot be reproduced, so a seeded draw replaces it. WMT fr-en has 40.8M train rows (about 15 GB of
parquet); ``datasets`` downloads all of it before the 300k subsample, as the official code did.

Loading from the Hub needs the network, or ``HF_DATASETS_OFFLINE=1``/``HF_HUB_OFFLINE=1`` (set before Python
starts) with a warm cache. Failures to reach a dataset are one-line ``error:`` messages naming the dataset and
what to do.
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

from ctxscale.datasets.registry import PARQUET_REVISION, DatasetSpec
from ctxscale.errors import UserError

log = logging.getLogger(__name__)


def train_subsample_indices(n_rows: int, spec: DatasetSpec, seed: int) -> list[int] | None:
    """Row indices of the train subsample, in draw order, or ``None`` when the split is kept whole.

    ``random.Random(seed).sample(range(n_rows), size)``, identical to the official deepmind-math
    draw ``random.seed(seed); random.sample(range(n_rows), size)``.
    """
    if spec.train_subsample_above is None or n_rows <= spec.train_subsample_above:
        return None
    return random.Random(seed).sample(range(n_rows), spec.train_subsample_size)


def _resolved_revision(hf_dataset) -> str | None:
    # datasets caches hub data under .../<config>/<version>/<commit sha>/; read the sha from there.
    for cache_file in getattr(hf_dataset, "cache_files", None) or []:
        parent = Path(cache_file.get("filename", "")).parent.name
        if re.fullmatch(r"[0-9a-f]{40}", parent):
            return parent
    return None


class _ScriptOnlyRevision(Exception):
    pass


def _load_split(spec: DatasetSpec, split: str, revision: str):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    where = f"{spec.name}: {spec.hf_id}" + (f" config {spec.config}" if spec.config else "")
    where += f" split {split} at revision {revision}"
    try:
        return datasets.load_dataset(spec.hf_id, name=spec.config, split=split, revision=revision)
    except DatasetNotFoundError as exc:
        raise UserError(
            f"{where}: not found or gated on the Hugging Face Hub ({_first_line(exc)}); check the id "
            "and revision, or accept the dataset's terms on the Hub and set HF_TOKEN"
        ) from None
    except ConnectionError as exc:
        raise UserError(
            f"{where}: cannot reach the Hugging Face Hub ({_first_line(exc)}); connect to the network, "
            "or set HF_DATASETS_OFFLINE=1 and HF_HUB_OFFLINE=1 with a warm cache (HF_HOME)"
        ) from None
    except RuntimeError as exc:
        if "Dataset scripts are no longer supported" in str(exc):
            raise _ScriptOnlyRevision(str(exc)) from None
        raise UserError(f"{where}: {_first_line(exc)}") from None
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as exc:
        # Gated or missing repos and revisions (huggingface_hub errors are OSErrors), bad configs.
        hint = " (gated datasets need HF_TOKEN)" if "gated" in str(exc).lower() else ""
        raise UserError(f"{where}: {_first_line(exc)}{hint}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def load_from_hub(spec: DatasetSpec, revision: str | None, seed: int) -> tuple[list, list, dict[str, Any]]:
    """The train rows (subsampled when the split is large), the test rows, and where they came from (the
    manifest's ``source`` and the split sizes). ``revision`` overrides the spec's."""
    chosen = revision or spec.revision
    try:
        train = _load_split(spec, spec.train_split, chosen)
    except _ScriptOnlyRevision as exc:
        if revision is not None or chosen == PARQUET_REVISION:
            raise UserError(
                f"{spec.name}: {spec.hf_id} at revision {chosen} has only a loading script ({exc}); "
                f"use --revision {PARQUET_REVISION}"
            ) from None
        log.warning("%s: revision %s is script-only; retrying on %s", spec.name, chosen, PARQUET_REVISION)
        chosen = PARQUET_REVISION
        try:
            train = _load_split(spec, spec.train_split, chosen)
        except _ScriptOnlyRevision as again:
            raise UserError(f"{spec.name}: no parquet data for {spec.hf_id} ({again})") from None
    try:
        test = _load_split(spec, spec.test_split, chosen)
    except _ScriptOnlyRevision as exc:
        raise UserError(f"{spec.name}: {spec.hf_id} at revision {chosen}: {exc}") from None
    source = {
        "loaded_from": "hub",
        "requested_revision": chosen,
        "resolved_revision": _resolved_revision(train),
        "train_split_rows": train.num_rows,
        "test_split_rows": test.num_rows,
    }
    indices = train_subsample_indices(train.num_rows, spec, seed)
    if indices is not None:
        log.info("%s: subsampling train from %d to %d rows", spec.name, train.num_rows, len(indices))
        train = train.select(indices)
    log.info("%s: converting %d train and %d test rows", spec.name, train.num_rows, test.num_rows)
    return train.to_list(), test.to_list(), source

