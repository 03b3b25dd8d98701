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

``unisd_loss`` is the reference total over full-vocabulary logits;
``chunked_unisd_loss`` (the trainer's) computes the same value and gradients
from hidden states through the LM head, a chunk of tokens at a time, so no
``[K, B, T, V]`` (nor ``[B, T, V]``) tensor ever exists.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # only for the annotations of the totals
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
    x = logits.float()
    if temperature != 1.0:  # (x / 1 is x: skip a pass over [.., V])
        x = x / temperature
    return F.log_softmax(x, dim=-1).clamp_min(_LOGP_FLOOR)


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
    d, _ = _jsd(_log_probs(student_logits, temperature), _log_probs(teacher_logits.detach(), temperature), alpha)
    if mask is not None:
        d = torch.where(_weights(mask) > 0, d, torch.zeros((), dtype=d.dtype, device=d.device))
    return d


def _jsd(log_s: torch.Tensor, log_t: torch.Tensor, alpha: float, *, grad: bool = False,
         p_s: torch.Tensor | None = None):
    """generalized_jsd from (floored) log-probabilities [..., V] → (D [...], ∂D/∂log_s
    [..., V] when `grad`, else None).  `p_s` = log_s.exp() when the caller has it.

    The gradient is in closed form (for the chunked loss, whose log_s is detached):
    α = 0: −p_T; α = 1: p_S·(log p_S − log p_T + 1); otherwise (1−α)·p_S·(log p_S −
    log m), the two KLs' m-terms cancelling.  Where the ≥ 0 clamp cuts D it is 0,
    as autograd's would be.  (In-place steps reuse the buffers of the value.)"""
    g = None
    if alpha == 0.0:
        p_t = log_t.exp()
        d = (p_t * (log_t - log_s)).sum(-1)
        if grad:
            g = p_t.neg_()
    else:
        p_s = log_s.exp() if p_s is None else p_s
        if alpha == 1.0:
            diff = log_s - log_t
            d = (p_s * diff).sum(-1)
            if grad:
                g = diff.add_(1.0).mul_(p_s)
        else:
            log_m = torch.logaddexp(log_s + math.log(1.0 - alpha), log_t + math.log(alpha))
            kl_t_m = (log_t.exp() * (log_t - log_m)).sum(-1)
            s_terms = p_s * (log_s - log_m)
            d = alpha * kl_t_m + (1.0 - alpha) * s_terms.sum(-1)
            if grad:
                g = s_terms.mul_(1.0 - alpha)
    cut = d < 0
    if g is not None and bool(cut.any()):  # (rare: a full pass over g otherwise)
        g.masked_fill_(cut.unsqueeze(-1), 0.0)
    # rounding can give -1e-7 for identical distributions; a divergence is ≥ 0
    return d.clamp_min(0.0), g


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


# ---------------------------------------------------------------- total, chunked from hidden states
#
# unisd_loss above is the reference: it takes full-vocabulary logits, [B, T, V]
# for the student and [K, B, T, V] for the teachers (15 GB in fp32 at V = 152k,
# K = 3, B = 8, T = 1024).  chunked_unisd_loss computes the same value and the
# same gradients from hidden states, applying the LM head to `chunk_size`
# completion tokens at a time (as torchtune's chunked KD and Liger's fused
# linear JSD do).  Every vocabulary-wide quantity is per token: a chunk reduces
# its [C, V] logits to per-token values (D_t, log p_S(y_t), log p_k(y_t)) and
# frees them.  The batch-global parts (the clip quantile of D_t, the q95 of the
# agreement variance, Σ w_t) then run on those [N] vectors through the very
# functions the reference uses.
#
# Backward is bounded too, by a custom autograd Function rather than
# torch.utils.checkpoint: D_t and log p_S(y_t) depend on the student hidden
# state h_t of their own token only, so each chunk's forward also computes the
# two per-token gradients ∂D_t/∂h_t and ∂log p_S(y_t)/∂h_t ([C, H] each; ∂D/∂log
# p_S in closed form, see _jsd) and keeps only those.  Backward is then a
# weighted sum of stored rows.  Checkpointing would run the student head, the K
# teacher heads and the divergence over the vocabulary a second time in
# backward, about doubling the loss's cost; this costs one extra [C, V] × [V, H]
# product per chunk instead (the two gradients are taken apart: their weights
# are known only after the batch-global statistics).  Parameters of the head
# cannot be handled that way (their gradient needs those weights), so when the
# head has trainable parameters (full fine-tuning, a trainable embedding tied to
# the head, LoRA on lm_head) the Function recomputes its chunk in backward,
# which is checkpointing, under the autocast state of the forward.


@dataclass(frozen=True)
class _ChunkSpec:
    """What every chunk of one call computes."""

    student_head: nn.Module  # hidden [C, H] → logits [C, V]; its trainable parameters get gradient
    teacher_head: Callable[[torch.Tensor], torch.Tensor] | None  # the same for the teacher; never differentiated
    alpha: float
    temperature: float
    kd: bool  # D_t against every teacher context
    student_lp: bool  # log p_S(y_t) at τ = 1 (SFT, contrastive)
    teacher_lp: int  # contexts whose log p_k(y_t) are returned: K (agreement), 1 (contrastive only) or 0


def _chunk_terms(spec: _ChunkSpec, h: torch.Tensor, h_t: torch.Tensor, y: torch.Tensor):
    """One chunk: h [C, H], h_t [K, C, H], y [C] → (D [C] mean over the K contexts
    or None, log p_S(y_t) [C] or None, teacher log p_k(y_t) [n, C] list, the
    student log-probs log_s [C, V] at τ, g_ls = ∂ΣD/∂log_s or None).

    The teacher contexts run one at a time, each D_k with its gradient in
    log_s (closed form, see _jsd), so only one context's [C, V] tensors are alive."""
    z = spec.student_head(h).float()
    log_s = _log_probs(z, spec.temperature) if spec.kd else None
    contexts = h_t.shape[0] if spec.kd else spec.teacher_lp
    d = g_ls = None
    t_lp = []
    with torch.no_grad():
        p_s = log_s.detach().exp() if spec.kd and spec.alpha > 0 else None  # shared by the K contexts
        for k in range(contexts):
            z_t = spec.teacher_head(h_t[k]).float()
            log_t = _log_probs(z_t, spec.temperature) if spec.kd else None
            if k < spec.teacher_lp:  # (at τ = 1 log_t serves, as log_s does below)
                source = log_t if log_t is not None and spec.temperature == 1.0 else F.log_softmax(z_t, dim=-1)
                t_lp.append(source.gather(-1, y.unsqueeze(-1)).squeeze(-1))
            del z_t
            if spec.kd:
                d_k, g = _jsd(log_s.detach(), log_t, spec.alpha, grad=log_s.requires_grad, p_s=p_s)
                d = d_k if d is None else d + d_k
                g_ls = g if g_ls is None else g_ls.add_(g)
            del log_t
    if d is not None:
        d = d / contexts
        g_ls = g_ls.div_(contexts) if g_ls is not None else None
    lp = None
    if spec.student_lp:
        # at τ = 1 the floored log_s serves (it differs from the plain log-softmax
        # only below log p = -1e4: where the reference's SFT is already inf)
        source = log_s if log_s is not None and spec.temperature == 1.0 else F.log_softmax(z, dim=-1)
        lp = source.gather(-1, y.unsqueeze(-1)).squeeze(-1)
    return d, lp, t_lp, log_s, g_ls


class _HeadChunk(torch.autograd.Function):
    """(D_t, log p_S(y_t), teacher log p_k(y_t)) of one chunk of tokens from
    hidden states; see the comment above _ChunkSpec for why it is a Function."""

    @staticmethod
    def forward(ctx, spec: _ChunkSpec, h, h_t, y, *params):
        ctx.spec = spec
        ctx.recompute = any(ctx.needs_input_grad[4:])
        rows = ctx.needs_input_grad[1] and not ctx.recompute
        with torch.set_grad_enabled(rows):
            leaf = h.detach().requires_grad_(rows)
            d, lp, t_lp, log_s, g_ls = _chunk_terms(spec, leaf, h_t, y)
            gh_d = gh_lp = None
            if rows and d is not None:
                (gh_d,) = torch.autograd.grad(log_s, leaf, g_ls, retain_graph=lp is not None)
            if rows and lp is not None:
                (gh_lp,) = torch.autograd.grad(lp, leaf, torch.ones_like(lp))
        if ctx.recompute:
            ctx.save_for_backward(h, h_t, y, *params)
            device = h.device.type
            ctx.autocast = {"device_type": device, "enabled": torch.is_autocast_enabled(device),
                            "dtype": torch.get_autocast_dtype(device)}
        else:
            ctx.save_for_backward(gh_d, gh_lp)
        t_lp = torch.stack(t_lp) if t_lp else h.new_zeros(0, h.shape[0], dtype=torch.float32)
        ctx.mark_non_differentiable(t_lp)
        # a term this call does not compute comes back as zeros (and its gradient is ignored)
        d = torch.zeros(h.shape[0], dtype=torch.float32, device=h.device) if d is None else d
        lp = torch.zeros(h.shape[0], dtype=torch.float32, device=h.device) if lp is None else lp.detach()
        return d, lp, t_lp

    @staticmethod
    def backward(ctx, g_d, g_lp, _g_t_lp):
        if not ctx.recompute:
            gh_d, gh_lp = ctx.saved_tensors
            grad = None
            if gh_d is not None:
                grad = g_d.unsqueeze(-1) * gh_d
            if gh_lp is not None:
                grad = g_lp.unsqueeze(-1) * gh_lp if grad is None else grad + g_lp.unsqueeze(-1) * gh_lp
            return None, grad, None, None
        h, h_t, y, *params = ctx.saved_tensors
        need_h = ctx.needs_input_grad[1]
        with torch.enable_grad(), torch.autocast(**ctx.autocast):
            leaf = h.detach().requires_grad_(need_h)
            d, lp, _, log_s, g_ls = _chunk_terms(ctx.spec, leaf, h_t, y)
            # Σ_t g_d,t·D_t + g_lp,t·ℓ_t, with D_t replaced by its first-order
            # surrogate in log_s (g_ls is the constant ∂D_t/∂log_s): same gradient
            surrogate = []
            if d is not None:
                surrogate.append((log_s * (g_ls * g_d.unsqueeze(-1))).sum())
            if lp is not None:
                surrogate.append((lp * g_lp).sum())
            inputs = ([leaf] if need_h else []) + params
            grads = list(torch.autograd.grad(sum(surrogate), inputs, allow_unused=True))
        grad_h = grads.pop(0) if need_h else None
        return (None, grad_h, None, None, *grads)


def _chunks(n: int, size: int):
    """[start, end) of each chunk; one empty chunk when n = 0, so a batch with
    no target tokens still yields terms attached to the graph."""
    return [(s, min(s + size, n)) for s in range(0, max(n, 1), size)]


def chunked_unisd_loss(
    cfg: "LossConfig",
    *,
    student_hidden: torch.Tensor,
    student_head: nn.Module,
    labels: torch.Tensor,
    token_weight: torch.Tensor | None = None,
    teacher_hidden: torch.Tensor | None = None,
    teacher_head: Callable[[torch.Tensor], torch.Tensor] | None = None,
    negative_hidden: torch.Tensor | None = None,
    has_negative: torch.Tensor | None = None,
    chunk_size: int = 256,
) -> tuple[torch.Tensor, dict[str, float]]:
    """`unisd_loss` from hidden states, `chunk_size` target tokens at a time.

    student_hidden [B, T, H] (last hidden states at the positions that predict
    y_t), student_head: module [.., H] → [.., V] (the LM head, softcapping
    included; its trainable parameters receive gradient), labels [B, T],
    token_weight [B, T] optional, teacher_hidden [K, B, T, H] (context 0 is the
    positive teacher and the feature-matching target), teacher_head: callable
    [.., H] → [.., V] (no gradient), negative_hidden [B, T, H] with
    has_negative [B].  Value and gradients equal
    ``unisd_loss(cfg, student_logits=student_head(student_hidden),
    teacher_logits=teacher_head(teacher_hidden), negative_logits=...,
    student_hidden=student_hidden, teacher_hidden=teacher_hidden[0])`` while
    no logits tensor larger than [chunk_size, V] exists, in forward or backward.
    Only tokens with a positive weight enter the chunks (the others add 0 to
    every term).  Returns (total, {term: float}) like `unisd_loss`.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be ≥ 1, got {chunk_size}")
    mask = (labels != -100).float()
    if token_weight is not None:
        mask = mask * token_weight.float()
    terms: dict[str, float] = {"tokens": float((labels != -100).sum())}
    if (cfg.kd > 0 or cfg.contrastive > 0) and (teacher_hidden is None or teacher_head is None):
        raise ValueError("kd/contrastive weights are set but no teacher hidden states and head were given")
    if teacher_hidden is not None and teacher_hidden.dim() == 3:
        teacher_hidden = teacher_hidden.unsqueeze(0)
    K = teacher_hidden.shape[0] if teacher_hidden is not None else 0
    contrast = cfg.contrastive > 0 and negative_hidden is not None and has_negative is not None

    # the weighted tokens, flattened in row-major order: the order in which the
    # reference's boolean indexing hands them to its quantiles
    rows, cols = (mask > 0).nonzero(as_tuple=True)
    w, y = mask[rows, cols], labels[rows, cols]
    spec = _ChunkSpec(student_head, teacher_head, cfg.alpha, cfg.temperature, kd=cfg.kd > 0,
                      student_lp=cfg.sft > 0 or contrast,
                      teacher_lp=K if cfg.kd > 0 and K > 1 else int(contrast))
    total = student_hidden.new_zeros((), dtype=torch.float32)
    if spec.kd or spec.student_lp:
        h = student_hidden[rows, cols]
        h_t = teacher_hidden[:, rows, cols] if spec.kd or spec.teacher_lp else h.new_zeros(0, *h.shape)
        params = [p for p in student_head.parameters() if p.requires_grad]
        parts = [_HeadChunk.apply(spec, h[s:e], h_t[:, s:e], y[s:e], *params) for s, e in _chunks(len(y), chunk_size)]
        d, lp = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
        t_lp = torch.cat([p[2] for p in parts], dim=1)

    if cfg.sft > 0:
        sft = masked_mean(-lp, w)
        total = total + cfg.sft * sft
        terms["sft"] = float(sft.detach())

    if cfg.kd > 0:
        d = clip_divergence(d, w, clip=cfg.clip, quantile=cfg.clip_quantile)
        if K > 1:
            # (no tokens: no variance to take; every weight is masked to 0 anyway)
            aw = agreement_weights(t_lp, w, cfg.agreement_gamma) if len(y) else torch.zeros_like(d)
            terms["agreement_w"] = float(masked_mean(aw, w))
        else:
            aw = torch.ones_like(d)
        kd = weighted_mean(d, aw, w)
        total = total + cfg.kd * kd
        terms["kd"] = float(kd.detach())

    if contrast:
        with torch.no_grad():
            h_n = negative_hidden[rows, cols]
            neg_lp = torch.cat([token_logprobs(teacher_head(h_n[s:e]), y[s:e]) for s, e in _chunks(len(y), chunk_size)])
        c = contrastive_loss(lp, t_lp[0], neg_lp, w * has_negative[rows].float(), cfg.contrastive_margin)
        total = total + cfg.contrastive * c
        terms["contrastive"] = float(c.detach())
    elif cfg.contrastive > 0:
        terms["contrastive"] = 0.0

    if cfg.feature > 0:
        if teacher_hidden is None:
            raise ValueError("feature weight is set but hidden states were not given")
        f = feature_loss(student_hidden, teacher_hidden[0], mask)
        total = total + cfg.feature * f
        terms["feature"] = float(f.detach())

    terms["total"] = float(total.detach())
    return total, terms
