"""The ``compare`` experiment: every law variant of :data:`ctxscale.law.LAWS` on the same cells, out of sample.

For each task and each law, three fits of :mod:`ctxscale.experiments` are made on the same cells:

- **held-out context**: train on n_pmt < ``train_max_n_pmt``, test on the longer prompts;
- **leave-one-model-out**: one fit per model left out, tested on it (pooled out-of-fold MAE), plus the
  all-cell fit, which gives the train MAE and the information criteria;
- **information criteria** of the all-cell fit with Gaussian errors: ``AIC = n ln(RSS/n) + 2k`` and
  ``BIC = n ln(RSS/n) + k ln n`` (``k`` = fitted parameters of the law). They penalise the extra
  parameters of a variant; lower is better, and only differences within one task mean anything.

The table (one row per task and law) is written as ``law_comparison.{csv,md}``, by the workflow under
``results/tables/`` (config ``experiments.compare``) or by ``ctxscale compare OBS.csv --task T`` on any
observations table (external data sets included: see ``benchmarks/external_observations.py``).
A task whose cells all lie below the threshold (or all above) gets no held-out-context columns.
"""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_step_args, step_parser
from ctxscale.experiments import DEFAULT_TRAIN_MAX_N_PMT, held_out_context, leave_one_model_out
from ctxscale.fit_inputs import FitSettings, select_cells
from ctxscale.law import LAWS, LawSpec, resolve_law
from ctxscale.rule_arguments import COMPARISON_TABLE

log = logging.getLogger(__name__)

COLUMNS = ["task", "law", "n_params", "n_cells", "n_models", "train_mae", "lomo_test_mae", "train_max_n_pmt",
           "heldout_context_train_mae", "heldout_context_test_mae", "aic", "bic"]


def information_criteria(observed, predicted, k: int) -> tuple[float, float]:
    """Gaussian AIC and BIC of a least-squares fit with ``k`` parameters (module docstring)."""
    residual = np.asarray(observed, float) - np.asarray(predicted, float)
    n = len(residual)
    rss = max(float(residual @ residual), 1e-300)
    fit_term = n * math.log(rss / n)
    return fit_term + 2 * k, fit_term + k * math.log(n)


def compare_task(cellset, laws=None, settings: FitSettings | None = None,
                 train_max_n_pmt: float = DEFAULT_TRAIN_MAX_N_PMT) -> pd.DataFrame:
    """One row per law for one task's cells (module docstring)."""
    settings = settings or FitSettings()
    laws = [resolve_law(name) for name in (laws or LAWS)]
    n_pmt = cellset.cells["n_pmt"].to_numpy(float)
    split = bool((n_pmt < train_max_n_pmt).any() and (n_pmt >= train_max_n_pmt).any())
    if not split:
        log.warning("%s: no held-out-context split at n_pmt %g (all cells on one side)", cellset.task,
                    train_max_n_pmt)
    rows = []
    for law in dict.fromkeys(laws):
        law_settings = replace(settings, law=law)
        spec = law_settings.spec()
        lomo = leave_one_model_out(cellset, law_settings)
        train = pd.DataFrame(lomo["predictions"]).query("split == 'train'")
        aic, bic = information_criteria(train["observed"], train["predicted"], spec.n_free)
        row = {"task": cellset.task, "law": law, "n_params": spec.n_free, "n_cells": len(cellset.cells),
               "n_models": len(cellset.models), "train_mae": lomo["metrics"]["train"]["mae"],
               "lomo_test_mae": lomo["metrics"]["test"]["mae"], "train_max_n_pmt": None,
               "heldout_context_train_mae": None, "heldout_context_test_mae": None, "aic": aic, "bic": bic}
        if split:
            held = held_out_context(cellset, law_settings, train_max_n_pmt)
            row.update(train_max_n_pmt=float(train_max_n_pmt),
                       heldout_context_train_mae=held["metrics"]["train"]["mae"],
                       heldout_context_test_mae=held["metrics"]["test"]["mae"])
        log.info("%s %s: LOMO test MAE %.4f", cellset.task, law, row["lomo_test_mae"])
        rows.append(row)
    return pd.DataFrame(rows, columns=COLUMNS)


def compare_laws(observations: pd.DataFrame, tasks, laws=None, settings: FitSettings | None = None,
                 train_max_n_pmt: float = DEFAULT_TRAIN_MAX_N_PMT, models=None, per_dataset: bool = False):
    """:func:`compare_task` for every task, one table."""
    from ctxscale.fitting import bounds_summary

    with bounds_summary("compare"):
        frames = [compare_task(select_cells(observations, task, None, per_dataset, models), laws, settings,
                               train_max_n_pmt) for task in tasks]
    return pd.concat(frames, ignore_index=True)


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``ctxscale compare OBS.csv --task T [--task T2 ...] [--laws a,b] --out-dir DIR``."""
    from ctxscale.experiments import _names
    from ctxscale.fitting import DEFAULT_MAX_EXPONENT, OBJECTIVES
    from ctxscale.observations import load_observations
    from ctxscale.files import atomic_write
    from ctxscale.tables import to_markdown

    parser = step_parser("ctxscale compare", "Compare the law variants out of sample on an observations table.")
    parser.add_argument("observations", help="observations table (CSV or Parquet), as `ctxscale fit` reads")
    parser.add_argument("--task", action="append", required=True, help="task to compare on (repeat for several)")
    parser.add_argument("--laws", default=",".join(LAWS), help=f"comma-separated laws (default {','.join(LAWS)})")
    parser.add_argument("--train-max-n-pmt", type=float, default=DEFAULT_TRAIN_MAX_N_PMT,
                        help=f"held-out context: train on n_pmt below this (default {DEFAULT_TRAIN_MAX_N_PMT:g})")
    parser.add_argument("--models", help="use only these models (comma-separated)")
    parser.add_argument("--per-dataset", action="store_true", help="one cell per (model, dataset, shots)")
    parser.add_argument("--objective", default="mse", choices=OBJECTIVES)
    parser.add_argument("--seeds", type=int, default=5, help="differential-evolution seeds per fit (5)")
    parser.add_argument("--max-exponent", type=float, default=DEFAULT_MAX_EXPONENT,
                        help=f"upper search bound of the exponents alpha and beta ({DEFAULT_MAX_EXPONENT:g})")
    parser.add_argument("--out-dir", required=True, help="write NAME.csv and NAME.md here (atomically)")
    parser.add_argument("--name", default=COMPARISON_TABLE, help=f"file name stem (default {COMPARISON_TABLE})")
    args = parse_step_args(parser, argv)
    laws = [resolve_law(name) for name in _names(args.laws)]
    if not laws:
        raise UserError("--laws names no law")
    if args.seeds < 1:
        raise UserError("--seeds must be at least 1")
    if not args.train_max_n_pmt > 0:
        raise UserError(f"--train-max-n-pmt must be positive, got {args.train_max_n_pmt}")
    if Path(args.out_dir).is_file():
        raise UserError(f"--out-dir {args.out_dir} is a file; give a folder")
    for law in laws:
        LawSpec(law=law)
    settings = FitSettings(objective=args.objective, seeds=tuple(range(args.seeds)),
                           max_exponent=args.max_exponent)
    observations = load_observations(args.observations)
    table = compare_laws(observations, args.task, laws, settings, args.train_max_n_pmt,
                         _names(args.models) or None, args.per_dataset)
    written = [Path(args.out_dir) / f"{args.name}.csv", Path(args.out_dir) / f"{args.name}.md"]
    atomic_write(written[0], table.to_csv(index=False, float_format="%.10g", lineterminator="\n"))
    atomic_write(written[1], to_markdown(COMPARISON_TABLE, table))
    columns = ["task", "law", "n_params", "train_mae", "lomo_test_mae", "heldout_context_test_mae", "bic"]
    print(table[columns].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print("wrote " + " ".join(map(str, written)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
