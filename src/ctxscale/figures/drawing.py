"""The figures' look and the drawing helpers they share: style, axes, grids, colours, fitted curves, and the
writer of reproducible files."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: figures are only ever written to files

import numpy as np  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter, NullLocator  # noqa: E402

from ctxscale.tables import format_tokens  # noqa: E402

MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
PAPER_WIDTH_IN = 7.0  # a two-column paper's text width
DPI = 200  # PNG resolution: sharp when a 7-inch figure fills a screen or a page
N_PMT_LABEL = r"prompt length $n_\mathrm{pmt}$ (tokens)"
P_LABEL = r"performance $P$"
C_LABEL = r"training compute $C$ (FLOPs)"


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

