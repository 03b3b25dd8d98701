"""The chat format the student is prompted in, with no heavy imports: the one
home of the ChatML template and of the tokenizer's "no length limit", which
both the real-model loader (student/model.py) and the tiny test model
(student/tiny.py) use, so neither imports the other for them."""

from __future__ import annotations

# transformers' VERY_LARGE_INTEGER: a tokenizer's "no maximum length"; the
# student's own limit is ModelConfig.max_length (see student/lengths.py)
NO_LENGTH_LIMIT = int(1e30)

# ChatML, the format SmolLM2-Instruct uses; the fallback template for
# tokenizers that ship without one, and the tiny model's own.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
