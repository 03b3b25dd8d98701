"""Self-teacher inputs and alignment, teacher forwards, gradient isolation, EMA, on-policy."""

import pytest
import torch

from student.config import LossConfig
from student.data import TrainExample, collate, completion_ids, encode, micro_batch_indices
from student.errors import RowTooLong
from student.losses import generalized_jsd
from student.model import prompt_ids
from student.teacher import (
    AlignedLM,
    LMHead,
    aligned_hidden,
    ema_update,
    encode_batch,
    sample_completions,
    teacher_forward,
    use_on_policy,
)
from toy_data import msg, toy_examples


def _batch(student, examples, k=2):
    enc = [encode(student.tokenizer, ex, num_contexts=k, max_length=student.model_cfg.max_length) for ex in examples]
    return collate(enc, student.tokenizer.pad_token_id)


def test_encode_student_and_teacher_share_completion_tokens(tiny_student):
    tok = tiny_student.tokenizer
    ex = toy_examples(2)[1]
    enc = encode(tok, ex, num_contexts=3)
    y = completion_ids(tok, ex.completion)
    assert y[-1] == tok.eos_token_id and tok.decode(y[:-1]) == ex.completion
    assert enc.completion_ids == y
    assert enc.prompt_ids == prompt_ids(tok, ex.prompt)
    # K=3 from 2 contexts: cycled
    assert enc.teacher_prompt_ids[2] == enc.teacher_prompt_ids[0] != enc.teacher_prompt_ids[1]
    # no teacher contexts: the student's own prompt stands in
    bare = TrainExample(prompt=ex.prompt, completion=ex.completion)
    assert encode(tok, bare).teacher_prompt_ids == [enc.prompt_ids]


def test_collate_positions_point_at_the_logit_that_predicts_each_y_token(tiny_student):
    batch = _batch(tiny_student, toy_examples(3))
    B, L = batch.labels.shape
    for b in range(B):
        for j in range(L):
            if batch.labels[b, j] == -100:
                continue
            # the token after position p is y_j, in the student row and in every teacher/negative row
            p = batch.positions[b, j]
            assert batch.input_ids[b, p + 1] == batch.labels[b, j]
            for k in range(2):
                pt = batch.teacher_positions[k * B + b, j]
                assert batch.teacher_input_ids[k * B + b, pt + 1] == batch.labels[b, j]
    assert batch.has_negative.tolist() == [False, True, False]
    pn = batch.negative_positions[0]
    ok = batch.labels[1] != -100
    assert torch.equal(batch.negative_input_ids[0, pn[ok] + 1], batch.labels[1, ok])
    assert batch.input_ids[:, 0].ne(tiny_student.tokenizer.pad_token_id).all()  # right padding


def test_encode_at_the_exact_fit_keeps_every_token_and_one_less_is_an_error(tiny_student):
    # nothing is truncated any more (student/lengths.py): a row fits whole or is refused
    tok = tiny_student.tokenizer
    ex = toy_examples(2)[1]
    y = completion_ids(tok, ex.completion)
    teachers = [prompt_ids(tok, m) for m in ex.teacher_prompts]
    fit = max(map(len, teachers)) + len(y)  # the teacher contexts are the longest
    enc = encode(tok, ex, num_contexts=2, max_length=fit)
    assert enc.completion_ids == y and enc.prompt_ids == prompt_ids(tok, ex.prompt)
    assert enc.teacher_prompt_ids == teachers
    assert enc.negative_prompt_ids == prompt_ids(tok, ex.negative_prompt) and not enc.negative_dropped
    with pytest.raises(RowTooLong) as err:
        encode(tok, ex, num_contexts=2, max_length=fit - 1)
    assert err.value.reason == "teacher_context_too_long"


def test_aligned_hidden_and_head_equal_the_full_forward_at_positions(tiny_student):
    batch = _batch(tiny_student, toy_examples(3))
    model = tiny_student.model
    with torch.no_grad():
        hidden = aligned_hidden(model, batch.input_ids, batch.attention_mask, batch.positions)
        logits = LMHead(model)(hidden)
        full = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, output_hidden_states=True)
    idx = batch.positions.unsqueeze(-1)
    want = full.logits.gather(1, idx.expand(-1, -1, full.logits.shape[-1]))
    want_h = full.hidden_states[-1].gather(1, idx.expand(-1, -1, hidden.shape[-1]))
    assert torch.allclose(logits, want, atol=1e-5)
    assert torch.allclose(hidden, want_h, atol=1e-5)


def test_head_applies_final_logit_softcapping(tiny_student):
    base = tiny_student.model.get_base_model()
    h = torch.randn(5, base.config.hidden_size)
    base.config.final_logit_softcapping = 0.5
    with torch.no_grad():
        capped, raw = LMHead(tiny_student.model)(h), base.lm_head(h)
    assert torch.allclose(capped, torch.tanh(raw / 0.5) * 0.5) and capped.abs().max() < 0.5


def test_head_under_autocast_casts_a_frozen_weight_once_with_the_same_result(tiny_student):
    head = LMHead(tiny_student.model)
    h = torch.randn(5, tiny_student.model.config.hidden_size)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = head.proj(h)  # autocast's own cast
        got, again = head(h), head(h)
    assert got.dtype == torch.bfloat16 and torch.equal(got, want) and torch.equal(again, want)
    assert head._cast is not None and head._cast.dtype == torch.bfloat16


def test_teacher_with_student_context_and_equal_adapter_matches_student(make_tiny_student):
    """Same context, teacher adapter = student adapter → identical aligned hidden
    states and logits (so every divergence is 0): the alignment of the two paths is exact."""
    st = make_tiny_student()
    with torch.no_grad():
        for p in st.adapter_params("student").values():
            p.normal_(0, 0.05)
    st.copy_adapter("student", "teacher")
    ex = [TrainExample(prompt=e.prompt, completion=e.completion, teacher_prompts=[e.prompt]) for e in toy_examples(3)]
    batch = _batch(st, ex, k=1)
    out = teacher_forward(st, batch, "ema")
    assert out.hidden.shape[0] == 1 and out.negative_hidden is None
    with torch.no_grad():
        s_hidden = aligned_hidden(st.model, batch.input_ids, batch.attention_mask, batch.positions)
        s_logits = LMHead(st.model)(s_hidden)
    mask = batch.labels != -100
    assert torch.allclose(out.hidden[0][mask], s_hidden[mask], atol=1e-5)
    t_logits, _ = out.logits()
    assert torch.allclose(t_logits[0][mask], s_logits[mask], atol=1e-5)
    assert generalized_jsd(s_logits, t_logits[0], mask).max() < 1e-6


def test_teacher_adapter_modes(make_tiny_student):
    st = make_tiny_student()
    with torch.no_grad():
        for p in st.adapter_params("teacher").values():
            p.normal_(0, 0.2)
    batch = _batch(st, toy_examples(2))
    t = teacher_forward(st, batch, "ema")
    prev = teacher_forward(st, batch, "previous")  # the same adapter, loaded by the loop
    base = teacher_forward(st, batch, "base")
    assert torch.equal(t.hidden, prev.hidden)
    assert not torch.allclose(t.hidden, base.hidden)
    with torch.no_grad(), st.model.disable_adapter():
        want = aligned_hidden(st.model, batch.teacher_input_ids, batch.teacher_attention_mask, batch.teacher_positions)
    assert torch.allclose(base.hidden.flatten(0, 1), want, atol=1e-6)
    # the negative rows land on their examples, zeros elsewhere
    assert base.has_negative.tolist() == [False, True]
    assert (base.negative_hidden[0] == 0).all() and (base.negative_hidden[1] != 0).any()
    # the student adapter is active and trainable again afterwards
    assert st.model.active_adapter == "student"
    assert all(p.requires_grad for p in st.adapter_params("student").values())
    assert not any(p.requires_grad for p in st.adapter_params("teacher").values())


@pytest.mark.parametrize("same_width", [True, False])
def test_negatives_forward_with_or_apart_from_the_contexts_alike(tiny_student, same_width):
    """The negatives share the contexts' forward when their width matches, else
    run apart: either way each row's hidden states are its own forward's."""
    exs = toy_examples(4)
    if same_width:  # a negative context as long as the demonstration's
        exs = [e.model_copy(update={"negative_prompt": e.teacher_prompts[0]}) for e in exs]
    batch = _batch(tiny_student, exs)
    assert (batch.negative_input_ids.shape[1] == batch.teacher_input_ids.shape[1]) == same_width
    out = teacher_forward(tiny_student, batch)
    with torch.no_grad(), tiny_student.use_adapter("teacher") as m:
        want = aligned_hidden(m, batch.negative_input_ids, batch.negative_attention_mask, batch.negative_positions)
    mask = batch.labels[batch.has_negative] != -100
    torch.testing.assert_close(out.negative_hidden[batch.has_negative][mask], want[mask], rtol=1e-5, atol=1e-5)
    if same_width:
        torch.testing.assert_close(out.negative_hidden[batch.has_negative][mask], out.hidden[0][batch.has_negative][mask])


FULL = LossConfig(sft=1, kd=1, contrastive=1, feature=1, num_contexts=2, clip_quantile=0.9)


def _loss_and_grads(st, batch, cfg):
    teacher = teacher_forward(st, batch, cfg.teacher_adapter)
    loss, terms = AlignedLM(st.model, cfg)(batch, teacher)
    params = [p for p in st.model.parameters() if p.requires_grad]
    return loss, terms, torch.autograd.grad(loss, params, allow_unused=True)


@pytest.mark.parametrize("model_kw", [{}, {"full_finetune": True}, {"target_modules": ["q_proj", "lm_head"]}],
                         ids=["lora", "full_finetune", "lora_on_lm_head"])
def test_chunked_loss_equals_the_unchunked_reference_on_the_model(make_tiny_student, model_kw):
    """The trainer's module, chunked (default) vs chunk_size = 0 (full logits):
    same loss and same gradient for every trainable weight, the head's included
    when it trains (full fine-tuning; LoRA on lm_head, whose teacher logits need
    the teacher adapter)."""
    st = make_tiny_student(**model_kw)
    with torch.no_grad():
        for name in ("student", "teacher"):
            for p in st.adapter_params(name).values():
                p.add_(torch.randn_like(p) * 0.05)
    batch = _batch(st, toy_examples(4))
    ref, ref_terms, ref_grads = _loss_and_grads(st, batch, FULL.model_copy(update={"chunk_size": 0}))
    got, got_terms, got_grads = _loss_and_grads(st, batch, FULL.model_copy(update={"chunk_size": 7}))
    assert got.item() == pytest.approx(ref.item(), rel=1e-5)
    assert got_terms.keys() == ref_terms.keys()
    for g, r in zip(got_grads, ref_grads, strict=True):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    if "target_modules" in model_kw:  # the teacher's head used the teacher adapter
        with torch.no_grad(), st.use_adapter("teacher") as m:
            want = LMHead(m)(aligned_hidden(m, batch.teacher_input_ids, batch.teacher_attention_mask, batch.teacher_positions))
        assert torch.allclose(teacher_forward(st, batch).logits()[0].flatten(0, 1), want, atol=1e-5)


def test_gradients_flow_only_into_the_student_adapter(make_tiny_student):
    st = make_tiny_student()
    with torch.no_grad():  # non-zero B so both LoRA matrices get gradient
        for p in st.adapter_params("student").values():
            p.normal_(0, 0.05)
    batch = _batch(st, toy_examples(4))
    teacher = teacher_forward(st, batch, "ema")
    loss, _ = AlignedLM(st.model, FULL)(batch, teacher)
    loss.backward()
    student_ids = {id(p) for p in st.adapter_params("student").values()}
    for name, p in st.model.named_parameters():
        if id(p) in student_ids:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, f"{name} got a gradient"


def test_ema_update_is_exactly_the_formula(make_tiny_student):
    st = make_tiny_student()
    with torch.no_grad():
        for p in st.adapter_params("student").values():
            p.normal_(0, 1)
        for p in st.adapter_params("teacher").values():
            p.normal_(0, 1)
    s0 = {k: p.detach().clone() for k, p in st.adapter_params("student").items()}
    t0 = {k: p.detach().clone() for k, p in st.adapter_params("teacher").items()}
    ema_update(st, 0.9)
    for k, p in st.adapter_params("teacher").items():
        assert torch.allclose(p, 0.9 * t0[k] + 0.1 * s0[k], atol=1e-7, rtol=1e-6)
        assert torch.equal(st.adapter_params("student")[k], s0[k])  # the student is untouched
    # β = 0.5 and 0.75 are exact in binary floating point: bit-for-bit equality
    t1 = {k: p.detach().clone() for k, p in st.adapter_params("teacher").items()}
    ema_update(st, 0.75)
    for k, p in st.adapter_params("teacher").items():
        assert torch.equal(p, t1[k] * 0.75 + s0[k] * 0.25)
    # the EMA acts on LoRA weights (both A and B of every targeted layer)
    keys = list(t0)
    assert any("lora_A" in k for k in keys) and any("lora_B" in k for k in keys)


def test_on_policy_coin_is_deterministic_and_has_the_asked_fraction():
    flips = [use_on_policy(0.3, 7, m, 0) for m in range(2000)]
    assert flips == [use_on_policy(0.3, 7, m, 0) for m in range(2000)]
    assert 0.25 < sum(flips) / len(flips) < 0.35
    assert not any(use_on_policy(0.0, 7, m, 0) for m in range(50))
    assert all(use_on_policy(1.0, 7, m, 0) for m in range(50))


def test_on_policy_batch_uses_the_student_sample_as_y(tiny_student):
    exs = toy_examples(3)
    ys = sample_completions(tiny_student, exs, temperature=1.0, max_new_tokens=12, seed=3)
    assert ys == sample_completions(tiny_student, exs, temperature=1.0, max_new_tokens=12, seed=3)
    assert all(1 <= len(y) <= 12 for y in ys)
    enc = encode_batch(tiny_student, exs, num_contexts=2, on_policy=True, temperature=1.0, max_new_tokens=12, seed=3)
    assert [e.completion_ids for e in enc] == ys
    off = encode_batch(tiny_student, exs, num_contexts=2, on_policy=False)
    assert off[0].completion_ids == completion_ids(tiny_student.tokenizer, exs[0].completion)


def test_micro_batches_cover_each_epoch_and_split_across_ranks():
    n, bs, world = 10, 2, 2
    per_epoch = 3  # ceil(10 / 4)
    seen = []
    for m in range(per_epoch):
        r0 = micro_batch_indices(n, bs, world, 0, 1, m)
        r1 = micro_batch_indices(n, bs, world, 1, 1, m)
        assert len(r0) == len(r1) == bs
        seen += r0 + r1
    assert set(seen) == set(range(n))
    # the next epoch has a different (but reproducible) order
    assert micro_batch_indices(n, bs, world, 0, 1, per_epoch) == micro_batch_indices(n, bs, world, 0, 1, per_epoch)


def test_train_example_rejects_unknown_fields():
    with pytest.raises(Exception, match="extra"):
        TrainExample(prompt=msg("q"), completion="a", teacher="x")
