"""Two processes (torchrun, gloo on CPU) train the tiny model together.

`accelerate launch --num_processes 2 --cpu` starts a single process on this
machine, so the test uses torchrun, which runs the same Accelerator script as
two ranks over gloo.  Each rank trains on its own slice of every batch, so
only working gradient synchronisation can leave both with equal weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("dist_worker.py")


def test_two_ranks_end_with_equal_weights(tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node", "2", str(WORKER), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = json.loads((tmp_path / "rank0.json").read_text())
    r1 = json.loads((tmp_path / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2 and r0["steps"] == r1["steps"] == 4
    assert r0["history"] != r1["history"]  # different data on each rank...
    assert r0["student"] == r1["student"]  # ...yet the same weights: gradients were averaged
    assert r0["teacher"] == r1["teacher"]  # and the EMA teacher followed identically
    assert r0["adapter_sha256"] == r1["adapter_sha256"]  # both read the one adapter rank 0 wrote
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
