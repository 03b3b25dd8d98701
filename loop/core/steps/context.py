"""What a step reads and what it returns.

A step is a function `step(ctx: StepContext) -> StepResult`.  The context is
frozen: the run's settings, store and workspace, the iteration k, the
templates of this iteration, the student (loop/core/student_handle.py), the
teacher pool, and the orchestrator's progress / stop / timing hooks.  The
result holds what the step writes: its `info` (stored as the step's record,
which later steps read back) and `write`, the rows it produced, which the
orchestrator writes with `finish_step` in one transaction.  Training also
says what the in-memory weights are afterwards (TrainResult.holds): the
orchestrator records it.  Steps never change shared state themselves.
"""

from __future__ import annotations

import re
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

if TYPE_CHECKING:  # pragma: no cover
    from loop.config.schema import Config
    from loop.core.student_handle import StudentHandle


def safe_name(name: str) -> str:
    """A run name as a directory name (runs/<run>/iter-<k>)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name) or "run"


# --------------------------------------------------------------------------- run lookups


def step_info(store, run_id: int | None, k: int, step: str) -> dict:
    """The recorded info of `step` at iteration k ({} when not done)."""
    for d in store.step_details(run_id, k):
        if d["step"] == step:
            return d["info"] or {}
    return {}


def previous_iteration(store, run_id: int | None, k: int) -> dict | None:
    """Iteration k-1 of this run (inherited from the parent for a replay)."""
    if k <= 0:
        return None
    try:
        return store.get_iteration(run_id, k - 1)
    except LookupError:
        return None


# --------------------------------------------------------------------------- the context


@dataclass(frozen=True)
class StepContext:
    cfg: "Config"
    store: Any
    ws: Path
    run_name: str
    run_id: int | None
    k: int
    templates: Mapping[str, Any]
    model: "StudentHandle"  # the student: use(adapter), .student, adapter_sha, .vllm
    teachers: Callable[[], Any]  # the run's TeacherPool, made on first use
    progress: Callable[[str, int, int | None], None]
    check_stop: Callable[[], None]  # raises StopRequested at a safe point
    stop_requested: Callable[[], bool]
    timed: Callable[[str], AbstractContextManager]
    tracker: Any = None  # loop/core/tracking.py: Tracking
    show_train_progress: bool = False

    @property
    def fmt(self):
        return self.cfg.task.answer_format

    @property
    def teacher_pool(self):
        return self.teachers()

    def iter_dir(self, k: int) -> Path:
        return self.ws / "runs" / safe_name(self.run_name) / f"iter-{k}"

    def seed(self, k: int, salt: int) -> int:
        return (self.cfg.student.seed * 1_000_003 + k * 101 + salt) % 2**31

    def rel(self, path: Path | str | None) -> str | None:
        if path is None:
            return None
        p = Path(path)
        try:
            return str(p.resolve().relative_to(self.ws.resolve()))
        except ValueError:
            return str(p)

    def prompt_version(self, template) -> str:
        from prompts import record_prompt_version

        return record_prompt_version(self.store, template)

    # ------------------------------------------------------------------ lookups
    def step_info(self, k: int, step: str) -> dict:
        return step_info(self.store, self.run_id, k, step)

    def previous_iteration(self, k: int) -> dict | None:
        return previous_iteration(self.store, self.run_id, k)

    def adapter_of(self, k: int) -> str | None:
        info = self.step_info(k, "train")
        if info.get("adapter"):
            return info["adapter"]
        it = self.store.get_iteration(self.run_id, k)
        return it.get("adapter_path")

    def adapter_before(self, k: int) -> str | None:
        prev = self.previous_iteration(k)
        return prev.get("adapter_path") if prev else None

    def pool_examples(self, k: int) -> list[dict]:
        pool = self.store.list_examples("pool")
        lim = self.cfg.loop.mine_limit
        if lim is None or lim >= len(pool):
            return pool
        start = (k * lim) % len(pool)  # rotate through the pool across iterations
        return (pool + pool)[start : start + lim]

    def demo_answers(self, k: int, example_ids: list[str]) -> dict[str, str | None]:
        """Answer of each example's current demonstration: the teachers'
        consensus, which stands in for gold on unlabelled examples."""
        if not example_ids or k < 0:
            return {}
        data = self.store.dataset_for(self.run_id, k, example_ids)
        rats = self.store.get_rationales({d[0][0] for d in data.values() if d})
        return {e: rats[d[0][0]]["answer"] for e, d in data.items() if d and d[0][0] in rats}

    def previous_dev_predictions(self, k: int) -> dict[str, bool | None]:
        if k == 0:
            rows = self.store.list_predictions(self.run_id, 0, "baseline")
        else:
            prev = self.previous_iteration(k)
            rows = self.store.list_predictions(prev["run_id"], prev["k"], "eval") if prev else []
        return {r["example_id"]: r["correct"] for r in rows if r["sample"] == 0}


# --------------------------------------------------------------------------- results

UNCHANGED = object()  # TrainResult.holds when the step left the in-memory weights as they were


@dataclass
class StepResult:
    info: dict  # the step's record (its info JSON; what later steps and the summary read)
    write: Callable[[], None] | None = None  # its rows, written in the transaction that finishes the step


@dataclass
class TrainResult(StepResult):
    holds: Any = UNCHANGED  # the adapter the in-memory student holds after the step
    stopped: bool = False  # training stopped at a stop request: nothing to commit


StepFn = Callable[[StepContext], StepResult]
