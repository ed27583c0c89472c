"""The figure registry: each figure's drawing function, the fits it draws (the experiments that must be fitted
for it to be made) and a one-line caption, stated once, next to the function, by :func:`figure`.

The workflow reads :data:`FIGURES` to decide which figures a run makes (workflow/rules/common.smk); the
figure functions read it through :func:`fitted_tasks` to find the tasks they can draw.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from ctxscale.errors import UserError


class FigureSpec(NamedTuple):
    draw: Callable  # (FigureInputs, FigureSettings | None) -> matplotlib Figure
    experiments: tuple[str, ...]  # the fits it draws: the figure is made when they are all fitted
    caption: str


FIGURES: dict[str, FigureSpec] = {}  # in the order the figures are defined, which is the order they are drawn


def figure(name: str, experiments: tuple[str, ...], caption: str) -> Callable:
    """Register the decorated function as figure ``name``."""

    def register(draw: Callable) -> Callable:
        FIGURES[name] = FigureSpec(draw, tuple(experiments), caption)
        return draw

    return register


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
