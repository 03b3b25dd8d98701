"""`distillery report -o report.html`: one self-contained HTML page per run.

No scripts, fonts or images are fetched: the plots are inline SVG and the
style is inline CSS, so the file can be mailed or archived as is.  It shows
dev (and pool) accuracy per iteration against the baseline; the training loss
curves, one panel per loss term and one line per iteration (the train step's
per-step `history`); the per-iteration table (errors, refinements, spend,
time); teacher calls, tokens and cost per iteration and teacher; rejections
by reason; and for every iteration each example that flipped (fixed or
broken, dev and pool) as a drill-down: the question, the student's answer
before, the refinements asked for it with their verdicts (why a rejected one
was rejected), the demonstration trained on, and the answer after training.
Iterations link to each other by anchors.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from teachers.verify import REASONS

from loop.report.summary import _num, _ordered, best_k, done_iterations, pct, reasons, secs, signed_pts

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d232a;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#556;font-size:.92em}table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{border-bottom:1px solid #e4e6ea;padding:5px 8px;text-align:right;vertical-align:top}
th{background:#f4f6f8}td.l,th.l{text-align:left}.up{color:#0a7d32}.down{color:#b3261e}
.ex{border:1px solid #e4e6ea;border-radius:6px;padding:8px 12px;margin:8px 0;background:#fbfcfd}
pre{white-space:pre-wrap;background:#f4f6f8;padding:6px 8px;border-radius:4px;margin:4px 0;font-size:.88em}
nav a{margin-right:12px}.tag{display:inline-block;padding:1px 6px;border-radius:8px;font-size:.8em;background:#eef}
.panels{display:flex;flex-wrap:wrap;gap:12px}summary{cursor:pointer}details.ex[open]>summary{margin-bottom:6px}
.tag.fixed,.tag.accepted{background:#d3f9d8}.tag.broken,.tag.rejected{background:#ffe3e3}
.story{border-left:3px solid #dde;margin:6px 0 6px 4px;padding-left:10px}.story h4{margin:8px 0 2px;font-size:.95em}
.bar{display:inline-block;height:9px;background:#f08c00;border-radius:2px;vertical-align:middle;margin-right:6px}
"""

# one colour per iteration in the loss panels (cycled past ten)
_ITER_COLORS = ("#1f6feb", "#e8590c", "#2b8a3e", "#ae3ec9", "#c92a2a", "#0b7285", "#5c940d", "#d6336c", "#495057", "#f59f00")
_TERMS = ("total", "sft", "kd", "contrastive", "feature")  # the train step's history keys (loop/core/steps/train.py)
_MAX_TEXT = 1500  # characters of one output or rationale shown in a drill-down


def plot_svg(points: list[tuple[str, float | None]], pool: list[tuple[str, float | None]] | None = None,
             width: int = 720, height: int = 300) -> str:
    """Line plot of accuracy (0..1) over labelled x positions; inline SVG."""
    left, right, top, bottom = 56, 20, 20, 44
    w, h = width - left - right, height - top - bottom
    n = max(len(points), 2)
    vals = [v for _, v in points + (pool or []) if v is not None]
    # the y axis ends at the next 10% above the data (labels stay round numbers)
    hi = min(1.0, math.ceil(max(vals + [0.05]) * 1.1 * 10) / 10) if vals else 1.0

    def x(i: int) -> float:
        return left + (w * i / (n - 1))

    def y(v: float) -> float:
        return top + h - h * (v / hi)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" role="img" aria-label="dev accuracy per iteration">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff"/>']
    for j in range(6):  # grid and y labels
        v = hi * j / 5
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + w}" y2="{y(v):.1f}" stroke="#e6e8eb"/>')
        parts.append(f'<text x="{left - 8}" y="{y(v) + 4:.1f}" font-size="11" text-anchor="end" fill="#556">{100 * v:.0f}%</text>')
    for i, (label, _) in enumerate(points):
        parts.append(f'<text x="{x(i):.1f}" y="{top + h + 18}" font-size="11" text-anchor="middle" fill="#556">{escape(label)}</text>')
    parts.append(f'<text x="{left + w / 2:.1f}" y="{height - 6}" font-size="12" text-anchor="middle" fill="#334">iteration</text>')
    parts.append(f'<text x="14" y="{top + h / 2:.1f}" font-size="12" text-anchor="middle" fill="#334" transform="rotate(-90 14 {top + h / 2:.1f})">accuracy</text>')

    def series(pts, color, dash=""):
        xy = [(x(i), y(v)) for i, (_, v) in enumerate(pts) if v is not None]
        if len(xy) > 1:
            d = " ".join(f"{'M' if j == 0 else 'L'}{a:.1f},{b:.1f}" for j, (a, b) in enumerate(xy))
            parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2.5" {dash}/>')
        for i, (label, v) in enumerate(pts):
            if v is not None:
                parts.append(f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="4.5" fill="{color}"><title>{escape(label)}: {100 * v:.1f}%</title></circle>')

    if pool:
        series(pool, "#9aa5b1", 'stroke-dasharray="6 4"')
    series(points, "#1f6feb")
    base = points[0][1] if points else None
    if base is not None:
        parts.append(f'<line x1="{left}" y1="{y(base):.1f}" x2="{left + w}" y2="{y(base):.1f}" stroke="#b3261e" stroke-dasharray="3 3"/>')
        parts.append(f'<text x="{left + w - 4}" y="{y(base) - 5:.1f}" font-size="11" text-anchor="end" fill="#b3261e">baseline {100 * base:.1f}%</text>')
    parts.append(f'<g font-size="12"><rect x="{left + 10}" y="{top + 4}" width="12" height="4" fill="#1f6feb"/><text x="{left + 28}" y="{top + 10}">dev</text>')
    if pool:
        parts.append(f'<rect x="{left + 64}" y="{top + 4}" width="12" height="4" fill="#9aa5b1"/><text x="{left + 82}" y="{top + 10}">pool</text>')
    parts.append("</g></svg>")
    return "".join(parts)


def curves_svg(term: str, series: list[tuple[int, list[tuple[float, float]]]], width: int = 536, height: int = 230) -> str:
    """One loss term over optimizer steps, one line per iteration k; inline SVG.
    The y axis spans the data (a loss near 4.7 that moves by 0.05 must not look flat)."""
    left, right, top, bottom = 58, 14, 30, 38
    w, h = width - left - right, height - top - bottom
    xs = [a for _, pts in series for a, _ in pts]
    ys = [b for _, pts in series for _, b in pts]
    x0, x1 = min(xs), max(xs)
    x1 = x1 if x1 > x0 else x0 + 1
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or abs(y1) * 0.05 or 1.0
    y0, y1 = y0 - pad, y1 + pad

    def x(v: float) -> float:
        return left + w * (v - x0) / (x1 - x0)

    def y(v: float) -> float:
        return top + h - h * (v - y0) / (y1 - y0)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
             f'role="img" aria-label="training loss: {escape(term)}" class="loss">',
             f'<rect x="0" y="0" width="{width}" height="{height}" fill="#fff" stroke="#e4e6ea"/>',
             f'<text x="{left}" y="18" font-size="13" font-weight="bold" fill="#1d232a">{escape(term)}</text>']
    for j in range(5):
        v = y0 + (y1 - y0) * j / 4
        parts.append(f'<line x1="{left}" y1="{y(v):.1f}" x2="{left + w}" y2="{y(v):.1f}" stroke="#eceef1"/>')
        parts.append(f'<text x="{left - 6}" y="{y(v) + 4:.1f}" font-size="10" text-anchor="end" fill="#556">{v:.4g}</text>')
    step = max(1, math.ceil((x1 - x0) / 6))
    for v in range(int(x0), int(x1) + 1, step):
        parts.append(f'<text x="{x(v):.1f}" y="{top + h + 15}" font-size="10" text-anchor="middle" fill="#556">{v}</text>')
    parts.append(f'<text x="{left + w / 2:.1f}" y="{height - 5}" font-size="11" text-anchor="middle" fill="#334">optimizer step</text>')
    for k, pts in series:
        color = _ITER_COLORS[k % len(_ITER_COLORS)]
        d = " ".join(f"{'M' if j == 0 else 'L'}{x(a):.1f},{y(b):.1f}" for j, (a, b) in enumerate(pts))
        parts.append(f'<path d="{d}" fill="none" stroke="{color}" stroke-width="2"/>')
        if len(pts) <= 60:  # points with their values on hover, while they stay apart
            parts += [f'<circle cx="{x(a):.1f}" cy="{y(b):.1f}" r="3" fill="{color}"><title>iteration {k}, step {a:g}: '
                      f'{b:.5g}</title></circle>' for a, b in pts]
    parts.append("</svg>")
    return "".join(parts)


def _owner(run: dict, it: dict) -> int:
    return it.get("run_id", run["id"])


def _preds(store, owner: int, k: int, phase: str) -> dict[str, dict]:
    return {p["example_id"]: p for p in store.list_predictions(owner, k, phase) if p["sample"] == 0}


def _train_info(store, owner: int, k: int) -> dict:
    return next((d["info"] or {} for d in store.step_details(owner, k) if d["step"] == "train"), {})


# --------------------------------------------------------------------------- sections


def _loss_section(store, run: dict, its: list[dict]) -> list[str]:
    hist = {it["k"]: _train_info(store, _owner(run, it), it["k"]).get("history") or [] for it in its}
    trained = {k: rows for k, rows in hist.items() if rows}
    h = ["<h2 id=loss>Training loss per iteration</h2>"]
    untrained = [str(k) for k in hist if k not in trained]
    if not trained:
        return h + ["<p class=meta>No loss history: no iteration trained (or this run predates the per-step history "
                    "that the train step records).</p>"]
    terms = [t for t in _TERMS if any(t in r for rows in trained.values() for r in rows)]
    h.append("<p class=meta>Every term of the training objective per optimizer step (the loss weights multiply them "
             "in the total); one line per iteration."
             + (f" Not trained: iteration {', '.join(untrained)} (nothing accepted, or the dataset did not change)."
                if untrained else "") + "</p>")
    # one legend for every panel: an iteration has the same colour in each
    h.append("<p class=legend>" + " ".join(f"<span style='color:{_ITER_COLORS[k % len(_ITER_COLORS)]}'>&#9632;</span> "
                                         f"iteration {k}" for k in trained) + "</p><div class=panels>")
    for term in terms:
        series = [(k, [(r["step"], r[term]) for r in rows if r.get(term) is not None]) for k, rows in trained.items()]
        h.append(curves_svg(term, [(k, pts) for k, pts in series if pts]))
    h.append("</div>")
    return h


def _teacher_section(store, run: dict, its: list[dict]) -> list[str]:
    h = ["<h2 id=teachers>Teacher calls, tokens and cost per iteration</h2>",
         "<table><tr><th>k</th><th class=l>teacher</th><th>calls</th><th>new</th><th>cached</th><th>failed</th>"
         "<th>requests</th><th>prompt tokens</th><th>completion tokens</th><th>latency p50 / p95</th><th>cost $</th></tr>"]
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0, "calls": 0}
    for it in its:
        stats = store.teacher_call_stats(run["id"], it["k"])
        for name, s in stats.items():
            lat = "-" if s.get("latency_p50_s") is None else f"{s['latency_p50_s']:.2f}s / {s['latency_p95_s']:.2f}s"
            h.append(f"<tr><td><a href='#iter-{it['k']}'>{it['k']}</a></td><td class=l>{escape(name)}</td><td>{s['calls']}</td>"
                     f"<td>{s['ok']}</td><td>{s['cached']}</td><td>{s['failed']}</td><td>{s['requests']}</td>"
                     f"<td>{s['prompt_tokens']}</td><td>{s['completion_tokens']}</td><td>{lat}</td><td>{s['cost_usd']:.4f}</td></tr>")
            for key in totals:
                totals[key] += s[key]
        if not stats:
            h.append(f"<tr><td>{it['k']}</td><td class=l>-</td><td>0</td><td></td><td></td><td></td><td></td><td></td>"
                     "<td></td><td></td><td></td></tr>")
    h.append(f"<tr><th>all</th><th class=l></th><th>{totals['calls']}</th><th></th><th></th><th></th><th></th>"
             f"<th>{totals['prompt_tokens']}</th><th>{totals['completion_tokens']}</th><th></th><th>{totals['cost_usd']:.4f}</th></tr>")
    h.append("</table><p class=meta>new: answered and recorded at this iteration (tokens and cost are theirs); cached: "
             "answers reused from an earlier call, which cost nothing; requests: HTTP requests, retries included.</p>")
    return h


def _rejection_section(its: list[dict]) -> list[str]:
    per = {it["k"]: it["metrics"].get("rejected") or {} for it in its}
    total: dict[str, int] = {}
    for counts in per.values():
        for why, n in counts.items():
            total[why] = total.get(why, 0) + n
    h = ["<h2 id=rejections>Rejections by reason</h2>"]
    if not total:
        return h + ["<p class=meta>No rationale was rejected.</p>"]
    top = max(total.values())
    h.append("<table><tr><th class=l>reason</th><th class=l>what it means</th>"
             + "".join(f"<th><a href='#iter-{k}'>k={k}</a></th>" for k in per) + "<th class=l>all</th></tr>")
    for why, n in sorted(total.items(), key=lambda kv: (-kv[1], kv[0])):
        h.append(f"<tr><td class=l><code>{escape(why)}</code></td><td class=l>{escape(REASONS.get(why, ''))}</td>"
                 + "".join(f"<td>{per[k].get(why, '')}</td>" for k in per)
                 + f"<td class=l><span class=bar style='width:{max(2, round(120 * n / top))}px'></span>{n}</td></tr>")
    h.append("</table>")
    return h


def _flips(before: dict[str, dict], after: dict[str, dict]) -> list[tuple[str, str]]:
    """(example id, "fixed" | "broken") for greedy answers whose correctness
    changed; for dev this is evaluate's fixed/broken (the same comparison)."""
    out = []
    for eid, p in after.items():
        was = before.get(eid, {}).get("correct")
        if was is False and p["correct"] is True:
            out.append((eid, "fixed"))
        elif was is True and p["correct"] is False:
            out.append((eid, "broken"))
    return sorted(out, key=lambda x: (x[1] != "fixed", x[0]))


def _ans(p: dict) -> str:
    a = p.get("answer")
    return "no answer" if a is None else escape(str(a))


def _pre(text: str | None) -> str:
    text = text or ""
    more = f"\n… ({len(text) - _MAX_TEXT} more characters)" if len(text) > _MAX_TEXT else ""
    return f"<pre>{escape(text[:_MAX_TEXT] + more)}</pre>"


def _drilldown(store, run: dict, k: int, eid: str, label: str, ex: dict, before: dict, after: dict,
               told: dict[str, list[dict]], changed: set[str], is_open: bool) -> str:
    """One flipped example's story at iteration k, as a <details> element.
    `told`: `_checked` of k; `changed`: the examples whose demonstrations version k changed."""
    dev = ex.get("split") == "dev"
    q = ex.get("question", eid)
    short = q if len(q) <= 110 else q[:107] + "…"
    gold = escape(str(ex.get("answer")))
    when = "baseline" if k == 0 else f"iteration {k - 1}"
    h = [f"<details class=ex id='ex-{k}-{escape(eid)}'{' open' if is_open else ''}><summary>"
         f"<span class='tag {label}'>{label}</span> <span class=tag>{'dev' if dev else 'pool'}</span> "
         f"{escape(short)} <b>{_ans(before)} → {_ans(after)}</b> (gold {gold})</summary>",
         f"<div class=story><h4>Question</h4>{_pre(q)}<div class=meta>gold answer {gold} · example <code>{escape(eid)}</code></div>",
         f"<h4>The student's answer before ({when}): {_ans(before)}"
         f"{' (wrong)' if before.get('correct') is False else ' (right)' if before.get('correct') else ''}</h4>{_pre(before.get('output'))}"]
    if dev:
        h.append("<h4>Refinement</h4><p class=meta>A dev example is held out: no teacher is asked about it and it is "
                 "never trained on; it flipped through what the student learned from the pool.</p>")
    else:
        asked = told.get(eid, [])
        what = "Seed rationales" if k == 0 else "Refinements"  # iteration 0 asks for first rationales
        h.append(f"<h4>{what} at iteration {k} ({len(asked)})</h4>")
        if not asked:
            h.append("<p class=meta>No rationale for it was checked at this iteration.</p>")
        for r in asked:
            verdict = ("<span class='tag accepted'>accepted</span>" if r["verdict"]["accepted"] else
                       f"<span class='tag rejected'>rejected</span> <code>{escape(str(r['verdict']['rejected_reason']))}</code>: "
                       f"{escape(REASONS.get(r['verdict']['rejected_reason'] or '', ''))}")
            wrong = ""
            if r.get("error_prediction"):
                p = store.get_prediction(r["error_prediction"]) or {}
                wrong = f" · written for the wrong answer: {_ans(p)}"
            h.append(f"<div>{verdict} <span class=meta>from {escape(r['source'])}{wrong}</span>{_pre(r['text'])}</div>")
        demos = store.dataset_for(run["id"], k, [eid]).get(eid) or []
        texts = store.get_rationales([rid for rid, _ in demos])
        h.append(f"<h4>Trained on (dataset version {k}{', changed at this iteration' if eid in changed else ', unchanged'})</h4>"
                 + ("".join(_pre((texts.get(rid) or {}).get("text")) for rid, _ in demos) if demos
                    else "<p class=meta>Not in the dataset: no rationale for it accepted yet.</p>"))
    h.append(f"<h4>The answer after training (iteration {k}): {_ans(after)}"
             f"{' (right)' if after.get('correct') else ' (wrong)'}</h4>{_pre(after.get('output'))}</div></details>")
    return "".join(h)


def _checked(store, owner: int, k: int) -> dict[str, list[dict]]:
    """The rationales verify/agree judged at iteration k, per example, each with
    that iteration's verdict (a text's latest verdict may be a later one's)."""
    verdicts = store.verdicts(run_id=owner, k=k)
    rats = store.get_rationales([v["rationale_id"] for v in verdicts])
    out: dict[str, list[dict]] = {}
    for v in verdicts:
        r = rats.get(v["rationale_id"])
        if r:
            out.setdefault(r["example_id"], []).append(r | {"verdict": v})
    return out


# --------------------------------------------------------------------------- the page


def build_report(store, run_name: str | None) -> str:
    runs = store.list_runs()
    if not runs:
        from loop.errors import UserError

        raise UserError("no runs in this workspace yet; start one with `distillery run`")
    run = store.find_run(run_name) if run_name else runs[-1]
    if run is None:
        from loop.errors import UserError

        raise UserError(f"no run named {run_name!r}; runs in this workspace: "
                        f"{', '.join(r['name'] for r in runs)} (see `distillery runs`)")
    its = done_iterations(store, run)
    base = (its[0]["metrics"].get("baseline_dev_acc") if its else None)
    cfg = run.get("config") or {}
    examples = {e["id"]: e for e in store.list_examples(state="all")}

    pts = [("base", base)] + [(str(it["k"]), it["metrics"].get("dev_acc")) for it in its]
    pool_pts = [("base", None)] + [(str(it["k"]), it["metrics"].get("pool_acc")) for it in its]
    h: list[str] = ["<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
                    f"<title>Distillery report: {escape(run['name'])}</title><style>{_CSS}</style></head><body>"]
    teachers = ", ".join(f"{escape(t.get('name', '?'))} ({escape(t.get('model', '?'))})" for t in cfg.get("teachers", []))
    h.append(f"<h1>Distillery run <code>{escape(run['name'])}</code></h1>")
    parent = ""
    if run.get("parent_run") is not None:
        pr = store.get_run(run["parent_run"])
        parent = f" · replay of <b>{escape(pr['name'])}</b> from iteration {run['parent_k']}"
    loss = cfg.get("loss", {})
    h.append(f"<p class=meta>status {escape(str(run['status']))} · created {escape(str(run['created']))}{parent}<br>"
             f"student <b>{escape(str(cfg.get('student', {}).get('name')))}</b> · teachers {teachers} · "
             f"task {escape(str(cfg.get('task', {}).get('kind')))} · combine {escape(str(cfg.get('loop', {}).get('combine')))}"
             f" · loss weights " + escape(", ".join(f"{t} {loss.get(t)}" for t in ("sft", "kd", "contrastive", "feature")))
             + "</p>")
    best = best_k(its)
    result = next((it["metrics"].get("dev_acc") for it in its if it["k"] == best), None)
    if its:
        gain = None if result is None or base is None else result - base
        cls = "up" if (gain or 0) > 0 else "down" if (gain or 0) < 0 else ""
        h.append(f"<p>Dev accuracy <b>{pct(base)}</b> → <b>{pct(result)}</b> "
                 f"<span class={cls}>({signed_pts(gain)})</span>: the result is <b>iteration {best}</b>, the best "
                 f"of {len(its)} iterations (stopped: {escape(str(its[-1].get('stop_reason') or 'not yet'))}); "
                 f"teacher spend ${store.spend(run['id']):.4f}.</p>")
    h.append("<nav><a href='#plot'>accuracy</a><a href='#loss'>loss</a><a href='#table'>iterations</a>"
             "<a href='#teachers'>teachers</a><a href='#rejections'>rejections</a>"
             + (f"<a href='#iter-{its[0]['k']}'>examples that flipped</a>" if its else "") + "</nav>")
    h.append("<h2 id=plot>Dev accuracy per iteration</h2>")
    h.append(plot_svg(pts, pool_pts))
    h += _loss_section(store, run, its)
    h.append("<h2 id=table>Iterations</h2><table><tr><th>k</th><th>dev acc</th><th>change</th><th>pool acc</th>"
             "<th>errors mined</th><th>refinements asked / accepted</th><th>rationales accepted</th><th>dataset</th>"
             "<th>teacher calls (cached)</th><th>spend $</th><th>time</th><th class=l>stop</th></tr>")
    h.append(f"<tr><td>base</td><td>{pct(base)}</td><td></td><td></td><td></td><td></td><td></td><td></td><td></td><td></td><td></td><td></td></tr>")
    for it in its:
        m = it["metrics"]
        d = m.get("delta")
        cls = "up" if (d or 0) > 0 else "down" if (d or 0) < 0 else ""
        times = _ordered(m.get("times") or {})
        tt = sum(v for v in times.values() if v)
        inh = " <span class=tag>inherited</span>" if it.get("inherited_from") else ""
        inh += " <span class=tag>best</span>" if it["k"] == best else ""
        h.append(
            f"<tr><td><a href='#iter-{it['k']}'>{it['k']}</a>{inh}</td><td>{pct(m.get('dev_acc'))}</td>"
            f"<td class={cls}>{signed_pts(d)}</td><td>{pct(m.get('pool_acc'))}</td><td>{m.get('errors', '-')}</td>"
            f"<td>{m.get('refinements_asked', 0)} / {m.get('refinements_accepted', 0)}</td>"
            f"<td>{m.get('accepted', '-')} / {m.get('rationales', '-')}</td><td>{m.get('dataset_size', '-')}</td>"
            f"<td>{m.get('teacher_calls', '-')} ({m.get('teacher_cached', '-')})</td><td>{(m.get('spend_usd') or 0):.4f}</td>"
            f"<td title='{escape(', '.join(f'{s} {secs(v)}' for s, v in times.items()))}'>{secs(tt)}</td>"
            f"<td class=l>{escape(it.get('stop_reason') or '')}</td></tr>")
    h.append("</table>")
    h += _teacher_section(store, run, its)
    h += _rejection_section(its)

    # iteration 0 starts from the untrained student: its dev baseline and the pool answers it mined
    before = (_preds(store, _owner(run, its[0]), 0, "mine") | _preds(store, _owner(run, its[0]), 0, "baseline")) if its else {}
    first_open = True
    for i, it in enumerate(its):
        m = it["metrics"]
        k, owner = it["k"], _owner(run, it)
        nav = []
        if i > 0:
            nav.append(f"<a href='#iter-{its[i - 1]['k']}'>← iteration {its[i - 1]['k']}</a>")
        nav.append("<a href='#table'>table</a>")
        if i + 1 < len(its):
            nav.append(f"<a href='#iter-{its[i + 1]['k']}'>iteration {its[i + 1]['k']} →</a>")
        h.append(f"<h2 id='iter-{k}'>Iteration {k}</h2><nav>{' '.join(nav)}</nav>")
        times = _ordered(m.get("times") or {})
        h.append(f"<p class=meta>dev {pct(m.get('dev_acc'))} ({signed_pts(m.get('delta'))}) · errors {m.get('errors')} "
                 f"· refinements {m.get('refinements_asked', 0)} asked, {m.get('refinements_accepted', 0)} accepted · "
                 f"rejected: {escape(reasons(m.get('rejected')))} · "
                 f"train loss {_num(m.get('loss_first'))} → {_num(m.get('loss_last'))} · "
                 + escape(", ".join(f"{s} {secs(v)}" for s, v in times.items())) + "</p>")
        now = _preds(store, owner, k, "eval")
        flips = _flips(before, now)
        n_dev = sum(1 for eid, _ in flips if examples.get(eid, {}).get("split") == "dev")
        fixed = sum(1 for _, label in flips if label == "fixed")
        h.append(f"<h3>Examples that flipped: {fixed} fixed, {len(flips) - fixed} broken "
                 f"({n_dev} dev, {len(flips) - n_dev} pool)</h3>")
        told = _checked(store, owner, k) if flips else {}
        changed = set(store.changed_examples(owner, k)) if flips else set()
        for eid, label in flips:
            h.append(_drilldown(store, run, k, eid, label, examples.get(eid, {}), before.get(eid, {}), now[eid],
                                told, changed, first_open))
            first_open = False  # the first drill-down of the page is open: it shows what the others hold
        if k > 0:
            # accepted at this iteration (a text's latest verdict may be a later one's)
            ok = [v["rationale_id"] for v in store.verdicts(run_id=owner, k=k) if v["accepted"]]
            refined = [r for r in store.get_rationales(ok).values() if r.get("error_prediction")]
            if refined:
                h.append(f"<h3>Refinements accepted ({len(refined)}; first {min(len(refined), 5)} shown)</h3>")
            for r in refined[:5]:
                ex = examples.get(r["example_id"], {})
                wrong = store.get_prediction(r["error_prediction"]) or {}
                h.append(f"<div class=ex><b>{escape(ex.get('question', ''))}</b> (gold {escape(str(ex.get('answer')))}, "
                         f"source {escape(r['source'])})<div>student's wrong answer ({_ans(wrong)}):"
                         f"<pre>{escape((wrong.get('output') or '')[:400])}</pre></div>"
                         f"<div>refined demonstration:<pre>{escape(r['text'][:600])}</pre></div></div>")
        before = now
    h.append("<p class=meta>Generated by <code>distillery report</code>.</p></body></html>")
    return "".join(h)


def write_report(store, run_name: str | None, output: str | Path) -> Path:
    out = Path(output)
    html = build_report(store, run_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(out)
    return out


__all__ = ["build_report", "write_report", "plot_svg", "curves_svg"]
