"""What several steps share: the student answering questions, and scoring
its answers."""

from __future__ import annotations

from prompts.answers import answers_equal, extract_answer, is_correct

from loop.core.generation import generate
from loop.core.steps.context import StepContext


def answer_questions(ctx: StepContext, step: str, examples: list[dict], adapter: str | None, *, n_samples: int = 0,
                     seed: int = 0) -> list[list[str]]:
    """Answers of the student with `adapter` (greedy first, then n_samples
    sampled) to the `student` template for each example, through the
    configured backend (loop/core/generation.py)."""
    g = ctx.cfg.generation
    tpl = ctx.templates["student"]
    prompts = [tpl.render(question=e["question"], answer_format=ctx.fmt) for e in examples]
    return generate(ctx, step, adapter, prompts, n_samples=n_samples, temperature=g.temperature, top_p=g.top_p,
                    max_new_tokens=g.max_new_tokens, seed=seed)


def score_rows(ctx: StepContext, examples: list[dict], outputs: list[list[str]],
               reference: dict[str, str] | None = None) -> list[dict]:
    """Prediction rows for the store.  Without gold, `reference` (the answer of
    the example's current demonstration: the teachers' consensus) decides."""
    fmt = ctx.fmt
    rows = []
    for ex, outs in zip(examples, outputs):
        for s, text in enumerate(outs):
            ans = extract_answer(text, fmt)
            if ex.get("answer") is not None:
                correct = is_correct(text, ex["answer"], fmt)
            elif reference and reference.get(ex["id"]) is not None:
                correct = answers_equal(ans, reference[ex["id"]], fmt)
            else:
                correct = None
            rows.append({"example_id": ex["id"], "sample": s, "output": text, "answer": ans, "correct": correct})
    return rows


def accuracy(rows: list[dict]) -> tuple[float | None, int, int]:
    greedy = [r for r in rows if r.get("sample", 0) == 0 and r.get("correct") is not None]
    n = len(greedy)
    c = sum(1 for r in greedy if r["correct"])
    return (c / n if n else None), c, n


def mined_errors(ctx: StepContext, k: int) -> list[dict]:
    """Greedy mined predictions of iteration k that are wrong, in pool order."""
    return [p for p in ctx.store.list_predictions(ctx.run_id, k, "mine") if p["sample"] == 0 and p["correct"] is False]
