"""Per-shot result files → observations tables: totals, task means, skipped cells, determinism, errors."""

import json

import pytest

from ctxscale.aggregate import aggregate, main
from ctxscale.errors import UserError


def write_result(root, model, dataset, task, k, scores, tokens, refused=0, n_ctx=None):
    """A result file as ctxscale.evaluate writes it (only the fields aggregation reads, plus metadata)."""
    path = root / model / dataset / f"shots_{k}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    instances = [
        {"id": f"i{i}", "prompt_tokens": t, "prediction": "x", "score": s} for i, (s, t) in enumerate(zip(scores, tokens))
    ]
    result = {
        "model": model, "dataset": dataset, "task": task, "n_shots": k,
        "score": sum(scores) / len(scores) if scores else None,
        "n_pmt": sum(tokens) / len(tokens) if tokens else None,
        "n_instances": len(scores), "n_refused": refused, "instances": instances, "refused": [],
        "metadata": {"settings": {"n_ctx": n_ctx}},
    }
    path.write_text(json.dumps(result))
    return path


def write_info(root, model, n_ctx, compute):
    path = root / "models" / f"{model}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"model": model, "n_ctx": n_ctx, "compute": compute}))
    return path


@pytest.fixture
def results(tmp_path):
    evals = tmp_path / "eval"
    # model a: two arithmetic datasets at 0 and 3 shots; one common-sense dataset.
    write_result(evals, "a", "gsm", "arithmetic", 0, [1.0, 0.0, 0.0, 1.0], [10, 12, 14, 16], n_ctx=4096)
    write_result(evals, "a", "gsm", "arithmetic", 3, [1.0, 1.0, 1.0, 0.0], [100, 110, 120, 130], n_ctx=4096)
    write_result(evals, "a", "math", "arithmetic", 0, [0.0, 0.0, 1.0], [20, 30, 40], refused=1, n_ctx=4096)
    write_result(evals, "a", "math", "arithmetic", 3, [0.5, 0.0, 1.0, 0.5], [200, 210, 220, 230], n_ctx=4096)
    write_result(evals, "a", "piqa", "common-sense", 0, [1.0, 1.0], [8, 9], n_ctx=4096)
    # a cell whose every prompt was refused: no measurement
    write_result(evals, "a", "piqa", "common-sense", 511, [], [], refused=2, n_ctx=4096)
    write_result(evals, "b", "gsm", "arithmetic", 0, [0.25, 0.75], [11, 13], n_ctx=8192)
    infos = [write_info(tmp_path, "a", 4096, 7.7715e22), write_info(tmp_path, "b", 8192, 1.5227e23)]
    return tmp_path, evals, infos


def test_totals_and_task_means(results):
    root, evals, infos = results
    per_dataset, per_task = aggregate([evals], infos, root / "obs.csv", root / "by_task.csv")
    assert list(per_dataset.columns) == [
        "model", "task", "dataset", "n_shots", "n_pmt", "n_ctx", "compute", "score", "n_instances", "n_refused"
    ]
    assert per_dataset[["model", "dataset", "n_shots"]].values.tolist() == [
        ["a", "gsm", 0], ["a", "gsm", 3], ["a", "math", 0], ["a", "math", 3], ["a", "piqa", 0], ["b", "gsm", 0],
    ]
    assert per_dataset["score"].tolist() == [0.5, 0.75, 1 / 3, 0.5, 1.0, 0.5]
    assert per_dataset["n_pmt"].tolist() == [13.0, 115.0, 30.0, 215.0, 8.5, 12.0]
    assert per_dataset["n_instances"].sum() == 4 + 4 + 3 + 4 + 2 + 2
    assert per_dataset["n_refused"].tolist() == [0, 0, 1, 0, 0, 0]
    assert per_dataset["compute"].tolist() == [7.7715e22] * 5 + [1.5227e23]
    # task cells: unweighted means over the task's datasets, instances summed
    assert per_task[["model", "task", "dataset", "n_shots"]].values.tolist() == [
        ["a", "arithmetic", "all", 0], ["a", "arithmetic", "all", 3], ["a", "common-sense", "all", 0],
        ["b", "arithmetic", "all", 0],
    ]
    assert per_task["score"].tolist() == pytest.approx([(0.5 + 1 / 3) / 2, (0.75 + 0.5) / 2, 1.0, 0.5])
    assert per_task["n_pmt"].tolist() == pytest.approx([(13 + 30) / 2, (115 + 215) / 2, 8.5, 12.0])
    assert per_task["n_instances"].tolist() == [7, 8, 2, 2]
    assert per_task["n_ctx"].tolist() == [4096, 4096, 4096, 8192]


def test_tables_are_byte_identical_and_exact(results):
    root, evals, infos = results
    aggregate([evals], infos, root / "obs1.csv", root / "task1.csv")
    # files given one by one, in another order, give the same bytes
    files = sorted(evals.rglob("shots_*.json"), reverse=True)
    aggregate(files, list(reversed(infos)), root / "obs2.csv", root / "task2.csv")
    assert (root / "obs1.csv").read_bytes() == (root / "obs2.csv").read_bytes()
    assert (root / "task1.csv").read_bytes() == (root / "task2.csv").read_bytes()
    lines = (root / "obs1.csv").read_text().splitlines()
    assert lines[0] == "model,task,dataset,n_shots,n_pmt,n_ctx,compute,score,n_instances,n_refused"
    assert lines[1] == "a,arithmetic,gsm,0,13.0,4096,7.7715e+22,0.5,4,0"
    assert lines[3] == "a,arithmetic,math,0,30.0,4096,7.7715e+22,0.3333333333333333,3,1"
    assert (root / "task1.csv").read_text().splitlines()[0] == "model,task,dataset,n_shots,n_pmt,n_ctx,compute,score,n_instances"


def test_fully_refused_cells_are_skipped_with_a_warning(results, caplog):
    root, evals, infos = results
    with caplog.at_level("WARNING", logger="ctxscale.aggregate"):
        per_dataset, _ = aggregate([evals], infos, root / "o.csv", root / "t.csv")
    assert 511 not in per_dataset["n_shots"].tolist()
    assert any("left out 1 cell(s)" in message for message in caplog.messages)


def test_mistakes_are_user_errors(results, tmp_path):
    root, evals, infos = results
    with pytest.raises(UserError, match="no model info file for model b"):
        aggregate([evals], infos[:1], root / "o.csv", root / "t.csv")
    duplicate = write_result(tmp_path / "elsewhere", "a", "gsm", "arithmetic", 0, [1.0], [5], n_ctx=4096)
    with pytest.raises(UserError, match="both hold model a, dataset gsm, 0 shots"):
        aggregate([evals, duplicate], infos, root / "o.csv", root / "t.csv")
    wrong_ctx = write_result(tmp_path / "ctx", "b", "math", "arithmetic", 0, [1.0], [5], n_ctx=4096)
    with pytest.raises(UserError, match="evaluated with n_ctx 4096, but the model info says 8192"):
        aggregate([wrong_ctx], infos, root / "o.csv", root / "t.csv")
    with pytest.raises(UserError, match="does not exist"):
        aggregate([tmp_path / "missing"], infos, root / "o.csv", root / "t.csv")
    with pytest.raises(UserError, match="no shots_"):
        aggregate([tmp_path / "models"], infos, root / "o.csv", root / "t.csv")


def test_command_line(results, capsys):
    root, evals, infos = results
    argv = ["--eval-files", str(evals), "--model-info", *map(str, infos),
            "--out-datasets", str(root / "cli" / "obs.csv"), "--out-tasks", str(root / "cli" / "task.csv")]
    assert main(argv) == 0
    assert len((root / "cli" / "obs.csv").read_text().splitlines()) == 7
    bad = ["--eval-files", str(evals), "--model-info", str(root / "nope.json"),
           "--out-datasets", str(root / "x.csv"), "--out-tasks", str(root / "y.csv")]
    assert main(bad) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot read model-info file") and "Traceback" not in err


def test_per_config_datasets_merge_into_one_dataset():
    """deepmind-math's configs count as one dataset in a task mean (hand-worked)."""
    import pandas as pd

    from ctxscale.aggregate import DATASET_COLUMNS, merge_subsets, task_rows

    rows = [
        # model, task, dataset, n_shots, n_pmt, n_ctx, compute, score, n_instances, n_refused
        ("m", "arithmetic", "deepmind-math.algebra__linear_1d", 1, 100.0, 4096, 1e22, 0.2, 10, 0),
        ("m", "arithmetic", "deepmind-math.numbers__gcd", 1, 140.0, 4096, 1e22, 0.6, 12, 1),
        ("m", "arithmetic", "gsm", 1, 300.0, 4096, 1e22, 0.1, 20, 0),
    ]
    frame = pd.DataFrame(rows, columns=DATASET_COLUMNS)
    merged = merge_subsets(frame)
    assert list(merged.dataset) == ["deepmind-math", "gsm"]
    dm = merged.iloc[0]
    assert dm.score == pytest.approx(0.4) and dm.n_pmt == pytest.approx(120.0)
    assert dm.n_instances == 22 and dm.n_refused == 1
    task = task_rows(merged)
    assert task.score.iloc[0] == pytest.approx((0.4 + 0.1) / 2)  # not (0.2 + 0.6 + 0.1) / 3
