"""baseline (k = 0: the untrained student on dev) and mine (the student's
wrong answers on the pool)."""

from __future__ import annotations

from prompts.answers import answers_equal

from loop.core.steps.common import accuracy, answer_questions, score_rows
from loop.core.steps.context import StepContext, StepResult


def baseline(ctx: StepContext) -> StepResult:
    """Score the untrained student on dev (k = 0 only)."""
    k, store = ctx.k, ctx.store
    dev = store.list_examples("dev")
    outs = answer_questions(ctx, "baseline", dev, None, seed=ctx.seed(k, 1))
    rows = score_rows(ctx, dev, outs)
    acc, c, n = accuracy(rows)
    info = {"dev_acc": acc, "dev_correct": c, "dev_n": n}
    return StepResult(info, lambda: store.record_predictions(ctx.run_id, k, "baseline", rows))


def mine(ctx: StepContext) -> StepResult:
    """The student (adapter of k-1) answers the pool; wrong answers are errors.

    When iteration k-1 already scored the pool with the same adapter and
    settings (evaluate with eval_pool, greedy only) its predictions are reused:
    answering the same questions again with the same weights would give the
    same texts."""
    k, cfg, store = ctx.k, ctx.cfg, ctx.store
    if k == 0 and not cfg.loss.contrastive > 0:
        # Iteration 0 asks the teachers about every pool question anyway, so its
        # mined answers would only feed the contrastive term's hard negatives.
        info = {"mined": 0, "errors": None, "pool_acc": None, "reused_eval": False,
                "skipped": "iteration 0 uses no mined answers (loss.contrastive = 0)"}
        return StepResult(info)
    pool = ctx.pool_examples(k)
    prev = ctx.previous_iteration(k)
    reference = ctx.demo_answers(k - 1, [e["id"] for e in pool if e.get("answer") is None]) if k > 0 else {}
    reused = False
    rows: list[dict] = []
    if prev is not None and cfg.generation.n_samples == 0:
        evald = store.list_predictions(prev["run_id"], prev["k"], "eval")
        by_ex = {p["example_id"]: p for p in evald if p["sample"] == 0}
        if all(e["id"] in by_ex for e in pool):
            reused = True
            for e in pool:
                p = by_ex[e["id"]]
                correct = p["correct"]
                if e.get("answer") is None and reference.get(e["id"]) is not None:
                    correct = answers_equal(p["answer"], reference[e["id"]], ctx.fmt)
                rows.append({"example_id": e["id"], "sample": 0, "output": p["output"], "answer": p["answer"], "correct": correct})
    if not reused:
        outs = answer_questions(ctx, "mine", pool, ctx.adapter_before(k), n_samples=cfg.generation.n_samples,
                                seed=ctx.seed(k, 2))
        rows = score_rows(ctx, pool, outs, reference)
    greedy = [r for r in rows if r["sample"] == 0]
    errors = [r["example_id"] for r in greedy if r["correct"] is False]
    acc, c, n = accuracy(rows)
    info = {"mined": len(pool), "errors": len(errors), "pool_acc": acc, "reused_eval": reused}
    return StepResult(info, lambda: store.record_predictions(ctx.run_id, k, "mine", rows))
