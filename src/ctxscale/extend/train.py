"""The training loop of an extension and its output checkpoint.

One loop for every case. Processes: one (no process group) or ``P`` under ``torch.distributed.run``. Model:
unsharded when one process trains in fp32 without offload (the miniature's path, bit for bit the old
``ctxscale.tiny extend``); otherwise FSDP2 over all processes (a process group of one when a single process
asks for bf16 or CPU offload). Every update: set the LR of the schedule, run this process's micro-batches
(forward, backward of loss / global token count), clip the global gradient norm, step AdamW, and record LR and
loss. The global batch is ``global_batch`` sequences whatever the process count (64 = the official 8 GPUs x
1 x 8 accumulation).

Equivalence: in fp32, P processes give one process's weights bit for bit when each process runs one
micro-batch per update (tested with 2); with more micro-batches per process the gradient sum is re-associated
(``(g0+g1)+(g2+g3)`` against ``((g0+g1)+g2)+g3``) and agrees up to float rounding. The gradient norm for clipping
is measured on whole gradients (:func:`clip_gradients`) so it does not depend on the sharding.

Gradients are reduced (summed) after every micro-batch rather than only after the last one: the sharded fp32
gradient accumulates them, where skipping the reduction would accumulate unsharded gradients in bf16.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
import transformers

from ctxscale.extend import model as modeling
from ctxscale.extend import state as training_state
from ctxscale.extend.data import CorpusStream, ParquetCorpus, SyntheticStream, my_micro_batches
from ctxscale.extend.recipe import SYNTHETIC, accumulation_steps, learning_rate, updates_to_run
from ctxscale.extend.validation import bucket_edges, bucket_losses

log = logging.getLogger("ctxscale.extend")

TRAINING_INFO = "ctxscale_training.json"
LOG_EVERY_SECONDS = 5.0
TOKENIZER_FILES = ("special_tokens_map.json", "added_tokens.json", "chat_template.jinja")


def configure_torch(threads: int) -> None:
    """Deterministic kernels and a fixed thread count, as ``ctxscale.tiny`` (same spec and threads: same bits).

    On a GPU, cuBLAS needs its workspace setting for deterministic results, and kernels without a
    deterministic variant (some attention backward passes) warn instead of failing.
    """
    from ctxscale.numerics import pin_cpu_code_paths

    pin_cpu_code_paths()  # before the first tensor operation, so the bits do not depend on the CPU model
    torch.set_num_threads(threads)
    if torch.cuda.is_available():
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        # deterministic mode also NaN-fills every torch.empty (FSDP2's collective buffers among them): memory
        # traffic that buys nothing where the kernels only warn
        torch.utils.deterministic.fill_uninitialized_memory = False
    else:
        torch.use_deterministic_algorithms(True)


class Run:
    """Where this process stands: rank, process count, device, and whether the model is sharded."""

    def __init__(self, spec: dict):
        self.launched = "WORLD_SIZE" in os.environ and "LOCAL_RANK" in os.environ
        self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
            else torch.device("cpu")
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        # On GPUs, gloo as well for CPU tensors: CPU offload keeps gradients and optimizer state on the CPU,
        # and the checkpoint's metadata exchange runs there
        backend = "cpu:gloo,cuda:nccl" if self.device.type == "cuda" else "gloo"
        self.sharded = self.launched or spec["precision"] == "bf16" or spec["cpu_offload"]
        if self.launched:
            dist.init_process_group(backend, device_id=self.device if self.device.type == "cuda" else None)
        elif self.sharded:
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
        self.rank = dist.get_rank() if dist.is_initialized() else 0
        self.processes = dist.get_world_size() if dist.is_initialized() else 1
        self.mesh = None
        if self.sharded:
            from torch.distributed.device_mesh import init_device_mesh

            self.mesh = init_device_mesh(self.device.type, (self.processes,))

    def all_sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over processes (float64)."""
        if not dist.is_initialized():
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def _whole(grad: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The whole gradient on ``device`` (a sharded DTensor gathered there; CPU-offloaded shards moved first)."""
    if not hasattr(grad, "full_tensor"):
        return grad.to(device)
    local = grad.to_local()
    if local.device != device:
        from torch.distributed.tensor import DTensor

        grad = DTensor.from_local(local.to(device), grad.device_mesh, grad.placements, shape=grad.shape,
                                  stride=grad.stride())
    return grad.full_tensor()


def clip_gradients(parameters, max_norm: float, device: torch.device) -> float:
    """Scale the gradients so their global L2 norm is at most ``max_norm``; return the norm before clipping.

    torch's ``clip_grad_norm_`` over sharded (DTensor) gradients adds the shards' norms, in an order that
    depends on the sharding, so P processes and one process would clip by factors a last bit apart. Here each
    gradient is gathered whole, one at a time, and measured with torch's own ``get_total_norm`` (per tensor,
    then over the per-tensor norms, as ``clip_grad_norm_`` does): the same bits for any process count, and the
    same as ``clip_grad_norm_`` on an unsharded model. The cost, one fp32 all-gather of the gradients per
    update, is small next to the micro-batches' own all-gathers and reduce-scatters. The scaling is torch's:
    ``clamp(max_norm / (norm + 1e-6), max=1)``, multiplied into each shard.
    """
    grads = [p.grad for p in parameters if p.grad is not None]
    per_tensor = [torch.nn.utils.get_total_norm([_whole(g, device)], 2.0) for g in grads]
    norm = torch.nn.utils.get_total_norm(per_tensor, 2.0)
    factor = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
    for g in grads:
        local = g.to_local() if hasattr(g, "to_local") else g
        local.mul_(factor.to(local.device))
    return float(norm)


def read_base_info(base_dir) -> dict | None:
    path = Path(base_dir) / TRAINING_INFO
    return json.loads(path.read_text()) if path.is_file() else None


def _stream(spec: dict, tokenizer, data_dir):
    held_out = spec["validation"]["sequences"]
    if spec["data"]["source"] == SYNTHETIC:
        return SyntheticStream(tokenizer, spec["data"]["mix"], spec["seed"], spec["n_ctx"], held_out)
    return CorpusStream(ParquetCorpus(data_dir, spec["data_column"]), spec["seed"], spec["n_ctx"], held_out)


def build(spec: dict, base_dir, run: Run):
    """The model (wrapped with its loss) and its extended config."""
    attention = modeling.choose_attention(spec["attention"], run.device, spec["precision"])
    config = modeling.extended_config(base_dir, spec["rope_scaling"], spec["n_ctx"], attention)
    chunk = spec["loss_chunk_tokens"]
    if run.sharded:
        wrapper = modeling.load_sharded(base_dir, config, run.device, run.mesh, bf16=spec["precision"] == "bf16",
                                        cpu_offload=spec["cpu_offload"], chunk_tokens=chunk,
                                        activation_checkpointing=spec["activation_checkpointing"])
    else:
        wrapper = modeling.load_plain(base_dir, config, spec["activation_checkpointing"], chunk, run.device)
    return wrapper, config


def train(spec: dict, base_dir, state_dir, data_dir=None, *, run: Run, tokenizer=None, stop=None, model=None,
          stream=None) -> dict | None:
    """Train to the end (or until ``stop`` is requested); return ``{progress, wrapper, config}``, or None if stopped.

    ``stop``: a :class:`ctxscale.extend.state.StopFlag`. ``model`` (``(wrapper, config)``) and ``stream``
    replace the base checkpoint's model and the spec's data (the device benchmark's random 7B model and tokens).
    """
    state_dir = Path(state_dir)
    torch.manual_seed(spec["seed"])
    wrapper, config = model if model is not None else build(spec, base_dir, run)
    optimizer = torch.optim.AdamW(wrapper.parameters(), lr=spec["lr"], betas=tuple(spec["betas"]),
                                  eps=spec["eps"], weight_decay=spec["weight_decay"])
    accumulation = accumulation_steps(spec, run.processes)
    stream = stream if stream is not None else _stream(spec, tokenizer, data_dir)
    total = updates_to_run(spec)
    validation = spec["validation"]
    progress = {"updates_done": 0, "lr": [], "loss": [], "update_seconds": [], "tokens_fed": 0,
                "tokens_nonzero_lr": 0, "seconds": 0.0, "validation_before": None, "stream": stream.state()}
    held_out = stream.validation() if validation["sequences"] else []
    resume_from = training_state.latest_checkpoint(state_dir)
    if resume_from is not None:
        progress = training_state.load(resume_from, wrapper, optimizer)
        stream.load_state(progress["stream"])
    elif held_out:
        progress["validation_before"] = bucket_losses(wrapper, held_out, spec["n_ctx"], validation["bucket_tokens"],
                                                      run.device, run.rank, run.processes)
    if run.rank == 0:
        log.info("extending to %d tokens with %s: updates %d..%d of %d (%s schedule), %d x %d sequences per update "
                 "(%d processes x %d micro-batches of %d)", spec["n_ctx"], spec["rope_scaling"],
                 progress["updates_done"] + 1, total, spec["updates"], spec["lr_schedule"], spec["global_batch"],
                 spec["n_ctx"], run.processes, accumulation, spec["micro_batch"])
    wrapper.train()
    started = last_log = time.perf_counter()
    seconds_before = progress["seconds"]
    first = progress["updates_done"]
    tokens_before = progress["tokens_fed"]
    for update in range(first, total):
        update_started = time.perf_counter()
        lr = learning_rate(spec, update)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batches = my_micro_batches(stream, update, spec["global_batch"], spec["micro_batch"], run.rank, run.processes)
        local_targets = sum(int((labels[:, 1:] != -100).sum()) for _, labels in batches)
        local_tokens = sum(int((labels != -100).sum()) for _, labels in batches)
        targets, tokens = run.all_sum([float(local_targets), float(local_tokens)])
        loss_sum = 0.0
        for ids, labels in batches:
            loss = wrapper(ids.to(run.device), labels.to(run.device)) / targets
            loss.backward()
            loss_sum += float(loss.detach().double())  # one value per micro-batch, added in micro-batch order
        (loss_value,) = run.all_sum([loss_sum])
        if spec["grad_clip"] is not None:
            clip_gradients(wrapper.parameters(), spec["grad_clip"], run.device)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if update == first:  # the RoPE buffers survived a (mixed-precision) forward, backward and step
            modeling.assert_rope(wrapper.lm, config)
        progress["lr"].append(lr)
        progress["loss"].append(round(loss_value, 6))
        progress["tokens_fed"] += int(tokens)
        progress["tokens_nonzero_lr"] += int(tokens) if lr > 0 else 0
        progress["updates_done"] = update + 1
        now = time.perf_counter()
        progress["update_seconds"].append(round(now - update_started, 3))
        progress["seconds"] = round(seconds_before + now - started, 3)
        if run.rank == 0 and (now - last_log >= LOG_EVERY_SECONDS or update in (first, total - 1)):
            done = update + 1 - first
            rate = (progress["tokens_fed"] - tokens_before) / max(now - started, 1e-9)
            eta = (now - started) / done * (total - update - 1)
            log.info("update %d/%d loss %.4f lr %.3g %.0f tokens/s ETA %.0f s", update + 1, total, loss_value, lr,
                     rate, eta)
            last_log = now
        stopping = stop is not None and stop.agreed(run.sharded, run.device) and update + 1 < total
        if stopping or ((update + 1) % spec["checkpoint_every"] == 0 and update + 1 < total):
            progress["stream"] = stream.state()
            training_state.save(state_dir, wrapper, optimizer, progress)
        if stopping:
            log.warning("stopping on %s after update %d/%d; rerun with the same --state-dir to continue",
                        stop.signal_name or "a signal to another process", update + 1, total)
            return None
    wrapper.eval()
    validation_after = bucket_losses(wrapper, held_out, spec["n_ctx"], validation["bucket_tokens"], run.device,
                                     run.rank, run.processes) if held_out else None
    progress["validation"] = {
        "sequences": validation["sequences"], "bucket_tokens": validation["bucket_tokens"],
        "buckets": bucket_edges(spec["n_ctx"], validation["bucket_tokens"]),
        "before": progress.pop("validation_before"), "after": validation_after}
    progress["total_updates"] = total
    return {"progress": progress, "wrapper": wrapper, "config": config}


def write_output(out_dir, base_dir, spec: dict, result: dict, run: Run, tokenizer, threads: int) -> None:
    """Save the extended checkpoint (weights, tokenizer, config) and ``ctxscale_training.json`` (rank 0)."""
    wrapper, config, progress = result["wrapper"], result["config"], result["progress"]
    full = modeling.full_state_dict(wrapper, run.sharded)  # a collective when sharded: every rank calls it
    if run.rank != 0:
        return
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_dtype = torch.bfloat16 if spec["precision"] == "bf16" else torch.float32
    if run.sharded:
        with torch.device("meta"):
            lm = transformers.AutoModelForCausalLM.from_config(config, dtype=save_dtype)
        for key in list(full):  # cast in place, one tensor at a time: host memory peaks near 4N bytes, not 6N
            full[key] = full.pop(key).to(save_dtype)
        lm.load_state_dict(full, assign=True)
        del full
        lm.tie_weights()
        modeling.reset_rope(lm, config)
        if (Path(base_dir) / "generation_config.json").is_file():
            lm.generation_config = transformers.GenerationConfig.from_pretrained(base_dir)
    else:
        lm = wrapper.lm
    lm.config.dtype = save_dtype
    # shards of at most 5 GB: safetensors builds each shard in memory before writing it
    lm.save_pretrained(out_dir, max_shard_size="5GB")
    copy_tokenizer(base_dir, out_dir, tokenizer)
    base_info = read_base_info(base_dir)
    original = spec["rope_scaling"]["original_max_position_embeddings"]
    tokens_fed = progress["tokens_fed"]
    info = {
        "stage": "extension",
        "pretrain_tokens": base_info.get("pretrain_tokens") if base_info else None,
        "extension_tokens": (base_info.get("extension_tokens") or 0 if base_info else 0) + tokens_fed,
        "non_embedding_params": modeling.count_non_embedding_params(lm),
        "n_ctx": spec["n_ctx"],
        "steps": progress["updates_done"],
        "updates_planned": spec["updates"],
        "seed": spec["seed"],
        "threads": threads,
        "processes": run.processes,
        "precision": spec["precision"],
        "seconds": progress["seconds"],
        "rope_scaling": spec["rope_scaling"],
        "spec": spec,
        "base": ({"path": str(base_dir), "n_ctx": base_info.get("n_ctx"), "steps": base_info.get("steps"),
                  "seed": base_info.get("seed"), "seconds": base_info.get("seconds"), "spec": base_info.get("spec")}
                 if base_info else {"path": str(base_dir), "n_ctx": original}),
        "tokens_fed": tokens_fed,
        "tokens_nonzero_lr": progress["tokens_nonzero_lr"],
        "lr": progress["lr"],
        "loss": progress["loss"],
        "losses": progress["loss"],
        "update_seconds": progress["update_seconds"],
        "validation": progress["validation"],
    }
    (out_dir / TRAINING_INFO).write_text(json.dumps(info, indent=1) + "\n")


def copy_tokenizer(base_dir, out_dir, tokenizer) -> None:
    """Copy the base checkpoint's tokenizer files verbatim (Llama's ``tokenizer.model`` included); a base
    without any gets the loaded tokenizer's ``save_pretrained``."""
    names = [p for p in Path(base_dir).iterdir() if p.is_file() and (p.name.startswith("tokenizer")
             or p.name in TOKENIZER_FILES)]
    for path in names:
        shutil.copyfile(path, Path(out_dir) / path.name)
    if not names:
        tokenizer.save_pretrained(out_dir)


def clear_state(state_dir) -> None:
    """Remove the checkpoints (and worker pid files) once the output is written (a 7B run's optimizer state is
    ~80 GB)."""
    state_dir = Path(state_dir)
    leftovers = [*state_dir.glob("update-*"), *state_dir.glob(".tmp-update-*")]  # a save killed midway
    for folder in [*leftovers, state_dir / training_state.PID_DIR]:
        shutil.rmtree(folder, ignore_errors=True)
    for marker in (training_state.STOP_FILE, training_state.INTERRUPTED_FILE):
        (state_dir / marker).unlink(missing_ok=True)
