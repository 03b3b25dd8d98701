"""One rank of the multi-process training test (started by torchrun, see
test_distributed.py).  Trains the tiny model and writes what this rank ended
with: a hash of its student and teacher adapter weights and its loss history."""

import hashlib
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from student.config import LoraConfig, LossConfig, ModelConfig, TrainConfig  # noqa: E402
from student.model import load_student  # noqa: E402
from student.train import train  # noqa: E402
from toy_data import toy_examples  # noqa: E402


def digest(params: dict) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(params[k].detach().cpu().numpy().tobytes())
    return h.hexdigest()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    student = load_student(ModelConfig(name="tiny", device="cpu"), LoraConfig())
    loss = LossConfig(sft=1.0, kd=1.0, contrastive=0.5, feature=0.5, num_contexts=2, ema_decay=0.9)
    cfg = TrainConfig(max_steps=4, batch_size=2, grad_accum=2, lr=1e-2, checkpoint_every=2)
    res = train(student, toy_examples(8), cfg, loss, out / "run", progress=False)
    rank = int(os.environ["RANK"])
    (out / f"rank{rank}.json").write_text(json.dumps({
        "world": int(os.environ["WORLD_SIZE"]),
        "student": digest(student.adapter_params("student")),
        "teacher": digest(student.adapter_params("teacher")),
        "history": [h["sft"] for h in res.history],
        "steps": res.steps,
        "adapter_sha256": res.adapter_sha256,
    }))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
