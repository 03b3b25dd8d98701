"""The trainer on the tiny model: learning, checkpoints, resume, stop, final adapter."""

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from student.config import LossConfig, TrainConfig
from student.errors import StudentError
from student.train import train
from toy_data import toy_examples

SFT = LossConfig(sft=1.0, kd=0.0)
FULL = LossConfig(sft=1.0, kd=1.0, contrastive=0.5, feature=0.5, num_contexts=2, alpha=0.5,
                  clip_quantile=0.99, ema_decay=0.9, on_policy=0.2, on_policy_max_new_tokens=16)


def cfg(**kw):
    base = dict(max_steps=30, batch_size=4, lr=1e-2, warmup_ratio=0.1, checkpoint_every=10)
    return TrainConfig(**{**base, **kw})


def mean(xs):
    return sum(xs) / len(xs)


@pytest.mark.parametrize("loss_cfg", [SFT, FULL], ids=["sft", "unisd_full"])
def test_thirty_steps_lower_the_loss(make_tiny_student, tmp_path, loss_cfg):
    st = make_tiny_student()
    res = train(st, toy_examples(8), cfg(), loss_cfg, tmp_path, progress=False)
    assert res.steps == 30 and len(res.history) == 30 and not res.stopped
    # judge on the off-policy steps: on-policy samples change y, hence the loss scale
    sft = [h["sft"] for h in res.history if h["on_policy"] == 0]
    assert mean(sft[-5:]) < mean(sft[:5]) - 0.3
    totals = [h["total"] for h in res.history if h["on_policy"] == 0]
    assert mean(totals[-5:]) < mean(totals[:5])
    if loss_cfg is FULL:
        assert {"kd", "contrastive", "feature", "agreement_w"} <= set(res.history[0])
        assert any(h["on_policy"] for h in res.history)
        # the EMA teacher moved away from its start (= the initial student, B = 0)
        assert any(p.abs().sum() > 0 for k, p in st.adapter_params("teacher").items() if "lora_B" in k)


def test_final_adapter_config_and_hash(make_tiny_student, tmp_path):
    st = make_tiny_student()
    res = train(st, toy_examples(4), cfg(max_steps=3), SFT, tmp_path, progress=False)
    f = res.adapter_dir / "adapter_model.safetensors"
    assert res.adapter_dir == tmp_path / "adapter"
    assert res.adapter_sha256 == hashlib.sha256(f.read_bytes()).hexdigest()
    saved = json.loads((res.adapter_dir / "train_config.json").read_text())
    assert saved["train"]["max_steps"] == 3 and saved["loss"]["kd"] == 0.0
    for k, v in load_file(str(f)).items():
        assert torch.equal(v, st.adapter_params("student")[k].detach())


def test_checkpoints_are_safetensors_and_json_only(make_tiny_student, tmp_path):
    st = make_tiny_student()
    train(st, toy_examples(4), cfg(max_steps=4, checkpoint_every=2), FULL, tmp_path, progress=False)
    ckpts = sorted((tmp_path / "checkpoints").iterdir())
    assert [c.name for c in ckpts] == ["step-000004"]  # older ones removed
    names = {p.name for p in ckpts[0].iterdir()}
    assert {"student.safetensors", "teacher.safetensors", "optimizer.safetensors", "trainer_state.json",
            "rng-rank0.safetensors"} <= names
    assert all(n.endswith((".safetensors", ".json")) for n in names)
    state = json.loads((ckpts[0] / "trainer_state.json").read_text())
    assert state["step"] == 4 and state["micro"] == 4 and len(state["history"]) == 4
    assert state["scheduler"]["total"] == 4 and state["config"]["loss"]["num_contexts"] == 2
    opt = load_file(str(ckpts[0] / "optimizer.safetensors"))
    assert any(k.endswith("exp_avg_sq") for k in opt)


@pytest.mark.parametrize("accum", [1, 2])
def test_resume_mid_epoch_reproduces_the_uninterrupted_losses(make_tiny_student, tmp_path, accum):
    exs = toy_examples(10)  # batch 4 → 3 micro-batches per epoch: the stop lands mid-epoch
    tc = cfg(max_steps=10, checkpoint_every=3, grad_accum=accum)
    lc = FULL.model_copy(update={"on_policy": 0.3})
    whole = train(make_tiny_student(), exs, tc, lc, tmp_path / "a", progress=False)

    calls = {"n": 0}

    def stop_after_five():
        calls["n"] += 1
        return calls["n"] >= 5

    first = train(make_tiny_student(), exs, tc, lc, tmp_path / "b", should_stop=stop_after_five, progress=False)
    assert first.stopped and first.steps == 5 and first.adapter_dir is None
    assert (tmp_path / "b" / "checkpoints" / "step-000005").is_dir()
    # a new process: a freshly loaded student, resumed from the checkpoint
    second = train(make_tiny_student(), exs, tc, lc, tmp_path / "b", progress=False)
    assert second.steps == 10 and not second.stopped
    keys = ("total", "sft", "kd", "contrastive", "feature", "on_policy", "lr")
    for a, b in zip(whole.history, second.history, strict=True):
        for k in keys:
            assert a[k] == pytest.approx(b[k], rel=1e-5, abs=1e-7), (a["step"], k)
    assert whole.adapter_sha256 == second.adapter_sha256


def test_finished_run_resumes_as_done(make_tiny_student, tmp_path):
    exs = toy_examples(4)
    first = train(make_tiny_student(), exs, cfg(max_steps=3), SFT, tmp_path, progress=False)
    again = train(make_tiny_student(), exs, cfg(max_steps=3), SFT, tmp_path, progress=False)
    assert again.steps == 3 and again.adapter_sha256 == first.adapter_sha256
    assert again.history == first.history


def test_changed_config_does_not_resume(make_tiny_student, tmp_path):
    exs = toy_examples(4)
    train(make_tiny_student(), exs, cfg(max_steps=2), SFT, tmp_path, progress=False)
    other = train(make_tiny_student(), exs, cfg(max_steps=2, lr=5e-3), SFT, tmp_path, progress=False)
    assert [h["step"] for h in other.history] == [1, 2]
    assert other.history[0]["lr"] != pytest.approx(cfg(max_steps=2).lr)  # computed fresh with the new lr
    assert not train(make_tiny_student(), exs, cfg(max_steps=2), SFT, tmp_path / "c", resume=False, progress=False).stopped


def test_bf16_autocast_on_cpu_trains(make_tiny_student, tmp_path):
    res = train(make_tiny_student(), toy_examples(4), cfg(max_steps=2, bf16="on"), FULL, tmp_path, progress=False)
    assert all(torch.isfinite(torch.tensor(h["total"])) for h in res.history)


def test_empty_dataset_and_all_zero_weights_are_clear_errors(make_tiny_student, tmp_path):
    with pytest.raises(StudentError, match="empty"):
        train(make_tiny_student(), [], cfg(), SFT, tmp_path, progress=False)
    with pytest.raises(StudentError, match="every weight"):
        train(make_tiny_student(), toy_examples(2), cfg(), LossConfig(sft=0, kd=0), tmp_path, progress=False)


def test_base_teacher_and_example_weights(make_tiny_student, tmp_path):
    exs = [e.model_copy(update={"weight": 0.0 if i % 2 else 1.0}) for i, e in enumerate(toy_examples(4))]
    lc = LossConfig(sft=1.0, kd=1.0, teacher_adapter="base", num_contexts=2)
    st = make_tiny_student()
    teacher_before = {k: p.detach().clone() for k, p in st.adapter_params("teacher").items()}
    res = train(st, exs, cfg(max_steps=3), lc, tmp_path, progress=False)
    assert res.steps == 3
    # no EMA with the base teacher: the teacher adapter is untouched
    for k, p in st.adapter_params("teacher").items():
        assert torch.equal(p, teacher_before[k])


def test_bf16_auto_rule():
    from student.train import CPU_BF16_MIN_HIDDEN, _cpu_has_native_bf16, _use_bf16

    cpu = torch.device("cpu")
    assert not _use_bf16(TrainConfig(bf16="off"), cpu, 4096)
    assert _use_bf16(TrainConfig(bf16="on"), cpu, 64)
    assert not _use_bf16(TrainConfig(bf16="auto"), cpu, 64)  # the tiny model stays fp32
    assert _use_bf16(TrainConfig(bf16="auto"), cpu, CPU_BF16_MIN_HIDDEN) == _cpu_has_native_bf16()


def test_full_finetune_trains_with_ema_teacher_copy(make_tiny_student, tmp_path):
    st = make_tiny_student(full_finetune=True)
    lc = LossConfig(sft=1.0, kd=1.0, contrastive=0.5, feature=0.5, num_contexts=2, ema_decay=0.5)
    res = train(st, toy_examples(4), cfg(max_steps=4, checkpoint_every=2), lc, tmp_path / "a", progress=False)
    assert res.steps == 4
    again = train(make_tiny_student(full_finetune=True), toy_examples(4), cfg(max_steps=4, checkpoint_every=2), lc,
                  tmp_path / "a", progress=False)  # resumes from the final checkpoint: nothing left to do
    assert again.adapter_sha256 == res.adapter_sha256


def test_chunked_training_equals_the_unchunked_reference(make_tiny_student, tmp_path):
    lc = FULL.model_copy(update={"on_policy": 0.0})  # y = d: both runs see the same tokens
    runs = [train(make_tiny_student(), toy_examples(8), cfg(max_steps=4), lc.model_copy(update={"chunk_size": c}),
                  tmp_path / str(c), progress=False) for c in (0, 5)]
    for a, b in zip(*(r.history for r in runs), strict=True):
        for k in ("total", "sft", "kd", "contrastive", "feature", "agreement_w", "grad_norm"):
            assert a[k] == pytest.approx(b[k], rel=1e-4), (a["step"], k)


def test_the_lm_head_never_sees_more_than_one_chunk(make_tiny_student, tmp_path):
    """Memory bound, as behaviour: every LM head call of a UniSD step (student,
    K teacher contexts, negatives) takes at most chunk_size tokens."""
    st = make_tiny_student()
    calls = []
    st.model.get_base_model().lm_head.register_forward_hook(lambda module, args, out: calls.append(tuple(out.shape)))
    lc = FULL.model_copy(update={"on_policy": 0.0, "chunk_size": 5})  # (on-policy sampling calls the head to generate)
    train(st, toy_examples(8), cfg(max_steps=2), lc, tmp_path, progress=False)
    assert len(calls) > 2 * 4  # several chunks per step, for the student and each teacher
    assert all(len(shape) == 2 and shape[0] <= 5 for shape in calls), calls
