"""The dataset registry and the official constructors, on the real example rows in
``shared/reference/dataset-rows`` (committed under ``tests/data/dataset-rows``); no test touches the network."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctxscale.datasets.registry import DATASETS, DEEPMIND_MATH_CONFIGS, expand_dataset_names, get_spec, unwrap_bytes_repr
from ctxscale.errors import UserError
from ctxscale.metrics import METRICS

DATASET_ROWS = Path(__file__).resolve().parent / "data" / "dataset-rows"  # from shared/reference (tests/data/README.md)


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
