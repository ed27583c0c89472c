"""What keeping freed memory (ctxscale.allocator, every step does it) saves on a CPU forward-heavy workload.

Runs the same workload in two fresh processes, glibc's default allocator settings and ``keep_freed_memory()``:
greedy generation with a randomly initialised tiny Llama (the miniature's tiny-m shape, YaRN x4 to 512
positions) over batches of 16 left-padded prompts of 480 tokens, one thread, as the miniature's evaluate jobs do. Prints
wall, user and system seconds and minor page faults of each, and whether their generated tokens are identical.

    python benchmarks/bench_allocator.py [--rounds 24]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

WORKLOAD = """
import json, resource, sys, time
mode, rounds = sys.argv[1], int(sys.argv[2])
if mode == "keep":
    from ctxscale.allocator import keep_freed_memory
    assert keep_freed_memory(), "glibc's mallopt refused"
import torch
from ctxscale.tiny import build_tokenizer, init_model
torch.set_num_threads(1)
model = init_model(build_tokenizer(), hidden_size=48, num_layers=2, num_heads=3, n_ctx=512, seed=0,
                   rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128})
generator = torch.Generator().manual_seed(0)
tokens = []
usage, started = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
with torch.no_grad():
    for _ in range(rounds):
        prompts = torch.randint(4, model.config.vocab_size, (16, 480), generator=generator)
        # left padding of 0..47 tokens, as lm-eval pads a batch of prompts of unequal length
        mask = (torch.arange(480) >= torch.randint(0, 48, (16, 1), generator=generator)).long()
        prompts[mask == 0] = model.config.pad_token_id
        out = model.generate(prompts, attention_mask=mask, max_new_tokens=6, do_sample=False,
                             pad_token_id=model.config.pad_token_id)
        tokens.append(out[:, 480:].tolist())
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({"wall": time.perf_counter() - started, "user": after.ru_utime - usage.ru_utime,
                  "sys": after.ru_stime - usage.ru_stime, "faults": after.ru_minflt - usage.ru_minflt,
                  "tokens": tokens}))
"""


def run(mode: str, rounds: int) -> dict:
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    done = subprocess.run([sys.executable, "-c", WORKLOAD, mode, str(rounds)], capture_output=True, text=True,
                          env=env, check=False)
    if done.returncode:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=24, help="batches of 16 prompts to generate for (default 24)")
    args = parser.parse_args()
    started = time.perf_counter()
    results = {mode: run(mode, args.rounds) for mode in ("default", "keep")}
    for mode, r in results.items():
        print(f"{mode:>8}: {r['wall']:6.2f} s wall, {r['user']:6.2f} s user, {r['sys']:5.2f} s system, "
              f"{r['faults']:>9,} minor page faults")
    default, keep = results["default"], results["keep"]
    print(f"kept freed memory: {keep['wall'] / default['wall']:.0%} of the default's wall time, "
          f"{keep['faults'] / max(1, default['faults']):.0%} of its page faults; identical generated tokens: "
          f"{keep['tokens'] == default['tokens']} ({time.perf_counter() - started:.0f} s in all, "
          f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime:.0f} s of CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
