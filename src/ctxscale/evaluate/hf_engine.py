"""The ``hf`` engine: lm-eval's ``HFLM`` (transformers), batches of ``batch_size`` prompts; with the setting
``prefix_reuse`` (the default), :class:`ctxscale.evaluate.prefix_reuse.PrefixReuseHFLM`, which prefills each
shared shot prefix once (batch 1 with a cropped KV cache, so ``batch_size`` does not reach the model).

transformers computes RoPE cos/sin on the fly from the position ids (plain, linear and YaRN alike), so any
position up to ``max_length`` runs past the model's own limit; transformers only logs a reminder. A
``rope_scaling`` setting is applied to the loaded config.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ctxscale.errors import UserError
from ctxscale.evaluate.engine import Engine
from ctxscale.evaluate.settings import Settings, normalized_rope
from ctxscale.numerics import pin_cpu_code_paths

log = logging.getLogger("ctxscale.evaluate")


class HfEngine(Engine):
    name = "hf"

    @classmethod
    def lm_class(cls, settings: Settings) -> type:
        """The lm-eval LM class this engine loads: HFLM, or its prefix-reusing subclass."""
        if settings.prefix_reuse:
            from ctxscale.evaluate.prefix_reuse import PrefixReuseHFLM

            return PrefixReuseHFLM
        from lm_eval.models.huggingface import HFLM

        return HFLM

    @classmethod
    def load(cls, model_dir: Path, config: dict, settings: Settings, max_new_tokens: int) -> HfEngine:
        import torch
        import transformers

        if settings.device.startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"device {settings.device} requested but torch has no CUDA device here; set device: cpu")
        if settings.device == "cpu":
            pin_cpu_code_paths()  # greedy decoding's near-ties then break the same way on every machine
        extra: dict[str, Any] = {}
        details: dict[str, Any] = {"device": settings.device, "prefix_reuse": settings.prefix_reuse}
        if settings.rope_scaling is not None:
            hf_config = transformers.AutoConfig.from_pretrained(model_dir)
            current = dict(getattr(hf_config, "rope_parameters", None) or {})
            wanted = {**current, **normalized_rope(settings.rope_scaling)}
            if wanted != current:
                log.info("applying rope_scaling %s over the checkpoint's %s", wanted, current)
                hf_config.rope_parameters = wanted
                extra["config"] = hf_config
            details["rope_parameters"] = wanted
        if settings.prefix_reuse:
            extra["retained_tokens"] = settings.retained_tokens  # the plan's budget; None: sized at load
        # device must be explicit: on a CPU-only torch, transformers' loading warm-up otherwise calls into CUDA.
        lm = cls.lm_class(settings)(
            pretrained=str(model_dir),
            device=settings.device,
            dtype=settings.dtype,
            batch_size=settings.batch_size,
            max_length=settings.max_length,
            trust_remote_code=False,
            **extra,
        )
        return cls(
            lm=lm,
            position_limit=None,
            beyond_context="transformers computes RoPE on the fly for every position up to max_length",
            details=details,
        )

    @classmethod
    def result_affecting(cls, settings: Settings) -> dict[str, Any]:
        affecting = super().result_affecting(settings) | {
            "device": settings.device.split(":")[0],  # which GPU does not matter, CPU vs GPU numerics do
        }
        if settings.prefix_reuse:  # one prompt at a time: batch_size does not reach the model
            return affecting | {"prefix_reuse": True}
        return affecting | {"batch_size": settings.batch_size}  # the key of caches made before prefix reuse

    def batch_size_record(self, settings: Settings) -> int:
        return 1 if settings.prefix_reuse else settings.batch_size

    def built_for(self, settings: Settings) -> bool:
        return (super().built_for(settings) and type(self.lm) is self.lm_class(settings)
                and (settings.prefix_reuse or int(self.lm.batch_size) == settings.batch_size))

    def count_prompt_tokens(self, prompts: list[str]) -> list[int]:
        return [len(self.lm.tok_encode(prompt)) for prompt in prompts]
