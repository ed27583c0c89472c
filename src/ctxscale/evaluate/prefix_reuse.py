"""lm-eval's transformers model (``HFLM``) with the shot prefixes of a sweep prefilled once, not once per prompt.

A shot sweep sends prompts that share long token prefixes: with nested shots every prompt of a shot count
starts with one k-shot block, and the next count's block extends it; with per-instance shot orders each
instance's k-shot prompt extends its own (k−1)-shot prompt minus the question. ``HFLM.generate_until``
prefills every prompt in full. :class:`PrefixReuseHFLM` generates the same greedy continuations while
computing each shared prefix once.

Memory mechanism: **batch 1 with a cropped KV cache** (transformers' ``DynamicCache`` and its ``crop``), never
one copy of a shared prefix per sequence. Within one ``generate_until`` call every request is known up front:
the prompts are tokenized exactly as ``HFLM`` tokenizes them for generation (``tok_batch_encode``, BOS
included, no left truncation: ctxscale's guard never sends a prompt that does not fit) and run in the
lexicographic order of their token ids, a depth-first walk of their prefix trie, so consecutive prompts share
their longest prefixes. The cache of the previous prompt is cropped to the longest common token prefix with
the next prompt, the rest is prefilled, the continuation generated, and the cache cropped back to the prompt.
Results come back in the request order.

Across calls (ctxscale calls ``simple_evaluate`` once per shot count) a bounded store keeps the caches of
finished prompts (``retained_tokens``, the total prompt tokens held; least recently used evicted first). Each
prompt starts from the retained cache with the longest common token prefix: it takes that cache over (crops
it in place) when it keeps at least half of it, so a nested sweep holds one cache; otherwise it starts from a
copy of the common part, so the per-instance prompts of one shot count keep one retained cache each for the
next count. Reuse is decided only by comparing the token ids of the actual tokenized prompts, which is exact
(a prompt's last token tokenized alone may differ from the same text inside a longer prompt).

Equivalence to plain ``HFLM``: the same tokens enter the model at the same positions, so greedy predictions
agree except on near-ties, where chunked prefill's different floating-point summation order can decide;
tests/test_prefix_reuse.py measures the log-probabilities of the generated tokens against plain ``HFLM``.
Models whose rotary embedding depends on the current sequence length (``dynamic``, ``longrope``) or with
sliding-window layers (a cropped sliding cache cannot grow back) fall back to ``HFLM.generate_until``.

Use through ``lm_eval.simple_evaluate(model=PrefixReuseHFLM(pretrained=...), ...)`` or, after importing this
module, ``lm_eval.simple_evaluate(model="hf-prefix-reuse", model_args="pretrained=...")``; lm-eval 0.4.13's
``lm_eval`` command cannot load out-of-tree models, so a user runs its command line from Python (one line)::

    python -c "import ctxscale.evaluate.prefix_reuse, lm_eval.__main__ as m; m.cli_evaluate()"
        --model hf-prefix-reuse --model_args pretrained=DIR,max_length=4096 --device cuda --tasks ...
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from lm_eval.api.registry import register_model
from lm_eval.models.huggingface import HFLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from tqdm import tqdm
from transformers import DynamicCache

from ctxscale.errors import UserError

log = logging.getLogger("ctxscale.evaluate.prefix_reuse")

# Keys and values the store keeps by default on a CPU: 1 GiB, a million prompt tokens of the miniature's models
# (their sweeps retain about 200,000: 96 instances' 31-shot prompts), 23,000 of SmolLM2-135M in float32; on a
# GPU the store is bounded by the memory left after loading instead (see _default_budget).
DEFAULT_RETAINED_BYTES = 2**30
# rope types whose rotation depends on the sequence length in the forward pass: a chunked prefill differs.
LENGTH_DEPENDENT_ROPE = ("dynamic", "longrope")


def common_prefix_length(a: list[int], b: list[int]) -> int:
    """Length of the longest common prefix of two token-id lists."""
    limit = min(len(a), len(b))
    for index in range(limit):
        if a[index] != b[index]:
            return index
    return limit


@dataclass
class RetainedPrefix:
    """A finished prompt's token ids and the KV cache holding exactly those tokens."""

    ids: list[int]
    cache: DynamicCache
    last_used: int


@register_model("hf-prefix-reuse")
class PrefixReuseHFLM(HFLM):
    """``HFLM`` whose ``generate_until`` prefills each shared token prefix once (module docstring)."""

    def __init__(self, *args: Any, retained_tokens: int | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if retained_tokens is not None and int(retained_tokens) < 0:
            raise UserError(f"retained_tokens must be zero or more, got {retained_tokens}")
        self.retained_tokens = None if retained_tokens is None else int(retained_tokens)
        self._store: list[RetainedPrefix] = []
        self._clock = 0
        self.reuse_supported, self.reuse_refusal = self._reuse_support()
        # transformers 5.25 renamed generate's past_key_values to cache (the old name warns); 5.19 knows only it.
        parameters = inspect.signature(self.model.forward).parameters
        self._cache_argument = "cache" if "cache" in parameters else "past_key_values"
        if not self.reuse_supported:
            log.warning("prefix reuse is off for this model (%s); every prompt is prefilled in full",
                        self.reuse_refusal)  # fmt: skip

    # ------------------------------------------------------------------------------------------ support

    def _reuse_support(self) -> tuple[bool, str]:
        if self.backend != "causal":
            return False, "not a decoder-only model"
        config = self.model.config.get_text_config(decoder=True)
        rope = dict(getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type in LENGTH_DEPENDENT_ROPE:
            return False, f"rope_type {rope_type} depends on the sequence length"
        if any(DynamicCache(config=self.model.config).is_sliding):
            return False, "sliding-window layers"
        return True, ""

    def _default_budget(self) -> int:
        """Prompt tokens the store may hold: on a CPU, those whose keys and values take DEFAULT_RETAINED_BYTES;
        on a GPU, those fitting in nine tenths of the memory free after the model loaded, less one working
        sequence of max_length (the plan's KV pool; ctxscale.plan reports it as retained_tokens)."""
        config = self.model.config.get_text_config(decoder=True)
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        bytes_per_token = 2 * config.num_hidden_layers * kv_heads * head_dim * self.model.dtype.itemsize
        if self.device.type != "cuda":
            return DEFAULT_RETAINED_BYTES // bytes_per_token
        free, _total = torch.cuda.mem_get_info(self.device)
        return max(0, int(0.9 * free / bytes_per_token) - self.max_length)

    # ------------------------------------------------------------------------------------------ the store

    def _start_cache(self, ids: list[int]) -> DynamicCache:
        """A cache holding a prefix of ``ids`` (at most all but its last token, which must be fed to get the
        next-token logits): the retained cache sharing the most tokens, taken over or copied in part."""
        best, shared = None, 0
        for entry in self._store:
            length = min(common_prefix_length(entry.ids, ids), len(ids) - 1)
            if length > shared or (length == shared and best is not None and entry.last_used > best.last_used):
                best, shared = entry, length
        if best is None or shared == 0:
            return DynamicCache(config=self.model.config)
        self._clock += 1
        best.last_used = self._clock
        if 2 * shared >= len(best.ids):
            self._store.remove(best)
            best.cache.crop(shared - best.cache.get_seq_length())
            return best.cache
        layers = [(layer.keys[..., :shared, :].clone(), layer.values[..., :shared, :].clone())
                  for layer in best.cache.layers]  # fmt: skip
        return DynamicCache(ddp_cache_data=layers, config=self.model.config)

    def _retain(self, ids: list[int], cache: DynamicCache) -> None:
        """Keep ``cache`` (cropped to the prompt ``ids``) and evict the least recently used beyond the budget."""
        if self.retained_tokens is None:
            self.retained_tokens = self._default_budget()
        cache.crop(len(ids) - cache.get_seq_length())
        self._clock += 1
        self._store.append(RetainedPrefix(ids, cache, self._clock))
        self._store.sort(key=lambda entry: entry.last_used)
        held = sum(len(entry.ids) for entry in self._store)
        while self._store and held > self.retained_tokens:
            held -= len(self._store.pop(0).ids)

    def retained_prompt_tokens(self) -> int:
        """Prompt tokens whose keys and values the store holds now."""
        return sum(len(entry.ids) for entry in self._store)

    # ------------------------------------------------------------------------------------------ generation

    def generate_until(self, requests: list, disable_tqdm: bool = False) -> list[str]:
        if not self.reuse_supported:
            return super().generate_until(requests, disable_tqdm=disable_tqdm)
        eos = self.tok_decode(self.eot_token_id, skip_special_tokens=False)
        arguments = [request.args for request in requests]
        encoded = [self.tok_batch_encode([context])[0][0].tolist() for context, _ in arguments]
        results: list[str | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=(disable_tqdm or self.rank != 0),
                        desc="Running generate_until requests (prefix reuse)")  # fmt: skip
        for index in sorted(range(len(requests)), key=lambda i: encoded[i]):
            context, gen_kwargs = arguments[index]
            results[index] = self._generate_one(encoded[index], gen_kwargs, eos)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), results[index])
            progress.update(1)
        progress.close()
        return results

    def _generate_one(self, ids: list[int], gen_kwargs: dict, eos: str) -> str:
        """One greedy continuation, as HFLM.generate_until makes it for a batch of one unpadded prompt."""
        kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
        until = handle_stop_sequences(kwargs.pop("until", None), eos=eos)
        max_gen_toks = kwargs.pop("max_gen_toks")
        if len(ids) > self.max_length - max_gen_toks:
            raise UserError(
                f"a prompt of {len(ids)} tokens leaves no room for {max_gen_toks} generated tokens within "
                f"max_length {self.max_length}; prefix reuse never truncates prompts"
            )
        max_length = kwargs.pop("max_length", len(ids) + max_gen_toks)
        context = torch.tensor([ids], device=self.device)
        cache = self._start_cache(ids)
        kwargs[self._cache_argument] = cache
        output = self._model_generate(context=context, attention_mask=torch.ones_like(context), stop=until,
                                      max_length=max_length, **kwargs)  # fmt: skip
        self._retain(ids, cache)
        return self._continuation_text(output[0, len(ids):].tolist(), until)

    def _continuation_text(self, tokens: list[int], until: list[str]) -> str:
        """HFLM.generate_until's post-processing: thinking tokens, decoding, stop sequences."""
        if isinstance(self.think_end_token, int):
            ends = [i for i, token in enumerate(tokens) if token == self.think_end_token]
            if ends:
                tokens = tokens[ends[-1] + 1 :]
        text = self.tok_decode(tokens)
        if isinstance(self.think_end_token, int):
            text = text.lstrip()
        think_end = self.think_end_token if isinstance(self.think_end_token, str) else None
        return postprocess_generated_text(generation=text, stop=until, think_end_token=think_end)


class PrefillCounter:
    """Counts the prompt tokens a model actually computes, from outside any engine: ``generate`` is wrapped
    to mark its first forward (the prefill; later ones decode one token per sequence), and a forward
    pre-hook adds that forward's new tokens (``input_ids`` or ``inputs_embeds`` length, padding excluded by
    the attention mask's last columns). Used by tests and benchmarks/bench_prefix.py."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.prefilled = 0
        self.generate_calls = 0
        self._prefill_next = False
        self._generate = model.generate
        model.generate = self._counting_generate
        self._hook = model.register_forward_pre_hook(self._count, with_kwargs=True)

    def _counting_generate(self, *args: Any, **kwargs: Any) -> Any:
        self.generate_calls += 1
        self._prefill_next = True
        return self._generate(*args, **kwargs)

    def _count(self, _module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        if not self._prefill_next:
            return
        self._prefill_next = False
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs.get("inputs_embeds") if not args else args[0]
        new = inputs.shape[1]
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor) and mask.dim() == 2:
            self.prefilled += int(mask[:, -new:].sum())
        else:
            self.prefilled += inputs.shape[0] * new

    def close(self) -> None:
        self._hook.remove()
        del self.model.generate  # the class's own generate again
