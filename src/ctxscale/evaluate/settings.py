"""The evaluation settings: the config's ``evaluation`` subtree plus ``revision``, ``n_ctx`` and ``rope_scaling``
of the model (``--settings`` JSON), their defaults and their checks; unknown keys are refused."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ctxscale.errors import UserError


def _default_settings() -> dict[str, Any]:
    """The schema's ``evaluation`` defaults (minus job sizing, config.EVALUATION_RESOURCE_KEYS) and the model
    fields every record carries: revision (the schema's model default), n_ctx and rope_scaling (none)."""
    from ctxscale.config import EVALUATION_RESOURCE_KEYS, schema_defaults

    settings = {k: v for k, v in schema_defaults("evaluation").items() if k not in EVALUATION_RESOURCE_KEYS}
    return {**settings, "revision": schema_defaults("model")["revision"], "n_ctx": None, "rope_scaling": None}


# backend, max_length (explicit window, never inferred), batch_size (fixed, never "auto": scores depend slightly
# on it), dtype, device (hf; vLLM picks GPUs via CUDA_VISIBLE_DEVICES), seed, tensor_parallel_size (vllm;
# "auto" is resolved by the job plan), gpu_memory_utilization, enable_prefix_caching, prefix_reuse (hf), block_size, enforce_eager,
# max_samples, retained_tokens (hf prefix reuse; set by the job's plan); see src/ctxscale/schemas/config.schema.yaml for each one's meaning and default.
DEFAULT_SETTINGS: dict[str, Any] = _default_settings()


def _backends() -> tuple[str, ...]:
    """The schema's names of the engines (tests/test_evaluate.py checks they are the keys of
    ctxscale.evaluate.engines.ENGINES; read from the schema so that this module imports no engine)."""
    from ctxscale.config import load_schema

    return tuple(load_schema()["properties"]["evaluation"]["properties"]["backend"]["enum"])


BACKENDS = _backends()
DTYPES = ("auto", "bfloat16", "float16", "float32")


@dataclass(frozen=True)
class Settings:
    backend: str  # the engine: a key of ctxscale.evaluate.engines.ENGINES
    max_length: int
    batch_size: int
    dtype: str
    device: str
    seed: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    enable_prefix_caching: bool
    prefix_reuse: bool
    block_size: int | None
    enforce_eager: bool
    revision: str
    n_ctx: int | None
    rope_scaling: dict | None
    max_samples: int | None
    retained_tokens: int | None  # hf prefix reuse: the store's budget (the plan's, or sized at load when None)

    @classmethod
    def from_mapping(cls, values: dict[str, Any] | None) -> Settings:
        values = dict(values or {})
        unknown = sorted(set(values) - set(DEFAULT_SETTINGS))
        if unknown:
            raise UserError(f"unknown evaluation setting {unknown[0]!r} (known: {', '.join(DEFAULT_SETTINGS)})")
        merged = {**DEFAULT_SETTINGS, **values}

        def positive_int(key: str, allow_none: bool = False) -> None:
            value = merged[key]
            if value is None and allow_none:
                return
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"evaluation setting {key} must be a positive integer, got {value!r}")

        if merged["backend"] not in BACKENDS:
            raise UserError(
                f"evaluation setting backend must be one of {', '.join(BACKENDS)}, got {merged['backend']!r}"
            )
        if merged["dtype"] not in DTYPES:
            raise UserError(f"evaluation setting dtype must be one of {', '.join(DTYPES)}, got {merged['dtype']!r}")
        for key in ("max_length", "batch_size"):
            positive_int(key)
        if merged["tensor_parallel_size"] != "auto":
            positive_int("tensor_parallel_size")
        if isinstance(merged["seed"], bool) or not isinstance(merged["seed"], int):
            raise UserError(f"evaluation setting seed must be an integer, got {merged['seed']!r}")
        positive_int("max_samples", allow_none=True)
        positive_int("n_ctx", allow_none=True)
        positive_int("block_size", allow_none=True)
        retained = merged["retained_tokens"]
        if retained is not None and (isinstance(retained, bool) or not isinstance(retained, int) or retained < 0):
            raise UserError(f"evaluation setting retained_tokens must be null or an integer >= 0, got {retained!r}")
        device = merged["device"]
        if not isinstance(device, str) or not (device == "cpu" or device.startswith("cuda")):
            raise UserError(f"evaluation setting device must be cpu, cuda or cuda:N, got {merged['device']!r}")
        for key in ("enable_prefix_caching", "enforce_eager", "prefix_reuse"):
            if not isinstance(merged[key], bool):
                raise UserError(f"evaluation setting {key} must be true or false")
        utilization = merged["gpu_memory_utilization"]
        if isinstance(utilization, bool) or not isinstance(utilization, (int, float)) or not 0 < utilization <= 1:
            raise UserError(f"evaluation setting gpu_memory_utilization must be in (0, 1], got {utilization!r}")
        rope = merged["rope_scaling"]
        if rope is not None and (not isinstance(rope, dict) or not ("rope_type" in rope or "type" in rope)):
            raise UserError("evaluation setting rope_scaling must be null or a mapping with rope_type")
        if not isinstance(merged["revision"], str) or not merged["revision"]:
            raise UserError("evaluation setting revision must be a non-empty string")
        merged["gpu_memory_utilization"] = float(utilization)
        if merged["tensor_parallel_size"] == "auto":
            # The job's plan (--plan, ctxscale.plan; the workflow always plans) replaces auto by the smallest size
            # that fits; evaluating without a plan uses one GPU.
            merged["tensor_parallel_size"] = 1
        return cls(**merged)

    def as_dict(self) -> dict[str, Any]:
        return {key: getattr(self, key) for key in DEFAULT_SETTINGS}


def normalized_rope(rope: dict | None) -> dict | None:
    """A rope_scaling mapping with ``rope_type`` (older configs say ``type``)."""
    if rope is None:
        return None
    rope = dict(rope)
    if "type" in rope:
        rope.setdefault("rope_type", rope.pop("type"))
    return rope
