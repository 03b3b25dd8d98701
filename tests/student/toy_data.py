"""Small arithmetic training examples for the trainer tests (no files)."""

from __future__ import annotations

from student.data import TrainExample


def msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def toy_examples(n: int = 8, *, contexts: int = 2, negatives: bool = True) -> list[TrainExample]:
    """Question x, demonstration d, K privileged contexts holding d, and a
    negative context (a wrong answer) on every other example."""
    out = []
    for i in range(n):
        a, b = i % 7 + 1, (3 * i) % 5 + 2
        q = f"What is {a}+{b}?"
        d = f"{a} plus {b} is {a + b}.\n#### {a + b}"
        teachers = [msg(f"Solution {k}: {d}\n\n{q}") for k in range(contexts)]
        neg = msg(f"Wrong answer: {a + b + 3}\n\n{q}") if negatives and i % 2 else None
        out.append(TrainExample(prompt=msg(q), completion=d, teacher_prompts=teachers, negative_prompt=neg))
    return out
