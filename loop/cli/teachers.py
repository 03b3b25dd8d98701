"""`distillery teachers ...`: the teachers configured in distillery.toml
(registered on the root app by loop.cli.main).  The checks themselves, and
every LiteLLM call, live in the teachers package (teachers/checks.py)."""

from __future__ import annotations

import asyncio

import typer
from rich.console import Console
from rich.table import Table

from loop.cli.common import JsonOpt, WorkspaceOpt, print_json
from loop.errors import RunFailure, UserError
from loop.terminal import SafeConsole
from loop.config.workspace import find_workspace, load_workspace_config
from teachers.checks import check_teachers


def _console() -> Console:
    return SafeConsole(soft_wrap=True, width=max(110, Console().width))


def register(app: typer.Typer) -> None:
    tapp = typer.Typer(help="Teachers configured in distillery.toml.", no_args_is_help=True)
    app.add_typer(tapp, name="teachers")

    @tapp.command("check")
    def check_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
        """One cheap call per configured teacher: model, reachable, latency, price per 1k tokens."""
        cfg = load_workspace_config(find_workspace(workspace))
        rows = asyncio.run(check_teachers(cfg.teachers))
        if as_json:
            print_json({"teachers": rows})
        else:
            tb = Table(title="teachers")
            for col in ("name", "model", "reachable", "latency", "$/1k in", "$/1k out", "note"):
                tb.add_column(col)
            for r in rows:
                reach = {True: "[green]yes[/]", False: "[red]no[/]", None: "-"}[r["reachable"]]
                lat = f"{r['latency_s'] * 1000:.0f} ms" if r["latency_s"] is not None else "-"
                tb.add_row(r["name"], r["model"], reach, lat, _price(r["usd_per_1k_input"]),
                           _price(r["usd_per_1k_output"]), r["note"] or "")
            _console().print(tb)
        failed = [r for r in rows if r["reachable"] is False]
        if any(r["fatal"] for r in failed):
            raise UserError("fix the teacher settings above (see the note column), then run `distillery teachers check` again")
        if failed:
            raise RunFailure(f"{len(failed)} teacher(s) unreachable: {', '.join(r['name'] for r in failed)}")


def _price(v: float | None) -> str:
    return "-" if v is None else (f"{v:.4f}" if v else "0 (free)")
