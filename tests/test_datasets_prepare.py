"""Preparation of the paper's datasets into the prepared-data format: length filter, shot pool, fixed test subset,
the command line, and the Hub path with ``datasets.load_dataset`` stood in.

No test touches the network: preparation runs on rows generated here in each dataset's real Hugging Face row
layout.
"""

from __future__ import annotations

import dataclasses
import os
import random
import subprocess
import sys

import numpy as np
import pytest

from ctxscale.datasets import prepare as preparation
from ctxscale.datasets.__main__ import main as datasets_main
from ctxscale.datasets.hub import train_subsample_indices
from ctxscale.datasets.prepare import prepare_dataset
from ctxscale.datasets.prepared import read_prepared
from ctxscale.datasets.registry import DATASETS, get_spec
from ctxscale.errors import UserError

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
    spec = get_spec(name)  # its prompt parts are checked against the official ones in test_datasets_registry.py
    return len((spec.prefix + input_text + spec.suffix + reference + "\n\n").encode("utf-8"))


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
