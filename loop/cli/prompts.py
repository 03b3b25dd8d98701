"""CLI commands: `prompts list|show|render|edit|history|diff` and `teachers check`
(registered on the root app by loop.cli.main).

Template problems (prompts.TemplateError) and teacher problems are translated
into UserError / RunFailure here, at the boundary.  `edit` never leaves a
half-written or broken template behind: the user edits a scratch copy, which
replaces the real file atomically only after it loads and renders against a
real pool example (or the built-in sample when the pool is empty).
"""

from __future__ import annotations

import difflib
import hashlib
import os
import shlex
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

import prompts
from prompts import SAMPLE_VARIABLES, Template, TemplateError

from loop.cli.common import JsonOpt, WorkspaceOpt, print_json
from loop.errors import UserError
from loop.terminal import SafeConsole
from loop.config.workspace import WorkspaceNotFound, find_workspace, load_workspace_config

VarOpt = Annotated[list[str], typer.Option("--var", help="Set a variable: NAME=VALUE (repeatable).")]


def _console() -> Console:
    return SafeConsole(soft_wrap=True, width=max(110, Console().width))


@contextmanager
def _template_errors() -> Iterator[None]:
    try:
        yield
    except TemplateError as e:
        raise UserError(str(e)) from None


def _workspace(explicit: Path | None, *, required: bool) -> Path | None:
    """The workspace, or None outside one (then only the packaged defaults are
    shown) unless the command needs one."""
    try:
        return find_workspace(explicit)
    except WorkspaceNotFound:
        if required or explicit is not None:
            raise
        return None


def _open_store(ws: Path | None):
    from store import DB_NAME, Store

    if ws is None or not (ws / DB_NAME).is_file():
        return None
    return Store.open(ws / DB_NAME)


def _answer_format(ws: Path | None) -> str:
    if ws is None:
        return "number"
    try:
        return load_workspace_config(ws).task.answer_format
    except UserError:
        return "number"


def example_variables(ws: Path | None, example_id: str | None = None) -> tuple[dict[str, Any], str]:
    """Variables for validating/rendering a template: a real pool example from
    the store when there is one, else the built-in sample.  Returns (vars, source)."""
    vars_ = dict(SAMPLE_VARIABLES)
    vars_["answer_format"] = _answer_format(ws)
    st = _open_store(ws)
    if st is None:
        if example_id:
            raise UserError(f"no database in the workspace, so no example {example_id!r}; run `distillery init`")
        return vars_, "built-in sample"
    try:
        if example_id:
            from store import Ambiguous, NotFound

            try:
                ex = st.get_example(st.resolve_example(example_id))
            except (NotFound, Ambiguous) as e:
                raise UserError(f"example {example_id!r} {'is ambiguous' if isinstance(e, Ambiguous) else 'not found'}; "
                                "list ids with `distillery trace` or the data you added") from None
        else:
            ex = st.first_example("pool")
        if ex is None:
            return vars_, "built-in sample (the pool is empty)"
        vars_["question"] = ex["question"]
        if ex["answer"] is not None:
            vars_["gold"] = ex["answer"]
        if ex["rationale"]:
            vars_["previous"] = vars_["demonstration"] = ex["rationale"]
        # The student's latest wrong answer on it, when the loop has mined one.
        wrong = st.latest_wrong_output(ex["id"])
        if wrong:
            vars_["student_output"] = wrong
        return vars_, f"pool example {ex['id'][:12]}"
    finally:
        st.close()


def render_check(t: Template, vars_: dict[str, Any]) -> list[dict[str, str]]:
    """Render `t` with the variables it declares (TemplateError if it cannot)."""
    wanted = set(t.variables) | set(t.optional)
    return t.render(**{k: v for k, v in vars_.items() if k in wanted})


def _diff(a: str, b: str, a_name: str, b_name: str) -> str:
    return "".join(difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), a_name, b_name))


def _versions(ws: Path | None, name: str) -> list[dict]:
    st = _open_store(ws)
    if st is None:
        return []
    try:
        return st.prompt_versions(name)
    finally:
        st.close()


def _resolve_version(ws: Path | None, name: str, ref: str) -> tuple[str, str]:
    """(label, body) for a version reference: 'default', 'current' or an id prefix."""
    if ref == "default":
        return "default", prompts.default_path(name).read_text(encoding="utf-8")
    if ref in ("current", "workspace"):
        p = prompts.template_path(name, ws)
        return str(p), p.read_text(encoding="utf-8")
    hits = [v for v in _versions(ws, name) if v["id"].startswith(ref)]
    if len(hits) != 1:
        raise UserError(f"version {ref!r} of {name!r} {'is ambiguous' if hits else 'not found'}; "
                        f"see `distillery prompts history {name}` (or use 'default' / 'current')")
    return hits[0]["id"][:12], hits[0]["body"]


def _record(ws: Path | None, t: Template) -> None:
    st = _open_store(ws)
    if st is not None:
        try:
            prompts.record_prompt_version(st, t)
        finally:
            st.close()


def register(app: typer.Typer) -> None:
    papp = typer.Typer(help="Prompt templates (YAML + Jinja2): list, show, render, edit, history, diff.",
                       no_args_is_help=True)
    app.add_typer(papp, name="prompts")

    @papp.command("list")
    def list_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
        """Templates in the workspace (and packaged defaults), with their version."""
        ws = _workspace(workspace, required=False)
        out = []
        with _template_errors():
            for name in prompts.list_templates(ws):
                p = prompts.template_path(name, ws)
                body = p.read_text(encoding="utf-8")
                default = prompts.default_path(name)
                try:
                    t = Template.from_text(body, path=str(p))
                    desc, ok, err = t.description, True, None
                except TemplateError as e:
                    desc, ok, err = "", False, str(e)
                out.append({
                    "name": name, "path": str(p),
                    "source": "default" if p == default else "workspace",
                    "modified": default.exists() and p != default and body != default.read_text(encoding="utf-8"),
                    "version": hashlib.sha256(body.encode("utf-8")).hexdigest(),
                    "valid": ok, "error": err, "description": desc,
                })
        if as_json:
            print_json({"templates": out})
            return
        tb = Table(title="prompt templates")
        for col in ("name", "source", "version", "status", "description"):
            tb.add_column(col)
        for r in out:
            status = ("modified" if r["modified"] else "as shipped") if r["valid"] else "[red]BROKEN[/]"
            tb.add_row(r["name"], r["source"], r["version"][:12], status, r["description"][:70])
        c = _console()
        c.print(tb)
        for r in out:
            if not r["valid"]:
                c.print(f"[red]{r['error']}[/]")

    @papp.command("show")
    def show_cmd(name: Annotated[str, typer.Argument(help="Template name.")],
                 workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
        """Print a template file (the workspace copy when there is one)."""
        ws = _workspace(workspace, required=False)
        with _template_errors():
            p = prompts.template_path(name, ws)
            t = Template.from_file(p)
        if as_json:
            print_json({"name": t.name, "path": str(p), "version": t.version, "variables": t.variables,
                        "optional": t.optional, "description": t.description, "body": t.body})
            return
        sys.stderr.write(f"# {p} (version {t.version[:12]})\n")
        sys.stdout.write(t.body)

    @papp.command("render")
    def render_cmd(name: Annotated[str, typer.Argument(help="Template name.")],
                   var: VarOpt = [],  # noqa: B006 (typer needs a literal default)
                   example: Annotated[Optional[str], typer.Option("--example", help="Pool example id (prefix) to render with.")] = None,
                   workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
        """Render a template with a pool example (or the built-in sample) and --var overrides."""
        ws = _workspace(workspace, required=False)
        vars_, source = example_variables(ws, example)
        for item in var:
            if "=" not in item:
                raise UserError(f"--var {item!r}: expected NAME=VALUE")
            k, v = item.split("=", 1)
            vars_[k.strip()] = v
        with _template_errors():
            t = prompts.load_template(name, ws)
            unknown = [item.split("=", 1)[0].strip() for item in var
                       if item.split("=", 1)[0].strip() not in set(t.variables) | set(t.optional)]
            if unknown:
                raise TemplateError(f"unknown variable {unknown[0]!r} for template {name!r}; declared: "
                                    f"{', '.join(t.variables + t.optional)}", path=t.path)
            msgs = render_check(t, vars_)
        if as_json:
            print_json({"name": name, "version": t.version, "source": source, "messages": msgs})
            return
        c = _console()
        c.print(f"[dim]{name} {t.version[:12]} rendered with {source}[/]")
        for m in msgs:
            c.rule(m["role"])
            c.print(m["content"], markup=False, highlight=False)

    @papp.command("edit")
    def edit_cmd(name: Annotated[str, typer.Argument(help="Template name.")], workspace: WorkspaceOpt = None) -> None:
        """Open a template in $EDITOR; keep the change only if it loads and renders."""
        ws = _workspace(workspace, required=True)
        assert ws is not None
        with _template_errors():
            target = ws / "prompts" / f"{name}.yaml"
            src = prompts.template_path(name, ws)  # the default when there is no workspace copy yet
            before = src.read_text(encoding="utf-8")
        editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
        target.parent.mkdir(parents=True, exist_ok=True)
        scratch = target.parent / f".{name}.yaml.edit"
        scratch.write_text(before, encoding="utf-8")
        try:
            try:
                rc = subprocess.call([*shlex.split(editor), str(scratch)])
            except FileNotFoundError:
                raise UserError(f"editor {editor!r} not found; set $EDITOR (e.g. export EDITOR=nano)") from None
            if rc != 0:
                raise UserError(f"editor {editor!r} exited with status {rc}; {target} is unchanged")
            after = scratch.read_text(encoding="utf-8")
            if after == before and target.exists():
                _console().print(f"No changes to {target}.")
                return
            vars_, source = example_variables(ws)
            try:
                t = Template.from_text(after, path=str(target))
                if t.name != name:
                    raise TemplateError(f"the file declares name {t.name!r}; it must stay {name!r}", path=str(target), line=1)
                render_check(t, vars_)
            except TemplateError as e:
                rejected = target.parent / f".{name}.yaml.rejected"
                os.replace(scratch, rejected)
                raise UserError(f"{e}\nThe template was NOT changed (validated with {source}); "
                                f"your edit is kept in {rejected} - fix it and run `distillery prompts edit {name}` again") from None
            old_version = hashlib.sha256(before.encode("utf-8")).hexdigest()
            os.replace(scratch, target)  # atomic: the old file or the new one, never half of it
            try:  # the previous version too, so `history`/`diff` can show what changed
                _record(ws, Template.from_text(before, path=str(src)))
            except TemplateError:
                pass  # it was broken (edited by hand outside `prompts edit`): nothing worth keeping
            _record(ws, t)
        finally:
            if scratch.exists():
                scratch.unlink()
        c = _console()
        c.print(f"Saved {target}: version {old_version[:12]} -> {t.version[:12]} (validated with {source})")
        c.print(_diff(before, after, f"{name}@{old_version[:12]}", f"{name}@{t.version[:12]}"), markup=False,
                highlight=False)

    @papp.command("history")
    def history_cmd(name: Annotated[str, typer.Argument(help="Template name.")],
                    workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
        """Versions of a template stored in prompt_versions (every version used or edited)."""
        ws = _workspace(workspace, required=True)
        with _template_errors():
            current = prompts.template_path(name, ws).read_text(encoding="utf-8")
        default = prompts.default_path(name).read_text(encoding="utf-8") if prompts.default_path(name).exists() else None
        out = [{"id": v["id"], "created": v["created"], "current": v["body"] == current,
                "default": v["body"] == default} for v in _versions(ws, name)]
        if as_json:
            print_json({"name": name, "versions": out})
            return
        if not out:
            _console().print(f"No stored versions of {name!r} yet (a version is stored when it is used or edited).")
            return
        tb = Table(title=f"versions of {name}")
        for col in ("version", "created", ""):
            tb.add_column(col)
        for v in out:
            tags = ", ".join(t for t, on in (("current", v["current"]), ("default", v["default"])) if on)
            tb.add_row(v["id"][:12], v["created"], tags)
        _console().print(tb)

    @papp.command("diff")
    def diff_cmd(name: Annotated[str, typer.Argument(help="Template name.")],
                 a: Annotated[Optional[str], typer.Argument(help="Version id prefix, 'default' or 'current' (default: default).")] = None,
                 b: Annotated[Optional[str], typer.Argument(help="Version id prefix, 'default' or 'current' (default: current).")] = None,
                 workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
        """Diff two versions of a template (default: the packaged default vs the workspace copy)."""
        ws = _workspace(workspace, required=False)
        with _template_errors():
            la, ta = _resolve_version(ws, name, a or "default")
            lb, tb_ = _resolve_version(ws, name, b or "current")
        d = _diff(ta, tb_, la, lb)
        if as_json:
            print_json({"name": name, "a": la, "b": lb, "diff": d})
            return
        if not d:
            _console().print(f"{name}: {la} and {lb} are identical.")
            return
        sys.stdout.write(d)
