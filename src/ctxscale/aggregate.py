"""Per-shot result files → the observations tables the fits read.

Reads ``results/eval/{model}/{dataset}/shots_{k}.json`` files (given as files, or as folders searched
recursively for ``shots_*.json``) and the model info files ``results/models/{model}.json`` (for ``n_ctx``
and ``compute``), and writes:

- ``--out-datasets``: one row per (model, dataset, n_shots) with the columns of
  :data:`ctxscale.observations.OBSERVATION_COLUMNS` plus ``n_refused`` (instances refused by the
  truncation guard; extra columns are ignored by the fits);
- ``--out-tasks``: one row per (model, task, n_shots), averaged over the task's datasets by
  :func:`ctxscale.observations.task_cells` (unweighted means of score and n_pmt, summed instances).

Decisions where the paper is silent:

- A cell whose every instance was refused (``n_instances`` 0, ``score`` null) has no measurement and is
  left out, with a warning naming how many; a cell with some instances refused keeps the mean over the
  evaluated ones (its ``n_refused`` column says how many are missing).
- The same (model, dataset, n_shots) in two files, a model without a model info file, or a model info
  ``n_ctx`` that differs from the one the evaluation recorded are errors, not guesses.
- Output is deterministic: rows sorted by (model, task, dataset, n_shots), floats written with
  ``repr`` (shortest round-trip form), so equal inputs give byte-identical tables.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import pandas as pd

from ctxscale.model_info import read_model_info
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_step_args, step_parser
from ctxscale.files import read_json_object
from ctxscale.files import atomic_write
from ctxscale.observations import OBSERVATION_COLUMNS, task_cells, validate_observations

log = logging.getLogger("ctxscale.aggregate")

RESULT_FIELDS = ("model", "dataset", "task", "n_shots", "score", "n_pmt", "n_instances", "n_refused")
DATASET_COLUMNS = OBSERVATION_COLUMNS + ["n_refused"]
SORT_COLUMNS = ["model", "task", "dataset", "n_shots"]


def find_result_files(paths: list[str | Path]) -> list[Path]:
    """Files as given; folders expanded to their ``shots_*.json`` files (recursively), sorted, unique."""
    found: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("shots_*.json") if p.is_file()))
        elif path.is_file():
            found.append(path)
        else:
            raise UserError(f"evaluation result {path} does not exist")
    unique = sorted({p.resolve(): p for p in found}.values(), key=lambda p: str(p.resolve()))
    if not unique:
        raise UserError(f"no shots_*.json result files found in {', '.join(map(str, paths))}")
    return unique


def read_result(path: Path) -> dict:
    result = read_json_object(path, "evaluation result")
    missing = [field for field in RESULT_FIELDS if field not in result]
    if missing:
        raise UserError(f"evaluation result {path} lacks {', '.join(missing)}")
    return result


def dataset_rows(result_files: list[Path], model_info: dict[str, dict]) -> pd.DataFrame:
    """One row per evaluated (model, dataset, n_shots) cell, sorted; fully refused cells left out."""
    rows, seen, empty = [], {}, []
    for path in result_files:
        result = read_result(path)
        cell = (result["model"], result["dataset"], result["n_shots"])
        if cell in seen:
            raise UserError(f"{path} and {seen[cell]} both hold model {cell[0]}, dataset {cell[1]}, {cell[2]} shots")
        seen[cell] = path
        info = model_info.get(result["model"])
        if info is None:
            raise UserError(f"no model info file for model {result['model']} (needed by {path})")
        recorded_n_ctx = (result.get("metadata") or {}).get("settings", {}).get("n_ctx")
        if recorded_n_ctx is not None and recorded_n_ctx != info["n_ctx"]:
            raise UserError(
                f"{path} was evaluated with n_ctx {recorded_n_ctx}, but the model info says {info['n_ctx']}"
            )
        if result["n_instances"] == 0:
            empty.append(path)
            continue
        rows.append(
            {
                "model": result["model"],
                "task": result["task"],
                "dataset": result["dataset"],
                "n_shots": int(result["n_shots"]),
                "n_pmt": float(result["n_pmt"]),
                "n_ctx": int(info["n_ctx"]),
                "compute": float(info["compute"]),
                "score": float(result["score"]),
                "n_instances": int(result["n_instances"]),
                "n_refused": int(result["n_refused"]),
            }
        )
    if empty:
        log.warning(
            "left out %d cell(s) whose every prompt was refused by the truncation guard, e.g. %s", len(empty), empty[0]
        )
    if not rows:
        raise UserError("no evaluated cells: every result file had all its instances refused")
    frame = pd.DataFrame(rows, columns=DATASET_COLUMNS)
    validate_observations(frame, source="aggregated results")
    return frame.sort_values(SORT_COLUMNS, kind="stable").reset_index(drop=True)


def merge_subsets(frame: pd.DataFrame) -> pd.DataFrame:
    """Average the configs of a dataset evaluated per config (``deepmind-math.<config>``) into one row per
    (model, dataset, n_shots), so it weighs as one dataset in a task mean (config/README.md, decision 9):
    score and n_pmt are unweighted means over configs, instance counts are summed."""
    parent = frame["dataset"].str.split(".", n=1).str[0]
    if (parent == frame["dataset"]).all():
        return frame
    keys = ["model", "task", "dataset", "n_shots", "n_ctx", "compute"]
    merged = (
        frame.assign(dataset=parent)
        .groupby(keys, sort=False, as_index=False)
        .agg(n_pmt=("n_pmt", "mean"), score=("score", "mean"), n_instances=("n_instances", "sum"),
             n_refused=("n_refused", "sum"))
    )
    return merged[DATASET_COLUMNS].sort_values(SORT_COLUMNS, kind="stable").reset_index(drop=True)


def task_rows(frame: pd.DataFrame) -> pd.DataFrame:
    cells = task_cells(frame[OBSERVATION_COLUMNS])
    return cells[OBSERVATION_COLUMNS].sort_values(SORT_COLUMNS, kind="stable").reset_index(drop=True)


def _format_value(value) -> str:
    if isinstance(value, float):  # numpy floats too; repr(np.float64) would print "np.float64(...)"
        return repr(float(value))
    return str(value)


def write_csv(frame: pd.DataFrame, path: str | Path) -> None:
    """Deterministic CSV (floats as ``repr``), written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    formatted = frame.astype(object).map(_format_value)
    text = formatted.to_csv(index=False, lineterminator="\n")
    atomic_write(path, text)


def aggregate(
    eval_paths: list[str | Path], model_info_paths: list[str | Path], out_datasets: str | Path, out_tasks: str | Path
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build and write both tables; returns (per-dataset, per-task)."""
    files = find_result_files(eval_paths)
    per_dataset = merge_subsets(dataset_rows(files, read_model_info(model_info_paths)))
    per_task = task_rows(per_dataset)
    write_csv(per_dataset, out_datasets)
    write_csv(per_task, out_tasks)
    log.info(
        "aggregated %d result files into %d dataset cells and %d task cells",
        len(files),
        len(per_dataset),
        len(per_task),
    )
    return per_dataset, per_task


def build_parser() -> argparse.ArgumentParser:
    parser = step_parser("python -m ctxscale.aggregate", "Per-shot evaluation results → observations tables.")
    parser.add_argument("--eval-files", required=True, nargs="+", help="shots_{k}.json files or folders holding them")
    parser.add_argument("--model-info", required=True, nargs="+", help="results/models/{model}.json files")
    parser.add_argument("--out-datasets", required=True, help="per (model, dataset, n_shots) table (CSV)")
    parser.add_argument("--out-tasks", required=True, help="per (model, task, n_shots) table (CSV)")
    return parser


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_step_args(build_parser(), argv)
    aggregate(args.eval_files, args.model_info, args.out_datasets, args.out_tasks)
    return 0


if __name__ == "__main__":
    sys.exit(main())
