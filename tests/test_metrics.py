"""The paper's metrics on hand-worked examples, including the official code's quirks (spec §4.3)."""

from __future__ import annotations

import math

import nltk
import pytest
from nltk.tabdata import TabEncoder

from ctxscale.errors import UserError
from ctxscale.metrics import (
    METRICS,
    bleu_4,
    bleu_4_metric,
    math_equiv,
    math_equiv_metric,
    mc_match,
    mc_match_metric,
    score,
    word_tokenize,
)

# ----------------------------------------------------------------------------- mc_match


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("B", "B", 1.0),
        (" B. Paris", "B", 1.0),
        ("C", "B", 0.0),
        ("E", "E", 1.0),
        ("The answer is (D)", "D", 1.0),  # "The answer is" has no capital A-E
        # Quirk: the first capital A-E anywhere wins, even inside a word.
        ("Answer: C", "C", 0.0),
        ("Answer: C", "A", 1.0),
        ("Because B", "B", 1.0),  # "Because" starts with B
        ("Daniel picks A", "A", 0.0),  # "D" of "Daniel" comes first
        ("b", "B", 0.0),  # case-sensitive
        ("F", "F", 0.0),  # only A-E are letters here
        ("no letter here", "A", 0.0),
        ("", "A", 0.0),
        (None, "A", 0.0),
    ],
)
def test_mc_match(prediction, reference, expected):
    assert mc_match(prediction, reference) == expected


def test_mc_match_list_reference_takes_the_max():
    assert mc_match("B", ["A", "B"]) == 1.0
    assert mc_match("C", ["A", "B"]) == 0.0


# ----------------------------------------------------------------------------- math_equiv

GSM_ANSWER = (
    "Janet sells 16 - 3 - 4 = <<16-3-4=9>>9 duck eggs a day.\n"
    "She makes 9 * 2 = $<<9*2=18>>18 every day at the farmer’s market.\n#### 18"
)
MATH_SOLUTION = "we then have the equation $1 = \\frac{5}{12}+\\frac{1}{3}+x$, from which we have $x=\\boxed{\\frac{1}{4}}$."


@pytest.mark.parametrize(
    ("prediction", "reference", "expected"),
    [
        ("She makes 18 dollars.\n#### 18", GSM_ANSWER, 1.0),
        ("9 eggs, so 9 * 2 = 19", GSM_ANSWER, 0.0),
        ("1,234", "1234", 1.0),  # commas are stripped
        ("The total is 1,000,000.", "1000000", 1.0),
        ("3/4", "0.75", 1.0),  # a single slash is a fraction
        ("0.7505", "0.75", 1.0),  # within abs_tol 1e-3
        ("0.752", "0.75", 0.0),  # outside it
        ("x = -6", "6", 1.0),  # quirk: the pattern has no minus sign
        ("2 apples and 3 pears", "3", 1.0),  # the LAST number counts
        ("2 apples and 3 pears", "2", 0.0),
        ("$1.90.", "1.9", 1.0),
        ("1/0", "0", 0.0),  # division by zero scores 0
        ("1/2/3", "1", 0.0),  # two slashes: not a number, scores 0
        ("1.2.3", "1.2", 0.0),  # not a float, scores 0
        ("no number", "5", 0.0),
        ("5", "no number", 0.0),
        ("", "5", 0.0),
        (None, "5", 0.0),
        # Quirk: MATH is scored on the last number of the full solution, here the 4 of \frac{1}{4}.
        ("\\boxed{\\frac{1}{4}}", MATH_SOLUTION, 1.0),
        ("1/4", MATH_SOLUTION, 0.0),
        ("-6", "b'-6\\n'", 1.0),  # a wrapped deepmind answer still reads as 6
    ],
)
def test_math_equiv(prediction, reference, expected):
    assert math_equiv(prediction, reference) == expected


def test_math_equiv_list_reference_takes_the_max():
    assert math_equiv("7", ["6", "7"]) == 1.0
    assert math_equiv("8", ["6", "7"]) == 0.0


# ----------------------------------------------------------------------------- bleu_4


def test_bleu_4_one_of_four_4grams_matches():
    # hypothesis 4-grams: (the cat sat on) (cat sat on a) (sat on a mat) (on a mat .) -> 1/4 match;
    # equal lengths (7 tokens) -> no brevity penalty.
    assert bleu_4("the cat sat on a mat.", "the cat sat on the mat.") == pytest.approx(0.25)


def test_bleu_4_brevity_penalty():
    # 1 of 1 4-grams matches; hypothesis 4 tokens vs reference 7: BP = exp(1 - 7/4).
    assert bleu_4("the cat sat on", "the cat sat on the mat.") == pytest.approx(math.exp(-0.75))


def test_bleu_4_identical_and_empty():
    assert bleu_4("Resumption of the session", "Resumption of the session") == 1.0
    assert bleu_4("", "Resumption of the session") == 0.0
    assert bleu_4(None, "Resumption of the session") == 0.0


def test_bleu_4_without_4gram_overlap_is_nltk_tiny_not_exactly_zero():
    value = bleu_4("the dog", "the cat sat on the mat.")
    assert 0.0 < value < 1e-300


def test_bleu_4_no_unigram_overlap_is_zero():
    assert bleu_4("xyz", "the cat sat on the mat.") == 0.0


def test_bleu_4_list_reference_takes_the_max():
    refs = ["a completely different sentence here", "the cat sat on the mat."]
    assert bleu_4("the cat sat on a mat.", refs) == pytest.approx(0.25)


def test_bleu_4_uses_sentence_split_tokens():
    # The sentence split makes "it." two tokens; without it the hypothesis would not match.
    reference = "I saw it . He left ."
    assert bleu_4("I saw it. He left.", reference) == 1.0
    from nltk.tokenize import NLTKWordTokenizer

    assert NLTKWordTokenizer().tokenize("I saw it. He left.") != word_tokenize("I saw it. He left.")


# ----------------------------------------------------------------------------- word_tokenize


def test_word_tokenize_hand_worked():
    assert word_tokenize("Mr. Smith went to Washington. He left at 3 p.m. on Jan. 5. The U.S. economy grew.") == [
        "Mr.", "Smith", "went", "to", "Washington", ".", "He", "left", "at", "3", "p.m.", "on",
        "Jan.", "5", ".", "The", "U.S.", "economy", "grew", ".",
    ]  # fmt: skip
    # From NLTK's own tokenize.doctest (word_tokenize regression tests).
    assert word_tokenize('"We beat some pretty good teams to get here," Slocum said.') == [
        "``", "We", "beat", "some", "pretty", "good", "teams", "to", "get", "here", ",", "''",
        "Slocum", "said", ".",
    ]  # fmt: skip
    assert word_tokenize("It's more'n enough.") == ["It", "'s", "more", "'n", "enough", "."]
    assert word_tokenize("") == []


EQUIVALENCE_TEXTS = [
    "Mr. Smith went to Washington. He left.",
    "Dr. Who? Yes! \"Quote.\" Next one follows. And then.",
    "The U.S. economy grew 3.5% in Jan. and Feb. It was the best since 1999.",
    "Good muffins cost $3.88\nin New York.  Please buy me\ntwo of them.\n\nThanks.",
    "Gutach: Increased safety for pedestrians",
    "He said: 'No.' Then he left... Really? (Yes.) St. Louis is in Mo. today.",
    "A. B. C. Smith and J. R. R. Tolkien met at 5 p.m. in the U.K. on Sept. 3.",
    "Résumé of the café. Naïve approach; it didn't work!",
]


@pytest.fixture
def nltk_with_offline_punkt_tab(tmp_path, monkeypatch):
    """nltk.word_tokenize reading our English Punkt parameters, written out in punkt_tab format."""
    punkt_english = pytest.importorskip("punkt.data.english")
    target = tmp_path / "tokenizers" / "punkt_tab" / "english"
    target.mkdir(parents=True)
    encoder = TabEncoder()
    (target / "collocations.tab").write_text(encoder.tups2tab(punkt_english.COLLOCATIONS), newline="")
    (target / "sent_starters.txt").write_text(encoder.set2txt(punkt_english.SENT_STARTERS), newline="")
    (target / "abbrev_types.txt").write_text(encoder.set2txt(punkt_english.ABBREV_TYPES), newline="")
    (target / "ortho_context.tab").write_text(encoder.ivdict2tab(punkt_english.ORTHO_CONTEXT), newline="")
    monkeypatch.setattr(nltk.data, "path", [str(tmp_path)])
    from nltk.tokenize import _get_punkt_tokenizer

    _get_punkt_tokenizer.cache_clear()
    yield nltk.tokenize.word_tokenize
    _get_punkt_tokenizer.cache_clear()


@pytest.mark.parametrize("text", EQUIVALENCE_TEXTS)
def test_word_tokenize_equals_nltk_word_tokenize(nltk_with_offline_punkt_tab, text):
    assert word_tokenize(text) == nltk_with_offline_punkt_tab(text)


# ----------------------------------------------------------------------------- dispatch and lm-eval


def test_metrics_registry_and_score():
    assert set(METRICS) == {"mc_match", "math_equiv", "bleu_4"}
    assert score("mc_match", "A", "A") == 1.0
    assert score("math_equiv", "#### 18", GSM_ANSWER) == 1.0
    assert score("bleu_4", "the cat sat on", "the cat sat on the mat.") == pytest.approx(math.exp(-0.75))
    with pytest.raises(UserError, match="unknown metric 'rouge'"):
        score("rouge", "a", "a")


def test_bad_references_are_user_errors():
    with pytest.raises(UserError, match="empty reference list"):
        mc_match("A", [])
    with pytest.raises(UserError, match="reference must be a string"):
        mc_match("A", [1])
    with pytest.raises(UserError, match="prediction must be a string"):
        mc_match(3, "A")


def test_lm_eval_wrappers_follow_its_calling_convention():
    assert mc_match_metric.__name__ == "mc_match_metric"
    assert math_equiv_metric.__name__ == "math_equiv_metric"
    assert bleu_4_metric.__name__ == "bleu_4_metric"
    assert mc_match_metric(references=["A"], predictions=["Answer: C"]) == 1.0  # the quirk survives
    assert math_equiv_metric(references=[GSM_ANSWER], predictions=["so 18"]) == 1.0
    assert bleu_4_metric(references=["the cat sat on the mat."], predictions=["the cat sat on a mat."]) == pytest.approx(0.25)
    assert mc_match_metric(references=["A"], predictions=[""]) == 0.0


def test_lm_eval_wrappers_never_raise_type_error():
    # lm-eval retries a TypeError as fn([gold, pred]), which would hide the bug.
    with pytest.raises(ValueError, match="one reference and one prediction"):
        mc_match_metric(references=["A", "B"], predictions=["A"])
    with pytest.raises(ValueError, match="mc_match failed"):
        mc_match_metric(references=None, predictions=["A"])


def test_lm_eval_scores_with_our_metric(tmp_path):
    """lm-eval's own generate_until result path, with our function plugged into metric_list."""
    from lm_eval.api.task import ConfigurableTask

    data = tmp_path / "test.jsonl"
    data.write_text('{"question": "Pick one", "answer": "A"}\n')
    config = {
        "task": "ctxscale_metric_probe",
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}, "cache_dir": str(tmp_path / "cache")},
        "test_split": "test",
        "output_type": "generate_until",
        "doc_to_text": "{{question}}",
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": ["\n\n"], "max_gen_toks": 5, "do_sample": False},
        "metric_list": [{"metric": mc_match_metric, "aggregation": "mean", "higher_is_better": True}],
    }
    task = ConfigurableTask(config=config)
    doc = task.test_docs()[0]
    assert task.process_results(doc, ["Answer: C"]) == {"mc_match_metric": 1.0}
    assert task.process_results(doc, [" B"]) == {"mc_match_metric": 0.0}
