"""Tokenizer helpers of every step that counts tokens: the one tokenizer loader (:func:`load_tokenizer`), what a
manifest records of a tokenizer (:func:`tokenizer_info`), batched token counts (:func:`token_counts`: the
length filter's call) and the token counts that bound every prompt's length (:func:`prompt_token_profile`,
read by the GPU plan).
"""

from __future__ import annotations

import bisect
import logging
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from ctxscale.errors import UserError

log = logging.getLogger(__name__)

_TOKENIZE_BATCH = 4096


def load_tokenizer(tokenizer, *, hub: bool = False):
    """A transformers tokenizer from a directory (a user error, in one line, when there is none), or
    ``tokenizer`` itself when it already is one: the one tokenizer loader of every step. With ``hub``, a name
    that is not a directory is a Hugging Face repository id (``ctxscale ingest --tokenizer my-org/my-model``)."""
    if isinstance(tokenizer, (str, os.PathLike)):
        path = Path(tokenizer)
        if not path.is_dir() and not hub:
            raise UserError(f"tokenizer directory {path} does not exist")
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(str(path))
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot load a tokenizer from {path}: {str(exc).splitlines()[0]}") from None
    if not callable(tokenizer):
        raise UserError(f"tokenizer must be a directory or a transformers tokenizer, got {type(tokenizer).__name__}")
    return tokenizer


def tokenizer_info(tokenizer) -> dict[str, Any]:
    """What a manifest records of the tokenizer its token counts come from."""
    return {
        "name": getattr(tokenizer, "name_or_path", None) or None,
        "class": type(tokenizer).__name__,
        "vocab_size": len(tokenizer) if hasattr(tokenizer, "__len__") else None,
    }


def token_counts(tokenizer, texts: Sequence[str], what: str) -> list[int]:
    """Tokens of each text without special tokens, tokenized in batches; progress of long runs is logged as
    ``what``."""
    counts: list[int] = []
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        batch = list(texts[start : start + _TOKENIZE_BATCH])
        # Same call as the official filter; masks and type ids are not needed (1.5x faster).
        encoded = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False)
        counts.extend(len(ids) for ids in encoded["input_ids"])
        if len(texts) > 10 * _TOKENIZE_BATCH and (start // _TOKENIZE_BATCH) % 10 == 0:
            log.info("%s: tokenized %d / %d", what, min(start + _TOKENIZE_BATCH, len(texts)), len(texts))
    return counts


def prompt_token_profile(
    tokenizer, shots: Sequence[Mapping[str, str]], test: Sequence[Mapping[str, str]],
    prefix: str, suffix: str, separator: str, per_instance: bool = False,
) -> dict[str, Any]:
    """Token counts that bound every prompt length, for the GPU plan (:mod:`ctxscale.plan.evaluation`).

    ``shot_block[k]``: tokens of the first k shots as one block (the block tokenized once, cut at each
    shot's end through the offset mapping, so merges inside the block count as lm-eval sees them);
    ``max_query``: tokens of the longest ``(prefix + input + suffix).rstrip()``; ``bos``: tokens the
    tokenizer adds in front (what the backends add). A prompt of k shots then has at most
    ``bos + shot_block[k] + max_query`` tokens, up to merges at the one block/query boundary. With
    ``per_instance`` shot orders the block is of the k longest shots, which bounds every instance's k.
    """
    block, ends = "", []
    if per_instance:  # any k shots may be drawn: bound by the k longest, in that order
        lengths = token_counts(tokenizer, [prefix + s["input"] + suffix + s["reference"] + separator for s in shots],
                                "shots")
        shots = [shot for _, shot in sorted(zip(lengths, shots), key=lambda pair: pair[0], reverse=True)]
    for shot in shots:
        block += prefix + shot["input"] + suffix + shot["reference"] + separator
        ends.append(len(block))
    counts = [0]
    if block:
        if getattr(tokenizer, "is_fast", False):
            offsets = tokenizer(block, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
            starts = [start for start, _ in offsets]
            # tokens that start before a shot's end: a token straddling the boundary counts (upper bound)
            counts += [bisect.bisect_left(starts, end) for end in ends]
        else:  # slow tokenizers have no offsets: sum of the shots tokenized apart
            per_shot = token_counts(tokenizer, [block[a:b] for a, b in zip([0, *ends], ends)], "shots")
            for n in per_shot:
                counts.append(counts[-1] + n)
    queries = [(prefix + row["input"] + suffix).rstrip() for row in test]
    max_query = max(token_counts(tokenizer, queries, "queries"), default=0)
    bos = len(tokenizer("", add_special_tokens=True)["input_ids"])
    return {"shot_block": counts, "max_query": max_query, "bos": bos}

