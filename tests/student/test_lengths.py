"""The length rule (student/lengths.py): rows keep their whole y and prompt,
every context is budgeted on its own, nothing is cut silently."""

import json
import logging

import pytest

from student.config import LossConfig, TrainConfig
from student.data import TrainExample, collate, completion_ids, encode
from student.errors import RowTooLong, StudentError
from student.lengths import MARKER, LengthStats, context_budget, fit_middle
from student.chat import NO_LENGTH_LIMIT
from student.model import prompt_ids
from student.teacher import encode_batch, on_policy_cap
from student.tiny import build_tiny_tokenizer
from student.train import train
from toy_data import msg, toy_examples


@pytest.fixture(scope="module")
def tok():
    return build_tiny_tokenizer()  # one token per character: counts are exact


def demo(text: str) -> list[dict]:
    return msg(f"Here is a solution:\n{text}\n\nNow solve: What is 2+3?")


LONG = "".join(f"Step {i}: add {i} to the total.\n" for i in range(30)) + "#### 435"


# --------------------------------------------------------------------------- fit_middle


def test_fit_middle_returns_the_text_unchanged_when_it_fits(tok):
    n = len(prompt_ids(tok, demo(LONG)))
    messages, removed = fit_middle(tok, demo, LONG, n)
    assert messages == demo(LONG) and removed == 0


@pytest.mark.parametrize("budget", [400, 200, 90])
def test_fit_middle_keeps_head_and_tail_and_fits_the_budget(tok, budget):
    messages, removed = fit_middle(tok, demo, LONG, budget)
    n = len(prompt_ids(tok, messages))
    assert n <= budget
    assert n >= budget - 3  # it keeps as much as fits (the character tokenizer counts exactly)
    content = messages[0]["content"]
    assert content.count(MARKER) == 1
    inner = content.removeprefix("Here is a solution:\n").removesuffix("\n\nNow solve: What is 2+3?")
    head, tail = inner.split(MARKER)
    assert LONG.startswith(head) and LONG.endswith(tail) and head and tail
    assert abs(len(head) - len(tail)) <= 1  # halves as equal as they can be (1 char = 1 token here)
    assert removed == len(LONG) - len(head) - len(tail) > 0  # the text tokens left out
    assert "#### 435" in tail  # the answer at the end of a demonstration survives


def test_fit_middle_is_none_when_even_the_marker_alone_does_not_fit(tok):
    floor = len(prompt_ids(tok, demo(MARKER)))
    assert fit_middle(tok, demo, LONG, floor - 1) is None
    messages, removed = fit_middle(tok, demo, LONG, floor)  # all of the text gone, but it fits
    assert messages == demo(MARKER) and removed == len(tok(LONG, add_special_tokens=False)["input_ids"])


def test_context_budget_and_length_stats(tok):
    y = completion_ids(tok, "4 + 1 = 5.\n#### 5")
    assert context_budget(tok, "4 + 1 = 5.\n#### 5", 64) == 64 - len(y) == context_budget(tok, y, 64)
    a = LengthStats()
    a.truncated(12)
    a.truncated(0)  # not shortened: not counted
    a.drop("prompt_too_long")
    b = LengthStats(negatives_dropped=2)
    b.drop("prompt_too_long", 2)
    b.drop("teacher_context_too_long")
    assert a.as_dict() == {"truncated_contexts": 1, "removed_tokens": 12, "dropped_rows": 1,
                           "dropped": {"prompt_too_long": 1}, "negatives_dropped": 0}
    assert b.as_dict() == {"truncated_contexts": 0, "removed_tokens": 0, "dropped_rows": 3,
                           "dropped": {"prompt_too_long": 2, "teacher_context_too_long": 1},
                           "negatives_dropped": 2}


# --------------------------------------------------------------------------- encode / collate


def _example(prompt_text="What is 2+3?", teacher_texts=("short demo",), negative_text=None, y="2 plus 3 is 5.\n#### 5"):
    return TrainExample(
        prompt=msg(prompt_text),
        completion=y,
        teacher_prompts=[demo(t) for t in teacher_texts],
        negative_prompt=demo(negative_text) if negative_text is not None else None,
    )


def test_encode_keeps_all_of_y_next_to_a_long_context(tok):
    ex = _example(teacher_texts=(LONG,))
    y = completion_ids(tok, ex.completion)
    teacher = prompt_ids(tok, ex.teacher_prompts[0])
    max_length = len(teacher) + len(y)  # the long context fills the row exactly
    enc = encode(tok, ex, num_contexts=1, max_length=max_length)
    assert enc.completion_ids == y and enc.teacher_prompt_ids == [teacher]
    assert enc.prompt_ids == prompt_ids(tok, ex.prompt)  # the whole student prompt, too


def test_a_too_long_prompt_or_teacher_context_is_an_error_with_its_reason(tok):
    y = completion_ids(tok, "2 plus 3 is 5.\n#### 5")
    long_prompt = _example(prompt_text="What is 2+3? " + LONG)
    with pytest.raises(RowTooLong) as err:
        encode(tok, long_prompt, num_contexts=1, max_length=128)
    assert err.value.reason == "prompt_too_long" and isinstance(err.value, StudentError)
    assert err.value.completion_tokens == len(y) and err.value.max_length == 128
    assert "student.max_length = 128" in str(err.value)
    with pytest.raises(RowTooLong) as err:
        encode(tok, _example(teacher_texts=("short", LONG)), num_contexts=2, max_length=128)
    assert err.value.reason == "teacher_context_too_long" and "teacher context 1" in str(err.value)
    # the K contexts are cycled: a long context beyond the first K is never used
    assert encode(tok, _example(teacher_texts=("short", LONG)), num_contexts=1, max_length=128)


def test_a_too_long_negative_is_dropped_alone(tok):
    ex = _example(negative_text=LONG)
    enc = encode(tok, ex, num_contexts=1, max_length=128)
    assert enc.negative_prompt_ids is None and enc.negative_dropped
    assert enc.completion_ids == completion_ids(tok, ex.completion)
    kept = encode(tok, _example(negative_text="#### 6"), num_contexts=1, max_length=128)
    assert kept.negative_prompt_ids is not None and not kept.negative_dropped
    batch = collate([enc, kept], tok.pad_token_id)
    assert batch.has_negative.tolist() == [False, True]


def test_one_long_context_does_not_shorten_another_rows_y(tok):
    short = _example(y="1 plus 1 is 2, and 2 plus 3 is 5.\n#### 5")
    long_ctx = _example(teacher_texts=(LONG,), y="#### 5")
    max_length = len(prompt_ids(tok, long_ctx.teacher_prompts[0])) + len(completion_ids(tok, long_ctx.completion))
    enc = [encode(tok, e, num_contexts=1, max_length=max_length) for e in (short, long_ctx)]
    batch = collate(enc, tok.pad_token_id)
    for b, ex in enumerate((short, long_ctx)):
        y = completion_ids(tok, ex.completion)
        assert batch.labels[b, : len(y)].tolist() == y  # every y token is a label
        assert (batch.labels[b, len(y):] == -100).all()
        # and it is predicted from the right place in the teacher row
        pos = batch.teacher_positions[b, : len(y)]
        assert batch.teacher_input_ids[b, pos + 1].tolist() == y
    assert max(len(e.prompt_ids) + len(e.completion_ids) for e in enc) <= max_length


def test_the_tokenizer_has_no_limit_of_its_own(make_tiny_student):
    # the limit is model.max_length, enforced by the rule above; the tokenizer
    # neither truncates nor prints its raw "sequence length is longer" warning
    tok = make_tiny_student(max_length=128).tokenizer
    assert tok.model_max_length == NO_LENGTH_LIMIT and build_tiny_tokenizer().model_max_length == NO_LENGTH_LIMIT
    ids = tok("x" * 5000)["input_ids"]
    assert len(ids) == 5000
    assert not tok.deprecation_warnings.get("sequence-length-is-longer-than-the-specified-maximum")


# --------------------------------------------------------------------------- on-policy cap


def test_on_policy_cap():
    rows = [([1] * 10, [[1] * 30, [1] * 20]), ([1] * 12, [[1] * 25])]
    assert on_policy_cap(rows, 100, 256) == 70  # the longest context (30) leaves 70
    assert on_policy_cap(rows, 100, 16) == 16  # the configured cap when it is smaller
    assert on_policy_cap(rows, 30, 16) == 1  # at least one token


def test_on_policy_samples_fit_next_to_every_context(make_tiny_student, monkeypatch):
    import student.teacher as teacher

    asked = []
    real = teacher.sample_completions

    def spy(*args, **kw):
        asked.append(kw["max_new_tokens"])
        return real(*args, **kw)

    monkeypatch.setattr(teacher, "sample_completions", spy)
    st = make_tiny_student(max_length=128)
    tok = st.tokenizer
    exs = [_example(teacher_texts=("a short demonstration",), negative_text="#### 7" * 3),
           _example(prompt_text="What is 1+1?", y="#### 2")]
    longest = max(len(prompt_ids(tok, m)) for ex in exs for m in (ex.prompt, *ex.teacher_prompts))
    cap = 128 - longest
    assert 1 < cap < 64
    enc = encode_batch(st, exs, num_contexts=1, on_policy=True, temperature=1.0, max_new_tokens=64, seed=0)
    assert asked == [cap]  # sampled with the cap, not sampled long and cut afterwards
    for e in enc:
        y = e.completion_ids
        assert len(y) == cap or (1 <= len(y) < cap and y[-1] == tok.eos_token_id)  # capped, or stopped at eos
        for c in (e.prompt_ids, *e.teacher_prompt_ids, *([e.negative_prompt_ids] if e.negative_prompt_ids else [])):
            assert len(c) + len(y) <= 128
    # the configured cap wins when it is the smaller one
    enc = encode_batch(st, exs, num_contexts=1, on_policy=True, temperature=1.0, max_new_tokens=3, seed=0)
    assert asked[-1] == 3 and all(1 <= len(e.completion_ids) <= 3 for e in enc)


# --------------------------------------------------------------------------- train


def test_train_drops_a_too_long_row_and_reports_it(make_tiny_student, tmp_path, caplog):
    st = make_tiny_student(max_length=128)
    exs = toy_examples(4)  # teacher contexts 66 tokens, y ≤ 23: they fit
    exs.append(_example(prompt_text="What is 2+3? " + LONG))  # the student prompt alone is too long
    exs.append(_example(teacher_texts=(LONG,)))  # a teacher context too long
    exs.append(_example(negative_text=LONG))  # only its negative is too long: kept
    tc = TrainConfig(max_steps=2, batch_size=2, lr=1e-3, checkpoint_every=10)
    lc = LossConfig(sft=1.0, kd=0.5, contrastive=0.1)
    with caplog.at_level(logging.WARNING, logger="student.train"):
        res = train(st, exs, tc, lc, tmp_path, progress=False)
    assert res.dropped == {"prompt_too_long": 1, "teacher_context_too_long": 1}
    assert res.negatives_dropped == 1 and res.steps == 2
    text = caplog.text
    assert "left out 2 of 7 examples" in text and "prompt_too_long: 1" in text and "student.max_length = 128" in text
    assert "1 examples train without their negative context" in text
    saved = json.loads((res.adapter_dir / "train_config.json").read_text())
    assert saved["lengths"] == {"rows": 5, "dropped": res.dropped, "negatives_dropped": 1}
    assert saved["num_examples"] == 7  # the fingerprint is over the dataset as given
    # the same data resumes as done (dropping is deterministic)
    again = train(make_tiny_student(max_length=128), exs, tc, lc, tmp_path, progress=False)
    assert again.history == res.history and again.dropped == res.dropped


def test_train_with_every_row_too_long_says_to_raise_max_length(make_tiny_student, tmp_path):
    st = make_tiny_student(max_length=32)  # the toy prompts are 31 tokens: no y fits
    with pytest.raises(StudentError, match=r"none of the 3 examples fits student.max_length = 32.*raise student.max_length"):
        train(st, toy_examples(3), TrainConfig(max_steps=1, batch_size=2), LossConfig(), tmp_path, progress=False)
