"""Dataset version k -> the student's TrainExamples, with the length rule applied.

The rule (student/lengths.py): a row keeps its whole completion y and its
whole student prompt; each context is budgeted on its own,
``len(context) + len(y) <= student.max_length``.  Here the loop, which knows
what is inside each context, makes long contexts fit:

- the self-teacher's context (the `demonstration` template holding d): when it
  is too long, d's MIDDLE is shortened (`fit_middle`: head + "…" + tail); when
  even an empty demonstration does not fit, the row is dropped
  (`teacher_context_too_long`);
- the student prompt does not fit next to y: the row is dropped
  (`prompt_too_long`) — the question is never cut;
- other demonstrations of the example and few-shot contexts: shortened the
  same way, or left out when they cannot fit (K is then filled by cycling);
- the negative context (the student's mined wrong output): shortened in the
  middle, or left out of that row.

Every shortening and drop is counted (`LengthStats`, shown by the train
summary and `show`).  `check_task_lengths` is the preflight version: a config
whose gold rows cannot fit is an error naming `student.max_length`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from loop.errors import UserError

if TYPE_CHECKING:  # pragma: no cover
    from loop.core.steps.context import StepContext


def build_train_examples(ctx: "StepContext", wrong: dict[str, str]):
    """(TrainExamples of dataset version ctx.k, LengthStats).

    prompt: the `student` template.  completion: the demonstration.
    teacher contexts (K = loss.num_contexts): the `demonstration` template
    holding this demonstration, then the example's other demonstrations
    (other teachers/samples), then few-shot contexts that put another pool
    question's demonstration before it.  negative: the `demonstration`
    template holding the student's wrong output `wrong[example]` (given only
    when the contrastive term is on)."""
    from student.data import TrainExample
    from student.lengths import (PROMPT_TOO_LONG, TEACHER_CONTEXT_TOO_LONG, LengthStats, context_budget,
                                 fit_middle)
    from student.model import prompt_ids

    tok, max_len = ctx.model.student.tokenizer, ctx.cfg.student.max_length
    data = ctx.store.dataset(ctx.run_id, ctx.k)
    rats = ctx.store.get_rationales({rid for demos in data.values() for rid, _ in demos})
    examples = {e["id"]: e for e in ctx.store.list_examples("pool", state="all")}
    st, dm, fmt = ctx.templates["student"], ctx.templates["demonstration"], ctx.fmt
    K = ctx.cfg.loss.num_contexts
    stats = LengthStats()
    ids = sorted(data)
    out = []

    def demo_ctx(question: str):
        return lambda t: dm.render(question=question, demonstration=t, answer_format=fmt)

    for n, eid in enumerate(ids):
        ex = examples.get(eid)
        if ex is None:
            continue
        q = ex["question"]
        prompt = st.render(question=q, answer_format=fmt)
        prompt_len = len(prompt_ids(tok, prompt))
        texts = [rats[rid]["text"] for rid, _ in data[eid] if rid in rats]
        for rid, w in data[eid]:
            if rid not in rats:
                continue
            d = rats[rid]["text"]
            budget = context_budget(tok, d, max_len)
            if prompt_len > budget:
                stats.drop(PROMPT_TOO_LONG)
                continue
            own = fit_middle(tok, demo_ctx(q), d, budget)
            if own is None:
                stats.drop(TEACHER_CONTEXT_TOO_LONG)
                continue
            stats.truncated(own[1])
            contexts = [own[0]]
            for t in texts:
                if t == d or len(contexts) >= K:
                    continue
                other = fit_middle(tok, demo_ctx(q), t, budget)
                if other is not None:
                    stats.truncated(other[1])
                    contexts.append(other[0])
            shot = 1
            while len(contexts) < K and len(ids) > 1 and shot < len(ids):
                other_id = ids[(n + shot) % len(ids)]
                shot += 1
                oex, odemos = examples.get(other_id), data.get(other_id)
                if oex is None or not odemos or odemos[0][0] not in rats:
                    continue
                few = fit_middle(
                    tok,
                    lambda t, oq=oex["question"]: [{"role": "user", "content": oq},
                                                   {"role": "assistant", "content": t}] + own[0],
                    rats[odemos[0][0]]["text"], budget,
                )
                if few is not None:
                    stats.truncated(few[1])
                    contexts.append(few[0])
            neg = None
            if eid in wrong:
                fitted = fit_middle(tok, demo_ctx(q), wrong[eid], budget)
                if fitted is None:
                    stats.negatives_dropped += 1
                else:
                    stats.truncated(fitted[1])
                    neg = fitted[0]
            out.append(TrainExample(prompt=prompt, completion=d, teacher_prompts=contexts, negative_prompt=neg,
                                    weight=w))
    return out, stats


def _remove_hint(cfg, example_id: str | None) -> str:
    """For imported data: the one long example can also be taken out."""
    if cfg.task.kind != "jsonl" or example_id is None:
        return ""
    return f", or take that example out with `distillery data remove {example_id}`"


def check_task_lengths(cfg, tok, templates, pool: list[dict], dev: list[dict]) -> None:
    """Preflight: every pool example's gold row must fit `student.max_length`
    (its student prompt and its demonstration context, each next to the gold
    rationale as y), and every question must leave room for
    `generation.max_new_tokens` when the student answers it.  A config that
    fails is an error that says which key to raise and to what.  `tok` is the
    student's tokenizer, `templates` the run's templates."""
    from student.lengths import completion_ids
    from student.model import prompt_ids

    max_len = cfg.student.max_length
    st, dm, fmt = templates["student"], templates["demonstration"], cfg.task.answer_format
    gen = cfg.generation.max_new_tokens
    need_row, need_gen, worst_row, worst_gen = 0, 0, None, None
    row_id = gen_id = None
    for split, rows in (("pool", pool), ("dev", dev)):
        for ex in rows:
            prompt = len(prompt_ids(tok, st.render(question=ex["question"], answer_format=fmt)))
            if prompt + gen > need_gen:
                need_gen, worst_gen, gen_id = prompt + gen, ex["question"][:60], ex.get("id")
            if split != "pool" or not ex.get("rationale"):
                continue
            y = len(completion_ids(tok, ex["rationale"]))
            ctx = len(prompt_ids(tok, dm.render(question=ex["question"], demonstration=ex["rationale"],
                                                answer_format=fmt)))
            if max(prompt, ctx) + y > need_row:
                need_row, worst_row, row_id = max(prompt, ctx) + y, ex["question"][:60], ex.get("id")
    if need_row > max_len:
        raise UserError(
            f"student.max_length = {max_len} is too short for this task: the training row of pool question "
            f"{worst_row!r} "
            f"(its demonstration context next to its whole completion) needs {need_row} tokens, and rows are "
            f"never cut; raise student.max_length to at least {need_row} in distillery.toml"
            + _remove_hint(cfg, row_id)
        )
    if need_gen > max_len:
        raise UserError(
            f"student.max_length = {max_len} is too short: the prompt of question {worst_gen!r} plus "
            f"generation.max_new_tokens = {gen} needs {need_gen} tokens; raise student.max_length to at least "
            f"{need_gen} (or lower generation.max_new_tokens)" + _remove_hint(cfg, gen_id)
        )
