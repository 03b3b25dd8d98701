"""The steps of one iteration (DESIGN §2), each a function of the orchestrator
context `o` and the iteration number k.

Every step follows the same shape so that it is idempotent and resumable:
compute (generation, teacher calls, training: slow, outside any transaction),
then write everything it produced *and* `finish_step` in one store
transaction (`o.commit_step`).  A crash before that transaction leaves no
trace of the step; a crash after it leaves the step done.  What later steps
need is read back from the store (predictions, rationales) or from the step's
`info` JSON, never from memory, so a restarted process continues at the first
unfinished step with the same inputs.

Teacher calls are cached (teachers/cache.py) and written as they complete, so
re-running `teach` after a crash never pays for a call twice.  The `self`
teacher's samples go through the same cache (model "self", key including the
adapter's sha256), which makes replays of self-taught runs free too.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from prompts.answers import answers_equal, extract_answer, is_correct

from loop.errors import RunFailure, UserError
from loop.core.generation import generate
from loop.core.trainset import build_train_examples

if TYPE_CHECKING:  # pragma: no cover
    from teachers.errors import BudgetExceeded

    from loop.core.orchestrator import Orchestrator

NO_PREVIOUS = "(none: the student has not studied a solution for this question yet)"


# --------------------------------------------------------------------------- helpers


def answer_questions(o: "Orchestrator", step: str, examples: list[dict], adapter: str | None, *, n_samples: int = 0,
                     seed: int = 0) -> list[list[str]]:
    """Answers of the student with `adapter` (greedy first, then n_samples
    sampled) to the `student` template for each example, through the
    configured backend (loop/core/generation.py)."""
    g = o.cfg.generation
    tpl = o.templates["student"]
    prompts = [tpl.render(question=e["question"], answer_format=o.fmt) for e in examples]
    return generate(o, step, adapter, prompts, n_samples=n_samples, temperature=g.temperature, top_p=g.top_p,
                    max_new_tokens=g.max_new_tokens, seed=seed)


def score_rows(o: "Orchestrator", examples: list[dict], outputs: list[list[str]], reference: dict[str, str] | None = None) -> list[dict]:
    """Prediction rows for the store.  Without gold, `reference` (the answer of
    the example's current demonstration: the teachers' consensus) decides."""
    rows = []
    for ex, outs in zip(examples, outputs):
        for s, text in enumerate(outs):
            ans = extract_answer(text, o.fmt)
            if ex.get("answer") is not None:
                correct = is_correct(text, ex["answer"], o.fmt)
            elif reference and reference.get(ex["id"]) is not None:
                correct = answers_equal(ans, reference[ex["id"]], o.fmt)
            else:
                correct = None
            rows.append({"example_id": ex["id"], "sample": s, "output": text, "answer": ans, "correct": correct})
    return rows


def accuracy(rows: list[dict]) -> tuple[float | None, int, int]:
    greedy = [r for r in rows if r.get("sample", 0) == 0 and r.get("correct") is not None]
    n = len(greedy)
    c = sum(1 for r in greedy if r["correct"])
    return (c / n if n else None), c, n


# --------------------------------------------------------------------------- baseline


def baseline(o: "Orchestrator", k: int) -> dict:
    """Score the untrained student on dev (k = 0 only)."""
    dev = o.store.list_examples("dev")
    outs = answer_questions(o, "baseline", dev, None, seed=o.seed(k, 1))
    rows = score_rows(o, dev, outs)
    acc, c, n = accuracy(rows)
    info = {"dev_acc": acc, "dev_correct": c, "dev_n": n}
    o.commit_step(k, "baseline", info, lambda: o.store.record_predictions(o.run_id, k, "baseline", rows))
    return info


# --------------------------------------------------------------------------- mine


def mine(o: "Orchestrator", k: int) -> dict:
    """The student (adapter of k-1) answers the pool; wrong answers are errors.

    When iteration k-1 already scored the pool with the same adapter and
    settings (evaluate with eval_pool, greedy only) its predictions are reused:
    answering the same questions again with the same weights would give the
    same texts."""
    if k == 0 and not o.cfg.loss.contrastive > 0:
        # Iteration 0 asks the teachers about every pool question anyway, so its
        # mined answers would only feed the contrastive term's hard negatives.
        info = {"mined": 0, "errors": None, "pool_acc": None, "reused_eval": False,
                "skipped": "iteration 0 uses no mined answers (loss.contrastive = 0)"}
        o.commit_step(k, "mine", info, lambda: None)
        return info
    pool = o.pool_examples(k)
    prev = o.previous_iteration(k)
    reference = o.demo_answers(k - 1, [e["id"] for e in pool if e.get("answer") is None]) if k > 0 else {}
    reused = False
    rows: list[dict] = []
    if prev is not None and o.cfg.generation.n_samples == 0:
        evald = o.store.list_predictions(prev["run_id"], prev["k"], "eval")
        by_ex = {p["example_id"]: p for p in evald if p["sample"] == 0}
        if all(e["id"] in by_ex for e in pool):
            reused = True
            for e in pool:
                p = by_ex[e["id"]]
                correct = p["correct"]
                if e.get("answer") is None and reference.get(e["id"]) is not None:
                    correct = answers_equal(p["answer"], reference[e["id"]], o.fmt)
                rows.append({"example_id": e["id"], "sample": 0, "output": p["output"], "answer": p["answer"], "correct": correct})
    if not reused:
        outs = answer_questions(o, "mine", pool, o.adapter_before(k), n_samples=o.cfg.generation.n_samples,
                                seed=o.seed(k, 2))
        rows = score_rows(o, pool, outs, reference)
    greedy = [r for r in rows if r["sample"] == 0]
    errors = [r["example_id"] for r in greedy if r["correct"] is False]
    acc, c, n = accuracy(rows)
    info = {"mined": len(pool), "errors": len(errors), "pool_acc": acc, "reused_eval": reused}
    o.commit_step(k, "mine", info, lambda: o.store.record_predictions(o.run_id, k, "mine", rows))
    return info


def mined_errors(o: "Orchestrator", k: int) -> list[dict]:
    """Greedy mined predictions of iteration k that are wrong, in pool order."""
    return [p for p in o.store.list_predictions(o.run_id, k, "mine") if p["sample"] == 0 and p["correct"] is False]


# --------------------------------------------------------------------------- teach


def teach(o: "Orchestrator", k: int) -> dict:
    """k = 0: every teacher writes rationales for every pool question (`rationale`
    template).  k ≥ 1: for each mined error (up to max_refinements_per_iteration),
    every teacher gets the `refine` template with the question, the gold answer
    (privileged_gold), the demonstration the student trained on and its wrong
    output.  Rationales are stored with their lineage."""
    pv = {n: o.prompt_version(t) for n, t in o.templates.items()}
    examples = {e["id"]: e for e in o.store.list_examples("pool")}
    jobs: list[dict] = []  # one per (example, template rendering)
    if k == 0:
        tpl = o.templates["rationale"]
        for ex in o.pool_examples(k):
            jobs.append({"example_id": ex["id"], "parent_id": None, "error_prediction": None,
                         "template": tpl, "vars": {"question": ex["question"], "answer_format": o.fmt}})
    if k > 0:
        tpl = o.templates["refine"]
        errs = mined_errors(o, k)
        limit = o.cfg.loop.max_refinements_per_iteration
        if limit is not None:
            errs = errs[:limit]
        current = o.store.dataset_for(o.run_id, k - 1, [p["example_id"] for p in errs]) if errs else {}
        prev_rats = o.store.get_rationales({d[0][0] for d in current.values() if d})
        for p in errs:
            if p["example_id"] not in examples:  # removed (`data remove`) since it was mined
                continue
            ex = examples[p["example_id"]]
            demos = current.get(p["example_id"]) or []
            parent = prev_rats.get(demos[0][0]) if demos else None
            gold = ex.get("answer") if o.cfg.loop.privileged_gold else None
            jobs.append({
                "example_id": ex["id"], "parent_id": parent["id"] if parent else None, "error_prediction": p["id"],
                "template": tpl,
                "vars": {"question": ex["question"], "previous": parent["text"] if parent else NO_PREVIOUS,
                         "student_output": p["output"], "gold": gold, "answer_format": o.fmt},
            })
    for j in jobs:  # render every prompt first: a broken template fails before any call
        j["messages"] = j["template"].render(**j["vars"])
        j["prompt_version"] = pv[j["template"].name]
    fit = {"shortened": 0, "dropped": 0}
    self_teachers = [t for t in o.cfg.teachers if t.is_self and t.teach]
    if self_teachers and jobs:
        fit = _fit_self_prompts(o, jobs, max(min(t.max_tokens, o.cfg.generation.max_new_tokens) for t in self_teachers))

    produced: list[dict] = []  # {"example_id", "text", "teacher", "call", "parent_id", "error_prediction"}
    stats = {"asked": len(jobs), "calls": 0, "cached": 0, "failed": 0, "requests": 0, "spend_usd": 0.0}
    budget_hit = None
    writers = []
    for t in o.cfg.teachers:
        if not t.teach:
            continue
        if t.is_self:
            got, writer = _self_teach(o, k, t, jobs, stats)
            produced += got
            writers.append(writer)
        else:
            got, budget_hit = _api_teach(o, k, t, jobs, stats)
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
            text = end_at_answer(r["text"])  # as a stop sequence would: nothing after the first "#### X" line
            ans = rationale_answer(text, o.fmt)  # strict: an unmarked answer is not accepted
            rid = o.store.add_rationale(
                r["example_id"], text, ans, r["teacher"], teacher_call=r["call"], parent_id=r["parent_id"],
                error_prediction=r["error_prediction"], run_id=o.run_id, k=k,
            )
            # the context it was written in: a text equal to an older rationale keeps
            # that row's id (content hash), but is judged against this prompt
            rows.append({"id": rid, "example_id": r["example_id"], "teacher": r["teacher"],
                         "parent_id": r["parent_id"], "error_prediction": r["error_prediction"]})

    info = dict(stats, rationales=rows, refinements=len(jobs) if k > 0 else 0, **_budget_info(budget_hit),
                templates=pv, self_prompts_shortened=fit["shortened"], self_prompts_dropped=fit["dropped"])
    o.commit_step(k, "teach", info, write)
    return info


def _fit_self_prompts(o: "Orchestrator", jobs: list[dict], new_tokens: int) -> dict:
    """The self teacher is the student: its prompt and the `new_tokens` it may
    write must fit student.max_length.  A refine prompt that does not is
    shortened in the middle of the demonstration it quotes, then of the
    student's wrong output (never the question); one that cannot fit is left
    to the API teachers (`self_messages` = None).  Sets j["self_messages"]."""
    from student.lengths import MARKER, fit_middle
    from student.model import prompt_ids

    tok, budget = o.student.tokenizer, o.cfg.student.max_length - new_tokens
    counts = {"shortened": 0, "dropped": 0}
    for j in jobs:
        if len(prompt_ids(tok, j["messages"])) <= budget:
            j["self_messages"] = j["messages"]
            continue
        fitted = None
        if "previous" in j["vars"]:
            v, tpl = j["vars"], j["template"]
            fitted = fit_middle(tok, lambda t: tpl.render(**(v | {"previous": t})), v["previous"], budget)
            if fitted is None:
                fitted = fit_middle(tok, lambda t: tpl.render(**(v | {"previous": MARKER.strip(), "student_output": t})),
                                    v["student_output"], budget)
        j["self_messages"] = fitted[0] if fitted else None
        counts["shortened" if fitted else "dropped"] += 1
    if counts["dropped"]:
        o.store.log_event(o.run_id, None, "teach", "warning",
                          f"{counts['dropped']} prompts do not fit student.max_length = {o.cfg.student.max_length} "
                          "next to the self teacher's answer; the self teacher skipped them (raise student.max_length)")
    return counts


def _self_teach(o: "Orchestrator", k: int, t, jobs: list[dict], stats: dict) -> list[dict]:
    """The `self` teacher: the student (adapter of k-1) samples `t.samples`
    rationales per prompt at `t.temperature` (greedy first).  Samples are cached
    like API calls, keyed by the adapter's hash, so a restart or a replay does
    not sample again."""
    from teachers import cache

    jobs = [j for j in jobs if j.get("self_messages", j["messages"]) is not None]
    if not jobs:
        return [], lambda: None
    adapter = o.adapter_before(k)
    sha = o.adapter_sha(adapter)
    params = {"temperature": t.temperature, "top_p": t.top_p or 1.0,
              "max_tokens": min(t.max_tokens, o.cfg.generation.max_new_tokens), "seed": o.seed(k, 3)}
    model = f"self:{o.cfg.student.name}@{sha}"
    keys = []
    for j in jobs:
        keys.append([
            cache.cache_key(model=model, messages=j["self_messages"], params=params, template=j["template"].name,
                            prompt_version=j["prompt_version"], sample_index=s)
            for s in range(t.samples)
        ])
    hits = [[cache.get(o.store, key) for key in ks] for ks in keys]
    missing = [i for i, hs in enumerate(hits) if not all(h is not None and h.status == "ok" for h in hs)]
    missing_set = set(missing)
    texts: dict[int, list[str]] = {i: [h.text for h in hs] for i, hs in enumerate(hits) if i not in missing_set}
    stats["cached"] += sum(len(v) for v in texts.values())
    if missing:
        outs = generate(o, "teach", adapter, [jobs[i]["self_messages"] for i in missing], n_samples=t.samples - 1,
                        temperature=t.temperature, top_p=params["top_p"], max_new_tokens=params["max_tokens"],
                        seed=params["seed"])
        for i, o_texts in zip(missing, outs):
            texts[i] = o_texts[: t.samples]
        stats["calls"] += sum(len(texts[i]) for i in missing)
    produced = []
    for i, j in enumerate(jobs):
        for s, text in enumerate(texts[i]):
            produced.append({"example_id": j["example_id"], "text": text, "teacher": t.name, "call": keys[i][s],
                             "parent_id": j["parent_id"], "error_prediction": j["error_prediction"],
                             "_record": (keys[i][s], j, s, i in missing_set)})
    # the cache rows are written in the step's transaction (see teach.write)
    return produced, lambda: _record_self_calls(o, k, t, model, params, produced)


def _record_self_calls(o, k, t, model, params, produced) -> None:
    from teachers import cache

    for r in produced:
        key, job, s, fresh = r["_record"]
        if not fresh:
            continue
        cache.record(o.store, key, teacher=t.name, model="self", template=job["template"].name,
                     prompt_version=job["prompt_version"],
                     request={"model": model, "messages": job["self_messages"], "params": params, "sample_index": s},
                     status="ok", text=r["text"], attempts=1, cost_usd=0.0, run_id=o.run_id, k=k)


def _run_pool(o: "Orchestrator", k: int, step: str, who: str, reqs: list) -> tuple[list, "BudgetExceeded | None"]:
    """Send `reqs` through the TeacherPool: (results in request order, the
    BudgetExceeded that stopped it or None).  A budget stop keeps what
    succeeded (the run ends after this iteration); auth/validation errors are
    the user's to fix (exit 2), other fatal teacher errors (TeacherCallsFailed
    included: not one call of a teacher succeeded) a run failure (exit 1)."""
    from teachers.errors import BudgetExceeded, TeacherAuthError, TeacherBadRequest, TeacherError

    o.check_stop()
    o.progress(step, 0, len(reqs))
    budget_hit = None
    try:
        with o.timed("teacher"):
            # a stop request cancels what is still waiting; what finished is cached, so the resumed step keeps it
            results = o.teacher_pool.run_sync(reqs, should_stop=o.stop_requested,
                                              on_progress=lambda done, total: o.progress(step, done, total))
        o.check_stop()
    except BudgetExceeded as e:
        results = getattr(e, "results", [])
        budget_hit = e
        o.store.log_event(o.run_id, k, step, "budget", str(e),
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


def _api_teach(o: "Orchestrator", k: int, t, jobs: list[dict], stats: dict) -> tuple[list[dict], "BudgetExceeded | None"]:
    """One LiteLLM teacher through the TeacherPool: `t.samples` requests per job.
    Failed requests are counted (and retried next run through the cache);
    a budget stop keeps what succeeded and ends the run after this iteration."""
    from teachers.pool import TeacherRequest

    reqs = [
        TeacherRequest(teacher=t.name, messages=j["messages"], template=j["template"], sample_index=s,
                       run_id=o.run_id, k=k, tag=(i, s))
        for i, j in enumerate(jobs) for s in range(t.samples)
    ]
    if not reqs:
        return [], None
    before = o.teacher_pool.http_attempts
    results, budget_hit = _run_pool(o, k, "teach", f"teacher {t.name!r} ({t.model})", reqs)
    stats["requests"] += o.teacher_pool.http_attempts - before
    produced = []
    for res in results:
        i, s = res.tag
        j = jobs[i]
        if res.status == "ok" and res.text:
            stats["cached" if res.cached else "calls"] += 1
            if not res.cached:
                stats["spend_usd"] += res.cost_usd
            produced.append({"example_id": j["example_id"], "text": res.text, "teacher": t.name, "call": res.key,
                             "parent_id": j["parent_id"], "error_prediction": j["error_prediction"]})
        elif res.status == "error":
            stats["failed"] += 1
    o.progress("teach", len(reqs), len(reqs))
    return produced, budget_hit


# --------------------------------------------------------------------------- verify


def _verify_inputs(o: "Orchestrator", k: int) -> tuple[list[str], dict, dict, dict, dict, dict]:
    """The step's rationale ids (teach order, unique) with what the checks
    compare them against: the example, and from the prompt each was written
    for, the demonstration it refines and the wrong output it answers."""
    produced = o.step_info(k, "teach").get("rationales", [])
    context = {}
    for r in produced:  # first prompt that produced the text
        context.setdefault(r["id"], (r.get("parent_id"), r.get("error_prediction")))
    ids = list(context)
    rats = o.store.get_rationales(ids)
    for rid, r in rats.items():  # rows written before teach recorded the context
        if context[rid] == (None, None):
            context[rid] = (r["parent_id"], r["error_prediction"])
    examples = {e["id"]: e for e in o.store.list_examples("pool", state="all")}
    parents = o.store.get_rationales({p for p, _ in context.values() if p})
    preds = {pid: o.store.get_prediction(pid) for _, pid in context.values() if pid is not None}
    return [i for i in ids if i in rats], rats, context, examples, parents, preds


def verify_step(o: "Orchestrator", k: int) -> dict:
    """Reject rationales that do not derive their answer (teachers/verify.py):
    structural checks always (an answer line last; reasoning that computes
    from the question's quantities; no talk of the student or of a given
    answer; not a near-copy of the student's wrong output or of the
    demonstration it refines), then the optional judge teacher
    ([verify] teacher) on what passed.  Rejections are stored with their
    reason; `agree` only sees what passed."""
    from teachers.verify import check_rationale

    vc = o.cfg.verify
    ids, rats, context, examples, parents, preds = _verify_inputs(o, k)
    privileged = k > 0 and o.cfg.loop.privileged_gold  # the teacher saw gold only in `refine`
    rejected: dict[str, str] = {}
    for rid in ids:
        r = rats[rid]
        ex = examples.get(r["example_id"]) or {}
        parent_id, pred_id = context[rid]
        err = preds.get(pred_id) if pred_id is not None else None
        parent = parents.get(parent_id) if parent_id else None
        reason = check_rationale(
            r["text"], question=ex.get("question", ""), fmt=o.fmt,
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
        verdicts, calls, budget_hit = _judge(o, k, [rats[r] for r in passed], examples, privileged, judge)
        for rid in passed:
            ok, why = verdicts.get(rid, (None, "no verdict"))
            if ok is not True:
                rejected[rid] = "judge_rejected" if ok is False else "judge_failed"
                judge_reasons[rid] = why[:300]
        passed = [rid for rid in passed if rid not in rejected]
        judge["passed"] = len(passed)

    def write() -> None:
        for rid, reason in rejected.items():
            o.store.set_accepted(rid, False, None, rejected_reason=reason, verify_call=calls.get(rid),
                                 run_id=o.run_id, k=k)

    counts: dict[str, int] = {}
    for reason in rejected.values():
        counts[reason] = counts.get(reason, 0) + 1
    info = {"checked": len(ids), "passed_ids": passed, "passed": len(passed), "rejected": dict(sorted(counts.items())),
            "structural": vc.structural, "judge": judge if vc.teacher else None, "judge_reasons": judge_reasons,
            **_budget_info(budget_hit)}
    o.commit_step(k, "verify", info, write)
    return info


def _judge(o: "Orchestrator", k: int, rats: list[dict], examples: dict, privileged: bool, stats: dict):
    """Ask the [verify] teacher about each rationale (the `verify` template,
    through the TeacherPool: cached, budgeted and recorded like any call).
    Returns ({rationale id: (passed | None, reason)}, {id: call key}, budget message)."""
    from teachers.pool import TeacherRequest
    from teachers.verify import parse_verdict

    t = next(t for t in o.cfg.teachers if t.name == o.cfg.verify.teacher)
    tpl = o.templates["verify"]
    reqs = []
    for r in rats:
        ex = examples.get(r["example_id"]) or {}
        msgs = tpl.render(question=ex.get("question", ""), rationale=r["text"], answer_format=o.fmt,
                          gold=ex.get("answer") if privileged else None)
        reqs.append(TeacherRequest(teacher=t.name, messages=msgs, template=tpl, run_id=o.run_id, k=k, tag=r["id"]))
    stats["asked"] = len(reqs)
    results, budget_hit = _run_pool(o, k, "verify", f"verify.teacher {t.name!r} ({t.model})", reqs)
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
    o.progress("verify", len(reqs), len(reqs))
    return verdicts, keys, budget_hit


# --------------------------------------------------------------------------- agree


def agree_step(o: "Orchestrator", k: int) -> dict:
    """Among the verified rationales, accept one when its answer equals gold
    or, without gold, the teachers' majority; store the agreement fraction
    per rationale and the reason of each rejection (`wrong_answer`,
    `no_majority`)."""
    from teachers.agreement import agree_rationales

    verified = o.step_info(k, "verify")
    if "passed_ids" in verified:
        ids = verified["passed_ids"]
    else:  # an iteration begun before the verify step existed
        ids = [r["id"] for r in o.step_info(k, "teach").get("rationales", [])]
    rats = o.store.get_rationales(ids)
    # one vote per teacher (teachers.agreement): teach recorded every (rationale, teacher)
    # it produced, so a text two teachers wrote is one id but two votes
    passed = set(ids)
    by_ex: dict[str, list[tuple[str, str, str | None]]] = defaultdict(list)
    for r in o.step_info(k, "teach").get("rationales", []):
        if r["id"] in passed and r["id"] in rats:
            by_ex[r["example_id"]].append((r["id"], r.get("teacher") or rats[r["id"]]["source"], rats[r["id"]]["answer"]))
    golds = {e["id"]: e.get("answer") for e in o.store.list_examples("pool", state="all")}
    decisions: list[tuple[str, bool, float, str | None]] = []
    for eid, produced in by_ex.items():
        gold = golds.get(eid)
        verdict, frac = agree_rationales(produced, gold, o.fmt)
        why = "wrong_answer" if gold is not None else "no_majority"
        decisions += [(rid, ok, frac, None if ok else why) for rid, ok in verdict.items()]

    def write() -> None:
        for rid, flag, frac, why in decisions:
            o.store.set_accepted(rid, flag, frac, rejected_reason=why, run_id=o.run_id, k=k)

    accepted = [rid for rid, f, _, _ in decisions if f]
    counts: dict[str, int] = {}
    for *_, why in decisions:
        if why:
            counts[why] = counts.get(why, 0) + 1
    info = {"rationales": len(decisions), "accepted": len(accepted), "accepted_ids": accepted,
            "examples_accepted": len({rats[r]["example_id"] for r in accepted}), "rejected": counts,
            "agreement_mean": (sum(d[2] for d in decisions) / len(decisions)) if decisions else None}
    o.commit_step(k, "agree", info, write)
    return info


# --------------------------------------------------------------------------- version


def version(o: "Orchestrator", k: int) -> dict:
    """Dataset version k = version k-1 with the accepted rationales of this
    iteration: `replace` swaps an example's demonstrations for the new ones,
    `accumulate` adds them.  Optionally the gold rationale seeds examples no
    teacher got right (loop.gold_fallback)."""
    accepted = o.step_info(k, "agree").get("accepted_ids", [])
    rats = o.store.get_rationales(accepted)
    new: dict[str, list[str]] = defaultdict(list)
    for rid in accepted:
        if rid in rats and rid not in new[rats[rid]["example_id"]]:
            new[rats[rid]["example_id"]].append(rid)
    prev = o.store.dataset(o.run_id, k - 1) if k > 0 else {}
    changes: dict[str, list[tuple[str, float]] | None] = {}
    for eid, rids in new.items():
        if o.cfg.loop.combine == "accumulate" and eid in prev:
            old = [r for r, _ in prev[eid]]
            merged = old + [r for r in rids if r not in old]
            changes[eid] = [(r, 1.0) for r in merged]
        else:
            changes[eid] = [(r, 1.0) for r in rids]
    # An accepted rationale can be one the example already has (rationale ids
    # are content hashes: a self teacher that memorised its demonstration
    # writes it again word for word).  That is no change, and is not counted.
    changes = {eid: demos for eid, demos in changes.items() if list(prev.get(eid, [])) != demos}
    # `distillery data remove`: a removed example leaves the dataset from this version on
    removed = set(o.store.removed_examples())
    for eid in set(changes) | set(prev):
        if eid in removed:
            if eid in prev:
                changes[eid] = None
            else:
                changes.pop(eid, None)
    gold_added = 0
    gold_writes = []
    if o.cfg.loop.gold_fallback:
        for ex in o.store.list_examples("pool"):
            if ex["id"] in prev or ex["id"] in changes or not ex.get("rationale"):
                continue
            gold_writes.append(ex)
            gold_added += 1

    def write() -> None:
        for ex in gold_writes:
            rid = o.store.add_rationale(ex["id"], ex["rationale"], extract_answer(ex["rationale"], o.fmt), "gold",
                                        run_id=o.run_id, k=k)
            o.store.set_accepted(rid, True, 1.0, run_id=o.run_id, k=k)
            changes[ex["id"]] = [(rid, 1.0)]
        o.store.write_dataset_version(o.run_id, k, changes)

    size = len((set(prev) | set(changes) | {ex["id"] for ex in gold_writes}) - removed)
    info = {"changed": len(changes) + gold_added, "gold_added": gold_added, "combine": o.cfg.loop.combine,
            "size": size, "size_before": len(prev), "removed": sum(1 for d in changes.values() if d is None)}
    o.commit_step(k, "version", info, write)
    return info


# --------------------------------------------------------------------------- train


def train_step(o: "Orchestrator", k: int) -> dict:
    """Train the student adapter on version k (warm-started from k-1's adapter
    unless train.warm_start = false); checkpoints in runs/<run>/iter-<k>/."""
    from student.errors import StudentError
    from student.train import train

    wrong = {p["example_id"]: p["output"] for p in mined_errors(o, k)} if o.cfg.loss.contrastive > 0 else {}
    examples, lengths = build_train_examples(o, k, wrong)
    out_dir = o.iter_dir(k)
    if not examples:
        # nothing accepted yet: the adapter of k-1 carries over unchanged
        src = o.adapter_before(k)
        o.use_adapter(src)
        adapter_dir = out_dir / "adapter"
        o.student.save_adapter(adapter_dir, "student")
        sha = o.adapter_sha(adapter_dir)
        o.loaded_adapter = o.rel(adapter_dir)
        info = {"examples": 0, "steps": 0, "adapter": o.rel(adapter_dir), "adapter_sha256": sha, "skipped": True,
                "length": lengths.as_dict()}
        o.commit_step(k, "train", info, lambda: None)
        return info
    if k > 0 and o.step_info(k, "version").get("changed") == 0 and o.cfg.loop.on_unchanged == "skip":
        # Version k equals version k-1: training again would only add epochs on
        # the same data (measured: dev fell).  Iteration k keeps k-1's adapter;
        # evaluate then reuses k-1's scores, so it counts towards patience.
        src = o.adapter_before(k)
        info = {"examples": len(examples), "steps": 0, "adapter": src,
                "adapter_sha256": o.adapter_sha(src), "skipped": "unchanged"}
        o.commit_step(k, "train", info, lambda: None)
        return info
    start = o.adapter_before(k) if o.cfg.train.warm_start else None
    # "previous" teaches with iteration k-1's adapter whether or not the student
    # starts from it; "ema" and "base" start from a copy of the student
    teacher = o.adapter_before(k) if o.cfg.loss.teacher_adapter == "previous" else None
    o.progress("train", 0, None)
    bar = _TrainDisplay(o, k)
    if o.cfg.train.processes > 1:
        from loop.core.train_job import run_job, write_inputs

        spec = write_inputs(o, k, examples, start, teacher)
        try:
            with o.timed("train_call"):
                res = run_job(o, k, spec, bar.step)  # other processes: this one's weights stay as they are
        finally:
            bar.close()
    else:
        o.use_adapter(start)
        if teacher is not None and teacher != start:
            o.student.load_adapter(o.ws / teacher, "teacher")
        else:
            o.student.copy_adapter("student", "teacher")
        try:
            with o.timed("train_call"):
                res = train(o.student, examples, o.cfg.train, o.cfg.loss, out_dir, resume=True,
                            should_stop=o.stop_requested, progress=o.show_train_progress, on_step=bar.progress)
        except StudentError as e:
            raise RunFailure(f"training iteration {k} failed: {e}") from None
    if res.stopped:
        o.loaded_adapter = ("partial", k)  # mid-training weights: reload before any other use
        o.check_stop()
    if o.cfg.train.processes == 1:
        o.loaded_adapter = o.rel(res.adapter_dir)  # the in-memory weights are iteration k's adapter
    losses = [h.get("total") for h in res.history if h.get("total") is not None]
    for reason, rows in res.dropped.items():  # the trainer's own check (the loop's fitting leaves it nothing)
        lengths.drop(reason, rows)
    lengths.negatives_dropped += res.negatives_dropped
    info = {"examples": len(examples), "steps": res.steps, "adapter": o.rel(res.adapter_dir),
            "length": lengths.as_dict(), "processes": o.cfg.train.processes,
            "adapter_sha256": res.adapter_sha256,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            # every step's loss terms, for the report's curves: the trainer's copy lives only in the
            # newest checkpoint, which a re-run with another config deletes
            "history": [{t: h[t] for t in ("step", "total", "sft", "kd", "contrastive", "feature") if t in h}
                        for h in res.history]}
    o.commit_step(k, "train", info, lambda: None)
    return info


class _TrainDisplay:
    """Training progress for the heartbeat (`status`) and the trackers
    ([track]: both training paths end here, so both log the same), and, for a
    job, the trainer's own bar drawn from the steps the job streams."""

    def __init__(self, o: "Orchestrator", k: int):
        from loop.core.tracking import train_logger

        self.o = o
        self.bar = None
        self.track = train_logger(o, k)

    def progress(self, record: dict, total: int) -> None:
        self.o.progress("train", int(record["step"]), total)
        self.track(record)

    def step(self, record: dict, total: int) -> None:
        from student.train import progress_bar, update_bar

        if self.bar is None:
            self.bar = progress_bar(self.o.show_train_progress, total, int(record["step"]) - 1)
        update_bar(self.bar, record)
        self.progress(record, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# --------------------------------------------------------------------------- evaluate


def _answers_reusing_previous(o: "Orchestrator", k: int, examples: list[dict]) -> list[list[str]]:
    """Greedy answers of iteration k's adapter.  When it is k-1's adapter (an
    unchanged version that was not retrained) the answers k-1's evaluate
    already gave are the same texts: reuse them, answer only the rest."""
    prev = o.previous_iteration(k)
    same = prev is not None and prev.get("adapter_sha256") and \
        o.step_info(k, "train").get("adapter_sha256") == prev["adapter_sha256"]
    known: dict[str, str] = {}
    if same:
        known = {p["example_id"]: p["output"] for p in o.store.list_predictions(prev["run_id"], prev["k"], "eval")
                 if p["sample"] == 0}
    todo = [e for e in examples if e["id"] not in known]
    fresh = iter(answer_questions(o, "evaluate", todo, o.adapter_of(k), seed=o.seed(k, 4)) if todo else [])
    return [[known[e["id"]]] if e["id"] in known else next(fresh) for e in examples]


def evaluate(o: "Orchestrator", k: int) -> dict:
    """Score dev (and the pool when loop.eval_pool) with iteration k's adapter."""
    dev = o.store.list_examples("dev")
    # with mine_limit the pool is scored on the slice the next iteration mines,
    # so `mine` at k+1 reuses these predictions instead of answering again
    pool = o.pool_examples(k + 1) if o.cfg.loop.eval_pool else []
    both = dev + pool
    outs = _answers_reusing_previous(o, k, both)
    reference = o.demo_answers(k, [e["id"] for e in pool if e.get("answer") is None]) if pool else {}
    rows = score_rows(o, both, outs, reference)
    dev_ids = {e["id"] for e in dev}
    dev_rows = [r for r in rows if r["example_id"] in dev_ids]
    pool_rows = [r for r in rows if r["example_id"] not in dev_ids]
    acc, c, n = accuracy(dev_rows)
    pacc, pc, pn = accuracy(pool_rows)
    prev = o.previous_dev_predictions(k)
    now_ok = {r["example_id"]: r["correct"] for r in dev_rows if r["sample"] == 0}
    fixed = sorted(e for e, ok in now_ok.items() if ok and prev.get(e) is False)
    broken = sorted(e for e, ok in now_ok.items() if ok is False and prev.get(e) is True)
    info = {"dev_acc": acc, "dev_correct": c, "dev_n": n, "pool_acc": pacc, "pool_correct": pc, "pool_n": pn,
            "pool_errors": sum(1 for r in pool_rows if r["correct"] is False),
            "fixed": fixed, "broken": broken}
    o.commit_step(k, "evaluate", info, lambda: o.store.record_predictions(o.run_id, k, "eval", rows))
    return info


__all__ = ["baseline", "mine", "teach", "verify_step", "agree_step", "version", "train_step", "evaluate",
           "build_train_examples", "answer_questions", "score_rows", "accuracy", "mined_errors"]
