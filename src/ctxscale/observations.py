"""The observations table: the interface between evaluation (any harness) and fitting.

One row per cell ``(model, task, dataset, n_shots)`` with columns :data:`OBSERVATION_COLUMNS`:

- ``model``, ``task``, ``dataset``: names (strings); ``n_shots``: number of demonstrations (integer >= 0);
- ``n_pmt``: mean prompt length in tokens over the cell's evaluated instances (> 0);
- ``n_ctx``: the model's context limit in tokens (> 0); ``compute``: training compute C in FLOPs (> 0);
- ``score``: mean metric over the instances, in [0, 1]; ``n_instances``: instances evaluated (integer >= 1).

CSV or Parquet (by file suffix ``.parquet``/``.pq``; anything else is read as CSV). Extra columns are
kept and ignored. Validation rejects, with one line naming the problem: missing columns, non-numeric
values, NaN/inf, scores outside [0, 1] (with a hint when they look like percentages), non-positive
compute, n_pmt or n_ctx, negative shot counts, instance counts below one, duplicate cells, and a model
listed with more than one compute or context limit (each model is one checkpoint: cluster bootstrap and
leave-one-model-out rely on it).

:func:`task_cells` averages the cells of one ``(model, task, n_shots)`` over the task's datasets, as the
paper fits one law per task (spec §2): score and n_pmt are unweighted means over datasets, n_instances
the sum; the dataset column becomes ``"all"``. When the datasets present differ between cells of one
task, a warning says so, because such means mix different dataset sets.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ctxscale.errors import UserError

log = logging.getLogger(__name__)

OBSERVATION_COLUMNS = ["model", "task", "dataset", "n_shots", "n_pmt", "n_ctx", "compute", "score", "n_instances"]
KEY_COLUMNS = ["model", "task", "dataset", "n_shots"]
NAME_COLUMNS = ["model", "task", "dataset"]
NUMERIC_COLUMNS = ["n_shots", "n_pmt", "n_ctx", "compute", "score", "n_instances"]
ALL_DATASETS = "all"


def load_observations(path) -> pd.DataFrame:
    """Read and validate an observations table (CSV, or Parquet by suffix)."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"observations file {path} does not exist")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
        else:
            frame = pd.read_csv(path, dtype={c: str for c in NAME_COLUMNS}, keep_default_na=True)
    except (ValueError, OSError, pd.errors.ParserError, ImportError) as exc:
        raise UserError(f"cannot read observations file {path}: {str(exc).splitlines()[0]}") from None
    return validate_observations(frame, source=str(path))


def write_observations(path, frame: pd.DataFrame) -> str:
    """Write an observations table as CSV, atomically; returns a one-line summary of what was written."""
    from ctxscale.files import atomic_write

    atomic_write(path, frame.to_csv(index=False, lineterminator="\n"))
    return (f"wrote {path}: {len(frame)} cells ({frame['model'].nunique()} models, {frame['dataset'].nunique()} "
            f"datasets, tasks {', '.join(sorted(frame['task'].unique()))}, "
            f"shots {sorted(frame['n_shots'].unique().tolist())})")


def validate_observations(frame: pd.DataFrame, source: str = "observations") -> pd.DataFrame:
    """Check the schema and values; return a copy with normalised dtypes (raises UserError)."""
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{source}: expected a table, got {type(frame).__name__}")
    missing = [c for c in OBSERVATION_COLUMNS if c not in frame.columns]
    if missing:
        raise UserError(f"{source} is missing column(s) {', '.join(missing)} "
                        f"(expected {', '.join(OBSERVATION_COLUMNS)})")
    if frame.empty:
        raise UserError(f"{source} has no rows")
    out = frame.copy()
    for column in NAME_COLUMNS:
        if out[column].isna().any():
            raise UserError(f"{source}: column {column} has empty values (row {_first_row(out[column].isna())})")
        out[column] = out[column].astype(str)
    for column in NUMERIC_COLUMNS:
        values = pd.to_numeric(out[column], errors="coerce")
        bad = values.isna() & out[column].notna()
        if bad.any():
            row = _first_row(bad)
            raise UserError(f"{source}: column {column} has a non-numeric value {out[column].iloc[row]!r} (row {row})")
        if not np.isfinite(values.to_numpy(float)).all():
            raise UserError(f"{source}: column {column} has NaN or infinite values "
                            f"(row {_first_row(~np.isfinite(values.to_numpy(float)))})")
        out[column] = values.astype(float)
    score = out["score"]
    if ((score < 0) | (score > 1)).any():
        row = _first_row((score < 0) | (score > 1))
        hint = ("; they look like percentages, divide by 100" if score.max() <= 100 and score.min() >= 0 else "")
        raise UserError(f"{source}: scores must lie in [0, 1], found {score.iloc[row]:g} (row {row}){hint}")
    for column in ("compute", "n_pmt", "n_ctx"):
        if (out[column] <= 0).any():
            row = _first_row(out[column] <= 0)
            raise UserError(f"{source}: {column} must be positive, found {out[column].iloc[row]:g} (row {row})")
    for column, minimum in (("n_shots", 0), ("n_instances", 1)):
        values = out[column]
        if ((values < minimum) | (values != np.round(values))).any():
            row = _first_row((values < minimum) | (values != np.round(values)))
            raise UserError(f"{source}: {column} must be an integer >= {minimum}, found {values.iloc[row]:g} (row {row})")
        out[column] = values.astype(np.int64)
    duplicated = out.duplicated(KEY_COLUMNS, keep=False)
    if duplicated.any():
        model, task, dataset, n_shots = out.loc[duplicated, KEY_COLUMNS].iloc[0].tolist()
        raise UserError(f"{source}: cell (model, task, dataset, n_shots) = ({model!r}, {task!r}, {dataset!r}, "
                        f"{int(n_shots)}) appears more than once")
    for column in ("compute", "n_ctx"):
        per_model = out.groupby("model")[column].nunique()
        if (per_model > 1).any():
            model = per_model[per_model > 1].index[0]
            raise UserError(f"{source}: model {model!r} has more than one {column} value; "
                            "give each checkpoint its own model name")
    return out.reset_index(drop=True)


def _first_row(mask) -> int:
    return int(np.flatnonzero(np.asarray(mask))[0])


def task_cells(frame: pd.DataFrame) -> pd.DataFrame:
    """Average the cells of each (model, task, n_shots) over the task's datasets (module docstring)."""
    frame = validate_observations(frame, source="observations") if not _looks_validated(frame) else frame
    sets = frame.groupby(["model", "task", "n_shots"])["dataset"].agg(lambda s: tuple(sorted(s)))
    for task, per_task in sets.groupby(level="task"):
        if per_task.nunique() > 1:
            common = set.intersection(*(set(s) for s in per_task))
            log.warning("task %s: cells average different dataset sets (%d variants; %d datasets in all of them)",
                        task, per_task.nunique(), len(common))
    grouped = frame.groupby(["model", "task", "n_shots"], sort=True)
    cells = grouped.agg(n_pmt=("n_pmt", "mean"), n_ctx=("n_ctx", "first"), compute=("compute", "first"),
                        score=("score", "mean"), n_instances=("n_instances", "sum")).reset_index()
    cells["dataset"] = ALL_DATASETS
    return cells[OBSERVATION_COLUMNS]


def _looks_validated(frame: pd.DataFrame) -> bool:
    return all(c in frame.columns for c in OBSERVATION_COLUMNS) and all(
        pd.api.types.is_numeric_dtype(frame[c]) for c in NUMERIC_COLUMNS)


def select_task(frame: pd.DataFrame, task: str, datasets=None) -> pd.DataFrame:
    """Rows of one task (and optionally of the named datasets), with helpful errors for unknown names."""
    tasks = sorted(frame["task"].unique())
    if task not in tasks:
        raise UserError(f"unknown task {task!r}; the observations hold {', '.join(tasks)}")
    rows = frame[frame["task"] == task]
    if datasets:
        known = sorted(rows["dataset"].unique())
        unknown = [d for d in datasets if d not in known]
        if unknown:
            raise UserError(f"unknown dataset(s) {', '.join(unknown)} for task {task}; it has {', '.join(known)}")
        rows = rows[rows["dataset"].isin(datasets)]
    return rows.reset_index(drop=True)
