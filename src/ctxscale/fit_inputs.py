"""What a fit sees: the cells of one task (:class:`CellSet`, chosen by :func:`select_cells` from an
observations table) and the settings shared by every experiment (:class:`FitSettings`). Used by the
experiments, the law comparison and the law selection alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ctxscale.errors import UserError
from ctxscale.fitting import (BOOTSTRAP_REFITS, BOOTSTRAP_UNITS, DEFAULT_BOOTSTRAP_UNIT, DEFAULT_LAW,
                              DEFAULT_MAX_EXPONENT, DEFAULT_OBJECTIVE, DEFAULT_PENALTY, DEFAULT_SEEDS, OBJECTIVES,
                              ROBUST_SCALE, check_max_exponent)
from ctxscale.law import LawSpec
from ctxscale.observations import select_task, task_cells


@dataclass
class FitSettings:
    """Settings shared by every experiment (the paper-silent defaults of spec §2/§8)."""

    penalty: str = DEFAULT_PENALTY
    penalty_width: float | None = None
    law: str = DEFAULT_LAW
    floor: float | None = None
    objective: str = DEFAULT_OBJECTIVE
    seeds: tuple = DEFAULT_SEEDS
    bootstrap: int = 0
    bootstrap_seed: int = 0
    bootstrap_unit: str = DEFAULT_BOOTSTRAP_UNIT
    bootstrap_refit: str = "global"
    level: float = 0.95
    robust_scale: float = ROBUST_SCALE
    max_exponent: float = DEFAULT_MAX_EXPONENT

    def __post_init__(self):
        self.seeds = tuple(int(s) for s in self.seeds)
        self.max_exponent = check_max_exponent(self.max_exponent)
        if self.objective not in OBJECTIVES:
            raise UserError(f"unknown objective {self.objective!r}; choose one of {', '.join(OBJECTIVES)}")
        if self.bootstrap_unit not in BOOTSTRAP_UNITS:
            raise UserError(f"unknown bootstrap unit {self.bootstrap_unit!r}; choose one of {', '.join(BOOTSTRAP_UNITS)}")
        if self.bootstrap_refit not in BOOTSTRAP_REFITS:
            raise UserError(f"unknown bootstrap refit {self.bootstrap_refit!r}; choose one of {', '.join(BOOTSTRAP_REFITS)}")
        if self.bootstrap < 0:
            raise UserError("--bootstrap must be >= 0")
        if not 0 < self.level < 1:
            raise UserError(f"--level must lie strictly between 0 and 1, got {self.level}")

    def spec(self, model_form: str = "context-aware") -> LawSpec:
        if model_form != "context-aware":
            return LawSpec(model_form)
        return LawSpec(model_form, self.penalty, self.penalty_width, self.law, self.floor)


@dataclass
class CellSet:
    """The cells of one task a fit sees, plus the per-dataset parts each averaged cell came from."""

    task: str
    cells: pd.DataFrame
    parts: pd.DataFrame | None
    datasets: list = field(default_factory=list)
    per_dataset: bool = False

    def subset(self, mask) -> "CellSet":
        mask = np.asarray(mask, dtype=bool)
        cells = self.cells[mask].reset_index(drop=True)
        parts = None
        if self.parts is not None:
            new_index = np.full(len(self.cells), -1)
            new_index[mask] = np.arange(mask.sum())
            parts = self.parts[mask[self.parts["cell"].to_numpy()]].copy()
            parts["cell"] = new_index[parts["cell"].to_numpy()]
        return CellSet(self.task, cells, parts, self.datasets, self.per_dataset)

    @property
    def models(self) -> list:
        return sorted(self.cells["model"].unique())


def select_cells(observations: pd.DataFrame, task: str, datasets=None, per_dataset: bool = False,
                 models=None, exclude_models=None) -> CellSet:
    """The cells of ``task``: averaged over its datasets (default) or one per dataset (``per_dataset``)."""
    rows = select_task(observations, task, datasets)
    known = sorted(rows["model"].unique())
    for names, flag in ((models, "--models"), (exclude_models, "--exclude-models")):
        unknown = [m for m in names or () if m not in known]
        if unknown:
            raise UserError(f"unknown model(s) {', '.join(unknown)} in {flag}; task {task} has {', '.join(known)}")
    if models:
        rows = rows[rows["model"].isin(models)]
    if exclude_models:
        rows = rows[~rows["model"].isin(exclude_models)]
    if rows.empty:
        raise UserError(f"no observations left for task {task} after the model filters")
    rows = rows.sort_values(["model", "dataset", "n_shots"], kind="stable").reset_index(drop=True)
    used = sorted(rows["dataset"].unique())
    if per_dataset:
        return CellSet(task, rows, None, used, True)
    cells = task_cells(rows).reset_index(drop=True)
    position = {key: i for i, key in enumerate(zip(cells["model"], cells["n_shots"]))}
    parts = rows[["model", "dataset", "n_shots", "score", "n_instances"]].copy()
    parts["cell"] = [position[key] for key in zip(parts["model"], parts["n_shots"])]
    return CellSet(task, cells, parts, used, False)
