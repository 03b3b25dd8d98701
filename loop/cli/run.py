"""CLI commands that drive the loop: run, stop, status, replay, report
(registered on the root app by loop.cli.main).

Errors from the store, teachers and student are translated here, at the
boundary, into UserError (exit 2, bad input, nothing written) or RunFailure
(exit 1, resumable).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

from loop.cli.common import JsonOpt, WorkspaceOpt, print_json
from loop.errors import UserError
from loop.terminal import SafeConsole


def _console() -> Console:
    return SafeConsole(soft_wrap=False, width=max(100, Console().width))


def _summary(console: Console, st, outcome) -> None:
    from loop.report.summary import done_iterations, iterations_table, nothing_to_run, result_line

    run = st.get_run(outcome.run_id)
    rows = done_iterations(st, run)
    console.print(iterations_table(rows, title=f"run {run['name']}"))
    console.print(result_line(rows, outcome.status), soft_wrap=True)
    if outcome.status == "done" and not outcome.iterations and rows:
        console.print(nothing_to_run(rows[-1]["k"], outcome.stop_reason), soft_wrap=True)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        iterations: Annotated[Optional[int], typer.Option("--iterations", min=1, help="Run until iteration N-1 (overrides loop.max_iterations; N >= 1).")] = None,
        detach: Annotated[bool, typer.Option("--detach", help="Run in the background (log in .distillery/run.log).")] = False,
        follow: Annotated[bool, typer.Option("--follow", help="After convergence, idle and wake on new pool data or template edits.")] = False,
        run_name: Annotated[Optional[str], typer.Option("--run", help="Resume this run (default: run_name from distillery.toml).")] = None,
        verbose: Annotated[bool, typer.Option("--verbose", help="Also show the libraries' own warnings and progress bars while the student loads.")] = False,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Run or resume the distillation loop (one writer per workspace)."""
        from loop.daemon.service import check_inputs, detach as start_detached, run_loop
        from loop.config.workspace import find_workspace, load_workspace_config

        if verbose:  # through the environment, so a --detach child and training jobs see it too
            from student.model import VERBOSE_ENV

            os.environ[VERBOSE_ENV] = "1"
        ws = find_workspace(workspace)
        cfg = load_workspace_config(ws)
        console = _console()
        if detach:
            check_inputs(ws, cfg, run_name)
            args = []
            if iterations is not None:
                args += ["--iterations", str(iterations)]
            if follow:
                args.append("--follow")
            if run_name:
                args += ["--run", run_name]
            res = start_detached(ws, args)
            if res["exited"] is not None:
                tail = Path(res["log"]).read_text(errors="replace").splitlines()[-5:]
                sys.stderr.write("\n".join(tail) + "\n")
                raise typer.Exit(res["exited"] or 1)
            console.print(f"running in the background: pid {res['pid']}; log {res['log']}")
            console.print("watch with `distillery status`, stop with `distillery stop`")
            return
        outcome, o = run_loop(ws, cfg, run_name=run_name, iterations=iterations, follow=follow, console=console)
        st = _reopen(ws)
        try:
            _summary(console, st, outcome)
        finally:
            st.close()

    @app.command("stop")
    def stop_cmd(
        no_wait: Annotated[bool, typer.Option("--no-wait", help="Send SIGTERM and return at once.")] = False,
        timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for the safe point.")] = 120.0,
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Stop the running loop at its next safe point (a checkpoint is written)."""
        from loop.daemon.service import stop
        from loop.config.workspace import find_workspace

        ws = find_workspace(workspace)
        res = stop(ws, wait=not no_wait, timeout=timeout)
        if as_json:
            print_json(res)
        else:
            _console().print(res["message"])
        if res.get("stopped") is False:
            raise typer.Exit(1)

    @app.command("status")
    def status_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
        """Run, iteration, step, progress, heartbeat age, spend, last error."""
        from loop.daemon.service import print_status, status
        from loop.config.workspace import find_workspace, open_store

        ws = find_workspace(workspace)
        st = open_store(ws)
        try:
            with st.snapshot():
                doc = status(ws, st)
        finally:
            st.close()
        if as_json:
            print_json(doc)
        else:
            print_status(_console(), doc)

    @app.command("replay")
    def replay_cmd(
        target: Annotated[str, typer.Argument(help="[RUN:]K or [RUN:]best — branch from iteration K (or the best iteration) of RUN (default run: run_name).")],
        sets: Annotated[Optional[list[str]], typer.Option("--set", help="key=value to change, e.g. loop.combine=accumulate (repeatable).")] = None,
        name: Annotated[Optional[str], typer.Option("--name", help="Name of the new run (default RUN-replayK).")] = None,
        iterations: Annotated[Optional[int], typer.Option("--iterations", min=1, help="Run until iteration N-1 (N >= 1).")] = None,
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Branch a new run from iteration K and continue it with changed settings."""
        from loop.daemon.service import run_loop, WorkspaceLock
        from loop.core.replay import create_replay
        from loop.config.workspace import find_workspace, load_workspace_config, open_store

        ws = find_workspace(workspace)
        cfg = load_workspace_config(ws)
        console = SafeConsole(stderr=True) if as_json else _console()
        with WorkspaceLock(ws).acquire("replay"):  # branch under the lock: one writer per workspace
            st = open_store(ws, write=True)
            try:
                run, rcfg = create_replay(st, cfg.run_name, target, list(sets or []), name)
            finally:
                st.close()
        console.print(f"replay [bold]{run['name']}[/] branched from iteration {run['parent_k']}; continuing")
        outcome, o = run_loop(ws, rcfg, run_name=run["name"], iterations=iterations, console=console, quiet=as_json)
        st = _reopen(ws)
        try:
            if as_json:
                print_json({"run": run["name"], "run_id": run["id"], "parent_k": run["parent_k"],
                            "status": outcome.status, "stop_reason": outcome.stop_reason,
                            "iterations": outcome.iterations, "teacher_requests": _requests(st, run["id"])})
            else:
                _summary(console, st, outcome)
        finally:
            st.close()

    @app.command("report")
    def report_cmd(
        output: Annotated[Path, typer.Option("-o", "--output", help="HTML file to write.")] = Path("report.html"),
        run_name: Annotated[Optional[str], typer.Option("--run", help="Run to report (default: run_name).")] = None,
        workspace: WorkspaceOpt = None,
    ) -> None:
        """Write a self-contained HTML report of a run."""
        from loop.report.html import write_report
        from loop.config.workspace import find_workspace, load_workspace_config, open_store

        ws = find_workspace(workspace)
        st = open_store(ws)
        try:
            name = run_name
            if name is None:  # the config's run when it exists, else the newest run
                try:
                    name = load_workspace_config(ws).run_name
                except UserError:
                    name = None
                if name is not None and st.find_run(name) is None:
                    name = None
            with st.snapshot():
                path = write_report(st, name, output)
        finally:
            st.close()
        _console().print(f"wrote {path}")


def _reopen(ws: Path):
    from loop.config.workspace import open_store

    return open_store(ws)


def _requests(st, run_id: int) -> int:
    """Teacher requests made by the run's own iterations (cached answers excluded)."""
    total = 0
    for it in st.list_iterations(run_id):
        total += int((it.get("metrics") or {}).get("teacher_requests") or 0)
    return total


__all__ = ["register"]
