"""Structural rationale checks: real derivations pass, restatements and copies fail."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from loop.data.task import generate_task
from teachers.verify import REASONS, VerifyConfig, check_rationale, parse_verdict, similarity

Q = "Ava has 5 apples. Then Ava buys 3 more apples. How many apples does Ava have now?"
GOOD = "Ava starts with 5 apples.\nAva gets 3 more, so 5 + 3 = 8.\n#### 8"


def check(text, question=Q, gold="8", **kw):
    return check_rationale(text, question=question, gold=gold, **kw)


def test_real_derivation_passes():
    assert check(GOOD) is None
    assert check("Since 5 + 3 = 8, the answer is 8.") is None  # one line: reasoning before the marker
    assert check("Ava has 5 apples + 3 apples = 8 apples.\nAnswer: 8") is None
    assert check("**Step 1:** 5 + 3 = 8\n\n\\boxed{8}") is None


def test_every_builtin_gold_rationale_passes():
    for d in (1, 2, 3):
        pool, dev = generate_task(0, 64, 32, d, 20)
        for row in pool + dev:
            assert check_rationale(row["rationale"], question=row["question"], gold=row["answer"]) is None, row


def test_reason_codes_are_documented():
    codes = {"no_answer_line", "meta_talk", "copy_of_student_output", "copy_of_previous", "no_reasoning",
             "wrong_arithmetic", "no_computation", "missing_quantities", "gold_quoted"}
    later = {"judge_rejected", "judge_failed", "wrong_answer", "no_majority"}  # set by the loop's judge and agree
    assert set(REASONS) == codes | later and all(REASONS.values())


# --------------------------------------------------------------------------- 1. no_answer_line

def test_no_answer_line():
    assert check("Ava starts with 5 apples and gets 3 more, so 5 + 3 = 8.") == "no_answer_line"
    assert check("") == "no_answer_line"
    # text after the answer line: the student would learn to ramble on after ####
    assert check(GOOD + "\nHope this helps!") == "no_answer_line"
    assert check("#### 8\nAva starts with 5 apples, 5 + 3 = 8.") == "no_answer_line"
    assert check(GOOD + "\n\n   \n") is None  # trailing blank lines are fine


# --------------------------------------------------------------------------- 2. meta_talk

@pytest.mark.parametrize("text", [
    "The student's answer is: 8",
    "The correct final answer is given as 8.\n#### 8",
    "The student made a mistake: 5 + 3 = 8, not 9.\n#### 8",
    "The gold answer is 8, and indeed 5 + 3 = 8.\n#### 8",
    "We are told the answer is 8. Ava has 5 + 3 = 8 apples.\n#### 8",
    "The expected answer: 5 + 3 = 8.\n#### 8",
    "Using the answer provided, 5 + 3 = 8.\n#### 8",
    "5 + 3 = 8, as given.\n#### 8",
    "Your answer was wrong; 5 + 3 = 8.\n#### 8",
])
def test_meta_talk_is_rejected(text):
    assert check(text) == "meta_talk"


def test_parroting_the_student_is_rejected_whatever_the_order():
    # "answer is: 8" IS a marked answer, so the parroted line fails as meta talk
    assert check("The student's answer is: 8") == "meta_talk"
    assert check("Answer: 8", student_output="Answer: 8") is not None


def test_students_in_the_question_are_not_meta_talk():
    q = "There are 30 students in a class. Each student brings 2 pencils. How many pencils do the students bring?"
    text = ("There are 30 students and each student brings 2 pencils.\n"
            "So the students bring 30 * 2 = 60 pencils.\n#### 60")
    assert check(text, question=q, gold="60") is None
    q2 = "A student reads 12 pages a day for 3 days. How many pages does the student read?"
    assert check("The student reads 12 pages a day, so 12 * 3 = 36.\n#### 36", question=q2, gold="36") is None
    # ...but talking about the student's answer is still meta talk there
    assert check("The student's answer of 30 is wrong: 30 * 2 = 60.\n#### 60", question=q, gold="60") == "meta_talk"
    # "the student" in a question without students is the student being corrected
    assert check("The student forgot to add. 5 + 3 = 8.\n#### 8") == "meta_talk"
    assert check("The student should add: 5 + 3 = 8.\n#### 8") == "meta_talk"


def test_given_in_the_problem_and_answer_choices_are_fine():
    q = "A box holds 4 rows of 6 eggs. Which is the number of eggs? (A) 10 (B) 24 (C) 2"
    text = "As given in the problem, there are 4 rows of 6 eggs, so 4 * 6 = 24 eggs, which is option B.\nAnswer: B"
    assert check_rationale(text, question=q, fmt="choice") is None
    text = "Among the given answer choices, only B matches 4 * 6 = 24 eggs in total.\nAnswer: B"
    assert check_rationale(text, question=q, fmt="choice") is None


# --------------------------------------------------------------------------- 3./4. copies

def test_copy_of_student_output():
    student = "Ava has 5 apples and buys 3 more, so 5 + 3 = 8 apples in total.\n#### 8"
    assert check(student, student_output=student) == "copy_of_student_output"
    changed = "ava has 5 apples  and buys 3 more,\nso 5+3 = 8 apples in total!\n####   8"
    assert check(changed, student_output=student) == "copy_of_student_output"
    assert check(GOOD, student_output="I think Ava has 9 apples because she likes apples.\n#### 9") is None
    assert check(GOOD, student_output="") is None


def test_copy_of_previous():
    prev = "Ava starts with 5 apples. She buys 3 more apples, so 5 + 3 = 8 apples.\n#### 8"
    assert check(prev, previous=prev) == "copy_of_previous"
    assert check(prev.upper().replace(".", " ."), previous=prev) == "copy_of_previous"
    assert check(GOOD, previous="Ava buys 3 apples.\nShe already had 5, giving 3 + 5 = 8 apples.\n#### 8") is None
    # the threshold is configurable
    assert check(GOOD, previous=GOOD.replace("gets", "buys"), cfg=VerifyConfig(near_duplicate=1.0)) is None


def test_similarity():
    assert similarity("Hello,   World!", "hello world") == 1.0
    assert similarity("", "") == 1.0
    assert 0.0 <= similarity("5 + 3 = 8", "Ava buys many apples") < 0.9
    assert similarity(GOOD, "The bakery sold 12 cakes on Monday.\n#### 12") < 0.9
    assert similarity("abc", "xyz") == 0.0


# --------------------------------------------------------------------------- 5. no_reasoning

def test_no_reasoning():
    assert check("#### 8") == "no_reasoning"
    assert check("Answer: 8") == "no_reasoning"
    assert check("\n\n#### 8") == "no_reasoning"


def test_choice_and_text_need_min_reasoning_words():
    q = "Which planet is largest? (A) Mars (B) Jupiter (C) Venus"
    assert check_rationale("Jupiter.\nAnswer: B", question=q, fmt="choice") == "no_reasoning"
    long = "Jupiter is a gas giant and by far the largest planet in the solar system.\nAnswer: B"
    assert check_rationale(long, question=q, fmt="choice") is None
    assert check_rationale("Jupiter.\nAnswer: B", question=q, fmt="choice",
                           cfg=VerifyConfig(min_reasoning_words=1)) is None
    tq = "What is the capital of France?"
    assert check_rationale("Answer: Paris", question=tq, fmt="text") == "no_reasoning"
    txt = "France is a country in Europe whose seat of government is its largest city.\nAnswer: Paris"
    assert check_rationale(txt, question=tq, fmt="text") is None
    # number-only checks do not apply to choice/text
    assert check_rationale("Clearly it is the one with 5 + 3 = 9 moons, the biggest planet.\nAnswer: B",
                           question=q, fmt="choice") is None


# --------------------------------------------------------------------------- 6. wrong_arithmetic

@pytest.mark.parametrize("text", [
    "5 + 3 = 9\n#### 9",
    "Ava starts with 5 apples and gets 3 more: 5 + 3 = 9.\n#### 9",
    "Ava has 5 apples, doubles them: 5 x 2 = 12, then 12 - 3 = 9.\n#### 9",
    "(5 + 3) * 2 = 14\n#### 14",
    "5 + 3 * 2 = 16\n#### 16",  # precedence
    "Ava pays $1,200 + $300 = $1,600.\n#### 1600",
    "Ava has 5 + 3 = <<5+3=9>>9 apples.\n#### 9",
    "10 / 3 = 3.5, and 5 + 3 = 8\n#### 8",
])
def test_wrong_arithmetic(text):
    assert check(text) == "wrong_arithmetic"


def test_arithmetic_that_is_right_or_unparseable_passes():
    assert check("Ava has 5 apples and 3 more: 5+3 = <<5+3=8>>8 apples.\n#### 8") is None  # GSM8K annotation
    assert check("Ava has 5 + 3 = 8 apples, and 10 / 3 = 3.33 per friend.\n#### 8") is None  # rounded
    assert check("Ava has 5 apples and 3 more; 7 / 8 = 0.88, and 5 + 3 = 8.\n#### 8") is None
    assert check("Ava has 5 apples and 3 more: 5 * 2 = 10 - 2 = 8.\n#### 8") is None  # running chain
    assert check("- Ava starts with 5 apples\n- 3 more: **5 + 3 = 8**\n#### 8") is None  # markdown
    assert check("Ava had 5, got 3: 2^3 + 5 = 13 is unrelated; 3:30 + 45 = 4:15; 5 + 3 = 8\n#### 8") is None
    assert check("Ava had 5, got 3: 50 * 20% = 10 is a discount; 2(5 + 3) = 16; 5 + 3 = 8\n#### 8") is None
    assert check("Ava had 5 and got 3; 2 hours + 30 minutes = 2.5 hours; 5 + 3 = 8.\n#### 8") is None
    assert check("Ava had 5 and got 3; if x + 3 = 8 then x = 5, and 5 + 3 = 8.\n#### 8", gold=None) is None


# --------------------------------------------------------------------------- 7. no_computation

def test_no_computation():
    assert check("Ava has apples and buys more.\nSo she has 8.\n#### 8") == "no_computation"
    assert check("Ava has 5 apples and buys 3, giving her 8 apples in total.\n#### 8") == "no_computation"
    # a computation whose result is never used does not count either
    assert check("Ava has 5 apples; 2 + 2 = 4 is irrelevant. She buys 3 and has 8.\n#### 8") == "no_computation"


# --------------------------------------------------------------------------- 8. missing_quantities

def test_missing_quantities():
    assert check("Ava has 2 apples and 6 pears: 2 + 6 = 8.\n#### 8") == "missing_quantities"
    # one of two quantities is enough at the default share of 0.5
    assert check("Ava gets 3 apples and had 5... 3 + 5 = 8.\n#### 8") is None
    strict = VerifyConfig(question_quantities=1.0)
    assert check("Ava doubles 4 apples: 4 * 2 = 8.\n#### 8", cfg=strict) == "missing_quantities"
    assert check("Ava doubles 4 apples: 4 * 2 = 8.\n#### 8", cfg=VerifyConfig(question_quantities=0)) is None
    # commas, currency and decimals compare canonically; a question without numbers passes
    q = "A bike costs $1,200.50 and a helmet $49.50. What do both cost?"
    assert check("Together: 1200.5 + 49.5 = 1250.\n#### 1250", question=q, gold="1250") is None
    q0 = "Ava has some apples and doubles them twice. By what factor did they grow?"
    assert check("Doubling twice is 2 * 2 = 4.\n#### 4", question=q0, gold="4") is None


# --------------------------------------------------------------------------- 9. gold_quoted

def test_gold_quoted():
    assert check("Ava will end with 8 apples. 5 + 3 = 8.\n#### 8") == "gold_quoted"
    assert check("We want to reach 8: Ava starts with 5, and 5 + 3 = 8.\n#### 8") == "gold_quoted"
    assert check("Ava will end with 8 apples. 5 + 3 = 8.\n#### 8", gold=None) is None  # no gold: not checked
    # the gold number used as an operand ("* 2" for "doubles") is not quoting it
    q = "Finn has 4 cards. Then Finn loses 3 cards. Then Finn doubles the number of cards. How many now?"
    assert check("Finn has 4 - 3 = 1 card left.\nDoubled: 1 * 2 = 2.\n#### 2", question=q, gold="2") is None
    # a gold that is also a question quantity is skipped
    q = "Ava has 8 apples. Then Ava buys 5 more and gives 5 away. How many apples does Ava have?"
    assert check("Ava keeps her 8 apples: 8 + 5 - 5 = 8.\n#### 8", question=q, gold="8") is None


# --------------------------------------------------------------------------- config

def test_structural_false_only_requires_the_answer_line():
    off = VerifyConfig(structural=False)
    assert check("The student's answer is: 8", cfg=off) is None
    assert check("#### 8", cfg=off) is None
    assert check("5 + 3 = 9\n#### 9", cfg=off) is None
    assert check("Ava has 8 apples.", cfg=off) == "no_answer_line"
    assert check(GOOD + "\nmore text", cfg=off) == "no_answer_line"


def test_config_validation():
    assert VerifyConfig().model_dump() == {"structural": True, "teacher": None, "min_reasoning_words": 8,
                                           "question_quantities": 0.5, "near_duplicate": 0.9}
    with pytest.raises(ValidationError):
        VerifyConfig(near_duplicate=0)
    with pytest.raises(ValidationError):
        VerifyConfig(question_quantities=1.5)
    with pytest.raises(ValidationError):
        VerifyConfig(bogus=1)
    cfg = VerifyConfig()
    with pytest.raises(ValidationError):
        cfg.min_reasoning_words = -1
    with pytest.raises(ValueError):
        check_rationale(GOOD, question=Q, fmt="essay")


# --------------------------------------------------------------------------- parse_verdict

@pytest.mark.parametrize("reply, expected", [
    ("VERDICT: PASS\nREASON: derives 5 + 3 = 8 step by step.", (True, "derives 5 + 3 = 8 step by step.")),
    ("VERDICT: FAIL\nREASON: restates the given answer", (False, "restates the given answer")),
    ("**VERDICT:** pass\n**REASON:** computes the total", (True, "computes the total")),
    ("verdict: Fail", (False, "")),
    ("Verdict - **FAIL** — it just copies the student", (False, "it just copies the student")),
    ("VERDICT: FAIL\nThe text announces 8 before computing it.", (False, "The text announces 8 before computing it.")),
    ("PASS", (True, "")),
    ("FAIL\nIt copies the student's output.", (False, "It copies the student's output.")),
    ("REASON: restates the answer\nVERDICT: FAIL", (False, "restates the answer")),
    ("Reply VERDICT: PASS or VERDICT: FAIL.\nVERDICT: PASS\nREASON: ok", (True, "ok")),
    ("I am not sure what to say.", (None, "I am not sure what to say.")),
    ("Pass the salt, please.", (None, "Pass the salt, please.")),
    ("", (None, "")),
])
def test_parse_verdict(reply, expected):
    assert parse_verdict(reply) == expected


def test_parse_verdict_reason_is_capped():
    passed, reason = parse_verdict("VERDICT: FAIL\nREASON: " + "word " * 200)
    assert passed is False and len(reason) <= 300 and reason.startswith("word word")


def test_end_at_answer_cuts_after_the_first_answer_line_like_a_stop_sequence():
    from teachers.verify import end_at_answer

    rambling = "Tara has 5 eggs.\nTara gets 10 more, so 5 + 10 = 15.\n#### 15\n#### 15\n#### 20\nTara has"
    assert end_at_answer(rambling) == "Tara has 5 eggs.\nTara gets 10 more, so 5 + 10 = 15.\n#### 15"
    assert check(end_at_answer(GOOD + "\n#### 9\nmore")) is None
    assert end_at_answer("no marker here, so 5 + 3 = 8.") == "no marker here, so 5 + 3 = 8."
    assert end_at_answer("####\nstill thinking\n#### 8") == "####\nstill thinking\n#### 8"  # an empty marker is no answer
