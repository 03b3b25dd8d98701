"""GPU check: LoRA SFT vs UniSD-full on a Qwen2.5-0.5B-shaped model, bf16, one CUDA device.

Made for a machine with no internet, no model hub and no PyPI: the model is
randomly initialised from a Qwen2Config written below (Qwen2.5-0.5B's shape:
494M parameters, vocabulary 151,936, tied embeddings), the tokenizer is a
byte-level BPE without merges built in code (one token per byte), and both
are saved to a temporary directory and loaded back with `load_student`, the
path a user's local checkpoint takes.  Random weights and a small tokenizer
change no FLOP, no memory figure and no kernel: the cost of a step depends on
the shapes, not on which ids or weights flow through it.

Through the real trainer (`student.train.train` with max_steps) it times

  sft          cross-entropy only
  unisd_full   SFT + generalized JSD over K = 2 teacher contexts + token
               contrastive (one negative context per row) + feature matching,
               EMA teacher adapter

and batched vs one-at-a-time generation (`student.generate.bench_generation`),
then prints the step-time ratio against the token-weighted compute ratio,
peak memory (`torch.cuda.max_memory_allocated`, reset before each run),
tokens/s and the MFU of the SFT step; each figure with a goal on a line
`name: value (goal: ...)`, the MFU last.

    python bench/gpu_check.py               # CUDA, bf16; under 5 minutes on one H200
    python bench/gpu_check.py --cpu-smoke   # the same code path on CPU, 2-layer config, under a minute
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import re
import statistics
import string
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# nothing is downloaded; offline mode turns a stray hub lookup into an error instead of a hang
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
# deprecation notices from inside transformers/peft: nothing this script can act on
warnings.filterwarnings("ignore", category=FutureWarning)

import torch  # noqa: E402

from student.config import LoraConfig, LossConfig, ModelConfig, TrainConfig  # noqa: E402
from student.data import TrainExample, collate, encode  # noqa: E402
from student.generate import bench_generation  # noqa: E402
from student.chat import CHATML_TEMPLATE  # noqa: E402
from student.model import Student, load_student  # noqa: E402
from student.train import train  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

hf_logging.disable_progress_bar()  # the save/load bars of a 1 GB checkpoint would bury the figures

K = 2  # teacher contexts of the UniSD-full objective

# Peak dense bf16 tensor FLOP/s by device name (vendor data sheets; sparsity not
# counted).  More specific names come first: "H100 PCIe" must not match "H100".
PEAK_BF16_FLOPS = [
    (r"GH200|H200", 989e12),
    (r"H100.*PCIe", 756e12),
    (r"H100.*NVL", 835e12),
    (r"H100|H800", 989e12),
    (r"B200", 2250e12),
    (r"A100|A800", 312e12),
    (r"L40S", 362e12),
    (r"\bL4\b", 121e12),
]


@dataclass(frozen=True)
class Shape:
    """What one check runs: the model's shape and the work given to it."""

    vocab: int
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    batch: int  # rows per optimizer step
    question: int  # ASCII characters (= tokens: one token per byte)
    solution: int
    warmup: int  # first steps not timed (allocator, cuBLAS and autocast caches fill up)
    steps: int  # timed steps
    gen_prompts: int
    gen_tokens: int


QWEN25_05B = Shape(vocab=151936, hidden=896, intermediate=4864, layers=24, heads=14, kv_heads=2,
                   batch=16, question=128, solution=256, warmup=3, steps=10, gen_prompts=32, gen_tokens=32)
SMOKE = Shape(vocab=1024, hidden=64, intermediate=128, layers=2, heads=4, kv_heads=2,
              batch=4, question=32, solution=48, warmup=1, steps=2, gen_prompts=4, gen_tokens=8)


def byte_tokenizer():
    """Byte-level BPE with no merges, ChatML, eos = <|im_end|>.

    Not student/tiny.py's character tokenizer: saved next to a Qwen2 config,
    transformers 5 loads any tokenizer there as Qwen2Tokenizer, whose
    byte-level pre-tokenizer would drop the spaces and newlines that a
    character vocabulary spells unencoded.  A byte-level vocabulary reads the
    same through either class."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<|pad|>", "<|unk|>", "<|bos|>", "<|im_end|>", "<|im_start|>"]
    vocab = {t: i for i, t in enumerate(special + sorted(pre_tokenizers.ByteLevel.alphabet()))}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.add_special_tokens(special)
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|pad|>", unk_token="<|unk|>",
                                  bos_token="<|bos|>", eos_token="<|im_end|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tok.chat_template = CHATML_TEMPLATE
    return tok


def model_config(shape: Shape, tokenizer):
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_heads,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        tie_word_embeddings=True,
        rope_theta=1e6,
        max_position_embeddings=32768,
        use_sliding_window=False,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def build_student(shape: Shape, workdir: Path, device: str, max_length: int) -> Student:
    """Random model + byte tokenizer, saved as a local checkpoint and
    loaded by `load_student` exactly as a user's model directory would be."""
    from transformers import AutoModelForCausalLM

    tok = byte_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(model_config(shape, tok))
    # bf16 on disk halves the write; load_student casts to the device's dtype either way
    model.to(torch.bfloat16 if device == "cuda" else torch.float32)
    path = workdir / "model"
    model.save_pretrained(path)
    tok.save_pretrained(path)
    del model
    return load_student(ModelConfig(name=str(path), device=device, max_length=max_length), LoraConfig())


def text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(string.ascii_letters + string.digits + " ") for _ in range(n))


def user(content: str) -> list[dict]:
    return [{"role": "user", "content": content}]


def examples(shape: Shape, n: int, seed: int = 0) -> list[TrainExample]:
    """GSM8K-shaped rows: a question, a worked solution y, K contexts that hold
    the solution before the question, and a negative context with a wrong one.
    Every row has the same lengths, so no padding inflates the token counts."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        q, d, wrong = text(rng, shape.question), text(rng, shape.solution), text(rng, shape.solution)
        contexts = [user(f"Worked solution {j + 1}:\n{d}\n\n{q}") for j in range(K)]
        out.append(TrainExample(prompt=user(q), completion=d, teacher_prompts=contexts,
                                negative_prompt=user(f"An incorrect solution:\n{wrong}\n\n{q}")))
    return out


def run_objective(student: Student, exs, shape: Shape, loss_cfg: LossConfig, cuda: bool) -> dict:
    """Median step seconds (warm-up steps dropped) and peak memory of one
    train() call.

    Steps are timed between on_step callbacks that first wait for the GPU:
    the trainer's own history["seconds"] stops its clock while the backward
    and optimizer kernels may still be queued, so on a GPU it can undercount.
    Its figure is kept beside ours to show the difference."""
    stamps: list[float] = []

    def on_step(record: dict, total: int) -> None:
        if cuda:
            torch.cuda.synchronize()
        stamps.append(time.perf_counter())

    tc = TrainConfig(max_steps=shape.warmup + shape.steps, batch_size=shape.batch, lr=1e-4,
                     checkpoint_every=1_000_000)
    gc.collect()  # the previous run's optimizer and activations must not count in this peak
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory() as out:
        res = train(student, exs, tc, loss_cfg, out, resume=False, progress=False, on_step=on_step)
    # stamps[i] ends step i + 1, so interval i is step i + 2: drop steps 1..warmup
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][shape.warmup - 1:]
    timed = res.history[shape.warmup:]
    return {
        "step_s": statistics.median(intervals),
        "tokens": timed[-1]["input_tokens"],
        "history_tokens_per_s": statistics.median(h["tokens_per_s"] for h in timed),
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
    }


def peak_flops(device_name: str, override_tflops: float | None) -> tuple[float | None, str]:
    if override_tflops is not None:
        return override_tflops * 1e12, "--peak-tflops"
    for pattern, flops in PEAK_BF16_FLOPS:
        if re.search(pattern, device_name):
            return flops, f"table entry /{pattern}/"
    return None, "unknown device: pass --peak-tflops"


def param_counts(student: Student) -> tuple[int, int]:
    """(decoder parameters, LM head parameters) of the frozen base, LoRA excluded."""
    base = student.model.get_base_model()
    total = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n)  # tied weights once
    emb = base.get_input_embeddings().weight
    head = base.get_output_embeddings().weight
    tied = head.data_ptr() == emb.data_ptr()
    return total - emb.numel() - (0 if tied else head.numel()), head.numel()


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cpu-smoke", action="store_true",
                    help="run the same code path on CPU with a 2-layer config (checks the script, measures nothing)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak dense bf16 TFLOP/s for the MFU (default: from a table by device name)")
    ap.add_argument("--batch-size", type=int, default=None, help="rows per step (default 16; 4 with --cpu-smoke)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per objective (default 10; 2 with --cpu-smoke)")
    args = ap.parse_args()

    cuda = not args.cpu_smoke
    if cuda and not torch.cuda.is_available():
        print("gpu_check: CUDA is not available; this check needs an NVIDIA GPU with bf16. "
              "Run `python bench/gpu_check.py --cpu-smoke` to check the script itself on CPU.", file=sys.stderr)
        return 2
    if cuda and not torch.cuda.is_bf16_supported():
        print(f"gpu_check: {torch.cuda.get_device_name()} has no bf16 support; this check measures bf16 "
              "training (Ampere or newer).", file=sys.stderr)
        return 2
    if args.cpu_smoke:
        # the CI machine's cores are shared: one thread keeps the smoke run predictable
        torch.set_num_threads(1)
    shape = SMOKE if args.cpu_smoke else QWEN25_05B
    overrides = {"batch": args.batch_size, "steps": args.steps}
    shape = replace(shape, **{k: v for k, v in overrides.items() if v is not None})
    started = time.perf_counter()

    sft_cfg = LossConfig(sft=1.0, kd=0.0)
    full_cfg = LossConfig(sft=1.0, kd=1.0, contrastive=0.5, feature=0.5, num_contexts=K, alpha=0.5,
                          clip=10.0, teacher_adapter="ema", ema_every=1, on_policy=0.0)
    exs = examples(shape, shape.batch)  # one batch: every step sees the same rows
    max_length = 2 * (shape.question + 2 * shape.solution) + 128  # every context fits next to y

    with tempfile.TemporaryDirectory() as workdir:
        student = build_student(shape, Path(workdir), "cuda" if cuda else "cpu", max_length)
    device_name = torch.cuda.get_device_name() if cuda else "cpu"
    body, head = param_counts(student)
    lora = sum(p.numel() for p in student.trainable_parameters())
    print(f"device: {device_name}  dtype: {str(student.dtype).removeprefix('torch.')}  torch {torch.__version__}")
    print(f"model: Qwen2 {'smoke config' if args.cpu_smoke else 'Qwen2.5-0.5B shape'}, random init: "
          f"{(body + head) / 1e6:.4g}M params ({shape.layers} layers, hidden {shape.hidden}, vocab {shape.vocab}, "
          f"tied embeddings); LoRA r={student.lora_cfg.r} {student.lora_cfg.target_modules}: {lora / 1e6:.4g}M trainable")

    # the token counts of one step: the student's rows, their completions, the teacher rows
    batch = collate([encode(student.tokenizer, e, num_contexts=K, max_length=max_length) for e in exs],
                    student.tokenizer.pad_token_id)
    s_tok = int(batch.attention_mask.sum())
    y_tok = int((batch.labels != -100).sum())
    t_tok = int(batch.teacher_attention_mask.sum()) + int(batch.negative_attention_mask.sum())
    print(f"batch: {shape.batch} rows x {batch.input_ids.shape[1]} tokens (y: {batch.labels.shape[1]}); "
          f"teacher rows: {K} contexts + 1 negative x {batch.teacher_input_ids.shape[1]} tokens; "
          f"steps: {shape.warmup} warm-up + {shape.steps} timed")

    sft = run_objective(student, exs, shape, sft_cfg, cuda)
    full = run_objective(student, exs, shape, full_cfg, cuda)
    gen = bench_generation(student, [e.prompt for e in examples(shape, shape.gen_prompts, seed=1)],
                           max_new_tokens=shape.gen_tokens, batch_size=shape.gen_prompts)

    print(f"{'objective':<12} {'step_ms':>9} {'tokens/s':>10} {'trainer tokens/s':>17} {'peak memory':>12}")
    for name, r in (("sft", sft), ("unisd_full", full)):
        mem = gib(r["peak_bytes"]) if cuda else "n/a"
        print(f"{name:<12} {r['step_s'] * 1e3:>9.1f} {r['tokens'] / r['step_s']:>10.0f} "
              f"{r['history_tokens_per_s']:>17.0f} {mem:>12}")
    print("  (tokens/s: student tokens over GPU-synchronised step time; trainer tokens/s: "
          "TrainResult.history, whose clock does not wait for the GPU)")

    step_ratio = full["step_s"] / sft["step_s"]
    # bench/train_bench.py's reference: a student step ≈ 3 forwards of its tokens,
    # each teacher row one forward of its (longer) tokens
    token_ratio = (3 * s_tok + t_tok) / (3 * s_tok)
    print(f"step_time_ratio: {step_ratio:.2f}  (UniSD-full / SFT)")
    print(f"token_compute_ratio: {token_ratio:.2f}  ((3·student + teacher tokens) / (3·student tokens); "
          f"{s_tok} student, {t_tok} teacher tokens per step)")
    print(f"unisd_vs_token_compute_ratio: {step_ratio / token_ratio:.2f} (goal: ≤ 1.10)")
    if cuda:
        print(f"peak_memory: sft {gib(sft['peak_bytes'])}  unisd_full {gib(full['peak_bytes'])}  "
              "(torch.cuda.max_memory_allocated, weights included)")
        print(f"peak_memory_ratio: {full['peak_bytes'] / sft['peak_bytes']:.2f} (goal: ≤ 1.5)")
    else:
        print("peak_memory: n/a on CPU (the check measures torch.cuda.max_memory_allocated)")
        print("peak_memory_ratio: n/a (goal: ≤ 1.5)")
    print(f"training tokens/s: sft {sft['tokens'] / sft['step_s']:.0f}  unisd_full {full['tokens'] / full['step_s']:.0f}")
    print(f"generation tokens/s: one-at-a-time {gen['sequential_tokens_per_s']:.0f}  "
          f"batched({gen['batch_size']}) {gen['batched_tokens_per_s']:.0f}  speedup {gen['speedup']:.1f}x")

    # Model FLOPs of a LoRA SFT step.  The base is frozen: the backward computes
    # activation gradients (as costly as the forward) but no weight gradients,
    # so 4 FLOPs per parameter per token instead of full training's 6.  The LM
    # head runs on the completion positions only (student/teacher.py:
    # aligned_hidden + LMHead in the chunked loss), so it is charged for y tokens, the decoder for all.
    # Attention scores (~2% at these lengths) and the LoRA matmuls (<1%) are
    # not counted, so the MFU errs low.
    flops = 4 * (body * sft["tokens"] + head * y_tok)
    achieved = flops / sft["step_s"]
    peak, source = peak_flops(device_name, args.peak_tflops)
    print(f"sft_model_flops: {flops / 1e12:.4g} TFLOP/step = 4·(N_decoder·tokens + N_head·y_tokens) = "
          f"4·({body / 1e6:.4g}M·{sft['tokens']} + {head / 1e6:.4g}M·{y_tok})  "
          "(forward 2N + activation-gradient backward 2N, no weight gradients of the frozen base)")
    print(f"achieved: {achieved / 1e12:.2f} TFLOP/s; peak bf16 dense: "
          f"{f'{peak / 1e12:.0f} TFLOP/s' if peak else 'n/a'} ({source})")
    print(f"elapsed: {time.perf_counter() - started:.0f} s")
    print(f"mfu: {f'{achieved / peak:.3f}' if peak else 'n/a'} (goal: ≥ 0.35)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
