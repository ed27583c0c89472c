"""What the figures are drawn from and how: the settings (the config's ``figures`` section) and the inputs (the
observations table, the fits and the model-info files), and the choice of the n_ctx a figure draws."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, fields

import pandas as pd

from ctxscale.config import schema_defaults
from ctxscale.errors import UserError
from ctxscale.steps import parse_json_option
from ctxscale.tables import load_fits, load_model_info, ordered_tasks

log = logging.getLogger(__name__)

FORMATS = ("png", "pdf", "svg")
GROUP_ORDER = ("yarn", "pi", "tiny", "ood")


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


