"""Without gold, the vote counts teachers, not distinct texts: a rationale is
stored once per text, so two teachers that wrote the same words are one row
but two votes; and a teacher's samples share its one vote."""

from __future__ import annotations

import asyncio

import pytest

from teachers import TeacherPool, TeacherRequest
from teachers.agreement import agree, agree_rationales, rationale_answer
from tests.fakeserver import FakeOpenAIServer

FIVE = "Add 2 and 3.\n#### 5"


def test_two_teachers_with_the_same_text_outvote_a_third(fake_server, store, make_cfg):
    # The case through real calls and the real store: teachers a and b
    # answer 5 with the same text, c answers 6.
    fake_server.answer = lambda msgs: FIVE
    with FakeOpenAIServer(answer=lambda msgs: FIVE) as b_srv, \
            FakeOpenAIServer(answer=lambda msgs: "Add 2 and 4.\n#### 6") as c_srv:
        cfgs = [make_cfg(fake_server, name="a"), make_cfg(b_srv, name="b"), make_cfg(c_srv, name="c")]
        pool = TeacherPool(cfgs, store)
        msgs = [{"role": "user", "content": "What is 2 + 3?"}]
        results = asyncio.run(pool.run([TeacherRequest(c.name, msgs) for c in cfgs]))
    store.add_examples([{"id": "e1", "question": "What is 2 + 3?", "answer": None}], "pool")
    eid = "e1"
    produced = []
    for r in results:
        assert r.status == "ok"
        rid = store.add_rationale(eid, r.text, rationale_answer(r.text), r.teacher, teacher_call=r.key)
        produced.append((rid, r.teacher, rationale_answer(r.text)))
    ids = [rid for rid, _, _ in produced]
    assert ids[0] == ids[1] != ids[2]  # one row for the shared text
    # counting texts (what the loop did): 5 once, 6 once, a tie, nothing accepted
    answers = {rid: a for rid, _, a in produced}
    assert agree([answers[rid] for rid in dict.fromkeys(ids)], None)[0] == [False, False]
    # counting teachers
    verdict, frac = agree_rationales(produced, None)
    assert verdict == {ids[0]: True, ids[2]: False}
    assert frac == pytest.approx(2 / 3)


def test_sampling_more_does_not_outvote_other_teachers():
    # a wrote three different texts answering 5; b and c answer 6 once each
    produced = [("a1", "a", "5"), ("a2", "a", "5"), ("a3", "a", "5"), ("b1", "b", "6"), ("c1", "c", "6")]
    verdict, frac = agree_rationales(produced, None)
    assert verdict == {"a1": False, "a2": False, "a3": False, "b1": True, "c1": True}
    assert frac == pytest.approx(2 / 3)


def test_a_teacher_that_contradicts_itself_counts_half_for_each_side():
    produced = [("a1", "a", "5"), ("a2", "a", "6"), ("b1", "b", "5")]
    verdict, frac = agree_rationales(produced, None)
    assert verdict == {"a1": True, "a2": False, "b1": True}
    assert frac == pytest.approx(0.75)  # 1.5 of 2 teachers' votes


def test_teachers_that_disagree_still_tie():
    verdict, frac = agree_rationales([("a1", "a", "5"), ("b1", "b", "6")], None)
    assert verdict == {"a1": False, "b1": False} and frac == pytest.approx(0.5)
    # a tie of split votes is a tie too (exact arithmetic: thirds do not round apart)
    three = [("a1", "a", "5"), ("a2", "a", "6"), ("a3", "a", "7"), ("b1", "b", "5"), ("b2", "b", "6"), ("b3", "b", "7")]
    assert not any(agree_rationales(three, None)[0].values())


def test_unparseable_answers_vote_for_nothing_but_count():
    verdict, frac = agree_rationales([("a1", "a", "5"), ("b1", "b", None), ("c1", "c", None)], None)
    assert verdict == {"a1": True, "b1": False, "c1": False} and frac == pytest.approx(1 / 3)


def test_with_gold_the_fraction_is_the_share_of_teachers():
    produced = [("a1", "a", "5"), ("a2", "a", "4"), ("s1", "b", "5"), ("s1", "c", "5")]
    verdict, frac = agree_rationales(produced, "5")
    assert verdict == {"a1": True, "a2": False, "s1": True}
    assert frac == pytest.approx((0.5 + 1 + 1) / 3)


def test_voters_must_match_answers():
    with pytest.raises(ValueError, match="one voter per answer"):
        agree(["5", "6"], None, voters=["a"])
