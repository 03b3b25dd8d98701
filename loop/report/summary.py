"""What a person reads at the end of each iteration and of a run: a
one-screen summary (dev accuracy and its change, errors mined, refinements
asked/accepted, teacher spend and each teacher's calls, time per step) and the
per-iteration table shared by `distillery run`, `status` and the README's
demo output."""

from __future__ import annotations

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from loop.core.steps import STEP_ORDER  # the order the orchestrator runs the steps in


def _ordered(times: dict) -> dict:
    """Step timings in the order the steps run (stored JSON sorts keys)."""
    return {s: times[s] for s in STEP_ORDER if s in times} | {s: v for s, v in times.items() if s not in STEP_ORDER}


def done_iterations(store, run: dict) -> list[dict]:
    """The run's finished iterations (get_iteration from k = 0 until there is
    none), in k order."""
    out, k = [], 0
    while True:
        try:
            it = store.get_iteration(run["id"], k)
        except LookupError:
            break
        if it["status"] == "done":
            out.append(it)
        k += 1
    return out


def pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def signed_pts(x) -> str:
    return "-" if x is None else f"{100 * x:+.1f} pts"


def secs(x) -> str:
    if x is None:
        return "-"
    return f"{x:.1f}s" if x < 120 else f"{x / 60:.1f}m"


def teacher_line(s: dict) -> str:
    """One teacher's calls (a `Store.teacher_call_stats` entry) on one line:
    the same words in the iteration summary, `show` and `status`."""
    # the self teacher is not metered: no tokens, no latency (nothing to show rather than zeros)
    tokens = (f"; tokens {s['prompt_tokens']} in, {s['completion_tokens']} out"
              if s["prompt_tokens"] or s["completion_tokens"] else "")
    lat = (f"; latency p50 {_latency(s['latency_p50_s'])}, p95 {_latency(s['latency_p95_s'])}"
           if s.get("latency_p50_s") is not None else "")
    return (f"{s['calls']} calls ({s['ok']} new, {s['cached']} cached, {s['failed']} failed), "
            f"{s['requests']} requests{tokens}{lat}; ${s['cost_usd']:.4f}")


def _latency(x: float) -> str:
    return f"{1000 * x:.0f}ms" if x < 1 else f"{x:.2f}s"


def print_iteration(console: Console, k: int, m: dict, reason: str | None, teachers: dict | None = None) -> None:
    """`teachers`: `Store.teacher_call_stats(run, k)`, one row each."""
    t = Table(title=f"iteration {k}", show_header=False, box=None, pad_edge=False, title_justify="left")
    t.add_column(style="bold")
    t.add_column()
    base = m.get("baseline_dev_acc")
    t.add_row("dev accuracy", f"{pct(m.get('dev_acc'))}  ({signed_pts(m.get('delta'))} vs previous, "
              f"{signed_pts(None if base is None or m.get('dev_acc') is None else m['dev_acc'] - base)} vs baseline {pct(base)})")
    t.add_row("pool accuracy", pct(m.get("pool_acc")))
    t.add_row("errors mined", "not mined (iteration 0 asks about every pool question)" if m.get("errors") is None
              else f"{m.get('errors')} of {m.get('mined')}")
    if k > 0:
        t.add_row("refinements", f"{m.get('refinements_asked')} asked, {m.get('refinements_accepted')} accepted")
    t.add_row("rationales", f"{m.get('accepted')} accepted of {m.get('rationales')}"
              + (f"; rejected: {reasons(m.get('rejected'))}" if m.get("rejected") else ""))
    t.add_row("dataset", f"{m.get('dataset_size')} examples ({m.get('changed')} changed)")
    t.add_row("teachers", f"{m.get('teacher_calls')} new calls, {m.get('teacher_cached')} cached, "
              f"{m.get('teacher_failed')} failed; spend ${m.get('spend_usd') or 0:.4f} (run ${m.get('spend_total_usd') or 0:.4f})")
    for name, stats in (teachers or {}).items():
        t.add_row(f"  {escape(name)}", teacher_line(stats))  # a name is user text, not markup
    if m.get("train_skipped") == "unchanged":
        t.add_row("training", "skipped: the dataset did not change (loop.on_unchanged = \"skip\"); kept the previous adapter")
    else:
        t.add_row("training", f"{m.get('train_steps')} steps, loss {_num(m.get('loss_first'))} -> {_num(m.get('loss_last'))}"
                  + length_note(m.get("length")))
    if m.get("best_k") is not None:
        t.add_row("result", f"iteration {m['best_k']} (best dev accuracy so far, {pct(m.get('best_dev_acc'))})")
    times = _ordered(m.get("times") or {})
    t.add_row("time", ", ".join(f"{s} {secs(v)}" for s, v in times.items() if v is not None)
              + f"  (total {secs(sum(v for v in times.values() if v))})")
    if m.get("fixed") or m.get("broken"):
        t.add_row("dev flips", f"{len(m.get('fixed') or [])} fixed, {len(m.get('broken') or [])} broken")
    if reason:
        t.add_row("stop", reason)
    console.print(t)


def reasons(counts: dict | None) -> str:
    """{reason: n} -> "meta_talk 3, wrong_answer 1" (largest first)."""
    items = sorted((counts or {}).items(), key=lambda kv: (-kv[1], kv[0]))
    return ", ".join(f"{why} {n}" for why, n in items) or "none"


def length_note(stats: dict | None) -> str:
    """The train step's length counts, when anything was shortened or dropped."""
    if not stats:
        return ""
    parts = []
    if stats.get("truncated_contexts"):
        parts.append(f"{stats['truncated_contexts']} contexts shortened in the middle")
    if stats.get("dropped_rows"):
        parts.append(f"{stats['dropped_rows']} rows dropped ({reasons(stats.get('dropped'))})")
    if stats.get("negatives_dropped"):
        parts.append(f"{stats['negatives_dropped']} negatives dropped")
    return f"; lengths: {', '.join(parts)}" if parts else ""


def best_k(rows: list[dict]) -> int | None:
    """The result of a run: the iteration with the highest dev accuracy (ties: the earlier)."""
    best, acc = None, None
    for it in rows:
        a = (it.get("metrics") or {}).get("dev_acc")
        if a is not None and (acc is None or a > acc):
            best, acc = it["k"], a
    return best


def _num(x) -> str:
    return "-" if x is None else f"{x:.3g}"


def iterations_table(rows: list[dict], title: str | None = None) -> Table:
    """rows: iteration records (list_iterations / get_iteration) with metrics.
    `refined` is refinements accepted/asked."""
    t = Table(title=title)
    for col in ("k", "dev acc", "change", "errors", "refined", "dataset", "spend $", "time", "stop", "result"):
        t.add_column(col, justify="right" if col not in ("stop", "result") else "left")
    if rows and (rows[0].get("metrics") or {}).get("baseline_dev_acc") is not None:
        t.add_row("base", pct(rows[0]["metrics"]["baseline_dev_acc"]), "", "", "", "", "", "", "", "")
    best = best_k(rows)
    for it in rows:
        m = it.get("metrics") or {}
        times = _ordered(m.get("times") or {})
        t.add_row(
            str(it["k"]), pct(m.get("dev_acc")), signed_pts(m.get("delta")), _num(m.get("errors")),
            f"{m.get('refinements_accepted', 0)}/{m.get('refinements_asked', 0)}", str(m.get("dataset_size", "-")),
            f"{m.get('spend_usd') or 0:.4f}", secs(sum(v for v in times.values() if v) if times else None),
            it.get("stop_reason") or "", "<- best" if it["k"] == best else "",
        )
    return t


def result_line(rows: list[dict], status: str | None = None) -> str:
    """The closing line of a run: which iteration is the result and why the run
    stopped (`status` "stopped": on request, mid-iteration)."""
    best = best_k(rows)
    if best is None:
        return "result: no iteration has a dev accuracy yet"
    it = next(r for r in rows if r["k"] == best)
    if status == "stopped":
        stop = "on request (`distillery run` resumes)"
    else:
        stop = rows[-1].get("stop_reason") or "not stopped"
    return (f"result: iteration {best} (dev {pct(it['metrics'].get('dev_acc'))}, the best of {len(rows)} "
            f"iterations; `distillery export best`); stopped: {stop}")


# what lifts each stop rule, for a `run` that finds nothing to do
_CONTINUE = {
    "patience": "raise loop.patience in distillery.toml, or give the loop something new "
                "(`distillery data add`, an edited template) and run again",
    "max_iterations": "pass --iterations N with N > {next} (or raise loop.max_iterations)",
    "no_errors": "the student answers every pool question right; add pool examples with `distillery data add`",
    "budget": "raise loop.budget_usd in distillery.toml and run again",
}


def nothing_to_run(last_k: int, reason: str | None) -> str:
    """Why `run` did nothing: the last iteration already meets a stop rule, and how to go on."""
    how = _CONTINUE.get(reason or "", "change the setting that stopped it").format(next=last_k + 1)
    return f"nothing to run: iteration {last_k} already meets the stop rule {reason!r}; to continue, {how}"


def iterations_text(rows: list[dict], baseline: float | None) -> str:
    """The same table as plain text (for logs, the README and reports)."""
    best = best_k(rows)
    lines = [f"{'k':>3} {'dev acc':>8} {'change':>10} {'errors':>7} {'refined':>9} {'dataset':>8} {'spend $':>8} {'time':>7}  stop"]
    lines.append(f"{'base':>3} {pct(baseline):>8}")
    for it in rows:
        m = it.get("metrics") or {}
        times = _ordered(m.get("times") or {})
        lines.append(
            f"{it['k']:>3} {pct(m.get('dev_acc')):>8} {signed_pts(m.get('delta')):>10} {_num(m.get('errors')):>7} "
            f"{str(m.get('refinements_accepted', 0)) + '/' + str(m.get('refinements_asked', 0)):>9} "
            f"{str(m.get('dataset_size', '-')):>8} {m.get('spend_usd') or 0:>8.4f} "
            f"{secs(sum(v for v in times.values() if v) if times else None):>7}  {it.get('stop_reason') or ''}"
            + ("  <- best" if it["k"] == best else "")
        )
    return "\n".join(lines)


def step_line(step: str, info: dict) -> str:
    secs = info.get("seconds")
    t = f"({secs:.1f}s)" if isinstance(secs, (int, float)) else ""
    if step == "baseline":
        return f"dev accuracy {pct(info.get('dev_acc'))} {t}"
    if info.get("skipped") and step in ("mine", "train"):
        why = "the dataset did not change (loop.on_unchanged = \"skip\")" if info["skipped"] == "unchanged" else info["skipped"]
        if info["skipped"] is True:
            why = "nothing accepted yet; the adapter carries over"
        return f"skipped: {why} {t}"
    if step == "mine":
        return f"{info.get('mined')} pool questions, {info.get('errors')} errors{' (reused eval)' if info.get('reused_eval') else ''} {t}"
    if step == "teach":
        return (f"{info.get('asked')} prompts, {len(info.get('rationales', []))} rationales; calls {info.get('calls')}, "
                f"cached {info.get('cached')}, failed {info.get('failed')}, ${info.get('spend_usd', 0):.4f} {t}")
    if step == "verify":
        judge = info.get("judge")
        j = f"; judge passed {judge.get('passed')}/{judge.get('asked')}" if judge else ""
        return f"{info.get('passed')}/{info.get('checked')} derive their answer; rejected: {reasons(info.get('rejected'))}{j} {t}"
    if step == "agree":
        return f"{info.get('accepted')}/{info.get('rationales')} accepted {t}"
    if step == "version":
        return f"{info.get('changed')} examples changed, dataset size {info.get('size')} {t}"
    if step == "train":
        return (f"{info.get('examples')} examples, {info.get('steps')} steps, loss {_num(info.get('loss_first'))} -> "
                f"{_num(info.get('loss_last'))}{length_note(info.get('length'))} {t}")
    if step == "evaluate":
        return f"dev {pct(info.get('dev_acc'))}, pool {pct(info.get('pool_acc'))} {t}"
    return t
