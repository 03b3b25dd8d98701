"""train: the student adapter of iteration k, on dataset version k."""

from __future__ import annotations

from loop.core.steps.common import mined_errors
from loop.core.steps.context import UNCHANGED, StepContext, TrainResult
from loop.core.trainset import build_train_examples
from loop.errors import RunFailure


def train(ctx: StepContext) -> TrainResult:
    """Train the student adapter on version k (warm-started from k-1's adapter
    unless train.warm_start = false); checkpoints in runs/<run>/iter-<k>/.
    The result says what the in-memory weights are afterwards (`holds`)."""
    from student.errors import StudentError
    from student.train import train as train_student

    k, cfg, model = ctx.k, ctx.cfg, ctx.model
    wrong = {p["example_id"]: p["output"] for p in mined_errors(ctx, k)} if cfg.loss.contrastive > 0 else {}
    examples, lengths = build_train_examples(ctx, wrong)
    out_dir = ctx.iter_dir(k)
    if not examples:
        # nothing accepted yet: the adapter of k-1 carries over unchanged
        src = ctx.adapter_before(k)
        model.use(src)
        adapter_dir = out_dir / "adapter"
        model.student.save_adapter(adapter_dir, "student")
        sha = model.adapter_sha(adapter_dir)
        info = {"examples": 0, "steps": 0, "adapter": ctx.rel(adapter_dir), "adapter_sha256": sha, "skipped": True,
                "length": lengths.as_dict()}
        return TrainResult(info, holds=ctx.rel(adapter_dir))
    if k > 0 and ctx.step_info(k, "version").get("changed") == 0 and cfg.loop.on_unchanged == "skip":
        # Version k equals version k-1: training again would only add epochs on
        # the same data (measured: dev fell).  Iteration k keeps k-1's adapter;
        # evaluate then reuses k-1's scores, so it counts towards patience.
        src = ctx.adapter_before(k)
        info = {"examples": len(examples), "steps": 0, "adapter": src,
                "adapter_sha256": model.adapter_sha(src), "skipped": "unchanged"}
        return TrainResult(info)
    start = ctx.adapter_before(k) if cfg.train.warm_start else None
    # "previous" teaches with iteration k-1's adapter whether or not the student
    # starts from it; "ema" and "base" start from a copy of the student
    teacher = ctx.adapter_before(k) if cfg.loss.teacher_adapter == "previous" else None
    ctx.progress("train", 0, None)
    bar = _TrainDisplay(ctx, k)
    if cfg.train.processes > 1:
        from loop.core.train_job import run_job, write_inputs

        spec = write_inputs(ctx, k, examples, start, teacher)
        try:
            with ctx.timed("train_call"):
                res = run_job(ctx, k, spec, bar.step)  # other processes: this one's weights stay as they are
        finally:
            bar.close()
    else:
        model.use(start)
        if teacher is not None and teacher != start:
            model.student.load_adapter(ctx.ws / teacher, "teacher")
        else:
            model.student.copy_adapter("student", "teacher")
        try:
            with ctx.timed("train_call"):
                res = train_student(model.student, examples, cfg.train, cfg.loss, out_dir, resume=True,
                                    should_stop=ctx.stop_requested, progress=ctx.show_train_progress,
                                    on_step=bar.progress)
        except StudentError as e:
            raise RunFailure(f"training iteration {k} failed: {e}") from None
    if res.stopped:
        # mid-training weights: reload before any other use; the orchestrator stops at this safe point
        return TrainResult({}, holds=("partial", k), stopped=True)
    losses = [h.get("total") for h in res.history if h.get("total") is not None]
    for reason, rows in res.dropped.items():  # the trainer's own check (the loop's fitting leaves it nothing)
        lengths.drop(reason, rows)
    lengths.negatives_dropped += res.negatives_dropped
    info = {"examples": len(examples), "steps": res.steps, "adapter": ctx.rel(res.adapter_dir),
            "length": lengths.as_dict(), "processes": cfg.train.processes,
            "adapter_sha256": res.adapter_sha256,
            "loss_first": losses[0] if losses else None, "loss_last": losses[-1] if losses else None,
            # every step's loss terms, for the report's curves: the trainer's copy lives only in the
            # newest checkpoint, which a re-run with another config deletes
            "history": [{t: h[t] for t in ("step", "total", "sft", "kd", "contrastive", "feature") if t in h}
                        for h in res.history]}
    # in this process the in-memory weights are iteration k's adapter; a job's are other processes'
    return TrainResult(info, holds=ctx.rel(res.adapter_dir) if cfg.train.processes == 1 else UNCHANGED)


class _TrainDisplay:
    """Training progress for the heartbeat (`status`) and the trackers
    ([track]: both training paths end here, so both log the same), and, for a
    job, the trainer's own bar drawn from the steps the job streams."""

    def __init__(self, ctx: StepContext, k: int):
        from loop.core.tracking import train_logger

        self.ctx = ctx
        self.bar = None
        self.track = train_logger(ctx, k)

    def progress(self, record: dict, total: int) -> None:
        self.ctx.progress("train", int(record["step"]), total)
        self.track(record)

    def step(self, record: dict, total: int) -> None:
        from student.train import progress_bar, update_bar

        if self.bar is None:
            self.bar = progress_bar(self.ctx.show_train_progress, total, int(record["step"]) - 1)
        update_bar(self.bar, record)
        self.progress(record, total)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
