"""The paper's 17 evaluation datasets: registry, Hugging Face loading, official constructors,
length filtering, shot pool and the fixed test subset, written in the prepared-data format.

Every dataset of spec §4.1/§4.2 has a :class:`DatasetSpec` in :data:`DATASETS`: where it lives on
the Hugging Face Hub (id, config, revision, train and test split), how a row becomes
``(input, reference)`` (the official ``dataset_constructors.py`` at commit eb9612d, character for
character), the prompt pieces (prefix, suffix, separator ``"\\n\\n"``), the stop strings
(``["\\n\\n"]`` plus the prefix when it is non-empty, as ``eval.py`` does), the metric of
:mod:`ctxscale.metrics`, ``max_new_tokens`` and the task category. deepmind-math has 56 configs;
each is prepared as its own dataset named ``deepmind-math.<config>`` (:data:`DEEPMIND_MATH_CONFIGS`,
:func:`expand_dataset_names`).

:func:`prepare_dataset` writes, for one dataset and one tokenizer family,
``shots.jsonl``, ``test.jsonl`` and ``manifest.json`` (docs/architecture.md, "Prepared data").
The n-shot prompt of :meth:`PreparedData.prompt` is the official ``utils.py`` construction:
``"".join(prefix + s.input + suffix + s.reference + separator for s in shots[:n])
+ (prefix + x.input + suffix).rstrip()``.

What happens, in order (``eval.py:construct_dataset`` unless said otherwise):

1. Load the train and test splits with ``datasets.load_dataset`` (parquet data only: current
   ``datasets`` refuses loading scripts). Train splits above a size threshold are subsampled
   with ``random.Random(seed).sample(range(n), k)``: WMT above 300k rows to 300k, deepmind-math
   above 1M rows to 300k. For deepmind-math this is exactly the official draw
   (``random.seed(global_seed); random.sample(...)``); for WMT the official code drew from the
   advancing global RNG, which cannot be reproduced, so a seeded draw replaces it.
2. Build ``(input, reference)`` with the dataset's constructor.
3. Drop every example whose ``prefix + input + suffix + reference + separator`` is longer than
   ``max_length_per_example`` tokens (``add_special_tokens=False``), in both splits.
4. Shuffle the kept train examples with ``numpy.random.default_rng(seed).shuffle`` (the official
   call); the n-shot prompt uses the first n, so shots nest across shot counts.
5. Shuffle the kept test examples with a fresh ``numpy.random.default_rng(seed)`` and keep the first
   ``max_eval_samples``: ONE fixed test subset for every shot count. The official code used the
   global NumPy RNG here, so its subset changed with the shot count and the run order (spec §4.5);
   this is a deliberate, documented improvement.

Choices where the paper and the official code are silent or cannot be followed:

- **Revisions.** ``main`` everywhere except PIQA, whose ``main`` holds only a loading script: its
  parquet conversion ``refs/convert/parquet`` is used, where the config is named ``default``;
  and deepmind-math, whose ``main`` still carries ``math_dataset.py`` (only 3 configs were converted
  there), so ``refs/convert/parquet`` is used too. If a default revision turns out to be
  script-only, loading retries once on ``refs/convert/parquet`` with a warning. ``--revision``
  overrides all of this. The commit the data came from is read from the ``datasets`` cache path
  and recorded in the manifest as ``source.resolved_revision``.
- **MATH** comes from ``DigitalLearningGmbH/MATH-lighteval`` config ``default`` (``lighteval/MATH``
  was taken down, spec §4.6). Its row order may differ from the original, and with it the shots.
- **deepmind-math strings** are stored on the Hub as the repr of a bytes object,
  ``b'Solve 24 = 1601*c - 1605*c for c.\\n'``. They are unwrapped (``ast.literal_eval``, UTF-8
  decode, one trailing newline removed) before use. The official run, which loaded the same
  data through the script, most likely saw the wrapped form; unwrapping gives the prompts the
  dataset authors intended and does not change ``math_equiv`` (it reads the last number).
- **Label types.** The official constructors compare PIQA's label with ``0``, SIQA's with ``'1'``
  and ``'2'``, and parse WinoGrande's and HellaSwag's with ``int``. The label is normalised first
  (``int`` for PIQA, ``str`` for SIQA) so a parquet mirror that stores the other type gives the
  same letters instead of silently mapping everything to the last option.
- **Shot pool size.** Only the first ``n`` shots of the shuffled pool are ever used (at most 511 in
  the paper), so by default only the first 1024 are written (``shot_pool_size``; 0 keeps the whole
  filtered pool). Filtering and shuffling still run on the whole pool, so the first 1024 shots
  are the same as with the whole pool; the manifest records both counts. Writing the whole pool
  would take over 1 GB per tokenizer family for deepmind-math alone (56 x 300k rows).
- **Test ids** are the row index in the Hugging Face test split, as a string.
- **Fewer test examples than ``max_eval_samples``** after filtering: all are kept, with a warning.
- **WMT fr-en** has 40.8M train rows (about 15 GB of parquet); ``datasets`` downloads all of it
  before the 300k subsample, as the official code did.

Command line (one workflow step)::

    python -m ctxscale.datasets prepare --dataset NAME --tokenizer DIR --out DIR
        [--max-length-per-example 256] [--max-eval-samples 250] [--seed 31337]
        [--revision REV] [--shot-pool-size 1024]
    python -m ctxscale.datasets list [--deepmind-math-configs all|C1,C2,...]

Loading from the Hub needs the network, or ``HF_DATASETS_OFFLINE=1``/``HF_HUB_OFFLINE=1`` (set
before Python starts) with a warm cache. Failures to reach a dataset are one-line ``error:``
messages naming the dataset and what to do.
"""

from __future__ import annotations

import argparse
import ast
import bisect
import dataclasses
import json
import logging
import os
import random
import re
import string
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from ctxscale.config import schema_defaults
from ctxscale.errors import UserError
from ctxscale.files import atomic_write
from ctxscale.provenance import package_versions

__all__ = [
    "DATASETS",
    "DEEPMIND_MATH_CONFIGS",
    "DatasetSpec",
    "PreparedData",
    "TASK_CATEGORIES",
    "expand_dataset_names",
    "get_spec",
    "main",
    "prepare_dataset",
    "load_tokenizer",
    "tokenizer_info",
    "read_prepared",
    "train_subsample_indices",
    "write_prepared",
]

log = logging.getLogger(__name__)

TASK_CATEGORIES = ("arithmetic", "common-sense", "translation")
SEPARATOR = "\n\n"
# The config's data defaults (the config schema, src/ctxscale/schemas/config.schema.yaml, is their one source).
_DATA_DEFAULTS = schema_defaults("data")
DEFAULT_SEED = _DATA_DEFAULTS["seed"]
DEFAULT_MAX_LENGTH_PER_EXAMPLE = _DATA_DEFAULTS["max_length_per_example"]
DEFAULT_MAX_EVAL_SAMPLES = _DATA_DEFAULTS["max_eval_samples"]
# Not a config key: shot rows kept per prepared dataset, enough for the paper's 511 shots with room.
DEFAULT_SHOT_POOL_SIZE = 1024
PARQUET_REVISION = "refs/convert/parquet"

SHOTS_FILE = "shots.jsonl"
TEST_FILE = "test.jsonl"
MANIFEST_FILE = "manifest.json"
MANIFEST_KEYS = (
    "dataset", "task", "prefix", "suffix", "separator", "stop", "metric", "max_new_tokens",
    "counts", "seeds", "source", "tokenizer",
)  # fmt: skip

_LETTERS = list(string.ascii_uppercase)
_TOKENIZE_BATCH = 4096


# =========================================================================== constructors
# Each maps one Hugging Face row to (input, reference) exactly as the official
# dataset_constructors.py does; comments note where a quirk is kept on purpose.


def gsm_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    # The reference is the whole worked answer ending in "#### n"; math_equiv reads its last number.
    return row["question"], row["answer"]


def math_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    return row["problem"], row["solution"]


def unwrap_bytes_repr(value: str) -> str:
    """``"b'-6\\\\n'"`` (the repr of a bytes object, as deepmind/math_dataset stores it) -> ``"-6"``."""
    if len(value) >= 3 and value[0] == "b" and value[1] in "'\"" and value[-1] == value[1]:
        try:
            decoded = ast.literal_eval(value)
        except (SyntaxError, ValueError):
            return value
        if isinstance(decoded, bytes):
            text = decoded.decode("utf-8")
            return text[:-1] if text.endswith("\n") else text
    return value


def deepmind_math_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    return unwrap_bytes_repr(row["question"]), unwrap_bytes_repr(row["answer"])


def aqua_rat_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    # Options already carry their letter ("A)125"); each goes on its own line.
    question = row["question"]
    for option in row["options"]:
        question += f"\n{option}"
    return question, row["correct"]


def _lettered_choices_constructor(question: str, row: Mapping[str, Any]) -> tuple[str, str]:
    # Letters are assigned by position; numeric answer keys "1".."5" map to A..E.
    for label, text in zip(_LETTERS, row["choices"]["text"], strict=False):
        question += f"\n{label}. {text}"
    answer_key = row["answerKey"]
    answer = answer_key if answer_key in _LETTERS else _LETTERS[int(answer_key) - 1]
    return question, answer


def arc_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    return _lettered_choices_constructor(row["question"], row)


def openbookqa_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    return _lettered_choices_constructor(row["question_stem"], row)


def commonsenseqa_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    # Unlike ARC, the dataset's own labels are printed.
    question = row["question"]
    choices = row["choices"]
    for label, text in zip(choices["label"], choices["text"], strict=False):
        question += f"\n{label}. {text}"
    return question, row["answerKey"]


def piqa_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    text = f"{row['goal']}\nPick one of the two options:\nA. {row['sol1']}\nB. {row['sol2']}"
    return text, "A" if int(row["label"]) == 0 else "B"


def siqa_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    text = (
        f"{row['context']} {row['question']}\nA. {row['answerA']}\nB. {row['answerB']}"
        f"\nC. {row['answerC']}"
    )
    label = str(row["label"])
    return text, "A" if label == "1" else "B" if label == "2" else "C"


def hellaswag_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    question = f"Read the sentence and select the best ending:\n{row['ctx']}"
    for label, ending in zip(_LETTERS, row["endings"], strict=False):
        question += f"\n{label}. {ending}"
    return question, chr(ord("@") + (int(row["label"]) + 1))


def winogrande_constructor(row: Mapping[str, Any]) -> tuple[str, str]:
    text = (
        f"{row['sentence']}\nPick A or B to fill in the blank:\nA. {row['option1']}"
        f"\nB. {row['option2']}"
    )
    return text, "A" if int(row["answer"]) == 1 else "B"


def _wmt_constructor(source_language: str, language_name: str) -> Callable[[Mapping[str, Any]], tuple[str, str]]:
    def constructor(row: Mapping[str, Any]) -> tuple[str, str]:
        pair = row["translation"]
        return f"{language_name}: {pair[source_language]}\nEnglish:", pair["en"]

    constructor.__name__ = f"wmt14_{source_language}_en_constructor"
    return constructor


# =========================================================================== registry


@dataclass(frozen=True)
class DatasetSpec:
    """Everything needed to load, build, prompt and score one dataset."""

    name: str
    task: str  # "arithmetic" | "common-sense" | "translation"
    hf_id: str
    config: str | None
    revision: str
    train_split: str
    test_split: str
    constructor: Callable[[Mapping[str, Any]], tuple[str, str]]
    prefix: str
    suffix: str
    metric: str
    max_new_tokens: int
    separator: str = SEPARATOR
    # Train splits with more rows than this are subsampled to train_subsample_size rows.
    train_subsample_above: int | None = None
    train_subsample_size: int | None = None

    @property
    def stop(self) -> list[str]:
        """Stop strings: the separator, plus the prefix when it is non-empty (official ``eval.py``)."""
        return [self.separator, self.prefix] if self.prefix else [self.separator]

    def manifest_format(self) -> dict[str, Any]:
        """The manifest's fields that fix prompts and scoring: dataset, task, prompt parts, stops, metric."""
        return {"dataset": self.name, "task": self.task, "prefix": self.prefix, "suffix": self.suffix,
                "separator": self.separator, "stop": self.stop, "metric": self.metric,
                "max_new_tokens": self.max_new_tokens}

    def construct(self, row: Mapping[str, Any]) -> tuple[str, str]:
        """``(input, reference)`` for one Hugging Face row."""
        return self.constructor(row)

    def example_text(self, input_text: str, reference: str) -> str:
        """The text whose token count the length filter checks (one complete shot)."""
        return self.prefix + input_text + self.suffix + reference + self.separator

    def prompt(self, shots: Iterable[Mapping[str, str]], query_input: str) -> str:
        """The official prompt: the shot block, then the query with its trailing space stripped."""
        return build_prompt(self.prefix, self.suffix, self.separator, shots, query_input)


def build_prompt(
    prefix: str, suffix: str, separator: str, shots: Iterable[Mapping[str, str]], query_input: str
) -> str:
    """``"".join(prefix+input+suffix+reference+separator for shots) + (prefix+query+suffix).rstrip()``."""
    block = "".join(prefix + s["input"] + suffix + s["reference"] + separator for s in shots)
    return block + (prefix + query_input + suffix).rstrip()


def _spec(name: str, task: str, hf_id: str, config: str | None, constructor, *, test_split: str,
          metric: str, max_new_tokens: int, prefix: str = "Question: ", suffix: str = "\nAnswer:",
          revision: str = "main", **extra) -> DatasetSpec:  # fmt: skip
    return DatasetSpec(
        name=name, task=task, hf_id=hf_id, config=config, revision=revision, train_split="train",
        test_split=test_split, constructor=constructor, prefix=prefix, suffix=suffix,
        metric=metric, max_new_tokens=max_new_tokens, **extra,
    )  # fmt: skip


_WMT_LANGUAGES = {"cs": "Czech", "de": "German", "fr": "French", "hi": "Hindi", "ru": "Russian"}

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        # Arithmetic reasoning: generation, scored on the last number.
        _spec("gsm", "arithmetic", "openai/gsm8k", "main", gsm_constructor, test_split="test",
              metric="math_equiv", max_new_tokens=400, suffix="\nAnswer: "),
        _spec("math", "arithmetic", "DigitalLearningGmbH/MATH-lighteval", "default", math_constructor,
              test_split="test", metric="math_equiv", max_new_tokens=400, suffix="\nAnswer: "),
        _spec("aqua-rat", "arithmetic", "deepmind/aqua_rat", "raw", aqua_rat_constructor,
              test_split="test", metric="mc_match", max_new_tokens=5,
              suffix="Return a letter only.\nAnswer:"),  # no newline before "Return": official quirk
        _spec("deepmind-math", "arithmetic", "deepmind/math_dataset", None, deepmind_math_constructor,
              test_split="test", metric="math_equiv", max_new_tokens=400, suffix="\nAnswer: ",
              revision=PARQUET_REVISION, train_subsample_above=1_000_000,
              train_subsample_size=300_000),
        # Common-sense reasoning: one letter; datasets without test labels use validation.
        _spec("arc-easy", "common-sense", "allenai/ai2_arc", "ARC-Easy", arc_constructor,
              test_split="test", metric="mc_match", max_new_tokens=5),
        _spec("arc-challenge", "common-sense", "allenai/ai2_arc", "ARC-Challenge", arc_constructor,
              test_split="test", metric="mc_match", max_new_tokens=5),
        _spec("openbookqa", "common-sense", "allenai/openbookqa", "main", openbookqa_constructor,
              test_split="test", metric="mc_match", max_new_tokens=5),
        _spec("commonsenseqa", "common-sense", "tau/commonsense_qa", None, commonsenseqa_constructor,
              test_split="validation", metric="mc_match", max_new_tokens=1),
        _spec("piqa", "common-sense", "ybisk/piqa", "default", piqa_constructor,
              test_split="validation", metric="mc_match", max_new_tokens=5,
              revision=PARQUET_REVISION),
        _spec("siqa", "common-sense", "lighteval/siqa", None, siqa_constructor,
              test_split="validation", metric="mc_match", max_new_tokens=5),
        _spec("hellaswag", "common-sense", "Rowan/hellaswag", None, hellaswag_constructor,
              test_split="validation", metric="mc_match", max_new_tokens=5),
        _spec("winogrande", "common-sense", "allenai/winogrande", "winogrande_xl",
              winogrande_constructor, test_split="validation", metric="mc_match", max_new_tokens=5),
        # Machine translation into English: no prefix or suffix, BLEU-4.
        *(
            _spec(f"wmt14-{code}-en", "translation", "wmt/wmt14", f"{code}-en",
                  _wmt_constructor(code, language), test_split="test", metric="bleu_4",
                  max_new_tokens=256, prefix="", suffix="", train_subsample_above=300_000,
                  train_subsample_size=300_000)
            for code, language in _WMT_LANGUAGES.items()
        ),
    ]
}  # fmt: skip

# All configs of deepmind/math_dataset (get_dataset_config_names order), each its own dataset.
DEEPMIND_MATH_CONFIGS: tuple[str, ...] = (
    "algebra__linear_1d", "algebra__linear_1d_composed", "algebra__linear_2d",
    "algebra__linear_2d_composed", "algebra__polynomial_roots", "algebra__polynomial_roots_composed",
    "algebra__sequence_next_term", "algebra__sequence_nth_term", "arithmetic__add_or_sub",
    "arithmetic__add_or_sub_in_base", "arithmetic__add_sub_multiple", "arithmetic__div",
    "arithmetic__mixed", "arithmetic__mul", "arithmetic__mul_div_multiple",
    "arithmetic__nearest_integer_root", "arithmetic__simplify_surd", "calculus__differentiate",
    "calculus__differentiate_composed", "comparison__closest", "comparison__closest_composed",
    "comparison__kth_biggest", "comparison__kth_biggest_composed", "comparison__pair",
    "comparison__pair_composed", "comparison__sort", "comparison__sort_composed",
    "measurement__conversion", "measurement__time", "numbers__base_conversion",
    "numbers__div_remainder", "numbers__div_remainder_composed", "numbers__gcd",
    "numbers__gcd_composed", "numbers__is_factor", "numbers__is_factor_composed",
    "numbers__is_prime", "numbers__is_prime_composed", "numbers__lcm", "numbers__lcm_composed",
    "numbers__list_prime_factors", "numbers__list_prime_factors_composed", "numbers__place_value",
    "numbers__place_value_composed", "numbers__round_number", "numbers__round_number_composed",
    "polynomials__add", "polynomials__coefficient_named", "polynomials__collect",
    "polynomials__compose", "polynomials__evaluate", "polynomials__evaluate_composed",
    "polynomials__expand", "polynomials__simplify_power", "probability__swr_p_level_set",
    "probability__swr_p_sequence",
)  # fmt: skip

_DEEPMIND = "deepmind-math"


def get_spec(name: str) -> DatasetSpec:
    """The spec of a registered dataset or of one deepmind-math config (``deepmind-math.<config>``)."""
    if name in DATASETS and name != _DEEPMIND:
        return DATASETS[name]
    if name == _DEEPMIND:
        raise UserError(
            "deepmind-math has 56 configs, each prepared on its own: use deepmind-math.<config>, "
            "e.g. deepmind-math.algebra__linear_1d"
        )
    family, _, config = name.partition(".")
    if family == _DEEPMIND:
        if config not in DEEPMIND_MATH_CONFIGS:
            raise UserError(f"unknown deepmind-math config {config!r}; see DEEPMIND_MATH_CONFIGS")
        return dataclasses.replace(DATASETS[_DEEPMIND], name=name, config=config)
    raise UserError(f"unknown dataset {name!r}; known: {', '.join(DATASETS)}")


def expand_dataset_names(
    names: Iterable[str], deepmind_math_configs: str | Sequence[str] = "all"
) -> list[str]:
    """Dataset names to prepare: ``deepmind-math`` becomes one ``deepmind-math.<config>`` per config.

    ``deepmind_math_configs`` is ``"all"`` or a list of config names; names that already name a
    config are kept. Unknown names raise ``UserError``; duplicates are dropped, order is kept.
    """
    if isinstance(deepmind_math_configs, str):
        if deepmind_math_configs != "all":
            raise UserError(f"deepmind_math_configs must be 'all' or a list of configs, got {deepmind_math_configs!r}")
        configs = list(DEEPMIND_MATH_CONFIGS)
    else:
        configs = list(deepmind_math_configs)
        unknown = [c for c in configs if c not in DEEPMIND_MATH_CONFIGS]
        if unknown:
            raise UserError(f"unknown deepmind-math config(s): {', '.join(unknown)}")
    expanded: list[str] = []
    for name in names:
        candidates = [f"{_DEEPMIND}.{c}" for c in configs] if name == _DEEPMIND else [name]
        for candidate in candidates:
            get_spec(candidate)  # validates
            if candidate not in expanded:
                expanded.append(candidate)
    return expanded


# =========================================================================== prepared-data files


@dataclass(frozen=True)
class PreparedData:
    """The three files of one prepared dataset."""

    shots: list[dict[str, str]]
    test: list[dict[str, str]]
    manifest: dict[str, Any]

    def shots_for(self, row_id: str | None, n_shots: int) -> list[dict[str, str]]:
        """The ``n_shots`` shots of one test instance (:func:`shots_for`)."""
        return shots_for(self.manifest, self.shots, row_id, n_shots)

    def prompt(self, query_input: str, n_shots: int, row_id: str | None = None) -> str:
        """The official n-shot prompt for one query (its shots: :meth:`shots_for`)."""
        m = self.manifest
        return build_prompt(m["prefix"], m["suffix"], m["separator"], self.shots_for(row_id, n_shots), query_input)


SHOT_ORDERS = ("nested", "per-instance")


def shots_for(manifest: Mapping[str, Any], shots: Sequence[dict[str, str]], row_id: str | None,
              n_shots: int) -> list[dict[str, str]]:
    """The ``n_shots`` shots of one test instance: the pool's first n (``shot_order`` nested, the paper's),
    or the first n of the instance's own order (``per-instance``, :func:`instance_shot_order`)."""
    if not 0 <= n_shots <= len(shots):
        raise UserError(f"{manifest['dataset']}: {n_shots} shots requested, the pool has {len(shots)}")
    order = shot_order_of(manifest)
    if order["kind"] == "nested":
        return list(shots[:n_shots])
    if row_id is None:
        raise UserError(f"{manifest['dataset']}: per-instance shots need the test instance's id")
    return [shots[i] for i in instance_shot_order(order["seed"], row_id, len(shots))[:n_shots]]


def shot_order_of(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest's shot order: ``{"kind": "nested"}`` (no ``shot_order`` field: every prepared dataset of
    the paper) or ``{"kind": "per-instance", "seed": S}`` (the miniature's generated datasets)."""
    order = manifest.get("shot_order") or {"kind": "nested"}
    if order.get("kind") not in SHOT_ORDERS:
        raise UserError(f"{manifest.get('dataset')}: shot_order kind must be one of {', '.join(SHOT_ORDERS)}")
    if order["kind"] == "per-instance" and not isinstance(order.get("seed"), int):
        raise UserError(f"{manifest.get('dataset')}: a per-instance shot_order needs an integer seed")
    return dict(order)


def instance_shot_order(seed: int, row_id: str, pool_size: int) -> list[int]:
    """A test instance's own order of the shot pool: a permutation drawn from ``(seed, crc32(id))``.

    Its first n rows are the instance's n shots, so shots still nest across shot counts for each instance,
    and the draw depends on nothing but the seed and the id (not on which instances run, or in what order).
    """
    stream = np.random.default_rng([int(seed), zlib.crc32(row_id.encode("utf-8"))])
    return stream.permutation(pool_size).tolist()


def _jsonl(rows: Iterable[Mapping[str, Any]]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _check_rows(rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...], what: str) -> list[dict[str, str]]:
    checked = []
    for i, row in enumerate(rows):
        if set(row) != set(keys) or not all(isinstance(row[k], str) for k in keys):
            raise ValueError(f"{what} row {i} must have exactly the string fields {keys}, got {dict(row)!r}")
        checked.append({k: row[k] for k in keys})
    return checked


_UNSET = object()


def write_prepared(
    out_dir: str | os.PathLike,
    shots: Sequence[Mapping[str, str]],
    test: Sequence[Mapping[str, str]],
    manifest: Mapping[str, Any],
    *,
    tokenizer: Any = _UNSET,
) -> Path:
    """Write ``shots.jsonl``, ``test.jsonl`` and ``manifest.json`` atomically; return the directory.

    Shot rows are ``{"input", "reference"}``, test rows ``{"id", "input", "reference"}``, all strings;
    the manifest must have every key of :data:`MANIFEST_KEYS` (``tokenizer=...`` sets or replaces its
    ``"tokenizer"`` entry). Test ids must be unique. The manifest is written last, so its presence
    marks a complete directory.
    """
    if tokenizer is not _UNSET:
        manifest = {**manifest, "tokenizer": tokenizer}
    shots = _check_rows(shots, ("input", "reference"), "shot")
    test = _check_rows(test, ("id", "input", "reference"), "test")
    ids = [row["id"] for row in test]
    if len(set(ids)) != len(ids):
        raise ValueError("test row ids must be unique")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ValueError(f"manifest is missing {', '.join(missing)}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST_FILE).unlink(missing_ok=True)  # an old manifest must not vouch for new data
    atomic_write(out / SHOTS_FILE, _jsonl(shots))
    atomic_write(out / TEST_FILE, _jsonl(test))
    atomic_write(out / MANIFEST_FILE, json.dumps(dict(manifest), indent=2, ensure_ascii=False) + "\n")
    return out


def read_prepared(data_dir: str | os.PathLike) -> PreparedData:
    """Read a directory written by :func:`write_prepared` (or :func:`prepare_dataset`)."""
    directory = Path(data_dir)
    paths = {name: directory / name for name in (SHOTS_FILE, TEST_FILE, MANIFEST_FILE)}
    absent = [name for name, path in paths.items() if not path.is_file()]
    if absent:
        raise UserError(f"{directory} is not a prepared dataset: missing {', '.join(absent)}")
    try:
        manifest = json.loads(paths[MANIFEST_FILE].read_text(encoding="utf-8"))
        shots = [json.loads(line) for line in paths[SHOTS_FILE].read_text(encoding="utf-8").splitlines() if line]
        test = [json.loads(line) for line in paths[TEST_FILE].read_text(encoding="utf-8").splitlines() if line]
    except json.JSONDecodeError as exc:
        raise UserError(f"{directory}: corrupt prepared-data file ({exc})") from None
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise UserError(f"{paths[MANIFEST_FILE]} is missing {', '.join(missing)}")
    return PreparedData(shots=shots, test=test, manifest=manifest)


# =========================================================================== preparation


def train_subsample_indices(n_rows: int, spec: DatasetSpec, seed: int) -> list[int] | None:
    """Row indices of the train subsample, in draw order, or ``None`` when the split is kept whole.

    ``random.Random(seed).sample(range(n_rows), size)``, identical to the official deepmind-math
    draw ``random.seed(seed); random.sample(range(n_rows), size)``.
    """
    if spec.train_subsample_above is None or n_rows <= spec.train_subsample_above:
        return None
    return random.Random(seed).sample(range(n_rows), spec.train_subsample_size)


def load_tokenizer(tokenizer, *, hub: bool = False):
    """A transformers tokenizer from a directory (a user error, in one line, when there is none), or
    ``tokenizer`` itself when it already is one: the one tokenizer loader of every step. With ``hub``, a name
    that is not a directory is a Hugging Face repository id (``ctxscale ingest --tokenizer my-org/my-model``)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        if not path.is_dir() and not hub:
            raise UserError(f"tokenizer directory {path} does not exist")
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if not callable(tokenizer):
        raise UserError(f"tokenizer must be a directory or a transformers tokenizer, got {type(tokenizer).__name__}")
    return tokenizer


def tokenizer_info(tokenizer) -> dict[str, Any]:
    """What a manifest records of the tokenizer its token counts come from."""
    return {
        "name": getattr(tokenizer, "name_or_path", None) or None,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer) if hasattr(tokenizer, "__len__") else None,
    }


def _token_counts(tokenizer, texts: Sequence[str], what: str) -> list[int]:
    counts: list[int] = []
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        batch = list(texts[start : start + _TOKENIZE_BATCH])
        # Same call as the official filter; masks and type ids are not needed (1.5x faster).
        encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        counts.extend(len(ids) for ids in encoded["input_ids"])
        if len(texts) > 10 * _TOKENIZE_BATCH and (start // _TOKENIZE_BATCH) % 10 == 0:
            log.info("%s: tokenized %d / %d", what, min(start + _TOKENIZE_BATCH, len(texts)), len(texts))
    return counts


def prompt_token_profile(
    tokenizer, shots: Sequence[Mapping[str, str]], test: Sequence[Mapping[str, str]],
    prefix: str, suffix: str, separator: str, per_instance: bool = False,
) -> dict[str, Any]:
    """Token counts that bound every prompt length, for the GPU plan (:mod:`ctxscale.plan`).

    ``shot_block[k]``: tokens of the first k shots as one block (the block tokenized once, cut at each
    shot's end through the offset mapping, so merges inside the block count as lm-eval sees them);
    ``max_query``: tokens of the longest ``(prefix + input + suffix).rstrip()``; ``bos``: tokens the
    tokenizer adds in front (what the backends add). A prompt of k shots then has at most
    ``bos + shot_block[k] + max_query`` tokens, up to merges at the one block/query boundary. With
    ``per_instance`` shot orders the block is of the k longest shots, which bounds every instance's k.
    """
    block, ends = "", []
    if per_instance:  # any k shots may be drawn: bound by the k longest, in that order
        lengths = _token_counts(tokenizer, [prefix + s["input"] + suffix + s["reference"] + separator for s in shots],
                                "shots")
        shots = [shot for _, shot in sorted(zip(lengths, shots), key=lambda pair: pair[0], reverse=True)]
    for shot in shots:
        block += prefix + shot["input"] + suffix + shot["reference"] + separator
        ends.append(len(block))
    counts = [0]
    if block:
        if getattr(tokenizer, "is_fast", False):
            offsets = tokenizer(block, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            starts = [start for start, _ in offsets]
            # tokens that start before a shot's end: a token straddling the boundary counts (upper bound)
            counts += [bisect.bisect_left(starts, end) for end in ends]
        else:  # slow tokenizers have no offsets: sum of the shots tokenized apart
            per_shot = _token_counts(tokenizer, [block[a:b] for a, b in zip([0, *ends], ends)], "shots")
            for n in per_shot:
                counts.append(counts[-1] + n)
    queries = [(prefix + row["input"] + suffix).rstrip() for row in test]
    max_query = max(_token_counts(tokenizer, queries, "queries"), default=0)
    bos = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return {"shot_block": counts, "max_query": max_query, "bos": bos}


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


def _load_from_hub(spec: DatasetSpec, revision: str | None, seed: int) -> tuple[list, list, dict[str, Any]]:
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


def _kept(spec: DatasetSpec, tokenizer, examples: list[tuple[str, str]], limit: int, what: str) -> list[int]:
    counts = _token_counts(tokenizer, [spec.example_text(i, r) for i, r in examples], f"{spec.name} {what}")
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
        train_rows, test_rows, source = _load_from_hub(spec, revision, seed)
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
    return PreparedData(shots=shots, test=test, manifest=manifest)


# =========================================================================== command line


def _parse_configs(value: str) -> str | list[str]:
    return "all" if value == "all" else [c for c in value.split(",") if c]


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ctxscale.datasets",
        description="Prepare the paper's evaluation datasets (shot pool, fixed test subset, manifest).",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    prepare = commands.add_parser("prepare", help="prepare one dataset for one tokenizer")
    prepare.add_argument("--dataset", required=True, help="dataset name, e.g. gsm or deepmind-math.algebra__linear_1d")
    prepare.add_argument("--tokenizer", required=True, help="directory of a Hugging Face tokenizer")
    prepare.add_argument("--out", required=True, help="output directory (shots.jsonl, test.jsonl, manifest.json)")
    prepare.add_argument("--max-length-per-example", type=int, default=DEFAULT_MAX_LENGTH_PER_EXAMPLE)
    prepare.add_argument("--max-eval-samples", type=int, default=DEFAULT_MAX_EVAL_SAMPLES)
    prepare.add_argument("--seed", type=int, default=DEFAULT_SEED)
    prepare.add_argument("--revision", default=None, help="Hub revision (default: the registry's)")
    prepare.add_argument("--shot-pool-size", type=int, default=DEFAULT_SHOT_POOL_SIZE,
                         help="shot rows written (0 = the whole filtered pool)")  # fmt: skip

    listing = commands.add_parser("list", help="print the dataset names with task, metric and source")
    listing.add_argument("--deepmind-math-configs", type=_parse_configs, default="all",
                         help="'all' or comma-separated configs")  # fmt: skip
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        if args.command == "prepare":
            prepare_dataset(
                args.dataset, args.tokenizer, args.out,
                max_length_per_example=args.max_length_per_example,
                max_eval_samples=args.max_eval_samples, seed=args.seed, revision=args.revision,
                shot_pool_size=args.shot_pool_size,
            )  # fmt: skip
        else:
            for name in expand_dataset_names(DATASETS, args.deepmind_math_configs):
                spec = get_spec(name)
                print("\t".join([name, spec.task, spec.metric, spec.hf_id, spec.config or "", spec.revision]))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
