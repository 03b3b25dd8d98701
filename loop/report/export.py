"""`distillery export [RUN:]K --format peft|merged -o DIR`: the distilled model
itself, as a directory the Hugging Face stack loads without Distillery.

- ``peft``: adapter_model.safetensors + adapter_config.json (the iteration's
  adapter, as the loop wrote it) + the student's tokenizer + README.md, a model
  card.  ``PeftModel.from_pretrained(base, DIR)`` loads it.
- ``merged``: the student with the adapter merged into its weights
  (``merge_and_unload``), in safetensors, with its tokenizer and the card:
  ``AutoModelForCausalLM.from_pretrained(DIR)``.

The base of a PEFT adapter is named by ``base_model_name_or_path``.  Students
loaded from something transformers cannot load by name -- ``tiny`` (built in
code), ``smollm2`` and other GGUF files (dequantized at load: the hub's
original weights are not the ones the adapter was trained on) -- have their
exact base written to DIR/base as a plain transformers model, and the adapter
config names that directory (absolute path; after moving DIR, pass the base
yourself, as the card shows).  Hub ids and local model directories are named
as they are.

The tokenizer is the one the loop prompted the student with (its chat
template, pad token and left padding), so a user prompts the model exactly as
it was trained.  Everything is written into a temporary directory next to DIR
and renamed at the end: DIR is complete or absent.  ``--force`` replaces only
an earlier export (it holds distillery_export.json), never another folder.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from student.config import LoraConfig, ModelConfig

from loop.errors import UserError

FORMATS = ("peft", "merged")
MARKER = "distillery_export.json"  # what makes a directory an export that --force may replace
BASE_DIR = "base"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")


@dataclass
class ExportSource:
    """What an export needs: the student's settings, the adapter, and the facts
    of its run for the model card (all optional but the first three)."""

    model: ModelConfig
    lora: LoraConfig
    adapter_dir: Path
    adapter_sha256: str | None = None
    run: str | None = None
    k: int | None = None
    best: bool = False
    dataset_size: int | None = None
    dataset_changed: int | None = None
    baseline_dev_acc: float | None = None
    iterations: list[dict] = field(default_factory=list)  # {k, dev_acc, pool_acc, train_steps}
    teachers: list[dict] = field(default_factory=list)  # {name, model}
    templates: dict[str, str] = field(default_factory=dict)  # prompt name -> version id
    student_template: str | None = None  # the body of the `student` prompt template used
    loss: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)


def source_of(st, ws: Path, run: dict, k: int) -> ExportSource:
    """The ExportSource of iteration k of `run` (read inside the caller's snapshot)."""
    from loop.report.summary import best_k, done_iterations

    it = st.get_iteration(run["id"], k)
    ref = f"{run['name']}:{k}"
    if it["status"] != "done" or not it["adapter_path"]:
        raise UserError(f"iteration {ref} is not finished (status {it['status']}), so it has no adapter yet; "
                        "export a finished iteration: see `distillery iterations`")
    cfg = run["config"]
    its = done_iterations(st, run)
    m = it["metrics"] or {}
    templates = m.get("templates") or {}
    body = next((p["body"] for p in st.prompt_versions("student") if p["id"] == templates.get("student")), None)
    return ExportSource(
        model=ModelConfig.model_validate(cfg["student"]), lora=LoraConfig.model_validate(cfg["lora"]),
        adapter_dir=ws / it["adapter_path"], adapter_sha256=it["adapter_sha256"],
        run=run["name"], k=k, best=best_k(its) == k,
        dataset_size=st.dataset_size(run["id"], k),
        dataset_changed=len(st.changed_examples(run["id"], k)),
        baseline_dev_acc=m.get("baseline_dev_acc"),
        iterations=[{"k": d["k"], "dev_acc": d["metrics"].get("dev_acc"), "pool_acc": d["metrics"].get("pool_acc"),
                     "train_steps": d["metrics"].get("train_steps")} for d in its],
        teachers=[{"name": t.get("name"), "model": t.get("model")} for t in cfg.get("teachers", [])],
        templates=templates, student_template=body, loss=cfg.get("loss", {}), train=cfg.get("train", {}),
    )


# --------------------------------------------------------------------------- writing


def export_model(src: ExportSource, fmt: str, out: Path, *, force: bool = False, workspace: Path | None = None,
                 say: Callable[[str], None] | None = None) -> dict:
    """Write `src` as `fmt` into directory `out`; returns what was written.
    `say` hears that the (maybe slow) model load starts, once the checks passed."""
    if fmt not in FORMATS:
        raise UserError(f"unknown model format {fmt!r}; use --format peft or --format merged")
    out = Path(out).expanduser().absolute()
    _check_target(out, force, workspace)
    _check_adapter(src)
    if fmt == "peft" and src.model.full_finetune:
        raise UserError(f"{_ref(src)} was trained with student.full_finetune = true: its weights are the whole "
                        "model, not a LoRA adapter; export it with --format merged")
    if say is not None:
        say(f"Exporting {_ref(src)} as {fmt}: loading student {src.model.name} ...")
    student = _load(src)
    with _atomic_dir(out) as tmp:
        if fmt == "peft":
            base = _write_peft(src, student, tmp, out)
        else:
            base = _write_merged(src, student, tmp)
        (tmp / "README.md").write_text(model_card(src, fmt, out), encoding="utf-8")
        doc = {"format": fmt, "run": src.run, "k": src.k, "adapter_sha256": src.adapter_sha256,
               "student": src.model.name, "base_model_name_or_path": base}
        (tmp / MARKER).write_text(json.dumps(doc, indent=2) + "\n")
    return doc | {"directory": str(out), "files": sorted(p.name for p in out.iterdir())}


def _write_peft(src: ExportSource, student, tmp: Path, out: Path) -> str:
    """The loop's adapter files with base_model_name_or_path pointing at a
    loadable base; the base itself under base/ when no name can load it."""
    for name in ADAPTER_FILES:
        shutil.copyfile(src.adapter_dir / name, tmp / name)
    base = base_name(src.model)
    if base is None:
        base = str(out / BASE_DIR)
        plain = _plain(student.model.unload())  # the LoRA layers removed, the base weights untouched
        plain.save_pretrained(tmp / BASE_DIR, safe_serialization=True)
        student.tokenizer.save_pretrained(tmp / BASE_DIR)
    cfg_path = tmp / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["base_model_name_or_path"] = base
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    student.tokenizer.save_pretrained(tmp)
    return base


def _write_merged(src: ExportSource, student, tmp: Path) -> str | None:
    model = student.model
    if student.is_peft:
        model.delete_adapter("teacher")  # only the student's weights go into the merge
        model = model.merge_and_unload()
    _plain(model).save_pretrained(tmp, safe_serialization=True)
    student.tokenizer.save_pretrained(tmp)
    return None


def _plain(model):
    """`model` as a plain transformers model.  One loaded from a GGUF keeps
    transformers' GGUF quantizer attached although its weights were
    dequantized, and save_pretrained refuses it: copy the weights into a model
    built from its config, less the quantization entry (which would make
    from_pretrained look for GGUF blocks)."""
    if getattr(model, "hf_quantizer", None) is None:
        return model
    from transformers import AutoModelForCausalLM

    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    plain = AutoModelForCausalLM.from_config(type(model.config).from_dict(cfg), dtype=model.dtype)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if missing or unexpected:  # weights kept in GGUF blocks (transformers' GGUF kernels installed)
        raise UserError(f"the student's weights are GGUF-quantized blocks ({len(missing)} weights missing, e.g. "
                        f"{missing[:2]}); export needs them dequantized: uninstall the `kernels` package, which "
                        "keeps GGUF weights packed, and export again")
    plain.generation_config = model.generation_config
    return plain.eval()


def base_name(model: ModelConfig) -> str | None:
    """What transformers can load as this student's exact base weights, or None
    when the base must be written out (tiny, GGUF: see the module docstring)."""
    if model.name in ("tiny", "smollm2") or model.name.endswith(".gguf") or model.gguf_file:
        return None
    local = Path(model.name).expanduser()
    return str(local.resolve()) if local.is_dir() else model.name


def _load(src: ExportSource):
    """The student as the loop loads it, holding the iteration's adapter; on
    the CPU when the run's device is a GPU this machine lacks."""
    import torch

    from student.errors import StudentError
    from student.model import load_student

    cfg = src.model
    if cfg.device != "cpu" and not torch.cuda.is_available():
        cfg = cfg.model_copy(update={"device": "cpu"})
    try:
        student = load_student(cfg, src.lora)
        student.load_adapter(src.adapter_dir, "student")
    except StudentError as e:
        raise UserError(f"cannot export {_ref(src)}: {e}") from None
    except OSError as e:  # transformers: not a local path and not in the offline hub cache
        raise UserError(f"cannot export {_ref(src)}: student.name = {cfg.name!r} does not load "
                        f"({str(e).splitlines()[0][:200]}); make it available offline or set HF_HUB_OFFLINE=0") from None
    student.model.eval()
    return student


def _check_adapter(src: ExportSource) -> None:
    # a full fine-tune's "adapter" is every weight, without a PEFT config
    needed = ADAPTER_FILES[:1] if src.model.full_finetune else ADAPTER_FILES
    missing = [n for n in needed if not (src.adapter_dir / n).is_file()]
    if missing:
        raise UserError(f"{src.adapter_dir}: the adapter of {_ref(src)} is missing {', '.join(missing)}; "
                        "was runs/ moved or cleaned? Re-run that iteration (`distillery replay`) to write it again")
    if src.adapter_sha256:
        from student.train import file_sha256

        if file_sha256(src.adapter_dir / ADAPTER_FILES[0]) != src.adapter_sha256:
            raise UserError(f"{src.adapter_dir / ADAPTER_FILES[0]} changed since {_ref(src)} wrote it (sha256 differs "
                            "from the store's); restore it, or replay the iteration to train it again")


def _check_target(out: Path, force: bool, workspace: Path | None) -> None:
    if out.exists() and not out.is_dir():
        raise UserError(f"-o {out} is a file; give the path of a directory to create")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not force:
        raise UserError(f"-o {out} exists and is not empty; choose a new directory, or add --force to replace "
                        "an earlier export there")
    if not (out / MARKER).is_file():
        raise UserError(f"-o {out} is not an earlier Distillery export (it has no {MARKER}), so --force "
                        "will not replace it; choose a new directory or empty it yourself")
    if workspace is not None and Path(workspace).resolve().is_relative_to(out.resolve()):
        raise UserError(f"-o {out} holds the workspace; choose a directory outside it")


@contextmanager
def _atomic_dir(out: Path) -> Iterator[Path]:
    """A temporary directory beside `out`, renamed to `out` when the body
    succeeds (an earlier export there is replaced only then), removed when it fails."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    except OSError as e:
        raise UserError(f"-o {out}: cannot create a directory there ({e.strerror}); choose a writable path") from None
    try:
        yield tmp
        old = None
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as e:
        raise UserError(f"-o {out}: cannot write the export ({e.strerror}); free some space or choose "
                        "another directory") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the model card


def _ref(src: ExportSource) -> str:
    return f"iteration {src.run}:{src.k}" if src.run is not None else f"the adapter in {src.adapter_dir}"


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def model_card(src: ExportSource, fmt: str, out: Path) -> str:
    """README.md: what the model is, where it came from, how to load it."""
    student = src.model.name + (f" (gguf_file {src.model.gguf_file})" if src.model.gguf_file else "")
    named = base_name(src.model)
    base = named or str(out / BASE_DIR)  # what the adapter config names (peft)
    front = ["---", f"library_name: {'peft' if fmt == 'peft' else 'transformers'}"]
    if named and not Path(named).is_absolute():  # the hub's model card field takes hub ids only
        front.append(f"base_model: {named}")
    front += ["tags:", "- distillery", "- distillation", "- full-finetune" if src.model.full_finetune else "- lora",
              "---", ""]
    title = f"{src.run}:{src.k}" if src.run is not None else src.adapter_dir.name
    lines = front + [f"# Distillery student `{title}`", ""]
    what = ("a LoRA adapter (PEFT)" if fmt == "peft" else "the fully fine-tuned student" if src.model.full_finetune
            else "the student with its LoRA adapter merged into the weights")
    lines.append(f"This directory holds {what}, distilled by Distillery's teacher-student loop.")
    lines += ["", "| | |", "| --- | --- |", f"| student (base model) | `{student}` |"]
    if fmt == "peft":
        lines.append(f"| base_model_name_or_path | `{base}` |")
    if src.k is not None:
        best = " (the run's result: the best dev accuracy)" if src.best else ""
        lines.append(f"| iteration | {src.k}{best} |")
    if src.dataset_size is not None:
        lines.append(f"| dataset | version {src.k} of run `{src.run}`: {src.dataset_size} examples "
                     f"({src.dataset_changed} changed at this iteration) |")
    if src.adapter_sha256:
        lines.append(f"| adapter sha256 | `{src.adapter_sha256}` |")
    lr = src.lora
    lines.append(f"| LoRA | r = {lr.r}, alpha = {lr.alpha:g}, dropout = {lr.dropout:g}, target_modules = {lr.target_modules} |")
    lines.append("")
    if src.iterations:
        lines += ["## Dev accuracy per iteration", "", "| iteration | dev accuracy | pool accuracy | train steps |",
                  "| --- | --- | --- | --- |", f"| baseline | {_pct(src.baseline_dev_acc)} | | |"]
        for it in src.iterations:
            mark = " **(exported)**" if it["k"] == src.k else ""
            lines.append(f"| {it['k']}{mark} | {_pct(it['dev_acc'])} | {_pct(it['pool_acc'])} | {it['train_steps'] or 0} |")
        lines.append("")
    if src.teachers or src.templates:
        lines += ["## Teachers and prompts", ""]
        lines += [f"- teacher `{t['name']}`: `{t['model']}`" for t in src.teachers]
        lines += [f"- prompt `{n}`: version `{v[:12]}`" for n, v in sorted(src.templates.items())]
        lines.append("")
    if src.loss:
        weights = ", ".join(f"{n} = {src.loss.get(n)}" for n in ("sft", "kd", "contrastive", "feature"))
        rest = ", ".join(f"{n} = {v}" for n, v in sorted(src.loss.items()) if n not in ("sft", "kd", "contrastive", "feature"))
        lines += ["## Training objective", "", f"L = sft·SFT + kd·D + contrastive·L_c + feature·L_feat with {weights}.",
                  "", f"Other loss settings: {rest}."]
        if src.train:
            lines += ["", "Training: " + ", ".join(f"{n} = {src.train.get(n)}" for n in ("lr", "batch_size", "grad_accum",
                                                                                           "epochs", "max_steps", "warm_start"))
                      + "."]
        lines.append("")
    lines += ["## Loading it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer"]
    if fmt == "peft":
        lines += ["from peft import PeftModel", "",
                  f"base = AutoModelForCausalLM.from_pretrained({base!r})",
                  f"model = PeftModel.from_pretrained(base, {str(out)!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})"]
    else:
        lines += ["", f"model = AutoModelForCausalLM.from_pretrained({str(out)!r})",
                  f"tokenizer = AutoTokenizer.from_pretrained({str(out)!r})"]
    # the prompt is encoded as the loop encodes it (student/model.py prompt_ids): the chat
    # template holds every special token, so the tokenizer adds none
    lines += ["", "messages = [{\"role\": \"user\", \"content\": \"What is 12 + 30?\"}]",
              "prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
              "inputs = tokenizer(prompt, add_special_tokens=False, return_tensors=\"pt\")",
              "out = model.generate(**inputs, max_new_tokens=256)",
              "print(tokenizer.decode(out[0, inputs[\"input_ids\"].shape[1]:], skip_special_tokens=True))",
              "```", ""]
    if fmt == "peft" and not named:
        lines += [f"`{BASE_DIR}/` is the exact base the adapter was trained on ({student} as transformers loads it), "
                  "so the adapter loads offline; after moving this directory, load the base from its new "
                  f"`{BASE_DIR}/` as above (base_model_name_or_path keeps the path it was written to).", ""]
    if src.student_template:
        lines += ["## Prompting", "",
                  "The student was trained and evaluated on questions rendered by this `student` template "
                  "(Jinja2; `question` is the question), through the tokenizer's chat template:", "",
                  "```yaml", src.student_template.rstrip(), "```", ""]
    return "\n".join(lines)


__all__ = ["ExportSource", "FORMATS", "source_of", "export_model", "model_card", "base_name"]
