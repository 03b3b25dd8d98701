"""evaluate: iteration k's adapter on dev (and the pool)."""

from __future__ import annotations

from loop.core.steps.common import accuracy, answer_questions, score_rows
from loop.core.steps.context import StepContext, StepResult


def _answers_reusing_previous(ctx: StepContext, examples: list[dict]) -> list[list[str]]:
    """Greedy answers of iteration k's adapter.  When it is k-1's adapter (an
    unchanged version that was not retrained) the answers k-1's evaluate
    already gave are the same texts: reuse them, answer only the rest."""
    k = ctx.k
    prev = ctx.previous_iteration(k)
    same = prev is not None and prev.get("adapter_sha256") and \
        ctx.step_info(k, "train").get("adapter_sha256") == prev["adapter_sha256"]
    known: dict[str, str] = {}
    if same:
        known = {p["example_id"]: p["output"] for p in ctx.store.list_predictions(prev["run_id"], prev["k"], "eval")
                 if p["sample"] == 0}
    todo = [e for e in examples if e["id"] not in known]
    fresh = iter(answer_questions(ctx, "evaluate", todo, ctx.adapter_of(k), seed=ctx.seed(k, 4)) if todo else [])
    return [[known[e["id"]]] if e["id"] in known else next(fresh) for e in examples]


def evaluate(ctx: StepContext) -> StepResult:
    """Score dev (and the pool when loop.eval_pool) with iteration k's adapter."""
    k, store = ctx.k, ctx.store
    dev = store.list_examples("dev")
    # with mine_limit the pool is scored on the slice the next iteration mines,
    # so `mine` at k+1 reuses these predictions instead of answering again
    pool = ctx.pool_examples(k + 1) if ctx.cfg.loop.eval_pool else []
    both = dev + pool
    outs = _answers_reusing_previous(ctx, both)
    reference = ctx.demo_answers(k, [e["id"] for e in pool if e.get("answer") is None]) if pool else {}
    rows = score_rows(ctx, both, outs, reference)
    dev_ids = {e["id"] for e in dev}
    dev_rows = [r for r in rows if r["example_id"] in dev_ids]
    pool_rows = [r for r in rows if r["example_id"] not in dev_ids]
    acc, c, n = accuracy(dev_rows)
    pacc, pc, pn = accuracy(pool_rows)
    prev = ctx.previous_dev_predictions(k)
    now_ok = {r["example_id"]: r["correct"] for r in dev_rows if r["sample"] == 0}
    fixed = sorted(e for e, ok in now_ok.items() if ok and prev.get(e) is False)
    broken = sorted(e for e, ok in now_ok.items() if ok is False and prev.get(e) is True)
    info = {"dev_acc": acc, "dev_correct": c, "dev_n": n, "pool_acc": pacc, "pool_correct": pc, "pool_n": pn,
            "pool_errors": sum(1 for r in pool_rows if r["correct"] is False),
            "fixed": fixed, "broken": broken}
    return StepResult(info, lambda: store.record_predictions(ctx.run_id, k, "eval", rows))
