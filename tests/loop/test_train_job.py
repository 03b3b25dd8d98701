"""[train] processes = 2: each iteration trains as a torchrun job of two gloo
ranks on the CPU, launched by the loop (loop/core/train_job.py, student/job.py).

One reference workspace runs 2 iterations uninterrupted.  A second one is
stopped with SIGTERM while iteration 0 trains (the job checkpoints and exits,
the loop stops at the safe point), resumed, SIGKILLed while iteration 1 trains
(no process of the job may outlive the loop), and resumed again: its adapters
must equal the reference's byte for byte."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from student.data import TrainExample
from tests.loop.helpers import cli, make_workspace, popen, run_inprocess



STEPS = 6


def _job_workspace(path: Path, base_url: str) -> Path:
    ws = make_workspace(path, base_url, max_iterations=2)
    toml = ws / "distillery.toml"
    text = toml.read_text().replace("max_steps = 3\n", f"max_steps = {STEPS}\nprocesses = 2\n")
    assert "processes = 2" in text
    toml.write_text(text)
    return ws


def _iter_dir(ws: Path, k: int) -> Path:
    return ws / "runs" / "main" / f"iter-{k}"


def _adapter_bytes(ws: Path, k: int) -> bytes:
    return (_iter_dir(ws, k) / "adapter" / "adapter_model.safetensors").read_bytes()


def _job_pids(ws: Path) -> list[int]:
    """Processes whose command line names this workspace's job spec (launcher and ranks)."""
    marker = str((ws / "runs").resolve())
    pids = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if "student.job" in cmd and marker in cmd:
            pids.append(int(d.name))
    return pids


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")  # a zombie has exited; only its parent's bookkeeping is left


def _wait_for_checkpoint(p, ws: Path, k: int, step: int, timeout: float = 300) -> list[int]:
    """Wait until iteration k's job wrote checkpoint `step`; return the job's pids."""
    ckpt = _iter_dir(ws, k) / "checkpoints" / f"step-{step:06d}"
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if ckpt.is_dir():
            return _job_pids(ws)
        time.sleep(0.01)
    out = p.stdout.read() if p.poll() is not None else ""
    raise AssertionError(f"no {ckpt} (loop rc {p.poll()}): {out[-3000:]}")


def test_two_process_training_job_survives_sigterm_and_sigkill(tmp_path, teacher_server):
    ref = _job_workspace(tmp_path / "ref", teacher_server.base_url)
    assert run_inprocess(ref, "run") == 0
    for k in (0, 1):
        job = _iter_dir(ref, k) / "job"
        ranks = [json.loads((job / f"rank-{r}.json").read_text()) for r in (0, 1)]
        assert ranks[0]["weights_sha256"] == ranks[1]["weights_sha256"]  # DDP kept both ranks equal
        assert ranks[0]["steps"] == STEPS
        rows = [TrainExample.model_validate_json(line) for line in (job / "examples.jsonl").read_text().splitlines()]
        assert rows and all(r.completion for r in rows)  # the dataset version the job trained on
        spec = json.loads((job / "spec.json").read_text())
        assert spec["train"]["processes"] == 2 and spec["out_dir"] == str(_iter_dir(ref, k).resolve())
    shown = cli("show", "1", "-w", str(ref), "--json")
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    train = next(s["info"] for s in doc["steps"] if s["step"] == "train")
    assert train["processes"] == 2 and train["steps"] == STEPS
    assert doc["training"].startswith(f"{STEPS} steps on ") and "on 2 processes" in doc["training"]

    ws = _job_workspace(tmp_path / "ws", teacher_server.base_url)
    # SIGTERM while iteration 0 trains: the job checkpoints at its next step and exits; the loop stops
    p = popen("run", "-w", str(ws))
    pids = _wait_for_checkpoint(p, ws, 0, 1)
    assert pids, "the job's processes were not found"
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    assert p.returncode == 0, out[-3000:]
    assert "stopped at a safe point" in out
    assert not (_iter_dir(ws, 0) / "adapter").exists()  # stopped mid-training, not at the end
    assert not [pid for pid in pids if _running(pid)]

    # resume; then SIGKILL while iteration 1 trains: nothing of the job may survive the loop
    p = popen("run", "-w", str(ws))
    pids = _wait_for_checkpoint(p, ws, 1, 2)
    assert pids and p.poll() is None
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    deadline = time.time() + 15
    while time.time() < deadline and [pid for pid in pids if _running(pid)]:
        time.sleep(0.1)
    assert not [pid for pid in pids if _running(pid)], "training processes outlived the loop"
    assert not (_iter_dir(ws, 1) / "adapter").exists()
    assert (_iter_dir(ws, 1) / "checkpoints" / "step-000002").is_dir()

    done = cli("run", "-w", str(ws))
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    for k in (0, 1):
        assert _adapter_bytes(ws, k) == _adapter_bytes(ref, k), f"iteration {k}: resumed job != uninterrupted job"


def test_previous_teacher_without_warm_start_is_the_previous_adapter(tmp_path, teacher_server):
    """teacher_adapter = "previous" with warm_start = false: the student starts
    fresh, the teacher is iteration k-1's adapter (it was the fresh init)."""
    ws = make_workspace(tmp_path / "ws", teacher_server.base_url, max_iterations=2)
    toml = ws / "distillery.toml"
    toml.write_text(toml.read_text().replace("lr = 1e-3\n", "lr = 1e-3\nwarm_start = false\n")
                    .replace("num_contexts = 2\n", "num_contexts = 2\nteacher_adapter = \"previous\"\n"))
    assert run_inprocess(ws, "run") == 0
    ckpts = sorted((_iter_dir(ws, 1) / "checkpoints").iterdir())
    teacher = load_file(str(ckpts[-1] / "teacher.safetensors"))
    previous = load_file(str(_iter_dir(ws, 0) / "adapter" / "adapter_model.safetensors"))
    assert set(teacher) == set(previous)
    assert all(bool((teacher[key] == previous[key]).all()) for key in teacher)
    student = load_file(str(_iter_dir(ws, 1) / "adapter" / "adapter_model.safetensors"))
    assert any(not bool((student[key] == previous[key]).all()) for key in student)


def test_launch_commands_and_checks(tmp_path):
    from loop.config.schema import Config
    from loop.errors import UserError
    from loop.core.train_job import check_launch, command

    cfg = Config.model_validate({"train": {"processes": 4}})
    cmd = command(cfg.train, Path("/x/spec.json"), tmp_path)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "4",
                       "-m", "student.job", "/x/spec.json"]
    (tmp_path / "fsdp.yaml").write_text("distributed_type: FSDP\n")
    cfg = Config.model_validate({"train": {"processes": 2, "launcher": "accelerate", "accelerate_config": "fsdp.yaml"}})
    check_launch(cfg, tmp_path)
    assert command(cfg.train, Path("s.json"), tmp_path)[1:] == [
        "-m", "accelerate.commands.launch", "--num_processes", "2", "--config_file", str(tmp_path / "fsdp.yaml"),
        "-m", "student.job", "s.json"]
    with pytest.raises(UserError, match="no such file"):
        check_launch(Config.model_validate({"train": {"processes": 2, "launcher": "accelerate",
                                                      "accelerate_config": "missing.yaml"}}), tmp_path)
    with pytest.raises(UserError, match="launcher = \"accelerate\""):
        check_launch(Config.model_validate({"train": {"accelerate_config": "fsdp.yaml"}}), tmp_path)
