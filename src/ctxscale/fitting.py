"""Fitting the context-aware law: differential evolution then local refinement, seeds, bootstrap, results.

Procedure (spec §2; the paper names only "global differential evolution followed by local optimisation"):

1. **Working parameterisation.** The optimiser never sees raw FLOPs or the non-identifiable paper pairs.
   Each saturating factor is written ``1 - exp(-exp(h + e * (ln x - ln x_ref)))`` where ``x_ref`` is the
   geometric mean of the data (compute or n_pmt), ``h`` the log-hazard at that reference and ``e`` the
   exponent. This is the identifiable form of :mod:`ctxscale.law` re-centred on the data, which keeps the
   objective well conditioned (``log10_C50 = log10 x_ref - h / (e ln 10)``). Bounds: ``h`` in [-10, 5]
   (a factor from 5e-5 to 1 at the reference), exponents in [0.01, ``max_exponent``] (default 3, the spec §2
   table; the config's ``fit.max_exponent``), fitted penalty width ``log10 w`` in [-4, 0].
2. **Data-driven initialisation.** Each factor is a complementary log-log link, so ``ln(-ln(1 - P))`` is
   linear in ``ln C`` and ``ln n_pmt`` for in-window points. A least-squares line through those points
   (0.01 < P < 0.99, n_pmt <= n_ctx / 2) gives the starting exponents; the intercept is split evenly
   between the two factors. The start is one member of every DE population (``x0``).
3. **Global stage.** ``scipy.optimize.differential_evolution`` with a vectorised objective, ``popsize=15``,
   ``tol=1e-8``, ``maxiter=2000`` and ``polish=False`` so it cannot stop early (the Chinchilla lesson of
   Besiroglu et al.), one run per seed (default 5 seeds: 0..4).
4. **Local stage.** ``scipy.optimize.least_squares`` (trf, bounds, ``ftol = xtol = gtol = 1e-12``) on
   residuals whose sum of squares *is* the objective (MSE, soft-L1 robust loss and binomial deviance are
   all written that way), or bounded Nelder-Mead for the non-smooth MAE objective.
5. **Selection and diagnostics.** The seed with the lowest refined loss wins; the result records every
   seed's DE and local outcome, the spread of the optimum across seeds, whether the seeds agree and which
   parameters sit on a bound.

Objectives (all means over cells, optionally weighted): ``mse`` (default, the spec's recommendation),
``mae`` (the paper's reported metric), ``robust`` (soft-L1 with scale 0.02 accuracy points: quadratic
inside, linear outside) and ``binomial`` (mean binomial deviance per instance, cells weighted by
``n_instances``; predictions clipped to [1e-9, 1 - 1e-9]).

Bootstrap (fitting-practice §1.7). Observation tables hold cell means only, so resampling a cell's n
instances with replacement is drawn as ``Binomial(n, score) / n`` - exact for 0/1 metrics, an approximation
for graded ones such as BLEU. When a fitted cell is the unweighted mean of several datasets, each dataset
cell is redrawn and then averaged, as :func:`ctxscale.observations.task_cells` does. The unit says what a
replicate resamples:

- ``instances`` (default): every cell keeps its model and prompt length and its score is redrawn from its
  instances. This is the noise the observations actually carry (the models are a fixed design, not a
  sample), and it is calibrated: in a simulation of 40 binomial data sets x 200 replicates its 95% intervals
  covered the true parameters 90-97.5% of the time (``tests/test_fitting.py`` repeats a smaller version).
- ``models``: models are drawn with replacement (clusters) and their cells kept as observed. It measures
  the spread between models only, so it can be far too narrow with few models (the paper has 12).
- ``models+instances``: models drawn with replacement *and* every drawn cell redrawn from its instances.
  The drawn cells already carry their instance noise, so this counts it twice: the same simulation gave
  100% coverage and intervals about sqrt(2) too wide. Kept for comparison with earlier results only.

Each replicate is refitted by one differential-evolution run (its population seeded with the point
estimate, one seed per replicate) plus local refinement (``refit="global"``, the default), or by local
refinement from the point estimate only (``refit="local"``, about 20x faster, but blind to replicates whose
optimum moved to another basin). Intervals are percentiles over the replicates. A replicate's DE keeps the
main fit's tolerance: at ``tol=1e-3`` the miniature's bootstraps took about 35 % less time, but one replicate of
its held-out-context arithmetic fit stopped on another optimum (2026-12-05).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import differential_evolution, least_squares, minimize

from ctxscale.config import schema_defaults
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_step_args, step_parser
from ctxscale.files import read_json_object
from ctxscale.files import atomic_write
from ctxscale.provenance import package_versions
from ctxscale.law import (
    EXTRA_PARAMETERS,
    LawSpec,
    context_penalty,
    paper_from_identifiable,
)

log = logging.getLogger(__name__)

OBJECTIVES = ("mse", "mae", "robust", "binomial")
BOOTSTRAP_UNITS = ("instances", "models", "models+instances")
_FIT_DEFAULTS = schema_defaults("fit")  # the config's fit section: the one source of these defaults
DEFAULT_BOOTSTRAP_UNIT = _FIT_DEFAULTS["bootstrap_unit"]  # "instances": see the module docstring
DEFAULT_LAW, DEFAULT_PENALTY, DEFAULT_OBJECTIVE = _FIT_DEFAULTS["law"], _FIT_DEFAULTS["penalty"], _FIT_DEFAULTS["objective"]
BOOTSTRAP_REFITS = ("global", "local")
# DE seeds 0..N-1 and bootstrap replicates, from the config's fit defaults.
DEFAULT_SEEDS = tuple(range(_FIT_DEFAULTS["seeds"]))
DEFAULT_BOOTSTRAP_REPLICATES = _FIT_DEFAULTS["bootstrap"]
ROBUST_SCALE = 0.02
PROBABILITY_FLOOR = 1e-9
HAZARD_BOUNDS = (-10.0, 5.0)
# Exponents search [MIN_EXPONENT, max_exponent]; the upper end is the config's fit.max_exponent (default 3).
MIN_EXPONENT = 0.01
DEFAULT_MAX_EXPONENT = float(_FIT_DEFAULTS["max_exponent"])
DE_SETTINGS = {"popsize": 15, "tol": 1e-8, "atol": 0.0, "maxiter": 2000, "mutation": (0.5, 1.0),
               "recombination": 0.7, "strategy": "best1bin", "init": "latinhypercube"}
LOCAL_TOLERANCE = 1e-12
# Seeds "agree" when their refined losses match to this relative precision and their identifiable
# parameters (log10 scales and exponents) to this absolute precision.
AGREEMENT_LOSS_RTOL = 1e-6
AGREEMENT_PARAM_ATOL = 1e-3


BOUND_MESSAGE = "parameter %s of the %s fit (law %s) sits on its bound; the optimum may lie outside the search box"
_FITS_MADE = 0  # fits made by fit_law in this process (bounds_summary counts its own)


class _BoundCollector(logging.Filter):
    """Swallows the per-fit "sits on its bound" warnings and counts them per (law, parameter)."""

    def __init__(self):
        super().__init__()
        self.counts = Counter()
        self.fits, self._last_fit = 0, None

    def filter(self, record) -> bool:
        if record.msg is BOUND_MESSAGE:
            self.counts[(record.args[2], record.args[0])] += 1
            if _FITS_MADE != self._last_fit:  # the warnings of one fit come together, after its count
                self.fits, self._last_fit = self.fits + 1, _FITS_MADE
            return False
        return True


@contextmanager
def bounds_summary(what: str):
    """Within the block, fits do not warn one by one about parameters on their bounds; at its end one warning
    summarises them (``ctxscale compare``: many fits, one summary)."""
    collector = _BoundCollector()
    log.addFilter(collector)
    started = _FITS_MADE
    try:
        yield collector
    finally:
        log.removeFilter(collector)
        if collector.counts:
            parts = ", ".join(f"{law} {name} ({count})" for (law, name), count in sorted(collector.counts.items()))
            log.warning("%s: %d of %d fits put parameters on their search bounds (law parameter (fits): %s); the "
                        "optimum may lie outside the search box (each fit's diagnostics.at_bounds names them)", what,
                        collector.fits, _FITS_MADE - started, parts)


def check_max_exponent(value) -> float:
    value = float(value)
    if not (math.isfinite(value) and value > MIN_EXPONENT):
        raise UserError(f"the exponents' upper bound (max_exponent) must be a number above {MIN_EXPONENT}, got {value}")
    return value


@dataclass
class FitData:
    """The cells one fit sees, as float arrays (``weights`` are bootstrap multiplicities, default 1)."""

    compute: np.ndarray
    n_pmt: np.ndarray
    n_ctx: np.ndarray
    score: np.ndarray
    n_instances: np.ndarray | None = None
    weights: np.ndarray | None = None

    def __post_init__(self):
        for name in ("compute", "n_pmt", "n_ctx", "score", "n_instances", "weights"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, np.asarray(value, dtype=float).ravel())
        n = len(self.score)
        for name in ("compute", "n_pmt", "n_ctx", "n_instances", "weights"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise UserError(f"{name} has {len(value)} values but score has {n}")
        for name in ("compute", "n_pmt", "n_ctx", "score"):
            if not np.all(np.isfinite(getattr(self, name))):
                raise UserError(f"{name} contains NaN or infinite values")
        if np.any(self.compute <= 0) or np.any(self.n_pmt <= 0) or np.any(self.n_ctx <= 0):
            raise UserError("compute, n_pmt and n_ctx must all be positive")
        if np.any((self.score < 0) | (self.score > 1)):
            raise UserError("scores must lie in [0, 1]")

    @classmethod
    def from_frame(cls, cells: pd.DataFrame) -> "FitData":
        return cls(cells["compute"].to_numpy(), cells["n_pmt"].to_numpy(), cells["n_ctx"].to_numpy(),
                   cells["score"].to_numpy(),
                   cells["n_instances"].to_numpy() if "n_instances" in cells else None)

    def __len__(self) -> int:
        return len(self.score)


class WorkingForm:
    """The centred parameterisation the optimiser works in (module docstring, step 1).

    The first two (four with the context factor) coordinates are the centred log-hazards and exponents;
    a law variant's extra parameters (:data:`ctxscale.law.EXTRA_PARAMETERS`) follow, fitted as they are.
    """

    def __init__(self, spec: LawSpec, log10_c_ref: float, log10_n_ref: float,
                 max_exponent: float = DEFAULT_MAX_EXPONENT):
        self.spec = spec
        self.log10_c_ref = float(log10_c_ref)
        self.log10_n_ref = float(log10_n_ref)
        exponent_bounds = (MIN_EXPONENT, check_max_exponent(max_exponent))
        names, bounds = ["hazard_C", "alpha"], [HAZARD_BOUNDS, exponent_bounds]
        if spec.uses_context:
            names += ["hazard_n", "beta"]
            bounds += [HAZARD_BOUNDS, exponent_bounds]
        self.n_core = len(names)
        names += list(spec.extra_names)
        bounds += [EXTRA_PARAMETERS[name] for name in spec.extra_names]
        self.names = tuple(names)
        self.bounds = tuple(bounds)

    @classmethod
    def for_data(cls, spec: LawSpec, data: FitData, max_exponent: float = DEFAULT_MAX_EXPONENT) -> "WorkingForm":
        return cls(spec, float(np.mean(np.log10(data.compute))), float(np.mean(np.log10(data.n_pmt))), max_exponent)

    def to_identifiable(self, z) -> dict:
        z = np.asarray(z, dtype=float)
        ln10 = math.log(10)
        ident = {"log10_C50": float(self.log10_c_ref - z[0] / (z[1] * ln10)), "alpha": float(z[1])}
        if self.spec.uses_context:
            ident["log10_n50"] = float(self.log10_n_ref - z[2] / (z[3] * ln10))
            ident["beta"] = float(z[3])
        for i, name in enumerate(self.spec.extra_names):
            ident[name] = float(z[self.n_core + i])
        return ident

    def from_identifiable(self, ident: dict) -> np.ndarray:
        ln10 = math.log(10)
        z = [ident["alpha"] * ln10 * (self.log10_c_ref - ident["log10_C50"]), ident["alpha"]]
        if self.spec.uses_context:
            z += [ident["beta"] * ln10 * (self.log10_n_ref - ident["log10_n50"]), ident["beta"]]
        z += [ident[name] for name in self.spec.extra_names]
        return np.asarray(z, dtype=float)

    def predictor(self, data: FitData):
        """A function ``z -> P`` for these cells; ``z`` is (k,) or (k, S), the result (n,) or (S, n)."""
        spec = self.spec
        x_c = np.log(data.compute) - self.log10_c_ref * math.log(10)
        x_n = np.log(data.n_pmt) - self.log10_n_ref * math.log(10)
        fixed_penalty = None
        if spec.uses_penalty and not spec.fits_penalty_width:  # computed once, not per candidate
            fixed_penalty = context_penalty(data.n_pmt, data.n_ctx, spec.penalty, spec.penalty_width)
        extras = {name: self.n_core + i for i, name in enumerate(spec.extra_names)}

        def predict(z):
            z = np.asarray(z, dtype=float)
            cols = z[:, :, None] if z.ndim == 2 else z[:, None]
            extra = {name: cols[i] for name, i in extras.items()}
            context = cols[2] + cols[3] * x_n if spec.uses_context else None
            return spec.combine(cols[0] + cols[1] * x_c, context, data.n_pmt, data.n_ctx, extra, fixed_penalty)

        return predict


class Objective:
    """Objective values and least-squares residuals for one data set (see the module docstring)."""

    def __init__(self, kind: str, data: FitData, robust_scale: float = ROBUST_SCALE):
        if kind not in OBJECTIVES:
            raise UserError(f"unknown objective {kind!r}; choose one of {', '.join(OBJECTIVES)}")
        if kind == "binomial" and data.n_instances is None:
            raise UserError("the binomial objective needs n_instances for every cell")
        if not robust_scale > 0:
            raise UserError(f"robust scale must be positive, got {robust_scale}")
        self.kind = kind
        self.robust_scale = float(robust_scale)
        self.score = data.score
        weights = np.ones_like(data.score) if data.weights is None else data.weights
        if kind == "binomial":
            weights = weights * data.n_instances
        self.weights = weights / weights.sum()
        self.sqrt_weights = np.sqrt(self.weights)

    @property
    def smooth(self) -> bool:
        return self.kind != "mae"

    def residuals(self, p):
        """Signed residuals whose sum of squares equals the objective (smooth objectives only)."""
        r = self.score - p
        if self.kind == "mse":
            return self.sqrt_weights * r
        if self.kind == "robust":
            f = self.robust_scale
            rho = 2.0 * f * f * (np.sqrt(1.0 + (r / f) ** 2) - 1.0)
            return self.sqrt_weights * np.sign(r) * np.sqrt(rho)
        if self.kind == "binomial":
            y = self.score
            p = np.clip(p, PROBABILITY_FLOOR, 1.0 - PROBABILITY_FLOOR)
            with np.errstate(divide="ignore", invalid="ignore"):
                dev = 2.0 * (np.where(y > 0, y * np.log(y / p), 0.0)
                             + np.where(y < 1, (1.0 - y) * np.log((1.0 - y) / (1.0 - p)), 0.0))
            return self.sqrt_weights * np.sign(r) * np.sqrt(np.maximum(dev, 0.0))
        raise AssertionError(self.kind)

    def value(self, p):
        """Objective for predictions p of shape (n,) or (S, n); returns a scalar or (S,)."""
        if self.kind == "mae":
            return np.abs(self.score - p) @ self.weights
        g = self.residuals(p)
        return np.sum(g * g, axis=-1)


@dataclass
class LawFit:
    """A fitted law in memory: the winning parameters plus everything needed to judge the fit."""

    spec: LawSpec
    objective: str
    identifiable: dict
    loss: float
    working: WorkingForm
    seeds: tuple
    seed_runs: list = field(default_factory=list)
    agreement: dict = field(default_factory=dict)
    elapsed_s: float = 0.0
    robust_scale: float = ROBUST_SCALE

    @property
    def params(self) -> dict:
        return paper_from_identifiable(self.identifiable)

    def predict(self, compute, n_pmt, n_ctx):
        return self.spec.predict(self.identifiable, compute, n_pmt, n_ctx)

    def diagnostics(self) -> dict:
        """Convergence record for the fit JSON: agreement across seeds, bounds hit, every seed's run."""
        agreement = {k: self.agreement.get(k) for k in ("best_seed", "seeds_agree", "loss_agree", "params_agree",
                                                        "loss_spread", "param_spread", "at_bounds")}
        return {**agreement, "loss": self.loss,
                "reference": {"log10_C_ref": self.working.log10_c_ref, "log10_n_ref": self.working.log10_n_ref},
                "working_bounds": {name: list(b) for name, b in zip(self.working.names, self.working.bounds)},
                "de_settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in DE_SETTINGS.items()},
                "local_tolerance": LOCAL_TOLERANCE, "seed_runs": self.seed_runs}


def initial_guess(form: WorkingForm, data: FitData) -> np.ndarray:
    """Complementary-log-log regression start (module docstring, step 2), clipped inside the bounds."""
    spec = form.spec
    x_c = np.log(data.compute) - form.log10_c_ref * math.log(10)
    x_n = np.log(data.n_pmt) - form.log10_n_ref * math.log(10)
    usable = (data.score > 0.01) & (data.score < 0.99)
    if spec.uses_penalty:
        usable &= data.n_pmt <= 0.5 * data.n_ctx
    columns = [np.ones_like(x_c), x_c] + ([x_n] if spec.uses_context else [])
    design = np.column_stack(columns)[usable]
    intercept, slope_c, slope_n = 0.0, 0.5, 0.5
    if usable.sum() > design.shape[1]:
        target = np.log(-np.log1p(-data.score[usable]))
        coef, *_ = np.linalg.lstsq(design, target, rcond=None)
        intercept, slope_c = coef[0], coef[1]
        if spec.uses_context:
            slope_n = coef[2]
    z = [intercept, slope_c]
    if spec.uses_context:
        # Split the reference-point value evenly between the two factors: f_C = f_n = sqrt(P_ref).
        p_ref = float(np.clip(-np.expm1(-np.exp(intercept)), 1e-6, 1 - 1e-12))
        h = math.log(-math.log1p(-math.sqrt(p_ref)))
        z = [h, slope_c, h, slope_n]
    # extra parameters start near the paper form: a light tail (gamma = 100), a 1% penalty width, the listed
    # window as the effective one and a floor at half the lowest score (a chance floor cannot exceed the worst cell)
    starts = {"log10_gamma": 2.0, "log10_penalty_width": -2.0, "log10_effective_share": 0.0,
              "floor": 0.5 * float(np.min(data.score))}
    z += [starts[name] for name in spec.extra_names]
    return inside_bounds(z, form.bounds)


def inside_bounds(z, bounds, margin: float = 1e-6) -> np.ndarray:
    """``z`` moved ``margin`` of each parameter's range inside ``bounds``, as a differential-evolution start.

    A start on a bound is not enough: scipy rescales it to [0, 1] and can land a hair outside, which it refuses
    ("Some entries in x0 lay outside the specified bounds"), e.g. alpha = 0.01 in [0.01, 20] scales to -1.1e-16.
    """
    lo, hi = np.array(bounds).T
    gap = margin * (hi - lo)
    return np.clip(np.asarray(z, dtype=float), lo + gap, hi - gap)


def _local_refine(z0, objective: Objective, predict, bounds):
    """Local stage from z0; returns (z, loss, info dict)."""
    lo, hi = np.array(bounds).T
    z0 = np.clip(z0, lo, hi)
    if objective.smooth:
        result = least_squares(lambda z: objective.residuals(predict(z)), z0, bounds=(lo, hi), method="trf",
                               ftol=LOCAL_TOLERANCE, xtol=LOCAL_TOLERANCE, gtol=LOCAL_TOLERANCE, max_nfev=5000)
        z = result.x
        info = {"method": "least_squares-trf", "success": bool(result.status > 0), "message": result.message,
                "nfev": int(result.nfev), "optimality": float(result.optimality)}
    else:
        result = minimize(lambda z: float(objective.value(predict(z))), z0, method="Nelder-Mead",
                          bounds=list(zip(lo, hi)),
                          options={"xatol": 1e-10, "fatol": 1e-14, "maxfev": 20000, "adaptive": True})
        z = result.x
        info = {"method": "nelder-mead", "success": bool(result.success), "message": str(result.message),
                "nfev": int(result.nfev), "optimality": None}
    loss = float(objective.value(predict(z)))
    start_loss = float(objective.value(predict(z0)))
    if loss > start_loss:  # never let the polish make things worse
        z, loss = z0, start_loss
    return np.asarray(z, dtype=float), loss, info


def fit_law(data: FitData, spec: LawSpec | None = None, *, objective: str = "mse", seeds=DEFAULT_SEEDS,
            robust_scale: float = ROBUST_SCALE, maxiter: int | None = None,
            max_exponent: float = DEFAULT_MAX_EXPONENT) -> LawFit:
    """Fit one member of the law family to the cells in ``data`` (module docstring for the procedure)."""
    spec = spec or LawSpec()
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise UserError("at least one seed is needed")
    if len(data) < spec.n_free:
        raise UserError(f"{len(data)} data points but the {spec.model_form} law has {spec.n_free} free "
                        f"parameters; need at least {spec.n_free} points")
    started = time.perf_counter()
    form = WorkingForm.for_data(spec, data, max_exponent)
    obj = Objective(objective, data, robust_scale)
    predict = form.predictor(data)
    x0 = initial_guess(form, data)
    de_options = {k: v for k, v in DE_SETTINGS.items()}
    if maxiter is not None:
        de_options["maxiter"] = int(maxiter)

    def de_objective(x):
        return obj.value(predict(x))

    runs = []
    for seed in seeds:
        de = differential_evolution(de_objective, form.bounds, rng=seed, x0=x0, polish=False, vectorized=True,
                                    updating="deferred", **de_options)
        z, loss, local = _local_refine(de.x, obj, predict, form.bounds)
        runs.append({"seed": seed, "de_loss": float(de.fun), "de_success": bool(de.success),
                     "de_message": str(de.message), "de_nit": int(de.nit), "de_nfev": int(de.nfev),
                     "loss": loss, "local": local, "working": z.tolist(), "identifiable": form.to_identifiable(z)})
        if not de.success:
            log.warning("seed %d: differential evolution did not converge (%s)", seed, de.message)
        log.debug("seed %d: DE loss %.6g after %d generations, refined %.6g", seed, de.fun, de.nit, loss)
    best = min(runs, key=lambda r: r["loss"])
    agreement = _agreement(runs, best, form)
    global _FITS_MADE
    _FITS_MADE += 1
    for name in agreement["at_bounds"]:
        log.warning(BOUND_MESSAGE, name, spec.model_form, spec.law)
    if not agreement["seeds_agree"]:
        log.info("seeds reached different optima (loss spread %.3g); the objective is flat along some direction",
                 agreement["loss_spread"])
    elapsed = time.perf_counter() - started
    log.info("%s fit of %d cells: loss %.6g, %d seeds in %.2f s", spec.model_form, len(data), best["loss"],
             len(seeds), elapsed)
    return LawFit(spec=spec, objective=objective, identifiable=best["identifiable"], loss=best["loss"],
                  working=form, seeds=seeds, seed_runs=runs, agreement=agreement, elapsed_s=elapsed,
                  robust_scale=robust_scale)


def _agreement(runs, best, form: WorkingForm) -> dict:
    losses = np.array([r["loss"] for r in runs])
    idents = {name: np.array([r["identifiable"][name] for r in runs]) for name in best["identifiable"]}
    param_spread = {name: float(v.max() - v.min()) for name, v in idents.items()}
    loss_agree = bool(losses.max() - losses.min() <= AGREEMENT_LOSS_RTOL * max(abs(losses.min()), 1e-300) + 1e-15)
    params_agree = all(s <= AGREEMENT_PARAM_ATOL for s in param_spread.values())
    lo, hi = np.array(form.bounds).T
    z = np.array(best["working"])
    near = (z - lo <= 1e-6 * (hi - lo)) | (hi - z <= 1e-6 * (hi - lo))
    return {"best_seed": best["seed"], "loss_spread": float(losses.max() - losses.min()),
            "param_spread": param_spread, "loss_agree": loss_agree, "params_agree": params_agree,
            "seeds_agree": loss_agree and params_agree,
            "at_bounds": [name for name, flag in zip(form.names, near) if flag]}


# ----------------------------------------------------------------------------------------------- bootstrap


class InstanceResampler:
    """Redraws cell scores as if their instances were resampled with replacement (module docstring).

    ``part_cell[i]`` names the cell that part ``i`` (a dataset's cell) belongs to; a cell's score is the
    unweighted mean of its parts. Without parts, each cell is its own single part.
    """

    def __init__(self, n_cells: int, part_cell, part_score, part_n):
        order = np.argsort(np.asarray(part_cell), kind="stable")
        self.part_score = np.asarray(part_score, dtype=float)[order]
        self.part_n = np.asarray(part_n, dtype=float)[order]
        if np.any(self.part_n < 1) or np.any(self.part_n != np.round(self.part_n)):
            raise UserError("n_instances must be positive integers to resample instances")
        self.counts = np.bincount(np.asarray(part_cell)[order], minlength=n_cells)
        if np.any(self.counts == 0):
            raise UserError("every cell needs at least one part to resample instances")
        self.starts = np.concatenate([[0], np.cumsum(self.counts)[:-1]])

    def draw(self, rng, rows) -> np.ndarray:
        """New scores for the cells ``rows`` (repeats allowed: each copy gets its own instances)."""
        counts = self.counts[rows]
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        part_idx = np.repeat(self.starts[rows], counts) + offsets
        n = self.part_n[part_idx]
        draws = rng.binomial(n.astype(np.int64), np.clip(self.part_score[part_idx], 0.0, 1.0)) / n
        return np.bincount(np.repeat(np.arange(len(rows)), counts), weights=draws, minlength=len(rows)) / counts


@dataclass
class BootstrapResult:
    replicates: np.ndarray  # (R, k) identifiable parameters; failed replicates dropped
    names: tuple
    n_requested: int
    n_failed: int
    seed: int
    unit: str
    elapsed_s: float
    refit: str = "global"

    def interval(self, level: float = 0.95) -> dict:
        lo_q, hi_q = (1 - level) / 2, 1 - (1 - level) / 2
        out = {name: [float(np.quantile(self.replicates[:, i], lo_q)), float(np.quantile(self.replicates[:, i], hi_q))]
               for i, name in enumerate(self.names)}
        paper = [paper_from_identifiable(dict(zip(self.names, row))) for row in self.replicates]
        for key in paper[0]:
            values = np.array([p[key] for p in paper if p[key] is not None], dtype=float)
            if len(values) and key not in ("A", "B"):  # A = B = 1 on the canonical ridge point
                out[f"paper:{key}"] = [float(np.quantile(values, lo_q)), float(np.quantile(values, hi_q))]
        return out

    def identifiable_arrays(self) -> dict:
        return {name: self.replicates[:, i] for i, name in enumerate(self.names)}


def bootstrap_law(fit: LawFit, cells: pd.DataFrame, parts: pd.DataFrame | None = None, *,
                  n_replicates: int = DEFAULT_BOOTSTRAP_REPLICATES, seed: int = 0,
                  unit: str = DEFAULT_BOOTSTRAP_UNIT, refit: str = "global") -> BootstrapResult:
    """Percentile bootstrap of ``fit`` over the cells it was fitted on (module docstring).

    ``cells``: the fitted cells (columns model, compute, n_pmt, n_ctx, score, n_instances), in the order
    used for the fit. ``parts``: optional per-dataset rows (column ``cell`` = row position in ``cells``,
    plus score and n_instances) whose unweighted mean makes each cell's score.
    """
    if unit not in BOOTSTRAP_UNITS:
        raise UserError(f"unknown bootstrap unit {unit!r}; choose one of {', '.join(BOOTSTRAP_UNITS)}")
    if refit not in BOOTSTRAP_REFITS:
        raise UserError(f"unknown bootstrap refit {refit!r}; choose one of {', '.join(BOOTSTRAP_REFITS)}")
    if n_replicates < 1:
        raise UserError("the bootstrap needs at least one replicate")
    resample_instances = "instances" in unit
    if resample_instances and "n_instances" not in cells:
        raise UserError("resampling instances needs n_instances for every cell")
    started = time.perf_counter()
    rng = np.random.default_rng(seed)
    n_cells = len(cells)
    compute, n_pmt, n_ctx = (cells[c].to_numpy(float) for c in ("compute", "n_pmt", "n_ctx"))
    score = cells["score"].to_numpy(float)
    n_inst = cells["n_instances"].to_numpy(float) if "n_instances" in cells else None
    model_codes, models = pd.factorize(cells["model"])
    model_rows = [np.flatnonzero(model_codes == m) for m in range(len(models))]

    resampler = None
    if resample_instances:
        if parts is None:
            resampler = InstanceResampler(n_cells, np.arange(n_cells), score, n_inst)
        else:
            resampler = InstanceResampler(n_cells, parts["cell"].to_numpy(int), parts["score"].to_numpy(float),
                                          parts["n_instances"].to_numpy(float))

    # clipped: a point estimate on a bound comes back from the identifiable round trip up to 1e-16 outside it;
    # the DE start goes a little further in, since differential evolution may refuse one exactly on a bound
    low, high = np.array(fit.working.bounds).T
    z_hat = np.clip(fit.working.from_identifiable(fit.identifiable), low, high)
    de_start = inside_bounds(z_hat, fit.working.bounds)
    replicates, failed = [], 0
    for r in range(n_replicates):
        if "models" in unit:
            drawn = rng.integers(0, len(models), size=len(models))
            rows = np.concatenate([model_rows[m] for m in drawn])
        else:
            rows = np.arange(n_cells)
        y = resampler.draw(rng, rows) if resampler is not None else score[rows]
        data = FitData(compute[rows], n_pmt[rows], n_ctx[rows], y, None if n_inst is None else n_inst[rows])
        try:
            obj = Objective(fit.objective, data, fit.robust_scale)
            predict = fit.working.predictor(data)
            start = z_hat
            if refit == "global":
                # One DE run per replicate, its population seeded with the point estimate, so a replicate
                # whose optimum moved to another basin can still reach it.
                start = differential_evolution(lambda x: obj.value(predict(x)), fit.working.bounds,
                                               rng=int(rng.integers(2**31)), x0=de_start, polish=False,
                                               vectorized=True, updating="deferred", **DE_SETTINGS).x
            z, _, _ = _local_refine(start, obj, predict, fit.working.bounds)
            replicates.append([fit.working.to_identifiable(z)[name] for name in fit.spec.identifiable_names])
        except (ValueError, FloatingPointError, np.linalg.LinAlgError) as exc:
            failed += 1
            log.debug("bootstrap replicate %d failed: %s", r, exc)
        if (r + 1) % 200 == 0:
            log.info("bootstrap: %d/%d replicates (%.0f s)", r + 1, n_replicates, time.perf_counter() - started)
    if not replicates:
        raise UserError("every bootstrap replicate failed to fit")
    log.info("bootstrap: %d replicates (%d failed) in %.1f s", n_replicates, failed, time.perf_counter() - started)
    return BootstrapResult(np.array(replicates), fit.spec.identifiable_names, n_replicates, failed, seed, unit,
                           time.perf_counter() - started, refit)


def prediction_interval(spec: LawSpec, replicate_params: dict, compute, n_pmt, n_ctx, level: float = 0.95):
    """Percentile interval of the law's prediction over bootstrap replicates (arrays of shape (R,))."""
    if not 0 < level < 1:
        raise UserError(f"level must lie strictly between 0 and 1, got {level}")
    shape = np.broadcast_shapes(np.shape(compute), np.shape(n_pmt), np.shape(n_ctx))
    expand = (slice(None),) + (None,) * len(shape)
    ident = {name: np.asarray(v, dtype=float)[expand] for name, v in replicate_params.items()}
    preds = spec.predict(ident, np.asarray(compute, float), np.asarray(n_pmt, float), np.asarray(n_ctx, float))
    preds = np.broadcast_to(preds, (len(next(iter(replicate_params.values()))),) + shape)
    return np.quantile(preds, (1 - level) / 2, axis=0), np.quantile(preds, 1 - (1 - level) / 2, axis=0)


# ------------------------------------------------------------------------------------------- saved results


class FitResult:
    """A fit saved as JSON (contract in docs/architecture.md), loaded with :func:`load_fit`."""

    def __init__(self, record: dict, path: str | None = None):
        missing = [k for k in ("identifiable_params", "params", "model_form", "penalty", "metrics") if k not in record]
        if missing:
            raise UserError(f"{path or 'fit record'} is not a ctxscale fit (missing {', '.join(missing)})")
        self.record = record
        self.path = path
        penalty = record["penalty"] or {}
        law = record.get("law") or {}  # fits written before the law registry are the paper law
        self.spec = LawSpec(record["model_form"], penalty.get("kind") or "paper",
                            penalty.get("width") if penalty.get("kind") == "relative" else None,
                            law.get("name", "paper"), law.get("floor"))

    experiment = property(lambda self: self.record.get("experiment"))
    task = property(lambda self: self.record.get("task"))
    model_form = property(lambda self: self.record["model_form"])
    params = property(lambda self: self.record["params"])
    identifiable_params = property(lambda self: self.record["identifiable_params"])
    metrics = property(lambda self: self.record["metrics"])
    bootstrap = property(lambda self: self.record.get("bootstrap"))

    @property
    def predictions(self) -> pd.DataFrame:
        return pd.DataFrame(self.record.get("predictions", []))

    def predict(self, compute, n_pmt, n_ctx):
        """P-hat for arrays that broadcast against each other."""
        return self.spec.predict(self.identifiable_params, compute, n_pmt, n_ctx)

    def predict_interval(self, compute, n_pmt, n_ctx, level: float = 0.95):
        """(lo, hi) percentile interval over the bootstrap replicates; needs a fit with ``--bootstrap``."""
        boot = self.bootstrap
        if not boot or not boot.get("replicates"):
            raise UserError(f"{self.path or 'this fit'} has no bootstrap; refit with --bootstrap N")
        reps = np.asarray(boot["replicates"], dtype=float)
        params = {name: reps[:, i] for i, name in enumerate(boot["names"])}
        return prediction_interval(self.spec, params, compute, n_pmt, n_ctx, level)


def load_fit(path) -> FitResult:
    return FitResult(read_json_object(path, "fit file"), str(path))


def write_json_atomic(path, record: dict) -> None:
    """Write JSON so that readers (and Snakemake) never see a half-written file (NaN refused: not JSON)."""
    atomic_write(path, json.dumps(record, indent=1, allow_nan=False) + "\n")


def library_versions() -> dict:
    """What a fit record names of its environment."""
    return package_versions(("ctxscale", "python", "numpy", "scipy", "pandas"))


# ------------------------------------------------------------------------------------------------ CLI


def _positive_floats(name, values):
    arr = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise UserError(f"--{name} must be positive finite numbers, got {' '.join(map(str, values))}")
    return arr


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``ctxscale predict FIT.json --compute C --n-pmt N --n-ctx K``: print P-hat (and its interval)."""
    parser = step_parser("ctxscale predict", "Predict task performance from a saved fit.")
    parser.add_argument("fit", help="fit JSON written by `ctxscale fit`")
    parser.add_argument("--compute", type=float, nargs="+", required=True, help="training compute in FLOPs")
    parser.add_argument("--n-pmt", type=float, nargs="+", required=True, help="prompt length in tokens")
    parser.add_argument("--n-ctx", type=float, nargs="+", required=True, help="context limit in tokens")
    parser.add_argument("--level", type=float, help="interval level, for a fit made with --bootstrap (default 0.95)")
    args = parse_step_args(parser, argv)
    fit = load_fit(args.fit)
    has_bootstrap = bool(fit.bootstrap and fit.bootstrap.get("replicates"))
    if args.level is not None and not has_bootstrap:
        raise UserError(f"--level needs a fit with a bootstrap; {args.fit} has none (refit with --bootstrap N)")
    level = 0.95 if args.level is None else args.level
    if not 0 < level < 1:
        raise UserError(f"--level must be between 0 and 1, got {level}")
    compute = _positive_floats("compute", args.compute)
    n_pmt = _positive_floats("n-pmt", args.n_pmt)
    n_ctx = _positive_floats("n-ctx", args.n_ctx)
    try:
        compute, n_pmt, n_ctx = np.broadcast_arrays(compute, n_pmt, n_ctx)
    except ValueError:
        raise UserError("--compute, --n-pmt and --n-ctx need the same number of values (or one each)") from None
    try:
        predicted = np.atleast_1d(fit.predict(compute, n_pmt, n_ctx))
        header = ["compute", "n_pmt", "n_ctx", "predicted"]
        columns = [compute, n_pmt, n_ctx, predicted]
        if has_bootstrap:
            lo, hi = fit.predict_interval(compute, n_pmt, n_ctx, level)
    except (KeyError, TypeError, IndexError) as error:
        raise UserError(f"{args.fit} is not a complete ctxscale fit ({type(error).__name__}: {error})") from None
    if has_bootstrap:
        header += [f"lo{level:g}", f"hi{level:g}"]
        columns += [np.atleast_1d(lo), np.atleast_1d(hi)]
    print("\t".join(header))
    for row in zip(*columns):
        print("\t".join([f"{row[0]:.6g}", f"{row[1]:.6g}", f"{row[2]:.6g}"] + [f"{v:.6f}" for v in row[3:]]))
    return 0



if __name__ == "__main__":
    sys.exit(main())
