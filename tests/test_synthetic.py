"""The miniature's generated datasets: format, rules, nesting, determinism, and secrecy of the mappings."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ctxscale import metrics, synthetic, tiny
from ctxscale.datasets import build_prompt, read_prepared
from ctxscale.errors import UserError

SPEC = {"seed": 31337, "max_eval_samples": 48, "max_length_per_example": 64}
KIND_TASKS = {"recall": "common-sense", "arithmetic": "arithmetic", "cipher": "translation"}


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("tokenizer")
    tiny.build_tokenizer().save_pretrained(out)
    return out


def write_with_cli(name, spec, tokenizer_dir, out):
    argv = ["--dataset", name, "--spec", json.dumps(spec), "--tokenizer", str(tokenizer_dir), "--out", str(out)]
    assert synthetic.main(argv) == 0
    return read_prepared(out)


@pytest.mark.parametrize("kind", sorted(KIND_TASKS))
def test_cli_writes_the_prepared_format(kind, tokenizer_dir, tmp_path):
    spec = {**SPEC, "kind": kind, "task": KIND_TASKS[kind]}
    prepared = write_with_cli(f"demo-{kind}", spec, tokenizer_dir, tmp_path / kind)
    manifest = prepared.manifest
    assert manifest["dataset"] == f"demo-{kind}" and manifest["task"] == KIND_TASKS[kind]
    assert manifest["separator"] == "\n\n"
    assert manifest["stop"] == ["\n\n", manifest["prefix"]]
    assert manifest["metric"] == {"recall": "mc_match", "arithmetic": "math_equiv", "cipher": "bleu_4"}[kind]
    assert manifest["counts"] == {"shots": 128, "test": 48}
    assert manifest["tokenizer"]["class"] and manifest["tokenizer"]["vocab_size"] == 100
    assert len(prepared.shots) == 128 and len(prepared.test) == 48
    assert [row["id"] for row in prepared.test] == [f"demo-{kind}-{i:04d}" for i in range(48)]
    assert all(set(row) == {"input", "reference"} for row in prepared.shots)

    # the generated lm-eval task accepts it (suffix tail, non-empty references)
    from ctxscale.tasks import write_task

    assert write_task(tmp_path / kind, tmp_path / "tasks").yaml_path.is_file()

    # every reference is scored 1 by the dataset's own metric and fits in max_new_tokens; numbers and
    # sentences leave one token spare, so a longer (wrong) output is seen rather than cut to a right one
    tokenizer = tiny.build_tokenizer()
    spare = 0 if kind == "recall" else 1
    for row in prepared.test:
        assert metrics.score(manifest["metric"], " " + row["reference"], row["reference"]) == 1.0
        n_tokens = len(tokenizer(" " + row["reference"], add_special_tokens=False)["input_ids"])
        assert n_tokens + spare == manifest["max_new_tokens"]


def test_prompts_nest_and_follow_the_official_shape(tokenizer_dir, tmp_path):
    prepared = write_with_cli("demo-arith", {**SPEC, "kind": "arithmetic"}, tokenizer_dir, tmp_path)
    query = prepared.test[0]["input"]
    one, three = prepared.prompt(query, 1), prepared.prompt(query, 3)
    shot = prepared.shots[0]
    assert one == f"Q: {shot['input']}\nA: {shot['reference']}\n\nQ: {query}\nA:"
    assert three.startswith(one[: -len(f"Q: {query}\nA:")])  # the 3-shot prompt extends the 1-shot block
    assert three == build_prompt("Q: ", "\nA: ", "\n\n", prepared.shots[:3], query)
    assert prepared.prompt(query, 0) == f"Q: {query}\nA:"


def test_rules_hand_worked():
    assert synthetic.translate_word("qd", "F") == "QF"
    arithmetic = synthetic.KINDS["arithmetic"]
    assert arithmetic.draw_example({"offset": 3500}, np.random.default_rng(0))[1] == str(
        int(arithmetic.draw_example({"offset": 3500}, np.random.default_rng(0))[0]) + 3500
    )
    cipher = synthetic.KINDS["cipher"]
    source, target = cipher.draw_example({"vocabulary": ["ab", "cd"], "ending": "Z", "sentence_words": 4},
                                         np.random.default_rng(1))
    assert len(source.split()) == 4 and set(source.split()) <= {"ab", "cd"}
    assert target == " ".join({"ab": "AZ", "cd": "CZ"}[w] for w in source.split())


@pytest.mark.parametrize("kind", sorted(KIND_TASKS))
def test_rows_follow_the_dataset_mapping(kind):
    dataset = synthetic.generate(f"demo-{kind}", {**SPEC, "kind": kind})
    mapping = dataset.mapping
    for row in dataset.shots + dataset.test:
        if kind == "recall":
            assert mapping["table"][row["input"]] == row["reference"]
        elif kind == "arithmetic":
            assert re.fullmatch(r"\d\d", row["input"])
            assert int(row["reference"]) == int(row["input"]) + mapping["offset"]
        else:
            words = row["input"].split()
            assert len(words) == 5 and set(words) <= set(mapping["vocabulary"])
            assert row["reference"] == " ".join(w[0].upper() + mapping["ending"] for w in words)
    if kind == "arithmetic":
        assert mapping["offset"] % 100 == 0 and 1000 <= mapping["offset"] <= 9900
    if kind == "recall":
        assert len(mapping["table"]) == 8 and set(mapping["table"].values()) <= set("ABCDE")


def test_generation_is_deterministic(tokenizer_dir, tmp_path):
    spec = {**SPEC, "kind": "cipher"}
    write_with_cli("demo-cipher", spec, tokenizer_dir, tmp_path / "a")
    write_with_cli("demo-cipher", spec, tokenizer_dir, tmp_path / "b")
    for name in ("shots.jsonl", "test.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    manifest_a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    manifest_b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest_a["tokenizer"].pop("name"), manifest_b["tokenizer"].pop("name")  # only the folder differs
    assert manifest_a == manifest_b


@pytest.mark.parametrize("kind", sorted(KIND_TASKS))
def test_mappings_differ_across_seeds_and_names_and_from_training(kind):
    mappings = [synthetic.generate(name, {**SPEC, "kind": kind, "seed": seed}).mapping
                for name, seed in [("a", 1), ("a", 2), ("b", 1), ("b", 2)]]
    fingerprints = {synthetic.mapping_fingerprint(kind, m) for m in mappings}
    assert len(fingerprints) == 4
    assert all(synthetic.mapping_purpose(kind, m) == "evaluation" for m in mappings)

    rng = np.random.default_rng(0)
    training = [synthetic.training_episode(synthetic.KINDS[kind], rng, 128) for _ in range(300)]
    training_fingerprints = {synthetic.mapping_fingerprint(kind, m) for _, m in training}
    # fresh mappings, not a fixed handful (arithmetic has 90 secrets in all, about half for training)
    assert len(training_fingerprints) > (40 if kind == "arithmetic" else 250)
    assert all(synthetic.mapping_purpose(kind, m) == "training" for _, m in training)
    assert not training_fingerprints & fingerprints
    assert all(len(text) >= 128 for text, _ in training)


def test_demonstrations_reveal_the_secret():
    """The secret is constant over a dataset's rows, and random across datasets (so shots are needed)."""
    offsets = {synthetic.generate(f"arith-{i}", {**SPEC, "kind": "arithmetic"}).mapping["offset"] for i in range(12)}
    endings = {synthetic.generate(f"cipher-{i}", {**SPEC, "kind": "cipher"}).mapping["ending"] for i in range(12)}
    assert len(offsets) >= 10 and len(endings) >= 6
    recall = synthetic.generate("recall", {**SPEC, "kind": "recall", "answer_bias": 1.0})
    assert {row["reference"] for row in recall.shots} == {recall.mapping["bias"]}


def test_length_filter_uses_the_tokenizer():
    tokenizer = tiny.build_tokenizer()
    # a cipher shot is "S: " + 14 + "\nE: " + 14 + "\n\n" = 37 tokens
    synthetic.generate("c", {**SPEC, "kind": "cipher", "max_length_per_example": 37}, tokenizer)
    with pytest.raises(UserError, match="too few examples fit max_length_per_example=36"):
        synthetic.generate("c", {**SPEC, "kind": "cipher", "max_length_per_example": 36}, tokenizer)


@pytest.mark.parametrize(
    "spec, message",
    [
        ('{"kind": "poetry"}', "synthetic spec of d at kind: 'poetry' is not one of ['recall', 'arithmetic', 'cipher']"),
        ('{"seed": 1}', "synthetic spec of d at (top level): 'kind' is a required property"),
        ('{"kind": "cipher", "task": "arithmetic"}', "kind cipher belongs to task translation"),
        ('{"kind": "cipher", "sentence_words": 3}', "synthetic spec of d at sentence_words: 3 is less than the minimum of 4"),
        ('{"kind": "recall", "colour": "red"}', "synthetic spec of d: unknown key colour (allowed here: answer_bias, kind, n_symbols"),
        ('{"kind": "recall", "max_eval_samples": 0}', "synthetic spec of d: max_eval_samples must be a positive integer"),
        ("[1", "--spec is not valid JSON"),
    ],
)
def test_user_errors_exit_2(spec, message, tmp_path, capsys):
    assert synthetic.main(["--dataset", "d", "--spec", spec, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_generator_defaults_come_from_the_schema(tmp_path):
    """A spec of only a kind gets the schema's generator defaults and the config's data defaults."""
    from ctxscale.config import schema_defaults

    generator, data = schema_defaults("synthetic_spec"), schema_defaults("data")
    assert generator == {"shot_pool": 128, "n_symbols": 8, "sentence_words": 5, "answer_bias": 0.75}
    dataset = synthetic.generate("d", {"kind": "cipher"})
    assert len(dataset.shots) == generator["shot_pool"] and len(dataset.test) == data["max_eval_samples"]
    assert dataset.manifest["source"]["options"] == {"n_symbols": 8, "sentence_words": 5, "answer_bias": 0.75}
    assert dataset.manifest["seeds"]["seed"] == data["seed"]
