"""The selection protocol of docs/laws.md (``ctxscale.selection``) on the real data sets.

Every law of ``ctxscale.law.LAWS`` (and ``--law auto``) is fitted on the short prompts of each task and scored
on the long ones; per set the paired difference in held-out MAE against the paper law with a model-bootstrap
interval; then the choice on the choice sets and the confirmation on the others (ctxscale.selection.decide).
Writes ``errors_<set>.csv`` (every held-out cell, every law), ``selection_sets.csv`` and ``selection.md``.

The set registry below is the protocol's: CHOICE sets were fixed with the rule, before any confirmation set
existed; every set added later is a CONFIRMATION set.

Usage: python benchmarks/law_selection.py [--external ../shared/data/external] [--seeds 2] [--only SET]
       --out-dir docs/law_selection
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from ctxscale.fit_inputs import FitSettings, select_cells
from ctxscale.external import (cerebras_observations, helmet_observations, mir_observations, pythia_observations,
                               ruler_observations)
from ctxscale.files import atomic_write
from ctxscale.fitting import bounds_summary
from ctxscale.law import LAWS
from ctxscale.selection import AUTO, decide, eligible, heldout_errors, per_model_differences, pooled_bootstrap

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

# name -> (loader(external_dir), tasks, held-out-context threshold in tokens, per-dataset cells)
CHOICE = {
    "ruler": (lambda ext: ruler_observations(pd.read_csv(ext / "ruler_readme.csv")), ["ruler"], 32768, True),
    "helmet": (lambda ext: helmet_observations(pd.read_csv(ext / "helmet_by_length.csv"), ["Recall", "RAG", "ICL"]),
               ["Recall", "RAG", "ICL"], 32768, True),
    "pythia": (lambda ext: pythia_observations(pd.read_csv(ext / "pythia_0shot_5shot.csv"),
                                               ["lambada_openai", "arc_easy", "piqa"], [3000, 33000, 143000]),
               ["lambada_openai", "arc_easy", "piqa"], 300, False),
}
FIXTURES = REPO / "tests" / "data" / "external"
CEREBRAS_TASKS = ["hellaswag", "piqa", "winogrande", "lambada", "arc_easy", "arc_challenge", "openbookqa"]
# added after the protocol's commit (5e6b667); stored under tests/data/external (tests/data/README.md)
CONFIRMATION: dict = {
    "mir": (lambda ext: mir_observations(pd.read_csv(FIXTURES / "mir_bench_readme.csv")), ["mir-core", "mir-extended"],
            10000, False),
    # HELMET's long-document categories (not a choice task): a longer input keeps more of the book / document /
    # cited passages, so the added context carries the answer; same models as the choice set helmet
    "helmet-doc": (lambda ext: helmet_observations(pd.read_csv(ext / "helmet_by_length.csv"), ["LongQA", "Summ", "Cite"]),
                   ["LongQA", "Summ", "Cite"], 32768, True),
    # Pythia's other lm-eval tasks (not choice tasks), 0 vs 5 demonstrations: real training compute 6ND of
    # 16 models x 3 checkpoints; same checkpoints as the choice set pythia
    "pythia-other": (lambda ext: pythia_observations(pd.read_csv(ext / "pythia_0shot_5shot.csv"),
                                                     ["arc_challenge", "sciq", "winogrande", "logiqa"], [3000, 33000, 143000]),
                     ["arc_challenge", "sciq", "winogrande", "logiqa"], 300, False),
    # Cerebras' own 0- vs 5-shot table: 20 models of other families (Cerebras-GPT, its muP variants, OPT, GPT-J,
    # GPT-NeoX) with their listed training FLOPs (2.6e18..6.4e22) and 2048-token windows; its Pythia rows left out
    "cerebras": (lambda ext: cerebras_observations(pd.read_csv(FIXTURES / "cerebras_gpt_0shot_5shot.csv")),
                 CEREBRAS_TASKS, 300, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--external", default=str(REPO.parent / "shared" / "data" / "external"))
    parser.add_argument("--only", action="append", help="score only these sets (their errors_*.csv are rewritten)")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--replicates", type=int, default=2000)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    out = Path(args.out_dir)
    settings = FitSettings(seeds=tuple(range(args.seeds)))
    laws = list(LAWS)
    errors_by_set = {}
    for name, (load, tasks, threshold, per_dataset) in {**CHOICE, **CONFIRMATION}.items():
        path = out / f"errors_{name}.csv"
        if args.only and name not in args.only:
            if path.exists():
                errors_by_set[name] = pd.read_csv(path)
            continue
        started = time.perf_counter()
        observations = load(Path(args.external))
        with bounds_summary(name):
            frames = [heldout_errors(select_cells(observations, task, None, per_dataset), laws, settings, threshold,
                                     auto=True) for task in tasks]
        errors = pd.concat(frames, ignore_index=True)
        atomic_write(path, errors.to_csv(index=False, float_format="%.6g", lineterminator="\n"))
        errors_by_set[name] = errors
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
    result = decide(errors_by_set, [s for s in CHOICE if s in errors_by_set],
                    [s for s in CONFIRMATION if s in errors_by_set], laws + [AUTO], args.replicates)
    table = result["table"]
    table.insert(1, "role", ["choice" if s in CHOICE else "confirmation" for s in table["set"]])
    atomic_write(out / "selection_sets.csv", table.to_csv(index=False, float_format="%.5f", lineterminator="\n"))
    lines = ["| set | role | law | paper MAE | law MAE | paired diff | 95% interval | models | cells | fails |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in table.itertuples():
        lines.append(f"| {row.set} | {row.role} | {row.law} | {row.paper_mae:.4f} | {row.law_mae:.4f} | "
                     f"{row.diff:+.4f} | [{row.lo:+.4f}, {row.hi:+.4f}] | {row.n_models} | {row.n_cells} | "
                     f"{'yes' if row.fails else 'no'}{'' if row.eligible else ' (too small)'} |")
    lines += ["", "| law | pooled diff, choice sets | 95% interval |", "|---|---|---|"]
    for law, pool in result["choice_pooled"].items():
        if pool is not None:
            lines.append(f"| {law} | {pool.estimate:+.4f} | [{pool.lo:+.4f}, {pool.hi:+.4f}] |")
    confirmation = [s for s in CONFIRMATION if s in errors_by_set]
    if confirmation:
        lines += ["", "| law | pooled diff, confirmation sets | 95% interval |", "|---|---|---|"]
        for law in laws[1:] + [AUTO]:
            frames = {s: per_model_differences(errors_by_set[s], law) for s in confirmation}
            frames = {s: f for s, f in frames.items() if eligible(f)}
            if frames:
                pool = pooled_bootstrap(frames, args.replicates)
                lines.append(f"| {law} | {pool.estimate:+.4f} | [{pool.lo:+.4f}, {pool.hi:+.4f}] |")
    lines += ["", f"candidate from the choice sets: **{result['candidate']}**"]
    if result["confirmation_pooled"] is not None:
        pool = result["confirmation_pooled"]
        lines.append(f"pooled over the confirmation sets: {pool.estimate:+.4f} [{pool.lo:+.4f}, {pool.hi:+.4f}]")
    lines.append(f"recommended: **{result['recommended']}**")
    autos = {name: errors.loc[errors["law"] == AUTO].groupby("task")["auto_choice"].first().to_dict()
             for name, errors in errors_by_set.items() if "auto_choice" in errors}
    lines += ["", "auto's choice per set and task: " + "; ".join(f"{s}: {c}" for s, c in autos.items())]
    atomic_write(out / "selection.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
