"""The miniature's tiny Llama models: tokenizer, random init, checkpoints (pretraining and YaRN extension follow)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch
import transformers
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors

BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, UNK_TOKEN = "<s>", "</s>", "<pad>", "<unk>"
SPECIAL_TOKENS = (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN)
# Printable ASCII without the whitespace other than space and newline (tabs, \r, \x0b, \x0c map to <unk>).
CHARACTERS = tuple(dict.fromkeys(" \n" + string.digits + string.ascii_letters + string.punctuation))


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
        raise ValueError(f"hidden_size {hidden_size} is not divisible by num_heads {num_heads}")
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=n_ctx,
        rope_theta=10000.0,
        rope_scaling=rope_scaling,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        attn_implementation="sdpa",
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
        (out_dir / "ctxscale_training.json").write_text(json.dumps(training_info, indent=1) + "\n")
    return out_dir
