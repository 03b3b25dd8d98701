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
