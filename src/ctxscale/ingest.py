"""``ctxscale ingest``: lm-evaluation-harness output folders -> an observations table for ``ctxscale fit``.

Input: what ``lm_eval --output_path OUT --log_samples`` writes, one run per ``--num_fewshot``:
``OUT/<model>/results_<date>.json`` plus ``samples_<task>_<date>.jsonl`` (the same ``<date>``). Every
``results_*.json`` found under the folders given is one run. Each run must hold exactly one task (one
dataset of the observations table) and its samples.

One row per run (``model, task, dataset, n_shots``; :data:`ctxscale.observations.OBSERVATION_COLUMNS`):

- ``dataset``: the lm-eval task name; ``task``: ``--task`` (default the lm-eval task name), the law's unit;
- ``n_shots``: the run's ``n-shot`` (lm-eval's record of ``--num_fewshot``);
- ``n_pmt``: mean over the logged samples of the prompt's token count, the prompt being the context
  argument lm-eval passed the model (``arguments.gen_args_0.arg_0``: the whole prompt for
  ``generate_until``, the context without the continuation for ``loglikelihood``/``multiple_choice``),
  tokenized with ``--tokenizer`` (a folder or hub id) *with* its special tokens, i.e. BOS counted as the
  model's tokenizer adds it (the paper counts vLLM's ``prompt_token_ids``, spec §1.1);
- ``score``: mean over the samples of the per-sample value of ``--metric`` (e.g. ``exact_match``,
  ``acc``); ``n_instances``: the number of samples;
- ``model``: ``--model``, else the basename of ``pretrained=`` in the run's ``model_args``; ``n_ctx``
  and ``compute`` from ``--model-sheet``, a CSV with columns ``model, n_ctx`` and either ``C`` (FLOPs) or
  ``N`` (non-embedding parameters) and ``D`` (training tokens), ``C = 6 N D``
  (:func:`ctxscale.model_info.training_compute`).

Every mistake is one line (``error: ...``, exit 2), checked before any tokenizer is loaded: a run that
mixes tasks, a run without samples (no ``--log_samples``), a model missing from the sheet, an unknown
metric (the error names the available ones), two runs of one cell.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ctxscale.model_info import training_compute
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_step_args, step_parser
from ctxscale.files import read_json_object
from ctxscale.observations import OBSERVATION_COLUMNS, validate_observations

@dataclass
class Run:
    """One lm-eval run: its results file, task, shot count, model name and samples file."""

    results_path: Path
    task: str
    n_shots: int
    model: str
    samples_path: Path
    metrics: tuple


def _model_name(record: dict, path: Path) -> str:
    args = (record.get("config") or {}).get("model_args") or ""
    if isinstance(args, dict):
        pretrained = args.get("pretrained")
    else:
        pretrained = next((part.split("=", 1)[1] for part in str(args).split(",") if part.startswith("pretrained=")),
                          None)
    if not pretrained:
        raise UserError(f"{path}: no pretrained= in the run's model_args; name the model with --model")
    return Path(str(pretrained).rstrip("/")).name


def read_run(path: Path, model: str | None = None) -> Run:
    """Check one results file and find its samples (module docstring)."""
    record = read_json_object(path, "lm-eval results file")
    results = record.get("results")
    if not isinstance(results, dict) or not results:
        raise UserError(f"{path} is not an lm-eval results file (no results)")
    tasks = sorted(t for t in results if t not in (record.get("groups") or {}))  # a group is not a task
    if len(tasks) != 1:
        raise UserError(f"{path} mixes tasks {', '.join(tasks)}; run lm_eval with one task per run")
    task = tasks[0]
    n_shot = (record.get("n-shot") or {}).get(task, (record.get("configs") or {}).get(task, {}).get("num_fewshot"))
    if n_shot is None:
        raise UserError(f"{path}: the run does not record its number of shots (n-shot)")
    date = path.stem[len("results_"):]
    samples = path.with_name(f"samples_{task}_{date}.jsonl")
    if not samples.exists():
        raise UserError(f"{path} has no samples ({samples.name}); rerun lm_eval with --log_samples")
    metrics = tuple(sorted({key.split(",")[0] for key in results[task]
                            if "," in key and "_stderr" not in key.split(",")[0]}))
    return Run(path, task, int(n_shot), model or _model_name(record, path), samples, metrics)


def find_runs(folders, model: str | None = None) -> list:
    runs = []
    for folder in folders:
        folder = Path(folder)
        if not folder.exists():
            raise UserError(f"lm-eval output folder {folder} does not exist")
        found = sorted(folder.rglob("results_*.json")) if folder.is_dir() else [folder]
        if not found:
            raise UserError(f"no lm-eval results (results_*.json) under {folder}")
        runs += [read_run(path, model) for path in found]
    return runs


def read_sheet(path) -> pd.DataFrame:
    """The model sheet: model, n_ctx and C, or N and D (module docstring); compute filled in."""
    try:
        sheet = pd.read_csv(path, dtype={"model": str})
    except (OSError, pd.errors.ParserError, ValueError) as exc:
        raise UserError(f"cannot read model sheet {path}: {str(exc).splitlines()[0]}") from None
    missing = [c for c in ("model", "n_ctx") if c not in sheet]
    if missing or not ("C" in sheet or {"N", "D"} <= set(sheet)):
        raise UserError(f"model sheet {path} needs columns model, n_ctx and either C or N and D")
    compute = sheet["C"] if "C" in sheet else pd.Series(np.nan, index=sheet.index)
    if {"N", "D"} <= set(sheet):
        compute = compute.fillna(pd.Series(training_compute(sheet["N"].to_numpy(float), sheet["D"].to_numpy(float)),
                                           index=sheet.index))
    if compute.isna().any() or (compute <= 0).any():
        raise UserError(f"model sheet {path}: every model needs a positive C, or N and D")
    return sheet.assign(compute=compute.astype(float)).set_index("model")


def prompt_of(sample: dict) -> str:
    """The prompt lm-eval gave the model: the first argument of the first request (module docstring)."""
    arguments = sample.get("arguments")
    if isinstance(arguments, dict):
        first = arguments.get("gen_args_0") or {}
        prompt = first.get("arg_0")
    elif isinstance(arguments, list) and arguments:  # older lm-eval: a list of argument tuples
        prompt = arguments[0][0] if isinstance(arguments[0], (list, tuple)) else arguments[0]
    else:
        prompt = None
    if not isinstance(prompt, str):
        raise UserError("a logged sample has no prompt in its arguments (not lm-eval --log_samples output?)")
    return prompt


def read_samples(run: Run) -> list:
    with open(run.samples_path, encoding="utf-8") as handle:
        samples = [json.loads(line) for line in handle if line.strip()]
    if not samples:
        raise UserError(f"{run.samples_path} holds no samples")
    return samples


def ingest(folders, sheet: pd.DataFrame, tokenizer, metric: str, task: str | None = None,
           model: str | None = None) -> pd.DataFrame:
    """Observations from lm-eval runs (module docstring); ``tokenizer`` maps text to ``input_ids``."""
    runs = check_runs(find_runs(folders, model), sheet, metric)
    rows = []
    for run in runs:
        samples = read_samples(run)
        values = [s.get(metric) for s in samples]
        if any(not isinstance(v, (int, float)) for v in values):
            raise UserError(f"{run.samples_path}: some samples lack a numeric {metric}")
        lengths = [len(tokenizer(prompt_of(s))["input_ids"]) for s in samples]
        spec = sheet.loc[run.model]
        rows.append({"model": run.model, "task": task or run.task, "dataset": run.task, "n_shots": run.n_shots,
                     "n_pmt": float(np.mean(lengths)), "n_ctx": float(spec["n_ctx"]), "compute": float(spec["compute"]),
                     "score": float(np.mean(values)), "n_instances": len(samples)})
    frame = pd.DataFrame(rows, columns=OBSERVATION_COLUMNS).sort_values(["model", "dataset", "n_shots"])
    return validate_observations(frame.reset_index(drop=True), source="ingested runs")


def check_runs(runs, sheet: pd.DataFrame, metric: str) -> list:
    """The one-line checks of the module docstring, made before any tokenizer work."""
    for run in runs:
        if run.model not in sheet.index:
            raise UserError(f"model {run.model} ({run.results_path}) is not in the model sheet; it lists "
                            f"{', '.join(map(str, sheet.index))}")
        if metric not in run.metrics:
            raise UserError(f"unknown metric {metric!r} for task {run.task}; the run has {', '.join(run.metrics)}")
    seen = {}
    for run in runs:
        key = (run.model, run.task, run.n_shots)
        if key in seen:
            raise UserError(f"two runs of {run.model} / {run.task} / {run.n_shots} shots: {seen[key]} and "
                            f"{run.results_path}")
        seen[key] = run.results_path
    return runs


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``ctxscale ingest OUT_DIR [...] --model-sheet SHEET.csv --tokenizer TOK --metric M --out OBS.csv``."""
    from ctxscale.observations import write_observations

    parser = step_parser("ctxscale ingest", __doc__.splitlines()[0],
                                     epilog="model sheet: CSV with model, n_ctx and either C or N and D (C = 6ND)")
    parser.add_argument("runs", nargs="+", help="lm-eval --output_path folders (or results_*.json files)")
    parser.add_argument("--model-sheet", required=True, help="CSV: model, n_ctx, and C or N and D")
    parser.add_argument("--tokenizer", required=True, help="tokenizer folder or hub id that counts n_pmt")
    parser.add_argument("--metric", required=True, help="per-sample metric to score, e.g. exact_match, acc")
    parser.add_argument("--task", help="task name in the table (the law's unit; default the lm-eval task)")
    parser.add_argument("--model", help="model name in the sheet (default: basename of pretrained=)")
    parser.add_argument("--out", required=True, help="observations CSV to write (atomically)")
    args = parse_step_args(parser, argv)
    if Path(args.out).is_dir():
        raise UserError(f"--out {args.out} is a directory; give the observations file's path")
    sheet = read_sheet(args.model_sheet)
    check_runs(find_runs(args.runs, args.model), sheet, args.metric)  # every check before the tokenizer loads
    from ctxscale.datasets.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(args.tokenizer, hub=True)
    frame = ingest(args.runs, sheet, tokenizer, args.metric, args.task, args.model)
    print(write_observations(args.out, frame))
    return 0


if __name__ == "__main__":
    sys.exit(main())
