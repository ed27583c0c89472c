"""The selection protocol (ctxscale.selection): paired differences, model bootstrap, the rule, --law auto."""

import numpy as np
import pandas as pd
import pytest

from ctxscale.fit_inputs import FitSettings, select_cells
from ctxscale.law import LawSpec, simulate_observations
from ctxscale.selection import (MARGIN, REFERENCE, auto_select, decide, inner_threshold, model_bootstrap,
                                per_model_differences)


def _errors(task, per_model_errors: dict) -> pd.DataFrame:
    """law -> {model: [abs errors]}: an errors frame as heldout_errors writes it (cells in the same order)."""
    rows = []
    for law, by_model in per_model_errors.items():
        cell = 0
        for model, errors in by_model.items():
            for e in errors:
                rows.append({"task": task, "law": law, "cell": cell, "model": model, "n_pmt": 1000.0 + cell,
                             "n_ctx": 4096.0, "observed": 0.5, "predicted": 0.5 + e, "abs_error": abs(e)})
                cell += 1
    return pd.DataFrame(rows)


def test_paired_difference_per_model_hand_worked():
    errors = _errors("t", {"paper": {"a": [0.1, 0.2], "b": [0.3]}, "x": {"a": [0.05, 0.25], "b": [0.1]}})
    per_model = per_model_differences(errors, "x").set_index("model")
    assert per_model.loc["a", "sum_diff"] == pytest.approx(0.0) and per_model.loc["a", "n_cells"] == 2
    assert per_model.loc["b", "sum_diff"] == pytest.approx(-0.2)
    interval = model_bootstrap(per_model.reset_index(), n_replicates=400)
    # over all 3 cells: (0 - 0.2) / 3; a replicate of only model a gives 0, of only b gives -0.2
    assert interval.estimate == pytest.approx(-0.2 / 3)
    assert -0.2 - 1e-12 <= interval.lo <= interval.estimate <= interval.hi <= 1e-12
    with pytest.raises(Exception, match="same cells"):
        per_model_differences(errors[~((errors["law"] == "x") & (errors["cell"] == 0))], "x")


def _set(task, shift, n_models=6, seed=0):
    rng = np.random.default_rng(seed)
    base = {f"m{i}": list(rng.uniform(0.05, 0.15, 5)) for i in range(n_models)}
    return _errors(task, {"paper": base, "x": {m: [e + shift for e in v] for m, v in base.items()},
                          "y": {m: [e + (0.03 if i % 2 else -0.03) for e in v] for i, (m, v) in enumerate(base.items())}})


def test_rule_recommends_only_a_variant_that_also_holds_on_the_confirmation_sets():
    better = {"A": _set("a", -0.02), "B": _set("b", -0.01, seed=1), "C": _set("c", -0.015, seed=2)}
    result = decide(better, ["A", "B"], ["C"], ["paper", "x", "y"], n_replicates=300)
    assert result["candidate"] == "x" and result["recommended"] == "x"
    table = result["table"].set_index(["set", "law"])
    assert table.loc[("A", "x"), "diff"] == pytest.approx(-0.02) and table.loc[("A", "x"), "hi"] < 0
    assert not table["fails"].any() or table.loc[table["fails"]].index.get_level_values("law").isin(["y"]).all()
    # worse by more than the margin on a confirmation set: recommended falls back to the paper law
    worse = {**better, "C": _set("c", 2 * MARGIN + 0.01, seed=2)}
    result = decide(worse, ["A", "B"], ["C"], ["paper", "x", "y"], n_replicates=300)
    assert result["candidate"] == "x" and result["recommended"] == REFERENCE
    assert result["table"].set_index(["set", "law"]).loc[("C", "x"), "fails"]
    # a set with too few models neither fails a variant nor counts in the pool
    small = {"A": _set("a", -0.02), "B": _set("b", 0.2, n_models=3)}
    result = decide(small, ["A", "B"], [], ["paper", "x"], n_replicates=300)
    assert result["candidate"] == "x" and result["recommended"] == REFERENCE  # nothing confirmed it
    assert not result["table"].set_index("set").loc["B", "eligible"]


def test_inner_threshold_holds_out_the_longest_quarter():
    assert inner_threshold([100, 200, 300, 400, 100, 200, 300, 400]) == 400
    assert inner_threshold([100, 100, 200, 200]) is None  # two lengths: no inner split


# 15 models (5 compute levels x 3 windows); prompts still climbing at the longest lengths (n50 about 3k tokens)
TRUTH = {"log10_C50": 20.5, "alpha": 0.5, "log10_n50": 3.5, "beta": 1.5}
MODELS = {f"m{c:.0e}-{k}": (c, k) for c in (1e20, 3e20, 1e21, 3e21, 1e22) for k in (4096, 16384, 65536)}
GENERATORS = {
    "paper": ({}, "paper"),
    "relative-width": ({"log10_penalty_width": np.log10(0.3)}, "relative-width"),
    "chance-floor": ({"floor": 0.3}, "chance-floor"),
    "heavy-tail": ({"log10_gamma": np.log10(0.15)}, "heavy-tail"),
    "floor-relative-width": ({"floor": 0.3, "log10_penalty_width": np.log10(0.3)}, "floor-relative-width"),
    "effective-context": ({"log10_effective_share": np.log10(0.4), "log10_penalty_width": np.log10(0.05)},
                          "effective-context"),
}


@pytest.mark.parametrize("law", list(GENERATORS))
def test_auto_recovers_the_generating_variant(law):
    extra, name = GENERATORS[law]
    frame = simulate_observations({**TRUTH, **extra}, MODELS, spec=LawSpec(law=name), n_instances=2000, seed=3,
                                  task="sim")
    choice = auto_select(select_cells(frame, "sim"), FitSettings(seeds=(0,)), n_replicates=300)
    assert choice["law"] == law, choice["reason"]
    assert choice["reason"]


def test_fit_cli_law_auto_prints_and_records_its_choice(tmp_path, capsys):
    import json

    from ctxscale.cli import main

    extra, _ = GENERATORS["relative-width"]
    frame = simulate_observations({**TRUTH, **extra}, MODELS, spec=LawSpec(law="relative-width"), n_instances=2000,
                                  seed=3, task="sim")
    obs = tmp_path / "obs.csv"
    frame.drop(columns="truth").to_csv(obs, index=False)
    out = tmp_path / "fit.json"
    assert main(["fit", str(obs), "--task", "sim", "--law", "auto", "--seeds", "1", "--out", str(out), "-q"]) == 0
    stdout = capsys.readouterr().out
    assert "law auto: chose relative-width (" in stdout and "inner split: trained on n_pmt <" in stdout
    record = json.loads(out.read_text())
    assert record["law"]["name"] == "relative-width" and record["law_selection"]["law"] == "relative-width"
    assert {row["law"] for row in record["law_selection"]["inner"]} >= {"paper", "relative-width", "heavy-tail"}
    # held-out context: auto sees only the training prompts; a user mistake is an error, not a traceback
    assert main(["fit", str(obs), "--task", "sim", "--law", "auto", "--experiment", "held-out-context",
                 "--train-max-n-pmt", "20000", "--seeds", "1", "-q"]) == 0
    assert "law auto: chose" in capsys.readouterr().out
    assert main(["fit", str(obs), "--task", "sim", "--law", "auto", "--floor", "0.25"]) == 2
    assert capsys.readouterr().err.startswith("error: --law auto")
