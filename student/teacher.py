"""The self-teacher: aligned forwards, teacher forwards, EMA, on-policy sampling.

The teacher is the student's own base weights with the "teacher" adapter
(EMA of the student, or the frozen previous-iteration adapter loaded by the
loop) or with adapters disabled ("base"), conditioned on a privileged context
(the demonstration d).  It scores the same completion tokens y as the student;
`aligned_hidden` gathers every model's last hidden states onto the [B, L]
completion grid built by `student/data.py`, so index j means "the state that
predicts y_j" for student, teachers and negative alike; the LM head (`LMHead`)
is applied by the loss, a chunk of tokens at a time.
"""

from __future__ import annotations

import contextlib
import random
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from student.config import LossConfig
from student.data import Batch, Encoded, TrainExample, context_ids, encode_ids
from student.generate import left_pad, rng_devices
from student.lengths import completion_ids
from student.losses import chunked_unisd_loss, unisd_loss
from student.model import Student, prompt_ids


def _gather(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x [R, S, H], positions [R, L] → [R, L, H]."""
    return x.gather(1, positions.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def aligned_hidden(model: nn.Module, input_ids, attention_mask, positions) -> torch.Tensor:
    """Run the causal LM's decoder and return its last hidden states [R, L, H]
    (after the final norm: what the LM head reads) at `positions` only.

    No logits: the losses apply the LM head themselves, to the y positions
    only (a teacher row is prompt + d + y long but only its |y| positions are
    scored) and a chunk of tokens at a time (student/losses.py:
    chunked_unisd_loss), so full-vocabulary logits never exist.  LoRA layers
    live inside the decoder's modules, so the active adapter applies exactly
    as in model(...)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if attention_mask is not None and bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all()):
        # Right padding under a causal mask: a real token never sees the pads
        # after it, and the pads' own outputs are never gathered.  Dropping the
        # mask is then exact, and lets SDPA take its is_causal kernel instead of
        # materialising an [R, 1, S, S] mask (teacher rows are the long ones).
        attention_mask = None
    out = base.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return _gather(out.last_hidden_state, positions)


class LMHead(nn.Module):
    """A model's LM head as a module of its own: hidden [.., H] → logits [.., V],
    with `final_logit_softcapping` applied as the model's own forward does
    (Gemma-2 style models squash their logits).  Not a copy: it holds the
    model's output embedding (tied or not), so gradients reach that weight."""

    def __init__(self, model: nn.Module):
        super().__init__()
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.proj = base.get_output_embeddings()
        self.softcap = getattr(base.config, "final_logit_softcapping", None)
        self._cast: torch.Tensor | None = None  # the frozen weight in the autocast dtype

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        logits = self._project(hidden)
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits

    def _project(self, hidden: torch.Tensor) -> torch.Tensor:
        w, device = getattr(self.proj, "weight", None), hidden.device.type
        if type(self.proj) is not nn.Linear or w.requires_grad or not torch.is_autocast_enabled(device):
            return self.proj(hidden)
        # Autocast casts a frozen weight again at every call (its cache keeps only
        # weights that require grad), and the chunked loss calls the head
        # (K + 2)·N / chunk_size times a step: with SmolLM2's 49k × 576 head on a
        # CPU the casts took 0.5x (chunks of 128) to 1.5x (of 32) the time of the
        # matmuls.  Cast once per LMHead: one is made per micro-batch, and the
        # weight cannot change within one.
        dtype = torch.get_autocast_dtype(device)
        if self._cast is None or self._cast.dtype != dtype:
            self._cast = w.detach().to(dtype)
        bias = None if self.proj.bias is None else self.proj.bias.to(dtype)
        return F.linear(hidden.to(dtype), self._cast, bias)


class AlignedLM(nn.Module):
    """The student forward *and its UniSD loss* as one module.  `accelerate.prepare`
    wraps it in DDP, so the LM head, which the chunked loss applies a chunk of
    tokens at a time, runs inside the wrapped forward like every other weight:
    gradient synchronisation, a trainable head (full fine-tuning) and a head
    tied to the embeddings need nothing special."""

    def __init__(self, model: nn.Module, loss_cfg: LossConfig):
        super().__init__()
        self.model = model
        self.loss_cfg = loss_cfg

    def forward(self, batch: Batch, teacher: TeacherOutputs | None) -> tuple[torch.Tensor, dict[str, float]]:
        """→ (loss, {term: float}).  `loss.chunk_size` tokens per chunk; 0 runs the
        unchunked reference `unisd_loss` on full-vocabulary logits (benches, checks)."""
        cfg = self.loss_cfg
        hidden = aligned_hidden(self.model, batch.input_ids, batch.attention_mask, batch.positions)
        head = LMHead(self.model)
        weight = batch.weight.unsqueeze(-1).expand_as(batch.labels)
        has_negative = teacher.has_negative if teacher else None
        if cfg.chunk_size:
            return chunked_unisd_loss(
                cfg, student_hidden=hidden, student_head=head, labels=batch.labels, token_weight=weight,
                teacher_hidden=teacher.hidden if teacher else None, teacher_head=teacher.head if teacher else None,
                negative_hidden=teacher.negative_hidden if teacher else None, has_negative=has_negative,
                chunk_size=cfg.chunk_size,
            )
        t_logits, n_logits = teacher.logits() if teacher else (None, None)
        return unisd_loss(
            cfg, student_logits=head(hidden), labels=batch.labels, token_weight=weight, teacher_logits=t_logits,
            negative_logits=n_logits, has_negative=has_negative,
            student_hidden=hidden, teacher_hidden=teacher.hidden[0] if teacher else None,
        )


@dataclass
class TeacherOutputs:
    hidden: torch.Tensor  # [K, B, L, H] last hidden states at the y positions; context 0 is the positive teacher
    negative_hidden: torch.Tensor | None  # [B, L, H], zeros where has_negative is False
    has_negative: torch.Tensor  # [B] bool
    head: Callable[[torch.Tensor], torch.Tensor]  # the teacher's LM head: hidden [.., H] → logits [.., V]

    @torch.no_grad()
    def logits(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Full-vocabulary logits ([K, B, L, V], negatives [B, L, V] or None): for the
        unchunked reference path only; the trainer's loss never builds them."""
        neg = self.head(self.negative_hidden) if self.negative_hidden is not None else None
        return self.head(self.hidden), neg


def teacher_adapter_name(teacher_adapter: str) -> str:
    """LossConfig.teacher_adapter → the adapter to activate: "ema" and
    "previous" both live in the "teacher" adapter (the loop loads the previous
    iteration's weights into it); "base" disables adapters."""
    return "base" if teacher_adapter == "base" else "teacher"


@torch.no_grad()
def teacher_forward(student: Student, batch: Batch, teacher_adapter: str = "ema", *, with_negative: bool = True) -> TeacherOutputs:
    """All teacher forwards of a batch — K contexts and the negatives — under
    no_grad with the teacher adapter active: K·B + N rows in one forward, or two
    when the negatives' width differs from the contexts' (one forward pads every
    row to the longest; the SmolLM2 bench batch, negatives 17 tokens shorter,
    ran its teacher forward 6% faster as two).  Returns hidden states and the
    teacher's head, not logits: the loss applies the head a chunk of tokens at
    a time."""
    B, K = batch.labels.shape[0], batch.num_contexts
    groups = [(batch.teacher_input_ids, batch.teacher_attention_mask, batch.teacher_positions)]
    n_neg = 0
    if with_negative and batch.negative_input_ids is not None:
        n_neg = batch.negative_input_ids.shape[0]
        groups.append((batch.negative_input_ids, batch.negative_attention_mask, batch.negative_positions))
        if groups[0][0].shape[1] == groups[1][0].shape[1]:
            groups = [tuple(torch.cat(parts) for parts in zip(*groups))]
    adapter = teacher_adapter_name(teacher_adapter)
    with _teacher_mode(student, adapter) as model:
        hidden = torch.cat([aligned_hidden(model, ids, att, pos) for ids, att, pos in groups])
        head = _teacher_head(student, adapter, model)
    neg = None
    if n_neg:
        neg = hidden.new_zeros((B, *hidden.shape[1:]))
        neg[batch.has_negative] = hidden[K * B :]
    return TeacherOutputs(hidden[: K * B].view(K, B, *hidden.shape[1:]), neg, batch.has_negative & (n_neg > 0), head)


def _teacher_head(student: Student, adapter: str, model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The teacher's LM head (`model` is the module `use_adapter(adapter)`
    yielded).  Usually a plain module: LoRA's "all-linear" leaves lm_head out,
    and with full fine-tuning it is the teacher copy's own head.  A head that
    carries LoRA layers itself (lm_head named in target_modules) gives the
    teacher's logits only with the teacher adapter active, so each call
    switches to it."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    head = LMHead(model)
    if not isinstance(head.proj, BaseTunerLayer):
        return head

    def adapted(hidden: torch.Tensor) -> torch.Tensor:
        with _teacher_mode(student, adapter) as m:
            return LMHead(m)(hidden)

    return adapted


@contextlib.contextmanager
def _teacher_mode(student: Student, adapter: str) -> Iterator[nn.Module]:
    """`use_adapter(adapter)` with dropout off: the teacher is not trained."""
    with student.use_adapter(adapter) as model:
        toggle = model.training and _has_dropout(model)
        if toggle:
            model.eval()
        try:
            yield model
        finally:
            if toggle:
                model.train()


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
    "LMHead",
    "TeacherOutputs",
    "aligned_hidden",
    "ema_pairs",
    "ema_update",
    "encode_batch",
    "on_policy_cap",
    "sample_completions",
    "teacher_forward",
    "use_on_policy",
]
