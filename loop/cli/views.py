"""CLI commands over the workspace and its store: init, data (loop/cli/data.py), runs,
iterations, show, calls (loop/cli/calls.py), diff, trace, export (registered on the
root app by loop.cli.main).

Inspection commands read inside one snapshot so they work while a run is
writing, and never show half of an iteration.  Store errors are translated
into UserError (exit 2) here, at the boundary.
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Iterator, Optional

import typer
from rich.console import Console
from rich.table import Table

from store import Store
from store.errors import Ambiguous, NotFound, StoreError

from loop.cli import calls as cli_calls
from loop.cli import data as cli_data
from loop.cli.common import JsonOpt, WorkspaceOpt, print_json
from loop.errors import UserError
from loop.config.presets import PRESETS
from loop.terminal import SafeConsole
from loop.config.workspace import ENV_VAR, find_workspace, init_workspace, load_workspace_config, open_store


class NotFoundError(UserError):
    pass


def _console() -> Console:
    # markup off: questions, rationales and paths are user text, and "[...]" in
    # them must print as is, not as rich style tags.
    return SafeConsole(soft_wrap=True, width=max(120, Console().width), markup=False, highlight=False)


@contextmanager
def _store(workspace: Path | None, *, write: bool = False) -> Iterator[Store]:
    ws = find_workspace(workspace)
    st = open_store(ws, write=write)
    st.workspace = ws  # type: ignore[attr-defined]
    try:
        yield st
    except StoreError as e:
        raise NotFoundError(f"{e}; list what exists with `distillery runs` / `distillery iterations`") from None
    finally:
        st.close()


# ----------------------------------------------------------- references
def _default_run(st: Store) -> dict:
    """The run the config names (run_name) when it exists, else the newest run.
    A broken config is reported (exit 2); naming the run (--run, RUN:K) skips it."""
    name = load_workspace_config(st.workspace).run_name  # type: ignore[attr-defined]
    run = st.find_run(name)
    if run:
        return run
    runs = st.list_runs()
    if not runs:
        raise NotFoundError("no runs in this workspace yet; start one with `distillery run`")
    return runs[-1]


def _run(st: Store, name: str | None) -> dict:
    if name is None:
        return _default_run(st)
    run = st.find_run(name)
    if run is None:
        names = ", ".join(r["name"] for r in st.list_runs()) or "none yet"
        raise NotFoundError(f"no run named {name!r} (runs: {names}); see `distillery runs`")
    return run


def best_of(st: Store, run: dict) -> int:
    """The run's result: its finished iteration with the highest dev accuracy
    (ties: the earlier one)."""
    from loop.report.summary import best_k, done_iterations

    k = best_k(done_iterations(st, run))
    if k is None:
        raise NotFoundError(f"run {run['name']!r} has no finished iteration with a dev accuracy yet; "
                            "see `distillery iterations`")
    return k


def parse_ref(st: Store, ref: str) -> tuple[dict, int]:
    """'[RUN:]K' or '[RUN:]best' -> (run, k)."""
    run_name, sep, k_text = ref.rpartition(":")
    if sep and not run_name:
        raise UserError(f"bad iteration {ref!r}: give RUN:K or K, e.g. main:2 or 2")
    if k_text == "best":
        run = _run(st, run_name or None)
        return run, best_of(st, run)
    try:
        k = int(k_text)
        if k < 0:
            raise ValueError
    except ValueError:
        raise UserError(
            f"bad iteration {ref!r}: K must be a whole number ≥ 0 or `best`, as in `2`, `main:2` or `best`"
        ) from None
    run = _run(st, run_name or None)
    try:
        st.get_iteration(run["id"], k)
    except StoreError:
        ks = [d["k"] for d in _iterations(st, run)]
        have = f"iterations {ks[0]}..{ks[-1]}" if ks else "no iterations yet"
        raise NotFoundError(f"run {run['name']!r} has no iteration {k} ({have}); see `distillery iterations`") from None
    return run, k


def _iterations(st: Store, run: dict) -> list[dict]:
    """The run's iterations, including those a replay inherits from its parent."""
    own = st.list_iterations(run["id"])
    if run["parent_run"] is None:
        return own
    parent = st.get_run(run["parent_run"])
    inherited = [
        d | {"inherited_from": d.get("inherited_from", parent["name"])}
        for d in _iterations(st, parent)
        if d["k"] <= run["parent_k"]
    ]
    return inherited + own


def _accuracy(metrics: dict) -> Any:
    """The dev accuracy of an iteration's metrics (the orchestrator writes it as dev_acc)."""
    return (metrics or {}).get("dev_acc")


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3f}"
    return str(v)


# -------------------------------------------------------------- commands
def register(app: typer.Typer) -> None:
    data_app = typer.Typer(help="The workspace's examples: add, list, remove.", no_args_is_help=True)
    app.add_typer(data_app, name="data")
    cli_data.register(data_app, _store, _console)
    cli_calls.register(app, _store, _console, parse_ref)

    @app.command("init")
    def init_cmd(
        directory: Annotated[Optional[Path], typer.Argument(help="Folder to create (default: -w, $DISTILLERY_WORKSPACE, or the current directory).")] = None,
        preset: Annotated[str, typer.Option("--preset", help="demo | tiny | custom")] = "demo",
        force: Annotated[bool, typer.Option("--force", help="Rewrite the config of an existing workspace from the preset, copying the old one to distillery.toml.bak-<date>-<time> first (keeps edited templates and the database).")] = False,
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Create a workspace: distillery.toml, prompts/, distillery.db."""
        if preset not in PRESETS:
            raise UserError(f"unknown preset {preset!r}; use --preset {' | '.join(PRESETS)}")
        target = directory or workspace or Path(os.environ.get(ENV_VAR) or Path.cwd())
        done = init_workspace(target, preset, force=force)
        if as_json:
            print_json(done)
            return
        c = _console()
        c.print(f"Initialised workspace {done['workspace']} (preset {preset})")
        c.print(f"  config    {done['config']}")
        c.print(f"  prompts   {len(done['prompts'])} templates in prompts/")
        c.print(f"  database  {done['database']}" + (" (kept)" if done["kept_database"] else ""))
        for b in done["backups"]:
            what = "the config it replaced" if b["why"] == "replaced" else "the empty database it replaced"
            c.print(f"  backup    {b['backup']} ({what})")
        c.print("Next: `distillery run` (or `distillery data add FILE.jsonl` for your own data)")

    @app.command("runs")
    def runs_cmd(workspace: WorkspaceOpt = None, as_json: JsonOpt = False) -> None:
        """List runs (replays show their parent run and iteration)."""
        with _store(workspace) as st, st.snapshot():
            runs = st.list_runs()
            names = {r["id"]: r["name"] for r in runs}
            out = []
            for r in runs:
                its = _iterations(st, r)
                done = [d for d in its if d["status"] == "done"]
                out.append(
                    {
                        "id": r["id"], "name": r["name"], "status": r["status"],
                        "parent": names.get(r["parent_run"]), "parent_k": r["parent_k"],
                        "iterations": len(its), "last_done_k": done[-1]["k"] if done else None,
                        "dev_accuracy": _accuracy(done[-1]["metrics"]) if done else None,
                        "spend_usd": st.spend(r["id"]), "created": r["created"],
                        "config_hash": r["config_hash"],
                    }
                )
        if as_json:
            print_json({"runs": out})
            return
        t = Table(title="runs")
        for col in ("name", "status", "from", "iterations", "last done", "dev acc", "spend $", "created"):
            t.add_column(col)
        for r in out:
            src = f"{r['parent']}:{r['parent_k']}" if r["parent"] else "-"
            t.add_row(r["name"], r["status"], src, str(r["iterations"]), _fmt(r["last_done_k"]),
                      _fmt(r["dev_accuracy"]), f"{r['spend_usd']:.4f}", r["created"][:19])
        _console().print(t if out else "No runs yet; start one with `distillery run`.")

    @app.command("iterations")
    def iterations_cmd(
        run: Annotated[Optional[str], typer.Option("--run", help="Run name (default: the config's run_name).")] = None,
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """List the iterations of a run with their step status and metrics."""
        with _store(workspace) as st, st.snapshot():
            r = _run(st, run)
            its = _iterations(st, r)
            from loop.report.summary import best_k

            best = best_k([d for d in its if d["status"] == "done"])
            for d in its:
                d["best"] = d["k"] == best
                d["dataset_size"] = st.dataset_size(r["id"], d["k"])
                d["dataset_changed"] = len(st.changed_examples(r["id"], d["k"]))
        if as_json:
            print_json({"run": r["name"], "iterations": its})
            return
        t = Table(title=f"iterations of run {r['name']}")
        for col in ("k", "status", "steps done", "dataset", "changed", "dev acc", "stop", "finished"):
            t.add_column(col)
        for d in its:
            steps = d["steps"]
            done = sum(1 for s in steps.values() if s == "done")
            t.add_row(
                str(d["k"]) + (f" (from {d['inherited_from']})" if d.get("inherited_from") else "")
                + (" best" if d["best"] else ""), d["status"],
                f"{done}/{len(steps)}", str(d["dataset_size"]), str(d["dataset_changed"]),
                _fmt(_accuracy(d["metrics"])), d["stop_reason"] or "-", (d["finished"] or "-")[:19],
            )
        _console().print(t if its else f"Run {r['name']!r} has no iterations yet.")

    @app.command("show")
    def show_cmd(
        ref: Annotated[str, typer.Argument(metavar="[RUN:]K", help="Iteration, e.g. 2, main:2, or best (the run's result).")],
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """One iteration: steps, metrics, dataset, predictions, rationales, teacher calls."""
        with _store(workspace) as st, st.snapshot():
            run, k = parse_ref(st, ref)
            doc = _show_doc(st, run, k)
        if as_json:
            print_json(doc)
            return
        c = _console()
        c.print(f"{run['name']}:{k}  status {doc['status']}" +
                (f"  (inherited from {doc['inherited_from']})" if doc.get("inherited_from") else ""))
        c.print(f"  dataset: {doc['dataset']['size']} examples, {doc['dataset']['changed']} changed at this iteration")
        c.print(f"  adapter: {doc['adapter_path'] or '-'}  stop: {doc['stop_reason'] or '-'}"
                + (f"  (the run's result: best dev accuracy)" if doc["best"] else f"  (the run's result is iteration {doc['best_k']})" if doc["best_k"] is not None else ""))
        c.print(f"  training: {doc['training']}")
        t = Table(title="steps")
        for col in ("step", "status", "started", "finished", "info"):
            t.add_column(col)
        for s in doc["steps"]:
            t.add_row(s["step"], s["status"], (s["started"] or "-")[11:19], (s["finished"] or "-")[11:19],
                      json.dumps(s["info"] or {})[:60])
        c.print(t if doc["steps"] else "  steps: none recorded")
        m = Table(title="metrics")
        m.add_column("metric")
        m.add_column("value")
        for key, v in (doc["metrics"] or {}).items():
            m.add_row(key, _fmt(v) if not isinstance(v, (dict, list)) else json.dumps(v)[:60])
        c.print(m)
        p = doc["predictions"]
        for phase, n in p.items():
            c.print(f"  predictions [{phase}]: {n['total']} ({n['correct']} correct, {n['wrong']} wrong)")
        rr, tc = doc["rationales"], doc["teacher_calls"]
        c.print(f"  rationales: {rr['created']} created, {rr['accepted']} accepted, {rr['rejected']} rejected")
        if doc["rejections"]:
            from teachers.verify import REASONS

            c.print("  rejected by reason:")
            for why, n in doc["rejections"].items():
                c.print(f"    {n:>4}  {why}: {REASONS.get(why, '')}")
        c.print(f"  teacher calls: {tc['count']} recorded ({tc['ok']} ok, {tc['error']} failed), {tc['cached']} cached, "
                f"{tc['requests']} requests, ${tc['cost_usd']:.4f}")
        from loop.report.summary import teacher_line

        for name, s in tc["teachers"].items():
            c.print(f"    {name}: {teacher_line(s)}")

    @app.command("diff")
    def diff_cmd(
        a: Annotated[str, typer.Argument(metavar="[RUN:]A")],
        b: Annotated[str, typer.Argument(metavar="[RUN:]B")],
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
        limit: Annotated[int, typer.Option("--limit", help="Rows shown per section (human output).")] = 20,
    ) -> None:
        """What changed between two iterations: dataset, correctness, metrics."""
        with _store(workspace) as st, st.snapshot():
            (ra, ka), (rb, kb) = parse_ref(st, a), parse_ref(st, b)
            d = st.diff_iterations(ra["id"], ka, rb["id"], kb)
            d["a"]["run"], d["b"]["run"] = ra["name"], rb["name"]
            shown = d["dataset"]["changed"][:limit]
            rats = st.get_rationales(
                [x["rationale_id"] for ch in shown for x in ch["before"] + ch["after"]]
            )
        if as_json:
            print_json(d)
            return
        c = _console()
        ds = d["dataset"]
        c.print(f"{ra['name']}:{ka} → {rb['name']}:{kb}", style="bold")
        c.print(f"  dataset: {ds['size_a']} → {ds['size_b']} examples; {len(ds['added'])} added, "
                f"{len(ds['removed'])} removed, {len(ds['changed'])} with new demonstrations")
        c.print(f"  became correct: {len(d['became_correct'])}  regressed: {len(d['regressed'])}")
        for key, dv in d["metrics"]["delta"].items():
            c.print(f"  {key}: {_fmt(d['metrics']['a'][key])} → {_fmt(d['metrics']['b'][key])} ({dv:+.3f})")
        if shown:
            t = Table(title=f"changed demonstrations (first {len(shown)})")
            t.add_column("example")
            t.add_column("before")
            t.add_column("after")
            for ch in shown:
                def txt(xs):
                    return " | ".join((rats.get(x["rationale_id"]) or {}).get("text", "?")[:60].replace("\n", " ") for x in xs)
                t.add_row(ch["example_id"], txt(ch["before"]), txt(ch["after"]))
            c.print(t)

    @app.command("trace")
    def trace_cmd(
        example_id: Annotated[str, typer.Argument(help="Example id (a unique prefix is enough).")],
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """The lineage of one example: predictions, rationales, teacher calls, dataset versions."""
        with _store(workspace) as st, st.snapshot():
            try:
                eid = st.resolve_example(example_id)
            except Ambiguous as e:
                raise UserError(f"{e}; type more characters of the id") from None
            except NotFound as e:
                raise UserError(f"{e}; example ids are listed by `distillery diff` and `distillery export`") from None
            doc = st.lineage(eid)
            run_names = {r["id"]: r["name"] for r in st.list_runs()}  # a call's run_id, shown by name
        if as_json:
            print_json(doc)
            return
        c = _console()
        ex = doc["example"]
        c.print(f"{ex['id']} ({ex['split']})  gold: {ex['answer']}", style="bold")
        c.print(f"  Q: {ex['question'][:200]}")
        t = Table(title="predictions")
        for col in ("run:k", "phase", "sample", "answer", "correct", "output"):
            t.add_column(col)
        for p in doc["predictions"]:
            t.add_row(f"{p['run']}:{p['k']}", p["phase"], str(p["sample"]), _fmt(p["answer"]),
                      _fmt(p["correct"]), p["output"][:60].replace("\n", " "))
        c.print(t)
        t = Table(title="rationales")
        for col in ("id", "run:k", "source", "parent", "answers error", "accepted", "rejected because", "text"):
            t.add_column(col)
        for r in doc["rationales"]:
            t.add_row(r["id"], f"{r['run'] or '-'}:{_fmt(r['k'])}", r["source"], r["parent_id"] or "-",
                      _fmt(r["error_prediction"]), _fmt(r["accepted"]), r["rejected_reason"] or "-",
                      r["text"][:60].replace("\n", " "))
        c.print(t)
        if doc["verdicts"]:
            t = Table(title="verdicts (verify, agree) per iteration")
            for col in ("run:k", "rationale", "accepted", "rejected because"):
                t.add_column(col)
            for v in doc["verdicts"]:
                t.add_row(f"{v['run']}:{v['k']}", v["rationale_id"], _fmt(v["accepted"]), v["rejected_reason"] or "-")
            c.print(t)
        if doc["teacher_calls"]:
            cli_calls.print_calls(c, doc["teacher_calls"], "teacher calls (those that wrote or judged a rationale, "
                                  "and every failed one)", run_names)
        for v in doc["dataset"]:
            demos = ", ".join(f"{x['rationale_id']}×{x['weight']:g}" for x in v["demonstrations"])
            c.print(f"  dataset {v['run']}:{v['k']}: {'removed' if v['removed'] else demos}")

    @app.command("export")
    def export_cmd(
        ref: Annotated[str, typer.Argument(metavar="[RUN:]K", help="Iteration to export (a number, or best).")],
        fmt: Annotated[str, typer.Option("--format", help="jsonl | openai (its training set: rows, or chat fine-tuning "
                                         "messages) | peft (its LoRA adapter + model card) | merged (the model with "
                                         "the adapter merged, safetensors + tokenizer)")] = "jsonl",
        output: Annotated[Optional[Path], typer.Option("-o", "--output", help="File to write (default: stdout); "
                                                       "the directory to create for peft and merged.")] = None,
        system: Annotated[Optional[str], typer.Option("--system", help="System message for --format openai.")] = None,
        force: Annotated[bool, typer.Option("--force", help="peft / merged: replace an earlier export in the -o directory.")] = False,
        workspace: WorkspaceOpt = None,
        as_json: JsonOpt = False,
    ) -> None:
        """Export an iteration: its training set (jsonl, openai) or its model (peft, merged)."""
        from loop.report.export import FORMATS as MODEL_FORMATS, export_model, source_of

        if fmt not in ("jsonl", "openai", *MODEL_FORMATS):
            raise UserError(f"unknown --format {fmt!r}; use --format jsonl, openai, peft or merged")
        if fmt in MODEL_FORMATS:
            if output is None:
                raise UserError(f"--format {fmt} writes a directory; add -o DIR, e.g. -o distilled-{fmt}")
            with _store(workspace) as st, st.snapshot():
                run, k = parse_ref(st, ref)
                ws = st.workspace  # type: ignore[attr-defined]
                src = source_of(st, ws, run, k)
            # outside the snapshot: loading the student takes a while
            doc = export_model(src, fmt, output, force=force, workspace=ws, say=None if as_json else _console().print)
            if as_json:
                print_json(doc)
            else:
                what = "adapter + tokenizer" if fmt == "peft" else "merged model + tokenizer"
                _console().print(f"Wrote {run['name']}:{k} to {doc['directory']} ({what}, model card README.md "
                                 "shows how to load it)")
            return
        if output is None and as_json:  # stdout is the data itself; --json describes a written file
            raise UserError("export --json describes the file it writes; add -o FILE (without -o the rows "
                            "go to stdout as JSON lines, and --json is not needed)")
        with _store(workspace) as st, st.snapshot():
            run, k = parse_ref(st, ref)
            lines = list(export_lines(st, run["id"], k, fmt, system))
        body = "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
        if output is None:
            sys.stdout.write(body)
            return
        tmp = output.with_name(output.name + ".tmp")
        try:
            tmp.write_text(body, encoding="utf-8")
            os.replace(tmp, output)  # whole file or nothing
        except OSError as e:
            raise UserError(f"{output}: cannot write ({e.strerror}); choose a writable -o path") from None
        res = {"file": str(output), "format": fmt, "run": run["name"], "k": k, "rows": len(lines)}
        if as_json:
            print_json(res)
        else:
            _console().print(f"Wrote {len(lines)} rows of {run['name']}:{k} to {output} ({fmt})")


def export_lines(st: Store, run_id: int, k: int, fmt: str, system: str | None = None) -> Iterator[dict]:
    data = st.dataset(run_id, k)
    rats = st.get_rationales(r for demos in data.values() for r, _ in demos)
    examples = {e["id"]: e for e in st.list_examples(state="all")}
    for ex_id, demos in data.items():
        ex = examples[ex_id]
        for rid, w in demos:
            r = rats[rid]
            if fmt == "openai":
                msgs = [{"role": "system", "content": system}] if system else []
                msgs += [{"role": "user", "content": ex["question"]}, {"role": "assistant", "content": r["text"]}]
                yield {"messages": msgs}
            else:
                yield {
                    "id": ex_id, "question": ex["question"], "answer": ex["answer"], "rationale": r["text"],
                    "rationale_answer": r["answer"], "weight": w, "rationale_id": rid, "source": r["source"],
                }


def _show_doc(st: Store, run: dict, k: int) -> dict:
    it = st.get_iteration(run["id"], k)
    owner = it["run_id"]  # the run that holds k's rows (a replay's inherited k: its parent's)
    counts = st.iteration_counts(run["id"], k)
    teachers = st.teacher_call_stats(run["id"], k)  # per teacher: requests, cached, tokens, latency, cost
    steps = st.step_details(owner, k)
    infos = {d["step"]: d["info"] or {} for d in steps}
    rejections: dict[str, int] = {}
    for step in ("verify", "agree"):
        for why, cnt in (infos.get(step, {}).get("rejected") or {}).items():
            rejections[why] = rejections.get(why, 0) + cnt
    train = infos.get("train", {})
    if train.get("skipped") == "unchanged":
        training = "skipped: the dataset equals the previous version (loop.on_unchanged = \"skip\"); the previous adapter is kept"
    elif train.get("skipped"):
        training = "skipped: nothing accepted yet; the adapter carries over"
    elif train:
        training = f"{train.get('steps')} steps on {train.get('examples')} examples"
        if (train.get("processes") or 1) > 1:
            training += f" on {train['processes']} processes"
        if train.get("length"):
            ln = train["length"]
            training += (f"; {ln.get('truncated_contexts', 0)} contexts shortened, {ln.get('dropped_rows', 0)} rows dropped"
                         + (f" ({', '.join(f'{w} {c}' for w, c in ln['dropped'].items())})" if ln.get("dropped") else ""))
    else:
        training = "not run yet"
    from loop.report.summary import best_k, done_iterations

    bk = best_k(done_iterations(st, run))
    doc = {
        "run": run["name"], "run_id": run["id"], "k": k, "best": bk == k, "best_k": bk,
        "training": training, "train_skipped": train.get("skipped"),
        "rejections": dict(sorted(rejections.items(), key=lambda kv: (-kv[1], kv[0]))),
        "status": it["status"], "started": it["started"],
        "finished": it["finished"], "metrics": it["metrics"], "adapter_path": it["adapter_path"],
        "adapter_sha256": it["adapter_sha256"], "stop_reason": it["stop_reason"],
        "steps": steps,
        "dataset": {"size": st.dataset_size(run["id"], k), "changed": len(st.changed_examples(run["id"], k))},
        "predictions": counts["predictions"],
        "rationales": counts["rationales"],
        "teacher_calls": {**counts["teacher_calls"],
                          "requests": sum(t["requests"] for t in teachers.values()),
                          "cached": sum(t["cached"] for t in teachers.values()), "teachers": teachers},
    }
    if owner != run["id"]:
        doc["inherited_from"] = st.get_run(owner)["name"]
    return doc
