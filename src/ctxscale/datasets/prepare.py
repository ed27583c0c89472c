"""Preparation of one paper dataset for one tokenizer family: official constructors, length filter, shot pool and
the fixed test subset, written in the prepared-data format (:mod:`ctxscale.datasets.prepared`).

What :func:`prepare_dataset` does, in order (``eval.py:construct_dataset`` unless said otherwise):

1. Load the train and test splits (:mod:`ctxscale.datasets.hub`; large train splits are subsampled there).
2. Build ``(input, reference)`` with the dataset's constructor (:mod:`ctxscale.datasets.registry`).
3. Drop every example whose ``prefix + input + suffix + reference + separator`` is longer than
   ``max_length_per_example`` tokens (``add_special_tokens=False``), in both splits.
4. Shuffle the kept train examples with ``numpy.random.default_rng(seed).shuffle`` (the official call); the
   n-shot prompt uses the first n, so shots nest across shot counts.
5. Shuffle the kept test examples with a fresh ``numpy.random.default_rng(seed)`` and keep the first
   ``max_eval_samples``: ONE fixed test subset for every shot count. The official code used the global NumPy
   RNG here, so its subset changed with the shot count and the run order (spec §4.5); this is a deliberate,
   documented improvement.

Choices where the paper and the official code are silent or cannot be followed:

- **Shot pool size.** Only the first ``n`` shots of the shuffled pool are ever used (at most 511 in the paper),
  so by default only the first 1024 are written (``shot_pool_size``; 0 keeps the whole filtered pool).
  Filtering and shuffling still run on the whole pool, so the first 1024 shots are the same as with the whole
  pool; the manifest records both counts. Writing the whole pool would take over 1 GB per tokenizer family for
  deepmind-math alone (56 x 300k rows).
- **Test ids** are the row index in the Hugging Face test split, as a string.
- **Fewer test examples than ``max_eval_samples``** after filtering: all are kept, with a warning.

The command line is ``python -m ctxscale.datasets prepare`` (:mod:`ctxscale.datasets.__main__`).
"""

from __future__ import annotations

import logging
import os
from typing import Any, Mapping, Sequence

import numpy as np

from ctxscale.config import schema_defaults
from ctxscale.datasets.hub import load_from_hub, train_subsample_indices
from ctxscale.datasets.prepared import PreparedData, write_prepared
from ctxscale.datasets.registry import DatasetSpec, get_spec
from ctxscale.datasets.tokenizer import load_tokenizer, prompt_token_profile, token_counts, tokenizer_info
from ctxscale.errors import UserError
from ctxscale.provenance import package_versions

log = logging.getLogger(__name__)

# The config's data defaults (the config schema, src/ctxscale/schemas/config.schema.yaml, is their one source).
_DATA_DEFAULTS = schema_defaults("data")
DEFAULT_SEED = _DATA_DEFAULTS["seed"]
DEFAULT_MAX_LENGTH_PER_EXAMPLE = _DATA_DEFAULTS["max_length_per_example"]
DEFAULT_MAX_EVAL_SAMPLES = _DATA_DEFAULTS["max_eval_samples"]
# Not a config key: shot rows kept per prepared dataset, enough for the paper's 511 shots with room.
DEFAULT_SHOT_POOL_SIZE = 1024


def _construct_all(spec: DatasetSpec, rows: Sequence[Mapping[str, Any]], split_role: str) -> list[tuple[str, str]]:
    examples = []
    for i, row in enumerate(rows):
        try:
            input_text, reference = spec.construct(row)
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise UserError(
                f"{spec.name}: {split_role} row {i} does not have the layout of {spec.hf_id} "
                f"({type(exc).__name__}: {exc})"
            ) from None
        examples.append((input_text, reference))
    return examples


def _kept(spec: DatasetSpec, tokenizer, examples: list[tuple[str, str]], limit: int, what: str) -> list[int]:
    counts = token_counts(tokenizer, [spec.example_text(i, r) for i, r in examples], f"{spec.name} {what}")
    return [index for index, count in enumerate(counts) if count <= limit]


def prepare_dataset(
    name: str | DatasetSpec,
    tokenizer,
    out_dir: str | os.PathLike,
    *,
    max_length_per_example: int = DEFAULT_MAX_LENGTH_PER_EXAMPLE,
    max_eval_samples: int = DEFAULT_MAX_EVAL_SAMPLES,
    seed: int = DEFAULT_SEED,
    rows: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    revision: str | None = None,
    shot_pool_size: int = DEFAULT_SHOT_POOL_SIZE,
) -> PreparedData:
    """Prepare one dataset for one tokenizer family and write it to ``out_dir``.

    ``name`` is a registered name (``deepmind-math.<config>`` for deepmind-math) or a
    :class:`DatasetSpec`. ``tokenizer`` is a transformers tokenizer or a directory holding one.
    ``rows={"train": [...], "test": [...]}`` passes the shot-pool and evaluation rows in memory, in
    the Hugging Face row layout of the spec's train and test splits, instead of loading from the Hub
    (tests, synthetic data). ``revision`` overrides the spec's Hub revision. ``shot_pool_size`` caps
    the rows written to ``shots.jsonl`` (0 keeps the whole filtered pool). Returns what was written.
    """
    spec = name if isinstance(name, DatasetSpec) else get_spec(name)
    for label, value, minimum in (
        ("max_length_per_example", max_length_per_example, 1),
        ("max_eval_samples", max_eval_samples, 1),
        ("seed", seed, 0),
        ("shot_pool_size", shot_pool_size, 0),
    ):
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            raise UserError(f"{label} must be an integer >= {minimum}, got {value!r}")
    tokenizer = load_tokenizer(tokenizer)

    if rows is None:
        train_rows, test_rows, source = load_from_hub(spec, revision, seed)
    else:
        if set(rows) != {"train", "test"}:
            raise UserError(f"rows must have exactly the keys 'train' and 'test', got {sorted(rows)}")
        train_rows, test_rows = list(rows["train"]), list(rows["test"])
        source = {
            "loaded_from": "rows",
            "requested_revision": revision,
            "resolved_revision": None,
            "train_split_rows": len(train_rows),
            "test_split_rows": len(test_rows),
        }
        indices = train_subsample_indices(len(train_rows), spec, seed)
        if indices is not None:
            train_rows = [train_rows[i] for i in indices]

    train_examples = _construct_all(spec, train_rows, "train")
    test_examples = _construct_all(spec, test_rows, "test")
    log.info("%s: filtering %d train and %d test examples to <= %d tokens",
             spec.name, len(train_examples), len(test_examples), max_length_per_example)  # fmt: skip
    kept_train = [train_examples[i] for i in _kept(spec, tokenizer, train_examples, max_length_per_example, "train")]
    kept_test_indices = _kept(spec, tokenizer, test_examples, max_length_per_example, "test")

    shot_pool = [{"input": i, "reference": r} for i, r in kept_train]
    np.random.default_rng(seed).shuffle(shot_pool)  # the official shot shuffle; shots nest
    shots = shot_pool[:shot_pool_size] if shot_pool_size else shot_pool

    test_pool = [
        {"id": str(index), "input": test_examples[index][0], "reference": test_examples[index][1]}
        for index in kept_test_indices
    ]
    np.random.default_rng(seed).shuffle(test_pool)  # fresh generator: the subset ignores run order
    test = test_pool[:max_eval_samples]
    if len(test) < max_eval_samples:
        log.warning("%s: only %d of %d test examples remain after the %d-token filter (asked for %d)",
                    spec.name, len(test), len(test_examples), max_length_per_example, max_eval_samples)  # fmt: skip
    if not shots:
        log.warning("%s: no train example fits in %d tokens; only 0-shot prompts are possible",
                    spec.name, max_length_per_example)  # fmt: skip

    manifest = {
        **spec.manifest_format(),
        "counts": {
            "train_split_rows": source["train_split_rows"],
            "train_before_filter": len(train_examples),
            "train_after_filter": len(kept_train),
            "shots_written": len(shots),
            "test_split_rows": source["test_split_rows"],
            "test_before_filter": len(test_examples),
            "test_after_filter": len(test_pool),
            "test_written": len(test),
        },
        "seeds": {"train_subsample": seed, "shot_shuffle": seed, "test_subset": seed},
        "source": {
            "hf_id": spec.hf_id,
            "config": spec.config,
            "revision": source["requested_revision"],
            "resolved_revision": source["resolved_revision"],
            "train_split": spec.train_split,
            "test_split": spec.test_split,
            "loaded_from": source["loaded_from"],
        },
        "tokenizer": tokenizer_info(tokenizer),
        "settings": {
            "max_length_per_example": max_length_per_example,
            "max_eval_samples": max_eval_samples,
            "shot_pool_size": shot_pool_size,
            "length_filter": "len(tokenizer(prefix+input+suffix+reference+separator, add_special_tokens=False).input_ids) <= max_length_per_example",
            "train_subsample": (
                None if spec.train_subsample_above is None
                else f"random.Random(seed).sample(range(n), {spec.train_subsample_size}) if n > {spec.train_subsample_above}"
            ),
            "shot_shuffle": "numpy.random.default_rng(seed).shuffle(filtered train pool); n-shot = first n",
            "test_subset": "numpy.random.default_rng(seed).shuffle(filtered test pool)[:max_eval_samples], the same for every shot count",
        },
        "versions": package_versions(("ctxscale", "datasets", "transformers", "tokenizers", "numpy")),
        "prompt_tokens": prompt_token_profile(tokenizer, shots, test, spec.prefix, spec.suffix, spec.separator),
    }  # fmt: skip
    out = write_prepared(out_dir, shots, test, manifest)
    log.info("%s: wrote %d shots and %d test examples to %s", spec.name, len(shots), len(test), out)
    return PreparedData(shots=shots, test=test, manifest=manifest, directory=out.resolve())
