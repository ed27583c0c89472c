"""Device check for a lent GPU: the vLLM path of ``ctxscale.evaluate`` on a Llama-2-7B-shaped model.

Builds a randomly initialised Llama-2-7B-shaped checkpoint (32 layers, hidden 4096, 32 heads, MLP 11008,
n_ctx 4096, bf16, with ctxscale.tiny's character tokenizer: nothing is downloaded), generates a synthetic
cipher dataset whose longest prompts reach about 32k tokens (8x past n_ctx: the penalty region), runs
``evaluate()`` with backend vllm over the shot counts and prints per shot count and in total: prompt and
generated tokens per second, the prefix-cache hit rate (from ``metadata.prefix_cache``), refused prompts,
and the peak GPU memory (nvidia-smi, polled, so it includes the engine process). ``--rope yarn`` gives the
checkpoint YaRN (factor 8 over 4096) to exercise ctxscale.evaluate.vllm_rope at 32k. Meant to finish within
5 minutes on one H100/H200; run it in the vLLM environment (``pip install -e ".[gpu]"``):

    python benchmarks/device_check.py [--rope default|yarn] [--shots 0 1 3 7 15 31 63 127] [--questions 16]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

N_CTX = 4096
LLAMA2_7B = dict(hidden_size=4096, num_layers=32, num_heads=32, intermediate_size=11008)


class PeakGpuMemory:
    """Highest ``memory.used`` nvidia-smi reports while running (all processes on the visible GPUs)."""

    def __init__(self, every_seconds: float = 0.5):
        self.peak_mib, self._every, self._stop = 0, every_seconds, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.is_set():
            output = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                    capture_output=True, text=True, check=False).stdout
            used = [int(line) for line in output.split() if line.strip().isdigit()]
            self.peak_mib = max([self.peak_mib, *used])
            self._stop.wait(self._every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def build_checkpoint(out_dir: Path, rope: str):
    import torch

    from ctxscale.tiny import build_tokenizer, init_model, save_checkpoint

    tokenizer = build_tokenizer()
    yarn = {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": N_CTX}
    scaling = yarn if rope == "yarn" else None
    with torch.device("cuda"):  # initialising 6.7 B parameters on the CPU would take minutes
        model = init_model(tokenizer, n_ctx=N_CTX * (8 if scaling else 1), seed=0, rope_scaling=scaling, **LLAMA2_7B)
    model = model.to(torch.bfloat16)
    save_checkpoint(model, tokenizer, out_dir)
    del model
    torch.cuda.empty_cache()
    return tokenizer


def long_dataset(out_dir: Path, tokenizer, questions: int, sentence_words: int) -> Path:
    from ctxscale.datasets.prepared import write_prepared
    from ctxscale.datasets.synthetic import generate

    spec = {"kind": "cipher", "seed": 31337, "max_eval_samples": questions, "shot_pool": 512,
            "sentence_words": sentence_words, "max_length_per_example": 4096}
    dataset = generate("device-cipher", spec, tokenizer)
    return write_prepared(out_dir, dataset.shots, dataset.test, dict(dataset.manifest, tokenizer="ctxscale.tiny"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rope", choices=["default", "yarn"], default="default")
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 3, 7, 15, 31, 63, 127])
    parser.add_argument("--questions", type=int, default=16)
    parser.add_argument("--sentence-words", type=int, default=40, help="cipher sentence length (~250 tokens/shot)")
    parser.add_argument("--max-length", type=int, default=36864)
    parser.add_argument("--block-size", type=int, default=16)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    parser.add_argument("--enforce-eager", action=argparse.BooleanOptionalAction, default=False)
    parser.add_argument("--work", help="folder for the checkpoint and results (default: a temporary one)")
    args = parser.parse_args(argv)

    from ctxscale.evaluate.engines import build_engine
    from ctxscale.evaluate.runner import evaluate
    from ctxscale.evaluate.settings import Settings

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="device-check-") as scratch, PeakGpuMemory() as memory:
        work = Path(args.work or scratch)
        tokenizer = build_checkpoint(work / "model", args.rope)
        data_dir = long_dataset(work / "data", tokenizer, args.questions, args.sentence_words)
        built = time.perf_counter()
        settings = {"backend": "vllm", "dtype": "bfloat16", "max_length": args.max_length, "n_ctx": N_CTX,
                    "block_size": args.block_size, "gpu_memory_utilization": args.gpu_memory_utilization,
                    "enforce_eager": args.enforce_eager}
        engine = build_engine(work / "model", Settings.from_mapping(settings), 64)
        loaded = time.perf_counter()
        paths = evaluate(model_dir=work / "model", model_name=f"random-llama2-7b-{args.rope}", data_dir=data_dir,
                         shots=args.shots, out_dir=work / "out", cache_dir=work / "cache", settings=settings,
                         engine=engine)
        finished = time.perf_counter()
        results = [json.loads(path.read_text()) for path in paths]
        engine.close()
    prompt_total = generated_total = queried = hit = refused = 0
    print(f"checkpoint + data {built - started:.0f} s, engine start {loaded - built:.0f} s, "
          f"evaluate {finished - loaded:.0f} s")
    for result in results:
        prompt = sum(i["prompt_tokens"] for i in result["instances"])
        generated = sum(len(tokenizer(i["prediction"], add_special_tokens=False).input_ids)
                        for i in result["instances"])
        cache, seconds = result["metadata"]["prefix_cache"] or {}, result["metadata"]["elapsed_seconds"]
        prompt_total, generated_total, refused = prompt_total + prompt, generated_total + generated, \
            refused + result["n_refused"]
        queried, hit = queried + cache.get("queried_tokens", 0), hit + cache.get("cached_tokens", 0)
        longest = max((i["prompt_tokens"] for i in result["instances"]), default=0)
        print(f"k={result['n_shots']:4d} longest prompt {longest:6d} tokens, refused {result['n_refused']}, "
              f"{prompt / seconds:9.0f} prompt tokens/s, hit rate {cache.get('hit_rate') or 0:.3f}")
    seconds = finished - loaded
    print(f"total: {prompt_total / seconds:.0f} prompt tokens/s, {generated_total / seconds:.1f} generated tokens/s, "
          f"prefix hit rate {hit / queried if queried else 0:.3f}, refused {refused}, "
          f"peak GPU memory {memory.peak_mib / 1024:.1f} GiB")
    return 0


if __name__ == "__main__":  # the vLLM engine process is spawned and re-imports this file
    sys.exit(main())
