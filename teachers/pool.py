"""Many requests over several teachers at once, each teacher with its own limits.

`TeacherPool.run(requests)` starts every request concurrently; each teacher's
RateLimiter decides how many of its requests are actually in flight, and the
shared Budget how many it can afford (a call waits for calls in flight to
settle when only their reservations keep it out).  One failed request never
raises (it comes back with status "error").  A budget or auth/validation
error stops the run: requests not yet sent come back "skipped", the ones in
flight finish and are cached, and the first such error is raised with
`.results` holding the full result list (same order as the requests) so the
loop can keep what succeeded and report why it stopped.  A teacher none of
whose requests succeeded raises TeacherCallsFailed (with `.results`) after
the batch: an iteration must not go on as if it had heard from it.

The requests of a `batch = true` teacher go through teachers/batch.py
(BatchRunner: one batch job, same cache keys, results delivered as the job
ends); those of every other teacher one by one through TeacherClient.complete.
TeacherRequest and CallResult are teachers/client.py's, so that batch.py
needs nothing from this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import threading
from typing import Any, Callable, Iterable

from . import cache
from .batch import BatchRunner
from .budget import Budget
from .client import CallResult, TeacherClient, TeacherRequest
from .config import TeacherConfig
from .errors import BudgetExceeded, TeacherCallsFailed, TeacherError


class TeacherPool:
    def __init__(self, cfgs: Iterable[TeacherConfig], store: Any, budget_usd: float | None = None, *,
                 spent_usd: float | None = None, run_id: int | None = None) -> None:
        """`spent_usd` defaults to what the store says was already spent
        (for `run_id` when given), so a resumed run keeps its budget."""
        self.store = store
        if spent_usd is None:
            spent_usd = cache.spend(store, run_id) if budget_usd is not None else 0.0
        self.budget = Budget(budget_usd, spent_usd)
        self.clients: dict[str, TeacherClient] = {}
        for cfg in cfgs:
            if cfg.is_self:
                continue  # the loop samples the student itself
            if cfg.name in self.clients:
                raise ValueError(f"two teachers are named {cfg.name!r}; names must be unique")
            self.clients[cfg.name] = TeacherClient(cfg, store, self.budget)

    @property
    def http_attempts(self) -> int:
        return sum(c.http_attempts for c in self.clients.values())

    async def run(self, requests: Iterable[TeacherRequest], *, should_stop: Callable[[], bool] | None = None,
                  on_progress: Callable[[int, int], None] | None = None) -> list[CallResult]:
        """Every request, concurrently; results in request order.

        `on_progress(done, total)` after each request completes (the loop's
        progress display).  `should_stop()` is polled every STOP_POLL_S: once
        true, requests not finished — waiting for a slot or in flight — are
        cancelled and come back "skipped", finished ones are kept (they are
        cached as they complete), and `run` returns at once instead of
        waiting for a slow API (a request cancelled in flight may still be
        billed by the provider; nothing of it is stored).  A batch teacher's
        job keeps running at the provider after a stop; the next run polls it."""
        reqs = list(requests)
        for r in reqs:
            if r.teacher not in self.clients:
                known = ", ".join(self.clients) or "(none)"
                raise ValueError(f"request for unknown teacher {r.teacher!r}; configured LiteLLM teachers: {known}")
        stop = asyncio.Event()
        fatal: list[TeacherError] = []
        results: list[CallResult | None] = [None] * len(reqs)  # None at the end: skipped (stopped)
        done = 0

        def deliver(i: int, res: CallResult) -> None:
            nonlocal done
            results[i] = res
            done += 1
            if on_progress is not None:
                on_progress(done, len(reqs))

        async def one(i: int, r: TeacherRequest) -> None:
            client = self.clients[r.teacher]
            if stop.is_set():
                return deliver(i, _skipped(r))
            try:
                res = await client.complete(r.messages, template=r.template, prompt_version=r.prompt_version,
                                            sample_index=r.sample_index, run_id=r.run_id, k=r.k, tag=r.tag,
                                            stop_event=stop)
            except TeacherError as e:  # fatal kinds only: transient ones come back as status="error"
                stop.set()
                fatal.append(e)
                status = "skipped" if isinstance(e, BudgetExceeded) else "error"
                res = CallResult("", None, status, str(e), 0.0, False, r.teacher, type(e).__name__, 0, r.tag)
            except asyncio.CancelledError:  # a stop request (below): nothing of this call is kept
                return
            deliver(i, res)

        async def batched(name: str, items: list[tuple[int, TeacherRequest]]) -> None:
            try:
                await BatchRunner(self.clients[name], stop, deliver).run(items)
            except TeacherError as e:  # fatal kinds; what the batch did not deliver comes back skipped
                stop.set()
                fatal.append(e)
            except asyncio.CancelledError:  # a stop request: the job runs on, the next run polls it
                pass

        by_batch: dict[str, list[tuple[int, TeacherRequest]]] = {}
        direct: list[tuple[int, TeacherRequest]] = []
        for i, r in enumerate(reqs):
            (by_batch.setdefault(r.teacher, []) if self.clients[r.teacher].cfg.batch else direct).append((i, r))
        with gc_frozen():
            tasks = [asyncio.ensure_future(one(i, r)) for i, r in direct]
            tasks += [asyncio.ensure_future(batched(name, items)) for name, items in by_batch.items()]
            watcher = asyncio.ensure_future(_cancel_on_stop(should_stop, stop, tasks)) if should_stop else None
            try:
                await asyncio.gather(*tasks)
            finally:
                if watcher is not None:
                    watcher.cancel()
        results = [res if res is not None else _skipped(r) for res, r in zip(results, reqs)]
        if fatal:
            # Prefer the budget error when present: it is the one the loop reports as a stop reason.
            err = next((e for e in fatal if isinstance(e, BudgetExceeded)), fatal[0])
            err.results = results  # type: ignore[attr-defined]
            raise err
        failed = _failed_teacher(results)
        if failed is not None:
            failed.results = results
            raise failed
        return results

    def run_sync(self, requests: Iterable[TeacherRequest], **kw) -> list[CallResult]:
        """`run` from synchronous code (the loop's steps)."""
        return asyncio.run(self.run(requests, **kw))


STOP_POLL_S = 0.1


async def _cancel_on_stop(should_stop: Callable[[], bool], stop: asyncio.Event, tasks: list) -> None:
    while not should_stop():
        await asyncio.sleep(STOP_POLL_S)
    stop.set()  # requests that have not started are skipped
    for t in tasks:
        if not t.done():
            t.cancel()


_freeze_lock = threading.Lock()
_freeze_depth = 0  # pools running now, in any thread
_we_froze = False  # whether the freeze in place is ours to undo


@contextlib.contextmanager
def gc_frozen():
    """Keep the objects that exist now out of the cyclic GC while the batch runs.

    torch, transformers and LiteLLM leave a few million long-lived objects
    behind at import.  A full (generation 2) collection walks all of them and
    stalls the event loop for 50-200 ms on this class of machine, which is a
    whole wave of in-flight requests doing nothing (seen as the main loss in
    bench/teacher_bench.py).  `gc.freeze()` moves them to the permanent
    generation, so collections during the batch only walk what the batch
    allocates; `gc.unfreeze()` afterwards hands them back, so nothing that
    becomes garbage later is kept forever.  Nested or concurrent pools share
    one freeze, and a freeze the application made itself (gc.get_freeze_count()
    already > 0 when the first pool starts) is left alone."""
    global _freeze_depth, _we_froze
    with _freeze_lock:
        if _freeze_depth == 0:
            _we_froze = gc.get_freeze_count() == 0
            if _we_froze:
                gc.freeze()
        _freeze_depth += 1
    try:
        yield
    finally:
        with _freeze_lock:
            _freeze_depth -= 1
            if _freeze_depth == 0 and _we_froze:
                gc.unfreeze()
                _we_froze = False


def _failed_teacher(results: list[CallResult]) -> TeacherCallsFailed | None:
    """The error for the first teacher whose every request failed, else None."""
    by_teacher: dict[str, list[CallResult]] = {}
    for r in results:
        by_teacher.setdefault(r.teacher or "", []).append(r)
    for name, rs in by_teacher.items():
        if all(r.status == "error" for r in rs):
            kinds: dict[str, int] = {}
            for r in rs:
                kinds[r.error_type or "error"] = kinds.get(r.error_type or "error", 0) + 1
            first = (rs[0].error or "").removeprefix(f"teacher {name!r}: ")
            summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
            return TeacherCallsFailed(
                f"all {len(rs)} of its calls failed ({summary}); the first: {first}. Fix the cause and run again: "
                "failed calls are recorded (teacher_calls.status = 'error') but not cached, so the next run asks again",
                teacher=name)
    return None


def _skipped(r: TeacherRequest) -> CallResult:
    return CallResult("", None, "skipped", "run stopped before this call", 0.0, False, r.teacher, "Stopped", 0, r.tag)
