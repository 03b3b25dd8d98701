"""The UniSD objective (DESIGN §3), one pure function per term.

Conventions shared by every function here:

* Tensors are *aligned*: ``logits[b, t]`` is the next-token distribution that
  predicts target token ``t`` of example ``b`` (the caller has already shifted
  and gathered the completion positions, see ``student/teacher.py``).  Shapes:
  ``B`` batch, ``T`` target positions, ``V`` vocabulary, ``H`` hidden size,
  ``K`` teacher contexts.
* ``mask`` is ``[B, T]``, bool or float.  A float mask is a per-token weight
  (the trainer folds per-example weights into it); every mean is
  ``Σ mask·x / Σ mask``.
* Everything is computed in float32 whatever the input dtype (bf16 logits
  would make the log-softmax differences of near-equal distributions noise).
* A batch with zero target tokens gives exactly 0 *with* a grad_fn (so
  ``backward()`` works and adds nothing) and never NaN: masked positions are
  replaced with 0 by ``torch.where`` rather than multiplied, because 0·NaN is
  NaN.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # only for the annotation of unisd_loss
    from student.config import LossConfig

# log-probabilities are floored here so that a -inf logit (a banned token) gives
# p = 0 and p·(log p − log m) = 0 instead of 0·(−inf) = NaN.
_LOGP_FLOOR = -1e4


def _weights(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.float32)


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ mask·values / Σ mask over [B, T]; 0 (with grad) when the mask is empty."""
    w = _weights(mask)
    v = torch.where(w > 0, values.float(), torch.zeros((), dtype=torch.float32, device=values.device))
    # an empty mask gives 0/1e-12 = 0, still attached to the graph
    return (v * w).sum() / w.sum().clamp_min(1e-12)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ_t w_t D_t / Σ_t w_t over the masked tokens (the agreement-weighted mean)."""
    return masked_mean(values, _weights(mask) * weights.float())


def _log_probs(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.log_softmax(logits.float() / temperature, dim=-1).clamp_min(_LOGP_FLOOR)


# ---------------------------------------------------------------- SFT


def sft_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the student on the target tokens.

    logits [B, T, V] aligned with labels [B, T]; label -100 marks positions that
    are not trained on (prompt, padding).  ``mask`` (optional, [B, T] float)
    re-weights tokens, e.g. by the example's dataset weight.
    """
    valid = labels != -100
    safe_labels = torch.where(valid, labels, torch.zeros_like(labels))
    logp = F.log_softmax(logits.float(), dim=-1)
    nll = -logp.gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
    w = valid.float() if mask is None else valid.float() * _weights(mask)
    return masked_mean(nll, w)


# ---------------------------------------------------------------- divergence


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    mask: torch.Tensor | None = None,
    alpha: float = 0.5,
    temperature: float = 1.0,
) -> torch.Tensor:
    """Per-token generalized JSD D_t over the full vocabulary at temperature τ.

    student_logits, teacher_logits [B, T, V] → D [B, T] (0 at masked positions).
    α = 0: forward KL(p_T‖p_S); α = 1: reverse KL(p_S‖p_T); otherwise with
    m = (1−α)p_S + α p_T, D = α·KL(p_T‖m) + (1−α)·KL(p_S‖m).
    The teacher side is detached: the teacher never receives gradient.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")
    log_s = _log_probs(student_logits, temperature)
    log_t = _log_probs(teacher_logits.detach(), temperature)
    if alpha == 0.0:
        d = (log_t.exp() * (log_t - log_s)).sum(-1)
    elif alpha == 1.0:
        d = (log_s.exp() * (log_s - log_t)).sum(-1)
    else:
        log_m = torch.logaddexp(log_s + math.log(1.0 - alpha), log_t + math.log(alpha))
        kl_t_m = (log_t.exp() * (log_t - log_m)).sum(-1)
        kl_s_m = (log_s.exp() * (log_s - log_m)).sum(-1)
        d = alpha * kl_t_m + (1.0 - alpha) * kl_s_m
    # rounding can give -1e-7 for identical distributions; a divergence is ≥ 0
    d = d.clamp_min(0.0)
    if mask is not None:
        d = torch.where(_weights(mask) > 0, d, torch.zeros((), dtype=d.dtype, device=d.device))
    return d


def clip_divergence(
    divergence: torch.Tensor,
    mask: torch.Tensor | None = None,
    clip: float | None = None,
    quantile: float | None = None,
) -> torch.Tensor:
    """D_t ← min(D_t, c): static ``clip`` or c = the ``quantile`` of the batch's
    masked D_t (the quantile wins when both are given).  [B, T] → [B, T].
    Clipped tokens get no gradient, which is the point: one wildly divergent
    token cannot dominate the batch."""
    if quantile is not None:
        valid = divergence if mask is None else divergence[_weights(mask) > 0]
        if valid.numel() == 0:
            return divergence
        c = torch.quantile(valid.detach().float().flatten(), quantile)
        return torch.minimum(divergence, c)
    if clip is not None:
        return divergence.clamp_max(clip)
    return divergence


# ---------------------------------------------------------------- agreement


def agreement_weights(
    teacher_token_logprobs: torch.Tensor, mask: torch.Tensor | None = None, gamma: float = 1.0
) -> torch.Tensor:
    """Multi-teacher agreement weights w_t from K teacher contexts.

    teacher_token_logprobs [K, B, T] = log p_k(y_t) under context k → w [B, T]:
    v_t = Var_k log p_k(y_t) (population variance, so K = 1 gives v = 0 and
    w = 1), v̂_t = min(v_t / q95(v), 10) with q95 over the masked tokens,
    w_t = max(1 / (1 + γ v̂_t), 0.01).  No gradient (weights are constants).
    """
    lp = teacher_token_logprobs.detach().float()
    v = lp.var(dim=0, correction=0)
    m = torch.ones_like(v, dtype=torch.bool) if mask is None else _weights(mask) > 0
    if m.any():
        q95 = torch.quantile(v[m], 0.95)
    else:
        q95 = torch.zeros((), device=v.device)
    if q95 > 0:
        v_hat = (v / q95).clamp_max(10.0)
    else:  # ≥95% of tokens agree exactly: anything that disagrees is maximally suspect
        v_hat = torch.where(v > 0, torch.full_like(v, 10.0), torch.zeros_like(v))
    w = (1.0 / (1.0 + gamma * v_hat)).clamp_min(0.01)
    return torch.where(m, w, torch.zeros_like(w))


# ---------------------------------------------------------------- contrastive, features


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(y_t): logits [..., T, V], tokens [..., T] (-100 allowed) → [..., T]."""
    safe = torch.where(tokens == -100, torch.zeros_like(tokens), tokens)
    return F.log_softmax(logits.float(), dim=-1).gather(-1, safe.unsqueeze(-1)).squeeze(-1)


def contrastive_loss(
    student_lp: torch.Tensor,
    pos_lp: torch.Tensor,
    neg_lp: torch.Tensor,
    mask: torch.Tensor,
    margin: float = 0.5,
) -> torch.Tensor:
    """Token-level contrastive loss, all inputs [B, T] log-probs of y_t:
    mean_t relu(m + |ℓ_S − ℓ_T+| − |ℓ_S − ℓ_T−|).  The student should sit
    closer to the teacher that saw the demonstration than to the one that saw
    its own wrong answer.  Examples without a negative are masked out."""
    s = student_lp.float()
    term = F.relu(margin + (s - pos_lp.detach().float()).abs() - (s - neg_lp.detach().float()).abs())
    return masked_mean(term, mask)


def feature_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE between last-layer hidden states on the y positions.
    student_hidden, teacher_hidden [B, T, H]; mean over H then masked mean over tokens."""
    per_token = (student_hidden.float() - teacher_hidden.detach().float()).pow(2).mean(-1)
    return masked_mean(per_token, mask)


# ---------------------------------------------------------------- total


def unisd_loss(
    cfg: "LossConfig",
    *,
    student_logits: torch.Tensor,
    labels: torch.Tensor,
    token_weight: torch.Tensor | None = None,
    teacher_logits: torch.Tensor | None = None,
    negative_logits: torch.Tensor | None = None,
    has_negative: torch.Tensor | None = None,
    student_hidden: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """L = λ_sft·SFT + λ_kd·D̄ + λ_c·L_c + λ_f·L_feat with the λ of ``cfg``.

    student_logits [B, T, V], labels [B, T] (the completion tokens, -100 on
    padding), token_weight [B, T] optional (example weights), teacher_logits
    [K, B, T, V] (context 0 is the positive/demonstration teacher),
    negative_logits [B, T, V] with has_negative [B] bool, hidden states
    [B, T, H].  A λ of 0 skips its term entirely (no compute).  The divergence
    is averaged over the K contexts, then clipped, then agreement-weighted.
    Returns (total, {term: float}) where the dict holds every computed term
    plus "total" and "tokens".
    """
    mask = (labels != -100).float()
    if token_weight is not None:
        mask = mask * token_weight.float()
    terms: dict[str, float] = {"tokens": float((labels != -100).sum())}
    total = student_logits.new_zeros((), dtype=torch.float32)
    needs_teacher = cfg.kd > 0 or cfg.contrastive > 0
    if needs_teacher and teacher_logits is None:
        raise ValueError("kd/contrastive weights are set but no teacher logits were given")
    if teacher_logits is not None and teacher_logits.dim() == 3:
        teacher_logits = teacher_logits.unsqueeze(0)

    # log p(y_t) of the student and of every teacher context, each computed once and
    # shared by the terms that need it (SFT and contrastive; agreement and contrastive)
    contrast = cfg.contrastive > 0 and negative_logits is not None and has_negative is not None
    student_lp = token_logprobs(student_logits, labels) if cfg.sft > 0 or contrast else None
    teacher_lp = None
    if teacher_logits is not None and (contrast or (cfg.kd > 0 and teacher_logits.shape[0] > 1)):
        teacher_lp = token_logprobs(teacher_logits, labels.expand(teacher_logits.shape[:3]))

    if cfg.sft > 0:
        sft = masked_mean(-student_lp, mask)  # = sft_loss(...): mask is already 0 where labels are -100
        total = total + cfg.sft * sft
        terms["sft"] = float(sft.detach())

    if cfg.kd > 0:
        # all K contexts against one student log-softmax, broadcast over the K axis
        d = generalized_jsd(student_logits.unsqueeze(0), teacher_logits, mask, cfg.alpha, cfg.temperature).mean(0)
        d = clip_divergence(d, mask, clip=cfg.clip, quantile=cfg.clip_quantile)
        if teacher_logits.shape[0] > 1:
            w = agreement_weights(teacher_lp, mask, cfg.agreement_gamma)
            terms["agreement_w"] = float(masked_mean(w, mask))
        else:
            w = torch.ones_like(d)
        kd = weighted_mean(d, w, mask)
        total = total + cfg.kd * kd
        terms["kd"] = float(kd.detach())

    if contrast:
        cmask = mask * has_negative.float().unsqueeze(-1)
        c = contrastive_loss(student_lp, teacher_lp[0], token_logprobs(negative_logits, labels), cmask,
                             cfg.contrastive_margin)
        total = total + cfg.contrastive * c
        terms["contrastive"] = float(c.detach())
    elif cfg.contrastive > 0:  # enabled, but no example of this batch has a negative
        terms["contrastive"] = 0.0

    if cfg.feature > 0:
        if student_hidden is None or teacher_hidden is None:
            raise ValueError("feature weight is set but hidden states were not given")
        f = feature_loss(student_hidden, teacher_hidden, mask)
        total = total + cfg.feature * f
        terms["feature"] = float(f.detach())

    terms["total"] = float(total.detach())
    return total, terms
