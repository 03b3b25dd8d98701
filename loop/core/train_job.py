"""Training an iteration as a job of several processes ([train] processes > 1).

Running the whole loop under torchrun would duplicate every teacher call and
store write, so only training is distributed: the loop writes the
iteration's inputs into ``runs/<run>/iter-<k>/job/`` —

* ``examples.jsonl``: the dataset version as TrainExample rows (exactly what
  the in-process path passes to train());
* ``spec.json``: the resolved model, LoRA, train and loss settings, the
  adapters to start from, the stop file and the loop's pid;

— launches ``torchrun --standalone --nproc_per_node N -m student.job SPEC``
(or ``accelerate launch [--config_file F] --num_processes N -m student.job
SPEC``) as a child process group, draws the job's per-step JSON lines with the
trainer's own progress bar and the heartbeat, and reads back result.json (the
adapter, its sha256, the loss history).  The loop stays the only writer of
the store.

Signals: SIGTERM/SIGINT to the loop set its stop event; the loop then creates
the stop file, the job checkpoints at its next optimizer step and exits, and
the loop stops at the safe point as usual.  SIGKILL of the loop: the launcher
dies with it (PR_SET_PDEATHSIG) and every rank's watchdog (student/job.py)
ends the rank when the loop's pid is gone, so no process is left; the next
run writes the same inputs and train() resumes from the checkpoint.
Anything else that ends the loop while the job runs kills the job's group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from loop.errors import RunFailure, UserError

JOB_DIR = "job"
LOG_TAIL_LINES = 30


@dataclass
class JobResult:
    steps: int
    history: list[dict] = field(default_factory=list)
    adapter_dir: Path | None = None
    adapter_sha256: str | None = None
    stopped: bool = False
    dropped: dict[str, int] = field(default_factory=dict)
    negatives_dropped: int = 0
    ranks: int = 1


def _repo_root() -> Path:
    import student

    return Path(student.__file__).resolve().parents[1]


def command(train_cfg, spec: Path, ws: Path) -> list[str]:
    """The launcher command line for `spec` (python -m keeps it on this venv)."""
    n = str(train_cfg.processes)
    job = ["-m", "student.job", str(spec)]
    if train_cfg.launcher == "torchrun":
        # --standalone: a local rendezvous on a free port, no etcd/c10d server to run
        return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", n, *job]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", n]
    if train_cfg.accelerate_config:
        cmd += ["--config_file", str(accelerate_config_path(train_cfg, ws))]
    return [*cmd, *job]


def accelerate_config_path(train_cfg, ws: Path) -> Path:
    p = Path(train_cfg.accelerate_config).expanduser()
    return p if p.is_absolute() else Path(ws) / p


def check_launch(cfg, ws: Path) -> None:
    """Preflight (exit 2): the launcher is importable, its config file exists,
    and a GPU run has a GPU per process."""
    t = cfg.train
    if t.accelerate_config and t.launcher != "accelerate":
        raise UserError(f"train.accelerate_config is set but train.launcher = {t.launcher!r}; "
                        "set train.launcher = \"accelerate\" or remove accelerate_config")
    if t.processes == 1:
        return
    if t.launcher == "accelerate":
        try:
            import accelerate.commands.launch  # noqa: F401
        except ImportError as e:
            raise UserError(f"train.launcher = \"accelerate\" but accelerate cannot be imported ({e}); "
                            "pip install accelerate, or use launcher = \"torchrun\"") from None
        if t.accelerate_config and not accelerate_config_path(t, ws).is_file():
            raise UserError(f"train.accelerate_config = {t.accelerate_config!r}: no such file "
                            f"({accelerate_config_path(t, ws)}); write one with `accelerate config --config_file PATH`")
    import torch

    if cfg.student.device != "cpu" and torch.cuda.is_available() and torch.cuda.device_count() < t.processes:
        raise UserError(f"train.processes = {t.processes} but this machine has {torch.cuda.device_count()} GPU(s); "
                        "set train.processes to at most the number of GPUs")


def _write_json(path: Path, doc) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def write_inputs(o, k: int, examples, student_init: str | None, teacher_init: str | None) -> Path:
    """The iteration's dataset version and resolved config in its job
    directory; returns the spec path.  Same inputs → same files, so a resumed
    job's trainer fingerprint matches its checkpoint."""
    out_dir = o.iter_dir(k)
    job_dir = out_dir / JOB_DIR
    job_dir.mkdir(parents=True, exist_ok=True)
    ex_path = job_dir / "examples.jsonl"
    tmp = ex_path.with_suffix(".jsonl.tmp")
    with open(tmp, "w") as f:
        for ex in examples:
            f.write(ex.model_dump_json() + "\n")
    tmp.replace(ex_path)

    def abs_(adapter: str | None) -> str | None:  # the job runs with its own cwd
        return str((o.ws / adapter).resolve()) if adapter else None

    spec = {
        "iteration": k,
        "model": o.cfg.student.model_dump(mode="json"),
        "lora": o.cfg.lora.model_dump(mode="json"),
        "train": o.cfg.train.model_dump(mode="json"),
        "loss": o.cfg.loss.model_dump(mode="json"),
        "student_init": abs_(student_init),
        "teacher_init": abs_(teacher_init),
        "examples": str(ex_path.resolve()),
        "out_dir": str(out_dir.resolve()),
        "stop_file": str((job_dir / "STOP").resolve()),
        "loop_pid": os.getpid(),
    }
    _write_json(job_dir / "spec.json", spec)
    return job_dir / "spec.json"


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """PR_SET_PDEATHSIG: the kernel SIGKILLs the launcher when the loop dies."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # not Linux: the ranks' watchdog still ends the job


def _kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = LOG_TAIL_LINES) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


def run_job(o, k: int, spec: Path, on_step) -> JobResult:
    """Launch the job for `spec`, stream its steps to `on_step(record, total)`,
    and return what it wrote.  RunFailure when it fails; a stop request is
    passed on through the stop file (the result then has stopped = True)."""
    job_dir = spec.parent
    for stale in ("STOP", "result.json", *[p.name for p in job_dir.glob("rank-*.json")]):
        (job_dir / stale).unlink(missing_ok=True)
    cmd = command(o.cfg.train, spec, o.ws)
    env = dict(os.environ)
    root = str(_repo_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if o.cfg.student.device == "cpu" or not _cuda():
        # N ranks on one CPU: each would start one thread per core and they would fight
        cores = os.cpu_count() or 1
        env.setdefault("OMP_NUM_THREADS", str(max(1, cores // o.cfg.train.processes)))
    log_path = job_dir / "job.log"
    with open(log_path, "a") as log:
        log.write(f"\n$ {' '.join(cmd)}\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                    cwd=str(o.ws), text=True, start_new_session=True, preexec_fn=_die_with_parent)
        except OSError as e:
            raise RunFailure(f"cannot start the training job ({e}): {' '.join(cmd)}") from None
        done = threading.Event()

        def read() -> None:
            for line in proc.stdout:
                try:
                    doc = json.loads(line)
                except ValueError:
                    doc = None
                if isinstance(doc, dict) and doc.get("event") == "step":
                    on_step(doc["record"], doc["total"])
                else:
                    log.write(line)
                    log.flush()
            done.set()

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        try:
            stop_sent = False
            while proc.poll() is None:
                if not stop_sent and o.stop_requested():
                    (job_dir / "STOP").touch()
                    stop_sent = True
                time.sleep(0.1)
            done.wait(timeout=10)
        finally:
            _kill_group(proc)  # nothing of the job may outlive this call
    if proc.returncode != 0:
        raise RunFailure(
            f"the training job of iteration {k} failed (exit {proc.returncode}); its log is {log_path}:\n"
            f"{_tail(log_path)}\n(command: {' '.join(cmd)}; `distillery run` resumes from its last checkpoint)"
        )
    return _read_result(k, job_dir, o.cfg.train.processes)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def _read_result(k: int, job_dir: Path, processes: int) -> JobResult:
    try:
        doc = json.loads((job_dir / "result.json").read_text())
        ranks = [json.loads(p.read_text()) for p in sorted(job_dir.glob("rank-*.json"))]
    except (OSError, ValueError) as e:
        raise RunFailure(f"the training job of iteration {k} exited without a readable result in {job_dir} ({e})") from None
    if len(ranks) != processes:
        raise RunFailure(f"the training job of iteration {k} ran {len(ranks)} rank(s), train.processes = {processes}: "
                         "the launcher started fewer processes than asked (accelerate launch without GPUs starts "
                         "one; use train.launcher = \"torchrun\" for several CPU ranks)")
    if len({r["weights_sha256"] for r in ranks}) != 1:
        # DDP keeps every rank's weights equal; if they differ, the adapter rank 0 saved is not the model trained
        raise RunFailure(f"the training job of iteration {k}: its {processes} ranks ended with different weights "
                         f"({job_dir}/rank-*.json); the gradient synchronisation failed")
    adapter = Path(doc["adapter_dir"]) if doc.get("adapter_dir") else None
    if adapter is not None:
        from student.train import file_sha256

        if file_sha256(adapter / "adapter_model.safetensors") != doc.get("adapter_sha256"):
            raise RunFailure(f"the training job of iteration {k}: {adapter} does not hold the adapter it reported "
                             "(sha256 differs); delete the directory and run again")
    return JobResult(int(doc["steps"]), list(doc["history"]), adapter, doc.get("adapter_sha256"), bool(doc["stopped"]),
                     dict(doc.get("dropped") or {}), int(doc.get("negatives_dropped") or 0), len(ranks))
