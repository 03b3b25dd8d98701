"""`distillery report -o report.html`: one self-contained HTML page per run.

No scripts, fonts or images are fetched: the plot is inline SVG and the style
is inline CSS, so the file can be mailed or archived as is.  It shows dev (and
pool) accuracy per iteration against the baseline, the per-iteration table
(errors, refinements, spend, time), and for every iteration the dev examples
that flipped (fixed / broken, with both answers) and a few refinements with
the wrong answer they address; iterations link to each other by anchors.
"""

from __future__ import annotations

import math
from html import escape
from pathlib import Path

from .summary import _num, _ordered, best_k, done_iterations, pct, reasons, secs, signed_pts

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1100px;color:#1d232a;padding:0 16px}
h1{font-size:1.6em;margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #dde;padding-bottom:4px}
.meta{color:#556;font-size:.92em}table{border-collapse:collapse;width:100%;font-size:.92em}
th,td{border-bottom:1px solid #e4e6ea;padding:5px 8px;text-align:right;vertical-align:top}
th{background:#f4f6f8}td.l,th.l{text-align:left}.up{color:#0a7d32}.down{color:#b3261e}
.ex{border:1px solid #e4e6ea;border-radius:6px;padding:8px 12px;margin:8px 0;background:#fbfcfd}
pre{white-space:pre-wrap;background:#f4f6f8;padding:6px 8px;border-radius:4px;margin:4px 0;font-size:.88em}
nav a{margin-right:12px}.tag{display:inline-block;padding:1px 6px;border-radius:8px;font-size:.8em;background:#eef}
"""


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


def _preds(store, run: dict, it: dict, phase: str) -> dict[str, dict]:
    owner = it.get("run_id", run["id"])
    return {p["example_id"]: p for p in store.list_predictions(owner, it["k"], phase) if p["sample"] == 0}


def build_report(store, run_name: str | None) -> str:
    runs = store.list_runs()
    if not runs:
        from .errors import UserError

        raise UserError("no runs in this workspace yet; start one with `distillery run`")
    run = store.find_run(run_name) if run_name else runs[-1]
    if run is None:
        from .errors import UserError

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
    h.append(f"<p class=meta>status {escape(str(run['status']))} · created {escape(str(run['created']))}{parent}<br>"
             f"student <b>{escape(str(cfg.get('student', {}).get('name')))}</b> · teachers {teachers} · "
             f"task {escape(str(cfg.get('task', {}).get('kind')))} · combine {escape(str(cfg.get('loop', {}).get('combine')))}</p>")
    best = best_k(its)
    result = next((it["metrics"].get("dev_acc") for it in its if it["k"] == best), None)
    if its:
        gain = None if result is None or base is None else result - base
        cls = "up" if (gain or 0) > 0 else "down" if (gain or 0) < 0 else ""
        h.append(f"<p>Dev accuracy <b>{pct(base)}</b> → <b>{pct(result)}</b> "
                 f"<span class={cls}>({signed_pts(gain)})</span>: the result is <b>iteration {best}</b>, the best "
                 f"of {len(its)} iterations (stopped: {escape(str(its[-1].get('stop_reason') or 'not yet'))}); "
                 f"teacher spend ${store.spend(run['id']):.4f}.</p>")
    h.append("<h2 id=plot>Dev accuracy per iteration</h2>")
    h.append(plot_svg(pts, pool_pts))
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

    prev_preds = {p["example_id"]: p for p in store.list_predictions(its[0].get("run_id", run["id"]), 0, "baseline")
                  if p["sample"] == 0} if its else {}
    for i, it in enumerate(its):
        m = it["metrics"]
        k = it["k"]
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
        now = _preds(store, run, it, "eval")
        fixed, broken = m.get("fixed") or [], m.get("broken") or []
        h.append(f"<h3>Dev examples that flipped: {len(fixed)} fixed, {len(broken)} broken</h3>")
        for label, ids in (("fixed", fixed), ("broken", broken)):
            for eid in ids[:12]:
                ex = examples.get(eid, {})
                before, after = prev_preds.get(eid, {}), now.get(eid, {})
                h.append(f"<div class=ex id='ex-{k}-{escape(eid[:12])}'><span class=tag>{label}</span> "
                         f"<b>{escape(ex.get('question', eid))}</b> (gold {escape(str(ex.get('answer')))})"
                         f"<div>before: answer {escape(str(before.get('answer')))}<pre>{escape((before.get('output') or '')[:400])}</pre></div>"
                         f"<div>after: answer {escape(str(after.get('answer')))}<pre>{escape((after.get('output') or '')[:400])}</pre></div></div>")
        if k > 0:
            owner = it.get("run_id", run["id"])
            # accepted at this iteration (a text's latest verdict may be a later one's)
            ok = [v["rationale_id"] for v in store.verdicts(run_id=owner, k=k) if v["accepted"]]
            refined = [r for r in store.get_rationales(ok).values() if r.get("error_prediction")]
            if refined:
                h.append(f"<h3>Refinements accepted ({len(refined)}; first {min(len(refined), 5)} shown)</h3>")
            for r in refined[:5]:
                ex = examples.get(r["example_id"], {})
                wrong = store.get_prediction(r["error_prediction"]) or {}
                h.append(f"<div class=ex><b>{escape(ex.get('question', ''))}</b> (gold {escape(str(ex.get('answer')))}, "
                         f"source {escape(r['source'])})<div>student's wrong answer ({escape(str(wrong.get('answer')))}):"
                         f"<pre>{escape((wrong.get('output') or '')[:400])}</pre></div>"
                         f"<div>refined demonstration:<pre>{escape(r['text'][:600])}</pre></div></div>")
        prev_preds = now
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


__all__ = ["build_report", "write_report", "plot_svg"]
