"""Training examples -> aligned token tensors for the student and its self-teachers.

A `TrainExample` holds chat messages (rendered by the loop from the `student`
and `demonstration` templates) and the completion text y.  Tokenization:

* student input  = render_prompt(prompt) + y + eos   (labels mask the prompt)
* teacher input  = render_prompt(teacher_prompt_k) + the SAME y tokens, k < K
* negative input = render_prompt(negative_prompt) + the same y tokens

y is tokenized once and appended to every context, so token j of y is the same
id everywhere.  The logit that predicts y_j sits at position (prompt_len + j − 1)
of each sequence; `collate` records those positions per row so the trainer can
gather student and teacher logits into one [B, L] completion grid where index j
means "y_j" for everybody (`student/teacher.py: aligned_hidden`).  Batches are
right-padded (positions then start at 0 in every row, like an unpadded run).

Lengths (the rule of student/lengths.py): nothing is truncated.  A row keeps
its whole y (tokens + eos) and its whole student prompt, and every context is
budgeted on its own, ``len(context) + len(y) <= max_length``.  `encode` raises
`RowTooLong` ("prompt_too_long" / "teacher_context_too_long") for a row that
breaks it and drops only a negative context that breaks it; the trainer drops
such rows up front and reports them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from student.errors import PROMPT_TOO_LONG, TEACHER_CONTEXT_TOO_LONG, RowTooLong
from student.lengths import completion_ids
from student.model import prompt_ids

Messages = list[dict]


class TrainExample(BaseModel):
    """One training example of the iteration's dataset."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompt: Messages  # the student's context: the `student` template for question x
    completion: str  # y = the demonstration d (off-policy target)
    teacher_prompts: list[Messages] = Field(default_factory=list)  # K privileged contexts (d in context)
    negative_prompt: Messages | None = None  # context holding the student's wrong answer n
    weight: float = Field(1.0, ge=0)  # dataset weight: scales this example's tokens

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _messages(cls, v):
        if v is not None and not v:
            raise ValueError("a prompt must hold at least one chat message")
        return v


@dataclass
class Encoded:
    """Token ids of one example (lists, before padding)."""

    prompt_ids: list[int]
    completion_ids: list[int]
    teacher_prompt_ids: list[list[int]]  # exactly K contexts
    negative_prompt_ids: list[int] | None
    weight: float
    negative_dropped: bool = False  # the example has a negative context, but it did not fit with y


def context_ids(tokenizer, ex: TrainExample, num_contexts: int = 1) -> tuple[list[int], list[list[int]], list[int] | None]:
    """(student prompt, the K teacher contexts, negative context or None) as token ids.

    K = num_contexts teacher contexts: the example's own contexts, cycled when it
    has fewer than K (agreement is then partly with itself), or the student's
    prompt when it has none (the teacher then differs only by its adapter)."""
    # student/model.py:prompt_ids is the one prompt encoder generation uses too,
    # so a question is seen identically in training and at evaluation
    prompt = prompt_ids(tokenizer, ex.prompt)
    if ex.teacher_prompts:
        own = [prompt_ids(tokenizer, m) for m in ex.teacher_prompts[:num_contexts]]
        teachers = [own[k % len(own)] for k in range(num_contexts)]
    else:
        teachers = [prompt for _ in range(num_contexts)]
    negative = prompt_ids(tokenizer, ex.negative_prompt) if ex.negative_prompt is not None else None
    return prompt, teachers, negative


def check_lengths(
    prompt: list[int],
    teachers: list[list[int]],
    negative: list[int] | None,
    y: list[int],
    max_length: int,
) -> list[int] | None:
    """Apply the length rule to one row's ids; returns the negative context to
    keep (None when there is none or it does not fit).  Raises RowTooLong."""
    if len(prompt) + len(y) > max_length:
        raise RowTooLong(PROMPT_TOO_LONG, len(prompt), len(y), max_length)
    for k, t in enumerate(teachers):
        if len(t) + len(y) > max_length:
            raise RowTooLong(TEACHER_CONTEXT_TOO_LONG, len(t), len(y), max_length, what=f"teacher context {k}")
    if negative is not None and len(negative) + len(y) > max_length:
        return None
    return negative


def encode(
    tokenizer,
    ex: TrainExample,
    *,
    num_contexts: int = 1,
    max_length: int = 512,
    completion: list[int] | None = None,
) -> Encoded:
    """Tokenize `ex`; `completion` replaces y (on-policy samples are ids already).

    K = num_contexts teacher contexts (see `context_ids`).  Nothing is cut:
    every context must fit next to the whole y, ``len(context) + len(y) <=
    max_length``, each on its own.  Raises `RowTooLong` with reason
    "prompt_too_long" when the student prompt does not fit, or
    "teacher_context_too_long" when a teacher context does not; a negative
    context that does not fit is dropped (negative_prompt_ids None,
    negative_dropped True) and the row kept.
    """
    prompt, teachers, negative = context_ids(tokenizer, ex, num_contexts)
    y = list(completion) if completion is not None else completion_ids(tokenizer, ex.completion)
    return encode_ids(prompt, teachers, negative, y, max_length, ex.weight)


def encode_ids(prompt, teachers, negative, y: list[int], max_length: int, weight: float = 1.0) -> Encoded:
    """`encode` from token ids (`context_ids` and y): checks the length rule."""
    kept = check_lengths(prompt, teachers, negative, y, max_length)
    return Encoded(prompt, y, teachers, kept, weight, negative_dropped=negative is not None and kept is None)


@dataclass
class Batch:
    """Padded tensors of one micro-batch.  B rows, L = longest y, K contexts.

    Every row holds its whole y and whole contexts (nothing is truncated; see
    the module docstring): rows differ in length only by padding, so one long
    context widens its own block (S_t) but never shortens another row's y.

    input_ids/attention_mask [B, S]; positions [B, L] (the logit index that
    predicts y_j, 0 on padding); labels [B, L] (y_j, -100 on padding);
    weight [B]; teacher_* [K·B, S_t] / [K·B, L] with rows k·B + b;
    negative_* [N, S_n] / [N, L] for the N rows where has_negative [B] is set.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    positions: torch.Tensor
    labels: torch.Tensor
    weight: torch.Tensor
    teacher_input_ids: torch.Tensor
    teacher_attention_mask: torch.Tensor
    teacher_positions: torch.Tensor
    has_negative: torch.Tensor
    negative_input_ids: torch.Tensor | None = None
    negative_attention_mask: torch.Tensor | None = None
    negative_positions: torch.Tensor | None = None
    num_contexts: int = 1

    def to(self, device) -> "Batch":
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, torch.Tensor):
                setattr(self, f.name, v.to(device))
        return self


def _pad_rows(prompts: list[list[int]], ys: list[list[int]], pad_id: int, width_l: int):
    """Right-pad prompt+y rows; positions[j] = len(prompt) + j − 1 for real y tokens."""
    seqs = [p + y for p, y in zip(prompts, ys)]
    width = max(1, max(len(s) for s in seqs))
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), width), dtype=torch.long)
    pos = torch.zeros((len(seqs), width_l), dtype=torch.long)
    for i, (p, y, s) in enumerate(zip(prompts, ys, seqs)):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        att[i, : len(s)] = 1
        if y:
            pos[i, : len(y)] = torch.arange(len(p) - 1, len(p) - 1 + len(y))
    return ids, att, pos


def collate(items: list[Encoded], pad_id: int) -> Batch:
    """Pad a list of encoded examples into one `Batch` (right padding)."""
    if not items:
        raise ValueError("cannot collate an empty batch")
    K = len(items[0].teacher_prompt_ids)
    ys = [e.completion_ids for e in items]
    L = max(1, max(len(y) for y in ys))
    labels = torch.full((len(items), L), -100, dtype=torch.long)
    for i, y in enumerate(ys):
        if y:
            labels[i, : len(y)] = torch.tensor(y, dtype=torch.long)
    ids, att, pos = _pad_rows([e.prompt_ids for e in items], ys, pad_id, L)
    t_prompts = [e.teacher_prompt_ids[k] for k in range(K) for e in items]
    t_ids, t_att, t_pos = _pad_rows(t_prompts, ys * K, pad_id, L)
    has_neg = torch.tensor([e.negative_prompt_ids is not None for e in items])
    batch = Batch(
        ids, att, pos, labels,
        torch.tensor([e.weight for e in items], dtype=torch.float32),
        t_ids, t_att, t_pos, has_neg, num_contexts=K,
    )
    if has_neg.any():
        rows = [i for i, e in enumerate(items) if e.negative_prompt_ids is not None]
        batch.negative_input_ids, batch.negative_attention_mask, batch.negative_positions = _pad_rows(
            [items[i].negative_prompt_ids for i in rows], [ys[i] for i in rows], pad_id, L
        )
    return batch


@functools.lru_cache(maxsize=2)  # every micro-batch of an epoch asks for the same order
def epoch_order(n: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The example order of one epoch: a permutation fixed by (seed, epoch), so a
    resumed run sees exactly the batches an uninterrupted run would."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return tuple(torch.randperm(n, generator=g).tolist())


def micro_batch_indices(n: int, batch_size: int, world: int, rank: int, seed: int, micro: int) -> list[int]:
    """Example indices of micro-batch number `micro` (counted from the start of
    training) for process `rank` of `world`.  Each epoch is ceil(n / (batch_size·world))
    micro-batches; a short last chunk is filled by wrapping around the epoch's
    order so every rank always gets a full batch (DDP needs every rank to step)."""
    per_epoch = micro_batches_per_epoch(n, batch_size, world)
    epoch, j = divmod(micro, per_epoch)
    order = epoch_order(n, seed, epoch)
    start = (j * world + rank) * batch_size
    return [order[(start + i) % n] for i in range(batch_size)]


def micro_batches_per_epoch(n: int, batch_size: int, world: int) -> int:
    return max(1, -(-n // (batch_size * world)))
