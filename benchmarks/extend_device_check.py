"""Device check of the extension's training loop: a Llama-2-7B-shaped model on one CUDA GPU.

    python benchmarks/extend_device_check.py [--updates 20] [--n-ctx 16384] [--global-batch 1]

Runs :func:`ctxscale.extend.train.train` (the module's own loop, not a copy) on a randomly initialised model with
Llama-2-7B's shapes (hidden 4096, 32 layers, 32 heads, MLP 11008, vocabulary 32000, base context 4096), YaRN x4
to 16k tokens, bf16 (FSDP2 mixed precision, fp32 master weights and Adam state), activation checkpointing, the
chunked loss (4096 positions), FSDP2 over a process group of one, random token ids as data. Prints tokens/s
(updates after the first, which includes warm-up) and peak GPU memory (``torch.cuda.max_memory_allocated``).
Memory expectation without offload: fp32 weights + gradients + Adam moments = 16 bytes x 6.74e9 = 108 GB, plus
activations; fits an 80 GB GPU only with ``--cpu-offload``.
Exits 2 with one line when there is no CUDA GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

import torch  # noqa: E402

LLAMA2_7B = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                 num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096, rms_norm_eps=1e-5,
                 tie_word_embeddings=False, bos_token_id=1, eos_token_id=2)


class RandomTokens:
    """Sequences of ``n_ctx`` random token ids (BOS first), drawn from a seeded generator per position."""

    def __init__(self, n_ctx: int, vocab: int, seed: int = 0):
        self.n_ctx, self.vocab, self.seed = n_ctx, vocab, seed

    def sequence(self, position: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + position)
        ids = torch.randint(3, self.vocab, (self.n_ctx,), generator=generator)
        ids[0] = 1
        return ids

    def validation(self) -> list:
        return []

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--updates", type=int, default=20)
    parser.add_argument("--n-ctx", type=int, default=16384)
    parser.add_argument("--global-batch", type=int, default=1, help="sequences per update (micro-batch 1)")
    parser.add_argument("--cpu-offload", action="store_true")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("error: the extension device check needs a CUDA GPU (none is visible)", file=sys.stderr)
        return 2

    import transformers

    from ctxscale.steps import setup_logging
    from ctxscale.extend import model as modeling
    from ctxscale.extend import train
    from ctxscale.extend.recipe import read_spec

    setup_logging()
    transformers.logging.set_verbosity_error()
    train.configure_torch(threads=8)  # what a real extension job does (its CPU threads: extension.threads)
    factor = args.n_ctx / LLAMA2_7B["max_position_embeddings"]
    spec = read_spec({"updates": args.updates, "global_batch": args.global_batch, "micro_batch": 1,
                      "lr_schedule": "intended", "warmup_updates": 2, "precision": "bf16",
                      "activation_checkpointing": True, "loss_chunk_tokens": 4096, "cpu_offload": args.cpu_offload,
                      "checkpoint_every": 10**6, "data": {"source": "synthetic"}, "validation": {"sequences": 0},
                      "n_ctx": args.n_ctx, "rope_scaling": {"rope_type": "yarn", "factor": factor}},
                     LLAMA2_7B["max_position_embeddings"])
    run = train.Run(spec)  # CUDA device, FSDP2 over a process group of one
    with tempfile.TemporaryDirectory() as folder:
        base_config = transformers.LlamaConfig(**LLAMA2_7B)
        base_config.save_pretrained(folder)
        config = modeling.extended_config(folder, spec["rope_scaling"], spec["n_ctx"],
                                          modeling.choose_attention(spec["attention"], run.device))
        wrapper = modeling.load_sharded(None, config, run.device, run.mesh, bf16=True, cpu_offload=args.cpu_offload,
                                        activation_checkpointing=True, chunk_tokens=spec["loss_chunk_tokens"])
        torch.manual_seed(0)
        with torch.no_grad():  # random weights: norms 1, matrices N(0, 0.02) as Llama's initialiser
            for name, parameter in wrapper.named_parameters():
                parameter.fill_(1.0) if parameter.ndim == 1 else parameter.normal_(0.0, config.initializer_range)
        torch.cuda.reset_peak_memory_stats()
        started = time.perf_counter()
        result = train.train(spec, None, Path(folder) / "state", run=run, model=(wrapper, config),
                             stream=RandomTokens(spec["n_ctx"], LLAMA2_7B["vocab_size"]))
        elapsed = time.perf_counter() - started
    progress = result["progress"]
    steady = progress["update_seconds"][1:] or progress["update_seconds"]
    tokens_per_update = spec["global_batch"] * spec["n_ctx"]
    report = {
        "gpu": torch.cuda.get_device_name(run.device),
        "attention": config._attn_implementation,
        "n_ctx": spec["n_ctx"], "updates": progress["updates_done"], "global_batch": spec["global_batch"],
        "tokens_per_second": round(tokens_per_update * len(steady) / sum(steady), 1),
        "seconds_per_update": round(sum(steady) / len(steady), 3),
        "seconds_total": round(elapsed, 1),
        "peak_memory_gib": round(torch.cuda.max_memory_allocated(run.device) / 2**30, 2),
        "losses": progress["loss"],
        "finite": all(map(lambda x: x == x and abs(x) != float("inf"), progress["loss"])),
    }
    print(json.dumps(report, indent=1))
    run.close()
    return 0 if report["finite"] else 1


if __name__ == "__main__":
    sys.exit(main())
