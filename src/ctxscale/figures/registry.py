"""The figure registry, as data: each figure's name, the experiments whose fits it draws (the figure is made when
they are all fitted), a one-line caption and the name of its drawing function in :mod:`ctxscale.figures.plots`.

The workflow reads :data:`FIGURES` at every parse (workflow/rules/common.smk) to decide which figures a run
makes, so this module imports no plotting library: importing matplotlib and seaborn cost each parse 2 s, once
per job under SLURM. A spec's :attr:`FigureSpec.draw` imports the drawing function when it is used. The figure
functions read the registry through :func:`fitted_tasks` to find the tasks they can draw.
"""

from __future__ import annotations

import importlib
from typing import Callable, NamedTuple

from ctxscale.errors import UserError


class FigureSpec(NamedTuple):
    experiments: tuple[str, ...]  # the fits it draws: the figure is made when they are all fitted
    caption: str
    function: str  # its drawing function in ctxscale.figures.plots: (FigureInputs, FigureSettings | None) -> Figure

    @property
    def draw(self) -> Callable:
        return getattr(importlib.import_module("ctxscale.figures.plots"), self.function)


# in the order they are drawn
FIGURES: dict[str, FigureSpec] = {
    "fig1": FigureSpec(
        ("in-distribution", "context-agnostic"),
        "Fig. 1: observed P over n_pmt for one task and model, with the context-agnostic (compute-only) fit "
        "and the context-aware fit",
        "fig1"),
    "fig2": FigureSpec(
        ("in-distribution",),
        "Fig. 2a-c: contour of the fitted P^ over (n_pmt, C) at one n_ctx per task, with the observed cells "
        "of the fitted models with that n_ctx overlaid in the same colour scale",
        "fig2"),
    "heldout_context": FigureSpec(
        ("held-out-context",),
        "per task, at the largest n_ctx: the law fitted on n_pmt below the threshold, with its bootstrap "
        "band, fitted cells open and held-out cells filled",
        "heldout_context"),
    "heldout_compute": FigureSpec(
        ("held-out-compute",),
        "per task: predicted against observed for the models outside the fit",
        "heldout_compute"),
    "pi_vs_yarn": FigureSpec(
        ("in-distribution",),
        "positional interpolation against YaRN at each shared n_ctx, with the fitted law",
        "pi_vs_yarn"),
    "per_model": FigureSpec(
        ("in-distribution",),
        "small multiples: observed and fitted P over n_pmt for every (model, task)",
        "per_model"),
    "extension_validation": FigureSpec(
        (),
        "held-out loss by position bucket before and after each extension's continued training, one panel per "
        "base model",
        "extension_validation"),
}


def fitted_tasks(inputs, name: str, settings=None) -> list:
    """The observed tasks that have every fit figure ``name`` draws, in the settings' task order."""
    experiments = FIGURES[name].experiments
    tasks = [task for task in inputs.tasks(experiments[0], settings)
             if all(inputs.fit(experiment, task) is not None for experiment in experiments[1:])]
    if not tasks:
        of_one_task = " of one task" if len(experiments) > 1 else ""
        raise UserError(f"{name} needs {' and '.join(experiments)} fits{of_one_task}, and the fits folder has none "
                        "for the observed tasks")
    return tasks
