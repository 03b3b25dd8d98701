"""`distillery data add|list|remove`: the workspace's examples.

`add` validates the whole file first (loop/data/importer.py: sizes, ids,
splits) and inserts it in one transaction.  `remove` takes examples out of
the pool and dev sets as an event of its own (store: example_removals plus an
events row): nothing is deleted, so the predictions, rationales and dataset
versions that mention them stay inspectable, and `data add` of the same line
restores them.  A removed example is no longer mined, taught, scored or
trained on: the next dataset version drops it (loop/core/steps/version.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from loop.cli.common import JsonOpt, WorkspaceOpt, print_json
from loop.data.importer import import_file
from loop.errors import UserError


def register(data_app: typer.Typer, store_cm, console) -> None:
    """Add the data commands to `data_app`; `store_cm(workspace)` opens the
    store (loop/cli/views.py: _store), `console()` the plain-text SafeConsole."""

    @data_app.command("add")
    def data_add(
        file: Annotated[Path, typer.Argument(help="JSONL: {question, answer, rationale?, id?, meta?} or GSM8K form.")],
        split: Annotated[str, typer.Option("--split", help="pool (training) or dev (held out)")] = "pool",
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Import examples (all-or-nothing; re-adding the same file adds nothing)."""
        with store_cm(workspace, write=True) as st:
            res = import_file(st, file, split)
        if as_json:
            print_json(res)
        else:
            console().print(f"{res['file']}: {res['added']} added to {split}, {res['skipped']} already present (skipped)")

    @data_app.command("list")
    def data_list(
        split: Annotated[Optional[str], typer.Option("--split", help="pool or dev (default: both)")] = None,
        removed: Annotated[bool, typer.Option("--removed", help="List the removed examples instead.")] = False,
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """List the examples (id, split, question, answer)."""
        if split not in (None, "pool", "dev"):
            raise UserError(f"--split must be 'pool' or 'dev', not {split!r}")
        with store_cm(workspace) as st, st.snapshot():
            rows = st.list_examples(split, state="removed" if removed else "active")
            gone = st.removed_examples() if removed else {}
        out = [{"id": r["id"], "split": r["split"], "question": r["question"], "answer": r["answer"],
                "has_rationale": r["rationale"] is not None, "created": r["created"],
                **({"removed": gone[r["id"]]["created"], "reason": gone[r["id"]]["reason"]} if removed else {})}
               for r in rows]
        if as_json:
            print_json({"examples": out})
            return
        t = Table(title="removed examples" if removed else "examples")
        for col in ("id", "split", "question", "answer") + (("removed", "reason") if removed else ()):
            t.add_column(col, overflow="fold")
        for r in out:
            q = r["question"] if len(r["question"]) <= 80 else r["question"][:77] + "..."
            t.add_row(*(str(v if v is not None else "-") for v in
                        (r["id"], r["split"], q, r["answer"], *((r["removed"], r["reason"]) if removed else ()))))
        c = console()
        c.print(t if out else "no examples" + (" removed" if removed else ""))

    @data_app.command("remove")
    def data_remove(
        ids: Annotated[list[str], typer.Argument(help="Example ids (or unique prefixes), as `data list` shows them.")],
        reason: Annotated[Optional[str], typer.Option("--reason", help="Why; kept with the removal.")] = None,
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Take examples out of the pool/dev sets (kept in history; `data add` restores them)."""
        with store_cm(workspace, write=True) as st:
            full = [st.resolve_example(i) for i in ids]  # every id resolves before anything is written
            done = st.remove_examples(full, reason)
        if as_json:
            print_json({"removed": done, "already_removed": [i for i in full if i not in done]})
            return
        c = console()
        c.print(f"removed {len(done)} example(s)" + (f": {', '.join(done)}" if done else ""))
        again = [i for i in full if i not in done]
        if again:
            c.print(f"already removed: {', '.join(again)}")
        if done:
            c.print("the next iteration's dataset version leaves them out; `distillery data add` restores them")
