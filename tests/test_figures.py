"""The paper's figures, rendered from fits of small observation tables at paper scale and at the miniature's.

The observation tables here are *simulated* from the law with binomial noise (known parameters per task),
so the figures have realistic shapes at both scales; the fits are real fits through
``ctxscale.experiments``. The tests read the matplotlib objects back (axes, scales, labels, series,
plotted values) and check them against the fit files.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection, PolyCollection

from ctxscale.errors import UserError
from ctxscale.figures import drawing, inputs, plots, render
from ctxscale.experiments import run_experiment
from ctxscale.fit_inputs import FitSettings, select_cells
from ctxscale.fitting import load_fit, write_json_atomic
from ctxscale.law import paper_law

REPO = Path(__file__).resolve().parents[1]

# Known law parameters per task (paper form) used to simulate the observations.
PARAMS = {
    "paper": {"arithmetic": dict(A=0.35, C_c=1e22, alpha=0.5, B=0.8, n_pmt_c=300, beta=0.45),
              "common-sense": dict(A=0.9, C_c=1e22, alpha=0.4, B=1.2, n_pmt_c=100, beta=0.3),
              "translation": dict(A=0.25, C_c=1e22, alpha=0.6, B=1.0, n_pmt_c=60, beta=0.6)},
    "tiny": {"arithmetic": dict(A=0.5, C_c=1e13, alpha=0.5, B=0.5, n_pmt_c=40, beta=0.7),
             "common-sense": dict(A=0.9, C_c=1e13, alpha=0.4, B=1.0, n_pmt_c=30, beta=0.6),
             "translation": dict(A=0.4, C_c=1e13, alpha=0.6, B=0.8, n_pmt_c=30, beta=0.5)},
}
SHOTS = {"paper": [0, 1, 3, 7, 15, 31, 63, 127, 255, 511], "tiny": [0, 1, 3, 7, 15, 31, 63]}
TOKENS_PER_SHOT = {"paper": {"arithmetic": 230, "common-sense": 120, "translation": 90},
                   "tiny": {"arithmetic": 11, "common-sense": 8, "translation": 14}}
INSTANCES = {"paper": 250, "tiny": 50}
TRAIN_MAX_N_PMT = {"paper": 10_000, "tiny": 200}
BOOTSTRAP = 20  # replicates: enough to draw a band; the bootstrap itself is tested in test_fitting


def model_infos(scale: str) -> list[dict]:
    """Model-info records (docs/architecture.md) of the simulated models."""
    infos = []
    if scale == "paper":
        for base, n_params in (("llama2-7b", 6_476_271_616), ("llama2-13b", 12_688_184_320)):
            for k in range(6):
                n_ctx = 4096 * 2 ** k
                extension = 0 if k == 0 else 400 * 64 * n_ctx
                infos.append(dict(model=f"{base}-{n_ctx // 1024}k", source="hf", family="llama2", group="yarn",
                                  base=base, n_ctx=n_ctx, non_embedding_params=n_params, pretrain_tokens=2e12,
                                  extension_tokens=extension, compute=6 * n_params * (2e12 + extension)))
        for k in range(1, 5):
            n_ctx = 4096 * 2 ** k
            infos.append(dict(model=f"llama2-7b-pi-{n_ctx // 1024}k", source="hf", family="llama2", group="pi",
                              base="llama2-7b-pi", n_ctx=n_ctx, non_embedding_params=6_476_271_616,
                              pretrain_tokens=2e12, extension_tokens=400 * 64 * n_ctx,
                              compute=6 * 6_476_271_616 * (2e12 + 400 * 64 * n_ctx)))
        for name, compute, n_ctx in (("qwen2.5-0.5b", 3.9e22, 32768), ("gemma-2-2b", 2.4e22, 8192),
                                     ("gemma-2-9b", 4.0e23, 8192), ("gemma-2-27b", 2.0e24, 8192),
                                     ("llama2-70b-4k", 8.2e23, 4096)):
            infos.append(dict(model=name, source="hf", family=name.split("-")[0], group="ood", base=name,
                              n_ctx=n_ctx, compute=compute))
    else:
        for base, compute in (("tiny-s", 2e12), ("tiny-m", 1.5e13), ("tiny-l", 1e14)):
            for i, n_ctx in enumerate((128, 256, 512)):
                infos.append(dict(model=f"{base}-{n_ctx}", source="extend" if i else "tiny", family="tiny",
                                  group="yarn", base=base, n_ctx=n_ctx, non_embedding_params=int(compute / 6 / 1e9),
                                  pretrain_tokens=1e9, extension_tokens=0.01e9 * i, compute=compute * (1 + 0.01 * i)))
                if i:  # what ctxscale.extend records: loss by position bucket before and after the extension
                    buckets = [[start, start + 128] for start in range(0, n_ctx, 128)]
                    before = [2.0 + 0.5 * b * b for b in range(len(buckets))]
                    infos[-1]["extension"] = {"validation": {"buckets": buckets, "before": before,
                                                             "after": [2.0 + 0.05 * b for b in range(len(buckets))]}}
    return infos


def simulate_observations(scale: str, seed: int = 0) -> pd.DataFrame:
    """by_task-style cells drawn from the law: score ~ Binomial(n, P) / n; PI models 3% below the law."""
    rng = np.random.default_rng(seed)
    rows = []
    for info in model_infos(scale):
        for task, params in PARAMS[scale].items():
            for shots in SHOTS[scale]:
                n_pmt = round(40 + TOKENS_PER_SHOT[scale][task] * shots * rng.uniform(0.97, 1.03), 2)
                p = float(paper_law(info["compute"], n_pmt, info["n_ctx"], **params))
                p *= 0.97 if info["group"] == "pi" else 1.0
                n = INSTANCES[scale]
                rows.append(dict(model=info["model"], task=task, dataset="all", n_shots=shots, n_pmt=n_pmt,
                                 n_ctx=info["n_ctx"], compute=info["compute"], score=rng.binomial(n, p) / n,
                                 n_instances=n))
    return pd.DataFrame(rows)


def write_run(scale: str, root: Path) -> Path:
    """Observations, model infos and the fits of every experiment, in the workflow's file layout."""
    root.mkdir(parents=True, exist_ok=True)
    observations = simulate_observations(scale)
    observations.to_csv(root / "by_task.csv", index=False)
    infos = model_infos(scale)
    for info in infos:
        (root / "models").mkdir(exist_ok=True)
        (root / "models" / f"{info['model']}.json").write_text(json.dumps(info))
    fitted = [i["model"] for i in infos if i["group"] == "yarn"]
    held_out = [i["model"] for i in infos if i["group"] == "ood"]
    for task in PARAMS[scale]:
        cells = select_cells(observations, task, models=fitted)
        experiments = ["in-distribution", "held-out-context", "no-penalty", "context-agnostic"]
        experiments += ["held-out-compute"] if held_out else ["leave-one-model-out"]
        for experiment in experiments:
            boot = BOOTSTRAP if experiment == "held-out-context" or (experiment, task) == (
                "in-distribution", "arithmetic") else 0
            settings = FitSettings(seeds=(0,), bootstrap=boot)
            if experiment == "held-out-compute":
                record = run_experiment(experiment, select_cells(observations, task, models=fitted + held_out),
                                        settings, holdout_models=held_out)
            else:
                record = run_experiment(experiment, cells, settings, train_max_n_pmt=TRAIN_MAX_N_PMT[scale])
            write_json_atomic(root / "fits" / experiment / f"{task}.json", record)
    return root


_RUNS: dict = {}


def shared_run(scale: str, tmp_path_factory) -> Path:
    """One run per scale for the whole session (also used by test_tables.py)."""
    if scale not in _RUNS:
        fitting_log = logging.getLogger("ctxscale.fitting")
        level = fitting_log.level
        fitting_log.setLevel(logging.ERROR)  # bound warnings of the no-penalty fit
        try:
            _RUNS[scale] = write_run(scale, tmp_path_factory.mktemp(f"run-{scale}"))
        finally:
            fitting_log.setLevel(level)  # later tests (test_compare's) read those warnings
    return _RUNS[scale]


@pytest.fixture(scope="module")
def paper_run(tmp_path_factory) -> Path:
    return shared_run("paper", tmp_path_factory)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    return shared_run("tiny", tmp_path_factory)


def inputs_of(run: Path) -> inputs.FigureInputs:
    return inputs.load_inputs(run / "by_task.csv", run / "fits", sorted((run / "models").glob("*.json")))


@pytest.fixture(scope="module")
def paper(paper_run) -> inputs.FigureInputs:
    return inputs_of(paper_run)


@pytest.fixture(scope="module")
def tiny(tiny_run) -> inputs.FigureInputs:
    return inputs_of(tiny_run)


PAPER_SETTINGS = inputs.FigureSettings(contour_n_ctx=8192, heldout_context_n_ctx=131072)


def panels(fig):
    """The data axes of a figure (colour bars excluded), in creation order."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def curves(ax):
    """Lines drawn over a range of n_pmt (not the vertical n_ctx / threshold markers)."""
    return [line for line in ax.get_lines() if len(np.unique(line.get_xdata())) > 2]


def legend_texts(fig):
    return [t.get_text() for legend in fig.legends for t in legend.get_texts()]


def scatters(ax):
    return [c for c in ax.collections if isinstance(c, PathCollection)]


# ------------------------------------------------------------------------------------------------ pieces


def test_style_sets_the_paper_look():
    drawing.style()
    import matplotlib as mpl

    assert mpl.rcParams["axes.spines.top"] is False and mpl.rcParams["axes.spines.right"] is False
    assert mpl.rcParams["savefig.dpi"] == 200
    assert mpl.rcParams["pdf.fonttype"] == 42  # embedded TrueType: text stays selectable in the PDF


def test_choose_n_ctx_takes_the_requested_value_else_the_nearest_present(caplog):
    present = [4096, 8192, 16384, 131072]
    assert inputs.choose_n_ctx(present, 8192, "second-smallest", "fig2") == 8192
    assert inputs.choose_n_ctx(present, None, "second-smallest", "fig2") == 8192
    assert inputs.choose_n_ctx(present, None, "largest", "held-out") == 131072
    with caplog.at_level(logging.WARNING, logger="ctxscale.figures"):
        assert inputs.choose_n_ctx([128, 256, 512], 8192, "second-smallest", "fig2") == 512
    assert "no model has n_ctx = 8192; drawing n_ctx = 512 instead" in caplog.text
    assert inputs.choose_n_ctx([128, 512], 256, "largest", "x") == 512  # log-distance tie: the larger


def test_n_pmt_grid_is_sorted_log_spaced_and_hugs_the_context_limit():
    grid = drawing.n_pmt_grid(30.0, 2.0e5, [8192, 131072])
    assert grid[0] == 30.0 and grid[-1] == 2.0e5
    assert np.all(np.diff(grid) > 0)
    for point in (8180.0, 8188.0, 8192.0, 8196.0, 8204.0, 131072.0):
        assert point in grid


def test_figure_settings_from_json_rejects_mistakes():
    settings = inputs.FigureSettings.from_json('{"formats": ["png"], "contour_n_ctx": 256}')
    assert settings.formats == ("png",) and settings.contour_n_ctx == 256
    with pytest.raises(UserError, match="--settings is not valid JSON"):
        inputs.FigureSettings.from_json("{contour_n_ctx: 256}")
    with pytest.raises(UserError, match="figure formats must be a non-empty list of png, pdf, svg"):
        inputs.FigureSettings.from_json('{"formats": ["jpg"]}')
    with pytest.raises(UserError, match="contour_n_ctx must be a positive number of tokens"):
        inputs.FigureSettings.from_json('{"contour_n_ctx": -5}')


# ------------------------------------------------------------------------------------------ paper scale


def test_fig1_contrasts_the_context_agnostic_and_the_context_aware_fit(paper, paper_run):
    fig = plots.fig1(paper, PAPER_SETTINGS)
    (ax,) = panels(fig)
    assert ax.get_xscale() == "log" and ax.get_yscale() == "linear"
    assert ax.get_xlabel() == r"prompt length $n_\mathrm{pmt}$ (tokens)"
    assert ax.get_ylabel() == "performance $P$"
    # Default model: the most compute among fitted models at the contour n_ctx (8k): the 13B.
    assert "llama2-13b-8k" in ax.get_title() and "Arithmetic reasoning" in ax.get_title()
    agnostic, aware = curves(ax)
    assert np.ptp(agnostic.get_ydata()) < 1e-12  # compute only: flat in n_pmt
    x, y = aware.get_xdata(), aware.get_ydata()
    assert y[x <= 8192 - 12].max() > 0.5 and y[x >= 8192 + 12].max() < 1e-4  # the penalty cliff at n_ctx
    (observed,) = scatters(ax)
    cells = paper.cells("arithmetic", "llama2-13b-8k")
    assert np.allclose(observed.get_offsets(), cells[["n_pmt", "score"]].to_numpy())
    rows = load_fit(paper_run / "fits/in-distribution/arithmetic.json").predictions
    rows = rows[rows["model"] == "llama2-13b-8k"]
    mae = np.mean(np.abs(rows["observed"] - rows["predicted"]))
    texts = legend_texts(fig)
    assert f"context-aware fit (MAE {mae:.3f})" in texts
    assert any(t.startswith("context-agnostic fit: compute only (MAE ") for t in texts)


def test_fig1_uses_the_configured_task_and_model(paper):
    fig = plots.fig1(paper, inputs.FigureSettings(fig1_task="translation", fig1_model="llama2-7b-16k"))
    assert panels(fig)[0].get_title().splitlines() == ["Machine translation", "llama2-7b-16k, C = 7.77e22"]


def test_fig2_contours_each_task_at_8k_with_both_model_sizes(paper):
    fig = plots.fig2(paper, PAPER_SETTINGS)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["(a) Arithmetic reasoning", "(b) Common-sense reasoning",
                                               "(c) Machine translation"]
    assert len(fig.axes) == 6  # one colour bar per panel
    for ax in axes:
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        points = scatters(ax)
        assert len(points) == 2  # llama2-7b-8k and llama2-13b-8k, the two fitted sizes at 8k
        assert sorted(np.unique(np.concatenate([p.get_offsets()[:, 1] for p in points]))) == pytest.approx(
            [7.7723e22, 1.5227e23], rel=1e-4)
        low, high = ax.get_ylim()
        assert low < 7.7e21 * 1.01 and high > 1.5e24  # a decade either side of the data
        assert ax.get_xlim()[1] >= 4 * 8192  # the cliff and the collapsed region are in view
    assert "llama2-7b-8k (C = 7.77e22)" in legend_texts(fig)
    assert r"$n_\mathrm{ctx}$ = 8k" in legend_texts(fig)


def test_fig2_falls_back_to_the_nearest_context_limit(paper, caplog):
    with caplog.at_level(logging.WARNING, logger="ctxscale.figures"):
        fig = plots.fig2(paper, inputs.FigureSettings(contour_n_ctx=10_000))
    assert "no model has n_ctx = 10000; drawing n_ctx = 8192 instead" in caplog.text
    assert r"$n_\mathrm{ctx}$ = 8k" in legend_texts(fig)


def test_heldout_context_marks_fitted_and_held_out_cells_at_128k(paper, paper_run):
    fig = plots.heldout_context(paper, PAPER_SETTINGS)
    axes = panels(fig)
    assert len(axes) == 3
    for ax, task in zip(axes, ["arithmetic", "common-sense", "translation"]):
        fit = load_fit(paper_run / f"fits/held-out-context/{task}.json")
        rows = fit.predictions
        rows = rows[rows["n_ctx"] == 131072]
        assert ax.get_xscale() == "log"
        assert len(curves(ax)) == 2  # llama2-7b-128k and llama2-13b-128k
        bands = [c for c in ax.collections if isinstance(c, PolyCollection) and len(c.get_paths()[0].vertices) > 10]
        assert len(bands) == 2  # the bootstrap band of each curve
        open_points = np.concatenate([s.get_offsets() for s in scatters(ax)[0::2]])
        filled_points = np.concatenate([s.get_offsets() for s in scatters(ax)[1::2]])
        assert len(open_points) == (rows["split"] == "train").sum()
        assert len(filled_points) == (rows["split"] == "test").sum()
        assert open_points[:, 0].max() < 10_000 <= filled_points[:, 0].min()
        assert f"held-out MAE {fit.metrics['test']['mae']:.3f} (n = {fit.metrics['test']['n']})" in ax.get_title()
        assert any(np.allclose(line.get_xdata(), 10_000) for line in ax.get_lines())  # the threshold
    assert "95% bootstrap band of the fit" in legend_texts(fig)
    assert "fitted cell (n_pmt < 10,000)" in legend_texts(fig)


def test_heldout_compute_plots_predicted_against_observed_for_the_held_out_models(paper, paper_run):
    fig = plots.heldout_compute(paper)
    for ax, task in zip(panels(fig), ["arithmetic", "common-sense", "translation"]):
        fit = load_fit(paper_run / f"fits/held-out-compute/{task}.json")
        test = fit.predictions[fit.predictions["split"] == "test"]
        assert ax.get_xlabel() == "observed $P$"
        points = np.concatenate([s.get_offsets() for s in scatters(ax)])
        assert len(scatters(ax)) == 5 and len(points) == len(test) == 50
        assert np.allclose(np.sort(points[:, 0]), np.sort(test["observed"]))
        assert np.allclose(np.sort(points[:, 1]), np.sort(test["predicted"]))
        assert f"MAE {fit.metrics['test']['mae']:.3f} (n = 50)" in ax.get_title()
        assert ax.get_xlim() == ax.get_ylim()
    assert any(t.startswith("gemma-2-27b (C = 2.00e24") for t in legend_texts(fig))


def test_pi_vs_yarn_pairs_each_pi_model_with_the_yarn_model_of_its_limit(paper):
    assert plots.pi_yarn_pairs(paper) == [(8192, "llama2-7b-8k", "llama2-7b-pi-8k"),
                                            (16384, "llama2-7b-16k", "llama2-7b-pi-16k"),
                                            (32768, "llama2-7b-32k", "llama2-7b-pi-32k"),
                                            (65536, "llama2-7b-64k", "llama2-7b-pi-64k")]
    fig = plots.pi_vs_yarn(paper)
    axes = panels(fig)
    assert len(axes) == 12  # 3 tasks x 4 context limits
    assert axes[0].get_title().startswith(r"$n_\mathrm{ctx}$ = 8k")
    assert all(len(scatters(ax)) == 2 and len(curves(ax)) == 2 for ax in axes)
    assert "PI (positional interpolation): observed (held out of the fit) and fit" in legend_texts(fig)


def test_per_model_has_one_panel_per_model_and_task(paper):
    fig = plots.per_model(paper)
    axes = panels(fig)
    assert len(axes) == 21 * 3
    row_labels = [ax.get_ylabel().splitlines()[0] for ax in axes[::3]]  # first column, row-major order
    assert row_labels[:6] == ["llama2-7b-4k", "llama2-7b-8k", "llama2-7b-16k", "llama2-7b-32k", "llama2-7b-64k",
                              "llama2-7b-128k"]
    assert row_labels[12:16] == ["llama2-7b-pi-8k", "llama2-7b-pi-16k", "llama2-7b-pi-32k", "llama2-7b-pi-64k"]
    assert sum("(held out of the fit)" in ax.get_title() for ax in axes) == (4 + 5) * 3
    assert all(ax.get_xscale() == "log" for ax in axes)


def test_saved_files_are_valid_and_identical_when_rendered_twice(paper, tmp_path):
    first = drawing.save_figure(plots.fig1(paper, PAPER_SETTINGS), tmp_path / "a", "fig1", ("png", "pdf"))
    second = drawing.save_figure(plots.fig1(paper, PAPER_SETTINGS), tmp_path / "b", "fig1", ("png", "pdf"))
    assert [p.name for p in first] == ["fig1.png", "fig1.pdf"]
    assert first[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and first[1].read_bytes()[:5] == b"%PDF-"
    for a, b in zip(first, second):
        assert a.read_bytes() == b.read_bytes()


# ------------------------------------------------------------------------------------------- miniature


def test_miniature_defaults_pick_its_own_context_limits(tiny):
    fig = plots.fig2(tiny)  # no settings: second-smallest n_ctx
    assert r"$n_\mathrm{ctx}$ = 256" in legend_texts(fig)
    assert all(len(scatters(ax)) == 3 for ax in panels(fig))  # three compute levels at 256
    fig = plots.heldout_context(tiny)  # largest n_ctx
    assert all(len(curves(ax)) == 3 for ax in panels(fig))
    assert "fitted cell (n_pmt < 200)" in legend_texts(fig)


def test_extension_validation_draws_each_extension_before_and_after_by_position(tiny, paper):
    fig = plots.extension_validation(tiny)
    axes = panels(fig)
    assert [ax.get_title() for ax in axes] == ["tiny-s", "tiny-m", "tiny-l"]
    lines = {line.get_label(): line for line in axes[0].get_lines() if not line.get_label().startswith("_")}
    assert sorted(lines) == ["tiny-s-256 after", "tiny-s-256 before", "tiny-s-512 after", "tiny-s-512 before"]
    after = lines["tiny-s-512 after"]
    assert list(after.get_xdata()) == [64, 192, 320, 448] and after.get_linestyle() == "-"
    assert list(after.get_ydata()) == pytest.approx([2.0, 2.05, 2.1, 2.15])
    assert list(lines["tiny-s-512 before"].get_ydata()) == pytest.approx([2.0, 2.5, 4.0, 6.5])
    with pytest.raises(UserError, match="extension_validation needs model-info files"):
        plots.extension_validation(paper)  # downloaded models: no extension record


def test_cli_renders_every_available_figure_and_skips_the_others(tiny_run, tmp_path, capsys, caplog):
    out = tmp_path / "figures"
    argv = ["--observations", str(tiny_run / "by_task.csv"), "--fits-dir", str(tiny_run / "fits"),
            "--model-info", *map(str, sorted((tiny_run / "models").glob("*.json"))),
            "--settings", json.dumps({"formats": ["png", "pdf"], "contour_n_ctx": 256}), "--out-dir", str(out)]
    with caplog.at_level(logging.WARNING, logger="ctxscale.figures"):
        assert render.main(argv + ["-q"]) == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == ["extension_validation.pdf", "extension_validation.png", "fig1.pdf", "fig1.png", "fig2.pdf",
                     "fig2.png", "heldout_context.pdf", "heldout_context.png", "per_model.pdf", "per_model.png"]
    assert all(p.stat().st_size > 10_000 for p in out.iterdir())
    assert "skipping heldout_compute" in caplog.text and "skipping pi_vs_yarn" in caplog.text
    capsys.readouterr()
    assert render.main(argv + ["--only", "heldout_compute"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == ("error: heldout_compute needs held-out-compute fits, and the fits folder has none for "
                           "the observed tasks")


def test_cli_runs_as_a_module_and_reports_user_errors(tiny_run, tmp_path):
    base = [sys.executable, "-m", "ctxscale.figures", "--observations", str(tiny_run / "by_task.csv"),
            "--out-dir", str(tmp_path)]
    done = subprocess.run(base + ["--fits-dir", str(tiny_run / "fits"), "--only", "fig1", "--settings",
                                  '{"formats": ["png"]}', "-q"], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "fig1.png").stat().st_size > 10_000 and not (tmp_path / "fig1.pdf").exists()
    done = subprocess.run(base + ["--fits-dir", str(tmp_path / "nowhere")], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 2
    assert done.stderr.strip().endswith(f"error: fits folder {tmp_path / 'nowhere'} does not exist")
    assert "Traceback" not in done.stderr


# ------------------------------------------------------------------------------------------- report


@pytest.mark.parametrize("config_file", ["config.yaml", "demo.yaml"])
def test_report_captions_render_for_every_figure_and_table(config_file):
    """Each caption renders as Snakemake renders it (Jinja, then reStructuredText) without a warning."""
    import yaml
    from docutils.core import publish_parts
    from jinja2 import Environment

    from ctxscale.rule_arguments import COMPARISON_TABLE
    from ctxscale.config import validate_config
    from ctxscale.rule_arguments import TABLE_NAMES

    config = validate_config(yaml.safe_load((REPO / "config" / config_file).read_text()))
    snakemake = type("Snakemake", (), {"config": config})
    environment = Environment(trim_blocks=True, lstrip_blocks=True)  # as snakemake.report
    report = REPO / "workflow" / "report"
    names = ["workflow", *render.FIGURE_NAMES, *TABLE_NAMES, COMPARISON_TABLE]
    assert sorted(p.stem for p in report.glob("*.rst")) == sorted(names)
    rendered = {}
    for name in names:
        text = environment.from_string((report / f"{name}.rst").read_text()).render(snakemake=snakemake)
        html = publish_parts(text, writer="html", settings_overrides={"halt_level": 2, "report_level": 2})
        assert "system-message" not in html["body"]
        rendered[name] = text
    threshold = config["experiments"]["held-out-context"]["train_max_n_pmt"]
    assert f"``n_pmt`` < {threshold} tokens" in rendered["heldout_context"]
    assert f"``n_ctx`` = {config['figures'].get('contour_n_ctx', 8192)} tokens" in rendered["fig2"]
    assert f"{len(config['shots'])} shot counts" in rendered["workflow"]
