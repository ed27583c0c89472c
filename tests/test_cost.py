"""ctxscale.plan.cost: token counts with vLLM's block prefix reuse and the roofline time, worked by hand on tiny
figures; ``ctxscale plan --cost`` on the paper's config offline."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ctxscale.plan import cost
from ctxscale.datasets.prepared import read_prepared, write_prepared
from ctxscale.datasets.tokenizer import prompt_token_profile
from ctxscale.tiny import build_tokenizer

REPO = Path(__file__).resolve().parents[1]
# A toy GPU and model, small enough to work by hand.
GPU = cost.Gpu(name="toy", description="toy", peak_flops=1e6, bandwidth=1e4, memory_gib=1.0)
ROOF = cost.Roofline(params=1000, layers=2, hidden=8, weight_bytes=2000, kv_bytes_per_token=64)


def test_vllm_cache_reuses_whole_chained_blocks_and_recomputes_the_last_token():
    first = [1, 2, 3, 4, 5, 6, 7, 8, 9]
    same_two_blocks = [1, 2, 3, 4, 5, 6, 7, 8, 10]  # (9 - 1) // 4 = 2 usable blocks, both cached
    exactly_two_blocks = [1, 2, 3, 4, 5, 6, 7, 8]  # its last token must be computed: 1 usable block
    second_block_only = [9, 9, 9, 9, 5, 6, 7, 8, 1]  # block 2 equal, but behind another block 1: no hit
    partial = [1, 2, 3, 5, 6]
    assert cost.vllm_cached_tokens([first, same_two_blocks, exactly_two_blocks, second_block_only, partial], 4) == [
        0, 8, 4, 0, 0]  # fmt: skip
    seen: set = set()
    assert cost.vllm_cached_tokens([first], 4, seen) == [0]
    assert cost.vllm_cached_tokens([first], 4, seen) == [8]  # a later shot count finds the earlier blocks


def test_shared_prefix_and_bounded_prompts():
    # three prompts behind a 100-token shared prefix, block 16; the first finds only 40 tokens (last count's)
    cached = cost.shared_prefix_cached(np.array([120, 118, 121]), 100, 40, 16)
    assert cached.tolist() == [32, 96, 96]
    exact = cost.vllm_cached_tokens([[0] * 40 + [1] * 60 + [2] * 20, [0] * 40 + [1] * 60 + [3] * 18,
                                     [0] * 40 + [1] * 60 + [4] * 21], 16, {hash((None, (0,) * 16))})  # fmt: skip
    assert exact == [16, 96, 96]  # the replay agrees where the first prompt's cache is one block
    bound = cost.bounded_shot_tokens(7, 3, shared=100, query=20, block_size=16)
    assert bound.lengths.tolist() == [120] * 3 and bound.cached.tolist() == [0, 85, 85]
    assert (bound.submitted, bound.prefilled_with_reuse, bound.prompt_kind) == (360, 190, "bound")
    assert 190 >= 120 + 2 * (120 - 96)  # above the truth for an exact 100-token prefix
    capped = cost.bounded_shot_tokens(7, 2, shared=100, query=20, block_size=16, max_prompt_tokens=110)
    assert capped.lengths.tolist() == [110, 110]
    # before preparation: k shots and the query of 256 tokens each, plus BOS (the GPU plan's bound)
    (three,) = cost.length_bound_tokens([3], 250, 256, 16)
    assert three.lengths[0] == 1 + 4 * 256 and three.instances == 250


def test_roofline_prefill_and_decode_worked_by_hand():
    # a 10-token prompt with 4 cached: sum over t = 4..9 of (2 x 1000 + 4 x 2 x 8 x t) = 12000 + 64 x 39
    assert ROOF.prefill_flops(np.array([10]), np.array([4])) == 14496
    entry = cost.ShotTokens(3, np.array([10, 10]), np.array([0, 8]), shared_prefix=8, prompt_kind="count",
                            decode=4, decode_kind="count")  # fmt: skip
    # 2 steps a sequence, both in one batch. Cascade: 8 shared tokens once + 2 x (2 own + 1 mean generated);
    # 2000 + 64 x 14 = 2896 bytes at 1e4 B/s, above 2 x (2000 + 64 x 11) FLOPs at 1e6 FLOP/s
    assert cost.decode_seconds(ROOF, entry, GPU, 1, cascade=True, batch=2) == pytest.approx(2 * 0.2896)
    # without cascade each sequence reads its whole cache: 2000 + 64 x 2 x 11 = 3408 bytes
    assert cost.decode_seconds(ROOF, entry, GPU, 1, cascade=False, batch=2) == pytest.approx(2 * 0.3408)
    assert cost.decode_seconds(ROOF, entry, GPU, 2, cascade=False, batch=1) == pytest.approx(2 * 2 * 0.2704 / 2)
    three = cost.ShotTokens(3, np.array([10, 10, 10]), np.zeros(3, dtype=int), 0, "count", decode=6)
    # a batch of 2 and a partial batch of 1, 2 steps each: (2000 + 64 x 22) and (2000 + 64 x 11) bytes a step
    assert cost.decode_seconds(ROOF, three, GPU, 1, cascade=False, batch=2) == pytest.approx(2 * (0.3408 + 0.2704))
    job = cost.job_cost(gpu=GPU, model="m", dataset="d", backend="vllm", prefix_caching=True, hf_batch_size=8,
                        roof=ROOF, gpus=1, kv_pool_tokens=1000, tokens=[entry])  # fmt: skip
    prefill = (ROOF.prefill_flops(np.array([10]), np.array([0])) + ROOF.prefill_flops(np.array([10]), np.array([8]))) / 1e6
    assert job.prefill_seconds == pytest.approx(prefill)
    assert (job.submitted_tokens, job.prefilled_tokens_with_reuse, job.decode_tokens) == (20, 12, 4)
    assert job.gpu_hours == pytest.approx((prefill + 2 * 0.3408) / 3600)  # 8-token prefix: no cascade
    plain = cost.job_cost(gpu=GPU, model="m", dataset="d", backend="hf", prefix_caching=True, hf_batch_size=8,
                          roof=ROOF, gpus=1, kv_pool_tokens=0, tokens=[entry])  # fmt: skip
    assert plain.prefill_seconds == pytest.approx(2 * 2000 * 10 / 1e6 + 2 * 64 * 45 / 1e6)  # hf: no reuse
    # a 300-token shared prefix over 8 sequences: cascade would read it once a step, vLLM 0.32 reads it 8 times
    long = cost.ShotTokens(7, np.full(8, 310), np.array([0] + [288] * 7), shared_prefix=300, prompt_kind="count",
                           decode=16, decode_kind="count")  # fmt: skip
    per_sequence = cost.job_cost(gpu=GPU, model="m", dataset="d", backend="vllm", prefix_caching=True,
                                 hf_batch_size=8, roof=ROOF, gpus=1, kv_pool_tokens=1e6, tokens=[long])  # fmt: skip
    step = max(2000 + 64 * 8 * (310 + 1), 8 * (2000 + 64 * 311) * 1e4 / 1e6) / 1e4
    assert per_sequence.decode_seconds == pytest.approx(2 * step)
    assert not cost.VLLM_CASCADE_ATTENTION
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cost, "VLLM_CASCADE_ATTENTION", True)  # an engine with cascade attention
        once = cost.job_cost(gpu=GPU, model="m", dataset="d", backend="vllm", prefix_caching=True, hf_batch_size=8,
                             roof=ROOF, gpus=1, kv_pool_tokens=1e6, tokens=[long])  # fmt: skip
    assert once.decode_seconds == pytest.approx(2 * max(2000 + 64 * (300 + 8 * 11), 8 * (2000 + 64 * 311) * 1e-2) / 1e4)
    assert cost.vllm_max_num_seqs(cost.Gpu("h100", "H100 SXM 80 GB", 1, 1, 79.6)) == 1024
    assert cost.vllm_max_num_seqs(cost.Gpu("a100", "A100 80 GB", 1, 1, 79.6)) == 256
    training = cost.training_cost(GPU, model="m", params=1000, tokens=600, mfu=0.5, gpus=2)
    assert training.flops == 3.6e6 and training.gpu_hours == pytest.approx(7.2 / 3600)


LETTERS = "ABCDEFGH"


def _prepared(tmp_path, order):
    manifest = {"dataset": "letters", "task": "common-sense", "prefix": "Question: ", "suffix": "\nAnswer: ",
                "separator": "\n\n", "stop": ["\n\n"], "metric": "mc_match", "max_new_tokens": 3,
                "counts": {}, "seeds": {}, "source": {}, "tokenizer": "ctxscale.tiny"}  # fmt: skip
    if order == "per-instance":
        manifest["shot_order"] = {"kind": "per-instance", "seed": 5}
    pool = [{"input": f"Which letter follows {c}{'?' * i}", "reference": chr(ord(c) + 1)} for i, c in enumerate(LETTERS)]
    test = [{"id": f"t{i}", "input": f"Which letter precedes {c}{'!' * (3 * i)}", "reference": c} for i, c in
            enumerate("BCDEF")]  # fmt: skip
    return write_prepared(tmp_path / order, pool, test, manifest)


@pytest.mark.parametrize("order", ["nested", "per-instance"])
def test_counted_tokens_match_the_prompts_tokenized(tmp_path, order):
    tokenizer, data = build_tokenizer(), _prepared(tmp_path, order)
    prepared = read_prepared(data)
    counted = cost.counted_tokens(data, tokenizer, [0, 2, 5], block_size=16)
    seen: set = set()
    for entry in counted:
        ids = [tokenizer(prepared.prompt(row["input"], entry.shots, row["id"])).input_ids for row in prepared.test]
        assert entry.lengths.tolist() == [len(i) for i in ids] and entry.prompt_kind == "count"
        assert entry.cached.tolist() == cost.vllm_cached_tokens(ids, 16, seen)  # the replay of the real prompts
    if order == "nested":
        assert counted[2].prefilled_with_reuse < counted[2].submitted / 2  # five shots shared: most of it reused
    else:  # each prompt extends only its own 2-shot prompt
        assert counted[2].prefilled_with_reuse > counted[2].submitted / 2
    limited = cost.counted_tokens(data, tokenizer, [5], block_size=16, max_prompt_tokens=int(counted[2].lengths.min()))
    assert limited[0].instances == 1  # refused prompts are not submitted
    # the manifest's profile (written by preparation) gives the same counts as one computed on the fly
    m = prepared.manifest
    profile = prompt_token_profile(tokenizer, prepared.shots, prepared.test, m["prefix"], m["suffix"], m["separator"])
    if order == "nested":
        shared = profile["bos"] + profile["shot_block"][5]
        assert counted[2].shared_prefix == shared
        bounded = cost.profile_bound_tokens({"prompt_tokens": profile}, [5], 5, 16)[0]
        assert bounded.lengths.max() >= counted[2].lengths.max()
        assert bounded.prefilled_with_reuse >= counted[2].prefilled_with_reuse


def test_decode_tokens_from_samples_or_the_budget(tmp_path):
    import gzip

    entry = cost.ShotTokens(1, np.array([10, 10]), np.array([0, 0]), 0, "count")
    cost.add_decode_tokens([entry], 6, tmp_path, build_tokenizer())
    assert (entry.decode, entry.decode_kind) == (12, "bound")
    with gzip.open(tmp_path / "shots_1.samples.jsonl.gz", "wt") as handle:
        for text in ("AB", "ABCDEFGHIJ"):  # 2 tokens + the stop; 10 + 1 capped at the budget of 6
            handle.write(json.dumps({"resps": [[text]]}) + "\n")
    cost.add_decode_tokens([entry], 6, tmp_path, build_tokenizer())
    assert (entry.decode, entry.decode_kind) == (3 + 6, "count")


def test_plan_cost_of_the_paper_offline(tmp_path):
    """A fresh checkout's view: no data, no checkpoints, no network; the package's Llama-2 configs."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "HF_HUB_OFFLINE": "1",
           "HF_HOME": str(tmp_path / "hf-home")}  # an empty hub cache  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "ctxscale.cli", "plan", "--cost", "--json", "--configfile",
                          str(REPO / "config" / "config.yaml")], capture_output=True, text=True, cwd=tmp_path,
                         env=env, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    for gpu, gpus_7b in (("h100", 2), ("h200", 1)):
        jobs = [r for r in rows if r["gpu"] == gpu and r["job"] == "evaluate"]
        assert len(jobs) == 864 and all(r["prompt_kind"] == "bound" for r in jobs)
        gsm = next(r for r in jobs if r["model"] == "llama2-7b-4k" and r["dataset"] == "gsm")
        assert gsm["gpus"] == gpus_7b and gsm["decode_tokens"] == 400 * 250 * 10
        # ten shot counts of 250 prompts, each 1 + (k + 1) x 256 tokens, at most 131072 - 400
        shots = [0, 1, 3, 7, 15, 31, 63, 127, 255, 511]
        assert gsm["submitted_tokens"] == 250 * sum(min(1 + (k + 1) * 256, 131072 - 400) for k in shots)
        assert gsm["prefilled_tokens_with_reuse"] < gsm["submitted_tokens"] / 50  # the shot block is reused
        assert 0 < gsm["gpu_hours"] < 5
    text = subprocess.run([sys.executable, "-m", "ctxscale.cli", "plan", "--cost", "--gpu", "h200", "--configfile",
                           str(REPO / "config" / "config.yaml")], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=300)  # fmt: skip
    assert text.returncode == 0, text.stderr
    total = text.stdout.strip().splitlines()[-1]
    assert total.startswith("total on h200 (H200 141 GB): ") and "864 evaluate jobs" in total
    assert math.isclose(float(total.split("= ")[1].split()[0].replace(",", "")),
                        sum(r["gpu_hours"] for r in rows if r["gpu"] == "h200"), rel_tol=1e-3)  # fmt: skip
    wrong = subprocess.run([sys.executable, "-m", "ctxscale.cli", "plan", "--cost", "--gpu", "a100", "--configfile",
                            str(REPO / "config" / "config.yaml")], capture_output=True, text=True, cwd=tmp_path,
                           env=env, timeout=300)  # fmt: skip
    assert wrong.returncode == 2 and wrong.stderr == "error: --gpu a100: not a preset of cost.gpus (h100, h200)\n"


def test_gpu_without_cost_is_refused(capsys):
    from ctxscale.plan import cli

    assert cli.main(["--gpu", "h100", "--configfile", str(REPO / "config" / "config.yaml")]) == 2
    assert capsys.readouterr().err == "error: --gpu selects a preset of --cost; add --cost\n"
