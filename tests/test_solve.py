"""Planning queries (ctxscale.solve): hand-worked inversions of the law, intervals, out-of-reach answers."""

import json
import math

import numpy as np
import pytest

from ctxscale.cli import main
from ctxscale.law import LawSpec
from ctxscale.solve import required_compute, required_window, shortest_prompt

IDENT = {"log10_C50": 21.0, "alpha": 0.5, "log10_n50": 3.0, "beta": 0.8}


def f_n(n, ident=IDENT):
    return 1 - math.exp(-((n / 10 ** ident["log10_n50"]) ** ident["beta"]))


def test_compute_for_a_target_hand_worked():
    spec = LawSpec()
    # n_pmt 2000 far inside 32768: penalty 1, f_n = 1 - exp(-2^0.8); f_C = 0.5 / f_n; C = C50 (-ln(1 - f_C))^(1/alpha)
    f = 0.5 / f_n(2000)
    expected = 1e21 * (-math.log(1 - f)) ** 2
    got = float(required_compute(spec, IDENT, 0.5, 2000, 32768))
    assert got == pytest.approx(expected, rel=1e-9)
    assert float(spec.predict(IDENT, got, 2000, 32768)) == pytest.approx(0.5, abs=1e-9)
    # above the ceiling f_n(2000) = 0.823: out of reach; beyond the window: out of reach
    assert math.isinf(float(required_compute(spec, IDENT, 0.9, 2000, 32768)))
    assert math.isinf(float(required_compute(spec, IDENT, 0.5, 40000, 32768)))
    # chance floor 0.25: f_C = (0.5 - 0.25) / (0.75 f_n); below the floor any compute does
    floor_spec, floor_ident = LawSpec(law="chance-floor"), {**IDENT, "floor": 0.25}
    f = 0.25 / (0.75 * f_n(2000))
    assert float(required_compute(floor_spec, floor_ident, 0.5, 2000, 32768)) == pytest.approx(
        1e21 * (-math.log(1 - f)) ** 2, rel=1e-9)
    assert float(required_compute(floor_spec, floor_ident, 0.2, 2000, 32768)) == 0.0
    # replicates: one answer each
    reps = {k: np.array([v, v]) for k, v in IDENT.items()}
    reps["log10_C50"] = np.array([21.0, 22.0])
    both = required_compute(spec, reps, 0.5, 2000, 32768)
    assert both[1] / both[0] == pytest.approx(10.0)


def test_window_for_a_prompt_hand_worked():
    # paper penalty sigma(n_pmt - n_ctx) >= 0.99: n_ctx = n_pmt + ln 99
    window, need, unlimited = required_window(LawSpec(), IDENT, 1e22, 50000, share=0.99)
    assert float(window) == pytest.approx(50000 + math.log(99), abs=1e-6)
    assert float(need) == pytest.approx(0.99 * float(unlimited))
    # relative width w = 0.1: sigma((1 - n/n_ctx)/w) >= 0.99 sigma(1/w): n_ctx = n / (1 - w logit(0.99 sigma(10)))
    ident = {**IDENT, "log10_penalty_width": -1.0}
    s = 0.99 / (1 + math.exp(-10))
    expected = 50000 / (1 - 0.1 * math.log(s / (1 - s)))
    window, _, _ = required_window(LawSpec(law="relative-width"), ident, 1e22, 50000, share=0.99)
    assert float(window) == pytest.approx(expected, rel=1e-9)
    # an absolute target above the unlimited-window score is out of reach
    window, _, unlimited = required_window(LawSpec(), IDENT, 1e22, 50000, target=0.99)
    assert math.isinf(float(window)) and float(unlimited) < 0.99


def hand_best(n_ctx, ident=IDENT):
    """max of f_n(n) sigma(n - n_ctx): d/dn = 0 gives 1 - sigma = f_n'/f_n =: g, so n* = n_ctx + ln(g / (1 - g));
    f_n'/f_n = beta/n x e^-x / (1 - e^-x), x = (n/n50)^beta; three fixed-point steps from n_ctx."""
    n = n_ctx
    for _ in range(3):
        x = (n / 10 ** ident["log10_n50"]) ** ident["beta"]
        g = ident["beta"] / n * x * math.exp(-x) / (1 - math.exp(-x))
        n = n_ctx + math.log(g / (1 - g))
    return n, f_n(n, ident) * (1 - g)


def test_shortest_prompt_hand_worked():
    # paper law at n_ctx 4096: the best score sits about 10 tokens below the limit (hand_best);
    # 80% of it: f_n(n) = 0.8 f_n(n*) (1 - g), n = n50 (-ln(1 - 0.8 f_n(n*) (1 - g)))^(1/beta)
    n, best = shortest_prompt(LawSpec(), IDENT, 1e22, 4096, 0.8)
    f_c = 1 - math.exp(-(10 ** 0.5))
    n_star, context_best = hand_best(4096)
    assert 4080 < n_star < 4090
    assert float(best) == pytest.approx(f_c * context_best, rel=1e-9)
    assert float(n) == pytest.approx(1000 * (-math.log(1 - 0.8 * context_best)) ** (1 / 0.8), rel=1e-7)


def _fit_file(tmp_path, replicates):
    record = {"model_form": "context-aware", "penalty": {"kind": "paper", "width": None},
              "law": {"name": "paper", "floor": None}, "identifiable_params": IDENT, "params": {}, "metrics": {},
              "bootstrap": {"names": list(IDENT), "replicates": [[r[k] for k in IDENT] for r in replicates]}}
    path = tmp_path / "fit.json"
    path.write_text(json.dumps(record))
    return path


def test_solve_cli_gives_interval_and_reach_share(tmp_path, capsys):
    reps = [{**IDENT, "log10_C50": 20.8}, IDENT, {**IDENT, "log10_C50": 21.2}, {**IDENT, "log10_n50": 3.4}]
    path = _fit_file(tmp_path, reps)
    assert main(["solve", "compute", str(path), "--target", "0.5", "--n-pmt", "2000", "--n-ctx", "32768"]) == 0
    out = capsys.readouterr().out
    f = 0.5 / f_n(2000)
    estimate = 1e21 * (-math.log(1 - f)) ** 2
    assert f"answer: {estimate:.4g} FLOPs" in out
    # the fourth replicate (n50 = 2512 tokens) has its ceiling f_n = 0.53 ... reachable; lowest is C50 = 10^20.8
    assert f"[{10 ** -0.2 * estimate:.4g} FLOPs," in out and "replicates that can reach it: 100%" in out
    assert main(["solve", "compute", str(path), "--target", "0.6", "--n-pmt", "2000", "--n-ctx", "32768"]) == 0
    out = capsys.readouterr().out  # replicate 4: f_n(2000; n50 = 10^3.4) = 0.51 < 0.6: out of reach
    assert "out of reach]" in out and "replicates that can reach it: 75%" in out
    assert main(["solve", "prompt", str(path), "--compute", "1e22", "--n-ctx", "4096", "--share", "0.8",
                 "--tokens-per-shot", "100", "--query-tokens", "50"]) == 0
    out = capsys.readouterr().out
    n = 1000 * (-math.log(1 - 0.8 * hand_best(4096)[1])) ** (1 / 0.8)
    assert f"answer: {math.ceil(n)} tokens = {math.ceil((n - 50) / 100)} shots" in out
    assert main(["solve", "window", str(path), "--compute", "1e22", "--n-pmt", "50000", "--target", "0.99"]) == 0
    assert "answer: out of reach: even an unlimited window gives P = " in capsys.readouterr().out
    for bad in (["compute", str(path), "--target", "1.2", "--n-pmt", "1", "--n-ctx", "2"],
                ["prompt", str(path), "--compute", "-1", "--n-ctx", "4096"],
                ["window", str(tmp_path / "missing.json"), "--compute", "1e22", "--n-pmt", "10"]):
        assert main(["solve", *bad]) == 2
        assert capsys.readouterr().err.startswith("error: ")
