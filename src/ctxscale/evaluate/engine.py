"""What the evaluation needs of an engine (an lm-eval LM class and how it is loaded): :class:`Engine`.

Each engine is one subclass (:mod:`.hf_engine`, :mod:`.vllm_engine`) registered by its ``name`` (the
``backend`` setting) in :data:`ctxscale.evaluate.engines.ENGINES`; everything that differs between engines is a
method or class attribute here, so the runner never asks which engine it has.

Prompts beyond the model's own context limit (the penalty region) are evaluated, not refused; how each engine
manages that is recorded in ``metadata.beyond_context``. Positions an engine cannot compute (its
:attr:`Engine.position_limit`) shrink the prompt budget: longer prompts are refused and counted.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from ctxscale.evaluate.settings import Settings, normalized_rope


@dataclass
class Engine(abc.ABC):
    """A loaded lm-eval LM plus what the truncation guard and the records need to know about it."""

    name: ClassVar[str]  # the backend setting that selects this engine
    # Library versions that can change this engine's results (the cache key's part).
    key_versions: ClassVar[tuple[str, ...]] = ("lm_eval", "torch", "transformers")

    lm: Any
    position_limit: int | None  # positions (prompt + generation) the engine can compute, None = max_length
    beyond_context: str  # how this engine runs prompts beyond the model's own limit (recorded)
    details: dict

    @classmethod
    @abc.abstractmethod
    def load(cls, model_dir: Path, config: dict, settings: Settings, max_new_tokens: int) -> Engine:
        """Load the model at ``model_dir`` (its ``config.json`` read as ``config``) with an explicit
        ``max_length``."""

    @classmethod
    def result_affecting(cls, settings: Settings) -> dict[str, Any]:
        """The settings that can change this engine's predictions or scores (the cache key's part)."""
        return {
            "backend": settings.backend,
            "max_length": settings.max_length,
            "dtype": settings.dtype,
            "seed": settings.seed,
            "max_samples": settings.max_samples,
            "rope_scaling": normalized_rope(settings.rope_scaling),
            "revision": settings.revision,
        }

    @abc.abstractmethod
    def batch_size_record(self, settings: Settings) -> int | str:
        """What the result metadata records as ``batch_size``."""

    def built_for(self, settings: Settings) -> bool:
        """Whether this loaded engine is what ``settings`` would load (an engine passed in by a caller)."""
        return self.lm.max_length == settings.max_length

    @abc.abstractmethod
    def count_prompt_tokens(self, prompts: list[str]) -> list[int]:
        """Token counts as the engine encodes each prompt for generation (its ``tok_encode``, BOS included)."""

    def prefix_cache_tokens(self) -> dict[str, int] | None:
        """Running totals of prompt tokens looked up in the engine's prefix cache (``queried``) and of those
        found (``hit``); None: the engine keeps no prefix cache."""
        return None

    def close(self) -> None:
        """Free what the engine holds beyond the interpreter's own memory (nothing by default)."""


def prefix_cache_delta(before: dict | None, after: dict | None) -> dict | None:
    """Prompt tokens submitted, served from the prefix cache and actually prefilled between two readings."""
    if before is None or after is None:
        return None
    queried, hit = after["queried"] - before["queried"], after["hit"] - before["hit"]
    return {"queried_tokens": queried, "cached_tokens": hit, "prefilled_tokens": queried - hit,
            "hit_rate": hit / queried if queried else None}
