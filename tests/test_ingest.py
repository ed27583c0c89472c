"""``ctxscale ingest`` on real lm-eval output: the test runs lm-eval itself (``simple_evaluate`` and its
``EvaluationTracker``, exactly what ``lm_eval --output_path OUT --log_samples`` writes) with a tiny random
Llama (ctxscale.tiny) on a task built by ctxscale.lm_eval_tasks, one run per shot count, then ingests and fits."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from ctxscale.cli import main
from ctxscale.datasets.prepared import write_prepared
from ctxscale.ingest import prompt_of
from ctxscale.lm_eval_tasks import write_task
from ctxscale.tiny import build_tokenizer, init_model, save_checkpoint

SHOTS = (0, 1, 3)
MANIFEST = {"dataset": "toy-qa", "task": "common-sense", "prefix": "Question: ", "suffix": "\nAnswer: ",
            "separator": "\n\n", "stop": ["\n\n", "Question: "], "metric": "mc_match", "max_new_tokens": 2,
            "counts": {"shots": 3, "test": 4}, "seeds": {"shots": 1}, "source": {"kind": "test fixture"},
            "tokenizer": "ctxscale.tiny"}
POOL = [{"input": f"Pick the letter {letter}: A B C D?", "reference": letter} for letter in "ABC"]
TEST_ROWS = [{"id": f"t{i}", "input": f"Pick the letter {letter}: A B C D?", "reference": letter}
             for i, letter in enumerate("BCDA")]


@pytest.fixture(scope="module")
def lm_eval_runs(tmp_path_factory):
    """Two tiny models (one per n_ctx) x three shot counts, each run written by lm-eval's tracker."""
    from lm_eval import simple_evaluate
    from lm_eval.loggers import EvaluationTracker
    from lm_eval.tasks import TaskManager

    root = tmp_path_factory.mktemp("ingest")
    tokenizer = build_tokenizer()
    write_prepared(root / "data", POOL, TEST_ROWS, MANIFEST)
    task = write_task(root / "data", root / "tasks")
    manager = TaskManager(include_path=str(task.directory), include_defaults=False)
    for name, seed in (("tiny-a", 0), ("tiny-b", 1)):
        model = init_model(tokenizer, hidden_size=32, num_layers=2, num_heads=4, n_ctx=256, seed=seed)
        save_checkpoint(model, tokenizer, root / name)
        for k in SHOTS:
            tracker = EvaluationTracker(output_path=str(root / "out" / f"{name}-{k}shot"))
            results = simple_evaluate(model="hf", model_args=f"pretrained={root / name},dtype=float32",
                                      tasks=[task.name], num_fewshot=k, log_samples=True, task_manager=manager,
                                      device="cpu", batch_size=4, evaluation_tracker=tracker)
            samples = results.pop("samples")
            tracker.save_results_aggregated(results=results, samples=samples)
            for task_name in results["configs"]:
                tracker.save_results_samples(task_name=task_name, samples=samples[task_name])
    sheet = root / "sheet.csv"
    pd.DataFrame({"model": ["tiny-a", "tiny-b"], "n_ctx": [256, 512], "N": [1e6, None], "D": [2e9, None],
                  "C": [None, 5e16]}).to_csv(sheet, index=False)
    return root, task.name, tokenizer


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_ingest_real_lm_eval_output_then_fit(lm_eval_runs, tmp_path, capsys):
    root, task, tokenizer = lm_eval_runs
    out = tmp_path / "obs.csv"
    code, stdout, err = run(["ingest", root / "out", "--model-sheet", root / "sheet.csv", "--tokenizer", root / "tiny-a",
                             "--metric", "mc_match", "--task", "common-sense", "--out", out], capsys)
    assert code == 0, err
    assert "6 cells (2 models, 1 datasets, tasks common-sense, shots [0, 1, 3])" in stdout
    obs = pd.read_csv(out)
    assert list(obs["n_shots"]) == [0, 1, 3, 0, 1, 3] and set(obs["dataset"]) == {task}
    assert (obs["task"] == "common-sense").all() and (obs["n_instances"] == 4).all()
    # compute: 6 N D for tiny-a, C as given for tiny-b
    assert obs.loc[obs["model"] == "tiny-a", "compute"].iloc[0] == pytest.approx(6 * 1e6 * 2e9)
    assert obs.loc[obs["model"] == "tiny-b", "compute"].iloc[0] == pytest.approx(5e16)
    # n_pmt: the logged prompts tokenized independently here, BOS included (the tiny tokenizer adds it)
    samples_file = next((root / "out" / "tiny-a-1shot").rglob("samples_*.jsonl"))
    samples = [json.loads(line) for line in samples_file.read_text().splitlines()]
    prompts = [prompt_of(s) for s in samples]
    assert prompts[0].startswith("Question: Pick the letter A") and prompts[0].count("Question: ") == 2
    ids = tokenizer(prompts[0]).input_ids
    assert ids[0] == tokenizer.bos_token_id
    expected = np.mean([len(tokenizer(p).input_ids) for p in prompts])
    assert obs.query("model == 'tiny-a' and n_shots == 1")["n_pmt"].iloc[0] == pytest.approx(expected)
    assert obs.groupby("model")["n_pmt"].apply(lambda s: s.is_monotonic_increasing).all()
    # score: the mean of the per-sample metric, equal to lm-eval's aggregate
    results = json.loads(next((root / "out" / "tiny-a-1shot").rglob("results_*.json")).read_text())
    aggregate = results["results"][task]["mc_match,none"]
    assert obs.query("model == 'tiny-a' and n_shots == 1")["score"].iloc[0] == pytest.approx(aggregate)
    # round trip: the ingested table fits
    fit_out = tmp_path / "fit.json"
    code, stdout, err = run(["fit", out, "--task", "common-sense", "--seeds", "1", "--out", fit_out, "-q"], capsys)
    assert code == 0, err
    assert json.loads(fit_out.read_text())["data"]["n_cells"] == 6


def test_ingest_errors_are_one_line(lm_eval_runs, tmp_path, capsys):
    root, task, _ = lm_eval_runs
    base = ["ingest", root / "out" / "tiny-a-0shot", "--model-sheet", root / "sheet.csv", "--tokenizer", root / "tiny-a",
            "--out", tmp_path / "o.csv"]
    code, _, err = run(base + ["--metric", "accuracy"], capsys)
    assert code == 2 and err == f"error: unknown metric 'accuracy' for task {task}; the run has mc_match\n"
    sheet = tmp_path / "sheet.csv"
    pd.DataFrame({"model": ["other"], "n_ctx": [256], "C": [1e18]}).to_csv(sheet, index=False)
    code, _, err = run(base[:3] + [sheet] + base[4:] + ["--metric", "mc_match"], capsys)
    assert code == 2 and err.startswith("error: model tiny-a (") and "it lists other" in err
    # a run without --log_samples: no samples file beside its results
    bare = tmp_path / "bare"
    shutil.copytree(root / "out" / "tiny-a-0shot", bare)
    for path in bare.rglob("samples_*.jsonl"):
        path.unlink()
    code, _, err = run(["ingest", bare] + base[2:] + ["--metric", "mc_match"], capsys)
    assert code == 2 and "rerun lm_eval with --log_samples" in err and err.count("\n") == 1
    # a run that mixes tasks
    mixed = tmp_path / "mixed"
    shutil.copytree(root / "out" / "tiny-a-0shot", mixed)
    results_path = next(mixed.rglob("results_*.json"))
    record = json.loads(results_path.read_text())
    record["results"]["other_task"] = record["results"][task]
    results_path.write_text(json.dumps(record))
    code, _, err = run(["ingest", mixed] + base[2:] + ["--metric", "mc_match"], capsys)
    assert code == 2 and err.startswith(f"error: {results_path} mixes tasks {task}, other_task; run lm_eval with one task per run")


def test_prompt_of_reads_every_logged_request_shape():
    # generate_until and loglikelihood as EvaluationTracker writes them, and an older list form
    assert prompt_of({"arguments": {"gen_args_0": {"arg_0": "Q: 1+1?\nA:", "arg_1": {"until": ["\n"]}}}}) == "Q: 1+1?\nA:"
    choices = {"gen_args_0": {"arg_0": "Sky is", "arg_1": " blue"}, "gen_args_1": {"arg_0": "Sky is", "arg_1": " red"}}
    assert prompt_of({"arguments": choices}) == "Sky is"
    assert prompt_of({"arguments": [["Sky is", " blue"], ["Sky is", " red"]]}) == "Sky is"
    from ctxscale.errors import UserError

    with pytest.raises(UserError, match="no prompt in its arguments"):
        prompt_of({"doc": {}})
