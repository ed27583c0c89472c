"""Planning queries: invert a fitted law (``ctxscale solve``), with the fit's bootstrap interval.

Three questions, each answered for the point estimate and for every bootstrap replicate of the fit (``ctxscale fit
--bootstrap N``), whose percentiles give the interval:

- ``compute``: the training compute ``C`` at which the law reaches a target score at a given prompt length and
  window. Every law variant is ``P = floor + (1 - floor) f_C(C) G`` with ``f_C = 1 - exp(-(C/C50)^alpha)`` and
  ``G`` the context factor times the penalty (``floor = 0`` without the chance-floor variants), so
  ``C = C50 (-ln(1 - f))^(1/alpha)`` with ``f = (target - floor) / ((1 - floor) G)``. Out of reach when
  ``f >= 1``: the target lies at or above the law's ceiling at that prompt length and window, whatever the compute.
- ``prompt``: the shortest prompt inside a window (``n_pmt <= n_ctx``) whose score reaches ``share`` of the best
  score inside that window, at a given compute; with ``--tokens-per-shot`` (and ``--query-tokens``) also the
  shot count. Shares are taken above the floor: ``P - floor >= share (P_best - floor)``. The best score is the
  maximum over a log grid of 4001 prompt lengths from 1 token to ``n_ctx``, refined by golden-section search
  between the grid neighbours of the best point; the first grid point that reaches the share is refined by
  bisection.
- ``window``: the smallest window ``n_ctx`` at which a prompt of ``n_pmt`` tokens reaches ``share`` of the score
  it would have with an unlimited window (above the floor), or an absolute ``target`` score. Every penalty
  increases with ``n_ctx``, so the answer is found by bisection on ``log n_ctx``; out of reach when even an
  unlimited window falls short of the target.

For each answer the output gives the estimate, the percentile interval over replicates (an end is ``inf`` when
that share of replicates cannot reach the target at all), the share of replicates that can reach it, and the
share whose own prediction meets the requirement at the estimate.
"""

from __future__ import annotations

import math
import sys

import numpy as np

from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_step_args, step_parser
from ctxscale.law import LawSpec

QUESTIONS = ("compute", "prompt", "window")
HUGE = 1e300  # stands in for an unlimited compute or window
GRID_POINTS = 4001
BISECTIONS = 80
MAX_WINDOW = 1e12


def _floor(spec: LawSpec, ident: dict):
    if not spec.variant.floor:
        return 0.0
    return np.asarray(ident["floor"], float) if spec.fits_floor else float(spec.floor)


def _params(ident: dict) -> dict:
    return {name: np.asarray(value, float) for name, value in ident.items()}


def required_compute(spec: LawSpec, ident: dict, target: float, n_pmt: float, n_ctx: float) -> np.ndarray:
    """Training compute reaching ``target`` (module docstring); ``inf`` where out of reach, 0 where the floor
    already reaches it. ``ident`` values may be arrays (replicates): the result has their shape."""
    ident = _params(ident)
    floor = _floor(spec, ident)
    with np.errstate(over="ignore"):
        ceiling = spec.predict(ident, HUGE, n_pmt, n_ctx)  # f_C = 1
    g = (ceiling - floor) / (1.0 - floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        f = (target - floor) / ((1.0 - floor) * g)
        f = np.where(np.isnan(f), np.inf, f)  # a zero ceiling: nothing is reachable
        compute = 10.0 ** ident["log10_C50"] * (-np.log1p(-np.minimum(f, 1.0))) ** (1.0 / ident["alpha"])
    compute = np.where(f >= 1.0, np.inf, compute)
    return np.where(f <= 0.0, 0.0, compute)


def _bisect(predicate, lo, hi, n: int = BISECTIONS):
    """Smallest x in (lo, hi] (log scale) with ``predicate(x)`` true, given false at lo and true at hi (arrays)."""
    lo, hi = np.log(lo), np.log(hi)
    for _ in range(n):
        mid = 0.5 * (lo + hi)
        ok = predicate(np.exp(mid))
        hi, lo = np.where(ok, mid, hi), np.where(ok, lo, mid)
    return np.exp(hi)


def _golden_max(f, lo, hi, n: int = 80):
    """Maximum of a unimodal ``f`` on [lo, hi] (log scale) by golden-section search, arrays elementwise."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = np.log(lo), np.log(hi)
    for _ in range(n):
        c, d = b - ratio * (b - a), a + ratio * (b - a)
        left = f(np.exp(c)) >= f(np.exp(d))
        a, b = np.where(left, a, c), np.where(left, d, b)
    return f(np.exp(0.5 * (a + b)))


def shortest_prompt(spec: LawSpec, ident: dict, compute: float, n_ctx: float, share: float):
    """(n_pmt, best score) for the ``prompt`` question (module docstring); arrays over replicates."""
    ident = _params(ident)
    shape = np.shape(ident["alpha"])
    expand = (...,) + (None,)
    ident_g = {k: v[expand] for k, v in ident.items()}
    floor = _floor(spec, ident)
    grid = np.geomspace(1.0, n_ctx, GRID_POINTS)
    p = spec.predict(ident_g, compute, grid, n_ctx)
    p = np.broadcast_to(p, shape + (GRID_POINTS,))
    peak = np.argmax(p, axis=-1)
    best = _golden_max(lambda n: spec.predict(ident, compute, n, n_ctx), grid[np.maximum(peak - 1, 0)],
                       grid[np.minimum(peak + 1, GRID_POINTS - 1)])
    best = np.maximum(best, p.max(axis=-1))
    need = floor + share * (best - floor)
    reached = p >= (need[expand] if np.ndim(need) else need) - 1e-15
    first = np.argmax(reached, axis=-1)
    hi = grid[first]
    lo = grid[np.maximum(first - 1, 0)]

    def meets(n):
        return spec.predict(ident, compute, n, n_ctx) >= need - 1e-15

    n_pmt = np.where(first == 0, hi, _bisect(meets, np.where(first == 0, hi * 0.5, lo), hi))
    return n_pmt, best


def required_window(spec: LawSpec, ident: dict, compute: float, n_pmt: float, share: float | None = None,
                    target: float | None = None):
    """(n_ctx, needed score, unlimited-window score) for the ``window`` question; ``inf`` where out of reach."""
    if (share is None) == (target is None):
        raise UserError("give exactly one of --share and --target")
    ident = _params(ident)
    floor = _floor(spec, ident)
    unlimited = spec.predict(ident, compute, n_pmt, HUGE)
    need = floor + share * (unlimited - floor) if share is not None else np.full_like(unlimited, target)

    def meets(k):
        return spec.predict(ident, compute, n_pmt, k) >= need - 1e-12

    top = np.full_like(unlimited, MAX_WINDOW)
    reachable = meets(top)
    low = np.full_like(unlimited, 1.0)
    already = meets(low)
    window = _bisect(meets, low, top)
    window = np.where(already, 1.0, window)
    return np.where(reachable, window, np.inf), need, unlimited


# ------------------------------------------------------------------------------------------------ CLI


def _summary(estimate: float, replicates, level: float):
    if replicates is None:
        return None
    values = np.asarray(replicates, float)
    finite = np.isfinite(values)
    ordered = np.sort(values)  # inf sorts last: an upper end beyond reach stays inf
    lo = float(np.quantile(ordered, (1 - level) / 2, method="inverted_cdf"))
    hi = float(np.quantile(ordered, 1 - (1 - level) / 2, method="inverted_cdf"))
    return {"lo": lo, "hi": hi, "reach_share": float(finite.mean()), "n": int(len(values))}


def _fmt(value: float, unit: str = "") -> str:
    if math.isinf(value):
        return "out of reach"
    if unit == " tokens":  # the smallest whole number of tokens that reaches it
        return f"{math.ceil(value - 1e-6)}{unit}"
    return f"{value:.4g}{unit}"


def _replicate_params(fit):
    boot = fit.bootstrap
    if not boot or not boot.get("replicates"):
        return None
    reps = np.asarray(boot["replicates"], float)
    return {name: reps[:, i] for i, name in enumerate(boot["names"])}


def _check(name, value, low=0.0, high=None, inclusive_high=False):
    if value is None:
        return
    bad = not (math.isfinite(value) and value > low)
    if high is not None:
        bad = bad or (value > high if inclusive_high else value >= high)
    if bad:
        bound = f" and {'at most' if inclusive_high else 'below'} {high:g}" if high is not None else ""
        raise UserError(f"--{name} must be a number above {low:g}{bound}, got {value}")


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``ctxscale solve {compute,prompt,window} FIT.json ...`` (module docstring)."""
    from ctxscale.fitting import load_fit

    parser = step_parser("ctxscale solve", "Planning queries: invert a fitted law.",
                                     epilog="See ctxscale.solve for the definitions; intervals need a fit made "
                                            "with --bootstrap N.")
    sub = parser.add_subparsers(dest="question", required=True, metavar="QUESTION")
    q_compute = sub.add_parser("compute", help="training compute to reach --target at --n-pmt and --n-ctx")
    q_compute.add_argument("--target", type=float, required=True, help="score to reach, in (0, 1)")
    q_compute.add_argument("--n-pmt", type=float, required=True, help="prompt length in tokens")
    q_compute.add_argument("--n-ctx", type=float, required=True, help="context window in tokens")
    q_prompt = sub.add_parser("prompt", help="shortest prompt reaching --share of the best score inside --n-ctx")
    q_prompt.add_argument("--compute", type=float, required=True, help="training compute in FLOPs")
    q_prompt.add_argument("--n-ctx", type=float, required=True, help="context window in tokens")
    q_prompt.add_argument("--share", type=float, default=0.9, help="share of the best score, in (0, 1] (0.9)")
    q_prompt.add_argument("--tokens-per-shot", type=float, help="also give the shot count: tokens per demonstration")
    q_prompt.add_argument("--query-tokens", type=float, default=0.0, help="tokens of the prompt besides the shots (0)")
    q_window = sub.add_parser("window", help="smallest window for a prompt of --n-pmt tokens")
    q_window.add_argument("--compute", type=float, required=True, help="training compute in FLOPs")
    q_window.add_argument("--n-pmt", type=float, required=True, help="prompt length in tokens")
    group = q_window.add_mutually_exclusive_group()
    group.add_argument("--share", type=float, help="share of the unlimited-window score, in (0, 1) (default 0.99)")
    group.add_argument("--target", type=float, help="absolute score to reach instead, in (0, 1)")
    for p in (q_compute, q_prompt, q_window):
        p.add_argument("fit", help="fit JSON written by `ctxscale fit` (with --bootstrap N for intervals)")
        p.add_argument("--level", type=float, default=0.95, help="interval level (0.95)")
    args = parse_step_args(parser, argv)
    _check("level", args.level, 0.0, 1.0)
    for name in ("n_pmt", "n_ctx", "compute", "tokens_per_shot"):
        _check(name.replace("_", "-"), getattr(args, name, None))
    if getattr(args, "query_tokens", 0.0) < 0:
        raise UserError(f"--query-tokens must not be negative, got {args.query_tokens}")
    _check("target", getattr(args, "target", None), 0.0, 1.0)
    fit = load_fit(args.fit)
    spec, ident = fit.spec, fit.identifiable_params
    reps = _replicate_params(fit)
    lines = [f"law {spec.law} ({fit.path})"]
    try:
        if args.question == "compute":
            estimate = float(required_compute(spec, ident, args.target, args.n_pmt, args.n_ctx))
            with np.errstate(over="ignore"):
                ceiling = float(spec.predict(ident, HUGE, args.n_pmt, args.n_ctx))
            lines.append(f"question: training compute for P >= {args.target:g} at n_pmt {args.n_pmt:g}, "
                         f"n_ctx {args.n_ctx:g}")
            rep_values = None if reps is None else required_compute(spec, reps, args.target, args.n_pmt, args.n_ctx)
            unit, meets_at = " FLOPs", None
            if math.isinf(estimate):
                lines.append(f"answer: out of reach: the law's ceiling there is P = {ceiling:.4f} (unlimited "
                             f"compute), below the target {args.target:g}")
            else:
                lines.append(f"answer: {_fmt(estimate, unit)}")
                if reps is not None:
                    meets_at = np.asarray(fit.spec.predict(reps, estimate, args.n_pmt, args.n_ctx)) >= args.target
        elif args.question == "prompt":
            _check("share", args.share, 0.0, 1.0, inclusive_high=True)
            n_est, best = shortest_prompt(spec, ident, args.compute, args.n_ctx, args.share)
            estimate = float(n_est)
            lines.append(f"question: shortest prompt inside n_ctx {args.n_ctx:g} reaching {args.share:.0%} of "
                         f"the best score there (P_best = {float(best):.4f}) at compute {args.compute:g}")
            lines.append(f"answer: {_fmt(estimate, ' tokens')}" + _shots(estimate, args))
            rep_values, unit, meets_at = None, " tokens", None
            if reps is not None:
                rep_values, rep_best = shortest_prompt(spec, reps, args.compute, args.n_ctx, args.share)
                floor = _floor(spec, _params(reps))
                p_at = spec.predict(_params(reps), args.compute, estimate, args.n_ctx)
                meets_at = p_at >= floor + args.share * (rep_best - floor) - 1e-12
        else:
            share = args.share if args.share is not None or args.target is not None else 0.99
            if args.share is not None or args.target is None:
                _check("share", share, 0.0, 1.0)
            w_est, need, unlimited = required_window(spec, ident, args.compute, args.n_pmt,
                                                     share if args.target is None else None, args.target)
            estimate = float(w_est)
            what = (f"{share:.0%} of its unlimited-window score (P = {float(unlimited):.4f})" if args.target is None
                    else f"P >= {args.target:g}")
            lines.append(f"question: smallest window for a prompt of {args.n_pmt:g} tokens reaching {what} at "
                         f"compute {args.compute:g}")
            unit, rep_values, meets_at = " tokens", None, None
            if math.isinf(estimate):
                lines.append(f"answer: out of reach: even an unlimited window gives P = {float(unlimited):.4f}")
            else:
                lines.append(f"answer: {_fmt(estimate, unit)}")
            if reps is not None:
                rep_values, rep_need, _ = required_window(spec, reps, args.compute, args.n_pmt,
                                                          share if args.target is None else None, args.target)
                if not math.isinf(estimate):
                    meets_at = spec.predict(_params(reps), args.compute, args.n_pmt, estimate) >= rep_need - 1e-12
    except (KeyError, TypeError, IndexError) as error:
        raise UserError(f"{args.fit} is not a complete ctxscale fit ({type(error).__name__}: {error})") from None
    summary = _summary(estimate, rep_values, args.level)
    if summary is None:
        lines.append("interval: none (the fit has no bootstrap; refit with --bootstrap N)")
    else:
        lines.append(f"{args.level:.0%} interval over {summary['n']} bootstrap replicates: "
                     f"[{_fmt(summary['lo'], unit)}, {_fmt(summary['hi'], unit)}]")
        lines.append(f"replicates that can reach it: {summary['reach_share']:.0%}"
                     + ("" if meets_at is None else
                        f"; replicates that meet it at the answer: {float(np.mean(meets_at)):.0%}"))
    print("\n".join(lines))
    return 0


def _shots(n_pmt: float, args) -> str:
    if args.tokens_per_shot is None:
        return ""
    shots = max(0, math.ceil((n_pmt - args.query_tokens) / args.tokens_per_shot - 1e-9))
    return f" = {shots} shots of {args.tokens_per_shot:g} tokens after a {args.query_tokens:g}-token query"


if __name__ == "__main__":
    sys.exit(main())
