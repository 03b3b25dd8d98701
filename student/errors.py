"""The student package's own small error hierarchy.

Failures from transformers, peft, safetensors or HTTP are translated into these
at the package boundary, with a message that names the file/key and the fix,
so the loop can show a clear message instead of a traceback.  Pure Python: the
teachers package may import this module, and it never imports torch.
"""

from __future__ import annotations


class StudentError(Exception):
    """Base class of every error raised by the student package."""


class ModelLoadError(StudentError):
    """The model or tokenizer could not be loaded (bad name, missing file, bad GGUF)."""


class AdapterError(StudentError):
    """An adapter name or adapter file is wrong (unknown name, missing/mismatched weights)."""


class GenerationError(StudentError):
    """Generation was asked for something it cannot do (bad prompts or settings)."""


class GenerationStopped(GenerationError):
    """`should_stop()` turned true during generation (a stop request): the
    batch in progress was cut short and the call returned nothing."""


# Reason codes of a training row (or context) that does not fit `student.max_length`
# (see student/lengths.py for the rule).  Plain strings: they key TrainResult.dropped
# and the loop's counts.
PROMPT_TOO_LONG = "prompt_too_long"  # student prompt + y > max_length: the row is dropped
TEACHER_CONTEXT_TOO_LONG = "teacher_context_too_long"  # a teacher context + y > max_length: the row is dropped
NEGATIVE_TOO_LONG = "negative_context_too_long"  # negative context + y > max_length: only the negative is dropped


class RowTooLong(StudentError):
    """A training row does not fit `student.max_length` and cannot be trained on
    without cutting it (which the student package never does silently).

    `reason` is PROMPT_TOO_LONG or TEACHER_CONTEXT_TOO_LONG; `context_tokens` and
    `completion_tokens` are the lengths that did not fit `max_length`."""

    def __init__(self, reason: str, context_tokens: int, completion_tokens: int, max_length: int, what: str = ""):
        self.reason = reason
        self.context_tokens = context_tokens
        self.completion_tokens = completion_tokens
        self.max_length = max_length
        self.what = what
        where = what or ("the student prompt" if reason == PROMPT_TOO_LONG else "a teacher context")
        super().__init__(
            f"{reason}: {where} ({context_tokens} tokens) + the completion ({completion_tokens} tokens) "
            f"= {context_tokens + completion_tokens} > student.max_length = {max_length}; "
            "raise student.max_length or shorten the example"
        )

    def __reduce__(self):  # picklable with its fields (multiprocessing, logging handlers)
        return (type(self), (self.reason, self.context_tokens, self.completion_tokens, self.max_length, self.what))
