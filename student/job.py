"""One iteration's training as a job of its own: ``python -m student.job SPEC``.

The loop (loop/core/train_job.py) writes SPEC — a JSON file in the iteration
directory naming the model, LoRA, train and loss settings, the adapters to
start from, the examples file (the iteration's dataset version as
TrainExample JSONL) and the output directory — and launches this module under
``torchrun --nproc_per_node N -m student.job SPEC`` or ``accelerate launch
-m student.job SPEC``.  Every rank runs `main`; `student/train.py` does the
rest (DDP, per-rank batch slices, checkpoints, resume).

What crosses back to the loop, which stays the only writer of the store:

* stdout, rank 0 only: one JSON object per line, ``{"event": "step", "step",
  "total", "record"}`` after every optimizer step, then ``{"event": "done"}``;
  anything else a library prints goes to stderr (the loop keeps it in
  job.log);
* ``result.json`` (rank 0, written atomically last): steps, history, adapter
  directory and sha256, stopped, dropped rows;
* ``rank-R.json`` per rank: the sha256 of that rank's final adapter weights,
  so the loop can check every rank ended with the same weights.

Stopping: the loop creates SPEC's ``stop_file``; every rank polls it at each
optimizer step (train()'s should_stop, reduced over ranks), so the job writes
a checkpoint and exits 0 with ``stopped: true``.  Dying with the loop: a
watchdog thread ends the rank at once when the loop's pid is gone or the
launcher that started it has died (its parent pid changed), so a SIGKILL of
the loop leaves no training process behind; the next run resumes from the
checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import time
from pathlib import Path

RESULT = "result.json"
WATCH_INTERVAL_S = 0.5


def rank_file(job_dir: Path, rank: int) -> Path:
    return Path(job_dir) / f"rank-{rank}.json"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _watch(loop_pid: int, parent_pid: int) -> None:
    """End this process when the loop or the launcher between us is gone."""
    while True:
        if not _alive(loop_pid) or os.getppid() != parent_pid:
            os._exit(137)  # no cleanup: the loop is gone and nobody reads what we would write
        time.sleep(WATCH_INTERVAL_S)


def _emit(doc: dict) -> None:
    sys.stdout.write(json.dumps(doc) + "\n")
    sys.stdout.flush()


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def weights_sha256(student) -> str:
    """sha256 over the student and teacher adapter tensors, in key order."""
    h = hashlib.sha256()
    for name in ("student", "teacher"):
        params = student.adapter_params(name)
        for key in sorted(params):
            h.update(key.encode())
            h.update(params[key].detach().to("cpu").contiguous().float().numpy().tobytes())
    return h.hexdigest()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m student.job SPEC.json (written by the loop: loop/core/train_job.py)", file=sys.stderr)
        return 2
    spec_path = Path(argv[0])
    spec = json.loads(spec_path.read_text())
    threading.Thread(target=_watch, args=(int(spec["loop_pid"]), os.getppid()), daemon=True).start()
    # library output must not mix with the JSON lines the loop parses
    real_stdout, sys.stdout = sys.stdout, sys.stderr

    import torch

    from student.config import LoraConfig, LossConfig, ModelConfig, TrainConfig
    from student.data import TrainExample
    from student.model import load_student
    from student.train import train

    rank = int(os.environ.get("RANK", "0"))
    model_cfg = ModelConfig(**spec["model"])
    if model_cfg.device != "cpu" and torch.cuda.is_available():
        # one GPU per rank, chosen before the model is placed (else every rank loads onto GPU 0)
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    threads = os.environ.get("OMP_NUM_THREADS")
    if threads:
        torch.set_num_threads(int(threads))
    student = load_student(model_cfg, LoraConfig(**spec["lora"]))
    if spec.get("student_init"):
        student.load_adapter(spec["student_init"], "student")
    if spec.get("teacher_init"):
        student.load_adapter(spec["teacher_init"], "teacher")
    else:
        student.copy_adapter("student", "teacher")
    with open(spec["examples"]) as f:
        examples = [TrainExample.model_validate_json(line) for line in f if line.strip()]

    stop_file = Path(spec["stop_file"])

    def on_step(record: dict, total: int) -> None:
        sys.stdout, out = real_stdout, sys.stdout
        try:
            _emit({"event": "step", "step": record["step"], "total": total, "record": record})
        finally:
            sys.stdout = out

    res = train(student, examples, TrainConfig(**spec["train"]), LossConfig(**spec["loss"]), spec["out_dir"],
                resume=True, should_stop=stop_file.exists, progress=False, on_step=on_step)
    job_dir = spec_path.parent
    _write_json(rank_file(job_dir, rank), {"rank": rank, "weights_sha256": weights_sha256(student),
                                           "stopped": res.stopped, "steps": res.steps})
    if rank == 0:
        _write_json(job_dir / RESULT, {
            "steps": res.steps, "history": res.history, "stopped": res.stopped,
            "adapter_dir": str(res.adapter_dir) if res.adapter_dir else None,
            "adapter_sha256": res.adapter_sha256, "dropped": res.dropped,
            "negatives_dropped": res.negatives_dropped,
        })
        sys.stdout = real_stdout
        _emit({"event": "done", "stopped": res.stopped})
    return 0


if __name__ == "__main__":
    sys.exit(main())
