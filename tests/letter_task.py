"""The prepared-data manifest of the tests' letter-answer task (``Question: ...\nAnswer: X``), shared by the
evaluation tests of both environments (tests/ and tests/vllm_group/)."""

from __future__ import annotations


def letter_manifest(dataset: str, *, max_new_tokens: int, shots_seed: int, shots: int = 5, test: int = 4) -> dict:
    """A ``common-sense`` manifest scored by ``mc_match``, stopping at a blank line or the next question."""
    return {
        "dataset": dataset,
        "task": "common-sense",
        "prefix": "Question: ",
        "suffix": "\nAnswer: ",
        "separator": "\n\n",
        "stop": ["\n\n", "Question: "],
        "metric": "mc_match",
        "max_new_tokens": max_new_tokens,
        "counts": {"shots": shots, "test": test},
        "seeds": {"shots": shots_seed},
        "source": {"kind": "test fixture"},
        "tokenizer": "ctxscale.tiny",
    }
