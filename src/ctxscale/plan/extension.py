"""The GPU plan of each context-extension job (``python -m ctxscale.extend``): its GPU count, derived.

An extend job trains every parameter of a decoder-only model at its new context length ``n_ctx`` on one
node: G processes under torchrun, one GPU each, FSDP2 sharding every decoder layer (and the root module:
embedding, final norm, LM head), bf16 compute over fp32 master weights, fp32 gradient reduction, AdamW
state in fp32, activation checkpointing per decoder layer, optional FSDP2 CPU offload of parameters,
gradients and optimizer state, and a chunked loss (the LM head and cross-entropy over
``loss_chunk_tokens`` positions at a time). Data parallelism only: every process runs its own
``micro_batch`` sequences of ``n_ctx`` tokens, so activations do not shrink with G; the sharded state does.

Inputs, all known before a model loads: the base model's ``config.json``
(:class:`ctxscale.plan.architecture.Architecture`; parameters counted by :mod:`ctxscale.model_info`), ``n_ctx``
of the extended model, its recipe (``models.<m>.extend`` over the schema's ``$defs/extend_spec`` defaults) and
the config's GPU keys (``evaluation.gpu_memory_gib``, ``gpu_overhead_gib``, ``max_gpus_per_job``; ``extension.gpus``).

Notation: N all parameters; P one decoder layer's parameters ((N_non-embedding - hidden) / layers); R the
rest (N - layers x P: embedding, LM head unless tied, final norm); G processes; T = micro_batch x n_ctx
tokens per forward pass; h hidden size; I MLP width; V vocabulary; q = heads x head_dim, k = KV heads x
head_dim (attention widths); a = 2 bytes (bf16 compute) or 4 (fp32); u = 4 bytes when a = 2 (an fp32 copy
bf16 compute makes that fp32 compute does not), else 0. Per GPU, in bytes:

- **params** 4 N / G: the fp32 master shard (0 with ``cpu_offload``: it lives on the host).
- **grads** 4 N / G: the fp32 reduced gradient shard (0 with offload).
- **optimizer** 8 N / G: AdamW's exp_avg and exp_avg_sq in fp32 (0 with offload: the step runs on the CPU).
- **gathered** P (2 a + a + u) + R (a + a + u): the all-gathered working set. Two decoder layers'
  parameters in compute dtype (the running one and the one FSDP2 prefetches), one layer's unsharded
  gradient (compute dtype, plus its fp32 copy for the fp32 reduce-scatter), and the root group (embedding,
  LM head, final norm) with its gradient, unsharded through forward and backward (FSDP2 keeps the root
  gathered after forward). The same with offload: the all-gather targets the GPU.
- **saved**, the activations kept through the whole step. With checkpointing: T (a h x layers + K), one
  hidden state per decoder layer (each checkpoint's input) plus K = (4 + a) h + 4 + 2 head_dim a: what the
  final RMSNorm keeps (fp32 input copy, normed output the loss chunks read, fp32 rsqrt) and RoPE's cos and
  sin, shared by the layers. Without checkpointing: T (layers x S + K), every layer's full saved set S.
- **layer**, one decoder layer's backward: T (S + B) with checkpointing (its forward recomputed, then the
  backward), T B without (S is already in saved). S, the bytes a Llama-layout layer saves per token:
  2 ((4 + 2 a) h + 4) for the two RMSNorms (fp32 input copy, normed input of the weight product, the product
  the projections read, fp32 rsqrt), a (2 q + 2 k) for q and k after RoPE, v and the attention output (which
  o_proj reads as it is), 4 x heads for the attention's fp32 log-sum-exp (SDPA/flash attention keep O(T) per
  layer, never T x T), 4 a I for the MLP (gate, SiLU(gate), up, their product). S is what autograd saves in a
  transformers LlamaDecoderLayer, byte for byte (a test counts it). B = a (I + 2 h), the backward's own
  tensors at its peak: the gradient of the MLP product and of the incoming and outgoing hidden state (each
  node frees what it saved as it runs, so the gradients of gate and up replace saved tensors). Measured on the
  CPU (glibc's allocator counters, a test): S + B leans 2-6% above the peak of a checkpointed layer's
  backward; the attention backward, after the MLP's tensors are freed, holds less (flash's fp32 dq accumulator is 4 h
  per token < 4 a I).
- **loss** C V (a + 4 + 4 + u) + T h a, C = min(loss_chunk_tokens, T) (T when null): one chunk's logits in
  compute dtype, their fp32 copy, fp32 log-softmax and its fp32 gradient (cross-entropy over upcast logits;
  measured on the CPU, a test: 11.9 bytes a logit when the logits are a temporary, 13.9 when a variable holds
  them, against the 14 counted), and the gradient of the final hidden states the chunks fill.
- **overhead**: ``evaluation.gpu_overhead_gib`` (CUDA context, NCCL buffers, cuBLAS and attention-kernel
  workspaces, allocator fragmentation).

Needed = params + grads + optimizer + gathered + saved + max(layer, loss) + overhead: the loss runs before the
first layer's backward and they never coexist. ``eager`` attention (not auto, sdpa or flash) materializes
T x n_ctx scores: it adds heads x n_ctx x (4 + a) per token to S (and drops the log-sum-exp; K and V are
repeated to every head, k = q), and the a x micro_batch x n_ctx^2 causal mask to saved. Available =
``gpu_memory_gib``, the whole GPU (training has no vLLM-style utilization share; the overhead is the
reserve). The plan takes the smallest power of two G <= ``max_gpus_per_job`` (one node) for which needed <=
available and ``global_batch`` is a multiple of micro_batch x G (gradient accumulation makes up the rest); a
fixed ``extension.gpus`` is checked as given. With offload the GPU holds no sharded state, so the smallest G
is 1 whenever anything fits (fix ``extension.gpus`` for speed). When no G fits, the job fails before any model
loads with one line: the model, the memory needed at the largest G and the memory available, and what to
change (cpu_offload, micro_batch, loss_chunk_tokens, activation_checkpointing).

Host memory of the node (``extension_mem_mb``): 16 N with offload (fp32 parameters, gradients and AdamW state
of the whole model, over all processes) + 4 N (one fp32 copy of the base while it loads and is sharded; add
(G - 1) x 4 N if every process loads its own) + :data:`PROCESS_HOST_GIB` per process (Python, CUDA and NCCL
libraries, data loading). A CPU-only run (``extension.gpus: 0``, or auto with ``evaluation`` on the CPU, the
evaluate jobs' rule) holds everything on the host: needed at G = 1 without offload, plus the loading copy and
one process. The checkpoint writer's staging copies are not counted (torch distributed checkpoint writes
tensor by tensor).

This is an estimate. S is counted exactly for SDPA and eager on the CPU (flash_attention_2 keeps the same
tensors: q, k, v, output, log-sum-exp); a checkpointed layer's backward and a loss chunk were measured on the
CPU, and their terms lean 2-6% and up to 18% above the measured peaks; the FSDP2 terms (state, gathered)
follow from its documented behaviour (every tensor a phase may hold counted at its peak). Nothing has been
measured on a GPU: compare the extend step's logged peak (``torch.cuda.max_memory_allocated``) with ``needed -
overhead`` on the first real run; until then a plan needing more than :data:`MARGINAL_SHARE` of the GPU is
flagged marginal in its note. Not modelled: allocator fragmentation beyond the overhead, GPU kernels'
workspaces, sequence parallelism, torch.compile fusions (they save less), Gemma-style extra norms (two
RMSNorms per layer assumed).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from ctxscale.errors import UserError
from ctxscale.plan.architecture import GIB, Architecture, architecture_for, read_architecture
from ctxscale.plan.evaluation import needs_gpu

COMPUTE_BYTES = {"bf16": 2, "fp32": 4}
FP32 = 4
ADAMW_STATE_BYTES = 8  # exp_avg + exp_avg_sq, fp32
PREFETCHED_LAYERS = 2  # the running decoder layer and the one FSDP2 all-gathers ahead
OFFLOAD_HOST_BYTES = 16  # per parameter on the host with cpu_offload: fp32 params 4 + grads 4 + AdamW 8
LOADING_HOST_BYTES = 4  # per parameter: one fp32 copy of the base while it is loaded and sharded
PROCESS_HOST_GIB = 4.0  # per process: Python, CUDA/NCCL libraries, data loading
MARGINAL_SHARE = 0.9  # a plan needing more of the GPU than this is flagged (the estimate is not measured on GPUs)
STATE_TERMS = ("params", "grads", "optimizer")
TERMS = (*STATE_TERMS, "gathered", "saved", "layer", "loss")


def layer_split(arch: Architecture) -> tuple[int, int]:
    """(parameters of one decoder layer, parameters outside the layers: embedding, LM head unless tied, final norm)."""
    if arch.params is None or arch.non_embedding_params is None or not arch.intermediate or not arch.vocab:
        raise UserError("cannot count this model type's parameters (ctxscale.model_info), so its training memory "
                        "cannot be planned")  # fmt: skip
    per_layer = (arch.non_embedding_params - arch.hidden) // arch.layers
    return per_layer, arch.params - arch.layers * per_layer


def saved_bytes_per_token(arch: Architecture, compute_bytes: int, attention: str = "sdpa", n_ctx: int = 0) -> int:
    """S: what one decoder layer's forward keeps for its backward, per token (module docstring); checked against
    autograd's saved tensors of a transformers LlamaDecoderLayer in the tests."""
    a, q, k = compute_bytes, arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    norms = 2 * ((FP32 + 2 * a) * arch.hidden + FP32)  # fp32 input copy, normed, times weight; fp32 rsqrt
    mlp = 4 * a * int(arch.intermediate)
    if attention == "eager":  # K and V repeated to every head; fp32 softmax and its copy, n_ctx keys per head
        return norms + a * 4 * q + arch.heads * n_ctx * (FP32 + a) + mlp
    return norms + a * (2 * q + 2 * k) + FP32 * arch.heads + mlp  # SDPA/flash: GQA native, fp32 log-sum-exp


def loss_bytes_per_logit(compute_bytes: int) -> int:
    """One loss chunk's peak per logit: the logits, their fp32 copy, fp32 log-softmax, its fp32 gradient (a test
    measures it)."""
    return compute_bytes + FP32 + FP32 + (FP32 if compute_bytes < FP32 else 0)


def rope_bytes_per_token(arch: Architecture, compute_bytes: int) -> int:
    """RoPE's cos and sin, computed once per forward and kept (shared by every layer)."""
    return 2 * arch.head_dim * compute_bytes


def extension_memory(arch: Architecture, *, n_ctx: int, spec: Mapping[str, Any], gpus: int) -> dict[str, int]:
    """Bytes per GPU of each term of the module docstring at ``gpus`` processes (the overhead aside)."""
    a = COMPUTE_BYTES[spec["precision"]]
    upcast = FP32 if a < FP32 else 0
    per_layer, outside = layer_split(arch)
    h, width, vocab = arch.hidden, int(arch.intermediate), int(arch.vocab)
    micro_batch = int(spec["micro_batch"])
    tokens = micro_batch * n_ctx
    per_layer_saved = saved_bytes_per_token(arch, a, spec["attention"], n_ctx)
    backward = a * (width + 2 * h)
    kept = (FP32 + a) * h + FP32 + rope_bytes_per_token(arch, a)  # the final norm's saved tensors, cos and sin
    if spec["activation_checkpointing"]:
        saved, layer = tokens * (arch.layers * h * a + kept), tokens * (per_layer_saved + backward)
    else:
        saved, layer = tokens * (arch.layers * per_layer_saved + kept), tokens * backward
    if spec["attention"] == "eager":
        saved += a * micro_batch * n_ctx * n_ctx  # the materialized causal mask
    chunk = tokens if spec["loss_chunk_tokens"] is None else min(int(spec["loss_chunk_tokens"]), tokens)
    offload = bool(spec["cpu_offload"])
    return {
        "params": 0 if offload else math.ceil(FP32 * arch.params / gpus),
        "grads": 0 if offload else math.ceil(FP32 * arch.params / gpus),
        "optimizer": 0 if offload else math.ceil(ADAMW_STATE_BYTES * arch.params / gpus),
        "gathered": per_layer * (PREFETCHED_LAYERS * a + a + upcast) + outside * (a + a + upcast),
        "saved": saved,
        "layer": layer,
        "loss": chunk * vocab * loss_bytes_per_logit(a) + tokens * h * a,
    }


def needed_bytes(terms: Mapping[str, int], overhead: float) -> float:
    """Per-GPU peak: state + gathered + saved + the larger of a layer's backward and the loss, + overhead."""
    return sum(terms[t] for t in (*STATE_TERMS, "gathered", "saved")) + max(terms["layer"], terms["loss"]) + overhead


def host_bytes(arch: Architecture, spec: Mapping[str, Any], processes: int) -> int:
    """Host memory of the node while training on GPUs (module docstring)."""
    offloaded = OFFLOAD_HOST_BYTES * arch.params if spec["cpu_offload"] else 0
    return offloaded + LOADING_HOST_BYTES * int(arch.params) + math.ceil(processes * PROCESS_HOST_GIB * GIB)


@dataclass(frozen=True)
class ExtensionPlan:
    model: str
    base: str
    n_ctx: int
    rope: str  # the extended model's rope_scaling, e.g. "linear x16"
    gpus: int | None  # processes = GPUs; 0: a CPU-only run; None: not planned (see note)
    micro_batch: int
    grad_accumulation: int | None  # global_batch / (micro_batch x processes)
    cpu_offload: bool
    activation_checkpointing: bool
    # per GPU, GiB (module docstring); None when not planned
    params_gib: float | None = None
    grads_gib: float | None = None
    optimizer_gib: float | None = None
    gathered_gib: float | None = None
    saved_gib: float | None = None
    layer_gib: float | None = None
    loss_gib: float | None = None
    overhead_gib: float | None = None
    needed_gib: float | None = None
    available_gib: float | None = None
    host_gib: float | None = None  # the node's host memory
    note: str = ""

    def summary(self) -> str:
        head = f"extend {self.base} -> {self.model} (n_ctx {self.n_ctx}, {self.rope})"
        if self.gpus is None:
            return f"{head}: not planned ({self.note})"
        if self.gpus == 0:
            return f"{head}: CPU-only, {self.host_gib:.1f} GiB host memory"
        return (f"{head}: {self.gpus} GPU(s), micro batch {self.micro_batch} x {self.grad_accumulation} "
                f"accumulation, {self.needed_gib:.1f} of {self.available_gib:.1f} GiB per GPU, "
                f"cpu_offload {self.cpu_offload}")  # fmt: skip


def full_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    """An extend recipe with the schema's defaults (``$defs/extend_spec``) for the keys it lacks."""
    from ctxscale.config import schema_defaults

    return {**schema_defaults("extend_spec"), **spec}


def rope_label(rope_scaling: Mapping[str, Any] | None) -> str:
    if not rope_scaling:
        return "no scaling"
    return f"{rope_scaling.get('rope_type') or rope_scaling.get('type')} x{float(rope_scaling['factor']):g}"


def _gib(value: float) -> float:
    return round(value / GIB, 2)


def _hint(spec: Mapping[str, Any], terms: Mapping[str, int], model: str) -> str:
    options = []
    if not spec["cpu_offload"]:
        options.append("cpu_offload: true")
    if int(spec["micro_batch"]) > 1:
        options.append("micro_batch: 1")
    if not spec["activation_checkpointing"]:
        options.append("activation_checkpointing: true")
    if terms["loss"] >= terms["layer"]:
        options.append("a smaller loss_chunk_tokens")
    if not options:
        return ("one sequence's activations exceed the GPU: use larger GPUs (evaluation.gpu_memory_gib) or a "
                "shorter n_ctx")  # fmt: skip
    return f"set {', '.join(options)} in models.{model}.extend, or use larger GPUs"


def plan_extension(
    arch: Architecture,
    *,
    n_ctx: int,
    spec: Mapping[str, Any],
    gpu_memory_gib: float,
    max_gpus: int,
    gpu_overhead_gib: float,
    gpus: int | str = "auto",
    on_gpu: bool = True,
    model: str = "model",
    base: str = "base",
    rope_scaling: Mapping[str, Any] | None = None,
) -> ExtensionPlan:
    """Plan one extend job (module docstring). ``spec``: the recipe (missing keys take the schema's defaults);
    ``gpus``: "auto" (the smallest power of two <= ``max_gpus`` that fits) or a fixed process count;
    ``gpus`` 0, or "auto" with ``on_gpu`` False: a CPU-only run. Raises a one-line :class:`UserError` when nothing
    fits."""
    spec = full_spec(spec)
    micro_batch, global_batch = int(spec["micro_batch"]), int(spec["global_batch"])
    common = dict(model=model, base=base, n_ctx=n_ctx, rope=rope_label(rope_scaling), micro_batch=micro_batch,
                  cpu_offload=bool(spec["cpu_offload"]),
                  activation_checkpointing=bool(spec["activation_checkpointing"]))  # fmt: skip
    if gpus == 0 or (gpus == "auto" and not on_gpu):  # one process, all of it in host memory
        if global_batch % micro_batch:
            raise UserError(f"{model}: global_batch {global_batch} is not a multiple of micro_batch {micro_batch}")
        terms = extension_memory(arch, n_ctx=n_ctx, spec={**spec, "cpu_offload": False}, gpus=1)
        host = needed_bytes(terms, 0) + LOADING_HOST_BYTES * int(arch.params) + PROCESS_HOST_GIB * GIB
        return ExtensionPlan(**common, gpus=0, grad_accumulation=global_batch // micro_batch, host_gib=_gib(host),
                             note="CPU-only run: everything in host memory")  # fmt: skip
    if gpus == "auto":
        sizes = [2**i for i in range(int(math.log2(max_gpus)) + 1)]
    else:
        if int(gpus) > max_gpus:
            raise UserError(f"{model}: extension.gpus is {gpus}, more than evaluation.max_gpus_per_job {max_gpus} "
                            "(the GPUs of one node)")  # fmt: skip
        sizes = [int(gpus)]
    sizes = [g for g in sizes if global_batch % (micro_batch * g) == 0]
    if not sizes:
        raise UserError(f"{model}: global_batch {global_batch} is not a multiple of micro_batch {micro_batch} x "
                        f"{'any power-of-two GPU count' if gpus == 'auto' else gpus} GPUs; change global_batch or "
                        "micro_batch")  # fmt: skip
    overhead, available = float(gpu_overhead_gib) * GIB, float(gpu_memory_gib) * GIB
    for size in sizes:
        terms = extension_memory(arch, n_ctx=n_ctx, spec=spec, gpus=size)
        needed = needed_bytes(terms, overhead)
        if needed <= available:
            break
    else:
        state = sum(terms[t] for t in STATE_TERMS)
        peak = "layer" if terms["layer"] >= terms["loss"] else "loss"
        raise UserError(
            f"{model}: the extension of {base} to n_ctx {n_ctx} does not fit: {needed / GIB:.1f} GiB per GPU at "
            f"{size} GPU(s) ({state / GIB:.1f} sharded state + {terms['gathered'] / GIB:.1f} gathered + "
            f"{terms['saved'] / GIB:.1f} saved activations + {terms[peak] / GIB:.1f} {peak} + "
            f"{overhead / GIB:.1f} overhead), {available / GIB:.1f} GiB available (evaluation.gpu_memory_gib); "
            + _hint(spec, terms, model)
        )
    return ExtensionPlan(
        **common, gpus=size, grad_accumulation=global_batch // (micro_batch * size),
        **{f"{t}_gib": _gib(v) for t, v in terms.items()}, overhead_gib=_gib(overhead), needed_gib=_gib(needed),
        available_gib=_gib(available), host_gib=_gib(host_bytes(arch, spec, size)),
        note=f"marginal: {needed / available:.0%} of the GPU" if needed > MARGINAL_SHARE * available else "",
    )  # fmt: skip


# ------------------------------------------------------------------------------------- from a config


def extension_models(config: Mapping[str, Any]) -> list[str]:
    """Enabled models the workflow builds by extension (:func:`ctxscale.config.built_by_extension`), in config order."""
    from ctxscale.config import built_by_extension, enabled_models

    return [m for m in enabled_models(dict(config)) if built_by_extension(dict(config), m)]


def extension_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """What the extension plan reads of a validated config (the GPU keys of ``evaluation``, ``extension.gpus``)."""
    evaluation = config["evaluation"]
    return {"gpu_memory_gib": evaluation["gpu_memory_gib"], "gpu_overhead_gib": evaluation["gpu_overhead_gib"],
            "max_gpus": evaluation["max_gpus_per_job"], "gpus": config["extension"]["gpus"],
            "on_gpu": needs_gpu(evaluation)}  # the evaluate jobs' rule: vllm, or hf on cuda  # fmt: skip


def plan_extension_from_files(
    *, model: str, base: str, base_checkpoint_dir: str | Path, n_ctx: int, spec: Mapping[str, Any],
    settings: Mapping[str, Any], rope_scaling: Mapping[str, Any] | None = None,
) -> ExtensionPlan:  # fmt: skip
    """The plan of one extend job from the base checkpoint's ``config.json`` (what the rule and the extend step
    call; ``settings`` from :func:`extension_settings`, its ``gpus`` the process count to check or "auto")."""
    return plan_extension(read_architecture(base_checkpoint_dir), n_ctx=n_ctx, spec=spec, model=model, base=base,
                          rope_scaling=rope_scaling, **settings)  # fmt: skip


def plan_extension_config(config: dict, overrides: Mapping[str, Any] | None = None) -> list[ExtensionPlan]:
    """The plan of every extend job of a validated config (the base's checkpoint where present, else the hub's
    ``config.json``); ``overrides`` apply to every recipe (``ctxscale plan --set extend.KEY=VALUE``)."""
    from ctxscale.config import extension_spec

    settings = extension_settings(config)
    plans = []
    for model in extension_models(config):
        entry = config["models"][model]
        base, spec = entry["extends"], extension_spec(config, model, overrides)
        arch, _, where = architecture_for(config, base)
        if arch is None:
            plans.append(ExtensionPlan(model=model, base=base, n_ctx=int(entry["n_ctx"]), rope=rope_label(
                entry.get("rope_scaling")), gpus=None, micro_batch=int(spec["micro_batch"]), grad_accumulation=None,
                cpu_offload=bool(spec["cpu_offload"]), activation_checkpointing=bool(spec["activation_checkpointing"]),
                note=f"architecture unknown: {base} {where}"))  # fmt: skip
            continue
        plans.append(plan_extension(arch, n_ctx=int(entry["n_ctx"]), spec=spec, model=model, base=base,
                                    rope_scaling=entry.get("rope_scaling"), **settings))  # fmt: skip
    return plans


def format_extension_plan(plans: list[ExtensionPlan]) -> str:
    """A Markdown table, one row per extend job (blank cells: not planned, see note)."""
    import pandas as pd

    columns = ["model", "base", "n_ctx", "rope", "gpus", "cpu_offload", "micro_batch", "grad_accumulation",
               *(f"{t}_gib" for t in (*TERMS, "overhead", "needed", "available", "host")), "note"]  # fmt: skip
    frame = pd.DataFrame([asdict(p) for p in plans], columns=columns).astype(object)
    return frame.where(frame.notna(), "").to_markdown(index=False)


def extension_gpus(config: dict, model: str, base_checkpoint_dir: str | Path) -> int:
    """GPUs of one extend job (the rule's ``gpu`` resource): ``extension.gpus`` when fixed (checked against the
    plan), else the plan's (:func:`plan_extension`); 0 on a CPU-only run (``extension.gpus: 0``, or auto
    with ``evaluation`` on the CPU, the rule of the evaluate jobs). Raises FileNotFoundError while the base checkpoint's
    config.json does not exist yet (Snakemake then asks again when the job is ready) and a one-line UserError
    when the job cannot fit."""
    settings = extension_settings(config)
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


def _extension_plan_from_files(config: dict, model: str, base_checkpoint_dir: str | Path) -> ExtensionPlan:
    """The plan of one workflow extend job from its base checkpoint (the rule's resources read it)."""
    from ctxscale.config import extension_spec

    if not (Path(base_checkpoint_dir) / "config.json").is_file():  # Snakemake: <TBD> until the input exists
        raise FileNotFoundError(2, "not yet created", str(base_checkpoint_dir))
    entry = config["models"][model]
    return plan_extension_from_files(
        model=model, base=entry["extends"], base_checkpoint_dir=base_checkpoint_dir, n_ctx=int(entry["n_ctx"]),
        spec=extension_spec(config, model), settings=extension_settings(config),
        rope_scaling=entry.get("rope_scaling"),
    )  # fmt: skip
