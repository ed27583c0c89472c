"""The `ctxscale` command end to end, including every bad-input error."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ctxscale.cli import COMMANDS, main
from ctxscale.fitting import load_fit
from ctxscale.law import PAPER_CONTEXT_LIMITS, simulate_observations

TRUTH = {"log10_C50": 22.3, "alpha": 0.35, "log10_n50": 2.6, "beta": 0.55}
MODELS = {f"llama2-{size}-{k // 1024}k": (c, k) for size, c in (("7b", 7.77e22), ("13b", 1.52e23))
          for k in PAPER_CONTEXT_LIMITS}
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def observations(tmp_path_factory):
    frames = [simulate_observations(TRUTH, MODELS, n_instances=250, seed=s, task="ar", dataset=d)
              for s, d in enumerate(("gsm", "math"))]
    frames.append(simulate_observations(TRUTH, MODELS, n_instances=250, seed=5, task="mt", dataset="wmt14-de-en"))
    path = tmp_path_factory.mktemp("obs") / "observations.csv"
    pd.concat(frames).drop(columns="truth").to_csv(path, index=False)
    return path


def run(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_help_and_unknown_command(capsys):
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and all(name in out for name in ("fit", "predict", "table1", "model-info"))
    code, _, err = run(["fitt"], capsys)
    assert code == 2 and err.startswith("error: unknown command 'fitt'")
    assert set(COMMANDS) >= {"fit", "predict", "table1", "model-info"}


def test_fit_then_predict(observations, tmp_path, capsys):
    out = tmp_path / "fits" / "held-out-context" / "ar.json"
    code, stdout, _ = run(["fit", observations, "--task", "ar", "--experiment", "held-out-context",
                           "--train-max-n-pmt", "10000", "--seeds", "2", "--out", out, "-q"], capsys)
    assert code == 0
    assert "task ar | experiment held-out-context | context-aware, paper penalty | objective mse" in stdout
    assert f"wrote {out}" in stdout and "test " in stdout
    fit = load_fit(out)
    assert fit.experiment == "held-out-context" and fit.task == "ar" and fit.model_form == "context-aware"
    assert fit.metrics["train"]["n"] + fit.metrics["test"]["n"] == 120
    assert fit.record["data"]["source"] == str(observations) and len(fit.record["data"]["sha256"]) == 64
    assert fit.record["settings"]["datasets"] == ["gsm", "math"] and fit.record["seeds"] == [0, 1]
    code, stdout, _ = run(["predict", out, "--compute", "7.77e22", "--n-pmt", "1000", "9000", "--n-ctx", "8192"],
                          capsys)
    assert code == 0
    lines = stdout.strip().splitlines()
    assert lines[0] == "compute\tn_pmt\tn_ctx\tpredicted"
    expected = fit.predict(7.77e22, np.array([1000.0, 9000.0]), 8192)
    assert lines[1] == f"7.77e+22\t1000\t8192\t{expected[0]:.6f}"
    assert lines[2] == f"7.77e+22\t9000\t8192\t{expected[1]:.6f}" and expected[1] < 1e-6  # beyond the limit


def test_fit_is_reproducible_byte_for_byte(observations, tmp_path, capsys):
    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    for path in paths:
        assert run(["fit", observations, "--task", "mt", "--seeds", "1", "--out", path, "-q"], capsys)[0] == 0
    assert paths[0].read_bytes() == paths[1].read_bytes()


def test_fit_options_reach_the_result(observations, tmp_path, capsys):
    out = tmp_path / "fit.json"
    code, stdout, _ = run(["fit", observations, "--task", "ar", "--experiment", "held-out-compute",
                           "--holdout-models", "llama2-13b-128k,llama2-7b-128k", "--per-dataset", "--dataset", "gsm",
                           "--penalty", "relative", "--penalty-width", "0.02", "--objective", "binomial",
                           "--seeds", "1", "--bootstrap", "8", "--bootstrap-refit", "local", "--out", out, "-q"],
                          capsys)
    assert code == 0 and "bootstrap 8/8" in stdout
    record = json.loads(out.read_text())
    assert record["penalty"] == {"kind": "relative", "width": 0.02} and record["objective"] == "binomial"
    assert record["settings"]["per_dataset"] and record["settings"]["datasets"] == ["gsm"]
    assert record["settings"]["holdout_models"] == ["llama2-13b-128k", "llama2-7b-128k"]
    assert record["metrics"]["test"]["n"] == 20 and len(record["bootstrap"]["replicates"]) == 8
    code, stdout, _ = run(["predict", out, "--compute", "1e23", "--n-pmt", "500", "--n-ctx", "4096",
                           "--level", "0.9"], capsys)
    header, row = stdout.strip().splitlines()
    assert header.endswith("lo0.9\thi0.9")
    lo, predicted, hi = (float(row.split("\t")[i]) for i in (4, 3, 5))
    assert 0 < lo <= hi < 1 and lo - 0.05 < predicted < hi + 0.05


def test_every_experiment_runs_from_the_cli(observations, tmp_path, capsys):
    for experiment in ("in-distribution", "leave-one-model-out", "no-penalty", "context-agnostic"):
        out = tmp_path / f"{experiment}.json"
        code, stdout, err = run(["fit", observations, "--task", "mt", "--experiment", experiment, "--seeds", "1",
                                 "--out", out, "-q"], capsys)
        assert code == 0, err
        assert load_fit(out).experiment == experiment


def bad_table(tmp_path, name, change):
    frame = simulate_observations(TRUTH, MODELS, n_instances=250, seed=0, task="ar", dataset="gsm").drop(columns="truth")
    frame = change(frame)
    path = tmp_path / name
    frame.to_csv(path, index=False)
    return path


@pytest.mark.parametrize("name, change, extra, message", [
    ("missing.csv", lambda f: f.drop(columns=["n_ctx"]), [],
     "is missing column(s) n_ctx (expected model, task, dataset, n_shots, n_pmt, n_ctx, compute, score, n_instances)"),
    ("nan.csv", lambda f: f.assign(score=f["score"].where(f.index != 4)), [], "column score has NaN or infinite values (row 4)"),
    ("inf.csv", lambda f: f.assign(compute=f["compute"].where(f.index != 2, np.inf)), [],
     "column compute has NaN or infinite values (row 2)"),
    ("percent.csv", lambda f: f.assign(score=f["score"] * 100), [], "they look like percentages, divide by 100"),
    ("outside.csv", lambda f: f.assign(score=f["score"].where(f.index != 3, 1.7)), [],
     "scores must lie in [0, 1], found 1.7 (row 3)"),
    ("compute.csv", lambda f: f.assign(compute=f["compute"].where(~f["model"].eq("llama2-7b-8k"), -1.0)), [],
     "compute must be positive, found -1 (row 10)"),
    ("npmt.csv", lambda f: f.assign(n_pmt=f["n_pmt"].where(f.index != 0, 0.0)), [], "n_pmt must be positive, found 0 (row 0)"),
    ("few.csv", lambda f: f.iloc[:3], [], "in-distribution: 3 data points but the context-aware law has 4 free parameters"),
    ("ok.csv", lambda f: f, ["--task", "csr"], "unknown task 'csr'; the observations hold ar"),
    ("ok2.csv", lambda f: f, ["--experiment", "held-out-compute", "--holdout-models", "llama2-70b"],
     "unknown model(s) llama2-70b; task ar has"),
    ("ok3.csv", lambda f: f, ["--models", "gpt-4"], "unknown model(s) gpt-4 in --models"),
    ("ok4.csv", lambda f: f, ["--dataset", "math"], "unknown dataset(s) math for task ar; it has gsm"),
])
def test_bad_input_gets_one_line_and_exit_code_2(tmp_path, capsys, name, change, extra, message):
    path = bad_table(tmp_path, name, change)
    out = tmp_path / "never.json"
    argv = ["fit", path] + (extra if "--task" in extra else ["--task", "ar"] + extra) + ["--seeds", "1", "--out", out]
    code, stdout, err = run(argv, capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_missing_files_and_bad_predict_values(tmp_path, observations, capsys):
    code, _, err = run(["fit", tmp_path / "nope.csv", "--task", "ar"], capsys)
    assert code == 2 and err.strip() == f"error: observations file {tmp_path / 'nope.csv'} does not exist"
    code, _, err = run(["predict", tmp_path / "nope.json", "--compute", "1e22", "--n-pmt", "1", "--n-ctx", "2"], capsys)
    assert code == 2 and "does not exist" in err
    fit_path = tmp_path / "fit.json"
    assert run(["fit", observations, "--task", "mt", "--seeds", "1", "--out", fit_path, "-q"], capsys)[0] == 0
    code, _, err = run(["predict", fit_path, "--compute=-1e22", "--n-pmt", "100", "--n-ctx", "4096"], capsys)
    assert code == 2 and err.strip() == "error: --compute must be positive finite numbers, got -1e+22"
    code, _, err = run(["predict", fit_path, "--compute", "1e22", "1e23", "1e24", "--n-pmt", "1", "2",
                        "--n-ctx", "4096"], capsys)
    assert code == 2 and "need the same number of values" in err
    code, _, err = run(["fit", observations, "--task", "mt", "--penalty-width", "0.1"], capsys)
    assert code == 2 and "only to the relative penalty" in err
    code, _, err = run(["fit", observations, "--task", "mt", "--seeds", "0"], capsys)
    assert code == 2 and "--seeds must be at least 1" in err


def test_installed_entry_point_and_module_runs(observations, tmp_path):
    """The console script and `python -m` both work in a fresh process (what Snakemake rules call)."""
    script = shutil.which("ctxscale", path=str(Path(sys.executable).parent)) or shutil.which("ctxscale")
    if script is None:
        pytest.skip("the ctxscale console script is not installed (pip install -e .)")
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    out = tmp_path / "fit.json"
    result = subprocess.run([script, "fit", str(observations), "--task", "mt", "--seeds", "1", "--out", str(out)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "fitting context-aware law to 120 cells of mt" in result.stderr  # progress is logged to stderr
    result = subprocess.run([sys.executable, "-m", "ctxscale.fitting", str(out), "--compute", "1e23",
                             "--n-pmt", "100", "--n-ctx", "4096"], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("compute\tn_pmt\tn_ctx\tpredicted")
    result = subprocess.run([sys.executable, "-m", "ctxscale.experiments", str(observations), "--task", "nope"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2 and result.stderr.startswith("error: unknown task 'nope'")


def test_fit_and_predict_refuse_bad_options_before_work(tmp_path, observations, capsys):
    code, out, err = run(["fit", observations, "--task", "mt", "--out", tmp_path], capsys)
    assert code == 2 and out == ""  # refused before fitting
    assert err.strip() == f"error: --out {tmp_path} is a directory; give the fit file's path, e.g. {tmp_path}/fit.json"
    code, _, err = run(["fit", observations, "--task", "mt", "--level", "95"], capsys)
    assert code == 2 and err.strip() == "error: --level must be between 0 and 1, got 95.0"
    fit_path = tmp_path / "fit.json"
    assert run(["fit", observations, "--task", "mt", "--seeds", "1", "--out", fit_path, "-q"], capsys)[0] == 0
    query = ["--compute", "1e22", "--n-pmt", "100", "--n-ctx", "4096"]
    code, _, err = run(["predict", fit_path, *query, "--level", "0.9"], capsys)
    assert code == 2 and err.strip() == (
        f"error: --level needs a fit with a bootstrap; {fit_path} has none (refit with --bootstrap N)"
    )
    record = json.loads(fit_path.read_text())
    del record["identifiable_params"]["alpha"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(record))
    code, _, err = run(["predict", broken, *query], capsys)
    assert code == 2 and err.strip() == f"error: {broken} is not a complete ctxscale fit (KeyError: 'alpha')"


def test_fit_help_lists_columns_and_choices(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert "model, task, dataset, n_shots, n_pmt" in out and "n_instances" in out
    for choice in ("held-out-context", "leave-one-model-out", "context-agnostic", "relative", "binomial"):
        assert f"  {choice}" in out or f"{choice} =" in out or f"| {choice}" in out


@pytest.mark.parametrize("law", ["paper", "heavy-tail", "chance-floor", "relative-width", "floor-relative-width",
                                 "effective-context", "recommended"])
def test_fit_and_predict_with_every_law(law, observations, tmp_path, capsys):
    from ctxscale.law import LawSpec, resolve_law

    out = tmp_path / f"{law}.json"
    code, stdout, err = run(["fit", observations, "--task", "ar", "--law", law, "--seeds", "1", "--out", out, "-q"],
                            capsys)
    assert code == 0, err
    fit = load_fit(out)
    assert fit.record["law"]["name"] == resolve_law(law) and fit.spec.law == resolve_law(law)
    assert list(fit.identifiable_params) == list(LawSpec(law=law).identifiable_names)
    code, stdout, _ = run(["predict", out, "--compute", "7.77e22", "--n-pmt", "1000", "--n-ctx", "8192"], capsys)
    assert code == 0
    predicted = float(stdout.splitlines()[1].split("\t")[3])
    assert predicted == pytest.approx(float(fit.predict(7.77e22, 1000, 8192)), abs=1e-6) and 0 < predicted < 1


def test_fixed_floor_and_law_errors(observations, tmp_path, capsys):
    out = tmp_path / "floor.json"
    code, _, _ = run(["fit", observations, "--task", "ar", "--law", "chance-floor", "--floor", "0.25", "--seeds", "1",
                      "--out", out, "-q"], capsys)
    assert code == 0 and "floor" not in load_fit(out).identifiable_params
    assert load_fit(out).predict(7.77e22, 1e6, 8192) == pytest.approx(0.25, abs=1e-9)  # beyond n_ctx: the floor
    code, _, err = run(["fit", observations, "--task", "ar", "--floor", "0.25"], capsys)
    assert code == 2 and err.startswith("error: --floor applies only to the chance-floor law")
