"""lm-eval tasks generated from prepared data render the official prompts byte for byte (spec §4.4)."""

from pathlib import Path

import pytest
import yaml

from ctxscale.datasets.prepared import instance_shot_order, write_prepared
from ctxscale.datasets.registry import get_spec
from ctxscale.errors import UserError
from ctxscale.lm_eval_tasks import make_metric, task_name_for, write_task

# Inputs with the characters that could go wrong: Jinja braces, a trailing space inside the input, a
# newline, non-ASCII text.
SHOTS = [
    {"input": "What is {{ 2 + 3 }}?", "reference": "5"},
    {"input": "Name a colour.\nA. red\nB. blue", "reference": "B"},
    {"input": "Übersetze: Katze ", "reference": "cat"},
    {"input": "Last one", "reference": "#### 42"},
]
TEST = [
    {"id": "q0", "input": "How many legs has a spider?", "reference": "8"},
    {"id": "q1", "input": "German: Guten Morgen\nEnglish:", "reference": "Good morning"},
]


def manifest_for(dataset_name: str) -> dict:
    """The manifest of a real dataset spec (its prefix, suffix, stop strings, metric)."""
    spec = get_spec(dataset_name)
    return {
        **spec.manifest_format(),
        "counts": {},
        "seeds": {"shots": 31337},
        "source": {"hf_id": spec.hf_id},
        "tokenizer": "test",
    }


def official(manifest: dict, shots: list[dict], query: str, n: int) -> str:
    """Spec §4.4, written out independently of the library."""
    p, s, sep = manifest["prefix"], manifest["suffix"], manifest["separator"]
    text = ""
    for shot in shots[:n]:
        text += p + shot["input"] + s + shot["reference"] + sep
    return text + (p + query + s).rstrip()


def load_task(task_dir, name):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False).load([name])["tasks"][name]


@pytest.mark.parametrize("dataset_name", ["gsm", "aqua-rat", "wmt14-de-en", "arc-easy"])
def test_rendered_prompts_equal_the_official_construction(tmp_path, dataset_name):
    manifest = manifest_for(dataset_name)
    data_dir = write_prepared(tmp_path / "data", SHOTS, TEST, manifest)
    files = write_task(data_dir, tmp_path / "tasks")
    task = load_task(files.directory, files.name)
    docs = list(task.eval_docs)
    assert [doc["id"] for doc in docs] == ["q0", "q1"]
    for doc, row in zip(docs, TEST):
        for n in (0, 1, 3):
            rendered = task.fewshot_context(doc, n, gen_prefix=task.doc_to_prefix(doc))
            assert rendered == official(manifest, SHOTS, row["input"], n), (dataset_name, n)


def test_gsm_prompt_literal(tmp_path):
    """One prompt spelled out by hand: shots keep "Answer: " with its space, the query loses it."""
    manifest = manifest_for("gsm")
    data_dir = write_prepared(tmp_path / "data", SHOTS, TEST, manifest)
    files = write_task(data_dir, tmp_path / "tasks")
    task = load_task(files.directory, files.name)
    doc = list(task.eval_docs)[0]
    assert task.fewshot_context(doc, 1, gen_prefix=None) == (
        "Question: What is {{ 2 + 3 }}?\nAnswer: 5\n\nQuestion: How many legs has a spider?\nAnswer:"
    )


def _fewshot_context(tmp_path: Path, dataset: str, shots: list, doc_index: int, k: int) -> str:
    """The prompt lm-eval builds for test doc ``doc_index`` with ``k`` shots of a real dataset's format."""
    prepared = write_prepared(tmp_path / dataset, shots, TEST, manifest_for(dataset))
    files = write_task(prepared, tmp_path / "tasks")
    task = load_task(files.directory, files.name)
    return task.fewshot_context(list(task.eval_docs)[doc_index], k, gen_prefix=None)


def test_aqua_rat_and_wmt_literals(tmp_path):
    assert _fewshot_context(tmp_path, "aqua-rat", SHOTS, 0, 1) == (
        "Question: What is {{ 2 + 3 }}?Return a letter only.\nAnswer:5\n\n"
        "Question: How many legs has a spider?Return a letter only.\nAnswer:"
    )
    assert _fewshot_context(tmp_path, "wmt14-de-en", SHOTS[:2], 1, 2) == (
        "What is {{ 2 + 3 }}?5\n\nName a colour.\nA. red\nB. blueB\n\nGerman: Guten Morgen\nEnglish:"
    )


def test_generated_yaml_settings(tmp_path):
    manifest = manifest_for("gsm")
    files = write_task(write_prepared(tmp_path / "data", SHOTS, TEST, manifest), tmp_path / "tasks")
    text = files.yaml_path.read_text()
    assert "num_fewshot" not in text  # a YAML num_fewshot: 0 would block the per-call override
    config = yaml.load(text, Loader=yaml.BaseLoader)  # BaseLoader: !function tags are kept as strings
    assert config["task"] == "ctxscale_gsm" == task_name_for("gsm") == files.name
    assert config["fewshot_config"]["sampler"] == "first_n"
    assert config["fewshot_config"]["target_delimiter"] == config["fewshot_config"]["fewshot_delimiter"] == ""
    assert config["output_type"] == "generate_until"
    assert config["generation_kwargs"]["until"] == ["\n\n", "Question: "]
    assert config["generation_kwargs"]["max_gen_toks"] == "400"
    assert config["generation_kwargs"]["do_sample"] == "false"
    assert config["dataset_kwargs"]["data_files"]["test"] == str((tmp_path / "data" / "test.jsonl").resolve())
    task = load_task(files.directory, files.name)
    expected = {"until": ["\n\n", "Question: "], "max_gen_toks": 400, "do_sample": False, "temperature": 0.0}
    assert task.config.generation_kwargs == expected
    assert [m["metric"].__name__ for m in task.config.metric_list] == ["math_equiv"]


def test_task_names_are_sanitised():
    assert task_name_for("deepmind-math.algebra__linear_1d") == "ctxscale_deepmind_math_algebra__linear_1d"
    assert task_name_for("wmt14-de-en") == "ctxscale_wmt14_de_en"


def test_metric_wrappers_score_and_carry_the_metric_name():
    mc = make_metric("mc_match")
    assert mc.__name__ == "mc_match"
    assert mc(references=["B"], predictions=[" B. blue"]) == 1.0
    assert mc(references=["B"], predictions=["The answer is A"]) == 0.0  # first capital A-E wins ("T" is not one)
    math = make_metric("math_equiv")
    assert math(references=["so 3/4 of it, #### 0.75"], predictions=["it is 3/4"]) == 1.0
    assert math(references=["#### 1,000"], predictions=["1000 apples"]) == 1.0
    with pytest.raises(UserError, match="unknown metric"):
        make_metric("accuracy")


@pytest.mark.parametrize("dataset_name", ["gsm", "wmt14-de-en"])
def test_empty_references_and_irregular_whitespace_stay_exact(tmp_path, dataset_name):
    """lm-eval drops the delimiters of a shot whose target is empty; per-shot targets keep such shots whole,
    and an empty suffix leaves the stripped whitespace to each input."""
    shots = [
        {"input": "German: a\nEnglish:", "reference": "a"},
        {"input": "German: b\nEnglish: ", "reference": ""},
        {"input": "German: c\nEnglish:\n", "reference": "c"},
    ]
    manifest = manifest_for(dataset_name)
    files = write_task(write_prepared(tmp_path / "data", shots, TEST, manifest), tmp_path / "tasks")
    task = load_task(files.directory, files.name)
    for doc, row in zip(task.eval_docs, TEST):
        for n in (1, 2, 3):
            assert task.fewshot_context(doc, n, gen_prefix=None) == official(manifest, shots, row["input"], n)
    if dataset_name == "wmt14-de-en":
        doc = list(task.eval_docs)[0]
        assert task.fewshot_context(doc, 3, gen_prefix=None) == (
            "German: a\nEnglish:a\n\nGerman: b\nEnglish: \n\nGerman: c\nEnglish:\nc\n\nHow many legs has a spider?"
        )


def test_bad_prepared_data_is_a_user_error(tmp_path):
    """The task is written from data read through read_prepared, whose checks (tests/test_datasets.py) apply."""
    manifest = manifest_for("gsm") | {"metric": "accuracy"}
    data_dir = write_prepared(tmp_path / "data", SHOTS, TEST, manifest)
    with pytest.raises(UserError, match="unknown metric 'accuracy'"):
        write_task(data_dir, tmp_path / "tasks")
    with pytest.raises(UserError, match="missing"):
        write_task(tmp_path / "nowhere", tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()


def test_per_instance_shot_order_renders_each_instance_its_own_shots(tmp_path):
    """A manifest with ``shot_order: per-instance`` (the miniature's): lm-eval's sampler gives every document
    the first n of its own order, drawn from the seed and the document's id, whatever the evaluation order."""
    pool = [{"input": f"x{i}", "reference": f"y{i}"} for i in range(12)]
    test = [{"id": f"t{i}", "input": f"q{i}", "reference": "r"} for i in range(6)]
    manifest = {**manifest_for("gsm"), "shot_order": {"kind": "per-instance", "seed": 7}}
    files = write_task(write_prepared(tmp_path / "data", pool, test, manifest), tmp_path / "tasks")
    assert yaml.safe_load(files.yaml_path.read_text().replace("!function", ""))["fewshot_config"]["split"] == "test"
    task = load_task(files.directory, files.name)
    docs = list(task.eval_docs)
    for doc in reversed(docs):  # order does not matter
        for n in (0, 1, 5):
            order = instance_shot_order(7, doc["id"], len(pool))
            assert task.fewshot_context(doc, n, gen_prefix=None) == official(manifest, [pool[i] for i in order],
                                                                            doc["input"], n)
    # the orders differ between instances (the point of the option) and are permutations of the pool
    firsts = {tuple(instance_shot_order(7, row["id"], len(pool))[:3]) for row in test}
    assert len(firsts) == len(test)
    assert sorted(instance_shot_order(7, "t0", len(pool))) == list(range(len(pool)))
    assert instance_shot_order(7, "t0", len(pool)) != instance_shot_order(8, "t0", len(pool))
