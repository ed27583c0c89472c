"""The GPU plan of each evaluate job: its ``max_model_len``, tensor-parallel size and GPU count, derived.

Inputs, all known before a model loads:

- the checkpoint's ``config.json``: layers, attention and KV heads, head size, dtype
  (:class:`ctxscale.plan.architecture.Architecture`);
- the weights' size: the checkpoint's weight files on disk, rescaled from their dtype to the evaluation's
  ``dtype``; before a download, the parameter count from ``config.json`` (:mod:`ctxscale.model_info`) times
  the dtype's size;
- the longest prompt the job will send: the prepared data's ``prompt_tokens`` profile (token count of the
  first k shots as one block, and of the longest query; :func:`ctxscale.datasets.tokenizer.prompt_token_profile`)
  at the largest shot count, plus BOS and a margin of :data:`BOUNDARY_MARGIN` tokens for merges at the
  block/query boundary. Before the data is prepared, the bound ``BOS + (k + 1) × max_length_per_example``
  (every shot and the query pass that length filter) is used instead;
- the generation budget (``max_new_tokens`` of the dataset) and the config's ``evaluation`` values:
  ``max_length`` (the window: longer prompts are refused and counted, never truncated), ``dtype``,
  ``gpu_memory_gib`` (one GPU's memory as ``nvidia-smi`` reports it), ``gpu_memory_utilization`` (vLLM's
  share of it), ``gpu_overhead_gib`` (per GPU: CUDA context, activations of a prefill chunk, CUDA
  graphs; an estimate, documented in config/README.md) and ``max_gpus_per_job``.

The memory model is vLLM's start condition: the KV cache must hold at least one sequence of
``max_model_len`` tokens after the weights and the overhead are placed. Per GPU, with tensor parallelism t::

    weights / t + overhead + max_model_len × 2 × layers × max(1, kv_heads / t) × head_dim × dtype bytes
        <= gpu_memory_gib × gpu_memory_utilization

(KV heads are split across GPUs, or replicated once t exceeds them). The plan takes the smallest t, a
power of two dividing the attention heads, for which this holds; ``max_model_len`` is the longest prompt
plus the generation budget, capped at ``max_length``. The ``hf`` backend runs on one GPU (``device: cuda``)
or none (``device: cpu``) and is checked the same way with t = 1; with ``prefix_reuse`` (ctxscale.evaluate.prefix_reuse)
the finished prompts' caches it retains for the next shot count fill the KV pool left after one working
sequence (``retained_tokens``, which the evaluate step hands the engine as its store's budget). A job that cannot
fit fails before any model loads, with one line naming the model, the memory needed and the memory available.


The plans of every evaluate job of a config (:func:`plan_config`, :func:`format_plan`) are what ``ctxscale plan``
prints (:mod:`ctxscale.plan.cli`); :class:`JobInputs` is what they and the cost (:mod:`ctxscale.plan.cost`) read.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ctxscale.errors import UserError
from ctxscale.plan.architecture import (
    DTYPE_BYTES,
    GIB,
    Architecture,
    architecture_for,
    checkpoint_weight_bytes,
    read_architecture,
    weights_bytes,
)

# Tokens allowed for BPE merges where the query meets the shot block (tokenized apart in the profile).
BOUNDARY_MARGIN = 8
# The config's evaluation keys the plan reads beyond the result-affecting settings.
PLAN_KEYS = ("gpu_memory_gib", "gpu_overhead_gib", "max_gpus_per_job")
# The evaluation settings (results-affecting, passed to the evaluate step anyway) the plan reads.
RESULT_KEYS = ("backend", "device", "dtype", "max_length", "gpu_memory_utilization", "tensor_parallel_size",
               "prefix_reuse")


def longest_prompt_tokens(manifest: Mapping[str, Any], max_shots: int) -> int | None:
    """Longest prompt at ``max_shots`` shots from the manifest's ``prompt_tokens`` profile (None: no profile)."""
    profile = manifest.get("prompt_tokens")
    if not profile:
        return None
    block = profile["shot_block"]
    if max_shots >= len(block):
        raise UserError(
            f"dataset {manifest.get('dataset')}: {max_shots} shots requested, the pool has {len(block) - 1}"
        )
    return int(profile["bos"]) + int(block[max_shots]) + int(profile["max_query"]) + BOUNDARY_MARGIN


def bound_prompt_tokens(max_length_per_example: int, max_shots: int) -> int:
    """Before preparation: every shot and the query pass the length filter, plus BOS."""
    return 1 + (max_shots + 1) * max_length_per_example


@dataclass(frozen=True)
class JobPlan:
    model: str
    dataset: str
    backend: str
    longest_prompt: int  # tokens, BOS included
    prompt_source: str  # "prepared data" or "length-filter bound"
    max_new_tokens: int
    max_model_len: int
    tensor_parallel_size: int
    gpus: int
    weights_gib: float  # per GPU
    kv_gib: float  # one max_model_len sequence, per GPU
    needed_gib: float  # per GPU
    available_gib: float  # per GPU (gpu_memory_gib × utilization); 0 on CPU
    sequences_in_kv: float  # max_model_len sequences the KV pool holds (concurrency at full length)
    retained_tokens: int = 0  # hf prefix reuse: prompt tokens its store can retain beside the working sequence

    def settings_update(self) -> dict[str, int]:
        """The evaluation settings the plan decides: the window and tensor parallel size, and for hf on a GPU the
        reuse store's budget, 0 included (no room, or no prefix reuse), so that every plan of one job has the
        same keys."""
        update = {"max_length": self.max_model_len, "tensor_parallel_size": self.tensor_parallel_size}
        if self.backend == "hf" and self.available_gib > 0:
            update["retained_tokens"] = self.retained_tokens
        return update

    def summary(self) -> str:
        head = (f"{self.model} on {self.dataset}: longest prompt {self.longest_prompt} ({self.prompt_source}), "
                f"max_model_len {self.max_model_len}")  # fmt: skip
        if self.available_gib == 0:
            return f"{head}, {self.gpus} GPU(s) requested, memory not planned (not on a GPU)"
        return (f"{head}, tensor parallel {self.tensor_parallel_size}, {self.gpus} GPU(s), "
                f"{self.needed_gib:.1f} of {self.available_gib:.1f} GiB per GPU")  # fmt: skip


def plan_job(
    *,
    model: str,
    dataset: str,
    settings: Mapping[str, Any],
    arch: Architecture | None,
    weight_bytes: int | None,
    longest_prompt: int,
    prompt_source: str,
    max_new_tokens: int,
) -> JobPlan:
    """Plan one evaluate job (module docstring); ``settings`` is the config's ``evaluation`` subtree (keys it
    lacks take the schema's defaults)."""
    from ctxscale.config import schema_defaults

    settings = {**schema_defaults("evaluation"), **settings}
    window = int(settings["max_length"])
    if window <= max_new_tokens:
        raise UserError(f"max_length {window} leaves no room for {max_new_tokens} generated tokens")
    max_model_len = min(window, longest_prompt + max_new_tokens)
    backend = settings["backend"]
    on_gpu = backend == "vllm" or str(settings["device"]).startswith("cuda")
    common = dict(model=model, dataset=dataset, backend=backend, longest_prompt=longest_prompt,
                  prompt_source=prompt_source, max_new_tokens=max_new_tokens, max_model_len=max_model_len)  # fmt: skip
    if not on_gpu:
        gpus = 0 if settings["gpus"] == "auto" else int(settings["gpus"])
        return JobPlan(**common, tensor_parallel_size=1, gpus=gpus, weights_gib=0.0, kv_gib=0.0, needed_gib=0.0,
                       available_gib=0.0, sequences_in_kv=0.0)  # fmt: skip
    if arch is None:
        raise UserError(f"{model}: the architecture is unknown (no config.json); download the model first")
    dtype = str(settings["dtype"])
    dtype_bytes = DTYPE_BYTES[arch.checkpoint_dtype if dtype == "auto" else dtype]
    weights = weights_bytes(arch, dtype, weight_bytes)
    available = float(settings["gpu_memory_gib"]) * float(settings["gpu_memory_utilization"]) * GIB
    overhead = float(settings["gpu_overhead_gib"]) * GIB
    limit = int(settings["max_gpus_per_job"]) if backend == "vllm" else 1
    fixed = settings["tensor_parallel_size"]
    sizes = arch.parallel_sizes(limit) if fixed == "auto" or backend != "vllm" else [int(fixed)]
    best = None
    for size in sizes:
        kv = max_model_len * arch.kv_bytes_per_token(dtype_bytes, size)
        needed = weights / size + overhead + kv
        best = (size, kv, needed)
        if needed <= available:
            break
    else:
        size, kv, needed = best if best else (1, 0, float("inf"))
        raise UserError(
            f"{model} on {dataset} does not fit: max_model_len {max_model_len} needs {needed / GIB:.1f} GiB per GPU "
            f"at tensor parallel {size} ({weights / size / GIB:.1f} weights + {kv / GIB:.1f} KV + "
            f"{overhead / GIB:.1f} overhead), {available / GIB:.1f} GiB available "
            f"(gpu_memory_gib × gpu_memory_utilization); "
            + ("use more GPUs per job (max_gpus_per_job), larger GPUs, or a smaller max_length"
               if backend == "vllm" else "use backend vllm, which splits the model over GPUs")
        )  # fmt: skip
    kv_pool = available - weights / size - overhead
    requested = settings["gpus"]
    if requested != "auto" and int(requested) < size:
        raise UserError(f"{model} on {dataset}: evaluation.gpus is {requested}, fewer than the {size} GPUs the plan "
                        "needs; set gpus: auto")  # fmt: skip
    return JobPlan(
        **common,
        tensor_parallel_size=size,
        gpus=size if requested == "auto" else int(requested),
        weights_gib=round(weights / size / GIB, 2),
        kv_gib=round(kv / GIB, 2),
        needed_gib=round(needed / GIB, 2),
        available_gib=round(available / GIB, 2),
        sequences_in_kv=round(kv_pool / kv, 2),
        retained_tokens=(int((kv_pool - kv) // arch.kv_bytes_per_token(dtype_bytes))
                         if backend == "hf" and settings["prefix_reuse"] else 0),
    )  # fmt: skip


def plan_from_files(
    *, model: str, checkpoint_dir: str | Path, data_dir: str | Path, shots: list[int], settings: Mapping[str, Any]
) -> JobPlan:
    """The plan of one job from its inputs on disk (what the evaluate rule and step call)."""
    checkpoint_dir, data_dir = Path(checkpoint_dir), Path(data_dir)
    manifest = json.loads((data_dir / "manifest.json").read_text())
    longest = longest_prompt_tokens(manifest, max(shots))
    source = "prepared data"
    if longest is None:  # data prepared before profiles existed: plan for the whole window
        longest, source = int(settings["max_length"]), "window (no token profile in the manifest)"
    arch = read_architecture(checkpoint_dir) if (checkpoint_dir / "config.json").is_file() else None
    return plan_job(
        model=model, dataset=str(manifest["dataset"]), settings=settings, arch=arch,
        weight_bytes=checkpoint_weight_bytes(checkpoint_dir) if arch else None,
        longest_prompt=longest, prompt_source=source, max_new_tokens=int(manifest["max_new_tokens"]),
    )  # fmt: skip


def planning_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the plan reads of a validated config: the ``evaluation`` subtree (rules pass only this)."""
    return {k: config["evaluation"][k] for k in (*RESULT_KEYS, "gpus", *PLAN_KEYS)}

@dataclass(frozen=True)
class JobInputs:
    """What the plan (and the cost, :mod:`ctxscale.plan.cost`) of one evaluate job reads, before it is planned."""

    model: str
    dataset: str
    family: str
    arch: Architecture | None
    weight_bytes: int | None
    data_dir: Path
    manifest: dict | None  # None: not prepared yet
    longest_prompt: int
    prompt_source: str
    max_new_tokens: int

    def plan(self, settings: Mapping[str, Any]) -> JobPlan:
        return plan_job(model=self.model, dataset=self.dataset, settings=settings, arch=self.arch,
                        weight_bytes=self.weight_bytes, longest_prompt=self.longest_prompt,
                        prompt_source=self.prompt_source, max_new_tokens=self.max_new_tokens)  # fmt: skip


def evaluate_job_inputs(config: dict, *, architectures: bool | None = None) -> list[JobInputs]:
    """Every evaluate job of a validated config with its inputs (prepared data where present, else the bound);
    ``architectures``: read each model's config.json (default: only when the jobs run on a GPU)."""
    from ctxscale import config as ctxconfig

    settings = planning_settings(config)
    shots = sorted(config["shots"])
    read_arch = needs_gpu(settings) if architectures is None else architectures
    jobs = []
    for model in ctxconfig.enabled_models(config):
        spec = config["models"][model]
        arch, weight_bytes, _ = architecture_for(config, model) if read_arch else (None, None, "")
        for dataset in ctxconfig.dataset_names(config):
            data_dir = Path("resources/data") / spec["family"] / dataset
            manifest_path = data_dir / "manifest.json"
            manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else None
            longest = longest_prompt_tokens(manifest, max(shots)) if manifest else None
            source = "prepared data"
            if longest is None:
                longest = bound_prompt_tokens(config["data"]["max_length_per_example"], max(shots))
                source = "length-filter bound"
            max_new = int(manifest["max_new_tokens"]) if manifest else _max_new_tokens(config, dataset)
            jobs.append(JobInputs(model=model, dataset=dataset, family=spec["family"], arch=arch,
                                  weight_bytes=weight_bytes, data_dir=data_dir, manifest=manifest,
                                  longest_prompt=longest, prompt_source=source, max_new_tokens=max_new))  # fmt: skip
    return jobs


def plan_config(config: dict) -> list[JobPlan]:
    """The plan of every evaluate job of a validated config (prepared data where present, else the bound)."""
    settings = planning_settings(config)
    return [job.plan(settings) for job in evaluate_job_inputs(config)]


def needs_gpu(settings: Mapping[str, Any]) -> bool:
    return settings["backend"] == "vllm" or str(settings["device"]).startswith("cuda")


def _max_new_tokens(config: dict, dataset: str) -> int:
    """The generation budget before preparation (synthetic budgets depend on the drawn rule: bounded)."""
    if config["data"]["source"] == "synthetic":
        return int(config["data"]["max_length_per_example"])
    from ctxscale.datasets.registry import get_spec

    return int(get_spec(dataset).max_new_tokens)


def format_plan(plans: list[JobPlan], collapse: bool = True) -> str:
    """A Markdown table; with ``collapse``, a model's jobs with the same plan share a row (longest prompt: max)."""
    import pandas as pd

    frame = pd.DataFrame([asdict(p) for p in plans])
    outcome = ["max_model_len", "tensor_parallel_size", "gpus", "weights_gib", "kv_gib", "needed_gib",
               "available_gib", "sequences_in_kv", "retained_tokens", "prompt_source"]  # fmt: skip
    if not collapse:
        return frame[["model", "dataset", "longest_prompt", "max_new_tokens", *outcome]].to_markdown(index=False)
    grouped = frame.groupby(["model", *outcome], sort=False, dropna=False).agg(
        datasets=("dataset", lambda names: f"{len(names)} datasets" if len(names) > 3 else ", ".join(names)),
        longest_prompt=("longest_prompt", "max"),
    )
    return grouped.reset_index()[["model", "datasets", "longest_prompt", *outcome]].to_markdown(index=False)


