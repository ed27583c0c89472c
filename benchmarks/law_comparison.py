"""The evidence behind ``--law recommended`` (docs/laws.md): every law variant, out of sample, on the
external data sets (converted by :mod:`ctxscale.external`) and on any observations tables given.

For each data set it runs :func:`ctxscale.compare.compare_laws` (leave-one-model-out and held-out context
for every law), writes ``law_comparison_<name>.{csv,md}`` to ``--out-dir`` and prints one line per data
set and law: mean over tasks of the LOMO test MAE and the held-out-context test MAE.

Usage: python benchmarks/law_comparison.py [--external ../shared/data/external] [--seeds 2]
       [--observations NAME=OBS.csv:TASK,TASK:THRESHOLD ...] --out-dir benchmarks/law_comparison
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import pandas as pd

from ctxscale.compare import compare_laws
from ctxscale.fit_inputs import FitSettings
from ctxscale.external import helmet_observations, pythia_observations, ruler_observations
from ctxscale.files import atomic_write
from ctxscale.observations import load_observations
from ctxscale.tables import to_markdown

# name -> (file, converter, tasks, held-out-context threshold in tokens, per-dataset cells)
EXTERNAL = {
    "ruler": ("ruler_readme.csv", ruler_observations, ["ruler"], 32768, True),
    "helmet": ("helmet_by_length.csv", lambda raw: helmet_observations(raw, ["Recall", "RAG", "ICL"]),
               ["Recall", "RAG", "ICL"], 32768, True),
    # three checkpoints per model (early, middle, final) keep leave-one-model-out at 48 folds
    "pythia": ("pythia_0shot_5shot.csv",
               lambda raw: pythia_observations(raw, ["lambada_openai", "arc_easy", "piqa"], [3000, 33000, 143000]),
               ["lambada_openai", "arc_easy", "piqa"], 300, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--external", default="../shared/data/external")
    parser.add_argument("--only", action="append", help="run only these data sets")
    parser.add_argument("--observations", action="append", default=[],
                        help="NAME=OBS.csv:TASK[,TASK...]:THRESHOLD, an observations table to compare on too")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = FitSettings(seeds=tuple(range(args.seeds)))
    jobs = {}
    for name, (file, convert, tasks, threshold, per_dataset) in EXTERNAL.items():
        jobs[name] = (lambda f=file, c=convert: c(pd.read_csv(Path(args.external) / f)), tasks, threshold, per_dataset)
    for item in args.observations:
        name, spec = item.split("=", 1)
        path, tasks, threshold = spec.rsplit(":", 2)
        jobs[name] = (lambda p=path: load_observations(p), tasks.split(","), float(threshold), False)
    summary = []
    for name, (load, tasks, threshold, per_dataset) in jobs.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        table = compare_laws(load(), tasks, None, settings, threshold, per_dataset=per_dataset)
        out = Path(args.out_dir)
        atomic_write(out / f"law_comparison_{name}.csv", table.to_csv(index=False, float_format="%.10g"))
        atomic_write(out / f"law_comparison_{name}.md", to_markdown("law_comparison", table))
        means = table.groupby("law", sort=False)[["lomo_test_mae", "heldout_context_test_mae", "bic"]].mean()
        for law, row in means.iterrows():
            summary.append({"dataset": name, "law": law, **row.to_dict()})
        print(f"{name}: {time.perf_counter() - started:.0f} s", flush=True)
        print(means.to_string(float_format=lambda v: f"{v:.4f}"), flush=True)
    frame = pd.DataFrame(summary)
    atomic_write(Path(args.out_dir) / "summary.csv", frame.to_csv(index=False, float_format="%.6g"))
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
