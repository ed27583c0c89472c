"""Choosing a law variant without overfitting: the selection protocol of docs/laws.md and ``--law auto``.

**Score.** Every law is fitted to the cells of a task with ``n_pmt`` below the set's threshold and scored on
the longer prompts (the held-out-context split: the use a user has for the law). For one law against the
paper law the score of a data set is the **paired difference in out-of-sample MAE**: on the same held-out
cells, ``mean |law - observed| - mean |paper - observed|`` (negative: the law is better). Cells of one model
are not independent (one model's long prompts fail together), so the interval **resamples models**: each
replicate draws the set's models with replacement and recomputes the difference over their held-out cells
(all tasks of the set); 95% percentile interval, :data:`BOOTSTRAP_REPLICATES` replicates.

**Rule** (fixed before the confirmation sets were added; :func:`decide`):

- a set counts only with at least :data:`MIN_MODELS` models and :data:`MIN_CELLS` held-out cells;
- a variant *fails on a set* when that set's whole interval lies above :data:`MARGIN` (it is worse by more
  than the margin with 95% confidence: "significantly worse" in this repository);
- the **pooled difference** is the unweighted mean of the per-set differences; its interval resamples models
  within every set at once;
- **choice**: on the choice sets, the candidate is the variant with the lowest pooled difference among those
  that fail on no choice set and whose pooled interval lies entirely below 0; none: the candidate is ``paper``;
- **confirmation**: the candidate becomes ``recommended`` only if it also fails on no confirmation set and its
  pooled interval over the confirmation sets lies entirely below 0. Otherwise ``recommended`` is ``paper``.

**``--law auto``** (:func:`auto_select`) applies the same idea to the user's own training cells: an inner
held-out-context split (the longest :data:`AUTO_HOLDOUT_SHARE` of the training cells by ``n_pmt`` held out),
every candidate fitted to the rest and scored on them; it keeps ``paper`` unless the best candidate's paired
difference is below ``-MARGIN`` and (with at least two models) its model-bootstrap interval lies below 0.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from ctxscale.errors import UserError
from ctxscale.fit_inputs import CellSet, FitSettings
from ctxscale.fitting import FitData, bounds_summary, fit_law
from ctxscale.law import LAWS, LawSpec, resolve_law

log = logging.getLogger(__name__)

REFERENCE = "paper"
MARGIN = 0.005  # MAE, in score units (0.5 accuracy points)
MIN_MODELS = 5
MIN_CELLS = 20
LEVEL = 0.95
BOOTSTRAP_REPLICATES = 2000
AUTO_HOLDOUT_SHARE = 0.25
AUTO = "auto"


def heldout_errors(cellset: CellSet, laws, settings: FitSettings, train_max_n_pmt: float,
                   auto: bool = False) -> pd.DataFrame:
    """Absolute errors of every law on the held-out (long-prompt) cells of one task.

    One row per (law, held-out cell): task, law, model, n_pmt, n_ctx, observed, predicted, abs_error.
    With ``auto`` also the rows of ``--law auto``: the law :func:`auto_select` chooses on the training cells
    alone (its predictions are those of the chosen law's fit, which is the same fit). An empty frame when
    the threshold leaves no training or no held-out cells.
    """
    laws = list(dict.fromkeys(resolve_law(name) for name in laws))
    if auto and REFERENCE not in laws:
        laws = [REFERENCE] + laws
    cells = cellset.cells
    train_mask = cells["n_pmt"].to_numpy(float) < train_max_n_pmt
    if not train_mask.any() or train_mask.all():
        return pd.DataFrame()
    train = cellset.subset(train_mask)
    test = cells[~train_mask]
    frames = {}
    for law in laws:
        fit = fit_law(FitData.from_frame(train.cells), replace(settings, law=law).spec(), objective=settings.objective,
                      seeds=settings.seeds, robust_scale=settings.robust_scale, max_exponent=settings.max_exponent)
        predicted = fit.predict(test["compute"].to_numpy(float), test["n_pmt"].to_numpy(float),
                                test["n_ctx"].to_numpy(float))
        frames[law] = _error_rows(cellset.task, law, test, predicted)
    if auto:
        choice = auto_select(train, settings, candidates=laws)
        frames[AUTO] = frames[choice["law"]].assign(law=AUTO, auto_choice=choice["law"])
    return pd.concat(frames.values(), ignore_index=True)


def _error_rows(task, law, cells: pd.DataFrame, predicted) -> pd.DataFrame:
    observed = cells["score"].to_numpy(float)
    return pd.DataFrame({"task": task, "law": law, "cell": np.arange(len(cells)), "model": cells["model"].to_numpy(), "n_pmt": cells["n_pmt"].to_numpy(float),
                         "n_ctx": cells["n_ctx"].to_numpy(float), "observed": observed,
                         "predicted": np.asarray(predicted, float), "abs_error": np.abs(np.asarray(predicted, float) - observed)})


def per_model_differences(errors: pd.DataFrame, law: str, reference: str = REFERENCE) -> pd.DataFrame:
    """Per model: summed absolute-error difference (law minus reference) over its held-out cells, and their count."""
    a = errors[errors["law"] == law]
    b = errors[errors["law"] == reference]
    merged = a.merge(b, on=["task", "cell"], suffixes=("", "_ref"), validate="one_to_one")
    if len(merged) != len(a) or len(merged) != len(b) or (merged["model"] != merged["model_ref"]).any():
        raise UserError(f"laws {law} and {reference} were not scored on the same cells")
    diff = merged.assign(diff=merged["abs_error"] - merged["abs_error_ref"])
    grouped = diff.groupby("model")["diff"]
    return pd.DataFrame({"sum_diff": grouped.sum(), "n_cells": grouped.size()}).reset_index()


@dataclass
class Interval:
    estimate: float
    lo: float
    hi: float
    n_models: int
    n_cells: int

    def as_dict(self) -> dict:
        return {"diff": self.estimate, "lo": self.lo, "hi": self.hi, "n_models": self.n_models, "n_cells": self.n_cells}


def _draws(per_model: pd.DataFrame, rng, n_replicates: int) -> np.ndarray:
    """Bootstrap replicates of the mean difference, models drawn with replacement."""
    sums, counts = per_model["sum_diff"].to_numpy(float), per_model["n_cells"].to_numpy(float)
    drawn = rng.integers(0, len(sums), size=(n_replicates, len(sums)))
    return sums[drawn].sum(axis=1) / counts[drawn].sum(axis=1)


def model_bootstrap(per_model: pd.DataFrame, n_replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0,
                    level: float = LEVEL) -> Interval:
    """The mean paired difference over all held-out cells and its percentile interval over model resamples."""
    if per_model.empty:
        raise UserError("no held-out cells to compare on")
    draws = _draws(per_model, np.random.default_rng(seed), n_replicates)
    estimate = float(per_model["sum_diff"].sum() / per_model["n_cells"].sum())
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(estimate, float(lo), float(hi), len(per_model), int(per_model["n_cells"].sum()))


def pooled_bootstrap(per_model_by_set: dict, n_replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0,
                     level: float = LEVEL) -> Interval:
    """Unweighted mean of the per-set differences; each replicate resamples models within every set."""
    if not per_model_by_set:
        raise UserError("no data sets to pool")
    rng = np.random.default_rng(seed)
    draws = np.mean([_draws(frame, rng, n_replicates) for frame in per_model_by_set.values()], axis=0)
    estimate = float(np.mean([f["sum_diff"].sum() / f["n_cells"].sum() for f in per_model_by_set.values()]))
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return Interval(estimate, float(lo), float(hi), sum(len(f) for f in per_model_by_set.values()),
                    int(sum(f["n_cells"].sum() for f in per_model_by_set.values())))


def eligible(per_model: pd.DataFrame) -> bool:
    return len(per_model) >= MIN_MODELS and int(per_model["n_cells"].sum()) >= MIN_CELLS


def set_table(errors_by_set: dict, laws, n_replicates: int = BOOTSTRAP_REPLICATES, seed: int = 0) -> pd.DataFrame:
    """One row per (set, law other than paper): MAEs, paired difference, its interval, eligibility, failure."""
    rows = []
    for name, errors in errors_by_set.items():
        reference_mae = float(errors.loc[errors["law"] == REFERENCE, "abs_error"].mean())
        for law in laws:
            if law == REFERENCE or law not in set(errors["law"]):
                continue
            per_model = per_model_differences(errors, law)
            interval = model_bootstrap(per_model, n_replicates, seed)
            rows.append({"set": name, "law": law, "paper_mae": reference_mae,
                         "law_mae": float(errors.loc[errors["law"] == law, "abs_error"].mean()),
                         **interval.as_dict(), "eligible": eligible(per_model),
                         "fails": bool(eligible(per_model) and interval.lo > MARGIN)})
    return pd.DataFrame(rows)


def decide(errors_by_set: dict, choice_sets, confirmation_sets, laws, n_replicates: int = BOOTSTRAP_REPLICATES,
           seed: int = 0) -> dict:
    """The protocol of the module docstring: per-set table, pooled intervals, candidate, recommendation."""
    laws = [law for law in dict.fromkeys(laws) if law != REFERENCE]
    table = set_table(errors_by_set, laws, n_replicates, seed)

    def pooled(law, sets):
        frames = {s: per_model_differences(errors_by_set[s], law) for s in sets
                  if law in set(errors_by_set[s]["law"])}
        frames = {s: f for s, f in frames.items() if eligible(f)}
        return pooled_bootstrap(frames, n_replicates, seed) if frames else None

    def passes(law, sets):
        rows = table[(table["law"] == law) & table["set"].isin(sets)]
        pool = pooled(law, sets)
        return (not rows["fails"].any()) and pool is not None and pool.hi < 0, pool

    choice_pooled, passing = {}, {}
    for law in laws:
        ok, pool = passes(law, choice_sets)
        choice_pooled[law] = pool
        if ok:
            passing[law] = pool.estimate
    candidate = min(passing, key=passing.get) if passing else REFERENCE
    confirmation_pooled, confirmed = None, False
    if candidate != REFERENCE and confirmation_sets:
        confirmed, confirmation_pooled = passes(candidate, confirmation_sets)
    recommended = candidate if confirmed else REFERENCE
    return {"table": table, "choice_pooled": choice_pooled, "candidate": candidate,
            "confirmation_pooled": confirmation_pooled, "recommended": recommended}


# ------------------------------------------------------------------------------------------------ auto


def inner_threshold(n_pmt, share: float = AUTO_HOLDOUT_SHARE):
    """The n_pmt at and above which the longest ``share`` of the training cells are held out (None: no split)."""
    values = np.sort(np.asarray(n_pmt, float))
    if len(np.unique(values)) < 3:
        return None
    threshold = values[int(np.floor((1 - share) * len(values)))]
    if not (values < threshold).any():
        threshold = np.unique(values)[-1]
    return float(threshold)


def auto_select(cellset: CellSet, settings: FitSettings, candidates=None, share: float = AUTO_HOLDOUT_SHARE,
                margin: float = MARGIN, n_replicates: int = 1000, seed: int = 0) -> dict:
    """Choose a law on ``cellset`` (the training cells) by an inner held-out-context split (module docstring).

    Returns ``{"law", "reason", "threshold", "inner": [{law, mae, diff, lo, hi}]}``.
    """
    candidates = list(dict.fromkeys(resolve_law(c) for c in (candidates or LAWS)))
    if REFERENCE not in candidates:
        candidates = [REFERENCE] + candidates
    threshold = inner_threshold(cellset.cells["n_pmt"])
    if threshold is None:
        return {"law": REFERENCE, "threshold": None, "inner": [],
                "reason": "fewer than 3 prompt lengths in the training cells: no inner split, paper law kept"}
    n_train = int((cellset.cells["n_pmt"] < threshold).sum())
    if n_train < 6:
        return {"law": REFERENCE, "threshold": threshold, "inner": [],
                "reason": f"only {n_train} training cells below the inner threshold: paper law kept"}
    try:
        with bounds_summary(f"law auto, inner fits of {cellset.task}"):
            errors = heldout_errors(cellset, candidates, settings, threshold)
    except UserError as exc:
        return {"law": REFERENCE, "threshold": threshold, "inner": [], "reason": f"inner fits failed ({exc}): paper law kept"}
    inner = []
    for law in candidates:
        row = {"law": law, "mae": float(errors.loc[errors["law"] == law, "abs_error"].mean())}
        if law != REFERENCE:
            per_model = per_model_differences(errors, law)
            row.update({k: v for k, v in model_bootstrap(per_model, n_replicates, seed).as_dict().items()
                        if k in ("diff", "lo", "hi", "n_models")})
        inner.append(row)
    others = [r for r in inner if r["law"] != REFERENCE]
    where = f"inner split: trained on n_pmt < {threshold:g}, scored on {int((errors['law'] == REFERENCE).sum())} longer cells"
    if not others:
        return {"law": REFERENCE, "threshold": threshold, "inner": inner, "reason": "no other candidate"}
    winners = [r for r in others if r["diff"] < -margin and (r["hi"] < 0 or r["n_models"] < 2)]
    if winners:
        # the simplest winner within the margin of the best one: a nesting variant that only matches it loses
        best_diff = min(r["diff"] for r in winners)
        close = [r for r in winners if r["diff"] <= best_diff + margin]
        chosen = min(close, key=lambda r: (LawSpec(law=r["law"]).n_free, r["diff"]))
        reason = (f"{chosen['law']} MAE {chosen['mae']:.4f} vs paper {_mae(inner, REFERENCE):.4f} (paired difference "
                  f"{chosen['diff']:+.4f}, 95% model-bootstrap interval [{chosen['lo']:+.4f}, {chosen['hi']:+.4f}]) "
                  f"beats the margin {margin:g}; {where}")
        return {"law": chosen["law"], "threshold": threshold, "inner": inner, "reason": reason}
    best = min(others, key=lambda r: r["diff"])
    reason = (f"paper law kept: best alternative {best['law']} differs by {best['diff']:+.4f} MAE "
              f"(interval [{best['lo']:+.4f}, {best['hi']:+.4f}]), not below -{margin:g} with an interval below 0; {where}")
    return {"law": REFERENCE, "threshold": threshold, "inner": inner, "reason": reason}


def _mae(inner, law) -> float:
    return next(r["mae"] for r in inner if r["law"] == law)
