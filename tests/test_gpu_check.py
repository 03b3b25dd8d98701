"""bench/gpu_check.py runs where it will be used only once: its CPU smoke mode and
its refusal without CUDA are checked here, in subprocesses as a user runs it."""

import os
import re
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"
GOAL_LINE = r"{}: (\d+\.\d+|n/a) \(goal: [≤≥] \d+(\.\d+)?\)"


def run(*args: str, timeout: float) -> subprocess.CompletedProcess:
    # no GPU even on a CI machine that has one: the no-CUDA path must be the one taken
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "PYTHONIOENCODING": "utf-8"}
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          encoding="utf-8", env=env, timeout=timeout)


def test_cpu_smoke_prints_every_goal_line_and_mfu_last():
    proc = run("--cpu-smoke", "--peak-tflops", "1", timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.strip().splitlines()
    for name in ("unisd_vs_token_compute_ratio", "peak_memory_ratio"):
        assert any(re.fullmatch(GOAL_LINE.format(name), line) for line in lines), (name, proc.stdout)
    # --peak-tflops makes the MFU a number even on CPU; it is the headline, last
    assert re.fullmatch(r"mfu: \d+\.\d+ \(goal: ≥ 0\.35\)", lines[-1]), proc.stdout
    assert any(line.startswith("generation tokens/s: one-at-a-time ") for line in lines), proc.stdout


def test_without_cuda_it_exits_2_and_says_what_to_do():
    proc = run(timeout=60)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "CUDA is not available" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert "mfu:" not in proc.stdout
