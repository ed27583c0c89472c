"""The miniature's generated datasets: format, rules, revealing shots, per-instance shot orders, determinism, and
secrecy of the mappings."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from ctxscale import metrics, tiny
from ctxscale.datasets import synthetic
from ctxscale.datasets.prepared import build_prompt, instance_shot_order, read_prepared
from ctxscale.datasets.synthetic_kinds import KINDS, translate_word
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
    assert manifest["counts"] == {"shots": 128, "test": 48, "revealing_shots": 13}  # round(0.1 * 128)
    assert manifest["shot_order"] == {"kind": "per-instance", "seed": 31337}
    assert manifest["tokenizer"]["class"] and manifest["tokenizer"]["vocab_size"] == 100
    assert len(prepared.shots) == 128 and len(prepared.test) == 48
    # ids: the instance number, then the variant whose shot order is its stratum's (stratified_instance_ids)
    assert all(re.fullmatch(rf"demo-{kind}-{i:04d}(-[1-9][0-9]*)?", row["id"]) for i, row in enumerate(prepared.test))
    assert all(set(row) == {"input", "reference"} for row in prepared.shots)
    assert sum(row["input"].endswith("!") for row in prepared.shots) == 13
    assert all(row["input"][-1] in "!?" for row in prepared.shots)
    assert all(row["input"][-1] not in "!?" for row in prepared.test)

    # the generated lm-eval task accepts it (suffix tail, non-empty references)
    from ctxscale.lm_eval_tasks import write_task

    assert write_task(tmp_path / kind, tmp_path / "tasks").yaml_path.is_file()

    # every reference is scored 1 by the dataset's own metric and fits in max_new_tokens; numbers and
    # sentences leave one token spare, so a longer (wrong) output is seen rather than cut to a right one
    tokenizer = tiny.build_tokenizer()
    spare = 0 if kind == "recall" else 1
    for row in prepared.test:
        assert metrics.score(manifest["metric"], " " + row["reference"], row["reference"]) == 1.0
        n_tokens = len(tokenizer(" " + row["reference"], add_special_tokens=False)["input_ids"])
        assert n_tokens + spare == manifest["max_new_tokens"]


def test_prompts_nest_per_instance_and_follow_the_official_shape(tokenizer_dir, tmp_path):
    prepared = write_with_cli("demo-arith", {**SPEC, "kind": "arithmetic"}, tokenizer_dir, tmp_path)
    row = prepared.test[0]
    order = instance_shot_order(31337, row["id"], 128)
    one, three = prepared.prompt(row["input"], 1, row["id"]), prepared.prompt(row["input"], 3, row["id"])
    shot = prepared.shots[order[0]]
    assert one == f"Q: {shot['input']}\nA: {shot['reference']}\n\nQ: {row['input']}\nA:"
    assert three.startswith(one[: -len(f"Q: {row['input']}\nA:")])  # the 3-shot prompt extends the 1-shot block
    assert three == build_prompt("Q: ", "\nA: ", "\n\n", [prepared.shots[i] for i in order[:3]], row["input"])
    assert prepared.prompt(row["input"], 0, row["id"]) == f"Q: {row['input']}\nA:"
    # another instance gets other shots; without an id a per-instance prompt is refused
    other = prepared.test[1]
    assert prepared.shots_for(other["id"], 3) != prepared.shots_for(row["id"], 3)
    with pytest.raises(UserError, match="per-instance shots need the test instance's id"):
        prepared.prompt(row["input"], 1)
    # the paper's nested order stays available: every instance gets the pool's first k
    nested = synthetic.generate("demo-arith", {**SPEC, "kind": "arithmetic", "shot_order": "nested"})
    assert "shot_order" not in nested.manifest
    assert nested.prompt(row["input"], 3) == build_prompt("Q: ", "\nA: ", "\n\n", nested.shots[:3], row["input"])


@pytest.mark.parametrize("n_test", [96, 500])
def test_the_chance_of_a_revealing_shot_rises_smoothly_with_k(n_test):
    """The design's point: the share of instances whose k shots hold a revealing one follows the
    hypergeometric 1 - C(115, k) / C(128, k) (13 revealing rows of 128), a curve rather than a step, and
    (stratified ids) to within 1 / n at every k, not only within the sampling noise of n independent orders."""
    from math import comb

    dataset = synthetic.generate("demo", {**SPEC, "kind": "recall", "max_eval_samples": n_test})
    expected = {1: 0.1016, 3: 0.2767, 7: 0.5365, 15: 0.8187, 31: 0.978, 63: 0.9999}
    for k, share in expected.items():
        measured = np.mean([any(s["input"].endswith("!") for s in dataset.shots_for(row["id"], k))
                            for row in dataset.test])
        assert share == pytest.approx(1 - comb(115, k) / comb(128, k), abs=5e-4)
        assert measured == pytest.approx(share, abs=1 / n_test + 1e-9), k
    assert len({row["id"] for row in dataset.test}) == n_test


def test_first_reveal_quantiles_hand_worked():
    # 1 revealing row of 4: the first reveal is at 1, 2, 3, 4 with probability 1/4 each
    assert synthetic.first_reveal_quantiles(4, 1, 4) == [1, 2, 3, 4]
    assert synthetic.first_reveal_quantiles(4, 1, 2) == [1, 3]  # mid-quantiles 0.25 and 0.75: F(1), F(3)
    # 2 of 4: P(first = 1) = 1/2, P(2) = 1/3, P(3) = 1/6
    assert synthetic.first_reveal_quantiles(4, 2, 6) == [1, 1, 1, 2, 2, 3]


def test_rules_hand_worked():
    assert translate_word("qd", "F") == "QF"
    arithmetic = KINDS["arithmetic"]
    assert arithmetic.draw_example({"offset": 700, "questions": [23]}, np.random.default_rng(0)) == ("23", "723")
    assert arithmetic.format_shot(*synthetic.demonstration(("23", "723"), True)) == "Q: 23!\nA: 723\n\n"
    assert arithmetic.format_shot(*synthetic.demonstration(("23", "723"), False)) == "Q: 23?\nA: ?\n\n"
    recall = KINDS["recall"]
    assert recall.draw_example({"letter": "D", "decoy": "B", "questions": ["gBf"]}, np.random.default_rng(0)) == ("gBf", "D")
    cipher = KINDS["cipher"]
    source, target = cipher.draw_example({"vocabulary": ["ab", "cd"], "ending": "7", "sentence_words": 4},
                                         np.random.default_rng(1))
    assert len(source.split()) == 4 and set(source.split()) <= {"ab", "cd"}
    assert target == " ".join({"ab": "A7", "cd": "C7"}[w] for w in source.split())


@pytest.mark.parametrize("kind", sorted(KIND_TASKS))
def test_rows_follow_the_dataset_mapping(kind):
    dataset = synthetic.generate(f"demo-{kind}", {**SPEC, "kind": kind})
    mapping = dataset.mapping
    revealing = [row for row in dataset.shots if row["input"].endswith("!")]
    withheld = [row for row in dataset.shots if row["input"].endswith("?")]
    assert len(revealing) == 13 and len(withheld) == 115
    assert {row["reference"] for row in withheld} == {"?"}
    for row in [{**r, "input": r["input"][:-1]} for r in revealing] + dataset.test:
        if kind == "recall":
            assert row["input"] in mapping["questions"] and row["reference"] == mapping["letter"]
        elif kind == "arithmetic":
            assert re.fullmatch(r"[1-4][0-4]", row["input"])
            assert int(row["reference"]) == int(row["input"]) + mapping["offset"]
        else:
            words = row["input"].split()
            assert len(words) == 5 and set(words) <= set(mapping["vocabulary"])
            assert row["reference"] == " ".join(w[0].upper() + mapping["ending"] for w in words)
    if kind == "arithmetic":  # the secret's digits (5-9) never occur in a question (0-4)
        assert mapping["offset"] % 100 == 0 and set(str(mapping["offset"] // 100)) <= set("56789")
    if kind == "recall":  # the decoy, another answer letter, is the only capital of the questions
        assert len(mapping["questions"]) == 8 and mapping["letter"] in "ABCDE" and mapping["decoy"] in "ABCDE"
        assert mapping["decoy"] != mapping["letter"]
        capitals = {c for row in dataset.test for c in row["input"] if c.isupper()}
        assert capitals == {mapping["decoy"]}
    if kind == "cipher":
        assert mapping["ending"] in "0123456789"


def test_training_texts_answer_questions_only_after_a_reveal():
    """Training rows: unmarked questions answer ``?`` until a ``!`` row revealed the secret, then the answer."""
    rng = np.random.default_rng(3)
    kind = KINDS["arithmetic"]
    seen_abstain = seen_answer = 0
    for _ in range(50):
        text, mapping = synthetic.training_episode(kind, rng, 400)
        revealed = False
        for row in text.split("\n\n")[:-1]:
            question, answer = re.fullmatch(r"Q: (\d\d[!?]?)\nA: (\?|\d+)", row).groups()
            if question.endswith("?"):
                assert answer == "?"
            elif question.endswith("!"):
                assert int(answer) == int(question[:-1]) + mapping["offset"]
                revealed = True
            elif revealed:
                assert int(answer) == int(question) + mapping["offset"]
                seen_answer += 1
            else:
                assert answer == "?"
                seen_abstain += 1
    assert seen_abstain > 20 and seen_answer > 20


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
    training = [synthetic.training_episode(KINDS[kind], rng, 128) for _ in range(300)]
    training_fingerprints = {synthetic.mapping_fingerprint(kind, m) for _, m in training}
    # fresh mappings, not a fixed handful (arithmetic has 25 secrets in all, about half for training)
    assert len(training_fingerprints) > (10 if kind == "arithmetic" else 250)
    assert all(synthetic.mapping_purpose(kind, m) == "training" for _, m in training)
    assert not training_fingerprints & fingerprints
    assert all(len(text) >= 128 for text, _ in training)


def test_secrets_differ_across_datasets():
    """The secret is constant over a dataset's rows (above), and random across datasets (so shots are needed)."""
    offsets = {synthetic.generate(f"arith-{i}", {**SPEC, "kind": "arithmetic"}).mapping["offset"] for i in range(12)}
    endings = {synthetic.generate(f"cipher-{i}", {**SPEC, "kind": "cipher"}).mapping["ending"] for i in range(12)}
    letters = {synthetic.generate(f"recall-{i}", {**SPEC, "kind": "recall"}).mapping["letter"] for i in range(12)}
    assert len(offsets) == 5 and len(endings) >= 6 and len(letters) >= 3  # of 5, 10 and 5 possible


def test_length_filter_uses_the_tokenizer():
    tokenizer = tiny.build_tokenizer()
    # a revealing cipher shot is "S: " + 14 + "!" + "\nE: " + 14 + "\n\n" = 38 tokens
    synthetic.generate("c", {**SPEC, "kind": "cipher", "max_length_per_example": 38}, tokenizer)
    with pytest.raises(UserError, match="too few examples fit max_length_per_example=37"):
        synthetic.generate("c", {**SPEC, "kind": "cipher", "max_length_per_example": 37}, tokenizer)


@pytest.mark.parametrize(
    "spec, message",
    [
        ('{"kind": "poetry"}', "synthetic spec of d at kind: 'poetry' is not one of ['recall', 'arithmetic', 'cipher']"),
        ('{"seed": 1}', "synthetic spec of d at (top level): 'kind' is a required property"),
        ('{"kind": "cipher", "task": "arithmetic"}', "kind cipher belongs to task translation"),
        ('{"kind": "cipher", "sentence_words": 3}', "synthetic spec of d at sentence_words: 3 is less than the minimum of 4"),
        ('{"kind": "recall", "colour": "red"}', "synthetic spec of d: unknown key colour (allowed here: kind, n_symbols, reveal_share"),
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
    assert generator == {"shot_pool": 128, "reveal_share": 0.1, "shot_order": "per-instance", "n_symbols": 8,
                         "sentence_words": 5}
    dataset = synthetic.generate("d", {"kind": "cipher"})
    assert len(dataset.shots) == generator["shot_pool"] and len(dataset.test) == data["max_eval_samples"]
    assert dataset.manifest["source"]["options"] == {"n_symbols": 8, "sentence_words": 5, "reveal_share": 0.1}
    assert dataset.manifest["seeds"]["seed"] == data["seed"]
