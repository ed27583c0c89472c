"""Benchmark of the miniature's models and data: training time per checkpoint, and the signal check.

    python benchmarks/bench_tiny.py [--config config/demo.yaml] [--work DIR] [--jobs 2] [--shots 0 1 3 7 15 31 63]

Trains every tiny model of the recipe through the same command lines the workflow runs
(``python -m ctxscale.tiny train|extend``, one thread each, ``--jobs`` at a time), generates the synthetic
datasets (``python -m ctxscale.datasets.synthetic``), then scores every model on every dataset at every shot count
with a quick greedy-generation scorer (the official prompt of :meth:`ctxscale.datasets.prepared.PreparedData.prompt`, BOS
included, greedy decoding, the manifest's stop strings and ``max_new_tokens``, the metrics of
:mod:`ctxscale.metrics`). The workflow measures the same through lm-eval; this is the fast check.

Prints: seconds per checkpoint and in total; a table of score (and mean prompt tokens) per model, dataset
and shot count; and the issue's two signal checks with their margins:
1. for the highest-compute base model, the rise from 0 shots to its best shot count, per task (≥ 0.2 on
   at least two tasks);
2. at shot counts whose prompts fit every model's context limit, the highest-compute model minus the
   lowest, per task (≥ 0.1 on at least two tasks).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]

def recipe_from_config(path: Path) -> dict:
    config = yaml.safe_load(path.read_text())
    models = {name: spec for name, spec in config["models"].items() if spec.get("source") == "tiny"}
    datasets = dict(config["data"]["synthetic"])
    data = {k: config["data"][k] for k in ("max_length_per_example", "max_eval_samples", "seed")}
    return {"models": models, "datasets": datasets, "data": data}


def run(command: list[str]) -> float:
    """Run a workflow command line; return its wall seconds (it runs on one thread)."""
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", *command], capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def train_all(recipe: dict, work: Path, jobs: int) -> dict[str, float]:
    """Train base models, then extensions, ``jobs`` at a time; return seconds per checkpoint."""
    tokenizer = work / "tokenizer"
    run(["ctxscale.tiny", "tokenizer", "--out", str(tokenizer)])
    seconds = {}

    def command(name: str) -> list[str]:
        spec = recipe["models"][name]
        out = str(work / "models" / name)
        if "extends" in spec:
            full = {**spec["tiny"], "n_ctx": spec["n_ctx"], "rope_scaling": spec["rope_scaling"]}
            return ["ctxscale.tiny", "extend", "--base", str(work / "models" / spec["extends"]),
                    "--spec", json.dumps(full), "--threads", "1", "--out", out]
        return ["ctxscale.tiny", "train", "--tokenizer", str(tokenizer), "--spec", json.dumps(spec["tiny"]),
                "--threads", "1", "--out", out]

    bases = [n for n, s in recipe["models"].items() if "extends" not in s]
    extended = [n for n, s in recipe["models"].items() if "extends" in s]
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        for stage in (bases, extended):
            todo = [n for n in stage if not (work / "models" / n / "ctxscale_training.json").exists()]
            for name, took in zip(todo, pool.map(lambda n: run(command(n)), todo)):
                seconds[name] = took
                print(f"trained {name}: {took:.1f} s", flush=True)
    return seconds


def make_datasets(recipe: dict, work: Path) -> dict[str, Path]:
    paths = {}
    for name, spec in recipe["datasets"].items():
        out = work / "data" / name
        full = {**spec, **recipe["data"]}
        run(["ctxscale.datasets.synthetic", "--dataset", name, "--spec", json.dumps(full),
             "--tokenizer", str(work / "tokenizer"), "--out", str(out)])
        paths[name] = out
    return paths


@torch.no_grad()
def score_model(model_dir: Path, data_dirs: dict[str, Path], shots: list[int]) -> dict:
    """Greedy generation on every test instance: {(dataset, k): (score, mean prompt tokens)}."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ctxscale import metrics
    from ctxscale.datasets.prepared import read_prepared

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    results = {}
    for name, directory in data_dirs.items():
        data = read_prepared(directory)
        manifest = data.manifest
        for k in shots:
            prompts = [tokenizer(data.prompt(row["input"], k, row["id"]))["input_ids"] for row in data.test]
            scores = [0.0] * len(prompts)
            by_length = collections.defaultdict(list)
            for index, ids in enumerate(prompts):
                by_length[len(ids)].append(index)
            for length, indices in by_length.items():
                batch = torch.tensor([prompts[i] for i in indices])
                generated = model.generate(batch, attention_mask=torch.ones_like(batch), do_sample=False,
                                           max_new_tokens=manifest["max_new_tokens"])
                for row, index in enumerate(indices):
                    text = tokenizer.decode(generated[row, length:], skip_special_tokens=True)
                    for stop in manifest["stop"]:
                        text = text.split(stop)[0]
                    scores[index] = metrics.score(manifest["metric"], text, data.test[index]["reference"])
            results[(name, k)] = (float(np.mean(scores)), float(np.mean([len(p) for p in prompts])), manifest["task"])
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "demo.yaml",
                        help="read models and synthetic datasets from this YAML (default: the miniature's)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/ctxscale-bench-tiny"))
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3, 7, 15, 31, 63])
    args = parser.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)
    recipe = recipe_from_config(args.config)
    args.work.mkdir(parents=True, exist_ok=True)

    started = time.perf_counter()
    seconds = train_all(recipe, args.work, args.jobs)
    wall = time.perf_counter() - started
    if seconds:
        print(f"training: {sum(seconds.values()):.1f} CPU-s over {len(seconds)} checkpoints, {wall:.1f} s wall "
              f"with {args.jobs} jobs")
    data_dirs = make_datasets(recipe, args.work)

    infos, table = {}, {}
    scoring_started = time.perf_counter()
    for name in recipe["models"]:
        directory = args.work / "models" / name
        infos[name] = json.loads((directory / "ctxscale_training.json").read_text())
        table[name] = score_model(directory, data_dirs, args.shots)
    print(f"greedy scoring: {time.perf_counter() - scoring_started:.1f} s")

    compute = {n: 6 * i["non_embedding_params"] * (i["pretrain_tokens"] + i["extension_tokens"])
               for n, i in infos.items()}
    print("\nmodel           n_ctx   N_nonemb  tokens     C        train_s")
    for name, info in infos.items():
        print(f"{name:15s} {info['n_ctx']:5d} {info['non_embedding_params']:9d} "
              f"{info['pretrain_tokens'] + info['extension_tokens']:9d} {compute[name]:.2e} {info['seconds']:7.1f}")
    print("\nscore (mean prompt tokens); * = prompt beyond the model's n_ctx")
    for dataset in data_dirs:
        print(f"\n{dataset}: " + " ".join(f"{k:>12d}" for k in args.shots))
        for name in recipe["models"]:
            cells = []
            for k in args.shots:
                score, n_pmt, _ = table[name][(dataset, k)]
                mark = "*" if n_pmt > infos[name]["n_ctx"] else " "
                cells.append(f"{score:5.2f}({n_pmt:4.0f}){mark}")
            print(f"  {name:13s} " + " ".join(cells))

    tasks = sorted({task for cells in table.values() for (_, _, task) in cells.values()})

    def task_score(model: str, task: str, k: int) -> float:
        values = [s for (d, kk), (s, _, t) in table[model].items() if t == task and kk == k]
        return float(np.mean(values))

    bases = [n for n, s in recipe["models"].items() if "extends" not in s]
    top_base = max(bases, key=compute.get)
    rises = {t: max(task_score(top_base, t, k) for k in args.shots) - task_score(top_base, t, 0) for t in tasks}
    print(f"\ncheck 1: {top_base} rise from 0 shots to its best shot count: "
          + ", ".join(f"{t} {r:+.2f}" for t, r in rises.items()))
    ok1 = sum(r >= 0.2 for r in rises.values()) >= 2
    print(f"  {'PASS' if ok1 else 'FAIL'}: {sum(r >= 0.2 for r in rises.values())} task(s) rise by >= 0.2")

    top, bottom = max(compute, key=compute.get), min(compute, key=compute.get)
    min_ctx = min(info["n_ctx"] for info in infos.values())
    inside = [k for k in args.shots
              if all(n_pmt <= min_ctx for cells in table.values()
                     for (_, kk), (_, n_pmt, _) in cells.items() if kk == k)]
    gaps = {t: {k: task_score(top, t, k) - task_score(bottom, t, k) for k in inside} for t in tasks}
    print(f"check 2: {top} minus {bottom} at shot counts inside every n_ctx ({inside}):")
    for t, by_k in gaps.items():
        print(f"  {t}: " + ", ".join(f"{k}: {g:+.2f}" for k, g in by_k.items()))
    best_k = max(inside, key=lambda k: sum(gaps[t][k] >= 0.1 for t in tasks)) if inside else None
    n_ok = sum(gaps[t][best_k] >= 0.1 for t in tasks) if inside else 0
    ok2 = n_ok >= 2
    print(f"  {'PASS' if ok2 else 'FAIL'}: at {best_k} shots, {n_ok} task(s) with a gap >= 0.1")

    print("\nmean score within / beyond each model's n_ctx (all datasets, shots > 0):")
    for name in recipe["models"]:
        within = [s for (d, k), (s, n, _) in table[name].items() if k > 0 and n <= infos[name]["n_ctx"]]
        beyond = [s for (d, k), (s, n, _) in table[name].items() if k > 0 and n > infos[name]["n_ctx"]]
        print(f"  {name:13s} within {np.mean(within):.2f} ({len(within)} cells)   "
              f"beyond {np.mean(beyond) if beyond else float('nan'):.2f} ({len(beyond)} cells)")
    return 0 if ok1 and ok2 else 1


if __name__ == "__main__":
    sys.exit(main())
