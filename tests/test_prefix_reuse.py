"""hf with prefix reuse (ctxscale.evaluate.prefix_reuse) against plain lm-eval HFLM on tiny random Llamas: the same
predictions, prompt tokens and (within LOGPROB_TOLERANCE) log-probabilities of the generated tokens, for nested
and per-instance shot orders, with default RoPE and with YaRN, prompts running past the model's n_ctx."""

import random

import pytest
import torch
from lm_eval.api.instance import Instance
from lm_eval.models.huggingface import HFLM

from ctxscale.errors import UserError
from ctxscale.evaluate.prefix_reuse import PrefillCounter, PrefixReuseHFLM, common_prefix_length
from ctxscale.tiny import build_tokenizer, init_model, save_checkpoint


def count_prompt_tokens(lm, prompts: list[str]) -> list[int]:
    """Token counts as the hf engine takes them (HfEngine.count_prompt_tokens: HFLM's tok_encode, BOS included)."""
    return [len(lm.tok_encode(prompt)) for prompt in prompts]

# Measured max |Δ log p| of a generated token, chunked against full prefill, float32 CPU: 2.9e-6 (2026-12-05).
LOGPROB_TOLERANCE = 1e-4
N_CTX = 64
SHOTS = [0, 1, 3, 7]
MAX_GEN_TOKS = 4
TOKENIZER = build_tokenizer()
rng = random.Random(5)
POOL = [f"Q: {rng.randint(1, 99)} plus {rng.randint(1, 99)}?\nA: {rng.randint(2, 198)}\n\n" for _ in range(7)]
QUESTIONS = [f"Q: {rng.randint(1, 99)} plus {rng.randint(1, 99)}{'?' * rng.randint(1, 3)}\nA:" for _ in range(6)]
ORDERS = [rng.sample(range(len(POOL)), len(POOL)) for _ in QUESTIONS]  # per-instance shot orders


def nested_prompts(k: int) -> list[str]:
    return ["".join(POOL[:k]) + question for question in QUESTIONS]


def per_instance_prompts(k: int) -> list[str]:
    return ["".join(POOL[j] for j in order[:k]) + question for order, question in zip(ORDERS, QUESTIONS)]


ROPES = {
    "default": None,  # prompts run past n_ctx = 64 positions
    "yarn": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": N_CTX // 2},
}


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("prefix-reuse")
    return {
        name: save_checkpoint(init_model(TOKENIZER, hidden_size=32, num_layers=2, num_heads=4, n_ctx=N_CTX, seed=1,
                                         rope_scaling=rope), TOKENIZER, root / name)
        for name, rope in ROPES.items()
    }  # fmt: skip


@pytest.fixture(scope="module")
def checkpoint(checkpoints):
    return checkpoints["default"]


def build(cls, checkpoint, batch_size):
    return cls(pretrained=str(checkpoint), device="cpu", dtype="float32", batch_size=batch_size, max_length=512)


def requests(prompts: list[str]) -> list[Instance]:
    kwargs = {"until": ["\n\n"], "max_gen_toks": MAX_GEN_TOKS, "do_sample": False}
    return [Instance("generate_until", {}, (prompt, kwargs), index) for index, prompt in enumerate(prompts)]


class GenerationLog:
    """Per generate call: its prompt ids, and the log-probability of every token it generated."""

    def __init__(self, model):
        self.model, self.logprobs = model, {}
        self._generate, self._steps = model.generate, []
        model.generate = self._logging_generate
        self._hook = model.register_forward_hook(lambda _m, _a, out: self._steps.append(out.logits[:, -1]))

    def _logging_generate(self, *args, **kwargs):
        self._steps = []
        output = self._generate(*args, **kwargs)
        prompt = kwargs["input_ids"]
        assert prompt.shape[0] == 1, "log-probabilities are compared at batch size 1"
        generated = output[0, prompt.shape[1] :].tolist()
        steps = [step[0].log_softmax(-1) for step in self._steps]
        self.logprobs[tuple(prompt[0].tolist())] = [float(steps[i][token]) for i, token in enumerate(generated)]
        return output


def sweep(lm, prompts_at):
    """Predictions per shot count, prompt token counts, and the prompt tokens the model prefilled."""
    counter = PrefillCounter(lm.model)
    try:
        predictions = {k: lm.generate_until(requests(prompts_at(k)), disable_tqdm=True) for k in SHOTS}
    finally:
        counter.close()
    return predictions, {k: count_prompt_tokens(lm, prompts_at(k)) for k in SHOTS}, counter.prefilled


def distinct_prefixes(lm, prompts: list[str]) -> int:
    """Nodes of the prompts' token prefix trie: what a perfect reuse prefills."""
    return len({tuple(ids[:n]) for ids in (lm.tok_encode(p) for p in prompts) for n in range(1, len(ids) + 1)})


@pytest.mark.parametrize("rope", sorted(ROPES))
@pytest.mark.parametrize("prompts_at", [nested_prompts, per_instance_prompts], ids=["nested", "per-instance"])
def test_same_predictions_token_counts_and_logprobs_as_plain_hf(checkpoints, rope, prompts_at):
    checkpoint = checkpoints[rope]
    plain_batched = build(HFLM, checkpoint, batch_size=4)  # as ctxscale runs plain hf: padded batches
    plain_single, reuse = build(HFLM, checkpoint, batch_size=1), build(PrefixReuseHFLM, checkpoint, batch_size=4)
    expected, expected_tokens, full_prefill = sweep(plain_batched, prompts_at)
    logs = [GenerationLog(lm.model) for lm in (plain_single, reuse)]
    predictions, tokens, prefilled = sweep(reuse, prompts_at)
    assert predictions == expected
    assert tokens == expected_tokens and max(max(counts) for counts in tokens.values()) > N_CTX
    every_prompt = [prompt for k in SHOTS for prompt in prompts_at(k)]
    assert full_prefill == sum(sum(counts) for counts in tokens.values())
    ideal = distinct_prefixes(reuse, every_prompt)
    assert prefilled == ideal < full_prefill  # every trie node once
    # The store: nested shots keep one cache beside the short zero-shot prompts (their common part is under
    # half of each): a last-count prompt; per-instance orders keep every instance's last prompt.
    last_prompts = {tuple(reuse.tok_encode(prompt)) for prompt in prompts_at(SHOTS[-1])}
    longest_zero_shot = max(count_prompt_tokens(reuse, prompts_at(0)))
    kept = {tuple(entry.ids) for entry in reuse._store if len(entry.ids) > longest_zero_shot}
    assert kept <= last_prompts and len(kept) == (1 if prompts_at is nested_prompts else len(QUESTIONS))

    # Log-probabilities: against plain HFLM at batch size 1 (no padding), so only the chunked prefill differs.
    for k in SHOTS:
        plain_single.generate_until(requests(prompts_at(k)), disable_tqdm=True)
    assert logs[0].logprobs.keys() == logs[1].logprobs.keys()
    differences = [abs(a - b) for key, plain in logs[0].logprobs.items()
                   for a, b in zip(plain, logs[1].logprobs[key], strict=True)]  # fmt: skip
    assert len(differences) > len(every_prompt) and max(differences) < LOGPROB_TOLERANCE
    print(f"prefilled {prefilled} (ideal {ideal}, full {full_prefill}); max |d log p| {max(differences):.2e}")


def test_budget_evicts_least_recently_used_and_results_do_not_change(checkpoint):
    unbounded = build(PrefixReuseHFLM, checkpoint, batch_size=1)
    bounded = PrefixReuseHFLM(pretrained=str(checkpoint), device="cpu", dtype="float32", batch_size=1,
                              max_length=512, retained_tokens=100)  # fmt: skip
    for k in SHOTS[1:]:
        assert (bounded.generate_until(requests(per_instance_prompts(k)), disable_tqdm=True)
                == unbounded.generate_until(requests(per_instance_prompts(k)), disable_tqdm=True))  # fmt: skip
        assert bounded.retained_prompt_tokens() <= 100 or len(bounded._store) == 1
    assert unbounded.retained_prompt_tokens() > 100


def test_reuse_is_by_token_prefix_and_never_truncates(checkpoint):
    assert common_prefix_length([1, 2, 3], [1, 2, 4, 5]) == 2 and common_prefix_length([1, 2], [1, 2, 3]) == 2
    reuse = build(PrefixReuseHFLM, checkpoint, batch_size=1)
    # A prompt that is a prefix of an earlier one still feeds its last token (the logits come from it).
    long, short = QUESTIONS[0] + " 1", QUESTIONS[0]
    plain = build(HFLM, checkpoint, batch_size=1)
    assert reuse.generate_until(requests([long, short])) == plain.generate_until(requests([long, short]))
    too_long = PrefixReuseHFLM(pretrained=str(checkpoint), device="cpu", dtype="float32", batch_size=1,
                               max_length=len(QUESTIONS[0]) + 2)  # fmt: skip
    with pytest.raises(UserError, match="never truncates"):
        too_long.generate_until(requests([QUESTIONS[0]]))


def test_sequence_length_dependent_rope_falls_back_to_full_prefill(tmp_path):
    rope = {"rope_type": "dynamic", "factor": 2.0}
    model = init_model(TOKENIZER, hidden_size=32, num_layers=2, num_heads=4, n_ctx=N_CTX, seed=1, rope_scaling=rope)
    lm = build(PrefixReuseHFLM, save_checkpoint(model, TOKENIZER, tmp_path / "model"), batch_size=2)
    assert not lm.reuse_supported and "dynamic" in lm.reuse_refusal
    counter = PrefillCounter(lm.model)
    lm.generate_until(requests(nested_prompts(3)), disable_tqdm=True)
    assert counter.prefilled == sum(count_prompt_tokens(lm, nested_prompts(3))) and not lm._store
    counter.close()
    assert torch.is_tensor(lm.model.generate(input_ids=torch.tensor([[1, 5]]), max_new_tokens=1))


def test_setting_selects_the_class_and_keys_the_cache(checkpoint):
    from ctxscale.evaluate.engines import build_engine
    from ctxscale.evaluate.hf_engine import HfEngine
    from ctxscale.evaluate.settings import Settings

    base = {"backend": "hf", "device": "cpu", "dtype": "float32", "batch_size": 2, "max_length": 256}
    reuse, plain = (Settings.from_mapping(base | {"prefix_reuse": flag}) for flag in (True, False))
    reuse_key, plain_key = HfEngine.result_affecting(reuse), HfEngine.result_affecting(plain)
    assert reuse_key["prefix_reuse"] is True and "batch_size" not in reuse_key
    assert "prefix_reuse" not in plain_key and plain_key["batch_size"] == 2
    assert Settings.from_mapping(base).prefix_reuse is True  # the schema's default
    with pytest.raises(UserError, match="prefix_reuse must be true or false"):
        Settings.from_mapping(base | {"prefix_reuse": "yes"})
    assert type(build_engine(checkpoint, reuse, MAX_GEN_TOKS).lm) is PrefixReuseHFLM
    assert type(build_engine(checkpoint, plain, MAX_GEN_TOKS).lm) is HFLM


def test_the_hf_engine_gives_the_store_the_settings_budget(checkpoint):
    from ctxscale.evaluate.engines import build_engine
    from ctxscale.evaluate.settings import Settings

    settings = {"backend": "hf", "device": "cpu", "dtype": "float32", "max_length": 512, "prefix_reuse": True}
    planned = build_engine(checkpoint, Settings.from_mapping({**settings, "retained_tokens": 123}), 8)
    unplanned = build_engine(checkpoint, Settings.from_mapping(settings), 8)
    assert (planned.lm.retained_tokens, unplanned.lm.retained_tokens) == (123, None)  # None: sized at first use
    with pytest.raises(UserError, match="retained_tokens must be null or an integer >= 0"):
        Settings.from_mapping({**settings, "retained_tokens": -1})
