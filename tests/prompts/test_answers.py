"""Answer extraction and correctness (pure Python; no torch)."""

from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import pytest

from prompts.answers import (
    answers_equal,
    canonical_number,
    extract_answer,
    is_correct,
    normalize_gold,
    normalize_number,
)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Natalia sold 48/2 = 24 clips in May.\n#### 72", "72"),
        ("#### 72", "72"),
        ("####72", "72"),
        ("steps...\n#### 1,234", "1234"),
        ("Answer: 42", "42"),
        ("answer: 42 apples", "42"),
        ("So the answer is $1,234.50.", "1234.5"),
        ("The final answer is 18.", "18"),
        ("Final answer: -7", "-7"),
        ("It costs -5 dollars", "-5"),
        ("#### -$3", "-3"),
        ("#### $-3", "-3"),
        ("temperature fell to −4 degrees", "-4"),  # Unicode minus
        ("Answer: 3/4", "0.75"),
        ("Answer: 1/3", "1/3"),
        ("Answer: 2.500", "2.5"),
        ("it is .5", "0.5"),
        ("Answer: 50%", "50"),
        ("\\boxed{17}", "17"),
        ("We get 12.", "12"),  # a sentence's period is not a decimal point
        ("The answer is 1,000,000 grains", "1000000"),
        ("€20 each, so £15 total", "15"),
        ("x = 48/2 = 24 clips", "24"),  # no marker: the last number
        ("pages 3-5", "5"),  # a range is not a negative number
        ("version v2 of 7", "7"),
        ("I am not sure how to solve this one.", None),
        ("", None),
        (None, None),
    ],
)
def test_extract_number(text, expected):
    assert extract_answer(text, "number") == expected


def test_marker_beats_later_numbers_and_last_marker_wins():
    assert extract_answer("#### 10\nThen 3 more steps of 5", "number") == "10"
    assert extract_answer("Answer: 1\nWait, recheck.\nAnswer: 2\n(took 30 s)", "number") == "2"
    # #### is the most explicit marker: it wins over a later "Answer:"
    assert extract_answer("#### 8\nAnswer: 9", "number") == "8"
    # a marker without a number falls back to the other markers, then the last number
    assert extract_answer("Answer: 6\n#### unknown", "number") == "6"
    assert extract_answer("we computed 5 and 11\nAnswer: eleven", "number") == "11"


def test_fallback_can_be_turned_off():
    assert extract_answer("we computed 5 and 11", "number", fallback=False) is None
    assert extract_answer("we computed 5\n#### 11", "number", fallback=False) == "11"
    assert extract_answer("just a line", "text", fallback=False) is None


def test_canonical_numbers_are_exact():
    assert canonical_number(Fraction(2469, 2)) == "1234.5"
    assert canonical_number(Fraction(-3, 4)) == "-0.75"
    assert canonical_number(Fraction(1, 3)) == "1/3"
    assert canonical_number(Fraction(1, 80)) == "0.0125"
    assert canonical_number(Fraction(-1, 80)) == "-0.0125"
    assert canonical_number(Fraction(7)) == "7"
    assert canonical_number(Fraction(0)) == "0"
    assert normalize_number("1,234.50") == normalize_number("1234.5") == "1234.5"
    assert normalize_number("no digits") is None
    assert normalize_number("1/0") is None


@pytest.mark.parametrize(
    "a, b, equal",
    [
        ("1,234.50", "1234.5", True),
        ("3/4", "0.75", True),
        ("$5", "5.00", True),
        ("-2", "2", False),
        ("1/3", "0.333", False),
        ("42", None, False),
        (None, None, False),
    ],
)
def test_answers_equal_numbers(a, b, equal):
    assert answers_equal(a, b, "number") is equal


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Answer: (C)", "C"),
        ("#### C", "C"),
        ("#### (b)", "B"),
        ("the answer is c", "C"),
        ("Answer: B) because it is", "B"),
        ("I first thought (B) but it is (D)", "D"),
        ("C.", "C"),
        ("(E)", "E"),
        ("The correct option is B.", "B"),
        ("the best option is a good guess", None),
        ("I'd go with choice (A) here", "A"),
        ("A farmer has 3 cows", None),  # the article "A" is not a choice
        ("Answer: Absolutely", None),
        ("", None),
    ],
)
def test_extract_choice(text, expected):
    assert extract_answer(text, "choice") == expected


def test_extract_text():
    assert extract_answer("The capital...\n#### Paris.", "text") == "paris"
    assert extract_answer("Answer:  New   York ", "text") == "new york"
    assert extract_answer("thinking\n\nBerlin\n", "text") == "berlin"
    assert answers_equal("New York.", "new york", "text")
    assert not answers_equal("york", "new york", "text")


def test_is_correct():
    assert is_correct("... so 72 clips.\n#### 72", "72") is True
    assert is_correct("#### 72.0", 72) is True
    assert is_correct("#### 0.5", 0.5) is True
    assert is_correct("#### 71", "72") is False
    assert is_correct("I give up", "72") is False
    assert is_correct("#### 72", None) is None
    # a whole GSM8K reference solution works as gold
    assert is_correct("Answer: 72", "48/2 = <<48/2=24>>24\n48+24 = <<48+24=72>>72\n#### 72") is True
    assert is_correct("Answer: (C)", "C", "choice") is True
    assert is_correct("Answer: (C)", "D", "choice") is False
    assert is_correct("#### paris", "Paris", "text") is True
    assert normalize_gold(3, "number") == "3"
    with pytest.raises(ValueError, match="gold answer"):
        normalize_gold(True)


def test_unknown_format_is_an_error():
    with pytest.raises(ValueError, match="unknown answer format"):
        extract_answer("#### 1", "numeric")
    with pytest.raises(ValueError, match="unknown answer format"):
        answers_equal("1", "1", "int")


def test_scoring_never_imports_torch():
    """teachers imports prompts.answers and must stay torch-free."""
    code = "import sys, student, prompts.answers, student.errors; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
