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

from student.scoring import answers_equal, extract_answer, is_correct

from .errors import RunFailure, UserError

if TYPE_CHECKING:  # pragma: no cover
    from .orchestrator import Orchestrator

NO_PREVIOUS = "(none: the student has not studied a solution for this question yet)"


# --------------------------------------------------------------------------- helpers


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)] or [[]]


def answer_questions(o: "Orchestrator", step: str, examples: list[dict], *, n_samples: int = 0, seed: int = 0) -> list[list[str]]:
    """Student answers (greedy first, then n_samples sampled) to the `student`
    template for each example, in fixed chunks so progress shows and a stop
    request is honoured between chunks.  The chunking depends only on the
    inputs, so the outputs are the same in a restarted process."""
    from student.generate import generate

    g = o.cfg.generation
    tpl = o.templates["student"]
    prompts = [tpl.render(question=e["question"], answer_format=o.fmt) for e in examples]
    out: list[list[str]] = []
    chunk = max(g.batch_size, 1)
    o.progress(step, 0, len(prompts))
    for i, part in enumerate(_chunks(prompts, chunk)):
        if not part:
            break
        o.check_stop()
        with o.timed("generate"):
            out.extend(
                generate(
                    o.student, part, n_samples=n_samples, temperature=g.temperature, top_p=g.top_p,
                    max_new_tokens=g.max_new_tokens, batch_size=g.batch_size, seed=seed + i,
                )
            )
        o.progress(step, len(out), len(prompts))
    return out


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
    o.use_adapter(None)
    dev = o.store.list_examples("dev")
    outs = answer_questions(o, "baseline", dev, seed=o.seed(k, 1))
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
        o.use_adapter(o.adapter_before(k))
        outs = answer_questions(o, "mine", pool, n_samples=o.cfg.generation.n_samples, seed=o.seed(k, 2))
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

    produced: list[dict] = []  # {"example_id", "text", "teacher", "call", "parent_id", "error_prediction"}
    stats = {"asked": len(jobs), "calls": 0, "cached": 0, "failed": 0, "requests": 0, "spend_usd": 0.0}
    budget_hit = None
    writers = []
    for t in o.cfg.teachers:
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

        for r in produced:
            ans = rationale_answer(r["text"], o.fmt)  # strict: an unmarked answer is not accepted
            rid = o.store.add_rationale(
                r["example_id"], r["text"], ans, r["teacher"], teacher_call=r["call"], parent_id=r["parent_id"],
                error_prediction=r["error_prediction"], run_id=o.run_id, k=k,
            )
            rows.append({"id": rid, "example_id": r["example_id"], "teacher": r["teacher"]})

    info = dict(stats, rationales=rows, refinements=len(jobs) if k > 0 else 0, budget_hit=budget_hit,
                templates=pv)
    o.commit_step(k, "teach", info, write)
    return info


def _self_teach(o: "Orchestrator", k: int, t, jobs: list[dict], stats: dict) -> list[dict]:
    """The `self` teacher: the student (adapter of k-1) samples `t.samples`
    rationales per prompt at `t.temperature` (greedy first).  Samples are cached
    like API calls, keyed by the adapter's hash, so a restart or a replay does
    not sample again."""
    from student.generate import generate
    from teachers import cache

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
            cache.cache_key(model=model, messages=j["messages"], params=params, template=j["template"].name,
                            prompt_version=j["prompt_version"], sample_index=s)
            for s in range(t.samples)
        ])
    hits = [[cache.get(o.store, key) for key in ks] for ks in keys]
    missing = [i for i, hs in enumerate(hits) if not all(h is not None and h.status == "ok" for h in hs)]
    missing_set = set(missing)
    texts: dict[int, list[str]] = {i: [h.text for h in hs] for i, hs in enumerate(hits) if i not in missing_set}
    stats["cached"] += sum(len(v) for v in texts.values())
    if missing:
        o.use_adapter(adapter)
        prompts = [jobs[i]["messages"] for i in missing]
        outs: list[list[str]] = []
        g = o.cfg.generation
        o.progress("teach", 0, len(prompts))
        for c, part in enumerate(_chunks(prompts, max(g.batch_size, 1))):
            if not part:
                break
            o.check_stop()
            with o.timed("generate"):
                outs.extend(generate(o.student, part, n_samples=t.samples - 1, temperature=t.temperature,
                                     top_p=params["top_p"], max_new_tokens=params["max_tokens"],
                                     batch_size=g.batch_size, seed=params["seed"] + c))
            o.progress("teach", len(outs), len(prompts))
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
                     request={"model": model, "messages": job["messages"], "params": params, "sample_index": s},
                     status="ok", text=r["text"], attempts=1, cost_usd=0.0, run_id=o.run_id, k=k)


def _api_teach(o: "Orchestrator", k: int, t, jobs: list[dict], stats: dict) -> tuple[list[dict], str | None]:
    """One LiteLLM teacher through the TeacherPool: `t.samples` requests per job.
    Failed requests are counted (and retried next run through the cache);
    a budget stop keeps what succeeded and ends the run after this iteration."""
    from teachers.errors import BudgetExceeded, TeacherAuthError, TeacherBadRequest, TeacherError
    from teachers.pool import TeacherRequest

    reqs = [
        TeacherRequest(teacher=t.name, messages=j["messages"], template=j["template"], sample_index=s,
                       run_id=o.run_id, k=k, tag=(i, s))
        for i, j in enumerate(jobs) for s in range(t.samples)
    ]
    if not reqs:
        return [], None
    o.check_stop()
    o.progress("teach", 0, len(reqs))
    budget_hit = None
    before = o.teacher_pool.http_attempts
    try:
        with o.timed("teacher"):
            results = o.teacher_pool.run_sync(reqs)
    except BudgetExceeded as e:
        results = getattr(e, "results", [])
        budget_hit = str(e)
        o.store.log_event(o.run_id, k, "teach", "budget", str(e))
    except (TeacherAuthError, TeacherBadRequest) as e:
        raise UserError(f"teacher {t.name!r} ({t.model}): {e}") from None
    except TeacherError as e:
        raise RunFailure(f"teacher {t.name!r} ({t.model}): {e}") from None
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


# --------------------------------------------------------------------------- agree


def agree_step(o: "Orchestrator", k: int) -> dict:
    """Accept a rationale when its answer equals gold or, without gold, the
    teachers' majority; store the agreement fraction per rationale."""
    from teachers.agreement import agree

    teach_info = o.step_info(k, "teach")
    ids = [r["id"] for r in teach_info.get("rationales", [])]
    rats = o.store.get_rationales(ids)
    by_ex: dict[str, list[dict]] = defaultdict(list)
    for rid in dict.fromkeys(ids):  # unique, in teach order
        if rid in rats:
            by_ex[rats[rid]["example_id"]].append(rats[rid])
    golds = {e["id"]: e.get("answer") for e in o.store.list_examples("pool")}
    decisions: list[tuple[str, bool, float]] = []
    for eid, rs in by_ex.items():
        flags, frac = agree([r["answer"] for r in rs], golds.get(eid), o.fmt)
        decisions += [(r["id"], bool(f), frac) for r, f in zip(rs, flags)]

    def write() -> None:
        for rid, flag, frac in decisions:
            o.store.set_accepted(rid, flag, frac)

    accepted = [rid for rid, f, _ in decisions if f]
    info = {"rationales": len(decisions), "accepted": len(accepted), "accepted_ids": accepted,
            "examples_accepted": len({rats[r]["example_id"] for r in accepted}),
            "agreement_mean": (sum(f for _, _, f in decisions) / len(decisions)) if decisions else None}
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
    changes: dict[str, list[tuple[str, float]]] = {}
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
            o.store.set_accepted(rid, True, 1.0)
            changes[ex["id"]] = [(rid, 1.0)]
        o.store.write_dataset_version(o.run_id, k, changes)

    size = len(set(prev) | set(changes) | {ex["id"] for ex in gold_writes})
    info = {"changed": len(changes) + gold_added, "gold_added": gold_added, "combine": o.cfg.loop.combine,
            "size": size, "size_before": len(prev)}
    o.commit_step(k, "version", info, write)
    return info


# --------------------------------------------------------------------------- train


def build_train_examples(o: "Orchestrator", k: int) -> list:
    """TrainExamples of dataset version k.

    prompt: the `student` template.  completion: the demonstration.
    teacher contexts (K = loss.num_contexts): the `demonstration` template
    holding this demonstration, then the example's other demonstrations
    (other teachers/samples), then few-shot contexts that put another pool
    question's demonstration before it.  negative: the `demonstration`
    template holding the student's mined wrong output (only when the
    contrastive term is on)."""
    from student.data import TrainExample

    data = o.store.dataset(o.run_id, k)
    rats = o.store.get_rationales({rid for demos in data.values() for rid, _ in demos})
    examples = {e["id"]: e for e in o.store.list_examples("pool")}
    wrong = {}
    if o.cfg.loss.contrastive > 0:
        wrong = {p["example_id"]: p["output"] for p in mined_errors(o, k)}
    st, dm = o.templates["student"], o.templates["demonstration"]
    K = o.cfg.loss.num_contexts
    ids = sorted(data)
    out = []
    for n, eid in enumerate(ids):
        ex = examples.get(eid)
        if ex is None:
            continue
        prompt = st.render(question=ex["question"], answer_format=o.fmt)
        texts = [rats[rid]["text"] for rid, _ in data[eid] if rid in rats]
        for (rid, w) in data[eid]:
            if rid not in rats:
                continue
            d = rats[rid]["text"]
            contexts = [dm.render(question=ex["question"], demonstration=d, answer_format=o.fmt)]
            contexts += [dm.render(question=ex["question"], demonstration=t, answer_format=o.fmt) for t in texts if t != d]
            shot = 1
            while len(contexts) < K and len(ids) > 1 and shot < len(ids):
                other = ids[(n + shot) % len(ids)]
                shot += 1
                oex, odemos = examples.get(other), data.get(other)
                if oex is None or not odemos or odemos[0][0] not in rats:
                    continue
                contexts.append(
                    [{"role": "user", "content": oex["question"]},
                     {"role": "assistant", "content": rats[odemos[0][0]]["text"]}]
                    + dm.render(question=ex["question"], demonstration=d, answer_format=o.fmt)
                )
            neg = dm.render(question=ex["question"], demonstration=wrong[eid], answer_format=o.fmt) if eid in wrong else None
            out.append(TrainExample(prompt=prompt, completion=d, teacher_prompts=contexts[:K], negative_prompt=neg, weight=w))
    return out


def train_step(o: "Orchestrator", k: int) -> dict:
    """Train the student adapter on version k (warm-started from k-1's adapter
    unless train.warm_start = false); checkpoints in runs/<run>/iter-<k>/."""
    from student.errors import StudentError
    from student.train import train

    examples = build_train_examples(o, k)
    out_dir = o.iter_dir(k)
    if not examples:
        # nothing accepted yet: the adapter of k-1 carries over unchanged
        src = o.adapter_before(k)
        o.use_adapter(src)
        adapter_dir = out_dir / "adapter"
        o.student.save_adapter(adapter_dir, "student")
        sha = o.adapter_sha(adapter_dir)
        o.loaded_adapter = o.rel(adapter_dir)
        info = {"examples": 0, "steps": 0, "adapter": o.rel(adapter_dir), "adapter_sha256": sha, "skipped": True}
        o.commit_step(k, "train", info, lambda: None)
        return info
    start = o.adapter_before(k) if o.cfg.train.warm_start else None
    o.use_adapter(start)
    o.student.copy_adapter("student", "teacher")  # "previous"/"ema" teachers start from the same weights
    o.progress("train", 0, None)
    try:
        with o.timed("train_call"):
            res = train(o.student, examples, o.cfg.train, o.cfg.loss, out_dir, resume=True,
                        should_stop=o.stop_requested, progress=o.show_train_progress)
    except StudentError as e:
        raise RunFailure(f"training iteration {k} failed: {e}") from None
    if res.stopped:
        o.loaded_adapter = ("partial", k)  # mid-training weights: reload before any other use
        o.check_stop()
    o.loaded_adapter = o.rel(res.adapter_dir)  # the in-memory weights are iteration k's adapter
    losses = [h.get("total") for h in res.history if h.get("total") is not None]
    info = {"examples": len(examples), "steps": res.steps, "adapter": o.rel(res.adapter_dir),
            "adapter_sha256": res.adapter_sha256,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None}
    o.commit_step(k, "train", info, lambda: None)
    return info


# --------------------------------------------------------------------------- evaluate


def evaluate(o: "Orchestrator", k: int) -> dict:
    """Score dev (and the pool when loop.eval_pool) with iteration k's adapter."""
    o.use_adapter(o.adapter_of(k))
    dev = o.store.list_examples("dev")
    # with mine_limit the pool is scored on the slice the next iteration mines,
    # so `mine` at k+1 reuses these predictions instead of answering again
    pool = o.pool_examples(k + 1) if o.cfg.loop.eval_pool else []
    both = dev + pool
    outs = answer_questions(o, "evaluate", both, seed=o.seed(k, 4))
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


__all__ = ["baseline", "mine", "teach", "agree_step", "version", "train_step", "evaluate",
           "build_train_examples", "answer_questions", "score_rows", "accuracy", "mined_errors"]
