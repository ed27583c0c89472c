"""The miniature's tiny Llama models: tokenizer and CPU pretraining (their YaRN variants: :mod:`ctxscale.extend`).

Command line (each a workflow step; errors a user can fix print ``error: ...`` and exit 2)::

    python -m ctxscale.tiny tokenizer --out DIR
    python -m ctxscale.tiny train  --spec JSON --out DIR [--tokenizer DIR] [--threads 1]

``train`` spec keys (defaults: ``$defs/tiny_train`` of the config schema, read into :data:`TRAIN_DEFAULTS`): ``hidden_size, num_layers, num_heads,
intermediate_size, n_ctx, steps, batch_size, lr, warmup, seed, mix``. The extended variants are built by
:mod:`ctxscale.extend`, the one implementation of context extension, with the miniature's recipe as spec values
(``config/demo.yaml``); its weights are byte for byte those of the ``tiny extend`` step it replaced.

Each output folder is a normal Hugging Face checkpoint (``save_pretrained`` of a ``LlamaForCausalLM`` and
its tokenizer, loadable by ``AutoModelForCausalLM`` and lm-eval's ``HFLM(pretrained=DIR)``) plus
``ctxscale_training.json``: ``pretrain_tokens`` and ``extension_tokens`` (tokens fed to the model, counted
exactly: steps × batch × sequence length, every position carries loss), ``non_embedding_params``
(counted from the model: all parameters minus the input embedding and LM head, tied weights once),
``n_ctx``, ``steps``, ``seed``, ``losses`` (one per step), ``seconds``, and the full spec.

Decisions where the paper is silent (its models are Llama-2 checkpoints; this is the same recipe in miniature):

- Tokenizer: one token per character over printable ASCII plus newline, BOS prepended like Llama's.
  Character tokens make decoding an exact round trip and keep the synthetic tasks' symbols one token each.
- Model: ``LlamaForCausalLM`` with tied embeddings, RoPE base 10000, SDPA attention, and an initialiser
  standard deviation of ``1/sqrt(hidden_size)`` instead of transformers' 0.02 (tuned for widths in the
  thousands; at width 64 it is six times smaller than the usual scaling).
- Training data (``mix``, default recall 1, arithmetic 0.5, cipher 1.5: the hardest kind with the longest rows
  gets the most): sequences in the synthetic datasets' own
  prompt formats, each with a *fresh* mapping from the training half of mapping space
  (:func:`ctxscale.datasets.synthetic.training_episode`, never a dataset's mapping). Every sequence starts with BOS
  and is exactly ``n_ctx`` tokens long, so a base model never sees a position beyond its context limit.
  Repeated random strings (the induction curriculum of ecosystem-notes §7) were measured and left out:
  with fixed repeat offsets the model only learns to copy at that offset, and with varied offsets no
  induction formed within 1,500 steps, so they cost compute without helping the tasks.
- Optimiser: AdamW (betas 0.9/0.95, eps 1e-8, no weight decay), gradient-norm clip 1.0, linear warm-up
  over ``warmup`` (a fraction of the steps), then cosine decay to 10 % of ``lr``; the paper's extension
  recipe (§3.3) uses the same AdamW settings with a linear schedule.
- Extension (§3.3 in miniature): ``rope_scaling = {rope_type: yarn, factor: F,
  original_max_position_embeddings: base n_ctx}`` with transformers' YaRN defaults (beta_fast 32,
  beta_slow 1), ``max_position_embeddings = F · base n_ctx``, then continued training on the same mixture
  at the new length from a fresh data stream. With a head size of 16 and a 128-token base context, YaRN
  rescales even the fastest rotary frequencies, so the miniature needs relatively more extension tokens
  than the paper (10-25 % of pretraining instead of 0.01 %) to recover.
- Determinism: ``torch.manual_seed`` for the initialisation, a NumPy ``default_rng`` data stream from
  the seed, ``torch.use_deterministic_algorithms(True)`` and a fixed thread count: the same spec and
  thread count give byte-identical weights on one machine. Across machines, :mod:`ctxscale.numerics`
  pins MKL's and PyTorch's SIMD code paths to AVX2 so that any x86-64 CPU with AVX2 takes the same one.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import string
import sys
import time
from pathlib import Path

import numpy as np
import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from ctxscale.config import schema_defaults
from ctxscale.datasets.synthetic import training_episode
from ctxscale.datasets.synthetic_kinds import kind_named
from ctxscale.datasets.tokenizer import load_tokenizer
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_json_option, setup_logging
from ctxscale.numerics import pin_cpu_code_paths

log = logging.getLogger("ctxscale.tiny")

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Printable ASCII without the whitespace other than space and newline (tabs, \r, \x0b, \x0c map to <unk>).
CHARACTERS = tuple(dict.fromkeys(" \n" + string.digits + string.ascii_letters + string.punctuation))
TRAINING_INFO = "ctxscale_training.json"

# The spec's keys and defaults: $defs/tiny_train of the config schema (their one source).
TRAIN_DEFAULTS = schema_defaults("tiny_train")
ARCHITECTURE_KEYS = ("hidden_size", "num_layers", "num_heads", "intermediate_size")
LOG_EVERY_SECONDS = 5.0


# ---------------------------------------------------------------------------------------------------------
# Tokenizer, model, checkpoint


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A deterministic character-level tokenizer over printable ASCII plus newline.

    Every character is one token, so decoding is an exact round trip (what lm-eval's stop-sequence
    handling and the metrics need); BOS is prepended by default, as the Llama tokenizer does.
    """
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A",
        pair=f"{BOS_TOKEN} $A {BOS_TOKEN} $B",
        special_tokens=[(BOS_TOKEN, vocab[BOS_TOKEN])],
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        model_max_length=1_000_000,
        clean_up_tokenization_spaces=False,
    )


def init_model(
    tokenizer: transformers.PreTrainedTokenizerBase,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    n_ctx: int = 128,
    seed: int = 0,
    rope_scaling: dict | None = None,
) -> transformers.LlamaForCausalLM:
    """A randomly initialised (seeded) Llama with tied embeddings, sized for CPU training in seconds.

    ``n_ctx`` becomes ``max_position_embeddings``; with ``rope_scaling`` (e.g. YaRN) pass the
    extended length as ``n_ctx`` and the base length as ``original_max_position_embeddings``.
    """
    if hidden_size % num_heads:
        raise UserError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=n_ctx,
        rope_theta=10000.0,
        rope_scaling=dict(rope_scaling) if rope_scaling else None,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
        initializer_range=1.0 / math.sqrt(hidden_size),
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_checkpoint(model, tokenizer, out_dir, training_info: dict | None = None) -> Path:
    """Save model and tokenizer with ``save_pretrained`` (plus ``ctxscale_training.json`` when given)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if training_info is not None:
        (out_dir / TRAINING_INFO).write_text(json.dumps(training_info, indent=1) + "\n")
    return out_dir


def count_non_embedding_params(model) -> int:
    """All parameters minus the input embedding and the LM head (tied weights counted once)."""
    unique = {id(p): p for p in model.parameters()}
    embeddings = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for i, p in unique.items() if i not in embeddings)


# ---------------------------------------------------------------------------------------------------------
# Training data


def training_text(rng: np.random.Generator, mix: dict[str, float], min_chars: int) -> str:
    """One training text of at least ``min_chars`` characters, its source drawn from ``mix``."""
    names = sorted(mix)
    weights = np.array([float(mix[name]) for name in names])
    name = names[int(rng.choice(len(names), p=weights / weights.sum()))]
    return training_episode(kind_named(name), rng, min_chars)[0]


def training_batch(tokenizer, rng: np.random.Generator, mix: dict, batch_size: int, seq_len: int) -> torch.Tensor:
    """``batch_size`` sequences of exactly ``seq_len`` tokens, each BOS + the start of a fresh text."""
    rows = []
    for _ in range(batch_size):
        ids = tokenizer(training_text(rng, mix, seq_len))["input_ids"]
        if len(ids) < seq_len:  # pragma: no cover - one token per character makes this impossible
            raise RuntimeError("a training text tokenized shorter than the sequence length")
        rows.append(ids[:seq_len])
    return torch.tensor(rows, dtype=torch.long)


def _check_mix(mix) -> dict:
    from ctxscale.extend.recipe import check_mix  # one check for pretraining and extension data

    return check_mix(mix, "mix")


# ---------------------------------------------------------------------------------------------------------
# Training


def _set_determinism(threads: int) -> None:
    if threads < 1:
        raise UserError(f"--threads must be at least 1, got {threads}")
    pin_cpu_code_paths()  # before the first tensor operation, so the bits do not depend on the machine
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)


def _schedule(step: int, steps: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up, then cosine decay to 10 %."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, steps - warmup_steps)
    return 0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress))


def run_training(
    model,
    tokenizer,
    rng: np.random.Generator,
    *,
    steps: int,
    batch_size: int,
    seq_len: int,
    lr: float,
    warmup: float,
    mix: dict,
    label: str,
) -> tuple[list[float], int]:
    """Train in place; return the per-step losses and the number of tokens fed."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0)
    warmup_steps = max(1, round(warmup * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: _schedule(s, steps, warmup_steps))
    model.train()
    losses, tokens = [], 0
    started = last_log = time.perf_counter()
    for step in range(steps):
        batch = training_batch(tokenizer, rng, mix, batch_size, seq_len)
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(round(loss.item(), 6))
        tokens += batch.numel()
        now = time.perf_counter()
        if now - last_log >= LOG_EVERY_SECONDS or step in (0, steps - 1):
            log.info("%s step %d/%d loss %.4f (%.1f s)", label, step + 1, steps, losses[-1], now - started)
            last_log = now
    model.eval()
    return losses, tokens


def _spec_with_defaults(spec: dict, defaults: dict) -> dict:
    if not isinstance(spec, dict):
        raise UserError("--spec must be a JSON object")
    unknown = sorted(set(spec) - set(defaults))
    if unknown:
        raise UserError(f"unknown spec key {unknown[0]!r} (known: {', '.join(sorted(defaults))})")
    merged = {**defaults, **spec}
    for key in ("steps", "batch_size", "n_ctx"):
        if merged.get(key) is not None and (not isinstance(merged[key], int) or merged[key] < 1):
            raise UserError(f"spec {key} must be a positive integer, got {merged[key]!r}")
    if not isinstance(merged["lr"], (int, float)) or merged["lr"] <= 0:
        raise UserError(f"spec lr must be a positive number, got {merged['lr']!r}")
    if not 0 <= merged["warmup"] < 1:
        raise UserError(f"spec warmup must be a fraction of the steps in [0, 1), got {merged['warmup']!r}")
    merged["mix"] = _check_mix(merged["mix"])
    return merged


def architecture(spec: dict) -> dict:
    """The architecture part of a training spec."""
    return {key: spec[key] for key in ARCHITECTURE_KEYS}


def train(spec: dict, tokenizer=None, threads: int = 1):
    """Pretrain a base model from ``spec``; returns ``(model, tokenizer, training_info)``."""
    spec = _spec_with_defaults(spec, TRAIN_DEFAULTS)
    _set_determinism(threads)
    tokenizer = tokenizer or build_tokenizer()
    model = init_model(tokenizer, **architecture(spec), n_ctx=spec["n_ctx"], seed=spec["seed"])
    non_embedding = count_non_embedding_params(model)
    log.info("pretraining: %d non-embedding parameters, %d steps of %d x %d tokens",
             non_embedding, spec["steps"], spec["batch_size"], spec["n_ctx"])
    rng = np.random.default_rng([spec["seed"], 0])  # stream 0: pretraining data
    started = time.perf_counter()
    losses, tokens = run_training(
        model, tokenizer, rng, steps=spec["steps"], batch_size=spec["batch_size"], seq_len=spec["n_ctx"],
        lr=spec["lr"], warmup=spec["warmup"], mix=spec["mix"], label="pretrain",
    )
    info = {
        "stage": "pretrain",
        "pretrain_tokens": tokens,
        "extension_tokens": 0,
        "non_embedding_params": non_embedding,
        "n_ctx": spec["n_ctx"],
        "steps": spec["steps"],
        "seed": spec["seed"],
        "threads": threads,
        "seconds": round(time.perf_counter() - started, 3),
        "spec": spec,
        "losses": losses,
    }
    return model, tokenizer, info


# ---------------------------------------------------------------------------------------------------------
# Command line


def _parse_spec(text: str) -> dict:
    return parse_json_option(text, "--spec")


def _load_tokenizer(directory: str | None):
    """The saved tokenizer in ``directory``, or (none given) the character tokenizer built afresh."""
    return build_tokenizer() if directory is None else load_tokenizer(directory)


@cli_main
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ctxscale.tiny", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    tokenizer_cmd = commands.add_parser("tokenizer", help="save the character tokenizer")
    tokenizer_cmd.add_argument("--out", required=True)
    train_cmd = commands.add_parser("train", help="pretrain a base model")
    train_cmd.add_argument("--spec", required=True, help="JSON object (see the module docstring)")
    train_cmd.add_argument("--tokenizer", help="tokenizer directory (default: build the character tokenizer)")
    train_cmd.add_argument("--threads", type=int, default=1, help="torch threads (weights depend on it)")
    train_cmd.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    setup_logging()
    transformers.logging.set_verbosity_error()
    if args.command == "tokenizer":
        build_tokenizer().save_pretrained(args.out)
        log.info("saved the character tokenizer to %s", args.out)
        return 0
    model, tokenizer, info = train(_parse_spec(args.spec), _load_tokenizer(args.tokenizer), args.threads)
    save_checkpoint(model, tokenizer, args.out, info)
    log.info("saved %s (%d tokens in %.1f s, final loss %.4f)", args.out,
             info["pretrain_tokens"] + info["extension_tokens"], info["seconds"], info["losses"][-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
