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
means "y_j" for everybody (`student/teacher.py: aligned_forward`).  Batches are
right-padded (positions then start at 0 in every row, like an unpadded run).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

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


def completion_ids(tokenizer, text: str) -> list[int]:
    """y tokens: the completion text followed by eos (the end of the assistant turn)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def encode(
    tokenizer,
    ex: TrainExample,
    *,
    num_contexts: int = 1,
    max_length: int = 512,
    completion: list[int] | None = None,
) -> Encoded:
    """Tokenize `ex`; `completion` replaces y (on-policy samples are ids already).

    K = num_contexts teacher contexts: the example's own contexts, cycled when it
    has fewer than K (agreement is then partly with itself), or the student's
    prompt when it has none (the teacher then differs only by its adapter).
    Every sequence is cut to max_length: prompts keep their end (the question
    and the generation prompt), and y is cut to the room the longest context
    leaves, identically for all, so the positions still line up.
    """
    # student/model.py:prompt_ids is the one prompt encoder generation uses too,
    # so a question is seen identically in training and at evaluation
    prompt = prompt_ids(tokenizer, ex.prompt)
    contexts = ex.teacher_prompts or [ex.prompt]
    teachers = [prompt_ids(tokenizer, contexts[k % len(contexts)]) for k in range(num_contexts)]
    negative = prompt_ids(tokenizer, ex.negative_prompt) if ex.negative_prompt is not None else None
    y = list(completion) if completion is not None else completion_ids(tokenizer, ex.completion)

    keep = max_length - 1  # a prompt always leaves room for at least one y token
    prompt, teachers = prompt[-keep:], [t[-keep:] for t in teachers]
    negative = negative[-keep:] if negative is not None else None
    longest = max([len(prompt), *map(len, teachers), len(negative) if negative is not None else 0])
    y = y[: max_length - longest]
    return Encoded(prompt, y, teachers, negative, ex.weight)


@dataclass
class Batch:
    """Padded tensors of one micro-batch.  B rows, L = longest y, K contexts.

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
