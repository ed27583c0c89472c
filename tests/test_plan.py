"""The GPU plan: memory arithmetic on the real public configs, per-job plans from files, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctxscale import plan
from ctxscale.errors import UserError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = Path(__file__).parent / "data" / "model-configs"
GIB = 2**30
PAPER_GPU = {"backend": "vllm", "device": "cuda", "dtype": "bfloat16", "max_length": 131072,
             "gpu_memory_utilization": 0.9, "tensor_parallel_size": "auto", "gpus": "auto",
             "gpu_memory_gib": 79.6, "gpu_overhead_gib": 4.0, "max_gpus_per_job": 8}  # fmt: skip


def arch(name: str) -> plan.Architecture:
    return plan.Architecture.from_config(json.loads((CONFIGS / f"{name}.json").read_text()))


@pytest.mark.parametrize(
    "name, layers, kv_heads, head_dim, kv_bytes, params",
    [
        # 2 (K and V) x layers x KV heads x head size x 2 bytes (bf16)
        ("Llama-2-7b-hf", 32, 32, 128, 524_288, 6_738_415_616),  # 0.5 MiB per token: no GQA
        ("Llama-2-13b-hf", 40, 40, 128, 819_200, 13_015_864_320),  # 0.78 MiB per token
        ("Llama-2-70b-hf", 80, 8, 128, 327_680, 68_976_648_192),  # GQA, 8 KV heads
        ("Qwen2.5-0.5B", 24, 2, 64, 12_288, 494_032_768),  # GQA, 2 KV heads, tied embeddings
        ("gemma-2-9b", 42, 8, 256, 344_064, 9_241_705_984),  # explicit head_dim 256
    ],
)
def test_architecture_from_real_configs(name, layers, kv_heads, head_dim, kv_bytes, params):
    a = arch(name)
    assert (a.layers, a.kv_heads, a.head_dim) == (layers, kv_heads, head_dim)
    assert a.kv_bytes_per_token(2) == kv_bytes
    assert a.params == params


def test_kv_heads_split_then_replicated_across_gpus():
    qwen = arch("Qwen2.5-0.5B")
    assert qwen.kv_bytes_per_token(2, 2) == 12_288 // 2
    assert qwen.parallel_sizes(8) == [1, 2]  # 14 attention heads: 4 does not divide them
    llama70 = arch("Llama-2-70b-hf")
    assert llama70.kv_bytes_per_token(2, 16) == 2 * 80 * 1 * 128 * 2  # replicated past 8 KV heads


def job(name: str, longest: int, max_new: int = 400, **overrides) -> plan.JobPlan:
    return plan.plan_job(model=name, dataset="gsm", settings={**PAPER_GPU, **overrides}, arch=arch(name),
                         weight_bytes=None, longest_prompt=longest, prompt_source="test",
                         max_new_tokens=max_new)  # fmt: skip


def test_7b_at_32k_fits_one_80gb_gpu_hand_worked():
    p = job("Llama-2-7b-hf", 32_768)
    assert p.max_model_len == 33_168  # longest prompt + generation budget
    assert (p.tensor_parallel_size, p.gpus) == (1, 1)
    # 6,738,415,616 x 2 B = 12.55 GiB; 33,168 x 0.5 MiB = 16.20 GiB; + 4 GiB overhead
    assert p.weights_gib == pytest.approx(12.55, abs=0.01)
    assert p.kv_gib == pytest.approx(16.20, abs=0.01)
    assert p.needed_gib == pytest.approx(32.75, abs=0.01)
    assert p.available_gib == pytest.approx(71.64, abs=0.01)  # 79.6 x 0.9


def test_13b_at_64k_needs_two_80gb_gpus_and_one_141gb():
    p = job("Llama-2-13b-hf", 65_536)
    # one GPU: 24.24 weights + 65,936 x 0.78125 MiB = 50.30 KV + 4 = 78.5 GiB > 71.64
    assert (p.tensor_parallel_size, p.gpus) == (2, 2)
    assert p.needed_gib == pytest.approx(24.24 / 2 + 50.30 / 2 + 4, abs=0.02)
    h200 = job("Llama-2-13b-hf", 65_536, gpu_memory_gib=139.8)
    assert (h200.tensor_parallel_size, h200.gpus) == (1, 1)


def test_window_caps_max_model_len_and_7b_128k_takes_two_gpus():
    p = job("Llama-2-7b-hf", 200_000)
    assert p.max_model_len == 131_072  # longer prompts are refused and counted, never truncated
    # 12.55 + 64 GiB KV + 4 > 71.64: two GPUs
    assert p.tensor_parallel_size == 2


def test_job_that_cannot_fit_fails_in_one_line_naming_model_and_memory():
    with pytest.raises(UserError) as info:
        job("Llama-2-70b-hf", 4096, max_gpus_per_job=1)
    message = str(info.value)
    assert "\n" not in message
    assert "Llama-2-70b-hf on gsm does not fit" in message
    assert "needs 133.9 GiB per GPU" in message  # 128.48 weights + 4,496 x 320 KiB = 1.37 KV + 4 overhead
    assert "71.6 GiB available" in message


def test_fixed_tensor_parallel_and_too_few_gpus_are_checked():
    assert job("Llama-2-7b-hf", 1000, tensor_parallel_size=4).gpus == 4
    with pytest.raises(UserError, match="evaluation.gpus is 1, fewer than the 2 GPUs"):
        job("Llama-2-13b-hf", 65_536, gpus=1)


def test_cpu_jobs_take_no_gpu_and_hf_on_cuda_one():
    cpu = job("Llama-2-7b-hf", 1000, backend="hf", device="cpu")
    assert (cpu.gpus, cpu.max_model_len) == (0, 1400)
    assert job("Llama-2-7b-hf", 1000, backend="hf", device="cuda").gpus == 1
    with pytest.raises(UserError, match="use backend vllm"):
        job("Llama-2-13b-hf", 120_000, backend="hf", device="cuda")


def test_weights_from_disk_are_rescaled_to_the_run_dtype(tmp_path):
    (tmp_path / "config.json").write_text((CONFIGS / "gemma-2-9b.json").read_text())  # float32 on disk
    (tmp_path / "model-00001.safetensors").write_bytes(b"\0" * 4000)
    (tmp_path / "pytorch_model.bin").write_bytes(b"\0" * 9999)  # ignored: safetensors are preferred
    disk = plan.checkpoint_weight_bytes(tmp_path)
    assert disk == 4000
    assert plan.weights_bytes(plan.read_architecture(tmp_path), "bfloat16", disk) == 2000
    assert plan.weights_bytes(plan.read_architecture(tmp_path), "auto", disk) == 4000


def test_longest_prompt_from_the_token_profile_matches_real_tokenization(tmp_path):
    from ctxscale.datasets import build_prompt, prompt_token_profile
    from ctxscale.tiny import build_tokenizer

    tokenizer = build_tokenizer()
    shots = [{"input": f"what is {i} + {3 * i}?", "reference": str(4 * i)} for i in range(12)]
    test = [{"id": "a", "input": "what is 5 + 123456?", "reference": "x"}, {"id": "b", "input": "hi", "reference": "y"}]
    profile = prompt_token_profile(tokenizer, shots, test, "Question: ", "\nAnswer:", "\n\n")
    manifest = {"dataset": "d", "prompt_tokens": profile}
    for k in (0, 1, 7, 12):
        actual = max(len(tokenizer(build_prompt("Question: ", "\nAnswer:", "\n\n", shots[:k], row["input"]))["input_ids"])
                     for row in test)  # fmt: skip
        predicted = plan.longest_prompt_tokens(manifest, k)
        assert actual <= predicted <= actual + plan.BOUNDARY_MARGIN
    with pytest.raises(UserError, match="13 shots requested, the pool has 12"):
        plan.longest_prompt_tokens(manifest, 13)


def test_plan_from_files_uses_checkpoint_and_manifest(tmp_path):
    checkpoint = tmp_path / "model"
    checkpoint.mkdir()
    shutil.copy(CONFIGS / "Llama-2-13b-hf.json", checkpoint / "config.json")
    (checkpoint / "model.safetensors").write_bytes(b"\0" * 1024)
    data = tmp_path / "data"
    data.mkdir()
    profile = {"shot_block": [0, *range(130, 130 * 512, 130)][:512], "max_query": 200, "bos": 1}
    (data / "manifest.json").write_text(json.dumps({"dataset": "gsm", "max_new_tokens": 400, "prompt_tokens": profile}))
    p = plan.plan_from_files(model="m", checkpoint_dir=checkpoint, data_dir=data, shots=[0, 255, 511],
                             settings=PAPER_GPU)  # fmt: skip
    assert p.longest_prompt == 1 + profile["shot_block"][511] + 200 + plan.BOUNDARY_MARGIN
    assert p.max_model_len == p.longest_prompt + 400
    assert p.prompt_source == "prepared data"


def _stand_in_checkpoints(root: Path, config: dict) -> None:
    """config.json of each enabled paper model where a download would put it (no weights)."""
    for model, spec in config["models"].items():
        size = "13b" if "13b" in model else "70b" if "70b" in model else "7b"
        source = {"qwen2.5-0.5b": "Qwen2.5-0.5B"}.get(model, "gemma-2-9b" if "gemma" in model else f"Llama-2-{size}-hf")
        target = root / "resources" / "models" / model
        target.mkdir(parents=True)
        shutil.copy(CONFIGS / f"{source}.json", target / "config.json")


@pytest.mark.parametrize("gpu_gib, tp_7b, tp_13b", [(79.6, 2, 2), (139.8, 1, 2)])
def test_plan_command_on_the_paper_config(tmp_path, gpu_gib, tp_7b, tp_13b):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    _stand_in_checkpoints(tmp_path, config)
    result = subprocess.run(
        [sys.executable, "-m", "ctxscale.cli", "plan", "--configfile", str(REPO / "config" / "config.yaml"),
         "--set", f"gpu_memory_gib={gpu_gib}", "--json"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    plans = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(plans) == 12 * 72
    for p in plans:
        # before data preparation: every shot and the query within 256 tokens, 1 + 512 x 256 > the window
        assert p["longest_prompt"] == 1 + 512 * 256 and p["prompt_source"] == "length-filter bound"
        assert p["max_model_len"] == 131_072
        assert p["gpus"] == p["tensor_parallel_size"]
        assert p["needed_gib"] <= p["available_gib"]
        # 7B: 12.55 + 64.2 KV + 4 GiB; 13B: 24.24 + 100.3 KV + 4 GiB, against 0.9 x the GPU
        assert p["tensor_parallel_size"] == (tp_13b if "13b" in p["model"] else tp_7b)


def test_plan_command_table_and_errors(tmp_path):
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    _stand_in_checkpoints(tmp_path, config)
    command = [sys.executable, "-m", "ctxscale.cli", "plan", "--configfile", str(REPO / "config" / "config.yaml")]
    table = subprocess.run(command, capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert table.returncode == 0, table.stderr
    rows = [[cell.strip() for cell in line.split("|")[1:3]] for line in table.stdout.splitlines()[2:]]
    # datasets with the same plan share a row ("58 datasets"); every model's 72 datasets are listed
    per_model: dict[str, int] = {}
    for model, datasets in rows:
        count = int(datasets.split()[0]) if datasets.endswith(" datasets") else len(datasets.split(", "))
        per_model[model] = per_model.get(model, 0) + count
    assert per_model == {model: 72 for model in config["models"] if config["models"][model]["group"] == "yarn"}
    bad = subprocess.run([*command, "--set", "gpu_memory_gib=20"], capture_output=True, text=True, cwd=tmp_path,
                         timeout=300)  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: llama2-13b-4k on gsm does not fit") and bad.stderr.count("\n") == 1
    unknown = subprocess.run([*command, "--set", "gpu_ram=20"], capture_output=True, text=True, cwd=tmp_path)
    assert unknown.returncode == 2 and "expected KEY=VALUE" in unknown.stderr


def test_evaluate_step_fails_before_loading_when_the_plan_cannot_fit(tmp_path):
    checkpoint = tmp_path / "llama2-70b"
    checkpoint.mkdir()
    shutil.copy(CONFIGS / "Llama-2-70b-hf.json", checkpoint / "config.json")  # no weights: nothing could load
    data = tmp_path / "data"
    data.mkdir()
    profile = {"shot_block": [0, 100], "max_query": 50, "bos": 1}  # 1 + 100 + 50 + 8 margin + 400 generated = 559
    (data / "manifest.json").write_text(json.dumps({"dataset": "gsm", "max_new_tokens": 400, "prompt_tokens": profile}))
    settings = json.dumps({"backend": "vllm", "dtype": "bfloat16", "max_length": 131072, "tensor_parallel_size": "auto"})
    result = subprocess.run(
        [sys.executable, "-m", "ctxscale.evaluate", "--model-dir", str(checkpoint), "--model-name", "llama2-70b",
         "--data-dir", str(data), "--shots", "0", "1", "--out-dir", str(tmp_path / "out"), "--cache-dir",
         str(tmp_path / "cache"), "--settings", settings, "--plan", "--gpu-memory-mib", str(80 * 1024),
         "--max-gpus-per-job", "1"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "error: llama2-70b on gsm does not fit: max_model_len 559 needs 132.6 GiB per GPU at tensor parallel 1"
    )
    assert not (tmp_path / "out").exists()


def test_tiny_model_checkpoint_plans_from_its_saved_files(tmp_path):
    """The miniature's own models: a saved tiny Llama (float32 on disk) planned on the CPU and on a GPU."""
    from ctxscale.tiny import build_tokenizer, init_model, save_checkpoint

    tokenizer = build_tokenizer()
    save_checkpoint(init_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2), tokenizer, tmp_path / "tiny")
    tiny = plan.read_architecture(tmp_path / "tiny")
    assert (tiny.layers, tiny.kv_heads, tiny.head_dim, tiny.checkpoint_dtype) == (2, 2, 32, "float32")
    assert tiny.kv_bytes_per_token(4) == 2 * 2 * 2 * 32 * 4
    disk = plan.checkpoint_weight_bytes(tmp_path / "tiny")
    assert abs(disk - 4 * tiny.params) < 64 * 1024  # float32 weights + the safetensors header
    common = dict(model="tiny", dataset="d", arch=tiny, weight_bytes=disk, longest_prompt=900,
                  prompt_source="test", max_new_tokens=6)  # fmt: skip
    cpu = plan.plan_job(settings={**PAPER_GPU, "backend": "hf", "device": "cpu", "max_length": 4096}, **common)
    assert (cpu.gpus, cpu.max_model_len) == (0, 906)
    gpu = plan.plan_job(settings={**PAPER_GPU, "dtype": "auto"}, **common)
    assert (gpu.gpus, gpu.tensor_parallel_size) == (1, 1)
    assert gpu.kv_gib == pytest.approx(906 * 1024 / GIB, abs=0.01) and gpu.weights_gib == pytest.approx(disk / GIB, abs=0.01)
