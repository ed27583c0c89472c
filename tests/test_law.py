"""The law, its penalty variants, the identifiable parameterisation and the simulator."""

import math
import warnings

import numpy as np
import pytest

from ctxscale.errors import UserError
from ctxscale.law import (LawSpec, compute_factor, context_factor, context_penalty, identifiable_from_paper,
                          paper_from_identifiable, paper_law, simulate_observations)


def test_paper_law_hand_worked_value():
    # A (C/C_c)^alpha = 2 * (4e22/1e22)^0.5 = 4;  B (n/n_c)^beta = 1 * (500/1000)^1 = 0.5; 500 << 4096.
    expected = (1 - math.exp(-4.0)) * (1 - math.exp(-0.5)) * (1 / (1 + math.exp(500 - 4096)))
    value = paper_law(4e22, 500, 4096, A=2.0, C_c=1e22, alpha=0.5, B=1.0, n_pmt_c=1000.0, beta=1.0)
    assert value == pytest.approx(expected, rel=1e-12)
    assert value == pytest.approx(0.386262, abs=1e-6)


def test_factors_saturate_and_stay_accurate_for_tiny_hazards():
    assert compute_factor(1e30, 1.0, 1e22, 0.5) == 1.0
    # 1 - exp(-1e-12) would be 0 or noisy with a naive 1 - exp(); expm1 keeps it exact.
    assert context_factor(1e-12, 1.0, 1.0, 1.0) == pytest.approx(1e-12, rel=1e-9)


def test_paper_penalty_shape_at_below_and_above_the_limit():
    n_ctx = 8192
    assert context_penalty(n_ctx, n_ctx) == 0.5
    assert context_penalty(n_ctx - 10, n_ctx) == pytest.approx(1 / (1 + math.exp(-10)), rel=1e-12)
    assert context_penalty(n_ctx - 10, n_ctx) > 0.9999
    assert context_penalty(n_ctx + 10, n_ctx) == pytest.approx(1 / (1 + math.exp(10)), rel=1e-12)
    assert context_penalty(n_ctx + 10, n_ctx) < 1e-4
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a huge overflow must not warn (expit, not exp)
        assert context_penalty(1e9, n_ctx) == 0.0
        assert context_penalty(1.0, n_ctx) == 1.0
    values = context_penalty(np.linspace(0, 2 * n_ctx, 101), n_ctx)
    assert np.all(np.diff(values) <= 0)


def test_relative_penalty_width_is_a_fraction_of_the_limit():
    n_ctx = 10_000
    assert context_penalty(n_ctx, n_ctx, "relative") == 0.5
    # default width 1% of n_ctx: one width beyond the limit gives 1/(1+e)
    assert context_penalty(n_ctx * 1.01, n_ctx, "relative") == pytest.approx(1 / (1 + math.e), rel=1e-12)
    assert context_penalty(n_ctx * 0.9, n_ctx, "relative", 0.05) == pytest.approx(1 / (1 + math.exp(-2)), rel=1e-12)
    with pytest.raises(UserError, match="needs its width"):
        context_penalty(1, 2, "fitted")
    with pytest.raises(UserError, match="unknown penalty"):
        context_penalty(1, 2, "step")


def test_identifiable_mapping_hand_worked_and_round_trips():
    paper = {"A": 2.0, "C_c": 1e22, "alpha": 0.5, "B": 3.0, "n_pmt_c": 1000.0, "beta": 0.25}
    ident = identifiable_from_paper(paper)
    assert ident["log10_C50"] == pytest.approx(22 - math.log10(2) / 0.5, abs=1e-12)  # 21.39794
    assert ident["log10_n50"] == pytest.approx(3 - math.log10(3) / 0.25, abs=1e-12)  # 1.09151
    canonical = paper_from_identifiable(ident)
    assert canonical["A"] == 1.0 and canonical["B"] == 1.0
    assert canonical["C_c"] == pytest.approx(10 ** 21.397940008672037, rel=1e-12)
    # identifiable -> paper -> identifiable is exact
    assert identifiable_from_paper(canonical) == pytest.approx(ident, abs=1e-12)
    # the canonical paper point predicts exactly what the original one did (same point on the ridge)
    c, n, k = np.array([1e20, 7.8e22, 1e25]), np.array([10.0, 3000.0, 5000.0]), np.array([4096, 4096, 4096])
    np.testing.assert_allclose(paper_law(c, n, k, **{key: canonical[key] for key in paper}),
                               paper_law(c, n, k, **paper), rtol=1e-12)
    np.testing.assert_allclose(LawSpec().predict(ident, c, n, k), paper_law(c, n, k, **paper), rtol=1e-12)


def test_paper_form_rejects_non_positive_parameters():
    with pytest.raises(UserError, match="alpha"):
        identifiable_from_paper({"A": 1.0, "C_c": 1e22, "alpha": 0.0})


def test_model_forms_and_their_free_parameters():
    ident = {"log10_C50": 21.0, "alpha": 0.5, "log10_n50": 3.0, "beta": 0.7, "log10_penalty_width": -1.0}
    c, n, k = 1e22, np.array([100.0, 5000.0, 9000.0]), 8192
    aware = LawSpec().predict(ident, c, n, k)
    no_penalty = LawSpec("no-penalty").predict(ident, c, n, k)
    agnostic = LawSpec("context-agnostic").predict(ident, c, n, k)
    np.testing.assert_allclose(aware, no_penalty * context_penalty(n, k), rtol=1e-12)
    assert agnostic.shape == (3,) and np.all(agnostic == agnostic[0])  # flat in context (Fig. 1 baseline)
    assert agnostic[0] == pytest.approx(1 - math.exp(-10 ** 0.5), rel=1e-12)
    fitted = LawSpec(penalty="fitted").predict(ident, c, n, k)
    np.testing.assert_allclose(fitted, no_penalty * context_penalty(n, k, "relative", 0.1), rtol=1e-12)
    assert LawSpec().n_free == 4 and LawSpec(penalty="fitted").n_free == 5
    assert LawSpec("no-penalty").n_free == 4 and LawSpec("context-agnostic").n_free == 2
    assert LawSpec(penalty="relative").penalty_width == 0.01


def test_law_spec_rejects_bad_combinations():
    with pytest.raises(UserError, match="unknown model form"):
        LawSpec("quadratic")
    with pytest.raises(UserError, match="only to the relative penalty"):
        LawSpec(penalty="paper", penalty_width=0.1)
    with pytest.raises(UserError, match="positive"):
        LawSpec(penalty="relative", penalty_width=-1.0)


def test_simulator_draws_binomial_scores_around_the_law():
    ident = {"log10_C50": 22.0, "alpha": 0.4, "log10_n50": 2.8, "beta": 0.6}
    frame = simulate_observations(ident, {"a": (1e22, 4096), "b": (1e23, 131072)}, n_instances=400, seed=3)
    assert len(frame) == 20 and set(frame["n_shots"]) == {0, 1, 3, 7, 15, 31, 63, 127, 255, 511}
    assert frame["n_pmt"].max() == 60 + 230 * 511
    np.testing.assert_allclose(frame["truth"], LawSpec().predict(ident, frame["compute"], frame["n_pmt"],
                                                                 frame["n_ctx"]))
    np.testing.assert_allclose(frame["score"] * 400, np.round(frame["score"] * 400), atol=1e-9)  # whole instances
    beyond = frame["n_pmt"] > frame["n_ctx"]
    assert beyond.any() and np.all(frame.loc[beyond, "score"] == 0.0)
    inside = ~beyond & (frame["truth"] > 0.05)
    z = (frame.loc[inside, "score"] - frame.loc[inside, "truth"]) / np.sqrt(
        frame.loc[inside, "truth"] * (1 - frame.loc[inside, "truth"]) / 400)
    assert np.all(np.abs(z) < 5)


def test_paper_form_of_a_degenerate_fit_does_not_overflow():
    from ctxscale.law import paper_from_identifiable

    params = paper_from_identifiable({"log10_C50": 12.0, "alpha": 0.5, "log10_n50": 1200.0, "beta": 0.01})
    assert params["C_c"] == 1e12 and params["n_pmt_c"] == float("inf") and params["beta"] == 0.01


# ------------------------------------------------------------------------------------------- law variants

from ctxscale.law import LAW_ALIASES, LAW_CHOICES, LAWS, resolve_law, saturating_factor  # noqa: E402

IDENT = {"log10_C50": 22.0, "alpha": 0.5, "log10_n50": 3.0, "beta": 1.0}


def test_heavy_tail_hand_worked_and_paper_limit():
    # x = (n/n50)^beta = 2000/1000 = 2; gamma = 1: 1 - (1 + 2)^-1 = 2/3.  C = C50: compute factor 1 - 1/e.
    spec = LawSpec(law="heavy-tail")
    value = spec.predict({**IDENT, "log10_gamma": 0.0}, 1e22, 2000, 1e9)
    assert value == pytest.approx((1 - math.exp(-1)) * (2 / 3), rel=1e-12)
    # gamma -> infinity recovers the paper form 1 - exp(-x)
    paper = LawSpec().predict(IDENT, 1e22, 2000, 1e9)
    assert spec.predict({**IDENT, "log10_gamma": 8.0}, 1e22, 2000, 1e9) == pytest.approx(paper, rel=1e-7)
    # the tail is heavier: below the paper form for every x > 0 at finite gamma
    h = np.linspace(-3, 3, 13)
    assert np.all(saturating_factor(h, 0.5) < saturating_factor(h))


def test_chance_floor_hand_worked_fitted_or_given():
    # beyond the limit the penalty kills the law and P falls to the floor, not to 0
    fitted = LawSpec(law="chance-floor")
    assert fitted.identifiable_names[-1] == "floor" and fitted.n_free == 5
    assert fitted.predict({**IDENT, "floor": 0.25}, 1e22, 1e6, 4096) == pytest.approx(0.25, abs=1e-12)
    inside = (1 - math.exp(-1)) * (1 - math.exp(-2))
    assert fitted.predict({**IDENT, "floor": 0.25}, 1e22, 2000, 1e9) == pytest.approx(0.25 + 0.75 * inside, rel=1e-12)
    given = LawSpec(law="chance-floor", floor=0.25)
    assert given.n_free == 4 and given.predict(IDENT, 1e22, 2000, 1e9) == pytest.approx(0.25 + 0.75 * inside)
    with pytest.raises(UserError, match="only to the chance-floor law"):
        LawSpec(law="paper", floor=0.25)


def test_relative_width_law_is_the_fitted_penalty():
    spec = LawSpec(law="relative-width")
    assert spec.penalty == "fitted" and spec.extra_names == ("log10_penalty_width",)
    # sigma((n_ctx - n_pmt) / (w n_ctx)) with w = 0.1: n_pmt = 1.1 n_ctx gives expit(-1)
    value = spec.predict({**IDENT, "log10_penalty_width": -1.0}, 1e22, 1.1 * 4096, 4096)
    base = LawSpec("no-penalty").predict(IDENT, 1e22, 1.1 * 4096, 4096)
    assert value == pytest.approx(base / (1 + math.e), rel=1e-12)
    with pytest.raises(UserError, match="sets the fitted penalty"):
        LawSpec(law="relative-width", penalty="relative")


def test_registry_aliases_and_schema_agree():
    from ctxscale.config import load_schema

    assert set(LAWS) == {"paper", "heavy-tail", "chance-floor", "relative-width", "floor-relative-width",
                         "effective-context"}
    both = LawSpec(law="floor-relative-width")
    assert both.extra_names == ("log10_penalty_width", "floor") and both.n_free == 6
    assert LawSpec(law="recommended").law == LAW_ALIASES["recommended"] in LAWS
    assert resolve_law("paper") == "paper"
    with pytest.raises(UserError, match="unknown law 'weibull'; choose one of paper"):
        resolve_law("weibull")
    schema = load_schema()["properties"]["fit"]["properties"]["law"]
    assert tuple(schema["enum"]) == LAW_CHOICES and schema["default"] == "paper"
    compared = load_schema()["$defs"]["experiment"]["properties"]["laws"]
    assert compared["items"]["enum"] == list(LAWS)
    # compared by default: every variant but effective-context, which the selection protocol rejected (docs/laws.md)
    assert compared["default"] == [law for law in LAWS if law != "effective-context"]


@pytest.mark.parametrize("law,extra", [("heavy-tail", {"log10_gamma": 0.0}), ("chance-floor", {"floor": 0.25}),
                                       ("relative-width", {"log10_penalty_width": -1.5}),
                                       ("effective-context", {"log10_effective_share": -0.3,
                                                              "log10_penalty_width": -1.3})])
def test_every_variant_is_recovered_by_the_fit(law, extra):
    from ctxscale.fitting import FitData, fit_law

    truth = {"log10_C50": 22.0, "alpha": 0.4, "log10_n50": 2.8, "beta": 0.6, **extra}
    models = {f"m{c:.0e}-{k}": (c, k) for c in (1e20, 1e21, 1e22, 1e23, 1e24) for k in (4096, 16384, 131072)}
    spec = LawSpec(law=law)
    frame = simulate_observations(truth, models, spec=spec, n_instances=1000, seed=3)
    fit = fit_law(FitData.from_frame(frame), spec, seeds=(0, 1))
    name, value = next(iter(extra.items()))
    assert fit.identifiable[name] == pytest.approx(value, abs=0.1)
    assert fit.identifiable["beta"] == pytest.approx(0.6, rel=0.05)
    # the paper law on the same data fits worse (it cannot express the variant)
    paper = fit_law(FitData.from_frame(frame), LawSpec(), seeds=(0,))
    assert paper.loss > 1.2 * fit.loss
