"""Benchmark of the evaluation stage: prefill-token accounting and hf-path throughput.

Part 1 (hardware-independent): for one dataset's sweep over the shot counts, the prompt tokens the
model must prefill
  - with nested first-n shots and a prefix cache that keeps what earlier prompts computed (vLLM's
    ``enable_prefix_caching``): the longest shot block once, plus, for every (shot count, instance), the
    tokens after the longest prefix it shares with its shot block (token-level, BOS included);
  - with nested shots and no reuse (every prompt prefilled in full, the hf backend);
  - with lm-eval's default sampler (``ContextSampler``, fewshot seed 1234, re-seeded per shot count as
    ``simple_evaluate`` does): different random shots per document, so prompts share no shot block and
    every token is prefilled (counted in full; at most a few leading tokens could be shared).
Part 2: tokens per second of the hf path (``ctxscale.evaluate`` end to end: guard, lm-eval, generation)
on a randomly initialised tiny Llama (``--shape tiny``, CPU) or a Llama-2-7B-shaped one (``--shape
llama2-7b``, for a GPU: ``--device cuda --dtype bfloat16``).

Without ``--data-dir`` the dataset is a synthetic ``cipher`` set (ctxscale.datasets.synthetic) with a 512-shot pool
and 250 test instances, tokenized with the tiny character tokenizer; pass a prepared dataset and its
tokenizer folder (``--data-dir resources/data/llama2/gsm --tokenizer resources/models/llama2-7b-4k``)
for the real figures.

    python benchmarks/bench_eval.py [--data-dir DIR --tokenizer DIR] [--shots 0 1 3 ... 511]
        [--max-samples 250] [--throughput-shots 0 1 3 7 15 31 63] [--throughput-samples 16]
        [--shape tiny|llama2-7b] [--device cpu] [--dtype float32] [--batch-size 8] [--skip-throughput]
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import numpy as np  # noqa: E402

PAPER_SHOTS = [0, 1, 3, 7, 15, 31, 63, 127, 255, 511]


def synthetic_dataset(out_dir: Path, tokenizer, n_test: int) -> Path:
    from ctxscale.datasets.prepared import write_prepared
    from ctxscale.datasets.synthetic import generate

    dataset = generate(
        "bench-cipher",
        {"kind": "cipher", "seed": 31337, "max_eval_samples": n_test, "shot_pool": 512, "max_length_per_example": 256},
        tokenizer,
    )
    manifest = dict(dataset.manifest, tokenizer="ctxscale.tiny")
    return write_prepared(out_dir, dataset.shots, dataset.test, manifest)


def common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    if n == 0:
        return 0
    mismatch = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(mismatch[0]) if mismatch.size else n


def prefill_accounting(data, tokenizer, shots: list[int], max_samples: int) -> dict:
    from lm_eval.api.samplers import ContextSampler

    from ctxscale.datasets.prepared import build_prompt

    manifest = data.manifest
    prefix, suffix, separator = manifest["prefix"], manifest["suffix"], manifest["separator"]
    test = data.test[:max_samples]
    shots = [k for k in shots if k <= len(data.shots)]

    def ids(text: str) -> list[int]:
        return tokenizer(text).input_ids  # with BOS, as the backends encode prompts

    def shot_block(n: int) -> str:
        return "".join(prefix + s["input"] + suffix + s["reference"] + separator for s in data.shots[:n])

    longest_block = ids(shot_block(max(shots)))
    reuse_total = len(longest_block)
    full_total = random_total = 0
    per_shot = []
    for k in shots:
        block = ids(shot_block(k))
        reuse_total += len(block) - common_prefix(block, longest_block)  # 0 when blocks nest token-wise
        sampler = ContextSampler(data.shots, rnd=1234)  # lm-eval default: re-seeded per simple_evaluate call
        nested_k = random_k = new_k = 0
        for row in test:
            prompt = ids(build_prompt(prefix, suffix, separator, data.shots[:k], row["input"]))
            new_k += len(prompt) - common_prefix(prompt, block)
            nested_k += len(prompt)
            random_k += len(ids(build_prompt(prefix, suffix, separator, sampler.sample(k), row["input"])))
        reuse_total += new_k
        full_total += nested_k
        random_total += random_k
        per_shot.append({"k": k, "nested_tokens": nested_k, "random_tokens": random_k, "after_shared_block": new_k})
    return {
        "dataset": manifest["dataset"],
        "instances": len(test),
        "shots": shots,
        "prefill_with_prefix_reuse": reuse_total,
        "prefill_nested_no_reuse": full_total,
        "prefill_lm_eval_random_shots": random_total,
        "per_shot": per_shot,
    }


def throughput(data_dir: Path, tokenizer, args) -> dict:
    import torch

    from ctxscale.evaluate.runner import evaluate
    from ctxscale.tiny import init_model, save_checkpoint

    shapes = {
        "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, n_ctx=128),
        "llama2-7b": dict(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008, n_ctx=4096),
    }
    shape = shapes[args.shape]
    with tempfile.TemporaryDirectory(prefix="bench-eval-") as work:
        work = Path(work)
        with torch.device("cpu"):
            model = init_model(tokenizer, seed=0, **shape)
        if args.shape != "tiny":
            model = model.to(torch.bfloat16)
        save_checkpoint(model, tokenizer, work / "model")
        del model
        settings = {"backend": "hf", "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
                    "max_length": 131072, "max_samples": args.throughput_samples, "n_ctx": shape["n_ctx"]}
        started = time.perf_counter()
        files = evaluate(model_dir=work / "model", model_name=f"random-{args.shape}", data_dir=data_dir,
                         shots=args.throughput_shots, out_dir=work / "out", cache_dir=work / "cache", settings=settings)
        wall = time.perf_counter() - started
        rows, prompt_total, generated_total, seconds_total = [], 0, 0, 0.0
        for path in files:
            result = json.loads(path.read_text())
            prompt = sum(i["prompt_tokens"] for i in result["instances"])
            generated = sum(
                len(tokenizer(i["prediction"], add_special_tokens=False).input_ids) for i in result["instances"]
            )
            seconds = result["metadata"]["elapsed_seconds"]
            prompt_total += prompt
            generated_total += generated
            seconds_total += seconds
            rows.append({"k": result["n_shots"], "instances": result["n_instances"], "n_pmt": result["n_pmt"],
                         "seconds": seconds, "prompt_tokens_per_s": prompt / seconds if seconds else math.nan})
    return {"shape": args.shape, "device": args.device, "dtype": args.dtype, "batch_size": args.batch_size,
            "torch_threads": torch.get_num_threads(), "rows": rows, "prompt_tokens": prompt_total,
            "generated_tokens": generated_total, "seconds_in_shot_counts": seconds_total, "wall_seconds": wall,
            "prompt_tokens_per_s": prompt_total / seconds_total, "generated_tokens_per_s": generated_total / seconds_total}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="prepared dataset (default: synthetic cipher set)")
    parser.add_argument("--tokenizer", help="tokenizer folder for --data-dir (default: ctxscale.tiny's)")
    parser.add_argument("--shots", type=int, nargs="+", default=PAPER_SHOTS)
    parser.add_argument("--max-samples", type=int, default=250)
    parser.add_argument("--throughput-shots", type=int, nargs="+", default=[0, 1, 3, 7, 15, 31, 63])
    parser.add_argument("--throughput-samples", type=int, default=16)
    parser.add_argument("--shape", choices=["tiny", "llama2-7b"], default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--skip-throughput", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)

    from transformers import AutoTokenizer

    from ctxscale.datasets.prepared import read_prepared
    from ctxscale.tiny import build_tokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else build_tokenizer()
    with tempfile.TemporaryDirectory(prefix="bench-data-") as scratch:
        data_dir = Path(args.data_dir) if args.data_dir else synthetic_dataset(Path(scratch) / "data", tokenizer, args.max_samples)
        data = read_prepared(data_dir)
        started = time.perf_counter()
        accounting = prefill_accounting(data, tokenizer, args.shots, args.max_samples)
        print(f"== prefill tokens for a shot sweep ({accounting['dataset']}, {accounting['instances']} instances, "
              f"shots {accounting['shots']}; {time.perf_counter() - started:.1f} s to count)")
        print(f"{'k':>5} {'nested (no reuse)':>18} {'lm-eval random':>15} {'after shared block':>19}")
        for row in accounting["per_shot"]:
            print(f"{row['k']:>5} {row['nested_tokens']:>18,} {row['random_tokens']:>15,} {row['after_shared_block']:>19,}")
        reuse = accounting["prefill_with_prefix_reuse"]
        nested = accounting["prefill_nested_no_reuse"]
        random_ = accounting["prefill_lm_eval_random_shots"]
        print(f"prefill with shared-prefix reuse (nested first-n shots + prefix cache): {reuse:,}")
        print(f"prefill, nested shots, no reuse (hf backend):                           {nested:,}")
        print(f"prefill, lm-eval default per-document random shots:                    {random_:,}")
        print(f"ratio random / reuse: {random_ / reuse:.1f}x   nested-no-reuse / reuse: {nested / reuse:.1f}x")
        if not args.skip_throughput:
            result = throughput(data_dir, tokenizer, args)
            print(f"\n== hf path throughput: random {result['shape']} Llama on {result['device']} ({result['dtype']}, "
                  f"batch {result['batch_size']}, {result['torch_threads']} torch threads)")
            print(f"{'k':>5} {'instances':>9} {'n_pmt':>8} {'seconds':>8} {'prompt tok/s':>13}")
            for row in result["rows"]:
                print(f"{row['k']:>5} {row['instances']:>9} {row['n_pmt']:>8.1f} {row['seconds']:>8.2f} {row['prompt_tokens_per_s']:>13,.0f}")
            print(f"prompt tokens {result['prompt_tokens']:,}, generated tokens {result['generated_tokens']:,} in "
                  f"{result['seconds_in_shot_counts']:.1f} s of shot counts ({result['wall_seconds']:.1f} s wall with loading): "
                  f"{result['prompt_tokens_per_s']:,.0f} prompt tok/s, {result['generated_tokens_per_s']:,.1f} generated tok/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
