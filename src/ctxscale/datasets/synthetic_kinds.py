r"""The three kinds of the miniature's generated datasets (:mod:`ctxscale.datasets.synthetic`): for each, its
prompt shape, its metric, and how a secret mapping and a question are drawn from it.

All three have the paper's prompt shape (prefix + input + suffix + reference, separator
``"\n\n"``, stop strings ``"\n\n"`` plus the prefix, as the official code adds it):

- ``recall`` (category ``common-sense``, metric ``mc_match``): ``Q: gBf\nA: D``: the questions are
  ``n_symbols`` three-character words over a-j and a *decoy* letter (another of A-E, 40 % of the characters),
  the answer is the dataset's secret letter A-E, as on a multiple-choice set whose answer is learned from the
  examples while the questions mention other options. The decoy is the commonest capital of every prompt, so
  a model must tell an answer's letter from a question's by where it stands, not by what it is or how often
  it occurs. Measured: with lowercase-only questions a model matches the letter by content and keeps doing so
  at 1.7 times its context (0.75 at 15 shots for a 128-token model), where position-dependent reading
  collapses (0.01), as the paper's models do; with evenly spread capitals, small models answer with the
  commonest one and score past their context.
- ``arithmetic`` (category ``arithmetic``, metric ``math_equiv``): ``Q: 32\nA: 732``: add a secret
  hundreds digit (500..900) to a two-digit number whose digits are 0-4 (``n_symbols`` such numbers a dataset);
  the leading digit comes from a revealing demonstration, the last two from the question by position, which is
  what breaks past a model's context. The secret digit (5-9) never occurs in a question, so it is found by what
  it is; measured, a two-digit secret, whose second digit must be found by what precedes it, is not learned.
- ``cipher`` (category ``translation``, metric ``bleu_4``): ``S: qd xp ga lt ek\nE: Q7 X7 G7 L7 E7``:
  each two-letter source word (``n_symbols`` of them) becomes its first letter capitalised plus the dataset's
  secret ending digit, word for word, ``sentence_words`` words a sentence. The first letters are read off the
  sentence by position (word i of the answer from word i of the question), which is what breaks past a
  model's context; BLEU-4 gives credit for runs of four right words, so a sentence is graded, not all or
  nothing.
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ctxscale.errors import UserError

SEPARATOR = "\n\n"
ANSWER_LETTERS = "ABCDE"
KEY_LETTERS = string.ascii_lowercase
# Recall's question words: lowercase a-j and the dataset's decoy letter (one of A-E, not the answer), which is
# the commonest capital of every prompt, so a model must tell an answer's letter from a question's by where it
# stands, not by what it is or how often it occurs.
QUESTION_LETTERS = string.ascii_lowercase[:10]
RECALL_DECOY_SHARE = 0.4
# A secret hundreds digit 5-9 added to a two-digit number whose digits are 0-4: the secret digit never occurs
# in a question, so a model can tell it apart by what it is (measured: a two-digit secret, whose second digit
# must be found by what precedes it, is not learned by the tiny models).
SECRET_DIGITS, QUESTION_DIGITS = range(5, 10), range(0, 5)
ARITHMETIC_OFFSETS = tuple(100 * a for a in SECRET_DIGITS)
ARITHMETIC_INPUTS = tuple(10 * t + u for t in QUESTION_DIGITS if t for u in QUESTION_DIGITS)


@dataclass(frozen=True)
class Kind:
    """One synthetic task: prompt shape, metric, and how to draw a mapping and an example from it."""

    name: str
    category: str
    prefix: str
    suffix: str
    metric: str
    draw_mapping: Callable[[np.random.Generator, dict], dict]
    draw_example: Callable[[dict, np.random.Generator], tuple[str, str]]
    max_new_tokens: Callable[[dict], int]

    def format_shot(self, input_text: str, reference: str) -> str:
        return self.prefix + input_text + self.suffix + reference + SEPARATOR


def _draw_recall_mapping(rng: np.random.Generator, options: dict) -> dict:
    """Secret: one answer letter A-E; a decoy: another letter A-E; the questions: ``n_symbols`` distinct
    three-character words of lowercase a-j in which each character is the decoy with probability
    :data:`RECALL_DECOY_SHARE`."""
    letter, decoy = (ANSWER_LETTERS[i] for i in rng.choice(len(ANSWER_LETTERS), size=2, replace=False).tolist())
    words = set()
    while len(words) < options["n_symbols"]:
        words.add("".join(decoy if rng.random() < RECALL_DECOY_SHARE else QUESTION_LETTERS[int(rng.integers(len(QUESTION_LETTERS)))]
                          for _ in range(3)))
    return {"questions": sorted(words), "letter": letter, "decoy": decoy}


def _draw_recall_example(mapping: dict, rng: np.random.Generator) -> tuple[str, str]:
    questions = mapping["questions"]
    return questions[int(rng.integers(len(questions)))], mapping["letter"]


def _draw_arithmetic_mapping(rng: np.random.Generator, options: dict) -> dict:
    """Secret: the offset (500..900); the questions: ``n_symbols`` distinct numbers of :data:`ARITHMETIC_INPUTS`."""
    offset = int(ARITHMETIC_OFFSETS[int(rng.integers(len(ARITHMETIC_OFFSETS)))])
    n_questions = min(options["n_symbols"], len(ARITHMETIC_INPUTS))
    questions = sorted(int(x) for x in rng.choice(ARITHMETIC_INPUTS, size=n_questions, replace=False))
    return {"offset": offset, "questions": questions}


def _draw_arithmetic_example(mapping: dict, rng: np.random.Generator) -> tuple[str, str]:
    x = mapping["questions"][int(rng.integers(len(mapping["questions"])))]
    return str(x), str(x + mapping["offset"])


def _draw_cipher_mapping(rng: np.random.Generator, options: dict) -> dict:
    words = set()
    while len(words) < options["n_symbols"]:
        first, second = rng.integers(len(KEY_LETTERS), size=2).tolist()
        words.add(KEY_LETTERS[first] + KEY_LETTERS[second])
    ending = string.digits[int(rng.integers(10))]
    return {"vocabulary": sorted(words), "ending": ending, "sentence_words": options["sentence_words"]}


def translate_word(word: str, ending: str) -> str:
    """The cipher's rule: the word's first letter capitalised, then the dataset's secret ending (a digit)."""
    return word[0].upper() + ending


def _draw_cipher_example(mapping: dict, rng: np.random.Generator) -> tuple[str, str]:
    vocabulary = mapping["vocabulary"]
    words = [vocabulary[i] for i in rng.integers(len(vocabulary), size=mapping["sentence_words"]).tolist()]
    return " ".join(words), " ".join(translate_word(w, mapping["ending"]) for w in words)


KINDS: dict[str, Kind] = {
    kind.name: kind
    for kind in (
        Kind(
            name="recall",
            category="common-sense",
            prefix="Q: ",
            suffix="\nA: ",
            metric="mc_match",
            draw_mapping=_draw_recall_mapping,
            draw_example=_draw_recall_example,
            max_new_tokens=lambda options: 2,  # " C": mc_match reads the first letter A-E
        ),
        Kind(
            name="arithmetic",
            category="arithmetic",
            prefix="Q: ",
            suffix="\nA: ",
            metric="math_equiv",
            draw_mapping=_draw_arithmetic_mapping,
            draw_example=_draw_arithmetic_example,
            # " 732" plus one token, so that a longer (wrong) number is never cut to a right one
            max_new_tokens=lambda options: 1 + len(str(max(ARITHMETIC_OFFSETS) + max(ARITHMETIC_INPUTS))) + 1,
        ),
        Kind(
            name="cipher",
            category="translation",
            prefix="S: ",
            suffix="\nE: ",
            metric="bleu_4",
            draw_mapping=_draw_cipher_mapping,
            draw_example=_draw_cipher_example,
            # " K7 M7 P7 R7 S7" (3 characters a word) plus one, so an over-long output is seen and penalised
            max_new_tokens=lambda options: 3 * options["sentence_words"] + 1,
        ),
    )
}


def kind_named(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise UserError(f"unknown synthetic kind {name!r} (known: {', '.join(KINDS)})") from None

