"""Render the registered figures and save them: :func:`render`, and ``main``, the figures step
(``python -m ctxscale.figures``).
"""

from __future__ import annotations

import argparse
import logging

from ctxscale.errors import UserError
from ctxscale.figures.drawing import save_figure
from ctxscale.figures.inputs import FigureInputs, FigureSettings, load_inputs
from ctxscale.figures.registry import FIGURES
from ctxscale.steps import cli_main, parse_step_args, step_parser

log = logging.getLogger("ctxscale.figures")
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
