"""The miniature's tiny models: tokenizer, init/save/load (transformers and lm-eval), training, YaRN extension."""

from __future__ import annotations

import json
import string

import pytest
import torch

from ctxscale import tiny

# Small enough that a training run takes well under a second.
TINY_SPEC = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "n_ctx": 32, "steps": 3, "batch_size": 2, "seed": 7}


@pytest.fixture(scope="module")
def tokenizer():
    return tiny.build_tokenizer()


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    out = tmp_path_factory.mktemp("base")
    assert tiny.main(["train", "--spec", json.dumps(TINY_SPEC), "--out", str(out)]) == 0
    return out


def test_tokenizer_round_trip_and_bos(tokenizer):
    text = "Q: 47\nA: 3547\n\nS: qd xp\nE: QF XF\n\n" + string.punctuation
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert len(ids) == len(text) + 1  # one token per character, plus BOS
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == ids[1:]
    assert tokenizer.convert_ids_to_tokens(tokenizer("Q:")["input_ids"]) == ["<s>", "Q", ":"]
    # characters outside printable ASCII and newline are unknown, never silently merged
    assert tokenizer("a\tb", add_special_tokens=False)["input_ids"][1] == tokenizer.unk_token_id
    assert {tokenizer.pad_token, tokenizer.eos_token, tokenizer.unk_token} == {"<pad>", "</s>", "<unk>"}
    assert len(tokenizer) == 4 + 96  # specials + space, newline, 10 digits, 52 letters, 32 punctuation


def test_init_save_load_with_transformers_and_lm_eval(tokenizer, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = tiny.init_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, n_ctx=64, seed=3)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.max_position_embeddings == 64
    tiny.save_checkpoint(model, tokenizer, tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded("Q: a\nA:")["input_ids"] == tokenizer("Q: a\nA:")["input_ids"]

    lm = HFLM(pretrained=str(tmp_path), device="cpu", batch_size=1, max_length=64)
    assert lm.tok_encode("ab") == [tokenizer.bos_token_id, *tokenizer("ab", add_special_tokens=False)["input_ids"]]
    assert lm.max_length == 64


def test_seeded_init_differs_by_seed(tokenizer):
    a = tiny.init_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    b = tiny.init_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=0)
    c = tiny.init_model(tokenizer, hidden_size=16, num_layers=1, num_heads=2, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.model.layers[0].self_attn.q_proj.weight, c.model.layers[0].self_attn.q_proj.weight)


def test_non_embedding_params_hand_count(tokenizer):
    # hidden 8, intermediate 16, one layer: q,k,v,o 4*8*8 = 256; gate, up, down 3*8*16 = 384; two norms 16;
    # final norm 8. The tied embedding/LM head (100 x 8) is excluded once.
    model = tiny.init_model(tokenizer, hidden_size=8, num_layers=1, num_heads=2, intermediate_size=16)
    assert tiny.count_non_embedding_params(model) == 256 + 384 + 16 + 8
    assert sum(p.numel() for p in model.parameters()) == 664 + len(tokenizer) * 8


def test_training_is_deterministic_and_counts_tokens(tmp_path, base_checkpoint):
    again = tmp_path / "again"
    assert tiny.main(["train", "--spec", json.dumps(TINY_SPEC), "--out", str(again)]) == 0
    assert (again / "model.safetensors").read_bytes() == (base_checkpoint / "model.safetensors").read_bytes()

    info = json.loads((base_checkpoint / tiny.TRAINING_INFO).read_text())
    assert info["pretrain_tokens"] == 3 * 2 * 32
    assert info["extension_tokens"] == 0
    assert info["n_ctx"] == 32 and info["steps"] == 3 and info["seed"] == 7
    assert len(info["losses"]) == 3 and all(loss > 0 for loss in info["losses"])
    # hidden 16, intermediate 64, one layer: 4*16*16 + 3*16*64 + 2*16 + 16
    assert info["non_embedding_params"] == 1024 + 3072 + 32 + 16
    assert json.loads((again / tiny.TRAINING_INFO).read_text())["losses"] == info["losses"]

    other = tmp_path / "other-seed"
    assert tiny.main(["train", "--spec", json.dumps({**TINY_SPEC, "seed": 8}), "--out", str(other)]) == 0
    assert (other / "model.safetensors").read_bytes() != (base_checkpoint / "model.safetensors").read_bytes()


def test_training_lowers_the_loss(tokenizer):
    _, _, info = tiny.train({**TINY_SPEC, "hidden_size": 32, "steps": 40, "batch_size": 8, "n_ctx": 64}, tokenizer)
    first, last = sum(info["losses"][:5]) / 5, sum(info["losses"][-5:]) / 5
    assert last < first - 1.0  # the format tokens alone are learnt within 40 steps


def test_training_batch_is_bos_then_task_text(tokenizer):
    import numpy as np

    batch = tiny.training_batch(tokenizer, np.random.default_rng(0), {"arithmetic": 1.0}, 3, 40)
    assert batch.shape == (3, 40)
    assert (batch[:, 0] == tokenizer.bos_token_id).all()
    text = tokenizer.decode(batch[0], skip_special_tokens=True)
    assert text.startswith("Q: ") and "\nA: " in text


def test_yarn_variant_of_a_tiny_model_by_the_extension_stage_loads_and_runs_past_n_ctx(tmp_path, base_checkpoint):
    """The miniature's extended variants come from ctxscale.extend (the demo's recipe); the checkpoint carries the
    YaRN config and the base's pretraining tokens, and starts from the base weights."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ctxscale.extend.__main__ import main as extend

    out = tmp_path / "extended"
    spec = {"updates": 2, "global_batch": 2, "micro_batch": 2, "lr": 0.002, "warmup_updates": 1, "lr_schedule": "cosine",
            "seed": 0, "precision": "fp32", "activation_checkpointing": False, "loss_chunk_tokens": None,
            "attention": "sdpa", "data": {"source": "synthetic"}, "validation": {"sequences": 2, "bucket_tokens": 32},
            "n_ctx": 64, "rope_scaling": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 32}}
    assert extend(["--base", str(base_checkpoint), "--spec", json.dumps(spec), "--out", str(out),
                   "--state-dir", str(tmp_path / "state")]) == 0  # fmt: skip
    config = AutoConfig.from_pretrained(out)
    assert config.max_position_embeddings == 64
    rope = config.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["original_max_position_embeddings"]) == ("yarn", 2.0, 32)

    info = json.loads((out / tiny.TRAINING_INFO).read_text())
    assert info["pretrain_tokens"] == 3 * 2 * 32  # the base model's
    assert info["extension_tokens"] == info["tokens_fed"] == 2 * 2 * 64
    assert info["n_ctx"] == 64 and info["stage"] == "extension"
    assert info["non_embedding_params"] == 1024 + 3072 + 32 + 16
    assert info["validation"]["buckets"] == [[0, 32], [32, 64]] and len(info["validation"]["after"]) == 2

    model = AutoModelForCausalLM.from_pretrained(out)
    with torch.no_grad():
        logits = model(torch.ones(1, 100, dtype=torch.long)).logits  # past n_ctx: RoPE runs on
    assert logits.shape == (1, 100, model.config.vocab_size) and torch.isfinite(logits).all()
    # the extended model starts from the base weights: an MLP weight moved by two small steps only
    base = AutoModelForCausalLM.from_pretrained(base_checkpoint)
    delta = (model.model.layers[0].mlp.up_proj.weight - base.model.layers[0].mlp.up_proj.weight).abs().max()
    assert 0 < delta < 0.05


@pytest.mark.parametrize(
    "argv_tail, message",
    [
        (["train", "--spec", "{not json", "--out", "X"], "--spec is not valid JSON"),
        (["train", "--spec", '{"hidden": 8}', "--out", "X"], "unknown spec key 'hidden'"),
        (["train", "--spec", '{"steps": 0}', "--out", "X"], "spec steps must be a positive integer"),
        (["train", "--spec", '{"mix": {"poetry": 1}}', "--out", "X"], "unknown training source 'poetry'"),
        (["train", "--spec", '{"hidden_size": 10, "num_heads": 4}', "--out", "X"], "not divisible"),
    ],
)
def test_user_errors_exit_2_with_one_line(argv_tail, message, capsys):
    assert tiny.main(argv_tail) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_tokenizer_command_saves_a_loadable_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    assert tiny.main(["tokenizer", "--out", str(tmp_path / "tok")]) == 0
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert loaded("A: B")["input_ids"] == tiny.build_tokenizer()("A: B")["input_ids"]
