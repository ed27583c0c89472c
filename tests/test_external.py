"""Converters of the external result tables (ctxscale.external), on hand-made rows in each source's format."""

import pandas as pd
import pytest

from ctxscale.cli import main
from ctxscale.errors import UserError
from ctxscale.external import helmet_observations, pythia_observations, ruler_observations


def test_helmet_rows_become_length_cells():
    raw = pd.DataFrame({
        "model": ["Llama-3-8B"] * 3 + ["GPT-4"], "params_b_as_listed": ["8", "8", "8", "?"],
        "context_limit_tokens": [8192, 8192, 8192, 131072], "prompt_tokens": [8192, 16384, 32768, 8192],
        "category": ["ICL", "ICL", "Recall", "ICL"], "score": [70.0, 2.5, 1.0, 80.8]})
    obs = helmet_observations(raw)
    # the 8k row sits at the limit (dropped), GPT-4 has no parameter count (dropped)
    assert list(obs["n_pmt"]) == [16384.0, 32768.0] and list(obs["task"]) == ["ICL", "Recall"]
    assert list(obs["dataset"]) == ["len16384", "len32768"] and obs["score"].tolist() == pytest.approx([0.025, 0.01])
    assert obs["compute"].iloc[0] == pytest.approx(6 * 8e9 * 1e12) and (obs["n_ctx"] == 8192).all()
    with pytest.raises(UserError, match="unknown HELMET categories Summs"):
        helmet_observations(raw, ["Summs"])


def test_pythia_checkpoints_with_both_shot_counts():
    raw = pd.DataFrame({
        "model": ["pythia-70m"] * 5, "step": [0, 3000, 3000, 13000, 0], "n_shots": [0, 0, 5, 0, 5],
        "compute_flops": [0, 1e18, 1e18, 4e18, 0], "context_limit_tokens": 2048, "task": "piqa",
        "score": [0.5, 0.6, 0.62, 0.65, 0.5]})
    obs = pythia_observations(raw)
    # step 0 has compute 0, step 13000 only a 0-shot score: one checkpoint left, two cells
    assert list(obs["model"]) == ["pythia-70m@step3000"] * 2 and list(obs["n_pmt"]) == [100.0, 600.0]
    assert list(obs["score"]) == [0.6, 0.62] and (obs["compute"] == 1e18).all()
    with pytest.raises(UserError, match="no Pythia checkpoints"):
        pythia_observations(raw, steps=[13000])


def test_external_cli_converts_ruler_and_rejects_another_table(tmp_path, capsys):
    source = tmp_path / "ruler.csv"
    pd.DataFrame({"model": ["Qwen1.5", "Qwen1.5"], "params_as_listed": ["72B", "72B"],
                  "context_limit_tokens": [32768, 32768], "prompt_tokens": [4096, 65536],
                  "score": [94.9, 0.0]}).to_csv(source, index=False)
    out = tmp_path / "obs.csv"
    assert main(["external", "ruler", str(source), "--out", str(out)]) == 0
    obs = pd.read_csv(out)
    assert list(obs["model"]) == ["Qwen1.5 72B"] * 2 and obs["score"].tolist() == pytest.approx([0.949, 0.0])
    assert ruler_observations(pd.read_csv(source))["n_pmt"].tolist() == [4096.0, 65536.0]
    capsys.readouterr()
    assert main(["external", "helmet", str(source), "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: ")


def test_mir_bench_rows_become_shot_cells_with_the_stated_stand_ins():
    from pathlib import Path

    from ctxscale.external import MIR_COMPUTE, mir_observations

    raw = pd.read_csv(Path(__file__).parent / "data" / "external" / "mir_bench_readme.csv")
    obs = mir_observations(raw)
    assert sorted(obs["task"].unique()) == ["mir-core", "mir-extended"] and obs["model"].nunique() == 21
    row = obs[(obs["model"] == "GPT-4o-0806") & (obs["task"] == "mir-core") & (obs["n_shots"] == 2048)].iloc[0]
    # README: 50.56 at 2048 shots; n_pmt = 100 + 2048 x 60; the listed 128k window
    assert row["score"] == pytest.approx(0.5056) and row["n_pmt"] == 100 + 2048 * 60 and row["n_ctx"] == 128000
    assert (obs["compute"] == MIR_COMPUTE).all() and (obs["n_pmt"] <= obs["n_ctx"]).all()


def test_cerebras_table_rows_become_shot_cells_with_the_listed_compute(tmp_path):
    from pathlib import Path

    from ctxscale.external import cerebras_observations

    table = Path(__file__).parent / "data" / "external" / "cerebras_gpt_0shot_5shot.csv"
    obs = cerebras_observations(pd.read_csv(table))
    assert obs["model"].nunique() == 20 and len(obs) == 20 * 7 * 2 and not obs["model"].str.contains("Pythia").any()
    row = obs[(obs["model"] == "Cerebras-GPT-13B") & (obs["task"] == "winogrande") & (obs["n_shots"] == 5)].iloc[0]
    # README: 0.674 at 5 shots, Training FLOPs 2.3E+22; n_pmt = (1 + 5) x 100 stand-in; the 2048-token window
    assert row["score"] == pytest.approx(0.674) and row["compute"] == pytest.approx(2.3e22)
    assert row["n_pmt"] == 600.0 and (obs["n_ctx"] == 2048).all()
    assert obs["compute"].min() == pytest.approx(2.6e18) and obs["compute"].max() == pytest.approx(6.4e22)
    assert set(cerebras_observations(pd.read_csv(table), ["lambada"])["task"]) == {"lambada"}
    with pytest.raises(UserError, match="unknown Cerebras-GPT table tasks sciq"):
        cerebras_observations(pd.read_csv(table), ["sciq"])
    out = tmp_path / "obs.csv"
    assert main(["external", "cerebras", str(table), "--out", str(out)]) == 0
    assert len(pd.read_csv(out)) == len(obs)
