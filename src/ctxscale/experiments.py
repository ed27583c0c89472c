"""The paper's experiments (spec §5), one function each, sharing cell selection, fitting and metrics.

==========================  ======================================  ==================================
experiment                  training cells                          test cells
==========================  ======================================  ==================================
``in-distribution``         all                                     none
``held-out-context``        n_pmt < ``train_max_n_pmt`` (10,000)    n_pmt >= the threshold
``held-out-compute``        ``train_models`` (or all but holdout)   the other models
``leave-one-model-out``     all but one model, for every model      that model (out-of-fold)
``no-penalty``              all, law without the penalty            none
``context-agnostic``        all, compute factor only (Fig. 1)       none
==========================  ======================================  ==================================

The workflow's ``compare`` experiment is not a fit of this module: :mod:`ctxscale.compare` runs
held-out-context and leave-one-model-out for every law variant and writes one table.

Choices where the paper is silent (documented here, recorded in every result's ``settings``):

- the held-out-context split is strict (``n_pmt < threshold`` trains) and applies to every model;
- held-out-compute needs the models named explicitly (``holdout_models`` or ``train_models``); there
  is no safe default because the observations table does not say which models are in-distribution;
- leave-one-model-out reports the all-model fit as ``params`` and train metrics, and the pooled
  out-of-fold predictions of each model as the test split; ``folds`` holds each model's metrics;
- metrics on each split: MAE, RMSE, R^2 (1 - SS_res/SS_tot, ``null`` when the split has no variance),
  n, and MAE and mean error (predicted - observed, the "bias") for n_pmt <= n_ctx and n_pmt > n_ctx;
- a bootstrap (when requested) resamples the training cells; prediction intervals are given for every
  prediction row.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from ctxscale import config as ctxconfig
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_step_args, step_parser
from ctxscale.fitting import (BOOTSTRAP_REFITS, BOOTSTRAP_UNITS, DEFAULT_BOOTSTRAP_REPLICATES,
                              DEFAULT_BOOTSTRAP_UNIT, DEFAULT_LAW, DEFAULT_MAX_EXPONENT, DEFAULT_OBJECTIVE,
                              DEFAULT_PENALTY, DEFAULT_SEEDS, OBJECTIVES,
                              ROBUST_SCALE, FitData, LawFit, bootstrap_law, fit_law,
                              library_versions,
                              prediction_interval, write_json_atomic)
from ctxscale.fit_inputs import CellSet, FitSettings, select_cells
from ctxscale.law import LAW_CHOICES, PENALTIES, LawSpec
from ctxscale.observations import load_observations
from ctxscale.rule_arguments import EXPERIMENTS

log = logging.getLogger(__name__)

DEFAULT_TRAIN_MAX_N_PMT = ctxconfig.schema_defaults("experiment")["train_max_n_pmt"]
SCHEMA_VERSION = 1


def regression_metrics(observed, predicted, n_pmt, n_ctx) -> dict:
    """MAE, RMSE, R^2, n, and MAE / mean error split by n_pmt <= n_ctx (within) and > n_ctx (beyond)."""
    observed, predicted = np.asarray(observed, float), np.asarray(predicted, float)
    within = np.asarray(n_pmt, float) <= np.asarray(n_ctx, float)
    error = predicted - observed

    def mean_abs(mask):
        return float(np.mean(np.abs(error[mask]))) if mask.any() else None

    def mean(mask):
        return float(np.mean(error[mask])) if mask.any() else None

    n = len(observed)
    total = float(np.sum((observed - observed.mean()) ** 2)) if n else 0.0
    return {"n": int(n), "mae": mean_abs(np.ones(n, bool)),
            "rmse": float(np.sqrt(np.mean(error ** 2))) if n else None,
            "r2": float(1.0 - np.sum(error ** 2) / total) if n and total > 0 else None,
            "bias": mean(np.ones(n, bool)),
            "n_within_ctx": int(within.sum()), "mae_within_ctx": mean_abs(within), "bias_within_ctx": mean(within),
            "n_beyond_ctx": int((~within).sum()), "mae_beyond_ctx": mean_abs(~within), "bias_beyond_ctx": mean(~within)}


def _data(cellset: CellSet) -> FitData:
    return FitData.from_frame(cellset.cells)


def _fit(cellset: CellSet, spec: LawSpec, settings: FitSettings, what: str) -> LawFit:
    log.info("fitting %s law to %d cells of %s (%s, %d seeds)", spec.model_form, len(cellset.cells), cellset.task,
             what, len(settings.seeds))
    try:
        return fit_law(_data(cellset), spec, objective=settings.objective, seeds=settings.seeds,
                       robust_scale=settings.robust_scale, max_exponent=settings.max_exponent)
    except UserError as exc:
        raise UserError(f"{what}: {exc}") from None


def _prediction_rows(cells: pd.DataFrame, predicted, split: str) -> pd.DataFrame:
    rows = cells[["model", "dataset", "n_shots", "n_pmt", "n_ctx", "compute"]].copy()
    rows["observed"] = cells["score"].to_numpy(float)
    rows["predicted"] = np.asarray(predicted, float)
    rows["split"] = split
    return rows


def _predict(fit: LawFit, cells: pd.DataFrame):
    return fit.predict(cells["compute"].to_numpy(float), cells["n_pmt"].to_numpy(float), cells["n_ctx"].to_numpy(float))


def _record(experiment: str, cellset: CellSet, fit: LawFit, predictions: pd.DataFrame, settings: FitSettings,
            train: CellSet, extra_settings: dict, folds=None) -> dict:
    metrics = {}
    for split in ("train", "test"):
        rows = predictions[predictions["split"] == split]
        metrics[split] = regression_metrics(rows["observed"], rows["predicted"], rows["n_pmt"], rows["n_ctx"])
    bootstrap = None
    if settings.bootstrap:
        log.info("bootstrap: %d replicates, unit %s", settings.bootstrap, settings.bootstrap_unit)
        boot = bootstrap_law(fit, train.cells, train.parts, n_replicates=settings.bootstrap,
                             seed=settings.bootstrap_seed, unit=settings.bootstrap_unit,
                             refit=settings.bootstrap_refit)
        lo, hi = prediction_interval(fit.spec, boot.identifiable_arrays(), predictions["compute"].to_numpy(float),
                                     predictions["n_pmt"].to_numpy(float), predictions["n_ctx"].to_numpy(float),
                                     settings.level)
        predictions = predictions.assign(lo=lo, hi=hi)
        bootstrap = {"n_replicates": boot.n_requested, "n_succeeded": int(len(boot.replicates)),
                     "n_failed": boot.n_failed, "seed": boot.seed, "unit": boot.unit, "level": settings.level,
                     "method": "percentile", "refit": boot.refit,
                     "intervals": boot.interval(settings.level), "names": list(boot.names),
                     "replicates": boot.replicates.tolist()}
    spec = fit.spec
    record = {
        "schema_version": SCHEMA_VERSION,
        "experiment": experiment,
        "task": cellset.task,
        "model_form": spec.model_form,
        "penalty": {"kind": spec.penalty, "width": spec.penalty_width} if spec.uses_penalty else None,
        "law": {"name": spec.law, "floor": spec.floor, "n_params": spec.n_free},
        "objective": fit.objective,
        "params": fit.params,
        "identifiable_params": fit.identifiable,
        "metrics": metrics,
        "folds": folds,
        "predictions": predictions.to_dict(orient="records"),
        "bootstrap": bootstrap,
        "diagnostics": fit.diagnostics(),
        "seeds": list(fit.seeds),
        "settings": {**asdict(settings), "seeds": list(settings.seeds), **extra_settings,
                     "per_dataset": cellset.per_dataset, "datasets": cellset.datasets},
        "data": {"n_cells": int(len(cellset.cells)), "n_train": int(len(train.cells)),
                 "models": cellset.models, "train_models": train.models},
        "versions": library_versions(),
    }
    return _json_safe(record)


def _json_safe(value):
    """Plain Python types for json, NaN/inf as null."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return [_json_safe(v) for v in value.tolist()]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _split_fit(experiment: str, cellset: CellSet, train_mask, settings: FitSettings, extra: dict,
               model_form: str = "context-aware") -> dict:
    train_mask = np.asarray(train_mask, dtype=bool)
    train = cellset.subset(train_mask)
    fit = _fit(train, settings.spec(model_form), settings, experiment)
    predictions = pd.concat([_prediction_rows(train.cells, _predict(fit, train.cells), "train"),
                             _prediction_rows(cellset.cells[~train_mask], _predict(fit, cellset.cells[~train_mask]),
                                              "test")], ignore_index=True)
    return _record(experiment, cellset, fit, predictions, settings, train, extra)


def in_distribution(cellset: CellSet, settings: FitSettings | None = None) -> dict:
    """Fit the law to every cell of the task (spec §5.1)."""
    return _split_fit("in-distribution", cellset, np.ones(len(cellset.cells), bool), settings or FitSettings(), {})


def held_out_context(cellset: CellSet, settings: FitSettings | None = None,
                     train_max_n_pmt: float = DEFAULT_TRAIN_MAX_N_PMT) -> dict:
    """Train on cells with n_pmt < ``train_max_n_pmt``, test on the longer ones (spec §5.3)."""
    if not train_max_n_pmt > 0:
        raise UserError(f"--train-max-n-pmt must be positive, got {train_max_n_pmt}")
    train_mask = cellset.cells["n_pmt"].to_numpy(float) < train_max_n_pmt
    if not train_mask.any():
        raise UserError(f"held-out-context: no cells with n_pmt < {train_max_n_pmt:g} to train on")
    if train_mask.all():
        raise UserError(f"held-out-context: every cell has n_pmt < {train_max_n_pmt:g}; nothing is held out "
                        "(lower --train-max-n-pmt)")
    return _split_fit("held-out-context", cellset, train_mask, settings or FitSettings(),
                      {"train_max_n_pmt": train_max_n_pmt})


def held_out_compute(cellset: CellSet, settings: FitSettings | None = None, holdout_models=None,
                     train_models=None) -> dict:
    """Train on a named set of models and test on the others (spec §5.2)."""
    if bool(holdout_models) == bool(train_models):
        raise UserError("held-out-compute needs exactly one of --holdout-models or --train-models")
    known = cellset.models
    named = list(holdout_models or train_models)
    unknown = [m for m in named if m not in known]
    if unknown:
        raise UserError(f"unknown model(s) {', '.join(unknown)}; task {cellset.task} has {', '.join(known)}")
    in_named = cellset.cells["model"].isin(named).to_numpy()
    train_mask = in_named if train_models else ~in_named
    if not train_mask.any() or train_mask.all():
        raise UserError("held-out-compute: the named models leave no training or no test cells")
    extra = {"holdout_models": sorted(set(known) - set(cellset.cells.loc[train_mask, "model"])),
             "train_models": sorted(set(cellset.cells.loc[train_mask, "model"]))}
    return _split_fit("held-out-compute", cellset, train_mask, settings or FitSettings(), extra)


def leave_one_model_out(cellset: CellSet, settings: FitSettings | None = None) -> dict:
    """Fit on all models but one, predict that one, for every model (fitting-practice §1.8a)."""
    settings = settings or FitSettings()
    models = cellset.models
    if len(models) < 2:
        raise UserError("leave-one-model-out needs at least two models")
    spec = settings.spec()
    everything = cellset.subset(np.ones(len(cellset.cells), bool))
    full = _fit(everything, spec, settings, "leave-one-model-out (all models)")
    out_of_fold, folds = [], []
    for model in models:
        held = cellset.cells["model"].to_numpy() == model
        fit = _fit(cellset.subset(~held), spec, settings, f"leave-one-model-out (without {model})")
        rows = _prediction_rows(cellset.cells[held], _predict(fit, cellset.cells[held]), "test")
        out_of_fold.append(rows)
        folds.append({"model": model, **regression_metrics(rows["observed"], rows["predicted"], rows["n_pmt"],
                                                           rows["n_ctx"]),
                      "identifiable_params": fit.identifiable, "seeds_agree": fit.agreement["seeds_agree"]})
    predictions = pd.concat([_prediction_rows(cellset.cells, _predict(full, cellset.cells), "train"), *out_of_fold],
                            ignore_index=True)
    return _record("leave-one-model-out", cellset, full, predictions, settings, everything, {}, folds=folds)


def no_penalty(cellset: CellSet, settings: FitSettings | None = None) -> dict:
    """The law without the context penalty, fitted to every cell (spec §5.4)."""
    return _split_fit("no-penalty", cellset, np.ones(len(cellset.cells), bool), settings or FitSettings(), {},
                      model_form="no-penalty")


def context_agnostic(cellset: CellSet, settings: FitSettings | None = None) -> dict:
    """The compute-only baseline ``1 - exp(-A (C/C_c)^alpha)`` (spec §5.6, Fig. 1)."""
    return _split_fit("context-agnostic", cellset, np.ones(len(cellset.cells), bool), settings or FitSettings(), {},
                      model_form="context-agnostic")


def run_experiment(name: str, cellset: CellSet, settings: FitSettings | None = None, *,
                   train_max_n_pmt: float = DEFAULT_TRAIN_MAX_N_PMT, holdout_models=None, train_models=None) -> dict:
    """Dispatch by experiment name; the extra arguments go to the experiment that uses them."""
    settings = settings or FitSettings()
    if name == "held-out-context":
        return held_out_context(cellset, settings, train_max_n_pmt)
    if name == "held-out-compute":
        return held_out_compute(cellset, settings, holdout_models, train_models)
    functions = {"in-distribution": in_distribution, "leave-one-model-out": leave_one_model_out,
                 "no-penalty": no_penalty, "context-agnostic": context_agnostic}
    if name not in functions:
        raise UserError(f"unknown experiment {name!r}; choose one of {', '.join(EXPERIMENTS)}")
    if holdout_models or train_models:
        raise UserError("--holdout-models/--train-models apply only to held-out-compute")
    return functions[name](cellset, settings)


# ------------------------------------------------------------------------------------------------ CLI


def _names(text: str | None) -> list:
    return [part.strip() for part in (text or "").split(",") if part.strip()]


def _fmt(value, spec=".4f") -> str:
    return "-" if value is None else format(value, spec)


def summary(record: dict) -> str:
    """A short human summary of one fit record."""
    spec = record["model_form"] + (f", {record['penalty']['kind']} penalty" if record["penalty"] else "")
    if (record.get("law") or {}).get("name", "paper") != "paper":
        spec += f", {record['law']['name']} law"
    diag = record["diagnostics"]
    ident = record["identifiable_params"]
    lines = [f"task {record['task']} | experiment {record['experiment']} | {spec} | objective {record['objective']}",
             f"seeds {record['seeds']}: {'agree' if diag['seeds_agree'] else 'DISAGREE'} "
             f"(loss {diag['loss']:.6g}, spread {diag['loss_spread']:.2g})"
             + (f"; at bounds: {', '.join(diag['at_bounds'])}" if diag["at_bounds"] else ""),
             "  ".join(f"{k} = {v:.4g}" for k, v in ident.items())]
    if record.get("bootstrap"):
        b = record["bootstrap"]
        intervals = "  ".join(f"{k} [{v[0]:.3g}, {v[1]:.3g}]" for k, v in b["intervals"].items() if ":" not in k)
        lines.append(f"bootstrap {b['n_succeeded']}/{b['n_replicates']} ({b['unit']}, {b['level']:g}): {intervals}")
    lines.append(f"{'split':<6}{'n':>6}{'MAE':>9}{'RMSE':>9}{'R2':>9}{'MAE<=ctx':>10}{'MAE>ctx':>9}")
    for split in ("train", "test"):
        m = record["metrics"][split]
        if m["n"]:
            lines.append(f"{split:<6}{m['n']:>6}{_fmt(m['mae']):>9}{_fmt(m['rmse']):>9}{_fmt(m['r2'], '.3f'):>9}"
                         f"{_fmt(m['mae_within_ctx']):>10}{_fmt(m['mae_beyond_ctx']):>9}")
    return "\n".join(lines)


def _training_cells(cellset: CellSet, experiment: str, train_max_n_pmt: float, holdout_models, train_models) -> CellSet:
    """The cells an experiment fits on (what ``--law auto`` may look at): the short prompts of held-out-context,
    the training models of held-out-compute, every cell otherwise. For leave-one-model-out the choice is made once
    on all cells, so it has seen every held-out model and that experiment's test MAE is optimistic for ``auto``."""
    if experiment == "held-out-context":
        return cellset.subset(cellset.cells["n_pmt"].to_numpy(float) < train_max_n_pmt)
    if experiment == "held-out-compute" and (holdout_models or train_models):
        in_named = cellset.cells["model"].isin(holdout_models or train_models).to_numpy()
        return cellset.subset(in_named if train_models else ~in_named)
    return cellset


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``ctxscale fit OBS.csv --task TASK [...] --out FIT.json`` (``python -m ctxscale.experiments`` too)."""
    parser = step_parser("ctxscale fit", "Fit the context-aware law to one task.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="""observations table: one row per cell with the columns
  model, task, dataset, n_shots, n_pmt (mean prompt tokens, BOS included), n_ctx (context limit, tokens),
  compute (training FLOPs, 6ND), score (mean metric in [0, 1]), n_instances
experiments:
  in-distribution      fit on every cell, report train error
  held-out-context     train on n_pmt < --train-max-n-pmt, test on the longer prompts
  held-out-compute     train on all but --holdout-models (or on --train-models), test on the others
  leave-one-model-out  one fit per model left out, tested on it
  no-penalty           the law without the sigmoid penalty (ablation)
  context-agnostic     compute term only (baseline)
penalties: paper = sigma(n_pmt - n_ctx) in raw tokens; relative = width as a fraction of n_ctx
  (--penalty-width); fitted = the width is a fitted parameter
laws: paper | heavy-tail | chance-floor (--floor to fix it) | relative-width | floor-relative-width |
  effective-context | recommended (= paper; docs/laws.md) | auto (chosen per task on the training cells: the longest quarter
  of them held out, paper kept unless another law wins by the margin; ctxscale.selection)
objectives: mse | mae | robust (soft-L1, --robust-scale) | binomial (likelihood of n_instances)""",
    )  # fmt: skip
    parser.add_argument("observations", help="observations table (CSV or Parquet)")
    parser.add_argument("--task", required=True, help="task to fit (one law per task)")
    parser.add_argument("--experiment", default="in-distribution", choices=EXPERIMENTS)
    parser.add_argument("--train-max-n-pmt", type=float, default=DEFAULT_TRAIN_MAX_N_PMT,
                        help=f"held-out-context: train on n_pmt below this (default {DEFAULT_TRAIN_MAX_N_PMT:g})")
    parser.add_argument("--holdout-models", help="held-out-compute: comma-separated models to test on")
    parser.add_argument("--train-models", help="held-out-compute: comma-separated models to train on (the rest test)")
    parser.add_argument("--models", help="use only these models (comma-separated)")
    parser.add_argument("--exclude-models", help="leave these models out (comma-separated)")
    parser.add_argument("--dataset", action="append", help="use only this dataset (repeat or comma-separate)")
    parser.add_argument("--per-dataset", action="store_true",
                        help="fit one point per (model, dataset, shots) instead of averaging over the task's datasets")
    parser.add_argument("--penalty", default=DEFAULT_PENALTY, choices=PENALTIES)
    parser.add_argument("--penalty-width", type=float, help="relative penalty: width as a fraction of n_ctx (0.01)")
    parser.add_argument("--law", default=DEFAULT_LAW, choices=LAW_CHOICES + ("auto",),
                        help="law variant (ctxscale.law.LAWS; recommended = docs/laws.md's choice; auto = chosen on "
                             "the training cells by an inner held-out-context split, see ctxscale.selection; default paper)")
    parser.add_argument("--floor", type=float, help="chance-floor law: fix the floor (e.g. 0.25) instead of fitting it")
    parser.add_argument("--objective", default=DEFAULT_OBJECTIVE, choices=OBJECTIVES)
    parser.add_argument("--robust-scale", type=float, default=ROBUST_SCALE, help="robust objective: soft-L1 scale")
    parser.add_argument("--seeds", type=int, default=len(DEFAULT_SEEDS), help="number of DE seeds, 0..N-1 (5)")
    parser.add_argument("--max-exponent", type=float, default=DEFAULT_MAX_EXPONENT,
                        help=f"upper search bound of the exponents alpha and beta ({DEFAULT_MAX_EXPONENT:g})")
    parser.add_argument("--bootstrap", type=int, nargs="?", const=DEFAULT_BOOTSTRAP_REPLICATES, default=0,
                        metavar="N", help=f"bootstrap replicates (flag alone: {DEFAULT_BOOTSTRAP_REPLICATES}; default none)")
    parser.add_argument("--bootstrap-seed", type=int, default=0)
    parser.add_argument("--bootstrap-unit", default=DEFAULT_BOOTSTRAP_UNIT, choices=BOOTSTRAP_UNITS,
                        help=f"what a replicate resamples (default {DEFAULT_BOOTSTRAP_UNIT}; see ctxscale.fitting)")
    parser.add_argument("--bootstrap-refit", default="global", choices=BOOTSTRAP_REFITS,
                        help="refit each replicate by DE + local refinement (global) or local refinement only")
    parser.add_argument("--level", type=float, default=0.95, help="interval level (0.95)")
    parser.add_argument("--out", help="write the fit JSON here (atomically)")
    args = parse_step_args(parser, argv)
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if not 0 < args.level < 1:
        raise UserError(f"--level must be between 0 and 1, got {args.level}")
    if args.out and Path(args.out).is_dir():  # checked before the fit, not after minutes of work
        raise UserError(f"--out {args.out} is a directory; give the fit file's path, e.g. {args.out}/fit.json")
    auto = args.law == "auto"
    if auto and (args.floor is not None or args.penalty != DEFAULT_PENALTY or args.penalty_width is not None):
        raise UserError("--law auto chooses among the laws with their fitted parameters; drop --floor, --penalty "
                        "and --penalty-width (or name a law)")
    settings = FitSettings(penalty=args.penalty, penalty_width=args.penalty_width,
                           law=DEFAULT_LAW if auto else args.law, floor=args.floor,
                           objective=args.objective,
                           seeds=tuple(range(args.seeds)), bootstrap=args.bootstrap or 0,
                           bootstrap_seed=args.bootstrap_seed, bootstrap_unit=args.bootstrap_unit,
                           bootstrap_refit=args.bootstrap_refit, level=args.level, robust_scale=args.robust_scale,
                           max_exponent=args.max_exponent)
    settings.spec()  # validate the penalty options before reading data
    observations = load_observations(args.observations)
    datasets = [d for item in args.dataset or () for d in _names(item)]
    cellset = select_cells(observations, args.task, datasets or None, args.per_dataset,
                           _names(args.models), _names(args.exclude_models))
    selection = None
    if auto:
        from dataclasses import replace

        from ctxscale.selection import auto_select

        train = _training_cells(cellset, args.experiment, args.train_max_n_pmt, _names(args.holdout_models),
                                _names(args.train_models))
        selection = auto_select(train, settings)
        settings = replace(settings, law=selection["law"])
        print(f"law auto: chose {selection['law']} ({selection['reason']})")
    record = run_experiment(args.experiment, cellset, settings, train_max_n_pmt=args.train_max_n_pmt,
                            holdout_models=_names(args.holdout_models), train_models=_names(args.train_models))
    if selection is not None:
        record["law_selection"] = _json_safe({"requested": "auto", **selection})
    source = Path(args.observations)
    record["data"]["source"] = str(source)
    record["data"]["sha256"] = hashlib.sha256(source.read_bytes()).hexdigest()
    record["settings"]["model_filter"] = _names(args.models)
    record["settings"]["exclude_models"] = _names(args.exclude_models)
    if args.out:
        write_json_atomic(args.out, record)
    print(summary(record))
    if args.out:
        print(f"wrote {args.out}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
