"""Batch teachers: the requests of a `batch = true` teacher in one pool run go
as one job of the provider's batch API (OpenAI's /v1/files and /v1/batches,
through LiteLLM's acreate_file, acreate_batch, aretrieve_batch, afile_content,
acancel_batch and alist_batches), at the batch price.

`BatchRunner.run` for one teacher:

1. Every request is named as the synchronous path names it
   (TeacherClient.prepare): the same cache key, so an answer either path
   cached is returned at once and a batch answer is never asked or paid again.
2. Keys already in an open job of this teacher (a run stopped or killed while
   it waited) are not submitted again: that job is polled.
3. The other keys go as JSONL lines (custom_id = the cache key) in a new job:
   the file is uploaded, the job's row written to the store (status
   'submitting'), and only then is the batch created and its id stored.  A
   row left 'submitting' (a crash, or a create call that failed without an
   answer) is resolved by finding the batch made from its input file in the
   provider's list; if there is none, the job never started and its keys are
   submitted anew.
4. The job is polled every batch_poll_s and each poll's status and request
   counts go in the store (what `status` shows: Store.open_batches()).  A stop
   returns at once: the job runs on at the provider, its row stays open, and
   the next run polls it.  After batch_timeout_s, counted from the row's
   creation and so across restarts, the job is cancelled and polled until it
   ends (a cancelled job still delivers the lines it finished).
5. When the job ends (completed, expired, cancelled, failed), its output and
   error files are read, and every line is written to the cache and the row
   marked finished in one transaction: a success with its cost at the batch
   price, a failed line as an error.  Failed lines and those that never ran
   are then asked synchronously (TeacherClient.complete, with its retries,
   rate limits and budget), so the step ends as the synchronous path would.
   Lines of an adopted job that no request asks for now are not recorded: what
   a row needs (template, prompt version, request) is known only from a request.

Budget: each line reserves its worst case at the batch price before the job is
created; the lines that do not fit go in a next job once this one has settled.
An adopted job was paid for when it was created; its cost is added as its
results come in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

from . import cache
from .budget import Reservation, batch_prices, estimate_cost
from .client import CallResult, Prepared, TeacherClient, TeacherRequest
from .config import redact
from .errors import (FATAL, BudgetExceeded, TeacherBadRequest, TeacherBadResponse, TeacherBatchIncomplete,
                     TeacherError, line_error, translate)
from .provider import endpoint_key, import_litellm

# LiteLLM's async files/batches functions build their request coroutine in an executor
# thread; a cancelled poll drops it, and now and then one is collected unawaited after a call
# that did answer (tests/batch_fakeserver.py counts exactly one request per call: none is lost
# or doubled).  Python warns about each on stderr, in the middle of the loop's display.
warnings.filterwarnings("ignore", message=r"coroutine 'OpenAI(Files|Batches)API\.a\w+' was never awaited",
                        category=RuntimeWarning)

TERMINAL = frozenset({"completed", "expired", "cancelled", "failed"})
ENDPOINT = "/v1/chat/completions"
# How many of the provider's latest batches are searched for the job of a row left 'submitting'.
LIST_LIMIT = 100

Deliver = Callable[[int, CallResult], None]


@dataclass
class _Line:
    prep: Prepared
    asks: list[tuple[int, TeacherRequest]] = field(default_factory=list)  # (request index, request) with this key


class BatchRunner:
    """The batch path of one teacher for one TeacherPool.run."""

    def __init__(self, client: TeacherClient, stop: asyncio.Event, deliver: Deliver) -> None:
        self.client, self.cfg, self.store = client, client.cfg, client.store
        self.budget = client.budget
        self.stop = stop
        self.deliver = deliver  # (request index, result): the pool's bookkeeping
        self.prices = batch_prices(self.cfg, client.prices)
        self.lines: dict[str, _Line] = {}
        self.retry: list[str] = []  # keys to ask synchronously once the jobs have ended
        self._key: str | None = None  # the endpoint's key and LiteLLM's names for it, set by run
        self._litellm: Any = None
        self._model = self._provider = ""

    async def run(self, items: list[tuple[int, TeacherRequest]]) -> None:
        """Deliver a result for every (index, request), except those a stop leaves
        unanswered (the pool returns them "skipped").  Raises the FATAL kinds."""
        for i, r in items:
            prep = self.client.prepare(r.messages, template=r.template, prompt_version=r.prompt_version,
                                       sample_index=r.sample_index, run_id=r.run_id, k=r.k)
            hit = cache.get(self.store, prep.key)
            if hit is not None and hit.status == "ok":
                self.deliver(i, CallResult(prep.key, hit.text, "ok", None, hit.cost_usd, True, self.cfg.name,
                                           None, 0, r.tag))
            else:
                self.lines.setdefault(prep.key, _Line(prep)).asks.append((i, r))
        if not self.lines:
            return
        self._key = endpoint_key(self.cfg.name, self.cfg.api_key_env, self.cfg.api_base)
        self._litellm = import_litellm()
        self._model, self._provider, _, _ = self._litellm.get_llm_provider(self.cfg.model, api_base=self.cfg.api_base)
        adopted = self.store.open_batch_lines(self.cfg.name, self.lines)
        rows = []
        for row_id in sorted(set(adopted.values())):
            try:
                exists = await self._resolve(row_id)
            except TeacherError as e:
                if isinstance(e, FATAL):
                    raise
                self._give_up(row_id, e)  # still unknown: the next run looks again
                continue
            if exists:
                rows.append(row_id)
            else:  # never reached the provider: its keys are submitted anew
                adopted = {k: r for k, r in adopted.items() if r != row_id}
        fresh = [k for k in self.lines if k not in adopted]
        await _together(*(self._follow(row_id, {}) for row_id in rows), self._submit_all(fresh))
        if self.stop.is_set():
            return
        await _together(*(self._ask(key) for key in self.retry))

    # -- provider calls ---------------------------------------------------
    async def _call(self, name: str, *, retry: bool = True, **kw: Any) -> Any:
        """One LiteLLM files/batches function, retried on the transient kinds with
        the teacher's backoff unless `retry` is false; errors become ours
        (errors.translate)."""
        cfg, fn = self.cfg, getattr(self._litellm, name)

        async def attempt() -> Any:
            self.client.http_attempts += 1
            try:
                return await fn(custom_llm_provider=self._provider, api_base=cfg.api_base, api_key=self._key,
                                timeout=cfg.timeout_s, max_retries=0, **kw)
            except Exception as e:  # the boundary, as in TeacherClient.complete
                raise translate(e, teacher=cfg.name, model=cfg.model, api_base=redact(cfg.api_base),
                                api_key_env=cfg.api_key_env, timeout_s=cfg.timeout_s) from None
        return await (self.client.retrying()(attempt) if retry else attempt())

    async def _resolve(self, row_id: int) -> bool:
        """Whether the job of a row exists at the provider: a row left 'submitting'
        gets the id of the batch made from its input file, or is marked 'lost'."""
        row = self.store.get_teacher_batch(row_id)
        if row["batch_id"] is not None:
            return True
        page = await self._call("alist_batches", limit=LIST_LIMIT)
        found = next((b for b in page.data if b.input_file_id == row["input_file_id"]), None)
        if found is None:
            self.store.update_teacher_batch(row_id, status="lost", finish=True)
            return False
        self.store.update_teacher_batch(row_id, batch_id=found.id, status=found.status)
        return True

    # -- submission -------------------------------------------------------
    async def _submit_all(self, keys: list[str]) -> None:
        pending = list(keys)
        while pending and not self.stop.is_set():
            reserved = await self._reserve(pending)
            pending = pending[len(reserved):]
            try:
                row_id = await self._submit(list(reserved))
                if row_id is not None:
                    await self._follow(row_id, reserved)
            finally:  # what the harvest did not settle; a job left waiting is paid when a later run harvests it
                for r in reserved.values():
                    self.budget.settle(r, 0.0)

    async def _reserve(self, keys: list[str]) -> dict[str, Reservation]:
        """Reservations for the longest prefix of `keys` that fits the budget now;
        at least one (waiting for calls in flight), else BudgetExceeded."""
        out: dict[str, Reservation] = {}
        for key in keys:
            est = estimate_cost(self.cfg, self.lines[key].prep.messages, self.prices)
            try:
                out[key] = self.budget.reserve(est, teacher=self.cfg.name)
            except BudgetExceeded:
                if out:
                    break
                out[key] = await self.budget.acquire(est, teacher=self.cfg.name)
        return out

    async def _submit(self, keys: list[str]) -> int | None:
        """Create the job of `keys`; its row id, or None when it could not be made
        (its lines then come back as errors, recorded; the next run asks again)."""
        cfg = self.cfg
        body = "".join(json.dumps({"custom_id": key, "method": "POST", "url": ENDPOINT,
                                   "body": {"model": self._model, "messages": self.lines[key].prep.messages,
                                            **self.lines[key].prep.params}}, ensure_ascii=False) + "\n"
                       for key in keys).encode("utf-8")
        first = self.lines[keys[0]].asks[0][1]
        try:
            upload = await self._call("acreate_file", file=(f"distillery-{cfg.name}.jsonl", body, "application/jsonl"),
                                      purpose="batch")
            row_id = self.store.add_teacher_batch(teacher=cfg.name, model=cfg.model, api_base=cfg.api_base,
                                                  input_file_id=upload.id, keys=keys, run_id=first.run_id, k=first.k)
        except TeacherError as e:
            return self._fail_all(keys, e)
        try:
            # not retried: a create whose answer was lost may have made a batch, and a second
            # would be paid for too; the provider's list says whether it exists (below)
            job = await self._call("acreate_batch", retry=False, completion_window="24h", endpoint=ENDPOINT,
                                   input_file_id=upload.id, metadata={"distillery_teacher": cfg.name})
        except TeacherError as e:
            if isinstance(e, FATAL):  # refused: no batch was made
                self.store.update_teacher_batch(row_id, status="lost", finish=True)
            else:  # no answer is no proof that no batch was made: look for it before giving up
                with contextlib.suppress(TeacherError):  # still unknown: the next run looks again
                    if await self._resolve(row_id):
                        return row_id
            return self._fail_all(keys, e)
        self.store.update_teacher_batch(row_id, batch_id=job.id, status=job.status)
        return row_id

    def _fail_all(self, keys: list[str], err: TeacherError) -> None:
        """A job that could not be made: FATAL kinds are raised, others recorded
        as each line's error and delivered."""
        if isinstance(err, FATAL):
            raise err
        with self.store.transaction():
            for key in keys:
                self._record_error(key, err, attempts=1)
        for key in keys:
            self._deliver_error(key, err)

    # -- waiting ----------------------------------------------------------
    async def _follow(self, row_id: int, reserved: dict[str, Reservation]) -> None:
        """Poll the job of `row_id` until it ends (then harvest it) or the run stops."""
        row = self.store.get_teacher_batch(row_id)
        since = datetime.fromisoformat(row["created"])
        cancelling = row["status"] == "cancelling"
        last = (row["status"], row["completed"], row["failed"])
        while True:
            try:
                job = await self._call("aretrieve_batch", batch_id=row["batch_id"])
            except TeacherError as e:
                if isinstance(e, FATAL):
                    raise
                if not self._overdue(since):  # a blip: the job runs on at the provider
                    if await self._stopped(self.cfg.batch_poll_s):
                        return
                    continue
                return self._give_up(row_id, e)  # the row stays open: the next run polls it
            counts = job.request_counts
            now = (job.status, getattr(counts, "completed", 0) or 0, getattr(counts, "failed", 0) or 0)
            if now != last:
                self.store.update_teacher_batch(row_id, status=now[0], completed=now[1], failed=now[2])
                last = now
            if job.status in TERMINAL:
                try:
                    return await self._harvest(row_id, job, reserved)
                except TeacherError as e:
                    if isinstance(e, FATAL):
                        raise
                    return self._give_up(row_id, e)  # the row stays open: the next run reads the files again
            if not cancelling and self._overdue(since):
                try:
                    await self._call("acancel_batch", batch_id=row["batch_id"])
                    cancelling = True
                except TeacherBadRequest:  # it is finishing already, so cannot be cancelled: it ends soon
                    cancelling = True
                except TeacherError as e:
                    if isinstance(e, FATAL):
                        raise
                    # asked again at the next poll
            if await self._stopped(self.cfg.batch_poll_s):
                return

    def _overdue(self, since: datetime) -> bool:
        return (datetime.now(timezone.utc) - since).total_seconds() > self.cfg.batch_timeout_s

    async def _stopped(self, seconds: float) -> bool:
        """Wait `seconds`; True at once when the run is stopped."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=seconds)
            return True
        except asyncio.TimeoutError:
            return False

    def _give_up(self, row_id: int, err: TeacherError) -> None:
        keys = [k for k in self.store.teacher_batch_keys(row_id) if k in self.lines]
        for key in keys:
            self._deliver_error(key, err)

    # -- results ----------------------------------------------------------
    async def _harvest(self, row_id: int, job: Any, reserved: dict[str, Reservation]) -> None:
        outcome: dict[str, dict] = {}
        for file_id in (job.error_file_id, job.output_file_id):  # output last: a success wins
            if file_id:
                raw = (await self._call("afile_content", file_id=file_id)).content
                for text in raw.decode("utf-8", "replace").splitlines():
                    try:
                        line = json.loads(text)
                    except ValueError:
                        continue  # not a line: its request, if any, counts as never run
                    if isinstance(line, dict):
                        outcome[line.get("custom_id")] = line
        keys = [k for k in self.store.teacher_batch_keys(row_id) if k in self.lines]
        results: dict[str, CallResult | TeacherError] = {}
        with self.store.transaction():
            for key in keys:
                results[key] = self._record_line(key, outcome.get(key), job)
            counts = job.request_counts
            self.store.update_teacher_batch(row_id, status=job.status, completed=getattr(counts, "completed", 0) or 0,
                                            failed=getattr(counts, "failed", 0) or 0,
                                            output_file_id=job.output_file_id, error_file_id=job.error_file_id,
                                            finish=True)
        for key, res in results.items():
            cost = res.cost_usd if isinstance(res, CallResult) else 0.0
            r = reserved.get(key)
            self.budget.settle(r if r is not None else Reservation(0.0), cost)
            if isinstance(res, CallResult):
                for i, req in self.lines[key].asks:
                    self.deliver(i, dataclasses.replace(res, tag=req.tag))
            else:
                self.retry.append(key)

    def _record_line(self, key: str, line: dict | None, job: Any) -> CallResult | TeacherError:
        """Record one line's outcome in the cache; the result, or the error it is
        asked again for."""
        cfg = self.cfg
        if line is None:
            err: TeacherError = TeacherBatchIncomplete(f"batch {job.id} ended {job.status} before this request ran",
                                                       teacher=cfg.name)
            self._record_error(key, err, attempts=0)
            return err
        resp = line.get("response") or {}
        body = resp.get("body") or {}
        if line.get("error") or resp.get("status_code") != 200:
            detail = line.get("error") or body.get("error") or "no detail"
            message = detail.get("message") or detail if isinstance(detail, dict) else detail
            err = line_error(resp.get("status_code"), str(message), teacher=cfg.name)
            self._record_error(key, err, attempts=1)
            return err
        try:
            text = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
        if not text or not text.strip():
            err = TeacherBadResponse("empty completion (no content) in a batch line", teacher=cfg.name)
            self._record_error(key, err, attempts=1)
            return err
        usage = body.get("usage") or {}
        pt, ct = usage.get("prompt_tokens"), usage.get("completion_tokens")
        cost = ((pt or 0) * self.prices[0] + (ct or 0) * self.prices[1]) if self.prices else 0.0
        summary = {"id": body.get("id"), "model": body.get("model"), "batch": job.id,
                   "finish_reason": (body.get("choices") or [{}])[0].get("finish_reason"),
                   "usage": {"prompt_tokens": pt, "completion_tokens": ct, "total_tokens": usage.get("total_tokens")}}
        # latency is left out: the job's wait says nothing about one request
        cache.record(self.store, key, status="ok", text=text, response=summary, attempts=1, prompt_tokens=pt,
                     completion_tokens=ct, cost_usd=cost, **self.lines[key].prep.record)
        return CallResult(key, text, "ok", None, cost, False, cfg.name, None, 1)

    def _record_error(self, key: str, err: TeacherError, *, attempts: int) -> None:
        cache.record(self.store, key, status="error", error_type=type(err).__name__, error=str(err),
                     attempts=attempts, **self.lines[key].prep.record)

    def _deliver_error(self, key: str, err: TeacherError) -> None:
        for i, req in self.lines[key].asks:
            self.deliver(i, CallResult(key, None, "error", str(err), 0.0, False, self.cfg.name, type(err).__name__,
                                       0, req.tag))

    async def _ask(self, key: str) -> None:
        """A line the job did not answer, asked synchronously."""
        asks = self.lines[key].asks
        req = asks[0][1]
        res = await self.client.complete(req.messages, template=req.template, prompt_version=req.prompt_version,
                                         sample_index=req.sample_index, run_id=req.run_id, k=req.k,
                                         stop_event=self.stop)
        for i, r in asks:
            self.deliver(i, dataclasses.replace(res, tag=r.tag))


async def _together(*coros: Any) -> None:
    """Run coroutines concurrently; the first exception cancels the others."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            if not t.done():
                t.cancel()
