"""`distillery calls [RUN:]K`: the teacher calls of one iteration, one row
each (key, teacher, model, status, error, tokens, latency, cost), with the
per-teacher numbers of `show` above them, so nobody needs SQL to see what a
teacher was asked, what failed and what it cost.

Registered by loop/cli/views.py (which passes its store, console and
reference helpers, as for `data`).  The rows and the numbers come from the
store's `list_teacher_calls` and `teacher_call_stats`.
"""

from __future__ import annotations

from typing import Annotated, Callable, Optional

import typer
from rich.table import Table

from loop.cli.common import JsonOpt, WorkspaceOpt, print_json
from loop.errors import UserError

# --status takes the stored statuses, and "failed" (what `show` calls them) for "error"
STATUSES = {"ok": "ok", "error": "error", "failed": "error"}


def register(app: typer.Typer, store_cm: Callable, console: Callable, parse_ref: Callable) -> None:
    @app.command("calls")
    def calls_cmd(
        ref: Annotated[str, typer.Argument(metavar="[RUN:]K", help="Iteration, e.g. 2, main:2, or best.")],
        teacher: Annotated[Optional[str], typer.Option("--teacher", help="Only this teacher's calls (its name in distillery.toml).")] = None,
        status: Annotated[Optional[str], typer.Option("--status", help="Only calls that ended so: ok | failed (= error).")] = None,
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The teacher calls made at an iteration: key, model, status, error, tokens, latency, cost."""
        if status is not None and status not in STATUSES:
            raise UserError(f"unknown --status {status!r}; use --status ok or --status failed")
        with store_cm(workspace) as st, st.snapshot():
            run, k = parse_ref(st, ref)
            if teacher is not None:
                _check_teacher(st, run, teacher)
            rows = st.list_teacher_calls(run["id"], k, teacher=teacher, status=STATUSES.get(status or ""))
            stats = st.teacher_call_stats(run["id"], k)
        if teacher is not None:
            stats = {n: s for n, s in stats.items() if n == teacher}
        doc = {"run": run["name"], "run_id": run["id"], "k": k, "teacher": teacher, "status": status,
               "teachers": stats, "calls": rows}
        if as_json:
            print_json(doc)
            return
        _print(console(), doc)


def _check_teacher(st, run: dict, name: str) -> None:
    """A --teacher that names no teacher of the run is a typo, not an empty answer."""
    known = [t.get("name") for t in (run["config"] or {}).get("teachers") or []]
    if name not in known and not st.teacher_call_stats(run["id"]).get(name):
        raise UserError(f"run {run['name']!r} has no teacher named {name!r} (teachers: {', '.join(known) or 'none'})")


def _print(c, doc: dict) -> None:
    from loop.report.summary import teacher_line

    where = f"{doc['run']}:{doc['k']}"
    for name, s in doc["teachers"].items():
        c.print(f"{name} at {where}: {teacher_line(s)}")
    rows = doc["calls"]
    if not rows:
        what = f"{doc['status']} calls" if doc["status"] else "calls"
        c.print(f"no {what} recorded at {where}" + (f" for teacher {doc['teacher']}" if doc["teacher"] else "")
                + "; an answer reused from the cache is counted as cached, with no row of its own")
        return
    print_calls(c, rows, f"teacher calls at {where} ({len(rows)})")


def print_calls(c, rows: list[dict], title: str, run_names: dict[int, str] | None = None) -> None:
    """Calls as a table, their error messages under it (a table cell would fold
    a long message into a column of words).  With `run_names` ({run id: name})
    a run:k column says where each call was made (`trace` spans iterations),
    in the place of the model column (the teacher names it; --json has it)."""
    t = Table(title=title)
    where = "run:k" if run_names is not None else "model"
    for col in ("key", "teacher", where, "template", "status", "tries", "tok in/out", "latency", "cost $", "error"):
        t.add_column(col, justify="right" if col in ("tries", "tok in/out", "latency", "cost $") else "left")
    for r in rows:
        place = f"{run_names.get(r['run_id'], '-')}:{_n(r['k'])}" if run_names is not None else r["model"]
        latency = "-" if r["latency_s"] is None else f"{r['latency_s']:.3f}s"
        t.add_row(r["key"][:12], r["teacher"], place, r["template"] or "-", r["status"], str(r["attempts"]),
                  f"{_n(r['prompt_tokens'])}/{_n(r['completion_tokens'])}", latency, f"{r['cost_usd'] or 0:.4f}",
                  (r["error_type"] or "-").removeprefix("Teacher"))
    c.print(t)
    for r in rows:
        if r["error"]:
            c.print(f"  {r['key'][:12]}  {r['error'][:300]}".replace("\n", " "))


def _n(x) -> str:
    return "-" if x is None else str(x)


__all__ = ["register", "print_calls"]
