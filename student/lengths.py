"""The length rule of a training row, and the tool that makes long text fit it.

**The rule.**  A training row always keeps its whole completion y (the
completion's tokens followed by eos) and its whole student prompt.  Each
context — the student prompt, each of the K teacher contexts, the negative
context — is budgeted on its own::

    len(context) + len(y) <= student.max_length

so one long context never shortens another context's y, nor another row's.
Nothing is ever cut silently:

* `student/data.py: encode` raises `RowTooLong` (reason PROMPT_TOO_LONG or
  TEACHER_CONTEXT_TOO_LONG) for a row whose student prompt or teacher context
  breaks the rule, and drops just the negative context when that one breaks it
  (`Encoded.negative_dropped`, reason NEGATIVE_TOO_LONG);
* `student/train.py: train` checks every example up front (y = its
  demonstration), drops the rows that do not fit with a warning, and reports
  them (`TrainResult.dropped`, `TrainResult.negatives_dropped`);
* an on-policy y is sampled with at most ``max_length − (longest student or
  teacher context of the micro-batch)`` new tokens (`student/teacher.py`), so it
  fits by construction and never needs cutting;
* the loop, which renders contexts holding a long text (a demonstration, a
  student's wrong output), shortens that text in its MIDDLE with `fit_middle`
  when the context would not fit, visibly (a marker replaces what was
  removed), and counts it in a `LengthStats`.

Importing this module does not import torch (the counting helpers import the
tokenizer-side code of student/model.py lazily).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from student.errors import NEGATIVE_TOO_LONG, PROMPT_TOO_LONG, TEACHER_CONTEXT_TOO_LONG, RowTooLong

Messages = list[dict]

MARKER = "\n…\n"
_FIT_TRIES = 8  # corrected guesses before fit_middle falls back to bisection


def completion_ids(tokenizer, text: str) -> list[int]:
    """y tokens: the completion text followed by eos (the end of the assistant turn)."""
    return tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]


def context_budget(tokenizer, completion: str | list[int], max_length: int) -> int:
    """How many prompt tokens a context may hold next to completion y (text, or
    y's ids with eos already appended): ``max_length − len(y)``, the budget to
    pass to `fit_middle`.  May be ≤ 0: then no context fits this y."""
    y = completion if isinstance(completion, list) else completion_ids(tokenizer, completion)
    return max_length - len(y)


def _count(tokenizer, messages: Messages) -> int:
    from student.model import prompt_ids  # the one prompt encoder (chat template + generation prompt)

    return len(prompt_ids(tokenizer, messages))


def _decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


def fit_middle(
    tokenizer,
    render: Callable[[str], Messages],
    text: str,
    budget: int,
    *,
    marker: str = MARKER,
) -> tuple[Messages, int] | None:
    """Render `text` into chat messages that fit `budget` prompt tokens.

    `render(t)` builds the messages of a context around the text t (e.g. the
    `demonstration` template with t as the demonstration).  Returns
    ``(render(text'), removed_tokens)`` with ``len(prompt_ids(render(text'))) <=
    budget``:

    * text' = text when it fits (removed_tokens = 0);
    * else text' = head + marker + tail: the first and last tokens of `text`
      (halves as equal as possible, the head one longer), decoded with the
      tokenizer, with as many tokens kept as fit.  Tokenization at the cuts can
      shift the count by a few tokens, so the cut is corrected and re-counted
      (a bounded number of times, then bisected); removed_tokens counts the
      tokens of `text` left out (the marker's own tokens not included).

    Returns None when even ``render(marker)`` (all of the text removed) does not
    fit: the caller then drops the context or the row.
    """
    msgs = render(text)
    n = _count(tokenizer, msgs)
    if n <= budget:
        return msgs, 0
    floor_msgs = render(marker)
    floor = _count(tokenizer, floor_msgs)
    if floor > budget:
        return None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    total = len(ids)

    def cut(keep: int) -> str:
        if keep <= 0:
            return marker
        head, tail = (keep + 1) // 2, keep // 2
        # a byte-level BPE may split one character across the cut: drop the half of it
        h = _decode(tokenizer, ids[:head]).rstrip("\ufffd")
        t = _decode(tokenizer, ids[total - tail :]).lstrip("\ufffd") if tail else ""
        return h + marker + t

    lo, best = 0, floor_msgs  # keep = lo is known to fit
    hi = total  # keep = hi is known not to (the whole text did not fit)
    keep = min(total - 1, budget - floor)  # each kept token of text costs about one token
    tries = 0
    while hi - lo > 1:
        keep = max(lo + 1, min(hi - 1, keep))
        msgs = render(cut(keep))
        n = _count(tokenizer, msgs)
        if n <= budget:
            lo, best = keep, msgs
        else:
            hi = keep
        tries += 1
        if n == budget:
            break
        # a corrected guess while they last (the overshoot/undershoot is the
        # number of tokens to give back/take), then bisection
        keep = keep + (budget - n) if tries < _FIT_TRIES else (lo + hi) // 2
    return best, total - lo


@dataclass
class LengthStats:
    """Counts of what the length rule did to a dataset (the loop builds it while
    rendering contexts; the trainer reports the rows it dropped).

    truncated_contexts: contexts whose text `fit_middle` shortened;
    removed_tokens: the text tokens those shortenings removed;
    dropped: reason code -> rows dropped (PROMPT_TOO_LONG, TEACHER_CONTEXT_TOO_LONG,
    or a reason of the caller's own); negatives_dropped: rows kept without their
    negative context (NEGATIVE_TOO_LONG)."""

    truncated_contexts: int = 0
    removed_tokens: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    negatives_dropped: int = 0

    @property
    def dropped_rows(self) -> int:
        return sum(self.dropped.values())

    def drop(self, reason: str, rows: int = 1) -> None:
        """Count `rows` rows dropped for `reason`."""
        if rows:
            self.dropped[reason] = self.dropped.get(reason, 0) + rows

    def truncated(self, removed_tokens: int) -> None:
        """Count one context shortened by `fit_middle` (removed_tokens > 0)."""
        if removed_tokens > 0:
            self.truncated_contexts += 1
            self.removed_tokens += removed_tokens

    def as_dict(self) -> dict:
        return {
            "truncated_contexts": self.truncated_contexts,
            "removed_tokens": self.removed_tokens,
            "dropped_rows": self.dropped_rows,
            "dropped": dict(sorted(self.dropped.items())),
            "negatives_dropped": self.negatives_dropped,
        }


__all__ = [
    "MARKER",
    "NEGATIVE_TOO_LONG",
    "PROMPT_TOO_LONG",
    "TEACHER_CONTEXT_TOO_LONG",
    "LengthStats",
    "RowTooLong",
    "completion_ids",
    "context_budget",
    "fit_middle",
]
