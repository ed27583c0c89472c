"""The registry of the paper's 17 evaluation datasets: one :class:`DatasetSpec` each, with the official constructor
that turns a Hugging Face row into ``(input, reference)``.

Every dataset of spec §4.1/§4.2 has a :class:`DatasetSpec` in :data:`DATASETS`: where it lives on the Hugging Face
Hub (id, config, revision, train and test split), how a row becomes ``(input, reference)`` (the official
``dataset_constructors.py`` at commit eb9612d, character for character), the prompt pieces (prefix, suffix,
separator ``"\\n\\n"``), the stop strings (``["\\n\\n"]`` plus the prefix when it is non-empty, as ``eval.py``
does), the metric of :mod:`ctxscale.metrics`, ``max_new_tokens`` and the task category. deepmind-math has 56
configs; each is prepared as its own dataset named ``deepmind-math.<config>`` (:data:`DEEPMIND_MATH_CONFIGS`,
:func:`expand_dataset_names`). How a dataset is loaded and prepared: :mod:`ctxscale.datasets.prepare`.

Choices where the paper and the official code are silent or cannot be followed:

- **Revisions.** ``main`` everywhere except PIQA, whose ``main`` holds only a loading script: its parquet
  conversion ``refs/convert/parquet`` is used, where the config is named ``default``; and deepmind-math, whose
  ``main`` still carries ``math_dataset.py`` (only 3 configs were converted there), so ``refs/convert/parquet``
  is used too.
- **MATH** comes from ``DigitalLearningGmbH/MATH-lighteval`` config ``default`` (``lighteval/MATH`` was taken
  down, spec §4.6). Its row order may differ from the original, and with it the shots.
- **deepmind-math strings** are stored on the Hub as the repr of a bytes object,
  ``b'Solve 24 = 1601*c - 1605*c for c.\\n'``. They are unwrapped (``ast.literal_eval``, UTF-8 decode, one
  trailing newline removed) before use. The official run, which loaded the same data through the script, most
  likely saw the wrapped form; unwrapping gives the prompts the dataset authors intended and does not change
  ``math_equiv`` (it reads the last number).
- **Label types.** The official constructors compare PIQA's label with ``0``, SIQA's with ``'1'`` and ``'2'``,
  and parse WinoGrande's and HellaSwag's with ``int``. The label is normalised first (``int`` for PIQA, ``str``
  for SIQA) so a parquet mirror that stores the other type gives the same letters instead of silently mapping
  everything to the last option.

This module imports no configuration (:mod:`ctxscale.config` reads the registry to validate dataset names).
"""

from __future__ import annotations

import ast
import dataclasses
import string
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

from ctxscale.datasets.prepared import build_prompt
from ctxscale.errors import UserError

TASK_CATEGORIES = ("arithmetic", "common-sense", "translation")
SEPARATOR = "\n\n"
PARQUET_REVISION = "refs/convert/parquet"

_LETTERS = list(string.ascii_uppercase)


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

