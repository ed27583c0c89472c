"""The compare experiment (ctxscale.compare): information criteria, the law table, its CLI."""

import math

import pandas as pd
import pytest

from ctxscale.cli import main
from ctxscale.compare import COLUMNS, compare_task, information_criteria
from ctxscale.fit_inputs import FitSettings, select_cells
from ctxscale.law import LawSpec, simulate_observations

TRUTH = {"log10_C50": 22.0, "alpha": 0.4, "log10_n50": 2.8, "beta": 0.6}
MODELS = {f"m{c:.0e}-{k}": (c, k) for c in (1e20, 1e21, 1e22, 1e23) for k in (4096, 131072)}


def test_information_criteria_hand_worked():
    # residuals 0.1, -0.1, 0.2, 0: RSS = 0.06, n = 4, k = 2: n ln(RSS/n) = 4 ln 0.015
    aic, bic = information_criteria([0.5, 0.5, 0.5, 0.5], [0.4, 0.6, 0.3, 0.5], k=2)
    assert aic == pytest.approx(4 * math.log(0.015) + 4, rel=1e-12)
    assert bic == pytest.approx(4 * math.log(0.015) + 2 * math.log(4), rel=1e-12)


@pytest.fixture(scope="module")
def floored(tmp_path_factory):
    """A multiple-choice-like task: chance floor 0.25 under the law."""
    spec = LawSpec(law="chance-floor")
    frame = simulate_observations({**TRUTH, "floor": 0.25}, MODELS, spec=spec, n_instances=1000, seed=2, task="mc")
    path = tmp_path_factory.mktemp("obs") / "obs.csv"
    frame.drop(columns="truth").to_csv(path, index=False)
    return frame, path


def test_compare_prefers_the_law_that_made_the_data(floored):
    frame, _ = floored
    table = compare_task(select_cells(frame, "mc"), ["paper", "chance-floor"], FitSettings(seeds=(0,)),
                         train_max_n_pmt=10_000)
    assert list(table.columns) == COLUMNS and list(table["law"]) == ["paper", "chance-floor"]
    paper, floor = (table.set_index("law").loc[name] for name in ("paper", "chance-floor"))
    assert paper["n_params"] == 4 and floor["n_params"] == 5 and floor["n_cells"] == 80 and floor["n_models"] == 8
    # the floor law predicts held-out models and long prompts better, and wins BIC despite its extra parameter
    assert floor["lomo_test_mae"] < 0.7 * paper["lomo_test_mae"]
    assert floor["heldout_context_test_mae"] < paper["heldout_context_test_mae"]
    assert floor["bic"] < paper["bic"] - 10
    assert floor["lomo_test_mae"] < 0.02  # binomial noise at n = 1000 is about 0.01


def test_compare_cli_writes_the_table_and_refuses_bad_input(floored, tmp_path, capsys):
    _, path = floored
    code = main(["compare", str(path), "--task", "mc", "--laws", "paper,paper", "--seeds", "1",
                 "--train-max-n-pmt", "1e9", "--out-dir", str(tmp_path), "--name", "cmp", "-q"])
    out = capsys.readouterr().out
    assert code == 0 and "wrote" in out
    table = pd.read_csv(tmp_path / "cmp.csv")
    assert len(table) == 1  # a law named twice is compared once
    assert table["heldout_context_test_mae"].isna().all()  # nothing lies above 1e9 tokens: no split
    assert "## Law variants compared" in (tmp_path / "cmp.md").read_text()
    code = main(["compare", str(path), "--task", "mc", "--laws", "weibull", "--out-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: unknown law 'weibull'") and err.count("\n") == 1


def test_recommended_is_the_paper_law_because_no_variant_is_confirmed_on_mir_bench():
    """docs/laws.md: the choice sets' candidate (heavy-tail) and the former recommendation (relative-width) are not
    better than the paper law on the confirmation set MIR-Bench (committed fixture, held-out context at 10k
    tokens): their model-bootstrap intervals of the paired MAE difference do not lie below 0."""
    from pathlib import Path

    from ctxscale.external import mir_observations
    from ctxscale.law import resolve_law
    from ctxscale.selection import heldout_errors, set_table

    assert resolve_law("recommended") == "paper"
    raw = pd.read_csv(Path(__file__).resolve().parent / "data" / "external" / "mir_bench_readme.csv")
    obs = mir_observations(raw)
    errors = pd.concat([heldout_errors(select_cells(obs, task), ["paper", "heavy-tail", "relative-width"],
                                       FitSettings(seeds=(0,)), 10000) for task in ("mir-core", "mir-extended")])
    table = set_table({"mir": errors}, ["heavy-tail", "relative-width"], n_replicates=500).set_index("law")
    assert table.loc["heavy-tail", "n_models"] == 21 and table.loc["heavy-tail", "n_cells"] == 144
    assert (table["hi"] > 0).all() and not table["fails"].any()
    assert table.loc["heavy-tail", "paper_mae"] == pytest.approx(0.134, abs=0.003)


def test_compare_summarises_parameters_on_bounds_once(caplog):
    import logging

    from ctxscale.compare import compare_laws

    # the paper law's data: heavy-tail's gamma runs to its upper bound (the paper form is gamma -> inf)
    frame = simulate_observations(TRUTH, MODELS, n_instances=1000, seed=4, task="plain")
    with caplog.at_level(logging.WARNING):
        compare_laws(frame, ["plain"], ["paper", "heavy-tail"], FitSettings(seeds=(0,)), 10_000)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert not any("sits on its bound" in m for m in messages)
    summaries = [m for m in messages if "search bounds" in m]
    assert len(summaries) == 1 and "heavy-tail log10_gamma (" in summaries[0]
    assert summaries[0].startswith("compare: ") and " of 20 fits " in summaries[0]  # 2 laws x (1 + 8 LOMO + 1)
