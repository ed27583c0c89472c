"""The extension recipe: spec validation and the learning-rate schedules.

The spec is a model's ``extend`` mapping (``$defs/extend_spec``; defaults = the official train.py/train.yaml
recipe) plus keys the workflow adds: ``n_ctx`` (the extended context), ``rope_scaling``
(``{rope_type: yarn|linear, factor: F, original_max_position_embeddings: N}``) and optionally ``data_column``
(the corpus's token column, ``extension_data.<source>.column``; default ``input_ids``).

Schedules (multiplier of ``lr`` at optimizer update ``u``, 0-based):

- ``intended``: transformers' ``get_linear_schedule_with_warmup`` as train.yaml asks for it: ``s/W`` for
  ``s < W``, else ``max(0, (U - s) / (U - W))`` with ``s = u`` (so update 0 runs at LR 0).
- ``as-run``: the same function at ``s = as_run_stride * u``. accelerate steps a prepared scheduler once per
  process at every optimizer update, so the official 8-process run went through its schedule 8x fast (peak
  near update 3, LR 0 from update 50 of 400). With weight decay 0 the updates at LR 0 cannot change the weights,
  so the run stops after the last update whose LR is non-zero; update 0 (LR 0) still runs because it changes
  Adam's moments.
- ``cosine`` (the miniature's, ``ctxscale.tiny`` before this module): ``(u + 1) / W`` for ``u < W``, then
  cosine from 1 to ``min_lr_ratio`` over the remaining updates.
"""

from __future__ import annotations

import copy
import math

from ctxscale.config import schema_defaults, validate_definition
from ctxscale.errors import UserError

SYNTHETIC = "synthetic"
ROPE_TYPES = ("yarn", "linear")
WORKFLOW_KEYS = ("n_ctx", "rope_scaling", "data_column")
DEFAULT_COLUMN = "input_ids"


def linear_warmup_decay(step: int, warmup: int, total: int) -> float:
    """transformers' ``get_linear_schedule_with_warmup`` multiplier after ``step`` scheduler steps."""
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


def cosine_warmup(update: int, total: int, warmup: int, min_lr_ratio: float) -> float:
    """The miniature's schedule: linear warm-up ``(u+1)/W``, then cosine decay to ``min_lr_ratio``."""
    if update < warmup:
        return (update + 1) / warmup
    progress = (update - warmup) / max(1, total - warmup)
    # min + (1 - min) * ...: for min 0.1 this is bit for bit the old tiny.py ``0.1 + 0.9 * ...`` (1 - 0.1 == 0.9)
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_multiplier(spec: dict, update: int) -> float:
    """The LR multiplier of optimizer update ``update`` (0-based) under ``spec['lr_schedule']``."""
    schedule, total, warmup = spec["lr_schedule"], spec["updates"], spec["warmup_updates"]
    if schedule == "as-run":
        return linear_warmup_decay(spec["as_run_stride"] * update, warmup, total)
    if schedule == "intended":
        return linear_warmup_decay(update, warmup, total)
    return cosine_warmup(update, total, warmup, spec["min_lr_ratio"])


def learning_rate(spec: dict, update: int) -> float:
    """The learning rate of update ``update`` (``lr`` x multiplier, in that order, as LambdaLR computes it)."""
    return spec["lr"] * lr_multiplier(spec, update)


def updates_to_run(spec: dict) -> int:
    """How many updates run: all of them, except as-run, which stops after the last non-zero-LR update."""
    if spec["lr_schedule"] != "as-run":
        return spec["updates"]
    nonzero = [u for u in range(spec["updates"]) if lr_multiplier(spec, u) > 0]
    return max(nonzero, default=0) + 1


def read_spec(raw, base_context: int) -> dict:
    """The validated spec with defaults filled, ``rope_scaling`` checked against the base context.

    ``base_context`` is the base checkpoint's ``max_position_embeddings``. The checks: ``rope_type`` is yarn or
    linear; ``original_max_position_embeddings`` (default: the base context) equals the base context; and
    ``factor x base context = n_ctx``.
    """
    if not isinstance(raw, dict):
        raise UserError("--spec must be a JSON object")
    spec = copy.deepcopy(raw)
    workflow = {key: spec.pop(key) for key in WORKFLOW_KEYS if key in spec}
    validate_definition(spec, "extend_spec", "--spec")
    n_ctx = workflow.get("n_ctx")
    if not isinstance(n_ctx, int) or isinstance(n_ctx, bool) or n_ctx < 1:
        raise UserError(f"--spec needs n_ctx, the extended context, as a positive integer (got {n_ctx!r})")
    spec["n_ctx"] = n_ctx
    spec["rope_scaling"] = check_rope_scaling(workflow.get("rope_scaling"), base_context, n_ctx)
    column = workflow.get("data_column", DEFAULT_COLUMN)
    if not isinstance(column, str) or not column:
        raise UserError(f"--spec data_column must be a column name, got {column!r}")
    spec["data_column"] = column
    if spec["data"]["source"] == SYNTHETIC:
        spec["data"]["mix"] = check_mix(spec["data"].get("mix", schema_defaults("tiny_train")["mix"]))
    elif "mix" in spec["data"]:
        raise UserError("--spec data.mix applies to data.source synthetic only")
    if spec["lr_schedule"] == "cosine" and spec["warmup_updates"] >= spec["updates"]:
        raise UserError(f"warmup_updates {spec['warmup_updates']} must be fewer than updates {spec['updates']}")
    return spec


def check_rope_scaling(rope_scaling, base_context: int, n_ctx: int) -> dict:
    if not isinstance(rope_scaling, dict) or rope_scaling.get("rope_type") not in ROPE_TYPES \
            or not isinstance(rope_scaling.get("factor"), (int, float)) or isinstance(rope_scaling["factor"], bool):
        raise UserError("--spec needs rope_scaling = {rope_type: yarn|linear, factor: F, "
                        f"original_max_position_embeddings: N}}, got {rope_scaling!r}")
    unknown = sorted(set(rope_scaling) - {"rope_type", "factor", "original_max_position_embeddings"})
    if unknown:
        raise UserError(f"unknown rope_scaling key {unknown[0]!r}")
    scaling = {"rope_type": rope_scaling["rope_type"], "factor": float(rope_scaling["factor"]),
               "original_max_position_embeddings": rope_scaling.get("original_max_position_embeddings", base_context)}
    original = scaling["original_max_position_embeddings"]
    if original != base_context:
        raise UserError(f"rope_scaling.original_max_position_embeddings is {original} but the base checkpoint's "
                        f"context (max_position_embeddings) is {base_context}")
    if scaling["factor"] <= 1 or not math.isclose(scaling["factor"] * base_context, n_ctx):
        raise UserError(f"n_ctx {n_ctx} is not rope_scaling.factor {rope_scaling['factor']} x the base context "
                        f"{base_context} (the factor must be above 1)")
    return scaling


def check_mix(mix, where: str = "data.mix") -> dict:
    """Sampling weights of the synthetic training sources (the miniature's training data), as floats."""
    from ctxscale.datasets.synthetic_kinds import KINDS  # imported here so a corpus run does not need them

    known = set(KINDS)
    if not isinstance(mix, dict) or not mix:
        raise UserError(f"{where} must be a non-empty mapping of sources to weights "
                        f"(sources: {', '.join(sorted(known))})")
    unknown = sorted(set(mix) - known)
    if unknown:
        raise UserError(f"unknown training source {unknown[0]!r} in {where} (known: {', '.join(sorted(known))})")
    if any(not isinstance(w, (int, float)) or w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
        raise UserError(f"{where} weights must be non-negative numbers with a positive sum")
    return {k: float(v) for k, v in mix.items()}


def accumulation_steps(spec: dict, processes: int) -> int:
    """Micro-batches per process per update; ``global_batch`` must be ``micro_batch x processes x`` this."""
    per_round = spec["micro_batch"] * processes
    if spec["global_batch"] % per_round:
        raise UserError(f"global_batch {spec['global_batch']} is not a multiple of micro_batch {spec['micro_batch']} "
                        f"x processes {processes}")
    return spec["global_batch"] // per_round
