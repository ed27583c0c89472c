"""Training compute C = 6 N D (Kaplan et al.) and the model-info files (``results/models/{model}.json``).

- ``N`` = non-embedding parameters = total - input embedding - LM head (tied embeddings counted once, so
  a tied model loses one ``vocab x hidden`` matrix, an untied one two). Counted analytically from a
  Hugging Face ``config.json`` for decoder families with rotary positions: Llama/Mistral (optional
  ``attention_bias`` on q/k/v/o and ``mlp_bias``), Qwen2 (bias on q/k/v only) and Gemma/Gemma2 (Gemma2 has
  four RMSNorms per layer). Every count includes the final norm. Checked in the tests against
  ``transformers`` models built on the meta device and against the paper's Table 1.
- ``D`` = pretraining tokens + context-extension tokens (the paper's Table 1 adds 400 steps x 64
  sequences x n_ctx of YaRN training to 2.0T). The paper's Table 1 itself, beside ours, is built by
  :func:`ctxscale.tables.table1`.

Model info step (``python -m ctxscale.model_info``; contract in docs/architecture.md): for
``source: hf`` the numbers come from the model's config entry; with ``--checkpoint DIR`` holding a
``config.json`` N is also counted and a disagreement is logged (the config value is kept, it is what
the paper used); ``source: local`` likewise, N counted from the checkpoint when the entry has none. For ``source: tiny`` the checkpoint's ``ctxscale_training.json`` gives the numbers
actually measured in training. For ``source: extend`` (built by ``ctxscale.extend``) the config's N and
pretraining tokens win where given, the extension tokens follow ``extension.compute_tokens``, and the record
keeps the training's tokens fed, tokens at a non-zero LR and validation loss by position bucket (``extension``).
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np

from ctxscale.errors import UserError
from ctxscale.files import read_json_object
from ctxscale.steps import cli_main, parse_json_option, parse_step_args, step_parser

log = logging.getLogger(__name__)

FLOPS_PER_PARAM_TOKEN = 6
TRAINING_FILE = "ctxscale_training.json"

# model_type -> (RMSNorms per decoder layer, bias on q/k/v by default, bias on o_proj by default)
_ARCHITECTURES = {
    "llama": (2, False, False),
    "mistral": (2, False, False),
    "qwen2": (2, True, False),
    "gemma": (2, False, False),
    "gemma2": (4, False, False),
}


def training_compute(non_embedding_params, tokens):
    """C = 6 N D in FLOPs (numpy-broadcasting)."""
    return FLOPS_PER_PARAM_TOKEN * np.asarray(non_embedding_params, dtype=float) * np.asarray(tokens, dtype=float)


def non_embedding_params_from_config(config: dict) -> int:
    """Non-embedding parameters of a decoder-only HF model from its ``config.json`` (module docstring)."""
    model_type = config.get("model_type")
    if model_type not in _ARCHITECTURES:
        raise UserError(f"cannot count parameters for model_type {model_type!r}; supported: "
                        f"{', '.join(sorted(_ARCHITECTURES))}")
    try:
        hidden = int(config["hidden_size"])
        intermediate = int(config["intermediate_size"])
        layers = int(config["num_hidden_layers"])
        heads = int(config["num_attention_heads"])
    except KeyError as exc:
        raise UserError(f"config.json lacks {exc.args[0]}") from None
    kv_heads = int(config.get("num_key_value_heads") or heads)
    head_dim = int(config.get("head_dim") or hidden // heads)
    norms_per_layer, qkv_bias, o_bias = _ARCHITECTURES[model_type]
    if "attention_bias" in config:  # Llama/Mistral-style flag covers q, k, v and o
        qkv_bias = o_bias = bool(config["attention_bias"])
    mlp_bias = bool(config.get("mlp_bias", False))
    q_out, kv_out = heads * head_dim, kv_heads * head_dim
    attention = hidden * q_out + 2 * hidden * kv_out + q_out * hidden
    attention += (q_out + 2 * kv_out) * qkv_bias + hidden * o_bias
    mlp = 3 * hidden * intermediate + (2 * intermediate + hidden) * mlp_bias
    per_layer = attention + mlp + norms_per_layer * hidden
    return int(layers * per_layer + hidden)  # + the final norm


def total_params_from_config(config: dict) -> int:
    """All parameters: non-embedding + input embedding + LM head unless tied (counted once when tied)."""
    embedding = int(config["vocab_size"]) * int(config["hidden_size"])
    tied = bool(config.get("tie_word_embeddings", config.get("model_type") in ("gemma", "gemma2")))
    return non_embedding_params_from_config(config) + embedding * (1 if tied else 2)


def read_model_info(paths) -> dict[str, dict]:
    """Model-info files (``results/models/{model}.json``, written by :func:`main`) by model name
    (the file's ``model`` field, else its stem), each with a positive ``n_ctx`` and ``compute``: the one
    reader of these files (aggregation, tables, figures). Unreadable, incomplete or doubled files are user
    errors that name the file."""
    infos: dict[str, dict] = {}
    for given in paths or ():
        path = Path(given)
        info = read_json_object(path, "model-info file")
        name = info.get("model", path.stem)
        for field in ("n_ctx", "compute"):
            value = info.get(field)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
                raise UserError(f"model-info file {path}: {field} must be a positive number, got {value!r}")
        if name in infos:
            raise UserError(f"model {name!r} has more than one model-info file")
        infos[name] = {**info, "model": name}
    return infos


def model_info(model: str, spec: dict, checkpoint=None) -> dict:
    """The model-info record of docs/architecture.md for one ``models:`` entry."""
    if not isinstance(spec, dict):
        raise UserError(f"--spec for {model} must be a JSON object")
    source = spec.get("source")
    if source not in ("hf", "tiny", "local", "extend"):
        raise UserError(f"model {model}: source must be 'hf', 'tiny', 'local' or 'extend', got {source!r}")
    if "n_ctx" not in spec:
        raise UserError(f"model {model}: the spec has no n_ctx")
    checkpoint = Path(checkpoint) if checkpoint else None
    extra = {}
    if source == "tiny":
        if checkpoint is None:
            raise UserError(f"model {model}: a tiny model needs --checkpoint with {TRAINING_FILE}")
        training_path = checkpoint / TRAINING_FILE
        if not training_path.exists():
            raise UserError(f"model {model}: {training_path} does not exist (train the model first)")
        training = json.loads(training_path.read_text())
        missing = [k for k in ("pretrain_tokens", "extension_tokens", "non_embedding_params") if k not in training]
        if missing:
            raise UserError(f"{training_path} lacks {', '.join(missing)}")
        n_params = int(training["non_embedding_params"])
        pretrain, extension = float(training["pretrain_tokens"]), float(training["extension_tokens"])
        if "n_ctx" in training and int(training["n_ctx"]) != int(spec["n_ctx"]):
            log.warning("model %s: trained with n_ctx %s but the config says %s; using the config's",
                        model, training["n_ctx"], spec["n_ctx"])
    elif source == "extend":
        n_params, pretrain, extension, extra["extension"] = _extension_numbers(model, spec, checkpoint)
    else:
        n_params = spec.get("non_embedding_params")
        config_path = checkpoint / "config.json" if checkpoint else None
        if config_path is not None and config_path.exists():
            counted = non_embedding_params_from_config(json.loads(config_path.read_text()))
            extra["non_embedding_params_counted"] = counted
            if n_params is None:
                n_params = counted
            elif int(n_params) != counted:
                log.warning("model %s: config says %s non-embedding parameters but %s counts %s; keeping the config's",
                            model, f"{int(n_params):,}", config_path, f"{counted:,}")
        if n_params is None:
            raise UserError(f"model {model}: no non_embedding_params in the spec and no checkpoint config.json to count")
        if spec.get("pretrain_tokens") is None:
            raise UserError(f"model {model}: the spec has no pretrain_tokens")
        pretrain, extension = float(spec["pretrain_tokens"]), float(spec.get("extension_tokens") or 0)
    n_params = int(n_params)
    return {"model": model, "source": source, "family": spec.get("family"), "group": spec.get("group"),
            "base": spec.get("base"), "n_ctx": int(spec["n_ctx"]), "non_embedding_params": n_params,
            "pretrain_tokens": pretrain, "extension_tokens": extension,
            "compute": float(training_compute(n_params, pretrain + extension)),
            "revision": spec.get("revision") if source == "hf" else None, **extra}


def _extension_numbers(model: str, spec: dict, checkpoint: Path | None) -> tuple[int, float, float, dict]:
    """N, pretraining and extension tokens of a model built by ``ctxscale.extend``, and what model info keeps
    of its training record.

    The config's N and pretraining tokens win where it gives them (the paper's Table 1 values); the rest come
    from the checkpoint's ``ctxscale_training.json``. ``spec["compute_tokens"]`` (the workflow passes
    ``extension.compute_tokens``) says which extension-token count feeds C: ``config`` the entry's
    ``extension_tokens``, ``fed`` the tokens fed in training, ``nonzero_lr`` those fed at a non-zero LR (both
    plus the extension tokens the base had already seen).
    """
    if checkpoint is None or not (checkpoint / TRAINING_FILE).exists():
        raise UserError(f"model {model}: an extended model needs --checkpoint with {TRAINING_FILE}")
    path = checkpoint / TRAINING_FILE
    training = json.loads(path.read_text())
    missing = [k for k in ("extension_tokens", "tokens_fed", "tokens_nonzero_lr", "non_embedding_params")
               if k not in training]
    if missing:
        raise UserError(f"{path} lacks {', '.join(missing)}")
    n_params = spec.get("non_embedding_params", training["non_embedding_params"])
    pretrain = spec.get("pretrain_tokens", training.get("pretrain_tokens"))
    if pretrain is None:
        raise UserError(f"model {model}: give pretrain_tokens in the config ({path} does not know them for this base)")
    before = float(training["extension_tokens"]) - float(training["tokens_fed"])  # the base's own extension
    choice = spec.get("compute_tokens", "config")
    if choice == "config":
        if spec.get("extension_tokens") is None:
            raise UserError(f"model {model}: extension.compute_tokens is config but the entry has no extension_tokens")
        extension = float(spec["extension_tokens"])
    elif choice == "fed":
        extension = before + float(training["tokens_fed"])
    else:
        extension = before + float(training["tokens_nonzero_lr"])
    record = {"compute_tokens": choice, "tokens_fed": training["tokens_fed"],
              "tokens_nonzero_lr": training["tokens_nonzero_lr"], "updates": training.get("steps"),
              "updates_planned": training.get("updates_planned"), "processes": training.get("processes"),
              "precision": training.get("precision"), "validation": training.get("validation")}
    return int(n_params), float(pretrain), extension, record


# ------------------------------------------------------------------------------------------------ CLI


@cli_main
def main(argv: list[str] | None = None) -> int:
    """``python -m ctxscale.model_info --model NAME --spec JSON [--checkpoint DIR] --out PATH``."""
    parser = step_parser("ctxscale model-info", "Write a model-info JSON (N, D, C).")
    parser.add_argument("--model", required=True, help="model name (key of the config's models:)")
    parser.add_argument("--spec", required=True, help="the model's config entry as a JSON string")
    parser.add_argument("--checkpoint", help="checkpoint directory (tiny, extend: required; hf: optional N cross-check)")
    parser.add_argument("--out", required=True, help="output JSON path")
    args = parse_step_args(parser, argv)
    from ctxscale.fitting import write_json_atomic  # scipy and the fitting stack load only when the step runs

    info = model_info(args.model, parse_json_option(args.spec, "--spec"), args.checkpoint)
    write_json_atomic(args.out, info)
    log.info("%s: N = %s, D = %.4g, C = %.4e", args.model, f"{info['non_embedding_params']:,}",
             info["pretrain_tokens"] + info["extension_tokens"], info["compute"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
