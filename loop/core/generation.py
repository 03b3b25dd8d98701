"""Where the student's answers come from: the one dispatch point of every step
that generates (baseline, mine, evaluate and the `self` teacher).

generation.backend = "transformers" answers in this process with
student.generate on the in-memory student.  "vllm" sends the same chat
messages to an OpenAI-compatible vLLM server that serves the base model and
loads each iteration's LoRA adapter at run time (student/vllm_client.py):

    VLLM_ALLOW_RUNTIME_LORA_UPDATING=True vllm serve BASE --enable-lora --max-lora-rank R

Both backends get the same prompts in the same chunks with the same seed per
chunk; the steps extract and score the texts the same way whichever produced
them.  The vLLM path never touches the in-memory student, so generating loads
no model in this process.

The server side (which adapter it holds, under which name) is
loop/core/vllm_server.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:  # pragma: no cover
    from loop.core.steps.context import StepContext


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def generate(ctx: "StepContext", step: str, adapter: str | None, prompts: list[list[dict]], *, n_samples: int,
             temperature: float, top_p: float, max_new_tokens: int, seed: int) -> list[list[str]]:
    """Per prompt [greedy answer, n_samples sampled answers] of the student with
    `adapter` (workspace-relative directory, None = the untrained adapter), in
    chunks of generation.batch_size so progress shows and a stop request is
    honoured between chunks.  Chunk c is seeded with seed + c: the chunking
    depends only on the inputs, so a restarted process gets the same texts."""
    ctx.progress(step, 0, len(prompts))
    if not prompts:
        return []
    g = ctx.cfg.generation
    params = dict(n_samples=n_samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    answer = _vllm_answerer(ctx, step, adapter, params) if g.backend == "vllm" else _local_answerer(ctx, adapter, params)
    out: list[list[str]] = []
    for c, part in enumerate(chunks(prompts, g.batch_size)):
        ctx.check_stop()
        with ctx.timed("generate"):
            out.extend(answer(part, seed + c))
        ctx.progress(step, len(out), len(prompts))
    return out


def _local_answerer(ctx: "StepContext", adapter: str | None, params: dict) -> Callable:
    from student.errors import GenerationStopped
    from student.generate import generate as local_generate

    ctx.model.use(adapter)
    batch = ctx.cfg.generation.batch_size
    student = ctx.model.student

    def answer(part, seed):
        # polled between decode steps: a CPU chunk of long answers takes minutes,
        # and a stop must take effect within seconds (the cut chunk is discarded)
        try:
            return local_generate(student, part, batch_size=batch, seed=seed, should_stop=ctx.stop_requested, **params)
        except GenerationStopped:
            ctx.check_stop()
            raise

    return answer


def _vllm_answerer(ctx: "StepContext", step: str, adapter: str | None, params: dict) -> Callable:
    sha = ctx.model.adapter_sha(adapter) if adapter is not None else None
    server = ctx.model.vllm
    return lambda part, seed: server.generate(step, adapter, sha, part, seed=seed, **params)
