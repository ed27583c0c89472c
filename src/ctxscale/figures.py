"""The paper's figures, rendered from the observations table and the fits (spec §7).

Each figure is one function that returns a :class:`matplotlib.figure.Figure` (no pyplot state, so the
functions are safe in tests and in parallel jobs) and is saved as PNG and PDF by :func:`render`:

===================  =====================================================================================
name                 content
===================  =====================================================================================
``fig1``             Fig. 1: observed P against n_pmt for one task and model, with the context-agnostic
                     (compute-only) fit and the context-aware fit
``fig2``             Fig. 2a-c: contour of the fitted P^ over (n_pmt, C) at one n_ctx per task, with the
                     observed cells of the fitted models with that n_ctx overlaid in the same colour scale
``heldout_context``  per task, at the largest n_ctx: the law fitted on n_pmt below the threshold, with its
                     bootstrap band, fitted cells open and held-out cells filled
``heldout_compute``  per task: predicted against observed for the models outside the fit
``pi_vs_yarn``       positional interpolation against YaRN at each shared n_ctx, with the fitted law
``per_model``        small multiples: observed and fitted P over n_pmt for every (model, task)
===================  =====================================================================================

Settings (``--settings``, the workflow config's ``figures`` section as JSON): ``formats`` (default png
and pdf), ``fig1_task``, ``fig1_model``, ``contour_n_ctx`` (paper: 8192), ``heldout_context_n_ctx``
(paper: 131072), and ``tasks``, the panel order, which the workflow sets to the order of the config's
``tasks`` mapping.

Choices where the paper is silent (spec §7 marks these layouts INFERRED):

- Axes: n_pmt and C on log scales, P linear. The fitted curves are drawn on a dense log grid with extra
  points at n_ctx, so the raw-token penalty appears as the cliff it is.
- n_ctx of the contour and held-out-context figures: the configured value when the data hold models with
  it; otherwise the nearest n_ctx present (in log distance) with a warning. Unconfigured, the contour uses
  the second-smallest n_ctx (the paper's 8k among 4k-128k: the first extended limit, so the cliff lies
  inside the observed prompts) and the held-out-context figure the largest (the paper's 128k).
- Fig. 1 default: the first task (``tasks`` setting, else the paper's order) and, among the models fitted at the
  contour n_ctx, the one with the most compute.
- Fig. 2 spans the observed compute range widened by a decade on each side, so the compute dependence of
  P^ is visible even though the paper's data hold only two compute levels.
- Held-out compute draws the held-out-compute fit's test rows; PI-vs-YaRN and the small multiples draw
  the in-distribution fit, and cells of models outside that fit are marked "held out".
- Held-out context draws a bootstrap band only when that fit was bootstrapped (``--bootstrap``).
- Which figures exist depends on the run: with no held-out-compute fits or no PI models, rendering
  everything skips those figures with a warning, while ``--only`` makes their absence an error.
- Fonts and sizes are set for a printed page (:func:`style`); PDF and PNG carry no creation date, so
  re-rendering the same inputs gives the same files.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.colors import BoundaryNorm  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import (FuncFormatter, LogLocator, MultipleLocator, NullFormatter,  # noqa: E402
                               NullLocator)

from ctxscale.config import schema_defaults  # noqa: E402
from ctxscale.errors import UserError
from ctxscale.steps import parse_json_option  # noqa: E402
from ctxscale.tables import (format_flops, format_tokens, load_fits, load_model_info,  # noqa: E402
                             ordered_tasks, task_title)

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting logs every table at INFO

FIGURE_NAMES = ("fig1", "fig2", "heldout_context", "heldout_compute", "pi_vs_yarn", "per_model", "extension_validation")
FORMATS = ("png", "pdf", "svg")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
PAPER_WIDTH_IN = 7.0  # a two-column paper's text width
DPI = 200  # PNG resolution: sharp when a 7-inch figure fills a screen or a page
N_PMT_LABEL = r"prompt length $n_\mathrm{pmt}$ (tokens)"
P_LABEL = r"performance $P$"
C_LABEL = r"training compute $C$ (FLOPs)"
GROUP_ORDER = ("yarn", "pi", "tiny", "ood")


def style() -> None:
    """The project's figure style (sets matplotlib's global rcParams): seaborn "ticks" at paper scale,
    colour-blind palette, no top or right spines, TrueType fonts in PDFs."""
    sns.set_theme(context="paper", style="ticks", palette="colorblind", font_scale=1.0, rc={
        "figure.dpi": 100, "savefig.dpi": DPI, "savefig.bbox": "tight", "savefig.pad_inches": 0.03,
        "axes.spines.top": False, "axes.spines.right": False, "axes.titlesize": 9, "axes.labelsize": 8.5,
        "xtick.labelsize": 7.5, "ytick.labelsize": 7.5, "legend.fontsize": 7.5, "legend.frameon": False,
        "lines.linewidth": 1.4, "lines.markersize": 4.5, "axes.grid": True, "grid.alpha": 0.25,
        "grid.linewidth": 0.5, "pdf.fonttype": 42, "svg.hashsalt": "ctxscale",
    })


# ------------------------------------------------------------------------------------------------ inputs


@dataclass
class FigureSettings:
    """The workflow config's ``figures`` section (module docstring)."""

    formats: tuple = tuple(schema_defaults("figures")["formats"])
    fig1_task: str | None = None
    fig1_model: str | None = None
    contour_n_ctx: int | None = None
    heldout_context_n_ctx: int | None = None
    tasks: tuple | None = None

    @classmethod
    def from_json(cls, text: str | None) -> "FigureSettings":
        if not text:
            return cls()
        values = parse_json_option(text, "--settings")
        if not isinstance(values, dict):
            raise UserError("--settings must be a JSON object (the config's figures section)")
        return cls.from_dict(values)

    @classmethod
    def from_dict(cls, values: dict) -> "FigureSettings":
        known = {f.name for f in fields(cls)}
        for key in sorted(set(values) - known):
            log.warning("ignoring unknown figure setting %r (known: %s)", key, ", ".join(sorted(known)))
        values = {k: v for k, v in values.items() if k in known}
        formats = tuple(values.pop("formats", cls.formats) or ())
        bad = [f for f in formats if f not in FORMATS]
        if bad or not formats:
            raise UserError(f"figure formats must be a non-empty list of {', '.join(FORMATS)}; got {list(formats)}")
        for key in ("contour_n_ctx", "heldout_context_n_ctx"):
            value = values.get(key)
            if value is not None and not (isinstance(value, (int, float)) and value > 0):
                raise UserError(f"figure setting {key} must be a positive number of tokens, got {value!r}")
        tasks = values.pop("tasks", None)
        return cls(formats=formats, tasks=tuple(tasks) if tasks else None, **values)


@dataclass
class FigureInputs:
    """What the figures are drawn from: task cells (one per model, task, n_shots), fits and model infos."""

    observations: pd.DataFrame
    fits: dict = field(default_factory=dict)
    model_info: pd.DataFrame | None = None

    def __post_init__(self):
        from ctxscale.observations import task_cells

        # Per-dataset tables are averaged the way the fits see them; by_task.csv passes through unchanged.
        self.observations = task_cells(self.observations)
        if self.model_info is None:
            self.model_info = load_model_info([])

    def fit(self, experiment: str, task: str):
        return self.fits.get((experiment, task))

    def tasks(self, experiment: str | None = None, settings: FigureSettings | None = None) -> list:
        present = set(self.observations["task"])
        if experiment is not None:
            present &= {task for exp, task in self.fits if exp == experiment}
        return ordered_tasks(present, settings.tasks if settings else None)

    def cells(self, task: str, model: str | None = None) -> pd.DataFrame:
        rows = self.observations[self.observations["task"] == task]
        if model is not None:
            rows = rows[rows["model"] == model]
        return rows.sort_values(["model", "n_pmt"])

    def base(self, model: str) -> str:
        info = self.model_info
        if model in info.index and isinstance(info.loc[model, "base"], str):
            return info.loc[model, "base"]
        return model

    def group(self, model: str) -> str:
        info = self.model_info
        if model in info.index and isinstance(info.loc[model, "group"], str):
            return info.loc[model, "group"]
        return "unknown"

    def models(self) -> pd.DataFrame:
        """One row per observed model: model, compute, n_ctx, base, group (sorted for display)."""
        frame = self.observations.groupby("model", as_index=False).agg(compute=("compute", "first"),
                                                                       n_ctx=("n_ctx", "first"))
        frame["base"] = [self.base(m) for m in frame["model"]]
        frame["group"] = [self.group(m) for m in frame["model"]]
        rank = {g: i for i, g in enumerate(GROUP_ORDER)}
        frame["group_rank"] = frame["group"].map(lambda g: rank.get(g, len(rank)))
        base_compute = frame.groupby("base")["compute"].transform("min")
        frame = frame.assign(base_compute=base_compute)
        return frame.sort_values(["group_rank", "base_compute", "base", "n_ctx"]).reset_index(drop=True)


def load_inputs(observations_path, fits_dir, model_info_paths=()) -> FigureInputs:
    """Read the observations table, every fit under ``fits_dir`` and the model-info files."""
    from ctxscale.observations import load_observations

    return FigureInputs(load_observations(observations_path), load_fits(fits_dir), load_model_info(model_info_paths))


# ------------------------------------------------------------------------------------------------ helpers


def _require_fit(inputs: FigureInputs, experiment: str, task: str, figure: str):
    fit = inputs.fit(experiment, task)
    if fit is None:
        raise UserError(f"{figure} needs the {experiment} fit of task {task!r}, which is missing from the fits folder")
    return fit


def _require_tasks(inputs: FigureInputs, experiment: str, settings: FigureSettings, figure: str) -> list:
    tasks = inputs.tasks(experiment, settings)
    if not tasks:
        raise UserError(f"{figure} needs {experiment} fits, and the fits folder has none for the observed tasks")
    return tasks


def choose_n_ctx(available, requested: int | None, default: str, what: str) -> int:
    """The n_ctx to draw: the requested one if present, else the nearest present (log distance).

    ``default`` ("second-smallest" or "largest") applies when nothing is requested.
    """
    values = sorted({int(v) for v in available})
    if not values:
        raise UserError(f"{what}: no models to choose an n_ctx from")
    if requested is None:
        if default == "largest":
            return values[-1]
        return values[1] if len(values) > 1 else values[0]
    if int(requested) in values:
        return int(requested)
    nearest = min(values, key=lambda v: (abs(math.log(v / requested)), -v))
    log.warning("%s: no model has n_ctx = %s; drawing n_ctx = %s instead (present: %s)", what, requested, nearest,
                ", ".join(map(str, values)))
    return nearest


def n_pmt_grid(low: float, high: float, n_ctx=(), points: int = 400) -> np.ndarray:
    """Log-spaced prompt lengths from ``low`` to ``high`` plus points hugging each n_ctx (the cliff)."""
    grid = np.geomspace(max(low, 1.0), high, points)
    extra = [n + d for n in np.atleast_1d(n_ctx) for d in (-12.0, -4.0, 0.0, 4.0, 12.0)]
    extra = [x for x in extra if low <= x <= high]
    return np.unique(np.concatenate([grid, extra]))


def _span(values, below: float = 1.6, above: float = 1.6) -> tuple:
    values = np.asarray(values, dtype=float)
    return float(values.min() / below), float(values.max() * above)


def _palette(keys) -> dict:
    keys = list(dict.fromkeys(keys))
    colours = sns.color_palette("colorblind", max(len(keys), 1))
    if len(keys) > len(colours):
        colours = sns.color_palette("husl", len(keys))
    return dict(zip(keys, colours))


def _markers(keys) -> dict:
    keys = list(dict.fromkeys(keys))
    return {key: MARKERS[i % len(MARKERS)] for i, key in enumerate(keys)}


def _mark_n_ctx(ax, n_ctx: float, label: bool = True, colour="0.35") -> None:
    ax.axvline(n_ctx, color=colour, linestyle=":", linewidth=1.0, zorder=1)
    if label:
        ax.annotate(rf"$n_\mathrm{{ctx}}$ = {format_tokens(n_ctx)}", xy=(n_ctx, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(3, -3), textcoords="offset points", ha="left", va="top", fontsize=7, color=colour)


def _log_axis(ax, which: str = "x", minor: bool = True) -> None:
    """Log scale with readable ticks: decades as powers of ten, plus 2 and 5 when the axis spans few decades."""
    axis = ax.xaxis if which == "x" else ax.yaxis
    (ax.set_xscale if which == "x" else ax.set_yscale)("log")
    low, high = sorted(ax.get_xlim() if which == "x" else ax.get_ylim())
    decades = math.log10(high / low) if low > 0 else 10.0
    axis.set_major_locator(LogLocator(base=10, subs=(1.0,) if decades > 2.2 else (1.0, 2.0, 5.0)))
    axis.set_minor_locator(LogLocator(base=10, subs=np.arange(2, 10) * 1.0) if minor else NullLocator())
    axis.set_major_formatter(FuncFormatter(_plain_tick_label if decades <= 2.2 else _power_tick_label))
    axis.set_minor_formatter(NullFormatter())


def _power_tick_label(value: float, _position=None) -> str:
    return rf"$10^{{{int(round(math.log10(value)))}}}$" if value > 0 else ""


def _plain_tick_label(value: float, _position=None) -> str:
    return f"{value:,.0f}" if value >= 1 else f"{value:g}"


def _mae(observed, predicted) -> float:
    return float(np.mean(np.abs(np.asarray(observed, float) - np.asarray(predicted, float))))


def _p_limits(ax, *arrays) -> None:
    top = max([float(np.nanmax(a)) for a in arrays if len(a)] + [0.05])
    ax.set_ylim(-0.02 * top - 0.01, min(1.0, top * 1.12) + 0.03)  # room for markers at 0 and 1


def _new_figure(width: float, height: float) -> Figure:
    style()
    return Figure(figsize=(width, height), layout="constrained")


def _grid_figure(rows: int, cols: int, panel: tuple, margins: tuple, gaps: tuple, **subplot_kw):
    """A figure of equal panels laid out in inches without a layout engine.

    Constrained layout costs seconds per dozen axes; the small multiples have dozens, so their margins
    (``left, right, top, bottom``) and gaps (``between columns, between rows``) are fixed in inches.
    """
    style()
    left, right, top, bottom = margins
    wgap, hgap = gaps
    width = left + right + cols * panel[0] + (cols - 1) * wgap
    height = top + bottom + rows * panel[1] + (rows - 1) * hgap
    fig = Figure(figsize=(width, height))
    fig.ctxscale_fixed_layout = True  # save_figure skips the (costly) tight bounding box
    axes = fig.subplots(rows, cols, squeeze=False, gridspec_kw={
        "left": left / width, "right": 1 - right / width, "top": 1 - top / height, "bottom": bottom / height,
        "wspace": wgap / panel[0], "hspace": hgap / panel[1]}, **subplot_kw)
    return fig, axes


def _train_models(fit) -> set:
    data = fit.record.get("data") or {}
    if data.get("train_models"):
        return set(data["train_models"])
    preds = fit.predictions
    return set(preds.loc[preds["split"] == "train", "model"]) if len(preds) else set()


def _curve(fit, compute: float, n_ctx: float, grid: np.ndarray) -> np.ndarray:
    return np.asarray(fit.predict(np.full_like(grid, compute), grid, np.full_like(grid, n_ctx)), dtype=float)


def _has_interval(fit) -> bool:
    boot = fit.bootstrap or {}
    return bool(boot.get("replicates"))


# ------------------------------------------------------------------------------------------------ figures


def fig1(inputs: FigureInputs, settings: FigureSettings | None = None) -> Figure:
    """Fig. 1: observed P over n_pmt for one (task, model), context-agnostic fit against context-aware fit."""
    settings = settings or FigureSettings()
    tasks = [t for t in _require_tasks(inputs, "in-distribution", settings, "fig1")
             if inputs.fit("context-agnostic", t) is not None]
    if not tasks:
        raise UserError("fig1 needs the in-distribution and the context-agnostic fit of one task; none has both")
    task = settings.fig1_task or tasks[0]
    aware = _require_fit(inputs, "in-distribution", task, "fig1")
    agnostic = _require_fit(inputs, "context-agnostic", task, "fig1")
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
    tasks = _require_tasks(inputs, "in-distribution", settings, "fig2")
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
    tasks = _require_tasks(inputs, "held-out-context", settings, "heldout_context")
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
    tasks = _require_tasks(inputs, "held-out-compute", settings, "heldout_compute")
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
    tasks = _require_tasks(inputs, "in-distribution", settings, "pi_vs_yarn")
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
    tasks = _require_tasks(inputs, "in-distribution", settings, "per_model")
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


FIGURES = {"fig1": fig1, "fig2": fig2, "heldout_context": heldout_context, "heldout_compute": heldout_compute,
           "pi_vs_yarn": pi_vs_yarn, "per_model": per_model, "extension_validation": extension_validation}

# ------------------------------------------------------------------------------------------------ output


def save_figure(fig: Figure, out_dir, name: str, formats=("png", "pdf")) -> list:
    """Write ``{name}.{format}`` for each format, without creation dates (reproducible bytes)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    metadata = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None},
                "svg": {"Date": None}}
    paths = []
    for fmt in formats:
        path = out_dir / f"{name}.{fmt}"
        tmp = out_dir / f".{name}.tmp.{fmt}"
        bbox = None if getattr(fig, "ctxscale_fixed_layout", False) else "tight"
        fig.savefig(tmp, format=fmt, metadata=metadata[fmt], bbox_inches=bbox, pad_inches=0.03, dpi=DPI)
        tmp.replace(path)
        paths.append(path)
    return paths


def render(inputs: FigureInputs, out_dir, settings: FigureSettings | None = None, only=None) -> list:
    """Render the named figures (default: every figure whose inputs exist) and return the written paths.

    With ``only``, a figure whose fits or models are missing is an error; without it, such a figure is
    skipped with a warning (e.g. held-out compute when no model is held out).
    """
    settings = settings or FigureSettings()
    names = list(only) if only else list(FIGURE_NAMES)
    unknown = [n for n in names if n not in FIGURES]
    if unknown:
        raise UserError(f"unknown figure(s) {', '.join(unknown)}; choose from {', '.join(FIGURE_NAMES)}")
    written = []
    for name in names:
        try:
            fig = FIGURES[name](inputs, settings)
        except UserError as exc:
            if only:
                raise
            log.warning("skipping %s: %s", name, exc)
            continue
        written += save_figure(fig, out_dir, name, settings.formats)
        log.info("wrote %s (%s)", name, ", ".join(settings.formats))
    return written


def main(argv=None) -> int:
    from ctxscale.steps import handle_user_errors, setup_logging, verbosity_level

    parser = argparse.ArgumentParser(prog="python -m ctxscale.figures",
                                     description="Render the paper's figures from the observations and the fits.")
    parser.add_argument("--observations", required=True, help="observations table (results/observations/by_task.csv)")
    parser.add_argument("--fits-dir", required=True, help="folder holding {experiment}/{task}.json fits")
    parser.add_argument("--model-info", nargs="*", default=[], metavar="FILE",
                        help="model-info files results/models/{model}.json (groups and bases of the models)")
    parser.add_argument("--settings", default="{}", help="the config's figures section as a JSON string")
    parser.add_argument("--out-dir", required=True, help="where the figures go (results/figures)")
    parser.add_argument("--only", action="append", choices=FIGURE_NAMES, metavar="NAME",
                        help=f"render only this figure (repeatable): {', '.join(FIGURE_NAMES)}")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    args = parser.parse_args(argv)
    setup_logging(verbosity_level(-1 if args.quiet else 0))

    def body():
        settings = FigureSettings.from_json(args.settings)
        inputs = load_inputs(args.observations, args.fits_dir, args.model_info)
        written = render(inputs, args.out_dir, settings, args.only)
        print(f"wrote {len(written)} files to {args.out_dir}")
        return 0

    return handle_user_errors(body)


if __name__ == "__main__":
    sys.exit(main())
