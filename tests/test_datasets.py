"""Dataset registry, official constructors, and preparation into the prepared-data format.

No test touches the network: preparation runs on rows generated here in each dataset's real
Hugging Face row layout, and the constructors also run on the real example rows in
``shared/reference/dataset-rows``, committed under ``tests/data/dataset-rows``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctxscale.datasets import prepare as preparation
from ctxscale.datasets.__main__ import main as datasets_main
from ctxscale.datasets.hub import train_subsample_indices
from ctxscale.datasets.prepare import prepare_dataset
from ctxscale.datasets.prepared import MANIFEST_KEYS, read_prepared, write_prepared
from ctxscale.datasets.registry import DATASETS, DEEPMIND_MATH_CONFIGS, expand_dataset_names, get_spec, unwrap_bytes_repr
from ctxscale.errors import UserError
from ctxscale.metrics import METRICS

DATASET_ROWS = Path(__file__).resolve().parent / "data" / "dataset-rows"  # from shared/reference (tests/data/README.md)
SEED = 31337


def byte_tokenizer():
    """A byte-level tokenizer: one token per UTF-8 byte, BOS added only with special tokens.

    Token counts are then plain byte counts, so the length filter can be checked by hand.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<s>": 0, "</s>": 1, **{ch: i + 2 for i, ch in enumerate(alphabet)}}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def tokenizer():
    tok = byte_tokenizer()
    assert len(tok("héllo", add_special_tokens=False).input_ids) == 6  # bytes, not characters
    assert len(tok("héllo").input_ids) == 7  # plus BOS
    return tok


# ============================================================================= registry

# name: (task, hf_id, config, revision, test_split, prefix, suffix, metric, max_new_tokens)
EXPECTED = {
    "gsm": ("arithmetic", "openai/gsm8k", "main", "main", "test", "Question: ", "\nAnswer: ", "math_equiv", 400),
    "math": ("arithmetic", "DigitalLearningGmbH/MATH-lighteval", "default", "main", "test", "Question: ", "\nAnswer: ", "math_equiv", 400),
    "aqua-rat": ("arithmetic", "deepmind/aqua_rat", "raw", "main", "test", "Question: ", "Return a letter only.\nAnswer:", "mc_match", 5),
    "deepmind-math": ("arithmetic", "deepmind/math_dataset", None, "refs/convert/parquet", "test", "Question: ", "\nAnswer: ", "math_equiv", 400),
    "arc-easy": ("common-sense", "allenai/ai2_arc", "ARC-Easy", "main", "test", "Question: ", "\nAnswer:", "mc_match", 5),
    "arc-challenge": ("common-sense", "allenai/ai2_arc", "ARC-Challenge", "main", "test", "Question: ", "\nAnswer:", "mc_match", 5),
    "openbookqa": ("common-sense", "allenai/openbookqa", "main", "main", "test", "Question: ", "\nAnswer:", "mc_match", 5),
    "commonsenseqa": ("common-sense", "tau/commonsense_qa", None, "main", "validation", "Question: ", "\nAnswer:", "mc_match", 1),
    "piqa": ("common-sense", "ybisk/piqa", "default", "refs/convert/parquet", "validation", "Question: ", "\nAnswer:", "mc_match", 5),
    "siqa": ("common-sense", "lighteval/siqa", None, "main", "validation", "Question: ", "\nAnswer:", "mc_match", 5),
    "hellaswag": ("common-sense", "Rowan/hellaswag", None, "main", "validation", "Question: ", "\nAnswer:", "mc_match", 5),
    "winogrande": ("common-sense", "allenai/winogrande", "winogrande_xl", "main", "validation", "Question: ", "\nAnswer:", "mc_match", 5),
    **{
        f"wmt14-{code}-en": ("translation", "wmt/wmt14", f"{code}-en", "main", "test", "", "", "bleu_4", 256)
        for code in ("cs", "de", "fr", "hi", "ru")
    },
}  # fmt: skip


def test_registry_has_the_17_paper_datasets_with_their_official_settings():
    assert len(DATASETS) == 17
    assert set(DATASETS) == set(EXPECTED)
    for name, (task, hf_id, config, revision, test_split, prefix, suffix, metric, max_new) in EXPECTED.items():
        spec = DATASETS[name]
        assert (spec.task, spec.hf_id, spec.config, spec.revision) == (task, hf_id, config, revision), name
        assert (spec.train_split, spec.test_split) == ("train", test_split), name
        assert (spec.prefix, spec.suffix, spec.separator) == (prefix, suffix, "\n\n"), name
        assert (spec.metric, spec.max_new_tokens) == (metric, max_new), name
        assert spec.metric in METRICS
        assert spec.stop == (["\n\n", "Question: "] if prefix else ["\n\n"]), name


def test_train_subsampling_thresholds():
    for code in ("cs", "de", "fr", "hi", "ru"):
        spec = DATASETS[f"wmt14-{code}-en"]
        assert (spec.train_subsample_above, spec.train_subsample_size) == (300_000, 300_000)
    assert (DATASETS["deepmind-math"].train_subsample_above, DATASETS["deepmind-math"].train_subsample_size) == (1_000_000, 300_000)
    assert DATASETS["gsm"].train_subsample_above is None


def test_deepmind_math_configs_and_names():
    assert len(DEEPMIND_MATH_CONFIGS) == 56 == len(set(DEEPMIND_MATH_CONFIGS))
    spec = get_spec("deepmind-math.algebra__linear_1d")
    assert (spec.name, spec.config, spec.hf_id) == ("deepmind-math.algebra__linear_1d", "algebra__linear_1d", "deepmind/math_dataset")
    with pytest.raises(UserError, match="deepmind-math.<config>"):
        get_spec("deepmind-math")
    with pytest.raises(UserError, match="unknown deepmind-math config 'algebra__nope'"):
        get_spec("deepmind-math.algebra__nope")
    with pytest.raises(UserError, match="unknown dataset 'gsm9k'"):
        get_spec("gsm9k")


def test_deepmind_math_configs_match_the_reference_list():
    path = DATASET_ROWS / "deepmind__math_dataset.json"
    assert list(DEEPMIND_MATH_CONFIGS) == json.loads(path.read_text())["configs"]


def test_expand_dataset_names():
    names = expand_dataset_names(["gsm", "deepmind-math", "piqa"])
    assert names[0] == "gsm" and names[-1] == "piqa" and len(names) == 58
    assert names[1:3] == ["deepmind-math.algebra__linear_1d", "deepmind-math.algebra__linear_1d_composed"]
    subset = expand_dataset_names(["deepmind-math", "gsm", "gsm", "deepmind-math.numbers__gcd"],
                                  deepmind_math_configs=["numbers__gcd", "arithmetic__mul"])  # fmt: skip
    assert subset == ["deepmind-math.numbers__gcd", "deepmind-math.arithmetic__mul", "gsm"]
    assert len(expand_dataset_names(DATASETS)) == 16 + 56
    with pytest.raises(UserError, match="unknown deepmind-math config"):
        expand_dataset_names(["deepmind-math"], deepmind_math_configs=["nope"])
    with pytest.raises(UserError, match="unknown dataset 'nope'"):
        expand_dataset_names(["gsm", "nope"])


# ============================================================================= constructors on real rows


def _reference_rows(file_name: str) -> dict:
    return json.loads((DATASET_ROWS / file_name).read_text(encoding="utf-8"))


# dataset -> (reference file, {row index: (input, reference)}) with the outputs worked out by hand
# from the official constructors.
REAL_ROW_CASES = {
    "gsm": ("openai__gsm8k__main.json", {
        1: ("A robe takes 2 bolts of blue fiber and half that much white fiber.  How many bolts in total does it take?",
            "It takes 2/2=<<2/2=1>>1 bolt of white fiber\nSo the total amount of fabric is 2+1=<<2+1=3>>3 bolts of fabric\n#### 3"),
    }),
    "math": ("DigitalLearningGmbH__MATH-lighteval__default.json", {
        1: ("How many vertical asymptotes does the graph of $y=\\frac{2}{x^2+x-6}$ have?",
            "The denominator of the rational function factors into $x^2+x-6=(x-2)(x+3)$. Since the numerator is always nonzero, there is a vertical asymptote whenever the denominator is $0$, which occurs for $x = 2$ and $x = -3$.  Therefore, the graph has $\\boxed{2}$ vertical asymptotes."),
    }),
    "deepmind-math.algebra__linear_1d": ("deepmind__math_dataset.json", {
        0: ("Solve 24 = 1601*c - 1605*c for c.", "-6"),
        1: ("Solve 657 = -220*t + 1086*t + 22307 for t.", "-25"),
    }),
    "aqua-rat": ("deepmind__aqua_rat__raw.json", {
        1: ("The original price of an item is discounted 22%. A customer buys the item at this discounted price using a $20-off coupon. There is no tax on the item, and this was the only item the customer bought. If the customer paid $1.90 more than half the original price of the item, what was the original price of the item?"
            "\nA)$61\nB)$65\nC)$67.40\nD)$70\nE)$78.20", "E"),
    }),
    "arc-easy": ("allenai__ai2_arc__ARC-Easy.json", {
        0: ("Lichens are symbiotic organisms made of green algae and fungi. What do the green algae supply to the fungi in this symbiotic relationship?"
            "\nA. carbon dioxide\nB. food\nC. protection\nD. water", "B"),
        # numeric labels: letters are positional and answerKey "3" maps to C
        1: ("Rocks are classified as igneous, metamorphic, or sedimentary according to"
            "\nA. their color\nB. their shape\nC. how they formed\nD. the minerals they contain", "C"),
    }),
    "arc-challenge": ("allenai__ai2_arc__ARC-Challenge.json", {
        1: ("George wants to warm his hands quickly by rubbing them. Which skin surface will produce the most heat?"
            "\nA. dry palms\nB. wet palms\nC. palms covered with oil\nD. palms covered with lotion", "A"),
    }),
    "openbookqa": ("allenai__openbookqa__main.json", {
        0: ("When standing miles away from Mount Rushmore\nA. the mountains seem very close\nB. the mountains are boring"
            "\nC. the mountains look the same as from up close\nD. the mountains seem smaller than in photographs", "D"),
    }),
    "commonsenseqa": ("tau__commonsense_qa.json", {
        1: ("Sammy wanted to go to where the people were.  Where might he go?\nA. race track\nB. populated areas"
            "\nC. the desert\nD. apartment\nE. roadblock", "B"),
    }),
    "piqa": ("ybisk__piqa.json", {
        1: ("how do you taste something?\nPick one of the two options:\nA. smell it enough to taste it.\nB. place it in your mouth to taste.", "B"),
        0: ("How do I ready a guinea pig cage for it's new occupants?\nPick one of the two options:\n"
            "A. Provide the guinea pig with a cage full of a few inches of bedding made of ripped paper strips, you will also need to supply it with a water bottle and a food dish.\n"
            "B. Provide the guinea pig with a cage full of a few inches of bedding made of ripped jeans material, you will also need to supply it with a water bottle and a food dish.", "A"),
    }),
    "siqa": ("lighteval__siqa.json", {
        0: ("Sydney walked past a homeless woman asking for change but did not have any money they could give to her. Sydney felt bad afterwards. How would you describe Sydney?"
            "\nA. sympathetic\nB. like a person who was unable to help\nC. incredulous", "A"),
        1: ("Quinn wanted to help me clean my room up because it was so messy. What will Quinn want to do next?"
            "\nA. Eat messy snacks\nB. help out a friend\nC. Pick up the dirty clothes", "C"),
    }),
    "hellaswag": ("Rowan__hellaswag.json", {
        0: ("Read the sentence and select the best ending:\nThen, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles. then"
            "\nA. , the man adds wax to the windshield and cuts it."
            "\nB. , a person board a ski lift, while two men supporting the head of the person wearing winter clothes snow as the we girls sled."
            "\nC. , the man puts on a christmas coat, knitted with netting.\nD. , the man continues removing the snow on his car.", "D"),
    }),
    "winogrande": ("allenai__winogrande__winogrande_xl.json", {
        0: ("John moved the couch from the garage to the backyard to create space. The _ is small.\nPick A or B to fill in the blank:\nA. garage\nB. backyard", "A"),
        1: ("Felicia unexpectedly made fried eggs for breakfast in the morning for Katrina and now _ owes a favor.\nPick A or B to fill in the blank:\nA. Felicia\nB. Katrina", "B"),
    }),
    "wmt14-cs-en": ("wmt__wmt14__cs-en.json", {
        0: ("Czech: Následný postup na základě usnesení Parlamentu: viz zápis\nEnglish:", "Action taken on Parliament's resolutions: see Minutes"),
    }),
    "wmt14-de-en": ("wmt__wmt14__de-en.json", {
        0: ("German: Gutach: Noch mehr Sicherheit für Fußgänger\nEnglish:", "Gutach: Increased safety for pedestrians"),
    }),
    "wmt14-fr-en": ("wmt__wmt14__fr-en.json", {0: ("French: Reprise de la session\nEnglish:", "Resumption of the session")}),
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REAL_ROW_CASES))
def test_constructor_on_real_rows(name):
    file_name, cases = REAL_ROW_CASES[name]
    reference = _reference_rows(file_name)
    spec = get_spec(name)
    rows = reference["example_rows"]
    for index, expected in cases.items():
        assert spec.construct(rows[index]) == expected
    for row in rows:  # every example row builds, and MC references are single letters
        input_text, answer = spec.construct(row)
        assert input_text and answer
        if spec.metric == "mc_match":
            assert answer in "ABCDE" and len(answer) == 1


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_registry_agrees_with_reference_files(name):
    """Hub id, config and split names of the registry against the dataset-rows notes."""
    files = {
        "gsm": "openai__gsm8k__main.json", "math": "DigitalLearningGmbH__MATH-lighteval__default.json",
        "aqua-rat": "deepmind__aqua_rat__raw.json", "deepmind-math": "deepmind__math_dataset.json",
        "arc-easy": "allenai__ai2_arc__ARC-Easy.json", "arc-challenge": "allenai__ai2_arc__ARC-Challenge.json",
        "openbookqa": "allenai__openbookqa__main.json", "commonsenseqa": "tau__commonsense_qa.json",
        "piqa": "ybisk__piqa.json", "siqa": "lighteval__siqa.json", "hellaswag": "Rowan__hellaswag.json",
        "winogrande": "allenai__winogrande__winogrande_xl.json",
        **{f"wmt14-{c}-en": f"wmt__wmt14__{c}-en.json" for c in ("cs", "de", "fr", "hi", "ru")},
    }  # fmt: skip
    reference = _reference_rows(files[name])
    spec = DATASETS[name]
    assert spec.hf_id == reference["hf_id"]
    assert spec.train_split in reference["splits"] and spec.test_split in reference["splits"]
    if spec.config is not None and name not in ("piqa",):
        assert spec.config == reference["config"]
    if name == "piqa":  # script-only on main; the parquet branch names the config "default"
        assert "refs/convert/parquet" in reference["parquet_note"] and "'default'" in reference["parquet_note"]


@pytest.mark.parametrize(
    ("wrapped", "plain"),
    [
        ("b'-6\\n'", "-6"),
        ("b'Solve 24 = 1601*c - 1605*c for c.\\n'", "Solve 24 = 1601*c - 1605*c for c."),
        ("b'What is 2\\'s square?\\n'", "What is 2's square?"),
        ('b"It\'s 3\\n"', "It's 3"),
        ("b'caf\\xc3\\xa9\\n'", "café"),
        ("b'no newline'", "no newline"),
        ("already plain", "already plain"),
        ("b'", "b'"),
        ("b'broken", "b'broken"),
    ],
)
def test_unwrap_bytes_repr(wrapped, plain):
    assert unwrap_bytes_repr(wrapped) == plain


# ============================================================================= generated fixtures

WORDS = ("alpha", "beta", "gamma", "delta", "eps", "zeta", "eta", "theta", "iota", "kappa", "lambda",
         "mu", "nu", "xi", "pi", "rho", "sigma", "tau", "phi", "chi", "psi", "omega", "Fuß", "café")  # fmt: skip


def _words(rng: random.Random) -> str:
    # 1-30 words: with a 160-byte limit some examples fit and some do not.
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30)))


def _short(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))


def _choices(rng, labels):
    return {"text": [_short(rng) for _ in labels], "label": list(labels)}


def generate_row(name: str, rng: random.Random, index: int) -> dict:
    """One row in the real Hugging Face layout of the dataset (see shared/reference/dataset-rows)."""
    family = name.split(".")[0]
    number = rng.randint(-99, 999)
    if family == "gsm":
        return {"question": _words(rng), "answer": f"{_short(rng)} <<1+1=2>>2\n#### {number}"}
    if family == "math":
        return {"problem": _words(rng), "level": "Level 2", "type": "Algebra",
                "solution": f"{_short(rng)} $\\boxed{{{number}}}$."}  # fmt: skip
    if family == "deepmind-math":
        # The Hub stores the repr of the bytes of each line, e.g. "b'Solve ... for x.\\n'".
        return {"question": repr(f"Solve {_words(rng)} for x.\n".encode()), "answer": repr(f"{number}\n".encode())}
    if family == "aqua-rat":
        return {"question": _words(rng), "options": [f"{c}){rng.randint(1, 99)}" for c in "ABCDE"],
                "rationale": _short(rng), "correct": rng.choice("ABCDE")}  # fmt: skip
    if family in ("arc-easy", "arc-challenge"):
        labels = "1234" if index % 5 == 0 else "ABCD"
        return {"id": f"Mercury_{index}", "question": _words(rng), "choices": _choices(rng, labels),
                "answerKey": rng.choice(labels)}  # fmt: skip
    if family == "openbookqa":
        return {"id": f"7-{index}", "question_stem": _words(rng), "choices": _choices(rng, "ABCD"),
                "answerKey": rng.choice("ABCD")}  # fmt: skip
    if family == "commonsenseqa":
        choices = _choices(rng, "ABCDE")
        return {"id": f"{index:032x}", "question": _words(rng), "question_concept": "x",
                "choices": {"label": choices["label"], "text": choices["text"]}, "answerKey": rng.choice("ABCDE")}  # fmt: skip
    if family == "piqa":
        return {"goal": _words(rng), "sol1": _short(rng), "sol2": _short(rng), "label": rng.randint(0, 1)}
    if family == "siqa":
        return {"context": _words(rng), "question": "What next?", "answerA": _short(rng),
                "answerB": _short(rng), "answerC": _short(rng), "label": rng.choice("123")}  # fmt: skip
    if family == "hellaswag":
        ctx_a, ctx_b = _words(rng), rng.choice(["then", ""])
        return {"ind": index, "activity_label": "Testing", "ctx_a": ctx_a, "ctx_b": ctx_b,
                "ctx": f"{ctx_a} {ctx_b}" if ctx_b else ctx_a, "endings": [_short(rng) for _ in range(4)],
                "source_id": f"wikihow~{index}", "split": "train", "split_type": "indomain",
                "label": rng.choice("0123")}  # fmt: skip
    if family == "winogrande":
        return {"sentence": f"{_words(rng)} _ {_short(rng)}.", "option1": _short(rng),
                "option2": _short(rng), "answer": rng.choice("12")}  # fmt: skip
    if family.startswith("wmt14-"):
        source = family.split("-")[1]
        return {"translation": {source: _words(rng), "en": _words(rng)}}
    raise AssertionError(name)


def generate_rows(name: str, n_train: int, n_test: int, seed: int = 0) -> dict[str, list[dict]]:
    rng = random.Random(f"{name}-{seed}")
    return {
        "train": [generate_row(name, rng, i) for i in range(n_train)],
        "test": [generate_row(name, rng, i) for i in range(n_test)],
    }


PREPARED_NAMES = [name for name in sorted(DATASETS) if name != "deepmind-math"] + ["deepmind-math.numbers__gcd"]
LIMIT = 160  # bytes = tokens with the byte tokenizer


def _example_bytes(name: str, input_text: str, reference: str) -> int:
    task, _, _, _, _, prefix, suffix, *_ = EXPECTED[name.split(".")[0]]
    return len((prefix + input_text + suffix + reference + "\n\n").encode("utf-8"))


@pytest.mark.parametrize("name", PREPARED_NAMES)
def test_prepare_every_dataset_from_generated_rows(name, tokenizer, tmp_path):
    rows = generate_rows(name, n_train=60, n_test=40)
    spec = get_spec(name)
    prepared = prepare_dataset(name, tokenizer, tmp_path, max_length_per_example=LIMIT, max_eval_samples=12,
                               rows=rows)  # fmt: skip

    built_train = [spec.construct(row) for row in rows["train"]]
    fits_train = [ex for ex in built_train if _example_bytes(name, *ex) <= LIMIT]
    fits_test = [i for i, row in enumerate(rows["test"]) if _example_bytes(name, *spec.construct(row)) <= LIMIT]
    assert 0 < len(fits_train) < 60 and 12 < len(fits_test) < 40  # the fixture exercises the filter

    counts = prepared.manifest["counts"]
    assert counts == {
        "train_split_rows": 60, "train_before_filter": 60, "train_after_filter": len(fits_train),
        "shots_written": len(fits_train), "test_split_rows": 40, "test_before_filter": 40,
        "test_after_filter": len(fits_test), "test_written": 12,
    }  # fmt: skip
    # The shot pool is the whole filtered pool in the official shuffled order.
    expected_pool = [{"input": i, "reference": r} for i, r in fits_train]
    np.random.default_rng(SEED).shuffle(expected_pool)
    assert prepared.shots == expected_pool
    # Test rows are kept examples, identified by their row index in the test split.
    assert len({row["id"] for row in prepared.test}) == 12
    for row in prepared.test:
        assert int(row["id"]) in fits_test
        assert (row["input"], row["reference"]) == spec.construct(rows["test"][int(row["id"])])
    if spec.metric == "mc_match":
        assert all(row["reference"] in ("A", "B", "C", "D", "E") for row in prepared.shots + prepared.test)
    if name.startswith("deepmind-math"):
        assert not any(row["input"].startswith("b'") or row["reference"].startswith("b'") for row in prepared.test)
        assert all(row["input"].startswith("Solve ") and row["input"].endswith(" for x.") for row in prepared.shots)

    manifest = prepared.manifest
    assert (manifest["dataset"], manifest["task"], manifest["metric"]) == (name, spec.task, spec.metric)
    assert (manifest["prefix"], manifest["suffix"], manifest["separator"]) == (spec.prefix, spec.suffix, "\n\n")
    assert manifest["stop"] == spec.stop and manifest["max_new_tokens"] == spec.max_new_tokens
    assert manifest["seeds"] == {"train_subsample": SEED, "shot_shuffle": SEED, "test_subset": SEED}
    assert manifest["source"]["hf_id"] == spec.hf_id and manifest["source"]["loaded_from"] == "rows"
    assert manifest["tokenizer"]["class"] == type(tokenizer).__name__ and manifest["tokenizer"]["vocab_size"] == 258
    assert read_prepared(tmp_path) == prepared  # what was written is what was returned


def test_filter_counts_tokens_without_special_tokens(tokenizer, tmp_path):
    # An example of exactly LIMIT bytes is kept (the BOS token is not counted); LIMIT + 1 is dropped.
    base = "Question: " + "\nAnswer: " + "7" + "\n\n"
    exact = "x" * (LIMIT - len(base))
    rows = {"train": [{"question": exact, "answer": "7"}, {"question": exact + "y", "answer": "7"}],
            "test": [{"question": exact, "answer": "7"}, {"question": exact + "y", "answer": "7"}]}  # fmt: skip
    prepared = prepare_dataset("gsm", tokenizer, tmp_path, max_length_per_example=LIMIT, rows=rows)
    assert prepared.shots == [{"input": exact, "reference": "7"}]
    assert prepared.test == [{"id": "0", "input": exact, "reference": "7"}]


def test_prompts_at_0_1_and_3_shots_are_the_official_strings(tmp_path, tokenizer):
    rows = {
        "train": [{"question": f"q{i}?", "answer": f"step\n#### {i}"} for i in range(5)],
        "test": [{"question": "What is 6 times 7?", "answer": "#### 42"}],
    }
    prepared = prepare_dataset("gsm", tokenizer, tmp_path, rows=rows)
    s = prepared.shots
    query = "What is 6 times 7?"
    assert prepared.prompt(query, 0) == "Question: What is 6 times 7?\nAnswer:"  # trailing space stripped
    assert prepared.prompt(query, 1) == (
        f"Question: {s[0]['input']}\nAnswer: {s[0]['reference']}\n\n"  # the shot keeps "Answer: "
        "Question: What is 6 times 7?\nAnswer:"
    )
    three = prepared.prompt(query, 3)
    assert three == "".join(f"Question: {x['input']}\nAnswer: {x['reference']}\n\n" for x in s[:3]) + "Question: What is 6 times 7?\nAnswer:"
    assert three.startswith(prepared.prompt(query, 1)[: -len("Question: What is 6 times 7?\nAnswer:")])  # shots nest
    with pytest.raises(UserError, match="6 shots requested, the pool has 5"):
        prepared.prompt(query, 6)


def test_translation_prompt_has_no_prefix(tmp_path, tokenizer):
    rows = {"train": [{"translation": {"de": "Hallo", "en": "Hello"}}],
            "test": [{"translation": {"de": "Guten Tag", "en": "Good day"}}]}  # fmt: skip
    prepared = prepare_dataset("wmt14-de-en", tokenizer, tmp_path, rows=rows)
    assert prepared.prompt("German: Guten Tag\nEnglish:", 1) == "German: Hallo\nEnglish:Hello\n\nGerman: Guten Tag\nEnglish:"


def test_preparation_is_deterministic_nested_and_independent_of_sizes(tokenizer, tmp_path):
    rows = generate_rows("arc-easy", n_train=80, n_test=60, seed=3)
    full = prepare_dataset("arc-easy", tokenizer, tmp_path / "a", max_length_per_example=LIMIT,
                           max_eval_samples=20, shot_pool_size=0, rows=rows)  # fmt: skip
    prepare_dataset("arc-easy", tokenizer, tmp_path / "b", max_length_per_example=LIMIT,
                    max_eval_samples=20, shot_pool_size=0, rows=rows)  # fmt: skip
    for file_name in ("shots.jsonl", "test.jsonl", "manifest.json"):
        assert (tmp_path / "a" / file_name).read_bytes() == (tmp_path / "b" / file_name).read_bytes()
    small = prepare_dataset("arc-easy", tokenizer, tmp_path / "c", max_length_per_example=LIMIT,
                            max_eval_samples=7, shot_pool_size=4, rows=rows)  # fmt: skip
    assert small.shots == full.shots[:4]  # a capped pool holds the same first shots
    assert small.test == full.test[:7]  # a smaller test subset is a prefix of the larger one
    assert small.manifest["counts"]["train_after_filter"] == full.manifest["counts"]["train_after_filter"]
    other_seed = prepare_dataset("arc-easy", tokenizer, tmp_path / "d", max_length_per_example=LIMIT,
                                 max_eval_samples=20, shot_pool_size=0, rows=rows, seed=1)  # fmt: skip
    assert sorted(map(str, other_seed.shots)) == sorted(map(str, full.shots)) and other_seed.shots != full.shots
    assert other_seed.test != full.test


def test_default_shot_pool_cap_is_1024(tokenizer, tmp_path):
    rows = {"train": [{"question": f"q{i}", "answer": f"#### {i}"} for i in range(1100)],
            "test": [{"question": "q", "answer": "#### 1"}]}  # fmt: skip
    prepared = prepare_dataset("gsm", tokenizer, tmp_path, rows=rows)
    assert len(prepared.shots) == 1024
    assert prepared.manifest["counts"]["train_after_filter"] == 1100
    assert prepared.manifest["counts"]["shots_written"] == 1024


def test_train_subsample_indices_match_the_official_draw():
    spec = get_spec("deepmind-math.algebra__linear_1d")
    random.seed(SEED)  # the official code: random.seed(global_seed); random.sample(...)
    official = random.sample(range(1_999_998), 300_000)
    assert train_subsample_indices(1_999_998, spec, SEED) == official
    assert train_subsample_indices(1_000_000, spec, SEED) is None  # not above 1M
    wmt = get_spec("wmt14-de-en")
    drawn = train_subsample_indices(300_001, wmt, SEED)
    assert len(drawn) == 300_000 == len(set(drawn)) and max(drawn) <= 300_000
    assert train_subsample_indices(300_000, wmt, SEED) is None
    assert train_subsample_indices(10**9, get_spec("gsm"), SEED) is None


def test_prepare_subsamples_a_large_train_split(tokenizer, tmp_path):
    spec = dataclasses.replace(get_spec("wmt14-de-en"), train_subsample_above=30, train_subsample_size=20)
    rows = {"train": [{"translation": {"de": f"satz {i}", "en": f"sentence {i}"}} for i in range(50)],
            "test": [{"translation": {"de": "a", "en": "b"}}]}  # fmt: skip
    prepared = prepare_dataset(spec, tokenizer, tmp_path, rows=rows)
    drawn = random.Random(SEED).sample(range(50), 20)
    counts = prepared.manifest["counts"]
    assert (counts["train_split_rows"], counts["train_before_filter"], counts["shots_written"]) == (50, 20, 20)
    assert sorted(row["reference"] for row in prepared.shots) == sorted(f"sentence {i}" for i in drawn)


# ============================================================================= files and errors


# A manifest that passes read_prepared's checks (string prompt parts, stop strings, a known metric, ...).
MANIFEST = {"dataset": "synthetic", "task": "arithmetic", "prefix": "Q: ", "suffix": "\nA: ", "separator": "\n\n",
            "stop": ["\n\n", "Q: "], "metric": "math_equiv", "max_new_tokens": 4, "counts": {}, "seeds": {},
            "source": {}, "tokenizer": None}  # fmt: skip
TEST_ROWS = [{"id": "0", "input": "x", "reference": "y"}]


def test_write_and_read_prepared_round_trip(tmp_path):
    manifest = MANIFEST
    assert set(manifest) == set(MANIFEST_KEYS)
    shots = [{"input": "a\nb", "reference": "ü"}]
    test = [{"id": "0", "input": "x", "reference": "y"}]
    out = write_prepared(tmp_path / "p", shots, test, manifest)
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shots.jsonl", "test.jsonl"]  # no temp files
    assert (out / "shots.jsonl").read_text(encoding="utf-8") == '{"input": "a\\nb", "reference": "ü"}\n'
    data = read_prepared(out)
    assert (data.shots, data.test, data.manifest, data.directory) == (shots, test, manifest, out.resolve())


def test_write_prepared_keyword_form_sets_the_tokenizer(tmp_path):
    manifest = {key: value for key, value in MANIFEST.items() if key != "tokenizer"}
    write_prepared(tmp_path, shots=[], test=TEST_ROWS, manifest=manifest, tokenizer="resources/models/tiny")
    assert read_prepared(tmp_path).manifest["tokenizer"] == "resources/models/tiny"
    write_prepared(tmp_path, [], TEST_ROWS, manifest, tokenizer=None)  # None is recorded, not missing
    assert read_prepared(tmp_path).manifest["tokenizer"] is None


def test_write_prepared_rejects_bad_input(tmp_path):
    manifest = MANIFEST
    with pytest.raises(ValueError, match="manifest is missing tokenizer"):
        write_prepared(tmp_path, [], [], {k: v for k, v in manifest.items() if k != "tokenizer"})
    with pytest.raises(ValueError, match="shot row 0"):
        write_prepared(tmp_path, [{"input": "a"}], [], manifest)
    with pytest.raises(ValueError, match="unique"):
        write_prepared(tmp_path, [], [{"id": "1", "input": "a", "reference": "b"}] * 2, manifest)


def test_read_prepared_errors(tmp_path):
    with pytest.raises(UserError, match="not a prepared dataset: missing shots.jsonl, test.jsonl, manifest.json"):
        read_prepared(tmp_path)


@pytest.mark.parametrize("change, message", [
    ({"metric": "accuracy"}, "manifest.json: unknown metric 'accuracy' \\(known: mc_match, math_equiv, bleu_4\\)"),
    ({"prefix": None}, "manifest.json: prefix must be a string"),
    ({"stop": ["\n\n", ""]}, "manifest.json: stop must be a list of non-empty strings"),
    ({"max_new_tokens": True}, "manifest.json: max_new_tokens must be a positive integer"),
    ({"max_new_tokens": 0}, "manifest.json: max_new_tokens must be a positive integer"),
])  # fmt: skip
def test_read_prepared_checks_the_manifest(tmp_path, change, message):
    write_prepared(tmp_path, [], TEST_ROWS, MANIFEST | change)
    with pytest.raises(UserError, match=message):
        read_prepared(tmp_path)


def test_read_prepared_checks_the_rows(tmp_path):
    write_prepared(tmp_path, [], [], MANIFEST)
    with pytest.raises(UserError, match="test.jsonl has no test instances"):
        read_prepared(tmp_path)
    (tmp_path / "test.jsonl").write_text('{"id": "0", "input": "x", "reference": "y"}\n' * 2)
    with pytest.raises(UserError, match="test.jsonl has duplicate ids"):
        read_prepared(tmp_path)
    (tmp_path / "shots.jsonl").write_text('{"input": "x", "reference": 7}\n')
    with pytest.raises(UserError, match="shots.jsonl row 0: reference must be a string"):
        read_prepared(tmp_path)
    (tmp_path / "shots.jsonl").write_text('{"input": "x"')
    with pytest.raises(UserError, match="corrupt prepared-data file"):
        read_prepared(tmp_path)


def test_prepare_user_errors(tokenizer, tmp_path):
    rows = generate_rows("gsm", 3, 3)
    with pytest.raises(UserError, match="max_eval_samples must be an integer >= 1"):
        prepare_dataset("gsm", tokenizer, tmp_path, max_eval_samples=0, rows=rows)
    with pytest.raises(UserError, match="rows must have exactly the keys"):
        prepare_dataset("gsm", tokenizer, tmp_path, rows={"train": []})
    with pytest.raises(UserError, match="gsm: train row 0 does not have the layout of openai/gsm8k"):
        prepare_dataset("gsm", tokenizer, tmp_path, rows={"train": [{"problem": "x"}], "test": []})
    with pytest.raises(UserError, match="tokenizer directory .* does not exist"):
        prepare_dataset("gsm", tmp_path / "nope", tmp_path, rows=rows)


def test_cli_prepares_from_a_tokenizer_directory(tokenizer, tmp_path, monkeypatch, capsys):
    tokenizer.save_pretrained(tmp_path / "tok")
    rows = generate_rows("piqa", 10, 10)
    calls = {}

    def fake_load(spec, revision, seed):  # stands in for the Hub; everything after it is real
        calls["args"] = (spec.name, revision, seed)
        return rows["train"], rows["test"], {"loaded_from": "hub", "requested_revision": revision or spec.revision,
                                             "resolved_revision": "a" * 40, "train_split_rows": 10, "test_split_rows": 10}  # fmt: skip

    monkeypatch.setattr(preparation, "load_from_hub", fake_load)
    code = datasets_main(["prepare", "--dataset", "piqa", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "out"),
                    "--max-eval-samples", "4", "--seed", "5"])  # fmt: skip
    assert code == 0
    assert calls["args"] == ("piqa", None, 5)
    data = read_prepared(tmp_path / "out")
    assert len(data.test) == 4 and data.manifest["source"]["revision"] == "refs/convert/parquet"
    assert data.manifest["seeds"]["shot_shuffle"] == 5

    assert datasets_main(["prepare", "--dataset", "nope", "--tokenizer", str(tmp_path / "tok"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip().endswith("error: unknown dataset 'nope'; known: " + ", ".join(DATASETS))


def test_cli_list(capsys):
    assert datasets_main(["list", "--deepmind-math-configs", "numbers__gcd"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 17
    assert "deepmind-math.numbers__gcd\tarithmetic\tmath_equiv\tdeepmind/math_dataset\tnumbers__gcd\trefs/convert/parquet" in lines


def test_cli_without_network_is_a_one_line_error(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    result = subprocess.run(
        [sys.executable, "-m", "ctxscale.datasets", "prepare", "--dataset", "gsm", "--tokenizer",
         str(tmp_path / "tok"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: gsm: openai/gsm8k config main split train at revision main: cannot reach the Hugging Face Hub")
    assert "HF_DATASETS_OFFLINE=1" in last
    assert not (tmp_path / "out").exists()


# ============================================================================= the Hub path, with load_dataset stood in


class _FakeHub:
    """Stands in for datasets.load_dataset: serves in-memory splits, or raises like the real one."""

    def __init__(self, splits: dict[str, list[dict]], script_only_revisions=(), error=None):
        self.splits, self.script_only, self.error, self.calls = splits, set(script_only_revisions), error, []

    def __call__(self, path, name=None, split=None, revision=None):
        import datasets

        self.calls.append((path, name, split, revision))
        if self.error is not None:
            raise self.error
        if revision in self.script_only:
            raise RuntimeError(f"Dataset scripts are no longer supported, but found {path.split('/')[-1]}.py")
        return datasets.Dataset.from_list(self.splits[split])


def test_hub_path_loads_both_splits_and_subsamples(tokenizer, tmp_path, monkeypatch):
    import datasets

    train = [{"translation": {"de": f"satz {i}", "en": f"sentence {i}"}} for i in range(40)]
    test = [{"translation": {"de": f"test {i}", "en": f"test {i}"}} for i in range(5)]
    hub = _FakeHub({"train": train, "test": test})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    spec = dataclasses.replace(get_spec("wmt14-de-en"), train_subsample_above=30, train_subsample_size=25)
    prepared = prepare_dataset(spec, tokenizer, tmp_path, max_eval_samples=3)
    assert hub.calls == [("wmt/wmt14", "de-en", "train", "main"), ("wmt/wmt14", "de-en", "test", "main")]
    counts = prepared.manifest["counts"]
    assert (counts["train_split_rows"], counts["train_before_filter"], counts["test_written"]) == (40, 25, 3)
    drawn = random.Random(SEED).sample(range(40), 25)
    assert sorted(row["reference"] for row in prepared.shots) == sorted(f"sentence {i}" for i in drawn)
    source = prepared.manifest["source"]
    assert (source["loaded_from"], source["revision"], source["resolved_revision"]) == ("hub", "main", None)


def test_hub_path_falls_back_to_the_parquet_branch_for_script_only_repos(tokenizer, tmp_path, monkeypatch, caplog):
    import datasets

    rows = generate_rows("aqua-rat", 6, 4)
    hub = _FakeHub({"train": rows["train"], "test": rows["test"]}, script_only_revisions={"main"})
    monkeypatch.setattr(datasets, "load_dataset", hub)
    prepared = prepare_dataset("aqua-rat", tokenizer, tmp_path)
    assert [call[3] for call in hub.calls] == ["main", "refs/convert/parquet", "refs/convert/parquet"]
    assert prepared.manifest["source"]["revision"] == "refs/convert/parquet"
    assert "script-only; retrying on refs/convert/parquet" in caplog.text
    # An explicit revision is never silently replaced.
    with pytest.raises(UserError, match="at revision main has only a loading script .* use --revision refs/convert/parquet"):
        prepare_dataset("aqua-rat", tokenizer, tmp_path, revision="main")


def test_hub_errors_become_one_line_user_errors(tokenizer, tmp_path, monkeypatch):
    import datasets
    from datasets.exceptions import DatasetNotFoundError

    monkeypatch.setattr(datasets, "load_dataset", _FakeHub({}, error=DatasetNotFoundError("Dataset 'x' is a gated dataset")))
    with pytest.raises(UserError, match=r"^siqa: lighteval/siqa split train at revision main: not found or gated .* set HF_TOKEN$"):
        prepare_dataset("siqa", tokenizer, tmp_path)
    monkeypatch.setattr(datasets, "load_dataset", _FakeHub({}, error=ValueError("BuilderConfig 'nope' not found.\nAvailable: ['main']")))
    with pytest.raises(UserError, match=r"^gsm: openai/gsm8k config main split train at revision main: BuilderConfig 'nope' not found\.$"):
        prepare_dataset("gsm", tokenizer, tmp_path)
