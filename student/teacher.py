"""The self-teacher: aligned forwards, teacher forwards, EMA, on-policy sampling.

The teacher is the student's own base weights with the "teacher" adapter
(EMA of the student, or the frozen previous-iteration adapter loaded by the
loop) or with adapters disabled ("base"), conditioned on a privileged context
(the demonstration d).  It scores the same completion tokens y as the student;
`aligned_forward` gathers every model's outputs onto the [B, L] completion grid
built by `student/data.py`, so index j means "the distribution over y_j" for
student, teachers and negative alike.
"""

from __future__ import annotations

import random
import weakref
from dataclasses import dataclass

import torch
from torch import nn

from student.data import Batch, Encoded, TrainExample, context_ids, encode_ids
from student.generate import left_pad, rng_devices
from student.lengths import completion_ids
from student.model import Student, prompt_ids


def _gather(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [R, S, H], positions [R, L] → [R, L, H]."""
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def aligned_forward(model: nn.Module, input_ids, attention_mask, positions) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the causal LM and return (logits [R, L, V], last hidden [R, L, H]) at
    `positions` only.

    The LM head is applied after the gather: a teacher row is prompt + d + y
    long but only its |y| positions are scored, and the head is the largest
    matmul of a small model (SmolLM2: 49k × 576), so this skips most of it.
    LoRA layers live inside the decoder's modules, so the active adapter
    applies exactly as in model(...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if attention_mask is not None and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
        # Right padding under a causal mask: a real token never sees the pads
        # after it, and the pads' own outputs are never gathered.  Dropping the
        # mask is then exact, and lets SDPA take its is_causal kernel instead of
        # materialising an [R, 1, S, S] mask (teacher rows are the long ones).
        attention_mask = None
    out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = _gather(out.last_hidden_state, positions)
    logits = base.get_output_embeddings()(hidden)
    cap = getattr(base.config, "final_logit_softcapping", None)
    if cap:  # Gemma-2 style models squash their logits; do what their forward does
        logits = torch.tanh(logits / cap) * cap
    return logits, hidden


class AlignedLM(nn.Module):
    """The student forward as one module, so `accelerator.prepare` can wrap it in
    DDP and gradient synchronisation sees a normal forward call."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, positions):
        return aligned_forward(self.model, input_ids, attention_mask, positions)


@dataclass
class TeacherOutputs:
    logits: torch.Tensor  # [K, B, L, V]; context 0 is the positive (demonstration) teacher
    hidden: torch.Tensor  # [B, L, H] of context 0
    negative_logits: torch.Tensor | None  # [B, L, V], zeros where has_negative is False
    has_negative: torch.Tensor  # [B] bool


def teacher_adapter_name(teacher_adapter: str) -> str:
    """LossConfig.teacher_adapter → the adapter to activate: "ema" and
    "previous" both live in the "teacher" adapter (the loop loads the previous
    iteration's weights into it); "base" disables adapters."""
    return "base" if teacher_adapter == "base" else "teacher"


@torch.no_grad()
def teacher_forward(student: Student, batch: Batch, teacher_adapter: str = "ema", *, with_negative: bool = True) -> TeacherOutputs:
    """All teacher forwards of a batch — K contexts and the negatives — as one
    forward of K·B + N rows under no_grad with the teacher adapter active."""
    B, K = batch.labels.shape[0], batch.num_contexts
    ids, att, pos = batch.teacher_input_ids, batch.teacher_attention_mask, batch.teacher_positions
    n_neg = 0
    if with_negative and batch.negative_input_ids is not None:
        n_neg = batch.negative_input_ids.shape[0]
        width = max(ids.shape[1], batch.negative_input_ids.shape[1])
        ids = torch.cat([_pad_to(ids, width, 0), _pad_to(batch.negative_input_ids, width, 0)])
        att = torch.cat([_pad_to(att, width, 0), _pad_to(batch.negative_attention_mask, width, 0)])
        pos = torch.cat([pos, batch.negative_positions])
    with student.use_adapter(teacher_adapter_name(teacher_adapter)) as model:
        toggle = model.training and _has_dropout(model)
        if toggle:
            model.eval()  # no dropout in the teacher
        try:
            logits, hidden = aligned_forward(model, ids, att, pos)
        finally:
            if toggle:
                model.train()
    t_logits = logits[: K * B].view(K, B, *logits.shape[1:])
    neg = None
    if n_neg:
        neg = logits.new_zeros((B, *logits.shape[1:]))
        neg[batch.has_negative] = logits[K * B :]
    return TeacherOutputs(t_logits, hidden[:B], neg, batch.has_negative & (n_neg > 0))


def _pad_to(x: torch.Tensor, width: int, value: int) -> torch.Tensor:
    if x.shape[1] == width:
        return x
    return torch.nn.functional.pad(x, (0, width - x.shape[1]), value=value)


_DROPOUT: "weakref.WeakKeyDictionary[nn.Module, bool]" = weakref.WeakKeyDictionary()


def _has_dropout(model: nn.Module) -> bool:
    """Whether train/eval changes this model's forward (a dropout with p > 0).
    Toggling train/eval walks every module, so it is skipped when it would
    change nothing (LoRA dropout 0 and no attention dropout: the defaults)."""
    if model not in _DROPOUT:
        cfg = getattr(model, "config", None)
        _DROPOUT[model] = any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()) or bool(
            getattr(cfg, "attention_dropout", 0.0)
        )
    return _DROPOUT[model]


def ema_pairs(student: Student) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(teacher tensors, matching student tensors) of the adapters, in one order."""
    s, t = student.adapter_params("student"), student.adapter_params("teacher")
    keys = sorted(t)
    return [t[k] for k in keys], [s[k] for k in keys]


@torch.no_grad()
def ema_update(student: Student, decay: float, pairs=None) -> None:
    """teacher ← β·teacher + (1−β)·student on the adapter weights (LoRA A and B
    of every layer; all weights with full fine-tuning).  The base is frozen and
    shared, so the adapter is where the student's training lives.  `pairs`
    (from `ema_pairs`) saves re-collecting the parameters at every step."""
    teacher, source = pairs if pairs is not None else ema_pairs(student)
    if teacher and all(t.dtype == s.dtype and t.device == s.device for t, s in zip(teacher, source)):
        torch._foreach_mul_(teacher, decay)
        torch._foreach_add_(teacher, [s.detach() for s in source], alpha=1.0 - decay)
        return
    for t, s in zip(teacher, source):
        t.mul_(decay).add_(s.detach().to(t.dtype), alpha=1.0 - decay)


def use_on_policy(fraction: float, seed: int, micro: int, rank: int) -> bool:
    """Whether micro-batch `micro` is sampled from the student: a coin with
    P(heads) = `fraction`, seeded by (seed, micro, rank) so a resumed run
    flips the same coins."""
    if fraction <= 0:
        return False
    if fraction >= 1:
        return True
    return random.Random(f"{seed}/{micro}/{rank}").random() < fraction


@torch.no_grad()
def sample_completions(
    student: Student,
    examples: list[TrainExample],
    *,
    temperature: float,
    max_new_tokens: int,
    seed: int,
    prompts: list[list[int]] | None = None,
) -> list[list[int]]:
    """y ~ student(· | x) at temperature τ, one sample per example, as token ids
    (kept as ids so the loss sees exactly the sampled tokens, eos included when
    it was reached).  Batched, left-padded, KV cache; the global RNG is forked
    so sampling neither depends on nor disturbs the training stream.

    `prompts`: the examples' student prompts as ids when the caller has them.
    A sample holds at most `max_new_tokens` tokens, eos included; a training
    caller passes `on_policy_cap(...)` so every sample fits the length rule
    (student/lengths.py) and is never cut afterwards."""
    tok = student.tokenizer
    if prompts is None:
        prompts = [prompt_ids(tok, ex.prompt) for ex in examples]
    ids, att = left_pad(prompts, tok.pad_token_id, student.device)
    enc = {"input_ids": ids, "attention_mask": att}
    with student.use_adapter("student") as model, torch.random.fork_rng(devices=rng_devices(student)):
        torch.manual_seed(seed)
        was_training = model.training
        model.eval()
        try:
            out = model.generate(
                **enc,
                do_sample=temperature > 0,
                temperature=temperature if temperature > 0 else None,
                top_p=1.0,
                top_k=0,
                max_new_tokens=max_new_tokens,
                pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id,
            )
        finally:
            model.train(was_training)
    result = []
    for row in out[:, enc["input_ids"].shape[1] :].tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id) + 1]
        else:  # stopped at max_new_tokens: strip right padding only
            while row and row[-1] == tok.pad_token_id and tok.pad_token_id != tok.eos_token_id:
                row.pop()
        result.append(row)
    return result


def on_policy_cap(contexts: list[tuple[list[int], list[list[int]]]], max_length: int, max_new_tokens: int) -> int:
    """The most new tokens an on-policy y of this micro-batch may have:
    ``min(max_new_tokens, max_length − longest context)``, at least 1, where the
    longest context is over every row's student prompt and K teacher contexts
    (`contexts`: (prompt ids, teacher ids) per row).  A sample then fits next to
    every context of its row (len(context) + len(y) <= max_length), so an
    on-policy row never needs cutting.  Negative contexts do not count: one long
    negative would shorten every row's sample; a negative that does not fit next
    to the sample is dropped for that row instead (Encoded.negative_dropped)."""
    longest = max(len(c) for prompt, teachers in contexts for c in (prompt, *teachers))
    return max(1, min(max_new_tokens, max_length - longest))


def encode_batch(
    student: Student,
    examples: list[TrainExample],
    *,
    num_contexts: int,
    on_policy: bool,
    temperature: float = 1.0,
    max_new_tokens: int = 256,
    seed: int = 0,
) -> list[Encoded]:
    """Encode a micro-batch: y = d off-policy, y ~ student on-policy.

    On-policy samples hold at most `on_policy_cap(...)` tokens (the smaller of
    `max_new_tokens` and the room the batch's longest student/teacher context
    leaves in model.max_length).  The length rule is checked either way
    (`student/data.py: encode`): RowTooLong for a row that does not fit (only
    possible off-policy, or when a context alone leaves no room at all)."""
    tok, max_len = student.tokenizer, student.model_cfg.max_length
    ctx = [context_ids(tok, ex, num_contexts) for ex in examples]
    if on_policy:
        cap = on_policy_cap([(p, t) for p, t, _ in ctx], max_len, max_new_tokens)
        ys = sample_completions(student, examples, temperature=temperature, max_new_tokens=cap, seed=seed,
                                prompts=[p for p, _, _ in ctx])
    else:
        ys = [completion_ids(tok, ex.completion) for ex in examples]
    return [encode_ids(p, t, n, y, max_len, ex.weight) for (p, t, n), y, ex in zip(ctx, ys, examples)]


__all__ = [
    "AlignedLM",
    "TeacherOutputs",
    "aligned_forward",
    "ema_pairs",
    "ema_update",
    "encode_batch",
    "on_policy_cap",
    "sample_completions",
    "teacher_forward",
    "use_on_policy",
]
