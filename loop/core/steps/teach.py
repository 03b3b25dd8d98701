"""The teachers' part of an iteration: teach (rationales for the questions
and the student's errors), verify (reject rationales that do not derive their
answer) and agree (accept those whose answer is gold's, or the majority's).

Teacher calls are cached (teachers/cache.py) and written as they complete, so
re-running `teach` after a crash never pays for a call twice.  The `self`
teacher's samples go through the same cache (model "self", key including the
adapter's sha256), which makes replays of self-taught runs free too.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from loop.core.generation import generate
from loop.core.steps.common import mined_errors
from loop.core.steps.context import StepContext, StepResult
from loop.errors import RunFailure, UserError

if TYPE_CHECKING:  # pragma: no cover
    from teachers.errors import BudgetExceeded

NO_PREVIOUS = "(none: the student has not studied a solution for this question yet)"


@dataclass
class TeachJob:
    """One prompt to the teachers: a template rendered for one example."""
    example_id: str
    parent_id: str | None  # the demonstration it refines (k >= 1)
    error_prediction: int | None  # the student's wrong answer it answers (k >= 1)
    template: Any
    vars: dict
    messages: list[dict] | None = None
    prompt_version: str | None = None
    self_messages: list[dict] | None = None  # the prompt as the self teacher gets it (None: does not fit)


@dataclass
class Produced:
    """A rationale a teacher wrote for a job, before it is stored."""
    example_id: str
    text: str
    teacher: str
    call: str  # the teacher call's cache key
    parent_id: str | None
    error_prediction: int | None


@dataclass
class SelfSample:
    """A sample the self teacher wrote in this step: its cache row, written with the step."""
    key: str
    job: TeachJob
    sample: int
    text: str


# --------------------------------------------------------------------------- teach


def _jobs(ctx: StepContext) -> list[TeachJob]:
    k, cfg, store = ctx.k, ctx.cfg, ctx.store
    examples = {e["id"]: e for e in store.list_examples("pool")}
    jobs: list[TeachJob] = []  # one per (example, template rendering)
    if k == 0:
        tpl = ctx.templates["rationale"]
        for ex in ctx.pool_examples(k):
            jobs.append(TeachJob(ex["id"], None, None, tpl, {"question": ex["question"], "answer_format": ctx.fmt}))
    if k > 0:
        tpl = ctx.templates["refine"]
        errs = mined_errors(ctx, k)
        limit = cfg.loop.max_refinements_per_iteration
        if limit is not None:
            errs = errs[:limit]
        current = store.dataset_for(ctx.run_id, k - 1, [p["example_id"] for p in errs]) if errs else {}
        prev_rats = store.get_rationales({d[0][0] for d in current.values() if d})
        for p in errs:
            if p["example_id"] not in examples:  # removed (`data remove`) since it was mined
                continue
            ex = examples[p["example_id"]]
            demos = current.get(p["example_id"]) or []
            parent = prev_rats.get(demos[0][0]) if demos else None
            gold = ex.get("answer") if cfg.loop.privileged_gold else None
            jobs.append(TeachJob(
                ex["id"], parent["id"] if parent else None, p["id"], tpl,
                {"question": ex["question"], "previous": parent["text"] if parent else NO_PREVIOUS,
                 "student_output": p["output"], "gold": gold, "answer_format": ctx.fmt},
            ))
    return jobs


def teach(ctx: StepContext) -> StepResult:
    """k = 0: every teacher writes rationales for every pool question (`rationale`
    template).  k ≥ 1: for each mined error (up to max_refinements_per_iteration),
    every teacher gets the `refine` template with the question, the gold answer
    (privileged_gold), the demonstration the student trained on and its wrong
    output.  Rationales are stored with their lineage."""
    k, cfg, store = ctx.k, ctx.cfg, ctx.store
    pv = {n: ctx.prompt_version(t) for n, t in ctx.templates.items()}
    jobs = _jobs(ctx)
    for j in jobs:  # render every prompt first: a broken template fails before any call
        j.messages = j.self_messages = j.template.render(**j.vars)
        j.prompt_version = pv[j.template.name]
    fit = {"shortened": 0, "dropped": 0}
    self_teachers = [t for t in cfg.teachers if t.is_self and t.teach]
    if self_teachers and jobs:
        fit = _fit_self_prompts(ctx, jobs, max(min(t.max_tokens, cfg.generation.max_new_tokens) for t in self_teachers))

    produced: list[Produced] = []
    stats = {"asked": len(jobs), "calls": 0, "cached": 0, "failed": 0, "requests": 0, "spend_usd": 0.0}
    budget_hit = None
    writers = []
    for t in cfg.teachers:
        if not t.teach:
            continue
        if t.is_self:
            got, writer = _self_teach(ctx, t, jobs, stats)
            produced += got
            writers.append(writer)
        else:
            got, budget_hit = _api_teach(ctx, t, jobs, stats)
            produced += got
        if budget_hit:
            break

    rows: list[dict] = []

    def write() -> None:
        for w in writers:  # the self teacher's samples enter the cache with the step
            w()
        from teachers.agreement import rationale_answer
        from teachers.verify import end_at_answer

        for r in produced:
            text = end_at_answer(r.text)  # as a stop sequence would: nothing after the first "#### X" line
            ans = rationale_answer(text, ctx.fmt)  # strict: an unmarked answer is not accepted
            rid = store.add_rationale(
                r.example_id, text, ans, r.teacher, teacher_call=r.call, parent_id=r.parent_id,
                error_prediction=r.error_prediction, run_id=ctx.run_id, k=k,
            )
            # the context it was written in: a text equal to an older rationale keeps
            # that row's id (content hash), but is judged against this prompt
            rows.append({"id": rid, "example_id": r.example_id, "teacher": r.teacher,
                         "parent_id": r.parent_id, "error_prediction": r.error_prediction})

    info = dict(stats, rationales=rows, refinements=len(jobs) if k > 0 else 0, **_budget_info(budget_hit),
                templates=pv, self_prompts_shortened=fit["shortened"], self_prompts_dropped=fit["dropped"])
    return StepResult(info, write)


def _fit_self_prompts(ctx: StepContext, jobs: list[TeachJob], new_tokens: int) -> dict:
    """The self teacher is the student: its prompt and the `new_tokens` it may
    write must fit student.max_length.  A refine prompt that does not is
    shortened in the middle of the demonstration it quotes, then of the
    student's wrong output (never the question); one that cannot fit is left
    to the API teachers (`self_messages` = None)."""
    from student.lengths import MARKER, fit_middle
    from student.model import prompt_ids

    tok, budget = ctx.model.student.tokenizer, ctx.cfg.student.max_length - new_tokens
    counts = {"shortened": 0, "dropped": 0}
    for j in jobs:
        if len(prompt_ids(tok, j.messages)) <= budget:
            j.self_messages = j.messages
            continue
        fitted = None
        if "previous" in j.vars:
            v, tpl = j.vars, j.template
            fitted = fit_middle(tok, lambda t: tpl.render(**(v | {"previous": t})), v["previous"], budget)
            if fitted is None:
                fitted = fit_middle(tok, lambda t: tpl.render(**(v | {"previous": MARKER.strip(), "student_output": t})),
                                    v["student_output"], budget)
        j.self_messages = fitted[0] if fitted else None
        counts["shortened" if fitted else "dropped"] += 1
    if counts["dropped"]:
        ctx.store.log_event(ctx.run_id, None, "teach", "warning",
                            f"{counts['dropped']} prompts do not fit student.max_length = {ctx.cfg.student.max_length} "
                            "next to the self teacher's answer; the self teacher skipped them (raise student.max_length)")
    return counts


def _self_teach(ctx: StepContext, t, jobs: list[TeachJob], stats: dict) -> tuple[list[Produced], Callable[[], None]]:
    """The `self` teacher: the student (adapter of k-1) samples `t.samples`
    rationales per prompt at `t.temperature` (greedy first).  Samples are cached
    like API calls, keyed by the adapter's hash, so a restart or a replay does
    not sample again."""
    from teachers import cache

    k = ctx.k
    jobs = [j for j in jobs if j.self_messages is not None]
    if not jobs:
        return [], lambda: None
    adapter = ctx.adapter_before(k)
    sha = ctx.model.adapter_sha(adapter)
    params = {"temperature": t.temperature, "top_p": t.top_p or 1.0,
              "max_tokens": min(t.max_tokens, ctx.cfg.generation.max_new_tokens), "seed": ctx.seed(k, 3)}
    model = f"self:{ctx.cfg.student.name}@{sha}"
    keys = []
    for j in jobs:
        keys.append([
            cache.cache_key(model=model, messages=j.self_messages, params=params, template=j.template.name,
                            prompt_version=j.prompt_version, sample_index=s)
            for s in range(t.samples)
        ])
    hits = [[cache.get(ctx.store, key) for key in ks] for ks in keys]
    missing = [i for i, hs in enumerate(hits) if not all(h is not None and h.status == "ok" for h in hs)]
    missing_set = set(missing)
    texts: dict[int, list[str]] = {i: [h.text for h in hs] for i, hs in enumerate(hits) if i not in missing_set}
    stats["cached"] += sum(len(v) for v in texts.values())
    if missing:
        outs = generate(ctx, "teach", adapter, [jobs[i].self_messages for i in missing], n_samples=t.samples - 1,
                        temperature=t.temperature, top_p=params["top_p"], max_new_tokens=params["max_tokens"],
                        seed=params["seed"])
        for i, o_texts in zip(missing, outs):
            texts[i] = o_texts[: t.samples]
        stats["calls"] += sum(len(texts[i]) for i in missing)
    produced, fresh = [], []
    for i, j in enumerate(jobs):
        for s, text in enumerate(texts[i]):
            produced.append(Produced(j.example_id, text, t.name, keys[i][s], j.parent_id, j.error_prediction))
            if i in missing_set:
                fresh.append(SelfSample(keys[i][s], j, s, text))
    # the cache rows are written in the step's transaction (see teach.write)
    return produced, lambda: _record_self_calls(ctx, t, model, params, fresh)


def _record_self_calls(ctx: StepContext, t, model: str, params: dict, fresh: list[SelfSample]) -> None:
    from teachers import cache

    for r in fresh:
        cache.record(ctx.store, r.key, teacher=t.name, model="self", template=r.job.template.name,
                     prompt_version=r.job.prompt_version,
                     request={"model": model, "messages": r.job.self_messages, "params": params, "sample_index": r.sample},
                     status="ok", text=r.text, attempts=1, cost_usd=0.0, run_id=ctx.run_id, k=ctx.k)


def _run_pool(ctx: StepContext, step: str, who: str, reqs: list) -> tuple[list, "BudgetExceeded | None"]:
    """Send `reqs` through the TeacherPool: (results in request order, the
    BudgetExceeded that stopped it or None).  A budget stop keeps what
    succeeded (the run ends after this iteration); auth/validation errors are
    the user's to fix (exit 2), other fatal teacher errors (TeacherCallsFailed
    included: not one call of a teacher succeeded) a run failure (exit 1)."""
    from teachers.errors import BudgetExceeded, TeacherAuthError, TeacherBadRequest, TeacherError

    ctx.check_stop()
    ctx.progress(step, 0, len(reqs))
    budget_hit = None
    try:
        with ctx.timed("teacher"):
            # a stop request cancels what is still waiting; what finished is cached, so the resumed step keeps it
            results = ctx.teacher_pool.run_sync(reqs, should_stop=ctx.stop_requested,
                                                on_progress=lambda done, total: ctx.progress(step, done, total))
        ctx.check_stop()
    except BudgetExceeded as e:
        results = getattr(e, "results", [])
        budget_hit = e
        ctx.store.log_event(ctx.run_id, ctx.k, step, "budget", str(e),
                            {"settled_usd": e.spent_usd, "in_flight_usd": e.reserved_usd,
                             "estimate_usd": e.estimate_usd, "cap_usd": e.budget_usd})
    except (TeacherAuthError, TeacherBadRequest) as e:
        raise UserError(f"{who}: {e}") from None
    except TeacherError as e:
        raise RunFailure(f"{who}: {e}") from None
    return results, budget_hit


def _budget_info(e: "BudgetExceeded | None") -> dict:
    """A budget stop as the step records it: the message, and the cap the
    refused call needed (Orchestrator.stop_reason lets a run go on once
    loop.budget_usd is raised to it)."""
    return {"budget_hit": str(e) if e else None, "budget_needed": e.needed_usd if e else None}


def _api_teach(ctx: StepContext, t, jobs: list[TeachJob], stats: dict) -> tuple[list[Produced], "BudgetExceeded | None"]:
    """One LiteLLM teacher through the TeacherPool: `t.samples` requests per job.
    Failed requests are counted (and retried next run through the cache);
    a budget stop keeps what succeeded and ends the run after this iteration."""
    from teachers.pool import TeacherRequest

    reqs = [
        TeacherRequest(teacher=t.name, messages=j.messages, template=j.template, sample_index=s,
                       run_id=ctx.run_id, k=ctx.k, tag=(i, s))
        for i, j in enumerate(jobs) for s in range(t.samples)
    ]
    if not reqs:
        return [], None
    pool = ctx.teacher_pool
    before = pool.http_attempts
    results, budget_hit = _run_pool(ctx, "teach", f"teacher {t.name!r} ({t.model})", reqs)
    stats["requests"] += pool.http_attempts - before
    produced = []
    for res in results:
        i, s = res.tag
        j = jobs[i]
        if res.status == "ok" and res.text:
            stats["cached" if res.cached else "calls"] += 1
            if not res.cached:
                stats["spend_usd"] += res.cost_usd
            produced.append(Produced(j.example_id, res.text, t.name, res.key, j.parent_id, j.error_prediction))
        elif res.status == "error":
            stats["failed"] += 1
    ctx.progress("teach", len(reqs), len(reqs))
    return produced, budget_hit


# --------------------------------------------------------------------------- verify


def _verify_inputs(ctx: StepContext) -> tuple[list[str], dict, dict, dict, dict, dict]:
    """The step's rationale ids (teach order, unique) with what the checks
    compare them against: the example, and from the prompt each was written
    for, the demonstration it refines and the wrong output it answers."""
    store = ctx.store
    produced = ctx.step_info(ctx.k, "teach").get("rationales", [])
    context = {}
    for r in produced:  # first prompt that produced the text
        context.setdefault(r["id"], (r.get("parent_id"), r.get("error_prediction")))
    ids = list(context)
    rats = store.get_rationales(ids)
    for rid, r in rats.items():  # rows written before teach recorded the context
        if context[rid] == (None, None):
            context[rid] = (r["parent_id"], r["error_prediction"])
    examples = {e["id"]: e for e in store.list_examples("pool", state="all")}
    parents = store.get_rationales({p for p, _ in context.values() if p})
    preds = {pid: store.get_prediction(pid) for _, pid in context.values() if pid is not None}
    return [i for i in ids if i in rats], rats, context, examples, parents, preds


def verify(ctx: StepContext) -> StepResult:
    """Reject rationales that do not derive their answer (teachers/verify.py):
    structural checks always (an answer line last; reasoning that computes
    from the question's quantities; no talk of the student or of a given
    answer; not a near-copy of the student's wrong output or of the
    demonstration it refines), then the optional judge teacher
    ([verify] teacher) on what passed.  Rejections are stored with their
    reason; `agree` only sees what passed."""
    from teachers.verify import check_rationale

    k, vc = ctx.k, ctx.cfg.verify
    ids, rats, context, examples, parents, preds = _verify_inputs(ctx)
    privileged = k > 0 and ctx.cfg.loop.privileged_gold  # the teacher saw gold only in `refine`
    rejected: dict[str, str] = {}
    for rid in ids:
        r = rats[rid]
        ex = examples.get(r["example_id"]) or {}
        parent_id, pred_id = context[rid]
        err = preds.get(pred_id) if pred_id is not None else None
        parent = parents.get(parent_id) if parent_id else None
        reason = check_rationale(
            r["text"], question=ex.get("question", ""), fmt=ctx.fmt,
            gold=ex.get("answer") if privileged else None,
            student_output=err["output"] if err else None, previous=parent["text"] if parent else None, cfg=vc,
        )
        if reason:
            rejected[rid] = reason
    passed = [rid for rid in ids if rid not in rejected]
    judge = {"asked": 0, "passed": 0, "failed_calls": 0, "calls": 0, "cached": 0, "spend_usd": 0.0}
    calls: dict[str, str] = {}
    judge_reasons: dict[str, str] = {}
    budget_hit = None
    if vc.teacher and passed:
        verdicts, calls, budget_hit = _judge(ctx, [rats[r] for r in passed], examples, privileged, judge)
        for rid in passed:
            ok, why = verdicts.get(rid, (None, "no verdict"))
            if ok is not True:
                rejected[rid] = "judge_rejected" if ok is False else "judge_failed"
                judge_reasons[rid] = why[:300]
        passed = [rid for rid in passed if rid not in rejected]
        judge["passed"] = len(passed)

    def write() -> None:
        for rid, reason in rejected.items():
            ctx.store.set_accepted(rid, False, None, rejected_reason=reason, verify_call=calls.get(rid),
                                   run_id=ctx.run_id, k=k)

    counts: dict[str, int] = {}
    for reason in rejected.values():
        counts[reason] = counts.get(reason, 0) + 1
    info = {"checked": len(ids), "passed_ids": passed, "passed": len(passed), "rejected": dict(sorted(counts.items())),
            "structural": vc.structural, "judge": judge if vc.teacher else None, "judge_reasons": judge_reasons,
            **_budget_info(budget_hit)}
    return StepResult(info, write)


def _judge(ctx: StepContext, rats: list[dict], examples: dict, privileged: bool, stats: dict):
    """Ask the [verify] teacher about each rationale (the `verify` template,
    through the TeacherPool: cached, budgeted and recorded like any call).
    Returns ({rationale id: (passed | None, reason)}, {id: call key}, budget message)."""
    from teachers.pool import TeacherRequest
    from teachers.verify import parse_verdict

    cfg = ctx.cfg
    t = next(t for t in cfg.teachers if t.name == cfg.verify.teacher)
    tpl = ctx.templates["verify"]
    reqs = []
    for r in rats:
        ex = examples.get(r["example_id"]) or {}
        msgs = tpl.render(question=ex.get("question", ""), rationale=r["text"], answer_format=ctx.fmt,
                          gold=ex.get("answer") if privileged else None)
        reqs.append(TeacherRequest(teacher=t.name, messages=msgs, template=tpl, run_id=ctx.run_id, k=ctx.k, tag=r["id"]))
    stats["asked"] = len(reqs)
    results, budget_hit = _run_pool(ctx, "verify", f"verify.teacher {t.name!r} ({t.model})", reqs)
    verdicts, keys = {}, {}
    for res in results:
        if res.status == "ok" and res.text:
            stats["cached" if res.cached else "calls"] += 1
            if not res.cached:
                stats["spend_usd"] += res.cost_usd
            verdicts[res.tag] = parse_verdict(res.text)
            keys[res.tag] = res.key
        else:
            stats["failed_calls"] += res.status == "error"
            verdicts[res.tag] = (None, res.error or res.status)
    ctx.progress("verify", len(reqs), len(reqs))
    return verdicts, keys, budget_hit


# --------------------------------------------------------------------------- agree


def agree(ctx: StepContext) -> StepResult:
    """Among the verified rationales, accept one when its answer equals gold
    or, without gold, the teachers' majority; store the agreement fraction
    per rationale and the reason of each rejection (`wrong_answer`,
    `no_majority`)."""
    from teachers.agreement import agree_rationales

    k, store = ctx.k, ctx.store
    verified = ctx.step_info(k, "verify")
    teach_rats = ctx.step_info(k, "teach").get("rationales", [])
    if "passed_ids" in verified:
        ids = verified["passed_ids"]
    else:  # an iteration begun before the verify step existed
        ids = [r["id"] for r in teach_rats]
    rats = store.get_rationales(ids)
    # one vote per teacher (teachers.agreement): teach recorded every (rationale, teacher)
    # it produced, so a text two teachers wrote is one id but two votes
    passed = set(ids)
    by_ex: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    for r in teach_rats:
        if r["id"] in passed and r["id"] in rats:
            by_ex[r["example_id"]].append((r["id"], r.get("teacher") or rats[r["id"]]["source"], rats[r["id"]]["answer"]))
    golds = {e["id"]: e.get("answer") for e in store.list_examples("pool", state="all")}
    decisions: list[tuple[str, bool, float, str | None]] = []
    for eid, produced in by_ex.items():
        gold = golds.get(eid)
        verdict, frac = agree_rationales(produced, gold, ctx.fmt)
        why = "wrong_answer" if gold is not None else "no_majority"
        decisions += [(rid, ok, frac, None if ok else why) for rid, ok in verdict.items()]

    def write() -> None:
        for rid, flag, frac, why in decisions:
            store.set_accepted(rid, flag, frac, rejected_reason=why, run_id=ctx.run_id, k=k)

    accepted = [rid for rid, f, _, _ in decisions if f]
    counts: dict[str, int] = {}
    for *_, why in decisions:
        if why:
            counts[why] = counts.get(why, 0) + 1
    info = {"rationales": len(decisions), "accepted": len(accepted), "accepted_ids": accepted,
            "examples_accepted": len({rats[r]["example_id"] for r in accepted}), "rejected": counts,
            "agreement_mean": (sum(d[2] for d in decisions) / len(decisions)) if decisions else None}
    return StepResult(info, write)
