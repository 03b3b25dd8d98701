"""UniSD loss terms checked by their properties (DESIGN §3)."""

import pytest
import torch
import torch.nn.functional as F

from student.config import LossConfig
from student.losses import (
    agreement_weights,
    clip_divergence,
    contrastive_loss,
    feature_loss,
    generalized_jsd,
    sft_loss,
    token_logprobs,
    unisd_loss,
)

B, T, V, H = 3, 5, 11, 8


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


def rand(gen, *shape, scale=1.0):
    return torch.randn(*shape, generator=gen) * scale


def full_mask():
    return torch.ones(B, T, dtype=torch.bool)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_divergence_zero_for_identical_positive_otherwise(gen, alpha):
    s = rand(gen, B, T, V)
    d_same = generalized_jsd(s, s.clone(), full_mask(), alpha, 1.0)
    assert d_same.shape == (B, T)
    assert torch.allclose(d_same, torch.zeros_like(d_same), atol=1e-6)
    t = rand(gen, B, T, V)
    d = generalized_jsd(s, t, full_mask(), alpha, 1.0)
    assert (d > 1e-4).all()


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_alpha_endpoints_equal_kl_div(gen, temperature):
    s, t = rand(gen, B, T, V), rand(gen, B, T, V)
    ls, lt = F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1)
    forward = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)  # KL(p_T‖p_S)
    reverse = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)  # KL(p_S‖p_T)
    assert torch.allclose(generalized_jsd(s, t, None, 0.0, temperature), forward, atol=1e-5)
    assert torch.allclose(generalized_jsd(s, t, None, 1.0, temperature), reverse, atol=1e-5)


def test_jsd_matches_mixture_formula_and_is_fp32(gen):
    s, t = rand(gen, B, T, V).bfloat16(), rand(gen, B, T, V).bfloat16()
    a = 0.3
    ps, pt = F.softmax(s.float(), -1), F.softmax(t.float(), -1)
    m = (1 - a) * ps + a * pt
    want = a * (pt * (pt / m).log()).sum(-1) + (1 - a) * (ps * (ps / m).log()).sum(-1)
    got = generalized_jsd(s, t, None, a, 1.0)
    assert got.dtype == torch.float32
    assert torch.allclose(got, want, atol=1e-5)


def test_divergence_masked_positions_zero_and_inf_logits_safe(gen):
    s, t = rand(gen, B, T, V), rand(gen, B, T, V)
    s[..., 0] = float("-inf")  # a banned token must not produce NaN
    mask = full_mask()
    mask[0, 2:] = False
    d = generalized_jsd(s, t, mask, 0.5, 1.0)
    assert torch.isfinite(d).all()
    assert (d[0, 2:] == 0).all()


def test_static_and_quantile_clipping_bound_every_token(gen):
    d = rand(gen, B, T).abs() * 20
    mask = full_mask()
    clipped = clip_divergence(d, mask, clip=3.0)
    assert (clipped <= 3.0).all() and torch.equal(clipped[d <= 3.0], d[d <= 3.0])
    c = torch.quantile(d.flatten(), 0.5)
    q = clip_divergence(d, mask, quantile=0.5)
    assert (q <= c + 1e-6).all()
    assert torch.equal(q[d <= c], d[d <= c])
    # the quantile is taken over masked tokens only
    mask[1:] = False
    q2 = clip_divergence(d, mask, quantile=1.0)
    assert (q2 <= d[0].max() + 1e-6).all()
    assert torch.equal(clip_divergence(d, mask), d)  # neither given: unchanged


def test_clipped_tokens_get_no_gradient(gen):
    s = rand(gen, 1, 4, V, scale=5.0).requires_grad_()
    t = rand(gen, 1, 4, V, scale=5.0)
    d = generalized_jsd(s, t, None, 0.5, 1.0)
    c = d.detach().min() + 1e-3
    clip_divergence(d, None, clip=float(c)).sum().backward()
    big = d.detach() > c
    assert big.any()
    assert (s.grad[big].abs().sum(-1) == 0).all()


def test_agreement_weights_bounds_and_monotone(gen):
    K = 4
    base = rand(gen, 1, B, T).expand(K, B, T).clone()
    # token t gets spread proportional to t: variance rises along T
    spread = torch.linspace(0, 3, T)
    noise = torch.tensor([-1.0, -0.5, 0.5, 1.0]).view(K, 1, 1)
    lp = base + noise * spread.view(1, 1, T)
    w = agreement_weights(lp, full_mask(), gamma=2.0)
    assert w.shape == (B, T)
    assert ((w >= 0.01) & (w <= 1.0)).all()
    assert torch.allclose(w[:, 0], torch.ones(B))  # zero variance → weight 1
    assert (w[:, 1:] < w[:, :-1]).all()  # falls as variance rises
    # huge γ hits the 0.01 floor, never below
    w_floor = agreement_weights(lp, full_mask(), gamma=1e6)
    assert w_floor.min() == pytest.approx(0.01)


def test_agreement_weights_formula_exact(gen):
    lp = rand(gen, 3, B, T)
    v = lp.var(0, correction=0)
    vhat = (v / torch.quantile(v.flatten(), 0.95)).clamp_max(10)
    want = (1 / (1 + 0.7 * vhat)).clamp_min(0.01)
    assert torch.allclose(agreement_weights(lp, full_mask(), 0.7), want, atol=1e-6)
    # a single context: every weight 1
    assert torch.equal(agreement_weights(lp[:1], full_mask(), 5.0), torch.ones(B, T))


def test_contrastive_zero_when_positive_matches_and_negative_far(gen):
    s = rand(gen, B, T)
    mask = full_mask()
    assert contrastive_loss(s, s.clone(), s - 5.0, mask, 0.5) == 0
    # positive far, negative equal: margin + distance
    loss = contrastive_loss(s, s - 2.0, s.clone(), mask, 0.5)
    assert loss.item() == pytest.approx(2.5)


def test_feature_loss_is_masked_mse(gen):
    hs, ht = rand(gen, B, T, H), rand(gen, B, T, H)
    mask = full_mask()
    mask[2] = False
    want = ((hs[:2] - ht[:2]) ** 2).mean()
    assert feature_loss(hs, ht, mask).item() == pytest.approx(want.item(), rel=1e-5)
    assert feature_loss(hs, hs.clone(), mask) == 0


def test_sft_loss_equals_cross_entropy_with_ignore_index(gen):
    logits = rand(gen, B, T, V)
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[:, :2] = -100  # prompt
    want = F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100)
    assert sft_loss(logits, labels).item() == pytest.approx(want.item(), rel=1e-5)


def test_zero_token_batch_gives_zero_with_grad_and_no_nan(gen):
    s = rand(gen, B, T, V).requires_grad_()
    t = rand(gen, 2, B, T, V)
    hs = rand(gen, B, T, H).requires_grad_()
    labels = torch.full((B, T), -100)
    empty = torch.zeros(B, T, dtype=torch.bool)
    cfg = LossConfig(sft=1, kd=1, contrastive=1, feature=1, clip_quantile=0.9)
    total, terms = unisd_loss(
        cfg,
        student_logits=s,
        labels=labels,
        teacher_logits=t,
        negative_logits=t[1],
        has_negative=torch.ones(B, dtype=torch.bool),
        student_hidden=hs,
        teacher_hidden=hs.detach() + 1,
    )
    assert total.item() == 0 and total.requires_grad
    total.backward()
    assert torch.isfinite(s.grad).all() and (s.grad == 0).all()
    assert terms["tokens"] == 0
    for f in (
        sft_loss(s, labels),
        generalized_jsd(s, t[0], empty).sum(),
        contrastive_loss(s[..., 0], s[..., 0], s[..., 1], empty),
        feature_loss(hs, hs + 1, empty),
    ):
        assert f.item() == 0 and not torch.isnan(f)
    assert torch.equal(agreement_weights(t[:, :, :, 0], empty), torch.zeros(B, T))
    assert torch.equal(clip_divergence(torch.ones(B, T), empty, quantile=0.5), torch.ones(B, T))


def test_unisd_total_is_weighted_sum_and_zero_lambda_skips(gen):
    s = rand(gen, B, T, V).requires_grad_()
    t = rand(gen, 2, B, T, V)
    labels = torch.randint(0, V, (B, T), generator=gen)
    hs, ht = rand(gen, B, T, H), rand(gen, B, T, H)
    neg = rand(gen, B, T, V)
    has_neg = torch.tensor([True, False, True])
    kw = dict(student_logits=s, labels=labels, teacher_logits=t, negative_logits=neg,
              has_negative=has_neg, student_hidden=hs, teacher_hidden=ht)
    cfg = LossConfig(sft=1.0, kd=0.5, contrastive=2.0, feature=0.1, alpha=0.5, clip=None)
    total, terms = unisd_loss(cfg, **kw)
    want = terms["sft"] + 0.5 * terms["kd"] + 2.0 * terms["contrastive"] + 0.1 * terms["feature"]
    assert total.item() == pytest.approx(want, rel=1e-5)
    # the contrastive term only sees examples that have a negative
    cmask = has_neg.view(B, 1).expand(B, T)
    c = contrastive_loss(token_logprobs(s, labels), token_logprobs(t[0], labels), token_logprobs(neg, labels), cmask, 0.5)
    assert terms["contrastive"] == pytest.approx(c.item(), rel=1e-5)
    # K = 2: the divergence is the agreement-weighted mean of the context-averaged D_t
    d = (generalized_jsd(s, t[0]) + generalized_jsd(s, t[1])) / 2
    w = agreement_weights(token_logprobs(t, labels.expand(2, B, T)), None, 1.0)
    assert terms["kd"] == pytest.approx(((w * d).sum() / w.sum()).item(), rel=1e-5)
    # λ = 0 removes the term from the dict (it was never computed)
    sft_only, terms2 = unisd_loss(LossConfig(sft=1, kd=0), student_logits=s, labels=labels)
    assert set(terms2) == {"sft", "total", "tokens"}
    assert sft_only.item() == pytest.approx(terms["sft"], rel=1e-6)


def test_unisd_requires_inputs_for_enabled_terms(gen):
    s = rand(gen, B, T, V)
    labels = torch.randint(0, V, (B, T), generator=gen)
    with pytest.raises(ValueError, match="teacher logits"):
        unisd_loss(LossConfig(kd=1.0), student_logits=s, labels=labels)
    with pytest.raises(ValueError, match="hidden states"):
        unisd_loss(LossConfig(kd=0.0, feature=1.0), student_logits=s, labels=labels)


def test_contrastive_enabled_without_negatives_reports_zero(gen):
    s = rand(gen, B, T, V)
    labels = torch.randint(0, V, (B, T), generator=gen)
    cfg = LossConfig(sft=1.0, kd=1.0, contrastive=1.0)
    total, terms = unisd_loss(cfg, student_logits=s, labels=labels, teacher_logits=rand(gen, B, T, V))
    assert terms["contrastive"] == 0.0
    assert total.item() == pytest.approx(terms["sft"] + terms["kd"], rel=1e-6)


def test_example_weights_scale_tokens(gen):
    s = rand(gen, B, T, V)
    labels = torch.randint(0, V, (B, T), generator=gen)
    w = torch.tensor([1.0, 0.0, 1.0]).view(B, 1).expand(B, T)
    _, terms = unisd_loss(LossConfig(sft=1, kd=0), student_logits=s, labels=labels, token_weight=w)
    keep = torch.tensor([0, 2])
    assert terms["sft"] == pytest.approx(sft_loss(s[keep], labels[keep]).item(), rel=1e-5)
