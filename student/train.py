"""The trainer: one LoRA student, the UniSD objective, top to bottom.

    train(student, examples, train_cfg, loss_cfg, out_dir) -> TrainResult

Reads like nanoGPT's loop: set up → (resume) → for each optimizer step:
grad_accum micro-batches of [teacher forwards (no_grad) → student forward →
UniSD loss → backward] → clip → AdamW step → EMA → log → checkpoint/stop.

Built on `accelerate`: the same code runs on CPU, one GPU, and several
processes (`torchrun`/`accelerate launch`; DDP over gloo or NCCL).  Each rank
takes its own slice of every global batch (student/data.py), gradients are
averaged by DDP, so all ranks hold identical weights after every step.

Learning rate: linear warmup over warmup_ratio·steps, then cosine decay to
lr/10 (nanoGPT's schedule); it is a pure function of the step number, which
is therefore the whole scheduler state a checkpoint needs.

bf16: TrainConfig.bf16 = "on" always autocasts to bf16 (CPU autocast too);
"auto" autocasts on CUDA GPUs with bf16 support, and on CPUs with native bf16
(avx512_bf16/AMX, oneDNN's check) for models with hidden size ≥ 256: there
SmolLM2-size matmuls ran 1.6-2.8x faster, while the 64-dim tiny model's
steps ran ~25% slower (casts outweigh the tiny matmuls), so it stays fp32.
bench/train_bench.py prints the measured CPU autocast speedup.  Trainable
weights stay fp32 and every loss is computed in fp32.

Lengths (the rule of student/lengths.py): nothing is truncated.  Every
example is encoded up front with y = its demonstration; a row whose student
prompt or a teacher context does not fit next to its whole y within
model.max_length is dropped with a warning (TrainResult.dropped: reason →
rows), and a negative context that does not fit is left out of its row
(TrainResult.negatives_dropped).  Dropping is a pure function of the examples
and the model config, both in the fingerprint (with the rule's version,
LENGTH_RULE), so resume is unaffected; the counts are also written, outside
the fingerprint, under "lengths" in the resolved config.  On-policy samples
are capped so they always fit (student/teacher.py: on_policy_cap); a step
record's "negatives_dropped" counts its rows trained without their negative.

Checkpoints (out_dir/checkpoints/step-NNNNNN/, written to a .tmp directory and
renamed, the previous one removed afterwards): student.safetensors and
teacher.safetensors (adapter weights), optimizer.safetensors (AdamW moments),
rng-rankR.safetensors (torch RNG state of each rank) and trainer_state.json
(step, micro-batch position, history, optimizer hyper-parameters, schedule,
python RNG, the resolved config and its fingerprint).  Nothing is pickled and
nothing is unpickled on resume.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from student.config import LossConfig, TrainConfig
from student.data import Encoded, TrainExample, collate, encode, micro_batch_indices, micro_batches_per_epoch
from student.errors import RowTooLong, StudentError
from student.model import Student
from student.teacher import AlignedLM, ema_pairs, ema_update, encode_batch, teacher_forward, use_on_policy

log = logging.getLogger(__name__)

CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"
LAUNCH_SETTINGS = {"processes", "launcher", "accelerate_config"}
LENGTH_RULE = "whole-rows-1"  # student/lengths.py: rows kept whole or dropped, never cut


@dataclass
class TrainResult:
    steps: int  # optimizer steps done in total (including those before a resume)
    history: list[dict] = field(default_factory=list)  # one dict of loss terms per step
    adapter_dir: Path | None = None  # out_dir/adapter (None when stopped early)
    adapter_sha256: str | None = None  # sha256 of adapter_model.safetensors
    stopped: bool = False  # should_stop() asked us to stop; a checkpoint was written
    dropped: dict[str, int] = field(default_factory=dict)  # reason code -> examples left out (too long)
    negatives_dropped: int = 0  # examples trained without their negative context (too long)


def train(
    student: Student,
    examples: list[TrainExample],
    train_cfg: TrainConfig,
    loss_cfg: LossConfig,
    out_dir: str | Path,
    *,
    resume: bool = True,
    should_stop: Callable[[], bool] | None = None,
    progress: bool = True,
    on_step: Callable[[dict, int], None] | None = None,
) -> TrainResult:
    """Train `student`'s "student" adapter on `examples`; see the module docstring.

    `on_step(record, total_steps)` is called on the main process after every
    optimizer step with that step's history record (the loop shows progress
    with it; a training job streams it to the loop)."""
    from accelerate import Accelerator

    if not examples:
        raise StudentError("train: the dataset is empty; there is nothing to train on")
    out_dir = Path(out_dir)
    if loss_cfg.kd == 0 and loss_cfg.contrastive == 0 and loss_cfg.feature == 0 and loss_cfg.sft == 0:
        raise StudentError("loss: every weight (sft, kd, contrastive, feature) is 0; set at least one > 0")

    # ---- processes and devices
    accelerator = Accelerator(cpu=student.device.type == "cpu")
    world, rank, device = accelerator.num_processes, accelerator.process_index, accelerator.device
    student.device = device  # under several GPUs each rank owns its own device
    use_bf16 = _use_bf16(train_cfg, device, getattr(student.model.config, "hidden_size", 0) or 0)
    # the fingerprint hashes the examples as given: what is dropped below follows from them
    config = _resolved_config(train_cfg, loss_cfg, world, examples, student)

    # ---- the length rule: drop the rows that do not fit (nothing is cut)
    total_examples = len(examples)
    examples, encoded_cache, dropped, negatives_dropped = _fit_examples(student, examples, loss_cfg)
    config["lengths"] = {"rows": len(examples), "dropped": dropped, "negatives_dropped": negatives_dropped}
    max_length = student.model_cfg.max_length
    if not examples:
        raise StudentError(
            f"train: none of the {total_examples} examples fits student.max_length = {max_length} "
            f"({_reasons(dropped)}); raise student.max_length"
        )
    if accelerator.is_main_process and dropped:
        log.warning("train: left out %d of %d examples longer than student.max_length = %d (%s); "
                    "raise student.max_length to train on them",
                    sum(dropped.values()), total_examples, max_length, _reasons(dropped))
    if accelerator.is_main_process and negatives_dropped and loss_cfg.contrastive > 0:
        log.warning("train: %d examples train without their negative context: it does not fit next to "
                    "the demonstration within student.max_length = %d", negatives_dropped, max_length)

    # ---- the schedule: micro-batches → optimizer steps
    n, bs, accum = len(examples), train_cfg.batch_size, train_cfg.grad_accum
    per_epoch = micro_batches_per_epoch(n, bs, world)
    total_steps = train_cfg.max_steps or max(1, math.ceil(train_cfg.epochs * per_epoch / accum))
    warmup = round(train_cfg.warmup_ratio * total_steps)
    needs_teacher = loss_cfg.kd > 0 or loss_cfg.contrastive > 0 or loss_cfg.feature > 0
    use_ema = needs_teacher and loss_cfg.teacher_adapter == "ema"

    # ---- model and optimizer
    params = student.trainable_parameters()
    optimizer = torch.optim.AdamW(params, lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    net = accelerator.prepare(AlignedLM(student.model, loss_cfg))  # DDP when world > 1
    net.train()

    # ---- resume, or start fresh
    step, micro, history = 0, 0, []
    ckpt = _latest_checkpoint(out_dir) if resume else None
    if ckpt is not None and _read_state(ckpt)["fingerprint"] != config["fingerprint"]:
        log.warning("%s was written with another config or dataset; starting fresh", ckpt)
        if accelerator.is_main_process:
            shutil.rmtree(out_dir / CHECKPOINTS, ignore_errors=True)
        accelerator.wait_for_everyone()
        ckpt = None
    if ckpt is not None:
        step, micro, history = _load_checkpoint(ckpt, student, optimizer, rank)
        log.info("resumed from %s at step %d", ckpt, step)
    elif use_ema:
        student.copy_adapter("student", "teacher")  # the EMA starts where the student starts

    # ---- the loop
    bar = progress_bar(progress and accelerator.is_main_process, total_steps, step)
    stopped = False
    pairs = ema_pairs(student) if use_ema else None  # the live teacher/student adapter tensors
    while step < total_steps:
        lr = _lr(step, total_steps, warmup, train_cfg.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr
        t0 = time.perf_counter()
        record: dict[str, float] = {}
        input_tokens = 0
        for a in range(accum):
            idx = micro_batch_indices(n, bs, world, rank, train_cfg.seed, micro)
            on_policy = use_on_policy(loss_cfg.on_policy, train_cfg.seed, micro, rank)
            encoded = _encode(student, examples, idx, loss_cfg, on_policy, encoded_cache,
                              seed=(train_cfg.seed * 1_000_003 + micro * 101 + rank) % 2**31)
            batch = collate(encoded, student.tokenizer.pad_token_id).to(device)
            input_tokens += int(batch.attention_mask.sum())
            record["negatives_dropped"] = record.get("negatives_dropped", 0) + sum(e.negative_dropped for e in encoded)
            with _autocast(device, use_bf16):
                teacher = teacher_forward(student, batch, loss_cfg.teacher_adapter, with_negative=loss_cfg.contrastive > 0) if needs_teacher else None
            # DDP all-reduces on every backward unless told not to: only the last
            # micro-batch of an accumulation synchronises
            sync = contextlib.nullcontext() if a == accum - 1 else accelerator.no_sync(net)
            with sync:
                # the student forward and the UniSD loss are one call of the wrapped
                # module, so the LM head (applied chunk by chunk) runs inside DDP's forward
                with _autocast(device, use_bf16):
                    loss, terms = net(batch, teacher)
                accelerator.backward(loss / accum)
            for k, v in terms.items():
                record[k] = record.get(k, 0.0) + (v if k == "tokens" else v / accum)
            record["on_policy"] = record.get("on_policy", 0.0) + on_policy / accum
            micro += 1
        grad_norm = accelerator.clip_grad_norm_(params, train_cfg.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if use_ema and step % loss_cfg.ema_every == 0:
            ema_update(student, loss_cfg.ema_decay, pairs)

        seconds = time.perf_counter() - t0
        record.update(step=step, lr=lr, grad_norm=float(grad_norm), seconds=seconds,
                      input_tokens=input_tokens, tokens_per_s=input_tokens / max(seconds, 1e-9))
        history.append(record)
        update_bar(bar, record)
        if on_step is not None and accelerator.is_main_process:
            on_step(record, total_steps)

        stop = _poll_stop(should_stop, accelerator)
        if stop or step % train_cfg.checkpoint_every == 0 or step == total_steps:
            _save_checkpoint(out_dir, step, micro, history, student, optimizer, config, accelerator,
                             schedule={"kind": "cosine", "warmup": warmup, "total": total_steps, "lr": train_cfg.lr})
        if stop and step < total_steps:
            stopped = True
            break
    if bar is not None:
        bar.close()
    if stopped:
        return TrainResult(step, history, None, None, stopped=True, dropped=dropped, negatives_dropped=negatives_dropped)

    # ---- the final adapter, with the config that made it beside it
    adapter_dir = out_dir / "adapter"
    if accelerator.is_main_process:
        student.save_adapter(adapter_dir, "student")
        _write_json(adapter_dir / "train_config.json", config)
    accelerator.wait_for_everyone()
    return TrainResult(step, history, adapter_dir, file_sha256(adapter_dir / "adapter_model.safetensors"),
                       dropped=dropped, negatives_dropped=negatives_dropped)


# --------------------------------------------------------------------------- pieces


def _fit_examples(student, examples, loss_cfg) -> tuple[list[TrainExample], list[Encoded], dict[str, int], int]:
    """Encode every example with y = its demonstration and keep those that fit
    model.max_length: (kept examples, their encodings, reason -> examples
    dropped, kept examples without their negative).  Deterministic (tokenizer,
    max_length and the examples), so every rank and every resume agree."""
    kept, encoded, dropped, negatives = [], [], {}, 0
    for ex in examples:
        try:
            e = encode(student.tokenizer, ex, num_contexts=loss_cfg.num_contexts, max_length=student.model_cfg.max_length)
        except RowTooLong as exc:
            dropped[exc.reason] = dropped.get(exc.reason, 0) + 1
            continue
        kept.append(ex)
        encoded.append(e)
        negatives += e.negative_dropped
    return kept, encoded, dict(sorted(dropped.items())), negatives


def _reasons(dropped: dict[str, int]) -> str:
    return ", ".join(f"{reason}: {rows}" for reason, rows in dropped.items())


def _encode(student, examples, idx, loss_cfg, on_policy: bool, cache: list[Encoded], seed: int) -> list[Encoded]:
    """Token ids of one micro-batch: y ~ student when on-policy (sampled with a
    cap that keeps every row within max_length, then encoded around the sampled
    ids), else y = d, whose encoding never changes and was made up front."""
    if on_policy:
        return encode_batch(
            student,
            [examples[i] for i in idx],
            num_contexts=loss_cfg.num_contexts,
            on_policy=True,
            temperature=loss_cfg.temperature,
            max_new_tokens=loss_cfg.on_policy_max_new_tokens,
            seed=seed,
        )
    return [cache[i] for i in idx]


def _lr(step: int, total: int, warmup: int, lr: float) -> float:
    """Linear warmup (from lr/warmup at step 0) then cosine decay to lr/10."""
    if step < warmup:
        return lr * (step + 1) / (warmup + 1)
    progress = (step - warmup) / max(1, total - warmup)
    return lr / 10 + 0.5 * (1 + math.cos(math.pi * min(1.0, progress))) * (lr - lr / 10)


# Below this hidden size the matmuls are too small for bf16 to pay for its casts
# (the tiny 64-dim model steps ~25% slower under CPU autocast; SmolLM2's
# 576-dim matmuls run 1.6-2.8x faster on a CPU with avx512_bf16).
CPU_BF16_MIN_HIDDEN = 256


def _use_bf16(cfg: TrainConfig, device: torch.device, hidden_size: int = 0) -> bool:
    if cfg.bf16 == "off":
        return False
    if device.type == "cuda":
        ok = torch.cuda.is_bf16_supported()
        if cfg.bf16 == "on" and not ok:
            raise StudentError("train.bf16 = 'on' but this GPU has no bf16 support; set train.bf16 = 'auto' or 'off'")
        return ok
    if cfg.bf16 == "on":
        return True
    return _cpu_has_native_bf16() and hidden_size >= CPU_BF16_MIN_HIDDEN


def _cpu_has_native_bf16() -> bool:
    """oneDNN's own check for bf16 instructions (avx512_bf16 / AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _resolved_config(train_cfg, loss_cfg, world, examples, student) -> dict:
    data_hash = hashlib.sha256()
    for ex in examples:
        data_hash.update(ex.model_dump_json().encode())
    cfg = {
        # how the ranks were started does not change what they compute (world_size does)
        "train": train_cfg.model_dump(mode="json", exclude=LAUNCH_SETTINGS),
        "loss": loss_cfg.model_dump(mode="json"),
        "model": student.model_cfg.model_dump(mode="json"),
        "lora": student.lora_cfg.model_dump(mode="json"),
        "world_size": world,
        "num_examples": len(examples),
        "data_sha256": data_hash.hexdigest(),
        # checkpoints of the old trainer (which cut rows to fit) scheduled a different
        # set of rows: a new rule version makes them start fresh instead of resuming
        "length_rule": LENGTH_RULE,
    }
    cfg["fingerprint"] = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode()).hexdigest()
    return cfg


def _poll_stop(should_stop, accelerator) -> bool:
    """should_stop() on every rank; any rank asking stops them all together
    (a rank that stopped alone would hang the others' next all-reduce)."""
    flag = bool(should_stop()) if should_stop is not None else False
    if accelerator.num_processes > 1:
        t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
        flag = bool(accelerator.reduce(t, reduction="sum").item() > 0)
    return flag


def progress_bar(enabled: bool, total: int, initial: int):
    """The trainer's terminal bar (None when disabled); a training job's
    progress is drawn with the same bar by the loop (loop/core/train_job.py)."""
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc="train", unit="step", dynamic_ncols=True)


def update_bar(bar, record: dict) -> None:
    if bar is None:
        return
    shown = {k: f"{record[k]:.3g}" for k in ("total", "sft", "kd", "contrastive", "feature") if k in record}
    shown["tok/s"] = f"{record['tokens_per_s']:.0f}"
    bar.set_postfix(shown, refresh=False)
    bar.update(1)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


# --------------------------------------------------------------------------- checkpoints


def _step_dirs(out_dir: Path) -> list[Path]:
    root = out_dir / CHECKPOINTS
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / STATE_FILE).is_file())


def _latest_checkpoint(out_dir: Path) -> Path | None:
    dirs = [p for p in _step_dirs(out_dir) if not p.name.endswith(".tmp")]
    return dirs[-1] if dirs else None


def _read_state(ckpt: Path) -> dict:
    try:
        return json.loads((ckpt / STATE_FILE).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise StudentError(f"{ckpt / STATE_FILE}: unreadable checkpoint state ({exc}); delete {ckpt} to start over") from None


def _optimizer_to_files(optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """AdamW state → (tensors for safetensors, JSON for everything else)."""
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_from_files(optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta["scalars"].items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    current = optimizer.state_dict()["param_groups"]
    groups = []
    for g, cur in zip(meta["param_groups"], current):
        groups.append({k: (tuple(v) if isinstance(cur.get(k), tuple) else v) for k, v in g.items()})
    optimizer.load_state_dict({"state": state, "param_groups": groups})


def _save_checkpoint(out_dir, step, micro, history, student, optimizer, config, accelerator, schedule) -> None:
    root = out_dir / CHECKPOINTS
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    # every rank's RNG (LoRA dropout draws differ per rank)
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda.{i}"] = s
    save_file(rng, str(tmp / f"rng-rank{accelerator.process_index}.safetensors"))
    _write_json(tmp / f"python-rng-rank{accelerator.process_index}.json", _py_rng_state())
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for name in ("student", "teacher"):
            params = student.adapter_params(name)
            save_file({k: p.detach().to("cpu").contiguous() for k, p in params.items()}, str(tmp / f"{name}.safetensors"))
        opt_tensors, opt_meta = _optimizer_to_files(optimizer)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = {
            "step": step,
            "micro": micro,
            "history": history,
            "optimizer": opt_meta,
            "scheduler": {**schedule, "step": step},
            "config": config,
            "fingerprint": config["fingerprint"],
        }
        _write_json(tmp / STATE_FILE, state)
        if final.exists():
            shutil.rmtree(final)
        tmp.replace(final)
        for old in _step_dirs(out_dir):  # keep only the newest checkpoint
            if old != final:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def _load_checkpoint(ckpt: Path, student: Student, optimizer, rank: int) -> tuple[int, int, list[dict]]:
    state = _read_state(ckpt)
    with torch.no_grad():
        for name in ("student", "teacher"):
            loaded = load_file(str(ckpt / f"{name}.safetensors"))
            params = student.adapter_params(name)
            if set(loaded) != set(params):
                raise StudentError(f"{ckpt}/{name}.safetensors does not match this model's adapter; delete {ckpt} to start over")
            for k, p in params.items():
                p.copy_(loaded[k])
    opt_tensors = {k: v.to(student.device) for k, v in load_file(str(ckpt / "optimizer.safetensors")).items()}
    # AdamW keeps `step` on the CPU unless capturable/fused: match the fresh optimizer's layout
    opt_tensors = {k: (v.cpu() if k.endswith(".step") else v) for k, v in opt_tensors.items()}
    _optimizer_from_files(optimizer, opt_tensors, state["optimizer"])
    rng_file = ckpt / f"rng-rank{rank}.safetensors"
    if rng_file.is_file():
        rng = load_file(str(rng_file))
        torch.set_rng_state(rng["torch"])
        cuda = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
        if cuda and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda)
        py = ckpt / f"python-rng-rank{rank}.json"
        if py.is_file():
            _set_py_rng_state(json.loads(py.read_text()))
    return int(state["step"]), int(state["micro"]), list(state["history"])


def _py_rng_state() -> list:
    version, internal, gauss = random.getstate()
    return [version, list(internal), gauss]


def _set_py_rng_state(s: list) -> None:
    random.setstate((s[0], tuple(s[1]), s[2]))
