"""Batched generation: left padding is exact, sampling is seeded, eos stops."""

from __future__ import annotations

import pytest
import torch

from student.errors import GenerationError
from student.generate import bench_generation, generate, generate_ids

PROMPTS = [
    [{"role": "user", "content": f"Q{i}: what is {i} + {i * i}?" + " pad" * (i % 4)}] for i in range(9)
]


def _opinionated(student, seed=1, std=0.5):
    """Random LoRA weights large enough that greedy outputs differ per prompt
    (a freshly initialised tiny model answers every prompt with the same text)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in student.adapter_params("student").values():
            p.normal_(0, std)
    return student


def test_batched_greedy_equals_one_at_a_time(tiny_student):
    s = _opinionated(tiny_student)
    batched = generate(s, PROMPTS, max_new_tokens=16, batch_size=4)
    single = [generate(s, [p], max_new_tokens=16, batch_size=1)[0] for p in PROMPTS]
    assert batched == single
    assert len({rows[0] for rows in batched}) > 3  # the outputs really depend on the prompt
    assert all(len(rows) == 1 for rows in batched)


def test_output_order_follows_input_order_not_length_sorting(tiny_student):
    s = _opinionated(tiny_student)
    fwd = generate(s, PROMPTS, max_new_tokens=8, batch_size=3)
    rev = generate(s, PROMPTS[::-1], max_new_tokens=8, batch_size=3)
    assert fwd == rev[::-1]


def test_sampling_is_deterministic_with_seed_and_varies_across_seeds(tiny_student):
    s = _opinionated(tiny_student)
    a = generate(s, PROMPTS[:4], n_samples=3, temperature=1.0, max_new_tokens=12, seed=5)
    b = generate(s, PROMPTS[:4], n_samples=3, temperature=1.0, max_new_tokens=12, seed=5)
    c = generate(s, PROMPTS[:4], n_samples=3, temperature=1.0, max_new_tokens=12, seed=6)
    assert a == b
    assert a != c
    assert all(len(rows) == 4 for rows in a)  # greedy + 3 samples
    greedy = generate(s, PROMPTS[:4], max_new_tokens=12)
    assert [rows[0] for rows in a] == [rows[0] for rows in greedy]
    assert len({t for rows in a for t in rows[1:]}) > 4  # samples differ from each other


def test_generation_does_not_disturb_global_rng(tiny_student):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    generate(tiny_student, PROMPTS[:2], n_samples=2, max_new_tokens=4, seed=9)
    assert torch.equal(torch.rand(3), expected)


def test_stops_at_eos_and_cuts_it(tiny_student):
    s = tiny_student
    eos = s.tokenizer.eos_token_id
    # A +100 logit bias on eos makes it the first token of every answer (greedy and
    # sampled): each answer is then empty, and nothing after eos leaks into it.
    bias = torch.zeros(s.model.get_base_model().config.vocab_size)
    bias[eos] = 100.0
    handle = s.model.get_base_model().lm_head.register_forward_hook(lambda m, i, o: o + bias)
    try:
        ids = generate_ids(s, PROMPTS[:3], max_new_tokens=10, n_samples=1)
    finally:
        handle.remove()
    assert ids == [[[], []]] * 3


def test_adapter_choice_changes_answers(tiny_student):
    s = _opinionated(tiny_student)
    student = generate(s, PROMPTS[:3], max_new_tokens=10)
    teacher = generate(s, PROMPTS[:3], max_new_tokens=10, adapter="teacher")
    base = generate(s, PROMPTS[:3], max_new_tokens=10, adapter="base")
    assert teacher == base  # the teacher still equals the initial (identity) LoRA
    assert student != teacher
    assert s.model.active_adapter == "student"


def test_training_mode_is_restored(tiny_student):
    tiny_student.model.train()
    generate(tiny_student, PROMPTS[:1], max_new_tokens=2)
    assert tiny_student.model.training


def test_bad_arguments_raise_generation_error(tiny_student):
    assert generate(tiny_student, [], max_new_tokens=4) == []
    with pytest.raises(GenerationError, match="temperature"):
        generate(tiny_student, PROMPTS[:1], n_samples=2, temperature=0)
    with pytest.raises(GenerationError, match="chat message"):
        generate(tiny_student, [[{"role": "user"}]])
    with pytest.raises(GenerationError, match="non-empty list"):
        generate(tiny_student, ["just a string"])


def test_bench_generation_reports_both_rates(tiny_student):
    r = bench_generation(tiny_student, PROMPTS[:4], max_new_tokens=4, batch_size=4)
    assert r["sequential_tokens"] == r["batched_tokens"] == 16
    assert r["speedup"] == pytest.approx(r["batched_tokens_per_s"] / r["sequential_tokens_per_s"])


def test_should_stop_ends_generation_within_a_decode_step(tiny_student):
    from student.errors import GenerationStopped

    _opinionated(tiny_student)
    polls = []

    def should_stop() -> bool:
        polls.append(1)
        return len(polls) > 3  # a stop request arrives after 3 decode steps

    prompts = [[{"role": "user", "content": f"question {i}"}] for i in range(3)]
    with pytest.raises(GenerationStopped):
        generate(tiny_student, prompts, max_new_tokens=200, batch_size=8, should_stop=should_stop)
    assert len(polls) <= 6  # not 200 decode steps: it stopped at the next one
    # without a request nothing changes
    assert generate(tiny_student, prompts, max_new_tokens=5, should_stop=lambda: False) == \
        generate(tiny_student, prompts, max_new_tokens=5)
