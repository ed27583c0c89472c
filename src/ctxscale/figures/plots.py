"""The paper's figures, one function each, registered with the fits they draw (:mod:`.registry`); each returns a
:class:`matplotlib.figure.Figure` (no pyplot state, so the functions are safe in tests and in parallel jobs)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import BoundaryNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MultipleLocator

from ctxscale.errors import UserError
from ctxscale.figures.drawing import (C_LABEL, N_PMT_LABEL, P_LABEL, PAPER_WIDTH_IN, _curve, _grid_figure,
                                      _has_interval, _log_axis, _mae, _mark_n_ctx, _markers, _new_figure,
                                      _p_limits, _palette, _span, _train_models, n_pmt_grid)
from ctxscale.figures.inputs import FigureInputs, FigureSettings, choose_n_ctx
from ctxscale.figures.registry import fitted_tasks
from ctxscale.tables import format_flops, format_tokens, task_title

log = logging.getLogger(__name__)


def fig1(inputs: FigureInputs, settings: FigureSettings | None = None) -> Figure:
    """Fig. 1: observed P over n_pmt for one (task, model), context-agnostic fit against context-aware fit."""
    settings = settings or FigureSettings()
    tasks = fitted_tasks(inputs, "fig1", settings)
    task = settings.fig1_task or tasks[0]
    if task not in tasks:
        raise UserError(f"fig1 needs the in-distribution and the context-agnostic fit of task {task!r}, which the "
                        "fits folder lacks")
    aware, agnostic = inputs.fit("in-distribution", task), inputs.fit("context-agnostic", task)
    model = settings.fig1_model or _default_fig1_model(inputs, aware, task, settings)
    cells = inputs.cells(task, model)
    if cells.empty:
        raise UserError(f"fig1: no observations of model {model!r} on task {task!r}")
    compute, n_ctx = float(cells["compute"].iloc[0]), float(cells["n_ctx"].iloc[0])
    grid = n_pmt_grid(*_span(cells["n_pmt"], 1.5, 1.5), n_ctx)

    fig = _new_figure(3.4, 2.9)
    ax = fig.add_subplot()
    colours = sns.color_palette("colorblind")
    mae = {name: _mae(cells["score"], fit.predict(cells["compute"], cells["n_pmt"], cells["n_ctx"]))
           for name, fit in (("aware", aware), ("agnostic", agnostic))}
    aware_curve = _curve(aware, compute, n_ctx, grid)
    ax.plot(grid, _curve(agnostic, compute, n_ctx, grid), color=colours[3], linestyle="--", zorder=2,
            label=f"context-agnostic fit: compute only (MAE {mae['agnostic']:.3f})")
    ax.plot(grid, aware_curve, color=colours[0], zorder=3,
            label=f"context-aware fit (MAE {mae['aware']:.3f})")
    ax.scatter(cells["n_pmt"], cells["score"], color="black", s=16, zorder=4, label=f"observed ({model})")
    _mark_n_ctx(ax, n_ctx)
    ax.set_xlabel(N_PMT_LABEL)
    ax.set_ylabel(P_LABEL)
    _p_limits(ax, cells["score"].to_numpy(), aware_curve)
    _log_axis(ax, "x")
    ax.set_title(f"{task_title(task)}\n{model}, C = {format_flops(compute)}")
    fig.legend(loc="outside lower center", ncol=1)
    return fig


def _default_fig1_model(inputs: FigureInputs, aware, task: str, settings: FigureSettings) -> str:
    models = inputs.models()
    fitted = _train_models(aware)
    candidates = models[models["model"].isin(fitted) & models["model"].isin(inputs.cells(task)["model"])]
    if candidates.empty:
        raise UserError(f"fig1: no observed model of task {task!r} is in its in-distribution fit")
    n_ctx = choose_n_ctx(candidates["n_ctx"], settings.contour_n_ctx, "second-smallest", "fig1")
    at_ctx = candidates[candidates["n_ctx"] == n_ctx]
    return str(at_ctx.sort_values("compute")["model"].iloc[-1])


def fig2(inputs: FigureInputs, settings: FigureSettings | None = None) -> Figure:
    """Fig. 2a-c: contour of P^ over (n_pmt, C) at one n_ctx per task, fitted models' cells overlaid."""
    settings = settings or FigureSettings()
    tasks = fitted_tasks(inputs, "fig2", settings)
    models = inputs.models()
    fitted = set().union(*(_train_models(inputs.fit("in-distribution", t)) for t in tasks))
    models = models[models["model"].isin(fitted)]
    if models.empty:
        raise UserError("fig2: no observed model is in the in-distribution fits")
    n_ctx = choose_n_ctx(models["n_ctx"], settings.contour_n_ctx, "second-smallest", "fig2")
    shown = models[models["n_ctx"] == n_ctx]
    markers = _markers(shown["base"])

    fig = _new_figure(min(PAPER_WIDTH_IN, 2.45 * len(tasks) + 0.3), 2.75)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for index, (ax, task) in enumerate(zip(axes, tasks)):
        fit = inputs.fit("in-distribution", task)
        task_cells = inputs.cells(task)
        task_cells = task_cells[task_cells["model"].isin(fitted)]
        cells = task_cells[task_cells["model"].isin(shown["model"])]
        c_low, c_high = _span(task_cells["compute"], 10.0, 10.0)
        n_low, n_high = _span(task_cells["n_pmt"], 1.5, 1.5)
        n_high = max(n_high, 4.0 * n_ctx)
        n_axis = n_pmt_grid(n_low, n_high, n_ctx, points=300)
        c_axis = np.geomspace(c_low, c_high, 120)
        surface = np.asarray(fit.predict(c_axis[:, None], n_axis[None, :], float(n_ctx)), dtype=float)
        top = max(float(surface.max()), float(cells["score"].max()) if len(cells) else 0.0)
        levels, ticks = _colour_levels(top)
        norm = BoundaryNorm(levels, ncolors=256)
        filled = ax.contourf(n_axis, c_axis, surface, levels=levels, cmap="viridis", norm=norm)
        ax.contour(n_axis, c_axis, surface, levels=levels[1:-1], colors="white", linewidths=0.3, alpha=0.5)
        for model, model_cells in cells.groupby("model", sort=False):
            ax.scatter(model_cells["n_pmt"], model_cells["compute"], c=model_cells["score"], cmap="viridis", norm=norm,
                       marker=markers[inputs.base(model)], s=28, edgecolors="white", linewidths=0.8, zorder=4)
        ax.axvline(n_ctx, color="white", linestyle=":", linewidth=0.9)
        ax.set_xlabel(N_PMT_LABEL)
        if index == 0:
            ax.set_ylabel(C_LABEL)
        ax.set_title(f"({chr(ord('a') + index)}) {task_title(task)}")
        ax.grid(False)
        _log_axis(ax, "x")
        _log_axis(ax, "y")
        colorbar = fig.colorbar(filled, ax=ax, pad=0.02, fraction=0.06, ticks=ticks)
        colorbar.set_label(r"fitted $\hat P$ (markers: observed $P$)", fontsize=7)
        colorbar.ax.tick_params(labelsize=6.5)
    handles = [Line2D([], [], marker=markers[inputs.base(m)], linestyle="", markerfacecolor="0.75",
                      markeredgecolor="black", label=f"{m} (C = {format_flops(c)})")
               for m, c in zip(shown["model"], shown["compute"])]
    handles.append(Line2D([], [], color="0.3", linestyle=":", label=rf"$n_\mathrm{{ctx}}$ = {format_tokens(n_ctx)}"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4))
    return fig


def _colour_levels(top: float) -> tuple:
    """Contour levels and colour-bar ticks: steps of 0.1 (0.05 below 0.5), ticks on round numbers."""
    step = 0.05 if top <= 0.5 else 0.1
    ceiling = min(1.0, max(step, math.ceil(top / step - 1e-9) * step))
    levels = np.round(np.arange(0.0, ceiling + step / 2, step), 10)
    tick_step = 0.1 if top <= 0.5 else 0.2
    ticks = np.round(np.arange(0.0, ceiling + 1e-9, tick_step), 10)
    return levels, ticks


def heldout_context(inputs: FigureInputs, settings: FigureSettings | None = None) -> Figure:
    """Per task: the fit on n_pmt below the threshold, drawn at the largest n_ctx with its bootstrap band."""
    settings = settings or FigureSettings()
    tasks = fitted_tasks(inputs, "heldout_context", settings)
    all_rows = pd.concat([inputs.fit("held-out-context", t).predictions.assign(task=t) for t in tasks])
    n_ctx = choose_n_ctx(all_rows["n_ctx"], settings.heldout_context_n_ctx, "largest", "heldout_context")
    models = inputs.models()
    shown = models[models["model"].isin(all_rows.loc[all_rows["n_ctx"] == n_ctx, "model"])]
    colours = _palette(shown["model"])
    markers = _markers(shown["base"])

    fig = _new_figure(min(PAPER_WIDTH_IN, 2.4 * len(tasks) + 0.2), 2.75)
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    threshold, level = None, None
    for index, (ax, task) in enumerate(zip(axes, tasks)):
        fit = inputs.fit("held-out-context", task)
        rows = fit.predictions
        rows = rows[rows["model"].isin(shown["model"])]
        threshold = fit.record.get("settings", {}).get("train_max_n_pmt", threshold)
        grid = n_pmt_grid(*_span(rows["n_pmt"], 1.4, 1.4), n_ctx)
        curves = []
        for model, compute in zip(shown["model"], shown["compute"]):
            curve = _curve(fit, compute, n_ctx, grid)
            curves.append(curve)
            ax.plot(grid, curve, color=colours[model], zorder=3)
            if _has_interval(fit):
                level = (fit.bootstrap or {}).get("level", 0.95)
                lo, hi = fit.predict_interval(np.full_like(grid, compute), grid, np.full_like(grid, float(n_ctx)),
                                              level=level)
                ax.fill_between(grid, lo, hi, color=colours[model], alpha=0.2, linewidth=0, zorder=2)
            cells = rows[rows["model"] == model]
            train, test = cells[cells["split"] == "train"], cells[cells["split"] == "test"]
            ax.scatter(train["n_pmt"], train["observed"], marker=markers[inputs.base(model)], s=20,
                       facecolors="white", edgecolors=colours[model], linewidths=1.0, zorder=4)
            ax.scatter(test["n_pmt"], test["observed"], marker=markers[inputs.base(model)], s=20,
                       color=colours[model], edgecolors="black", linewidths=0.4, zorder=5)
        if threshold is not None:
            ax.axvspan(threshold, grid[-1], color="0.5", alpha=0.08, linewidth=0, zorder=0)
            ax.axvline(threshold, color="0.45", linestyle="--", linewidth=0.9, zorder=1)
        _mark_n_ctx(ax, n_ctx)
        ax.set_xlabel(N_PMT_LABEL)
        if index == 0:
            ax.set_ylabel(P_LABEL)
        _p_limits(ax, rows["observed"].to_numpy(), *curves)
        _log_axis(ax, "x")
        title = f"({chr(ord('a') + index)}) {task_title(task)}"
        test_metrics = fit.metrics.get("test") or {}
        if test_metrics.get("mae") is not None:
            title += f"\nheld-out MAE {test_metrics['mae']:.3f} (n = {test_metrics['n']})"
        ax.set_title(title)
    handles = [Line2D([], [], color=colours[m], marker=markers[inputs.base(m)], label=m) for m in shown["model"]]
    handles += [Line2D([], [], marker="o", linestyle="", markerfacecolor="white", markeredgecolor="0.2",
                       label=f"fitted cell (n_pmt < {format_tokens(threshold)})" if threshold else "fitted cell"),
                Line2D([], [], marker="o", linestyle="", color="0.2", label="held-out cell (not fitted)")]
    if level is not None:
        handles.append(Patch(color="0.6", alpha=0.4, label=f"{level:.0%} bootstrap band of the fit"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 3))
    return fig


def heldout_compute(inputs: FigureInputs, settings: FigureSettings | None = None) -> Figure:
    """Per task: predicted against observed P for the models outside the held-out-compute fit."""
    settings = settings or FigureSettings()
    tasks = fitted_tasks(inputs, "heldout_compute", settings)
    tests = {t: inputs.fit("held-out-compute", t).predictions for t in tasks}
    tests = {t: rows[rows["split"] == "test"] for t, rows in tests.items()}
    held_out = pd.concat(tests.values())
    models = inputs.models()
    models = models[models["model"].isin(held_out["model"])].sort_values("compute")
    colours = _palette(models["model"])
    markers = _markers(models["model"])

    fig = _new_figure(min(PAPER_WIDTH_IN, 2.3 * len(tasks) + 0.2), 3.3)  # near-square panels, equal limits
    axes = fig.subplots(1, len(tasks), squeeze=False)[0]
    for index, (ax, task) in enumerate(zip(axes, tasks)):
        rows = tests[task]
        for model, cells in rows.groupby("model", sort=False):
            ax.scatter(cells["observed"], cells["predicted"], color=colours[model], marker=markers[model], s=18,
                       edgecolors="black", linewidths=0.3, alpha=0.9, zorder=3)
        top = min(1.0, max(rows["observed"].max(), rows["predicted"].max(), 0.05) * 1.05)
        ax.plot([0, top], [0, top], color="0.4", linestyle="--", linewidth=0.9, zorder=1)
        ax.set_xlim(-0.02 * top, top * 1.03)
        ax.set_ylim(-0.02 * top, top * 1.03)
        step = 0.2 if top > 0.5 else 0.1 if top > 0.2 else 0.05
        for axis in (ax.xaxis, ax.yaxis):  # the same ticks on both axes, so the diagonal reads at a glance
            axis.set_major_locator(MultipleLocator(step))
        ax.set_xlabel(r"observed $P$")
        if index == 0:
            ax.set_ylabel(r"predicted $\hat P$")
        ax.set_title(f"({chr(ord('a') + index)}) {task_title(task)}\n"
                     f"MAE {_mae(rows['observed'], rows['predicted']):.3f} (n = {len(rows)})")
    handles = [Line2D([], [], color=colours[m], marker=markers[m], linestyle="", markeredgecolor="black",
                      markeredgewidth=0.3, label=f"{m} (C = {format_flops(c)}, " + r"$n_\mathrm{ctx}$" +
                      f" = {format_tokens(k)})")
               for m, c, k in zip(models["model"], models["compute"], models["n_ctx"])]
    handles.append(Line2D([], [], color="0.4", linestyle="--", label="perfect prediction"))
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 2))
    return fig


def pi_vs_yarn(inputs: FigureInputs, settings: FigureSettings | None = None) -> Figure:
    """PI against YaRN: observed P over n_pmt for both methods at each shared n_ctx, with the fitted law."""
    settings = settings or FigureSettings()
    tasks = fitted_tasks(inputs, "pi_vs_yarn", settings)
    pairs = pi_yarn_pairs(inputs)
    if not pairs:
        raise UserError("pi_vs_yarn needs observed models of group 'pi' with a YaRN model (group 'yarn') of the "
                        "same n_ctx; enable the pi model group and pass their model-info files")
    colours = sns.color_palette("colorblind")
    method_style = {"YaRN": {"color": colours[0], "marker": "o", "linestyle": "-"},
                    "PI": {"color": colours[1], "marker": "^", "linestyle": "--"}}
    fig = _new_figure(min(PAPER_WIDTH_IN * 1.3, 2.0 * len(pairs) + 0.5), 1.95 * len(tasks) + 0.6)
    axes = fig.subplots(len(tasks), len(pairs), squeeze=False, sharex=True, sharey="row")
    models = inputs.models().set_index("model")
    for row, task in enumerate(tasks):
        fit = inputs.fit("in-distribution", task)
        all_cells = inputs.cells(task)
        grid = n_pmt_grid(*_span(all_cells["n_pmt"], 1.3, 1.3), [n for n, _, _ in pairs])
        for col, (n_ctx, yarn_model, pi_model) in enumerate(pairs):
            ax = axes[row][col]
            maes = []
            for method, model in (("YaRN", yarn_model), ("PI", pi_model)):
                cells = inputs.cells(task, model)
                kw = method_style[method]
                ax.plot(grid, _curve(fit, models.loc[model, "compute"], n_ctx, grid), color=kw["color"],
                        linestyle=kw["linestyle"], linewidth=1.1, zorder=2)
                ax.scatter(cells["n_pmt"], cells["score"], color=kw["color"], marker=kw["marker"], s=15,
                           edgecolors="black", linewidths=0.3, zorder=3)
                if len(cells):
                    predicted = fit.predict(cells["compute"], cells["n_pmt"], cells["n_ctx"])
                    maes.append(f"{method} {_mae(cells['score'], predicted):.3f}")
            _mark_n_ctx(ax, n_ctx, label=False)
            header = rf"$n_\mathrm{{ctx}}$ = {format_tokens(n_ctx)}" + "\n" if row == 0 else ""
            ax.set_title(header + "MAE " + ", ".join(maes), fontsize=7.5)
            if col == 0:
                ax.set_ylabel(f"{task_title(task)}\n{P_LABEL}")
            if row == len(tasks) - 1:
                ax.set_xlabel(N_PMT_LABEL)
            _p_limits(ax, all_cells["score"].to_numpy())
            _log_axis(ax, "x")
    pi_fitted = any({p for _, _, p in pairs} & _train_models(inputs.fit("in-distribution", t)) for t in tasks)
    handles = [Line2D([], [], **method_style["YaRN"], label="YaRN: observed and in-distribution fit"),
               Line2D([], [], **method_style["PI"], label="PI (positional interpolation): observed "
                      + ("and fit" if pi_fitted else "(held out of the fit) and fit")),
               Line2D([], [], color="0.35", linestyle=":", label=r"$n_\mathrm{ctx}$")]
    fig.legend(handles=handles, loc="outside lower center", ncol=3)
    return fig


def pi_yarn_pairs(inputs: FigureInputs) -> list:
    """``[(n_ctx, yarn_model, pi_model)]``: each PI model with the YaRN model of the same n_ctx and nearest compute."""
    models = inputs.models()
    pi = models[models["group"] == "pi"]
    yarn = models[models["group"] == "yarn"]
    pairs = []
    for model, n_ctx, compute in zip(pi["model"], pi["n_ctx"], pi["compute"]):
        partners = yarn[yarn["n_ctx"] == n_ctx]
        if partners.empty:
            log.warning("pi_vs_yarn: PI model %s has no YaRN model with n_ctx = %s; left out", model, n_ctx)
            continue
        nearest = partners.iloc[int(np.argmin(np.abs(np.log(partners["compute"].to_numpy() / compute))))]
        pairs.append((int(n_ctx), str(nearest["model"]), str(model)))
    return sorted(pairs)


def per_model(inputs: FigureInputs, settings: FigureSettings | None = None) -> Figure:
    """Small multiples: for every (model, task), observed P over n_pmt and the in-distribution fit."""
    settings = settings or FigureSettings()
    tasks = fitted_tasks(inputs, "per_model", settings)
    models = inputs.models()
    fig, axes = _grid_figure(len(models), len(tasks), panel=(1.85, 0.95), margins=(0.85, 0.1, 0.45, 0.85),
                             gaps=(0.35, 0.5))  # limits set per column below: shared axes cost O(panels^2)
    colours = sns.color_palette("colorblind")
    for col, task in enumerate(tasks):
        fit = inputs.fit("in-distribution", task)
        fitted = _train_models(fit)
        task_cells = inputs.cells(task)
        grid = n_pmt_grid(*_span(task_cells["n_pmt"], 1.3, 1.3), models["n_ctx"].unique())
        curves = []
        for row, (model, compute, n_ctx) in enumerate(zip(models["model"], models["compute"], models["n_ctx"])):
            ax = axes[row][col]
            cells = task_cells[task_cells["model"] == model]
            curve = _curve(fit, compute, n_ctx, grid)
            curves.append(curve)
            ax.plot(grid, curve, color=colours[0], linewidth=1.1, zorder=2)
            held_out = model not in fitted
            ax.scatter(cells["n_pmt"], cells["score"], s=12, zorder=3, color=colours[3] if held_out else "black")
            _mark_n_ctx(ax, n_ctx, label=False)
            title = task_title(task) + "\n" if row == 0 else ""
            if len(cells):
                mae = _mae(cells["score"], fit.predict(cells["compute"], cells["n_pmt"], cells["n_ctx"]))
                title += f"MAE {mae:.3f}" + (" (held out of the fit)" if held_out else "")
            ax.set_title(title, fontsize=7 if row else 8.5)
            if col == 0:
                ax.set_ylabel(f"{model}\n" + r"$n_\mathrm{ctx}$" + f" = {format_tokens(n_ctx)}", fontsize=7)
            if row == len(models) - 1:
                ax.set_xlabel(N_PMT_LABEL)
            ax.tick_params(labelsize=6.5, labelbottom=True)  # every row readable without scrolling down
        for row in range(len(models)):
            axes[row][col].set_xlim(grid[0], grid[-1])
            _p_limits(axes[row][col], task_cells["score"].to_numpy(), *curves)
            _log_axis(axes[row][col], "x", minor=False)  # minor ticks on dozens of panels cost seconds
    any_held_out = any(set(models["model"]) - _train_models(inputs.fit("in-distribution", t)) for t in tasks)
    handles = [Line2D([], [], color="black", marker="o", linestyle="", label="observed (model in the fit)")]
    if any_held_out:
        handles.append(Line2D([], [], color=colours[3], marker="o", linestyle="",
                              label="observed (model held out of the fit)"))
    handles += [Line2D([], [], color=colours[0], label="in-distribution fit"),
                Line2D([], [], color="0.35", linestyle=":", label=r"$n_\mathrm{ctx}$")]
    fig.legend(handles=handles, loc="lower center", ncol=2)
    fig.supylabel(P_LABEL, fontsize=8.5, x=0.01)
    return fig


def extended_models(inputs: FigureInputs) -> list[str]:
    """Models built by the extension stage whose training recorded validation losses by position bucket."""
    info = inputs.model_info
    return [m for m, record in zip(info["model"], info["extension"])
            if isinstance(record, dict) and (record.get("validation") or {}).get("after")]


def extension_validation(inputs: FigureInputs, settings: FigureSettings | None = None) -> Figure:
    """Did the extension work? Held-out loss by position bucket before and after each model's continued training,
    one panel per base model, its extended models in one colour each."""
    models = extended_models(inputs)
    if not models:
        raise UserError("extension_validation needs model-info files of models built by the extension stage "
                        "(source: extend) with validation sequences")
    info = inputs.model_info
    compute = info["compute"].astype(float)
    bases = sorted(dict.fromkeys(inputs.base(m) for m in models),
                   key=lambda b: compute[[m for m in models if inputs.base(m) == b]].min())  # smallest first
    fig = _new_figure(min(PAPER_WIDTH_IN, 2.4 * len(bases) + 0.4), 2.6)
    axes = fig.subplots(1, len(bases), squeeze=False)[0]
    colours = _palette(sorted(models, key=lambda m: info.loc[m, "n_ctx"]))
    for ax, base in zip(axes, bases):
        for model in sorted((m for m in models if inputs.base(m) == base), key=lambda m: info.loc[m, "n_ctx"]):
            validation = info.loc[model, "extension"]["validation"]
            middles = [(start + end) / 2 for start, end in validation["buckets"]]
            for key, style in (("before", ":"), ("after", "-")):
                losses = [np.nan if v is None else v for v in validation[key] or []]
                if losses:
                    ax.plot(middles, losses, linestyle=style, marker="o", markersize=3, color=colours[model],
                            label=f"{model} {key}")
            _mark_n_ctx(ax, info.loc[model, "n_ctx"], label=False, colour=colours[model])
        ax.set_title(base, fontsize=8.5)
        ax.set_xlabel("position in the sequence (tokens)")
        ax.set_xscale("log", base=2)
    axes[0].set_ylabel("held-out loss (nats per token)")
    handles = [Line2D([], [], color=colours[m], label=m) for m in colours]
    handles += [Line2D([], [], color="0.3", linestyle=":", label="before extension (base weights, new RoPE)"),
                Line2D([], [], color="0.3", linestyle="-", label="after extension")]
    fig.legend(handles=handles, loc="outside lower center", ncol=min(len(handles), 4), fontsize=7)
    return fig

