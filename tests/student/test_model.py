"""The student model: tiny model + tokenizer, two adapters over one base, adapter I/O."""

from __future__ import annotations

import json
import time

import pytest
import torch

from student.config import LoraConfig, ModelConfig
from student.errors import AdapterError, ModelLoadError
from student.model import load_student, prompt_ids, render_prompt
from student.tiny import build_tiny_tokenizer

MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 12 + 30?"}]


def _perturb(student, name="student", seed=1, std=0.3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in student.adapter_params(name).values():
            p.normal_(0, std)


def test_tiny_tokenizer_round_trips_text_and_has_special_tokens():
    tok = build_tiny_tokenizer()
    text = "Natalia sold 48/2 = 24 clips.\n#### 72 (costs $1,234.50; 3/4 of it)"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)  # one token per character
    assert tok.decode(ids) == text
    assert tok.pad_token_id is not None and tok.eos_token == "<|im_end|>"
    assert len({tok.pad_token_id, tok.eos_token_id, tok.bos_token_id, tok.unk_token_id}) == 4
    assert tok("é", add_special_tokens=False)["input_ids"] == [tok.unk_token_id]


def test_chat_template_renders_chatml_with_generation_prompt(tiny_student):
    text = render_prompt(tiny_student.tokenizer, MESSAGES)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is 12 + 30?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    ids = prompt_ids(tiny_student.tokenizer, MESSAGES)
    assert tiny_student.tokenizer.decode(ids) == text
    # the chat markers are single special tokens, not spelled out character by character
    assert ids[0] == tiny_student.tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert tiny_student.tokenizer.padding_side == "left"


def test_tiny_loads_fast_and_is_seeded(make_tiny_student):
    make_tiny_student()  # imports warm
    t0 = time.perf_counter()
    a = make_tiny_student(seed=3)
    assert time.perf_counter() - t0 < 2.0
    b, c = make_tiny_student(seed=3), make_tiny_student(seed=4)
    sa, sb, sc = (dict(x.model.named_parameters()) for x in (a, b, c))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    cfg = a.model.get_base_model().config
    assert (cfg.num_hidden_layers, cfg.hidden_size) == (2, 64)
    assert a.device == torch.device("cpu") and a.dtype == torch.float32


def test_two_adapters_share_one_copy_of_base_weights(tiny_student):
    from peft import PeftModel

    model = tiny_student.model
    assert isinstance(model, PeftModel)
    assert set(model.peft_config) == {"student", "teacher"}
    assert model.active_adapter == "student"
    base_params = [p for n, p in model.named_parameters() if "lora_" not in n]
    # exactly the base model's parameters, each stored once
    ptrs = [p.data_ptr() for p in base_params]
    assert len(set(ptrs)) == len(ptrs)
    fresh = load_student(ModelConfig(name="tiny"), LoraConfig()).model.get_base_model()
    n_lora_free = sum(p.numel() for n, p in fresh.named_parameters() if "lora_" not in n)
    assert sum(p.numel() for p in base_params) == n_lora_free
    # trainable = the student adapter only
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".student." in n for n in trainable)
    assert {id(p) for p in tiny_student.trainable_parameters()} == {
        id(p) for p in tiny_student.adapter_params("student").values()
    }


def test_teacher_starts_equal_to_student_and_keys_match(tiny_student):
    s, t = tiny_student.adapter_params("student"), tiny_student.adapter_params("teacher")
    assert s.keys() == t.keys()
    assert all(torch.equal(s[k], t[k]) and s[k].data_ptr() != t[k].data_ptr() for k in s)
    assert any(k.endswith("lora_A.weight") for k in s)


def test_use_adapter_switches_forward_and_restores_flags(tiny_student):
    _perturb(tiny_student, "student")
    ids = torch.tensor([prompt_ids(tiny_student.tokenizer, MESSAGES)])
    flags = {n: p.requires_grad for n, p in tiny_student.model.named_parameters()}
    with torch.no_grad():
        student_logits = tiny_student.model(input_ids=ids).logits
        with tiny_student.use_adapter("teacher") as m:
            teacher_logits = m(input_ids=ids).logits
        with tiny_student.use_adapter("base") as m:
            base_logits = m(input_ids=ids).logits
    # the teacher still holds the initial (B = 0) LoRA, so it equals the base model
    assert torch.allclose(teacher_logits, base_logits)
    assert not torch.allclose(student_logits, teacher_logits)
    assert tiny_student.model.active_adapter == "student"
    assert flags == {n: p.requires_grad for n, p in tiny_student.model.named_parameters()}
    with pytest.raises(AdapterError, match="unknown adapter"):
        with tiny_student.use_adapter("nope"):
            pass


def test_copy_adapter_copies_in_place(tiny_student):
    _perturb(tiny_student, "student")
    teacher = tiny_student.adapter_params("teacher")
    before = {k: p.data_ptr() for k, p in teacher.items()}
    tiny_student.copy_adapter("student", "teacher")
    s = tiny_student.adapter_params("student")
    assert all(torch.equal(s[k], teacher[k]) for k in s)
    assert before == {k: p.data_ptr() for k, p in tiny_student.adapter_params("teacher").items()}


def test_save_and_load_adapter_round_trip_exactly(tmp_path, make_tiny_student):
    a = make_tiny_student()
    _perturb(a, "student", seed=7)
    out = a.save_adapter(tmp_path / "adapter", "student")
    assert (out / "adapter_model.safetensors").is_file()
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["peft_type"] == "LORA"
    assert not list(out.glob("*.tmp"))

    b = make_tiny_student()  # fresh model: load into the teacher slot ("previous iteration")
    b.load_adapter(out, "teacher")
    sa, tb = a.adapter_params("student"), b.adapter_params("teacher")
    assert all(torch.equal(sa[k], tb[k]) for k in sa)
    b.load_adapter(out, "student")
    ids = torch.tensor([prompt_ids(a.tokenizer, MESSAGES)])
    with torch.no_grad():
        assert torch.equal(a.model(input_ids=ids).logits, b.model(input_ids=ids).logits)


def test_saved_adapter_is_a_valid_peft_adapter(tmp_path, make_tiny_student):
    """vLLM and peft read the same format: PeftModel.from_pretrained must accept it."""
    from peft import PeftModel

    from student.tiny import build_tiny_model

    a = make_tiny_student()
    _perturb(a, "student", seed=2)
    a.save_adapter(tmp_path / "ad")
    base = build_tiny_model(a.tokenizer, seed=0)
    loaded = PeftModel.from_pretrained(base, str(tmp_path / "ad"))
    ids = torch.tensor([prompt_ids(a.tokenizer, MESSAGES)])
    with torch.no_grad():
        assert torch.allclose(a.model(input_ids=ids).logits, loaded(input_ids=ids).logits, atol=1e-6)


def test_load_adapter_errors_are_clear(tmp_path, make_tiny_student):
    a = make_tiny_student()
    with pytest.raises(AdapterError, match="no adapter weights"):
        a.load_adapter(tmp_path / "missing", "student")
    make_tiny_student(r=4).save_adapter(tmp_path / "r4")
    with pytest.raises(AdapterError, match="shape"):
        a.load_adapter(tmp_path / "r4", "student")
    make_tiny_student(target_modules=["q_proj"]).save_adapter(tmp_path / "q")
    with pytest.raises(AdapterError, match="missing keys"):
        a.load_adapter(tmp_path / "q", "student")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "adapter_model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(AdapterError, match="not a readable"):
        a.load_adapter(tmp_path / "bad", "student")


def test_target_modules_list(make_tiny_student):
    s = make_tiny_student(target_modules=["q_proj", "v_proj"])
    names = list(s.adapter_params("student"))
    assert names and all(("q_proj" in n) or ("v_proj" in n) for n in names)


def test_full_finetune_trains_all_weights_with_frozen_teacher_copy(tmp_path, make_tiny_student):
    s = make_tiny_student(full_finetune=True)
    n_all = sum(p.numel() for p in s.model.parameters())
    assert sum(p.numel() for p in s.trainable_parameters()) == n_all
    teacher = s.adapter_params("teacher")
    assert all(not p.requires_grad for p in teacher.values())
    student = s.adapter_params("student")
    assert all(student[k].data_ptr() != teacher[k].data_ptr() for k in student)
    with torch.no_grad():
        next(iter(student.values())).add_(1.0)
    s.save_adapter(tmp_path / "full")
    s.load_adapter(tmp_path / "full", "teacher")
    assert all(torch.equal(student[k], teacher[k]) for k in student)
    with pytest.raises(AdapterError, match="full_finetune"):
        with s.use_adapter("base"):
            pass


def test_bad_model_names_raise_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="no such GGUF"):
        load_student(ModelConfig(name=str(tmp_path / "x.gguf")), LoraConfig())
    with pytest.raises(ModelLoadError, match="cannot load"):
        load_student(ModelConfig(name=str(tmp_path / "no-such-dir")), LoraConfig())


def test_local_hf_directory_loads_through_the_same_path(tmp_path):
    """A saved model directory (what an HF id resolves to) loads with its
    tokenizer's chat template, left padding and both adapters."""
    from student.tiny import build_tiny_model

    tok = build_tiny_tokenizer()
    build_tiny_model(tok, seed=5).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    s = load_student(ModelConfig(name=str(tmp_path / "m"), device="cpu"), LoraConfig(r=4))
    assert set(s.model.peft_config) == {"student", "teacher"}
    assert render_prompt(s.tokenizer, MESSAGES) == render_prompt(tok, MESSAGES)
    assert s.tokenizer.padding_side == "left" and s.dtype == torch.float32
    ref = build_tiny_model(tok, seed=5)
    ids = torch.tensor([prompt_ids(tok, MESSAGES)])
    with torch.no_grad():
        assert torch.allclose(s.model(input_ids=ids).logits, ref(input_ids=ids).logits, atol=1e-6)


def test_a_tokenizer_without_chat_template_gets_chatml(tmp_path):
    from student.tiny import build_tiny_model

    tok = build_tiny_tokenizer()
    tok.chat_template = None
    build_tiny_model(tok).save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    s = load_student(ModelConfig(name=str(tmp_path / "m"), device="cpu"), LoraConfig())
    assert render_prompt(s.tokenizer, MESSAGES).endswith("<|im_start|>assistant\n")


def test_dtype_and_device_resolution(make_tiny_student):
    from student.model import resolve_device, resolve_dtype

    s = make_tiny_student(dtype="bfloat16")
    assert s.dtype == torch.bfloat16
    assert s.model.get_base_model().model.embed_tokens.weight.dtype == torch.bfloat16
    from student.generate import generate

    assert len(generate(s, [MESSAGES], max_new_tokens=3)[0]) == 1  # bf16 generation runs
    assert resolve_dtype(ModelConfig(dtype="auto"), torch.device("cpu")) == torch.float32
    if not torch.cuda.is_available():
        with pytest.raises(ModelLoadError, match="no CUDA GPU"):
            resolve_device(ModelConfig(device="cuda"))
    assert resolve_device(ModelConfig(device="cpu")) == torch.device("cpu")
