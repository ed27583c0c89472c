"""The extended model: RoPE scaling, fp32 RoPE buffers, the chunked loss, FSDP2 sharding.

Decisions:

- The scaling goes into the config's ``rope_parameters`` (and ``max_position_embeddings = n_ctx``) *before* the
  model is built; transformers computes YaRN's or linear interpolation's inverse frequencies (and YaRN's
  attention scaling) in the rotary module's constructor, so assigning them afterwards has no effect.
- RoPE buffers stay fp32, asserted equal to transformers' own values after building, sharding and the first
  forward pass. This is a documented deviation from the official run: FSDP1 with a bf16 mixed-precision policy
  (accelerate's) probably cast the ``inv_freq`` buffer to bf16, which rounds the angles badly past ~4k
  positions. FSDP2 (``fully_shard``) casts parameters only, so buffers keep their dtype; a model built on the
  meta device and materialised with ``to_empty`` has uninitialised buffers, recomputed here.
- Precision ``bf16``: FSDP2 ``MixedPrecisionPolicy(param_dtype=bf16, reduce_dtype=fp32)``: bf16 compute,
  fp32 master weights, gradient reduction and optimizer state.
- The loss is the sum of per-token cross-entropies (fp32) divided by the global batch's predicted-token count,
  so micro-batches and processes add up to the global batch's mean. With ``loss_chunk_tokens`` the LM head and
  the cross-entropy run over that many positions at a time under activation checkpointing, so a long
  sequence's full logits (64k x 32000 floats) never exist; the gradient is the same up to float rounding.
  It runs inside the root module's forward so FSDP2 has the root's parameters (embedding, norm, LM head)
  gathered.
"""

from __future__ import annotations

import logging

import torch
import transformers
from torch.utils.checkpoint import checkpoint
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

from ctxscale.extend.data import IGNORE_INDEX

log = logging.getLogger("ctxscale.extend")


def choose_attention(setting: str, device: torch.device, precision: str = "bf16") -> str:
    """``auto``: flash_attention_2 when installed, on a GPU, in bf16 (it has no fp32 kernels), else sdpa."""
    if setting != "auto":
        return setting
    if device.type == "cuda" and precision == "bf16" and transformers.utils.is_flash_attn_2_available():
        return "flash_attention_2"
    return "sdpa"


def extended_config(base_dir, rope_scaling: dict, n_ctx: int, attention: str) -> transformers.PretrainedConfig:
    """The base checkpoint's config with the RoPE scaling and ``max_position_embeddings = n_ctx``."""
    config = transformers.AutoConfig.from_pretrained(base_dir)
    config.rope_parameters = {**(config.rope_parameters or {}), **rope_scaling}
    config.max_position_embeddings = n_ctx
    config._attn_implementation = attention
    return config


def expected_rope(config) -> tuple[torch.Tensor, float]:
    """transformers' own fp32 inverse frequencies and attention scaling for the config's RoPE."""
    return ROPE_INIT_FUNCTIONS[config.rope_parameters["rope_type"]](config, "cpu")


def rotary_modules(model) -> list:
    return [m for m in model.modules() if hasattr(m, "inv_freq") and hasattr(m, "attention_scaling")]


def reset_rope(model, config) -> None:
    """Recompute the RoPE buffers (fp32) in place: after ``to_empty`` they hold uninitialised memory."""
    inv_freq, scaling = expected_rope(config)
    for rotary in rotary_modules(model):
        with torch.no_grad():
            rotary.inv_freq = inv_freq.to(rotary.inv_freq.device)
            rotary.original_inv_freq = inv_freq.clone().to(rotary.inv_freq.device)
        rotary.attention_scaling = scaling


def assert_rope(model, config) -> None:
    """Every RoPE buffer is fp32 and equal to transformers' values for the scaling (raises AssertionError)."""
    inv_freq, scaling = expected_rope(config)
    rotaries = rotary_modules(model)
    assert rotaries, "the model has no rotary embedding module"
    for rotary in rotaries:
        assert rotary.inv_freq.dtype == torch.float32, f"inv_freq is {rotary.inv_freq.dtype}, not float32"
        assert torch.equal(rotary.inv_freq.cpu(), inv_freq), "inv_freq differs from transformers' values"
        assert rotary.attention_scaling == scaling, "attention scaling differs from transformers' value"


class CausalLMWithLoss(torch.nn.Module):
    """A ``LlamaForCausalLM`` whose forward returns the summed token loss (or per-position losses).

    ``forward(input_ids, labels)``: position ``t`` predicts ``labels[:, t+1]``; the last position and
    ``IGNORE_INDEX`` labels carry no loss (transformers' causal-LM convention, same shift and padding).
    """

    def __init__(self, lm, chunk_tokens: int | None):
        super().__init__()
        self.lm = lm
        self.chunk_tokens = chunk_tokens

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        hidden = self.lm.model(input_ids=input_ids, use_cache=False).last_hidden_state
        targets = torch.nn.functional.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
        return chunked_lm_loss(hidden, self.lm.lm_head, targets, self.chunk_tokens, reduction)


def _chunk_loss(hidden: torch.Tensor, head: torch.nn.Module, targets: torch.Tensor, reduction: str) -> torch.Tensor:
    logits = head(hidden).float()
    losses = torch.nn.functional.cross_entropy(
        logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=IGNORE_INDEX, reduction=reduction)
    return losses if reduction == "sum" else losses.view(targets.shape)


def chunked_lm_loss(hidden, head, targets, chunk_tokens: int | None, reduction: str = "sum") -> torch.Tensor:
    """Cross-entropy of ``head(hidden)`` against ``targets`` (already shifted), ``chunk_tokens`` positions at a time.

    ``reduction``: ``sum`` (a scalar) or ``none`` (per position, 0 where ignored). Chunks are recomputed in
    the backward pass (activation checkpointing), so only one chunk's logits exist at a time.
    """
    length = hidden.size(1)
    if chunk_tokens is None or chunk_tokens >= length:
        return _chunk_loss(hidden, head, targets, reduction)
    pieces = []
    for start in range(0, length, chunk_tokens):
        piece = (hidden[:, start:start + chunk_tokens], head, targets[:, start:start + chunk_tokens], reduction)
        pieces.append(checkpoint(_chunk_loss, *piece, use_reentrant=False) if torch.is_grad_enabled()
                      else _chunk_loss(*piece))
    return torch.stack(pieces).sum() if reduction == "sum" else torch.cat(pieces, dim=1)


def count_non_embedding_params(lm) -> int:
    """All parameters minus the input embedding and the LM head (tied weights counted once)."""
    unique = {id(p): p for p in lm.parameters()}
    embeddings = {id(lm.get_input_embeddings().weight), id(lm.get_output_embeddings().weight)}
    return sum(p.numel() for i, p in unique.items() if i not in embeddings)


def load_plain(base_dir, config, activation_checkpointing: bool, chunk_tokens,
               device: torch.device = torch.device("cpu")) -> CausalLMWithLoss:
    """The extended model in fp32, unsharded, on ``device`` (one process in fp32: the miniature's path)."""
    lm = transformers.AutoModelForCausalLM.from_pretrained(base_dir, config=config, dtype=torch.float32).to(device)
    if activation_checkpointing:
        lm.activation_checkpointing_enable({"use_reentrant": False})  # every decoder layer
    assert_rope(lm, config)
    return CausalLMWithLoss(lm, chunk_tokens)


def load_sharded(base_dir, config, device: torch.device, mesh, *, bf16: bool, cpu_offload: bool,
                 activation_checkpointing: bool, chunk_tokens) -> CausalLMWithLoss:
    """The extended model sharded with FSDP2 over ``mesh``: built on the meta device, materialised, loaded.

    Only rank 0 reads the base weights (fp32 on the CPU); ``set_model_state_dict(broadcast_from_rank0=True)``
    sends each process its shards, so host memory holds one full copy, not one per process. ``base_dir`` None:
    the weights are left uninitialised for the caller to fill (the device benchmark's random model).
    """
    import torch.distributed as dist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    with torch.device("meta"):
        lm = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    lm.tie_weights()
    if activation_checkpointing:
        lm.activation_checkpointing_enable({"use_reentrant": False})  # every decoder layer
    wrapper = CausalLMWithLoss(lm, chunk_tokens)
    policy = {"mesh": mesh,
              "mp_policy": MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if bf16
              else MixedPrecisionPolicy(),
              "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()}
    for layer in lm.model.layers:
        fully_shard(layer, **policy)
    fully_shard(wrapper, **policy)
    for module in wrapper.modules():
        if hasattr(module, "set_gradient_divide_factor"):
            # Sum, not average, over processes: each micro-batch's loss is already divided by the global
            # batch's token count, so the sum is the global mean whatever the process count. A plain SUM
            # collective (gloo has no PREMUL_SUM; a factor of 1 changes nothing).
            module.set_gradient_divide_factor(1.0)
            module.set_force_sum_reduction_for_comms(True)
    wrapper.to_empty(device="cpu" if cpu_offload else device)
    reset_rope(lm, config)
    if cpu_offload:
        # to_empty put everything on the CPU; the rotary buffers are used in the forward on the GPU
        for rotary in rotary_modules(lm):
            rotary.to(device)
    if base_dir is None:
        assert_rope(lm, config)
        return wrapper
    full = {}
    if dist.get_rank() == 0:
        base = transformers.AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
        full = {f"lm.{k}": v for k, v in base.state_dict().items()}
        del base
    set_model_state_dict(wrapper, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    assert_rope(lm, config)
    return wrapper


def full_state_dict(wrapper, sharded: bool) -> dict:
    """The HF model's full state dict on the CPU (on rank 0; empty elsewhere when sharded)."""
    if not sharded:
        return wrapper.lm.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    full = get_model_state_dict(wrapper, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {k[len("lm."):]: v for k, v in full.items()}
