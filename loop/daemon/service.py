"""Running the loop as a long-lived process: one writer per workspace, a pid
file, a heartbeat, clean stops, background runs.

- `WorkspaceLock`: an fcntl.flock on <ws>/.distillery/run.lock, held for the
  whole run, plus run.pid saying who holds it (pid, since, run).  The kernel
  drops the lock when the process dies, even by SIGKILL, so a crashed run
  never leaves a stale lock behind: the next `run` simply takes it.
- `run_loop`: lock → preflight → heartbeat → Orchestrator.run_iterations, with
  SIGTERM/SIGINT turned into a stop request that the orchestrator honours at
  the next safe point (between steps, between generation chunks, at the
  trainer's next optimizer step, which writes a checkpoint).
- `detach`: start `python -m loop run ...` in its own session with output to
  <ws>/.distillery/run.log.
- `stop` / `status`: read the pid file and status.json; never take the lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from rich.console import Console

from loop.errors import UserError
from loop.daemon.preflight import check_inputs  # the checks that need no model: templates, teachers
from loop.daemon.heartbeat import Heartbeat, read_json, state_dir, utcnow, write_json_atomic
from loop.terminal import SafeConsole


class WorkspaceBusy(UserError):
    """Another process is running the loop in this workspace."""


class WorkspaceLock:
    def __init__(self, ws: Path) -> None:
        self.ws = Path(ws)
        self.dir = state_dir(self.ws)
        self.path = self.dir / "run.lock"
        self.pid_path = self.dir / "run.pid"
        self.fd: int | None = None

    def acquire(self, run_name: str, argv: list[str] | None = None) -> "WorkspaceLock":
        self.dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        for attempt in range(10):  # a `status` probing the lock holds it for microseconds
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as e:
                if e.errno not in (errno.EAGAIN, errno.EACCES):
                    os.close(fd)
                    raise
                if attempt == 9:
                    os.close(fd)
                    who = read_json(self.pid_path) or {}
                    raise WorkspaceBusy(
                        f"another run holds this workspace: pid {who.get('pid', '?')} since {who.get('since', '?')} "
                        f"(run {who.get('run', '?')!r}); watch it with `distillery status`, stop it with "
                        "`distillery stop`, or use another workspace"
                    ) from None
                time.sleep(0.1)
        self.fd = fd
        write_json_atomic(self.pid_path, {"pid": os.getpid(), "since": utcnow(), "run": run_name,
                                          "argv": argv if argv is not None else sys.argv})
        return self

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            who = read_json(self.pid_path) or {}
            if who.get("pid") == os.getpid():
                self.pid_path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> "WorkspaceLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holder(ws: Path) -> dict | None:
    """{"pid", "since", "run"} of the process holding the workspace, or None."""
    path = state_dir(ws) / "run.lock"
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return read_json(state_dir(ws) / "run.pid") or {"pid": None}
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- running


def install_stop_handlers(stop: threading.Event, console: Console | None = None) -> dict:
    """SIGTERM/SIGINT → stop at the next safe point; a second SIGINT aborts.
    Returns the previous handlers (restore them with `restore_handlers`)."""

    def on_signal(signum, frame):
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        if console is not None:
            console.print(f"[yellow]{signal.Signals(signum).name}: stopping at the next safe point...[/]")

    if threading.current_thread() is not threading.main_thread():
        return {}  # signals can only be handled on the main thread
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return previous


def restore_handlers(previous: dict) -> None:
    for s, h in previous.items():
        signal.signal(s, h)


def run_loop(
    ws: Path,
    cfg,
    *,
    run_name: str | None = None,
    iterations: int | None = None,
    follow: bool = False,
    console: Console | None = None,
    quiet: bool = False,
    stop_event: threading.Event | None = None,
    handle_signals: bool = True,
):
    """Run (or resume) the loop in this process, holding the workspace lock."""
    from loop.core.orchestrator import Orchestrator
    from loop.config.workspace import open_store

    console = console or SafeConsole()
    check_inputs(ws, cfg, run_name)
    stop = stop_event or threading.Event()
    lock = WorkspaceLock(ws).acquire(run_name or cfg.run_name)
    hb = None
    previous: dict = {}
    st = open_store(ws, write=True)
    try:
        if handle_signals:
            previous = install_stop_handlers(stop, console)
        o = Orchestrator(ws, cfg, st, run_name=run_name, console=console, stop_event=stop,
                         max_iterations=iterations, follow=follow, quiet=quiet)
        o.preflight()
        hb = Heartbeat(ws).start()
        o.hb = hb
        hb.update(run=o.run_name, state="running", force=True)
        outcome = o.run_iterations()
        return outcome, o
    finally:
        restore_handlers(previous)
        if hb is not None:
            hb.close()
        st.close()
        lock.release()


def detach(ws: Path, args: list[str]) -> dict:
    """Start `distillery run ARGS` in the background; returns {"pid", "log"}.
    Waits a moment so an immediate failure (lock held, bad model) is reported
    here rather than only in the log."""
    log = state_dir(ws) / "run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        out.write(f"\n==== {utcnow()} distillery run {' '.join(args)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "loop", "run", "-w", str(ws), *args],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "DISTILLERY_DETACHED": "1", "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.time() + 10
    while time.time() < deadline:
        rc = proc.poll()
        if rc is not None:
            return {"pid": proc.pid, "log": str(log), "exited": rc}
        who = holder(ws)
        if who and who.get("pid") == proc.pid:
            break
        time.sleep(0.2)
    return {"pid": proc.pid, "log": str(log), "exited": None}


def stop(ws: Path, wait: bool = True, timeout: float = 120.0) -> dict:
    """SIGTERM the running loop; with wait, until it has released the workspace."""
    who = holder(ws)
    if not who or not who.get("pid"):
        return {"running": False, "message": "no run is in progress in this workspace"}
    pid = int(who["pid"])
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return {"running": False, "message": f"pid {pid} is gone"}
    t0 = time.time()
    if wait:
        while time.time() - t0 < timeout:
            if holder(ws) is None:
                return {"running": False, "pid": pid, "stopped": True, "seconds": round(time.time() - t0, 1),
                        "message": f"run {who.get('run')!r} (pid {pid}) stopped at a safe point"}
            time.sleep(0.2)
        return {"running": True, "pid": pid, "stopped": False,
                "message": f"sent SIGTERM to pid {pid}; still finishing after {timeout:.0f}s (check `distillery status`)"}
    return {"running": True, "pid": pid, "stopped": None, "message": f"sent SIGTERM to pid {pid}"}


def status(ws: Path, store) -> dict:
    """Everything `distillery status` shows, as one JSON-able document."""
    who = holder(ws)
    hb = read_json(state_dir(ws) / "status.json") or {}
    runs = store.list_runs()
    run = None
    if hb.get("run"):
        run = store.find_run(hb["run"])
    if run is None and runs:
        run = runs[-1]
    doc: dict = {"workspace": str(ws), "running": who is not None,
                 "pid": who.get("pid") if who else None, "since": who.get("since") if who else None}
    if run is None:
        if who:
            doc.update(run=hb.get("run") or who.get("run"), run_id=None, run_status="starting", state=hb.get("state", "starting"),
                       iteration=None, step=None, progress=None, heartbeat=hb.get("heartbeat"), heartbeat_age_s=None,
                       iterations_done=0, dev_acc=None, baseline_dev_acc=None, stop_reason=None, spend_usd=0.0,
                       teacher_calls=None, last_error=None, runs=[])
            return doc
        doc.update(run=None, message="no runs yet; start one with `distillery run`")
        return doc
    its = store.list_iterations(run["id"])
    done = [it for it in its if it["status"] == "done"]
    last = done[-1] if done else None
    age = None
    if hb.get("heartbeat_unix"):
        age = round(time.time() - float(hb["heartbeat_unix"]), 1)
    errors = [e for e in store.list_events(run["id"]) if e["kind"] == "error"]
    doc.update({
        "run": run["name"], "run_id": run["id"], "run_status": run["status"],
        "state": hb.get("state") if who else ("interrupted" if run["status"] == "running" else run["status"]),
        "iteration": hb.get("iteration") if who else (last["k"] if last else None),
        "step": hb.get("step") if who else None,
        "progress": hb.get("progress") if who else None,
        "heartbeat": hb.get("heartbeat"), "heartbeat_age_s": age,
        "iterations_done": len(done),
        "dev_acc": (last or {}).get("metrics", {}).get("dev_acc"),
        "baseline_dev_acc": (done[0]["metrics"].get("baseline_dev_acc") if done else None),
        "stop_reason": (last or {}).get("stop_reason"),
        "spend_usd": store.spend(run["id"]),
        "teacher_calls": _teacher_calls(store, run["id"], hb.get("iteration") if who else None, its),
        "last_error": errors[-1]["message"] if errors else None,
        "runs": [{"name": r["name"], "status": r["status"], "parent_run": r["parent_run"], "parent_k": r["parent_k"]} for r in runs],
    })
    return doc


def _teacher_calls(store, run_id: int, running_k: int | None, its: list[dict]) -> dict:
    """Per teacher, the calls of the iteration in progress (else the run's
    latest) and of the whole run: `Store.teacher_call_stats`."""
    k = running_k if running_k is not None else (its[-1]["k"] if its else None)
    return {"k": k, "iteration": store.teacher_call_stats(run_id, k) if k is not None else {},
            "run": store.teacher_call_stats(run_id)}


def print_status(console: Console, doc: dict) -> None:
    from loop.report.summary import pct, teacher_line

    if doc.get("run") is None:
        console.print(doc.get("message", "no runs"))
        return
    rs = doc.get("run_status")
    if doc["running"]:
        state = "[green]running[/]" if rs != "starting" else "[green]starting[/] (loading the student)"
    elif rs == "running":
        state = "not running (interrupted; `distillery run` resumes it)"
    else:
        state = f"not running ({rs})"
    console.print(f"run [bold]{doc['run']}[/]: {state}" + (f", pid {doc['pid']} since {doc['since']}" if doc["running"] else ""))
    if doc["running"] and rs != "starting":
        prog = doc.get("progress") or {}
        p = f" {prog.get('done')}/{prog.get('total')}" if prog.get("total") else ""
        console.print(f"  iteration {doc.get('iteration')}, step {doc.get('step')}{p}; heartbeat {doc.get('heartbeat_age_s')}s ago")
    console.print(f"  iterations done: {doc['iterations_done']}; dev accuracy {pct(doc.get('dev_acc'))} "
                  f"(baseline {pct(doc.get('baseline_dev_acc'))}); spend ${doc.get('spend_usd') or 0:.4f}")
    tc = doc.get("teacher_calls") or {}
    for title, per_teacher in ((f"at iteration {tc.get('k')}", tc.get("iteration")), ("over the run", tc.get("run"))):
        if per_teacher:
            console.print(f"  teacher calls {title}:")
            for name, stats in per_teacher.items():  # names are user text: no markup
                console.print(f"    {name}: {teacher_line(stats)}", markup=False, soft_wrap=True)
    if doc.get("stop_reason"):
        console.print(f"  stopped by rule: {doc['stop_reason']}")
    if doc.get("last_error"):
        console.print(f"  [red]last error:[/] {doc['last_error']}")


__all__ = ["WorkspaceLock", "WorkspaceBusy", "holder", "run_loop", "detach", "stop", "status", "print_status",
           "install_stop_handlers", "check_inputs"]
