"""ctxscale.extend: the context-extension training core (recipe, data, FSDP2 equivalence, resume, RoPE, errors).

Tiny models (hidden 32, 2 layers) and short sequences keep the whole file to well under a minute of CPU per
test; the multi-process checks run ``python -m ctxscale.extend --processes 2`` (torchrun with gloo) in a
subprocess.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import transformers
from safetensors.torch import load_file

from ctxscale import tiny
from ctxscale.extend import model as modeling
from ctxscale.extend.__main__ import main
from ctxscale.extend.data import CorpusStream, ParquetCorpus
from ctxscale.extend.recipe import learning_rate, lr_multiplier, read_spec, updates_to_run

SRC = Path(__file__).resolve().parents[1] / "src"
BASE_CTX = 32
YARN = {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": BASE_CTX}
LINEAR = {"rope_type": "linear", "factor": 4.0}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny base checkpoint: 2 layers, hidden 32, context 32, trained 3 steps."""
    out = tmp_path_factory.mktemp("base")
    spec = {"hidden_size": 32, "num_layers": 2, "num_heads": 2, "n_ctx": BASE_CTX, "steps": 3, "batch_size": 2}
    assert tiny.main(["train", "--spec", json.dumps(spec), "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def hf_base(tmp_path_factory):
    """A base like a downloaded Llama-2: untied embeddings, no ctxscale_training.json, context 32."""
    out = tmp_path_factory.mktemp("hf_base")
    tokenizer = tiny.build_tokenizer()
    config = transformers.LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                      num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=BASE_CTX, tie_word_embeddings=False,
                                      bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(1)
    transformers.LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A parquet stand-in for a tokenized corpus: 2 files, row groups of 5, rows of 20-100 token ids."""
    folder = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(7)
    for index in range(2):
        rows = [rng.integers(4, 99, size=int(rng.integers(20, 100))).tolist() for _ in range(15)]
        pq.write_table(pa.table({"input_ids": rows}), folder / f"part-{index}.parquet", row_group_size=5)
    return folder


def spec_of(**changes):
    spec = {"updates": 4, "global_batch": 2, "micro_batch": 1, "lr": 0.002, "warmup_updates": 1,
            "lr_schedule": "cosine", "seed": 0, "precision": "fp32", "activation_checkpointing": False,
            "loss_chunk_tokens": None, "attention": "sdpa", "checkpoint_every": 2, "data": {"source": "synthetic"},
            "validation": {"sequences": 3, "bucket_tokens": 16}, "n_ctx": 2 * BASE_CTX, "rope_scaling": YARN}
    spec.update(changes)
    return spec


def command(base, out, state, spec, *extra):
    return [sys.executable, "-m", "ctxscale.extend", "--base", str(base), "--out", str(out), "--state-dir",
            str(state), "--spec", json.dumps(spec), *map(str, extra)]


def environment():
    return {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}


def run_extend(base, out, state, spec, *extra) -> subprocess.CompletedProcess:
    result = subprocess.run(command(base, out, state, spec, *extra), env=environment(), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(folder) -> dict:
    return load_file(Path(folder) / "model.safetensors")


def info(folder) -> dict:
    return json.loads((Path(folder) / "ctxscale_training.json").read_text())


# ------------------------------------------------------------------------------------------ processes


def test_two_processes_give_one_process_weights_fp32_yarn_corpus(tmp_path, hf_base, corpus):
    """fp32: bit for bit, with a parquet corpus (rows of uneven length, padded), chunked loss, activation
    checkpointing, gradient clipping, and the as-run schedule (stride 4 of 16 updates: 4 updates, then LR 0);
    the base has untied embeddings and no ctxscale_training.json, like a downloaded Llama-2."""
    base = hf_base
    spec = spec_of(data={"source": "books"}, micro_batch=2, global_batch=4, loss_chunk_tokens=24,
                   activation_checkpointing=True, lr_schedule="as-run", as_run_stride=4, updates=16,
                   warmup_updates=2, grad_clip=0.5)
    run_extend(base, tmp_path / "one", tmp_path / "s1", spec, "--data-dir", corpus)
    run_extend(base, tmp_path / "two", tmp_path / "s2", spec, "--data-dir", corpus, "--processes", 2)
    one, two = info(tmp_path / "one"), info(tmp_path / "two")
    assert (one["processes"], two["processes"]) == (1, 2)
    assert one["loss"] == two["loss"] and len(one["loss"]) == 4
    full = read_spec(spec, BASE_CTX)
    assert one["lr"] == two["lr"] == [learning_rate(full, u) for u in range(4)]
    assert one["lr"][0] == 0 and lr_multiplier(full, 4) == 0  # update 0 runs at LR 0; update 4 would too
    assert one["validation"] == two["validation"]
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["model.layers.0.mlp.up_proj.weight"], weights(base)["model.layers.0.mlp.up_proj.weight"])
    # rows are cut to min(n_ctx, row length): the corpus rows (20-99 tokens) give fewer than 4 x 64 tokens
    assert 4 * 4 * 20 <= one["tokens_fed"] == two["tokens_fed"] < 4 * 4 * 64
    assert 0 < one["tokens_nonzero_lr"] < one["tokens_fed"]  # update 0 (LR 0) fed tokens that do not count
    assert one["pretrain_tokens"] is None and one["extension_tokens"] == one["tokens_fed"]
    assert "lm_head.weight" in a and not torch.equal(a["lm_head.weight"], a["model.embed_tokens.weight"])
    assert (tmp_path / "two" / "tokenizer.json").read_bytes() == (base / "tokenizer.json").read_bytes()


BF16_LOSS_TOLERANCE = 1e-4  # relative, per update; observed: equal
BF16_WEIGHT_TOLERANCE = 2 ** -8  # relative: half a bf16 ulp of the saved bf16 weights; observed: equal


def test_two_processes_match_one_bf16_linear(tmp_path, base):
    """bf16 (FSDP2 mixed precision, a process group of one for the single process): within tolerance."""
    spec = spec_of(precision="bf16", rope_scaling=LINEAR, n_ctx=4 * BASE_CTX, lr_schedule="intended", updates=3)
    run_extend(base, tmp_path / "one", tmp_path / "s1", spec)
    run_extend(base, tmp_path / "two", tmp_path / "s2", spec, "--processes", 2)
    one, two = info(tmp_path / "one"), info(tmp_path / "two")
    np.testing.assert_allclose(one["loss"], two["loss"], rtol=BF16_LOSS_TOLERANCE)
    full = read_spec(spec, BASE_CTX)
    assert one["lr"] == two["lr"] == [learning_rate(full, u) for u in range(3)] and one["lr"][0] == 0
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    assert all(a[k].dtype == torch.bfloat16 for k in a)
    for key in a:
        torch.testing.assert_close(a[key].float(), b[key].float(), rtol=BF16_WEIGHT_TOLERANCE, atol=1e-6)
    # the output loads with transformers and runs past the base context (4 x 32 = 128 positions, here 100)
    model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "two", dtype=torch.float32)
    assert model.config.max_position_embeddings == 128
    assert model.config.rope_parameters["rope_type"] == "linear" and model.config.rope_parameters["factor"] == 4.0
    with torch.no_grad():
        logits = model(torch.arange(1, 101).remainder(90).unsqueeze(0) + 4).logits
    assert logits.shape[1] == 100 and torch.isfinite(logits).all()
    assert torch.equal(model.model.rotary_emb.inv_freq, modeling.expected_rope(model.config)[0])
    record = info(tmp_path / "two")
    assert record["stage"] == "extension" and record["pretrain_tokens"] == 3 * 2 * BASE_CTX
    assert record["extension_tokens"] == record["tokens_fed"] == 3 * 2 * 128
    assert record["precision"] == "bf16" and record["steps"] == 3 and record["n_ctx"] == 128
    assert record["validation"]["buckets"][-1] == [112, 128] and len(record["validation"]["after"]) == 8


RESUME_SPEC = spec_of(updates=20, checkpoint_every=4, validation={"sequences": 2, "bucket_tokens": 32})


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, base):
    out = tmp_path_factory.mktemp("uninterrupted")
    run_extend(base, out / "whole", out / "state", RESUME_SPEC)
    return out / "whole"


@pytest.mark.parametrize("processes, sent", [(1, signal.SIGUSR1), (2, signal.SIGTERM)],
                         ids=["1-process-SIGUSR1", "2-processes-SIGTERM"])
def test_stopped_by_signal_and_rerun_ends_with_uninterrupted_weights(tmp_path, base, uninterrupted, processes, sent):
    """A stop signal after the first checkpoint (with 2 processes: SIGTERM to the parent, passed on to the
    workers as SIGUSR1): finish the update, save, exit non-zero; the rerun resumes and ends with the weights
    (bit for bit) of an uninterrupted one-process run."""
    spec = RESUME_SPEC
    state = tmp_path / "s2"
    process = subprocess.Popen(command(base, tmp_path / "resumed", state, spec, "--processes", processes),
                               env=environment(), stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (state / "update-000004").is_dir() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(sent)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode != 0, "the run ended before the signal; make it longer"
    assert process.returncode == 75  # EX_TEMPFAIL, also through torchrun (which reports its workers' 75 as 1)
    assert "stopping on SIGUSR1" in stderr
    saved = sorted(p.name for p in state.glob("update-*"))
    assert len(saved) == 1 and 4 <= int(saved[0][-6:]) < 20
    assert not (tmp_path / "resumed").exists()
    rerun = run_extend(base, tmp_path / "resumed", state, spec, "--processes", processes)
    assert f"resuming after {int(saved[0][-6:])} updates" in rerun.stderr
    whole, resumed = info(uninterrupted), info(tmp_path / "resumed")
    assert whole["loss"] == resumed["loss"] and whole["lr"] == resumed["lr"] and len(whole["lr"]) == 20
    assert whole["validation"] == resumed["validation"]
    a, b = weights(uninterrupted), weights(tmp_path / "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not list(state.glob("update-*"))  # removed once the output is written
    assert not (state / "interrupted").exists() and not (state / "stop-requested").exists()


# ------------------------------------------------------------------------------------------ schedules


def test_as_run_schedule_is_the_official_scheduler_stepped_8_times_per_update():
    from transformers import get_linear_schedule_with_warmup

    spec = read_spec(spec_of(lr_schedule="as-run", updates=400, warmup_updates=20, as_run_stride=8, lr=2e-5), BASE_CTX)
    official = []
    with pytest.warns(UserWarning):  # stepping the scheduler without optimizer steps
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
        scheduler = get_linear_schedule_with_warmup(optimizer, 20, 400)
        for _ in range(400):
            official.append(optimizer.param_groups[0]["lr"])
            for _ in range(8):  # accelerate: once per process at every optimizer update
                scheduler.step()
    assert [learning_rate(spec, u) for u in range(400)] == official
    assert updates_to_run(spec) == 50
    assert official[0] == 0 and official[49] > 0 and set(official[50:]) == {0.0}
    assert max(official) == official[2] or max(official) == official[3]  # peak near update 3

    intended = read_spec(spec_of(lr_schedule="intended", updates=400, warmup_updates=20, lr=2e-5), BASE_CTX)
    expected = []
    with pytest.warns(UserWarning):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=2e-5)
        scheduler = get_linear_schedule_with_warmup(optimizer, 20, 400)
        for _ in range(400):
            expected.append(optimizer.param_groups[0]["lr"])
            scheduler.step()
    assert [learning_rate(intended, u) for u in range(400)] == expected and updates_to_run(intended) == 400

    small = read_spec(spec_of(lr_schedule="as-run", updates=16, warmup_updates=2, as_run_stride=8), BASE_CTX)
    assert updates_to_run(small) == 2 and lr_multiplier(small, 0) == 0 and lr_multiplier(small, 1) == 8 / 14
    assert lr_multiplier(small, 2) == 0


def test_cosine_schedule_is_the_miniatures():
    spec = read_spec(spec_of(updates=100, warmup_updates=10, min_lr_ratio=0.1), BASE_CTX)
    assert [learning_rate(spec, u) for u in range(100)] == [0.002 * tiny._schedule(u, 100, 10) for u in range(100)]


# ------------------------------------------------------------------------------------------ model pieces


def small_lm(rope_scaling=None, n_ctx=64):
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=n_ctx,
                                      rope_scaling=dict(rope_scaling) if rope_scaling else None,
                                      attn_implementation="sdpa")
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config)


def test_chunked_loss_equals_the_full_loss_and_gradient():
    lm = small_lm()
    ids = torch.randint(0, 50, (2, 40))
    labels = ids.clone()
    labels[1, 30:] = -100
    full = modeling.CausalLMWithLoss(lm, None)(ids, labels)
    full.backward()
    full_grad = lm.model.embed_tokens.weight.grad.clone()
    lm.zero_grad()
    chunked = modeling.CausalLMWithLoss(lm, 7)(ids, labels)
    chunked.backward()
    torch.testing.assert_close(chunked, full, rtol=1e-6, atol=0)
    torch.testing.assert_close(lm.model.embed_tokens.weight.grad, full_grad, rtol=1e-5, atol=1e-7)
    reference = lm(input_ids=ids, labels=labels).loss  # transformers' mean over the predicted tokens
    torch.testing.assert_close(full / (labels[:, 1:] != -100).sum(), reference, rtol=1e-6, atol=0)
    per_position = modeling.CausalLMWithLoss(lm, 9)(ids, labels, reduction="none")
    assert per_position.shape == (2, 40) and per_position[1, 29:].eq(0).all() and per_position[:, -1].eq(0).all()
    torch.testing.assert_close(per_position.sum(), full, rtol=1e-6, atol=0)


def test_rope_buffers_fp32_and_transformers_values_after_meta_sharding_and_bf16(tmp_path, base):
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    config = modeling.extended_config(base, YARN, 2 * BASE_CTX, "sdpa")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        wrapper = modeling.load_sharded(base, config, torch.device("cpu"), init_device_mesh("cpu", (1,)), bf16=True,
                                        cpu_offload=True, activation_checkpointing=True, chunk_tokens=16)
        ids = torch.randint(4, 90, (1, 64))
        wrapper(ids, ids).backward()
        modeling.assert_rope(wrapper.lm, config)  # after meta build, to_empty, offload, a bf16 forward/backward
        inv_freq, scaling = modeling.expected_rope(config)
        assert scaling > 1  # YaRN's attention scaling, transformers' value
        assert wrapper.lm.model.rotary_emb.inv_freq.dtype == torch.float32
    finally:
        dist.destroy_process_group()
    broken = small_lm(YARN, 64)
    broken.model.rotary_emb.inv_freq = broken.model.rotary_emb.inv_freq.to(torch.bfloat16)
    with pytest.raises(AssertionError, match="not float32"):
        modeling.assert_rope(broken, broken.config)


def test_corpus_rows_cut_held_out_and_permuted(corpus):
    rows = ParquetCorpus(corpus, "input_ids")
    assert rows.rows == 30 and len(rows.groups) == 6
    table = pq.read_table(corpus / "part-1.parquet").column("input_ids").to_pylist()
    assert rows.row(17, 1000).tolist() == table[2] and rows.row(17, 10).tolist() == table[2][:10]
    stream = CorpusStream(rows, seed=5, n_ctx=64, held_out=4)
    assert len(stream.validation()) == 4 and not set(stream.validation_rows) & set(stream.training_rows)
    first_epoch = [stream._epoch_order(0)[p] for p in range(26)]
    assert sorted(first_epoch) == sorted(stream.training_rows.tolist()) and first_epoch != sorted(first_epoch)
    assert all(len(stream.sequence(p)) <= 64 for p in range(30))


# ------------------------------------------------------------------------------------------ user errors


@pytest.mark.parametrize("change, extra, message", [
    ({"n_ctx": 100}, [], "n_ctx 100 is not rope_scaling.factor 2.0 x the base context 32"),
    ({"rope_scaling": {**YARN, "original_max_position_embeddings": 16}}, [], "is 16 but the base checkpoint's context"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": 2.0}}, [], "rope_scaling = {rope_type: yarn|linear"),
    ({"global_batch": 3}, [], "global_batch 3 is not a multiple of micro_batch 1 x processes 2"),
    ({"data": {"source": "books"}}, [], "needs --data-dir"),
    ({"data": {"source": "books"}, "data_column": "tokens"}, ["--data-dir", "CORPUS"], "has no column 'tokens'"),
    ({"lr_schedule": "step"}, [], "--spec"),
])
def test_user_errors_exit_2_with_one_line(tmp_path, base, corpus, capsys, change, extra, message):
    extra = [str(corpus) if item == "CORPUS" else item for item in extra]
    argv = ["--base", str(base), "--out", str(tmp_path / "o"), "--state-dir", str(tmp_path / "s"),
            "--spec", json.dumps(spec_of(**change)), *extra, "--processes", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_on_gpus_a_job_that_cannot_fit_stops_before_loading(tmp_path, base, capsys, monkeypatch):
    """The launching process checks the memory plan against the GPUs it got (here a stand-in CUDA device of
    2 GiB: less than the plan's 4 GiB overhead alone), so an unfittable job ends in one line, nothing loaded."""
    import types

    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace(total_memory=2 * 2**30))
    argv = ["--base", str(base), "--out", str(tmp_path / "o"), "--state-dir", str(tmp_path / "s"),
            "--spec", json.dumps(spec_of()), "--processes", "2"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: o: the extension of ") and "does not fit" in err and "2.0 GiB available" in err
    assert "Traceback" not in err and not (tmp_path / "s").exists()
