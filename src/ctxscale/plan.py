"""The GPU plan of each evaluate job: its ``max_model_len``, tensor-parallel size and GPU count, derived.

Inputs, all known before a model loads:

- the checkpoint's ``config.json``: layers, attention and KV heads, head size, dtype (:class:`Architecture`);
- the weights' size: the checkpoint's weight files on disk, rescaled from their dtype to the evaluation's
  ``dtype``; before a download, the parameter count from ``config.json`` (:mod:`ctxscale.compute`) times
  the dtype's size;
- the longest prompt the job will send: the prepared data's ``prompt_tokens`` profile (token count of the
  first k shots as one block, and of the longest query; :func:`ctxscale.datasets.prompt_token_profile`)
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
or none (``device: cpu``) and is checked the same way with t = 1; with ``prefix_reuse`` (ctxscale.prefix_reuse)
the finished prompts' caches it retains for the next shot count fill the KV pool left after one working
sequence (``retained_tokens``; the engine's own bound, sized at load from the free memory). A job that cannot
fit fails before any model loads, with one line naming the model, the memory needed and the memory available.

``ctxscale plan --configfile config/config.yaml`` prints the plan of every evaluate job as a table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

import yaml

from ctxscale.errors import UserError

from ctxscale.steps import cli_main

GIB = 2**30
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
# Tokens allowed for BPE merges where the query meets the shot block (tokenized apart in the profile).
BOUNDARY_MARGIN = 8
# The config's evaluation keys the plan reads beyond the result-affecting settings.
PLAN_KEYS = ("gpu_memory_gib", "gpu_overhead_gib", "max_gpus_per_job")
# The evaluation settings (results-affecting, passed to the evaluate step anyway) the plan reads.
RESULT_KEYS = ("backend", "device", "dtype", "max_length", "gpu_memory_utilization", "tensor_parallel_size")


@dataclass(frozen=True)
class Architecture:
    """What the memory of a decoder-only checkpoint depends on (from its ``config.json``)."""

    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    checkpoint_dtype: str
    params: int | None  # all parameters, counted from the config (None: unknown model type)
    # what the training plan (ctxscale.plan_extension) also reads
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
        from ctxscale.compute import non_embedding_params_from_config, total_params_from_config

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
        """The evaluation settings the plan decides."""
        return {"max_length": self.max_model_len, "tensor_parallel_size": self.tensor_parallel_size}

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


# ---------------------------------------------------------------------------------------------- CLI


def _architecture_for(config: dict, model: str) -> tuple[Architecture | None, int | None, str]:
    """Architecture and weight bytes of a model: its checkpoint if present, else the hub's config.json."""
    spec = config["models"][model]
    checkpoint = Path("resources/models") / model
    if (checkpoint / "config.json").is_file():
        return read_architecture(checkpoint), checkpoint_weight_bytes(checkpoint), "checkpoint"
    if spec["source"] == "local" and (Path(spec["path"]) / "config.json").is_file():  # a folder to be copied
        return read_architecture(spec["path"]), checkpoint_weight_bytes(spec["path"]), "local folder"
    if spec["source"] == "extend":  # an extension changes RoPE, not the shapes: the base's architecture
        arch, _, where = _architecture_for(config, spec["extends"])
        return arch, None, f"{where} of {spec['extends']}" if arch else where
    if spec["source"] != "hf":
        return None, None, f"not built or converted yet (source {spec['source']})"
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(spec["repo_id"], "config.json", revision=spec.get("revision", "main"))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError) as error:
        raise UserError(
            f"{model}: not downloaded (resources/models/{model}) and its config.json could not be fetched "
            f"from {spec['repo_id']}: {str(error).splitlines()[0]}"
        ) from None
    return read_architecture(Path(path).parent), None, "hub config.json"


def plan_config(config: dict) -> list[JobPlan]:
    """The plan of every evaluate job of a validated config (prepared data where present, else the bound)."""
    from ctxscale import config as ctxconfig

    settings = planning_settings(config)
    shots = sorted(config["shots"])
    plans = []
    for model in ctxconfig.enabled_models(config):
        spec = config["models"][model]
        arch, weight_bytes, _ = _architecture_for(config, model) if _needs_gpu(settings) else (None, None, "")
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
            plans.append(plan_job(model=model, dataset=dataset, settings=settings, arch=arch,
                                  weight_bytes=weight_bytes, longest_prompt=longest, prompt_source=source,
                                  max_new_tokens=max_new))  # fmt: skip
    return plans


def _needs_gpu(settings: Mapping[str, Any]) -> bool:
    return settings["backend"] == "vllm" or str(settings["device"]).startswith("cuda")


def extension_gpus(config: dict, model: str, base_checkpoint_dir: str | Path) -> int:
    """GPUs of one extend job (the rule's ``gpu`` resource): ``extension.gpus`` when fixed (checked against the
    plan), else the plan's (:mod:`ctxscale.plan_extension`); 0 on a CPU-only run (``extension.gpus: 0``, or auto
    with ``evaluation`` on the CPU, the rule of the evaluate jobs). Raises FileNotFoundError while the base checkpoint's
    config.json does not exist yet (Snakemake then asks again when the job is ready) and a one-line UserError
    when the job cannot fit."""
    from ctxscale import plan_extension as extension

    settings = extension.extension_settings(config)
    if settings["gpus"] == 0 or (settings["gpus"] == "auto" and not settings["on_gpu"]):
        return 0
    return int(_extension_plan_from_files(config, model, base_checkpoint_dir).gpus)


def extension_mem_mb(config: dict, model: str, base_checkpoint_dir: str | Path | None = None) -> int:
    """Host memory (MB) of one extend job, first attempt (the rule multiplies by the attempt): the larger of
    ``extension.mem_mb`` and the plan's host memory (offloaded fp32 state, a loading copy, the processes; all of
    it on a CPU-only run). ``base_checkpoint_dir`` defaults to the workflow's resources/models/<base>; raises
    FileNotFoundError while it lacks config.json."""
    if base_checkpoint_dir is None:
        base_checkpoint_dir = Path("resources/models") / config["models"][model]["extends"]
    planned = _extension_plan_from_files(config, model, base_checkpoint_dir).host_gib or 0.0
    return max(int(config["extension"]["mem_mb"]), math.ceil(planned * GIB / 1e6))


def _extension_plan_from_files(config: dict, model: str, base_checkpoint_dir: str | Path):
    from ctxscale import plan_extension as extension
    from ctxscale.config import extension_spec

    if not (Path(base_checkpoint_dir) / "config.json").is_file():  # Snakemake: <TBD> until the input exists
        raise FileNotFoundError(2, "not yet created", str(base_checkpoint_dir))
    entry = config["models"][model]
    return extension.plan_extension_from_files(
        model=model, base=entry["extends"], base_checkpoint_dir=base_checkpoint_dir, n_ctx=int(entry["n_ctx"]),
        spec=extension_spec(config, model), settings=extension.extension_settings(config),
        rope_scaling=entry.get("rope_scaling"),
    )  # fmt: skip


def _max_new_tokens(config: dict, dataset: str) -> int:
    """The generation budget before preparation (synthetic budgets depend on the drawn rule: bounded)."""
    if config["data"]["source"] == "synthetic":
        return int(config["data"]["max_length_per_example"])
    from ctxscale.datasets import get_spec

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctxscale plan",
        description="Print the GPU plan of every evaluate job (max_model_len, tensor parallel size, GPUs) and of "
        "every extend job (GPUs, per-GPU memory; ctxscale.plan_extension) for a workflow config. Uses prepared "
        "data and downloaded checkpoints where present; otherwise the length-filter bound and the hub's "
        "config.json.",
    )
    parser.add_argument("--configfile", default="config/config.yaml", help="workflow config (default: the paper)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override an evaluation value, e.g. --set gpu_memory_gib=139.8; extension.KEY sets "
                        "an extension value (extension.gpus=4), extend.KEY a recipe value of every extend job "
                        "(extend.cpu_offload=true) (repeatable)")  # fmt: skip
    parser.add_argument("--per-dataset", action="store_true", help="one row per job instead of grouped rows")
    parser.add_argument("--json", action="store_true", help="print the plans as JSON lines (key job: evaluate|extend)")
    return parser


def _apply_overrides(config: dict, items: list[str]) -> dict[str, Any]:
    """--set values into ``config`` (evaluation.KEY or extension.KEY); returns the extend.KEY recipe overrides."""
    from ctxscale.config import schema_defaults

    recipe: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        section, dot, name = key.rpartition(".")
        section = section if dot else "evaluation"
        known = schema_defaults("extend_spec") if section == "extend" else config.get(section)
        if not sep or section not in ("evaluation", "extension", "extend") or name not in (known or {}):
            raise UserError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(config['evaluation'])}, "
                            "or extension.KEY, or extend.KEY (a recipe key)")  # fmt: skip
        target = recipe if section == "extend" else config[section]
        target[name] = yaml.safe_load(value)  # as the YAML file would read it
    return recipe


@cli_main
def main(argv: list[str] | None = None) -> int:
    from ctxscale import config as ctxconfig
    from ctxscale import plan_extension as extension

    args = build_parser().parse_args(argv)
    config = ctxconfig.load_config(args.configfile)
    recipe = _apply_overrides(config, args.set)
    config = ctxconfig.validate_config(config)
    plans = plan_config(config)
    extend_plans = extension.plan_extension_config(config, recipe)
    if args.json:
        for p in plans:
            print(json.dumps({"job": "evaluate", **asdict(p)}, sort_keys=True))
        for e in extend_plans:
            print(json.dumps({"job": "extend", **asdict(e)}, sort_keys=True))
        return 0
    print(format_plan(plans, collapse=not args.per_dataset))
    if extend_plans:
        print(f"\nextend jobs (per-GPU GiB; {extension.__name__} documents the terms):\n")
        print(extension.format_extension_plan(extend_plans))
    return 0


if __name__ == "__main__":
    sys.exit(main())
