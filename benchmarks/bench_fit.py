"""Benchmark of the fitting library against the targets of issue 2 (prints figures; not a test).

Targets (2 CPU cores):
- all six experiments for three tasks on a 120-cell-per-task table with 5 seeds: <= 30 s;
- a 1,000-replicate bootstrap of one task: <= 3 minutes.

The table is *simulated* from the law (12 paper-like models: Llama-2-7B/13B compute x six context
limits, the paper's ten shot counts, binomial noise with 250 instances per cell), one parameter set per
task, so the timings reflect the real problem size and shape without needing evaluation results.

Usage: python benchmarks/bench_fit.py [--seeds 5] [--replicates 1000] [--refit global|local] [--skip-bootstrap]
"""

from __future__ import annotations

import argparse
import logging
import os
import time

import pandas as pd

from ctxscale.experiments import EXPERIMENTS, run_experiment
from ctxscale.fit_inputs import FitSettings, select_cells
from ctxscale.fitting import bootstrap_law, fit_law, FitData
from ctxscale.law import PAPER_CONTEXT_LIMITS, simulate_observations
from ctxscale.observations import validate_observations

MODELS = {f"llama2-{size}-{k // 1024}k": (c, k) for size, c in (("7b", 7.77e22), ("13b", 1.52e23))
          for k in PAPER_CONTEXT_LIMITS}
TASK_TRUTHS = {
    "arithmetic-reasoning": {"log10_C50": 22.6, "alpha": 0.45, "log10_n50": 2.9, "beta": 0.5},
    "common-sense-reasoning": {"log10_C50": 21.5, "alpha": 0.3, "log10_n50": 2.2, "beta": 0.35},
    "machine-translation": {"log10_C50": 22.0, "alpha": 0.4, "log10_n50": 2.5, "beta": 0.8},
}
HOLDOUT = [m for m in MODELS if m.startswith("llama2-13b")]


def simulated_table() -> pd.DataFrame:
    frames = [simulate_observations(truth, MODELS, n_instances=250, seed=i, task=task, dataset=task)
              for i, (task, truth) in enumerate(TASK_TRUTHS.items())]
    return validate_observations(pd.concat(frames, ignore_index=True).drop(columns="truth"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--replicates", type=int, default=1000)
    parser.add_argument("--refit", default="global", choices=("global", "local"))
    parser.add_argument("--skip-bootstrap", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    table = simulated_table()
    settings = FitSettings(seeds=tuple(range(args.seeds)))
    print(f"cores available: {len(os.sched_getaffinity(0))}; cells per task: "
          f"{table.groupby('task').size().iloc[0]}; seeds: {args.seeds}")

    print(f"\n{'task':<24}" + "".join(f"{e:>21}" for e in EXPERIMENTS) + f"{'total':>9}")
    grand_start = time.perf_counter()
    for task in TASK_TRUTHS:
        cells = select_cells(table, task)
        times = []
        for experiment in EXPERIMENTS:
            start = time.perf_counter()
            run_experiment(experiment, cells, settings,
                           holdout_models=HOLDOUT if experiment == "held-out-compute" else None)
            times.append(time.perf_counter() - start)
        print(f"{task:<24}" + "".join(f"{t:>20.2f}s" for t in times) + f"{sum(times):>8.2f}s")
    total = time.perf_counter() - grand_start
    print(f"\nall six experiments x three tasks: {total:.1f} s (target <= 30 s: {'met' if total <= 30 else 'MISSED'})")

    if args.skip_bootstrap:
        return
    cells = select_cells(table, "arithmetic-reasoning")
    fit = fit_law(FitData.from_frame(cells.cells), seeds=settings.seeds)
    start = time.perf_counter()
    boot = bootstrap_law(fit, cells.cells, cells.parts, n_replicates=args.replicates, seed=0, refit=args.refit)
    elapsed = time.perf_counter() - start
    print(f"bootstrap of one task: {args.replicates} replicates ({args.refit} refit, unit {boot.unit}, "
          f"{boot.n_failed} failed) in {elapsed:.1f} s (target <= 180 s: {'met' if elapsed <= 180 else 'MISSED'})")
    for name, (lo, hi) in boot.interval().items():
        if ":" not in name:
            print(f"  {name:<12} {fit.identifiable[name]:>9.4f}  95% [{lo:.4f}, {hi:.4f}]")


if __name__ == "__main__":
    main()
