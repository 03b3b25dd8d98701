"""Agreement: accept rationales whose answer equals gold, else the majority."""

from __future__ import annotations

import pytest

from teachers.agreement import agree, agree_texts, rationale_answer


def test_gold_numbers_with_commas_currency_fractions():
    texts = ["so the total is\n#### $1,234.50", "#### 1234.5", "Answer: 1234.50 dollars", "#### 1235",
             "I am not sure how to solve this one."]
    answers, flags, frac = agree_texts(texts, "1234.5", "number")
    assert flags == [True, True, True, False, False]
    assert frac == pytest.approx(3 / 5)
    assert answers[-1] is None  # no parseable answer: stored, never accepted
    _, flags, _ = agree_texts(["#### 3/4", "#### 0.75", "#### .75", "#### 3"], "0.75", "number")
    assert flags == [True, True, True, False]


def test_gold_as_a_reference_solution():
    _, flags, _ = agree_texts(["#### 72"], "Natalia sold 48/2 = 24 clips...\n#### 72", "number")
    assert flags == [True]


def test_multiple_choice_letters():
    answers, flags, frac = agree_texts(["... so the answer is (C).\n#### C", "Answer: (b)", "#### c"], "C", "choice")
    assert answers == ["C", "B", "C"] and flags == [True, False, True] and frac == pytest.approx(2 / 3)


def test_majority_without_gold():
    flags, frac = agree(["42", "42.0", "41", None], None, "number")
    assert flags == [True, True, False, False] and frac == pytest.approx(0.5)


def test_tie_without_gold_accepts_nothing():
    flags, frac = agree(["1", "2"], None, "number")
    assert flags == [False, False] and frac == pytest.approx(0.5)


def test_single_teacher_without_gold_is_its_own_majority():
    assert agree(["7"], None, "number") == ([True], 1.0)
    assert agree([None], None, "number") == ([False], 0.0)
    assert agree([], None, "number") == ([], 0.0)


def test_unreadable_gold_accepts_nothing():
    assert agree(["7"], "seven-ish", "number") == ([False], 0.0)


def test_rationale_answer_requires_a_marked_answer():
    assert rationale_answer("3 + 4 = 7 apples", "number") is None
    assert rationale_answer("3 + 4 = 7\n#### 7", "number") == "7"
