"""Compute accounting: parameter counts, C = 6ND, model-info files."""

import json
import logging

import pytest

from ctxscale.model_info import main as model_info_main
from ctxscale.model_info import (model_info, non_embedding_params_from_config, total_params_from_config,
                                 training_compute)
from ctxscale.errors import UserError


LLAMA2_7B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 32, "vocab_size": 32000, "tie_word_embeddings": False,
             "attention_bias": False}
LLAMA2_13B = {**LLAMA2_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
              "num_attention_heads": 40, "num_key_value_heads": 40}
LLAMA2_70B = {**LLAMA2_7B, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80,
              "num_attention_heads": 64, "num_key_value_heads": 8}
QWEN25_05B = {"model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
              "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True}
GEMMA2_2B = {"model_type": "gemma2", "hidden_size": 2304, "intermediate_size": 9216, "num_hidden_layers": 26,
             "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256, "vocab_size": 256000,
             "tie_word_embeddings": True}


def test_training_compute_hand_worked():
    assert training_compute(1e9, 2e12) == pytest.approx(1.2e22)
    assert training_compute(6_476_271_616, 2.0e12 + 209_715_200) == pytest.approx(7.7723e22, rel=5e-5)


@pytest.mark.parametrize("config, non_embedding, total", [
    (LLAMA2_7B, 6_476_271_616, 6_738_415_616),      # paper Table 1; total as published
    (LLAMA2_13B, 12_688_184_320, 13_015_864_320),   # paper Table 1; total as published
    (LLAMA2_70B, 68_452_360_192, 68_976_648_192),   # total as published by Meta (68.98B)
    (QWEN25_05B, 357_898_112, 494_032_768),         # tied embeddings; Qwen reports 0.36B non-embedding, 0.49B total
    (GEMMA2_2B, 2_024_517_888, 2_614_341_888),      # tied embeddings, four norms per layer
])
def test_non_embedding_counts_of_real_architectures(config, non_embedding, total):
    assert non_embedding_params_from_config(config) == non_embedding
    assert total_params_from_config(config) == total


def test_counts_match_transformers_models_built_on_the_meta_device():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    small = {"hidden_size": 64, "intermediate_size": 160, "num_hidden_layers": 3, "num_attention_heads": 4,
             "num_key_value_heads": 2, "vocab_size": 1000}
    configs = [
        {"model_type": "llama", **small, "tie_word_embeddings": False},
        {"model_type": "llama", **small, "attention_bias": True, "mlp_bias": True, "tie_word_embeddings": True},
        {"model_type": "mistral", **small, "tie_word_embeddings": False},
        {"model_type": "qwen2", **small, "tie_word_embeddings": True},
        {"model_type": "gemma", **small, "head_dim": 32},
        {"model_type": "gemma2", **small, "head_dim": 32},
    ]
    for config in configs:
        hf_config = transformers.AutoConfig.for_model(**config)
        with torch.device("meta"):
            model = transformers.AutoModelForCausalLM.from_config(hf_config)
        total = sum(p.numel() for p in model.parameters())  # tied weights appear once
        embedding = model.get_input_embeddings().weight
        head = model.get_output_embeddings().weight
        non_embedding = total - embedding.numel() - (0 if head is embedding else head.numel())
        assert non_embedding_params_from_config(config) == non_embedding, config
        assert total_params_from_config(config) == total, config


def test_unsupported_or_incomplete_configs():
    with pytest.raises(UserError, match="cannot count parameters for model_type 'gpt_neox'"):
        non_embedding_params_from_config({"model_type": "gpt_neox"})
    with pytest.raises(UserError, match="config.json lacks intermediate_size"):
        non_embedding_params_from_config({k: v for k, v in LLAMA2_7B.items() if k != "intermediate_size"})


HF_SPEC = {"group": "yarn", "source": "hf", "repo_id": "x/Llama-2-7b", "revision": "main", "family": "llama2",
           "base": "llama2-7b", "n_ctx": 8192, "rope_scaling": None, "non_embedding_params": 6476271616,
           "pretrain_tokens": 2.0e12, "extension_tokens": 209715200}


def test_model_info_for_hf_models(tmp_path, caplog):
    info = model_info("llama2-7b-8k", HF_SPEC)
    assert info == {"model": "llama2-7b-8k", "source": "hf", "family": "llama2", "group": "yarn",
                    "base": "llama2-7b", "n_ctx": 8192, "non_embedding_params": 6476271616,
                    "pretrain_tokens": 2.0e12, "extension_tokens": 209715200.0,
                    "compute": pytest.approx(7.7723e22, rel=5e-5), "revision": "main"}
    (tmp_path / "config.json").write_text(json.dumps(LLAMA2_13B))  # the wrong checkpoint
    with caplog.at_level(logging.WARNING):
        info = model_info("llama2-7b-8k", HF_SPEC, tmp_path)
    assert "counts 12,688,184,320" in caplog.text
    assert info["non_embedding_params"] == 6476271616 and info["non_embedding_params_counted"] == 12688184320
    counted = model_info("x", {**HF_SPEC, "non_embedding_params": None}, tmp_path)
    assert counted["non_embedding_params"] == 12688184320
    with pytest.raises(UserError, match="no non_embedding_params"):
        model_info("x", {**HF_SPEC, "non_embedding_params": None})
    with pytest.raises(UserError, match="source must be 'hf', 'tiny', 'local' or 'extend'"):
        model_info("x", {**HF_SPEC, "source": "s3"})


def test_model_info_for_tiny_models_uses_measured_training(tmp_path, caplog):
    spec = {"group": "yarn", "source": "tiny", "family": "tiny", "base": "tiny-m", "n_ctx": 256}
    with pytest.raises(UserError, match="needs --checkpoint"):
        model_info("tiny-m-256", spec)
    with pytest.raises(UserError, match="train the model first"):
        model_info("tiny-m-256", spec, tmp_path)
    (tmp_path / "ctxscale_training.json").write_text(json.dumps(
        {"pretrain_tokens": 3_000_000, "extension_tokens": 65_536, "non_embedding_params": 412_160, "n_ctx": 512}))
    with caplog.at_level(logging.WARNING):
        info = model_info("tiny-m-256", spec, tmp_path)
    assert "trained with n_ctx 512" in caplog.text
    assert info["non_embedding_params"] == 412_160 and info["revision"] is None and info["n_ctx"] == 256
    assert info["compute"] == pytest.approx(6 * 412_160 * 3_065_536)


def test_model_info_of_an_extension_counts_the_tokens_extension_compute_tokens_names(tmp_path):
    """A PI model built by ctxscale.extend: N and D_pretrain from the config; the extension tokens from the config
    (Table 1's nominal 400 x 64 x n_ctx), or those fed, or those fed at a non-zero LR (the as-run schedule's)."""
    spec = {**HF_SPEC, "source": "extend", "extends": "llama2-7b-4k", "rope_scaling": {"rope_type": "linear",
            "factor": 2.0}, "compute_tokens": "config"}  # fmt: skip
    with pytest.raises(UserError, match="needs --checkpoint"):
        model_info("pi-8k", spec, tmp_path)
    validation = {"buckets": [[0, 4096], [4096, 8192]], "before": [2.1, 7.9], "after": [2.0, 2.2]}
    (tmp_path / "ctxscale_training.json").write_text(json.dumps(
        {"pretrain_tokens": None, "extension_tokens": 51 * 64 * 8192, "tokens_fed": 51 * 64 * 8192,
         "tokens_nonzero_lr": 49 * 64 * 8192, "non_embedding_params": 6476271616, "steps": 51, "updates_planned": 400,
         "processes": 8, "precision": "bf16", "validation": validation}))  # fmt: skip
    paper = model_info("pi-8k", spec, tmp_path)
    assert paper["source"] == "extend" and paper["extension_tokens"] == 209715200
    assert paper["compute"] == pytest.approx(6 * 6476271616 * (2.0e12 + 209715200))
    assert paper["extension"]["validation"] == validation and paper["extension"]["updates"] == 51
    fed = model_info("pi-8k", {**spec, "compute_tokens": "fed"}, tmp_path)
    assert fed["extension_tokens"] == 51 * 64 * 8192
    nonzero = model_info("pi-8k", {**spec, "compute_tokens": "nonzero_lr"}, tmp_path)
    assert nonzero["extension_tokens"] == 49 * 64 * 8192
    assert nonzero["compute"] == pytest.approx(6 * 6476271616 * (2.0e12 + 49 * 64 * 8192))
    with pytest.raises(UserError, match="has no extension_tokens"):
        model_info("pi-8k", {**spec, "extension_tokens": None}, tmp_path)
    tiny = {"group": "yarn", "source": "extend", "family": "tiny", "base": "tiny-m", "n_ctx": 256,
            "compute_tokens": "fed"}  # the miniature: everything measured, the base's own numbers passed through
    (tmp_path / "ctxscale_training.json").write_text(json.dumps(
        {"pretrain_tokens": 3_000_000, "extension_tokens": 204_800, "tokens_fed": 204_800, "tokens_nonzero_lr": 204_800,
         "non_embedding_params": 412_160}))  # fmt: skip
    assert model_info("tiny-m-256", tiny, tmp_path)["compute"] == pytest.approx(6 * 412_160 * 3_204_800)


def test_model_info_cli(tmp_path, capsys):
    out = tmp_path / "models" / "llama2-7b-8k.json"
    assert model_info_main(["--model", "llama2-7b-8k", "--spec", json.dumps(HF_SPEC), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["compute"] == pytest.approx(7.7723e22, rel=5e-5)
    assert model_info_main(["--model", "m", "--spec", "{not json", "--out", str(out)]) == 2
    assert capsys.readouterr().err.startswith("error: --spec is not valid JSON")
