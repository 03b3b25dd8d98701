"""The iteration state machine (DESIGN §2): baseline, mine, teach, agree,
version, train, evaluate, commit — resumable at the first unfinished step.

    o = Orchestrator(ws, cfg, store)
    o.preflight()                 # validates templates, teachers, student, data; writes nothing
    outcome = o.run_iterations()  # runs or resumes iterations until a stop rule fires

The steps themselves live in loop/core/steps/ (one module per group); each
gets a frozen StepContext (loop/core/steps/context.py: what it reads) and
returns a StepResult (what it writes).  This module owns the step order and
every state change: the run row, the student (loop/core/student_handle.py)
and which adapter it holds, the teacher pool, templates (re-read at every
iteration, so edits are picked up and recorded in prompt_versions), step
commits, stop requests, stop rules and the per-iteration summary.
"""

from __future__ import annotations

import hashlib
import threading
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Callable

from rich.console import Console

from teachers import redact

from loop.config.schema import Config
from loop.core.faults import crash_point
from loop.core.steps import STEP_ORDER
from loop.core.steps.context import UNCHANGED, StepContext, StepFn, StepResult, TrainResult, previous_iteration, step_info
from loop.core.steps.evaluate import evaluate
from loop.core.steps.mine import baseline, mine
from loop.core.steps.teach import agree, teach, verify
from loop.core.steps.train import train
from loop.core.steps.version import version
from loop.core.student_handle import StudentHandle
from loop.core.templates import TEMPLATES, TemplateSet
from loop.core.tracking import Tracking, open_tracking
from loop.daemon.heartbeat import Heartbeat
from loop.daemon.preflight import check_environment, check_inputs
from loop.errors import RunFailure, UserError
from loop.report.summary import best_k as best_of, step_line
from loop.terminal import SafeConsole, StepProgress

# the step of each name in STEP_ORDER (commit is the orchestrator's own)
STEPS: dict[str, StepFn] = {"baseline": baseline, "mine": mine, "teach": teach, "verify": verify, "agree": agree,
                            "version": version, "train": train, "evaluate": evaluate}
assert tuple(STEPS) == STEP_ORDER[:-1]


class StopRequested(Exception):
    """Raised at a safe point after SIGTERM/SIGINT (or `distillery stop`)."""


@dataclass
class Outcome:
    run_id: int
    run_name: str
    status: str  # done | stopped
    stop_reason: str | None
    iterations: list[int] = field(default_factory=list)  # the iterations finished by this call


class Orchestrator:
    def __init__(
        self,
        ws: Path,
        cfg: Config,
        store,
        *,
        run_name: str | None = None,
        console: Console | None = None,
        stop_event: threading.Event | None = None,
        heartbeat: Heartbeat | None = None,
        max_iterations: int | None = None,
        follow: bool = False,
        follow_poll_s: float = 2.0,
        quiet: bool = False,
    ) -> None:
        self.ws = Path(ws)
        self.cfg = cfg
        self.store = store
        self.run_name = run_name or cfg.run_name
        self.console = console or SafeConsole(stderr=False)
        self.stop_event = stop_event or threading.Event()
        self.hb = heartbeat or Heartbeat(None)
        self._iterations_override = max_iterations
        self.max_iterations = cfg.loop.max_iterations if max_iterations is None else max_iterations
        self.follow = follow
        self.follow_poll_s = follow_poll_s
        self.quiet = quiet
        self.fmt = cfg.task.answer_format
        self.templates: dict[str, Any] = {}
        self._template_set = TemplateSet(self.ws)
        self.run_id: int | None = None
        self.run: dict | None = None
        self.show_train_progress = not quiet
        self.live = StepProgress(self.console)
        self._pool = None
        self._step_t0 = 0.0
        self._follow_base = 0  # patience and max_iterations count from here after a wake-up
        self.tracker = Tracking()  # [track] report_to: opened by run_iterations (loop/core/tracking.py)
        self.timings: dict[str, float] = {}  # seconds by category, for bench/loop_bench.py
        # the student in memory, which adapter it holds, the vLLM server (loop/core/student_handle.py)
        self.model = StudentHandle(cfg, self.ws, console=self.console, quiet=quiet, timings=self.timings)

    # ------------------------------------------------------------------ checks
    def preflight(self) -> None:
        """Everything that can be wrong with the inputs, checked before anything
        is written: templates, teachers, data, the student model."""
        run = self.store.find_run(self.run_name)
        if run is None and self.run_name != self.cfg.run_name:
            raise UserError(f"no run named {self.run_name!r}; see `distillery runs`, or omit --run to use {self.cfg.run_name!r}")
        if run is not None and run.get("parent_run") is not None:
            self.set_config(self._run_config(run))
        # the checks live in loop/daemon/preflight.py (`run --detach` makes the first ones too)
        self.templates = check_inputs(self.ws, self.cfg, self.run_name, templates=self._template_set)
        check_environment(self.ws, self.cfg, self.store)
        _ = self.student  # loading errors (unknown model, bad file) are input errors
        self._check_lengths()

    def _check_lengths(self) -> None:
        """Rows that cannot fit student.max_length are a config error now, not a
        silent cut later (loop/core/trainset.py)."""
        from loop.core.trainset import check_task_lengths

        if self.cfg.task.kind == "arithmetic":
            from loop.data.task import generate_task

            t = self.cfg.task
            pool, dev = generate_task(t.seed, t.pool_size, t.dev_size, t.difficulty, t.max_number)
        else:
            pool, dev = self.store.list_examples("pool"), self.store.list_examples("dev")
        check_task_lengths(self.cfg, self.student.tokenizer, self.templates, pool, dev)

    def set_config(self, cfg: Config) -> None:
        """Use `cfg` (a replayed run's own settings) instead of distillery.toml."""
        self.cfg = cfg
        self.fmt = cfg.task.answer_format
        if self._iterations_override is None:
            self.max_iterations = cfg.loop.max_iterations
        self._pool = None
        self.model.configure(cfg)

    def _run_config(self, run: dict) -> Config:
        from pydantic import ValidationError

        try:
            return Config.model_validate(run["config"])
        except ValidationError as e:
            raise UserError(f"run {run['name']!r}: its stored config no longer validates ({e.errors()[0]['msg']})") from None

    def load_templates(self, strict: bool) -> dict[str, Any]:
        """The templates from the workspace (defaults otherwise), each test-
        rendered (loop/core/templates.py).  strict: a broken one is a
        UserError; otherwise the previous version is kept and the problem logged."""

        def warn(name: str, e: Exception) -> None:
            self.store.log_event(self.run_id, None, None, "warning", f"template {name!r} not reloaded: {e}")
            self.console.print(f"[yellow]template {name!r} has an error, keeping the previous version:[/] {e}")

        return self._template_set.load(strict, previous=self.templates, warn=warn)

    # ------------------------------------------------------------------ student
    @property
    def student(self):
        """The student model in this process (loaded on first use)."""
        return self.model.student

    @property
    def loaded_adapter(self) -> Any:
        """The adapter the in-memory student holds (StudentHandle.loaded)."""
        return self.model.loaded

    @property
    def cfg(self) -> Config:
        return self._cfg

    @cfg.setter
    def cfg(self, cfg: Config) -> None:
        self._cfg = cfg
        if "model" in self.__dict__:  # the student loads with the settings in force when it loads
            self.model.cfg = cfg

    # ------------------------------------------------------------------ teachers
    @property
    def teacher_pool(self):
        if self._pool is None:
            from teachers.pool import TeacherPool

            self._pool = TeacherPool(self.cfg.teachers, self.store, self.cfg.loop.budget_usd, run_id=self.run_id)
        return self._pool

    # ------------------------------------------------------------------ what the steps get
    def step_context(self, k: int) -> StepContext:
        """What the steps of iteration k read (loop/core/steps/context.py)."""
        return StepContext(
            cfg=self.cfg, store=self.store, ws=self.ws, run_name=self.run_name, run_id=self.run_id, k=k,
            templates=MappingProxyType(dict(self.templates)), model=self.model, teachers=lambda: self.teacher_pool,
            progress=self.progress, check_stop=self.check_stop, stop_requested=self.stop_requested,
            timed=self.timed, tracker=self.tracker, show_train_progress=self.show_train_progress,
        )

    def step_info(self, k: int, step: str) -> dict:
        return step_info(self.store, self.run_id, k, step)

    def previous_iteration(self, k: int) -> dict | None:
        """Iteration k-1 of this run (inherited from the parent for a replay)."""
        return previous_iteration(self.store, self.run_id, k)

    def prompt_version(self, template) -> str:
        from prompts import record_prompt_version

        return record_prompt_version(self.store, template)

    # ------------------------------------------------------------------ step plumbing
    @contextmanager
    def timed(self, category: str):
        """Add the body's wall time to timings[category] (bench/loop_bench.py)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.timings[category] = self.timings.get(category, 0.0) + time.perf_counter() - t0

    def stop_requested(self) -> bool:
        return self.stop_event.is_set()

    def check_stop(self) -> None:
        if self.stop_event.is_set():
            raise StopRequested()

    def progress(self, step: str, done: int, total: int | None) -> None:
        # the first and last update of a phase are always written; the ones in
        # between at most every heartbeat.min_interval
        self.hb.update(step=step, progress={"done": done, "total": total},
                       force=done == 0 or (total is not None and done >= total))
        if not self.quiet and step != "train":  # the trainer draws its own bar
            self.live.update(step, done, total)

    def commit_step(self, k: int, step: str, info: dict, write: Callable[[], Any]) -> None:
        """The step's writes and its `finish_step` in one transaction."""
        info["seconds"] = round(time.perf_counter() - self._step_t0, 3)
        t0 = time.perf_counter()
        crash_point(f"{step}:{k}:before")
        with self.store.transaction():
            write()
            crash_point(f"{step}:{k}:inside")  # killed here, the whole transaction rolls back
            self.store.finish_step(self.run_id, k, step, info)
        crash_point(f"{step}:{k}:after")
        self.timings["store"] = self.timings.get("store", 0.0) + time.perf_counter() - t0

    # ------------------------------------------------------------------ the run
    def _open_run(self) -> None:
        run = self.store.find_run(self.run_name)
        if run is None:
            from loop.data.task import ensure_task

            ensure_task(self.store, self.cfg.task)
            self.run_id = self.store.create_run(self.run_name, redact(self.cfg.model_dump(mode="json")))
            self.store.log_event(self.run_id, None, None, "created", f"run {self.run_name!r} created")
            run = self.store.get_run(self.run_id)
        else:
            from loop.data.task import ensure_task

            ensure_task(self.store, self.cfg.task)
            self.run_id = run["id"]
            if run["config_hash"] != self._config_hash() and run.get("parent_run") is None:
                self.store.log_event(self.run_id, None, None, "info", "distillery.toml changed since the run was created; using the current file")
        self.run = run
        self.store.set_run_status(self.run_id, "running")
        self.hb.update(run=self.run_name, run_id=self.run_id, state="running", force=True)

    def _config_hash(self) -> str:
        from store.util import dumps, sha256_text

        return sha256_text(dumps(redact(self.cfg.model_dump(mode="json"))) or "{}")

    def first_k(self) -> int:
        return (self.run["parent_k"] + 1) if self.run.get("parent_run") is not None else 0

    def run_iterations(self) -> Outcome:
        """Run or resume iterations until a stop rule fires (or a stop request)."""
        self._open_run()
        done: list[int] = []
        outcome_status, reason = "done", None
        try:
            self.tracker = open_tracking(self)
            while True:
                k, reason = self._next_k()
                while reason is None:
                    reason = self.iteration(k)
                    done.append(k)
                    k += 1
                self.store.set_run_status(self.run_id, "done")
                self.store.log_event(self.run_id, k - 1, None, "finished", f"run stopped: {reason}", {"reason": reason})
                if not self.follow or reason == "budget":
                    break
                if not self._idle_until_change():
                    outcome_status = "stopped"
                    break
        except StopRequested:
            outcome_status = "stopped"
            self.store.set_run_status(self.run_id, "stopped")
            self.store.log_event(self.run_id, None, None, "stop", "stopped on request at a safe point")
            self.hb.update(state="stopped", force=True)
            if not self.quiet:
                self.console.print("[yellow]stopped at a safe point; `distillery run` resumes[/]")
        except UserError as e:
            self._fail(str(e))
            raise
        except RunFailure as e:
            self._fail(str(e))
            raise
        except Exception as e:  # a bug or an environment failure: keep the trace in the event log
            self._fail(f"{type(e).__name__}: {e}", traceback.format_exc())
            raise RunFailure(f"iteration failed: {type(e).__name__}: {e} (the run can be resumed with `distillery run`)") from e
        self.tracker.close(outcome_status)
        if outcome_status == "done":
            self.hb.update(state="done", stop_reason=reason, force=True)
        return Outcome(self.run_id, self.run_name, outcome_status, reason, done)

    def _fail(self, message: str, tb: str | None = None) -> None:
        try:
            self.store.set_run_status(self.run_id, "failed")
            self.store.log_event(self.run_id, None, None, "error", message, {"traceback": tb} if tb else None)
        finally:
            self.hb.update(state="failed", last_error=message, force=True)
            self.tracker.close("failed")

    def _next_k(self) -> tuple[int, str | None]:
        """Where to continue: the first iteration not done; or, when the last
        done iteration already meets a stop rule under the current settings,
        (k, reason) to report that nothing is left."""
        own = [it for it in self.store.list_iterations(self.run_id) if it["k"] >= self.first_k()]
        finished = [it["k"] for it in own if it["status"] == "done"]
        if not finished:
            return self.first_k(), None
        last = max(finished)
        reason = self.stop_reason(last, self.store.get_iteration(self.run_id, last)["metrics"])
        return last + 1, reason

    def iteration(self, k: int) -> str | None:
        """Run the unfinished steps of iteration k; return the stop reason."""
        with self.timed("iteration"):
            return self._iteration(k)

    def _iteration(self, k: int) -> str | None:
        self.store.start_iteration(self.run_id, k)
        fresh = self.load_templates(strict=False) if self.templates else self.load_templates(strict=True)
        changed = [n for n in TEMPLATES if self.templates.get(n) is not None and self.templates[n].version != fresh[n].version]
        self.templates = fresh
        for t in self.templates.values():
            self.prompt_version(t)
        if changed:
            self.store.log_event(self.run_id, k, None, "templates", f"templates changed: {', '.join(changed)}",
                                 {n: self.templates[n].version for n in changed})
        status = self.store.steps(self.run_id, k)
        for step in STEP_ORDER[:-1]:
            if step == "baseline" and k != 0:
                continue
            if status.get(step) == "done":
                continue
            self.check_stop()
            self.store.begin_step(self.run_id, k, step)
            self.hb.update(iteration=k, step=step, progress=None, force=True)
            self._step_t0 = time.perf_counter()
            try:
                info = self._run_step(k, step)
            finally:
                self.live.close()
            self.timings[step] = self.timings.get(step, 0.0) + time.perf_counter() - self._step_t0
            if not self.quiet:
                self.console.print(f"[dim]k={k}[/] {step:<9} {step_line(step, info)}")
        return self._commit(k)

    def _run_step(self, k: int, step: str) -> dict:
        """Run one step on a fresh context; apply what it changed (the adapter
        in memory) and commit what it wrote; return its info."""
        result: StepResult = STEPS[step](self.step_context(k))
        if isinstance(result, TrainResult):
            if result.holds is not UNCHANGED:
                self.model.holds(result.holds)
            if result.stopped:  # training stopped at a stop request: the safe point is here
                self.check_stop()
                raise StopRequested()
        self.commit_step(k, step, result.info, result.write or (lambda: None))
        return result.info

    def _commit(self, k: int) -> str | None:
        self.check_stop()
        self._step_t0 = time.perf_counter()
        metrics = self.metrics(k)
        reason = self.stop_reason(k, metrics)
        train = self.step_info(k, "train")
        self.store.begin_step(self.run_id, k, "commit")

        def write() -> None:
            self.store.finish_iteration(self.run_id, k, metrics, train.get("adapter"), train.get("adapter_sha256"), reason)
            self.store.log_event(self.run_id, k, "commit", "iteration", f"iteration {k} done", {"dev_acc": metrics.get("dev_acc")})

        self.commit_step(k, "commit", {"stop_reason": reason}, write)
        if self.tracker.backends:
            self.tracker.log_iteration(k, metrics, self.store.teacher_call_stats(self.run_id, k))
        self.hb.update(iteration=k, step="commit", last_dev_acc=metrics.get("dev_acc"),
                       spend_usd=self.store.spend(self.run_id), force=True)
        if not self.quiet:
            from loop.report.summary import print_iteration

            print_iteration(self.console, k, metrics, reason, self.store.teacher_call_stats(self.run_id, k))
        return reason

    # ------------------------------------------------------------------ metrics and stop rules
    def dev_history(self) -> list[tuple[int, float | None]]:
        """(k, dev accuracy) of every finished iteration, baseline as k = -1."""
        out = []
        root_k0 = self.store.get_iteration(self.run_id, 0) if self.first_k() > 0 else None
        base = (root_k0 or {}).get("metrics", {}).get("baseline_dev_acc")
        if base is None:
            base = self.step_info(0, "baseline").get("dev_acc") if self.first_k() == 0 else None
        out.append((-1, base))
        k = 0
        while True:
            try:
                it = self.store.get_iteration(self.run_id, k)
            except LookupError:
                break
            if it["status"] != "done":
                break
            out.append((k, it["metrics"].get("dev_acc")))
            k += 1
        return out

    def metrics(self, k: int) -> dict:
        info = {d["step"]: d["info"] or {} for d in self.store.step_details(self.run_id, k)}
        mine, teach, agree = info.get("mine", {}), info.get("teach", {}), info.get("agree", {})
        verify = info.get("verify", {})
        ver, train, ev = info.get("version", {}), info.get("train", {}), info.get("evaluate", {})
        hist = dict(self.dev_history())
        base = hist.get(-1)
        prev = hist.get(k - 1, base) if k > 0 else base
        acc = ev.get("dev_acc")
        times = {s: info[s].get("seconds") for s in STEP_ORDER[:-1] if info.get(s)}
        rejected: dict[str, int] = {}
        for step in (verify, agree):
            for why, n in (step.get("rejected") or {}).items():
                rejected[why] = rejected.get(why, 0) + n
        # the best iteration so far, this one included (ties: the earlier one)
        accs = {kk: a for kk, a in hist.items() if kk >= 0} | {k: acc}
        best_k = best_of([{"k": kk, "metrics": {"dev_acc": accs[kk]}} for kk in sorted(accs)])
        best_acc = accs.get(best_k)
        judge = verify.get("judge") or {}
        return {
            "dev_acc": acc, "dev_correct": ev.get("dev_correct"), "dev_n": ev.get("dev_n"),
            "pool_acc": ev.get("pool_acc"), "pool_errors": ev.get("pool_errors"),
            "baseline_dev_acc": base, "prev_dev_acc": prev,
            "delta": (acc - prev) if acc is not None and prev is not None else None,
            "mined": mine.get("mined"), "errors": mine.get("errors"),
            "refinements_asked": teach.get("refinements", 0),
            "refinements_accepted": agree.get("examples_accepted", 0) if k > 0 else 0,
            "rationales": verify.get("checked", agree.get("rationales")), "accepted": agree.get("accepted"),
            "verified": verify.get("passed"), "rejected": dict(sorted(rejected.items())),
            "teacher_calls": teach.get("calls"), "teacher_cached": teach.get("cached"),
            "teacher_requests": teach.get("requests"), "teacher_failed": teach.get("failed"),
            "spend_usd": teach.get("spend_usd", 0.0) + judge.get("spend_usd", 0.0),
            "spend_total_usd": self.store.spend(self.run_id),
            "dataset_size": ver.get("size"), "changed": ver.get("changed"),
            "train_examples": train.get("examples"), "train_steps": train.get("steps"),
            "loss_first": train.get("loss_first"), "loss_last": train.get("loss_last"),
            "train_skipped": train.get("skipped"), "length": train.get("length"),
            "best_k": best_k, "best_dev_acc": best_acc,
            "fixed": ev.get("fixed", []), "broken": ev.get("broken", []),
            "budget_hit": teach.get("budget_hit") or verify.get("budget_hit"),
            "budget_needed": max((n for n in (teach.get("budget_needed"), verify.get("budget_needed")) if n is not None),
                                 default=None),
            "times": times, "templates": teach.get("templates", {}),
        }

    def stop_reason(self, k: int, metrics: dict) -> str | None:
        lp = self.cfg.loop
        if self._budget_stop(metrics):
            return "budget"
        errs = metrics.get("pool_errors") if lp.eval_pool else None
        if errs == 0 and metrics.get("dev_acc") is not None:
            return "no_errors"
        if k + 1 >= self._follow_base + self.max_iterations:
            return "max_iterations"
        hist = [(kk, a) for kk, a in self.dev_history() if a is not None and (kk >= self._follow_base - 1)]
        hist = [(kk, a) for kk, a in hist if kk <= k]
        if len(hist) > lp.patience:
            best_before = max(a for _, a in hist[: -lp.patience])
            if max(a for _, a in hist[-lp.patience:]) <= best_before:
                return "patience"
        return None

    def _budget_stop(self, metrics: dict) -> bool:
        """Spent, or a call was refused and the cap still could not fit it: a
        budget stop holds while loop.budget_usd stays below what the refused
        call needed (settled spend + its estimate), so raising it (or removing
        it) lets the next `distillery run` go on."""
        lp = self.cfg.loop
        if lp.budget_usd is not None and self.store.spend(self.run_id) >= lp.budget_usd:
            return True
        if not metrics.get("budget_hit"):
            return False
        needed = metrics.get("budget_needed")
        if needed is None:  # an iteration committed before budget_needed was recorded
            return True
        return lp.budget_usd is not None and lp.budget_usd < needed

    # ------------------------------------------------------------------ --follow
    def _watch_state(self) -> tuple:
        import prompts

        files = []
        for name in TEMPLATES:
            try:
                files.append(prompts.template_path(name, self.ws).read_bytes())
            except OSError:
                files.append(b"")
        return (self.store.count_examples("pool"), hashlib.sha256(b"\0".join(files)).hexdigest())

    def _idle_until_change(self) -> bool:
        """Idle after convergence; True when new pool examples or a template
        change arrive (then iterations continue), False on a stop request."""
        before = self._watch_state()
        self.hb.update(state="idle", step=None, progress=None, force=True)
        if not self.quiet:
            self.console.print("[dim]converged; idling until `data add` brings pool examples or a template changes (Ctrl-C to stop)[/]")
        while not self.stop_event.wait(self.follow_poll_s):
            now = self._watch_state()
            if now != before:
                why = "new pool examples" if now[0] != before[0] else "a template changed"
                k_next, _ = self._next_k()
                self._follow_base = k_next
                self.store.set_run_status(self.run_id, "running")
                self.store.log_event(self.run_id, k_next, None, "wake", f"woke up: {why}")
                self.hb.update(state="running", force=True)
                if not self.quiet:
                    self.console.print(f"[bold]woke up:[/] {why}; continuing at iteration {k_next}")
                return True
        return False
