"""The context-aware scaling law of Montgomery et al. (2025), its penalty variants and baselines.

Paper form (spec §1.1)::

    P(C, n_pmt, n_ctx) = [1 - exp(-A (C/C_c)^alpha)] * [1 - exp(-B (n_pmt/n_pmt_c)^beta)] * sigma(n_pmt - n_ctx)

Penalty ``sigma`` (spec §1.2):

- ``paper`` (default): parameter-free ``1 / (1 + exp(n_pmt - n_ctx))`` in raw tokens, i.e. 0.5 at the limit,
  > 0.9999 ten tokens below it and < 1e-4 ten tokens above it (computed as ``expit`` for safety);
- ``relative``: the same logistic with a fixed width relative to the limit,
  ``1 / (1 + exp((n_pmt - n_ctx) / (w * n_ctx)))``, default ``w = 0.01`` (1% of n_ctx);
- ``fitted``: the relative form with ``w`` fitted as a 7th parameter (``log10_penalty_width`` in [-4, 0]).

Identifiability (spec §1.3): ``A (C/C_c)^alpha = exp(alpha * (ln C - ln C50))`` with
``ln C50 = ln C_c - ln(A) / alpha``, so only ``(C50, alpha)`` and ``(n50, beta)`` are determined by data.
The identifiable form used everywhere in this library is::

    f_C = 1 - exp(-(C / C50)^alpha)          f_n = 1 - exp(-(n_pmt / n50)^beta)

with parameters ``log10_C50, alpha, log10_n50, beta`` (plus ``log10_penalty_width`` for the fitted penalty).
``C50`` is the compute at which the compute factor reaches 1 - 1/e (about 0.632), likewise ``n50``.
Mapping back to the paper form is a choice of one point on the ridge; we report the canonical one
``A = 1, C_c = C50, B = 1, n_pmt_c = n50`` (:func:`paper_from_identifiable`). Any paper-form parameters map
to the identifiable form exactly (:func:`identifiable_from_paper`), so the two round-trip.

Law variants (:data:`LAWS`, ``ctxscale fit --law NAME``, config ``fit.law``; default ``paper``):

- ``paper``: the form above, with the penalty chosen by ``--penalty``;
- ``heavy-tail``: the context factor saturates as ``1 - (1 + x/gamma)^(-gamma)`` with
  ``x = (n_pmt/n50)^beta`` instead of ``1 - exp(-x)`` (the paper form is its ``gamma -> inf`` limit; at
  ``gamma = 1`` it is the log-logistic ``x / (1 + x)``). ``log10_gamma`` is fitted in [-1, 3]: long prompts
  approach the ceiling more slowly than the paper form allows;
- ``chance-floor``: ``P = floor + (1 - floor) * law`` for multiple-choice tasks, whose score cannot fall
  below guessing; ``floor`` fitted in [0, 0.6] or given (``--floor``, e.g. 0.25 for four choices);
- ``relative-width``: the penalty ``sigma((n_ctx - n_pmt) / (w n_ctx))`` with ``w`` fitted: this is the
  ``fitted`` penalty (above), selected as a law so that it can be compared with the others;
- ``floor-relative-width``: both of the last two (floor and penalty width fitted: six parameters);
- ``effective-context``: the relative-width penalty around an effective context ``kappa n_ctx`` instead of the
  listed one, ``sigma((kappa n_ctx - n_pmt) / (w kappa n_ctx))``, ``log10 kappa`` fitted in [-1.5, 0] (six
  parameters; ``kappa = 1`` is ``relative-width``): models whose scores fall well before their listed window.

:data:`LAW_ALIASES` maps ``recommended`` to the variant the selection protocol of ``docs/laws.md``
(:mod:`ctxscale.selection`) recommends: **``paper``**, because no variant was better than the paper law on the
choice sets (RULER, HELMET, Pythia) and then confirmed on sets it was not chosen on (MIR-Bench);
:func:`resolve_law` resolves it. ``ctxscale fit --law auto`` chooses per task on the user's own cells instead.
Parameters each variant adds are named in
:data:`EXTRA_PARAMETERS` with their bounds.

Model forms: ``context-aware`` (the law), ``no-penalty`` (the paper's ablation: compute and context factors,
no sigma) and ``context-agnostic`` (compute factor only: the "existing approaches" baseline of Fig. 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.special import expit

from ctxscale.errors import UserError

MODEL_FORMS = ("context-aware", "no-penalty", "context-agnostic")
PENALTIES = ("paper", "relative", "fitted")
PAPER_PARAM_NAMES = ("A", "C_c", "alpha", "B", "n_pmt_c", "beta")
DEFAULT_RELATIVE_WIDTH = 0.01
# Bounds of the fitted penalty width (fraction of n_ctx): 1e-4 is about one token at 4k (the paper's
# step), 1 is a penalty so soft that it already acts well inside the window.
FITTED_WIDTH_LOG10_BOUNDS = (-4.0, 0.0)


@dataclass(frozen=True)
class LawVariant:
    """One member of the law registry: what it changes and the parameters it adds (module docstring)."""

    name: str
    description: str
    heavy_tail: bool = False
    floor: bool = False
    penalty: str | None = None  # a penalty the variant fixes; None: as --penalty selects
    effective: bool = False  # the penalty acts around an effective context kappa n_ctx, kappa fitted


LAWS = {law.name: law for law in (
    LawVariant("paper", "the paper's law: saturating power laws in compute and prompt length times sigma"),
    LawVariant("heavy-tail", "context factor 1 - (1 + x/gamma)^-gamma, x = (n_pmt/n50)^beta, gamma fitted",
               heavy_tail=True),
    LawVariant("chance-floor", "P = floor + (1 - floor) * law, floor fitted (or given with --floor)", floor=True),
    LawVariant("relative-width", "penalty sigma((n_ctx - n_pmt) / (w n_ctx)) with the width w fitted",
               penalty="fitted"),
    LawVariant("floor-relative-width", "chance-floor and relative-width together (6 parameters)", floor=True,
               penalty="fitted"),
    LawVariant("effective-context", "penalty sigma((kappa n_ctx - n_pmt) / (w kappa n_ctx)) around an effective "
               "context below the listed one, kappa and w fitted (6 parameters)", penalty="fitted", effective=True),
)}
# The variant ``--law recommended`` selects; the evidence is in docs/laws.md.
LAW_ALIASES = {"recommended": "paper"}
LAW_CHOICES = tuple(LAWS) + tuple(LAW_ALIASES)
# Parameters a variant adds to the identifiable form: name -> (lower, upper) bound, fitted as is.
EXTRA_PARAMETERS = {"log10_gamma": (-1.0, 3.0), "log10_penalty_width": FITTED_WIDTH_LOG10_BOUNDS,
                    "log10_effective_share": (-1.5, 0.0), "floor": (0.0, 0.6)}


def resolve_law(name: str) -> str:
    """The registry name of a law or an alias (``recommended``)."""
    resolved = LAW_ALIASES.get(name, name)
    if resolved not in LAWS:
        raise UserError(f"unknown law {name!r}; choose one of {', '.join(LAW_CHOICES)}")
    return resolved


def saturating_factor(log_hazard, log10_gamma=None):
    """``1 - exp(-exp(h))`` without cancellation (``-expm1``), or with ``log10_gamma`` the heavy-tailed
    ``1 - (1 + exp(h)/gamma)^(-gamma)``, which tends to the former as gamma grows."""
    if log10_gamma is None:
        return -np.expm1(-np.exp(log_hazard))
    gamma = 10.0 ** np.asarray(log10_gamma, dtype=float)
    with np.errstate(over="ignore"):
        return -np.expm1(-gamma * np.log1p(np.exp(log_hazard) / gamma))


def compute_factor(compute, A, C_c, alpha):
    """Paper form of the compute factor ``1 - exp(-A (C/C_c)^alpha)``."""
    compute = np.asarray(compute, dtype=float)
    return saturating_factor(np.log(A) + alpha * (np.log(compute) - np.log(C_c)))


def context_factor(n_pmt, B, n_pmt_c, beta):
    """Paper form of the context factor ``1 - exp(-B (n_pmt/n_pmt_c)^beta)``."""
    n_pmt = np.asarray(n_pmt, dtype=float)
    return saturating_factor(np.log(B) + beta * (np.log(n_pmt) - np.log(n_pmt_c)))


def context_penalty(n_pmt, n_ctx, kind: str = "paper", width: float | None = None):
    """The decreasing logistic penalty sigma(n_pmt - n_ctx); see the module docstring for the variants.

    ``width`` is the fraction of ``n_ctx`` used as the logistic scale for ``relative`` and ``fitted``
    (default 0.01 for ``relative``); it is ignored for ``paper`` (scale of one token).
    """
    n_pmt = np.asarray(n_pmt, dtype=float)
    n_ctx = np.asarray(n_ctx, dtype=float)
    if kind == "paper":
        return expit(-(n_pmt - n_ctx))
    if kind in ("relative", "fitted"):
        if width is None:
            if kind == "fitted":
                raise UserError("the fitted penalty needs its width (penalty_width)")
            width = DEFAULT_RELATIVE_WIDTH
        if not width > 0:
            raise UserError(f"penalty width must be positive, got {width}")
        return expit(-(n_pmt - n_ctx) / (width * n_ctx))
    raise UserError(f"unknown penalty {kind!r}; choose one of {', '.join(PENALTIES)}")


def paper_law(compute, n_pmt, n_ctx, A, C_c, alpha, B, n_pmt_c, beta, penalty: str = "paper", penalty_width=None):
    """The law exactly as written in the paper (spec §1.1), numpy-broadcasting over the inputs."""
    return (
        compute_factor(compute, A, C_c, alpha)
        * context_factor(n_pmt, B, n_pmt_c, beta)
        * context_penalty(n_pmt, n_ctx, penalty, penalty_width)
    )


@dataclass(frozen=True)
class LawSpec:
    """Which member of the law family: model form, penalty kind (and fixed width), law variant (and a given floor).

    ``law`` may be an alias (``recommended``); it is stored resolved. A variant that fixes the penalty
    (``relative-width``) sets it; asking for another penalty with it is an error.
    """

    model_form: str = "context-aware"
    penalty: str = "paper"
    penalty_width: float | None = None
    law: str = "paper"
    floor: float | None = None

    def __post_init__(self):
        if self.model_form not in MODEL_FORMS:
            raise UserError(f"unknown model form {self.model_form!r}; choose one of {', '.join(MODEL_FORMS)}")
        if self.penalty not in PENALTIES:
            raise UserError(f"unknown penalty {self.penalty!r}; choose one of {', '.join(PENALTIES)}")
        object.__setattr__(self, "law", resolve_law(self.law))
        fixed = self.variant.penalty
        if fixed is not None and self.penalty != fixed:
            if self.penalty != "paper":
                raise UserError(f"law {self.law} sets the {fixed} penalty; drop --penalty {self.penalty}")
            object.__setattr__(self, "penalty", fixed)
        if self.penalty_width is not None and not (self.penalty_width > 0 and math.isfinite(self.penalty_width)):
            raise UserError(f"penalty width must be a positive number, got {self.penalty_width}")
        if self.penalty == "relative" and self.penalty_width is None:
            object.__setattr__(self, "penalty_width", DEFAULT_RELATIVE_WIDTH)
        if self.penalty != "relative" and self.penalty_width is not None:
            raise UserError("--penalty-width applies only to the relative penalty")
        if self.floor is not None:
            if not self.variant.floor:
                raise UserError(f"--floor applies only to the chance-floor law, not {self.law}")
            if not 0 <= self.floor < 1:
                raise UserError(f"--floor must lie in [0, 1), got {self.floor}")

    @property
    def variant(self) -> LawVariant:
        return LAWS[self.law]

    @property
    def uses_context(self) -> bool:
        return self.model_form != "context-agnostic"

    @property
    def uses_penalty(self) -> bool:
        return self.model_form == "context-aware"

    @property
    def fits_penalty_width(self) -> bool:
        return self.uses_penalty and self.penalty == "fitted"

    @property
    def fits_gamma(self) -> bool:
        return self.uses_context and self.variant.heavy_tail

    @property
    def fits_effective_share(self) -> bool:
        return self.uses_penalty and self.variant.effective

    @property
    def fits_floor(self) -> bool:
        return self.variant.floor and self.floor is None

    @property
    def extra_names(self) -> tuple[str, ...]:
        """Parameters beyond the four of the identifiable core, in the order the optimiser sees them."""
        flags = (("log10_gamma", self.fits_gamma), ("log10_penalty_width", self.fits_penalty_width),
                 ("log10_effective_share", self.fits_effective_share), ("floor", self.fits_floor))
        return tuple(name for name, wanted in flags if wanted)

    @property
    def identifiable_names(self) -> tuple[str, ...]:
        names = ("log10_C50", "alpha")
        if self.uses_context:
            names += ("log10_n50", "beta")
        return names + self.extra_names

    @property
    def n_free(self) -> int:
        return len(self.identifiable_names)

    def as_dict(self) -> dict:
        return {"model_form": self.model_form, "penalty": self.penalty if self.uses_penalty else None,
                "penalty_width": self.penalty_width if self.uses_penalty else None, "law": self.law,
                "floor": self.floor}

    def combine(self, compute_hazard, context_hazard, n_pmt, n_ctx, extra: dict, penalty=None):
        """P from the log-hazards of the two factors (natural log) and the extra parameters (module docstring).

        Shared by :meth:`predict` and the optimiser's working form (:class:`ctxscale.fitting.WorkingForm`),
        which passes a fixed (not fitted) ``penalty`` precomputed for its cells.
        """
        p = saturating_factor(compute_hazard)
        if self.uses_context:
            p = p * saturating_factor(context_hazard, extra.get("log10_gamma") if self.fits_gamma else None)
        if self.uses_penalty:
            if self.fits_penalty_width:
                limit = np.asarray(n_ctx, float)
                if self.fits_effective_share:
                    limit = limit * 10.0 ** extra["log10_effective_share"]
                overflow = (np.asarray(n_pmt, float) - limit) / limit
                p = p * expit(-overflow / 10.0 ** extra["log10_penalty_width"])
            else:
                p = p * (context_penalty(n_pmt, n_ctx, self.penalty, self.penalty_width) if penalty is None
                         else penalty)
        if self.variant.floor:
            floor = extra["floor"] if self.fits_floor else self.floor
            p = floor + (1.0 - floor) * p
        return p

    def predict(self, ident: dict, compute, n_pmt, n_ctx):
        """P from identifiable parameters (a dict of floats or of arrays, broadcasting with the inputs)."""
        log10, ln10 = np.log10, math.log(10)
        compute_hazard = ident["alpha"] * (log10(np.asarray(compute, float)) - ident["log10_C50"]) * ln10
        context_hazard = None
        if self.uses_context:
            context_hazard = ident["beta"] * (log10(np.asarray(n_pmt, float)) - ident["log10_n50"]) * ln10
        p = self.combine(compute_hazard, context_hazard, n_pmt, n_ctx, ident)
        # The context-agnostic form ignores n_pmt and n_ctx, but its output still broadcasts over them.
        shape = np.broadcast_shapes(np.shape(p), np.shape(n_pmt), np.shape(n_ctx))
        return p if np.shape(p) == shape else np.broadcast_to(p, shape).copy()


def identifiable_from_paper(params: dict) -> dict:
    """Map paper-form parameters (``A, C_c, alpha[, B, n_pmt_c, beta][, penalty_width]``) to the identifiable form."""
    _check_positive(params, ("A", "C_c", "alpha"))
    ident = {"log10_C50": math.log10(params["C_c"]) - math.log10(params["A"]) / params["alpha"],
             "alpha": float(params["alpha"])}
    if params.get("B") is not None:
        _check_positive(params, ("B", "n_pmt_c", "beta"))
        ident["log10_n50"] = math.log10(params["n_pmt_c"]) - math.log10(params["B"]) / params["beta"]
        ident["beta"] = float(params["beta"])
    if params.get("penalty_width") is not None:
        _check_positive(params, ("penalty_width",))
        ident["log10_penalty_width"] = math.log10(params["penalty_width"])
    if params.get("effective_share") is not None:
        _check_positive(params, ("effective_share",))
        ident["log10_effective_share"] = math.log10(params["effective_share"])
    if params.get("gamma") is not None:
        _check_positive(params, ("gamma",))
        ident["log10_gamma"] = math.log10(params["gamma"])
    if params.get("floor") is not None:
        ident["floor"] = float(params["floor"])
    return ident


def _pow10(exponent: float) -> float:
    """10**exponent, inf instead of OverflowError: a degenerate fit (an exponent at its lower bound) can put a
    scale far outside the data; the fit is still reported (its convergence record flags the bound)."""
    return 10.0 ** exponent if exponent < 308 else math.inf


def paper_from_identifiable(ident: dict) -> dict:
    """The canonical paper-form point on the identifiability ridge: ``A = B = 1``, ``C_c = C50``, ``n_pmt_c = n50``.

    Keys absent from the model form (context factor of the context-agnostic baseline) are ``None``.
    """
    params = {"A": 1.0, "C_c": _pow10(ident["log10_C50"]), "alpha": float(ident["alpha"]),
              "B": None, "n_pmt_c": None, "beta": None}
    if "log10_n50" in ident:
        params.update(B=1.0, n_pmt_c=_pow10(ident["log10_n50"]), beta=float(ident["beta"]))
    if "log10_penalty_width" in ident:
        params["penalty_width"] = _pow10(ident["log10_penalty_width"])
    if "log10_effective_share" in ident:
        params["effective_share"] = _pow10(ident["log10_effective_share"])
    if "log10_gamma" in ident:
        params["gamma"] = _pow10(ident["log10_gamma"])
    if "floor" in ident:
        params["floor"] = float(ident["floor"])
    return params


def _check_positive(params: dict, names) -> None:
    for name in names:
        value = params.get(name)
        if value is None or not (value > 0 and math.isfinite(value)):
            raise UserError(f"parameter {name} must be a positive finite number, got {value!r}")


PAPER_SHOTS = (0, 1, 3, 7, 15, 31, 63, 127, 255, 511)
PAPER_CONTEXT_LIMITS = (4096, 8192, 16384, 32768, 65536, 131072)


def simulate_observations(ident: dict, models: dict, *, spec: LawSpec | None = None, shots=PAPER_SHOTS,
                          prompt_tokens=(60.0, 230.0), n_instances: int = 250, seed: int = 0,
                          task: str = "simulated", dataset: str = "simulated"):
    """Simulated observations drawn from the law, for tests, benchmarks and identifiability studies.

    ``models``: name -> (compute, n_ctx). Each cell's prompt has ``prompt_tokens[0] + prompt_tokens[1] *
    n_shots`` tokens (defaults: a 60-token query and 230-token demonstrations, so 511 shots reach about
    118k tokens as in the paper); its score is ``Binomial(n_instances, P) / n_instances``. Returns an
    observations table (:data:`ctxscale.observations.OBSERVATION_COLUMNS`) plus the noiseless ``truth``.
    """
    import pandas as pd

    spec = spec or LawSpec()
    rng = np.random.default_rng(seed)
    rows = []
    for model, (compute, n_ctx) in models.items():
        for k in shots:
            n_pmt = prompt_tokens[0] + prompt_tokens[1] * k
            truth = float(spec.predict(ident, compute, n_pmt, n_ctx))
            rows.append({"model": model, "task": task, "dataset": dataset, "n_shots": int(k), "n_pmt": n_pmt,
                         "n_ctx": n_ctx, "compute": compute, "score": rng.binomial(n_instances, truth) / n_instances,
                         "n_instances": n_instances, "truth": truth})
    return pd.DataFrame(rows)
