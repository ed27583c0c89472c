"""The paper's figures, rendered from the observations table and the fits (spec §7): ``python -m ctxscale.figures``.

:data:`FIGURES` names every figure with its drawing function, the experiments whose fits it draws and a caption
(``python -m ctxscale.figures --help`` lists them); the workflow makes a figure when those experiments are fitted.
The package's modules: :mod:`.registry` (the registry), :mod:`.inputs` (settings and inputs), :mod:`.drawing`
(style and shared drawing helpers), :mod:`.plots` (one function per figure); this module renders and saves them.

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

from ctxscale.errors import UserError
from ctxscale.figures.drawing import n_pmt_grid, save_figure, style
from ctxscale.figures.inputs import FigureInputs, FigureSettings, choose_n_ctx, load_inputs
from ctxscale.figures.plots import (extended_models, extension_validation, fig1, fig2, heldout_compute,
                                    heldout_context, per_model, pi_vs_yarn, pi_yarn_pairs)
from ctxscale.figures.registry import FIGURES, FigureSpec
from ctxscale.steps import cli_main, parse_step_args, step_parser

__all__ = ["FIGURES", "FIGURE_NAMES", "FigureInputs", "FigureSettings", "FigureSpec", "UserError",
           "choose_n_ctx", "extended_models", "extension_validation", "fig1", "fig2", "heldout_compute",
           "heldout_context", "load_inputs",
           "main", "n_pmt_grid", "per_model", "pi_vs_yarn", "pi_yarn_pairs", "render", "save_figure", "style"]

log = logging.getLogger(__name__)
logging.getLogger("fontTools").setLevel(logging.WARNING)  # PDF font subsetting logs every table at INFO

FIGURE_NAMES = tuple(FIGURES)


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
            fig = FIGURES[name].draw(inputs, settings)
        except UserError as exc:
            if only:
                raise
            log.warning("skipping %s: %s", name, exc)
            continue
        written += save_figure(fig, out_dir, name, settings.formats)
        log.info("wrote %s (%s)", name, ", ".join(settings.formats))
    return written



@cli_main
def main(argv: list[str] | None = None) -> int:
    figures = "\n".join(f"  {name:<21} {spec.caption}" for name, spec in FIGURES.items())
    parser = step_parser("python -m ctxscale.figures", "Render the paper's figures from the observations and the fits.",
                         epilog=f"figures:\n{figures}", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--observations", required=True, help="observations table (results/observations/by_task.csv)")
    parser.add_argument("--fits-dir", required=True, help="folder holding {experiment}/{task}.json fits")
    parser.add_argument("--model-info", nargs="*", default=[], metavar="FILE",
                        help="model-info files results/models/{model}.json (groups and bases of the models)")
    parser.add_argument("--settings", default="{}", help="the config's figures section as a JSON string")
    parser.add_argument("--out-dir", required=True, help="where the figures go (results/figures)")
    parser.add_argument("--only", action="append", choices=FIGURE_NAMES, metavar="NAME",
                        help=f"render only this figure (repeatable): {', '.join(FIGURE_NAMES)}")
    args = parse_step_args(parser, argv)
    settings = FigureSettings.from_json(args.settings)
    inputs = load_inputs(args.observations, args.fits_dir, args.model_info)
    written = render(inputs, args.out_dir, settings, args.only)
    print(f"wrote {len(written)} files to {args.out_dir}")
    return 0
