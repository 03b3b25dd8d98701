"""`distillery export K --format peft|merged -o DIR`: the exported directories
load with plain PEFT / transformers and give the logits of the student as the
loop runs it (base + the iteration's adapter); the model card says where the
model came from; bad targets are refused with the fix, and nothing is left
half-written.  The SmolLM2 test (integration) does the same on the real GGUF
model, whose base has to be written out beside the adapter."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from tests.loop.helpers import cli_json, run_inprocess, task_rows


def _inputs(tokenizer, question: str, completion: str) -> torch.Tensor:
    """A prompt as the loop encodes it, plus a completion to score."""
    from student.model import prompt_ids

    ids = prompt_ids(tokenizer, [{"role": "user", "content": question}])
    ids += tokenizer(completion, add_special_tokens=False)["input_ids"]
    return torch.tensor([ids])


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits.float()


def _student(model_cfg, lora_cfg, adapter_dir):
    from student.model import load_student

    st = load_student(model_cfg, lora_cfg)
    st.load_adapter(adapter_dir, "student")
    st.model.eval()
    return st


def _card_snippet(directory: Path) -> str:
    """The Python block of the model card, generating 4 tokens instead of 256."""
    card = (directory / "README.md").read_text()
    return re.search(r"```python\n(.*?)```", card, re.S).group(1).replace("max_new_tokens=256", "max_new_tokens=4")


def _check_loads(student, peft_dir: Path, merged_dir: Path, ids: torch.Tensor, atol: float) -> None:
    """PEFT (explicit base, and AutoPeftModel by base_model_name_or_path) and
    merged give the student's logits; the adapter does change them."""
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM

    want = _logits(student.model, ids)
    with student.use_adapter("base"):
        plain = _logits(student.model, ids)
    assert (want - plain).abs().max() > 20 * atol  # the comparison below can tell the adapter apart

    base_path = json.loads((peft_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert base_path == str(peft_dir / "base")
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path), str(peft_dir)).eval()
    torch.testing.assert_close(_logits(peft, ids), want, atol=atol, rtol=0)
    auto = AutoPeftModelForCausalLM.from_pretrained(str(peft_dir)).eval()
    torch.testing.assert_close(_logits(auto, ids), want, atol=atol, rtol=0)
    merged = AutoModelForCausalLM.from_pretrained(str(merged_dir)).eval()
    torch.testing.assert_close(_logits(merged, ids), want, atol=atol, rtol=0)


def _check_tokenizers(student, *dirs: Path) -> None:
    from transformers import AutoTokenizer

    text = student.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], tokenize=False,
                                                 add_generation_prompt=True)
    want = student.tokenizer(text, add_special_tokens=False)["input_ids"]
    for d in dirs:
        tok = AutoTokenizer.from_pretrained(str(d))
        assert tok.chat_template == student.tokenizer.chat_template
        assert tok(text, add_special_tokens=False)["input_ids"] == want


def test_peft_and_merged_exports_give_the_students_logits(finished, tmp_path, capsys):
    from store import Store
    from student.config import LoraConfig, ModelConfig

    ws, _ = finished
    peft_dir, merged_dir = tmp_path / "out" / "peft", tmp_path / "out" / "merged"
    doc = cli_json(capsys, ws, "export", "main:1", "--format", "peft", "-o", str(peft_dir))
    assert doc["format"] == "peft" and doc["k"] == 1 and doc["directory"] == str(peft_dir)
    assert {"adapter_model.safetensors", "adapter_config.json", "README.md", "base", "tokenizer.json"} <= set(doc["files"])
    assert run_inprocess(ws, "export", "1", "--format", "merged", "-o", str(merged_dir)) == 0
    assert (merged_dir / "model.safetensors").is_file() and (merged_dir / "config.json").is_file()
    assert "Wrote main:1 to" in capsys.readouterr().out
    assert not list((tmp_path / "out").glob(".*"))  # no temporary directory left

    st = Store.open(ws)
    try:
        run = st.get_run("main")
        it = st.get_iteration(run["id"], 1)
    finally:
        st.close()
    student = _student(ModelConfig.model_validate(run["config"]["student"]),
                       LoraConfig.model_validate(run["config"]["lora"]), ws / it["adapter_path"])
    row = task_rows()[1][0]
    _check_loads(student, peft_dir, merged_dir, _inputs(student.tokenizer, row["question"], row["rationale"]), atol=1e-5)
    _check_tokenizers(student, peft_dir, peft_dir / "base", merged_dir)

    card = (peft_dir / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: peft\n")
    for fact in ("| student (base model) | `tiny` |", f"| base_model_name_or_path | `{peft_dir / 'base'}` |",
                 "| iteration | 1 |", "| dataset | version 1 of run `main`: 6 examples",
                 f"| adapter sha256 | `{it['adapter_sha256']}` |", "## Dev accuracy per iteration",
                 "| 1 **(exported)** |", "| baseline | 0.0% |", "- teacher `fake`: `openai/fake`",
                 f"- prompt `refine`: version `{it['metrics']['templates']['refine'][:12]}`",
                 "sft = 1.0, kd = 0.5, contrastive = 0.1, feature = 0.0", "lr = 0.001", "## Prompting",
                 'Think step by step, then write the final answer on the last line as "#### <answer>".'):
        assert fact in card, fact
    merged_card = (merged_dir / "README.md").read_text()
    assert merged_card.startswith("---\nlibrary_name: transformers\n") and "merged into the weights" in merged_card
    for d in (peft_dir, merged_dir):  # the card's own loading code runs as written
        scope: dict = {}
        exec(_card_snippet(d), scope)
        assert isinstance(scope["out"], torch.Tensor)


def test_bad_targets_are_refused_with_the_fix_and_nothing_half_written(finished, tmp_path, capsys):
    ws, _ = finished

    def export(*args):
        capsys.readouterr()
        rc = run_inprocess(ws, "export", "1", *args)
        out = capsys.readouterr()
        assert "Traceback" not in out.out + out.err
        return rc, out.out + out.err

    rc, text = export("--format", "peft")
    assert rc == 2 and "--format peft writes a directory; add -o DIR" in text
    rc, text = export("--format", "onnx", "-o", str(tmp_path / "x"))
    assert rc == 2 and "unknown --format 'onnx'; use --format jsonl, openai, peft or merged" in text
    afile = tmp_path / "a-file"
    afile.write_text("mine")
    rc, text = export("--format", "peft", "-o", str(afile))
    assert rc == 2 and "is a file; give the path of a directory" in text
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    rc, text = export("--format", "merged", "-o", str(theirs))
    assert rc == 2 and "exists and is not empty" in text and "--force" in text
    rc, text = export("--format", "merged", "-o", str(theirs), "--force")
    assert rc == 2 and "not an earlier Distillery export" in text
    assert [p.name for p in theirs.iterdir()] == ["notes.txt"]

    out = tmp_path / "export"
    out.mkdir()  # an empty directory is fine
    assert export("--format", "peft", "-o", str(out))[0] == 0
    rc, text = export("--format", "merged", "-o", str(out))
    assert rc == 2 and "add --force" in text
    assert export("--format", "merged", "-o", str(out), "--force")[0] == 0  # replaces an earlier export
    assert json.loads((out / "distillery_export.json").read_text())["format"] == "merged"
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []

    copy = tmp_path / "ws"
    shutil.copytree(ws, copy, ignore=shutil.ignore_patterns("checkpoints"))
    adapter = next(copy.glob("runs/main/iter-1/adapter/adapter_model.safetensors"))
    adapter.write_bytes(adapter.read_bytes()[:-1] + b"\0")
    capsys.readouterr()
    assert run_inprocess(copy, "export", "1", "--format", "peft", "-o", str(tmp_path / "t")) == 2
    assert "changed since iteration main:1 wrote it" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()


@pytest.mark.integration
def test_smollm2_exports_load_back_with_the_students_logits(tmp_path):
    """SmolLM2 from its GGUF: two LoRA steps, exported through the function the
    CLI calls; base/ holds the dequantized base the adapter was trained on."""
    from loop.report.export import ExportSource, export_model
    from student.config import LoraConfig, LossConfig, ModelConfig, TrainConfig
    from student.data import TrainExample
    from student.model import load_student
    from student.train import train

    torch.set_num_threads(2)
    model_cfg, lora_cfg = ModelConfig(name="smollm2", device="cpu", dtype="float32", max_length=256), LoraConfig(r=8)
    rows = task_rows()[0][:2]
    student = load_student(model_cfg, lora_cfg)
    examples = [TrainExample(prompt=[{"role": "user", "content": r["question"]}], completion=r["rationale"]) for r in rows]
    res = train(student, examples, TrainConfig(max_steps=2, batch_size=2, lr=2e-3, warmup_ratio=0.0),
                LossConfig(sft=1.0, kd=0.0), tmp_path / "train", progress=False)
    student.model.eval()

    src = ExportSource(model=model_cfg, lora=lora_cfg, adapter_dir=res.adapter_dir, adapter_sha256=res.adapter_sha256)
    peft_dir, merged_dir = tmp_path / "peft", tmp_path / "merged"
    export_model(src, "peft", peft_dir)
    export_model(src, "merged", merged_dir)
    assert (peft_dir / "base" / "model.safetensors").is_file() and (merged_dir / "model.safetensors").is_file()
    ids = _inputs(student.tokenizer, rows[0]["question"], rows[0]["rationale"])
    _check_loads(student, peft_dir, merged_dir, ids, atol=2e-3)
    _check_tokenizers(student, peft_dir, merged_dir)
    assert "`smollm2`" in (peft_dir / "README.md").read_text()


def test_the_base_is_named_when_transformers_loads_it_by_name(tmp_path, monkeypatch):
    import loop.report.export as export
    from loop.report.export import ExportSource, base_name, model_card
    from student.config import LoraConfig, ModelConfig

    local = tmp_path / "student-1b"  # a local model directory: only named, never loaded
    local.mkdir()
    assert base_name(ModelConfig(name=str(local))) == str(local.resolve())
    for name, gguf in (("tiny", None), ("smollm2", None), ("/models/q.gguf", None), (str(local), "q4.gguf")):
        assert base_name(ModelConfig(name=name, gguf_file=gguf)) is None  # dequantized or built in code: written out
    src = ExportSource(model=ModelConfig(name=str(local)), lora=LoraConfig(), adapter_dir=tmp_path)
    card = model_card(src, "peft", tmp_path / "out")
    assert f"from_pretrained({str(local.resolve())!r})" in card and "base/" not in card
    assert "\nbase_model:" not in card  # the model card field takes hub ids, not local paths
    # a base transformers loads by a hub name is cited in the front matter (no hub is reached here,
    # so the name comes from base_name)
    monkeypatch.setattr(export, "base_name", lambda model: "student-1b")
    card = model_card(src, "peft", tmp_path / "out")
    assert "\nbase_model: student-1b\n" in card and "from_pretrained('student-1b')" in card
