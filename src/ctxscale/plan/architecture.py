"""A checkpoint's shapes and size, all the plans read before a model loads.

- :class:`Architecture`: what memory and compute depend on, from a ``config.json`` (layers, attention and KV
  heads, head size, dtype, widths; parameters counted by :mod:`ctxscale.model_info`);
- the weights' size: the checkpoint's weight files on disk (:func:`checkpoint_weight_bytes`), rescaled from
  their dtype to the run's, else the parameter count times the dtype's size (:func:`weights_bytes`);
- :func:`architecture_for`: a workflow model's architecture before anything is built: its checkpoint, a local
  folder, the base of an extension, the hub's ``config.json``, or offline the package's copy
  (:func:`shipped_config`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from ctxscale.errors import UserError

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")


@dataclass(frozen=True)
class Architecture:
    """What the memory of a decoder-only checkpoint depends on (from its ``config.json``)."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    checkpoint_dtype: str
    params: int | None  # all parameters, counted from the config (None: unknown model type)
    # what the training plan (ctxscale.plan.extension) and the cost (ctxscale.plan.cost) also read
    hidden: int = 0
    intermediate: int | None = None  # MLP width (None: not in the config)
    vocab: int | None = None
    non_embedding_params: int | None = None  # decoder layers + final norm (None: unknown model type)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Architecture:
        config = config.get("text_config") or config  # multimodal wrappers keep the decoder there
        try:
            hidden = int(config["hidden_size"])
            layers = int(config["num_hidden_layers"])
            heads = int(config["num_attention_heads"])
        except (KeyError, TypeError, ValueError) as error:
            raise UserError(f"config.json lacks a usable {error.args[0] if error.args else 'field'}") from None
        from ctxscale.model_info import non_embedding_params_from_config, total_params_from_config

        try:
            params = total_params_from_config(dict(config))
            non_embedding = non_embedding_params_from_config(dict(config))
        except (UserError, KeyError):
            params = non_embedding = None
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32")
        return cls(
            layers=layers,
            heads=heads,
            kv_heads=int(config.get("num_key_value_heads") or heads),
            head_dim=int(config.get("head_dim") or hidden // heads),
            checkpoint_dtype=dtype if dtype in DTYPE_BYTES else "float32",
            params=params,
            hidden=hidden,
            intermediate=int(config["intermediate_size"]) if config.get("intermediate_size") else None,
            vocab=int(config["vocab_size"]) if config.get("vocab_size") else None,
            non_embedding_params=non_embedding,
        )

    def kv_bytes_per_token(self, dtype_bytes: int, tensor_parallel: int = 1) -> int:
        """KV cache bytes per token on one GPU (keys and values of every layer)."""
        kv_heads_per_gpu = max(1, self.kv_heads // tensor_parallel)
        return 2 * self.layers * kv_heads_per_gpu * self.head_dim * dtype_bytes

    def parallel_sizes(self, limit: int) -> list[int]:
        """Tensor-parallel sizes vLLM accepts: powers of two dividing the heads, KV heads split or replicated."""
        sizes = []
        size = 1
        while size <= limit:
            kv_ok = self.kv_heads % size == 0 if size <= self.kv_heads else size % self.kv_heads == 0
            if self.heads % size == 0 and kv_ok:
                sizes.append(size)
            size *= 2
        return sizes


def read_architecture(checkpoint_dir: str | Path) -> Architecture:
    path = Path(checkpoint_dir) / "config.json"
    try:
        return Architecture.from_config(json.loads(path.read_text()))
    except json.JSONDecodeError as error:
        raise UserError(f"cannot read {path}: {error}") from None


def checkpoint_weight_bytes(checkpoint_dir: str | Path) -> int | None:
    """Bytes of the weight files vLLM/transformers would load (safetensors preferred); None if there are none."""
    files = [p for p in Path(checkpoint_dir).iterdir() if p.is_file()]
    for suffix in WEIGHT_SUFFIXES:
        chosen = [p for p in files if p.name.endswith(suffix) and not p.name.startswith("training_args")]
        if chosen:
            return sum(p.stat().st_size for p in chosen)
    return None


def weights_bytes(arch: Architecture, dtype: str, disk_bytes: int | None) -> int:
    """Weights in GPU memory at ``dtype`` ("auto": the checkpoint's): disk size rescaled, else params × size."""
    run_dtype = arch.checkpoint_dtype if dtype == "auto" else dtype
    if disk_bytes is not None:
        return math.ceil(disk_bytes * DTYPE_BYTES[run_dtype] / DTYPE_BYTES[arch.checkpoint_dtype])
    if arch.params is None:
        raise UserError("the weights' size is unknown: no weight files and a model type ctxscale cannot count")
    return arch.params * DTYPE_BYTES[run_dtype]

def architecture_for(config: dict, model: str) -> tuple[Architecture | None, int | None, str]:
    """Architecture and weight bytes of a model: its checkpoint if present, else the hub's config.json."""
    spec = config["models"][model]
    checkpoint = Path("resources/models") / model
    if (checkpoint / "config.json").is_file():
        return read_architecture(checkpoint), checkpoint_weight_bytes(checkpoint), "checkpoint"
    if spec["source"] == "local" and (Path(spec["path"]) / "config.json").is_file():  # a folder to be copied
        return read_architecture(spec["path"]), checkpoint_weight_bytes(spec["path"]), "local folder"
    if spec["source"] == "extend":  # an extension changes RoPE, not the shapes: the base's architecture
        arch, _, where = architecture_for(config, spec["extends"])
        return arch, None, f"{where} of {spec['extends']}" if arch else where
    if spec["source"] != "hf":
        return None, None, f"not built or converted yet (source {spec['source']})"
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(spec["repo_id"], "config.json", revision=spec.get("revision", "main"))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        shipped = shipped_config(spec.get("base", ""))
        if shipped is not None:  # offline: the package's copy of the family's public config (same shapes)
            return Architecture.from_config(shipped), None, f"shipped config.json of {spec['base']}"
        raise UserError(
            f"{model}: not downloaded (resources/models/{model}) and its config.json could not be fetched "
            f"from {spec['repo_id']}: {str(error).splitlines()[0]}"
        ) from None
    return read_architecture(Path(path).parent), None, "hub config.json"

def shipped_config(base: str) -> dict | None:
    """The package's copy of a public ``config.json`` for a model ``base`` (``ctxscale/model_configs/<base>.json``,
    sources in the README there), or None: what the plan and the cost read offline before any download."""
    from importlib.resources import files

    resource = files("ctxscale") / "model_configs" / f"{base}.json"
    return json.loads(resource.read_text()) if base and resource.is_file() else None

