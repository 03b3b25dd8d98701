"""Batched generation with the student (transformers backend).

`generate(student, prompts, ...)` answers each prompt (a list of chat messages)
greedily (index 0) and with `n_samples` sampled answers (indices 1..n).
Prompts are rendered with the same `render_prompt` the trainer uses, sorted by
length into batches (less padding), left-padded so every row's last prompt
token sits at the same position, and decoded with the KV cache.

Determinism: sampling draws from torch's RNG seeded with `seed` inside a forked
RNG state, so the same call gives the same texts and the caller's random
stream is untouched.  The batch layout is a function of the prompts alone, so
the same prompts give the same batches.

`bench_generation` measures batched vs one-question-at-a-time tokens/s on the
same prompts; bench/train_bench.py prints it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

import torch

from student.errors import GenerationError, GenerationStopped
from student.model import Student, prompt_ids, render_prompt

__all__ = ["generate", "generate_ids", "render_prompt", "prompt_ids", "bench_generation"]


def _batches(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Prompt indices grouped into batches of similar length (longest first, so
    an out-of-memory error shows up in the first batch, not the last)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows → (ids, attention mask) [R, W] on `device`, padded on the left so
    every row's last token sits in the last column (where generation continues)."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, width - len(r) :] = torch.tensor(r, dtype=torch.long)
        mask[i, width - len(r) :] = 1
    return ids.to(device), mask.to(device)


def rng_devices(student: Student) -> list:
    """The CUDA devices whose RNG a forked sampling stream must cover (none on CPU)."""
    return [student.device] if student.device.type == "cuda" else []


def _cut_at_eos(row: list[int], eos_ids: set[int]) -> list[int]:
    for j, t in enumerate(row):
        if t in eos_ids:
            return row[:j]
    return row


def _eos_ids(student: Student) -> set[int]:
    eos = student.model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos]) if eos is not None else set()
    if student.tokenizer.eos_token_id is not None:
        ids.add(student.tokenizer.eos_token_id)
    return ids


def _stop_criteria(should_stop: Callable[[], bool] | None):
    """transformers stopping criteria that end every row once should_stop() is true."""
    if should_stop is None:
        return None
    from transformers import StoppingCriteria, StoppingCriteriaList

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), bool(should_stop()), dtype=torch.bool, device=input_ids.device)

    return StoppingCriteriaList([_Stop()])


def _gen_config(student: Student, *, sample: bool, n: int, temperature: float, top_p: float, max_new_tokens: int):
    """An explicit GenerationConfig: a checkpoint's own defaults (top_k=50,
    repetition penalties...) must not change what greedy/sampled means here."""
    from transformers import GenerationConfig

    tok = student.tokenizer
    eos = sorted(_eos_ids(student))
    kw = dict(
        max_new_tokens=max_new_tokens,
        num_beams=1,
        num_return_sequences=n,
        repetition_penalty=1.0,
        use_cache=True,
        pad_token_id=tok.pad_token_id,
        eos_token_id=eos if len(eos) > 1 else eos[0],
    )
    if sample:
        kw.update(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
    else:
        kw.update(do_sample=False)
    return GenerationConfig(**kw)


@torch.no_grad()
def generate_ids(
    student: Student,
    prompts: list[list[dict]],
    *,
    n_samples: int = 0,
    temperature: float = 0.8,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    adapter: str = "student",
    should_stop: Callable[[], bool] | None = None,
) -> list[list[list[int]]]:
    """Like `generate` but returns the generated token ids (eos and padding cut)."""
    if n_samples < 0 or batch_size < 1 or max_new_tokens < 1:
        raise GenerationError(
            f"need n_samples >= 0, batch_size >= 1, max_new_tokens >= 1 "
            f"(got {n_samples}, {batch_size}, {max_new_tokens})"
        )
    if n_samples and temperature <= 0:
        raise GenerationError(f"sampling needs temperature > 0 (got {temperature}); use n_samples=0 for greedy only")
    if not prompts:
        return []
    tok = student.tokenizer
    encoded = [prompt_ids(tok, p) for p in prompts]
    eos = _eos_ids(student)
    out: list[list[list[int]]] = [[] for _ in prompts]

    stopping = _stop_criteria(should_stop)

    def run(module, idx: list[int], cfg, n: int) -> list[list[list[int]]]:
        ids, mask = left_pad([encoded[i] for i in idx], tok.pad_token_id, student.device)
        seqs = module.generate(input_ids=ids, attention_mask=mask, generation_config=cfg, stopping_criteria=stopping)
        if should_stop is not None and should_stop():
            # the batch was cut short: its texts are not answers, and nothing of this call is returned
            raise GenerationStopped("generation stopped on request")
        new = seqs[:, ids.shape[1] :].tolist()
        return [[_cut_at_eos(new[k * n + j], eos) for j in range(n)] for k in range(len(idx))]

    with student.use_adapter(adapter) as module:
        was_training = module.training
        module.eval()  # no dropout while answering
        try:
            greedy = _gen_config(student, sample=False, n=1, temperature=1.0, top_p=1.0, max_new_tokens=max_new_tokens)
            for idx in _batches([len(e) for e in encoded], batch_size):
                for i, rows in zip(idx, run(module, idx, greedy, 1)):
                    out[i].extend(rows)
            if n_samples:
                sampled = _gen_config(
                    student, sample=True, n=n_samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens
                )
                # batch_size bounds the rows in flight: n samples of each prompt share a batch.
                per_batch = max(1, batch_size // n_samples)
                with torch.random.fork_rng(devices=rng_devices(student)):
                    torch.manual_seed(seed)
                    for idx in _batches([len(e) for e in encoded], per_batch):
                        for i, rows in zip(idx, run(module, idx, sampled, n_samples)):
                            out[i].extend(rows)
        finally:
            module.train(was_training)
    return out


def generate(
    student: Student,
    prompts: list[list[dict]],
    *,
    n_samples: int = 0,
    temperature: float = 0.8,
    top_p: float = 1.0,
    max_new_tokens: int = 256,
    batch_size: int = 16,
    seed: int = 0,
    adapter: str = "student",
    should_stop: Callable[[], bool] | None = None,
) -> list[list[str]]:
    """Answer each prompt: per prompt a list of 1 + n_samples texts, index 0
    greedy, then the sampled ones.  `adapter` is "student", "teacher" or
    "base" (adapters disabled).  `should_stop` is polled after every decode
    step; once it is true the call raises GenerationStopped (within one
    step, not at the end of a batch: a CPU batch of long answers takes
    minutes)."""
    ids = generate_ids(
        student,
        prompts,
        n_samples=n_samples,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
        adapter=adapter,
        should_stop=should_stop,
    )
    decode = student.tokenizer.decode
    return [[decode(r, skip_special_tokens=True) for r in rows] for rows in ids]


def bench_generation(
    student: Student,
    prompts: list[list[dict]],
    *,
    max_new_tokens: int = 32,
    batch_size: int = 16,
    repeats: int = 1,
) -> dict:
    """Greedy tokens/s batched (`batch_size`) vs one question at a time, on the
    same prompts, side by side.  Returns both rates and their ratio."""

    def timed(bs: int) -> tuple[float, int]:
        best, tokens = float("inf"), 0
        for _ in range(repeats):
            t0 = time.perf_counter()
            ids = generate_ids(student, prompts, max_new_tokens=max_new_tokens, batch_size=bs)
            best = min(best, time.perf_counter() - t0)
            tokens = sum(len(rows[0]) for rows in ids)
        return best, tokens

    generate_ids(student, prompts[:1], max_new_tokens=2, batch_size=1)  # warm-up (lazy inits)
    seq_s, seq_tokens = timed(1)
    bat_s, bat_tokens = timed(batch_size)
    seq_rate, bat_rate = seq_tokens / seq_s, bat_tokens / bat_s
    return {
        "prompts": len(prompts),
        "batch_size": batch_size,
        "max_new_tokens": max_new_tokens,
        "sequential_seconds": seq_s,
        "batched_seconds": bat_s,
        "sequential_tokens": seq_tokens,
        "batched_tokens": bat_tokens,
        "sequential_tokens_per_s": seq_rate,
        "batched_tokens_per_s": bat_rate,
        "speedup": bat_rate / seq_rate,
    }
