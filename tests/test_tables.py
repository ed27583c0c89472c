"""The paper's tables, built from real fits of simulated observation tables (see test_figures.py),
checked value by value against the fit files and the paper's reported numbers (spec §6)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from ctxscale import tables
from ctxscale.errors import UserError
from ctxscale.fitting import load_fit
from ctxscale.rule_arguments import TABLE_NAMES
from test_figures import model_infos, paper_run, tiny_run  # noqa: F401  (fixtures)

REPO = Path(__file__).resolve().parents[1]
TASKS = ["arithmetic", "common-sense", "translation"]


@pytest.fixture(scope="module")
def paper_fits(paper_run) -> dict:
    return tables.load_fits(paper_run / "fits")


@pytest.fixture(scope="module")
def tiny_fits(tiny_run) -> dict:
    return tables.load_fits(tiny_run / "fits")


def paper_config() -> dict:
    return yaml.safe_load((REPO / "config" / "config.yaml").read_text())


def tiny_config() -> dict:
    models = {info["model"]: {"group": "yarn", "source": "tiny", "family": "tiny", "base": info["base"],
                              "n_ctx": info["n_ctx"], "tiny": {}} for info in model_infos("tiny")}
    return {"models": models, "model_groups": {"yarn": {"enabled": True}}, "tasks": {t: [t] for t in TASKS}}


def test_paper_reported_numbers_are_the_papers():
    assert tables.PAPER_REPORTED["in_distribution_mae"] == {"arithmetic": 0.010, "common-sense": 0.037,
                                                            "translation": 0.007}
    assert tables.PAPER_REPORTED["heldout_context_mae"] == {"arithmetic": 0.017, "common-sense": 0.067,
                                                            "translation": 0.006}
    assert tables.PAPER_REPORTED["mae_penalty_ablation"] == {"arithmetic": {
        "with penalty": {"within_ctx": 0.010, "beyond_ctx": 0.014, "all": 0.010},
        "without penalty": {"within_ctx": 0.019, "beyond_ctx": 0.104, "all": 0.029}}}


def test_mae_in_distribution_is_the_fits_beside_the_papers(paper_fits):
    frame = tables.mae_in_distribution(paper_fits)
    assert list(frame["task"]) == TASKS
    for row in frame.itertuples():
        metrics = paper_fits[("in-distribution", row.task)].metrics["train"]
        assert (row.n, row.mae, row.rmse, row.r2) == (120, metrics["mae"], metrics["rmse"], metrics["r2"])
    assert list(frame["paper_mae"]) == [0.010, 0.037, 0.007]


def test_mae_heldout_context_scores_the_long_prompts(paper_fits):
    frame = tables.mae_heldout_context(paper_fits)
    assert list(frame["paper_mae_test"]) == [0.017, 0.067, 0.006]
    assert set(frame["train_max_n_pmt"]) == {10_000}
    for row in frame.itertuples():
        fit = paper_fits[("held-out-context", row.task)]
        predictions = fit.predictions
        test = predictions[predictions["split"] == "test"]
        assert row.n_test == len(test) and (test["n_pmt"] >= 10_000).all()
        assert row.mae_test == pytest.approx(np.mean(np.abs(test["observed"] - test["predicted"])), abs=1e-12)
        assert row.n_train + row.n_test == 120


def test_penalty_ablation_reproduces_the_papers_qualitative_finding(paper_fits):
    frame = tables.mae_penalty_ablation(paper_fits)
    assert list(frame["variant"][:3]) == ["with penalty", "without penalty", "compute only"]
    arithmetic = frame[frame["task"] == "arithmetic"].set_index("variant")
    assert arithmetic.loc["with penalty", ["paper_mae_within_ctx", "paper_mae_beyond_ctx", "paper_mae_all"]].tolist() \
        == [0.010, 0.014, 0.010]
    assert arithmetic.loc["without penalty", ["paper_mae_within_ctx", "paper_mae_beyond_ctx", "paper_mae_all"]] \
        .tolist() == [0.019, 0.104, 0.029]
    assert arithmetic.loc["compute only", ["paper_mae_within_ctx"]].isna().all()
    # Cells beyond n_ctx: 30 of the 120 arithmetic cells (12 models x 10 shot counts) in this simulation.
    assert arithmetic.loc["with penalty", "n_beyond_ctx"] == 30
    for task in TASKS:
        rows = frame[frame["task"] == task].set_index("variant")
        # Without the penalty the law overestimates beyond n_ctx and underestimates within it (spec §6).
        assert rows.loc["without penalty", "mae_beyond_ctx"] > 10 * rows.loc["with penalty", "mae_beyond_ctx"]
        assert rows.loc["without penalty", "bias_beyond_ctx"] > 0.1
        assert rows.loc["without penalty", "bias_within_ctx"] < 0
        fit = paper_fits[("no-penalty", task)]
        assert rows.loc["without penalty", "mae_all"] == fit.metrics["train"]["mae"]


def test_mae_heldout_compute_per_held_out_model(paper_fits, paper_run):
    info = tables.load_model_info(sorted((paper_run / "models").glob("*.json")))
    frame = tables.mae_heldout_compute(paper_fits, info)
    assert len(frame) == 3 * 6
    arithmetic = frame[frame["task"] == "arithmetic"].set_index("model")
    assert list(arithmetic.index) == ["gemma-2-27b", "gemma-2-2b", "gemma-2-9b", "llama2-70b-4k", "qwen2.5-0.5b",
                                      tables.ALL_HELD_OUT]
    predictions = paper_fits[("held-out-compute", "arithmetic")].predictions
    gemma = predictions[(predictions["model"] == "gemma-2-9b") & (predictions["split"] == "test")]
    assert arithmetic.loc["gemma-2-9b", "mae"] == pytest.approx(np.mean(np.abs(gemma["observed"] - gemma["predicted"])))
    assert arithmetic.loc["gemma-2-9b", ["group", "compute", "n_ctx", "n"]].tolist() == ["ood", 4.0e23, 8192, 10]
    overall = paper_fits[("held-out-compute", "arithmetic")].metrics["test"]["mae"]
    assert arithmetic.loc[tables.ALL_HELD_OUT, "mae"] == pytest.approx(overall, abs=1e-12)


def test_leave_one_model_out_lists_every_fold(tiny_fits):
    frame = tables.mae_leave_one_model_out(tiny_fits)
    assert len(frame) == 3 * 9
    folds = {f["model"]: f for f in tiny_fits[("leave-one-model-out", "common-sense")].record["folds"]}
    for row in frame[frame["task"] == "common-sense"].itertuples():
        assert row.mae == folds[row.model]["mae"] and row.n == 7


def test_parameters_table_has_both_forms_and_the_bootstrap_intervals(paper_fits):
    frame = tables.parameters(paper_fits)
    fit = paper_fits[("in-distribution", "arithmetic")]
    rows = frame[(frame["experiment"] == "in-distribution") & (frame["task"] == "arithmetic")].set_index(
        ["form", "parameter"])
    assert list(rows.loc["identifiable"].index) == ["log10_C50", "alpha", "log10_n50", "beta"]
    assert list(rows.loc["paper"].index) == ["A", "C_c", "alpha", "B", "n_pmt_c", "beta"]
    for name in ("alpha", "beta", "log10_C50", "log10_n50"):
        row = rows.loc[("identifiable", name)]
        assert row["estimate"] == fit.identifiable_params[name]
        assert [row["ci_low"], row["ci_high"]] == fit.bootstrap["intervals"][name]
        assert row["n_bootstrap"] == 20 and row["level"] == 0.95
    assert rows.loc[("paper", "C_c"), "estimate"] == pytest.approx(10 ** fit.identifiable_params["log10_C50"])
    assert [rows.loc[("paper", "C_c"), "ci_low"], rows.loc[("paper", "C_c"), "ci_high"]] == \
        fit.bootstrap["intervals"]["paper:C_c"]
    assert np.isnan(rows.loc[("paper", "A"), "ci_low"])  # A = 1 is fixed on the ridge, no interval
    agnostic = frame[frame["experiment"] == "context-agnostic"]
    assert set(agnostic["parameter"]) == {"log10_C50", "alpha", "A", "C_c"}  # no context factor
    assert "leave-one-model-out" not in set(frame["experiment"])


def test_table1_puts_the_papers_values_beside_ours():
    frame = tables.table1(paper_config())
    assert len(frame) == 12  # the enabled YaRN group
    extended = frame[frame["n_ctx"] > 4096]
    assert np.allclose(extended["C"], extended["C_paper"], rtol=5e-5)  # 4 significant figures
    base = frame[frame["n_ctx"] == 4096].set_index("model")
    assert base.loc["llama2-7b-4k", ["C", "C_paper"]].tolist() == pytest.approx([7.7715e22, 7.7719e22], rel=2e-5)
    assert base.loc["llama2-13b-4k", "D_paper"] == 2.0e12


def test_table1_of_tiny_models_comes_from_the_model_info_files(tiny_run):
    info = tables.load_model_info(sorted((tiny_run / "models").glob("*.json")))
    frame = tables.table1(tiny_config(), info).set_index("model")
    row = frame.loc["tiny-m-512"]
    record = json.loads((tiny_run / "models" / "tiny-m-512.json").read_text())
    assert row["N"] == record["non_embedding_params"]
    assert row["D"] == record["pretrain_tokens"] + record["extension_tokens"]
    assert row["C"] == pytest.approx(6 * row["N"] * row["D"])
    assert frame["C_paper"].isna().all()
    assert tables.table1(tiny_config())["C"].isna().all()  # without model infos: unknown, not invented


def test_markdown_is_rounded_titled_and_annotated():
    frame = pd.DataFrame([{"task": "arithmetic", "n": 120, "mae": 0.01234, "rmse": 0.02, "r2": 0.98765,
                           "mae_within_ctx": 0.0151, "mae_beyond_ctx": np.nan, "paper_mae": 0.010}])
    assert tables.to_markdown("mae_in_distribution", frame) == (
        "## In-distribution fit: MAE |P - P^| per task\n\n"
        "| task       | n   | mae   | rmse   | r2    | mae_within_ctx   | mae_beyond_ctx   | paper_mae   |\n"
        "|:-----------|:----|:------|:-------|:------|:-----------------|:-----------------|:------------|\n"
        "| arithmetic | 120 | 0.012 | 0.020  | 0.988 | 0.015            |                  | 0.010       |\n\n"
        "paper_mae: the paper's in-distribution MAE (Llama-2 7B/13B, YaRN 4k-128k).\n")
    empty = tables.mae_heldout_compute({})
    assert "_No held-out-compute fits found" in tables.to_markdown("mae_heldout_compute", empty)
    assert tables.format_tokens(131072) == "128k" and tables.format_tokens(10_000) == "10,000"
    assert tables.format_flops(7.7723e22) == "7.77e22"


def test_cli_writes_every_table_as_csv_and_markdown(tiny_run, tmp_path, capsys):
    out = tmp_path / "tables"
    argv = ["write", "--config-json", json.dumps(tiny_config()), "--fits-dir", str(tiny_run / "fits"),
            "--model-info", *map(str, sorted((tiny_run / "models").glob("*.json"))), "--out-dir", str(out), "-q"]
    assert tables.main(argv) == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(f"{n}.{ext}" for n in TABLE_NAMES
                                                           for ext in ("csv", "md"))
    summary = pd.read_csv(out / "mae_summary.csv")
    assert len(summary) == 3 * 5  # five experiments ran in the miniature: no held-out compute
    fit = load_fit(tiny_run / "fits" / "held-out-context" / "translation.json")
    row = summary[(summary["task"] == "translation") & (summary["experiment"] == "held-out-context")].iloc[0]
    assert row["mae_test"] == pytest.approx(fit.metrics["test"]["mae"], rel=1e-9)
    assert row["paper_mae"] == 0.006 and row["paper_split"] == "test"
    held_out = pd.read_csv(out / "mae_heldout_compute.csv")
    assert held_out.empty and list(held_out.columns) == tables.HELDOUT_COMPUTE_COLUMNS
    assert "No held-out-compute fits found" in (out / "mae_heldout_compute.md").read_text()
    assert capsys.readouterr().out.strip() == f"wrote 16 files to {out}"


def test_cli_user_errors_are_one_line(tiny_run, tmp_path, capsys):
    common = ["--fits-dir", str(tiny_run / "fits"), "--out-dir", str(tmp_path)]
    assert tables.main(["write", "--config-json", "{models: 1}", *common]) == 2
    assert capsys.readouterr().err.startswith("error: --config-json is not valid JSON")
    assert tables.main(["write", "--config-json", '{"tasks": {}}', *common]) == 2
    assert "must be a JSON object with a 'models' mapping" in capsys.readouterr().err
    assert tables.main(["write", "--config-json", json.dumps(tiny_config()), "--fits-dir", str(tmp_path / "none"),
                        "--out-dir", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == f"error: fits folder {tmp_path / 'none'} does not exist"


def test_load_fits_checks_the_folder_layout(tiny_run, tmp_path):
    misplaced = tmp_path / "fits" / "no-penalty"
    misplaced.mkdir(parents=True)
    record = json.loads((tiny_run / "fits" / "in-distribution" / "arithmetic.json").read_text())
    (misplaced / "arithmetic.json").write_text(json.dumps(record))
    with pytest.raises(UserError, match="records experiment 'in-distribution' but sits in the folder 'no-penalty'"):
        tables.load_fits(tmp_path / "fits")
    with pytest.raises(UserError, match="model-info file .* does not exist"):
        tables.load_model_info([tmp_path / "missing.json"])


def test_table1_reproduces_the_paper_to_four_significant_figures():
    ours = tables.table1(paper_config())
    assert list(ours.columns) == ["model", "base", "n_ctx", "N", "D", "C", "D_paper", "C_paper"] and len(ours) == 12
    merged = ours.drop(columns=["D_paper", "C_paper"]).merge(tables.PAPER_TABLE1, on=["base", "n_ctx"],
                                                             suffixes=("", "_paper"))
    assert len(merged) == 12
    for row in merged.itertuples():
        assert row.N == row.N_paper
        assert row.D == pytest.approx(row.D_paper, rel=2e-3)  # the paper prints tokens to 3 decimals (0.836B)
        same = f"{row.C:.4e}" == f"{row.C_paper:.4e}"
        if (row.base, row.n_ctx) in tables.TABLE1_KNOWN_DISCREPANCIES:
            # documented: the paper's 4k rows are not 6 N x 2.0T; ours are, like every extended row
            assert not same
            assert row.C == pytest.approx(6 * row.N * 2.0e12, rel=1e-12)
            assert abs(row.C - row.C_paper) / row.C_paper < 1e-4
        else:
            assert same, (row.model, row.C, row.C_paper)
    assert sorted(tables.TABLE1_KNOWN_DISCREPANCIES) == [("llama2-13b", 4096), ("llama2-7b", 4096)]
    assert f"{ours.loc[ours.model == 'llama2-7b-4k', 'C'].item():.4e}" == "7.7715e+22"
    assert f"{ours.loc[ours.model == 'llama2-13b-4k', 'C'].item():.4e}" == "1.5226e+23"


def test_table1_groups_and_tiny_models(tmp_path):
    config = {"model_groups": {"yarn": {"enabled": True}, "ood": {"enabled": False}, "tiny": {"enabled": True}},
              "models": {"big": {"group": "yarn", "source": "hf", "base": "b", "n_ctx": 4096,
                                 "non_embedding_params": 1000, "pretrain_tokens": 2.0e6, "extension_tokens": 0},
                         "off": {"group": "ood", "source": "hf", "base": "o", "n_ctx": 8192,
                                 "non_embedding_params": 10, "pretrain_tokens": 1.0e3},
                         "tiny-a": {"group": "tiny", "source": "tiny", "base": "tiny", "n_ctx": 256},
                         "tiny-b": {"group": "tiny", "source": "tiny", "base": "tiny", "n_ctx": 512}}}
    (tmp_path / "tiny-a.json").write_text(json.dumps({"model": "tiny-a", "n_ctx": 256, "compute": 3.06e11,
                                                      "non_embedding_params": 50_000, "pretrain_tokens": 1_000_000,
                                                      "extension_tokens": 20_000}))
    info = tables.load_model_info([tmp_path / "tiny-a.json"])
    frame = tables.table1(config, info)
    assert frame["model"].tolist() == ["big", "tiny-a", "tiny-b"]
    big, tiny_a, tiny_b = (frame.iloc[i] for i in range(3))
    assert big["C"] == pytest.approx(6 * 1000 * 2.0e6)
    assert tiny_a["N"] == 50_000 and tiny_a["D"] == 1_020_000 and tiny_a["C"] == 3.06e11  # the record's C = 6ND
    assert np.isnan(tiny_b["N"]) and np.isnan(tiny_b["C"])  # no record: unknown, not invented
    assert "off" in tables.table1(config, info, include_disabled=True)["model"].tolist()
    (tmp_path / "tiny-b.json").write_text(json.dumps({"model": "tiny-b", "non_embedding_params": 1}))
    with pytest.raises(UserError, match="tiny-b.json: n_ctx must be a positive number"):  # the one reader's check
        tables.load_model_info([tmp_path / "tiny-b.json"])


def test_table1_command_prints_and_writes_it(tmp_path, capsys):
    config = str(REPO / "config" / "config.yaml")
    assert tables.main(["table1", config, "--out", str(tmp_path / "t1.csv")]) == 0
    out = capsys.readouterr().out
    assert "llama2-7b-8k" in out and "7.7723e+22" in out and "6,476,271,616" in out and "qwen" not in out
    written = pd.read_csv(tmp_path / "t1.csv")
    assert len(written) == 12 and list(written.columns) == ["model", "base", "n_ctx", "N", "D", "C"]
    assert tables.main(["table1", config, "--all", "--format", "markdown"]) == 0
    assert "| qwen2.5-0.5b |" in capsys.readouterr().out
    # the miniature's tiny models have no numbers before training: N/A without their model-info files
    assert tables.main(["table1", str(REPO / "config" / "demo.yaml"), "--models-dir", str(tmp_path)]) == 0
    assert "N/A" in capsys.readouterr().out
    assert tables.main(["table1", str(tmp_path / "missing.yaml")]) == 2
    assert capsys.readouterr().err.strip() == f"error: config file not found: {tmp_path / 'missing.yaml'}"
    (tmp_path / "bad.yaml").write_text("models: [1, 2]\n")
    assert tables.main(["table1", str(tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
